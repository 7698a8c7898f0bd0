"""Encoder-decoder models (Switch Transformers; docs/conventions.md, "Encoder-decoder"): the spec's ``encoder``
section, its cross-field checks, its per-layer plans, and the one refusal every command that cannot run one
uses.

An encoder-decoder spec is a decoder spec (``model``, ``attention``, ``ffn``, ``moe``, ``layers``: the decoder
stack, ``model.n_layers`` its depth) plus ``encoder: {n_layers, layers}``: a stack of the same attention, dense
FFN and MoE sections, with bidirectional self-attention and no cross-attention. Every decoder layer then holds
a cross-attention over the encoder's output (the attention section's shape, no positions) with its own norm;
the embedding is shared by both stacks. ``model.positions.kind: relative_bucket`` is T5's relative position
bias: one table of n_buckets × n_heads in the first self-attention of each stack, shared by the stack's layers
(the encoder's bidirectional, the decoder's causal buckets); cross-attention has none. ``model.positions.kind:
sinusoidal`` is fairseq's fixed table (M2M-100, NLLB-MoE; no parameters) added to the scaled embedding of each
stack: row ``offset + i`` for the i-th token, its first half sin(p·f_j), its second cos(p·f_j), f_j =
theta^(−j/(d/2 − 1)), a last zero column when d is odd.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from moec.errors import CommandError
from moec.spec.layers import Layers
from moec.spec.yamlio import Path
from moec.strict import MAX_LAYERS, MAX_SEQ, Strict

if TYPE_CHECKING:
    from moec.spec.plan import AttentionPlan, LayerPlan, ResolvedModel
    from moec.spec.schema import Select, Spec

RELATIVE_BUCKET = "relative_bucket"  # model.positions.kind of T5's bucketed relative position bias
SINUSOIDAL = "sinusoidal"  # model.positions.kind of fairseq's fixed sinusoidal table (M2M-100, NLLB-MoE)
NOT_BUILT = (
    "moec.build_model, moec.from_hf and moec build take encoder-decoder models; this command does not take one yet"
)


class EncoderSection(Strict):
    """The encoder stack of an encoder-decoder model; the decoder is the model's own layers."""

    n_layers: Annotated[int, Field(gt=0, le=MAX_LAYERS)]
    """Encoder blocks (bidirectional self-attention and an FFN each)."""
    layers: Layers = Layers()
    """Which encoder layers are dense or MoE (the same form as the decoder's layers section; attention only)."""
    expert_capacity: Annotated[int, Field(gt=0, le=MAX_SEQ)] | None = None
    """Both stacks: each expert takes at most this many tokens of a sequence, earliest first (transformers' Switch)."""


Section = EncoderSection  # the contract name, as the other sections' modules


def encoder_ffn_kinds(enc: EncoderSection) -> list[str]:
    """Each encoder layer's FFN kind: layers.default's, unless an override (a later one winning) names it."""
    from moec.spec.resolve import assign_selected

    per_layer = [enc.layers.default.ffn] * enc.n_layers
    for ov in enc.layers.overrides:
        if ov.ffn is not None:
            assign_selected(per_layer, ov.select, ov.ffn)
    return per_layer


def problems(spec: Spec) -> list[tuple[Path, str]]:
    """Every cross-field problem of an encoder-decoder spec, and of relative_bucket positions: (path, message)."""
    pos, enc = spec.model.positions, spec.encoder
    out: list[tuple[Path, str]] = []
    here: Path = ("model", "positions")
    if pos.kind == RELATIVE_BUCKET:
        if enc is None:
            out.append(((*here, "kind"), "relative_bucket positions are T5's: they need an encoder section"))
        for f in ("n_buckets", "max_distance"):
            if getattr(pos, f) is None:
                out.append((here, f"relative_bucket positions need {f}"))
        out += _bucket_problems(pos.n_buckets, pos.max_distance)
    else:
        out += [((*here, f), "only meaningful with kind: relative_bucket") for f in ("n_buckets", "max_distance")
                if getattr(pos, f) is not None]  # fmt: skip
    out += _sinusoidal_problems(spec)
    if enc is None:
        return out
    out += _encoder_layer_problems(enc)  # a missing ffn or moe section: checks.py (traps.ffn_kinds_used)
    if enc.expert_capacity is not None and spec.moe is None:
        out.append((("encoder", "expert_capacity"), "needs a moe section"))
    elif enc.expert_capacity is not None and spec.moe is not None:  # Switch's rule: a fixed count, earliest first
        if spec.moe.capacity_factor is not None:
            out.append((("moe", "capacity_factor"), "encoder.expert_capacity sets each expert's slots: give one"))
        if spec.moe.drop_policy != "position":
            out.append((("moe", "drop_policy"), "encoder.expert_capacity keeps the earliest tokens: position"))
    out += _decoder_problems(spec)
    return out


