"""Loading Hugging Face checkpoints: a tiny random transformers model, saved as transformers saves it,
loaded with moec.from_hf, gives transformers' logits and router choices; every layout the loaders know
(per-expert Linear, stacked experts, shards) loads; wrong checkpoints are refused, listing the tensors."""

from __future__ import annotations

import copy
import json
import pickle
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

import moec  # noqa: E402
from moec.hf.families import FAMILIES  # noqa: E402
from moec.hf.mapper import Mapper  # noqa: E402
from moec.hf.weights import CheckpointError, load_hf_state_dict  # noqa: E402
from moec.nn import build_model  # noqa: E402
from moec.nn.router import Router  # noqa: E402
from tests.hf.test_registry import families_tested_by  # noqa: E402

TINY = {"vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "tie_word_embeddings": False, "rms_norm_eps": 1e-5}  # fmt: skip

# One tiny config per family, each exercising what sets the family apart.
CONFIGS = {
    "mixtral": {**TINY, "num_hidden_layers": 2, "intermediate_size": 48, "num_local_experts": 4,
                "num_experts_per_tok": 2, "rope_theta": 1e6},
    # a dense layer among MoE layers (mlp_only_layers), q/k/v biases, the gated shared expert
    "qwen2_moe": {**TINY, "num_hidden_layers": 3, "intermediate_size": 80, "num_experts": 4, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 32, "shared_expert_intermediate_size": 48, "mlp_only_layers": [1]},
    "qwen3_moe": {**TINY, "num_hidden_layers": 2, "head_dim": 16, "num_experts": 8, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 32, "norm_topk_prob": True},
    # a dense first layer, group-limited sigmoid routing with a selection bias, a shared expert, MLA with
    # YaRN's mscale; num_nextn_predict_layers 1, which transformers neither builds nor saves
    "deepseek_v3": {**TINY, "num_hidden_layers": 3, "num_key_value_heads": 4, "intermediate_size": 96,
                    "first_k_dense_replace": 1, "n_routed_experts": 8, "n_group": 4, "topk_group": 2,
                    "num_experts_per_tok": 2, "n_shared_experts": 1, "moe_intermediate_size": 32,
                    "rms_norm_eps": 1e-6, "routed_scaling_factor": 2.5, "norm_topk_prob": True, "q_lora_rank": 32,
                    "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
                    "num_nextn_predict_layers": 1,
                    "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0,
                                        "original_max_position_embeddings": 16, "beta_fast": 32, "beta_slow": 1,
                                        "mscale": 1.0, "mscale_all_dim": 1.0}},
    # MLA without a query bottleneck (a plain q_proj), softmax routing limited to the best groups
    "deepseek_v2": {**TINY, "num_hidden_layers": 3, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
                    "first_k_dense_replace": 1, "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 2,
                    "moe_intermediate_size": 16, "q_lora_rank": None, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
                    "qk_rope_head_dim": 8, "v_head_dim": 8, "topk_method": "group_limited_greedy", "n_group": 4,
                    "topk_group": 2, "routed_scaling_factor": 16.0},
    # q_norm/k_norm over the whole projections, clip_qkv
    "olmoe": {**TINY, "num_hidden_layers": 2, "intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2,
              "clip_qkv": 1.5},
    # sinks, alternating sliding windows, biased router and experts, interleaved gate/up, the clamped SwiGLU
    # at its defaults, and gpt-oss's default YaRN (no rope parameters in the config)
    "gpt_oss": {**TINY, "num_hidden_layers": 2, "head_dim": 16, "intermediate_size": 32, "num_local_experts": 4,
                "num_experts_per_tok": 2, "sliding_window": 4},
    # a swiglu limit that bites (it clamps a good share of gate and up values) and another alpha
    "gpt_oss, swiglu_limit 1": {**TINY, "num_hidden_layers": 2, "head_dim": 16, "intermediate_size": 32,
                                "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 4,
                                "swiglu_limit": 1.0, "swiglu_alpha": 1.5},
    # tied embeddings, μP multipliers, attention_multiplier as the softmax scale
    "granitemoe": {**TINY, "num_hidden_layers": 2, "intermediate_size": 32, "num_local_experts": 4,
                   "num_experts_per_tok": 2, "tie_word_embeddings": True, "embedding_multiplier": 6.0,
                   "residual_multiplier": 0.5, "logits_scaling": 4.0, "attention_multiplier": 0.1},
    # a fused Wqkv, bias-free layernorms, clip_qkv, experts as (E·f, d) matrices
    "dbrx": {"vocab_size": 128, "d_model": 64, "n_heads": 4, "n_layers": 2, "max_seq_len": 64, "rope_theta": 1e4,
             "attn_config": {"kv_n_heads": 2, "clip_qkv": 1.5, "rope_theta": 1e4},
             "ffn_config": {"ffn_hidden_size": 32, "moe_num_experts": 4, "moe_top_k": 2}},
    # Llama-4: MoE every 2nd layer with a shared expert and top-1 sigmoid gates on the expert input,
    # chunked attention (chunk 4 < the 12 test tokens) and the weightless L2 qk-norm on the rope layers,
    # temperature tuning on the NoPE layers (floor_scale 2: it varies within 12 tokens), llama3 rope scaling,
    # interleaved rotary pairs
    "llama4_text": {**TINY, "num_hidden_layers": 4, "head_dim": 16, "intermediate_size": 32,
                    "intermediate_size_mlp": 48, "num_local_experts": 4, "num_experts_per_tok": 1,
                    "interleave_moe_layer_step": 2, "no_rope_layer_interval": 2, "attention_chunk_size": 4,
                    "floor_scale": 2, "attn_scale": 0.5,
                    "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}},
    # Phi-3.5-MoE: SparseMixer top-2 (router_jitter_noise 0.3 as its eps, so that the masks bite), LongRoPE
    # (short factors and mscale at 12 tokens), layernorms with bias, q/k/v/o biases, a biased lm_head
    "phimoe": {**TINY, "num_hidden_layers": 2, "intermediate_size": 32, "num_local_experts": 4,
               "num_experts_per_tok": 2, "attention_bias": True, "lm_head_bias": True, "router_jitter_noise": 0.3,
               "original_max_position_embeddings": 16,
               "rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4,
                                   "short_factor": [1.0 + i / 4 for i in range(8)],
                                   "long_factor": [2.0 + i for i in range(8)], "short_mscale": 1.2,
                                   "long_mscale": 1.5, "original_max_position_embeddings": 16}},
    # dense: biases on every projection and on the MLP
    "llama": {**TINY, "num_hidden_layers": 2, "intermediate_size": 96, "attention_bias": True, "mlp_bias": True},
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_hf(model_type: str):
    """A transformers model of the tiny config, every weight random and away from its init (norms ≠ 1,
    biases ≠ 0, routers far from uniform), so that each mapping is exercised."""
    cfg = transformers.AutoConfig.for_model(model_type.split(",")[0], **copy.deepcopy(CONFIGS[model_type]))
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(r"(\.gate|router(\.layer)?)\.(weight|bias)$", name):  # routers: logits of order 1
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() == 2 else 0.1))
                continue
            if name.endswith("bias") or name.endswith("_bias"):  # small: a shared offset would make
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)  # every token route alike
                continue
            vector = p.dim() == 1  # norm weights and sinks around 1
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if vector else 0.1) + (1.0 if vector else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # DeepSeek-V3's selection bias: make it matter
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return model


_SAVED: dict[str, tuple[object, Path]] = {}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """model_type → (transformers model, folder it was saved to with save_pretrained), built once."""

    def get(model_type: str):
        if model_type not in _SAVED:
            hf = make_hf(model_type)
            folder = tmp_path_factory.mktemp(re.sub(r"\W+", "_", model_type))
            hf.save_pretrained(folder)
            _SAVED[model_type] = (hf, folder)
        return _SAVED[model_type]

    yield get
    _SAVED.clear()


TOKENS = torch.randint(128, (2, 12), generator=torch.Generator().manual_seed(1))


def _record(modules, pick) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], list]:
    """Forward hooks storing ``pick(output)`` by layer index for each (name, module)."""
    choices, hooks = {}, []
    for name, mod in modules:
        layer = int(re.search(r"(?:layers|blocks)\.(\d+)\.", name).group(1))

        def hook(mod, args, out, i=layer):
            choices[i] = pick(out)

        hooks.append(mod.register_forward_hook(hook))
    return choices, hooks


