"""The MoE layer, a drop-in for the dense FFN: (B, S, d) or (T, d) in, (same shape, MoEAux) out.

    y = Σ_j g_j(x) · Expert_{e_j}(x)  [+ shared FFN(x) · (sigmoid(x·w_gate) if shared_gate)]

(router.apply_to "input", Llama-4: Σ_j Expert_{e_j}(g_j(x) · x) instead.)

Routed experts are stacked tensors ``[E, in, out]`` run through a backend of :mod:`moec.kernels`
chosen at forward time from the input's device. Parameter names are a contract: the Hugging Face
weight loader and the code generator address ``router.weight``, ``experts.w_gate_up``,
``experts.w_down``, ``shared.*``, ``shared_gate.weight``, ``base.*`` and ``experts.lora_*``.
Parameter counts equal :func:`moec.analyze.counts.ffn_parts` exactly (tested for every shipped spec).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Protocol

import torch
from torch import nn

from moec.kernels.activations import activate  # the one definition of each activation
from moec.kernels.runtime import MoEAux, kernels_for  # shared with the generated model.py; re-exported from here
from moec.nn.ffn import DenseFFN
from moec.nn.router import Router
from moec.spec.plan import MoEPlan
from moec.vocab import GATED


class ExpertDispatch(Protocol):
    """What :attr:`Experts.dispatcher` must be: the same contract as ``Experts.forward``, given the module."""

    def __call__(
        self, experts: Experts, x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, kernels: ModuleType
    ) -> torch.Tensor: ...


def _normal_(t: torch.Tensor, fan_in: int) -> None:
    nn.init.normal_(t, std=1 / math.sqrt(fan_in))


class Experts(nn.Module):
    """E FFN experts stacked: w_gate_up (E, d, 2f) [gate | up] or (E, d, f); w_down (E, f, d)."""

    def __init__(self, plan: MoEPlan, d_model: int, *, device=None, dtype=None):
        super().__init__()
        E, f = plan.n_experts, plan.d_ff
        width = 2 * f if plan.activation in GATED else f
        kw = {"device": device, "dtype": dtype}
        self.activation, self.d_model, self.d_ff = plan.activation, d_model, f
        # alpha: swiglu_clamped's; limit: the limited activations' (moec.vocab LIMITED)
        self.alpha, self.limit = plan.activation_alpha, plan.activation_limit
        self.w_gate_up = nn.Parameter(torch.empty(E, d_model, width, **kw))
        self.w_down = nn.Parameter(torch.empty(E, f, d_model, **kw))
        self.b_gate_up = nn.Parameter(torch.empty(E, width, **kw)) if plan.bias else None
        self.b_down = nn.Parameter(torch.empty(E, d_model, **kw)) if plan.bias else None
        # expert parallelism installs an object here (moec.dist.ExpertDispatcher, docs/scaling.md "Running
        # distributed") that moves the routed rows to the rank holding their expert and back; None: all local
        self.dispatcher: ExpertDispatch | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.w_gate_up.is_meta:
            return
        _normal_(self.w_gate_up, self.d_model)
        _normal_(self.w_down, self.d_ff)
        for b in (self.b_gate_up, self.b_down):
            if b is not None:
                nn.init.zeros_(b)

    def forward(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, kernels: ModuleType):
        """x (T, d), topk_idx / topk_w (T, k) → (T, d) = Σ_j topk_w · FFN_{topk_idx}(x)."""
        if self.dispatcher is not None:
            return self.dispatcher(self, x, topk_idx, topk_w, kernels)
        return kernels.expert_ffn(
            x, topk_idx, topk_w, self.w_gate_up, self.w_down,
            activation=self.activation, b_gate_up=self.b_gate_up, b_down=self.b_down,
            alpha=self.alpha, limit=self.limit,
        )  # fmt: skip


class LoRAExperts(nn.Module):
    """E low-rank adapters per base matrix: lora_a_* (E, in, r) random, lora_b_* (E, r, out) zeros,
    so a fresh layer computes exactly its frozen base FFN."""

    def __init__(self, plan: MoEPlan, d_model: int, *, device=None, dtype=None):
        super().__init__()
        assert plan.lora_rank is not None and plan.lora_alpha is not None
        E, f, r = plan.n_experts, plan.d_ff, plan.lora_rank
        self.activation, self.scale = plan.activation, plan.lora_alpha / r
        kw = {"device": device, "dtype": dtype}
        self.names = ("gate", "up", "down") if plan.activation in GATED else ("up", "down")
        for name in self.names:
            n_in, n_out = (f, d_model) if name == "down" else (d_model, f)
            self.register_parameter(f"lora_a_{name}", nn.Parameter(torch.empty(E, n_in, r, **kw)))
            self.register_parameter(f"lora_b_{name}", nn.Parameter(torch.empty(E, r, n_out, **kw)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.lora_a_up.is_meta:
            return
        for name in self.names:
            a, b = getattr(self, f"lora_a_{name}"), getattr(self, f"lora_b_{name}")
            _normal_(a, a.shape[1])
            nn.init.zeros_(b)

    def mix(self, name: str, x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, kernels: ModuleType):
        """(T, out): scale · Σ_j g_j (x·A_{e_j})·B_{e_j} for one base matrix."""
        a, b = getattr(self, f"lora_a_{name}"), getattr(self, f"lora_b_{name}")
        return kernels.lora_mix(x, topk_idx, topk_w, a, b, self.scale)

    def forward(
        self, x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, kernels: ModuleType, base: DenseFFN
    ) -> torch.Tensor:
        h = x @ base.w_gate_up  # (T, 2f) or (T, f)
        if base.b_gate_up is not None:
            h = h + base.b_gate_up
        ups = [self.mix(n, x, topk_idx, topk_w, kernels) for n in self.names if n != "down"]
        h = h + torch.cat(ups, -1)  # [gate | up] updates side by side, like the base columns
        a = activate(h, self.activation, alpha=base.alpha, limit=base.limit)  # (T, f)
        y = a @ base.w_down + self.mix("down", a, topk_idx, topk_w, kernels)  # (T, d)
        return y if base.b_down is None else y + base.b_down


def zero_expert_slots(
    x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, n_experts: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-computation experts (LongCat-Flash): a slot whose index is ≥ ``n_experts`` names a zero expert, which
    returns its gate weight × the token. x (T, d), topk_idx / topk_w (T, k) → (the slots the FFN experts still
    take, those slots marked -1 with weight 0 so that the kernels skip them; (T, d) the zero experts' sum
    Σ_{zero slots} w · x)."""
    on_zero = topk_idx >= n_experts  # (T, k)
    zero = (topk_w * on_zero).sum(-1, keepdim=True) * x  # (T, d)
    return topk_idx.masked_fill(on_zero, -1), topk_w.masked_fill(on_zero, 0.0), zero


