"""moec.nn's 2025–26 MoE features against transformers' own modules on identical weights (issue 11): partial
rotary (GLM-4.5-MoE attention), MLA latent norm eps (DeepSeek-V3 attention), norms after each sublayer (FlexOlmo),
the selection bias as a parameter (ERNIE-4.5-MoE), per-layer RoPE bases (Mellum), NTK-alpha (Hunyuan) and
multimodal RoPE on text (Qwen2-VL, Qwen3-VL-MoE); logit soft-capping against Gemma 2's formula."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from moec.nn import build_model
from moec.nn.attention import Attention
from moec.nn.rope import RotaryEmbedding
from moec.spec import load_spec, resolve
from moec.spec.plan import AttentionPlan, NormPlan, PositionsPlan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RMS = NormPlan("rmsnorm", 1e-6, "pre")
D = 32


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values everywhere (norm weights included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 1.0))


def hf_into_moec(
    hf: torch.nn.Module, ours: torch.nn.Module, block_renames: dict[str, str], family: Callable | None = None
) -> None:
    """Copy a transformers causal LM with Llama-style names into moec's names and layouts: attention linears
    stay [out, in]; moec's FFNs are [in, out] with [gate | up] side by side; stacked experts (E, 2f, d) and
    (E, d, f) are transposed. ``family(rest, value)`` first maps what is particular to one family (returning
    (moec name within the layer, tensor), or None for the common rules)."""
    src = hf.state_dict()
    sd = {"embed.weight": src["model.embed_tokens.weight"], "norm.weight": src["model.norm.weight"],
          "lm_head.weight": src["lm_head.weight"]}  # fmt: skip
    renames = {"self_attn.": "attn.", "mlp.gate.weight": "ffn.router.weight", **block_renames}
    for key, value in src.items():
        if not key.startswith("model.layers."):
            continue
        i, rest = key[len("model.layers.") :].split(".", 1)
        mapped = (family(rest, value) if family else None) or _common_rules(rest, value, src, key, renames)
        if mapped is not None:
            sd[f"layers.{i}.{mapped[0]}"] = mapped[1]
    ours.load_state_dict(sd, strict=True)


def _common_rules(rest: str, value: torch.Tensor, src: dict, key: str, renames: dict[str, str]):
    for a, b in renames.items():
        if rest.startswith(a):
            return b + rest[len(a) :], value
    if rest in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
        return "ffn.experts.w_" + rest.split(".")[-1].removesuffix("_proj"), value.transpose(1, 2)
    for hf_mlp, mlp in (("mlp.shared_experts.", "ffn.shared."), ("mlp.", "ffn.")):
        if rest == hf_mlp + "down_proj.weight":
            return mlp + "w_down", value.T
        if rest == hf_mlp + "gate_proj.weight":
            up = src[key.replace("gate_proj", "up_proj")]
            return mlp + "w_gate_up", torch.cat((value.T, up.T), 1)
    return None  # up_proj (taken with gate_proj)


def logits_of_both(hf: torch.nn.Module, ours: torch.nn.Module, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(vocab, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return ours(tokens)[0], hf(tokens).logits


def causal_additive_mask(S: int) -> torch.Tensor:
    return torch.full((S, S), float("-inf")).triu(1)[None, None]  # eager attention adds it to the scores


# --- partial rotary ------------------------------------------------------------------------------------


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("factor", [0.5, 0.25])
def test_partial_rotary_matches_transformers_glm4_moe_attention(factor, qk_norm):
    from transformers import Glm4MoeConfig
    from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeAttention, Glm4MoeRotaryEmbedding

    h, kv, hd = 4, 2, 16
    cfg = Glm4MoeConfig(
        hidden_size=D, num_attention_heads=h, num_key_value_heads=kv, head_dim=hd, attention_bias=True,
        use_qk_norm=qk_norm, rms_norm_eps=RMS.eps, max_position_embeddings=64, attn_implementation="eager",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": factor},
    )  # fmt: skip
    ref = Glm4MoeAttention(cfg, layer_idx=0).eval()
    rotary_dim = int(hd * factor)
    positions = PositionsPlan("rope", 10000.0, None, rotary_dim)
    plan = AttentionPlan("gqa", h, kv, hd, qk_norm, True, False, False, None, True)
    ours = Attention(plan, D, norm=RMS, positions=positions)
    randomize(ours)
    ref.load_state_dict(ours.state_dict())  # the same names and layouts (GLM's o_proj has no bias, nor ours)

    S = 9
    x = torch.randn(2, S, D, generator=torch.Generator().manual_seed(1))
    cos_sin = Glm4MoeRotaryEmbedding(cfg)(x, torch.arange(S)[None])
    assert cos_sin[0].shape[-1] == rotary_dim  # transformers' tables are as narrow as ours
    want, _ = ref(x, position_embeddings=cos_sin, attention_mask=causal_additive_mask(S))
    got = ours(x, RotaryEmbedding(positions, rotary_dim, 64)(S, x.device, x.dtype))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_partial_rotary_leaves_the_unrotated_dims_alone():
    """Dims past rotary_dim carry no position: shifting every position changes only the rotated part."""
    from moec.nn.rope import apply_rope

    positions = PositionsPlan("rope", 10000.0, None, 4)
    cos, sin = RotaryEmbedding(positions, 4, 64)(6, torch.device("cpu"), torch.float32)
    x = torch.randn(1, 2, 6, 10, generator=torch.Generator().manual_seed(2))
    y = apply_rope(x, cos, sin)
    assert torch.equal(y[..., 4:], x[..., 4:])
    assert not torch.allclose(y[..., 1:, :4], x[..., 1:, :4])  # position 0 is the identity rotation
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])


# --- MLA latent norm eps -------------------------------------------------------------------------------


@pytest.mark.parametrize("latent_norm_eps,matches", [(1e-6, True), (None, False)])
def test_latent_norm_eps_matches_transformers_deepseek_v3_attention(latent_norm_eps, matches):
    """transformers' DeepSeek-V3 latent norms keep eps 1e-6 while the model's is 1e-2 here; with latent_norm_eps
    moec agrees, without it (the model's eps) it does not: the test can tell the two apart."""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding

    from moec.nn.mla import MLA

    cfg = DeepseekV3Config(
        hidden_size=D, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=8,
        qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6, max_position_embeddings=64, rms_norm_eps=1e-2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, attn_implementation="eager",
    )  # fmt: skip
    ref = DeepseekV3Attention(cfg, layer_idx=0).eval()
    plan = AttentionPlan(
        "mla", 4, 4, 12, False, False, False, False, None, True, q_lora_rank=16, kv_lora_rank=8,
        qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6, latent_norm_eps=latent_norm_eps,
    )  # fmt: skip
    positions = PositionsPlan("rope", 10000.0, None)
    ours = MLA(plan, D, norm=NormPlan("rmsnorm", 1e-2, "pre"), positions=positions)
    randomize(ours)
    with torch.no_grad():  # small latents, so that an eps of 1e-2 against 1e-6 shows
        ours.q_a_proj.weight.mul_(0.05)
        ours.kv_a_proj_with_mqa.weight.mul_(0.05)
    ref.load_state_dict(ours.state_dict())

    S = 7
    x = torch.randn(2, S, D, generator=torch.Generator().manual_seed(3))
    cos_sin = DeepseekV3RotaryEmbedding(cfg)(x, torch.arange(S)[None])
    want, _ = ref(x, position_embeddings=cos_sin, attention_mask=causal_additive_mask(S))
    got = ours(x, RotaryEmbedding(positions, 4, 64)(S, x.device, x.dtype))
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4) == matches, (got - want).abs().max()


