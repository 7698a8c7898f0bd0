"""Render an encoder-decoder model (Switch Transformers, T5; moec/nn/encdec.py, docs/conventions.md
"Encoder-decoder") into one readable, standalone ``model.py`` (``templates/encdec_model.j2``).

The generated file holds both stacks, T5's relative position bias (the first self-attention of each stack holds
its table, every layer of the stack adds it), the decoder's cross-attention over the encoder's output, the Switch
router's per-sequence expert capacity (``encoder.expert_capacity``) and the tied head's d_model^-0.5 scale;
``Model.forward(input_ids, decoder_input_ids)`` returns moec.nn's ``(logits, ModelAux)``. Parameter names and shapes
are ``moec.nn.EncoderDecoderModel``'s, so a library state_dict loads with ``strict=True`` and gives its logits.

The components both kinds of model share (norms, the dense FFN, the router, the experts) come from the decoder-only
templates, specialised by :func:`moec.codegen.features.plan_features` on the layers of both stacks. What moec.nn
does not build is refused as moec.nn refuses it (``moec.spec.encdec.build_refusals``); what moec.nn builds but this
file does not render is refused by name in :func:`_refusals`. As in :mod:`moec.codegen.render`, every value reaching
the template is checked text from :mod:`moec.codegen.checks`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from moec.codegen.checks import float_text, int_text
from moec.codegen.features import Features, plan_features
from moec.codegen.layers import ffn_call
from moec.codegen.layout import INDENT, Call, call_lines, table_lines
from moec.codegen.render import moe_runtime_names, runtime_imports
from moec.spec.encdec import RELATIVE_BUCKET, build_refusals  # what moec.nn builds: one list, torch-free
from moec.spec.plan import DenseFFNPlan, LayerPlan, MoEPlan, ResolvedModel

if TYPE_CHECKING:
    import jinja2

# the router kinds whose Router this file drives as moec.nn's MoE does (the others take extra inputs or refusals)
_ROUTER_KINDS = ("topk", "sparsemixer")


def _refusals(plan: ResolvedModel, f: Features) -> list[str]:
    """What moec.nn builds in an encoder-decoder model but this file does not render, each named."""
    attns = [lp.attention for lp in (*plan.encoder, *plan.layers)]
    attns += [lp.cross_attention for lp in plan.layers if lp.cross_attention is not None]
    shapes = {(a.n_heads, a.n_kv_heads, a.head_dim, a.v_dim, a.bias, a.out_bias, a.scale) for a in attns}
    out = ["per-layer attention shapes"] if len(shapes) > 1 else []
    if f.router is not None and f.router.kind not in _ROUTER_KINDS:
        out.append(f"moe.router.kind {f.router.kind!r}")
    return out


def _decoder_view(plan: ResolvedModel) -> ResolvedModel:
    """The plan as a decoder-only model of both stacks' layers and no positions: what the shared templates read."""
    positions = dataclasses.replace(plan.positions, kind="none", n_buckets=None, max_distance=None)
    return dataclasses.replace(plan, encoder=(), positions=positions)


def _constants(plan: ResolvedModel, c: dict[str, str | None]) -> dict[str, str | None]:
    """The numbers the encoder-decoder's own classes print, checked, with the shared ones in ``c``."""
    a = plan.layers[0].attention
    out = dict(c)
    out |= {
        "n_heads": int_text(a.n_heads, "attention.n_heads"),
        "n_kv_heads": int_text(a.n_kv_heads, "attention.n_kv_heads"),
        "head_dim": int_text(a.head_dim, "attention.head_dim"),
        "v_head_dim": int_text(a.v_dim, "attention.v_head_dim"),
        "attention_scale": None if a.scale is None else float_text(a.scale, "attention.scale"),
        "n_buckets": None,
        "max_distance": None,
        "expert_capacity": None,
    }
    if plan.positions.kind == RELATIVE_BUCKET:
        out["n_buckets"] = int_text(plan.positions.n_buckets, "positions.n_buckets")
        out["max_distance"] = int_text(plan.positions.max_distance, "positions.max_distance")
    if plan.expert_capacity is not None:
        out["expert_capacity"] = int_text(plan.expert_capacity, "encoder.expert_capacity")
    return out


