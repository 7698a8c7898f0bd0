"""Switch Transformers (``model_type`` switch_transformers, SwitchTransformersForConditionalGeneration): a T5
encoder-decoder (moec/spec/encdec.py) whose sparse layers are top-1 Switch layers. Each stack: T5 blocks of
self-attention (no biases, softmax scale 1), cross-attention in the decoder, and a non-gated FFN, every sublayer
behind an RMSNorm without bias; layer i is sparse when i % step == 1 (or step == 1), step = layers // sparse
layers unless config.json writes encoder_sparse_step / decoder_sparse_step (transformers keeps a written one);
T5's relative position bias in each stack's first self-attention; the embedding shared by both stacks and the
head; the decoder's output scaled by d_model^-0.5 when tied (logits_scaling √d). The router: a linear layer in
float32, softmax over all experts, the top expert weighted by its probability, at most expert_capacity tokens of
a sequence per expert, earliest first, and input jitter 1 ± router_jitter_noise in training.

Weights: :class:`SwitchMapper` names each tensor of moec's encoder-decoder model (moec/nn/encdec.py) in
transformers' checkpoint; ``moec.from_hf`` loads one, and ``moec.export_hf`` writes one through the same mapping
with the config :func:`export` writes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig
from moec.hf.families._common import PLAIN_ACTIVATIONS, dropout, ignored_field_agrees
from moec.hf.families._encdec_common import (
    non_gated_activation,
    put_stacks,
    untied_embeddings_gap,
)
from moec.hf.mapper import Mapper, Missing
from moec.spec.encdec import RELATIVE_BUCKET
from moec.spec.plan import DenseFFNPlan, LayerPlan, MoEPlan, ResolvedModel
from moec.strict import MAX_LAYERS

if TYPE_CHECKING:
    import torch

    from moec.hf.checkpoint import Checkpoint

# transformers 5.24 SwitchTransformersConfig class defaults of the fields the translator reads
DEFAULTS: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 2048,
    "expert_capacity": 64,
    "num_layers": 12,
    "num_sparse_encoder_layers": 3,
    "num_decoder_layers": 12,  # null: num_layers
    "num_sparse_decoder_layers": 3,
    "num_heads": 12,
    "num_experts": 8,
    "router_bias": False,
    "router_jitter_noise": 0.01,
    "router_dtype": "float32",
    "router_ignore_padding_tokens": False,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "router_z_loss_coef": 0.001,
    "router_aux_loss_coef": 0.001,
    "dense_act_fn": "relu",
    "add_router_probs": False,
    "tie_word_embeddings": True,
    "default_theta": 10000.0,  # PreTrainedConfig's; Switch has no rotary positions
}
# the longest source a spec states: transformers sets none (the relative bias serves any length)
MAX_SEQ_LEN = 512  # T5's and Switch's pre-training input length


def sparse_layers(n_layers: int, step: int) -> list[bool]:
    """Which of a stack's layers transformers builds sparse (SwitchTransformersStack): i % step == 1, every
    layer with step 1, none with step 0."""
    return [step > 0 and (i % step == 1 or step == 1) for i in range(n_layers)]


def _stack(c: HFConfig, layers_key: str, sparse_key: str, step_key: str) -> list[str] | None:
    """One stack's FFN kinds, or None when its layer count was refused (reported)."""
    n = c.int(layers_key, maximum=MAX_LAYERS)
    n_sparse = c.int(sparse_key, minimum=0)
    if c.failed(layers_key) or c.failed(sparse_key):
        c.value(step_key)  # judged with the refused counts (reported): no problem of its own
        return None
    computed = n // n_sparse if n_sparse > 0 else n
    step = c.int(step_key, minimum=0) if c.given(step_key) else computed  # a written step wins in transformers
    return ["moe" if s else "dense" for s in sparse_layers(n, step)]


def translate(c: HFConfig, d: Draft) -> None:
    _model(c, d)
    _attention(c, d)
    decoder_key = "num_decoder_layers" if c.value("num_decoder_layers") is not None else "num_layers"
    encoder = _stack(c, "num_layers", "num_sparse_encoder_layers", "encoder_sparse_step")
    decoder = _stack(c, decoder_key, "num_sparse_decoder_layers", "decoder_sparse_step")
    put_stacks(
        c,
        d,
        (encoder, decoder),
        ("num_layers", decoder_key),
        "i % {stack}_sparse_step == 1 is a Switch layer (SwitchTransformersStack)",
    )
    capacity = c.int("expert_capacity")
    if encoder is not None and "moe" in encoder + (decoder or []):  # no Switch layer (a step of 0): no capacity
        d.put("encoder.expert_capacity", capacity, c.src("expert_capacity") + ", in both stacks")
    _ffn_and_experts(c, d)
    _release_fields(c, d)
    dropout(c, d, "dropout_rate")


