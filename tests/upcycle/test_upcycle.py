"""moec upcycle: a tiny dense checkpoint that transformers writes, upcycled, against the dense model itself.

- m = 1, no noise, normalised top-k: the exported MoE checkpoint, loaded by transformers, gives the dense
  checkpoint's logits (transformers on both sides) for llama and qwen3 sources;
- LoRA experts with B = 0 give the dense logits;
- m > 1: every expert and shared expert is the documented segment of the dense FFN with the documented scale;
- a smoke-run of the upcycled model starts at the dense model's loss, not at chance;
- the README's walk-through runs as written.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

import moec  # noqa: E402
from moec.cli import cli  # noqa: E402
from moec.errors import CommandError  # noqa: E402
from tests.hf.families._harness import tiny_hf  # noqa: E402
from tests.hf.test_weights import TINY  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DENSE = {
    "llama": {**TINY, "num_hidden_layers": 2, "intermediate_size": 48},
    "qwen3": {**TINY, "num_hidden_layers": 2, "intermediate_size": 48, "head_dim": 16},
    "qwen2": {**TINY, "num_hidden_layers": 2, "intermediate_size": 48},
}
TOKENS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """model_type → (transformers' tiny dense model, the folder it saved)."""
    out = {}
    for model_type, cfg in DENSE.items():
        hf = tiny_hf(model_type, cfg)
        folder = tmp_path_factory.mktemp(model_type)
        hf.save_pretrained(folder)
        out[model_type] = hf, folder
    return out


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        out = model(TOKENS)
    return out.logits if hasattr(out, "logits") else out[0]


def upcycle_cli(*args: str) -> str:
    done = CliRunner().invoke(cli, ["upcycle", *args])
    assert done.exit_code == 0, done.output
    return done.output


@pytest.mark.parametrize(("model_type", "family"), [("llama", "mixtral"), ("qwen3", "qwen3_moe")])
def test_copies_give_the_dense_logits_in_transformers(dense, model_type, family, tmp_path):
    hf, folder = dense[model_type]
    out = tmp_path / "moe"
    said = upcycle_cli(str(folder), "-o", str(out), "--experts", "4", "--top-k", "2")
    moe = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert moe.config.model_type == family and moe.config.num_experts_per_tok == 2
    assert torch.allclose(logits_of(moe), logits_of(hf), atol=1e-5, rtol=0)
    # the parameters before and after, as the analyzer counts them: 4 copies of 2 layers' FFNs and a router each
    d, f = 64, 48
    before = sum(p.numel() for p in hf.parameters())
    after = before + 2 * (3 * 3 * d * f + 4 * d)
    assert f"parameters before: {before:,} total" in said and f"parameters after:  {after:,} total" in said
    assert "router zero; seed 0" in (out / "README.md").read_text()


@pytest.mark.parametrize(("shared", "family"), [(1, ("--family", "qwen2_moe")), (2, ())])
def test_copies_beside_a_gated_shared_expert_give_the_dense_logits_in_transformers(dense, tmp_path, shared, family):
    """Qwen2-MoE (named, or the default for --shared in HF format): the routed copies give half, the shared expert
    (s FFN copies, down × 1/s) behind sigmoid(0) = ½ the other half."""
    hf, folder = dense["qwen2"]
    out = tmp_path / "moe"
    upcycle_cli(str(folder), "-o", str(out), "--experts", "4", "--top-k", "2", "--shared", str(shared), *family)
    moe = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert moe.config.model_type == "qwen2_moe" and moe.config.shared_expert_intermediate_size == 48 * shared
    assert torch.allclose(logits_of(moe), logits_of(hf), atol=1e-5, rtol=0)


def test_lora_experts_with_zero_b_give_the_dense_logits(dense, tmp_path):
    hf, folder = dense["llama"]
    model = moec.upcycle(folder, experts=4, top_k=2, lora=8)
    assert all(torch.count_nonzero(p) == 0 for n, p in model.named_parameters() if ".lora_b_" in n)
    assert torch.allclose(logits_of(model), logits_of(hf), atol=1e-5, rtol=0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    d, f, r, E = 64, 48, 8, 4
    assert trainable == 2 * (E * d + E * r * 3 * (d + f))  # routers and the A, B of gate, up and down
    said = upcycle_cli(str(folder), "-o", str(tmp_path / "lora"), "--experts", "4", "--top-k", "2", "--lora", "8",
                       "--format", "moec")  # fmt: skip
    assert f"trainable: {trainable:,} of " in said


def test_fine_grained_experts_are_the_documented_segments_and_scale(dense):
    """docs/upcycling.md: expert c·m + s is copy c of hidden units [s·F/m, (s+1)·F/m), down rows × m (× 1/2 beside
    shared experts); shared expert i is segment i mod m, its down rows × m/(2·s)."""
    hf, folder = dense["qwen3"]
    E, m, k, s = 2, 4, 1, 4
    model = moec.upcycle(folder, experts=E, top_k=k, granularity=m, shared=s)
    F = 48
    f = F // m
    for i, layer in enumerate(hf.model.layers):
        gate, up, down = (getattr(layer.mlp, n).weight for n in ("gate_proj", "up_proj", "down_proj"))
        ffn = model.layers[i].ffn
        assert ffn.experts.w_gate_up.shape == (E * m, 64, 2 * f) and ffn.router.weight.count_nonzero() == 0
        for c in range(E):
            for seg in range(m):
                e, rows = c * m + seg, slice(seg * f, (seg + 1) * f)
                assert torch.equal(ffn.experts.w_gate_up[e], torch.cat((gate[rows].T, up[rows].T), 1))
                assert torch.equal(ffn.experts.w_down[e], down[:, rows].T * (m / 2))
        shared_gate = torch.cat([gate[(j % m) * f : (j % m + 1) * f] for j in range(s)]).T
        assert torch.equal(ffn.shared.w_gate_up[:, : s * f], shared_gate)
        shared_down = torch.cat([down[:, (j % m) * f : (j % m + 1) * f].T for j in range(s)])
        assert torch.equal(ffn.shared.w_down, shared_down * (m / (2 * s)))
    assert model.plan.layers[0].ffn.router.top_k == k * m


def test_every_segment_once_with_weight_one_over_m_and_the_shared_experts_give_the_dense_ffn(dense):
    """The step-0 claim of docs/upcycling.md, evaluated directly: one copy's m segments, each weighted 1/m (what
    a normalised top-k·m over equal scores gives when it picks one of each segment k times), plus the shared
    experts, is the dense FFN."""
    hf, folder = dense["qwen3"]
    m, s = 4, 4
    model = moec.upcycle(folder, experts=2, top_k=1, granularity=m, shared=s)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(2))
    ffn = model.layers[0].ffn

    def swiglu(w_gate_up, w_down, h):
        g, u = (h @ w_gate_up).chunk(2, dim=-1)
        return (torch.nn.functional.silu(g) * u) @ w_down

    with torch.no_grad():
        routed = sum(swiglu(ffn.experts.w_gate_up[j], ffn.experts.w_down[j], x) / m for j in range(m))
        total = routed + swiglu(ffn.shared.w_gate_up, ffn.shared.w_down, x)
        assert torch.allclose(total, hf.model.layers[0].mlp(x), atol=1e-5, rtol=0)


def test_noise_is_seeded_and_scaled(dense):
    _, folder = dense["llama"]
    a = moec.upcycle(folder, experts=4, top_k=2, noise=0.1, seed=3)
    b = moec.upcycle(folder, experts=4, top_k=2, noise=0.1, seed=3)
    w = a.layers[0].ffn.experts.w_gate_up
    assert torch.equal(w, b.layers[0].ffn.experts.w_gate_up)
    spread = (w[0] - w[1]).std() / w.std()  # two copies' noise, each 0.1 of the weights' deviation
    assert 0.1 < spread < 0.2 and "noise 0.1" in a.plan.description


def test_smoke_run_of_the_upcycled_model_starts_at_the_dense_loss_not_at_chance(dense, tmp_path):
    from moec.smoke.run import SmokeConfig, smoke_run

    cfg = SmokeConfig(device="cpu", backend="reference", steps=2, batch=4, seq=16, dtype="fp32", scale="full")
    _, folder = dense["llama"]
    dense_model = moec.from_hf(folder)

    def trained(model):  # the dense model after 10 smoke steps: well below chance
        model.load_state_dict(dense_model.state_dict())

    long = SmokeConfig(**{**cfg.__dict__, "steps": 10})
    smoke_run(
        dense_model.plan, long, tamper=lambda m: (trained(m), setattr(dense_model, "_trained", m)), progress=False
    )
    moec.export_hf(dense_model._trained, tmp_path / "trained")
    base = smoke_run(dense_model.plan, cfg, tamper=lambda m: m.load_state_dict(dense_model._trained.state_dict()),
                     progress=False)  # fmt: skip
    upcycled = moec.upcycle(tmp_path / "trained", experts=4, top_k=2)
    moe = smoke_run(upcycled.plan, cfg, tamper=lambda m: m.load_state_dict(upcycled.state_dict()), progress=False)
    fresh = smoke_run(upcycled.plan, cfg, progress=False)
    assert math.isclose(moe.losses[0], base.losses[0], abs_tol=1e-4)
    assert base.losses[0] < base.loss_noise - 0.5 < fresh.losses[0]


def test_refusals_are_one_line_and_exit_2(dense, tmp_path):
    _, folder = dense["llama"]
    run = CliRunner().invoke
    for args, said in [
        (["--experts", "4", "--top-k", "5"], "--top-k 5 must be between 1 and --experts 4"),
        (["--experts", "4", "--top-k", "2", "--granularity", "5"], "does not divide the FFN width 48"),
        (["--experts", "4", "--top-k", "2", "--family", "qwen3_moe"], "qk_norm"),
        (["--experts", "4", "--top-k", "2", "--lora", "4"], "use --format moec"),
        (["--experts", "4", "--top-k", "2", "--family", "nosuch"], "'nosuch': moec writes "),
        (["--experts", "4", "--top-k", "2", "--family", "qwen3_moe", "--format", "moec"], "qk_norm"),
    ]:
        done = run(cli, ["upcycle", str(folder), "-o", str(tmp_path / "x"), *args])
        assert done.exit_code == 2 and said in done.output and "Traceback" not in done.output, done.output
        assert not (tmp_path / "x").exists()
    onto_itself = run(cli, ["upcycle", str(folder), "-o", str(folder), "--experts", "2", "--top-k", "1", "--force"])
    assert onto_itself.exit_code == 2 and "holds the input" in onto_itself.output, onto_itself.output
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]


