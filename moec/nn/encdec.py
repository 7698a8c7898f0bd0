"""An encoder-decoder model (Switch Transformers, T5; moec/spec/encdec.py, docs/conventions.md "Encoder-decoder"):
``model(input_ids, decoder_input_ids) → (logits, ModelAux)``.

    source ids ─embed─▶ encoder layers (bidirectional self-attention, FFN) ─▶ encoder.norm ──────────┐ memory
    target ids ─embed─▶ decoder layers (causal self-attention, cross-attention over memory, FFN) ─▶ norm ─▶ head

Every sublayer is pre-norm with a residual: ``x = x + f(norm(x))``. With ``relative_bucket`` positions the first
self-attention of each stack holds T5's bias table (moec.nn.relative_bias) and every layer of that stack adds the
same bias; cross-attention has none. The embedding is shared by both stacks (and the head when tied).
``encoder.expert_capacity`` (transformers' Switch): each expert takes at most that many tokens of a sequence, the
earliest first; the others skip the FFN and ride the residual.

Names (a contract with the Hugging Face Mapper, moec/hf/families/switch_transformers.py): ``embed``,
``encoder.layers.{i}.{attn_norm,attn,ffn_norm,ffn}``, ``encoder.norm``, ``layers.{i}.{attn_norm,attn,cross_norm,
cross_attn,ffn_norm,ffn}`` (the decoder, as the plan's ``layers``), ``norm``, ``lm_head``; the tables are
``….layers.0.attn.relative_bias.weight``. Below those, moec.nn's own names (``q_proj``, ``ffn.router.weight``, ...).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from moec.errors import CommandError
from moec.kernels.runtime import ModelAux, MoEAux
from moec.nn.attention import Attention, Linear, _sdpa, check_input
from moec.nn.block import make_ffn
from moec.nn.model import Embedding, check_token_ids, component_of, counts_by_component, head_logits, model_aux
from moec.nn.moe import MoE
from moec.nn.norms import make_norm
from moec.nn.relative_bias import RelativeBias
from moec.nn.router import Router, Routing
from moec.spec.encdec import RELATIVE_BUCKET, build_refusals
from moec.spec.plan import AttentionPlan, LayerPlan, MoEPlan, ResolvedModel


def earliest_per_sequence(topk_idx: torch.Tensor, seq_len: int, capacity: int, n_experts: int) -> torch.Tensor:
    """(T, k) bool: the slots each expert takes when it takes at most ``capacity`` slots of each sequence of
    ``seq_len`` tokens, earliest first (all first choices before any second, as moec's ``position`` policy);
    a slot marked -1 is never kept. transformers' Switch router: a cumulative count of each expert's tokens along
    the sequence, kept while it is at most the capacity."""
    T, k = topk_idx.shape
    B = T // seq_len
    slots = topk_idx.view(B, seq_len, k).transpose(1, 2).reshape(B, k * seq_len)  # (B, k·S) slot-major
    routed = slots >= 0
    onehot = F.one_hot(slots.clamp(min=0), n_experts) * routed[..., None]  # (B, k·S, E)
    queue = onehot.cumsum(1).gather(2, slots.clamp(min=0)[..., None]).squeeze(-1)  # (B, k·S) 1-based place
    keep = routed & (queue <= capacity)
    return keep.view(B, k, seq_len).transpose(1, 2).reshape(T, k)


class SequenceCapacityRouter(Router):
    """A router whose experts each take at most ``capacity`` tokens of each sequence, earliest first
    (``encoder.expert_capacity``); the balance and z losses are the routing's before the drop, as transformers'."""

    def __init__(self, plan: MoEPlan, d_model: int, capacity: int, *, device=None, dtype=None):
        super().__init__(plan, d_model, device=device, dtype=dtype)
        self.capacity = capacity

    def forward(self, x: torch.Tensor, seq_len: int | None = None, token_ids: torch.Tensor | None = None) -> Routing:
        r = super().forward(x, seq_len, token_ids)
        keep = earliest_per_sequence(r.topk_idx, seq_len or x.shape[0], self.capacity, self.n_scored)  # (T, k)
        idx = torch.where(keep, r.topk_idx, -1)
        tokens_per_expert = torch.zeros_like(r.tokens_per_expert).scatter_add_(
            0, idx.clamp(min=0).reshape(-1), keep.reshape(-1).long()
        )  # (E,)
        dropped = r.dropped + r.tokens_per_expert.sum() - tokens_per_expert.sum()
        w = torch.where(keep, r.topk_w, 0.0)
        return dataclasses.replace(r, topk_idx=idx, topk_w=w, tokens_per_expert=tokens_per_expert, dropped=dropped)

    def extra_repr(self) -> str:
        return f"capacity={self.capacity} per sequence"


class RelativeAttention(Attention):
    """GQA attention with an additive bias on the scores and no rotation: a T5 self-attention (``bias`` the
    stack's relative bias; causal in the decoder) or, given ``memory``, a cross-attention whose keys and values
    are projections of the encoder's output. The first self-attention of a stack holds the bias table."""

    def __init__(
        self, plan: AttentionPlan, model: ResolvedModel, *, table: bool, causal: bool, device=None, dtype=None
    ):
        super().__init__(plan, model.d_model, norm=model.norm, device=device, dtype=dtype)
        pos = model.positions
        self.relative_bias = None
        if table:
            assert pos.n_buckets is not None and pos.max_distance is not None
            self.relative_bias = RelativeBias(
                pos.n_buckets, plan.n_heads, pos.max_distance, bidirectional=not causal, device=device, dtype=dtype
            )

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        causal: bool = False,
        memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, S, d) → (B, S, d). bias (1, h, S, T) added to the scores, T = S, or the memory's length; a causal
        stack's bias is −inf past each query already (RelativeBias), so ``causal`` masks only an unbiased layer."""
        check_input(x, self.d_model, "attention")
        B, S, _ = x.shape
        source = x if memory is None else memory  # (B, T, d)
        T, hd = source.shape[1], self.plan.head_dim
        q = self.q_proj(x).view(B, S, -1, hd).transpose(1, 2)  # (B, h, S, hd)
        k = self.k_proj(source).view(B, T, -1, hd).transpose(1, 2)  # (B, kv, T, hd)
        v = self.v_proj(source).view(B, T, -1, self.plan.v_dim).transpose(1, 2)  # (B, kv, T, vd)
        if bias is None:
            y = _sdpa(q, k, v, scale=self.scale, is_causal=causal)
        else:
            y = _sdpa(q, k, v, scale=self.scale, attn_mask=bias.to(q.dtype))
        return self.output(x, y)


class EncDecBlock(nn.Module):
    """One layer of either stack: self-attention, (in the decoder) cross-attention, FFN; each pre-norm."""

    def __init__(self, layer: LayerPlan, model: ResolvedModel, *, decoder: bool, backend: str, device, dtype):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        d = model.d_model
        self.causal = decoder
        table = model.positions.kind == RELATIVE_BUCKET and layer.index == 0
        self.attn_norm = make_norm(model.norm, d, **kw)
        self.attn = RelativeAttention(layer.attention, model, table=table, causal=decoder, **kw)
        self.cross_norm = self.cross_attn = None
        if layer.cross_attention is not None:
            self.cross_norm = make_norm(model.norm, d, **kw)
            self.cross_attn = RelativeAttention(layer.cross_attention, model, table=False, causal=False, **kw)
        self.ffn_norm = make_norm(model.norm, d, **kw)
        if isinstance(layer.ffn, MoEPlan) and model.expert_capacity is not None:
            router = SequenceCapacityRouter(layer.ffn, d, model.expert_capacity, **kw)
            self.ffn: nn.Module | None = MoE(layer.ffn, d, backend=backend, router=router, **kw)
        else:
            self.ffn = make_ffn(layer, d, backend=backend, **kw)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None, memory: torch.Tensor | None, token_ids: torch.Tensor
    ) -> tuple[torch.Tensor, MoEAux | None]:
        x = x + self.attn(self.attn_norm(x), bias, causal=self.causal)
        if self.cross_attn is not None and self.cross_norm is not None:
            x = x + self.cross_attn(self.cross_norm(x), memory=memory)
        h = self.ffn_norm(x)
        if isinstance(self.ffn, MoE):
            y, aux = self.ffn(h, token_ids=token_ids)
            return x + y, aux
        assert self.ffn is not None  # checks: every encoder-decoder layer has an FFN
        return x + self.ffn(h), None


