"""`moec upcycle`: a dense Hugging Face checkpoint → an MoE (or LoRA-MoE) with its weights (moec/hf/upcycle)."""

from __future__ import annotations

import click

from moec.commands.common import FiniteFloatRange, print_notes, refuse_replacing_an_input, report_errors
from moec.vocab import UPCYCLE_ROUTERS


@click.command()
@click.argument("dense", type=click.Path(exists=True, path_type=str))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=str), help="The folder to write.")
@click.option("--experts", type=click.IntRange(1, 4096), required=True, help="E: copies of each FFN.")
@click.option("--top-k", type=click.IntRange(1, 4096), required=True, help="k: copies chosen per token.")
@click.option("--granularity", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="m: each copy cut in m segments of the FFN's hidden units (E·m experts, top k·m).")  # fmt: skip
@click.option("--shared", type=click.IntRange(0, 1024), default=0, show_default=True,
              help="Shared experts, made of the FFN's segments (a multiple of m).")  # fmt: skip
@click.option("--router", type=click.Choice(UPCYCLE_ROUTERS), default="softmax", show_default=True)
@click.option("--router-std", type=FiniteFloatRange(0), default=0.0, show_default=True,
              help="Standard deviation of the router's initial weights (0: zero, every expert alike).")  # fmt: skip
@click.option("--noise", type=FiniteFloatRange(0), default=0.0, show_default=True,
              help="Gaussian noise on the routed experts, as a fraction of each matrix's standard deviation.")  # fmt: skip
@click.option("--seed", type=click.IntRange(0, (1 << 63) - 1), default=0, show_default=True)
@click.option("--lora", type=click.IntRange(1, 4096), default=None,
              help="RANK: LoRA experts over the frozen pretrained FFN instead of copies (--format moec).")  # fmt: skip
@click.option("--lora-alpha", type=FiniteFloatRange(0, min_open=True), default=None, help="Default 2·RANK.")
@click.option("--family", default=None, help="The Hugging Face MoE family to write (default: the first that fits).")
@click.option("--format", "fmt", type=click.Choice(["hf", "moec"]), default="hf", show_default=True)
@click.option("--force", is_flag=True, help="Replace the output folder if moec wrote it.")
@report_errors
def upcycle(dense: str, out: str, fmt: str, family: str | None, force: bool, **options) -> None:
    """Upcycle the DENSE Hugging Face checkpoint folder (llama, mistral, qwen2, qwen3; safetensors) into an MoE:
    every non-FFN tensor copied, the experts made from the FFN as docs/upcycling.md says, written as a
    Hugging Face checkpoint (--format hf) or a moec build folder (--format moec). Prints the parameters before
    and after."""
    from moec.analyze import analyze
    from moec.codegen.output import check_output_dir, clear_leftovers
    from moec.hf.checkpoint import checkpoint_folder
    from moec.hf.config import hf_to_model
    from moec.hf.upcycle import upcycle, write_upcycled

    dense = str(checkpoint_folder(dense))  # a weights file or config.json names its folder, for every step below
    refuse_replacing_an_input(out, (dense,))

    if options["lora"] is not None and fmt == "hf":
        raise click.UsageError("--lora builds LoRA experts, which no Hugging Face family has: use --format moec")
    if family is not None:
        from moec.hf.families import FAMILIES

        exporters = sorted(m for m, f in FAMILIES.items() if f.export is not None)
        if family not in exporters:  # refused before the upcycling's work, naming the option
            raise click.BadParameter(f"{family!r}: moec writes {', '.join(exporters)}", param_hint="--family")
    if fmt == "hf" and options["shared"] and family is None:
        # the one family whose shared expert sits beside grouped-query attention; the recipe differs for it (a
        # sigmoid gate on the shared expert), so it is chosen before upcycling, not searched for after
        family = "qwen2_moe"
        click.echo("note: --shared with --format hf writes Qwen2-MoE (--family qwen2_moe)", err=True)
    print_notes(clear_leftovers(out))
    check_output_dir(out, force=force)  # the cheap refusal before any work
    model = upcycle(dense, family=family, **options)
    if family is not None and fmt == "moec":  # --family means the same in both formats: the model fits it
        from moec.hf.export_config import family_config

        family_config(model.plan, family)
    before, after = analyze(hf_to_model(dense)).params, analyze(model.plan).params
    files = write_upcycled(model, out, format=fmt, family=family, force=force)
    click.echo(f"parameters before: {before.total:,} total, {before.active:,} active", err=True)
    click.echo(f"parameters after:  {after.total:,} total, {after.active:,} active", err=True)
    click.echo(f"trainable: {after.trainable:,} of {after.total:,}", err=True)
    click.echo(f"recipe: {model.plan.description}", err=True)
    shards = [f for f in files if f.startswith("model-")]
    shown = [f for f in files if f not in shards] + ([f"{len(shards)} shards"] if shards else [])
    click.echo(f"wrote {out}/: {', '.join(shown)}", err=True)
