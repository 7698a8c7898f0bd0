"""Spec-to-spec comparison: field-level differences of the resolved models and metric deltas."""

from __future__ import annotations

from typing import Any

from moec.analyze.report import Analysis
from moec.spec.plan import ResolvedModel

IGNORED = {"name", "spec_hash", "source_file", "description"}


def _flatten(prefix: str, v: Any, out: dict[str, Any]) -> None:
    if isinstance(v, dict):
        for k, x in v.items():
            if not prefix and k in IGNORED:
                continue
            _flatten(f"{prefix}.{k}" if prefix else k, x, out)
    elif isinstance(v, (list, tuple)) and v and isinstance(v[0], dict):
        for i, x in enumerate(v):
            _flatten(f"{prefix}[{i}]", x, out)
    else:
        out[prefix] = list(v) if isinstance(v, tuple) else v


def _layer_groups(m: ResolvedModel) -> dict[str, Any]:
    """Per-layer plans collapsed to `field: value` for the layers that share it, so a diff of a 61-layer
    model reads as a few lines ("layers 3..60 ffn.n_experts: 256") instead of 61."""
    out: dict[str, Any] = {}
    per_layer: list[dict[str, Any]] = []
    for lp in m.layers:
        flat: dict[str, Any] = {}
        _flatten(
            "",
            {
                "attention": lp.attention.__dict__,
                "ffn": {**lp.ffn.__dict__, **({"router": lp.ffn.router.__dict__} if lp.ffn.kind == "moe" else {})},
            },
            flat,
        )
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


def diff_models(a: ResolvedModel, b: ResolvedModel, ra: Analysis, rb: Analysis) -> dict[str, Any]:
    fa: dict[str, Any] = {}
    fb: dict[str, Any] = {}
    for m, f in ((a, fa), (b, fb)):
        d = m.to_dict()
        d.pop("layers")
        d.pop("mtp")
        _flatten("", d, f)
        f["layer pattern"] = "".join("M" if l.ffn.kind == "moe" else "D" for l in m.layers)
        f["mtp layers"] = len(m.mtp)
    fields = [{"field": k, "a": fa.get(k), "b": fb.get(k)} for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
    ga, gb = _layer_groups(a), _layer_groups(b)
    if a.n_layers == b.n_layers:
        fields += [
            {"field": k, "a": ga.get(k), "b": gb.get(k)}
            for k in sorted(set(ga) | set(gb), key=_layer_key)
            if ga.get(k) != gb.get(k)
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
    return {"a": a.name, "b": b.name, "fields": fields, "metrics": metrics}


def _layer_key(k: str) -> tuple[str, int]:
    span = k.split()[1]
    return (k.split()[2], int(span.split("..")[0]))
