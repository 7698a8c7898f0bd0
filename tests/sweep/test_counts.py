"""A sweep row's headline counts equal `moec analyze`'s on every shipped spec: the same parts summed per
distinct layer plan rather than layer by layer (MLA, windows, chunks, MTP, dense layers, LoRA experts,
frozen parts and tied embeddings are all among them)."""

from __future__ import annotations

import pytest

from moec.analyze.report import analyze
from moec.spec import load_model
from moec.spec.paths import shipped_specs
from moec.sweep.counts import headline

# every shipped spec, and windows and chunks, which none of them has, on some layers or all
# moec sweep refuses encoder-decoder specs at load (moec/sweep/load.py): the others
CASES = [(p.stem, ()) for p in shipped_specs() if not load_model(str(p)).encoder] + [
    ("textbook-moe", ("layers.overrides=[{select: {every: 2, start: 1}, attention: {window: 100}}]",)),
    ("mixtral-8x7b", ("attention.chunk=2048",)),
]


@pytest.mark.parametrize(("name", "sets"), CASES)
def test_headline_equals_the_analyzer(name, sets):
    model = load_model(name, sets=sets)
    for seq, dtype, kv_dtype in ((1, "bf16", "bf16"), (4096, "fp8", "fp32"), (100_001, "fp32", "fp8")):
        a = analyze(model, seq=seq, dtype=kv_dtype)
        h = headline(model, seq=seq, dtype=dtype, kv_dtype=kv_dtype)
        assert (h.total_params, h.active_params) == (a.params.total, a.params.active)
        assert h.forward_flops == a.flops.forward and type(h.forward_flops) is type(a.flops.forward)
        ffn = sum(
            c.flops for c in a.components if c.name in ("dense_ffn", "routed_experts", "shared_experts", "base_ffn")
        )
        assert h.ffn_flops == ffn
        assert h.kv_bytes_per_token == a.memory.kv_cache_bytes_per_token
        assert h.weights_bytes == a.memory.weights_bytes_by_dtype[dtype]


def test_the_shipped_specs_cover_what_the_sum_must_handle():
    models = [load_model(n, sets=sets) for n, sets in CASES]
    layers = [lp for m in models for lp in m.layers]
    assert any(lp.attention.kind == "mla" for lp in layers) and any(lp.attention.window for lp in layers)
    assert any(lp.attention.chunk for lp in layers) and any(m.tie_embeddings for m in models)
    assert any(m.mtp for m in models) and any(
        m.frozen or any(lp.ffn.kind == "moe" and lp.ffn.expert_kind == "lora" for lp in m.layers) for m in models
    )
    assert any(len({(lp.attention, lp.ffn) for lp in m.layers}) > 1 for m in models)
