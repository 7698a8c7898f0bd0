"""The accelerator table and a user's accelerator file: what `moec plan` and `moec roofline` share."""

from __future__ import annotations

import pytest

from moec.errors import SpecError
from moec.plan.accelerators import ACCELERATORS, DTYPES, accelerator_table, load_accelerator_file


def test_every_builtin_has_a_source_a_bf16_peak_and_sparsity_free_figures():
    for key, acc in ACCELERATORS.items():
        assert acc.source and set(acc.peak_flops) == set(DTYPES), key
        # dense tensor-core peaks: fp16 runs at the bf16 rate, fp8 (where there is one) at about twice it (the
        # vendors' own figures: H100 989 and 1,979 TFLOPS, L40S 362.05 and 733); a sparsity figure would be
        # twice again
        assert acc.peak_flops["fp16"] == acc.bf16_flops, key
        fp8 = acc.peak_flops["fp8"]
        assert fp8 is None or fp8 == pytest.approx(2 * acc.bf16_flops, rel=2e-2), key
        assert acc.peak_flops["fp32"] < acc.bf16_flops, key


def test_a_users_file_adds_to_the_table(tmp_path):
    f = tmp_path / "gpus.yaml"
    f.write_text(
        "accelerators:\n  x1: {name: X1, hbm_bytes: 1e9, hbm_bytes_per_s: 1e12, peak_flops: {bf16: 2e14}, source: mine}\n"
    )
    table = accelerator_table(f)
    assert set(ACCELERATORS) < set(table) and table["x1"].bf16_flops == 2 * 10**14
    assert table["x1"].peak_flops == {"fp32": None, "bf16": 2 * 10**14, "fp16": None, "fp8": None}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("h100: {}\n", ["gpus.yaml:1:1 expected one mapping, accelerators: {NAME: {name, hbm_bytes, ...}}"]),
        ("accelerators: {}\n", ["gpus.yaml:1:15 accelerators: defines no accelerator"]),
        (
            "accelerators:\n  h100: {name: mine}\n",
            ["gpus.yaml:2:3 accelerators.h100: h100 is a built-in accelerator; give yours another name"],
        ),
        (
            "accelerators:\n  x: {name: X, hbm_bytes: 1e9, hbm_bytes_per_s: 1.5, peak_flops: {fp8: 1e15, int4: 1}, source: s}\n",
            [
                "gpus.yaml:2:66 accelerators.x.peak_flops: bf16 is required (moec plan times steps in bf16)",
                "gpus.yaml:2:78 accelerators.x.peak_flops.int4: unknown dtype; expected fp32, bf16, fp16, fp8",
                "gpus.yaml:2:49 accelerators.x.hbm_bytes_per_s: 1.5: expected a whole number",
            ],
        ),
        (  # YAML's .nan and .inf are floats that every comparison with a bound lets through
            "accelerators:\n  x: {name: X, hbm_bytes: .nan, hbm_bytes_per_s: .inf, peak_flops: {bf16: 1e15}, source: s}\n",
            [
                "gpus.yaml:2:27 accelerators.x.hbm_bytes: nan: expected a finite number",
                "gpus.yaml:2:50 accelerators.x.hbm_bytes_per_s: inf: expected a finite number",
            ],
        ),
    ],
)
def test_each_problem_of_a_users_file_is_one_located_error(tmp_path, text, expected):
    f = tmp_path / "gpus.yaml"
    f.write_text(text)
    with pytest.raises(SpecError) as e:
        load_accelerator_file(str(f))
    assert sorted(str(p).replace(f"{tmp_path}/", "") for p in e.value.problems) == sorted(expected)


def test_a_file_that_is_not_regular_is_named_for_what_it_is(tmp_path):
    with pytest.raises(SpecError) as e:
        load_accelerator_file(str(tmp_path))
    assert [(p.file, p.message) for p in e.value.problems] == [
        (str(tmp_path), "is a directory, not a YAML accelerator file")
    ]
