"""`moec generate`: greedy output equals transformers' ``generate`` token for token on tiny random checkpoints
of four families; the CLI's prompts, sources and refusals; sampling against its definition."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

import moec  # noqa: E402
from moec.cli import cli  # noqa: E402
from moec.generate import generate, next_tokens  # noqa: E402
from tests.hf.test_weights import CONFIGS, make_hf  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = [[5, 17, 99, 3, 64, 8, 120, 33], [1, 2, 3, 4, 5, 6, 7, 8]]
NEW = 20  # 8 + 20 positions: past gpt-oss's window of 4 and DeepSeek-V3's YaRN original length of 16


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """model_type → (transformers model, the folder save_pretrained wrote), built once per module."""
    saved = {}

    def get(model_type: str):
        if model_type not in saved:
            hf = make_hf(model_type)  # every weight random, routers with logits of order 1
            folder = tmp_path_factory.mktemp(model_type)
            hf.save_pretrained(folder)
            saved[model_type] = (hf, folder)
        return saved[model_type]

    return get


def hf_greedy(hf, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """transformers' own generate, greedy, exactly ``new`` tokens (no end-of-sequence stop)."""
    with torch.no_grad():
        out = hf.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new,
            do_sample=False, eos_token_id=None, pad_token_id=0,
        )  # fmt: skip
    return out[:, prompt.shape[1] :]


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "deepseek_v3", "gpt_oss"])
def test_greedy_generate_equals_transformers_generate(checkpoints, model_type):
    hf, folder = checkpoints(model_type)
    prompt = torch.tensor(PROMPT)
    want = hf_greedy(hf, prompt, NEW)
    gen = generate(moec.from_hf(folder), prompt, NEW)
    assert gen.new_tokens.tolist() == want.tolist()
    assert len(set(want[0].tolist())) > 3  # the continuation is not one token repeated: the test has teeth
    # every MoE layer reads between k and the batch's k·B experts per step
    k = CONFIGS[model_type]["num_experts_per_tok"]
    assert all(k <= n <= 2 * k for counts in gen.experts.values() for n in counts)


