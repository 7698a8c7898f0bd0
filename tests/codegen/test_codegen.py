"""Generated model.py against the library model (moec.nn) on identical weights, for every feature a spec can
express, at tiny sizes in fp32: identical logits, aux loss, MTP logits, parameter names, shapes and frozen
flags. Plus: every shipped spec renders to tidy, compilable source importing only torch and moec.kernels,
specialised to what the plan uses, and nothing from the spec but checked numbers and names reaches it."""

from __future__ import annotations

import ast
import dataclasses
import itertools
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from moec.codegen import render_model_source
from moec.generated import import_python_file
from moec.nn import build_model
from moec.spec import load_model, load_spec, resolve
from moec.spec.paths import shipped_specs
from moec.spec.plan import AbsentPlan, MoEPlan
from moec.vocab import LINEAR_MIXERS
from tests.codegen.refused import expect_refusal_if_refused
from tests.tiny_specs import TINY_DEEPSEEK_V3

# a Llama-like dense model; each variant below is this text with some fields replaced
BASE = """
name: tiny
model: {vocab_size: 64, d_model: 32, n_layers: 3, max_seq_len: 32, MODEL}
attention: {n_heads: 4, ATTN}
ffn: {d_ff: 48, FFN}
"""
MOE = """
moe:
  n_experts: N_EXPERTS
  d_ff: 16
  MOEX
  router: {top_k: TOP_K, ROUTER}
  BALANCE
layers: {default: {ffn: moe}, overrides: [OVERRIDES]}
"""


def variant(
    *, model="positions: {kind: rope}", attn="", ffn="", moe=False, moex="", router="", balance="", overrides="",
    extra="", top_k=2, n_experts=4,
) -> str:  # fmt: skip
    """BASE (and MOE) with the placeholders filled in."""
    text = BASE + (MOE if moe else "") + extra
    subs = {"MODEL": model, "ATTN": attn, "FFN": ffn, "MOEX": moex, "ROUTER": router, "BALANCE": balance,
            "OVERRIDES": overrides, "TOP_K": str(top_k), "N_EXPERTS": str(n_experts)}  # fmt: skip
    for key, value in subs.items():
        text = text.replace(key, value)
    return text


