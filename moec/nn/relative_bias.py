"""T5's relative position bias (Raffel et al., arXiv 1910.10683 §2.1; ``model.positions.kind: relative_bucket``,
docs/conventions.md "Encoder-decoder"): a learned scalar per (bucket, head) added to the attention scores, the
bucket a function of the key's offset from the query. Half the buckets hold the offsets 0 … n/2 − 1 one each, the
other half logarithmically wider bins up to ``max_distance``, past which every offset shares the last bucket. The
encoder's bias is bidirectional (the buckets split between keys before and after the query); the decoder's is
causal (only keys at or before the query, so all the buckets serve the past).

The bucket arithmetic runs in float32 and truncates towards zero, as Mesh TensorFlow's and transformers' do: an
offset on a bin edge falls where float32 puts it, so imported checkpoints see the buckets they were trained with.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def relative_position_bucket(
    offset: torch.Tensor, *, bidirectional: bool, n_buckets: int, max_distance: int
) -> torch.Tensor:
    """The bucket (int64, in [0, n_buckets)) of each key offset (key position − query position, int64)."""
    bucket = torch.zeros_like(offset)
    if bidirectional:  # the upper half of the buckets for keys after the query
        n_buckets //= 2
        bucket = bucket + (offset > 0).long() * n_buckets
        distance = offset.abs()
    else:  # a key after the query is never attended: its offset counts as 0
        distance = (-offset).clamp(min=0)
    exact = n_buckets // 2  # distances below this get a bucket each
    small = distance < exact
    # float32 then truncation, as the checkpoints were trained with; clamp(1) keeps log finite where it is unused
    log_ratio = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    wide = exact + (log_ratio * (n_buckets - exact)).long()
    wide = wide.clamp(max=n_buckets - 1)
    return bucket + torch.where(small, distance, wide)


class RelativeBias(nn.Module):
    """One stack's table of n_buckets × n_heads scalars (``weight``, nn.Embedding's layout, as transformers keeps
    ``relative_attention_bias``), held by the stack's first self-attention and read by all of its layers."""

    def __init__(
        self,
        n_buckets: int,
        n_heads: int,
        max_distance: int,
        *,
        bidirectional: bool,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.n_buckets, self.n_heads, self.max_distance = n_buckets, n_heads, max_distance
        self.bidirectional = bidirectional
        self.weight = nn.Parameter(torch.empty(n_buckets, n_heads, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            nn.init.normal_(self.weight, std=0.02)  # small: attention starts close to position-blind

    def forward(self, q_len: int, k_len: int) -> torch.Tensor:
        """(1, n_heads, q_len, k_len): the bias of queries at positions 0 … q_len − 1 over keys at 0 … k_len − 1. A
        causal table's is −inf over the keys after each query, which its stack never attends: the bias is the
        stack's causal mask too, made once per forward for all of its layers."""
        device = self.weight.device
        query = torch.arange(q_len, device=device)[:, None]  # (q, 1)
        key = torch.arange(k_len, device=device)[None, :]  # (1, k)
        buckets = relative_position_bucket(
            key - query, bidirectional=self.bidirectional, n_buckets=self.n_buckets, max_distance=self.max_distance
        )  # (q, k)
        bias = self.weight[buckets].permute(2, 0, 1).unsqueeze(0)  # (q, k, h) → (1, h, q, k)
        return bias if self.bidirectional else bias.masked_fill(key > query, float("-inf"))

    def extra_repr(self) -> str:
        kind = "bidirectional" if self.bidirectional else "causal"
        return f"buckets={self.n_buckets}, heads={self.n_heads}, max_distance={self.max_distance}, {kind}"