@pytest.mark.parametrize(
    "option", [{"noise": math.nan}, {"noise": math.inf}, {"router_std": -0.1}, {"lora": 4, "lora_alpha": math.nan}]
)
def test_the_python_api_refuses_what_the_cli_options_cannot_say(dense, option):
    """moec.upcycle takes plain floats: a NaN or infinite standard deviation would write NaN weights silently."""
    with pytest.raises(CommandError, match="finite"):
        moec.upcycle(dense["llama"][1], experts=2, top_k=1, **option)


def test_a_weights_file_names_its_checkpoint_folder(dense, tmp_path):
    """DENSE may be the folder's model.safetensors: every step reads the folder, none the weights as config."""
    hf, folder = dense["llama"]
    said = upcycle_cli(str(folder / "model.safetensors"), "-o", str(tmp_path / "moe"), "--experts", "2", "--top-k", "1")
    assert f"parameters before: {sum(p.numel() for p in hf.parameters()):,} total" in said


def test_readme_walkthrough_runs(tmp_path, monkeypatch):
    """README, "Upcycle a dense model": its Python block makes the tiny checkpoint, then its commands run."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Upcycle a dense model", 1)[1].split("\n## ", 1)[0]
    (make,) = re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)
    commands = re.findall(r"^\$ (moec .+)$", section, flags=re.M)
    assert len(commands) == 6
    monkeypatch.chdir(tmp_path)
    exec(compile(make, "README.md, upcycle example", "exec"), {})  # noqa: S102
    for line in commands:
        done = CliRunner().invoke(cli, line.split()[1:])
        assert done.exit_code == 0, (line, done.output)
    dense = transformers.AutoModelForCausalLM.from_pretrained("tiny-llama").eval()
    for folder in ("tiny-moe", "tiny-moe-hf"):
        moe = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        assert torch.allclose(logits_of(moe), logits_of(dense), atol=1e-5, rtol=0)