CASES = {
    "llama": variant(attn="n_kv_heads: 2"),
    "mixtral-window": variant(
        attn="n_kv_heads: 2, window: 5",
        moe=True,
        router="normalize_topk: true",
        balance="balance: {load_balance_coeff: 0.02}",
    ),
    "deepseek-v3": TINY_DEEPSEEK_V3,
    "qwen3-moe": variant(
        attn="n_kv_heads: 2, head_dim: 12, qk_norm: true",
        moe=True,
        moex="n_shared_experts: 2\n  shared_gate: true",
        router="normalize_topk: true",
        balance="balance: {load_balance_coeff: 0.001}",
    ),
    "switch": variant(
        model="tie_embeddings: true, norm: {kind: layernorm, eps: 1.0e-5, placement: post}, positions: {kind: none}",
        ffn="activation: relu",
        moe=True,
        moex="activation: relu\n  capacity_factor: 1.0\n  drop_policy: position",
        balance="balance: {load_balance_coeff: 0.01, z_loss_coeff: 0.001}",
        overrides="{select: {every: 2, start: 0}, ffn: dense}",
    ),
    "capacity-by-probs-learned-positions": variant(
        model="norm: {kind: layernorm, eps: 1.0e-5, bias: false}, positions: {kind: learned}",
        moe=True,
        moex="activation: gelu\n  capacity_factor: 0.5",
        balance="balance: {z_loss_coeff: 0.001}",
    ),
    "lora-moe-frozen": variant(
        model="tie_embeddings: true, positions: {kind: rope}",
        moe=True,
        moex="expert_kind: lora\n  lora: {rank: 4, alpha: 8}",
        router="normalize_topk: true",
        balance="balance: {load_balance_coeff: 0.01}",
        extra="frozen: [embedding, attention, norms, head]\n",
    ),
    "sinks-window-mqa-nope-layer": variant(
        attn="n_kv_heads: 1, sinks: true, window: 4, bias: true, out_bias: true",
        moe=True,
        moex="bias: true",
        router="softmax_after_topk: true, bias: true",
        overrides="{select: [1], attention: {window: null}}, {select: [2], attention: {rope: false}}",
    ),
    "dense-routing-geglu": variant(
        moe=True,
        moex="activation: geglu\n  n_shared_experts: 1",
        router="dense: true",
        top_k=4,
        balance="balance: {load_balance_coeff: 0.01, load_balance_granularity: sequence}",
    ),
    "groups-max-jitter": variant(
        moe=True,
        n_experts=8,
        router="score: sigmoid, selection_bias: true, n_groups: 4, topk_groups: 2, jitter: 0.1",
        balance="balance: {bias_update_rate: 0.01}",
    ),
    # docs/routing.md's algorithms (tests/routing/test_routing_codegen.py holds them in training too)
    "gshard-router-mlp": variant(
        moe=True, router="kind: gshard, mlp_hidden: 8", balance="balance: {z_loss_coeff: 0.001}"
    ),
    "hash-between-dense-layers": variant(
        moe=True, router="kind: hash", top_k=1, overrides="{select: {every: 2, start: 0}, ffn: dense}"
    ),
    "granite-olmoe-attention": variant(
        model="positions: {kind: rope}, embedding_multiplier: 12.0, residual_multiplier: 0.22, logits_scaling: 8.0, "
        "head_bias: true",
        attn="n_kv_heads: 2, scale: 0.05, qk_norm: true, qk_norm_scope: projection, clip_qkv: 0.5",
        ffn="activation: silu, bias: true",
    ),
    "rope-linear": variant(model="positions: {kind: rope, scaling: {kind: linear, factor: 2.0}}"),
    "rope-dynamic": variant(
        model="positions: {kind: rope, scaling: {kind: dynamic, factor: 2.0, original_max_seq_len: 8}}"
    ),
    "rope-llama3": variant(
        model="positions: {kind: rope, theta: 500000.0, scaling: {kind: llama3, factor: 8.0, original_max_seq_len: 16}}"
    ),
    "rope-yarn-gpt-oss": variant(
        model="positions: {kind: rope, scaling: {kind: yarn, factor: 4.0, original_max_seq_len: 8, truncate: false, "
        "attention_factor: 1.2}}",
        ffn="activation: swiglu_clamped, activation_alpha: 1.5, activation_limit: 3.0",
    ),
}
# gpt-oss experts: the generated Experts pass alpha/limit to moec.kernels, as its interface documents
CLAMPED_MOE = {
    "default": variant(moe=True, moex="activation: swiglu_clamped", router="softmax_after_topk: true"),
    "biting-limit-shared": variant(
        moe=True,
        moex="activation: swiglu_clamped\n  activation_alpha: 1.2\n  activation_limit: 0.5\n  n_shared_experts: 1",
        router="softmax_after_topk: true",
    ),
    "biting-limit-lora": variant(
        moe=True,
        moex="activation: swiglu_clamped\n  activation_limit: 0.5\n  expert_kind: lora\n  lora: {rank: 4, alpha: 8}",
    ),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


_counter = itertools.count()


def import_source(src: str, folder: Path) -> ModuleType:
    path = folder / "model.py"
    path.write_text(src)
    return import_python_file(path, f"moec_generated_{next(_counter)}")


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter and the selection bias nonzero (fresh zeros would hide a mis-mapped bias or LoRA B)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict(keep_vars=True).values():
            noise = torch.randn(t.shape, generator=g)
            t.copy_(1.0 + 0.1 * noise if t.dim() == 1 else 0.1 * noise)  # norms ≠ 1 too


def plan_of(text: str):
    return resolve(load_spec("tiny.yaml", text=text))


def library_and_generated(text: str, tmp_path: Path):
    plan = plan_of(text)
    lib = build_model(plan, device="cpu", dtype=torch.float32, seed=0)
    randomize(lib)
    module = import_source(render_model_source(plan), tmp_path)
    gen = module.Model()
    gen.load_state_dict(lib.state_dict(), strict=True)
    return plan, lib, gen, module


def run_both(lib, gen, tokens, *, train: bool):
    lib.train(train)
    gen.train(train)
    torch.manual_seed(7)  # router jitter draws from the global RNG in both
    logits, aux = lib(tokens)
    torch.manual_seed(7)
    return logits, aux, gen(tokens)


AUX_FIELDS = ("loss", "load_balance", "z_loss", "tokens_per_expert", "dropped", "router_logits", "router_probs")


def assert_same_aux(gen_aux, lib_aux) -> None:
    """The generated ModelAux holds the library's, field for field and layer for layer: the total, each MoE
    layer's MoEAux (None where the library has None), the MTP logits; every tensor equal, dtype included."""
    assert type(gen_aux).__name__ == "ModelAux" and torch.equal(gen_aux.loss, lib_aux.loss)
    assert len(gen_aux.layers) == len(lib_aux.layers) and len(gen_aux.mtp_logits) == len(lib_aux.mtp_logits)
    for i, (g, lib_layer) in enumerate(zip(gen_aux.layers, lib_aux.layers, strict=True)):
        assert (g is None) == (lib_layer is None), i
        if lib_layer is None:
            continue
        assert type(g).__name__ == "MoEAux"
        for name in AUX_FIELDS:
            a, b = getattr(g, name), getattr(lib_layer, name)
            assert a.dtype == b.dtype and torch.equal(a, b), (i, name)
    for a, b in zip(gen_aux.mtp_logits, lib_aux.mtp_logits, strict=True):
        assert torch.equal(a, b)


def assert_generated_gives_the_library_outputs(text: str, tmp_path: Path, seq_len: int = 12):
    """The generated model.py of ``text``, holding the library model's (randomised) weights, gives its logits and
    aux bit for bit in eval mode on two sequences of ``seq_len`` tokens, and has its parameter names, shapes and
    frozen flags. Returns (plan, library model, generated model) for further checks."""
    plan, lib, gen, _ = library_and_generated(text, tmp_path)
    tokens = torch.randint(0, plan.vocab_size, (2, seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, aux, out = run_both(lib, gen, tokens, train=False)
    assert torch.equal(out[0], logits), (out[0] - logits).abs().max()
    assert_same_aux(out[1], aux)
    assert len(out[1].mtp_logits) == len(plan.mtp)
    lib_params = {n: (tuple(p.shape), p.requires_grad) for n, p in lib.named_parameters()}
    gen_params = {n: (tuple(p.shape), p.requires_grad) for n, p in gen.named_parameters()}
    assert gen_params == lib_params  # names, shapes, and which are frozen
    return plan, lib, gen


@pytest.mark.parametrize("case", list(CASES))
def test_generated_model_gives_the_library_logits_and_aux(case, tmp_path):
    assert_generated_gives_the_library_outputs(CASES[case], tmp_path)


@pytest.mark.parametrize("case", list(CLAMPED_MOE))
def test_generated_gpt_oss_experts_match(case, tmp_path):
    assert_generated_gives_the_library_outputs(CLAMPED_MOE[case], tmp_path)


@pytest.mark.parametrize("case", ["groups-max-jitter", "deepseek-v3", "switch"])
def test_training_forward_backward_and_bias_update_match(case, tmp_path):
    """Train mode (jitter, load counting), gradients, and the aux-loss-free bias step."""
    plan, lib, gen, _ = library_and_generated(CASES[case], tmp_path)
    tokens = torch.randint(0, plan.vocab_size, (2, 8), generator=torch.Generator().manual_seed(2))
    logits, aux, out = run_both(lib, gen, tokens, train=True)
    assert torch.equal(out[0], logits)
    assert_same_aux(out[1], aux)
    (logits.square().mean() + aux.loss).backward()
    (out[0].square().mean() + out[1].loss).backward()
    lib_grads = dict(lib.named_parameters())
    for name, p in gen.named_parameters():
        q = lib_grads[name]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)
    if hasattr(gen, "update_bias"):
        lib.update_bias()
        gen.update_bias()
        lib_state = lib.state_dict()
        for name, t in gen.state_dict().items():
            if name.endswith("expert_bias"):
                assert torch.equal(t, lib_state[name]) and t.abs().sum() > 0, name


def test_meta_build_then_assign_and_load_back_into_the_library(tmp_path):
    """The docstring's recipe (meta + assign=True), and the other direction: generated weights → MoecModel."""
    plan, lib, gen, module = library_and_generated(CASES["deepseek-v3"], tmp_path)
    with torch.device("meta"):
        fast = module.Model()
    fast.load_state_dict(lib.state_dict(), assign=True)
    tokens = torch.randint(0, plan.vocab_size, (1, 9), generator=torch.Generator().manual_seed(3))
    fresh = module.Model()  # its own initialisation
    lib2 = build_model(plan, device="cpu", seed=1)
    lib2.load_state_dict(fresh.state_dict(), strict=True)
    with torch.no_grad():
        lib.eval(), fast.eval(), fresh.eval(), lib2.eval()
        assert torch.equal(fast(tokens)[0], lib(tokens)[0])
        assert torch.equal(fresh(tokens)[0], lib2(tokens)[0])


# ---------------------------------------------------------------------------------------------
# shipped specs: render, compile, imports, tidiness, specialisation

# moec.kernels: the expert computation, the activations, the runtime pieces shared with moec.nn, and the token
# mixers besides attention (one module per kind, docs/mixers.md), which moec.nn builds from the same classes
KERNEL_MODULES = {"moec.kernels", "moec.kernels.activations", "moec.kernels.runtime"}
KERNEL_MODULES |= {f"moec.kernels.mixers.{kind}" for kind in LINEAR_MIXERS}
ALLOWED_IMPORTS = {"__future__", "math", "torch", "torch.nn.functional", "torch.nn", *KERNEL_MODULES}
PARALLELIZE_IMPORTS = {"moec.dist"}  # inside parallelize() only


def imported_modules(src: str | ast.AST) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(src) if isinstance(src, str) else src):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mods.add(node.module or "")
            if node.module == "torch":
                mods |= {f"torch.{a.name}" for a in node.names}
    return mods


def defined_classes(src: str) -> set[str]:
    return {n.name for n in ast.parse(src).body if isinstance(n, ast.ClassDef)}


ROOT = Path(__file__).resolve().parents[2]
# the repository's ruff configuration, plus: moec is a third-party package to a generated file (as it is in a build
# folder), and unused arguments and unpacked variables are generator residue too
RUFF_CONFIG = ["--config", str(ROOT / "pyproject.toml"), "--config", "lint.isort.known-third-party = ['moec']"]
RUFF_CHECK = ["check", *RUFF_CONFIG, "--extend-select", "ARG,RUF059", "--output-format", "concise", "--no-cache"]


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    command = [shutil.which("ruff")] if shutil.which("ruff") else [sys.executable, "-m", "ruff"]
    return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def assert_ruff_clean(folder: Path) -> None:
    """Every .py file under ``folder`` passes ``ruff check`` and is left as it is by ``ruff format``."""
    checked = ruff(*RUFF_CHECK, str(folder))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    formatted = ruff("format", *RUFF_CONFIG, "--no-cache", "--diff", str(folder))
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


def layer_table(src: str) -> list:
    """Each layer's row of the generated LAYERS table (or an empty row per layer when the layers are alike), read
    by running the module's constant assignments alone."""
    namespace: dict = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets):
            try:
                exec(compile(ast.Module([node], []), "model.py", "exec"), namespace)
            except NameError:  # a constant computed by a function of the file (YaRN's factors)
                pass
    if "LAYERS" in namespace:
        return [row if isinstance(row, tuple) else (row,) for row in namespace["LAYERS"]]
    return [()] * namespace["N_LAYERS"]


