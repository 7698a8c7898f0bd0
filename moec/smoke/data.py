"""Synthetic language with learnable structure: a sparse random Markov chain over the vocabulary.

Each token has ``branch`` possible successors with fixed random probabilities, so a model that learns
the transition table can reach the chain's entropy rate (``floor``), far below the ln(V) of noise.
A falling loss therefore means learning. Everything is seeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class MarkovData:
    successors: torch.Tensor  # (V, branch) long: the tokens that may follow each token
    probs: torch.Tensor  # (V, branch) float: their probabilities
    floor: float  # entropy rate of the chain in nats: the best achievable cross-entropy
    generator: torch.Generator

    @classmethod
    def make(cls, vocab: int, *, branch: int = 4, seed: int = 0) -> MarkovData:
        g = torch.Generator().manual_seed(seed)
        branch = max(1, min(branch, vocab))
        # one (V,) buffer refilled per row: a fresh permutation per row fragmented the heap to ~V² int64
        # (7.7 GB at V = 32768) even though only its first ``branch`` entries are kept
        perm = torch.empty(vocab, dtype=torch.long)
        succ = torch.empty(vocab, branch, dtype=torch.long)  # (V, branch)
        for row in succ:
            row.copy_(torch.randperm(vocab, generator=g, out=perm)[:branch])
        # peaked (Dirichlet-like) probabilities: learnable but not deterministic
        w = -(torch.log(torch.rand(vocab, branch, generator=g, dtype=torch.float64)) ** 2)
        p = w / w.sum(-1, keepdim=True)
        stationary = _stationary(succ, p, vocab)
        row_entropy = -(p * p.clamp_min(1e-300).log()).sum(-1)  # (V,)
        floor = float((stationary * row_entropy).sum())
        return cls(succ, p.float(), floor, g)

    def batch(self, batch: int, seq: int) -> torch.Tensor:
        """(batch, seq) long token ids, on the CPU."""
        vocab = self.successors.shape[0]
        out = torch.empty(batch, seq, dtype=torch.long)
        cur = torch.randint(vocab, (batch,), generator=self.generator)
        for t in range(seq):
            out[:, t] = cur
            choice = torch.multinomial(self.probs[cur], 1, generator=self.generator).squeeze(-1)  # (batch,)
            cur = self.successors[cur, choice]
        return out

    @property
    def noise_loss(self) -> float:
        return math.log(self.successors.shape[0])


def _stationary(succ: torch.Tensor, p: torch.Tensor, vocab: int, iters: int = 200) -> torch.Tensor:
    """Power iteration for the chain's stationary distribution (float64)."""
    pi = torch.full((vocab,), 1.0 / vocab, dtype=torch.float64)
    for _ in range(iters):
        nxt = torch.zeros(vocab, dtype=torch.float64)
        nxt.index_add_(0, succ.reshape(-1), (pi.unsqueeze(-1) * p).reshape(-1))
        # mix with uniform restarts so the chain is ergodic even if the random graph is not
        pi = 0.99 * nxt + 0.01 / vocab
    return pi
