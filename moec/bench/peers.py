"""The implementations ``moec bench`` times, each behind one call: ``fn(x, topk_idx, topk_w) -> (T, d)``.

A peer is built once per token count from the shared weights (``Weights``); building is not timed.
Its ``leaves`` are the tensors whose gradients a fwd+bwd step produces, and ``grads()`` maps them
back to moec's names and layouts (x, topk_w, w_gate_up (E, d, W), w_down (E, f, d)) for the error
check against the oracle.

moec backends: ``naive`` (the oracle loop), ``reference`` (sort + per-expert slices / grouped_mm),
``triton`` (fused kernels, CUDA only).
Written here as yardsticks:
  ``hf_loop``      the transformers eager loop (one_hot → where per expert → index_add_), indexing
                   the stacked weight ``W[e]`` per expert as HF's MixtralExperts does; it uses moec's
                   (in, out) weight layout with ``@`` instead of HF's (out, in) with ``F.linear``.
  ``all_experts``  every expert on every token, then weighted by a dense (T, E) gate matrix
                   (E/k times the useful FLOPs: what "compute all and mask" costs).
  ``ideal_dense``  the same FLOPs as plain dense matmuls of the same shapes: (T·k, d) @ (d, W),
                   the activation, (T·k, f) @ (f, d) on pre-gathered rows with one weight pair —
                   what the expert computation would cost if routing were free.
Optional peers (used by bench/moe_gpu.py when importable): ``hf_grouped_mm`` (transformers'
MixtralExperts with ``experts_implementation="grouped_mm"``, gated activations only) and ``liger``
(Liger-Kernel's LigerFusedMoEFunction, SwiGLU only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from moec.hf.families._export_common import HIDDEN_ACT
from moec.kernels import GATED
from moec.kernels.activations import activate

ExpertFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

MOEC_BACKENDS = ("naive", "reference", "triton")
YARDSTICKS = ("hf_loop", "all_experts", "ideal_dense")
OPTIONAL = ("hf_grouped_mm", "liger")
ALL_PEERS = MOEC_BACKENDS + YARDSTICKS + OPTIONAL


class Unavailable(Exception):
    """This peer cannot run here (not installed, needs a GPU, unsupported activation); a note, not an error."""


@dataclass
class Weights:
    w_gate_up: torch.Tensor  # (E, d, W): W = 2f gated ([gate | up]), f otherwise
    w_down: torch.Tensor  # (E, f, d)
    activation: str
    alpha: float | None = None  # the clamped activations' parameters (BenchShape.activation_alpha / _limit)
    limit: float | None = None

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        return activate(h, self.activation, alpha=self.alpha, limit=self.limit)

    def expert_ffn_options(self) -> dict[str, Any]:
        """The keyword arguments every moec backend's expert_ffn takes for this activation."""
        return {"activation": self.activation, "alpha": self.alpha, "limit": self.limit}


@dataclass
class Peer:
    name: str
    fn: ExpertFn
    leaves: dict[str, torch.Tensor] = field(default_factory=dict)  # differentiable tensors it owns
    to_moec: dict[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)  # grad layout maps
    rows_input: bool = False  # ideal_dense: takes pre-gathered (T·k, d) rows, not (x, idx, w)


def hf_loop(x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, w: Weights) -> torch.Tensor:
    E = w.w_gate_up.shape[0]
    out = torch.zeros_like(x)
    with torch.no_grad():
        mask = F.one_hot(topk_idx.clamp(min=-1) % (E + 1), num_classes=E + 1).permute(2, 1, 0)  # (E+1, k, T)
        hit = torch.greater(mask[:E].sum(dim=(-1, -2)), 0).nonzero()  # experts with tokens (a host sync)
    for e in hit:
        e = e[0]
        slot, tok = torch.where(mask[e])
        h = x[tok] @ w.w_gate_up[e]  # W[e] selected under autograd, as HF eager does
        y = w.activate(h) @ w.w_down[e]
        out.index_add_(0, tok, (y * topk_w[tok, slot, None]).to(out.dtype))
    return out


def all_experts(x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, w: Weights) -> torch.Tensor:
    E = w.w_gate_up.shape[0]
    h = torch.matmul(x.unsqueeze(0), w.w_gate_up)  # (E, T, W): every expert on every token
    y = torch.bmm(w.activate(h), w.w_down)  # (E, T, d)
    live = topk_idx >= 0
    gates = torch.zeros(x.shape[0], E, dtype=y.dtype, device=x.device)  # (T, E) dense gate matrix
    gates = gates.scatter_add(1, topk_idx.clamp(min=0), torch.where(live, topk_w, 0).to(y.dtype))
    return torch.einsum("te,etd->td", gates, y)


