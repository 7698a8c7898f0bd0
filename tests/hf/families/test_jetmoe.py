"""JetMoE (model_type jetmoe): a mixture of attention heads (attention.kind moa) and an MoE FFN in every layer.
The analyzer's total and active counts equal transformers' model on meta; a tiny random checkpoint saved by
transformers loads with moec.from_hf to transformers' logits and to both routers' choices (the attention experts'
and the FFN experts'), also through a cached decode; export round-trips; what moec cannot say is refused by name."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model
from moec.hf.config import plan_differences
from tests.hf.configs import hf_model_on_meta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from moec.nn.moa import MoA  # noqa: E402
from moec.nn.moe import MoE  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_cached_decode_gives_transformers_logits,
    assert_generated_model_gives_the_library_logits,
    away_from_init,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# No release config.json of JetMoE-8B is reachable here; JetMoeConfig's class defaults are JetMoE-8B's sizes
# (arXiv 2404.07413, Table 1: d 2048, 8 experts top-2 in both the attention and the FFN, 16 heads of 128 per
# attention expert, FFN width 5632, vocab 32000) except the layer count, 12 by default, 24 in the release.
JETMOE_8B = {"model_type": "jetmoe", "num_hidden_layers": 24}

# Both routers varied, tied embeddings (the class default), the layer norms' 1e-6 (what rms_norm_eps must say).
TINY = {"vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 2, "num_key_value_heads": 2, "kv_channels": 16,
        "intermediate_size": 32, "num_local_experts": 4, "num_experts_per_tok": 2, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6, "rope_theta": 500.0}  # fmt: skip


def test_jetmoe_8b_counts_equal_transformers_model_on_meta():
    """Total: every tensor; active: the total less (E−k)/E of the experts' stacked input_linear/output_linear,
    the attention experts' and the FFN experts' alike (transformers' model on meta, counted by hand here)."""
    params = analyze(hf_to_model(JETMOE_8B)).params
    assert (params.total, params.active) == hf_counts(JETMOE_8B, experts="_linear.")
    assert (params.total, params.active) == (8_522_237_952, 2_331_445_248)


def test_config_as_transformers_saves_it_imports_to_the_same_plan():
    saved = hf_model_on_meta(JETMOE_8B).config.to_dict()
    assert plan_differences(hf_to_model(saved), hf_to_model(JETMOE_8B)) == []


def test_the_plan_is_a_mixture_of_attention_heads_with_output_biases():
    lp = hf_to_model(JETMOE_8B).layers[0]
    a, f = lp.attention, lp.ffn
    assert (a.kind, a.n_heads, a.n_kv_heads, a.head_dim, a.out_bias) == ("moa", 16, 16, 128, True)
    assert (a.moa_n_experts, a.moa_top_k, a.moa_softmax_after_topk, a.attending_heads) == (8, 2, True, 32)
    assert (f.n_experts, f.router.top_k, f.router.softmax_after_topk, f.output_bias, f.bias) == (
        8,
        2,
        True,
        True,
        False,
    )


def test_what_moec_cannot_say_is_refused_by_name():
    # the decoder layers' norms use 1e-6 whatever rms_norm_eps says: another eps would need a final-norm eps
    assert refused_fields({"model_type": "jetmoe", "rms_norm_eps": 1e-5}) == ["rms_norm_eps"]
    # num_attention_heads is derived (kv · k); a saved config that disagrees is refused
    assert refused_fields({"model_type": "jetmoe", "num_attention_heads": 7}) == ["num_attention_heads"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf("jetmoe", TINY)
    # the routers' logits of order 1 and the two output biases small, so that the choices vary across tokens
    away_from_init(hf, router="router.layer.weight", small_biases=True)
    return saved_checkpoint(hf, tmp_path_factory, "jetmoe")


TOKENS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(2))


def _hf_run(hf) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """transformers' logits and every JetMoeTopKGating's (tokens, k) choices in call order: per layer, the
    attention's then the MoE's (the top k of its logits, as its forward takes them)."""
    k, picks = hf.config.num_experts_per_tok, []
    gates = [m for m in hf.modules() if type(m).__name__ == "JetMoeTopKGating"]
    hooks = [m.register_forward_hook(lambda _m, _i, out: picks.append(out[4].topk(k, dim=-1))) for m in gates]
    with torch.no_grad():
        logits = hf(TOKENS).logits
    for h in hooks:
        h.remove()
    return logits, [(idx, top.softmax(-1)) for top, idx in picks]


def _moec_run(model) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """moec's logits and each router's (tokens, k) choices and gates in call order: the MoA's, the MoE's."""
    picks, hooks = [], []
    for m in model.modules():
        if isinstance(m, MoA):
            hooks.append(m.register_forward_pre_hook(lambda mod, args: picks.append(mod.route(args[0])[:2])))
        elif isinstance(m, MoE):
            hooks.append(m.router.register_forward_hook(lambda _m, _i, out: picks.append((out.topk_idx, out.topk_w))))
    with torch.no_grad():
        logits, _ = model(TOKENS)
    for h in hooks:
        h.remove()
    return logits, picks


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    want, hf_picks = _hf_run(hf)
    got, our_picks = _moec_run(model)
    assert (got - want).abs().max().item() <= 1e-4
    assert len(hf_picks) == len(our_picks) == 2 * TINY["num_hidden_layers"]
    for (hf_idx, hf_w), (idx, w) in zip(hf_picks, our_picks, strict=True):
        hf_idx, idx = hf_idx.reshape(-1, 2), idx.reshape(-1, 2)
        assert len(set(map(tuple, hf_idx.sort(-1)[0].tolist()))) > 2  # the choices vary across tokens
        assert torch.equal(idx.sort(-1)[0], hf_idx.sort(-1)[0])
        torch.testing.assert_close(
            w.reshape(-1, 2).float().gather(-1, idx.sort(-1)[1]),
            hf_w.reshape(-1, 2).float().gather(-1, hf_idx.sort(-1)[1]),
            atol=1e-5,
            rtol=1e-5,
        )


def test_tiny_checkpoint_decodes_token_by_token_to_transformers_logits(checkpoint):
    """moec's cached decode (the shared keys and values cached, the experts chosen per new token) against
    transformers' full forward."""
    hf, folder = checkpoint
    assert_cached_decode_gives_transformers_logits(hf, moec.from_hf(folder), TOKENS)


def test_export_round_trips_the_plan():
    from moec.hf import export_hf_config

    plan = hf_to_model({**TINY, "model_type": "jetmoe"})
    cfg = export_hf_config(plan)
    assert cfg["model_type"] == "jetmoe"
    assert plan_differences(hf_to_model(cfg), plan) == []


def test_the_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    _, folder = checkpoint
    assert_generated_model_gives_the_library_logits(moec.from_hf(folder), TOKENS, tmp_path)
