"""Worker checks of the expert-parallel dispatcher (run by moec.dist._selftest; asserted in tests/dist).

Every rank routes its own tokens through one MoE layer whose experts are split over all ranks, and compares
with the single-process layer on the same weights: the output and the input gradient against the layer run
on this rank's tokens alone; the routed experts' gradients against the layer run on every rank's tokens (an
expert's gradient sums the tokens of every rank that routed to it), sliced to this rank's experts; the router
and shared experts' gradients against this rank's tokens alone (they stay local until FSDP sums them).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from moec.dist.expert_parallel import apply_ep
from moec.dist.mesh import build_mesh, local
from moec.dist.tensor_parallel import apply_tp
from moec.nn import build_model
from moec.nn.moe import MoE
from moec.plan.layout import Layout
from moec.spec import load_spec, resolve
from moec.spec.plan import MoEPlan

D, T = 16, 24
BASE = f"""
moec: 1
name: dispatch
model: {{vocab_size: 64, d_model: {D}, n_layers: 1, max_seq_len: 64}}
attention: {{n_heads: 2}}
ffn: {{d_ff: 32}}
layers: {{default: {{ffn: moe}}}}
"""
VARIANTS = {
    "dropless": "{n_experts: 4, d_ff: 8, router: {top_k: 2, normalize_topk: true}}",
    "one_expert_per_rank": "{n_experts: 2, d_ff: 8, activation: gelu, router: {top_k: 1}}",
    "capacity": "{n_experts: 4, d_ff: 8, router: {top_k: 2}, capacity_factor: 0.5}",
    "starved": "{n_experts: 4, d_ff: 8, router: {top_k: 2, bias: true}}",
    "biased_shared": (
        "{n_experts: 4, d_ff: 8, activation: geglu, bias: true, n_shared_experts: 1, shared_gate: true,"
        " router: {top_k: 2, bias: true}}"
    ),
    "input_gate": "{n_experts: 4, d_ff: 8, router: {top_k: 1, score: sigmoid, apply_to: input}}",
}
REFUSED = {"lora": "{n_experts: 4, d_ff: 8, expert_kind: lora, lora: {rank: 2}, router: {top_k: 2}}"}
EXPERT_PARAMS = ("w_gate_up", "w_down", "b_gate_up", "b_down")


def moe_plan(variant: str) -> MoEPlan:
    moe = VARIANTS.get(variant) or REFUSED[variant]
    plan = resolve(load_spec("dispatch.yaml", text=BASE + f"moe: {moe}\n")).layers[0].ffn
    assert isinstance(plan, MoEPlan)
    return plan


def _layer(variant: str) -> MoE:
    torch.manual_seed(0)
    layer = MoE(moe_plan(variant), D, backend="reference")
    if variant == "starved":  # the last rank's experts never win a slot
        with torch.no_grad():
            layer.router.bias[layer.plan.n_experts // 2 :] = -30.0
    return layer


def _tokens(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(T, D, generator=g), torch.randn(T, D, generator=g)  # x, and the probe dotted with y


def _reference_grads(layer: MoE, ranks: list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Gradients of Σ_r (y_r · probe_r) over ``ranks``, and the input gradient when one rank is given."""
    layer = copy.deepcopy(layer)
    loss, xs = 0.0, []
    for r in ranks:
        x, probe = _tokens(r)
        x.requires_grad_(True)
        xs.append(x)
        loss = loss + (layer(x)[0] * probe).sum()
    loss.backward()
    grads = {n: p.grad for n, p in layer.named_parameters()}
    return grads, xs[0].grad if len(ranks) == 1 else None


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def check_variant(variant: str, ep_mesh) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    ref = _layer(variant)
    layer = copy.deepcopy(ref)
    holder = nn.Module()
    holder.moe = layer
    apply_ep(holder, ep_mesh)
    x, probe = _tokens(rank)
    x.requires_grad_(True)
    y, aux = layer(x)
    (y * probe).sum().backward()
    with torch.no_grad():
        y_ref, aux_ref = ref(_tokens(rank)[0])
    local_grads, x_grad = _reference_grads(ref, [rank])
    global_grads, _ = _reference_grads(ref, list(range(world)))
    n_local = ref.plan.n_experts // world
    mine = slice(rank * n_local, (rank + 1) * n_local)
    diffs = {"y": _max_diff(y, y_ref), "x_grad": _max_diff(x.grad, x_grad)}
    for name, p in layer.named_parameters():
        short = name.removeprefix("experts.")
        if short in EXPERT_PARAMS:
            diffs[name] = _max_diff(local(p.grad), global_grads[name][mine])
        else:
            diffs[name] = _max_diff(p.grad, local_grads[name])
    expert_grad_abs = local(layer.experts.w_down.grad).abs().sum().item()
    return {
        "max_diff": diffs,
        "dropped": int(aux.dropped),
        "dropped_ref": int(aux_ref.dropped),
        "tokens_per_expert": aux.tokens_per_expert.tolist(),
        "local_expert_grad_abs_sum": expert_grad_abs,
        "expert_grad_is_none": layer.experts.w_down.grad is None,
    }


