"""Readers shared by the encoder-decoder families (switch_transformers, nllb-moe): the FFN's non-gated activation
and a stack's per-layer FFN kinds as the spec's ``encoder.layers`` value (moec/spec/encdec.py)."""

from __future__ import annotations

from typing import Any

from moec.hf.draft import Draft, HFConfig, layer_pattern

# transformers' ACT2FN name → moec's non-gated activation (the tanh GELUs are one moec activation, moec.vocab)
NON_GATED_ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "silu": "silu",
}


def non_gated_activation(c: HFConfig, d: Draft, key: str) -> str:
    """The moec activation of ``key`` (relu when unset, the families' default); another name is a gap located
    at ``key``."""
    act = c.str(key)
    if act is not None and act not in NON_GATED_ACTIVATIONS:
        d.gap(key, act, f"moec maps {', '.join(NON_GATED_ACTIVATIONS)} (non-gated)", "activation")
    return NON_GATED_ACTIVATIONS.get(act or "", "relu")


def stack_layers_value(kinds: list[str]) -> dict[str, Any]:
    """A stack's FFN kinds ("dense" / "moe", one per layer) as a ``layers`` value: the commonest kind as the
    default, the others as overrides."""
    default, overrides = layer_pattern(kinds)
    out: dict[str, Any] = {"default": {"ffn": default}}
    if overrides:
        out["overrides"] = [{"select": sel, "ffn": v} for sel, v in overrides]
    return out


def untied_embeddings_gap(c: HFConfig, d: Draft, d_model: int) -> None:
    """tie_word_embeddings false: transformers 5.24 then ties nothing (an unused `shared` table, the encoder's and
    the decoder's, and a head), which moec's one shared embedding cannot say."""
    d.gap(
        "tie_word_embeddings",
        False,
        "untied, transformers builds separate encoder and decoder embeddings (and an unused shared one) besides "
        "the head; moec's encoder-decoder shares one embedding",
        "encoder.tie_embeddings: false (an encoder embedding of its own). Count: +V·d, and transformers' unused "
        "shared table another V·d",
        param_delta=2 * c.int("vocab_size") * d_model,
    )
