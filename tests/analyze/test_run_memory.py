"""The run-memory bound (what smoke-run, verify and build check before allocating) against values derived by
hand from its documented rule: the analyzer's saved tensors of every layer and MTP block, scaled from bf16
to the run's dtype, plus LoRA rows and materialised scores, all times 4; plus per output head the logits
and their gradient in the dtype and three fp32 copies for the loss.

Per token, in bf16, on test_formulas.BASE (see test_report): a dense layer saves 1,632 bytes, an MoE layer
of MOE 1,536, a LoRA-MoE layer (rank 4) 1,136; the final norm's input 128 (the logits are counted apart).
"""

from __future__ import annotations

import pytest

from moec.analyze.memory import (
    RUNTIME_BYTES,
    DoesNotFitError,
    RunMemory,
    forward_run_memory,
    refuse_unless_fits,
    run_activation_bytes,
    training_run_memory,
)
from tests.analyze.test_formulas import MOE, plan
from tests.analyze.test_report import LORA

V = 1000


@pytest.mark.parametrize(("dtype", "nb"), [("fp32", 4), ("bf16", 2), ("fp8", 1)])
def test_dense_model_by_hand(dtype: str, nb: int):
    saved = 4 * 1632 + 128  # bf16; fp32 doubles it, fp8 is not counted below bf16
    per_token = saved * max(nb, 2) // 2
    heads = V * (2 * nb + 4 * 3)
    got = run_activation_bytes(plan(), batch=2, seq=8, dtype=dtype)
    assert got == 4 * per_token * 16 + heads * 16 and isinstance(got, int)


def test_mtp_blocks_add_their_layer_and_their_head():
    saved = 5 * 1536 + 128  # four MoE layers and one MTP block
    heads = 2 * V * (2 * 2 + 12)
    assert run_activation_bytes(plan(MOE + "mtp: {n_layers: 1}\n"), batch=1, seq=4, dtype="bf16") == (
        4 * saved * 4 + heads * 4
    )


def test_lora_layers_with_two_matrix_experts():
    """GELU LoRA experts adapt two matrices: k·2·(d + r + f) rows per layer; the saved tensors per layer are
    the attention's 608 bytes, the FFN input 256, the router 32 and the base's 2·32 intermediates with the
    3·k rank products, 2·64 + 2·2·3·4 = 176."""
    saved = 4 * (608 + 256 + 32 + 176) + 128
    rows = 4 * 2 * 2 * (64 + 4 + 32)
    gelu = plan(LORA, sets=("moe.activation=gelu",))
    assert run_activation_bytes(gelu, batch=1, seq=2, dtype="fp32") == 4 * (saved * 2 + 4 * rows) * 2 + V * 20 * 2


def test_lora_layers_add_their_gathered_rows():
    """Per LoRA layer and token: k = 2 chosen experts × 3 adapted matrices × (d + r + f) = 2·3·(64 + 4 + 32)."""
    saved = 4 * 1136 + 128
    rows = 4 * 2 * 3 * (64 + 4 + 32)
    per_token = saved * 2 + 4 * rows  # fp32
    assert run_activation_bytes(plan(LORA), batch=1, seq=2, dtype="fp32") == 4 * per_token * 2 + V * 20 * 2


@pytest.mark.parametrize(
    ("sets", "scores"),
    [
        # sinks: fp32 scores and their cast, per head: batch·h·S·(S+1)·(4 + nb) per layer
        (("attention.sinks=true",), 4 * 2 * 8 * 8 * 9 * (4 + 4)),
        # a window or a chunk shorter than the sequence: an (S, S) mask and its cast, S·S·(1 + nb)
        (("attention.window=4",), 4 * 8 * 8 * (1 + 4)),
        (("attention.chunk=4",), 4 * 8 * 8 * (1 + 4)),
        (("attention.window=8",), 0),  # as long as the sequence: no mask
        (("attention.chunk=8",), 0),
    ],
    ids=["sinks", "window", "chunk", "window=seq", "chunk=seq"],
)
def test_materialised_scores_by_hand(sets: tuple[str, ...], scores: int):
    saved = 4 * 1632 + 128
    got = run_activation_bytes(plan(sets=sets), batch=2, seq=8, dtype="fp32")
    assert got == 4 * (saved * 2 * 16 + scores) + V * 20 * 16


def test_training_and_forward_runs_by_part():
    model = plan()
    acts = run_activation_bytes(model, batch=2, seq=8, dtype="fp32")
    t = training_run_memory(model, params=1000, trainable=600, batch=2, seq=8, dtype="fp32", data_bytes=77)
    assert t.dtype == "fp32" and t.at == "at batch 2 × seq 8"
    assert t.parts == (
        ("weights", 4000),
        ("gradients", 2400),
        ("optimizer", 4 * 2400),  # two moments and two full-size temporaries
        ("activations", acts),
        ("data", 77),
        ("runtime", RUNTIME_BYTES),
    )
    assert t.total == 4000 + 2400 + 9600 + acts + 77 + (64 << 20)
    assert dict(training_run_memory(model, params=1, trainable=1, batch=2, seq=8, dtype="fp32").parts)["data"] == 0
    f = forward_run_memory(model, params=1000, batch=2, seq=8, dtype="bf16")
    assert f.parts == (
        ("weights", 2000),
        ("activations", run_activation_bytes(model, batch=2, seq=8, dtype="bf16")),
        ("runtime", 64 << 20),
    )
    assert f.at == "at batch 2 × seq 8" and f.dtype == "bf16"


def test_description_lists_the_nonzero_parts_in_binary_units():
    need = RunMemory(
        "fp32", (("weights", 3 << 30), ("gradients", 0), ("activations", 5 << 20)), at="at batch 2 × seq 8"
    )
    assert need.describe() == "about 3.0 GiB in fp32 (weights 3.00 GiB, activations 5.00 MiB at batch 2 × seq 8)"
    assert RunMemory("bf16", (("weights", 3 << 29),)).describe() == "about 1.5 GiB in bf16"
    two = RunMemory("bf16", (("weights", 3 << 29), ("runtime", 64 << 20)))
    assert two.describe() == "about 1.6 GiB in bf16 (weights 1.50 GiB, runtime 64.00 MiB)"
    one_with_shape = RunMemory("bf16", (("activations", 2048),), at="at batch 1 × seq 4")
    assert one_with_shape.describe() == "about 0.0 GiB in bf16 (activations 2.00 KiB at batch 1 × seq 4)"


def test_refusal_names_the_need_and_what_is_free():
    need = RunMemory("fp32", (("weights", 3 << 30),))
    with pytest.raises(
        DoesNotFitError, match=r"^smoke-run needs about 3\.0 GiB in fp32 but the CPU has 2\.0 GiB free; try less$"
    ):
        refuse_unless_fits(need, 2 << 30, lead="smoke-run needs", where="the CPU", hint="; try less")
    with pytest.raises(DoesNotFitError, match=r"^build needs about 3\.0 GiB in fp32 but the GPU has 1\.0 GiB free$"):
        refuse_unless_fits(need, 1 << 30, lead="build needs", where="the GPU")
    refuse_unless_fits(need, 3 << 30, lead="x", where="y")  # exactly enough: runs
    refuse_unless_fits(need, None, lead="x", where="y")  # unknown free memory: nothing is refused
