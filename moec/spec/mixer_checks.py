"""Checks of the token mixers (docs/mixers.md): every mixer kind a layer uses has its section, every section
is used, each section's own cross-field rules, layers that keep at least one sublayer, and the block options
that only some mixers or placements take."""

from __future__ import annotations

from moec.mixers import KINDS
from moec.spec.block_checks import Bad
from moec.spec.resolve import attention_fields_per_layer, ffn_kind_per_layer, mixer_kind_per_layer, selected_layers
from moec.spec.schema import Spec
from moec.spec.yamlio import Path


def check_mixers(spec: Spec, bad: Bad) -> None:
    kinds = mixer_kind_per_layer(spec)
    used = set(kinds)
    for kind, module in KINDS.items():
        section = getattr(spec.mixers, kind)
        if kind in used and section is None:
            chosen = [i for i, k in enumerate(kinds) if k == kind]
            bad(_where_chosen(spec, kind), f"{_layers(chosen, 'uses', 'use')} mixer {kind} but the spec has no "
                f"mixers.{kind} section")  # fmt: skip
        elif section is not None and kind not in used:
            bad(("mixers", kind), f"mixers.{kind} is given but no layer's mixer is {kind} (layers.*.mixer)")
        if section is not None:
            for path, message in module.problems(section, spec.model.d_model):
                bad(("mixers", kind, *path), message)
    ffns = ffn_kind_per_layer(spec)
    empty = [i for i, (m, f) in enumerate(zip(kinds, ffns, strict=True)) if m == "none" and f == "none"]
    if empty:
        bad(("layers",), f"{_layers(empty, 'has', 'have')} neither a token mixer nor an FFN (mixer: none, ffn: none)")
    _check_block_options(spec, used, bad)
    _check_attention_settings_reach_attention(spec, kinds, bad)
    _check_layer_heads(spec, bad)


def _check_block_options(spec: Spec, mixers_used: set[str], bad: Bad) -> None:
    m = spec.model
    if m.residual_scales is not None and m.norm.placement != "normed_residual":
        bad(("model", "residual_scales"), "only meaningful with model.norm.placement: normed_residual")
    if m.norm.placement == "normed_residual" and m.residual_multiplier != 1:
        bad(("model", "residual_multiplier"), "normed_residual scales its branches with model.residual_scales")
    if m.norm.placement == "parallel" and _one_sublayer_layers(spec):
        bad(("model", "norm", "placement"), "parallel needs a token mixer and an FFN in every layer")
    if spec.moe is not None and spec.moe.output_norm and m.norm.placement != "pre":
        bad(("moe", "output_norm"), "an MoE output norm is supported with model.norm.placement: pre")
    if m.norm.unit_offset and m.norm.kind != "rmsnorm":
        bad(("model", "norm", "unit_offset"), "a unit-offset weight is supported on rmsnorm")
    if spec.mtp is not None and mixers_used != {"attention"}:
        bad(("mtp",), "MTP blocks are supported in attention-only models (they would need a mixer of their own)")


def _check_attention_settings_reach_attention(spec: Spec, kinds: list[str], bad: Bad) -> None:
    """Per-layer attention settings written where no selected layer has attention would be dropped silently (a
    window on a Gated DeltaNet layer): refused, so that a pattern that moved the attention layers shows."""
    default = spec.layers.default.attention
    if default.model_fields_set and "attention" not in kinds:
        bad(("layers", "default", "attention"), "no layer's mixer is attention, so these settings would apply to none")
    for j, ov in enumerate(spec.layers.overrides):
        if ov.attention is None or not ov.attention.model_fields_set:
            continue
        chosen = selected_layers(ov.select, len(kinds))
        if chosen and not any(kinds[i] == "attention" for i in chosen):
            mixers = ", ".join(sorted({kinds[i] for i in chosen}))
            bad(("layers", "overrides", j, "attention"), f"{_layers(chosen, 'has', 'have')} no attention (mixer "
                f"{mixers}), so these settings would apply to none")  # fmt: skip


def _check_layer_heads(spec: Spec, bad: Bad) -> None:
    """Per-layer head counts (layers.*.attention.n_heads, n_kv_heads): GQA's KV heads divide each layer's query
    heads; MLA has no KV heads to change."""
    written = _attention_paths(spec, "n_kv_heads")
    if spec.attention.kind == "mla":
        for path in written:
            bad(path, "MLA has no separate KV heads (leave n_kv_heads unset)")
        return
    fields = attention_fields_per_layer(spec)
    section = (spec.attention.n_heads, spec.attention.n_kv_heads or spec.attention.n_heads)  # checked as such
    pairs = zip(fields["n_heads"], fields["n_kv_heads"], strict=True)
    uneven = [i for i, (h, kv) in enumerate(pairs) if h % kv and (h, kv) != section]
    if uneven:
        i = uneven[0]
        where = (_attention_paths(spec, "n_heads") + written)[-1:] or [("attention", "n_kv_heads")]
        heads = f"n_heads {fields['n_heads'][i]} is not divisible by n_kv_heads {fields['n_kv_heads'][i]}"
        others = f" (and in layers {layer_spans(uneven[1:])})" if len(uneven) > 1 else ""
        bad(where[0], f"layer {i}: {heads}{others}")


def _attention_paths(spec: Spec, field: str) -> list[Path]:
    """Where layers.default.attention and the overrides write ``field``, in order."""
    return [(*path, field) for path, section in spec.layers.attention_sections() if field in section.model_fields_set]


def _one_sublayer_layers(spec: Spec) -> bool:
    return "none" in mixer_kind_per_layer(spec) or "none" in ffn_kind_per_layer(spec)


def _where_chosen(spec: Spec, kind: str) -> Path:
    """Where a mixer kind is written: the last override that names it, else layers.default.mixer."""
    for j in reversed(range(len(spec.layers.overrides))):
        if spec.layers.overrides[j].mixer == kind:
            return ("layers", "overrides", j, "mixer")
    return ("layers", "default", "mixer")


def _layers(idx: list[int], one: str, many: str) -> str:
    """'layer 5 has' or 'layers 0-2, 4, 6-7 have': the indices as ranges, and the verb agreeing."""
    return f"layer {idx[0]} {one}" if len(idx) == 1 else f"layers {layer_spans(idx)} {many}"


def layer_spans(idx: list[int]) -> str:
    """Sorted layer indices as ranges: '0-2, 4, 6-7'."""
    out: list[str] = []
    start = prev = None
    for i in [*idx, None]:
        if i is not None and prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    return ", ".join(out)
