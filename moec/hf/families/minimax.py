"""MiniMax-Text-01 (``model_type`` minimax, MiniMaxForCausalLM): Lightning attention (moec.mixers.lightning,
docs/mixers.md) on the layers ``layer_types`` calls linear_attention and GQA softmax attention without biases on
the full_attention ones (by default the even layers); every layer MoE, Mixtral's router (softmax over all experts,
top-k, renormalised); and each sublayer added to its *normed* input with a factor on each,
x = alpha·norm(x) + beta·f(norm(x)) (``model.norm.placement: normed_residual``, the factors per sublayer kind
from ``{full_attn,linear_attn,mlp}_{alpha,beta}_factor``). Checkpoints name the MoE block as Mixtral's releases do
(``block_sparse_moe``, experts' ``w1``/``w3``/``w2``; transformers' save_pretrained writes them so too) or as
transformers holds it (``mlp``); the lightning layers keep transformers' names under ``self_attn``.

MiniMax's release configs carry fields of their own code that transformers' MiniMax does not read (postnorm,
rotary_dim, attn_type_list, shared_intermediate_size, shared_moe_mode, the layernorm_*_alpha/_beta spellings of the
factors): accepted when they say what transformers builds, and refused as ambiguous when they do not. Export
writes transformers' fields only. In
particular transformers rotates every dim of each head whatever rotary_dim says, where MiniMax's code rotates
rotary_dim of them (MiniMax-Text-01: 64 of 128), so a release config with rotary_dim 64 is refused; moec's shipped
spec ``minimax-text-01`` follows MiniMax's code there.
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig, shown
from moec.hf.families._common import (
    LINEAR_FULL_TYPES,
    PLAIN_ACTIVATIONS,
    aux,
    base,
    defaults,
    gqa,
    ignored_field_agrees,
    jitter_on_hidden,
    linear_full_layer_types,
    moe_core,
    router,
)
from moec.hf.families._export_common import export_base, export_moe_common, moe_plan, one
from moec.hf.families.glm4_moe import take_partial_rotary
from moec.hf.families.mixtral import MixtralMapper
from moec.hf.mapper import Missing
from moec.spec.plan import ResolvedModel

# fmt: off
DEFAULTS = defaults(1e6, vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=None, max_position_embeddings=131072,
                    rms_norm_eps=1e-5, sliding_window=None, num_experts_per_tok=2, num_local_experts=8,
                    router_aux_loss_coef=0.001, router_jitter_noise=0.0, layer_types=None, block_size=256,
                    full_attn_alpha_factor=1, full_attn_beta_factor=1, linear_attn_alpha_factor=1,
                    linear_attn_beta_factor=1, mlp_alpha_factor=1, mlp_beta_factor=1)
# fmt: on

# MiniMax's own spellings of the residual factors, beside transformers' (which transformers reads)
_FACTORS = {
    "attention": ("full_attn", "layernorm_full_attention"),
    "mixer": ("linear_attn", "layernorm_linear_attention"),
    "ffn": ("mlp", "layernorm_mlp"),
}
_LINEAR, _FULL = LINEAR_FULL_TYPES


def translate(c: HFConfig, d: Draft) -> None:
    factor, factor_src = take_partial_rotary(c, None)
    base(c, d, "MiniMax")
    gqa(c, d, bias=False, out_bias=False, bias_src="MiniMaxAttention has no biases")
    _mixers(c, d)
    _lightning(c, d)
    _residuals(c, d)
    _window(c, d)
    _rotary(c, d, factor, factor_src)
    moe_core(c, d, experts_key="num_local_experts", width_key="intermediate_size")
    router(
        d,
        "MiniMaxTopKRouter: softmax over all experts, top-k, renormalise",
        score="softmax",
        softmax_after_topk=False,
        normalize_topk=True,
    )
    jitter_on_hidden(c, d, "router_jitter_noise")
    aux(c, d)
    d.ffn_note = "every MiniMax layer is MoE"
    _release_fields(c, d)


def _layer_types(c: HFConfig, d: Draft) -> tuple[list[str] | None, str]:
    """layer_types as transformers reads it (unset: full attention on the even layers), and its source."""
    if c.value("layer_types") is None:
        types = [_FULL if i % 2 == 0 else _LINEAR for i in range(d.n_layers)]
        return types, "layer_types unset: full_attention on even layers, linear_attention on odd (MiniMaxConfig)"
    return linear_full_layer_types(c, d)


def _mixers(c: HFConfig, d: Draft) -> None:
    types, src = _layer_types(c, d)
    if types is None:
        return
    d.mixer = ["lightning" if t == _LINEAR else "attention" for t in types]
    d.mixer_note = f"{src}: linear_attention is MiniMaxLightningAttention"


def _lightning(c: HFConfig, d: Draft) -> None:
    """The lightning layers' section, when some layer is one (a config of full-attention layers only has none;
    its lightning-only fields are read, so they are not reported unread)."""
    act = c.str("hidden_act")
    if "lightning" not in d.mixer:
        c.value("block_size")
        return
    if act is not None and act not in PLAIN_ACTIVATIONS:
        d.gap("hidden_act", act, f"{act!r} on the lightning layers' q, k and v", "activation")
    d.section(
        "mixers.lightning",
        n_heads=(d.get("attention.n_heads"), c.src("num_attention_heads") + " (the lightning layers' too)"),
        head_dim=(d.get("attention.head_dim"), c.src("head_dim") + " (or hidden_size / num_attention_heads)"),
        chunk=(c.int("block_size"), c.src("block_size")),
        activation=(PLAIN_ACTIVATIONS.get(act or "silu", "silu"), c.src("hidden_act") + " on q, k and v"),
        norm_eps=(1e-6, "MiniMaxLightningAttention's norm: RMSNorm's default eps, not rms_norm_eps"),
        depth_scaled_decay=(True, "MiniMaxLightningAttention.get_slope_rate: slopes × (1 − l/(L − 1 + 1e-5) + 1e-5)"),
    )


def _residuals(c: HFConfig, d: Draft) -> None:
    d.put("model.norm.kind", "rmsnorm", "RMSNorm before each sublayer of every MiniMax layer, plus a final norm")
    d.put("model.norm.placement", "normed_residual", "MiniMaxDecoderLayer: residual = the normed input")
    present = {"attention": "attention" in d.mixer, "mixer": "lightning" in d.mixer, "ffn": True}
    for kind, (hf, _) in _FACTORS.items():
        if not present[kind]:  # a sublayer kind no layer has: its factors apply to none
            for part in ("alpha", "beta"):
                c.value(f"{hf}_{part}_factor")
            continue
        for part in ("alpha", "beta"):
            key = f"{hf}_{part}_factor"
            d.put(f"model.residual_scales.{kind}.{part}", c.float(key), c.src(key))


def _window(c: HFConfig, d: Draft) -> None:
    """A sliding_window applies to the softmax-attention layers only (the lightning layers have no window)."""
    w = c.int("sliding_window", optional=True)
    d.window = [w if m == "attention" else None for m in d.mixer]
    d.window_note = f"{c.src('sliding_window')} on the full_attention layers" if w else ""


def _rotary(c: HFConfig, d: Draft, factor: Any, factor_src: str) -> None:
    """transformers' MiniMax rotates every dim of each head (its rotary embedding reads head_dim alone), whatever
    rotary_dim or partial_rotary_factor say; MiniMax's code rotates rotary_dim of them. They must agree."""
    head_dim = d.get("attention.head_dim")
    if factor is not None and factor != 1.0:
        d.gap(
            factor_src,
            factor,
            f"transformers' MiniMax ignores it and rotates all {head_dim} dims of each head: ambiguous",
            "none: remove it (what transformers runs), or write model.positions.partial_rotary_factor in the spec",
        )
    ambiguity = (
        f"transformers' MiniMax ignores rotary_dim and rotates all {head_dim} dims of each head, MiniMax's code "
        "rotates rotary_dim of them: ambiguous"
    )
    if ignored_field_agrees(c, d, "rotary_dim", head_dim, ambiguity):
        note = d.fields["attention.head_dim"][1]
        d.put("attention.head_dim", head_dim, f"{note} (rotary_dim {head_dim}: agrees, whole heads rotate)")