def _hf_pick(out, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(out, tuple) and len(out) == 2:  # Llama4Router → (sigmoid scores, 0 off the top-k; logits)
        idx = out[1].topk(k, dim=-1).indices
        return idx, out[0].gather(-1, idx)
    if isinstance(out, tuple):  # the *TopKRouter modules → (logits, top-k weights, top-k indices)
        return out[2], out[1]
    w, idx = out.softmax(-1).topk(k, dim=-1)  # DbrxRouter → logits; DbrxFFN takes the renormalised top-k
    return idx, w / w.sum(-1, keepdim=True)


def run_hf(hf) -> tuple[torch.Tensor, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """transformers' logits and, per MoE layer, its router's (top-k experts, weights), from forward hooks."""
    routers = [
        (n, m)
        for n, m in hf.named_modules()
        if type(m).__name__.endswith(("TopKRouter", "TopkRouter", "DbrxRouter", "Llama4Router"))
    ]
    # DBRX's top-k is in its FFN config; Llama-4's router returns all E scores
    k = (
        hf.config.ffn_config.moe_top_k
        if hf.config.model_type == "dbrx"
        else getattr(hf.config, "num_experts_per_tok", None)
    )
    choices, hooks = _record(routers, lambda out: _hf_pick(out, k))
    with torch.no_grad():
        logits = hf(TOKENS).logits
    for h in hooks:
        h.remove()
    return logits, choices


def run_moec(model) -> tuple[torch.Tensor, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    routers = [(n, m) for n, m in model.named_modules() if isinstance(m, Router) and n.startswith("layers.")]
    choices, hooks = _record(routers, lambda out: (out.topk_idx, out.topk_w))
    with torch.no_grad():
        logits, _ = model(TOKENS)
    for h in hooks:
        h.remove()
    return logits, choices


def by_expert(idx: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's choices in expert order (transformers' DeepSeek-V3 returns them unsorted)."""
    idx, order = idx.sort(dim=-1)
    return idx, w.float().gather(-1, order)


def assert_same(hf, model) -> float:
    want, hf_choices = run_hf(hf)
    got, our_choices = run_moec(model)
    diff = (got - want).abs().max().item()
    assert diff <= 1e-4, f"max |logits diff| {diff:.2e}"
    assert sorted(our_choices) == sorted(hf_choices)  # the same MoE layers
    assert bool(hf_choices) == (hf.config.model_type != "llama")  # routers were found (and hooked)
    assert all(len(set(map(tuple, idx.sort(-1)[0].tolist()))) > 2 for idx, _ in hf_choices.values())  # varied
    for i in hf_choices:
        hf_idx, hf_w = by_expert(*hf_choices[i])
        our_idx, our_w = by_expert(*our_choices[i])
        assert torch.equal(our_idx, hf_idx), f"layer {i}: different experts chosen"
        torch.testing.assert_close(our_w, hf_w, atol=1e-5, rtol=1e-5)
    return diff


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_saved_checkpoint_gives_transformers_logits_and_router_choices(model_type, saved):
    hf, folder = saved(model_type)
    model = moec.from_hf(folder)
    assert not model.training  # eval mode, as transformers' from_pretrained
    assert next(model.parameters()).dtype == torch.float32  # the checkpoint's dtype
    print(f"{model_type}: max |logits diff| = {assert_same(hf, model):.1e}")


def test_every_model_type_the_loader_maps_has_a_logits_parity_case():
    """Against the family registry: a family added without a case above, or a logits test in its own test
    module (tests/hf/families/test_<model_type>.py), fails here. Dense mistral, qwen2 and qwen3 are left to the
    llama case: the same generic Mapper and the same tensor names (their biases and qk-norms are covered by
    qwen2_moe's and qwen3_moe's cases)."""
    tested = {t.split(",")[0] for t in CONFIGS} | families_tested_by("gives_transformers_logits")
    # nllb-moe is imported for counting; moec.from_hf refuses it by name (its sinusoidal positions are not built:
    # tests/hf/families/test_nllb_moe.py)
    assert set(FAMILIES) - tested == {"mistral", "qwen2", "qwen3", "nllb-moe"}
    assert {FAMILIES[t].mapper for t in ("mistral", "qwen2", "qwen3", "llama")} == {Mapper}
    assert tested <= set(FAMILIES)


# --- layouts ---------------------------------------------------------------------------------------


def _write_state_dict(hf, folder: Path, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A checkpoint folder holding ``tensors`` (default: transformers' in-memory state dict, i.e. stacked
    experts) and the model's config.json."""
    folder.mkdir()
    hf.config.to_json_file(folder / "config.json")
    if tensors is None:
        tensors = hf.state_dict()
        if hf.config.tie_word_embeddings:
            tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, folder / "model.safetensors")
    return folder


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "deepseek_v3", "granitemoe"])
def test_stacked_expert_layout_loads_to_the_same_logits(model_type, saved, tmp_path):
    """save_pretrained writes per-expert Linear weights (w1/w2/w3, gate/up/down_proj, Granite's
    input_linear); transformers' in-memory layout stacks them: mlp.experts.gate_up_proj (E, 2f, d)."""
    hf, _ = saved(model_type)
    folder = _write_state_dict(hf, tmp_path / "stacked")
    names = load_file(folder / "model.safetensors").keys()
    assert any(n.endswith("experts.gate_up_proj") for n in names)
    assert_same(hf, moec.from_hf(folder))


