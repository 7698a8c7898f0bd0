"""What ``moec bench`` will allocate, counted from the shapes before any tensor exists.

An upper estimate in the same terms as a training run's (:class:`moec.analyze.memory.RunMemory`), from
what :mod:`moec.bench.moe_bench` and :mod:`moec.bench.peers` create:

* the expert weights (E, d, W) and (E, f, d), their gradients with ``backward``, and the peers' own
  copies (``ideal_dense`` one expert's pair; ``hf_grouped_mm`` and ``liger`` every expert in HF's layout
  unless the weights are already stored so);
* per token count T: the inputs (x, the gathered rows, both output gradients, routing) with their fp32
  staging copies, and the (T, E) scores that draw the routing;
* the largest step among the chosen peers, its gradients doubling it with ``backward``: every sorted-rows
  backend holds, per routing slot, the gathered row, the first projection, the activation and its gated
  intermediate, the expert output and its weighted copy; ``all_experts`` holds those per (expert, token)
  pair, E/k times more; ``hf_loop`` adds its int64 one-hot mask; ``naive`` and ``hf_loop`` select W[e]
  under autograd, whose backward fills a zero weight-sized gradient per expert; the reference path on a
  CPU computes bf16/fp16 in fp32 copies of the weights;
* the float64 oracle on the first ``check_tokens`` tokens, one expert's weights at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moec.analyze.memory import RUNTIME_BYTES, RunMemory

if TYPE_CHECKING:
    from moec.bench.moe_bench import BenchOptions, BenchShape

# matmul workspaces and allocator slack over the tensors named above; with it the whole estimate was
# 1.9 to 3.6 times the measured peak RSS growth of every peer on the CPU (tests/cli/test_run_limits.py)
STEP_FACTOR = 2
SORTED_ROWS_PEERS = ("naive", "reference", "triton", "hf_loop", "hf_grouped_mm", "liger")
WEIGHT_SELECTING_PEERS = ("naive", "hf_loop")  # W[e] under autograd: a zero-filled (E, ...) grad per expert
OWN_COPY_PEERS = ("hf_grouped_mm", "liger")  # HF-layout copies of every expert's weights (moec layout)
F64 = 8


def _expert_elements(shape: BenchShape) -> int:
    """One expert's weights: (d, W) and (f, d)."""
    return shape.d_model * (shape.width + shape.d_ff)


def _weight_bytes(shape: BenchShape, opts: BenchOptions, nbytes: int) -> int:
    """The shared weights and every peer's own copies (each doubled by its gradient with ``backward``)."""
    n = shape.n_experts * _expert_elements(shape)
    if "ideal_dense" in opts.backends:
        n += _expert_elements(shape)
    if opts.weight_layout == "moec":
        n += sum(shape.n_experts * _expert_elements(shape) for b in opts.backends if b in OWN_COPY_PEERS)
    return n * nbytes


def _input_bytes(shape: BenchShape, tokens: int, nbytes: int, on_host_fp32: bool) -> int:
    """x and grad_out (T, d), the gathered rows and their gradient (T·k, d), built in fp32 on the host and
    copied to the device dtype; the routing (T, k); the (T, E) scores and their argsort that draw it."""
    d, k = shape.d_model, shape.top_k
    activations = 2 * tokens * d + 2 * tokens * k * d
    staged = 4 * activations + (0 if on_host_fp32 else nbytes * activations)
    return staged + tokens * k * (8 + nbytes) + tokens * shape.n_experts * (4 + 8)


def _step_bytes(name: str, shape: BenchShape, tokens: int, nbytes: int, *, backward: bool, host: bool) -> int:
    """One forward (and backward) of peer ``name`` at T tokens, beyond its inputs and weights."""
    d, f, W, k, E = shape.d_model, shape.d_ff, shape.width, shape.top_k, shape.n_experts
    per_row = 3 * d + W + 2 * f  # gathered row, first projection, activation (+ gated part), output, weighted
    if name == "all_experts":
        elements = E * tokens * (W + 2 * f + 2 * d) + tokens * E
    elif name == "ideal_dense":
        elements = tokens * k * (W + 2 * f + d)
    else:
        elements = tokens * k * per_row + tokens * d
    compute = 4 if host and nbytes < 4 and name == "reference" else nbytes  # CPU bf16/fp16 runs in fp32
    total = elements * compute * (2 if backward else 1)
    if name == "reference" and compute != nbytes:
        total += E * _expert_elements(shape) * compute * (2 if backward else 1)  # the fp32 weight copies
    if name == "hf_loop":
        total += F64 * (E + 1) * k * tokens  # int64 one-hot routing mask
    if backward and name in WEIGHT_SELECTING_PEERS:
        total += 2 * E * _expert_elements(shape) * nbytes
    return total


def _oracle_bytes(shape: BenchShape, tokens: int, *, backward: bool) -> int:
    """The float64 check: inputs, reference outputs and gradients, and one expert at a time."""
    d, f, W, k = shape.d_model, shape.d_ff, shape.width, shape.top_k
    held = 4 * tokens * d + 2 * tokens * k
    one_expert = _expert_elements(shape) + tokens * (2 * d + W + 2 * f)
    return F64 * (held + one_expert * (2 if backward else 1))


def bench_memory(shape: BenchShape, opts: BenchOptions, *, nbytes: int, host: bool) -> RunMemory:
    """The upper estimate for ``moec bench`` with these options, ``nbytes`` per element of its dtype, on
    the host CPU (``host``) or a GPU."""
    weights = _weight_bytes(shape, opts, nbytes)
    peak_tokens = max(opts.tokens, default=0)
    on_host_fp32 = host and nbytes == 4
    steps = [_step_bytes(b, shape, peak_tokens, nbytes, backward=opts.backward, host=host) for b in opts.backends]
    check = min(peak_tokens, opts.check_tokens)
    activations = (
        _input_bytes(shape, peak_tokens, nbytes, on_host_fp32)
        + STEP_FACTOR * max(steps, default=0)
        + (_oracle_bytes(shape, check, backward=opts.backward) if check else 0)
    )
    dtype = opts.dtype
    return RunMemory(
        dtype,
        (
            ("weights", weights),
            ("gradients", weights if opts.backward else 0),
            ("activations", activations),
            ("runtime", RUNTIME_BYTES),
        ),
        at=f"at {peak_tokens:,} tokens" + (" with backward" if opts.backward else ""),
    )
