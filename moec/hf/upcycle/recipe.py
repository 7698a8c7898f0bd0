"""The upcycled model's spec (no torch): the dense checkpoint's imported spec with every FFN made an MoE layer
of the options' shape, and the recipe written into its description (docs/upcycling.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml

from moec.errors import CommandError
from moec.spec.plan import DenseFFNPlan, ResolvedModel
from moec.vocab import UPCYCLE_ROUTERS

SOURCES = ("llama", "mistral", "qwen2", "qwen3")  # dense families moec/hf/families/dense.py translates
ROUTERS = UPCYCLE_ROUTERS


@dataclass(frozen=True)
class Recipe:
    """What to build from the dense FFN: ``experts`` copies split in ``granularity`` segments (experts ·
    granularity routed experts of width d_ff / granularity, top_k · granularity chosen), ``shared`` shared
    experts made of the segments too, or with ``lora`` a rank-``lora`` adapter per expert over the frozen FFN."""

    experts: int
    top_k: int
    granularity: int = 1
    shared: int = 0
    router: str = "softmax"
    noise: float = 0.0
    router_std: float = 0.0
    seed: int = 0
    lora: int | None = None
    lora_alpha: float | None = None
    shared_gate: bool = False

    @property
    def alpha(self) -> float | None:
        """The LoRA scale's alpha: ``lora_alpha``, else twice the rank (None without LoRA)."""
        if self.lora is None:
            return None
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora

    def check(self, dense: ResolvedModel) -> None:
        """Refuse, naming the option, what the recipe cannot build from this dense model."""
        ffn = [lp.ffn for lp in dense.layers]
        if not all(isinstance(f, DenseFFNPlan) for f in ffn):
            raise CommandError("the source has MoE layers already; upcycle starts from a dense checkpoint")
        widths = {f.d_ff for f in ffn}
        if len(widths) != 1:
            raise CommandError(f"the source's FFN widths differ between layers ({sorted(widths)})")
        width = widths.pop()
        problems = []
        if not 1 <= self.top_k <= self.experts:
            problems.append(f"--top-k {self.top_k} must be between 1 and --experts {self.experts}")
        if width % self.granularity:
            problems.append(f"--granularity {self.granularity} does not divide the FFN width {width}")
        if self.shared and self.shared % self.granularity:
            problems.append(f"--shared {self.shared} must be a multiple of --granularity {self.granularity}")
        if any(f.bias for f in ffn):
            problems.append("the source FFN has biases (mlp_bias): a bias split in segments has no exact upcycling")
        if self.router not in ROUTERS:
            problems.append(f"--router {self.router!r} is not one of {', '.join(ROUTERS)}")
        if self.lora is not None and (self.granularity != 1 or self.shared or self.noise):
            problems.append("--lora keeps the whole FFN as the frozen base: no --granularity, --shared or --noise")
        if not (0 <= self.noise < math.inf and 0 <= self.router_std < math.inf):  # NaN fails both comparisons
            problems.append("--noise and --router-std are standard deviations: finite and at least 0")
        if self.lora_alpha is not None and not 0 < self.lora_alpha < math.inf:
            problems.append("--lora-alpha must be finite and above 0")
        if problems:
            raise CommandError("; ".join(problems))

    def describe(self, source: str) -> str:
        """The recipe in one sentence: the spec's description, so the build records it."""
        if self.lora is not None:
            return (
                f"LoRA-MoE upcycled from {source} by moec: the pretrained FFN frozen as the base, {self.experts} "
                f"rank-{self.lora} adapters (alpha {self.alpha:g}) top-{self.top_k}, B zero and A seeded (seed {self.seed}), "
                f"{self.router} router {self._router_init()}"
            )
        m = self.granularity
        text = (
            f"upcycled from {source} by moec (docs/upcycling.md): {_count(self.experts, 'copy', 'copies')} of each FFN"
            + (f" cut in {m} segments of its hidden units, down projections scaled by {m}" if m > 1 else "")
            + f", top-{self.top_k * m} {self.router} normalised"
            + (f", {_count(self.shared, 'shared expert', 'shared experts')} from the segments" if self.shared else "")
            + (f", Gaussian noise {self.noise:g} x each matrix's std on the routed experts" if self.noise else "")
            + f"; router {self._router_init()}; seed {self.seed}"
        )
        return text

    def _router_init(self) -> str:
        return "zero" if self.router_std == 0 else f"normal(0, {self.router_std:g})"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def moe_spec_text(dense_spec: str, recipe: Recipe, dense: ResolvedModel, source: str) -> str:
    """The dense model's imported spec (YAML) with every FFN an MoE layer of the recipe's shape."""
    spec: dict[str, Any] = yaml.safe_load(dense_spec)
    width = dense.layers[0].ffn.d_ff
    activation = dense.layers[0].ffn.activation
    moe: dict[str, Any] = {
        "n_experts": recipe.experts,
        "d_ff": width,
        "activation": activation,
        "granularity": recipe.granularity,
        "router": {"top_k": recipe.top_k, "score": recipe.router, "normalize_topk": True},
    }
    if recipe.shared and recipe.shared_gate:
        # Qwen2-MoE has one gated shared expert: s shared experts of width F/m are one FFN of width s·F/m
        # (docs/conventions.md, "Parameters"), the same tensors under another count
        moe.update(n_shared_experts=1, d_ff_shared=recipe.shared * width // recipe.granularity, shared_gate=True)
    elif recipe.shared:
        moe.update(n_shared_experts=recipe.shared, d_ff_shared=width // recipe.granularity)
    if recipe.lora is not None:
        moe.update(expert_kind="lora", lora={"rank": recipe.lora, "alpha": recipe.alpha})
        spec["frozen"] = ["embedding", "attention", "norms", "head"]  # PEFT: the adapters and routers train
    spec["moe"] = moe
    spec["layers"] = {"default": {"ffn": "moe"}}
    spec["name"] = f"{spec['name']}-upcycled"
    spec["description"] = recipe.describe(source)
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
