"""The generated model.py's KV cache (issue 19): for every codegen case and every shipped spec at its tiny scale, a
prefill and then calls of one or two tokens through ``new_cache`` give the generated model's own full-forward logits
(fp32, 1e-5) and, bit for bit, moec.nn's cached decode of the same weights; what moec.nn refuses to decode, the
generated model refuses with the same words."""

from __future__ import annotations

import re

import pytest
import torch

from moec.codegen import render_model_source
from moec.nn import build_model
from moec.nn.cache import without_capacity
from tests.codegen import test_features_13, test_features_2026
from tests.codegen.refused import expect_refusal_if_refused
from tests.codegen.test_codegen import CASES, CLAMPED_MOE, assert_same_aux, import_source, plan_of
from tests.nn.test_cache import SPECS, decoded, randomised, tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# a prefill longer than the 4-token windows of the cases (the ring overflows in one call), single tokens, and a
# two-token call into a full ring
STEPS = [5, 1, 1, 1, 2, 1, 1]
TOKENS = torch.randint(256, (2, sum(STEPS)), generator=torch.Generator().manual_seed(1))
ALL_CASES = {
    **CASES,
    **{f"clamped {k}": v for k, v in CLAMPED_MOE.items()},
    **{f"features {k}": v for k, v in test_features_2026.CASES.items()},
    **{f"issue 13 {k}": v for k, v in test_features_13.DECODE_CASES.items()},
}


def both_models(plan, folder):  # type: ignore[no-untyped-def]
    """moec.nn's model with random weights (tests/nn/test_cache.py's: logits of order 1) and the generated model.py
    holding the same weights, both in eval mode. A hybrid's chunked mixers (docs/mixers.md) sum in another order than
    their token-by-token decode, ~1e-5 apart in float32: hybrids run in float64, as tests/nn/test_cache.py runs them."""
    dtype = torch.float64 if plan.hybrid else torch.float32
    lib = randomised(build_model(plan, device="cpu", dtype=dtype, seed=0))
    gen = import_source(render_model_source(plan), folder).Model().to(dtype)
    gen.load_state_dict(lib.state_dict(), strict=True)
    return lib, gen.eval()


def assert_decodes_like_the_library(plan, folder, steps: list[int]) -> None:
    lib, gen = both_models(without_capacity(plan), folder)  # capacity is refused below; decode without it, as moec.nn
    tokens = TOKENS[:, : sum(steps)] % plan.vocab_size
    with torch.no_grad():
        full = gen(tokens)[0]
    ours = decoded(gen, tokens, steps)
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=0)
    assert torch.equal(ours, decoded(lib, tokens, steps)), (ours - decoded(lib, tokens, steps)).abs().max()


@pytest.mark.parametrize("case", list(ALL_CASES))
def test_every_codegen_case_decodes_to_its_full_forward_and_to_the_library_decode(case, tmp_path):
    plan = plan_of(ALL_CASES[case])
    sc = plan.positions.scaling
    # dynamic NTK is decodable within its trained length only (refused past it, below)
    steps = [5, 1, 1, 1] if sc is not None and sc.kind == "dynamic" and sc.original_max_seq_len == 8 else STEPS
    assert_decodes_like_the_library(plan, tmp_path, steps)


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_every_shipped_spec_decodes_to_its_full_forward_and_to_the_library_decode(spec, tmp_path):
    plan = tiny(str(spec))
    if expect_refusal_if_refused(spec, lambda: render_model_source(plan)):
        return
    assert_decodes_like_the_library(plan, tmp_path, STEPS)


