"""`moec build`: a spec → a folder with the generated model.py, the resolved plan, its analysis, and weights."""

from __future__ import annotations

import click

from moec.commands.common import load_plan, print_notes, report_errors, set_option
from moec.errors import CommandError, SpecError
from moec.vocab import MODEL_DTYPES, TORCH_DTYPE_NAMES

DTYPES = {name: TORCH_DTYPE_NAMES[name] for name in MODEL_DTYPES}


@click.command()
@click.argument("spec", required=False)
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(path_type=str),
    help="The folder to write (it must not exist, unless --force).",
)
@click.option("--weights", is_flag=True, help="Also write initialised weights as model.safetensors (seeded).")
@click.option(
    "--seed",
    type=click.IntRange(0, (1 << 63) - 1),
    default=None,
    help="Seed of the initial weights (default 0): the same seed gives the same bytes.",
)
@click.option(
    "--dtype",
    type=click.Choice(list(DTYPES)),
    default=None,
    help="Weight dtype (default fp32; with --from-hf, the checkpoint's).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace the output folder if an earlier moec build wrote it (and nothing in it changed since).",
)
@click.option(
    "--from-hf",
    "hf_dir",
    type=click.Path(exists=True, file_okay=False, path_type=str),
    help="A Hugging Face checkpoint folder: the spec comes from its config.json and the weights from its "
    "safetensors (instead of SPEC and --weights).",
)
@set_option
@report_errors
def build(
    spec: str | None,
    out: str,
    weights: bool,
    seed: int | None,
    dtype: str | None,
    force: bool,
    hf_dir: str | None,
    sets: tuple[str, ...],
) -> None:
    """Compile SPEC into OUTPUT/: model.py (a readable, standalone PyTorch model with moec.nn's parameter
    names), spec.resolved.yaml, analysis.json and, with --weights or --from-hf, model.safetensors.

    Load the weights into the generated model with safetensors.torch.load_model(Model(), "model.safetensors")
    (a tied lm_head.weight is stored once, as embed.weight). Everything is written to a temporary folder
    and renamed into place, so a failed build leaves nothing behind.
    """
    if (spec is None) == (hf_dir is None):
        raise click.UsageError("give a SPEC or --from-hf HF_DIR (one of them)")
    if hf_dir is not None and (sets or seed is not None):
        raise click.UsageError("--set and --seed apply to a SPEC; --from-hf takes the checkpoint as it is")

    from moec.codegen import render_model_source
    from moec.codegen.output import check_output_dir, clear_leftovers, write_build

    print_notes(clear_leftovers(out))
    check_output_dir(out, force=force)  # before any work: the cheap refusal first
    try:
        if hf_dir is not None:
            plan, model = _from_hf(hf_dir, dtype)
        else:
            plan, model = load_plan(spec, sets, encoder_decoder=True), None  # codegen renders encoder-decoders
        source = render_model_source(plan)  # before allocating: a plan codegen refuses costs nothing
        if model is None and weights:
            model = _initialised(plan, dtype, seed or 0)
    except ValueError as e:  # codegen's refusals, a checkpoint that does not match, weights that do not fit
        if isinstance(e, (SpecError, CommandError)):
            raise
        raise CommandError(str(e)) from None
    files, notes = write_build(out, plan, source, model=model, force=force)
    print_notes(notes)
    click.echo(f"wrote {out}/: {', '.join(files)}", err=True)


def _initialised(plan, dtype: str | None, seed: int):  # -> (MoecModel)
    """Seeded weights on the CPU; DoesNotFitError before allocating when they, and the byte copy safetensors
    makes of them while writing, would not fit."""
    import torch

    from moec.nn import build_model
    from moec.nn.build import require_memory, weights_memory

    torch_dtype = getattr(torch, DTYPES[dtype or "fp32"])
    need = weights_memory(plan, torch_dtype, serialized=True)
    require_memory(need, torch.device("cpu"), lead=f"{plan.name}: its weights need")
    return build_model(plan, device="cpu", dtype=torch_dtype, seed=seed)


def _from_hf(hf_dir: str, dtype: str | None):  # -> (ResolvedModel, MoecModel)
    try:
        from moec.hf.weights import from_hf
    except ImportError as e:
        raise CommandError(f"--from-hf is not available in this installation ({e})") from None
    import torch

    model = from_hf(hf_dir, device="cpu", dtype=getattr(torch, DTYPES[dtype]) if dtype else None)
    return model.plan, model  # the checkpoint's plan: without MTP weights it has no MTP blocks
