"""`moec.MoE`: a standalone Mixture-of-Experts layer to drop into a model of one's own.

It is moec's own MoE layer (:class:`moec.nn.moe.MoE`), built from a plan that the spec loader resolves: the
keyword options are the fields of a spec's ``moe:`` section, its ``moe.router:`` and ``moe.balance:``
sections, under the same names, checked by the same rules and filled with the same defaults. Only the call
differs: it returns a tensor of the input's shape, as an FFN does, and keeps the layer's
:class:`~moec.nn.moe.MoEAux` (aux loss, expert loads, router logits and probabilities) in ``.aux``.
"""

from __future__ import annotations

from typing import Any

import torch

from moec.errors import Problem, SpecError
from moec.nn import moe as nn_moe
from moec.nn.build import as_plan
from moec.spec.plan import MoEPlan
from moec.spec.schema import Balance, Router
from moec.spec.schema import MoE as MoESection

ROUTER_OPTIONS = frozenset(Router.model_fields)
BALANCE_OPTIONS = frozenset(Balance.model_fields)
MOE_OPTIONS = frozenset(MoESection.model_fields) - {"router", "balance", "n_experts", "d_ff"}
LAYER_SPEC_NAME = "moec.MoE"  # the file name errors in the options are located in


def moe_plan(d_model: int, n_experts: int, top_k: int, d_ff: int, **options: Any) -> MoEPlan:
    """The resolved plan of one MoE layer. ``options``: any field of a spec's ``moe``, ``moe.router`` or
    ``moe.balance`` section, by its name (``score="sigmoid"``, ``load_balance_coeff=0.01``,
    ``n_shared_experts=1``); ``bias`` is the experts' (``moe.bias``), and ``router={...}`` / ``balance={...}``
    give those sections as dicts (the router's logit bias: ``router={"bias": True}``). A bad value is a
    :class:`moec.SpecError` naming the option."""
    unknown = sorted(set(options) - ROUTER_OPTIONS - BALANCE_OPTIONS - MOE_OPTIONS - {"router", "balance"})
    if unknown:
        names = ", ".join(sorted(ROUTER_OPTIONS | BALANCE_OPTIONS | MOE_OPTIONS))
        raise TypeError(f"moec.MoE got unknown option(s) {', '.join(unknown)}; the options are: {names}")
    router = {"top_k": top_k, **options.pop("router", {})}
    balance = dict(options.pop("balance", {}))
    moe: dict[str, Any] = {"n_experts": n_experts, "d_ff": d_ff, "router": router, "balance": balance}
    for key, value in options.items():
        section = moe if key in MOE_OPTIONS else router if key in ROUTER_OPTIONS else balance
        section[key] = value
    spec = {
        "moec": 1,
        "name": LAYER_SPEC_NAME,
        # a one-layer model around the layer: the attention and vocabulary are never built
        "model": {"vocab_size": 1, "d_model": d_model, "n_layers": 1, "max_seq_len": 1},
        "attention": {"n_heads": 1, "head_dim": 2},
        "moe": moe,
        "layers": {"default": {"ffn": "moe"}},
    }
    try:
        plan = as_plan(spec).layers[0].ffn
    except SpecError as e:
        # located in the keyword arguments, not in the dict's JSON text that no one has seen
        raise SpecError(
            [Problem(LAYER_SPEC_NAME, None, None, _option(p.path), p.message) for p in e.problems]
        ) from None
    assert isinstance(plan, MoEPlan)
    return plan


def _option(path: str) -> str:
    """``moe.router.top_k`` → ``top_k``: the keyword a spec path was given as."""
    for prefix in ("moe.router.", "moe.balance.", "moe.", "model."):
        if path.startswith(prefix):
            return path.removeprefix(prefix)
    return path


class MoE(nn_moe.MoE):
    """A drop-in MoE feed-forward layer: ``(B, S, d_model)`` or ``(T, d_model)`` in, the same shape out.

    ``moec.MoE(d_model=512, n_experts=8, top_k=2, d_ff=1024, load_balance_coeff=0.01)``. After each call,
    ``.aux`` holds the layer's :class:`~moec.nn.moe.MoEAux`: ``aux.loss`` (add it to the training loss),
    ``aux.tokens_per_expert``, ``aux.router_logits`` and ``aux.router_probs``. Parameter names are moec's
    (``router.weight``, ``experts.w_gate_up``, ``experts.w_down``, ``shared.*``).
    """

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        top_k: int,
        d_ff: int,
        *,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **options: Any,
    ):
        plan = moe_plan(d_model, n_experts, top_k, d_ff, **options)
        super().__init__(plan, d_model, backend=backend, device=device, dtype=dtype)
        self.aux: nn_moe.MoEAux | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x (B, S, d) or (T, d) → y of the same shape; the aux of this call in ``self.aux``."""
        y, self.aux = super().forward(x)
        return y
