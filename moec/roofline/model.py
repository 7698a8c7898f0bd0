"""The roofline of one inference step: per component FLOPs, bytes, intensity, bound and lower-bound time.

Every FLOP and every weight comes from the analyzer (moec/analyze/counts.py: ``layer_parts``,
``model_edge_parts``, ``attention_score_flops``, ``kv_len``; moec/analyze/memory.py: ``kv_bytes_per_token``);
this module only says how many tokens pass each part in a step, which bytes the step must move, and how
the ranks of a ``--tp``/``--ep`` group share them. The conventions are in docs/roofline.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from moec.analyze.counts import (
    Part,
    attention_sublayers,
    kv_len,
    layer_parts,
    model_edge_parts,
    sequence_flops,
)
from moec.analyze.memory import DTYPE_BYTES, kv_bytes_per_token, state_bytes_per_sequence
from moec.errors import CommandError
from moec.plan.accelerators import Accelerator
from moec.roofline.experts import expected_distinct, expected_distinct_loaded
from moec.spec.plan import AttentionPlan, LayerPlan, MoEPlan, ResolvedModel

Phase = Literal["prefill", "decode"]
# each component's label, in print order; the analyzer's "norms" move no matmul and are left out (docs/roofline.md,
# "The model of a step"), except the low-rank gates of model.norm_gate, which the analyzer counts among them
COMPONENT_LABELS = {
    "embedding": "embedding",
    "norms": "norm gates",
    "attention": "attention proj.",
    "attention_scores": "attention + KV",
    "mixers": "mixer proj.",
    "mixer_state": "mixer scan + state",
    "hyper_connections": "hyper-connections",  # the streams' connection matmuls (docs/hyper-connections.md)
    "router": "router",
    "routed_experts": "routed experts",
    "shared_experts": "shared experts",
    "dense_ffn": "dense FFN",
    "base_ffn": "base FFN (LoRA)",
    "lm_head": "lm_head",
}
COMPONENTS = tuple(COMPONENT_LABELS)
_SPLIT_BY_TP = ("attention", "shared_experts", "dense_ffn", "base_ffn")  # column/row-parallel matmuls
# whole on every rank: tp > 1 is refused for the mixers (moec.plan.layout); the streams' connections are small
_WHOLE_ON_EVERY_RANK = ("mixers", "hyper_connections")


@dataclass(frozen=True)
class Workload:
    """One step: ``decode`` generates one token for each of ``batch`` sequences whose context is ``seq``
    tokens long; ``prefill`` reads ``batch`` prompts of ``seq`` tokens."""

    phase: Phase = "decode"
    batch: int = 1
    seq: int = 4096
    dtype: str = "bf16"  # weights and compute
    kv_dtype: str = "bf16"
    tp: int = 1
    ep: int = 1

    @property
    def ranks(self) -> int:
        """The group serving one copy of the model: the larger of tp and ep (docs/roofline.md, "Ranks: tp and ep")."""
        return max(self.tp, self.ep)

    @property
    def tokens(self) -> int:
        return self.batch * (self.seq if self.phase == "prefill" else 1)


@dataclass(frozen=True)
class Cost:
    """One component on the busiest rank for one step."""

    name: str
    flops: float
    bytes: float
    compute_s: float  # Σ over layers of FLOPs / peak
    memory_s: float  # Σ over layers of bytes / bandwidth
    time_s: float  # Σ over layers of max(compute, memory): kernels run one after another

    @property
    def intensity(self) -> float | None:
        """FLOPs per byte moved (None for a part that moves no bytes)."""
        return self.flops / self.bytes if self.bytes else None

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"


@dataclass(frozen=True)
class Roofline:
    model: str
    gpu: str
    accelerator: Accelerator
    workload: Workload
    peak_flops: int
    costs: tuple[Cost, ...]
    distinct_experts: float | None  # per MoE layer on the busiest rank, the mean over MoE layers
    weights_bytes: int  # resident on each rank
    kv_cache_bytes: float  # resident on each rank at this batch and context

    @property
    def step_s(self) -> float:
        return sum(c.time_s for c in self.costs)

    @property
    def tokens_per_s(self) -> float:
        """Tokens the whole group produces (decode) or reads (prefill) per second: an upper bound."""
        return self.workload.tokens / self.step_s

    @property
    def fits(self) -> bool:
        return self.weights_bytes + self.kv_cache_bytes <= self.accelerator.hbm_bytes

    @property
    def ridge(self) -> float:
        """The intensity (FLOP/B) where the roofline's slope meets its flat top."""
        return self.peak_flops / self.accelerator.hbm_bytes_per_s


