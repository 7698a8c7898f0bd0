"""gpt-oss (``model_type`` gpt_oss, GptOssForCausalLM): attention sinks, sliding windows on alternate layers,
top-k of the router logits then softmax over the k, biased router and experts, and a clamped SwiGLU
fixed in code. Checkpoints stack the experts with gate and up in alternate columns.
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig
from moec.hf.families._common import aux, base, defaults, gqa, moe_core, router, typed_windows
from moec.hf.families._export_common import export_base, export_moe_common, layer_types, moe_plan
from moec.hf.mapper import Mapper
from moec.spec.plan import ResolvedModel

# fmt: off
DEFAULTS = defaults(150000.0, num_hidden_layers=36, num_local_experts=128, vocab_size=201088, hidden_size=2880,
                    intermediate_size=2880, head_dim=64, num_attention_heads=64, num_key_value_heads=8,
                    sliding_window=128, max_position_embeddings=131072, rms_norm_eps=1e-5, num_experts_per_tok=4,
                    swiglu_alpha=1.702, swiglu_limit=7.0, router_aux_loss_coef=0.001, layer_types=None,
                    attention_bias=True,
                    # GptOssConfig.__post_init__ when the config gives no rope parameters
                    default_rope_parameters={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                             "beta_slow": 1.0, "truncate": False,
                                             "original_max_position_embeddings": 4096})
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "gpt-oss")
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)")
    d.put("attention.sinks", True, "GptOssAttention.sinks: one learned logit per head")
    w = c.int("sliding_window", optional=True)
    default = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(d.n_layers)]
    typed_windows(c, d, w, default, "sliding on even layers")
    moe_core(c, d, experts_key="num_local_experts", width_key="intermediate_size")
    if c.given("experts_per_token") and c.value("experts_per_token") != d.get("moe.router.top_k"):
        c.bad("experts_per_token", "disagrees with num_experts_per_tok")
    c.value("initial_context_length")  # gpt-oss's own name for yarn's original length
    c.value("hidden_act")  # GptOssExperts ignores it: the activation is fixed in code
    d.put("moe.activation", "swiglu_clamped", "GptOssExperts._apply_gate: (clamp(up) + 1)·g·sigmoid(alpha·g)")
    d.put("moe.activation_alpha", c.float("swiglu_alpha"), c.src("swiglu_alpha"))
    d.put("moe.activation_limit", c.float("swiglu_limit"), c.src("swiglu_limit"))
    d.put("moe.bias", True, "GptOssExperts: gate_up_proj_bias and down_proj_bias")
    router(
        d,
        "GptOssTopKRouter: top-k of the logits, softmax over the k",
        score="softmax",
        softmax_after_topk=True,
        normalize_topk=False,
        bias=True,
    )
    aux(c, d)
    d.ffn_note = "every gpt-oss layer is MoE"


def _clamped_swiglu(activation: str) -> str:
    """GptOssExperts fixes its activation in code; hidden_act is unused, so the plan's must be that one."""
    if activation != "swiglu_clamped":
        raise CannotExport(f"has only the clamped SwiGLU (swiglu_clamped), not {activation}")
    return "silu"


def export(m: ResolvedModel) -> dict[str, Any]:
    cfg = export_base(m, FAMILY, hidden_act=_clamped_swiglu)
    a, e = m.layers[0].attention, moe_plan(m, all_layers=True)
    w, types = layer_types(m)
    cfg.update(
        intermediate_size=e.d_ff,
        num_local_experts=e.n_experts,
        attention_bias=a.bias,
        sliding_window=w,
        layer_types=types,
        swiglu_alpha=e.activation_alpha,
        swiglu_limit=e.activation_limit,
    )
    if cfg["rope_scaling"] is None:
        # without rope parameters GptOssConfig applies its own YaRN: say "default" outright
        del cfg["rope_scaling"], cfg["rope_theta"]
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": m.positions.theta}
    export_moe_common(cfg, e)
    return cfg


class GptOssMapper(Mapper):
    routers = ("router.",)
    interleaved = True


FAMILY = Family(
    "gpt_oss",
    "GptOssForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_experts": "num_local_experts"},
    export=export,
    export_rank=80,
    mapper=GptOssMapper,
)
