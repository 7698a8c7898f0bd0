"""Nemotron-H (``model_type`` nemotron_h, NemotronHForCausalLM; NVIDIA-Nemotron-3-Nano, Nemotron-H): every layer
holds ONE sublayer after one RMSNorm — Mamba2 (``M``, ``linear_attention``; moec's ``mamba2`` mixer, docs/mixers.md),
GQA without positions (``*``, ``full_attention``), a non-gated MLP (``-``, ``mlp``) or a non-gated MoE (``E``,
``moe``: sigmoid scores with a selection bias, group-limited top-k, renormalised and scaled, plus one shared MLP).
In moec a Mamba2 or attention layer has ``ffn: none`` and an MLP or MoE layer ``mixer: none``.

The pattern is ``layers_block_type`` (transformers 5) or the release configs' ``hybrid_override_pattern`` string.
Checkpoints are under ``backbone.`` (what the releases and save_pretrained write) or ``model.`` (transformers in
memory); every sublayer is ``mixer.*`` and its norm ``norm`` (:class:`NemotronHMapper`). No exporter (import only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import Draft, Family, HFConfig, shown
from moec.hf.families._common import COMMON_DEFAULTS, all_known, aux, dense_ffn, dropout, gqa, router
from moec.hf.mapper import Mapper, Missing
from moec.spec.plan import LayerPlan, MoEPlan
from moec.strict import MAX_LAYERS
from moec.vocab import ACTIVATIONS

if TYPE_CHECKING:
    import torch

# NemotronHConfig's defaults of the fields the translator reads (transformers 5.24)
DEFAULTS = {
    **COMMON_DEFAULTS, "default_theta": 10000.0, "vocab_size": 131072, "hidden_size": 4096, "layers_block_type": None,
    "tie_word_embeddings": False, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "max_position_embeddings": 4096, "attention_bias": False, "sliding_window": None, "intermediate_size": 21504,
    "mlp_hidden_act": "relu2", "mlp_bias": False, "ssm_state_size": 128, "mamba_num_heads": 128, "mamba_head_dim": 64,
    "mamba_hidden_act": "silu", "n_groups": 8, "conv_kernel": 4, "expand": 2, "time_step_min": 0.001,
    "time_step_max": 0.1, "time_step_floor": 1e-4, "use_conv_bias": True, "chunk_size": 128, "mamba_proj_bias": False,
    "mamba_ssm_cache_dtype": "float32", "n_routed_experts": 8, "n_shared_experts": 1, "moe_intermediate_size": 7688,
    "moe_shared_expert_intermediate_size": 7688, "moe_latent_size": None, "moe_shared_expert_overlap": True,
    "num_experts_per_tok": 2, "routed_scaling_factor": 1.0, "n_group": 1, "topk_group": 1, "norm_topk_prob": True,
    "num_nextn_predict_layers": 0, "use_bias": False, "layer_norm_epsilon": 1e-5, "residual_in_fp32": False,
    "rescale_prenorm_residual": True, "use_mamba_kernels": True, "num_logits_to_keep": 1, "hidden_dropout": 0.0,
}  # fmt: skip

# the release configs' older names, which NemotronHConfig reads in place of the current ones
LEGACY = {"mamba_n_groups": "n_groups", "mamba_d_conv": "conv_kernel", "mamba_expand": "expand",
          "mamba_dt_min": "time_step_min", "mamba_dt_max": "time_step_max", "mamba_dt_limit": "time_step_limit",
          "mamba_dt_init_floor": "time_step_floor", "mamba_conv_bias": "use_conv_bias",
          "mamba_chunk_size": "chunk_size"}  # fmt: skip

# a layer's type (transformers 5's name, the pattern's character, or the legacy name transformers remaps) → (mixer, ffn)
LAYER_KINDS = {
    "linear_attention": ("mamba2", "none"), "M": ("mamba2", "none"), "mamba": ("mamba2", "none"),
    "full_attention": ("attention", "none"), "*": ("attention", "none"), "attention": ("attention", "none"),
    "mlp": ("none", "dense"), "-": ("none", "dense"),
    "moe": ("none", "moe"), "E": ("none", "moe"),
}  # fmt: skip

# mlp_hidden_act (an MLP without a gate) → moec's activation, where moec has it
NON_GATED = {"relu": "relu", "relu2": "relu2", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu"}


def translate(c: HFConfig, d: Draft) -> None:
    _legacy_names(c)
    _model(c, d)
    _layer_kinds(c, d)
    _attention(c, d)
    _mamba2(c, d)
    act = _activation(c, d)
    c.value("intermediate_size")  # the MLP layers' width: read whether or not a layer is one
    if "dense" in d.ffn:
        dense_ffn(c, d, bias=c.bool("mlp_bias"), bias_src=c.src("mlp_bias") + " (up_proj and down_proj)")
        d.put("ffn.activation", act, c.src("mlp_hidden_act") + " (no gate)")
    _moe(c, d, act)
    for key in ("residual_in_fp32", "rescale_prenorm_residual", "use_mamba_kernels", "mamba_ssm_cache_dtype",
                "num_logits_to_keep", "time_step_max", "time_step_floor", "time_step_limit", "expand",
                "moe_shared_expert_overlap", "mtp_layers_block_type"):  # fmt: skip
        c.value(key)  # transformers' NemotronH builds and runs the same values whatever these say (init, kernels)


def _legacy_names(c: HFConfig) -> None:
    """A release config's older name is read as the current one, as NemotronHConfig does."""
    for old, new in LEGACY.items():
        if c.given(old) and not c.given(new):
            c.raw[new] = c.raw[old]
            c.read.add(old)


