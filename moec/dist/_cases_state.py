"""Worker checks of weight loading, export and tensor parallelism (run by moec.dist._selftest; asserted in
tests/dist).

Round trip: a model built on ``meta``, parallelized, loaded from rank 0's state dict by broadcast, then
exported, must give back every name and every value of the single-process model.
Tensor parallelism: with every rank fed the same tokens, the logits, the loss and one SGD step's weights
(exported, so the fused [gate | up] columns come back in single-process order) equal the single-process
model's; each rank's shard of a gated FFN holds exactly its [gate_r | up_r] columns of the original. The
generated model.py of the same spec, through its own parallelize(), is held to the same single-process moec.nn
model.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.distributed as dist

import moec.dist as md
from moec.dist._cases_train import generated_module
from moec.dist.mesh import local
from moec.nn import build_model
from moec.nn import lm_loss as single_lm_loss
from moec.plan import Layout
from moec.spec import load_spec, resolve
from moec.spec.plan import ResolvedModel

COMMON = """
moec: 1
model: {vocab_size: 64, d_model: 32, n_layers: 2, max_seq_len: 32}
ffn: {d_ff: 32, bias: true}
moe: {n_experts: 4, d_ff: 8, n_shared_experts: 2, shared_gate: true, bias: true, router: {top_k: 2}}
layers:
  default: {ffn: moe}
  overrides: [{select: [0], ffn: dense}]
"""
ATTENTION = {
    "gqa": "attention: {n_heads: 4, n_kv_heads: 2, qk_norm: true, bias: true, out_bias: true, window: 8}\n",
    "mla": (
        "attention: {kind: mla, n_heads: 4, q_lora_rank: 16, kv_lora_rank: 8, qk_nope_head_dim: 8,"
        " qk_rope_head_dim: 4, v_head_dim: 8}\n"
    ),
}
SGD_LR = 0.1


def state_plan(attention: str) -> ResolvedModel:
    return resolve(load_spec(f"{attention}.yaml", text=COMMON + f"name: {attention}\n" + ATTENTION[attention]))


def _parallel_copy(
    plan: ResolvedModel,
    layout: Layout,
    full: dict[str, torch.Tensor],
    *,
    fsdp: bool,
    generated: ModuleType | None = None,
):
    """``generated``: a generated model.py module (FSDP always), whose Model and parallelize() stand in for
    moec.nn's."""
    meshes = md.build_mesh(layout, plan)
    if generated is None:
        model = build_model(plan, device="meta", backend="reference")
        md.parallelize(model, meshes, fsdp=fsdp)
    else:
        with torch.device("meta"):
            model = generated.parallelize(generated.Model(backend="reference"), meshes)
    md.load_full_state_dict(model, full if dist.get_rank() == 0 else None)
    return model


def _diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - v).abs().max().item() for k, v in b.items())


def round_trip(plan: ResolvedModel, layout: Layout, *, fsdp: bool) -> dict:
    ref = build_model(plan, device="cpu", seed=0, backend="reference")
    full = ref.state_dict()
    model = _parallel_copy(plan, layout, full, fsdp=fsdp)
    exported = md.full_state_dict(model)
    if dist.get_rank() != 0:
        return {"exported": len(exported)}
    return {"names_equal": list(exported) == list(full), "max_diff": _diff(exported, full), "exported": len(exported)}


def _sgd_step(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= SGD_LR * p.grad


def tensor_parallel(plan: ResolvedModel, generated: ModuleType | None = None) -> dict:
    """``generated``: run the generated model.py (under TP × FSDP) against the same moec.nn reference."""
    rank, world = dist.get_rank(), dist.get_world_size()
    ref = build_model(plan, device="cpu", seed=0, backend="reference")
    full = {k: v.clone() for k, v in ref.state_dict().items()}
    model = _parallel_copy(plan, Layout(tp=world), full, fsdp=False, generated=generated)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))
    results = {}
    for name, m in (("reference", ref), ("tp", model)):
        logits, aux = m(tokens)
        loss, _ = single_lm_loss(logits, tokens, aux)  # moec.nn's ModelAux or the generated one: the same fields
        loss.backward()
        _sgd_step(m)
        results[name] = (logits.detach(), loss.item())
    exported = md.full_state_dict(model)
    f = plan.layers[0].ffn.d_ff // world  # this rank's share of the dense FFN's gate and of its up columns
    w = full["layers.0.ffn.w_gate_up"]
    mine = torch.cat((w[:, rank * f : (rank + 1) * f], w[:, w.shape[1] // 2 + rank * f :][:, :f]), 1)
    out = {
        "logits_diff": (results["tp"][0] - results["reference"][0]).abs().max().item(),
        "loss_diff": abs(results["tp"][1] - results["reference"][1]),
        "local_q_rows": local(_q_weight(model)).shape[0],
        "full_q_rows": _q_weight(ref).shape[0],
        "local_gate_up_is_rank_columns": torch.equal(local(_initial_shard(plan, world, full, generated)), mine),
    }
    if rank == 0:
        out["step_param_diff"] = _diff(exported, ref.state_dict())
        out["names_equal"] = list(exported) == list(full)
    return out


def _q_weight(model: torch.nn.Module) -> torch.Tensor:
    attn = model.layers[0].attn
    proj = getattr(attn, "q_proj", None) or attn.q_b_proj
    return proj.weight


def _initial_shard(
    plan: ResolvedModel, tp: int, full: dict[str, torch.Tensor], generated: ModuleType | None
) -> torch.Tensor:
    """A freshly loaded TP model's dense w_gate_up, before any step changes it."""
    model = _parallel_copy(plan, Layout(tp=tp), full, fsdp=False, generated=generated)
    return model.layers[0].ffn.w_gate_up.detach()


def state_case() -> dict:
    world = dist.get_world_size()
    gqa, mla = state_plan("gqa"), state_plan("mla")
    return {
        "round_trip_ep_fsdp": round_trip(gqa, Layout(ep=world), fsdp=True),
        "round_trip_tp": round_trip(gqa, Layout(tp=world), fsdp=False),
        "round_trip_tp_fsdp": round_trip(gqa, Layout(tp=world), fsdp=True),
        "tp_gqa": tensor_parallel(gqa),
        "tp_mla": tensor_parallel(mla),
        "generated_tp_gqa": tensor_parallel(gqa, generated_module(gqa)),
        "generated_tp_mla": tensor_parallel(mla, generated_module(mla)),
    }


CASES = {"state": state_case}
