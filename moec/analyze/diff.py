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


def _per_layer(m: ResolvedModel, defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """Each layer's plan flattened to ``field: value``, a None value left out as a missing one."""
    out = []
    for lp in m.layers:
        flat: dict[str, Any] = {}
        _flatten("attention", lp.attention, flat, defaults)
        _flatten("ffn", lp.ffn, flat, defaults)
        _flatten("mixer", lp.mixer, flat, defaults)  # None (attention) is left out as a missing value
        out.append({k: v for k, v in flat.items() if v is not None})
    return out


def _layer_changes(a: ResolvedModel, b: ResolvedModel, defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-layer fields that differ, compared layer by layer, a run of layers with the same two values on one
    row ("layers 1..3 ffn.activation": swiglu → swiglu_limit_after), so a 61-layer model's diff reads as a few
    lines and each side shows what those layers hold (a field one side lacks and the other holds at its default
    is no difference)."""
    per_a, per_b = _per_layer(a, defaults), _per_layer(b, defaults)
    rows = []
    for k in sorted({k for flat in (*per_a, *per_b) for k in flat}):
        pairs = [(fa.get(k), fb.get(k)) for fa, fb in zip(per_a, per_b, strict=True)]
        start = 0
        for i in range(1, len(pairs) + 1):
            if i < len(pairs) and pairs[i] == pairs[start]:
                continue
            va, vb = pairs[start]
            one_sided_default = None in (va, vb) and k in defaults and (vb if va is None else va) == defaults[k]
            if va != vb and not one_sided_default:
                span = f"{start}" if i - 1 == start else f"{start}..{i - 1}"
                rows.append({"field": f"layers {span} {k}", "a": va, "b": vb})
            start = i
    return sorted(rows, key=lambda row: _layer_key(row["field"]))


def _changed(fa: dict[str, Any], fb: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """The fields whose values differ, leaving out a field only one side has that holds its default there
    (a MoE's default router options against a dense model's nothing are not changes anyone made)."""

    def defaulted(k: str, f: dict[str, Any]) -> bool:
        return k in defaults and f[k] == defaults[k]

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
    if a.n_layers == b.n_layers:
        fields += _layer_changes(a, b, defaults)

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