def _model(c: HFConfig, d: Draft) -> None:
    d.put("model.vocab_size", c.int("vocab_size"), c.src("vocab_size"))
    d.put("model.d_model", c.int("hidden_size"), c.src("hidden_size"))
    d.put("model.max_seq_len", c.int("max_position_embeddings"), c.src("max_position_embeddings"))
    d.put("model.tie_embeddings", c.bool("tie_word_embeddings"), c.src("tie_word_embeddings"))
    d.put("model.norm.kind", "rmsnorm", "NemotronHRMSNorm before every layer's one sublayer, and norm_f at the end")
    d.put("model.norm.eps", c.float("layer_norm_epsilon"), c.src("layer_norm_epsilon"))
    d.put("model.positions.kind", "none", "NemotronHAttention rotates nothing (the Mamba2 layers carry order)")
    dropout(c, d, "attention_dropout", "hidden_dropout")
    for key in ("rope_theta", "partial_rotary_factor"):
        c.value(key)  # release configs carry them; NemotronHAttention rotates nothing, so they change no value
    eps = c.value("norm_eps")  # the release configs' older name, equal to layer_norm_epsilon there
    if eps is not None and eps != d.get("model.norm.eps"):
        d.gap("norm_eps", eps, "transformers' NemotronH reads layer_norm_epsilon and ignores norm_eps, which "
              "differs from it: ambiguous", "none: set norm_eps equal to layer_norm_epsilon (or remove it)")  # fmt: skip


def _pattern(c: HFConfig) -> tuple[str, list[str]] | None:
    """The layer types: layers_block_type, else hybrid_override_pattern's characters, else the class default."""
    if c.value("layers_block_type") is not None:
        types = c.str_list("layers_block_type")
        if types == []:
            c.bad("layers_block_type", "[]: a model needs at least one layer")
        return ("layers_block_type", types) if types else None
    pattern = c.value("hybrid_override_pattern")
    if pattern is not None:
        if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_LAYERS:
            c.bad("hybrid_override_pattern", f"{shown(pattern)}: expected a string of M, *, - and E, one per layer")
            return None
        return "hybrid_override_pattern", list(pattern)
    return "layers_block_type", ["linear_attention", "moe", "full_attention", "mlp"]  # NemotronHConfig's


def _layer_kinds(c: HFConfig, d: Draft) -> None:
    found = _pattern(c)
    key, types = found if found is not None else ("layers_block_type", ["mlp"])
    d.put("model.n_layers", len(types), c.src(key) + " (its length)")
    d.n_layers, d.layers_known = len(types), found is not None
    given = c.value(
        "num_hidden_layers"
    )  # transformers builds the pattern's layers; a count that differs is a broken config
    if found is not None and given is not None and given != len(types):
        c.bad("num_hidden_layers", f"{shown(given)}: {key} has {len(types)} layers")
    if found is None or not all_known(c, key, types, tuple(LAYER_KINDS)):
        d.mixer, d.ffn = ["none"] * d.n_layers, ["dense"] * d.n_layers
        return
    d.mixer = [LAYER_KINDS[t][0] for t in types]
    d.ffn = [LAYER_KINDS[t][1] for t in types]
    d.mixer_note = d.ffn_note = f"{key}: one sublayer per layer (Mamba2, attention, MLP or MoE)"
    d.window, d.rope = [None] * d.n_layers, [True] * d.n_layers


