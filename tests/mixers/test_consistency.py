"""The analyzer's figures for every shipped hybrid spec against the model moec builds from it (docs/mixers.md):
each mixer layer's parameters are its kind's ``params``, each layer's decode state is what its module allocates
(part by part, float32 where the kind says so), the analyzer's KV cache and state bytes are the built cache's,
and the generated model.py names and shapes its parameters as moec.nn does. Everything is built on ``meta``: the
shapes, never the weights."""

from __future__ import annotations

import pytest
import torch

from moec.analyze import analyze
from moec.codegen import render_model_source
from moec.kernels.mixers.state import MixerState
from moec.kernels.runtime import LayerCache
from moec.mixers import KINDS
from moec.nn import build_model
from moec.spec import load_model
from moec.spec.paths import shipped_specs
from tests.codegen.test_codegen import import_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HYBRIDS = [p for p in shipped_specs() if load_model(str(p)).hybrid]
SEQ, BATCH = 4096, 3


@pytest.fixture(scope="module", params=HYBRIDS, ids=lambda p: p.stem)
def built(request):  # type: ignore[no-untyped-def]
    plan = load_model(str(request.param))
    return plan, build_model(plan, device="meta", dtype=torch.bfloat16)


def test_the_shipped_specs_cover_every_mixer_kind():
    used = {lp.mixer_kind for p in HYBRIDS for lp in load_model(str(p)).layers}
    assert set(KINDS) <= used  # so the tests below see every kind's module at a release's shapes


def test_each_mixer_layer_has_its_kinds_parameter_count(built):
    plan, model = built
    for lp, block in zip(plan.layers, model.layers, strict=True):
        if block.mixer is None:
            continue
        kind = KINDS[lp.mixer.kind]
        built_count = sum(p.numel() for p in block.mixer.parameters())
        assert built_count == kind.params(lp.mixer, plan.d_model), f"layer {lp.index} ({kind.KIND})"


def test_each_layers_state_is_what_its_module_allocates(built):
    """Part by part: the names and sizes ``state_elements`` gives, float32 for the kind's FP32_STATE parts in a
    bf16 model, the model's dtype for the others."""
    plan, model = built
    for lp, block in zip(plan.layers, model.layers, strict=True):
        if block.mixer is None:
            continue
        kind = KINDS[lp.mixer.kind]
        state = block.new_cache(BATCH, SEQ, device=torch.device("meta"), dtype=torch.bfloat16)
        assert isinstance(state, MixerState)
        elements = {name: t.numel() for name, t in state.tensors.items()}
        want = {part: BATCH * n for part, n in kind.state_elements(lp.mixer, plan.d_model).items()}
        assert elements == want, f"layer {lp.index} ({kind.KIND})"
        wide = getattr(kind, "FP32_STATE", ())
        dtypes = {name: t.dtype for name, t in state.tensors.items()}
        assert dtypes == {p: torch.float32 if p in wide else torch.bfloat16 for p in want}, kind.KIND


def test_the_analyzers_kv_cache_and_state_bytes_are_the_built_caches(built):
    """At S = 4096 and batch 3 in bf16: the attention layers' KV slots sum to ``kv_cache_bytes`` (windowed layers
    capped), the other mixers' states to ``state_bytes``, and nothing else is cached."""
    plan, model = built
    cache = model.new_cache(BATCH, SEQ, device="meta", dtype=torch.bfloat16)
    kv = sum(c.nbytes() for c in cache.layers if isinstance(c, LayerCache))
    state = sum(c.nbytes() for c in cache.layers if isinstance(c, MixerState))
    assert kv + state == cache.nbytes()
    memory = analyze(plan, seq=SEQ, batch=BATCH, dtype="bf16").memory
    assert (kv, state) == (memory.kv_cache_bytes, memory.state_bytes)
    assert memory.state_bytes == BATCH * memory.state_bytes_per_sequence
    uncapped = [lp for lp in plan.layers if lp.has_attention and not (lp.attention.window or lp.attention.chunk)]
    if len(uncapped) == sum(lp.has_attention for lp in plan.layers):  # no window: the cache is linear in S
        assert kv == SEQ * BATCH * memory.kv_cache_bytes_per_token


def test_the_generated_model_names_its_parameters_as_moec_nn(built, tmp_path):
    plan, model = built
    module = import_source(render_model_source(plan), tmp_path)
    with torch.device("meta"):
        generated = module.Model()
    want = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert {n: tuple(p.shape) for n, p in generated.named_parameters()} == want