def test_per_expert_linear_layout_is_what_save_pretrained_writes(saved):
    _, folder = saved("mixtral")
    names = load_file(folder / "model.safetensors").keys()
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in names  # Mixtral as released
    _, folder = saved("qwen3_moe")
    assert "model.layers.0.mlp.experts.7.up_proj.weight" in load_file(folder / "model.safetensors").keys()


def test_renamed_per_expert_layout_loads_to_the_same_logits(saved, tmp_path):
    """Mixtral's experts renamed into the Qwen-style per-expert names under mlp. (what newer conversions
    of Mixtral write) load to the same model."""
    hf, folder = saved("mixtral")
    names = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
    renamed = {}
    for k, v in load_file(folder / "model.safetensors").items():
        m = re.fullmatch(r"(model\.layers\.\d+\.)block_sparse_moe\.(experts\.\d+\.)(w\d)(\.weight)", k)
        k = f"{m[1]}mlp.{m[2]}{names[m[3]]}{m[4]}" if m else k.replace("block_sparse_moe.", "mlp.")
        renamed[k] = v
    assert_same(hf, moec.from_hf(_write_state_dict(hf, tmp_path / "renamed", renamed)))


def test_sharded_checkpoint_with_index_loads(saved, tmp_path):
    hf, _ = saved("qwen2_moe")
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (tmp_path / "model.safetensors").exists()
    assert_same(hf, moec.from_hf(tmp_path))