def _attention(c: HFConfig, d: Draft) -> None:
    if "attention" not in d.mixer:
        for key in ("num_attention_heads", "num_key_value_heads", "head_dim", "attention_bias", "sliding_window"):
            c.value(key)
        return
    gqa(c, d, bias=False, out_bias=False, bias_src="NemotronHAttention has no biases")
    if c.bool("attention_bias"):
        d.gap("attention_bias", True, "NemotronHAttention builds q, k, v and o without biases whatever "
              "attention_bias says: ambiguous", "none: set attention_bias to false (what transformers builds)")  # fmt: skip
    window = c.value("sliding_window")
    if window is not None:
        d.gap("sliding_window", window, f"transformers' NemotronH attends to every token, sliding_window "
              f"{shown(window)} notwithstanding: ambiguous", "none: remove sliding_window (what transformers runs)")  # fmt: skip


def _mamba2(c: HFConfig, d: Draft) -> None:
    keys = ("mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups", "conv_kernel", "use_conv_bias",
            "chunk_size", "time_step_min", "mamba_hidden_act", "mamba_proj_bias")  # fmt: skip
    if "mamba2" not in d.mixer:
        for key in keys:
            c.value(key)
        return
    bias = c.bool("use_bias")
    d.section(
        "mixers.mamba2",
        n_heads=(c.int("mamba_num_heads"), c.src("mamba_num_heads")),
        head_dim=(c.int("mamba_head_dim"), c.src("mamba_head_dim")),
        state_dim=(c.int("ssm_state_size"), c.src("ssm_state_size")),
        n_groups=(c.int("n_groups"), c.src("n_groups") + " (B and C groups; the gated norm's groups)"),
        conv_kernel=(c.int("conv_kernel"), c.src("conv_kernel")),
        conv_bias=(c.bool("use_conv_bias"), c.src("use_conv_bias")),
        bias=(bias, c.src("use_bias") + " (in_proj and out_proj)"),
        chunk=(c.int("chunk_size"), c.src("chunk_size")),
        step_min=(c.float("time_step_min"), c.src("time_step_min") + " (NemotronHMamba2Mixer clamps Δ from below)"),
    )
    act = c.str("mamba_hidden_act")
    if act not in (None, "silu", "swish"):
        d.gap("mamba_hidden_act", act, f"NemotronHMamba2Mixer applies {act!r} after its convolution; moec's mamba2 "
              "applies silu", "mixers.mamba2.activation: the convolution's activation (silu today)")  # fmt: skip
    c.value("mamba_proj_bias")  # NemotronHMamba2Mixer's projection biases follow use_bias; this field is unread


def _activation(c: HFConfig, d: Draft) -> str:
    act = c.str("mlp_hidden_act")
    ours = NON_GATED.get(act or "")
    if act is not None and ours not in ACTIVATIONS:
        d.gap("mlp_hidden_act", act, f"mlp_hidden_act {act!r} (the MLPs' and experts' activation, no gate) has no "
              "moec activation" + (" (relu2 is the squared ReLU, relu(x)²)" if act == "relu2" else ""),
              f"activation: {ours or act}")  # fmt: skip
        return "relu"
    return ours or "relu"


def _moe(c: HFConfig, d: Draft, act: str) -> None:
    keys = ("n_routed_experts", "moe_intermediate_size", "num_experts_per_tok", "routed_scaling_factor", "n_group",
            "topk_group", "norm_topk_prob", "n_shared_experts", "moe_shared_expert_intermediate_size",
            "moe_latent_size", "num_nextn_predict_layers")  # fmt: skip
    if "moe" not in d.ffn:
        for key in keys:
            c.value(key)
        return
    d.section(
        "moe",
        n_experts=(c.int("n_routed_experts"), c.src("n_routed_experts")),
        d_ff=(c.int("moe_intermediate_size"), c.src("moe_intermediate_size")),
        activation=(act, c.src("mlp_hidden_act") + " (no gate)"),
        n_shared_experts=(1, "NemotronHMoE: one shared MLP beside the routed experts, added without a gate"),
        d_ff_shared=(c.int("moe_shared_expert_intermediate_size"), c.src("moe_shared_expert_intermediate_size")),
    )
    d.put("moe.router.top_k", c.int("num_experts_per_tok"), c.src("num_experts_per_tok"))
    router(d, "NemotronHTopkRouter: sigmoid, + e_score_correction_bias for selection, groups by top-2 sum",
           score="sigmoid", softmax_after_topk=False, selection_bias=True, group_score="top2_sum")  # fmt: skip
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob"))
    d.put("moe.router.n_groups", c.int("n_group"), c.src("n_group"))
    d.put("moe.router.topk_groups", c.int("topk_group"), c.src("topk_group"))
    d.put("moe.router.scale", c.float("routed_scaling_factor"), c.src("routed_scaling_factor"))
    _moe_gaps(c, d)


