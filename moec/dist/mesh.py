"""Process-group start-up and the device meshes of a :class:`moec.plan.Layout` (docs/scaling.md, "Running
distributed").

Every mesh comes from one root, the 1-D world mesh, unflattened twice (torchtitan's convention, the one
moec.plan counts with): a dense view (pp, dp_shard, tp) for everything but the routed experts, and a sparse
view (pp, efsdp, ep) for them, where ep·efsdp = dp_shard·tp. FSDP2 needs the two from one root: it joins an
expert's EP placement and its FSDP placement into one 2-D mesh, which fails for meshes of different roots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor

from moec.plan.layout import Layout, LayoutError
from moec.spec.plan import ResolvedModel


def local(t: torch.Tensor | None) -> torch.Tensor | None:
    """The local shard of a DTensor (the tensor itself otherwise): what a kernel computes with."""
    return t.to_local() if isinstance(t, DTensor) else t


def init(init_method: str | None = None, device_type: str | None = None) -> torch.device:
    """Start the default process group once (gloo on CPU, nccl with CUDA) from torchrun's environment, or
    from ``init_method`` with RANK and WORLD_SIZE set; returns this rank's device (``device_type`` "cpu" or
    "cuda"; None: cuda when torch sees one)."""
    cuda = torch.cuda.is_available() if device_type is None else device_type == "cuda"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kw = {}
        if init_method is not None:
            if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
                raise ValueError(f"init_method {init_method!r} needs RANK and WORLD_SIZE in the environment")
            kw = {
                "init_method": init_method,
                "rank": int(os.environ["RANK"]),
                "world_size": int(os.environ["WORLD_SIZE"]),
            }
        dist.init_process_group("nccl" if cuda else "gloo", **kw)
    return device


@dataclass(frozen=True)
class Meshes:
    """The meshes of one layout; every 1-D mesh below is a slice of ``dense`` or ``sparse``."""

    layout: Layout  # resolved
    dense: DeviceMesh  # (pp, dp_shard, tp)
    sparse: DeviceMesh  # (pp, efsdp, ep)

    @property
    def dp(self) -> DeviceMesh:
        """The data-parallel (FSDP) ranks of everything but the routed experts: they see different tokens."""
        return self.dense["dp_shard"]

    @property
    def tp(self) -> DeviceMesh:
        return self.dense["tp"]

    @property
    def ep(self) -> DeviceMesh:
        return self.sparse["ep"]

    @property
    def efsdp(self) -> DeviceMesh:
        """The ranks holding the same experts, over which FSDP shards them."""
        return self.sparse["efsdp"]

    @property
    def batch_group(self) -> dist.ProcessGroup:
        """The process group over which token counts and expert loads are summed."""
        return self.dp.get_group()


def build_mesh(layout: Layout, plan: ResolvedModel | None = None, device_type: str | None = None) -> Meshes:
    """The meshes of ``layout`` on the started world. Every problem of the layout (moec.plan.Layout.problems,
    checked against ``plan`` when given) is raised at once as a LayoutError, before any group is made."""
    world = dist.get_world_size()
    problems = layout.problems(plan, world) if plan is not None else []
    if not problems:
        try:
            layout = layout.resolved(world)
        except LayoutError as e:
            problems = [str(e)]
    if not problems:
        problems = unsupported(layout)
    if problems:
        raise LayoutError("; ".join(problems))
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    root = init_device_mesh(device_type, (world,), mesh_dim_names=("world",))
    dense = root._unflatten(0, (layout.pp, layout.dp_shard, layout.tp), ("pp", "dp_shard", "tp"))
    sparse = root._unflatten(0, (layout.pp, layout.efsdp, layout.ep), ("pp", "efsdp", "ep"))
    return Meshes(layout, dense, sparse)


def unsupported(layout: Layout) -> list[str]:
    """What this version of moec.dist does not run yet, each named."""
    problems = []
    if layout.pp > 1:
        problems.append(f"pp = {layout.pp}: pipeline parallelism is not implemented in moec.dist yet")
    if layout.ep > 1 and layout.tp > 1:
        problems.append(
            f"ep = {layout.ep} with tp = {layout.tp}: expert parallelism over tensor-parallel ranks (sequence-"
            "parallel MoE input) is not implemented in moec.dist yet"
        )
    return problems
