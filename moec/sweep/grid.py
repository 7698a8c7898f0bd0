"""What `moec sweep` is asked: grid axes, --keep filters, objectives and a budget, parsed from the command
line into plain values; every problem names the option it came from."""

from __future__ import annotations

import itertools
import math
import operator
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from moec.errors import CommandError, SpecError

# every metric a row has, in column order; the sweep's keep filters, objectives and budget name these
METRICS = {
    "total_params": "parameters, every expert once",
    "active_params": "parameters one token touches (moec analyze's active, embedding included)",
    "forward_flops": "forward FLOPs per token at --seq (full attention)",
    "ffn_flops": "forward FLOPs per token of the FFNs: dense FFN, routed and shared experts (no router)",
    "kv_bytes_per_token": "KV cache bytes per token of context, all layers, in --kv-dtype",
    "weights_bytes": "all weights in --dtype",
    "decode_tokens_per_s": "roofline decode tokens/s at --batch and --seq on --gpu (an upper bound)",
}
BUDGET_METRICS = ("forward_flops", "ffn_flops", "active_params")  # affine in d_ff, so solvable exactly
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}


@dataclass(frozen=True)
class Axis:
    path: str  # a spec field path, as --set writes it
    values: tuple[Any, ...]  # parsed as YAML, as --set parses them
    texts: tuple[str, ...]  # as written, for --set and for the output


@dataclass(frozen=True)
class Keep:
    metric: str
    op: str
    bound: float
    text: str

    def holds(self, row: dict[str, Any]) -> bool:
        return _OPS[self.op](row[self.metric], self.bound)


@dataclass(frozen=True)
class Objective:
    metric: str
    sense: str  # "min" or "max"

    def key(self, row: dict[str, Any]) -> float:
        """Smaller is better."""
        return row[self.metric] if self.sense == "min" else -row[self.metric]


@dataclass(frozen=True)
class Budget:
    metric: str
    target: float | None  # None: the base spec's own value


def _split_values(text: str) -> list[str]:
    """``1,2,[3,4]`` → ``1``, ``2``, ``[3,4]``: commas inside brackets or braces belong to the value."""
    out, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += c in "[{"
        depth -= c in "]}"
        if c == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [v.strip() for v in out]


def parse_axis(text: str) -> Axis:
    """``moe.n_experts=8,16,64`` → an axis; the values are read as YAML, like those of --set."""
    from moec.spec.yamlio import parse_scalar

    path, eq, values = text.partition("=")
    path = path.strip()
    if not eq or not path or not values.strip():
        raise CommandError(f"--grid {text}: expected FIELD=V1,V2,... (a spec field path, as --set takes it)")
    if not all(part and part.isprintable() for part in path.split(".")):
        raise CommandError(f"--grid {text}: {path!r} is not a field path")
    texts = _split_values(values)
    if any(not t for t in texts):
        raise CommandError(f"--grid {text}: an empty value")
    if len(set(texts)) != len(texts):
        raise CommandError(f"--grid {text}: a value is listed twice")
    try:
        parsed = tuple(parse_scalar(t) for t in texts)
    except SpecError as e:
        raise CommandError(f"--grid {text}: {e.problems[0].message}") from None
    return Axis(path, parsed, tuple(texts))


def parse_axes(texts: Sequence[str]) -> list[Axis]:
    axes = [parse_axis(t) for t in texts]
    seen: set[str] = set()
    for a in axes:
        if a.path in seen:
            raise CommandError(f"--grid {a.path}: given twice; list all its values in one --grid")
        seen.add(a.path)
    return axes


def combinations(axes: Sequence[Axis]) -> Iterator[tuple[str, ...]]:
    """Every combination as --set assignments, the first axis slowest."""
    for texts in itertools.product(*(a.texts for a in axes)):
        yield tuple(f"{a.path}={t}" for a, t in zip(axes, texts, strict=True))


def _metric(name: str, option: str) -> str:
    if name not in METRICS:
        raise CommandError(f"{option}: unknown metric {name!r}; choose from {', '.join(METRICS)}")
    return name


def _number(text: str, option: str) -> float:
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise CommandError(f"{option}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise CommandError(f"{option}: {text!r} is not a finite number")
    return value


def parse_keep(text: str) -> Keep:
    """``active_params<=3e9``: a metric, a comparison, a number."""
    m = re.fullmatch(r"\s*([a-z_]+)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*", text)
    if not m:
        raise CommandError(f"--keep {text}: expected METRIC<=NUMBER (or <, >=, >, ==, !=)")
    option = f"--keep {text}"
    return Keep(_metric(m[1], option), m[2], _number(m[3], option), text.strip())


def parse_objective(text: str) -> Objective:
    """``decode_tokens_per_s:max`` or ``active_params:min`` (``min`` when the sense is left out)."""
    name, _, sense = text.strip().partition(":")
    option = f"--objective {text}"
    if sense not in ("", "min", "max"):
        raise CommandError(f"{option}: the sense is min or max, not {sense!r}")
    return Objective(_metric(name, option), sense or "min")


def parse_objectives(texts: Sequence[str]) -> list[Objective]:
    """The Pareto axes, each metric once (a repeated axis adds nothing, or contradicts itself)."""
    objectives = [parse_objective(t) for t in texts]
    metrics = [o.metric for o in objectives]
    for metric in metrics:
        if metrics.count(metric) > 1:
            raise CommandError(f"--objective {metric}: given twice; give each metric one axis")
    return objectives


def parse_budget(text: str) -> Budget:
    """``ffn_flops=base`` (the base spec's value) or ``forward_flops=7.2e9``."""
    name, eq, value = text.partition("=")
    option = f"--budget {text}"
    if not eq:
        raise CommandError(f"{option}: expected METRIC=NUMBER or METRIC=base")
    if name.strip() not in BUDGET_METRICS:
        raise CommandError(f"{option}: a budget holds one of {', '.join(BUDGET_METRICS)} fixed")
    target = None if value.strip() == "base" else _number(value.strip(), option)
    if target is not None and target <= 0:  # no width gives it; said here, not once per combination
        raise CommandError(f"{option}: a budget is a number > 0 (or base)")
    return Budget(name.strip(), target)
