"""Per-step routing dynamics of a smoke-run: what each MoE layer did at every optimizer step.

Recorded per step: the cross-entropy, the weighted aux total, and per MoE layer the kept slots per expert,
the dropped slots, the raw load-balance and router-z values, and for aux-loss-free balancing how far the
selection bias has moved. Derived here (pure arithmetic, no torch): the load entropy, max/mean, the dropped
fraction, and whether a layer collapsed (docs/smoke-run.md, "Collapse").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# A layer has collapsed when the normalized entropy H/ln E of its expert load, summed over the last window
# of steps (the window of "loss last"), is below this: an even load is 1; all slots on k of E experts is
# ln k / ln E (0 for top-1, 0.33 for 2 of 8, 0.38 for 8 of 256). Summed, not averaged per step: one step of a
# small batch is a noisy sample of the router (32 slots over 8 experts uniformly at random give 0.94 on average).
COLLAPSE_ENTROPY = 0.5
STEPS_SCHEMA = "moec.smoke.steps/1"


@dataclass
class LayerStep:
    """One MoE layer at one step (this process's tokens)."""

    load: list[int]  # kept slots per expert
    dropped: int  # slots dropped by the capacity factor
    load_balance: float  # raw Switch form E·Σ f_i·P_i (1 when even), before its coefficient
    router_z: float  # raw z-loss: mean logsumexp(logits)², before its coefficient
    bias_drift: float | None  # max_e |b_e − b_e(step 0)| of the selection bias; None without one

    @property
    def slots(self) -> int:
        return sum(self.load) + self.dropped

    @property
    def dropped_fraction(self) -> float:
        return self.dropped / self.slots if self.slots else 0.0

    @property
    def entropy(self) -> float:
        """Entropy of the kept load over the experts, in nats (ln E when even)."""
        return load_entropy(self.load)

    @property
    def entropy_norm(self) -> float:
        """H / ln E: 1 for an even load, 0 when one expert takes every slot."""
        return load_entropy_norm(self.load)

    @property
    def max_mean(self) -> float:
        return max_mean(self.load)

    def to_dict(self) -> dict:
        return {
            "load": self.load,
            "dropped": self.dropped,
            "dropped_fraction": self.dropped_fraction,
            "entropy": self.entropy,
            "entropy_norm": self.entropy_norm,
            "max_mean": self.max_mean,
            "load_balance": self.load_balance,
            "router_z": self.router_z,
            "bias_drift": self.bias_drift,
        }


@dataclass
class StepRecord:
    step: int
    loss: float  # next-token cross-entropy
    aux: float  # Σ over layers of the weighted aux losses (what was added to the loss)
    layers: list[LayerStep]

    def to_dict(self, layer_index: list[int]) -> dict:
        return {
            "step": self.step,
            "loss": self.loss,
            "aux": self.aux,
            "layers": [{"layer": i, **ls.to_dict()} for i, ls in zip(layer_index, self.layers, strict=True)],
        }


@dataclass
class LayerDynamics:
    """One MoE layer over the last window of steps: the load summed over it (entropy, max/mean, dropped),
    router z averaged, the bias drift at its end."""

    layer: int
    entropy_norm: float
    max_mean: float
    dropped_fraction: float
    router_z: float
    bias_drift: float | None
    collapsed: bool


@dataclass
class Dynamics:
    """What the terminal shows and JSON carries of the per-step record (the steps themselves go to --log)."""

    window: int  # steps averaged for "last" figures
    collapse_entropy: float
    layers: list[LayerDynamics] = field(default_factory=list)

    @property
    def collapsed(self) -> list[int]:
        return [ld.layer for ld in self.layers if ld.collapsed]


def load_entropy(load: list[int]) -> float:
    total = sum(load)
    if not total:
        return 0.0
    return max(0.0, -sum(n / total * math.log(n / total) for n in load if n))  # never -0.0


def load_entropy_norm(load: list[int]) -> float:
    """H / ln E: 1 for an even load, 0 when one expert takes every slot."""
    return load_entropy(load) / math.log(len(load)) if len(load) > 1 else 1.0


def max_mean(load: list[int]) -> float:
    mean = sum(load) / len(load) if load else 0.0
    return max(load) / mean if mean else 0.0


def last_window(n_steps: int) -> int:
    """How many final steps "last" averages over (and the first window too): a quarter, between 1 and 5."""
    return max(1, min(5, n_steps // 4))


def dynamics(steps: list[StepRecord], layer_index: list[int]) -> Dynamics:
    """Each layer over the last window of steps, judged against COLLAPSE_ENTROPY."""
    k = last_window(len(steps))
    out = Dynamics(window=k, collapse_entropy=COLLAPSE_ENTROPY)
    tail = steps[-k:]
    if not tail:
        return out
    for j, layer in enumerate(layer_index):
        rows = [s.layers[j] for s in tail]
        pooled = LayerStep(
            load=[sum(col) for col in zip(*(r.load for r in rows), strict=True)],
            dropped=sum(r.dropped for r in rows),
            load_balance=_mean([r.load_balance for r in rows]),
            router_z=_mean([r.router_z for r in rows]),
            bias_drift=rows[-1].bias_drift,
        )
        out.layers.append(
            LayerDynamics(
                layer=layer,
                entropy_norm=pooled.entropy_norm,
                max_mean=pooled.max_mean,
                dropped_fraction=pooled.dropped_fraction,
                router_z=pooled.router_z,
                bias_drift=pooled.bias_drift,
                collapsed=pooled.entropy_norm < COLLAPSE_ENTROPY,
            )
        )
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0