def peak_of(acc: Accelerator, gpu: str, dtype: str) -> int:
    peak = acc.peak_flops.get(dtype)
    if peak is None:
        have = ", ".join(d for d, p in acc.peak_flops.items() if p)
        raise CommandError(f"--dtype {dtype}: {gpu} ({acc.name}) has no {dtype} tensor-core peak; it has {have}")
    return peak


class _Tally:
    """FLOPs, bytes and times per component, summed over layers and layer groups."""

    def __init__(self, peak: float, bandwidth: float) -> None:
        self.peak, self.bandwidth = peak, bandwidth
        self.sums: dict[str, list[float]] = {}

    def add(self, name: str, flops: float, nbytes: float, times: int = 1) -> None:
        compute, memory = flops / self.peak, nbytes / self.bandwidth
        s = self.sums.setdefault(name, [0.0, 0.0, 0.0, 0.0, 0.0])
        for i, v in enumerate((flops, nbytes, compute, memory, max(compute, memory))):
            s[i] += times * v

    def costs(self) -> tuple[Cost, ...]:
        return tuple(Cost(n, *self.sums[n]) for n in COMPONENTS if n in self.sums)


def _score_bytes(a: AttentionPlan, w: Workload, sequences: float) -> float:
    """The KV cache a layer reads (decode) or writes (prefill) on one rank: GQA heads split over tp; MLA's
    latent is shared by all heads, so every TP rank holds all of it."""
    cached = kv_len(w.seq, a.window, "full", a.chunk)  # min(S, W, C): the entries the layer keeps
    split = w.tp if a.kind != "mla" else 1
    return float(sequences * cached * kv_bytes_per_token(a, DTYPE_BYTES[w.kv_dtype]) / split)


def _sequence_mixing(
    tally: _Tally, lp: LayerPlan, model: ResolvedModel, w: Workload, tokens: float, sequences: float, mode: str, n: int
) -> float:
    """Add a layer's sequence mixing to ``tally`` (``n`` layers alike); return the cache it keeps on the rank.
    Attention: its scores and the KV cache it reads (decode) or writes (prefill). Another token mixer
    (docs/mixers.md): its chunked form per prefill token or its recurrent step per decode token, and its state,
    of a size that does not grow with the context, read and written back by a decode step, written by a prefill."""
    chunked, step = sequence_flops(lp, model.d_model, w.seq, mode)  # a sparse attention's indexer included
    decode = w.phase == "decode"
    if lp.has_attention:  # a shortcut-MoE pair layer runs two attentions, each with its KV cache
        kv_bytes = attention_sublayers(lp) * _score_bytes(lp.attention, w, sequences)
        tally.add("attention_scores", float(tokens * (step if decode else chunked) / w.tp), kv_bytes, n)
        return kv_bytes
    if not chunked and not step:  # a layer without a token mixer
        return 0.0
    state = sequences * state_bytes_per_sequence(replace(model, layers=(lp,)), DTYPE_BYTES[w.kv_dtype])
    tally.add("mixer_state", float(tokens * (step if decode else chunked)), (2 if decode else 1) * state, n)
    return state


@dataclass(frozen=True)
class LayerGroups:
    """The distinct (attention, FFN) plans of a model's layers in order of first use, how many layers use
    each, and which one each layer uses."""

    plans: tuple[LayerPlan, ...]  # the first layer of each group
    counts: tuple[int, ...]
    of_layer: tuple[int, ...]


_last_grouped: list = [None, None]  # (layers, LayerGroups): a sweep row asks for one model's groups 3 times


