"""The sparse-attention indexer (DeepSeek-V3.2's lightning indexer, DeepSeek Sparse Attention; GLM-5): the spec's
``attention.indexer`` section and its cross-field checks. docs/conventions.md, "Sparse attention indexer", says
how it is counted; moec/nn/indexer.py runs it.

Each query scores every key it may see with a few small heads of its own,

    I(t, s) = Σ_j w_j(x_t) · ReLU(q_j(t) · k(s) / √d_I),      w(x) = weights_proj(x) / √H_I

(q_j from the query latent of MLA through ``wq_b``, one key k = LayerNorm(wk(x)) per token shared by the heads,
the first qk_rope_head_dim dims of both rotated, or the last with ``rope_dims: last``), keeps the ``top_k`` best keys, and the attention then runs over
those keys only. With at most ``top_k`` keys visible the attention is exactly the dense one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from moec.strict import MAX_HEAD_DIM, MAX_HEADS, MAX_SEQ, Strict

if TYPE_CHECKING:
    from moec.spec.schema import Spec

ROPE_LAYOUTS = ("halves", "interleaved")
ROPE_DIMS = ("first", "last")


class IndexerSection(Strict):
    n_heads: Annotated[int, Field(gt=0, le=MAX_HEADS)]
    """The indexer's query heads H_I (DeepSeek-V3.2: 64, GLM-5: 32)."""
    head_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)]
    """Width d_I of each indexer query head and of the one indexer key per token (DeepSeek-V3.2: 128)."""
    top_k: Annotated[int, Field(gt=0, le=MAX_SEQ)]
    """Keys each query attends: the top_k its indexer scores best among those it may see (DeepSeek-V3.2: 2048)."""
    rope_layout: Literal[ROPE_LAYOUTS] = "halves"
    """Rotary pairs of the indexer's first qk_rope_head_dim dims: halves (DeepSeek-V3.2) or interleaved (GLM-5)."""
    rope_dims: Literal[ROPE_DIMS] = "first"
    """Which qk_rope_head_dim dims of its queries and key rotate: the first (DeepSeek-V3.2, GLM-5) or the last (HY-V4)."""
    key_norm_eps: Annotated[float, Field(gt=0, lt=1)] = 1e-6
    """Eps of the LayerNorm (a weight and a bias of d_I) on the indexer's key."""


Section = IndexerSection  # the contract name, as the mixers' sections


def problems(spec: Spec) -> list[tuple[tuple[str | int, ...], str]]:
    """Cross-field problems of ``attention.indexer``: (path, message), every one."""
    a = spec.attention
    ix = a.indexer
    out_layers = _layer_problems(spec)
    if ix is None:
        return out_layers
    here = ("attention", "indexer")
    out: list[tuple[tuple[str | int, ...], str]] = []
    if a.kind != "mla" or a.q_lora_rank is None:
        out.append((here, "the indexer reads MLA's query latent: it needs attention.kind mla with q_lora_rank"))
    rope = a.qk_rope_head_dim or 0
    if spec.model.positions.kind == "rope" and rope > ix.head_dim:
        out.append(
            ((*here, "head_dim"), f"must be at least attention.qk_rope_head_dim ({rope}): those dims of it rotate")
        )
    for f in ("rope_layout", "rope_dims"):
        if spec.model.positions.kind != "rope" and f in ix.model_fields_set:
            out.append(((*here, f), "only meaningful with rotary positions"))
    return out + _window_problems(spec) + out_layers


def _window_problems(spec: Spec) -> list[tuple[tuple[str | int, ...], str]]:
    """Layers that run the indexer under a sliding window, refused where the window is written: the indexer's
    scores tie often (a ReLU of every head's q·k can be 0), and a windowed decode ranks its keys in the order of a
    ring of cache slots, not of positions, so torch's top-k would break those ties towards other keys than the full
    forward does. A layer without the indexer (``layers.*.attention.indexer: false``) may slide."""
    from moec.spec.resolve import attention_fields_per_layer  # resolve reads this module's section

    fields = attention_fields_per_layer(spec)
    both = [i for i, (w, ix) in enumerate(zip(fields["window"], fields["indexer"], strict=True)) if w and ix]
    if not both:
        return []
    layers = ", ".join(map(str, both[:6])) + (", …" if len(both) > 6 else "")
    why = f"not with attention.indexer (layers {layers}): a windowed decode would break the indexer's ties differently"
    return [(_written_for(spec, "window", both[0]), why)]


def _layer_problems(spec: Spec) -> list[tuple[tuple[str | int, ...], str]]:
    """``layers.*.attention.indexer`` only turns off (or shares) an indexer the attention section has, and a layer
    that shares one needs a layer before it that runs its own."""
    sections = [(path, s.indexer) for path, s in spec.layers.attention_sections() if "indexer" in s.model_fields_set]
    if spec.attention.indexer is None:
        what = {"shared": "it shares an earlier layer's indexer choice", False: "it turns the indexer off"}
        return [
            (
                (*path, "indexer"),
                f"only meaningful with attention.indexer ({what.get(mode, 'it keeps the indexer on')})",
            )
            for path, mode in sections
        ]
    from moec.spec.resolve import attention_fields_per_layer  # resolve reads this module's section

    modes = attention_fields_per_layer(spec)["indexer"]
    first = next((i for i, m in enumerate(modes) if m is not False), None)
    if first is None or modes[first] != "shared":
        return []
    why = f"layer {first} shares the choice of an earlier layer's indexer, and no layer before it runs one"
    return [(_written_for(spec, "indexer", first), why)]


def _written_for(spec: Spec, field: str, layer: int) -> tuple[str | int, ...]:
    """Where the value of attention ``field`` that ``layer`` plans is written, the place to change it: the last
    override selecting the layer that writes it, else layers.default, else the attention section."""
    from moec.spec.resolve import selected_layers

    where: tuple[str | int, ...] = ("attention", field)
    if field in spec.layers.default.attention.model_fields_set:
        where = ("layers", "default", "attention", field)
    for j, ov in enumerate(spec.layers.overrides):
        writes = ov.attention is not None and field in ov.attention.model_fields_set
        if writes and layer in selected_layers(ov.select, spec.model.n_layers):
            where = ("layers", "overrides", j, "attention", field)
    return where


def plan_fields(ix: IndexerSection | None, mode: bool | str) -> dict[str, Any]:
    """``attention.indexer`` as a layer's flat indexer_* fields of AttentionPlan: its own (mode true), none (false:
    the defaults), or the top_k of the choice it reuses (shared)."""
    if ix is None or mode is False:
        return {}
    if mode == "shared":
        return {"indexer_top_k": ix.top_k, "indexer_shared": True}
    return {
        "indexer_n_heads": ix.n_heads,
        "indexer_head_dim": ix.head_dim,
        "indexer_top_k": ix.top_k,
        "indexer_rope_layout": ix.rope_layout,
        "indexer_key_norm_eps": ix.key_norm_eps,
        "indexer_rope_dims": ix.rope_dims,
    }
