"""A RoPE scaling (how rotary positions are stretched past the training length): the model's
(``model.positions.scaling``) or one layer's own (``layers.*.attention.rope_scaling``). Split from
:mod:`moec.spec.schema`, which re-exports it, so that the per-layer sections (:mod:`moec.spec.layers`) can use it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from moec.strict import MAX_HEAD_DIM, MAX_SEQ, Strict
from moec.vocab import ROPE_SCALINGS

if TYPE_CHECKING:
    from moec.spec.schema import Spec


# YaRN's and Llama 3's own constants (rotation counts, temperature scales, wavelength factors): any finite value a
# release writes (nan or inf would reach the cos/sin tables), bounded as every spec number is
Factor = Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)]


class RopeScaling(Strict):
    kind: Literal[ROPE_SCALINGS]
    """How RoPE is stretched past its training length: linear, dynamic (NTK), yarn, llama3, longrope or ntk_alpha."""
    factor: Annotated[float, Field(gt=0, le=1e6)] | None = None
    """The context extension factor; every kind but ntk_alpha needs it."""
    original_max_seq_len: Annotated[int, Field(gt=0, le=MAX_SEQ)] | None = None
    """The context the model was trained at before scaling (yarn, llama3, longrope)."""
    beta_fast: Factor | None = None
    """yarn: the fast boundary of the corrected frequency range, in rotations (null: 32)."""
    beta_slow: Factor | None = None
    """yarn: the slow boundary of the corrected frequency range, in rotations (null: 1)."""
    mscale: Factor | None = None
    """yarn: the attention-temperature multiplier's scale (DeepSeek-V2/V3)."""
    mscale_all_dim: Factor | None = None
    """yarn: the mscale applied to all dimensions (DeepSeek-V2/V3)."""
    low_freq_factor: Factor | None = None
    """llama3: the low-frequency wavelength factor."""
    high_freq_factor: Factor | None = None
    """llama3: the high-frequency wavelength factor."""
    truncate: bool = True
    """yarn: round the correction range to whole dims (false keeps it unrounded, as gpt-oss)."""
    attention_factor: Annotated[float, Field(gt=0, le=100)] | None = None
    """yarn: the attention scaling factor as stated, instead of the one derived from factor."""
    short_factor: Annotated[list[Annotated[float, Field(gt=0, le=1e6)]], Field(max_length=MAX_HEAD_DIM // 2)] | None = (
        None
    )
    """longrope (Phi-3.5-MoE): per-frequency divisors (rotary dims / 2) up to original_max_seq_len."""
    long_factor: Annotated[list[Annotated[float, Field(gt=0, le=1e6)]], Field(max_length=MAX_HEAD_DIM // 2)] | None = (
        None
    )
    """longrope: per-frequency divisors (rotary dims / 2) beyond original_max_seq_len."""
    short_mscale: Annotated[float, Field(gt=0, le=100)] | None = None
    """longrope: the cos/sin multiplier up to original_max_seq_len."""
    long_mscale: Annotated[float, Field(gt=0, le=100)] | None = None
    """longrope: the cos/sin multiplier beyond original_max_seq_len."""
    alpha: Annotated[float, Field(gt=0, le=1e6)] | None = None
    """ntk_alpha (Hunyuan-A13B): the base becomes theta·alpha^(dim/(dim−2)) at every length."""


# the kinds a layer may scale by on its own: tables that do not depend on the live length (dynamic NTK's and
# LongRoPE's do; a cached decode refuses them for the model's scaling, and would not see a layer's own)
LAYER_KINDS = ("linear", "yarn", "llama3", "ntk_alpha")


def layer_problems(spec: Spec) -> list[tuple[tuple[str | int, ...], str]]:
    """(path, message) for each layers.*.attention.rope_scaling that a layer cannot have (the scaling's own
    fields are checked as the model's are, in moec.spec.checks)."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    for path, a in spec.layers.attention_sections():
        if "rope_scaling" not in a.model_fields_set:
            continue
        here = (*path, "rope_scaling")
        if spec.attention.kind != "gqa":
            out.append(
                (here, "a layer's own rope scaling needs attention.kind gqa (MLA's YaRN temperature is per model)")
            )
        elif spec.model.positions.kind != "rope":
            out.append((here, "a layer's own rope scaling needs model.positions.kind: rope"))
        elif a.rope_scaling is not None and a.rope_scaling.kind not in LAYER_KINDS:
            out.append(
                (
                    (*here, "kind"),
                    f"{a.rope_scaling.kind}: a layer's own scaling is one of {', '.join(LAYER_KINDS)} (the others "
                    "depend on the live sequence length)",
                )
            )
    return out
