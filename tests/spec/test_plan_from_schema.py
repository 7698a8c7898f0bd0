"""Every router and MoE field a spec writes reaches the plan with the value written (the plan classes are
derived from the schema, so a field added to the schema needs no second declaration): each field is set to a
value other than its default and read back from the resolved plan."""

from __future__ import annotations

import types
import typing
from typing import Any

import pytest

from moec.spec import plan_from_dict, resolve
from moec.spec.schema import FFN, Attention, Balance, LayerDefault, Layers, Lora, Model, MoE, Router, Spec


def other_value(annotation: Any, default: Any) -> Any:
    """A valid value of the field's type that is not its default."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = args[0]
        args = list(typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Literal:
        return next(a for a in args if a != default)
    base = typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation
    if base is bool:
        return not default
    if base is float:
        return 0.25 if default != 0.25 else 0.5
    assert base is int, annotation
    return 3 if default != 3 else 2


def written(model: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        f: other_value(info.annotation, info.default)
        for f, info in model.model_fields.items()
        if f not in skip and not isinstance(info.default, Balance | Router)
    }


def spec_with(moe: MoE, ffn: FFN | None = None) -> Spec:
    """Every layer MoE unless a dense FFN is given (then every layer dense)."""
    return Spec(
        name="t",
        model=Model(vocab_size=64, d_model=32, n_layers=2, max_seq_len=16),
        attention=Attention(n_heads=4),
        ffn=ffn,
        moe=moe,
        layers=Layers(default=LayerDefault(ffn="dense" if ffn else "moe")),
    )


ROUTER = written(Router, skip=("top_k",))
# segmentation is resolved into n_experts, d_ff, top_k and n_shared_experts by the schema (tests/defaults)
MOE = written(
    MoE, skip=("n_experts", "d_ff", "d_ff_shared", "granularity", "router", "lora", "activation", "segmentation")
)
BALANCE = written(Balance)


@pytest.mark.parametrize("activation", ["swiglu_clamped", "gelu"])
def test_every_router_moe_and_balance_field_reaches_the_plan_as_written(activation):
    moe = MoE(
        n_experts=8,
        d_ff=64,
        granularity=2,
        d_ff_shared=48,
        activation=activation,
        router=Router(top_k=2, **ROUTER),
        balance=Balance(**BALANCE),
        lora=Lora(rank=4, alpha=8.0),
        **MOE,
    )
    plan = resolve(spec_with(moe))
    p = plan.layers[0].ffn
    assert [getattr(p.router, f) for f in ROUTER] == list(ROUTER.values())
    assert [getattr(p, f) for f in BALANCE] == list(BALANCE.values())
    clamped_only = ("activation_alpha", "activation_limit")
    assert [getattr(p, f) for f in MOE if f not in clamped_only] == [v for f, v in MOE.items() if f not in clamped_only]
    # activation parameters exist in the plan only for the activation that reads them
    expect = [MOE[f] for f in clamped_only] if activation == "swiglu_clamped" else [None, None]
    assert [p.activation_alpha, p.activation_limit] == expect
    # resolved by hand: granularity 2 splits 8 experts of 64 into 16 of 32; the written dense: true routes
    # every token to all 16
    assert ROUTER["dense"] is True
    assert (p.n_experts, p.d_ff, p.d_ff_shared, p.router.top_k, p.granularity) == (16, 32, 48, 16, 2)
    assert (p.lora_rank, p.lora_alpha, p.activation, p.kind) == (4, 8.0, activation, "moe")
    assert plan_from_dict(plan.to_dict()) == plan  # and survives spec.resolved.yaml


def test_a_moe_without_lora_and_a_dense_ffn_plan_their_defaults():
    spec = spec_with(MoE(n_experts=4, d_ff=16, router=Router(top_k=1)), FFN(d_ff=24, activation="relu", bias=True))
    plan = resolve(spec)
    dense = plan.layers[0].ffn
    assert (dense.kind, dense.d_ff, dense.activation, dense.bias, dense.gated) == ("dense", 24, "relu", True, False)
    assert (dense.activation_alpha, dense.activation_limit) == (None, None)
    moe = resolve(spec.model_copy(update={"layers": Layers(default=LayerDefault(ffn="moe"))})).layers[0].ffn
    # moe.activation unset: the dense FFN's relu, so the experts are not gated (docs/conventions.md, "Activations")
    assert (moe.lora_rank, moe.lora_alpha, moe.d_ff_shared, moe.top_k, moe.gated) == (None, None, 16, 1, False)


def test_every_model_wide_plan_field_survives_spec_resolved_yaml():
    """Each field of ResolvedModel set away from its default (a plan no spec writes all at once) comes back from the
    YAML text of spec.resolved.yaml; a field added to the plan and not reloaded would come back as its default."""
    import dataclasses

    import yaml

    from moec.spec import load_model
    from moec.spec.hyper import HyperConnectionsPlan
    from moec.spec.norm_gate import NormGatePlan
    from moec.spec.plan import ResidualScalesPlan, ResolvedModel

    base = load_model("specs/textbook-moe.yaml")
    changed = {
        "mtp": base.layers[:1],
        "frozen": ("router",),
        "head_bias": True,
        "embedding_multiplier": 2.0,
        "residual_multiplier": 0.5,
        "logits_scaling": 0.25,
        "logit_softcap": 30.0,
        "residual_scales": ResidualScalesPlan((0.5, 2.0), (1.0, 1.0), (3.0, 0.25)),
        "depth_scaled_residual": True,
        "encoder": base.layers[:2],
        "expert_capacity": 8,
        "hyper_connections": HyperConnectionsPlan(4, residual="identity", head="mean"),
        "norm_gate": NormGatePlan(4, ("mixer", "moe_ffn")),
        "spec_hash": "0123abcd",
        "source_file": "elsewhere.yaml",
        "description": "every field away from its default",
    }
    fields = [f for f in dataclasses.fields(ResolvedModel) if f.compare]
    defaulted = {
        f.name for f in fields if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    assert defaulted - set(changed) == set(), "a new plan field: give it a value other than its default here"
    plan = base.replace(**changed)
    assert plan_from_dict(yaml.safe_load(yaml.safe_dump(plan.to_dict(), sort_keys=False))) == plan
