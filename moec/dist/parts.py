"""How moec.dist finds the parts of a model it splits: by attribute names, not classes. A moec.nn model and a
generated ``model.py`` (``moec build``) share their parameter and attribute names, so the same code
parallelizes both (docs/scaling.md, "Running distributed")."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def is_routed_experts(module: nn.Module) -> bool:
    """Stacked routed experts (w_gate_up (E, d, 2f) or (E, d, f), w_down (E, f, d)) with a ``dispatcher`` slot."""
    w = getattr(module, "w_gate_up", None)
    return hasattr(module, "dispatcher") and isinstance(w, torch.Tensor) and w.dim() == 3


def is_lora_experts(module: nn.Module) -> bool:
    """LoRA experts: per-expert adapters ``lora_a_*`` / ``lora_b_*`` over a frozen base FFN."""
    return any(name.startswith("lora_a_") for name, _ in module.named_parameters(recurse=False))


def attention_kind(module: nn.Module) -> str | None:
    """The attention kind of ``module`` ("mla", "gqa", or None for no attention), by the projections' names,
    which moec.nn and a generated model.py share with transformers."""
    if isinstance(getattr(module, "kv_b_proj", None), nn.Linear):
        return "mla"
    if all(isinstance(getattr(module, name, None), nn.Linear) for name in ("q_proj", "k_proj", "v_proj", "o_proj")):
        return "gqa"
    return None


def attention_heads(module: nn.Module) -> tuple[int, ...]:
    """(n_heads, n_kv_heads) of a GQA module, (n_heads,) of an MLA module."""
    numbers = getattr(module, "plan", module)  # moec.nn keeps them in the module's plan, a generated module on itself
    return (numbers.n_heads,) if attention_kind(module) == "mla" else (numbers.n_heads, numbers.n_kv_heads)


def is_dense_ffn(module: nn.Module) -> bool:
    """A dense FFN: w_gate_up (d, 2f) or (d, f), w_down (f, d), and its ``activation``."""
    w = getattr(module, "w_gate_up", None)
    return hasattr(module, "activation") and isinstance(w, torch.Tensor) and w.dim() == 2


def routed_experts(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every routed-experts module of ``model``, in module order."""
    return ((name, m) for name, m in model.named_modules() if is_routed_experts(m))


def blocks(model: nn.Module) -> list[nn.Module]:
    """The FSDP units below the root: the transformer blocks, then the block of each MTP module. An MTP module's
    norms and projection stay in the root's unit: the model applies its final norm outside its forward, where a
    unit of its own would already have resharded it."""
    if not isinstance(getattr(model, "layers", None), nn.ModuleList):
        raise TypeError(
            f"moec.dist takes a moec model (its blocks in a `layers` ModuleList), got {type(model).__name__}"
        )
    return [*model.layers, *(m.block for m in getattr(model, "mtp", ()))]


def routers(model: nn.Module) -> list[nn.Module]:
    """The routers that keep running expert loads for the aux-loss-free bias step."""
    return [m for m in model.modules() if hasattr(m, "expert_load") and callable(getattr(m, "update_bias", None))]