def group_layers(model: ResolvedModel) -> LayerGroups:
    """Layers with the same attention, FFN and token-mixer plans cost the same, so each group is counted once. Plans are
    compared by value (hashing every layer's plans is most of the work, so the last model's groups are kept)."""
    if _last_grouped[0] is model.layers:
        return _last_grouped[1]
    index: dict[tuple, int] = {}
    plans: list[LayerPlan] = []
    counts: list[int] = []
    of_layer = []
    for lp in model.layers:
        i = index.setdefault((lp.attention, lp.ffn, lp.mixer), len(plans))
        if i == len(plans):
            plans.append(lp)
            counts.append(0)
        counts[i] += 1
        of_layer.append(i)
    groups = LayerGroups(tuple(plans), tuple(counts), tuple(of_layer))
    _last_grouped[:] = [model.layers, groups]
    return groups


def layer_groups(model: ResolvedModel, per_layer: bool) -> list[tuple[LayerPlan, int]]:
    """One representative layer and a count per group, or every layer alone (``per_layer``: measured loads
    differ from layer to layer)."""
    if per_layer:
        return [(lp, 1) for lp in model.layers]
    g = group_layers(model)
    return list(zip(g.plans, g.counts, strict=True))


def _routed(
    tally: _Tally, part: Part, f: MoEPlan, w: Workload, nb: int, picks: Sequence[float] | None, times: int
) -> float:
    """Add the routed experts of one layer on the busiest rank; return its distinct experts."""
    E, k = f.n_experts, f.top_k
    per_expert_bytes = part.params // E * nb
    per_pick_flops = part.flops / k  # one expert for one token
    tokens = w.tokens * w.ep / w.ranks  # the tokens of one expert-parallel group
    if picks is None:  # uniform routing: every rank alike
        distinct = expected_distinct(E, k, tokens) / w.ep
        tally.add("routed_experts", tokens * part.flops / w.ep, distinct * per_expert_bytes, times)
        return distinct
    per_rank = E // w.ep  # rank r holds experts [r·E/ep, (r+1)·E/ep), as moec.dist places them
    best = (-1.0, 0.0, 0.0, 0.0)
    for r in range(w.ep):
        mine = picks[r * per_rank : (r + 1) * per_rank]
        distinct = expected_distinct_loaded(mine, tokens)
        flops, nbytes = tokens * sum(mine) * per_pick_flops, distinct * per_expert_bytes
        slowest = max(flops / tally.peak, nbytes / tally.bandwidth)
        if slowest > best[0]:
            best = (slowest, flops, nbytes, distinct)
    tally.add("routed_experts", best[1], best[2], times)
    return best[3]


def _weights_on_rank(parts: dict[str, Part], w: Workload, nb: int) -> float:
    """Bytes of one layer's (or the edges') weights a rank holds: TP splits the matmuls, EP the experts."""
    held = 0.0
    for name, p in parts.items():
        share = w.ep if name == "routed_experts" else w.tp if name in (*_SPLIT_BY_TP, "embedding", "head") else 1
        held += p.params * nb / share
    return held