@pytest.mark.parametrize("path", shipped_specs(), ids=lambda p: p.stem)
def test_every_shipped_spec_renders_tidy_standalone_source(path, tmp_path):
    plan = load_model(str(path))
    if expect_refusal_if_refused(path, lambda: render_model_source(plan)):
        return
    src = render_model_source(plan)
    compile(src, "model.py", "exec")
    (tmp_path / "model.py").write_text(src)
    assert_ruff_clean(tmp_path)
    body = ast.parse(src).body
    parallelize = next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == "parallelize")
    # moec.dist only inside parallelize(): the model itself needs no more than torch and moec.kernels
    assert imported_modules(parallelize) == PARALLELIZE_IMPORTS
    assert imported_modules(ast.Module([n for n in body if n is not parallelize], [])) <= ALLOWED_IMPORTS
    assert max(len(line) for line in src.splitlines()) <= 120
    assert "\n\n\n\n" not in src and src.endswith("\n") and not src.endswith("\n\n")
    assert not any(line != line.rstrip() for line in src.splitlines())
    # one factory builds every layer; the table says which layer is dense and which MoE
    assert src.count("def make_block(") == 1 and "self.layers.append" not in src
    rows = layer_table(src)
    assert len(rows) == plan.n_layers
    kinds = ["moe" if isinstance(lp.ffn, MoEPlan) else "none" if isinstance(lp.ffn, AbsentPlan) else "dense"
             for lp in plan.layers]  # fmt: skip
    if len(set(kinds)) > 1:  # the FFN is the table's first column when layers differ in it
        assert [row[0] for row in rows] == kinds
    mixers = [lp.mixer_kind for lp in plan.layers]
    if len(set(mixers)) > 1:  # then the token mixer, named by its kind
        assert [row[int(len(set(kinds)) > 1)] for row in rows] == mixers
    classes = defined_classes(src)
    kind = {"mla": "MLA", "moa": "MoA"}.get(plan.layers[0].attention.kind, "Attention")
    attention = any(lp.has_attention for lp in plan.layers)
    assert {"MLA", "MoA", "Attention"} & classes == ({kind} if attention else set())
    # the other token mixers are imported from moec.kernels.mixers, one import per kind used, not defined here
    used = {lp.mixer_kind for lp in plan.layers} & set(LINEAR_MIXERS)
    assert {m for m in imported_modules(src) if m.startswith("moec.kernels.mixers.")} == {
        f"moec.kernels.mixers.{kind}" for kind in used
    }
    assert ("Router" in classes) == bool(plan.moe_layers)
    assert ("LoRAExperts" in classes) == (path.stem == "lora-moe")
    assert ("MTPModule" in classes) == bool(plan.mtp)
    assert (plan.description or "\0") not in src  # the description never reaches the code