def run_stack(
    blocks: nn.ModuleList, x: torch.Tensor, token_ids: torch.Tensor, memory: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[MoEAux | None]]:
    """x (B, S, d) through one stack's blocks, the bias of its first self-attention's table given to each."""
    table = blocks[0].attn.relative_bias
    S = x.shape[1]
    bias = table(S, S) if table is not None else None  # (1, h, S, S)
    auxes = []
    for block in blocks:
        x, aux = block(x, bias, memory, token_ids)
        auxes.append(aux)
    return x, auxes


class Encoder(nn.Module):
    def __init__(self, model: ResolvedModel, *, backend: str, device, dtype):
        super().__init__()
        kw = {"backend": backend, "device": device, "dtype": dtype}
        self.layers = nn.ModuleList(EncDecBlock(lp, model, decoder=False, **kw) for lp in model.encoder)
        self.norm = make_norm(model.norm, model.d_model, device=device, dtype=dtype) if model.norm.final_norm else None

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, list[MoEAux | None]]:
        x, auxes = run_stack(self.layers, x, token_ids)
        return (self.norm(x) if self.norm is not None else x), auxes


class EncoderDecoderModel(nn.Module):
    """An encoder-decoder model built from its plan; see the module docstring."""

    def __init__(
        self,
        plan: ResolvedModel,
        *,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        refused = build_refusals(plan)
        if refused:
            raise CommandError(
                f"moec.nn: {plan.name} is an encoder-decoder model with {'; '.join(refused)}, which moec.nn does "
                'not build in one yet (docs/conventions.md, "Encoder-decoder")'
            )
        self.plan = plan
        kw = {"device": device, "dtype": dtype}
        d, V = plan.d_model, plan.vocab_size
        self.embed = Embedding(V, d, **kw)
        self.encoder = Encoder(plan, backend=backend, **kw)
        self.layers = nn.ModuleList(EncDecBlock(lp, plan, decoder=True, backend=backend, **kw) for lp in plan.layers)
        self.norm = make_norm(plan.norm, d, **kw) if plan.norm.final_norm else None
        self.lm_head = Linear(d, V, bias=False, **kw)
        if plan.tie_embeddings:
            self.lm_head.weight = self.embed.weight  # one tensor: the embedding of both stacks and the head

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor) -> tuple[torch.Tensor, ModelAux]:
        """input_ids (B, S) source ids, decoder_input_ids (B, S') target ids (the decoder start token first) →
        (logits (B, S', V), ModelAux: the encoder's MoE layers' aux, then the decoder's)."""
        for what, ids in (("input_ids", input_ids), ("decoder_input_ids", decoder_input_ids)):
            check_token_ids(ids, self.plan, what)
        if input_ids.shape[0] != decoder_input_ids.shape[0]:
            raise ValueError(
                f"input_ids hold {input_ids.shape[0]} sequences, decoder_input_ids {decoder_input_ids.shape[0]}"
            )
        memory, enc_aux = self.encoder(self.embed(input_ids), input_ids)  # (B, S, d)
        x, dec_aux = run_stack(self.layers, self.embed(decoder_input_ids), decoder_input_ids, memory)
        if self.norm is not None:
            x = self.norm(x)
        logits = head_logits(self.lm_head(x), self.plan)  # (B, S', V); Switch/T5 tied: ÷ d^0.5
        return logits, model_aux(enc_aux + dec_aux, logits.device)

    def param_counts(self) -> dict[str, tuple[int, int]]:
        """{component: (trainable, frozen)}, the analyzer's components, tied weights once."""
        return counts_by_component(self.named_parameters(), encdec_component_of)


def encdec_component_of(name: str) -> str:
    """The analyzer component of an encoder-decoder model's parameter: either stack's as a decoder-only model's
    (moec.nn.model.component_of), each cross-attention under attention and its norm under norms."""
    name = name.removeprefix("encoder.")
    parts = name.split(".")
    if parts[0] == "layers" and parts[2] in ("cross_attn", "cross_norm"):
        return "attention" if parts[2] == "cross_attn" else "norms"
    return component_of(name)
