"""`moec analyze --verify`: hold the closed-form analyzer against two independent FLOP counters.

A scaled-down copy of the model (the sizes :func:`moec.smoke.scale.fit` picks, printed with the result)
is built on the CPU at the run's batch and sequence length, and counted three ways:

- **forward**, torch's ``FlopCounterMode`` (1 multiply-add = 2 FLOPs) against the analyzer's forward
  FLOPs per token × batch × seq;
- **forward + backward**, ``FlopCounterMode`` again, against the analyzer's *training* FLOPs: 3× forward
  for trainable weights and for the attention scores, 2× for frozen weights (docs/conventions.md,
  "FLOPs"); the backward starts from a loss that reaches every output (logits, MTP logits, aux loss);
- **forward**, fvcore's ``FlopCountAnalysis`` (a jit trace; its "flop" is 1 multiply-add) against half the
  analyzer's forward FLOPs.

Each must agree exactly. FlopCounterMode gets formulas for the ops it counts as 0 (``aten._grouped_mm``
and CPU SDPA forward and backward; moec's Triton op registers its own); fvcore gets handles, through its
public ``set_op_handle``, for ``aten::scaled_dot_product_attention`` and ``aten::_grouped_mm``. A census
fails loudly on any matmul- or attention-like op that either tool leaves uncounted, so a new code path can
never make a measurement drift to "0 FLOPs" unnoticed.

What the measurement cannot see, and how the expectation is adjusted (stated in the result):
- FlopCounterMode counts every attention score, so windows are dropped from the plan it is compared
  with (the analyzer caps them; the kernel computes and masks them);
- capacity dropping executes fewer expert FLOPs than the model's, so the copy is made dropless;
- the MTP modules run in the model: their forward FLOPs are added to the forward expectations, and 3× of
  them (the same training rule; the analyzer reports MTP forward only) to the training one;
- with a frozen embedding, autograd forms no input gradients below the first trainable weight, which the
  training rule counts; the embedding's output is made to require a gradient so that they are formed.

A hybrid model (token mixers other than attention, docs/mixers.md) is not FLOP-checked: its mixers' scans and
state updates are elementwise multiply-adds, which the analyzer counts and neither tool sees. Its built
parameters are held to the analyzer's count instead, and the result says why the FLOPs were not checked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from moec.spec.plan import LayerPlan, MoEPlan, ResolvedModel

MATMUL_LIKE = ("mm", "matmul", "attention", "conv", "einsum", "dot", "linear")
TRAINING_RULE = "3× trainable weights and scores, 2× frozen"  # docs/conventions.md, "FLOPs"
FVCORE_IGNORED = ("aten::layer_norm", "aten::group_norm", "aten::batch_norm", "aten::instance_norm")


@dataclass
class Check:
    """One tool's count of one pass, against what the analyzer claims for it, in that tool's unit."""

    tool: str  # "FlopCounterMode" or "fvcore"
    passes: str  # "forward" or "forward+backward"
    unit: str
    claim: str  # the analyzer's figure it is compared with, in words
    expected: int
    measured: int
    by_op: dict[str, int]
    uncounted_ops: list[str] = field(default_factory=list)  # matmul-like ops the tool counted as nothing
    rule: str = ""  # how the analyzer's claim is derived, where it is not the forward count itself

    @property
    def ok(self) -> bool:
        return self.expected == self.measured and not self.uncounted_ops


@dataclass
class VerifyResult:
    model: str  # the spec's model
    scaled: str  # the copy that was built and counted
    sizes: list[str]  # what the scaling changed, "field: old → new"
    seq: int
    batch: int
    checks: list[Check]
    adjustments: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def comparable_plan(plan: ResolvedModel) -> tuple[ResolvedModel, list[str]]:
    notes = []

    def fix(lp: LayerPlan) -> LayerPlan:
        a, f = lp.attention, lp.ffn
        if a.window is not None:
            a = dataclasses.replace(a, window=None)
        if isinstance(f, MoEPlan) and f.capacity_factor is not None:
            f = dataclasses.replace(f, capacity_factor=None)
        if isinstance(f, MoEPlan) and f.n_zero_experts:
            f = dataclasses.replace(f, n_zero_experts=0)
        return dataclasses.replace(lp, attention=a, ffn=f)  # the token mixer stays

    if any(lp.attention.window for lp in plan.layers):
        notes.append("sliding windows removed: the measured kernel computes every score and masks")
    if any(isinstance(lp.ffn, MoEPlan) and lp.ffn.capacity_factor for lp in plan.layers):
        notes.append("capacity factor removed: dropped tokens would execute fewer FLOPs than the model's")
    if any(isinstance(lp.ffn, MoEPlan) and lp.ffn.n_zero_experts for lp in plan.layers):
        notes.append("zero experts removed: the analyzer counts every slot on an FFN expert (the upper bound)")
    return dataclasses.replace(
        plan, layers=tuple(fix(l) for l in plan.layers), mtp=tuple(fix(l) for l in plan.mtp)
    ), notes


def sdpa_flops(q_shape: Any, k_shape: Any, v_shape: Any) -> int:
    """QKᵀ and AV of (B, h, S_q, d_qk) queries over S_kv keys: 2·B·h·S_q·S_kv·(d_qk + d_v). Grouped KV heads
    (``enable_gqa``) do not reduce it: every query head meets every key."""
    b, h, s_q, d_qk = q_shape
    s_kv, d_v = k_shape[-2], v_shape[-1]
    return 2 * b * h * s_q * s_kv * (d_qk + d_v)


def grouped_mm_flops(a_shape: Any, b_shape: Any) -> int:
    """``_grouped_mm``: 2D×3D (rows grouped by offs): every row meets one (K, N) matrix, 2·M·K·N; 3D×3D:
    batched; 2D×2D (the weight-gradient form): output (E, K, N), each element sums over its group's rows."""
    if len(a_shape) == 2 and len(b_shape) == 3:
        return 2 * a_shape[0] * a_shape[1] * b_shape[2]
    if len(a_shape) == 3 and len(b_shape) == 3:
        return 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def _formulas() -> dict:
    """FlopCounterMode formulas (arguments arrive as shapes) for the ops it would count as 0."""
    import torch

    aten = torch.ops.aten

    def grouped_mm(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        return grouped_mm_flops(a_shape, b_shape)

    def cpu_sdpa(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flops(q_shape, k_shape, v_shape)

    def cpu_sdpa_backward(grad_out_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        # dV = PᵀdO, dP = dO·Vᵀ, dQ = dS·K, dK = dSᵀQ: each forward product twice
        return 2 * sdpa_flops(q_shape, k_shape, v_shape)

    m = {}
    if hasattr(aten, "_grouped_mm"):
        m[aten._grouped_mm] = grouped_mm
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        m[aten._scaled_dot_product_flash_attention_for_cpu] = cpu_sdpa
        m[aten._scaled_dot_product_flash_attention_for_cpu_backward] = cpu_sdpa_backward
    return m


def verify(plan: ResolvedModel, *, seq: int = 32, batch: int = 1, shrink_first: bool = True) -> VerifyResult:
    """Count a scaled-down copy of ``plan`` (the plan itself with ``shrink_first=False``) at ``batch`` ×
    ``seq`` tokens with FlopCounterMode (forward, forward+backward) and fvcore (forward)."""
    import torch

    from moec.analyze import analyze
    from moec.nn import build_model
    from moec.smoke.scale import describe_changes, fit

    small = fit(plan, scale="tiny", budget_bytes=None, batch=batch, seq=seq).plan if shrink_first else plan
    sizes = describe_changes(plan, small)
    small, notes = comparable_plan(small)
    _require_memory(plan, small, batch=batch, seq=seq)
    model = build_model(small, device="cpu", dtype=torch.float32, backend="reference", seed=0)
    tokens = torch.randint(small.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))

    a = analyze(small, seq=seq, batch=batch, attention="full")
    n = batch * seq
    mtp_forward = a.mtp.forward_flops if a.mtp else 0
    forward = int((a.flops.forward + mtp_forward) * n)
    training = int((a.flops.training + 3 * mtp_forward) * n)
    if a.mtp:
        notes.append("MTP modules run in the model: their forward FLOPs added to forward, 3× to training")
    if "embedding" in small.frozen:
        notes.append(
            "embedding frozen: its output is made to require a gradient, so that the layers below the first "
            "trainable weight form the input gradients the training rule counts"
        )
    if small.norm.kind == "layernorm":
        notes.append("fvcore's LayerNorm handle turned off: moec counts a norm's elementwise work as 0")
    refused = _flops_refused(small)
    if refused:  # the counters cannot see the FLOPs the analyzer states: the parameters are checked instead
        notes.append(refused)
        return VerifyResult(plan.name, small.name, sizes, seq, batch, [_params_check(model, a)], notes)
    claim = f"analyzer: fwd FLOPs/token × {n:,} tokens"
    fwd, train = _flop_counter_checks(model, tokens, forward, training, claim)
    fv = _fvcore_check(model, tokens, forward, claim + " ÷ 2")
    return VerifyResult(plan.name, small.name, sizes, seq, batch, [fwd, train, fv], notes)


HYBRID_FLOPS_REFUSED = (
    "FLOPs not checked: a hybrid's token mixers (docs/mixers.md) do multiply-adds outside matmuls (the scans' and "
    "state updates' elementwise products, which moec counts and FlopCounterMode and fvcore do not), so neither "
    "counter can verify them; the built model's parameters are checked instead"
)


INDEXER_FLOPS_REFUSED = (
    "FLOPs not checked: moec.nn computes DeepSeek Sparse Attention as a mask over every visible key and its "
    "indexer without a gradient, so the counters see neither the sparse figure nor its training rule; the built "
    "model's parameters are checked instead"
)


def _flops_refused(plan: ResolvedModel) -> str:
    """Why the FLOP counters cannot verify ``plan`` (empty when they can)."""
    if plan.hybrid:  # the counters see the mixers' matmuls but not the multiply-adds of their scans
        return HYBRID_FLOPS_REFUSED
    if any(lp.attention.sparse for lp in plan.layers):
        return INDEXER_FLOPS_REFUSED
    return ""


def _params_check(model: Any, a: Any) -> Check:
    """The built model's parameters (each tensor once) against the analyzer's total, MTP included."""
    measured = sum(p.numel() for p in model.parameters())
    expected = a.params.total + (a.mtp.params if a.mtp else 0)
    return Check("moec.nn build", "parameters", "parameters", "analyzer: total params", expected, measured, {})


def _require_memory(plan: ResolvedModel, small: ResolvedModel, *, batch: int, seq: int) -> None:
    """Refuse, before building, a copy whose forward and backward would not fit in the CPU's free memory."""
    import torch

    from moec.analyze import analyze
    from moec.analyze.memory import RUNTIME_BYTES, RunMemory, run_activation_bytes
    from moec.nn.build import require_memory

    counts = analyze(small)
    params = counts.params.total + (counts.mtp.params if counts.mtp else 0)
    need = RunMemory(
        "fp32",
        (
            ("weights", 4 * params),
            ("gradients", 4 * params),
            ("activations", run_activation_bytes(small, batch=batch, seq=seq, dtype="fp32")),
            ("runtime", RUNTIME_BYTES),
        ),
        at=f"at batch {batch} × seq {seq}",
    )
    require_memory(
        need,
        torch.device("cpu"),
        lead=f"analyze --verify of {plan.name} builds {small.name}, which needs",
        hint="; the scaled-down copy keeps every expert and layer kind of the spec",
    )


def _flop_counter_checks(model: Any, tokens: Any, forward: int, training: int, claim: str) -> tuple[Check, Check]:
    """One training step's forward, then its backward, each under its own FlopCounterMode, with a census of
    every op the step dispatches."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    seen: set = set()

    class Census(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(func.overloadpacket)
            return func(*args, **(kwargs or {}))

    def require_grad(module, inputs, out):
        return out if out.requires_grad else out.detach().requires_grad_()

    mapping = _formulas()
    fwd_counter = FlopCounterMode(display=False, custom_mapping=mapping)
    bwd_counter = FlopCounterMode(display=False, custom_mapping=mapping)
    hook = model.embed.register_forward_hook(require_grad)
    model.train()
    try:
        with Census():
            with fwd_counter:
                logits, aux = model(tokens)
                # a loss that reaches every output, so that the backward forms every gradient
                loss = logits.sum() + aux.loss + sum(m.sum() for m in aux.mtp_logits)
            with bwd_counter:
                loss.backward()
    finally:
        hook.remove()
        model.zero_grad(set_to_none=True)
    registry = fwd_counter.flop_registry
    missing = sorted(
        str(op) for op in seen if op not in registry and any(w in str(op).split(".")[-1] for w in MATMUL_LIKE)
    )
    unit = "FLOPs, 1 multiply-add = 2"
    fwd_ops, bwd_ops = _by_op(fwd_counter), _by_op(bwd_counter)
    total = {k: fwd_ops.get(k, 0) + bwd_ops.get(k, 0) for k in fwd_ops.keys() | bwd_ops.keys()}
    fwd = Check("FlopCounterMode", "forward", unit, claim, forward, fwd_counter.get_total_flops(), fwd_ops, missing)
    train_claim = claim.replace("fwd", "training")
    measured = fwd.measured + bwd_counter.get_total_flops()
    train = Check("FlopCounterMode", "forward+backward", unit, train_claim, training, measured, total, missing)
    train.rule = TRAINING_RULE
    return fwd, train


def _by_op(counter: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}


def _fvcore_handles() -> dict[str, Any]:
    """fvcore handles (``(inputs, outputs) → multiply-adds`` over jit values) for the ops fvcore does not know."""
    from fvcore.nn.jit_handles import get_shape

    def sdpa(inputs: list, outputs: list) -> int:
        return sdpa_flops(*(get_shape(v) for v in inputs[:3])) // 2

    def grouped_mm(inputs: list, outputs: list) -> int:
        return grouped_mm_flops(get_shape(inputs[0]), get_shape(inputs[1])) // 2

    def nothing(inputs: list, outputs: list) -> int:
        return 0

    # fvcore counts a norm's elementwise work by default; moec's convention counts it as 0 (the result says
    # so). A handle of None would not do: fvcore still runs the op's default handle
    ignored = dict.fromkeys(FVCORE_IGNORED, nothing)
    return {"aten::scaled_dot_product_attention": sdpa, "aten::_grouped_mm": grouped_mm, **ignored}


def fvcore_count(module: Any, inputs: tuple) -> tuple[int, dict[str, int], list[str]]:
    """fvcore's count of ``module(*inputs)`` with moec's handles: (multiply-adds, by op, matmul-like ops it
    left uncounted)."""
    from fvcore.nn import FlopCountAnalysis

    fca = FlopCountAnalysis(module, inputs)
    for name, handle in _fvcore_handles().items():
        fca.set_op_handle(name, handle)
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    fca.tracer_warnings("none")
    total = int(fca.total())
    uncounted = sorted(op for op in fca.unsupported_ops() if any(w in op.split("::")[-1] for w in MATMUL_LIKE))
    return total, {k: int(v) for k, v in fca.by_operator().items() if v}, uncounted


def _fvcore_check(model: Any, tokens: Any, forward: int, claim: str) -> Check:
    import torch

    from moec.errors import CommandError

    class Outputs(torch.nn.Module):
        """The model as a jit trace wants it: tensors out (the logits, and the MTP logits)."""

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
            logits, aux = self.inner(t)
            return (logits, *aux.mtp_logits)

    if forward % 2:
        raise CommandError(
            f"the analyzer's forward count {forward:,} is odd: it is not a whole number of multiply-adds"
        )
    model.eval()
    with torch.no_grad():
        macs, by_op, uncounted = fvcore_count(Outputs(model), (tokens,))
    return Check("fvcore", "forward", "fvcore flops, 1 multiply-add = 1", claim, forward // 2, macs, by_op, uncounted)
