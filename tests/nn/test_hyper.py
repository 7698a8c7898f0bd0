"""Hyper-connections (moec/nn/hyper.py) against a plain loop oracle (one token at a time, every sum over streams
written out, float64) and against transformers' own modules (DeepSeek-V4's mHC, HY-V4's identity-residual form and
their heads, GLM-5-Next's mean head); a model with them built on meta has the analyzer's parameters."""

from __future__ import annotations

import pytest
import torch

from moec.analyze import analyze
from moec.nn import build_model
from moec.nn.hyper import HyperConnection, HyperHead
from moec.spec.hyper import HyperConnectionsPlan
from tests.nn._decode import decoded
from tests.tiny_specs import TINY_MOE, tiny_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D, N = 8, 3
VARIANTS = {
    "sinkhorn": HyperConnectionsPlan(N, "sinkhorn", sinkhorn_iters=5, post_scale=2.0, post_eps=False, eps=1e-3),
    "identity": HyperConnectionsPlan(N, "identity", post_scale=1.5, post_eps=True, eps=1e-3),
}


def randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn away from its init (biases 0 and factors 1 would hide a swapped or missed one)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def sublayer(seed: int):  # noqa: ANN201
    """A fixed nonlinear map of (..., D) → (..., D)."""
    w = torch.randn(D, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return lambda h: torch.tanh(h @ w.to(h.dtype))


def plain_connection(x, f, fn, base, scale, plan: HyperConnectionsPlan, norm_eps: float):  # noqa: ANN001, ANN201
    """One token at a time, float64: the streams' RMS, each coefficient a sum over the flattened streams, pre and
    post by their sigmoids, comb by a row softmax and Sinkhorn's sums written out, then post·f(Σ pre·x) + carried."""
    n, eps = plan.n_streams, plan.eps
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        for s in range(x.shape[1]):
            streams = x[b, s]  # (n, D)
            flat = streams.reshape(-1)
            r = 1.0 / torch.sqrt(sum(v * v for v in flat) / flat.numel() + norm_eps)
            c = [sum(fn[i, j] * flat[j] * r for j in range(flat.numel())) for i in range(fn.shape[0])]
            pre = [torch.sigmoid(c[i] * scale[0] + base[i]) + eps for i in range(n)]
            post = [plan.post_scale * torch.sigmoid(c[n + i] * scale[1] + base[n + i]) for i in range(n)]
            post = [p + eps for p in post] if plan.post_eps else post
            y = f(sum(pre[j] * streams[j] for j in range(n)))
            if plan.residual == "identity":
                carried = [streams[k] for k in range(n)]
            else:
                comb = plain_comb([c[2 * n + i] * scale[2] + base[2 * n + i] for i in range(n * n)], plan)
                carried = [sum(comb[j][k] * streams[j] for j in range(n)) for k in range(n)]
            for k in range(n):
                out[b, s, k] = post[k] * y + carried[k]
    return out


def plain_comb(raw, plan: HyperConnectionsPlan):  # noqa: ANN001, ANN201
    """comb from its n² logits: each row's softmax + eps, one column normalisation, then iters − 1 row-column
    pairs, each denominator + eps."""
    n, eps = plan.n_streams, plan.eps
    m = []
    for i in range(n):
        e = [torch.exp(v) for v in raw[i * n : (i + 1) * n]]
        m.append([v / sum(e) + eps for v in e])

    def normalise_columns() -> None:
        sums = [sum(m[i][j] for i in range(n)) for j in range(n)]
        for i in range(n):
            m[i] = [m[i][j] / (sums[j] + eps) for j in range(n)]

    normalise_columns()
    for _ in range(plan.sinkhorn_iters - 1):
        for i in range(n):
            total = sum(m[i])
            m[i] = [v / (total + eps) for v in m[i]]
        normalise_columns()
    return m


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_connection_equals_the_plain_loop_oracle(variant: str) -> None:
    plan = VARIANTS[variant]
    hc = randomised(HyperConnection(plan, D, 1e-5, dtype=torch.float64), seed=1)
    x = torch.randn(2, 3, N, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    f = sublayer(3)
    got = hc.around(x, f)
    want = plain_connection(x, f, hc.fn.detach(), hc.base.detach(), hc.scale.detach(), plan, 1e-5)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _hf_config(model_type: str, **fields):  # noqa: ANN003, ANN202
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, hidden_size=D, hc_mult=N, rms_norm_eps=1e-5, hc_eps=1e-3, **fields)


def test_sinkhorn_connection_is_deepseek_v4s_mhc() -> None:
    """DeepseekV4HyperConnection's (post, comb, collapsed) and DeepseekV4DecoderLayer's combination
    post ⊗ y + combᵀ·x, with the same weights."""
    from transformers.models.deepseek_v4 import modeling_deepseek_v4 as dsv4

    plan = VARIANTS["sinkhorn"]
    ours = randomised(HyperConnection(plan, D, 1e-5), seed=4)
    theirs = dsv4.DeepseekV4HyperConnection(_hf_config("deepseek_v4", hc_sinkhorn_iters=plan.sinkhorn_iters))
    theirs.load_state_dict({k: v.detach() for k, v in ours.state_dict().items()})
    x = torch.randn(2, 5, N, D, generator=torch.Generator().manual_seed(5))
    f = sublayer(6)
    post, comb, collapsed = theirs(x)
    want = post.unsqueeze(-1) * f(collapsed).unsqueeze(-2) + torch.matmul(comb.transpose(-1, -2), x)
    torch.testing.assert_close(ours.around(x, f), want, rtol=1e-5, atol=1e-6)


def test_identity_connection_is_hy_v4s() -> None:
    """HYV4HyperConnection's (post, collapsed) and HYV4DecoderLayer's combination post ⊗ y + x."""
    from transformers.models.hy_v4 import modeling_hy_v4 as hy

    plan = VARIANTS["identity"]
    ours = randomised(HyperConnection(plan, D, 1e-5), seed=7)
    theirs = hy.HYV4HyperConnection(_hf_config("hy_v4", hc_magnitude=plan.post_scale))
    theirs.load_state_dict({k: v.detach() for k, v in ours.state_dict().items()})
    x = torch.randn(2, 5, N, D, generator=torch.Generator().manual_seed(8))
    f = sublayer(9)
    post, collapsed = theirs(x)
    torch.testing.assert_close(ours.around(x, f), post.unsqueeze(-1) * f(collapsed).unsqueeze(-2) + x)


@pytest.mark.parametrize(("model_type", "module"), [("deepseek_v4", "DeepseekV4HyperHead"), ("hy_v4", "HYV4HyperHead")])
def test_dynamic_head_is_transformers(model_type: str, module: str) -> None:
    import importlib

    hf = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    ours = randomised(HyperHead(VARIANTS["sinkhorn"], D, 1e-5), seed=10)
    theirs = getattr(hf, module)(_hf_config(model_type))
    theirs.load_state_dict({f"hc_{k}": v.detach() for k, v in ours.state_dict().items()})
    x = torch.randn(2, 5, N, D, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours(x), theirs(x))


def test_mean_head_is_glm5_nexts() -> None:
    from transformers.models.glm5_next.modeling_glm5_next import Glm5NextTextHyperHead

    head = HyperHead(HyperConnectionsPlan(N, head="mean"), D, 1e-5)
    assert not list(head.parameters())
    x = torch.randn(2, 5, N, D, generator=torch.Generator().manual_seed(12))
    torch.testing.assert_close(head(x), Glm5NextTextHyperHead()(x))


@pytest.mark.parametrize(
    "sets",
    [
        ("model.hyper_connections.n_streams=4",),
        ("model.hyper_connections.n_streams=2", "model.hyper_connections.residual=identity",
         "model.hyper_connections.head=mean"),
    ],
)  # fmt: skip
def test_model_on_meta_has_the_analyzers_parameters(sets: tuple[str, ...]) -> None:
    plan = tiny_plan(TINY_MOE, *sets)
    model = build_model(plan, device="meta")
    counted = {c.name: c.params for c in analyze(plan).components}
    built = {name: t + f for name, (t, f) in model.param_counts().items()}
    assert built == counted
    assert built["hyper_connections"] > 0


def test_cached_decode_gives_the_full_forwards_logits() -> None:
    """The streams are per token: decoding one token at a time through the KV cache gives the full forward's
    logits."""
    torch.manual_seed(0)
    plan = tiny_plan(TINY_MOE, "model.hyper_connections.n_streams=3")
    model = randomised(build_model(plan, dtype=torch.float64), seed=13).eval()
    tokens = torch.randint(0, plan.vocab_size, (2, 6))
    full, _ = model(tokens)
    torch.testing.assert_close(decoded(model, tokens, [1] * 6), full)


def test_code_generator_refuses_hyper_connections_by_name() -> None:
    from moec.codegen.features import plan_features

    plan = tiny_plan(TINY_MOE, "model.hyper_connections.n_streams=4")
    with pytest.raises(ValueError, match=r"codegen does not support model\.hyper_connections"):
        plan_features(plan, list(plan.layers))