def _release_fields(c: HFConfig, d: Draft) -> None:
    """MiniMax's own fields, which transformers' MiniMax does not read: each must say what it builds."""
    if ignored_field_agrees(c, d, "postnorm", True, "transformers' MiniMax always adds to the normed input "
                            "(postnorm true): ambiguous"):  # fmt: skip
        d.put("model.norm.placement", "normed_residual", "MiniMaxDecoderLayer: residual = the normed input (postnorm "
              "true: agrees, transformers ignores it)")  # fmt: skip
    ignored_field_agrees(
        c, d, "shared_intermediate_size", 0, "transformers' MiniMax builds no shared expert: ambiguous"
    )
    if c.given("shared_intermediate_size"):
        c.value("shared_moe_mode")  # how a shared expert would be gated: moot without one, or refused with it
    for kind, (hf, release) in _FACTORS.items():
        for part in ("alpha", "beta"):
            if f"model.residual_scales.{kind}.{part}" not in d.fields:  # a sublayer kind no layer has
                c.value(f"{release}_{part}")
                continue
            want = d.get(f"model.residual_scales.{kind}.{part}")
            given = c.value(f"{release}_{part}")
            if given is not None and given != want:
                d.gap(f"{release}_{part}", given, f"transformers' MiniMax reads {hf}_{part}_factor ({shown(want)}) "
                      "and ignores it: ambiguous", f"none: remove it or make it {shown(want)}")  # fmt: skip
    _attn_types(c, d)


