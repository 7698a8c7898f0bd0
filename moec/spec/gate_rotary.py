"""Cross-field checks of three small attention and router options (Laguna, docs/conventions.md): the output
gate's function (attention.output_gate_fn), a layer's own rotated dims (layers.*.attention.rotary_dim) and the
router's logit softcap (moe.router.logit_softcap)."""

from __future__ import annotations

from moec.spec.schema import Spec
from moec.spec.yamlio import Path


def _written_rotary(spec: Spec) -> list[tuple[Path, int]]:
    """(where, value) for each rotary_dim that layers.default.attention and the overrides write, in order."""
    sections = spec.layers.attention_sections()
    return [((*path, "rotary_dim"), a.rotary_dim) for path, a in sections if a.rotary_dim is not None]


def _layer_rotary_problems(spec: Spec) -> list[tuple[Path, str]]:
    written = _written_rotary(spec)
    paths = [p for p, _ in written]
    if not paths:
        return []
    a, pos = spec.attention, spec.model.positions
    if a.kind != "gqa":
        return [(p, "a layer's rotary_dim needs attention.kind gqa (MLA rotates its qk_rope_head_dim)") for p in paths]
    if pos.kind != "rope":
        return [(p, "a layer's rotary_dim needs model.positions.kind: rope") for p in paths]
    if pos.mrope_sections:
        return [(p, "a layer's rotary_dim is not supported with model.positions.mrope_sections") for p in paths]
    head_dim = a.head_dim or spec.model.d_model // a.n_heads
    out: list[tuple[Path, str]] = []
    for path, rot in written:
        if rot > head_dim:
            out.append((path, f"{rot} rotated dims exceed the head dim ({head_dim})"))
        elif rot < 2 or rot % 2:
            out.append((path, f"rotary positions need an even number (≥ 2) of rotated dims; got {rot}"))
    return out


def problems(spec: Spec) -> list[tuple[Path, str]]:
    """(path, message) for every problem of the three options; [] when none is written."""
    out: list[tuple[Path, str]] = []
    a = spec.attention
    if a.output_gate_fn != "sigmoid" and a.output_gate == "none":
        out.append((("attention", "output_gate_fn"), "needs attention.output_gate head or element (the gate it sets)"))
    out.extend(_layer_rotary_problems(spec))
    if spec.moe is not None and spec.moe.router.logit_softcap is not None and spec.moe.router.kind == "hash":
        out.append((("moe", "router", "logit_softcap"), "hash routing has no learned logits to cap"))
    return out