def _moe_gaps(c: HFConfig, d: Draft) -> None:
    """What the MoE layers of some Nemotron-H configs hold that moec cannot say."""
    shared = c.int("n_shared_experts", minimum=0)
    if shared != 1:
        d.gap("n_shared_experts", shared, "NemotronHMoE builds one shared MLP of moe_shared_expert_intermediate_size "
              "whatever n_shared_experts says: ambiguous", "none: set n_shared_experts to 1 (what transformers builds)")  # fmt: skip
    latent = c.value("moe_latent_size")
    if latent is not None:
        d.gap("moe_latent_size", latent, "the routed experts work in a latent space (fc1_latent_proj before them, "
              "fc2_latent_proj after): moec's experts read and write the model width", "moe.latent_size")  # fmt: skip
    if c.bool("mlp_bias"):
        d.gap("mlp_bias", True, "NemotronH's shared MLP has biases but its routed experts none: moec's MoE has one "
              "bias setting", "moe.shared_bias")  # fmt: skip
    mtp = c.int("num_nextn_predict_layers", minimum=0)
    if mtp:
        d.gap("num_nextn_predict_layers", mtp, "Nemotron-H's MTP layers (a Mamba2/attention hybrid block): moec's MTP "
              "blocks are attention-only", "mtp")  # fmt: skip
    if c.given("router_aux_loss_coef"):  # not a NemotronHConfig field; release configs may carry it
        aux(c, d)


class NemotronHMapper(Mapper):
    """Nemotron-H's names: ``backbone.`` (or ``model.``) ``embeddings``, ``layers.{i}.norm`` (before whichever
    sublayer the layer has), ``layers.{i}.mixer.*`` (Mamba2 under its own names, attention's q/k/v/o_proj, the MLP's
    up/down_proj, the MoE's gate, experts and shared_experts), ``norm_f``; MLPs and experts have no gate: moec's
    ``w_gate_up`` is up_proj alone."""

    attn = "mixer."
    attn_norm = ffn_norm = "norm."
    moe_blocks = ("mixer.",)
    routers = ("gate.",)

    def __init__(self, ck: Any, plan: Any):
        prefix = "backbone." if any(n.startswith("backbone.") for n in ck.file_of) else "model."
        self.layer_fmt, self.embed, self.final_norm = (
            f"{prefix}layers.{{i}}.",
            f"{prefix}embeddings.weight",
            f"{prefix}norm_f.",
        )
        super().__init__(ck, plan)

    def block(self, lp: LayerPlan, i: int, part: str, leaf: str) -> Any:
        if part == "ffn" and not isinstance(lp.ffn, MoEPlan):
            return self.dense(self.layer(i) + "mixer.", leaf)
        return super().block(lp, i, part, leaf)

    def dense(self, p: str, leaf: str) -> torch.Tensor:
        """NemotronHMLP: up_proj (f, d), down_proj (d, f), biases with mlp_bias; no gate."""
        name = {"w_gate_up": "up_proj.weight", "w_down": "down_proj.weight",
                "b_gate_up": "up_proj.bias", "b_down": "down_proj.bias"}.get(leaf)  # fmt: skip
        if name is None:
            raise Missing([f"{p}{leaf}"])
        t = self.ck.get(p + name)
        return t.T if leaf.startswith("w_") else t

    def experts(self, blk: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        """up_proj (f, d) and down_proj (d, f) per expert as saved, or stacked (E, f, d), (E, d, f) in memory."""
        import torch

        name = {"w_gate_up": "up_proj", "w_down": "down_proj"}.get(leaf)
        if name is None:
            raise Missing([f"{blk}experts.{leaf}"])
        e = f"{blk}experts."
        if f"{e}0.{name}.weight" in self.ck:
            return torch.stack([t.T for t in self.ck.get_all([f"{e}{x}.{name}.weight" for x in range(plan.n_experts)])])
        return self.ck.get(e + name).transpose(1, 2)


FAMILY = Family(
    "nemotron_h",
    "NemotronHForCausalLM",
    DEFAULTS,
    translate,
    aliases={"layer_types": "layers_block_type", "num_local_experts": "n_routed_experts"},
    mapper=NemotronHMapper,
)