def _attn_types(c: HFConfig, d: Draft) -> None:
    """attn_type_list: MiniMax's per-layer kinds (0 lightning, 1 softmax attention); transformers reads layer_types."""
    types = c.value("attn_type_list")
    if types is None:
        return
    want = [0 if m == "lightning" else 1 for m in d.mixer]
    if types == want:
        d.mixer_note += " (attn_type_list: agrees, transformers ignores it)"
    else:
        d.gap("attn_type_list", types, "transformers' MiniMax reads layer_types and ignores attn_type_list, which "
              "says otherwise: ambiguous", "none: remove attn_type_list or make it agree with layer_types")  # fmt: skip


def export(m: ResolvedModel) -> dict[str, Any]:
    """A plan of Lightning and softmax attention layers, every one MoE, with normed residuals → MiniMax's config.
    What transformers' MiniMax fixes in code (the lightning heads are the attention's, its norm's eps 1e-6, the
    decays scaled by depth, whole-head rotary) is checked by importing the config again (moec.hf.config)."""
    kinds = [lp.mixer_kind for lp in m.layers]
    if "lightning" not in kinds or set(kinds) - {"lightning", "attention"}:
        raise CannotExport("needs Lightning attention layers and softmax attention on the others")
    if m.norm.placement != "normed_residual" or m.residual_scales is None:
        raise CannotExport(f"needs normed residuals (spec: {m.norm.placement})")
    cfg = export_base(m, FAMILY, placement="normed_residual")  # the residual factors are written below
    lightning = next(lp.mixer for lp in m.layers if lp.mixer_kind == "lightning")  # each layer's decay_scale differs
    if PLAIN_ACTIVATIONS.get(cfg["hidden_act"]) != lightning.activation:
        raise CannotExport(f"uses hidden_act ({cfg['hidden_act']}) on the lightning q, k, v too")
    e = moe_plan(m, all_layers=True)
    attention_windows = [lp.attention.window for lp in m.layers if lp.mixer_kind == "attention"]
    scales = m.residual_scales
    cfg.update(
        intermediate_size=e.d_ff,
        num_local_experts=e.n_experts,
        router_jitter_noise=0.0,
        sliding_window=one(attention_windows, "the sliding window") if attention_windows else None,
        layer_types=[_LINEAR if k == "lightning" else _FULL for k in kinds],
        block_size=lightning.chunk,
    )
    for kind, (hf, _) in _FACTORS.items():
        alpha, beta = getattr(scales, kind)
        cfg[f"{hf}_alpha_factor"], cfg[f"{hf}_beta_factor"] = alpha, beta
    export_moe_common(cfg, e)
    return cfg