def build_peer(name: str, w: Weights, *, backward: bool) -> Peer:
    """Raises Unavailable when the peer cannot run in this environment."""
    dev = w.w_gate_up.device
    act = w.expert_ffn_options()

    if name == "naive":
        from moec.kernels import naive

        return Peer(name, lambda x, i, g: naive.expert_ffn(x, i, g, w.w_gate_up, w.w_down, **act))
    if name == "reference":
        try:
            from moec.kernels import reference
        except ImportError as e:
            raise Unavailable(f"moec.kernels.reference not importable: {e}") from e
        return Peer(name, lambda x, i, g: reference.expert_ffn(x, i, g, w.w_gate_up, w.w_down, **act))
    if name == "triton":
        if dev.type != "cuda":
            raise Unavailable("GPU only (on CPU the Triton interpreter is for correctness tests, never timed)")
        from moec.kernels import triton as triton_backend

        return Peer(name, lambda x, i, g: triton_backend.expert_ffn(x, i, g, w.w_gate_up, w.w_down, **act))
    if name == "hf_loop":
        return Peer(name, lambda x, i, g: hf_loop(x, i, g, w))
    if name == "all_experts":
        return Peer(name, lambda x, i, g: all_experts(x, i, g, w))
    if name == "ideal_dense":
        w1 = w.w_gate_up[0].detach().clone().requires_grad_(backward)  # (d, W)
        w2 = w.w_down[0].detach().clone().requires_grad_(backward)  # (f, d)

        def ideal(rows: torch.Tensor, _i: torch.Tensor, _g: torch.Tensor) -> torch.Tensor:
            return w.activate(rows @ w1) @ w2  # (T·k, d)

        return Peer(name, ideal, leaves={"w1": w1, "w2": w2}, rows_input=True)
    if name == "hf_grouped_mm":
        return _hf_grouped_mm(w, backward=backward)
    if name == "liger":
        return _liger(w, backward=backward)
    raise ValueError(f"unknown bench backend {name!r}; choose from {', '.join(ALL_PEERS)}")


def _hf_layout(t: torch.Tensor) -> torch.Tensor:
    """(E, in, out) → (E, out, in) contiguous: a view sharing storage when the bench keeps weights in
    HF's layout (BenchOptions.weight_layout="hf"), else a copy. Detached: the peer's own leaf."""
    t = t.detach().transpose(1, 2)
    return t if t.is_contiguous() else t.contiguous()


def _hf_grouped_mm(w: Weights, *, backward: bool) -> Peer:
    if w.activation not in GATED:
        raise Unavailable("transformers' MixtralExperts is gated (swiglu, geglu, geglu_tanh) only")
    try:
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralExperts
    except ImportError as e:
        raise Unavailable(f"transformers MixtralExperts not importable: {e}") from e
    E, d, W = w.w_gate_up.shape
    hidden_act = HIDDEN_ACT.get(w.activation)
    if hidden_act is None:
        raise Unavailable(f"transformers' MixtralExperts has no hidden_act for {w.activation}")
    cfg = MixtralConfig(hidden_size=d, intermediate_size=W // 2, num_local_experts=E, hidden_act=hidden_act)
    try:
        cfg._experts_implementation = "grouped_mm"
    except Exception as e:  # noqa: BLE001 - older transformers without the experts interface
        raise Unavailable(f"this transformers has no experts_implementation switch: {e}") from e
    with torch.device("meta"):  # no host allocation of E full-size fp32 matrices
        experts = MixtralExperts(cfg)
    # HF stores (out, in): gate_up_proj (E, 2f, d), down_proj (E, d, f)
    experts.gate_up_proj = torch.nn.Parameter(_hf_layout(w.w_gate_up), requires_grad=backward)
    experts.down_proj = torch.nn.Parameter(_hf_layout(w.w_down), requires_grad=backward)

    def fn(x: torch.Tensor, i: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return experts(x, i, g.to(x.dtype))

    return Peer(
        "hf_grouped_mm",
        fn,
        leaves={"w_gate_up": experts.gate_up_proj, "w_down": experts.down_proj},
        to_moec={"w_gate_up": lambda g: g.transpose(1, 2), "w_down": lambda g: g.transpose(1, 2)},
    )


def _liger(w: Weights, *, backward: bool) -> Peer:
    if w.activation != "swiglu":
        raise Unavailable("Liger's fused MoE is SwiGLU only")
    if w.w_gate_up.device.type != "cuda":
        raise Unavailable("GPU only")
    try:
        from liger_kernel.ops.fused_moe import LigerFusedMoEFunction
    except ImportError as e:
        raise Unavailable(f"liger_kernel not importable: {e}") from e
    # Liger's layout is HF's: gate_up_proj (E, 2f, d) with gate rows first, down_proj (E, d, f)
    gate_up = _hf_layout(w.w_gate_up).requires_grad_(backward)
    down = _hf_layout(w.w_down).requires_grad_(backward)

    def fn(x: torch.Tensor, i: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return LigerFusedMoEFunction.apply(x, gate_up, down, i.to(torch.int32), g.to(x.dtype))

    return Peer(
        "liger",
        fn,
        leaves={"w_gate_up": gate_up, "w_down": down},
        to_moec={"w_gate_up": lambda g: g.transpose(1, 2), "w_down": lambda g: g.transpose(1, 2)},
    )
