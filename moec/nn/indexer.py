"""The sparse-attention indexer of DeepSeek Sparse Attention (DeepSeek-V3.2-Exp; GLM-5), what
``attention.indexer`` plans (moec/spec/indexer.py): each query ranks the keys it may see with small heads of its
own and the MLA layer then attends only the ``top_k`` best (docs/conventions.md, "Sparse attention indexer").

    q_j(t) = wq_b(c_q(t))_j          c_q: MLA's normed query latent; H_I heads of d_I
    k(s)   = LayerNorm(wk(x_s))       one key of d_I per token, shared by the heads
    (the first qk_rope_head_dim dims of both rotated, or the last: pairs in halves or interleaved, as planned)
    I(t, s) = Σ_j w_j(t) · ReLU(q_j(t) · k(s) / √d_I),      w(t) = weights_proj(x_t) / √H_I

Names are transformers' DeepseekV32Indexer's (``wq_b``, ``wk``, ``k_norm``, ``weights_proj``) so checkpoints map
one to one. The scores are computed in float32 whatever the model's dtype, as transformers does. DeepSeek's own
kernel quantises q and k to FP8 after a Hadamard rotation; the rotation keeps dot products, the quantisation is a
precision choice, and neither is modelled. The choice is discrete, so the language-model loss gives the indexer
no gradient: its keys and scores are computed without autograd (as transformers does). DeepSeek trains it with its
own objective (a KL divergence to the main attention's distribution), which moec does not model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from moec.nn.attention import Linear
from moec.nn.rope import apply_rope, apply_rope_interleaved
from moec.spec.plan import AttentionPlan


class Indexer(nn.Module):
    def __init__(
        self,
        plan: AttentionPlan,
        d_model: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if not plan.has_indexer or not plan.q_lora_rank:
            raise ValueError("the indexer needs attention.indexer and MLA's q_lora_rank (its queries' input)")
        assert plan.indexer_n_heads and plan.indexer_head_dim and plan.indexer_top_k
        self.n_heads, self.head_dim, self.top_k = plan.indexer_n_heads, plan.indexer_head_dim, plan.indexer_top_k
        self.rope_dim = plan.qk_rope_head_dim or 0
        self.rotate = apply_rope_interleaved if plan.indexer_rope_layout == "interleaved" else apply_rope
        self.rope_last = plan.indexer_rope_dims == "last"  # HY-V4 rotates the last qk_rope_head_dim dims
        kw = {"device": device, "dtype": dtype}
        self.wq_b = Linear(plan.q_lora_rank, self.n_heads * self.head_dim, bias=False, **kw)
        self.wk = Linear(d_model, self.head_dim, bias=False, **kw)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=plan.indexer_key_norm_eps, **kw)
        self.weights_proj = Linear(d_model, self.n_heads, bias=False, **kw)

    def _rope(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Rotate the first (or, rope_dims last, the last) qk_rope_head_dim dims of x (B, n, S, d_I); the rest pass."""
        if rope is None:
            return x
        r = self.rope_dim
        if self.rope_last:
            cut = x.shape[-1] - r
            return torch.cat((x[..., :cut], self.rotate(x[..., cut:], *rope)), dim=-1)
        return torch.cat((self.rotate(x[..., :r], *rope), x[..., r:]), dim=-1)

    @torch.no_grad()
    def keys(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """x (B, S, d) → the indexer's keys (B, 1, S, d_I), rotated: what its cache keeps per token."""
        B, S, _ = x.shape
        return self._rope(self.k_norm(self.wk(x)).view(B, 1, S, self.head_dim), rope)

    @torch.no_grad()
    def scores(
        self,
        x: torch.Tensor,
        q_latent: torch.Tensor,
        keys: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """The index scores I (B, S, T), float32: x (B, S, d) and MLA's normed query latent (B, S, q_lora_rank) of
        the S queries against ``keys`` (B, 1, T, d_I)."""
        B, S, _ = x.shape
        q = self.wq_b(q_latent).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, S, d_I)
        q = self._rope(q, rope)
        logits = (q.float() @ keys.float().transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, S, T)
        w = self.weights_proj(x).float() / math.sqrt(self.n_heads)  # (B, S, H)
        return torch.einsum("bsh,bhst->bst", w, torch.relu(logits))

    def select(self, scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """(B, S, T) bool, True at the keys a query attends: the top_k of those ``allowed`` (S, T) that score best
        (all of them where a query sees at most top_k)."""
        k = min(self.top_k, scores.shape[-1])
        ranked = scores.masked_fill(~allowed, float("-inf")).topk(k, dim=-1).indices  # (B, S, k)
        # a tensor of True, not the scalar: torch.jit's trace (fvcore, analyze --verify) has no bool-scalar scatter_
        chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(
            -1, ranked, torch.ones_like(ranked, dtype=torch.bool)
        )
        return chosen & allowed

    def extra_repr(self) -> str:
        return f"heads={self.n_heads}, head_dim={self.head_dim}, top_k={self.top_k}"


def share_indexer_choices(attentions: Sequence[nn.Module | None]) -> None:
    """Point each attention layer of ``indexer_shared`` (GLM-5.2, HY-V4: no indexer of its own) at the last layer
    before it that runs one, whose choice it attends (``choice_of``, a list so that torch registers no submodule), and
    have that layer keep its choice for it (``lends_choice``); ``attentions`` in layer order, None for the layers of
    another token mixer."""
    source = None
    for a in attentions:
        if a is None:
            continue
        if getattr(a, "indexer", None) is not None:
            source = a
        elif getattr(getattr(a, "plan", None), "indexer_shared", False):  # (a LongCat pair's list has no plan)
            if source is None:
                raise ValueError("a layer sharing an indexer's choice needs an earlier layer that runs an indexer")
            a.choice_of = [source]
            source.lends_choice = True
