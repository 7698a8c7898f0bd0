"""Spec-to-spec comparison: field-level differences of the resolved models and metric deltas."""

from __future__ import annotations

import dataclasses
from typing import Any

from moec.analyze.render import has_other_mixers, layer_pattern, mixer_runs
from moec.analyze.report import Analysis
from moec.spec.plan import ResolvedModel

IGNORED = {"name", "spec_hash", "source_file", "description", "extra"}


def _flatten(prefix: str, v: Any, out: dict[str, Any], defaults: dict[str, Any]) -> None:
    """``out``: every leaf of a plan by dotted path; ``defaults``: the declared default of each leaf that has
    one (the plan dataclasses carry the schema's defaults)."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        for f in dataclasses.fields(v):
            if not prefix and f.name in IGNORED:
                continue
            key = f"{prefix}.{f.name}" if prefix else f.name
            if f.default is not dataclasses.MISSING:
                defaults[key] = list(f.default) if isinstance(f.default, tuple) else f.default
            _flatten(key, getattr(v, f.name), out, defaults)
    elif isinstance(v, (list, tuple)) and v and dataclasses.is_dataclass(v[0]):
        for i, x in enumerate(v):
            _flatten(f"{prefix}[{i}]", x, out, defaults)
    else:
        out[prefix] = list(v) if isinstance(v, tuple) else v


def _layer_groups(m: ResolvedModel, defaults: dict[str, Any]) -> dict[str, Any]:
    """Per-layer plans collapsed to `field: value` for the layers that share it, so a diff of a 61-layer
    model reads as a few lines ("layers 3..60 ffn.n_experts: 256") instead of 61."""
    out: dict[str, Any] = {}
    per_layer: list[dict[str, Any]] = []
    for lp in m.layers:
        flat: dict[str, Any] = {}
        _flatten("attention", lp.attention, flat, defaults)
        _flatten("ffn", lp.ffn, flat, defaults)
        _flatten("mixer", lp.mixer, flat, defaults)  # None (attention) is left out as a missing value
        per_layer.append(flat)
    keys = sorted({k for f in per_layer for k in f})
    for k in keys:
        vals = [f.get(k) for f in per_layer]
        start = 0
        for i in range(1, len(vals) + 1):
            if i == len(vals) or vals[i] != vals[start]:
                if vals[start] is not None:
                    span = f"{start}" if i - 1 == start else f"{start}..{i - 1}"
                    out[f"layers {span} {k}"] = vals[start]
                start = i
    return out


def _changed(fa: dict[str, Any], fb: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """The fields whose values differ, leaving out a field only one side has that holds its default there
    (a MoE's default router options against a dense model's nothing are not changes anyone made)."""

    def leaf(k: str) -> str:
        return k.split(" ", 2)[2] if k.startswith("layers ") else k

    def defaulted(k: str, f: dict[str, Any]) -> bool:
        return leaf(k) in defaults and f[k] == defaults[leaf(k)]

    out = []
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k) == fb.get(k):
            continue
        if (k not in fb and defaulted(k, fa)) or (k not in fa and defaulted(k, fb)):
            continue
        out.append(k)
    return out


def diff_models(a: ResolvedModel, b: ResolvedModel, ra: Analysis, rb: Analysis) -> dict[str, Any]:
    """Fields that differ (a field one side lacks and the other holds at its default is no difference) and
    the change in every headline metric."""
    fa: dict[str, Any] = {}
    fb: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for m, f in ((a, fa), (b, fb)):
        _flatten("", dataclasses.replace(m, layers=(), mtp=()), f, defaults)
        f.pop("layers")
        f.pop("mtp")
        f["layer pattern"] = layer_pattern([l.ffn.kind for l in m.layers])
        f["layer mixers"] = mixer_runs([l.mixer_kind for l in m.layers], most=len(m.layers))
        f["mtp layers"] = len(m.mtp)
    fields = [{"field": k, "a": fa.get(k), "b": fb.get(k)} for k in _changed(fa, fb, defaults)]
    ga, gb = _layer_groups(a, defaults), _layer_groups(b, defaults)
    if a.n_layers == b.n_layers:
        fields += [
            {"field": k, "a": ga.get(k), "b": gb.get(k)} for k in sorted(_changed(ga, gb, defaults), key=_layer_key)
        ]

    def metric(name: str, x: float, y: float, unit: str = "") -> dict[str, Any]:
        return {
            "metric": name,
            "a": x,
            "b": y,
            "delta": y - x,
            "pct": (100.0 * (y - x) / x) if x else None,
            "unit": unit,
        }

    metrics = [
        metric("total params", ra.params.total, rb.params.total),
        metric("active params", ra.params.active, rb.params.active),
        metric("active params (no embedding)", ra.params.active_non_embedding, rb.params.active_non_embedding),
        metric(f"fwd FLOPs/token (S={ra.seq})", ra.flops.forward, rb.flops.forward),
        metric("training FLOPs/token", ra.flops.training, rb.flops.training),
        metric("weights", ra.memory.weights_bytes, rb.memory.weights_bytes, "bytes"),
        metric("KV cache/token", ra.memory.kv_cache_bytes_per_token, rb.memory.kv_cache_bytes_per_token, "bytes"),
        metric("AdamW training state", ra.memory.training_state_bytes, rb.memory.training_state_bytes, "bytes"),
    ]
    if has_other_mixers(ra) or has_other_mixers(rb):  # the decode step and the state of other token mixers
        metrics[4:4] = [metric(f"decode FLOPs/token (after S={ra.seq})", ra.flops.decode_step, rb.flops.decode_step)]
        metrics.append(
            metric(
                "mixer state/sequence", ra.memory.state_bytes_per_sequence, rb.memory.state_bytes_per_sequence, "bytes"
            )
        )
    return {"a": a.name, "b": b.name, "fields": fields, "metrics": metrics}


def _layer_key(k: str) -> tuple[str, int]:
    span = k.split()[1]
    return (k.split()[2], int(span.split("..")[0]))