def assert_named_only_with_the_feature(text: str, baseline: str, words: list[str]) -> None:
    """Each of ``words`` is in the model.py of ``text`` and not in that of ``baseline`` (a spec without the feature):
    the generated file holds a feature's code only when the plan uses it."""
    with_it, without = render_model_source(plan_of(text)), render_model_source(plan_of(baseline))
    for w in words:
        assert w in with_it and w not in without, w


def test_source_names_only_what_the_plan_uses():
    dense = render_model_source(plan_of(CASES["llama"]))
    assert "Router" not in dense and "sinks" not in dense and "window" not in dense
    # a dense model takes the cache and the aux records from moec.kernels, not the expert computation
    assert "get_backend" not in dense and "kernels_for" not in dense and "expert_ffn" not in dense
    assert "ROPE_SCALING_FACTOR" not in dense and "LayerNorm" not in dense
    ds = render_model_source(plan_of(TINY_DEEPSEEK_V3))
    assert "softmax(-1)  # (T, E)" not in ds and "probs = logits.sigmoid()" in ds  # specialised routing
    assert "capacity" not in ds and "self.z_loss_coeff" not in ds and "apply_rope(" not in ds
    # YaRN's attention factor is a ratio of two equal mscales here: exactly 1, so cos and sin are left alone
    assert (
        "ROPE_ATTENTION_FACTOR" not in ds
        and "mscale_all_dim: 1.0" in TINY_DEEPSEEK_V3
        and "mscale: 1.0" in TINY_DEEPSEEK_V3
    )


