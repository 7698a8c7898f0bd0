"""Worker checks of distributed training (run by moec.dist._selftest; asserted in tests/dist).

Each rank trains the single-process model on the whole batch itself (the reference), then the same model
under a layout, fed its share of the batch, for the same steps: AdamW, gradient clipping that bites, and the
aux-loss-free bias step. The generated model.py of the same spec, through its own parallelize() (EP × FSDP and
TP × FSDP), is held to the same reference; what tensor parallelism cannot split (attention sinks) is refused for it
by name, as for moec.nn. The balance loss is per sequence, so the global batch's aux loss is the mean of the
ranks' (a batch-level one is per local batch, GShard's groups, and would differ from one process by design).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.distributed as dist

import moec.dist as md
from moec.codegen import render_model_source
from moec.dist.mesh import local
from moec.dist.parts import routed_experts
from moec.generated import import_python_file
from moec.nn import build_model
from moec.nn import lm_loss as single_lm_loss
from moec.plan import Layout, rank_params
from moec.spec import load_spec, resolve
from moec.spec.plan import ResolvedModel

SPEC = """
moec: 1
name: dist-train
model: {vocab_size: 64, d_model: 32, n_layers: 2, max_seq_len: 32, tie_embeddings: true}
attention: {n_heads: 4, n_kv_heads: 2}
ffn: {d_ff: 64}
moe:
  n_experts: 4
  d_ff: 16
  n_shared_experts: 1
  bias: true
  router: {top_k: 2, score: sigmoid, normalize_topk: true, selection_bias: true}
  balance: {load_balance_coeff: 0.01, load_balance_granularity: sequence, z_loss_coeff: 0.001,
            bias_update_rate: 0.01}
layers:
  default: {ffn: moe}
  overrides: [{select: [0], ffn: dense}]
"""
BATCH, SEQ, STEPS, LR, MAX_NORM = 4, 16, 3, 1e-2, 0.5


def train_plan() -> ResolvedModel:
    return resolve(load_spec("dist-train.yaml", text=SPEC))


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, 64, (BATCH, SEQ), generator=g) for _ in range(STEPS)]


def reference_run(plan: ResolvedModel) -> dict:
    """The single-process run: losses, gradient norms, final weights and selection biases."""
    model = build_model(plan, device="cpu", seed=0, backend="reference")
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    losses, norms = [], []
    for tokens in batches():
        logits, aux = model(tokens)
        loss, _ = single_lm_loss(logits, tokens, aux)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM).item())
        opt.step()
        opt.zero_grad()
        model.update_bias()
        losses.append(loss.item())
    return {"initial": initial, "final": model.state_dict(), "losses": losses, "norms": norms}


def _expert_bias(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([m.expert_bias for n, m in model.named_modules() if n.endswith("router")])


def _numel(model: torch.nn.Module) -> dict[str, int]:
    experts = {id(p) for _, m in routed_experts(model) for p in m.parameters()}
    counts = {"experts": 0, "other": 0}
    for p in model.parameters():
        counts["experts" if id(p) in experts else "other"] += local(p).numel()
    return counts


def distributed_run(
    plan: ResolvedModel,
    ref: dict,
    layout: Layout,
    *,
    fsdp: bool,
    wrong_scaling: bool = False,
    generated: ModuleType | None = None,
):
    """``generated``: a generated model.py module, whose Model and parallelize() stand in for moec.nn's."""
    rank, world = dist.get_rank(), dist.get_world_size()
    meshes = md.build_mesh(layout, plan)
    if generated is None:
        model = build_model(plan, device="meta", backend="reference")
        md.parallelize(model, meshes, fsdp=fsdp)
    else:
        model = generated.parallelize(_meta_model(generated), meshes)
    if wrong_scaling:  # FSDP's default: the mean over each unit's group, and a loss left per rank
        experts = {id(m) for _, m in routed_experts(model)}
        for m in model.modules():
            if hasattr(m, "set_gradient_divide_factor"):
                m.set_gradient_divide_factor(float((meshes.efsdp if id(m) in experts else meshes.dp).size()))
    md.load_full_state_dict(model, ref["initial"] if rank == 0 else None)
    numel = _numel(model)
    tied = model.lm_head.weight is model.embed.weight
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    share = BATCH // meshes.dp.size()
    mine = slice(meshes.dp.get_local_rank() * share, (meshes.dp.get_local_rank() + 1) * share)
    losses, norms, signs = [], [], []
    for tokens in batches():
        tokens = tokens[mine]
        logits, aux = model(tokens)
        loss, _ = md.lm_loss(logits, tokens, aux, meshes.batch_group)
        if wrong_scaling:
            loss, _ = single_lm_loss(logits, tokens, aux)
        loss.backward()
        if not fsdp:
            md.sync_gradients(model, meshes)
        norms.append(md.clip_grad_norm_(model.parameters(), MAX_NORM).item())
        opt.step()
        opt.zero_grad()
        signs.append(_local_load_signs(model, world))
        md.update_bias(model, meshes.batch_group)
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss, group=meshes.batch_group)
        losses.append(global_loss.item() / (meshes.dp.size() if wrong_scaling else 1))
    final = md.full_state_dict(model)
    biases = [torch.empty_like(_expert_bias(model)) for _ in range(world)]
    dist.all_gather(biases, _expert_bias(model))
    out = {
        "loss_diff": max(abs(a - b) for a, b in zip(losses, ref["losses"], strict=True)),
        "norm_diff": max(abs(a - b) for a, b in zip(norms, ref["norms"], strict=True)),
        "norms": norms,
        "bias_spread_across_ranks": max((b - biases[0]).abs().max().item() for b in biases),
        "bias_diff_vs_reference": (biases[rank] - _expert_bias_of(ref["final"])).abs().max().item(),
        "local_bias_steps_differ": any(signs),
        "numel": numel,
        "tied_after_load": tied,
        "planned_numel": _planned(plan, layout, rank),
    }
    if rank == 0:
        out["param_diff"] = max((final[k] - v).abs().max().item() for k, v in ref["final"].items())
        out["worst"] = max(ref["final"], key=lambda k: (final[k] - ref["final"][k]).abs().max().item())
        out["names_equal"] = sorted(final) == sorted(ref["final"])
    return out


