"""Distributed training of moec models on torch.distributed: FSDP2, expert parallelism with all-to-all token
dispatch, and tensor parallelism for attention and dense FFNs (docs/scaling.md, "Running distributed").

Imported only when used (``import moec`` and ``moec.nn`` never import it)::

    import moec, moec.dist as md
    device = md.init()                                   # under torchrun: gloo on CPU, nccl on CUDA
    plan = moec.spec.load_model("spec.yaml")
    meshes = md.build_mesh(md.Layout(ep=2), plan)        # one root mesh: dense (pp, dp_shard, tp), sparse (pp, efsdp, ep)
    model = moec.build_model(plan, device="meta")
    md.parallelize(model, meshes)                        # TP, EP, FSDP2
    md.load_full_state_dict(model, full_sd_on_rank0, device)   # others pass None
    logits, aux = model(local_tokens)
    loss, parts = md.lm_loss(logits, local_tokens, aux, meshes.batch_group)
    loss.backward(); md.clip_grad_norm_(model.parameters(), 1.0); opt.step()
    md.update_bias(model, meshes.batch_group)
"""

from moec.dist.expert_parallel import A2ATraffic, ExpertDispatcher, ExpertParallelError, apply_ep
from moec.dist.mesh import Meshes, build_mesh, init
from moec.dist.parallelize import a2a_traffic, apply_fsdp, parallelize, reset_a2a_traffic, sync_gradients
from moec.dist.state import full_state_dict, load_full_state_dict
from moec.dist.tensor_parallel import TensorParallelError, TensorParallelFFN, apply_tp
from moec.dist.train import clip_grad_norm_, lm_loss, update_bias
from moec.plan.layout import Layout, LayoutError

__all__ = [
    "A2ATraffic",
    "ExpertDispatcher",
    "ExpertParallelError",
    "Layout",
    "LayoutError",
    "Meshes",
    "TensorParallelError",
    "TensorParallelFFN",
    "a2a_traffic",
    "apply_ep",
    "apply_fsdp",
    "apply_tp",
    "build_mesh",
    "clip_grad_norm_",
    "full_state_dict",
    "init",
    "lm_loss",
    "load_full_state_dict",
    "parallelize",
    "reset_a2a_traffic",
    "sync_gradients",
    "update_bias",
]
