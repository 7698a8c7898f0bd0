"""The schema's per-layer sections: which layers an override selects, and what each layer's mixer, FFN and
attention are (``layers:``). Split from :mod:`moec.spec.schema`, which re-exports them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from moec.spec.moe_override import MoEOverride
from moec.spec.rope_scaling import RopeScaling
from moec.strict import MAX_D, MAX_HEAD_DIM, MAX_HEADS, MAX_LAYERS, MAX_OVERRIDES, MAX_SEQ, Strict
from moec.vocab import FFN_KINDS, MIXER_KINDS

# an index past n_layers is reported by checks.py, which knows n_layers; this bound only keeps it finite
LayerIndex = Annotated[int, Field(ge=0, lt=MAX_LAYERS)]


def _selector_shorthand(v: Any) -> Any:
    # `select: [0, 5, 7]` is shorthand for `select: {layers: [0, 5, 7]}`
    return {"layers": v} if isinstance(v, list) else v


class Select(Strict):
    """Which layers an override applies to: a list, an inclusive range, or every N from a start."""

    layers: Annotated[list[LayerIndex], Field(max_length=MAX_LAYERS)] | None = None
    """These layer indices."""
    first: LayerIndex | None = None
    """The first layer of an inclusive range (with last)."""
    last: LayerIndex | None = None
    """The last layer, inclusive: of a range, or where every N stops."""
    every: Annotated[int, Field(gt=0, le=MAX_LAYERS)] | None = None
    """Every N-th layer from start (start is required: Megatron and Hugging Face disagree)."""
    start: LayerIndex | None = None
    """The first layer of every N."""

    @model_validator(mode="after")
    def _one_form(self) -> Select:
        forms = [
            self.layers is not None,
            self.every is not None or self.start is not None,
            self.first is not None and self.every is None and self.start is None,
        ]
        if sum(forms) != 1:
            raise ValueError(
                "select must be one of: a list of layer indices, {first: A, last: B} (inclusive), "
                "or {every: N, start: S} (optionally with last)"
            )
        if self.every is not None and self.start is None:
            raise ValueError("every N needs an explicit start (Megatron and Hugging Face disagree on the default)")
        if self.start is not None and self.every is None:
            raise ValueError("start needs every")
        if self.layers is not None and (self.first is not None or self.last is not None):
            raise ValueError("a list of layers cannot be combined with first/last")
        if self.first is not None and self.last is None:
            raise ValueError("first needs last (inclusive)")
        return self


class AttentionOverride(Strict):
    """One layer's attention settings; each applies only when written (unwritten: the attention section's)."""

    window: Annotated[int, Field(gt=0, le=MAX_SEQ)] | None = None
    """This layer's sliding window, in tokens (unwritten: the attention section's)."""
    chunk: Annotated[int, Field(gt=0, le=MAX_SEQ)] | None = None
    """This layer's attention chunk, in tokens (unwritten: the attention section's)."""
    rope: bool = True
    """Whether this layer rotates q and k (false: a NoPE layer, Llama-4)."""
    qk_norm: bool = False
    """Turn attention.qk_norm on or off for this layer (Llama-4: rope layers only)."""
    temperature_tuning: bool = False
    """Turn attention.temperature_tuning on for this layer (Llama-4: NoPE layers)."""
    rope_theta: Annotated[float, Field(gt=0, le=1e12)] | None = None
    """This layer's RoPE base instead of model.positions.theta (MiMo-V2-Flash)."""
    n_heads: Annotated[int, Field(gt=0, le=MAX_HEADS)] | None = None
    """This layer's query heads (Step-3.5, Laguna); head_dim stays the attention section's."""
    n_kv_heads: Annotated[int, Field(gt=0, le=MAX_HEADS)] | None = None
    """This layer's key/value heads, GQA only (MiMo-V2-Flash's sliding layers: twice the full layers')."""
    rotary_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] | None = None
    """This layer's rotated dims per q/k head, GQA (Laguna: half on full layers); unwritten: the model's."""
    sinks: bool = False
    """Turn attention.sinks on or off for this layer (MiMo-V2-Flash: its sliding layers only)."""
    rope_scaling: RopeScaling | None = None
    """This layer's own RoPE scaling, GQA (Laguna XS 2.1: YaRN on full layers only); null: none; unwritten: the model's."""
    kv_lora_rank: Annotated[int, Field(gt=0, le=MAX_D)] | None = None
    """MLA: this layer's kv latent width (Dots3's sliding layers); unwritten: the attention section's."""
    qk_nope_head_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] | None = None
    """MLA: this layer's non-rotary query/key head width; unwritten: the attention section's."""
    v_head_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] | None = None
    """MLA: this layer's value head width; unwritten: the attention section's."""
    indexer: bool | Literal["shared"] = True
    """false: every key it may see, no indexer (Dots3's sliding layers); shared: the keys the last indexer before it chose (GLM-5.2, HY-V4)."""


class LayerDefault(Strict):
    ffn: Literal[FFN_KINDS] = "dense"
    """The FFN of every layer no override names: dense, moe, or none (a layer with a token mixer only)."""
    mixer: Literal[MIXER_KINDS] = "attention"
    """The token mixer of every layer no override names: attention, a mixers section's kind, or none."""
    attention: AttentionOverride = AttentionOverride()
    """Attention settings of every layer no override names."""


class Override(Strict):
    select: Annotated[Select, Field()]
    """Which layers: a list, {first, last} or {every, start}."""
    ffn: Literal[FFN_KINDS] | None = None
    """The FFN of the selected layers: dense, moe or none."""
    mixer: Literal[MIXER_KINDS] | None = None
    """The token mixer of the selected layers: attention, a kind of the mixers section, or none."""
    attention: AttentionOverride | None = None
    """Attention settings of the selected layers."""
    moe: MoEOverride | None = None
    """The selected MoE layers' own activation and clamp limits (Step-3.7-Flash's clamped layers)."""

    @field_validator("select", mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        return _selector_shorthand(v)


class Layers(Strict):
    default: LayerDefault = LayerDefault()
    """What every layer has unless an override says otherwise."""
    overrides: Annotated[list[Override], Field(max_length=MAX_OVERRIDES)] = []
    """Per-layer changes, applied in order (a later one wins)."""

    def attention_sections(self) -> list[tuple[tuple[str | int, ...], AttentionOverride]]:
        """(path, section) of layers.default.attention and of each override's attention section, in order: where
        a cross-field check finds what the layers write (an override's index an int, as the YAML marks have it)."""
        sections: list[tuple[tuple[str | int, ...], AttentionOverride]] = [
            (("layers", "default", "attention"), self.default.attention)
        ]
        for j, ov in enumerate(self.overrides):
            if ov.attention is not None:
                sections.append((("layers", "overrides", j, "attention"), ov.attention))
        return sections
