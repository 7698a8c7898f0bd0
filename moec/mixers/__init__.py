"""Token mixers other than attention: linear attention, state-space and short-convolution layers
(docs/mixers.md). One torch-free module per kind, named as ``moec.vocab.MIXER_KINDS`` names it, each holding
everything the spec, the resolver and the analyzer know of that kind:

``KIND``
    the kind's name (``moec.vocab.MIXER_KINDS``), also the spec's ``mixers.<KIND>`` section name.
``Section``
    the pydantic model (``moec.strict.Strict``) of the spec's ``mixers.<KIND>`` section: every field with
    bounds and a docstring, as the rest of the schema.
``Plan``
    a frozen, keyword-only dataclass: the section's values with every default resolved (no field left None that
    the module needs), ``kind: str = KIND`` last, and plain values only (ints, floats, bools, strs, tuples) so
    that ``dataclasses.asdict`` round-trips through spec.resolved.yaml.
``plan(section, d_model, norm_eps) -> Plan``
    the resolved plan; ``norm_eps`` is the model norm's eps, for the mixer's own norms where the section leaves
    theirs unset.
``problems(section, d_model) -> list[tuple[tuple[str, ...], str]]``
    cross-field problems: (the field's path inside the section, the message), every one, not the first.
``params(plan, d_model) -> int``
    the exact parameter count of one layer's mixer (projections, convolutions, decays, its own norms).
``matmul_weights(plan, d_model) -> int``
    the matrix weights one token multiplies through (its linear FLOPs are twice this, docs/conventions.md).
``mixing_flops(plan, d_model, seq) -> dict[str, Fraction]``
    per-token FLOPs beyond the projections at context ``seq``: ``{"chunked": …, "recurrent": …}``, the chunked
    training form averaged over the ``seq`` tokens and one recurrent decode step; both constant in ``seq``
    where the algorithm is (the convolution's and the state update's multiply-adds count 2 each).
``state_elements(plan, d_model) -> dict[str, int]``
    the elements one sequence's decode state holds for one layer, by part (``{"conv": …, "ssm": …}``): a constant
    in the context length, in place of a KV cache.
``FP32_STATE`` (optional)
    the parts of ``state_elements`` kept in float32 at least whatever the model's dtype (a delta rule's state,
    as transformers keeps it); the analyzer counts them at ``max(dtype bytes, 4)``.
``PER_LAYER`` (optional, default False)
    True when the plan depends on the layer's depth: the resolver then calls
    ``plan(section, d_model, norm_eps, layer=i, n_layers=L)`` for each layer instead of once.
``MODULE``
    the name of the torch module class in ``moec.kernels.mixers.<KIND>``.
``module_kwargs(plan) -> dict[str, int | float | bool | str]``
    that class's constructor keywords besides ``d_model`` (the code generator prints each value after
    checking its type, so only plain values).

The torch side, ``moec.kernels.mixers.<KIND>``, is shared by ``moec.nn`` and every generated model.py (as
``moec.kernels.runtime`` is): ``Class(d_model, **module_kwargs(plan), device=None, dtype=None)`` with

- ``forward(x, rope=None, cache=None, positions=None) -> y``: (B, S, d) → (B, S, d); without ``cache`` the
  chunked (parallel) form from a zero state; with ``cache`` (from ``new_cache``) it continues that state and
  updates it in place, for any S (prefill or one token);
- ``recurrent(x, state=None) -> (y, state)``: the plain token-by-token recurrence, the oracle of the chunked
  form (float64 tests hold them equal, gradients included);
- ``new_cache(batch, max_len, *, device=None, dtype=None) -> moec.kernels.mixers.state.MixerState``.
"""

from __future__ import annotations

from types import ModuleType

from moec.mixers import gated_deltanet, kda, lightning, mamba, mamba2, short_conv
from moec.vocab import LINEAR_MIXERS

KINDS: dict[str, ModuleType] = {m.KIND: m for m in (gated_deltanet, kda, lightning, mamba, mamba2, short_conv)}
assert tuple(KINDS) == LINEAR_MIXERS, "moec.vocab.LINEAR_MIXERS and moec.mixers.KINDS list the same kinds in order"


def kind_module(kind: str) -> ModuleType:
    """The torch-free module of a linear/SSM mixer kind."""
    return KINDS[kind]