class CollectiveBytes(TorchDispatchMode):
    """Counts what every functional all-to-all hands to the other ranks, seen at the dispatcher (an
    independent measurement: it reads the tensors and split sizes the collective itself receives)."""

    def __init__(self, rank: int, world: int):
        super().__init__()
        self.rank, self.world, self.rows_bytes, self.count_bytes, self.calls = rank, world, 0, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "all_to_all_single" in str(func):
            inp, splits = args[0], args[2]
            if splits is None or inp.dtype == torch.int64:  # the even count exchange
                self.count_bytes += inp.numel() * inp.element_size() * (self.world - 1) // self.world
            else:
                row = inp[0].numel() * inp.element_size() if inp.shape[0] else 0
                self.rows_bytes += row * sum(n for j, n in enumerate(splits) if j != self.rank)
            self.calls += 1
        return func(*args, **kwargs)


def check_traffic(ep_mesh) -> dict:
    """All-to-all bytes of one forward and one forward + backward, measured at the collectives, next to the
    dispatcher's own counters and this rank's routing counts (the test applies the formula to them)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    layer = _layer("dropless")
    holder = nn.Module()
    holder.moe = layer
    (dispatcher,) = apply_ep(holder, ep_mesh)
    x, probe = _tokens(rank)
    x.requires_grad_(True)  # so that the dispatch all-to-all has a backward too
    fwd = CollectiveBytes(rank, world)
    with fwd:
        y, aux = layer(x)
    counted = (dispatcher.traffic.sent, dispatcher.traffic.received, dispatcher.traffic.counts)
    train = CollectiveBytes(rank, world)
    with train:
        y, aux = layer(x)
        (y * probe).sum().backward()
    return {
        "measured_forward": fwd.rows_bytes,
        "measured_train": train.rows_bytes,
        "a2a_calls_train": train.calls,
        "measured_count_exchange": fwd.count_bytes,
        "counted_sent": counted[0],
        "counted_received": counted[1],
        "counted_count_exchange": counted[2],
        "tokens_per_expert": aux.tokens_per_expert.tolist(),
        "d_model": D,
        "itemsize": x.element_size(),
        "tokens": T,
        "top_k": layer.plan.top_k,
    }


def _message(call: Callable[[], object]) -> str | None:
    try:
        call()
    except ValueError as e:
        return f"{type(e).__name__}: {e}"
    return None


def refusals(ep_mesh) -> dict[str, str | None]:
    """What moec.dist says to layouts and models it cannot run (each message names the feature)."""
    holder = nn.Module()
    holder.moe = MoE(moe_plan("lora"), D, backend="reference")
    sinks = BASE.replace("{n_heads: 2}", "{n_heads: 2, sinks: true}") + f"moe: {VARIANTS['dropless']}\n"
    with_sinks = build_model(resolve(load_spec("sinks.yaml", text=sinks)), device="meta")
    gated = BASE.replace("{n_heads: 2}", "{n_heads: 2, output_gate: head}") + f"moe: {VARIANTS['dropless']}\n"
    with_gate = build_model(resolve(load_spec("gate.yaml", text=gated)), device="meta")
    plan = resolve(load_spec("dispatch.yaml", text=BASE + f"moe: {VARIANTS['dropless']}\n"))
    two = BASE.replace("n_layers: 1", "n_layers: 2") + f"moe: {VARIANTS['dropless']}\n"
    two_layers = resolve(load_spec("two.yaml", text=two))
    return {
        "lora_ep": _message(lambda: apply_ep(holder, ep_mesh)),
        "sinks_tp": _message(lambda: apply_tp(with_sinks, ep_mesh)),
        "gate_tp": _message(lambda: apply_tp(with_gate, ep_mesh)),
        "ep_3_of_4_experts": _message(lambda: build_mesh(Layout(ep=3), plan)),
        "pp_2": _message(lambda: build_mesh(Layout(pp=2), two_layers)),
    }


def dispatcher_case() -> dict:
    world = dist.get_world_size()
    meshes = build_mesh(Layout(ep=world))
    out = {variant: check_variant(variant, meshes.ep) for variant in VARIANTS}
    out["traffic"] = check_traffic(meshes.ep)
    out["refusals"] = refusals(meshes.ep)
    return out


CASES = {"dispatcher": dispatcher_case}