def test_the_cli_prints_transformers_tokens_and_the_rates(checkpoints):
    hf, folder = checkpoints("mixtral")
    prompt = torch.tensor(PROMPT[:1])
    want = hf_greedy(hf, prompt, 6)[0].tolist()
    r = run("generate", str(folder), "--prompt-tokens", ",".join(map(str, PROMPT[0])), "--max-new-tokens", "6")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert " | " + " ".join(map(str, want)) in r.output
    assert any(line.startswith("prefill  1×8 tokens in") and "tokens/s" in line for line in lines)
    assert any(line.startswith("decode   1×5 tokens in") and "tokens/s" in line for line in lines)
    assert any("ms per output token; median step" in line for line in lines)
    assert "experts touched per decode step" in r.output
    assert max(len(line) for line in lines) <= 80
    r = run(
        "generate", str(folder), "--prompt-tokens", "1 2 3", "--max-new-tokens", "4", "--batch", "3", "--format", "json"
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert len(data["new_tokens"]) == 3 and data["new_tokens"][0] == data["new_tokens"][2]  # greedy: rows agree
    assert data["decode_steps"] == 3 and set(data["experts_touched_per_step"]) == {"0", "1"}


def test_prompt_text_goes_through_the_tokenizer_json(checkpoints, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    hf, folder = checkpoints("qwen3_moe")
    words = [f"w{i}" for i in range(CONFIGS["qwen3_moe"]["vocab_size"])]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    try:
        want = hf_greedy(hf, torch.tensor([[7, 9, 11]]), 5)[0].tolist()
        r = run("generate", str(folder), "--prompt", "w7 w9 w11", "--max-new-tokens", "5")
    finally:
        (folder / "tokenizer.json").unlink()
    assert r.exit_code == 0, r.output
    assert "[0] w7 w9 w11‖" + " ".join(words[i] for i in want) in r.output


TINY_SPEC = ("textbook-moe", "--set", "model.d_model=64", "--set", "model.n_layers=2", "--set", "model.vocab_size=128",
             "--set", "moe.d_ff=32", "--set", "model.max_seq_len=16")  # fmt: skip


def router_sets(kind: str) -> tuple[str, ...]:
    sets = (f"moe.router.kind={kind}", "moe.router.normalize_topk=false", "moe.balance.load_balance_coeff=0")
    return tuple(a for s in sets for a in ("--set", s))


@pytest.mark.parametrize(
    "args, message",
    [
        (("--max-new-tokens", "2"), "give exactly one of --prompt-tokens and --prompt"),
        (("--prompt-tokens", "1,x"), "expected token ids like 1,2,3"),
        (("--prompt-tokens", "1,200"), "prompt token 200 is outside the vocabulary [0, 128)"),
        (("--prompt-tokens", "1,2,3", "--max-new-tokens", "15"), "need 17 positions; textbook-moe has max_seq_len 16"),
        (("--prompt", "hello"), "--prompt needs a tokenizer.json beside the model"),
        # nan passes click's range comparisons; the sampler would meet it as an internal error
        (("--prompt-tokens", "1", "--temperature", "nan"), "'--temperature': 'nan' is not a finite number"),
        (("--prompt-tokens", "1", "--temperature", "inf"), "'--temperature': 'inf' is not a finite number"),
        (("--prompt-tokens", "1", "--top-p", "nan"), "'--top-p': 'nan' is not a finite number"),
        # routings a cached decode cannot reproduce, refused by name (moec.nn.router.routing_decode_refusals)
        (
            ("--prompt-tokens", "1,2", "--max-new-tokens", "4", *router_sets("expert_choice")),
            "textbook-moe: moe.router.kind expert_choice (layers 0, 1): each expert picks its tokens",
        ),
    ],
)
def test_bad_requests_are_one_error_line_and_exit_2(args, message):
    r = run("generate", *TINY_SPEC, *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


def test_a_spec_with_capacity_is_decoded_without_it_and_says_so():
    r = run("generate", "switch-base-8", "--set", "model.d_model=48", "--set", "model.n_layers=2", "--set",
            "model.vocab_size=128", "--set", "ffn.d_ff=32", "--set", "moe.d_ff=32", "--prompt-tokens", "1,2,3",
            "--max-new-tokens", "3")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "note: capacity_factor of 1 MoE layer(s) left out: decode routes every token" in r.output


def test_a_build_folder_with_weights_generates_what_its_spec_does(tmp_path):
    """`moec build --weights` writes the seeded weights; generating from the folder and from the spec (same seed)
    gives the same tokens, and a different seed does not."""
    out = tmp_path / "built"
    assert run("build", *TINY_SPEC, "-o", str(out), "--weights", "--seed", "3").exit_code == 0
    common = ("--prompt-tokens", "1,2,3", "--max-new-tokens", "8", "--format", "json")
    tokens = [json.loads(run("generate", *src, *common).stdout)["new_tokens"] for src in
              ((str(out),), (*TINY_SPEC, "--seed", "3"), (*TINY_SPEC, "--seed", "4"))]  # fmt: skip
    assert tokens[0] == tokens[1] != tokens[2]


def test_a_build_folder_with_damaged_weights_is_one_error(tmp_path):
    """A truncated model.safetensors was an internal error (safetensors' own exception type); a folder in its place
    read as "no weights" and decoded random ones."""
    out = tmp_path / "built"
    assert run("build", *TINY_SPEC, "-o", str(out), "--weights").exit_code == 0
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    r = run("generate", str(out), "--prompt-tokens", "1,2")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"error: {weights}: does not hold this plan's weights (" in r.output
    weights.unlink()
    weights.mkdir()
    r = run("generate", str(out), "--prompt-tokens", "1,2")
    assert r.exit_code == 2 and f"error: {weights}: is not a file" in r.output, r.output


def test_a_build_folder_whose_model_py_was_edited_or_deleted_says_so(tmp_path):
    """The folder's model.py is the user's to edit: renamed parameters, or an error raised while decoding, are
    one error naming the file (exit 2, not an internal error), and a deleted model.py is a note that moec.nn
    decodes instead."""
    out = tmp_path / "built"
    assert run("build", *TINY_SPEC, "-o", str(out)).exit_code == 0
    model_py = out / "model.py"
    original = model_py.read_text()
    common = ("--prompt-tokens", "1,2,3", "--max-new-tokens", "2")
    model_py.write_text(original.replace("self.lm_head", "self.out_head"))
    r = run("generate", str(out), *common)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"error: {model_py}: its parameters are not the plan's" in r.output and '"out_head.weight"' in r.output
    header = "    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None"
    assert original.count(header) == 1
    broken = "    def forward(self, tokens, cache=None, start=0):\n        raise KeyError('edited')\n\n"
    model_py.write_text(original.replace(header, broken + header.replace("def forward", "def unused_forward")))
    r = run("generate", str(out), *common)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"error: {model_py}: fails while decoding (KeyError: 'edited')" in r.output
    model_py.unlink()
    r = run("generate", str(out), *common)
    assert r.exit_code == 0, r.output
    assert f"note: {out} holds no model.py: decoded by moec.nn's model of its plan" in " ".join(r.output.split())


def test_sampling_follows_its_definition():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).expand(400, 3)
    g = torch.Generator().manual_seed(0)
    assert next_tokens(logits, temperature=0.0, top_p=1.0, generator=None).unique().tolist() == [0]
    # top-p 0.5: the first token alone already holds 0.6 ≥ 0.5; top-p 0.8: the first two (0.9), never the third
    assert next_tokens(logits, temperature=1.0, top_p=0.5, generator=g).unique().tolist() == [0]
    drawn = next_tokens(logits, temperature=1.0, top_p=0.8, generator=g)
    assert set(drawn.tolist()) == {0, 1}
    assert abs((drawn == 0).float().mean().item() - 0.6 / 0.9) < 0.1  # renormalised over the nucleus
    # seeded: the same seed draws the same tokens
    a = next_tokens(logits, temperature=1.0, top_p=1.0, generator=torch.Generator().manual_seed(5))
    b = next_tokens(logits, temperature=1.0, top_p=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and set(a.tolist()) == {0, 1, 2}
    # a temperature float32 rounds to 0 (1e-320) and one that overflows logits / T (1e-40) draw the argmax; the
    # first was nan probabilities, an internal error through the CLI
    for tiny in (1e-320, 1e-40):
        assert next_tokens(logits * 100, temperature=tiny, top_p=1.0, generator=g).unique().tolist() == [0]


def test_a_kv_cache_that_does_not_fit_is_refused_before_it_is_allocated(monkeypatch):
    # TINY_SPEC: 2 layers of 8 KV heads of width 8 in fp32, so K and V take 2·8·8·4 = 512 B per layer and position;
    # 4,096 copies × 15 positions (1 prompt + 15 new − 1) × 2 layers × 512 B = 60 MiB, over the 32 MiB said free
    monkeypatch.setattr("moec.nn.build.available_bytes", lambda device: 32 << 20)
    r = run("generate", *TINY_SPEC, "--prompt-tokens", "1", "--max-new-tokens", "15", "--batch", "4096")
    assert r.exit_code == 2, r.output
    assert f"its KV cache at batch 4096 × 15 positions needs about {60 / 1024:.1f} GiB in fp32" in r.output
    assert "lower --batch or --max-new-tokens" in r.output and "Traceback" not in r.output


def test_a_model_in_a_dtype_decoding_does_not_run_in_is_one_clear_error():
    import torch

    from moec.errors import CommandError
    from moec.generate.source import require_cache_memory
    from tests.tiny_specs import TINY_MOE, tiny_plan

    with pytest.raises(CommandError, match=r"tiny-moe: decoding runs in fp32, bf16, fp16; the model is torch.float64"):
        require_cache_memory(tiny_plan(TINY_MOE), torch.float64, batch=1, positions=4, device="cpu", hint="")


def test_a_hugging_face_encoder_decoder_is_refused_from_its_config_before_any_weight(tmp_path):
    # a folder with config.json alone: the refusal comes from the config, so no checkpoint is looked for or read
    config = transformers.SwitchTransformersConfig(
        vocab_size=64,
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        num_experts=2,
        num_sparse_encoder_layers=1,
        num_sparse_decoder_layers=1,
    )
    config.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    r = run("generate", str(tmp_path), "--prompt-tokens", "1,2")
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "moec generate:" in text and "is an encoder-decoder model (2 encoder and 2 decoder layers)" in text
    assert "Traceback" not in r.output
