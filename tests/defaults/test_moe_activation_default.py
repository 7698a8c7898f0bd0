"""moe.activation left unset takes the ffn section's activation, so experts are never silently gated (1.5× the
parameters) where the dense FFN is not; without an ffn section it is swiglu, the default of every gated MoE."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.spec import load_spec, resolve

D, F, E, LAYERS = 64, 128, 4, 2

HEAD = f"""\
moec: 1
name: t
model: {{vocab_size: 100, d_model: {D}, n_layers: {LAYERS}, max_seq_len: 64}}
attention: {{n_heads: 4}}
"""
MOE = f"moe: {{n_experts: {E}, d_ff: {F}, router: {{top_k: 2}}, balance: {{load_balance_coeff: 0.01}}"
ONE_DENSE = "layers: {default: {ffn: moe}, overrides: [{select: [0], ffn: dense}]}\n"


def spec(ffn: str, moe_extra: str = "") -> str:
    layers = ONE_DENSE if ffn else "layers: {default: {ffn: moe}}\n"
    return HEAD + ffn + "\n" + MOE + moe_extra + "}\n" + layers


def routed_params(ffn: str, moe_extra: str = "") -> tuple[str, int]:
    plan = resolve(load_spec("x.yaml", text=spec(ffn, moe_extra)))
    rows = {c.name: c for c in analyze(plan).components}
    return plan.layers[-1].ffn.activation, rows["routed_experts"].params


@pytest.mark.parametrize(
    "ffn,activation,matrices",
    [
        ("ffn: {d_ff: 256, activation: gelu}", "gelu", 2),  # the trap the issue names: no longer 3 matrices
        ("ffn: {d_ff: 256, activation: relu}", "relu", 2),
        ("ffn: {d_ff: 256, activation: geglu_tanh}", "geglu_tanh", 3),
        ("ffn: {d_ff: 256}", "swiglu", 3),  # the dense FFN's own default
        ("", "swiglu", 3),  # no ffn section: swiglu
    ],
)
def test_unset_expert_activation_is_the_dense_ffns(ffn: str, activation: str, matrices: int) -> None:
    got_activation, params = routed_params(ffn)
    moe_layers = 1 if ffn else LAYERS
    assert got_activation == activation
    assert params == moe_layers * E * matrices * D * F  # counted by hand: E experts of `matrices` d×F matrices


def test_a_written_expert_activation_wins() -> None:
    got_activation, params = routed_params("ffn: {d_ff: 256, activation: gelu}", ", activation: swiglu")
    assert (got_activation, params) == ("swiglu", E * 3 * D * F)


def test_clamped_swiglus_alpha_and_limit_come_along() -> None:
    ffn = "ffn: {d_ff: 256, activation: swiglu_clamped, activation_alpha: 1.5, activation_limit: 3.0}"
    text = spec(ffn, ", activation_limit: 5.0")
    moe = resolve(load_spec("x.yaml", text=text)).layers[1].ffn
    assert (moe.activation, moe.activation_alpha, moe.activation_limit) == ("swiglu_clamped", 1.5, 5.0)


def test_set_on_the_ffn_reaches_the_experts() -> None:
    text = spec("ffn: {d_ff: 256}")
    plan = resolve(load_spec("x.yaml", text=text, sets=["ffn.activation=relu"]))
    assert [lp.ffn.activation for lp in plan.layers] == ["relu", "relu"]


def test_a_spec_built_in_python_follows_the_same_rule() -> None:
    from moec.spec.schema import FFN, Attention, LayerDefault, Layers, Model, MoE, Router, Spec

    def moe_activation(**moe: str) -> str:
        spec = Spec(
            name="t",
            model=Model(vocab_size=64, d_model=32, n_layers=2, max_seq_len=16),
            attention=Attention(n_heads=4),
            ffn=FFN(d_ff=64, activation="gelu"),
            moe=MoE(n_experts=4, d_ff=32, router=Router(top_k=2), **moe),
            layers=Layers(default=LayerDefault(ffn="moe")),
        )
        return resolve(spec).layers[0].ffn.activation

    assert (moe_activation(), moe_activation(activation="relu")) == ("gelu", "relu")
