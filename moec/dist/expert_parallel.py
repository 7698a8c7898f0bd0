"""Expert parallelism: the routed experts' stacked weights are split by expert over an EP group, and each
routing slot's row travels to the rank that holds its expert and back (docs/scaling.md, "Running
distributed"; the all-to-all pattern of torchtitan and GShard).

Per MoE forward on a rank with T tokens, k slots each, E experts, P = ep ranks, E/P experts per rank:

1. sort the kept slots by expert (stable; dropped slots, -1, are left out) with the reference backend's
   one sort-and-count routine, so the rows are grouped by destination rank;
2. exchange the per-expert counts (an even all-to-all of E int64), which gives both split lists;
3. send the rows (an all-to-all with autograd: its backward is the reverse all-to-all);
4. run the backend's own ``kernels.expert_ffn`` on the received rows with weight 1 and the *local* expert
   ids, so reference, triton and naive work unchanged (the kernel sorts by expert itself);
5. send the outputs back (the splits swapped), weight them by the gates and sum per token.

The weights are DTensors ``Shard(0)`` over the EP mesh, used through ``to_local()`` ((E/P, d, 2f) here).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn
from torch.distributed._functional_collectives import all_to_all_single, all_to_all_single_autograd
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Shard, distribute_tensor

from moec.dist.mesh import local
from moec.dist.parts import is_lora_experts, is_routed_experts
from moec.kernels.reference import dispatch


class ExpertParallelError(ValueError):
    """A model or mesh that expert parallelism cannot take, naming the feature."""


@dataclass
class A2ATraffic:
    """Bytes this rank moved in MoE forwards since the last reset, counted on the actual split sizes.

    ``sent``/``received``: token rows to and from *other* ranks, dispatch and combine together (rows kept on
    this rank cross no link). A backward moves the same bytes again in reverse. ``counts``: the count
    exchange's int64 tensors sent to other ranks."""

    sent: int = 0
    received: int = 0
    counts: int = 0
    calls: int = 0

    def reset(self) -> None:
        self.sent = self.received = self.counts = self.calls = 0

    def add(self, other: A2ATraffic) -> None:
        self.sent, self.received = self.sent + other.sent, self.received + other.received
        self.counts, self.calls = self.counts + other.counts, self.calls + other.calls


class ExpertDispatcher:
    """The object :class:`moec.nn.moe.Experts` (and a generated model.py's Experts) calls instead of its local
    kernel when expert parallel."""

    def __init__(self, ep_mesh: DeviceMesh):
        if ep_mesh.ndim != 1:
            raise ExpertParallelError(f"the EP mesh must be 1-D, got {ep_mesh.ndim} dimensions")
        self.mesh = ep_mesh
        self.size = ep_mesh.size()
        self.rank = ep_mesh.get_local_rank()
        self.traffic = A2ATraffic()

    def __call__(
        self, experts: nn.Module, x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, kernels: ModuleType
    ) -> torch.Tensor:
        """x (T, d), topk_idx / topk_w (T, k) → (T, d), equal to the single-process ``Experts.forward``."""
        w_gate_up, w_down = local(experts.w_gate_up), local(experts.w_down)
        n_local = w_gate_up.shape[0]
        n_experts = n_local * self.size
        T = topk_idx.shape[0]
        # kept slots sorted by expert, hence by destination rank (experts are numbered rank by rank)
        sort = dispatch(topk_idx, n_experts, grouped=False)
        send_counts = torch.tensor(sort.counts, dtype=torch.long, device=x.device)  # (E,) rows per global expert
        recv_counts = self._exchange_counts(send_counts)  # (P, E/P): rows from each rank for each local expert
        in_splits = send_counts.view(self.size, n_local).sum(1).tolist()
        out_splits = recv_counts.sum(1).tolist()
        order, tok = sort.order, sort.tok  # (N,) slot and token of each row

        rows = all_to_all_single_autograd(x.index_select(0, tok), out_splits, in_splits, self.mesh)  # (R, d)
        ids = torch.arange(n_local, device=x.device).repeat(self.size)
        ids = ids.repeat_interleave(recv_counts.reshape(-1)).unsqueeze(1)  # (R, 1) local expert of each row
        ones = torch.ones(rows.shape[0], 1, dtype=rows.dtype, device=rows.device)
        out = kernels.expert_ffn(
            rows, ids, ones, w_gate_up, w_down,
            activation=experts.activation, b_gate_up=local(experts.b_gate_up), b_down=local(experts.b_down),
            # a generated model.py has them only for swiglu_clamped
            alpha=getattr(experts, "alpha", None), limit=getattr(experts, "limit", None),
        )  # fmt: skip
        back = all_to_all_single_autograd(out, in_splits, out_splits, self.mesh)  # (N, d), in send order
        self._count(in_splits, out_splits, x.shape[1] * x.element_size(), n_experts)
        gates = topk_w.reshape(-1).index_select(0, order).unsqueeze(1)  # (N, 1)
        return x.new_zeros(T, x.shape[1]).index_add_(0, tok, back * gates)

    def _exchange_counts(self, send_counts: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            recv = all_to_all_single(send_counts, None, None, self.mesh)
            recv = torch.ops._c10d_functional.wait_tensor(recv)
        return recv.view(self.size, -1)

    def _count(self, in_splits: list[int], out_splits: list[int], row_bytes: int, n_experts: int) -> None:
        off_rank_out = sum(n for j, n in enumerate(in_splits) if j != self.rank)
        off_rank_in = sum(n for j, n in enumerate(out_splits) if j != self.rank)
        t = self.traffic
        # dispatch sends off_rank_out rows and receives off_rank_in; the combine returns them the other way
        t.sent += (off_rank_out + off_rank_in) * row_bytes
        t.received += (off_rank_in + off_rank_out) * row_bytes
        t.counts += n_experts // self.size * (self.size - 1) * 8
        t.calls += 1


def apply_ep(model: nn.Module, ep_mesh: DeviceMesh) -> list[ExpertDispatcher]:
    """Shard every routed-experts module of ``model`` by expert over ``ep_mesh`` and install the all-to-all
    dispatcher; returns the dispatchers (one per MoE layer, for their traffic counters). Works on a model
    built on ``meta`` (nothing is allocated until ``to_empty``)."""
    dispatchers = []
    for name, module in model.named_modules():
        if is_lora_experts(module):
            raise ExpertParallelError(f"{name}: LoRA experts (expert_kind: lora) do not support expert parallelism")
        if is_routed_experts(module):
            n_experts = module.w_gate_up.shape[0]
            if n_experts % ep_mesh.size():
                raise ExpertParallelError(f"{name}: {n_experts} experts do not divide by ep = {ep_mesh.size()}")
            for pname, p in list(module.named_parameters(recurse=False)):
                sharded = nn.Parameter(distribute_tensor(p.data, ep_mesh, [Shard(0)]), requires_grad=p.requires_grad)
                module.register_parameter(pname, sharded)
            module.dispatcher = ExpertDispatcher(ep_mesh)
            dispatchers.append(module.dispatcher)
    return dispatchers