# --- norms after each sublayer ---------------------------------------------------------------------------

FLEX_OLMO = """
name: tiny-flex-olmo
model: {vocab_size: 128, d_model: 64, n_layers: 2, max_seq_len: 64,
        norm: {kind: rmsnorm, eps: 1.0e-6, placement: after_sublayer}, positions: {kind: rope, theta: 10000.0}}
attention: {n_heads: 4, n_kv_heads: 2, qk_norm: true, qk_norm_scope: projection}
moe: {n_experts: 4, d_ff: 32, router: {top_k: 2, score: softmax}}
layers: {default: {ffn: moe}}
"""


def test_norms_after_each_sublayer_match_transformers_flex_olmo():
    from transformers import FlexOlmoConfig, FlexOlmoForCausalLM

    cfg = FlexOlmoConfig(
        vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False, rms_norm_eps=1e-6,
        max_position_embeddings=64, tie_word_embeddings=False, attn_implementation="eager", pad_token_id=None,
        eos_token_id=None, bos_token_id=None, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )  # fmt: skip
    torch.manual_seed(0)
    hf = FlexOlmoForCausalLM(cfg).eval()
    randomize(hf)
    ours = build_model(resolve(load_spec("t.yaml", text=FLEX_OLMO)), device="cpu", dtype=torch.float32, seed=0)
    renames = {"post_attention_layernorm.": "attn_norm.", "post_feedforward_layernorm.": "ffn_norm."}
    hf_into_moec(hf, ours.eval(), renames)
    got, want = logits_of_both(hf, ours, 128)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# --- final logit soft-capping ------------------------------------------------------------------------------