def _local_load_signs(model: torch.nn.Module, world: int) -> bool:
    """Whether a bias step on each rank's own loads would differ between ranks (so that the check of the
    biases' agreement can fail)."""
    loads = [m.expert_load for n, m in model.named_modules() if n.endswith("router")]
    steps = torch.cat([torch.sign(load.mean() - load) for load in loads])
    gathered = [torch.empty_like(steps) for _ in range(world)]
    dist.all_gather(gathered, steps)
    return any(not torch.equal(g, gathered[0]) for g in gathered)


def _expert_bias_of(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v for k, v in state.items() if k.endswith("router.expert_bias")])


def _planned(plan: ResolvedModel, layout: Layout, rank: int) -> dict[str, int]:
    counts = rank_params(plan, layout.resolved(dist.get_world_size()), rank)
    return {"experts": counts.experts, "other": counts.other}


def train_case() -> dict:
    # float64, so that the comparison measures the parallel arithmetic rather than fp32 reassociation, which
    # Adam amplifies in coordinates whose gradient is near zero (fp32: parameters within 1.3e-6 for FSDP and
    # EP, 4.5e-5 for TP, whose row-parallel sums reorder every layer); the router computes in fp32 regardless
    torch.set_default_dtype(torch.float64)
    plan = train_plan()
    ref = reference_run(plan)
    world = dist.get_world_size()
    module = generated_module(plan)
    sinks = resolve(load_spec("dist-sinks.yaml", text=SPEC.replace("n_kv_heads: 2}", "n_kv_heads: 2, sinks: true}")))
    with_sinks, tp = generated_module(sinks), Layout(tp=world)
    return {
        "reference_norms": ref["norms"],
        "fsdp": distributed_run(plan, ref, Layout(), fsdp=True),
        "ep": distributed_run(plan, ref, Layout(ep=world), fsdp=False),
        "ep_fsdp": distributed_run(plan, ref, Layout(ep=world), fsdp=True),
        "tp_fsdp": distributed_run(plan, ref, Layout(tp=world), fsdp=True),
        "ep_fsdp_default_division": distributed_run(plan, ref, Layout(ep=world), fsdp=True, wrong_scaling=True),
        "generated_ep_fsdp": distributed_run(plan, ref, Layout(ep=world), fsdp=True, generated=module),
        "generated_tp_fsdp": distributed_run(plan, ref, tp, fsdp=True, generated=module),
        # the mesh without the plan: the layout check (moec.plan) refuses tp with sinks before TP itself could
        "generated_tp_sinks_refusal": _refusal(
            lambda: with_sinks.parallelize(_meta_model(with_sinks), md.build_mesh(tp))
        ),
        "layout_tp_sinks_refusal": _refusal(lambda: md.build_mesh(tp, sinks)),
    }


def _meta_model(module: ModuleType) -> torch.nn.Module:
    with torch.device("meta"):
        return module.Model(backend="reference")


def _refusal(call: Callable[[], object]) -> str | None:
    try:
        call()
    except ValueError as e:
        return str(e)
    return None


def generated_module(plan: ResolvedModel) -> ModuleType:
    """The model.py `moec build` writes for ``plan``, imported (each rank writes its own copy)."""
    path = Path(tempfile.mkdtemp(prefix="moec-generated-")) / "model.py"
    path.write_text(render_model_source(plan))
    return import_python_file(path, f"moec_generated_rank{dist.get_rank()}")


def train4_case() -> dict:
    """4 ranks: experts FSDP-sharded over efsdp = 2 under ep = 2, one expert per rank, and a 2-D FSDP × TP."""
    torch.set_default_dtype(torch.float64)  # as in train_case
    plan = train_plan()
    ref = reference_run(plan)
    return {
        "ep2_fsdp": distributed_run(plan, ref, Layout(ep=2), fsdp=True),
        "ep4_fsdp": distributed_run(plan, ref, Layout(ep=4), fsdp=True),
        "tp2_fsdp": distributed_run(plan, ref, Layout(tp=2), fsdp=True),
    }


CASES = {"train": train_case, "train4": train4_case}
