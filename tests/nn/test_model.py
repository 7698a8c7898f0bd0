"""The whole model against transformers on identical weights (Llama, Mixtral, Qwen3-MoE, DeepSeek-V3 at
tiny sizes, fp32), and its behaviour as a training target: aux losses, MTP, a few optimizer steps,
torch.compile, and clear errors for bad token ids."""

from __future__ import annotations

import os

import pytest
import torch

from moec.nn import build_model, lm_loss
from moec.nn.model import MoecModel
from moec.nn.moe import MoE
from moec.spec import load_spec, resolve
from tests.tiny_specs import TINY_DEEPSEEK_V3

LLAMA = """
name: tiny-llama
model: {vocab_size: 128, d_model: 64, n_layers: 2, max_seq_len: 64, norm: {kind: rmsnorm, eps: 1e-5},
        positions: {kind: rope, theta: 10000.0 SCALING}}
attention: {n_heads: 4, n_kv_heads: 2}
ffn: {d_ff: 96}
"""
MIXTRAL = """
name: tiny-mixtral
model: {vocab_size: 128, d_model: 64, n_layers: 2, max_seq_len: 64, norm: {kind: rmsnorm, eps: 1e-5},
        positions: {kind: rope, theta: 1000000.0}}
attention: {n_heads: 4, n_kv_heads: 2, WINDOW}
moe:
  n_experts: 4
  d_ff: 48
  router: {top_k: 2, score: softmax, normalize_topk: true}
  balance: {load_balance_coeff: 0.02}
layers: {default: {ffn: moe}}
"""
QWEN3 = """
name: tiny-qwen3-moe
model: {vocab_size: 128, d_model: 64, n_layers: 2, max_seq_len: 64, norm: {kind: rmsnorm, eps: 1e-6},
        positions: {kind: rope, theta: 1000000.0}}
attention: {n_heads: 4, n_kv_heads: 2, head_dim: 24, qk_norm: true}
moe:
  n_experts: 8
  d_ff: 32
  router: {top_k: 2, score: softmax, normalize_topk: true}
  balance: {load_balance_coeff: 0.001}
layers: {default: {ffn: moe}}
"""
OLMOE = """
name: tiny-olmoe
model: {vocab_size: 128, d_model: 64, n_layers: 2, max_seq_len: 64, norm: {kind: rmsnorm, eps: 1e-5},
        positions: {kind: rope, theta: 10000.0}}
attention: {n_heads: 4, n_kv_heads: 2, qk_norm: true, qk_norm_scope: projection, clip_qkv: 0.5}
moe:
  n_experts: 8
  d_ff: 32
  router: {top_k: 2, score: softmax}
  balance: {load_balance_coeff: 0.01}
layers: {default: {ffn: moe}}
"""
GRANITE = """
name: tiny-granite
model: {vocab_size: 128, d_model: 64, n_layers: 2, max_seq_len: 64, norm: {kind: rmsnorm, eps: 1e-6},
        positions: {kind: rope, theta: 10000.0}, embedding_multiplier: 12.0, residual_multiplier: 0.22,
        logits_scaling: 8.0}
attention: {n_heads: 4, n_kv_heads: 2, scale: 0.05}
ffn: {d_ff: 96}
"""
SMALL_MOE = """
name: small-moe
model: {vocab_size: 64, d_model: 32, n_layers: 2, max_seq_len: 32, norm: {kind: layernorm, eps: 1e-5}}
attention: {n_heads: 2}
moe:
  n_experts: 4
  d_ff: 32
  activation: gelu
  router: {top_k: 1, score: softmax}
  balance: {load_balance_coeff: 0.01, z_loss_coeff: 0.001}
layers: {default: {ffn: moe}}
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def plan_of(text: str, **subs: str):
    for k, v in subs.items():
        text = text.replace(k, v)
    return resolve(load_spec("tiny.yaml", text=text))


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            scale = 1.0 if p.dim() == 1 else 0.1  # norms ≠ 1 too, so their mapping is tested
            p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if p.dim() == 1 else 0.0))


def hf_to_moec(hf: torch.nn.Module, ours: MoecModel) -> None:
    """Copy a transformers Llama/Mixtral/Qwen3-MoE/DeepSeek-V3 checkpoint into our names and layouts.
    HF linears are [out, in]; our FFNs are [in, out] with [gate | up] side by side."""
    src = hf.state_dict()
    sd = {"embed.weight": src["model.embed_tokens.weight"], "norm.weight": src["model.norm.weight"],
          "lm_head.weight": src["lm_head.weight"]}  # fmt: skip
    renames = {"self_attn.": "attn.", "input_layernorm.": "attn_norm.", "post_attention_layernorm.": "ffn_norm."}
    for i in range(len(ours.layers)):
        hp, op = f"model.layers.{i}.", f"layers.{i}."
        for k, v in src.items():
            for a, b in renames.items():
                if k.startswith(hp + a):
                    sd[op + b + k[len(hp + a) :]] = v
        m = hp + "mlp."
        if m + "gate_proj.weight" in src:  # a dense layer
            sd[op + "ffn.w_gate_up"] = torch.cat((src[m + "gate_proj.weight"].T, src[m + "up_proj.weight"].T), 1)
            sd[op + "ffn.w_down"] = src[m + "down_proj.weight"].T
            continue
        sd[op + "ffn.router.weight"] = src[m + "gate.weight"]
        if m + "gate.e_score_correction_bias" in src:
            sd[op + "ffn.router.expert_bias"] = src[m + "gate.e_score_correction_bias"]
        sd[op + "ffn.experts.w_gate_up"] = src[m + "experts.gate_up_proj"].transpose(1, 2)  # (E, d, 2f)
        sd[op + "ffn.experts.w_down"] = src[m + "experts.down_proj"].transpose(1, 2)  # (E, f, d)
        s = m + "shared_experts."
        if s + "gate_proj.weight" in src:
            sd[op + "ffn.shared.w_gate_up"] = torch.cat((src[s + "gate_proj.weight"].T, src[s + "up_proj.weight"].T), 1)
            sd[op + "ffn.shared.w_down"] = src[s + "down_proj.weight"].T
    missing, unexpected = ours.load_state_dict(sd, strict=False)
    assert not unexpected
    assert all(k.startswith("mtp.") for k in missing), missing  # transformers has no MTP module


def hf_common(**kw):
    return dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, max_position_embeddings=64,
                tie_word_embeddings=False, attn_implementation="eager", **kw)  # fmt: skip


def hf_llama(scaling):
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {"rope_type": "default", "rope_theta": 10000.0, **(scaling or {})}
    cfg = LlamaConfig(**hf_common(intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                                  rms_norm_eps=1e-5, rope_parameters=rope))  # fmt: skip
    return LlamaForCausalLM(cfg)


def hf_mixtral(window):
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(**hf_common(intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                                    num_local_experts=4, num_experts_per_tok=2, rms_norm_eps=1e-5,
                                    sliding_window=window, rope_parameters={"rope_type": "default", "rope_theta": 1e6}))  # fmt: skip
    return MixtralForCausalLM(cfg)


def hf_qwen3():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(**hf_common(intermediate_size=96, moe_intermediate_size=32, num_attention_heads=4,
                                     num_key_value_heads=2, head_dim=24, num_experts=8, num_experts_per_tok=2,
                                     norm_topk_prob=True, rms_norm_eps=1e-6, decoder_sparse_step=1,
                                     rope_parameters={"rope_type": "default", "rope_theta": 1e6}))  # fmt: skip
    return Qwen3MoeForCausalLM(cfg)


def hf_deepseek():
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 8,
            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}  # fmt: skip
    # tests.tiny_specs.TINY_DEEPSEEK_V3
    size = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 3, "max_position_embeddings": 32}
    cfg = DeepseekV3Config(**{**hf_common(), **size}, intermediate_size=48, moe_intermediate_size=16,
                           num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8,
                           routed_scaling_factor=2.5, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=4,
                           qk_nope_head_dim=8, v_head_dim=8, n_group=4, topk_group=2, num_experts_per_tok=2,
                           first_k_dense_replace=1, norm_topk_prob=True, rms_norm_eps=1e-6, rope_parameters=rope)  # fmt: skip
    return DeepseekV3ForCausalLM(cfg)


def hf_olmoe():
    from transformers import OlmoeConfig, OlmoeForCausalLM

    cfg = OlmoeConfig(**hf_common(intermediate_size=32, num_attention_heads=4, num_key_value_heads=2,
                                  num_experts=8, num_experts_per_tok=2, norm_topk_prob=False, clip_qkv=0.5,
                                  rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 1e4}))  # fmt: skip
    return OlmoeForCausalLM(cfg)


def hf_granite():
    from transformers import GraniteConfig, GraniteForCausalLM

    cfg = GraniteConfig(**hf_common(intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                                    rms_norm_eps=1e-6, embedding_multiplier=12.0, residual_multiplier=0.22,
                                    logits_scaling=8.0, attention_multiplier=0.05,
                                    rope_parameters={"rope_type": "default", "rope_theta": 1e4}))  # fmt: skip
    return GraniteForCausalLM(cfg)


HF_CASES = {
    "llama": (lambda: plan_of(LLAMA, SCALING=""), lambda: hf_llama(None)),
    "llama, llama3 rope": (
        lambda: plan_of(
            LLAMA,
            SCALING=", scaling: {kind: llama3, factor: 8.0, original_max_seq_len: 16, "
            "low_freq_factor: 1.0, high_freq_factor: 4.0}",
        ),
        lambda: hf_llama(
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "original_max_position_embeddings": 16,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
            }
        ),
    ),  # fmt: skip
    "mixtral": (lambda: plan_of(MIXTRAL, WINDOW="qk_norm: false"), lambda: hf_mixtral(None)),
    "mixtral, sliding window": (lambda: plan_of(MIXTRAL, WINDOW="window: 5"), lambda: hf_mixtral(5)),
    "qwen3-moe": (lambda: plan_of(QWEN3), hf_qwen3),
    "deepseek-v3": (lambda: plan_of(TINY_DEEPSEEK_V3), hf_deepseek),
    "olmoe (projection qk-norm, clip_qkv)": (lambda: plan_of(OLMOE), hf_olmoe),
    "granite (multipliers, scale)": (lambda: plan_of(GRANITE), hf_granite),
}


@pytest.mark.parametrize("make_plan, make_hf", HF_CASES.values(), ids=HF_CASES.keys())
def test_logits_match_transformers_on_identical_weights(make_plan, make_hf):
    torch.manual_seed(0)
    hf = make_hf().eval()
    randomize(hf)
    if hasattr(hf.model.layers[-1].mlp, "gate") and hasattr(hf.model.layers[-1].mlp.gate, "e_score_correction_bias"):
        for layer in hf.model.layers[1:]:  # exercise the selection bias too
            layer.mlp.gate.e_score_correction_bias.copy_(torch.randn(8) * 0.1)
    ours = build_model(make_plan(), device="cpu", dtype=torch.float32, backend="reference", seed=0).eval()
    hf_to_moec(hf, ours)
    tokens = torch.randint(hf.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(tokens).logits
        got, _ = ours(tokens)
    diff = (got - want).abs().max().item()
    print(f"max |logits diff| = {diff:.2e} (logit scale {want.abs().max().item():.1f})")
    assert diff <= 1e-4


# --- aux losses, MTP ----------------------------------------------------------------------------------


def test_total_aux_is_the_sum_of_the_layers_and_mtp_logits_are_reported():
    plan = plan_of(TINY_DEEPSEEK_V3)
    model = build_model(plan, device="cpu", seed=0)
    tokens = torch.randint(64, (2, 10))
    logits, aux = model(tokens)
    assert logits.shape == (2, 10, 64)
    assert len(aux.layers) == plan.n_layers + len(plan.mtp)  # indexed by LayerPlan.index, MTP blocks last
    assert aux.layers[0] is None  # the dense first layer
    torch.testing.assert_close(aux.loss, sum(a.loss for a in aux.layers if a is not None), atol=0, rtol=0)
    assert len(aux.mtp_logits) == 1 and aux.mtp_logits[0].shape == (2, 10, 64)
    total, parts = lm_loss(logits, tokens, aux, mtp_weight=0.3)
    # MTP depth 1 at position i predicts token i + 2 (DeepSeek-V3, section 2.2): 8 targets per sequence
    logp = aux.mtp_logits[0].log_softmax(-1)
    mtp = -torch.stack([logp[b, i, tokens[b, i + 2]] for b in range(2) for i in range(8)]).mean()
    torch.testing.assert_close(parts.mtp, mtp.detach())
    logp = logits.log_softmax(-1)
    ce = -torch.stack([logp[b, i, tokens[b, i + 1]] for b in range(2) for i in range(9)]).mean()
    torch.testing.assert_close(total, ce + aux.loss + 0.3 * mtp)
    torch.testing.assert_close(lm_loss(logits, tokens, aux, mtp_weight=0.0)[0], ce + aux.loss)


def test_lm_loss_is_shifted_cross_entropy_plus_aux():
    model = build_model(plan_of(SMALL_MOE), device="cpu", seed=0)
    tokens = torch.randint(64, (2, 9))
    logits, aux = model(tokens)
    total, parts = lm_loss(logits, tokens, aux)
    logp = logits.log_softmax(-1)
    ce = -torch.stack([logp[b, i, tokens[b, i + 1]] for b in range(2) for i in range(8)]).mean()
    torch.testing.assert_close(parts.ce, ce)
    torch.testing.assert_close(total, ce + aux.loss)
    assert parts.mtp is None and aux.loss > 0


def test_update_bias_moves_the_selection_bias_of_every_moe_layer():
    model = build_model(plan_of(TINY_DEEPSEEK_V3), device="cpu", seed=0).train()
    model(torch.randint(64, (2, 16)))
    model.update_bias()
    biases = [m.router.expert_bias for m in model.modules() if isinstance(m, MoE)]
    assert len(biases) == 3  # two main MoE layers and the MTP block
    assert all(b.abs().sum() > 0 for b in biases)


# --- training ---------------------------------------------------------------------------------------


def test_a_few_adamw_steps_lower_the_loss():
    model = build_model(plan_of(SMALL_MOE), device="cpu", seed=0, backend="reference").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = torch.randint(64, (4, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(6):
        logits, aux = model(tokens)
        loss, parts = lm_loss(logits, tokens, aux)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_bias()
        losses.append(parts.ce.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_the_model_compiles_without_graph_breaks_in_its_own_modules():
    """aot_eager traces the model through dynamo and AOTAutograd in seconds; the MoE kernel's data-dependent
    dispatch is allowed to break the graph, so the fullgraph check runs on a dense model."""
    torch._dynamo.reset()
    dense = build_model(plan_of(LLAMA, SCALING=""), device="cpu", seed=0).eval()
    tokens = torch.randint(128, (2, 12))
    with torch.no_grad():
        want, _ = dense(tokens)
        got, _ = torch.compile(dense, backend="aot_eager", fullgraph=True)(tokens)
    torch.testing.assert_close(got, want)

    # the compiled MoE model against an eager twin with the same weights: loss, aux loss and every gradient
    eager = build_model(plan_of(SMALL_MOE), device="cpu", seed=0, backend="reference").train()
    moe = build_model(plan_of(SMALL_MOE), device="cpu", seed=0, backend="reference").train()
    tokens = torch.randint(64, (2, 12))
    logits, aux = eager(tokens)
    want, want_parts = lm_loss(logits, tokens, aux)
    logits, aux = torch.compile(moe, backend="aot_eager")(tokens)
    got, got_parts = lm_loss(logits, tokens, aux)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_parts.aux, want_parts.aux)
    want.backward()
    got.backward()
    grads = {n: p.grad for n, p in eager.named_parameters()}
    for name, p in moe.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(
    not (os.environ.get("CI") or os.environ.get("MOEC_TEST_INDUCTOR")),
    reason="inductor's C++ compile takes ~30 s of CPU on 2 cores; CI runs it, locally set MOEC_TEST_INDUCTOR=1",
)
def test_the_model_compiles_with_inductor_on_cpu():
    torch._dynamo.reset()
    model = build_model(plan_of(SMALL_MOE), device="cpu", seed=0, backend="reference").eval()
    tokens = torch.randint(64, (2, 12))
    with torch.no_grad():
        want, _ = model(tokens)
        got, _ = torch.compile(model)(tokens)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


# --- structure --------------------------------------------------------------------------------------


def test_tied_embeddings_share_one_tensor():
    model = build_model(
        plan_of(SMALL_MOE.replace("max_seq_len: 32", "max_seq_len: 32, tie_embeddings: true")), device="meta"
    )
    assert model.lm_head.weight is model.embed.weight


def test_learned_positions_and_post_norm():
    text = SMALL_MOE.replace("norm: {kind: layernorm, eps: 1e-5}",
                             "norm: {kind: layernorm, eps: 1e-5, placement: post}, positions: {kind: learned}")  # fmt: skip
    model = build_model(plan_of(text), device="cpu", seed=0).eval()
    assert model.pos_embed.weight.shape == (32, 32) and model.norm is None and model.rotary is None
    tokens = torch.full((1, 6), 3)  # the same token everywhere: only positions tell them apart
    logits, _ = model(tokens)
    assert not torch.allclose(logits[0, 1], logits[0, 4])


@pytest.mark.parametrize(
    "tokens, message",
    [
        (torch.zeros(8, dtype=torch.long), "batch, seq"),
        (torch.zeros(1, 2, 8, dtype=torch.long), "batch, seq"),
        (torch.zeros(1, 8), "int64"),
        (torch.zeros(1, 8, dtype=torch.bool), "int64"),
        (torch.full((1, 8), 64), "token id 64 is outside"),
        (torch.full((1, 8), -1), "token id -1 is outside"),
        (torch.zeros(1, 33, dtype=torch.long), "exceeds the model's max_seq_len 32"),
        (torch.zeros(1, 0, dtype=torch.long), "non-empty"),
    ],
    ids=["rank 1", "rank 3", "float ids", "bool ids", "id = vocab", "negative id", "too long", "empty"],
)
def test_bad_token_ids_raise_clear_errors(tokens, message):
    model = build_model(plan_of(SMALL_MOE), device="cpu", seed=0)
    with pytest.raises(ValueError, match=message):
        model(tokens)
