"""`moec smoke-run --log DIR` and `--plot DIR`: the per-step record as JSONL (and TensorBoard event files
when tensorboard is installed), and PNG plots. Targets are checked before the run starts, so a bad folder
costs no training; every file is written atomically under moec/output_files.py's rules
(docs/output-safety.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from moec.errors import CommandError
from moec.output_files import (
    check_file_target,
    lstat_or_none,
    refuse_special,
    write_file,
)
from moec.smoke.metrics import STEPS_SCHEMA
from moec.smoke.report import SmokeResult

STEPS_FILE = "steps.jsonl"
PLOT_FILES = ("loss.png", "expert-load.png", "balance.png")
TENSORBOARD_DIR = "tensorboard"


def log_targets(folder: str) -> list[Path]:
    return [Path(folder) / STEPS_FILE]


def plot_targets(folder: str) -> list[Path]:
    return [Path(folder) / name for name in PLOT_FILES]


def prepare(folder: str, targets: list[Path], *, force: bool) -> None:
    """Create ``folder`` when missing and refuse, before any training, what writing ``targets`` would refuse."""
    path = Path(folder)
    st = lstat_or_none(path)
    if st is not None:
        refuse_special(path, st)
        if not path.is_dir():
            raise CommandError(f"{folder}: is not a folder; name a folder for the output")
    else:
        try:
            path.mkdir(parents=True)
        except OSError as e:
            raise CommandError(f"{folder}: cannot create the folder: {e.strerror or e}") from None
    for target in targets:
        check_file_target(target, force=force)


def tensorboard_installed() -> bool:  # optional: not a dependency of moec
    return importlib.util.find_spec("tensorboard") is not None


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise CommandError("--plot needs matplotlib, which is not installed: pip install 'moec[plot]'")


def steps_jsonl(result: SmokeResult) -> str:
    """A header line (schema, run, layer indices, experts), then one JSON object per step."""
    index = [l.layer for l in result.layers]
    header = {
        "schema": STEPS_SCHEMA,
        "spec": result.spec,
        "model": result.model,
        "batch": result.batch,
        "seq": result.seq,
        "layers": index,
        "n_experts": [len(l.tokens_per_expert) for l in result.layers],
        "aux_coefficients": result.aux_coefficients,
    }
    lines = [json.dumps(header)] + [json.dumps(s.to_dict(index)) for s in result.step_records]
    return "\n".join(lines) + "\n"


def write_log(result: SmokeResult, folder: str, *, force: bool) -> list[str]:
    notes = write_file(Path(folder) / STEPS_FILE, steps_jsonl(result), force=force)
    if tensorboard_installed():
        notes += write_tensorboard(result, Path(folder) / TENSORBOARD_DIR)
    return notes


def write_tensorboard(result: SmokeResult, folder: Path) -> list[str]:
    """Scalars per step: loss, aux, and per layer H/ln E, max/mean, dropped fraction, router z."""
    from torch.utils.tensorboard import SummaryWriter

    folder.mkdir(exist_ok=True)
    index = [l.layer for l in result.layers]
    with SummaryWriter(log_dir=str(folder)) as w:
        for s in result.step_records:
            w.add_scalar("loss", s.loss, s.step)
            w.add_scalar("aux", s.aux, s.step)
            for layer, ls in zip(index, s.layers, strict=True):
                w.add_scalar(f"layer{layer}/entropy_norm", ls.entropy_norm, s.step)
                w.add_scalar(f"layer{layer}/max_mean", ls.max_mean, s.step)
                w.add_scalar(f"layer{layer}/dropped_fraction", ls.dropped_fraction, s.step)
                w.add_scalar(f"layer{layer}/router_z", ls.router_z, s.step)
    return [f"note: TensorBoard event files in {folder}"]


def write_plots(result: SmokeResult, folder: str, *, force: bool) -> list[str]:
    from moec.smoke.plots import render_pngs

    notes: list[str] = []
    pngs = render_pngs(result)
    for name, data in zip(PLOT_FILES, pngs, strict=False):
        notes += write_file(Path(folder) / name, data, force=force)
    if len(pngs) < len(PLOT_FILES):
        notes.append(f"no MoE layers: {' and '.join(PLOT_FILES[len(pngs) :])} not drawn (no routing)")
    return notes