# ---------------------------------------------------------------------------------------------
# nothing from the spec reaches the code except checked numbers and names

HOSTILE = '"""\nimport os\nos.system("echo pwned")\n"""'


def test_hostile_description_is_not_pasted(tmp_path):
    text = CASES["llama"].replace("name: tiny", f"name: tiny\ndescription: {HOSTILE!r}")
    plan = plan_of(text)
    assert "os.system" in plan.description
    src = render_model_source(plan)
    assert "os.system" not in src and "pwned" not in src
    assert imported_modules(src) <= ALLOWED_IMPORTS | PARALLELIZE_IMPORTS
    import_source(src, tmp_path).Model()


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p.replace(name=HOSTILE),
        lambda p: p.replace(name="ok\nimport os"),
        lambda p: p.replace(d_model="32); import os; (1"),
        lambda p: p.replace(vocab_size=True),
        lambda p: p.replace(norm=dataclasses.replace(p.norm, eps=float("inf"))),
        lambda p: p.replace(norm=dataclasses.replace(p.norm, kind="rmsnorm'; import os; '")),
        lambda p: p.replace(frozen=("attention\nimport os",)),
        lambda p: p.replace(embedding_multiplier="2.0; import os"),
        lambda p: p.replace(
            layers=tuple(
                dataclasses.replace(lp, ffn=dataclasses.replace(lp.ffn, activation='swiglu"); import os; ("'))
                for lp in p.layers
            )
        ),
        lambda p: p.replace(
            layers=tuple(
                dataclasses.replace(lp, attention=dataclasses.replace(lp.attention, window="4); import os; (1"))
                for lp in p.layers
            )
        ),
        lambda p: p.replace(
            layers=tuple(
                dataclasses.replace(
                    lp, attention=dataclasses.replace(lp.attention, rope_theta="1.0) or __import__('os")
                )
                for lp in p.layers
            )
        ),
    ],
    ids=[
        "name-quotes",
        "name-newline",
        "d_model-str",
        "bool-for-int",
        "inf",
        "norm-kind",
        "frozen",
        "multiplier",
        "activation",
        "window",
        "layer-rope-theta",
    ],
)
def test_hostile_plan_values_are_refused(change):
    plan = change(plan_of(CASES["llama"]))
    with pytest.raises(ValueError):
        render_model_source(plan)


def test_plans_no_spec_produces_are_refused_not_mis_rendered():
    mixed = plan_of(CASES["mixtral-window"])
    moe_layers = [lp for lp in mixed.layers if lp.index in mixed.moe_layers]
    other = dataclasses.replace(moe_layers[0].ffn, n_experts=8)
    layers = tuple(dataclasses.replace(lp, ffn=other) if lp is moe_layers[0] else lp for lp in mixed.layers)
    with pytest.raises(ValueError, match="one MoE configuration"):
        render_model_source(mixed.replace(layers=layers))
    ds = plan_of(TINY_DEEPSEEK_V3)
    gqa = plan_of(CASES["llama"]).layers[0].attention
    layers = (dataclasses.replace(ds.layers[0], attention=gqa), *ds.layers[1:])
    with pytest.raises(ValueError, match="attention"):
        render_model_source(ds.replace(layers=layers))
