"""Readers shared by the encoder-decoder families (switch_transformers, nllb-moe): the FFN's non-gated activation,
the two stacks' per-layer FFN kinds as the model's layers and the spec's ``encoder`` section (moec/spec/encdec.py),
and the untied embeddings' refusal."""

from __future__ import annotations

from typing import Any

from moec.hf.draft import Draft, HFConfig, layer_pattern
from moec.hf.families._common import PLAIN_ACTIVATIONS


def non_gated_activation(c: HFConfig, d: Draft, key: str) -> str:
    """The moec activation of ``key`` (relu when unset, the families' default); another name is a gap located
    at ``key``."""
    act = c.str(key)
    if act is not None and act not in PLAIN_ACTIVATIONS:
        d.gap(key, act, f"moec maps {', '.join(PLAIN_ACTIVATIONS)} (non-gated)", "activation")
    return PLAIN_ACTIVATIONS.get(act or "", "relu")


def put_stacks(
    c: HFConfig, d: Draft, stacks: tuple[list[str] | None, list[str] | None], keys: tuple[str, str], rule: str
) -> None:
    """The (encoder, decoder) FFN kinds, each None where its layer count was refused (reported): the decoder's are
    the model's layers (attention in each, no window), the encoder's its ``encoder`` section. ``keys``: the two
    layer-count fields; ``rule``: which layers are sparse, with ``{stack}`` for encoder or decoder."""
    encoder, decoder = stacks
    if decoder is not None:
        d.n_layers = len(decoder)
        d.put("model.n_layers", d.n_layers, c.src(keys[1]))
        d.ffn = decoder
        d.ffn_note = rule.format(stack="decoder")
    else:
        d.layers_known = False
        d.ffn = ["dense"]
    d.mixer, d.window, d.rope = ["attention"] * len(d.ffn), [None] * len(d.ffn), [True] * len(d.ffn)
    if encoder is not None:
        d.put("encoder.n_layers", len(encoder), c.src(keys[0]))
        d.put("encoder.layers", stack_layers_value(encoder), rule.format(stack="encoder"))


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
