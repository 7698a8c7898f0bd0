"""`moec analyze --verify`: hold the closed-form analyzer against a measured FLOP count.

A scaled-down copy of the model is built on the CPU and run under torch's FlopCounterMode, with
formulas registered for the ops it silently counts as 0 (``aten._grouped_mm``; CPU SDPA,
``_scaled_dot_product_flash_attention_for_cpu``; moec's Triton op registers its own). An op census
fails loudly on any matmul- or attention-like op that has no formula, so a new code path can never
make the measurement drift to "0 FLOPs" unnoticed.

What the measurement cannot see, and how the expectation is adjusted (stated in the result):
- FlopCounterMode counts every attention score, so windows are dropped from the plan it is compared
  with (the analyzer caps them; the kernel computes and masks them);
- capacity dropping executes fewer expert FLOPs than the model's, so the copy is made dropless;
- the MTP module's FLOPs are added to the expectation when the model runs it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from moec.spec.plan import LayerPlan, MoEPlan, ResolvedModel

MATMUL_LIKE = ("mm", "matmul", "attention", "conv", "einsum", "dot", "linear")


@dataclass
class VerifyResult:
    model: str
    seq: int
    batch: int
    expected: int
    measured: int
    by_op: dict[str, int]
    unformulated_ops: list[str]
    adjustments: list[str] = field(default_factory=list)
    fvcore_macs: int | None = None

    @property
    def ok(self) -> bool:
        return self.expected == self.measured and not self.unformulated_ops


def comparable_plan(plan: ResolvedModel) -> tuple[ResolvedModel, list[str]]:
    notes = []

    def fix(lp: LayerPlan) -> LayerPlan:
        a, f = lp.attention, lp.ffn
        if a.window is not None:
            a = dataclasses.replace(a, window=None)
        if isinstance(f, MoEPlan) and f.capacity_factor is not None:
            f = dataclasses.replace(f, capacity_factor=None)
        return LayerPlan(lp.index, a, f)

    if any(lp.attention.window for lp in plan.layers):
        notes.append("sliding windows removed: the measured kernel computes every score and masks")
    if any(isinstance(lp.ffn, MoEPlan) and lp.ffn.capacity_factor for lp in plan.layers):
        notes.append("capacity factor removed: dropped tokens would execute fewer FLOPs than the model's")
    return dataclasses.replace(
        plan, layers=tuple(fix(l) for l in plan.layers), mtp=tuple(fix(l) for l in plan.mtp)
    ), notes


def _formulas() -> dict:
    import torch

    aten = torch.ops.aten

    def grouped_mm(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        # 2D×3D (rows grouped by offs): every row meets one (K, N) matrix: 2·M·K·N
        if len(a_shape) == 2 and len(b_shape) == 3:
            return 2 * a_shape[0] * a_shape[1] * b_shape[2]
        if len(a_shape) == 3 and len(b_shape) == 3:  # batched
            return 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]
        # 2D×2D (the weight-gradient form): output (E, K, N), each element sums over its group's rows
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]

    def cpu_sdpa(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        b, h, s_q, d_qk = q_shape
        s_kv, d_v = k_shape[-2], v_shape[-1]
        return 2 * b * h * s_q * s_kv * (d_qk + d_v)

    m = {}
    if hasattr(aten, "_grouped_mm"):
        m[aten._grouped_mm] = grouped_mm
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        m[aten._scaled_dot_product_flash_attention_for_cpu] = cpu_sdpa
    return m


def verify(
    plan: ResolvedModel, *, seq: int = 32, batch: int = 1, shrink_first: bool = True, fvcore: bool = False
) -> VerifyResult:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from moec.analyze import analyze
    from moec.analyze.memory import forward_run_memory
    from moec.nn import build_model
    from moec.nn.build import require_memory
    from moec.smoke.scale import fit

    small = fit(plan, scale="tiny", budget_bytes=None, batch=batch, seq=seq).plan if shrink_first else plan
    small, notes = comparable_plan(small)
    counts = analyze(small)
    need = forward_run_memory(
        small, params=counts.params.total + (counts.mtp.params if counts.mtp else 0), batch=batch, seq=seq, dtype="fp32"
    )
    require_memory(
        need,
        torch.device("cpu"),
        lead=f"analyze --verify of {plan.name} builds {small.name}, which needs",
        hint="; the scaled-down copy keeps every expert and layer kind of the spec",
    )
    model = build_model(small, device="cpu", dtype=torch.float32, backend="reference", seed=0)
    model.eval()
    tokens = torch.randint(small.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))

    mapping = _formulas()
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    seen: set = set()

    class Census(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(func.overloadpacket)
            return func(*args, **(kwargs or {}))

    with torch.no_grad():
        with Census():
            model(tokens)
        with counter:
            model(tokens)
    registry = counter.flop_registry
    missing = sorted(
        str(op) for op in seen if op not in registry and any(w in str(op).split(".")[-1] for w in MATMUL_LIKE)
    )
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    a = analyze(small, seq=seq, batch=batch, attention="full")
    per_token = a.flops.forward + (a.mtp.forward_flops if a.mtp else 0)
    if a.mtp:
        notes.append("MTP module FLOPs added (the model runs it)")
    result = VerifyResult(
        small.name, seq, batch, int(per_token * batch * seq), counter.get_total_flops(), by_op, missing, notes
    )
    if fvcore:
        result.fvcore_macs = _fvcore_macs(model, tokens)
    return result


def _fvcore_macs(model, tokens) -> int | None:
    """fvcore's count, a second opinion. fvcore counts multiply-adds (1 MAC = 2 FLOPs) and needs a
    traceable function; returns None when fvcore is not installed."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return None
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, t):
            return self.m(t)[0]

    fca = FlopCountAnalysis(Logits(model), (tokens,))
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    return int(fca.total())