def _model(c: HFConfig, d: Draft) -> None:
    d_model = c.int("d_model")
    tied = c.bool("tie_word_embeddings")
    d.put("model.vocab_size", c.int("vocab_size"), c.src("vocab_size"))
    d.put("model.d_model", d_model, c.src("d_model"))
    d.put("model.max_seq_len", MAX_SEQ_LEN, "transformers sets no limit (relative positions); T5's input length")
    d.put("model.tie_embeddings", tied, c.src("tie_word_embeddings") + ": shared, encoder and decoder embeddings")
    if tied:  # the decoder's output × d_model^-0.5 before the tied head: the logits ÷ √d_model
        d.put("model.logits_scaling", float(d_model) ** 0.5, "sequence_output * d_model**-0.5 when tied")
    else:
        untied_embeddings_gap(c, d, d_model)
    d.put("model.norm.kind", "rmsnorm", "SwitchTransformersLayerNorm: no mean subtraction, no bias")
    d.put("model.norm.eps", c.float("layer_norm_epsilon"), c.src("layer_norm_epsilon"))
    d.put("model.positions.kind", RELATIVE_BUCKET, "T5's relative position bias, first layer of each stack")
    buckets = c.int("relative_attention_num_buckets", minimum=2)
    d.put("model.positions.n_buckets", buckets, c.src("relative_attention_num_buckets"))
    distance = c.int("relative_attention_max_distance")
    d.put("model.positions.max_distance", distance, c.src("relative_attention_max_distance"))


def _attention(c: HFConfig, d: Draft) -> None:
    d.put("attention.kind", "gqa", "")
    d.put("attention.n_heads", c.int("num_heads"), c.src("num_heads"))
    d.put("attention.head_dim", c.int("d_kv"), c.src("d_kv"))
    d.put("attention.scale", 1.0, "SwitchTransformersAttention: scaling 1.0 (T5 folds it into the init)")


def _ffn_and_experts(c: HFConfig, d: Draft) -> None:
    activation = non_gated_activation(c, d, "dense_act_fn")
    width = c.int("d_ff")
    note = c.src("dense_act_fn") + ": wi, act, wo (no biases)"
    d.section("ffn", d_ff=(width, c.src("d_ff")), activation=(activation, note))
    d.section(
        "moe",
        n_experts=(c.int("num_experts"), c.src("num_experts")),
        d_ff=(width, c.src("d_ff") + ": every expert a SwitchTransformersDenseActDense"),
        activation=(activation, note),
    )
    d.put("moe.router.top_k", 1, "SwitchTransformersTop1Router: argmax of the softmax over all experts")
    d.put("moe.router.score", "softmax", "the chosen expert's probability weighs its output")
    d.put("moe.router.bias", c.bool("router_bias"), c.src("router_bias"))
    jitter = c.float("router_jitter_noise")
    d.put("moe.router.jitter", jitter, c.src("router_jitter_noise") + " (training only)")
    if jitter:  # SwitchTransformersTop1Router: `hidden_states *= noise` after .to(float32), a copy only in other dtypes
        d.training_only.append(f"router_jitter_noise {jitter!r} (in float32 the experts see the jittered input too)")
    d.put("moe.drop_policy", "position", "cumsum over the sequence: the earliest tokens keep their expert")
    d.put("moe.balance.load_balance_coeff", c.float("router_aux_loss_coef"), c.src("router_aux_loss_coef"))
    d.put("moe.balance.z_loss_coeff", c.float("router_z_loss_coef"), c.src("router_z_loss_coef"))
    if c.str("router_dtype") not in (None, "float32"):
        d.gap("router_dtype", c.value("router_dtype"), "moec routes in float32", "none: router_dtype float32")
    if c.bool("router_ignore_padding_tokens"):
        d.gap(
            "router_ignore_padding_tokens",
            True,
            "routing that skips padding tokens",
            "moe.router.ignore_padding (padding tokens take no expert capacity). No count change",
        )
    c.value("add_router_probs")  # an output switch


def _release_fields(c: HFConfig, d: Draft) -> None:
    """Fields the google/switch-base-* releases carry that transformers 5.24 no longer reads: each must say what
    transformers runs (it runs top-1, token-choice routing with a non-gated FFN)."""
    ignored_field_agrees(c, d, "num_selected_experts", 1, "transformers' Switch routes every token to 1 expert")
    ignored_field_agrees(c, d, "is_gated_act", False, "transformers' Switch FFN is not gated")
    ignored_field_agrees(c, d, "batch_prioritized_routing", False, "transformers keeps the earliest tokens")
    ignored_field_agrees(c, d, "router_type", "tokens_masked", "transformers' router is token choice, masked")
    act = c.value("dense_act_fn")
    ignored_field_agrees(c, d, "feed_forward_proj", act, "transformers' Switch FFN runs dense_act_fn")


