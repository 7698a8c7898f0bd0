"""gelu and geglu are the exact (erf) GELU, torch's nn.GELU(); gelu_tanh and geglu_tanh the tanh approximation,
F.gelu(approximate="tanh"): in the torch activations, the Triton epilogues and the Hugging Face names."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

from moec.hf.families._common import ACTIVATIONS as HF_TO_MOEC  # noqa: E402
from moec.hf.families._export_common import HIDDEN_ACT  # noqa: E402
from moec.kernels.activations import activate  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

F = torch.nn.functional
H = torch.linspace(-6, 6, 2001, dtype=torch.float64)
GATE, UP = torch.randn(2, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "activation,want",
    [
        ("gelu", torch.nn.GELU()(H)),
        ("gelu_tanh", torch.nn.GELU(approximate="tanh")(H)),
        ("geglu", torch.nn.GELU()(GATE) * UP),
        ("geglu_tanh", torch.nn.GELU(approximate="tanh")(GATE) * UP),
    ],
)
def test_float64_parity_with_torchs_gelu(activation: str, want: torch.Tensor) -> None:
    h = torch.cat([GATE, UP]) if activation.startswith("geglu") else H
    torch.testing.assert_close(activate(h, activation), want, rtol=0, atol=1e-15)


def test_the_two_gelus_really_differ() -> None:
    """What the names keep apart: up to about 5e-4 near |h| = 2 (the issue saw 1.4e-4 on a model's activations)."""
    gap = (activate(H, "gelu") - activate(H, "gelu_tanh")).abs().max().item()
    assert 1e-4 < gap < 1e-3


def test_hugging_face_names_map_both_ways() -> None:
    # transformers' ACT2FN: "gelu" is GELUActivation (erf), "gelu_pytorch_tanh" and "gelu_new" the tanh form
    act2fn = pytest.importorskip("transformers.activations").ACT2FN
    x = H.float()
    for hf_name, moec_name in HF_TO_MOEC.items():
        if moec_name.startswith("geglu"):
            torch.testing.assert_close(act2fn[hf_name](x), activate(x, moec_name.replace("geglu", "gelu")))
    assert {HF_TO_MOEC[HIDDEN_ACT[a]] for a in HIDDEN_ACT} == set(HIDDEN_ACT)  # export then import: the same


def test_exact_gelu_qwen3_moe_imports_with_transformers_logits(tmp_path) -> None:
    """A config refused before (exact gelu had no moec name) now imports, and its logits are transformers' in
    float64 (to transformers' fp32 rope tables), as are the tanh form's."""
    transformers = pytest.importorskip("transformers")
    import moec

    cfg = {"vocab_size": 64, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
           "head_dim": 8, "num_hidden_layers": 2, "num_experts": 4, "num_experts_per_tok": 2,
           "moe_intermediate_size": 16, "intermediate_size": 48, "max_position_embeddings": 32,
           "tie_word_embeddings": False, "norm_topk_prob": True}  # fmt: skip
    logits = {}
    for act in ("gelu", "gelu_pytorch_tanh"):
        config = transformers.AutoConfig.for_model("qwen3_moe", **copy.deepcopy(cfg), hidden_act=act)
        config._attn_implementation = "eager"
        config._experts_implementation = "eager"  # grouped_mm has no float64
        torch.manual_seed(0)
        hf = transformers.AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():
            for p in hf.parameters():  # large enough that the two GELUs give different logits
                p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 1.0))
        hf.save_pretrained(tmp_path / act)
        hf, model = hf.double(), moec.from_hf(tmp_path / act, dtype=torch.float64)
        assert {lp.ffn.activation for lp in model.plan.layers} == {HF_TO_MOEC[act]}
        tokens = torch.randint(64, (2, 8), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want, (got, _) = hf(tokens).logits, model(tokens)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # transformers' rope tables are fp32
        logits[act] = want
    gap = (logits["gelu"] - logits["gelu_pytorch_tanh"]).abs().max().item()
    assert gap > 1e-4, gap  # ten times the parity's tolerance: it tells the two GELUs apart


TRITON_CHECK = """
import torch
from moec.kernels import naive
from moec.kernels.triton import expert_ffn
torch.manual_seed(0)
T, d, f, E, k = 16, 40, 36, 4, 2
for act in ("gelu_tanh", "geglu_tanh"):
    W = 2 * f if act.startswith("geglu") else f
    args = [torch.randn(T, d, dtype=torch.float64), torch.rand(T, k, dtype=torch.float64),
            torch.randn(E, d, W, dtype=torch.float64) * 0.3, torch.randn(E, f, d, dtype=torch.float64) * 0.3]
    idx = torch.stack([torch.randperm(E)[:k] for _ in range(T)])
    ours = [a.float().requires_grad_() for a in args]
    ref = [a.clone().requires_grad_() for a in args]
    out = expert_ffn(ours[0], idx, ours[1], ours[2], ours[3], activation=act)
    want = naive.expert_ffn(ref[0], idx, ref[1], ref[2], ref[3], activation=act)
    out.sum().backward(); want.sum().backward()
    err = max([((out.double() - want).abs().max() / want.abs().max()).item()]
              + [((a.grad.double() - b.grad).abs().max() / b.grad.abs().max()).item() for a, b in zip(ours, ref)])
    print(act, err)
    assert err < 2e-5, (act, err)
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests/kernels runs the compiled kernels on a GPU")
def test_triton_epilogues_match_the_float64_oracle_under_the_interpreter() -> None:
    """The tanh forms, in values and every gradient; tests/kernels/test_triton.py's gelu and geglu cases hold the
    exact GELU's erf and its derivative Φ(h) + h·φ(h) (a fresh interpreter: TRITON_INTERPRET is read when the
    kernels are first decorated)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(TRITON_CHECK)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(line.split()[0] for line in proc.stdout.splitlines()) == ["geglu_tanh", "gelu_tanh"]