def _sinusoidal_problems(spec: Spec) -> list[tuple[Path, str]]:
    """sinusoidal positions: an encoder section and an offset; an offset only with them."""
    pos = spec.model.positions
    here: Path = ("model", "positions")
    if pos.kind != SINUSOIDAL:
        return [((*here, "offset"), "only meaningful with kind: sinusoidal")] if pos.offset is not None else []
    out: list[tuple[Path, str]] = []
    if spec.encoder is None:
        out.append(
            (
                (*here, "kind"),
                "sinusoidal positions are counted for encoder-decoder models: they need an encoder section",
            )
        )
    if pos.offset is None:
        out.append((here, "sinusoidal positions need offset (the table row of a sequence's first token)"))
    return out


def _bucket_problems(n_buckets: int | None, max_distance: int | None) -> list[tuple[Path, str]]:
    """T5's buckets (moec/nn/relative_bias.py) need an exact bucket in each direction's half and logarithmic bins that
    widen: the encoder splits the buckets in two, and in each half (the decoder's whole set) half are exact."""
    here: Path = ("model", "positions")
    if n_buckets is not None and n_buckets < 4:
        return [((*here, "n_buckets"), "relative_bucket needs at least 4 buckets (2 per direction, 1 of them exact)")]
    if n_buckets is not None and max_distance is not None and max_distance <= n_buckets // 2:
        return [
            ((*here, "max_distance"), f"must exceed n_buckets // 2 = {n_buckets // 2}, the exact distances' buckets")
        ]
    return []


def _encoder_layer_problems(enc: EncoderSection) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    n = enc.n_layers
    entries: list[tuple[Path, Any]] = [(("encoder", "layers", "default"), enc.layers.default)]
    entries += [(("encoder", "layers", "overrides", j), ov) for j, ov in enumerate(enc.layers.overrides)]
    for path, entry in entries:
        if entry.mixer not in (None, "attention"):
            out.append(((*path, "mixer"), "an encoder layer's token mixer is attention (other mixers: not supported)"))
        if entry.ffn == "none":
            out.append(((*path, "ffn"), "every encoder layer has an FFN: dense or moe"))
        if entry.attention is not None and entry.attention.model_fields_set:
            out.append(
                ((*path, "attention"), "encoder self-attention is the attention section's, over the whole source")
            )
        if getattr(entry, "moe", None) is not None:  # moec.spec.moe_override plans the decoder layers' own MoE only
            out.append(((*path, "moe"), "an encoder layer's MoE is the moe section's (a layer's own: decoder only)"))
        if hasattr(entry, "select"):
            out += [((*path, "select"), message) for message in _select_problems(entry.select, n)]
    return out


def _select_problems(s: Select, n: int) -> list[str]:
    named = [*(s.layers or []), *(v for v in (s.first, s.last, s.start) if v is not None)]
    return [f"layer {i} does not exist (encoder.n_layers is {n})" for i in sorted(set(named)) if i >= n]


def _decoder_problems(spec: Spec) -> list[tuple[Path, str]]:
    """What an encoder-decoder decoder cannot have yet: each refused by name."""
    out: list[tuple[Path, str]] = []
    from moec.spec.resolve import ffn_kind_per_layer, mixer_kind_per_layer

    if set(mixer_kind_per_layer(spec)) != {"attention"}:
        out.append(
            (("layers",), "an encoder-decoder model's decoder layers are attention layers (hybrids: not supported)")
        )
    if "none" in ffn_kind_per_layer(spec):
        out.append((("layers",), "every decoder layer of an encoder-decoder model has an FFN"))
    if spec.mtp is not None:
        out.append((("mtp",), "multi-token prediction with an encoder-decoder model is not supported"))
    if spec.model.block != "standard":
        out.append((("model", "block"), "an encoder-decoder model's blocks are standard ones"))
    if spec.attention.kind != "gqa":
        out.append(
            (("attention", "kind"), "an encoder-decoder model's attention is gqa (MLA cross-attention: not supported)")
        )
    return out


def stack_plans(
    spec: Spec, decoder: tuple[LayerPlan, ...], attention: Callable[..., AttentionPlan], ffns: dict[str, Any]
) -> tuple[tuple[LayerPlan, ...], tuple[LayerPlan, ...]]:
    """(the decoder layers, each with its cross-attention; the encoder layers) for an encoder-decoder spec;
    (decoder, ()) unchanged for a decoder-only one. ``attention(window, rope)`` plans the attention section's
    own values; ``ffns`` maps an FFN kind to its plan."""
    import dataclasses

    from moec.spec.plan import LayerPlan

    enc = spec.encoder
    if enc is None:
        return decoder, ()
    rope = spec.model.positions.kind == "rope"
    cross = attention(None, False)  # over the source: no window, no rotation
    layers = tuple(dataclasses.replace(lp, cross_attention=cross) for lp in decoder)
    kinds = encoder_ffn_kinds(enc)
    encoder = tuple(LayerPlan(i, attention(None, rope), ffns[kinds[i]]) for i in range(enc.n_layers))
    return layers, encoder


