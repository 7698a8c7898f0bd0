"""Each token mixer's forward on CPU: the chunked (parallel) form over a sequence, the token-by-token recurrence
that is its oracle, and one cached decode step, for the mixer of each shipped hybrid spec scaled to one width
(docs/mixers.md). Ratios within one run are what to compare; absolute times depend on the machine and its load.

python bench/mixers.py [--d-model 512] [--seq 512] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from pathlib import Path

import torch

from moec.mixers import KINDS
from moec.smoke.mixers import scale_mixer
from moec.spec import load_model

SPECS = Path(__file__).resolve().parents[1] / "specs"


def mixer_plans(d_model: int, seq: int) -> dict[str, tuple[str, object]]:
    """The first layer's plan of each mixer kind among the shipped specs, scaled to ``d_model``: kind → (spec, plan)."""
    found: dict[str, tuple[str, object]] = {}
    for path in sorted(SPECS.glob("*.yaml")):
        plan = load_model(str(path))
        for lp in plan.layers:
            kind = lp.mixer_kind
            if kind in KINDS and kind not in found:
                found[kind] = (path.stem, scale_mixer(lp.mixer, plan.d_model, d_model, seq))
    return found


def build(kind: str, plan: object, d_model: int) -> torch.nn.Module:
    module = KINDS[kind]
    cls = getattr(importlib.import_module(f"moec.kernels.mixers.{kind}"), module.MODULE)
    return cls(d_model, **module.module_kwargs(plan)).eval()


def timed(f, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Median seconds of ``f()`` over ``repeats`` runs after one warm-up."""
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d, S = args.d_model, args.seq
    print(f"d_model {d}, seq {S}, batch 1, fp32, {args.threads} threads; median of {args.repeats}")
    print(f"{'kind':15} {'spec':26} {'chunked ms':>11} {'recurrent ms':>13} {'ratio':>6} {'step ms':>8}")
    for kind, (spec, plan) in mixer_plans(d, S).items():
        m = build(kind, plan, d)
        x = torch.randn(1, S, d)
        with torch.no_grad():
            chunked = timed(lambda m=m, x=x: m(x), args.repeats)
            recurrent = timed(lambda m=m, x=x: m.recurrent(x), max(1, args.repeats // 3))
            cache = m.new_cache(1, S + 1)
            m(x, cache=cache)
            one = x[:, :1]
            step = timed(lambda m=m, one=one, cache=cache: m(one, cache=cache), args.repeats * 10)
        ratio = recurrent / chunked
        print(f"{kind:15} {spec:26} {chunked * 1e3:11.1f} {recurrent * 1e3:13.1f} {ratio:6.1f} {step * 1e3:8.2f}")


if __name__ == "__main__":
    main()
