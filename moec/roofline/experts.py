"""How many distinct routed experts a step reads (docs/roofline.md, "Routed experts: the expected distinct experts").

A token picks k of E experts. If every token picks expert i with probability p_i (Σ p_i = k) independently
of the other tokens, expert i escapes all T tokens of a step with probability (1 − p_i)^T, so the expected
number of distinct experts touched is Σ_i [1 − (1 − p_i)^T]. Under uniform routing p_i = k/E, which gives
E·(1 − (1 − k/E)^T). A measured load histogram (``moec smoke-run --format json``) gives p_i = k·c_i / Σ c.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from moec.errors import Problem, SpecError

SMOKE_SCHEMA = "moec.smoke/1"


def expected_distinct(n_experts: int, top_k: int, tokens: float) -> float:
    """E·(1 − (1 − k/E)^T): the expected number of distinct experts T uniformly routed tokens touch."""
    return n_experts * (1 - (1 - top_k / n_experts) ** tokens)


def expected_distinct_loaded(pick: Sequence[float], tokens: float) -> float:
    """Σ_i [1 − (1 − p_i)^T] for the per-token pick probabilities ``pick`` (Σ p_i = k)."""
    return sum(1 - (1 - min(p, 1.0)) ** tokens for p in pick)


def pick_probabilities(tokens_per_expert: Sequence[int], top_k: int) -> list[float]:
    """p_i = k·c_i / Σ c: expert i's share of the routing slots, times the k slots each token fills."""
    total = sum(tokens_per_expert)
    return [top_k * c / total for c in tokens_per_expert]


def read_load_file(file: str) -> dict[int, list[int]]:
    """``layer index → tokens per expert`` from a smoke-run JSON report; a SpecError naming the file and the
    field of every problem (JSON has no useful line for a value, so the field path locates it)."""
    from moec.spec.load import read_text_file

    text = read_text_file(file, max_bytes=64 << 20, kind="smoke-run report")
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError([Problem(file, e.lineno, e.colno, "", f"not JSON: {e.msg}")]) from None
    if not isinstance(data, dict) or data.get("schema") != SMOKE_SCHEMA:
        raise SpecError(
            [Problem(file, None, None, "schema", f"expected a `moec smoke-run --format json` report ({SMOKE_SCHEMA})")]
        )
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise SpecError([Problem(file, None, None, "layers", "holds no MoE layer's load histogram")])
    loads: dict[int, list[int]] = {}
    problems = []
    for i, entry in enumerate(layers):
        where = f"layers[{i}]"
        counts = entry.get("tokens_per_expert") if isinstance(entry, dict) else None
        index = entry.get("layer") if isinstance(entry, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            problems.append(Problem(file, None, None, f"{where}.layer", "expected a layer index"))
        elif not isinstance(counts, list) or not counts or not all(_count(c) for c in counts):
            problems.append(Problem(file, None, None, f"{where}.tokens_per_expert", "expected a list of token counts"))
        elif not sum(counts):
            problems.append(Problem(file, None, None, f"{where}.tokens_per_expert", "every count is 0"))
        elif index in loads:  # a second histogram would silently replace the first
            problems.append(Problem(file, None, None, f"{where}.layer", f"layer {index} is given twice"))
        else:
            loads[index] = counts
    if problems:
        raise SpecError(problems)
    return loads


def _count(c: Any) -> bool:
    return isinstance(c, int) and not isinstance(c, bool) and c >= 0


def pooled(loads: dict[int, list[int]], file: str) -> list[int]:
    """The histograms of every layer summed expert by expert (they must have one length)."""
    sizes = {len(c) for c in loads.values()}
    if len(sizes) != 1:
        raise SpecError(
            [Problem(file, None, None, "layers", f"histograms of {sorted(sizes)} experts cannot be pooled")]
        )
    return [sum(column) for column in zip(*loads.values(), strict=True)]


def layer_picks(
    loads: dict[int, list[int]], moe_layers: dict[int, tuple[int, int]], file: str, *, pool: bool = False
) -> dict[int, list[float]]:
    """Pick probabilities per MoE layer of the model (``moe_layers``: index → (E, k)); every MoE layer needs
    its histogram, of E experts, and no expert may take more slots than there were tokens (c_i ≤ Σc / k).
    With ``pool``, every MoE layer takes the file's histograms summed over its layers (a smoke-run at a
    reduced scale has fewer layers, with the same experts)."""
    problems = []
    if pool:
        loads = dict.fromkeys(moe_layers, pooled(loads, file))
    if sorted(loads) != sorted(moe_layers):
        problems.append(
            Problem(
                file,
                None,
                None,
                "layers",
                f"histograms for layers {sorted(loads)}, but the model's MoE layers are {sorted(moe_layers)} (a smoke-run at --scale full has them all; --load-pool applies their sum to every layer)",
            )
        )
        raise SpecError(problems)
    picks = {}
    for index, (n_experts, top_k) in moe_layers.items():
        counts = loads[index]
        if len(counts) != n_experts:
            wrong = f"{len(counts)} experts in the histogram, {n_experts} in the model"
        elif max(p := pick_probabilities(counts, top_k)) > 1 + 1e-9:
            wrong = f"an expert took more than one slot per token: the histogram was not routed top-{top_k}"
        else:
            picks[index] = p
            continue
        problems.append(Problem(file, None, None, f"layer {index}", wrong))
    if problems:
        raise SpecError(problems)
    return picks
