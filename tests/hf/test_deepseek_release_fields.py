"""DeepSeek-V3 release fields that other releases set differently.

rope_interleave false (rotate_half pairs on MLA's rotary dims) is refused by name: moec's MLA rotates adjacent
pairs and the loader does not permute the rotary rows, so importing it would approximate (a tiny checkpoint
loaded anyway differed from transformers by 3 in the logits).

Releases whose rms_norm_eps is not 1e-6 (Moonlight, GLM-4.7-Flash-like): transformers builds
the MLA latent norms (q_a_layernorm, kv_a_layernorm) with RMSNorm's default eps 1e-6 whatever rms_norm_eps says.
They import with attention.latent_norm_eps 1e-6 and give transformers' logits; the eps is made large here (1e-2)
so that a latent norm using the model's eps would visibly differ."""

from __future__ import annotations

import dataclasses

import pytest

from moec.errors import SpecError
from moec.hf import hf_to_model
from tests.hf.configs import RELEASES

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import tiny_hf  # noqa: E402
from tests.hf.test_weights import CONFIGS, assert_same, run_hf, run_moec  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_rope_interleave_false_is_refused_naming_the_field():
    with pytest.raises(SpecError) as e:
        hf_to_model({**RELEASES["deepseek_v3"], "rope_interleave": False})
    assert [p.path for p in e.value.problems] == ["rope_interleave"]
    assert "attention.rope_interleave" in e.value.problems[0].message


def test_a_release_with_rms_norm_eps_1e_5_imports_with_latent_norm_eps_1e_6():
    plan = hf_to_model({**RELEASES["deepseek_v3"], "rms_norm_eps": 1e-5})
    assert plan.norm.eps == 1e-5
    assert {lp.attention.latent_norm_eps for lp in plan.layers} == {1e-6}
    assert hf_to_model(RELEASES["deepseek_v3"]).layers[0].attention.latent_norm_eps is None  # 1e-6: unchanged


def test_tiny_checkpoint_with_a_large_model_eps_gives_transformers_logits(tmp_path):
    hf = tiny_hf("deepseek_v3", {**CONFIGS["deepseek_v3"], "rms_norm_eps": 1e-2})
    hf.save_pretrained(tmp_path)
    model = moec.from_hf(tmp_path)
    assert_same(hf, model)
    # the same weights with the latent norms at the model's eps are not transformers' model
    plan = model.plan
    wrong = plan.replace(
        layers=tuple(
            dataclasses.replace(lp, attention=dataclasses.replace(lp.attention, latent_norm_eps=None))
            for lp in plan.layers
        )
    )
    other = moec.build_model(wrong, device="cpu", dtype=torch.float32).eval()
    other.load_state_dict(model.state_dict())
    assert (run_moec(other)[0] - run_hf(hf)[0]).abs().max().item() > 1e-3