TINY = """
name: tiny
model: {vocab_size: 64, d_model: 32, n_layers: 2, max_seq_len: 32, positions: {kind: rope} MODEL}
attention: {n_heads: 4, n_kv_heads: 2}
ffn: {d_ff: 48}
mtp: {n_layers: 1, ffn: dense}
"""


@pytest.mark.parametrize("logits_scaling", [1.0, 4.0])
def test_logit_softcap_is_gemmas_cap_tanh_after_the_scaling(logits_scaling):
    """Against the uncapped model's logits through Gemma 2's formula cap·tanh(z/cap), in float64: the head
    (and the MTP head) of the capped model, with Granite's division by logits_scaling first."""
    cap = 3.0
    capped = resolve(load_spec("t.yaml", text=TINY.replace("MODEL", f", logit_softcap: {cap}")))
    plain = capped.replace(logit_softcap=None, logits_scaling=1.0)
    capped = capped.replace(logits_scaling=logits_scaling)
    ours = build_model(capped, device="cpu", dtype=torch.float32, seed=0).eval()
    ref = build_model(plain, device="cpu", dtype=torch.float32, seed=0).eval()
    ref.load_state_dict(ours.state_dict())
    tokens = torch.randint(64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        (got, got_aux), (raw, raw_aux) = ours(tokens), ref(tokens)
    for g, r in [(got, raw), (got_aux.mtp_logits[0], raw_aux.mtp_logits[0])]:
        want = cap * torch.tanh(r.double() / logits_scaling / cap)
        torch.testing.assert_close(g.double(), want, atol=1e-6, rtol=1e-6)
        assert g.abs().max() < cap and raw.abs().max() > cap  # the cap bites somewhere


# --- the selection bias as a parameter ----------------------------------------------------------------------

ERNIE = """
name: tiny-ernie-4.5-moe
model: {vocab_size: 128, d_model: 64, n_layers: 3, max_seq_len: 64, norm: {kind: rmsnorm, eps: 1.0e-5},
        positions: {kind: rope, theta: 500000.0}}
attention: {n_heads: 4, n_kv_heads: 2}
ffn: {d_ff: 96}
moe:
  n_experts: 8
  d_ff: 32
  n_shared_experts: 1
  router: {top_k: 2, score: softmax, normalize_topk: true, selection_bias: true, selection_bias_parameter: true}
layers: {default: {ffn: moe}, overrides: [{select: [0], ffn: dense}]}
"""


def hf_ernie():
    from transformers import Ernie4_5_MoeConfig, Ernie4_5_MoeForCausalLM

    cfg = Ernie4_5_MoeConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, moe_intermediate_size=32, moe_k=2, moe_num_experts=8, moe_num_shared_experts=1,
        moe_layer_start_index=1, rms_norm_eps=1e-5, max_position_embeddings=64, tie_word_embeddings=False,
        use_bias=False, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        attn_implementation="eager", pad_token_id=None, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    return Ernie4_5_MoeForCausalLM(cfg)


def test_the_selection_bias_parameter_is_counted_as_transformers_counts_ernie():
    from moec.analyze import analyze

    plan = resolve(load_spec("t.yaml", text=ERNIE))
    with torch.device("meta"):
        hf = hf_ernie()
    hf_total = sum(p.numel() for p in hf.parameters())
    a = analyze(plan)
    assert a.params.total == hf_total
    ours = build_model(plan, device="meta")
    assert sum(p.numel() for p in ours.parameters()) == hf_total
    as_buffer = analyze(resolve(load_spec("t.yaml", text=ERNIE.replace(", selection_bias_parameter: true", ""))))
    assert a.params.total - as_buffer.params.total == 2 * 8  # E per MoE layer, in the router
    assert a.params.active - as_buffer.params.active == 2 * 8


def half_layout_rows(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """q/k projection rows of each head from ERNIE's rotary pairs (2i, 2i+1) to moec's (i, i + hd/2)."""
    order = torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))
    return w.view(-1, head_dim, w.shape[-1])[:, order].reshape(w.shape)