def roofline(
    model: ResolvedModel,
    acc: Accelerator,
    gpu: str,
    w: Workload,
    *,
    picks: dict[int, Sequence[float]] | None = None,
) -> Roofline:
    """The step ``w`` of ``model`` on one rank of a ``w.tp``/``w.ep`` group of ``acc``. ``picks``: measured
    pick probabilities per MoE layer index (uniform routing without)."""
    nb = DTYPE_BYTES[w.dtype]
    peak = peak_of(acc, gpu, w.dtype)
    tally = _Tally(peak, acc.hbm_bytes_per_s)
    replicas = w.ranks / w.tp  # attention replicas: each holds batch/replicas sequences
    sequences = w.batch / replicas
    tokens = w.tokens / replicas
    mode = "full" if w.phase == "decode" else "causal"
    distinct: list[float] = []
    weights = kv = 0.0
    for lp, n in layer_groups(model, per_layer=picks is not None):
        parts = layer_parts(lp, model)
        kv += n * _sequence_mixing(tally, lp, model, w, tokens, sequences, mode, n)
        weights += n * _weights_on_rank(parts, w, nb)
        for name, p in parts.items():
            if name == "routed_experts":
                assert isinstance(lp.ffn, MoEPlan)
                layer_picks = None if picks is None else picks[lp.index]
                distinct += [_routed(tally, p, lp.ffn, w, nb, layer_picks, n)] * n
            elif name == "router":  # replicated on the TP ranks: each routes its replica's tokens
                tally.add(name, tokens * p.flops, p.params * nb, n)
            elif name in _SPLIT_BY_TP:
                tally.add(name, tokens * p.flops / w.tp, p.params * nb / w.tp, n)
            elif name in _WHOLE_ON_EVERY_RANK or (name == "norms" and p.flops):  # norms: their gates' matmuls
                tally.add(name, tokens * p.flops, p.params * nb, n)
    edges = model_edge_parts(model)
    weights += _weights_on_rank(edges, w, nb)
    if "hyper_connections" in edges:  # the dynamic head that merges the streams before the final norm
        hc = edges["hyper_connections"]
        tally.add("hyper_connections", tokens * hc.flops, hc.params * nb)
    rows = 2 if model.positions.kind == "learned" else 1  # a token's row of each embedding table
    tally.add("embedding", 0.0, tokens * rows * model.d_model * nb / w.tp)
    # generation needs the logits of each sequence's last position only, in prefill as in decode
    # the head's matrix is read whether or not it is tied to the embedding: flops / 2 weights (2 FLOPs per MAC)
    head = edges["head"].flops
    tally.add("lm_head", sequences * head / w.tp, head // 2 * nb / w.tp)
    return Roofline(
        model=model.name,
        gpu=gpu,
        accelerator=acc,
        workload=w,
        peak_flops=peak,
        costs=tally.costs(),
        distinct_experts=sum(distinct) / len(distinct) if distinct else None,
        weights_bytes=round(weights),
        kv_cache_bytes=kv,
    )


MAX_BATCH = 1 << 24


def layout_problems(model: ResolvedModel, w: Workload) -> list[tuple[str, str]]:
    """(option, message) for every reason ``w.tp``/``w.ep`` cannot serve ``model``: the planner's own checks
    (heads, widths and experts divide) on a group of max(tp, ep) ranks, whose smaller degree must divide it."""
    from moec.plan.layout import Layout

    lo, hi = sorted((w.tp, w.ep))
    if hi % lo:
        return [
            (
                "--ep",
                f"--tp {w.tp} and --ep {w.ep}: the larger must be a multiple of the smaller (the group is max(tp, ep) ranks)",
            )
        ]
    layout = Layout(dp_shard=w.ranks // w.tp, ep=w.ep, tp=w.tp)
    return [(f"--{field.replace('_', '-')}", message) for field, message in layout.field_problems(model, w.ranks)]


def crossover_batch(
    model: ResolvedModel,
    acc: Accelerator,
    gpu: str,
    w: Workload,
    component: str | None = None,
    *,
    picks: dict[int, Sequence[float]] | None = None,
) -> int | None:
    """The smallest batch at which ``component`` (or, with None, the whole step) is compute-bound: its FLOPs
    take at least as long at peak as its bytes at full bandwidth. None if not below :data:`MAX_BATCH`
    (attention scores move bytes in proportion to the batch, so their intensity never grows)."""

    def compute_bound(batch: int) -> bool:
        r = roofline(model, acc, gpu, replace(w, batch=batch), picks=picks)
        costs = [c for c in r.costs if component is None or c.name == component]
        return bool(costs) and sum(c.compute_s for c in costs) >= sum(c.memory_s for c in costs)

    if not compute_bound(MAX_BATCH):
        return None
    lo, hi = 0, MAX_BATCH  # compute_bound(hi) holds; compute_bound(lo) does not (or lo = 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if compute_bound(mid):
            hi = mid
        else:
            lo = mid
    return hi


def batch_curve(
    model: ResolvedModel,
    acc: Accelerator,
    gpu: str,
    w: Workload,
    batches: Sequence[int],
    *,
    picks: dict[int, Sequence[float]] | None = None,
) -> list[Roofline]:
    """The step at each batch size (tokens/s against batch)."""
    return [roofline(model, acc, gpu, replace(w, batch=b), picks=picks) for b in batches]
