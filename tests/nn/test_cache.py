"""The KV cache: a prefill and a token-by-token decode give the full forward's logits (fp32, 1e-5), for every
shipped spec at its tiny scale and for every attention feature a spec can name; what cannot be decoded
exactly is refused by name; the cache holds what docs/decode.md says it holds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from moec.nn import build_model  # noqa: E402
from moec.nn.cache import without_capacity  # noqa: E402
from moec.nn.moe import LoRAExperts  # noqa: E402
from moec.smoke.scale import fit  # noqa: E402
from moec.spec import load_model  # noqa: E402
from moec.spec.plan import MoEPlan, RopeScalingPlan  # noqa: E402
from tests.nn._decode import decoded, prefill_then_ones  # noqa: E402

# the shipped specs moec.nn builds (an encoder-decoder spec is counted, not built: tests/nn/test_build.py)
SPECS = [
    p
    for p in sorted(Path(__file__).resolve().parents[2].joinpath("specs").glob("*.yaml"))
    if not load_model(str(p)).encoder
]
SEQ, BATCH = 12, 2

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(spec: str) -> object:
    return fit(load_model(spec), scale="tiny", budget_bytes=None, batch=BATCH, seq=SEQ).plan


def randomised(model):  # type: ignore[no-untyped-def]
    """Every weight random and away from its init (LoRA's zero B, unit norms, zero sinks and biases), so that
    every path of the decode carries signal and routers make real choices."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norm weights, biases and sinks around 1
                p.copy_(torch.randn(p.shape, generator=g) * 0.3 + 1.0)
            else:  # fan-in scaled: logits of order 1, where fp32 rounding is ~1e-7
                fan_in = p.shape[-1] if p.dim() == 2 else p.shape[1]  # Linear (out, in); experts (E, in, out)
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
        for m in model.modules():
            if isinstance(m, LoRAExperts):  # an update of the base's own size, not alpha/rank times it
                for name in m.names:
                    getattr(m, f"lora_b_{name}").div_(m.scale)
        for name, b in model.named_buffers():
            if name.endswith("expert_bias"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return model.eval()


def model_of(plan):  # type: ignore[no-untyped-def]
    # a hybrid's chunked mixers (docs/mixers.md) sum their chunks in another order than the token-by-token
    # decode: in float32 the two part by ~1e-5, so hybrids are compared in float64, where the bound is tight
    dtype = torch.float64 if plan.hybrid else torch.float32
    return randomised(build_model(plan, device="cpu", dtype=dtype, seed=0))


TOKENS = torch.randint(256, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))


def full(model, tokens):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(tokens)[0]


PREFILL_THEN_DECODE = prefill_then_ones(5, SEQ)


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_prefill_then_decode_gives_the_full_forward_logits_for_every_shipped_spec(spec):
    plan = without_capacity(tiny(str(spec)))
    model = model_of(plan)
    tokens = TOKENS % plan.vocab_size
    torch.testing.assert_close(decoded(model, tokens, PREFILL_THEN_DECODE), full(model, tokens), atol=1e-5, rtol=0)


def with_attention(plan, change):  # type: ignore[no-untyped-def]
    """The plan with ``change(layer index, attention plan) → attention plan`` applied to every layer."""
    layers = tuple(dataclasses.replace(lp, attention=change(lp.index, lp.attention)) for lp in plan.layers)
    return plan.replace(layers=layers)


def _gqa(**kw):  # type: ignore[no-untyped-def]
    return lambda i, a: dataclasses.replace(a, **{k: v(i) if callable(v) else v for k, v in kw.items()})


def _even(value):  # type: ignore[no-untyped-def]
    return lambda i: value if i % 2 == 0 else None


# every attention feature a spec can name, on a GQA MoE model and on DeepSeek-V3's MLA; windows and chunks of
# 4 < the 5-token prefill, so the ring is filled past its size in one call and then rolled one token at a time
VARIANTS = {
    "sliding window on alternate layers (Mistral, gpt-oss)": ("textbook-moe", _gqa(window=_even(4))),
    "sinks with sliding windows (gpt-oss)": ("textbook-moe", _gqa(sinks=True, window=_even(4))),
    "chunked, L2 qk-norm, NoPE temperature (Llama-4)": (
        "textbook-moe",
        lambda i, a: (
            dataclasses.replace(a, chunk=4, rope=True, qk_norm=True, qk_norm_kind="l2")
            if i % 2
            else dataclasses.replace(a, rope=False, temperature_floor_scale=2.0, temperature_scale=0.5)
        ),
    ),
    "per-layer rope theta (MiMo-V2-Flash)": ("textbook-moe", _gqa(rope_theta=_even(1000.0), window=_even(4))),
    "qk-norm after rope (Hunyuan-A13B)": ("hunyuan-a13b", _gqa(qk_norm=True, qk_norm_after_rope=True)),
    "projection qk-norm and clip_qkv (OLMoE, DBRX)": (
        "textbook-moe",
        _gqa(qk_norm=True, qk_norm_scope="projection", clip_qkv=0.5, bias=True, out_bias=True),
    ),
    "MLA with a window and sinks": ("deepseek-v3", lambda i, a: dataclasses.replace(a, sinks=True, window=_even(4)(i))),
}


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("steps", [PREFILL_THEN_DECODE, [3, 2, 3, 1, 3]], ids=["5+1s", "mixed"])
def test_every_attention_feature_decodes_to_the_full_forward(name, steps):
    spec, change = VARIANTS[name]
    plan = without_capacity(with_attention(tiny(f"specs/{spec}.yaml"), change))
    model = model_of(plan)
    tokens = TOKENS % plan.vocab_size
    torch.testing.assert_close(decoded(model, tokens, steps), full(model, tokens), atol=1e-5, rtol=0)


def test_model_wide_features_decode_to_the_full_forward():
    """Learned positions, post-norm, Granite's multipliers, a logit soft-cap, partial rotary and dynamic NTK
    within the trained length, together."""
    base = tiny("specs/textbook-moe.yaml")
    learned = with_attention(base, _gqa(rope=False)).replace(
        positions=dataclasses.replace(base.positions, kind="learned"),
        norm=dataclasses.replace(base.norm, placement="post"),
        embedding_multiplier=3.0,
        residual_multiplier=0.5,
        logits_scaling=2.0,
        logit_softcap=5.0,
    )
    head_dim = base.layers[0].attention.head_dim
    scaling = RopeScalingPlan("dynamic", factor=2.0, original_max_seq_len=SEQ)
    partial = base.replace(positions=dataclasses.replace(base.positions, rotary_dim=head_dim // 2, scaling=scaling))
    for plan in (learned, partial):
        model = model_of(plan)
        tokens = TOKENS % plan.vocab_size
        torch.testing.assert_close(decoded(model, tokens, PREFILL_THEN_DECODE), full(model, tokens), atol=1e-5, rtol=0)


def test_capacity_is_refused_by_name_and_decoded_without_it():
    """Switch's capacity drops slots in the 24-token full forward (so its logits differ from routing every
    token); the decode refuses it by name, and the same weights without capacity decode exactly."""
    plan = tiny("specs/switch-base-8.yaml")
    assert any(isinstance(lp.ffn, MoEPlan) and lp.ffn.capacity_factor for lp in plan.layers)
    capped = model_of(plan)
    with pytest.raises(ValueError, match=r"capacity_factor \(layers .*without_capacity"):
        capped.new_cache(BATCH, SEQ)
    free = model_of(without_capacity(plan))
    free.load_state_dict(capped.state_dict())
    tokens = TOKENS % plan.vocab_size
    with torch.no_grad():
        dropped = sum(int(a.dropped) for a in capped(tokens)[1].layers if a is not None)
    assert dropped > 0 and not torch.allclose(full(capped, tokens), full(free, tokens), atol=1e-3)
    torch.testing.assert_close(decoded(free, tokens, PREFILL_THEN_DECODE), full(free, tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["dynamic", "longrope"])
def test_rope_scalings_that_change_with_length_are_refused_past_the_trained_length(kind):
    base = tiny("specs/textbook-moe.yaml")
    rot = base.layers[0].attention.head_dim // 2
    scaling = RopeScalingPlan(
        kind, factor=2.0, original_max_seq_len=8, short_factor=(1.0,) * rot, long_factor=(2.0,) * rot,
        short_mscale=1.0, long_mscale=1.2,
    )  # fmt: skip
    model = build_model(base.replace(positions=dataclasses.replace(base.positions, scaling=scaling)), device="meta")
    with pytest.raises(ValueError, match=f"rope scaling {kind}: .* 8 tokens.*max_len <= 8 \\(asked 12\\)"):
        model.new_cache(1, SEQ)
    model.new_cache(1, 8)  # within the trained length the tables never change: accepted


def test_bad_calls_are_refused_with_the_numbers():
    model = model_of(tiny("specs/textbook-moe.yaml"))
    cache = model.new_cache(2, 8)
    with pytest.raises(ValueError, match="the cache holds 2 sequences; tokens has 1"):
        model(TOKENS[:1, :3], cache=cache, start=0)
    with pytest.raises(ValueError, match=r"positions 6..8 do not fit a cache of 8 positions"):
        model(TOKENS[:, :3], cache=cache, start=6)
    with pytest.raises(ValueError, match="max_len must be between 1 and the model's max_seq_len 12, got 13"):
        model.new_cache(1, 13)


def test_the_cache_holds_what_the_analyzer_counts():
    """GQA: 2·kv·head_dim per token per layer; MLA: kv_lora_rank + qk_rope_head_dim; a windowed layer keeps
    only its window. The analyzer's KV figure at seq × batch (docs/conventions.md, Memory) is the same
    arithmetic done independently, over plans."""
    from moec.analyze import analyze

    windowed = with_attention(tiny("specs/textbook-moe.yaml"), _gqa(window=_even(4)))
    for plan in (tiny("specs/mixtral-8x7b.yaml"), tiny("specs/deepseek-v3.yaml"), windowed):
        cache = build_model(plan, device="meta").new_cache(3, SEQ, device="cpu")
        assert cache.nbytes() == analyze(plan, seq=SEQ, batch=3, dtype="fp32").memory.kv_cache_bytes
    cache = build_model(windowed, device="meta").new_cache(1, SEQ, device="cpu")
    assert [c.size for c in cache.layers] == [4 if i % 2 == 0 else SEQ for i in range(len(cache.layers))]


def test_torch_compile_captures_a_decode_step_in_one_graph_for_every_position():
    """Static shapes: a decode step of a dense model with rings and sinks traces as one graph (fullgraph) and is
    not recompiled as the position moves (start as a tensor); its logits are the full forward's. (The MoE layer
    is left out: its CPU backend splits on host-side counts, docs/decode.md.) Dynamo's eager backend: the trace,
    not inductor's code generation, is what is being checked."""
    import torch._dynamo

    plan = with_attention(tiny("specs/textbook-dense.yaml"), _gqa(window=_even(4), sinks=True))
    model = model_of(plan)
    tokens = TOKENS % plan.vocab_size
    step = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)
    torch._dynamo.reset()
    with torch.no_grad():
        cache = model.new_cache(BATCH, SEQ)
        outs = [model(tokens[:, :5], cache=cache, start=0)[0]]
        outs.append(step(tokens[:, 5:6], cache=cache, start=torch.tensor(5))[0])
        with torch._dynamo.config.patch(error_on_recompile=True):
            for i in range(6, SEQ):
                outs.append(step(tokens[:, i : i + 1], cache=cache, start=torch.tensor(i))[0])
    torch.testing.assert_close(torch.cat(outs, dim=1), full(model, tokens), atol=1e-5, rtol=0)