def _sparse_fields(layers: tuple[LayerPlan, ...], stack: str) -> dict[str, int]:
    """A stack's num_sparse_<stack>_layers and <stack>_sparse_step: the step (written, so transformers keeps it)
    whose pattern i % step == 1 is the stack's MoE layers."""
    sparse = [isinstance(lp.ffn, MoEPlan) for lp in layers]
    step = next((s for s in range(len(layers) + 1) if sparse_layers(len(layers), s) == sparse), None)
    if step is None:
        raise CannotExport(f"puts a Switch layer where i % step == 1 in each stack (the {stack}'s pattern is not one)")
    return {f"num_sparse_{stack}_layers": sum(sparse), f"{stack}_sparse_step": step}


def _switch_fields(moe: list[MoEPlan], capacity: int | None) -> dict[str, Any]:
    """The router's and the experts' fields, from the plan's MoE layers (one kind across both stacks)."""
    r = moe[0].router
    if capacity is None:
        raise CannotExport("gives every expert a fixed capacity per sequence (encoder.expert_capacity)")
    if (r.top_k, r.score, r.kind) != (1, "softmax", "topk"):
        raise CannotExport(f"routes top-1 by softmax (spec: top-{r.top_k} {r.kind}, {r.score})")
    return {
        "num_experts": moe[0].n_experts,
        "expert_capacity": capacity,
        "router_bias": r.bias,
        "router_jitter_noise": r.jitter,
        "router_aux_loss_coef": moe[0].load_balance_coeff,
        "router_z_loss_coef": moe[0].z_loss_coeff,
    }


def export(m: ResolvedModel) -> dict[str, Any]:
    """An encoder-decoder plan → SwitchTransformersConfig's config.json; the import of it must give the plan back
    (moec.hf.config.export_hf_config checks), so what is not refused here by name is caught there."""
    if not m.encoder:
        raise CannotExport("is an encoder-decoder model (the spec has no encoder section)")
    if m.positions.kind != RELATIVE_BUCKET or not m.tie_embeddings:
        raise CannotExport("needs relative_bucket positions and tied embeddings")
    if m.logits_scaling != float(m.d_model) ** 0.5:  # SwitchTransformersForConditionalGeneration, tied
        raise CannotExport(f"scales the tied output by d_model^-0.5: logits_scaling {float(m.d_model) ** 0.5!r}")
    if m.max_seq_len != MAX_SEQ_LEN:
        raise CannotExport(f"sets no length; moec reads its configs as T5's max_seq_len {MAX_SEQ_LEN}")
    layers = (*m.encoder, *m.layers)
    moe = [lp.ffn for lp in layers if isinstance(lp.ffn, MoEPlan)]
    widths = {lp.ffn.d_ff for lp in layers if isinstance(lp.ffn, (DenseFFNPlan, MoEPlan))}
    activations = {lp.ffn.activation for lp in layers if isinstance(lp.ffn, (DenseFFNPlan, MoEPlan))}
    act = next((k for k, v in PLAIN_ACTIVATIONS.items() if activations == {v}), None)
    if len(widths) != 1 or act is None:
        raise CannotExport(
            f"has one FFN width and one of {', '.join(sorted(set(PLAIN_ACTIVATIONS.values())))} throughout"
        )
    a = m.layers[0].attention
    return {
        "architectures": [FAMILY.architecture],
        "model_type": FAMILY.model_type,
        "vocab_size": m.vocab_size,
        "d_model": m.d_model,
        "d_kv": a.head_dim,
        "num_heads": a.n_heads,
        "d_ff": widths.pop(),
        "dense_act_fn": act,
        "num_layers": len(m.encoder),
        "num_decoder_layers": len(m.layers),
        **_sparse_fields(m.encoder, "encoder"),
        **_sparse_fields(m.layers, "decoder"),
        **(_switch_fields(moe, m.expert_capacity) if moe else {}),
        "relative_attention_num_buckets": m.positions.n_buckets,
        "relative_attention_max_distance": m.positions.max_distance,
        "layer_norm_epsilon": m.norm.eps,
        "dropout_rate": 0.0,  # a moec spec has no dropout
        "tie_word_embeddings": True,
    }


# moec's part of a layer → transformers' sublayer index in SwitchTransformersBlock.layer (encoder, decoder): self-
# attention first, the decoder's cross-attention second, the FFN last
_SUBLAYER = {"attn": (0, 0), "cross_attn": (1, 1), "ffn": (1, 2)}
_NORMS = {"attn_norm": "attn", "cross_norm": "cross_attn", "ffn_norm": "ffn"}
_ATTENTION = {"attn": "SelfAttention.", "cross_attn": "EncDecAttention."}
_PROJECTIONS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "relative_bias": "relative_attention_bias"}