class MiniMaxMapper(MixtralMapper):
    """Mixtral's MoE names; the lightning layers under ``self_attn`` with transformers' parameter names. The decay
    buffers transformers saves beside them (slope_rate, query_decay, key_decay, diagonal_decay) follow from the plan:
    the slopes are checked against it and the four are let go."""

    decay_buffers = ("slope_rate", "query_decay", "key_decay", "diagonal_decay")

    def mixer(self, p: str, lp: Any, leaf: str) -> Any:
        weight = self.ck.get(p + self.attn + leaf)
        if leaf == "qkv_proj.weight":  # once per layer: the saved decays must be the plan's
            self._check_decays(p, lp.mixer)
        return weight

    def derived(self) -> dict[str, Any]:
        """The decay buffers transformers saves for each lightning layer, as it computes them from the slopes
        (float32): slope_rate (H, 1, 1); query_decay and key_decay (H, B, 1) for block positions i = 1…B,
        e^(−s·i) and e^(−s(B − i)); diagonal_decay (1, H, B, B), e^(−s(i − j)) for j ≤ i, else 0; B the block
        size. What an export writes besides the moec tensors (the import checks the slopes and lets them go)."""
        import torch

        from moec.kernels.mixers.lightning import block_decays, lightning_slopes

        out = {}
        for lp in self.plan.layers:
            if lp.mixer_kind != "lightning":
                continue
            plan, p = lp.mixer, self.layer(lp.index) + self.attn
            slopes = torch.tensor(lightning_slopes(plan.n_heads, plan.decay_scale), dtype=torch.float64)
            within, on_memory, on_carried, _ = block_decays(slopes, plan.chunk, torch.float32)
            # transformers' key_decay runs over B − i for i = 1…B: the carried-out factors of a whole block
            out[p + "slope_rate"] = slopes.float()[:, None, None]
            out[p + "query_decay"], out[p + "key_decay"] = on_memory, on_carried
            out[p + "diagonal_decay"] = within[None]
        return out

    def _check_decays(self, p: str, plan: Any) -> None:
        import torch

        from moec.hf.checkpoint import MemoryCheckpoint
        from moec.kernels.mixers.lightning import lightning_slopes

        names = [p + self.attn + b for b in self.decay_buffers]
        present = [n for n in names if n in self.ck]
        if not present:
            return
        slope = p + self.attn + "slope_rate"
        if slope not in self.ck:
            raise Missing([slope])
        self.ck.used.update(present)  # read here, so never also reported unexpected
        if isinstance(self.ck, MemoryCheckpoint):
            # the exporter's own: a trace of element indices, or its read-back of the buffers derived() gave
            return
        saved = self.ck.get(slope).double().flatten()
        want = torch.tensor(lightning_slopes(plan.n_heads, plan.decay_scale), dtype=torch.float64)
        if saved.shape != want.shape or not torch.allclose(saved, want, rtol=1e-5, atol=0):
            raise RuntimeError(
                f"{slope} holds decays {saved.tolist()[:4]}..., not MiniMax's for this layer ({want.tolist()[:4]}...)"
            )


FAMILY = Family(
    "minimax",
    "MiniMaxForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_experts": "num_local_experts"},
    export=export,
    mapper=MiniMaxMapper,
)