def test_a_selection_bias_parameter_chooses_experts_as_transformers_ernie():
    torch.manual_seed(0)
    hf = hf_ernie().eval()
    randomize(hf)
    with torch.no_grad():  # a bias large enough to change choices against the softmax scores
        for layer in hf.model.layers[1:]:
            layer.mlp.gate.moe_statics.e_score_correction_bias.copy_(torch.randn(1, 8) * 0.2)
    ours = build_model(resolve(load_spec("t.yaml", text=ERNIE)), device="cpu", dtype=torch.float32, seed=0)
    renames = {"input_layernorm.": "attn_norm.", "post_attention_layernorm.": "ffn_norm."}
    hf_into_moec(hf, ours.eval(), renames, ernie_rules)
    got, want = logits_of_both(hf, ours, 128)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert isinstance(ours.layers[1].ffn.router.expert_bias, torch.nn.Parameter)


def ernie_rules(rest: str, value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """ERNIE's rotary pairs and its correction bias; the rest follows the common rules."""
    if rest in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
        return "attn." + rest.removeprefix("self_attn."), half_layout_rows(value, 16)
    if rest == "mlp.gate.moe_statics.e_score_correction_bias":
        return "ffn.router.expert_bias", value.view(-1)
    return None


def test_the_loss_gives_the_selection_bias_parameter_no_gradient_and_update_bias_moves_it():
    text = ERNIE.replace("n_shared_experts: 1", "n_shared_experts: 1\n  balance: {bias_update_rate: 0.01}")
    model = build_model(resolve(load_spec("t.yaml", text=text)), device="cpu", dtype=torch.float32, seed=0)
    bias = model.layers[1].ffn.router.expert_bias
    assert bias.requires_grad and bias.dtype == torch.float32
    logits, aux = model(torch.randint(128, (2, 12), generator=torch.Generator().manual_seed(1)))
    (logits.square().mean() + aux.loss).backward()
    assert bias.grad is None  # top-k choice is not differentiable
    model.update_bias()
    # 24 slots over 8 experts: each bias moved by ±0.01 toward the mean load, or stayed where the load is the mean
    moved = bias.detach().abs()
    assert torch.all((moved == 0) | (moved == torch.tensor(0.01))) and moved.sum() > 0  # fp32's 0.01


# --- per-layer RoPE theta --------------------------------------------------------------------------------

MELLUM = """
name: tiny-mellum
model: {vocab_size: 128, d_model: 64, n_layers: 3, max_seq_len: 64, norm: {kind: rmsnorm, eps: 1.0e-6},
        positions: {kind: rope, theta: 500000.0}}
attention: {n_heads: 4, n_kv_heads: 2, head_dim: 16, qk_norm: true}
ffn: {d_ff: 96}
moe: {n_experts: 4, d_ff: 32, router: {top_k: 2, score: softmax, normalize_topk: true}}
layers:
  default: {ffn: moe}
  overrides:
    - {select: [0], ffn: dense}
    - {select: [0, 2], attention: {window: 5, rope_theta: 10000.0}}
"""


def hf_mellum():
    from transformers import MellumConfig, MellumForCausalLM

    cfg = MellumConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
        norm_topk_prob=True, rms_norm_eps=1e-6, max_position_embeddings=64, sliding_window=5,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        mlp_layer_types=["dense", "sparse", "sparse"], tie_word_embeddings=False, attn_implementation="eager",
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 500000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        pad_token_id=None, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    return MellumForCausalLM(cfg)


@pytest.mark.parametrize("theta_on_sliding_layers", [10000.0, None])
def test_per_layer_rope_theta_matches_transformers_mellum(theta_on_sliding_layers):
    """With the sliding layers' own base moec gives Mellum's logits; with the model's base everywhere it does
    not (the test sees the difference)."""
    torch.manual_seed(0)
    hf = hf_mellum().eval()
    randomize(hf)
    text = MELLUM if theta_on_sliding_layers else MELLUM.replace(", rope_theta: 10000.0", "")
    plan = resolve(load_spec("t.yaml", text=text))
    assert [lp.attention.rope_theta for lp in plan.layers] == [theta_on_sliding_layers, None, theta_on_sliding_layers]
    ours = build_model(plan, device="cpu", dtype=torch.float32, seed=0)
    hf_into_moec(hf, ours.eval(), {"input_layernorm.": "attn_norm.", "post_attention_layernorm.": "ffn_norm."})
    got, want = logits_of_both(hf, ours, 128)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4) == (theta_on_sliding_layers is not None)