class MoE(nn.Module):
    def __init__(
        self,
        plan: MoEPlan,
        d_model: int,
        *,
        backend: str = "auto",
        router: Router | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        """``router``: one built for this plan, when the layer routes otherwise than the plan's Router alone does (the
        encoder-decoder's per-sequence capacity, moec.nn.encdec)."""
        super().__init__()
        self.plan, self.d_model, self.backend = plan, d_model, backend  # backend may be changed later
        kw = {"device": device, "dtype": dtype}
        clamp = {"alpha": plan.activation_alpha, "limit": plan.activation_limit}  # the LIMITED activations'
        self.router = router if router is not None else Router(plan, d_model, **kw)
        if plan.expert_kind == "lora":
            self.base = DenseFFN(d_model, plan.d_ff, plan.activation, bias=plan.bias, **clamp, **kw)
            self.base.requires_grad_(False)  # only the adapters and the router train
            self.experts: nn.Module = LoRAExperts(plan, d_model, **kw)
        else:
            self.base = None
            self.experts = Experts(plan, d_model, **kw)
        # s shared experts of width f_s are one FFN of width s·f_s (their outputs are summed)
        s = plan.n_shared_experts
        if plan.shared_activation_limit is not None:  # the shared experts' own limit (Step-3.7)
            clamp = {**clamp, "limit": plan.shared_activation_limit}
        self.shared = (
            # moe.shared_activation: the shared experts' own (HY-V4), else the routed experts'
            DenseFFN(
                d_model, s * plan.d_ff_shared, plan.shared_activation or plan.activation, bias=plan.bias, **clamp, **kw
            )
            if s
            else None
        )
        self.shared_gate = nn.Linear(d_model, 1, bias=False, **kw) if plan.shared_gate else None
        # moe.output_bias (JetMoE): one bias on the combined output, zero to start
        self.output_bias = nn.Parameter(torch.zeros(d_model, **kw)) if plan.output_bias else None
        if self.shared_gate is not None and not self.shared_gate.weight.is_meta:
            _normal_(self.shared_gate.weight, d_model)
        # resolved here, so a compiled forward finds it cached (a hash router has no weight: ask the experts)
        self._kernels(next(self.experts.parameters()).device)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, MoEAux]:
        """x (B, S, d) or (T, d) → (y of the same shape, MoEAux). ``token_ids`` ((B, S) or (T,)): the ids of
        the tokens x holds, which hash routing needs (docs/routing.md)."""
        if x.dim() not in (2, 3):
            raise ValueError(
                f"MoE input must be (batch, seq, d_model) or (tokens, d_model); got shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.d_model:
            raise ValueError(f"MoE input has d_model {x.shape[-1]}, expected {self.d_model}")
        if not x.is_floating_point():
            raise ValueError(f"MoE input must be a floating-point tensor; got {x.dtype}")
        seq_len = x.shape[1] if x.dim() == 3 else None
        xt = x.reshape(-1, self.d_model)  # (T, d)
        ids = token_ids.reshape(-1) if token_ids is not None else None  # (T,)
        r = self.router(xt, seq_len=seq_len or None, token_ids=ids)
        kernels = self._kernels(x.device)
        topk_idx, topk_w = r.topk_idx, r.topk_w.to(x.dtype)
        zero = None
        if self.plan.n_zero_experts:  # checks allow them with output gating on FFN experts only
            topk_idx, topk_w, zero = zero_expert_slots(xt, topk_idx, topk_w, self.plan.n_experts)
        if self.base is not None:
            y = self.experts(xt, r.topk_idx, topk_w, kernels, self.base)  # (T, d)
        elif self.plan.router.apply_to == "input":
            # Llama-4: Σ_j Expert_{e_j}(g_j·x). Each (token, slot) becomes its own row with weight 1
            T, k = r.topk_idx.shape
            xs = (xt[:, None, :] * topk_w[..., None]).reshape(T * k, self.d_model)  # (T·k, d)
            ones = torch.ones(T * k, 1, dtype=x.dtype, device=x.device)
            ys = self.experts(xs, r.topk_idx.reshape(T * k, 1), ones, kernels)  # (T·k, d)
            y = ys.view(T, k, self.d_model).sum(1)  # (T, d)
        else:
            y = self.experts(xt, topk_idx, topk_w, kernels)  # (T, d)
        if zero is not None:
            y = y + zero
        if self.output_bias is not None:
            y = y + self.output_bias
        if self.shared is not None:
            s = self.shared(xt)  # (T, d)
            if self.shared_gate is not None:  # Qwen2-MoE
                s = s * torch.sigmoid(self.shared_gate(xt))
            y = y + s
        # the FFN experts' loads (the slots on zero experts hold no weights to balance or place); logits and probs
        # keep every scored expert, E + Z
        loads = r.tokens_per_expert[: self.plan.n_experts]
        aux = MoEAux(r.aux_loss, r.load_balance, r.z_loss, loads, r.dropped, r.logits, r.probs)
        return y.view(x.shape), aux

    def _kernels(self, device: torch.device) -> ModuleType:
        """The backend module for ``self.backend`` on ``device``."""
        return kernels_for(self.backend, device)

    def update_bias(self, group: torch.distributed.ProcessGroup | None = None) -> None:
        """Aux-loss-free balancing step; see :meth:`Router.update_bias` (``group``: the data-parallel
        process group whose loads are summed first, so every rank takes the same step)."""
        self.router.update_bias(group)
