"""Rotary position embeddings (RoFormer, arXiv 2104.09864) with the context-extension scalings a spec
can name: linear (position interpolation), dynamic NTK, NTK with a fixed alpha (Hunyuan), YaRN (arXiv
2309.00071, with DeepSeek-V3's mscale), Llama 3.1's frequency-band scaling and LongRoPE (Phi-3.5-MoE).

Conventions are Hugging Face's, so that checkpoints load without permuting weights:
- cos/sin are laid out ``cat(freqs, freqs)`` and applied with ``rotate_half`` (dims i and i + dim/2
  form a pair), as in HF Llama/Mixtral/Qwen;
- DeepSeek-V2/V3 checkpoints pair *adjacent* dims (x0, x1), (x2, x3), ...: :func:`apply_rope_interleaved`
  rotates those pairs and writes the result in the half layout, exactly like transformers'
  ``apply_rotary_pos_emb_interleave`` (q and k are both re-laid out, so q·k is unchanged).

Multimodal RoPE (``positions.mrope_sections``, Qwen-VL) shares the frequencies among temporal, height and width
position ids; on text the three ids are the token's position, and every section's angle is then the plain one:
moec, which runs text, needs no table of its own for it.

Frequencies are recomputed in every forward (a few tiny ops, once per model call): no buffer can be left
uninitialised after building on ``meta`` and materialising, and dynamic NTK needs the live length anyway.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from moec.spec.plan import PositionsPlan, RopeScalingPlan


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature 0.1·mscale·ln(s) + 1 (1 when not extending)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def softmax_scale_factor(positions: PositionsPlan) -> float:
    """Multiplier on MLA's 1/√d_qk. DeepSeek-V2/V3 fold YaRN's temperature into the softmax scale as
    mscale(s, mscale_all_dim)² (transformers' ``yarn_apply_mscale``); 1 for every other scaling. GQA
    models take YaRN's temperature through cos/sin only, as in transformers."""
    sc = positions.scaling
    if positions.kind != "rope" or sc is None or sc.kind != "yarn" or not sc.mscale_all_dim:
        return 1.0
    return yarn_mscale(sc.factor, sc.mscale_all_dim) ** 2


def inv_frequencies(
    positions: PositionsPlan, dim: int, max_seq_len: int, seq_len: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, float]:
    """((dim/2,) fp32 inverse frequencies, the factor cos and sin are multiplied by)."""
    base = positions.theta
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim  # (dim/2,)
    sc = positions.scaling
    if sc is None:
        return 1.0 / base**exponents, 1.0
    if sc.kind == "linear":
        return 1.0 / base**exponents / sc.factor, 1.0
    if sc.kind == "dynamic":
        # NTK-aware: stretch the base once the live sequence exceeds the trained length
        trained = sc.original_max_seq_len or max_seq_len
        length = max(seq_len, trained)
        base = base * ((sc.factor * length / trained) - (sc.factor - 1)) ** (dim / (dim - 2))
        return 1.0 / base**exponents, 1.0
    if sc.kind == "ntk_alpha":
        # Hunyuan's fixed NTK stretch of the base (transformers' compute_ntk_alpha_rope_parameters): static
        assert sc.alpha is not None, "checked by the spec"
        return 1.0 / (base * sc.alpha ** (dim / (dim - 2))) ** exponents, 1.0
    if sc.kind == "yarn":
        return _yarn(sc, base, dim, exponents)
    if sc.kind == "llama3":
        return _llama3(sc, 1.0 / base**exponents), 1.0
    if sc.kind == "longrope":
        # LongRoPE (arXiv 2402.13753), as Phi-3.5-MoE's own code: the long factors and mscale once the live
        # sequence exceeds the trained length. (transformers 5.23's Phimoe keeps the short factors even
        # then and switches only the mscale; the two agree up to original_max_seq_len tokens.)
        assert sc.original_max_seq_len is not None and sc.short_factor and sc.long_factor, "checked by the spec"
        long = seq_len > sc.original_max_seq_len
        ext = torch.tensor(sc.long_factor if long else sc.short_factor, dtype=torch.float32, device=device)
        mscale = sc.long_mscale if long else sc.short_mscale
        assert mscale is not None, "checked by the spec"
        return 1.0 / (ext * base**exponents), mscale
    raise ValueError(f"unknown rope scaling {sc.kind!r}")


def _yarn(sc: RopeScalingPlan, base: float, dim: int, exponents: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Blend interpolated (÷factor) and original frequencies with a linear ramp over the dims whose
    wavelength falls between beta_fast and beta_slow rotations of the original context."""
    assert sc.original_max_seq_len is not None, "checked by the spec"
    factor = sc.factor
    if sc.attention_factor is not None:  # stated outright (gpt-oss)
        attention_factor = sc.attention_factor
    elif sc.mscale and sc.mscale_all_dim:  # DeepSeek: the ratio; 1 when the two are equal
        attention_factor = yarn_mscale(factor, sc.mscale) / yarn_mscale(factor, sc.mscale_all_dim)
    else:
        attention_factor = yarn_mscale(factor)
    beta_fast, beta_slow = sc.beta_fast or 32.0, sc.beta_slow or 1.0

    def correction_dim(rotations: float) -> float:
        return dim * math.log(sc.original_max_seq_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if sc.truncate:  # round the ramp to whole dims (gpt-oss keeps it fractional)
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=exponents.device) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # (dim/2,) 1: extrapolate (keep the original frequency), 0: interpolate
    pos_freqs = base**exponents
    inv = (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep
    return inv, attention_factor


def _llama3(sc: RopeScalingPlan, inv: torch.Tensor) -> torch.Tensor:
    """Llama 3.1: divide low frequencies by factor, keep high ones, smooth in between."""
    assert sc.original_max_seq_len is not None, "checked by the spec"
    low_ff = sc.low_freq_factor if sc.low_freq_factor is not None else 1.0  # Llama 3.1's values
    high_ff = sc.high_freq_factor if sc.high_freq_factor is not None else 4.0
    trained = sc.original_max_seq_len
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > trained / low_ff, inv / sc.factor, inv)
    smooth = (trained / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * scaled / sc.factor + smooth * scaled
    medium = (wavelen >= trained / high_ff) & (wavelen <= trained / low_ff)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for one forward; shared by every layer (no parameters, no buffers)."""

    def __init__(self, positions: PositionsPlan, dim: int, max_seq_len: int):
        super().__init__()
        self.positions, self.dim, self.max_seq_len = positions, dim, max_seq_len

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv, attention_factor = inv_frequencies(self.positions, self.dim, self.max_seq_len, seq_len, device)
        t = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv)  # (S, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (S, dim)
        return (emb.cos() * attention_factor).to(dtype), (emb.sin() * attention_factor).to(dtype)

    def extra_repr(self) -> str:
        sc = self.positions.scaling
        return f"dim={self.dim}, theta={self.positions.theta}, scaling={sc.kind if sc else None}"


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, h, S, hd); cos, sin (S, rot), rot ≤ hd. Pairs (i, i + rot/2), HF Llama convention. With rot < hd
    (partial rotary) the first rot dims rotate and the rest pass through, as transformers' GLM-4.5-MoE and
    MiniMax-M2 ``apply_rotary_pos_emb``."""
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]  # (B, h, S, rot), (B, h, S, hd − rot)
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, h, S, dim) with DeepSeek's adjacent pairs (2i, 2i+1); the output is in the half layout."""
    half = cos.shape[-1] // 2
    c, s = cos[..., :half], sin[..., :half]  # (S, dim/2): cat(freqs, freqs) holds each angle twice
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, h, S, dim/2)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