# --- NTK with a fixed alpha ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seq_len", [8, 200])  # below and above max_position_embeddings: static either way
def test_ntk_alpha_tables_match_transformers_hunyuan(seq_len):
    from transformers import HunYuanMoEV1Config
    from transformers.models.hunyuan_v1_moe.modeling_hunyuan_v1_moe import HunYuanMoEV1RotaryEmbedding

    from moec.spec.plan import RopeScalingPlan

    cfg = HunYuanMoEV1Config(
        hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=64,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "alpha": 1000.0, "factor": 1.0},  # as released
    )  # fmt: skip
    ref = HunYuanMoEV1RotaryEmbedding(cfg)
    assert ref.rope_type == "ntk_alpha"
    x = torch.zeros(1, seq_len, 64)
    want = ref(x, torch.arange(seq_len)[None])
    positions = PositionsPlan("rope", 10000.0, RopeScalingPlan("ntk_alpha", alpha=1000.0))
    got = RotaryEmbedding(positions, 16, 64)(seq_len, x.device, x.dtype)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w[0], atol=1e-6, rtol=1e-5)


# --- the analyzer's counts are the built model's -------------------------------------------------------------

PARTIAL = MELLUM.replace(
    "theta: 500000.0}", "theta: 500000.0, partial_rotary_factor: 0.5, scaling: {kind: ntk_alpha, alpha: 8.0}}"
)
SPECS = {
    "partial rotary, ntk alpha, per-layer theta": PARTIAL,
    "norms after sublayers": FLEX_OLMO,
    "selection bias parameter": ERNIE,
    "selection bias parameter, router frozen": ERNIE + "frozen: [router]\n",
    "logit softcap": TINY.replace("MODEL", ", logit_softcap: 30.0"),
}


@pytest.mark.parametrize("text", SPECS.values(), ids=SPECS.keys())
def test_the_built_model_has_the_analyzers_parameters(text):
    """Invariant 1 of docs/architecture.md, "Invariants the tests hold", on the new features: total, trainable and
    frozen of the model built on meta are the analyzer's (MTP modules aside, as the analyzer reports them
    separately)."""
    from moec.analyze import analyze

    plan = resolve(load_spec("t.yaml", text=text))
    model = build_model(plan, device="meta")
    counts = model.param_counts()
    a = analyze(plan)
    assert sum(t + f for t, f in counts.values()) == a.params.total
    assert sum(t for t, _ in counts.values()) == a.params.trainable
    assert {c.name: (c.trainable, c.frozen) for c in a.components} == {k: v for k, v in counts.items() if any(v)}


# --- multimodal RoPE on text -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl_moe"])
def test_mrope_on_text_positions_is_transformers_multimodal_rope(family):
    """Qwen2-VL's sectioned and Qwen3-VL-MoE's interleaved multimodal RoPE, fed text position ids (the same id for
    time, height and width), give moec's plain tables: the mrope fields need no table of their own."""
    if family == "qwen2_vl":
        from transformers import Qwen2VLTextConfig as Config
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding as Rotary

        sections, interleaved = [4, 6, 6], False
    else:
        from transformers import Qwen3VLMoeTextConfig as Config
        from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeTextRotaryEmbedding as Rotary

        sections, interleaved = [8, 4, 4], True
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sections, "mrope_interleaved": interleaved}
    cfg = Config(hidden_size=64, num_attention_heads=2, head_dim=32, rope_parameters=rope)
    S = 40
    x = torch.zeros(1, S, 64)
    want = Rotary(cfg)(x, torch.arange(S)[None])
    spec = MELLUM.replace(
        "theta: 500000.0}",
        f"theta: 10000.0, mrope_sections: {sections}, mrope_interleaved: {str(interleaved).lower()}}}",
    )
    plan = resolve(load_spec("t.yaml", text=spec.replace("head_dim: 16", "head_dim: 32")))
    assert plan.positions.mrope_sections == tuple(sections)
    got = build_model(plan, device="cpu", seed=0).rotary(S, x.device, x.dtype)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w[0], atol=1e-6, rtol=1e-5)