class SwitchMapper(Mapper):
    """SwitchTransformersForConditionalGeneration's names: ``shared`` (the embedding of both stacks and the tied
    head), ``{encoder,decoder}.block.{i}.layer.{j}`` (j: self-attention, the decoder's cross-attention, the FFN;
    each with its ``layer_norm``), ``{encoder,decoder}.final_layer_norm``. A dense FFN is ``mlp.wi`` (f, d) and
    ``mlp.wo`` (d, f): moec's w_gate_up (d, f) and w_down (f, d) are their transposes; a sparse one holds
    ``mlp.router.classifier`` (E, d) and ``mlp.experts.expert_{e}.{wi,wo}``, stacked. A release that also stores
    the stacks' ``embed_tokens`` copies of ``shared`` has them read, and let go when equal to it."""

    layer_fmt = "decoder.block.{i}."
    embed = "shared.weight"
    copies = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")

    def __init__(self, ck: Checkpoint, plan: ResolvedModel):
        super().__init__(ck, plan)
        import torch

        held = [n for n in self.copies if n in ck and self.embed in ck]
        if held:
            shared = ck.get(self.embed)
            for n in held:
                if not torch.equal(ck.get(n), shared):
                    ck.used.discard(n)  # reported unexpected: moec's stacks share one table

    def load(self, name: str) -> torch.Tensor:
        stack = "encoder" if name.startswith("encoder.") else "decoder"
        rest = name.removeprefix("encoder.")
        if rest == "norm.weight":
            return self.ck.get(f"{stack}.final_layer_norm.weight")
        m = re.fullmatch(r"layers\.(\d+)\.(\w+)\.(.+)", rest)
        if m is None:
            return super().load(name)  # embed, lm_head
        i, part, leaf = int(m.group(1)), m.group(2), m.group(3)
        layers = self.plan.encoder if stack == "encoder" else self.plan.layers
        p = f"{stack}.block.{i}.layer."
        decoder = int(stack == "decoder")
        if part in _NORMS:  # each sublayer's own layer_norm
            return self.ck.get(f"{p}{_SUBLAYER[_NORMS[part]][decoder]}.layer_norm.{leaf}")
        if part in _ATTENTION:
            proj, _, kind = leaf.partition(".")
            if proj not in _PROJECTIONS:
                raise Missing([f"<no checkpoint name known for moec's {name}>"])
            return self.ck.get(f"{p}{_SUBLAYER[part][decoder]}.{_ATTENTION[part]}{_PROJECTIONS[proj]}.{kind}")
        if part == "ffn":
            mlp = f"{p}{_SUBLAYER['ffn'][decoder]}.mlp."
            if isinstance(layers[i].ffn, DenseFFNPlan):
                return self.dense_act_dense(mlp, leaf)
            return self.switch_layer(mlp, layers[i].ffn.n_experts, leaf)
        raise Missing([f"<no checkpoint name known for moec's {name}>"])

    def dense_act_dense(self, p: str, leaf: str) -> torch.Tensor:
        """One SwitchTransformersDenseActDense (no biases): wi (f, d), wo (d, f) → (d, f), (f, d)."""
        if leaf == "w_gate_up":
            return self.ck.get(p + "wi.weight").T
        if leaf == "w_down":
            return self.ck.get(p + "wo.weight").T
        raise Missing([f"<no checkpoint name known for moec's FFN {leaf} (Switch's wi and wo have no biases)>"])

    def switch_layer(self, p: str, n_experts: int, leaf: str) -> torch.Tensor:
        """The router's classifier and the E experts, stacked: (E, d, f) and (E, f, d)."""
        import torch

        part, _, rest = leaf.partition(".")
        if part == "router":
            return self.ck.get(p + "router.classifier." + rest)
        if part == "experts" and rest in ("w_gate_up", "w_down"):
            names = [f"{p}experts.expert_{e}.{'wi' if rest == 'w_gate_up' else 'wo'}.weight" for e in range(n_experts)]
            return torch.stack([t.T for t in self.ck.get_all(names)])
        raise Missing([f"<no checkpoint name known for moec's MoE {leaf}>"])


FAMILY = Family(
    "switch_transformers",
    "SwitchTransformersForConditionalGeneration",
    DEFAULTS,
    translate,
    aliases={"hidden_size": "d_model", "num_attention_heads": "num_heads", "num_hidden_layers": "num_layers"},
    export=export,
    mapper=SwitchMapper,
)
