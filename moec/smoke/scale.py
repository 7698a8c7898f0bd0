"""Fit a resolved model to a device by shrinking width and depth, keeping its MoE structure.

Kept: number of experts, top-k, shared experts, router kind, attention kind (GQA group shape, MLA),
norms, positions, and the layer pattern (first-k dense, every-N MoE, each layer's token mixer and FFN kind:
runs of identical layers are shortened, never reordered; every mixer kind keeps a layer). Other token mixers
shrink as moec/smoke/mixers.py says. Shrunk: d_model, FFN/expert widths, head counts and dims, MLA ranks,
vocabulary, number of layers, windows, chunks and the sparse attention's top_k (capped below the run's sequence
length, so that they still bite).
Pure arithmetic over plans: the analyzer's memory model decides what fits
(:func:`moec.analyze.memory.training_run_memory`, an upper estimate of what the run allocates).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from moec.analyze import analyze
from moec.analyze.memory import RunMemory, refuse_unless_fits, training_run_memory
from moec.analyze.render import layer_pattern, mixer_runs
from moec.smoke.mixers import scale_mixer
from moec.spec.plan import AbsentPlan, AttentionPlan, DenseFFNPlan, LayerPlan, MoEPlan, PositionsPlan, ResolvedModel

TINY_D = 64
TINY_VOCAB = 256


@dataclass(frozen=True)
class Fitted:
    plan: ResolvedModel
    changes: list[str]  # human-readable "field: old → new"
    bytes_needed: int  # the analyzer's headline: mixed-precision training state + activation estimate
    memory: RunMemory  # what the run allocates (upper estimate, the run's dtype): decides what fits


def _r(x: float, mult: int, lo: int) -> int:
    return max(lo, int(round(x / mult)) * mult)


def compress_layers(layers: tuple[LayerPlan, ...], max_layers: int) -> list[LayerPlan]:
    """Keep the pattern: each run of identical layer kinds shortened to ≤ 2, then the first max_layers, with at
    least one layer of every token-mixer kind the model has and one MoE layer if it has any (each the first of
    its kind, in its place; more than max_layers only when the kinds outnumber it).
    DeepSeek-V3 (3 dense, 58 MoE) → D D M M; a Switch-style D M D M ... → D M D M."""
    kept: list[LayerPlan] = []
    run = 0
    for i, lp in enumerate(layers):
        same = i > 0 and _kind(lp) == _kind(layers[i - 1])
        run = run + 1 if same else 1
        if run <= 2:
            kept.append(lp)
    out = kept[:max_layers]
    needs = _kinds_to_keep(layers)
    for need in needs:
        if not any(need(l) for l in out):
            out = _make_room(out, needs, max_layers)
            out = sorted([*out, next(l for l in kept if need(l))], key=lambda l: l.index)
    return out


def _kinds_to_keep(layers: tuple[LayerPlan, ...]) -> list[Callable[[LayerPlan], bool]]:
    """One test per kind a scaled-down copy must keep: each token mixer the model has, MoE, and each combination
    of the per-layer features a layer can carry (a shared or absent indexer, its own sinks, rope scaling or
    attention shape, its own MoE activation and limits): a copy without them would smoke-run another model."""
    mixers = dict.fromkeys(lp.mixer_kind for lp in layers)
    needs: list[Callable[[LayerPlan], bool]] = [lambda l, k=kind: l.mixer_kind == k for kind in mixers]
    if any(isinstance(lp.ffn, MoEPlan) for lp in layers):
        needs.append(lambda l: isinstance(l.ffn, MoEPlan))
    features = dict.fromkeys(_layer_features(lp) for lp in layers)
    if len(features) > 1:
        needs += [lambda l, f=f: _layer_features(l) == f for f in features]
    return needs


def _layer_features(lp: LayerPlan) -> tuple[object, ...]:
    """What a layer's plans may hold of their own, apart from the mixer, the FFN kind and the window/rope pattern
    (which compress_layers keeps by its runs)."""
    a, f = lp.attention, lp.ffn
    moe = (
        (f.activation, f.activation_limit, f.shared_activation, f.shared_activation_limit)
        if isinstance(f, MoEPlan)
        else ()
    )
    shape = (a.n_heads, a.n_kv_heads, a.head_dim, a.v_dim, a.kv_lora_rank, a.rotary_dim)
    return (a.has_indexer, a.indexer_shared, a.sinks, a.own_rope_scaling, shape, moe)


def _make_room(out: list[LayerPlan], needs: list[Callable[[LayerPlan], bool]], max_layers: int) -> list[LayerPlan]:
    """``out`` less its last layer that is not the only one of a kind it keeps, when it is full."""
    if len(out) < max_layers:
        return out
    met = [n for n in needs if any(n(l) for l in out)]
    for j in reversed(range(len(out))):
        rest = out[:j] + out[j + 1 :]
        if all(any(n(l) for l in rest) for n in met):
            return rest
    return out


def _kind(lp: LayerPlan) -> tuple[object, ...]:
    a = lp.attention
    pattern = (lp.mixer_kind, lp.ffn.kind, a.window, a.chunk, a.rope, a.qk_norm, a.temperature_floor_scale is not None)
    return (*pattern, _layer_features(lp))


def shrink(plan: ResolvedModel, d_model: int, *, vocab: int, max_layers: int, seq: int) -> ResolvedModel:
    """The same architecture at width ``d_model`` (other widths scaled by the same factor)."""
    s = d_model / plan.d_model

    def attention(a: AttentionPlan) -> AttentionPlan:
        window = min(a.window, max(2, seq // 2)) if a.window else None
        if a.chunk:  # a chunk, like a window, shrinks to fit the run's sequence (and still bites)
            a = dataclasses.replace(a, chunk=min(a.chunk, max(2, seq // 2)))
        if a.indexer_top_k:  # so does the sparse attention's top_k: at or above S the indexer would choose every key
            a = dataclasses.replace(a, indexer_top_k=min(a.indexer_top_k, max(1, seq // 2)))
        if a.kind == "mla":
            assert a.kv_lora_rank and a.qk_nope_head_dim and a.v_head_dim and a.qk_rope_head_dim is not None
            heads = max(2, min(a.n_heads, d_model // 16))
            nope, rope, v = (
                _r(a.qk_nope_head_dim * s, 2, 8),
                _r(a.qk_rope_head_dim * s, 2, 4),
                _r(a.v_head_dim * s, 2, 8),
            )
            return dataclasses.replace(
                a,
                n_heads=heads,
                n_kv_heads=heads,
                head_dim=nope + rope,
                window=window,
                q_lora_rank=_r(a.q_lora_rank * s, 8, 16) if a.q_lora_rank else None,
                kv_lora_rank=_r(a.kv_lora_rank * s, 8, 16),
                qk_nope_head_dim=nope,
                qk_rope_head_dim=rope,
                v_head_dim=v,
            )
        group = a.n_heads // a.n_kv_heads
        head_dim = max(8, min(a.head_dim, _r(d_model / 4, 2, 8)))
        kv = max(1, min(a.n_kv_heads, (d_model // head_dim) // group))
        # a layer's own rotated width (Laguna) shrinks with its head, kept even and within it
        rot = min(head_dim, max(2, 2 * round(a.rotary_dim * head_dim / a.head_dim / 2))) if a.rotary_dim else None
        scaled = {"n_heads": kv * group, "n_kv_heads": kv, "head_dim": head_dim, "window": window}
        return dataclasses.replace(a, **scaled, rotary_dim=rot)

    def ffn(f: DenseFFNPlan | MoEPlan | AbsentPlan) -> DenseFFNPlan | MoEPlan | AbsentPlan:
        if isinstance(f, AbsentPlan):
            return f
        if isinstance(f, DenseFFNPlan):
            return dataclasses.replace(f, d_ff=_r(f.d_ff * s, 8, 8))
        lora = _r(f.lora_rank * s, 2, 2) if f.lora_rank else None
        return dataclasses.replace(
            f, d_ff=_r(f.d_ff * s, 8, 8), d_ff_shared=_r(f.d_ff_shared * s, 8, 8), lora_rank=lora
        )

    def layer(i: int, lp: LayerPlan) -> LayerPlan:
        # replace, not a new LayerPlan: every other field (a LongCat pair layer's pair_ffn, ...) comes along
        pair = ffn(lp.pair_ffn) if lp.pair_ffn is not None else None
        mixer = scale_mixer(lp.mixer, plan.d_model, d_model, seq)
        return dataclasses.replace(
            lp, index=i, attention=attention(lp.attention), ffn=ffn(lp.ffn), mixer=mixer, pair_ffn=pair
        )

    layers = tuple(layer(i, lp) for i, lp in enumerate(compress_layers(plan.layers, max_layers)))
    mtp = tuple(layer(len(layers) + j, lp) for j, lp in enumerate(plan.mtp[:1]))
    return dataclasses.replace(
        plan,
        positions=_shrunk_positions(plan, layers[0].attention.head_dim),
        name=f"{plan.name}-scaled",
        d_model=d_model,
        vocab_size=min(plan.vocab_size, vocab),
        n_layers=len(layers),
        max_seq_len=max(seq, 2),
        layers=layers,
        mtp=mtp,
    )


def _shrunk_positions(plan: ResolvedModel, new_head_dim: int) -> PositionsPlan:
    """A partial rotary width shrinks with the head (even, at least 2, at most the head). The multimodal
    sections are dropped: on text positions every section rotates by the same position, which is plain RoPE
    (docs in README's spec section), so the copy computes the same function of text tokens."""
    pos = plan.positions
    if pos.rotary_dim is None and not pos.mrope_sections:
        return pos
    rotary_dim = pos.rotary_dim
    if rotary_dim is not None:
        old_head_dim = plan.layers[0].attention.head_dim
        rotary_dim = min(new_head_dim, max(2, 2 * round(rotary_dim * new_head_dim / old_head_dim / 2)))
    return dataclasses.replace(pos, rotary_dim=rotary_dim, mrope_sections=None, mrope_interleaved=False)


def bytes_needed(plan: ResolvedModel, *, batch: int, seq: int) -> int:
    a = analyze(plan, seq=seq, batch=batch)
    return a.memory.training_state_bytes + a.memory.activation_bytes_estimate


def run_memory(plan: ResolvedModel, *, batch: int, seq: int, dtype: str, data_bytes: int = 0) -> RunMemory:
    """A smoke-run's upper estimate: AdamW training of every parameter, the MTP blocks included."""
    a = analyze(plan)
    mtp = a.mtp.params if a.mtp else 0
    return training_run_memory(
        plan,
        params=a.params.total + mtp,
        trainable=a.params.trainable + mtp,
        batch=batch,
        seq=seq,
        dtype=dtype,
        data_bytes=data_bytes,
    )


def describe_changes(old: ResolvedModel, new: ResolvedModel) -> list[str]:
    out = []
    for name in ("d_model", "n_layers", "vocab_size", "max_seq_len"):
        if getattr(old, name) != getattr(new, name):
            out.append(f"{name}: {getattr(old, name)} → {getattr(new, name)}")
    out += _attention_changes(old, new)
    f0 = next((l.ffn for l in old.layers if isinstance(l.ffn, MoEPlan)), None)
    f1 = next((l.ffn for l in new.layers if isinstance(l.ffn, MoEPlan)), None)
    if f0 and f1 and f0.d_ff != f1.d_ff:
        out.append(
            f"expert d_ff: {f0.d_ff} → {f1.d_ff} (experts {f1.n_experts}, top-k {f1.top_k}, shared {f1.n_shared_experts} kept)"
        )
    d0 = next((l.ffn for l in old.layers if isinstance(l.ffn, DenseFFNPlan)), None)
    d1 = next((l.ffn for l in new.layers if isinstance(l.ffn, DenseFFNPlan)), None)
    if d0 and d1 and d0.d_ff != d1.d_ff:
        out.append(f"dense d_ff: {d0.d_ff} → {d1.d_ff}")
    pat0 = layer_pattern([l.ffn.kind for l in old.layers])
    pat1 = layer_pattern([l.ffn.kind for l in new.layers])
    if pat0 != pat1:
        out.append(f"layer pattern: {pat0 if len(pat0) <= 16 else pat0[:16] + '…'} → {pat1}")
    out += _mixer_changes(old, new)
    before, after = ([lp.mixer_kind for lp in m.layers] for m in (old, new))
    if old.hybrid and before != after:
        out.append(f"layer mixers: {mixer_runs(before)} → {mixer_runs(after)}")
    return out


def _attention_changes(old: ResolvedModel, new: ResolvedModel) -> list[str]:
    """The first layer's head shape, and the sparse attention's top_k, where the scaled plan changed them."""
    out = []
    a0, a1 = old.layers[0].attention, new.layers[0].attention
    if (a0.n_heads, a0.n_kv_heads, a0.head_dim) != (a1.n_heads, a1.n_kv_heads, a1.head_dim):
        out.append(
            f"attention heads/kv/head_dim: {a0.n_heads}/{a0.n_kv_heads}/{a0.head_dim} → {a1.n_heads}/{a1.n_kv_heads}/{a1.head_dim}"
        )
    k0, k1 = (
        next((lp.attention.indexer_top_k for lp in m.layers if lp.attention.indexer_top_k), None) for m in (old, new)
    )
    if k0 != k1:
        out.append(f"indexer top_k: {k0} → {k1} (below the run's sequence, so that the indexer still chooses)")
    return out


def _mixer_changes(old: ResolvedModel, new: ResolvedModel) -> list[str]:
    """Per token-mixer kind, the fields its scaled plan changed (the first layer of the kind in each model)."""
    out = []
    old_plans = _first_mixer_plans(old)
    for kind, plan in _first_mixer_plans(new).items():
        before = old_plans.get(kind)
        changed = [
            f"{f.name} {getattr(before, f.name)} → {getattr(plan, f.name)}"
            for f in dataclasses.fields(plan)
            if before is not None and getattr(before, f.name) != getattr(plan, f.name)
        ]
        if changed:
            out.append(f"{kind}: {', '.join(changed)}")
    return out


def _first_mixer_plans(plan: ResolvedModel) -> dict[str, object]:
    found: dict[str, object] = {}
    for lp in plan.layers:
        if lp.mixer_kind not in ("attention", "none"):
            found.setdefault(lp.mixer_kind, lp.mixer)
    return found


def fit(
    plan: ResolvedModel,
    *,
    scale: str,
    budget_bytes: int | None,
    batch: int,
    seq: int,
    dtype: str = "bf16",
    data_bytes: int = 0,
    where: str = "the device",
    memory_of: Callable[[ResolvedModel], RunMemory] | None = None,
) -> Fitted:
    """``tiny``: a CPU-sized copy. ``full``: the model as specified. ``auto``: the largest power-of-two
    width ≤ d_model (and ≤ 4096) whose run fits ``budget_bytes``. With a budget, a run that does not fit
    even so is refused (DoesNotFitError, naming ``where`` the budget is). ``memory_of``: what a run of a plan
    needs (default: one process, :func:`run_memory`; a distributed run passes its busiest rank's)."""
    if memory_of is None:

        def memory_of(p: ResolvedModel) -> RunMemory:
            return run_memory(p, batch=batch, seq=seq, dtype=dtype, data_bytes=data_bytes)

    if scale == "full":
        new = plan
    elif scale == "tiny" or budget_bytes is None:
        new = shrink(plan, min(TINY_D, plan.d_model), vocab=TINY_VOCAB, max_layers=4, seq=seq)
    else:
        new = _widest_that_fits(plan, budget_bytes, seq=seq, memory_of=memory_of)
    need = memory_of(new)
    hint = _what_to_lower(need, scale)
    refuse_unless_fits(need, budget_bytes, lead=f"smoke-run of {new.name} needs", where=where, hint=hint)
    return Fitted(new, describe_changes(plan, new), bytes_needed(new, batch=batch, seq=seq), need)


def _what_to_lower(need: RunMemory, scale: str) -> str:
    """The advice that goes with a refusal: what grows with batch × seq, or what grows with the model."""
    parts = dict(need.parts)
    per_step = parts.get("activations", 0) + parts.get("data", 0)
    model = sum(parts.get(name, 0) for name in ("weights", "gradients", "optimizer"))
    if per_step >= model:
        return "; lower --batch or --seq"
    if scale == "full":
        return "; use --scale auto"
    return "; the scaled-down copy still holds every expert of the spec"


def _widest_that_fits(
    plan: ResolvedModel, budget: int, *, seq: int, memory_of: Callable[[ResolvedModel], RunMemory]
) -> ResolvedModel:
    d = 1 << min(plan.d_model, 4096).bit_length() - 1
    while True:
        new = shrink(plan, d, vocab=32768, max_layers=8, seq=seq) if d < plan.d_model or plan.n_layers > 8 else plan
        if d <= TINY_D or memory_of(new).total <= budget:
            return new
        d //= 2
