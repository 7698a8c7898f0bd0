"""Decode speed of a tiny-but-not-trivial Mixtral-shaped model: moec's cached decode against transformers'
`generate` on the same checkpoint, and `moec bench --decode`'s measured tokens/s against the roofline's
prediction on this machine (BENCHMARKS.md, "Decode (`python bench/decode.py`, issue 19)").

python bench/decode.py [--batches 1,8,64] [--prompt 32] [--new 32] [--threads 1] [--runs 3]

The model: transformers' MixtralForCausalLM, vocabulary 32,000, d 512, 4 layers, 8 heads of 64 (2 KV heads),
8 experts of width 1,792 top-2 (Mixtral-8x7B's ratios at 1/8 of its width), random weights, fp32: 123.5M
parameters, 41.0M active per token besides the embedding. It is saved with save_pretrained and loaded with moec.from_hf, so both
sides hold the same weights; greedy output is compared token for token.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

CONFIG = {"vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1792, "num_hidden_layers": 4,
          "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64, "num_local_experts": 8,
          "num_experts_per_tok": 2, "max_position_embeddings": 512, "rope_theta": 1e6,
          "tie_word_embeddings": False}  # fmt: skip


def make_checkpoint(folder: Path):  # type: ignore[no-untyped-def]
    import transformers

    cfg = transformers.MixtralConfig(**copy.deepcopy(CONFIG))
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = transformers.MixtralForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("gate.weight"):  # routers with logits of order 1: real, varied choices
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    hf.save_pretrained(folder)
    return hf


def _hf_seconds(hf, prompt: torch.Tensor, new: int) -> tuple[float, torch.Tensor]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new,
            do_sample=False, eos_token_id=None, pad_token_id=0,
        )  # fmt: skip
    return time.perf_counter() - t0, out[:, prompt.shape[1] :]


def against_transformers(hf, folder: Path, batches: list[int], args) -> list[str]:  # type: ignore[no-untyped-def]
    """Rows of the markdown table: decode tokens/s of both, end to end and decode only, and whether the
    greedy tokens agree. transformers' decode-only time is generate(new) − generate(1), medians of runs."""
    import moec
    from moec.generate import generate

    model = moec.from_hf(folder)
    rows = []
    for b in batches:
        prompt = torch.randint(CONFIG["vocab_size"], (b, args.prompt), generator=torch.Generator().manual_seed(b))
        hf_full, hf_one, ours_total, ours_decode = [], [], [], []
        for _ in range(args.runs):
            s, want = _hf_seconds(hf, prompt, args.new)
            hf_full.append(s)
            hf_one.append(_hf_seconds(hf, prompt, 1)[0])
            gen = generate(model, prompt, args.new, count_experts=False)
            ours_total.append(gen.prefill_s + gen.decode_s)
            ours_decode.append(gen.decode_s)
        same = gen.new_tokens.tolist() == want.tolist()
        hf_s, ours_s = statistics.median(hf_full), statistics.median(ours_total)
        hf_dec = statistics.median(hf_full) - statistics.median(hf_one)
        ours_dec = statistics.median(ours_decode)
        steps = b * (args.new - 1)
        rows.append(
            f"| {b} | {b * args.new / ours_s:,.1f} | {b * args.new / hf_s:,.1f} | {hf_s / ours_s:.2f}× | "
            f"{steps / ours_dec:,.1f} | {steps / hf_dec:,.1f} | {hf_dec / ours_dec:.2f}× | {'yes' if same else 'NO'} |"
        )
        print(rows[-1], flush=True)
    return rows


def against_roofline(folder: Path, batches: list[int], args) -> list[str]:  # type: ignore[no-untyped-def]
    from moec.bench.decode import DecodeOptions, render_decode, run_decode_bench

    opts = DecodeOptions(batches=tuple(batches), context=args.prompt, steps=args.new, warmup=2,
                         threads=args.threads)  # fmt: skip
    report = run_decode_bench(str(folder), opts)
    print(render_decode(report), flush=True)
    acc = report["accelerator"]
    rows = [f"yardsticks: {acc['peak_flops'] / 1e9:,.1f} GFLOP/s, {acc['hbm_bytes_per_s'] / 1e9:,.2f} GB/s"]
    for r in report["rows"]:
        rows.append(
            f"| {r['batch']} | {r['measured_tokens_per_s']:,.1f} | {r['predicted_tokens_per_s']:,.1f} | "
            f"{r['ratio']:.3f} | {r['predicted_bound']} | {r['predicted_bytes'] / 1e6:,.1f} MB | "
            f"{r['predicted_flops'] / 1e9:,.2f} GFLOP | {r['step_s_median'] * 1e3:,.1f} ms | "
            f"{r['predicted_step_s'] * 1e3:,.2f} ms | {r['distinct_experts_measured']:.1f} / "
            f"{r['distinct_experts_predicted']:.1f} |"
        )
    rows.append(f"machine: {report['machine']}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        hf = make_checkpoint(folder)
        print(f"parameters: {sum(p.numel() for p in hf.parameters()):,}", flush=True)
        out = []
        if not args.skip_transformers:
            out += against_transformers(hf, folder, batches, args)
        del hf
        out += against_roofline(folder, batches, args)
    print("\n".join(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
