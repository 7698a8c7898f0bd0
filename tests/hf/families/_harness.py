"""Shared by the family tests: transformers' model of a tiny config with random weights away from their init (what
every tiny-checkpoint parity test saves and loads), transformers' parameter counts (total and active) of a model
built on meta, and the generated-model.py check. Not a test module (no ``test_`` prefix), so the registry's
coverage checks do not read it as a family."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import transformers

from tests.hf.configs import hf_model_on_meta


def tiny_hf(model_type: str, cfg: dict):
    """transformers' model of a tiny config with every weight random and away from its init (:func:`away_from_init`)."""
    c = transformers.AutoConfig.for_model(model_type, **copy.deepcopy(cfg))
    c._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(c).eval()
    away_from_init(model)
    return model


def saved_checkpoint(hf, tmp_path_factory, name: str) -> tuple:
    """``hf`` saved with save_pretrained into a fresh temporary folder named ``name``: (``hf``, the folder), what a
    family's module-scoped ``checkpoint`` fixture gives its tests."""
    folder = tmp_path_factory.mktemp(name)
    hf.save_pretrained(folder)
    return hf, folder


def away_from_init(
    model,
    keep: Callable[[str], bool] = lambda name: True,
    *,
    router: str = "gate.weight",
    small_biases: bool = False,
) -> None:
    """Every weight of ``model`` whose name ``keep`` accepts made random and away from its init: norms around 1,
    routers (the weights whose names end in ``router``) with logits of order 1, the selection bias large enough to
    change choices (a wrapper's tests keep its text model's weights only: the towers they leave out need not be
    random). ``small_biases``: biases small and around 0 instead (where a shared offset would route every token
    alike)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not keep(name):
                continue
            if name.endswith(router):  # the router, Linear(d, E)
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif small_biases and name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                vector = p.dim() == 1  # norm weights (and biases) around 1
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if vector else 0.1) + (1.0 if vector else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)


def model_counts(
    model,
    n_experts: int,
    top_k: int,
    *,
    keep: Callable[[str], bool] = lambda name: True,
    experts: str = ".mlp.experts.",
) -> tuple[int, int]:
    """(total, active) of transformers' ``model`` over the parameters whose names ``keep`` accepts (a wrapper's text
    model), a tied weight once: active is the total less (E−k)/E of the routed experts, the tensors whose names hold
    ``experts``."""
    params = [(n, p) for n, p in model.named_parameters() if keep(n)]
    total = sum(p.numel() for _, p in params)
    routed = sum(p.numel() for n, p in params if experts in n)
    assert routed % n_experts == 0, "the routed tensors are not E experts' worth"
    return total, total - routed // n_experts * (n_experts - top_k)


def hf_counts(cfg: dict, experts: str = ".mlp.experts.") -> tuple[int, int]:
    """:func:`model_counts` of transformers' causal LM for the config.json dict ``cfg``, built on meta, E and k from
    its config (under whichever name its family gives E)."""
    model = hf_model_on_meta(cfg)
    c = model.config
    n_experts = next(
        getattr(c, n) for n in ("n_routed_experts", "num_local_experts", "num_experts") if getattr(c, n, None)
    )
    return model_counts(model, n_experts, c.num_experts_per_tok, experts=experts)


def refused_fields(cfg) -> list[str]:
    """The fields (paths) of the problems that ``hf_to_model`` refuses the config.json ``cfg`` with; it must refuse
    it with a SpecError."""
    from moec.errors import SpecError
    from moec.hf import hf_to_model

    with pytest.raises(SpecError) as e:
        hf_to_model(cfg)
    return [p.path for p in e.value.problems]


def assert_table_holds_class_defaults(table: dict, cls, at_least: int) -> None:
    """Every key of a family's defaults ``table`` that transformers' config class ``cls`` gives a default holds that
    default (a tuple as the list a config.json holds), and at least ``at_least`` keys are so checked."""
    import dataclasses

    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    checked = [k for k in table if k in fields and fields[k] is not dataclasses.MISSING]
    assert len(checked) >= at_least
    for key in checked:
        want = list(fields[key]) if isinstance(fields[key], tuple) else fields[key]
        assert table[key] == want, key


def assert_generated_model_gives_the_library_logits(model, tokens: torch.Tensor | None, folder) -> None:
    """The model.py ``moec build`` renders for ``model``'s plan, holding ``model``'s weights, gives its logits and
    its aux (every MoE layer's loss, loads and router scores) bit for bit, on ``tokens`` (None: 2 × 12 random ids
    of its vocabulary, seed 0)."""
    from moec.codegen import render_model_source
    from tests.codegen.test_codegen import assert_same_aux, import_source

    if tokens is None:
        tokens = torch.randint(0, model.plan.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))

    gen = import_source(render_model_source(model.plan), folder).Model().eval()
    gen.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        (logits, aux), (lib_logits, lib_aux) = gen(tokens), model(tokens)
    assert torch.equal(logits, lib_logits)
    assert_same_aux(aux, lib_aux)


def assert_a_release_mtp_layer_is_let_go(hf, folder, tmp_path, mtp_layer: int) -> None:
    """A copy (in ``tmp_path``) of transformers' ``hf`` checkpoint in ``folder`` with a tensor of layer
    ``mtp_layer`` added, where the release stores its MTP layer (model.layers.{mtp_layer}.*), gives ``hf``'s logits
    and router choices: transformers ignores that layer on load, so does moec. A tensor of any other unknown layer
    (the one before it) is still refused."""
    from safetensors.torch import load_file, save_file

    import moec
    from moec.hf.checkpoint import CheckpointError
    from tests.hf.test_weights import assert_same

    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = load_file(tmp_path / "model.safetensors")
    save_file({**weights, f"model.layers.{mtp_layer}.enorm.weight": torch.ones(64)}, tmp_path / "model.safetensors")
    assert assert_same(hf, moec.from_hf(tmp_path)) <= 1e-4
    unknown = f"model.layers.{mtp_layer - 1}.enorm.weight"
    save_file({**weights, unknown: torch.ones(64)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=unknown):
        moec.from_hf(tmp_path)


def saved_tiny(model_type: str, cfg: dict, folder) -> object:
    """transformers' model of a tiny config, every weight random and away from its init (test_weights.make_hf,
    whose rule differs from :func:`away_from_init`'s: router biases and ``_bias`` tensors small), saved with
    save_pretrained into ``folder``; returns the model."""
    import tests.hf.test_weights as weights

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(weights.CONFIGS, model_type, copy.deepcopy(cfg))
        hf = weights.make_hf(model_type)
    hf.save_pretrained(folder)
    return hf


def assert_generated_source_matches_the_library(cfg: dict, tmp_path) -> None:
    """The imported spec's generated model.py, given moec.nn's (random) weights, gives moec.nn's logits."""
    from moec.hf import import_hf_config
    from tests.codegen.test_codegen import library_and_generated, run_both

    plan, lib, gen, _ = library_and_generated(import_hf_config(cfg), tmp_path)
    tokens = torch.randint(0, plan.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, _, out = run_both(lib, gen, tokens, train=False)
    assert torch.equal(out[0], logits)


class TextView(torch.nn.Module):
    """A multimodal wrapper seen as its text model: called with token ids, its config the text config (what
    test_weights.assert_same reads); the wrapper runs whole, its towers idle without image inputs."""

    def __init__(self, hf):
        super().__init__()
        self.hf, self.config = hf, hf.config.text_config

    def forward(self, ids):
        return self.hf(input_ids=ids)


def assert_cached_decode_gives_transformers_logits(hf, model, tokens: torch.Tensor, prefill: int = 5) -> None:
    """A prefill of ``prefill`` tokens, then one token at a time through moec's cache: transformers' own full
    forward of ``tokens`` (B, S), within 1e-4."""
    S = tokens.shape[1]
    cache, outs = model.new_cache(tokens.shape[0], S), []
    with torch.no_grad():
        want = hf(tokens).logits
        for start, n in [(0, prefill)] + [(s, 1) for s in range(prefill, S)]:
            outs.append(model(tokens[:, start : start + n], cache=cache, start=start)[0])
    torch.testing.assert_close(torch.cat(outs, dim=1), want, atol=1e-4, rtol=0)


def assert_stepwise_decode_is_the_full_forward(model, vocab: int, steps: int = 9) -> None:
    """The model in float64, fed one token at a time through its cache, gives its own full forward's logits."""
    model = model.double()
    tokens = torch.randint(0, vocab, (2, steps), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, _ = model(tokens)
        cache = model.new_cache(2, steps)
        stepwise = torch.cat([model(tokens[:, t : t + 1], cache, t)[0] for t in range(steps)], 1)
    torch.testing.assert_close(stepwise, full, rtol=1e-9, atol=1e-9)


def assert_same_routed_logits(hf, model, router_class: str, scale: float = 1.0) -> float:
    """transformers' logits and each MoE layer's (experts, weights), from its ``router_class`` modules (whose output
    is (logits, top-k weights, top-k indices); the weights × ``scale`` where the family's MoE block, not its router,
    applies a scale that moec's router applies), against moec's: the same MoE layers (some), varied choices (more
    than two distinct sets of experts a layer), the same experts, the same weights within 1e-5. Returns the largest
    logits difference."""
    from tests.hf.test_weights import TOKENS, _record, by_expert, run_moec

    routers = [(n, m) for n, m in hf.named_modules() if type(m).__name__ == router_class]
    hf_choices, hooks = _record(routers, lambda out: (out[2], out[1] * scale))
    with torch.no_grad():
        want = hf(TOKENS).logits
    for h in hooks:
        h.remove()
    got, our_choices = run_moec(model)
    assert sorted(hf_choices) == sorted(our_choices) and hf_choices
    for i in hf_choices:
        hf_idx, hf_w = by_expert(*hf_choices[i])
        our_idx, our_w = by_expert(*our_choices[i])
        assert len(set(map(tuple, hf_idx.tolist()))) > 2, f"layer {i}: too few distinct choices to tell apart"
        assert torch.equal(our_idx, hf_idx), f"layer {i}: different experts chosen"
        torch.testing.assert_close(our_w, hf_w, atol=1e-5, rtol=1e-5)
    return (got - want).abs().max().item()