def refusal(model, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as caught:
        model.new_cache(*args)
    return str(caught.value)


def test_capacity_is_refused_by_name_as_the_library_refuses_it(tmp_path):
    """Switch's capacity (MoE on layers 1 of 0..2): both name capacity_factor and the same layers."""
    lib, gen = both_models(plan_of(CASES["switch"]), tmp_path)
    ours, theirs = refusal(gen, 2, 12), refusal(lib, 2, 12)
    layers = re.compile(r"^capacity_factor \(layers ([\d, ]+)\): capacity-limited routing drops tokens")
    assert layers.match(ours) and layers.match(ours).group(1) == layers.match(theirs).group(1) == "1"


def test_dynamic_ntk_past_its_trained_length_and_bad_sizes_are_refused_as_the_library_refuses_them(tmp_path):
    lib, gen = both_models(plan_of(CASES["rope-dynamic"]), tmp_path)
    assert refusal(gen, 1, 12) == refusal(lib, 1, 12)
    assert refusal(gen, 1, 12).startswith("rope scaling dynamic: ") and "max_len <= 8 (asked 12)" in refusal(gen, 1, 12)
    gen.new_cache(1, 8)  # within the trained length: accepted
    assert refusal(gen, 0, 40) == refusal(lib, 0, 40)  # max_len past max_seq_len 32, and batch 0: both named
    assert "max_seq_len 32, got 40" in refusal(gen, 0, 40) and "batch must be at least 1, got 0" in refusal(gen, 0, 40)


def test_calls_that_do_not_fit_the_cache_are_refused_as_the_library_refuses_them(tmp_path):
    lib, gen = both_models(plan_of(CASES["llama"]), tmp_path)
    tokens = TOKENS[:, :3] % 64
    for model in (lib, gen):
        cache = model.new_cache(2, 8)
        with pytest.raises(ValueError, match="the cache holds 2 sequences; tokens has 1"):
            model(tokens[:1], cache=cache, start=0)
        with pytest.raises(ValueError, match=r"positions 6..8 do not fit a cache of 8 positions"):
            model(tokens, cache=cache, start=6)


def test_a_cached_call_reports_its_routing_as_the_library_does(tmp_path):
    """The ModelAux of each cached call (what `moec generate` counts experts with) is the library's, field for field."""
    lib, gen = both_models(plan_of(CASES["qwen3-moe"]), tmp_path)
    tokens = TOKENS[:, :6] % 64
    gen_cache, lib_cache = gen.new_cache(2, 6), lib.new_cache(2, 6)
    with torch.no_grad():
        for start, n in ((0, 5), (5, 1)):
            step = tokens[:, start : start + n]
            ours, theirs = gen(step, cache=gen_cache, start=start)[1], lib(step, cache=lib_cache, start=start)[1]
            assert_same_aux(ours, theirs)
            assert sum(a.tokens_per_expert.sum() for a in ours.layers) == 3 * 2 * n * 2  # 3 layers, B·n tokens, top-2


def test_the_generated_model_and_moec_nn_share_one_cache_and_one_set_of_aux_records(tmp_path):
    """The generated file imports these from moec.kernels.runtime instead of defining copies, and moec.nn's old
    import paths name the same classes."""
    from moec.kernels import runtime
    from moec.nn.cache import KVCache, LayerCache
    from moec.nn.model import ModelAux
    from moec.nn.moe import MoEAux

    assert (KVCache, LayerCache, ModelAux, MoEAux) == (runtime.KVCache, runtime.LayerCache, runtime.ModelAux,
                                                       runtime.MoEAux)  # fmt: skip
    lib, gen = both_models(plan_of(CASES["mixtral-window"]), tmp_path)
    cache = gen.new_cache(2, 8)
    assert type(cache) is runtime.KVCache and all(type(c) is runtime.LayerCache for c in cache.layers)
    assert [c.size for c in cache.layers] == [c.size for c in lib.new_cache(2, 8).layers] == [5, 5, 5]  # window 5
    with torch.no_grad():
        aux = gen(TOKENS[:, :4] % 64, cache=cache, start=0)[1]
    assert type(aux) is runtime.ModelAux and all(type(a) is runtime.MoEAux for a in aux.layers)


# `moec generate BUILD_DIR` decodes with the folder's own model.py
BUILD = ("textbook-moe", "--set", "model.d_model=64", "--set", "model.n_layers=2", "--set", "model.vocab_size=128",
         "--set", "moe.d_ff=32", "--set", "model.max_seq_len=16")  # fmt: skip
GENERATE = ("--prompt-tokens", "1,2,3", "--max-new-tokens", "8", "--format", "json")


def cli(*args: str):  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from moec.cli import cli as moec_cli

    return CliRunner().invoke(moec_cli, list(args))


def test_generate_from_a_build_folder_runs_its_model_py(tmp_path):
    """Its tokens are the spec's (the same seeded weights, decoded alike); an edit to model.py changes them (the
    head made to negate its logits: greedy then picks the least likely token); a model.py that does not run is one
    error line, exit 2."""
    import json

    out = tmp_path / "built"
    assert cli("build", *BUILD, "-o", str(out), "--weights", "--seed", "3").exit_code == 0
    built = json.loads(cli("generate", str(out), *GENERATE).output)
    spec = json.loads(cli("generate", *BUILD, "--seed", "3", *GENERATE).output)
    assert built["new_tokens"] == spec["new_tokens"] and f"decoded by {out / 'model.py'}" in built["notes"]
    source = (out / "model.py").read_text()
    head = "        return self.lm_head(x)  # (B, S, V)\n"
    assert source.count(head) == 1
    (out / "model.py").write_text(source.replace(head, "        return -self.lm_head(x)  # edited\n"))
    assert json.loads(cli("generate", str(out), *GENERATE).output)["new_tokens"] != built["new_tokens"]
    (out / "model.py").write_text(source + "\nraise RuntimeError('edited badly')\n")
    broken = cli("generate", str(out), *GENERATE)
    assert broken.exit_code == 2 and "model.py: does not run (RuntimeError: edited badly)" in broken.output
    assert "Traceback" not in broken.output
