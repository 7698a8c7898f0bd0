"""The triton backend takes the whole backend interface, including swiglu_clamped's alpha/limit
(which it hands to the reference path), checked under the interpreter in a child process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

CHILD = r"""
import torch
from moec.kernels import naive
from moec.kernels import triton as triton_backend
torch.manual_seed(0)
T, d, f, E, k = 16, 32, 24, 4, 2
x = torch.randn(T, d, dtype=torch.float64)
idx = torch.stack([torch.randperm(E)[:k] for _ in range(T)])
w = torch.rand(T, k, dtype=torch.float64)
w1 = torch.randn(E, d, 2 * f, dtype=torch.float64)
w2 = torch.randn(E, f, d, dtype=torch.float64)
ref = naive.expert_ffn(x, idx, w, w1, w2, activation="swiglu_clamped", alpha=1.2, limit=0.5)
for kw in ({"alpha": 1.2, "limit": 0.5},):
    got = triton_backend.expert_ffn(x.float(), idx, w.float(), w1.float(), w2.float(), activation="swiglu_clamped", **kw)
    assert (got.double() - ref).abs().max() < 1e-4 * ref.abs().max(), (got.double() - ref).abs().max()
# the other activations accept alpha/limit=None too (MoE always passes them)
got = triton_backend.expert_ffn(x.float(), idx, w.float(), w1.float(), w2.float(), activation="swiglu", alpha=None, limit=None)
ref = naive.expert_ffn(x, idx, w, w1, w2, activation="swiglu")
assert (got.double() - ref).abs().max() < 1e-4 * ref.abs().max()
print("OK")
"""


def test_triton_backend_accepts_the_full_interface():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]