def test_bf16_checkpoint_loads_in_bf16_unless_asked_otherwise(saved, tmp_path):
    hf, _ = saved("mixtral")
    copy.deepcopy(hf).to(torch.bfloat16).save_pretrained(tmp_path)
    assert next(moec.from_hf(tmp_path).parameters()).dtype == torch.bfloat16
    model = moec.from_hf(tmp_path, dtype=torch.float32)
    assert next(model.parameters()).dtype == torch.float32


def test_load_into_an_existing_model(saved):
    hf, folder = saved("deepseek_v3")
    plan = moec.from_hf(folder, device="meta").plan  # the plan from_hf uses (MTP left out: none saved)
    model = build_model(plan, device="cpu", dtype=torch.float32, seed=0).eval()
    load_hf_state_dict(model, folder)
    assert_same(hf, model)


# --- DeepSeek-V3 multi-token prediction ------------------------------------------------------------


def _with_mtp(hf, folder: Path, tmp: Path, *, embed_copy: torch.Tensor | None = None) -> Path:
    """The saved DeepSeek-V3 checkpoint plus one MTP layer, stored as DeepSeek releases it: decoder layer
    n_layers (here 3) with enorm, hnorm, eh_proj, shared_head.{norm, head} and a copy of the embedding."""
    t = load_file(folder / "model.safetensors")
    g = torch.Generator().manual_seed(2)
    L, d = 3, 64
    for k, v in list(t.items()):
        if k.startswith(f"model.layers.{L - 1}."):  # an MoE decoder layer's weights, perturbed
            t[k.replace(f"layers.{L - 1}.", f"layers.{L}.")] = v + 0.01 * torch.randn(v.shape, generator=g)
    p = f"model.layers.{L}."
    t[p + "enorm.weight"] = 1 + torch.randn(d, generator=g) * 0.1
    t[p + "hnorm.weight"] = 1 + torch.randn(d, generator=g) * 0.1
    t[p + "eh_proj.weight"] = torch.randn(d, 2 * d, generator=g) * 0.1
    t[p + "shared_head.norm.weight"] = 1 + torch.randn(d, generator=g) * 0.1
    t[p + "shared_head.head.weight"] = t["lm_head.weight"]
    t[p + "embed_tokens.weight"] = t["model.embed_tokens.weight"] if embed_copy is None else embed_copy
    return _write_state_dict(hf, tmp, t)