def _ffn_constructor(layers: list[LayerPlan], f: Features, capacity: bool) -> dict[str, list[str]]:
    """{"dense": lines, "moe": lines}: the return statements of make_ffn that build each FFN kind the model has (the
    MoE's inside ``if moe:`` when both are). With a per-sequence capacity the MoE's router is a
    SequenceCapacityRouter."""
    out: dict[str, list[str]] = {}
    for kind, cls in (("dense", DenseFFNPlan), ("moe", MoEPlan)):
        plan = next((lp.ffn for lp in layers if isinstance(lp.ffn, cls)), None)
        if plan is None:
            continue
        call = dataclasses.replace(ffn_call(plan, f), keyword="")
        if kind == "moe" and capacity:
            router, *rest = call.args
            assert isinstance(router, Call)
            router = dataclasses.replace(
                router, func="SequenceCapacityRouter", args=(*router.args, "capacity=EXPERT_CAPACITY")
            )
            call = dataclasses.replace(call, args=(router, *rest))
        out[kind] = call_lines(call, " " * 4 * (1 + (kind == "moe" and f.dense)), "return ")
    return out


def _moe_table(name: str, layers: tuple[LayerPlan, ...]) -> list[str]:
    return table_lines(name, [repr(isinstance(lp.ffn, MoEPlan)) for lp in layers])


def _stack_lines(f: Features, relative: bool, decoder: bool, n_layers: str) -> list[str]:
    """``self.layers = nn.ModuleList(Block(...) for ...)``: a stack's layers, each told whether it is MoE (its
    stack's table) and, with relative positions, whether it holds the stack's bias table (the first)."""
    mixed = f.moe and f.dense  # the tables say which layers are MoE
    args = ["moe"] if mixed else []
    args.append(f"decoder={decoder}")
    if relative:
        args.append("table=i == 0")
    if f.moe:
        args.append("backend=backend")
    table = "DECODER_MOE" if decoder else "ENCODER_MOE"
    loop = {
        (True, True): f"i, moe in enumerate({table})",
        (True, False): f"moe in {table}",
        (False, True): f"i in range({n_layers})",
        (False, False): f"_ in range({n_layers})",
    }[(mixed, relative)]
    call = Call("nn.ModuleList", (f"Block({', '.join(args)}) for {loop}",))
    return call_lines(call, INDENT, "self.layers = ")


def render_encdec_source(plan: ResolvedModel, *, name: str, spec_hash: str, environment: jinja2.Environment) -> str:
    """The generated ``model.py`` of an encoder-decoder plan. Raises ValueError for one codegen cannot express."""
    refused = build_refusals(plan)
    if refused:
        raise ValueError(f"codegen does not support an encoder-decoder model with {'; '.join(refused)} yet")
    if not plan.layers or not plan.encoder:
        raise ValueError("an encoder-decoder plan needs encoder and decoder layers")
    layers = [*plan.encoder, *plan.layers]
    try:
        f, c = plan_features(_decoder_view(plan), layers)
    except (TypeError, AttributeError) as e:  # a hand-built plan with a value of the wrong type
        raise ValueError(f"the plan holds a value codegen cannot use: {e}") from None
    refused = _refusals(plan, f)
    if refused:
        raise ValueError(f"codegen does not support {'; '.join(refused)} in an encoder-decoder model yet")
    if f.router is not None and plan.expert_capacity is not None:  # the capacity counts each sequence's tokens
        f = dataclasses.replace(f, router=dataclasses.replace(f.router, sequence_capacity=True))
    relative = plan.positions.kind == RELATIVE_BUCKET
    n_moe = [
        int_text(sum(isinstance(lp.ffn, MoEPlan) for lp in s), "MoE layers", minimum=0)
        for s in (plan.encoder, plan.layers)
    ]
    return environment.get_template("encdec_model.j2").render(
        name=name,
        spec_hash=spec_hash,
        f=f,
        c=_constants(plan, c),
        n_encoder=int_text(len(plan.encoder), "encoder.n_layers"),
        n_decoder=int_text(len(plan.layers), "n_layers"),
        n_moe=n_moe,
        relative=relative,
        ffn=_ffn_constructor(layers, f, plan.expert_capacity is not None),
        encoder_layers=_stack_lines(f, relative, False, int_text(len(plan.encoder), "encoder.n_layers")),
        decoder_layers=_stack_lines(f, relative, True, int_text(len(plan.layers), "n_layers")),
        encoder_moe=_moe_table("ENCODER_MOE", plan.encoder),
        decoder_moe=_moe_table("DECODER_MOE", plan.layers),
        imports=runtime_imports(f, ["ModelAux", *moe_runtime_names(f)]),  # the aux records, the MoE's pieces
    )
