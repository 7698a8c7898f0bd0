"""The MoE router: token → (experts, gate weights), capacity dropping, and the auxiliary losses.

Every variant a spec can name, computed in fp32 whatever the model dtype (routing decisions in bf16
flip on ties and the softmax loses the small probabilities the aux loss needs):

- score: ``softmax`` (Switch, Mixtral, Qwen) or ``sigmoid`` (DeepSeek-V3); ``softmax_after_topk``
  (gpt-oss: top-k of the logits, softmax over the chosen k); ``normalize_topk``; ``scale``.
- ``selection_bias``: a non-gradient per-expert bias added to the scores only to *choose* experts,
  never to weight them (DeepSeek-V3's aux-loss-free balancing, updated by :meth:`Router.update_bias`); a
  buffer, or with ``selection_bias_parameter`` a parameter (ERNIE-4.5), which the loss leaves untouched too.
- group-limited routing (DeepSeek-V2/V3): keep the ``topk_groups`` best of ``n_groups`` expert groups.
- dense (soft) routing: every expert, weighted by its probability.
- ``kind: sparsemixer``: Phi-3.5-MoE's SparseMixer top-2 (:func:`sparsemixer`).
- capacity (Switch/GShard): at most ceil(capacity_factor·T·k/E) slots per expert; the rest are
  dropped (index -1, weight 0) and their tokens ride the residual. With ``capacity_group_size`` (GShard)
  the tokens split into local groups of that many, each with its own capacity.
- the algorithms of docs/routing.md: ``kind: gshard`` (GShard's random top-2, :func:`gshard_top2`),
  ``expert_choice`` (each expert takes its top tokens, :func:`expert_choice`), ``hash`` (a fixed token-id
  hash, no router parameters, :func:`hash_experts`); ``score: sqrt_softplus`` (DeepSeek-V4) and
  ``mlp_hidden`` (a router MLP instead of one linear layer).

Float64 inputs are routed in float64 (the oracles' tests); every other dtype in fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moec.errors import CommandError
from moec.kernels.runtime import (  # the one copy of each, shared with the generated model.py
    expert_choice,
    expert_choice_refusal,
    gshard_top2,
    hash_experts,
    sparsemixer,
)
from moec.spec.plan import MoEPlan, ResolvedModel, RouterPlan


@dataclass
class Routing:
    """One router call. T tokens, k slots per token (E under expert choice), E experts. fp32 (float64 for a
    float64 input)."""

    # (T, k) int64; -1 marks a slot with no expert: dropped, GShard's unsent second, expert choice's untaken
    topk_idx: torch.Tensor
    topk_w: torch.Tensor  # (T, k) fp32 gate weights (0 where the index is -1)
    probs: torch.Tensor  # (T, E) fp32 scores: softmax, sigmoid or sqrt-softplus of the logits (hash: 1/E)
    logits: torch.Tensor  # (T, E) fp32 (hash routing: zeros)
    tokens_per_expert: torch.Tensor  # (E,) int64, kept slots
    dropped: torch.Tensor  # () int64, slots over capacity (expert choice: tokens no expert took)
    load_balance: torch.Tensor  # () fp32, Switch form E·Σ f_i·P_i (1 when perfectly balanced)
    z_loss: torch.Tensor  # () fp32, mean logsumexp(logits)²
    aux_loss: torch.Tensor  # () fp32, load_balance_coeff·load_balance + z_loss_coeff·z_loss


def normalize_eps(r: RouterPlan) -> float:
    """The epsilon added to the k weights' sum when they are renormalised: the spec's, else 1e-20 for sigmoid
    and sqrt-softplus scores (whose sum can underflow to 0) and 0 for softmax (whose top-k sum cannot)."""
    if r.normalize_eps is not None:
        return r.normalize_eps
    return score_eps(r.score)


def score_eps(score: str) -> float:
    """:func:`normalize_eps` where the spec gives none, by score (the mixture of attention heads' router too)."""
    return 1e-20 if score != "softmax" else 0.0


def gates_of(logits: torch.Tensor, probs: torch.Tensor, idx: torch.Tensor, softmax_after_topk: bool) -> torch.Tensor:
    """The chosen experts' gate weights (..., k) for ``idx`` (..., k): their scores ``probs``, or with
    ``softmax_after_topk`` (gpt-oss, JetMoE's attention experts) a softmax over their ``logits`` alone."""
    if softmax_after_topk:
        return logits.gather(-1, idx).softmax(-1)
    return probs.gather(-1, idx)


def scores_of(logits: torch.Tensor, score: str) -> torch.Tensor:
    """(T, E) scores: softmax over the experts, or each logit's sigmoid or sqrt(softplus) (DeepSeek-V4)."""
    if score == "softmax":
        return logits.softmax(-1)
    if score == "sigmoid":
        return logits.sigmoid()
    return F.softplus(logits).sqrt()


def routing_decode_refusals(plan: ResolvedModel) -> list[str]:
    """Why a cached decode (moec.nn.cache, moec generate) cannot run this model's routing: expert choice sees every
    token of a call, later positions included (docs/routing.md, "Expert choice"). Hash routing decodes: a token's
    experts depend on its own id alone, which the blocks pass down. Empty: it can."""
    layers = [
        lp.index
        for lp in (*plan.layers, *plan.mtp)
        if isinstance(lp.ffn, MoEPlan) and lp.ffn.router.kind == "expert_choice"
    ]
    return [expert_choice_refusal(layers)] if layers else []


class Router(nn.Module):
    def __init__(
        self,
        plan: MoEPlan,
        d_model: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.plan, self.d_model = plan, d_model
        # zero experts (LongCat-Flash) are scored and chosen like the others; moec.nn.moe adds their w·x
        E = self.n_scored = plan.n_experts + plan.n_zero_experts
        # nn.Linear layout (E, d): Hugging Face router checkpoints load without a transpose
        r = plan.router
        if r.kind == "hash":  # no learned router: a token's experts are a function of its id
            self.register_parameter("weight", None)
        else:
            width = r.mlp_hidden or d_model  # a router MLP's output layer reads its hidden layer
            self.weight = nn.Parameter(torch.empty(E, width, device=device, dtype=dtype))
        # the router MLP's first layer, d → mlp_hidden (no bias)
        self.hidden = nn.Linear(d_model, r.mlp_hidden, bias=False, device=device, dtype=dtype) if r.mlp_hidden else None
        self.bias = nn.Parameter(torch.empty(E, device=device, dtype=dtype)) if plan.router.bias else None
        # GShard's random second choice draws from this generator when set (else torch's global one)
        self.generator: torch.Generator | None = None
        if plan.router.selection_bias and plan.router.selection_bias_parameter:
            # ERNIE-4.5 keeps it as a parameter (counted); fp32 like the buffer, as transformers keeps
            # e_score_correction_bias, so that small bias_update_rate steps are not rounded away
            self.expert_bias = nn.Parameter(torch.zeros(E, device=device, dtype=torch.float32))
        elif plan.router.selection_bias:
            # a buffer, not a parameter: it gets no gradient and the analyzer does not count it
            self.register_buffer("expert_bias", torch.zeros(E, device=device, dtype=torch.float32))
        else:
            self.expert_bias = None
        if plan.bias_update_rate is not None:
            # kept slots per expert since the last update_bias(); accumulated on device, no host sync
            self.register_buffer("expert_load", torch.zeros(E, device=device, dtype=torch.float32), persistent=False)
        else:
            self.expert_load = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is None or self.weight.is_meta:
            return
        # small, so that routing starts near uniform and no expert wins by initialisation
        nn.init.normal_(self.weight, std=0.02)
        if self.hidden is not None:
            nn.init.normal_(self.hidden.weight, std=1 / math.sqrt(self.d_model))
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if isinstance(self.expert_bias, nn.Parameter):
            nn.init.zeros_(self.expert_bias)

    def forward(self, x: torch.Tensor, seq_len: int | None = None, token_ids: torch.Tensor | None = None) -> Routing:
        """x (T, d). ``seq_len``: tokens per sequence, for the sequence-level balance loss (default: T).
        ``token_ids`` (T,): the tokens' ids, which hash routing needs (and every other kind ignores)."""
        self._check_input(x, seq_len, token_ids)
        T = x.shape[0]
        r, E = self.plan.router, self.n_scored
        # float64 stays float64 (the oracles' tests); every other dtype routes in fp32
        xf = x.double() if x.dtype == torch.float64 else x.float()
        if self.training and r.jitter > 0:  # Switch Transformer: multiplicative input noise
            xf = xf * torch.empty_like(xf).uniform_(1 - r.jitter, 1 + r.jitter)
        logits = self._logits(xf)  # (T, E)
        if r.logit_softcap is not None:  # Laguna: cap·tanh(logits/cap) before the score, also for choosing
            logits = r.logit_softcap * torch.tanh(logits / r.logit_softcap)
        probs = scores_of(logits, r.score)  # (T, E)
        idx, w = self._choose(logits, probs, token_ids)  # (T, k') ×2; -1 marks a slot not dispatched
        if r.normalize_topk:
            w = w / (w.sum(-1, keepdim=True) + normalize_eps(r))
        w = w * r.scale

        valid = idx >= 0
        chosen = torch.zeros(E, dtype=torch.long, device=x.device).scatter_add_(
            0, idx.clamp(min=0).reshape(-1), valid.reshape(-1).long()
        )  # (E,) slots per expert before dropping
        # GShard's balance loss counts first choices only (its c_e); the others every dispatched slot
        load_balance = self._load_balance(idx[:, :1] if r.kind == "gshard" else idx, probs, seq_len)
        z_loss = torch.logsumexp(logits, -1).square().sum() / max(T, 1)
        if self.plan.capacity_factor is not None:
            keep = self._capacity_mask(idx, w) & valid  # (T, k) bool
            idx = torch.where(keep, idx, -1)
            w = torch.where(keep, w, 0.0)
            tokens_per_expert = torch.zeros_like(chosen).scatter_add_(
                0, idx.clamp(min=0).reshape(-1), keep.reshape(-1).long()
            )
        else:
            tokens_per_expert = chosen
        if r.kind == "expert_choice":  # no slot is dropped; a token no expert took rides the residual
            dropped = (~valid.any(-1)).sum()
        else:
            dropped = chosen.sum() - tokens_per_expert.sum()

        if self.training and self.expert_load is not None:
            self.expert_load += tokens_per_expert.float()
        p = self.plan
        return Routing(
            topk_idx=idx,
            topk_w=w,
            probs=probs,
            logits=logits,
            tokens_per_expert=tokens_per_expert,
            dropped=dropped,
            load_balance=load_balance,
            z_loss=z_loss,
            aux_loss=p.load_balance_coeff * load_balance + p.z_loss_coeff * z_loss,
        )

    def _check_input(self, x: torch.Tensor, seq_len: int | None, token_ids: torch.Tensor | None) -> None:
        if x.dim() != 2:
            raise ValueError(f"router input must be (tokens, d_model); got shape {tuple(x.shape)}")
        if x.shape[1] != self.d_model:
            raise ValueError(f"router input has d_model {x.shape[1]}, expected {self.d_model}")
        if not x.is_floating_point():
            raise ValueError(f"router input must be a floating-point tensor; got {x.dtype}")
        T = x.shape[0]
        if seq_len is not None and (seq_len <= 0 or T % seq_len):
            raise ValueError(f"seq_len {seq_len} does not divide the {T} tokens")
        if self.plan.router.kind != "hash":
            return
        if token_ids is None:  # a CommandError (a ValueError), so that the CLI reports it as a plain error
            raise CommandError(
                "hash routing needs the token ids of the routed tokens (MoE(x, token_ids=...)), as the model's "
                "blocks pass them (docs/routing.md, Hash routing)"
            )
        if tuple(token_ids.shape) != (T,) or token_ids.is_floating_point():
            raise ValueError(f"token_ids must be ({T},) integer ids; got {token_ids.dtype} {tuple(token_ids.shape)}")

    def _logits(self, xf: torch.Tensor) -> torch.Tensor:
        """(T, E) router logits in xf's dtype: one linear layer, or the router MLP; zeros for hash routing (no
        learned router: its probabilities are uniform and carry no gradient)."""
        if self.weight is None:
            return xf.new_zeros(xf.shape[0], self.n_scored)
        dt = xf.dtype
        h = xf if self.hidden is None else F.gelu(F.linear(xf, self.hidden.weight.to(dt)))  # (T, d | h)
        return F.linear(h, self.weight.to(dt), None if self.bias is None else self.bias.to(dt))

    def _choose(
        self, logits: torch.Tensor, probs: torch.Tensor, token_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert ids, gate weights) per token before capacity, by the plan's routing kind."""
        r, E = self.plan.router, self.n_scored
        T = logits.shape[0]
        if r.dense:
            return torch.arange(E, device=logits.device).expand(T, E).contiguous(), probs  # (T, E)
        if r.kind == "sparsemixer":
            return sparsemixer(logits, r.sparsemixer_eps)  # (T, 2) ×2
        if r.kind == "gshard":  # random in training; in eval every second choice goes (deterministic)
            u = torch.rand(T, generator=self.generator, device=logits.device, dtype=probs.dtype)  # (T,)
            return gshard_top2(probs, u if self.training else torch.zeros_like(u))
        if r.kind == "expert_choice":
            return expert_choice(probs, r.top_k)  # (T, E)
        if r.kind == "hash":
            assert token_ids is not None
            idx = hash_experts(token_ids.to(logits.device), E, r.top_k)  # (T, k)
            return idx, probs.new_full(idx.shape, 1.0 / r.top_k)
        # the selection bias joins the scores (DeepSeek-V3) or the logits (Kolibri): the top-k differ once it is not 0
        idx = self._select((logits if r.selection_bias_on == "logits" else probs).detach())  # (T, k)
        return idx, gates_of(logits, probs, idx, r.softmax_after_topk)  # (T, k)

    def _select(self, scores: torch.Tensor) -> torch.Tensor:
        """Top-k expert ids (T, k) by selection score (scores + expert_bias), within the best groups."""
        r = self.plan.router
        if self.expert_bias is not None:
            scores = scores + self.expert_bias
        if r.n_groups is not None and r.topk_groups is not None and r.topk_groups < r.n_groups:
            T, E = scores.shape
            grouped = scores.view(T, r.n_groups, E // r.n_groups)  # (T, G, E/G)
            if r.group_score == "max":
                group_scores = grouped.amax(-1)
            else:  # "top2_sum" (DeepSeek-V3)
                group_scores = grouped.topk(2, dim=-1).values.sum(-1)  # (T, G)
            best = group_scores.topk(r.topk_groups, dim=-1).indices  # (T, topk_groups)
            # a tensor source, not the scalar True, which a jit trace (fvcore, analyze --verify) cannot record
            chosen_groups = torch.ones_like(best, dtype=torch.bool)
            keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, chosen_groups)  # (T, G)
            # -inf, not 0: with a selection bias the scores of allowed experts can be negative
            scores = grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).view(T, E)
        return scores.topk(r.top_k, dim=-1).indices

    def _capacity_mask(self, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """(T, k) bool: which slots fit in their expert's capacity ceil(cf·G·k/E) within their local group of
        G = capacity_group_size tokens (GShard; default: G = T, one group). Slots marked -1 are never kept.

        ``position`` keeps the earliest slots, all first choices before any second choice (Switch,
        GShard); ``probs`` keeps each expert's highest-weight slots (Megatron's drop policy).
        """
        T = idx.shape[0]
        G = self.plan.capacity_group_size or max(T, 1)
        if T % G:
            raise ValueError(f"capacity_group_size {G} does not divide the {T} routed tokens")
        groups = [self._group_capacity_mask(idx[i : i + G], w[i : i + G]) for i in range(0, T, G)]
        return torch.cat(groups) if groups else torch.zeros_like(idx, dtype=torch.bool)

    def _group_capacity_mask(self, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        T, k = idx.shape
        E = self.n_scored
        capacity = math.ceil(self.plan.capacity_factor * T * k / E)
        # slot-major: every first choice, then every second; a slot not dispatched (-1) queues as expert E
        expert = torch.where(idx < 0, E, idx).t().reshape(-1)  # (k·T,)
        if self.plan.drop_policy == "position":
            order = torch.argsort(expert, stable=True)
        else:
            by_weight = torch.argsort(w.detach().t().reshape(-1), descending=True, stable=True)
            order = by_weight[torch.argsort(expert[by_weight], stable=True)]
        # rank of each slot within its expert = sorted position − where that expert's run starts
        counts = torch.zeros(E + 1, dtype=torch.long, device=idx.device)
        counts.scatter_add_(0, expert, torch.ones_like(expert))
        starts = counts.cumsum(0) - counts  # (E + 1,)
        rank_sorted = torch.arange(order.numel(), device=idx.device) - starts[expert[order]]
        rank = torch.empty_like(rank_sorted).scatter_(0, order, rank_sorted)  # (k·T,) slot-major
        return ((rank < capacity) & (expert < E)).view(k, T).t()

    def _load_balance(self, idx: torch.Tensor, probs: torch.Tensor, seq_len: int | None) -> torch.Tensor:
        """Switch's E·Σ_i f_i·P_i, per sequence and averaged when load_balance_granularity is sequence.

        f_i: fraction of dispatched routing slots (before dropping) that chose expert i; P_i: mean normalized
        score (sigmoid and sqrt_softplus scores are normalized per token to sum to 1, as DeepSeek-V3's
        sequence-wise loss does).
        """
        T, k = idx.shape
        E = self.n_scored
        if T == 0:
            return probs.new_zeros(())
        if self.plan.router.score != "softmax":
            probs = probs / probs.sum(-1, keepdim=True)
        S = seq_len if self.plan.load_balance_granularity == "sequence" and seq_len else T
        B = T // S
        valid = (idx >= 0).reshape(B, S * k).to(probs.dtype)  # GShard and expert choice leave slots empty
        chosen = torch.zeros(B, E, device=idx.device, dtype=probs.dtype).scatter_add_(
            1, idx.clamp(min=0).reshape(B, S * k), valid
        )  # (B, E) slots per expert per sequence
        f = chosen / valid.sum(-1, keepdim=True).clamp(min=1)
        P = probs.view(B, S, E).mean(1)  # (B, E)
        return (E * (f * P).sum(-1)).mean()

    @torch.no_grad()
    def update_bias(self, group: torch.distributed.ProcessGroup | None = None) -> None:
        """Aux-loss-free balancing (DeepSeek-V3): nudge each expert's selection bias by ±rate toward the
        mean load, then reset the counts. Call once per optimizer step (torchtitan: a pre-step hook).
        ``group``: a torch.distributed process group (the data-parallel ranks): the loads are summed over
        it first, so every rank takes the same step and the biases stay identical (docs/scaling.md)."""
        rate = self.plan.bias_update_rate
        if rate is None or self.expert_load is None or self.expert_bias is None:
            return
        if group is not None:
            import torch.distributed as dist  # only distributed callers pass a group

            dist.all_reduce(self.expert_load, group=group)
        self.expert_bias += rate * torch.sign(self.expert_load.mean() - self.expert_load)
        self.expert_load.zero_()
