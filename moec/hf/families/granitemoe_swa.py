"""Granite-MoE with sliding windows and attention sinks (``model_type`` granitemoe_swa,
GraniteMoeSWAForCausalLM): Granite-MoE with the optional shared MLP (``granitemoeshared.py``), a learned sink
logit per head, sliding-window attention on the layers ``layer_types`` names (by default all but every
fourth), and a rope base per layer (``layer_rope_theta``; 0 is a layer without positions).

The sink: GraniteSWA's attention scales each head's output by sigmoid(logsumexp(scores) − sink), which is
softmax with the sink as one more logit that takes no value, moec's ``attention.sinks`` (gpt-oss's form).
"""

from __future__ import annotations

from moec.hf.draft import MAX_LIST, Draft, Family, HFConfig, is_number, shown
from moec.hf.families import granitemoeshared
from moec.hf.families._common import typed_windows

# GraniteMoeSWAConfig: GraniteMoeSharedConfig's fields and defaults, plus the windows and per-layer rope bases
DEFAULTS = {**granitemoeshared.DEFAULTS, "sliding_window": 128, "layer_types": None, "layer_rope_theta": None}


def translate(c: HFConfig, d: Draft) -> None:
    granitemoeshared.translate(c, d)
    d.put("attention.sinks", True, "GraniteSWAAttention.sinks: one learned logit per head")
    w = c.int("sliding_window", optional=True)
    default = ["full_attention" if i % 4 == 0 else "sliding_attention" for i in range(d.n_layers)]
    typed_windows(c, d, w, default, "full attention on layers i % 4 == 0, sliding elsewhere", null_refused=True)
    _layer_rope(c, d)
    d.ffn_note = "every Granite-MoE-SWA layer is MoE"


def _layer_rope(c: HFConfig, d: Draft) -> None:
    """layer_rope_theta: a rope base per layer, 0 for a layer without positions; unset, every layer rotates
    with rope_parameters' base (GraniteMoeSWAConfig.__post_init__). The largest base becomes the model's and
    the others the layers' own, so that a base out of the spec's range is refused at this field, by the check of
    the model's base."""
    key = "layer_rope_theta"
    thetas = c.value(key)
    if thetas is None:
        return
    ok = isinstance(thetas, list) and len(thetas) <= MAX_LIST and all(is_number(t) and t >= 0 for t in thetas)
    if not ok:
        c.bad(key, f"{shown(thetas)}: expected a list of at most {MAX_LIST} non-negative numbers")
        return
    if len(thetas) != d.n_layers:
        if d.layers_known:
            c.bad(key, f"{len(thetas)} entries for {d.n_layers} layers")
        return
    d.rope = [t > 0 for t in thetas]
    d.rope_note = f"{key} (0: the layer has no rotary positions)"
    bases = [float(t) for t in thetas if t > 0]
    if not bases:
        return
    # GraniteMoeSWAModel builds one rotary table per base; rope_parameters' own base rotates no layer then
    model = max(bases)
    d.put("model.positions.theta", model, f"{key} (its largest base)")
    own = [float(t) if 0 < t < model else None for t in thetas]
    d.layer_attention["rope_theta"] = (own, f"{key} (a layer's own base)")


FAMILY = Family(
    "granitemoe_swa", "GraniteMoeSWAForCausalLM", DEFAULTS, translate, mapper=granitemoeshared.GraniteMoeSharedMapper
)
