"""Reading one step's routing figures off the MoE layers' aux objects (moec.nn.moe.MoEAux) and routers.

Each step costs three device-to-host copies in all (loads, per-layer scalars, bias drifts), taken after the
loss has already been read back, so recording adds no synchronisation the loop did not have
(BENCHMARKS.md, "smoke-run per-step recording").
"""

from __future__ import annotations

import torch

from moec.smoke.metrics import LayerStep, StepRecord


class StepRecorder:
    """Called once per step with the step's cross-entropy, aux total and per-layer MoEAux; keeps a StepRecord."""

    def __init__(self, moe_modules: list[torch.nn.Module]):
        self.routers = [m.router for m in moe_modules]
        self.bias0 = [None if r.expert_bias is None else r.expert_bias.detach().clone() for r in self.routers]
        self.steps: list[StepRecord] = []

    def __call__(self, step: int, ce: float, aux: float, layers: list) -> None:
        if not layers:
            self.steps.append(StepRecord(step, ce, aux, []))
            return
        sizes = [int(la.tokens_per_expert.numel()) for la in layers]
        loads = torch.cat([la.tokens_per_expert.reshape(-1) for la in layers]).tolist()  # (Σ E,)
        scalars = torch.stack(
            [torch.stack([la.dropped.float(), la.load_balance.float(), la.z_loss.float()]) for la in layers]
        ).tolist()  # (layers, 3)
        drifts = self._drifts()
        out, start = [], 0
        for j, n in enumerate(sizes):
            dropped, lb, z = scalars[j]
            out.append(LayerStep(loads[start : start + n], int(dropped), lb, z, drifts[j]))
            start += n
        self.steps.append(StepRecord(step, ce, aux, out))

    def _drifts(self) -> list[float | None]:
        moved = [
            None if b0 is None else (r.expert_bias.detach() - b0).abs().max()
            for r, b0 in zip(self.routers, self.bias0, strict=True)
        ]
        present = [m for m in moved if m is not None]
        values = iter(torch.stack(present).tolist() if present else [])
        return [None if m is None else next(values) for m in moved]
