"""Sparse upcycling: a dense Hugging Face checkpoint (Llama, Mistral, Qwen2, Qwen3) → an MoE whose experts start
from its FFNs, or LoRA experts over its frozen FFNs (``moec upcycle``; the recipe is docs/upcycling.md).

    upcycle(DENSE_DIR, experts=E, top_k=k, ...)  → the MoE model (a MoecModel holding the weights)
    write_upcycled(model, OUT, format="hf" | "moec")  → an HF checkpoint (moec.export_hf) or a moec build folder
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from moec.errors import CommandError
from moec.hf.upcycle.recipe import ROUTERS, SOURCES, Recipe, moe_spec_text

if TYPE_CHECKING:
    from moec.nn.model import MoecModel

__all__ = ["ROUTERS", "SOURCES", "Recipe", "dense_source", "upcycle", "write_upcycled"]


def dense_source(path: str | os.PathLike[str]) -> MoecModel:
    """The dense checkpoint as a moec model (its dtype), refused unless it is one of :data:`SOURCES`."""
    from moec.hf.checkpoint import checkpoint_folder
    from moec.hf.config import read_hf_config
    from moec.hf.weights import from_hf

    folder = checkpoint_folder(path)
    model_type = read_hf_config(folder)[0].get("model_type")
    if model_type not in SOURCES:
        raise CommandError(
            f"{folder}: model_type {model_type!r} is not a dense source upcycle reads ({', '.join(SOURCES)})"
        )
    return from_hf(folder)


def upcycle(
    source: str | os.PathLike[str],
    *,
    experts: int,
    top_k: int,
    granularity: int = 1,
    shared: int = 0,
    router: str = "softmax",
    noise: float = 0.0,
    router_std: float = 0.0,
    seed: int = 0,
    lora: int | None = None,
    lora_alpha: float | None = None,
    family: str | None = None,
) -> MoecModel:
    """The MoE upcycled from the dense checkpoint folder ``source`` by the recipe of docs/upcycling.md; its plan's
    description records the recipe and the seed. ``family``: the Hugging Face family it will be written as
    (Qwen2-MoE gates its shared experts, which the recipe's scaling accounts for)."""
    import torch

    from moec.hf.checkpoint import checkpoint_folder
    from moec.hf.config import import_hf_config
    from moec.nn.build import build_model
    from moec.spec import load_spec, resolve

    recipe = Recipe(experts, top_k, granularity, shared, router, noise, router_std, seed, lora, lora_alpha)
    recipe = dataclasses.replace(recipe, shared_gate=bool(shared) and family == "qwen2_moe")
    dense = dense_source(source)
    recipe.check(dense.plan)
    folder = checkpoint_folder(source)
    text = moe_spec_text(import_hf_config(folder), recipe, dense.plan, folder.name)
    plan = resolve(load_spec(f"{dense.plan.name}-upcycled.yaml", text=text))
    dtype = dense.embed.weight.dtype
    moe = build_model(plan, device="cpu", dtype=dtype, seed=seed)
    from moec.hf.upcycle.weights import upcycled_state

    with torch.no_grad():
        moe.load_state_dict(upcycled_state(dense, moe, recipe), strict=True)
    moe.spec_text = text  # the spec, for a reader who wants it beside the build
    return moe.eval()


def write_upcycled(
    model: MoecModel,
    out: str | os.PathLike[str],
    *,
    format: str = "hf",
    family: str | None = None,
    force: bool = False,
) -> list[str]:
    """``model`` as a Hugging Face checkpoint of ``family`` (moec.export_hf) or as a moec build folder (``moec
    build``'s writer, weights included); the file names written."""
    if format == "hf":
        from moec.hf.export_weights import export_hf

        note = f"# {model.plan.name}\n\n{model.plan.description}.\n\nWritten by `moec upcycle`.\n"
        return export_hf(model, out, family=family, force=force, readme=note)
    if format != "moec":
        raise CommandError(f"--format {format!r}: hf or moec")
    from moec.codegen import render_model_source
    from moec.codegen.output import write_build

    files, _notes = write_build(out, model.plan, render_model_source(model.plan), model=model, force=force)
    return files
