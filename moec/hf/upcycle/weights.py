"""The upcycled model's tensors from the dense model's (docs/upcycling.md has the recipe and its sources).

moec's dense FFN holds ``w_gate_up`` (d, 2F) as [gate | up] columns and ``w_down`` (F, d). Hidden unit j of the
FFN is gate column j, up column F + j and down row j; a segment is a contiguous run of F/m hidden units.
"""

from __future__ import annotations

import torch

from moec.hf.upcycle.recipe import Recipe
from moec.nn.model import MoecModel


def segment(w_gate_up: torch.Tensor, w_down: torch.Tensor, s: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden units [s·F/m, (s+1)·F/m) of a dense FFN: its (d, 2F/m) [gate | up] columns and (F/m, d) down rows."""
    F = w_down.shape[0]
    f = F // m
    cols = torch.cat((torch.arange(s * f, (s + 1) * f), torch.arange(F + s * f, F + (s + 1) * f)))  # (2f,)
    return w_gate_up[:, cols], w_down[s * f : (s + 1) * f]


def routed_experts(
    w_gate_up: torch.Tensor, w_down: torch.Tensor, recipe: Recipe, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E·m, d, 2F/m) and (E·m, F/m, d): expert c·m + s is copy c of segment s, its down rows times m (times 1/2
    beside shared experts, which give the other half), plus the recipe's noise."""
    m = recipe.granularity
    scale = m * (0.5 if recipe.shared else 1.0)
    gu, dn = [], []
    for _copy in range(recipe.experts):
        for s in range(m):
            g, d = segment(w_gate_up, w_down, s, m)
            gu.append(g + _noise(g, recipe.noise, gen))
            dn.append(d * scale + _noise(d * scale, recipe.noise, gen))
    return torch.stack(gu), torch.stack(dn)


def shared_experts(w_gate_up: torch.Tensor, w_down: torch.Tensor, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """One FFN of width s·F/m ([gate of every shared expert | up of every one], then their down rows): shared
    expert i is segment i mod m, its down rows scaled so the shared experts together give half the dense output
    (all of it through a sigmoid gate, which starts at 1/2)."""
    m, n = recipe.granularity, recipe.shared
    scale = m / n * (1.0 if recipe.shared_gate else 0.5)
    parts = [segment(w_gate_up, w_down, i % m, m) for i in range(n)]
    f = w_down.shape[0] // m
    gate = torch.cat([g[:, :f] for g, _ in parts], dim=1)  # (d, n·f)
    up = torch.cat([g[:, f:] for g, _ in parts], dim=1)
    return torch.cat((gate, up), dim=1), torch.cat([d for _, d in parts]) * scale


def _noise(w: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    if sigma == 0:
        return torch.zeros_like(w)
    return torch.randn(w.shape, generator=gen, dtype=torch.float32).to(w.dtype) * (sigma * w.float().std().item())


def upcycled_state(dense: MoecModel, moe: MoecModel, recipe: Recipe) -> dict[str, torch.Tensor]:
    """``moe``'s state_dict with every tensor the dense model has copied, and the FFNs made by the recipe; the
    LoRA adapters keep ``moe``'s seeded initialisation (B zero)."""
    gen = torch.Generator().manual_seed(recipe.seed)
    src = dense.state_dict()
    out = moe.state_dict()
    for name in out:
        if ".ffn." not in name and name in src:
            out[name] = src[name]
    for i in range(len(dense.layers)):
        p = f"layers.{i}.ffn."
        gu, dn = src[p + "w_gate_up"], src[p + "w_down"]
        if recipe.lora is not None:
            out[p + "base.w_gate_up"], out[p + "base.w_down"] = gu, dn
        else:
            out[p + "experts.w_gate_up"], out[p + "experts.w_down"] = routed_experts(gu, dn, recipe, gen)
        if recipe.shared:
            out[p + "shared.w_gate_up"], out[p + "shared.w_down"] = shared_experts(gu, dn, recipe)
        if p + "shared_gate.weight" in out:
            out[p + "shared_gate.weight"] = torch.zeros_like(out[p + "shared_gate.weight"])
        router = out[p + "router.weight"]
        out[p + "router.weight"] = (
            torch.randn(router.shape, generator=gen).to(router.dtype) * recipe.router_std
            if recipe.router_std
            else torch.zeros_like(router)
        )
    return out