def refuse_encoder_decoder(plan: ResolvedModel, command: str) -> None:
    """Refuse an encoder-decoder model in a command that cannot generate, run, lay out or export one yet (the
    library builds one: moec/nn/encdec.py): one CommandError naming the command and the model (exit 2), never a
    decoder-only stand-in."""
    if plan.encoder:
        raise CommandError(
            f"{command}: {plan.name} is an encoder-decoder model ({len(plan.encoder)} encoder and "
            f'{len(plan.layers)} decoder layers); {NOT_BUILT} (docs/conventions.md, "Encoder-decoder")'
        )


# What moec.nn builds in an encoder-decoder model: these fields of each plan may be set; every other field must hold
# its default, so that a feature added to the plans later is refused here by name until moec/nn/encdec.py builds it.
_MODEL_FIELDS = {"encoder", "expert_capacity", "logits_scaling", "spec_hash", "source_file", "description", "extra"}
_POSITION_FIELDS = {"kind", "theta", "scaling", "n_buckets", "max_distance"}
_ATTENTION_FIELDS = {"kind", "n_heads", "n_kv_heads", "head_dim", "bias", "out_bias", "scale", "v_head_dim"}
# fields that only qualify a feature left off (a qk-norm's scope, a gate's function, ...): their values are inert
_INERT = {"qk_norm_scope", "qk_norm_kind", "qk_norm_after_rope", "temperature_form", "output_gate_fn", "output_gate_bias",
          "indexer_rope_layout", "indexer_key_norm_eps", "latent_norm_eps", "moa_score", "moa_softmax_after_topk",
          "moa_normalize_topk"}  # fmt: skip
_ATTENTION_OFF = {"qk_norm": False, "sinks": False, "window": None, "rope": False}  # required fields, off


def _set_fields(plan: object, allowed: set[str]) -> list[str]:
    """The fields of a plan dataclass, outside ``allowed``, whose values differ from their defaults."""
    return [
        f.name
        for f in dataclasses.fields(plan)  # type: ignore[arg-type]
        if f.name not in allowed and f.default is not dataclasses.MISSING and getattr(plan, f.name) != f.default
    ]


def build_refusals(plan: ResolvedModel) -> list[str]:
    """What moec.nn cannot build exactly in an encoder-decoder model, each named (empty: it can). Here, torch-free,
    so that moec.codegen renders one without importing moec.nn."""
    from moec.spec.plan import MoEPlan  # moec.spec.plan reads the schema, which reads this module

    out = [f"model {f}" for f in _set_fields(plan, _MODEL_FIELDS)]
    if plan.positions.kind not in (RELATIVE_BUCKET, "none"):
        out.append(f"{plan.positions.kind} positions (relative_bucket or none)")
    out += [f"positions.{f}" for f in _set_fields(plan.positions, _POSITION_FIELDS)]
    if plan.norm.placement != "pre":
        out.append(f"norm placement {plan.norm.placement} (pre)")
    attentions = [lp.attention for lp in (*plan.encoder, *plan.layers)]
    attentions += [lp.cross_attention for lp in plan.layers if lp.cross_attention is not None]
    used = {f for a in attentions for f in _set_fields(a, _ATTENTION_FIELDS | _INERT)}
    used |= {f for a in attentions for f, off in _ATTENTION_OFF.items() if getattr(a, f) != off}
    out += [f"attention.{f}" for f in sorted(used)]
    layers = (*plan.encoder, *plan.layers)
    out += sorted({f"layers.*.{f}" for lp in layers for f in _set_fields(lp, {"cross_attention"})})  # mixer, pair
    moe = [lp.ffn for lp in layers if isinstance(lp.ffn, MoEPlan)]
    if any(m.output_norm for m in moe):  # applied by the decoder-only Block around its MoE, not by the MoE module
        out.append("moe.output_norm")
    if plan.expert_capacity is not None and any(m.router.kind == "expert_choice" for m in moe):
        out.append("encoder.expert_capacity with expert-choice routing")
    if plan.expert_capacity is not None and any(m.n_zero_experts for m in moe):  # would a zero expert take capacity?
        out.append("moe.n_zero_experts with encoder.expert_capacity")
    return out