def test_deepseek_v3_mtp_layer_in_the_checkpoint_loads_into_moecs_mtp_module(saved, tmp_path):
    hf, folder = saved("deepseek_v3")
    assert len(moec.from_hf(folder).mtp) == 0  # transformers saved none: left out
    with_mtp = _with_mtp(hf, folder, tmp_path / "mtp")
    model = moec.from_hf(with_mtp)
    t = load_file(with_mtp / "model.safetensors")
    assert len(model.mtp) == 1
    assert torch.equal(model.mtp[0].eh_proj.weight, t["model.layers.3.eh_proj.weight"])
    assert torch.equal(model.mtp[0].norm.weight, t["model.layers.3.shared_head.norm.weight"])
    assert torch.equal(model.mtp[0].block.ffn.router.expert_bias, t["model.layers.3.mlp.gate.e_score_correction_bias"])
    assert_same(hf, model)  # the main model is untouched by the MTP layer
    assert len(moec.from_hf(with_mtp, mtp=False).mtp) == 0
    with pytest.raises(CheckpointError, match="model.layers.3.eh_proj.weight"):
        moec.from_hf(folder, mtp=True)


def test_mtp_embedding_copy_that_differs_is_refused(saved, tmp_path):
    hf, folder = saved("deepseek_v3")
    other = torch.zeros(128, 64)
    with pytest.raises(CheckpointError, match=r"model.layers.3.embed_tokens.weight.*differs"):
        moec.from_hf(_with_mtp(hf, folder, tmp_path / "mtp", embed_copy=other))


# --- refusals --------------------------------------------------------------------------------------


def test_missing_and_unexpected_tensors_are_listed(saved, tmp_path):
    hf, folder = saved("qwen3_moe")
    t = load_file(folder / "model.safetensors")
    del t["model.layers.1.self_attn.q_norm.weight"], t["model.layers.0.mlp.experts.5.down_proj.weight"]
    t["model.layers.0.mlp.extra.weight"] = torch.zeros(3)
    t["model.layers.2.input_layernorm.weight"] = torch.ones(64)  # a layer the config does not have
    with pytest.raises(CheckpointError) as e:
        moec.from_hf(_write_state_dict(hf, tmp_path / "bad", t))
    err = e.value
    assert sorted(err.missing) == ["model.layers.0.mlp.experts.5.down_proj.weight",
                                   "model.layers.1.self_attn.q_norm.weight"]  # fmt: skip
    assert err.unexpected == ["model.layers.0.mlp.extra.weight", "model.layers.2.input_layernorm.weight"]
    text = str(err)
    for name in (*err.missing, *err.unexpected):
        assert name in text
    assert "layers.1.attn.q_norm.weight" in text  # which moec tensor needed the missing one


def test_shapes_that_disagree_with_the_config_are_refused(saved, tmp_path):
    hf, folder = saved("mixtral")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").symlink_to(folder / "model.safetensors")
    cfg = json.loads((folder / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 24}))
    with pytest.raises(
        CheckpointError, match=r"layers.0.ffn.experts.w_gate_up: the checkpoint gives shape \(4, 64, 96\)"
    ):
        moec.from_hf(bad)


class _Trap:
    """A pickle that, when loaded, writes a marker file: proof that something unpickled it."""

    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled!"))


def test_pickle_checkpoints_are_refused_without_unpickling(saved, tmp_path, monkeypatch):
    _, folder = saved("mixtral")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    trap = _Trap()
    trap.marker = tmp_path / "marker"
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(trap))

    def never(*a, **k):
        raise AssertionError("the loader unpickled something")

    monkeypatch.setattr(torch, "load", never)
    monkeypatch.setattr(pickle, "load", never)
    monkeypatch.setattr(pickle, "loads", never)
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*refuses to open: unpickling can run arbitrary code"):
        moec.from_hf(tmp_path)
    assert not trap.marker.exists()


def test_an_index_naming_files_outside_the_folder_or_not_safetensors_is_refused(saved, tmp_path):
    _, folder = saved("mixtral")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    for shard, why in (("../model.safetensors", "not a file name in the checkpoint folder"),
                       ("pytorch_model-00001.bin", "not a safetensors file")):  # fmt: skip
        index = {"metadata": {}, "weight_map": {"lm_head.weight": shard}}
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(CheckpointError, match=why):
            moec.from_hf(tmp_path)


def test_quantized_checkpoints_are_refused(saved, tmp_path):
    _, folder = saved("mixtral")
    cfg = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "fp8"}}))
    with pytest.raises(CheckpointError, match="quantized checkpoint \\(fp8\\)"):
        moec.from_hf(tmp_path)
