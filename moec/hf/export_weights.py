"""A moec model → a Hugging Face checkpoint folder: :func:`export_hf` (``moec.export_hf``, ``moec export-hf -o DIR``).

    DIR/config.json                    the family's config (moec.hf.config.export_hf_config, or the config the
                                       model was imported from)
    DIR/generation_config.json         only where the family's config class sets generation defaults
    DIR/model.safetensors              one file, or shards model-0000i-of-0000n.safetensors with
    DIR/model.safetensors.index.json   the index transformers and moec.from_hf read
    DIR/moec-manifest.json             written last, as for ``moec build`` (docs/output-safety.md)

**The names and layouts are the import's, inverted; there is no export table.** Which tensors the checkpoint
holds, and their shapes, is what transformers' ``save_pretrained`` writes for the config (its model built on
``meta``: its state_dict less the tied and ignored keys, through ``revert_weight_conversion``): the layout its
``from_pretrained`` reads. Where each of their elements comes from is found by running the family's import
:class:`~moec.hf.mapper.Mapper` over a checkpoint of those names whose every element holds its own index
(float64, exact below 2**53): each moec tensor the Mapper builds is then a map from its elements to checkpoint
elements (stacked or per-expert experts, gate/up fused or split or interleaved, rotary rows permuted, fused
q/k/v sliced), and exporting scatters the moec values through it. A Mapper step that is not a pure re-layout
shows as an element that is not an index, and is refused. Every checkpoint element must be written exactly by
this, and the written checkpoint is read back through the import before anything is written to disk: it
must give every moec tensor bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from moec.errors import CommandError
from moec.hf.checkpoint import INDEX, SINGLE, MemoryCheckpoint
from moec.hf.export_config import DEFAULT_MAX_SHARD, model_config, parse_size
from moec.hf.families import FAMILIES
from moec.hf.mapper import Missing, NotFloat
from moec.nn.model import MoecModel
from moec.spec.plan import ResolvedModel

_EXACT_BELOW = 2**53  # float64 holds every integer below this exactly

# ---------------------------------------------------------------------------------------------
# the checkpoint's names and shapes: what transformers saves


def saved_layout(config: Mapping[str, Any]) -> tuple[dict[str, tuple[int, ...]], Any]:
    """The tensor names and shapes transformers' save_pretrained writes for ``config`` (its model built on
    ``meta``), and its config object."""
    try:
        import transformers
        from transformers.core_model_loading import revert_weight_conversion
        from transformers.modeling_utils import remove_tied_weights_from_state_dict
    except ImportError as e:
        raise CommandError(f"exporting weights needs transformers, to lay them out as it saves them ({e})") from None
    model_type = config["model_type"]
    hf_config = transformers.CONFIG_MAPPING[model_type].from_dict(dict(config))
    # the class the config names, else the family's (a wrapper's config.json made by its config class names none)
    arch = (config.get("architectures") or [FAMILIES[model_type].architecture])[0]
    first = re.match(r"\w+", arch) if isinstance(arch, str) else None
    cls = getattr(transformers, first.group(), None) if first else None
    # dots3_note: the text model's class, which transformers builds from the text config (as its Auto class does)
    if cls is not None and not isinstance(hf_config, cls.config_class):
        hf_config = hf_config.get_text_config()
    with torch.device("meta"):
        hf_model = cls._from_config(hf_config) if cls else transformers.AutoModelForCausalLM.from_config(hf_config)
    state = hf_model.state_dict()
    for key in hf_model._keys_to_ignore_on_save or ():
        state.pop(key, None)
    state = revert_weight_conversion(hf_model, remove_tied_weights_from_state_dict(state, hf_model))
    return {name: tuple(t.shape) for name, t in state.items()}, hf_config


# ---------------------------------------------------------------------------------------------
# the inverse of the import


class _Indices(Mapping[str, torch.Tensor]):
    """Checkpoint tensors whose elements are their own global indices (float64), made when read."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.shapes, self.offsets, self.total = shapes, {}, 0
        for name, shape in shapes.items():
            self.offsets[name] = self.total
            self.total += math.prod(shape)
        if self.total >= _EXACT_BELOW:
            raise CommandError(f"{self.total:,} checkpoint elements are too many to trace exactly (at most 2**53)")

    def __getitem__(self, name: str) -> torch.Tensor:
        n = math.prod(self.shapes[name])
        return torch.arange(self.offsets[name], self.offsets[name] + n, dtype=torch.float64).view(self.shapes[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def moec_tensors(model: MoecModel) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer once, by its first name (a tied head is the embedding)."""
    from moec.hf.weights import model_targets

    return {name: t.detach() for name, t in model_targets(model).items()}


def export_state_dict(model: MoecModel, model_type: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """``model``'s tensors under the checkpoint names and shapes ``shapes`` (see the module's docstring)."""
    index = _Indices(shapes)
    names = list(shapes)
    starts = torch.tensor([index.offsets[n] for n in names], dtype=torch.int64)  # (n_tensors,)
    mapper = FAMILIES[model_type].mapper(MemoryCheckpoint(index, Path(f"<{model_type} checkpoint>")), model.plan)
    out: dict[str, torch.Tensor] = {}
    written = {n: torch.zeros(math.prod(s), dtype=torch.bool) for n, s in shapes.items()}
    problems: list[str] = []
    for name, value in moec_tensors(model).items():
        try:
            ids = mapper.load(name)
        except Missing as e:
            problems.append(f"{name}: transformers saves no {', '.join(e.names[:3])} for it")
            continue
        except (NotFloat, IndexError, RuntimeError) as e:
            problems.append(f"{name}: its import cannot be traced ({e})")
            continue
        flat = ids.reshape(-1)
        exact = torch.equal(flat, flat.round()) and bool(((flat >= 0) & (flat < index.total)).all())
        exact = exact and flat.unique().numel() == flat.numel()  # no element read twice (a broadcast)
        if tuple(ids.shape) != tuple(value.shape) or not exact:
            problems.append(f"{name}: its import is not a re-layout of checkpoint tensors, so it cannot be inverted")
            continue
        twice = _scatter(flat.long(), value.reshape(-1), names, starts, shapes, out, written)
        problems += [f"{name}: its import reads {n} elements another moec tensor reads too" for n in twice]
    problems += _write_derived(mapper.derived(), shapes, out, written)
    problems += _unwritten(written, model_type)
    if problems:
        raise CommandError(
            f"cannot export to {model_type}: "
            + "; ".join(problems[:5])
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        )
    return {n: out[n] for n in names}


def _write_derived(
    derived: dict[str, torch.Tensor],
    shapes: dict[str, tuple[int, ...]],
    out: dict[str, torch.Tensor],
    written: dict[str, torch.Tensor],
) -> list[str]:
    """The tensors a family computes from the plan (MiniMax's decay buffers), written as given: the import
    checks them against the plan when the checkpoint is read back."""
    problems = []
    for n, t in derived.items():
        if n not in shapes or tuple(t.shape) != tuple(shapes[n]):
            problems.append(f"{n}: the family derives a tensor transformers does not save in that shape")
            continue
        out[n] = t.reshape(-1).to(torch.float64)
        written[n][:] = True
    return problems


def _unwritten(written: dict[str, torch.Tensor], model_type: str) -> list[str]:
    """Checkpoint tensors no moec tensor fills, grouped by their first two name parts (a vision tower's
    hundreds of tensors are one line)."""
    groups: dict[str, list[str]] = {}
    for n, w in written.items():
        if not bool(w.all()):
            groups.setdefault(".".join(n.split(".")[:2]), []).append(n)
    return [
        f"transformers' {model_type} model saves {', '.join(ns[:2])}{f' and {len(ns) - 2} more' if len(ns) > 2 else ''}"
        ", which no moec tensor gives (a part moec does not model)"
        for ns in groups.values()
    ]


def _scatter(
    ids: torch.Tensor,
    values: torch.Tensor,
    names: list[str],
    starts: torch.Tensor,
    shapes: dict[str, tuple[int, ...]],
    out: dict[str, torch.Tensor],
    written: dict[str, torch.Tensor],
) -> list[str]:
    """Put each value at the checkpoint element its index names; the checkpoint tensors some of whose elements
    were written already (two moec tensors cannot both come from one element)."""
    order = torch.argsort(ids)  # the elements by checkpoint position: each checkpoint tensor's are one run
    ids, values = ids[order], values.reshape(-1)[order]
    bounds = torch.searchsorted(ids, starts).tolist() + [ids.numel()]  # (n_tensors + 1,) run starts
    twice = []
    for t in (i for i in range(len(names)) if bounds[i] < bounds[i + 1]):
        a, b, name = bounds[t], bounds[t + 1], names[t]
        if name not in out:
            out[name] = torch.empty(math.prod(shapes[name]), dtype=values.dtype, device=values.device)
        local = ids[a:b] - starts[t]
        if bool(written[name][local].any()):
            twice.append(name)
        out[name][local] = values[a:b]
        written[name][local] = True
    return twice


def shaped(flat: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {n: t.view(shapes[n]).contiguous() for n, t in flat.items()}


def check_reads_back(model: MoecModel, model_type: str, tensors: dict[str, torch.Tensor]) -> None:
    """The import of ``tensors`` must give every tensor of ``model`` bit for bit (the export's own check)."""
    from moec.hf.weights import read_weights

    got = read_weights(MemoryCheckpoint(tensors, Path("<export>")), model_type, model, device=torch.device("cpu"))
    bad = [n for n, t in moec_tensors(model).items() if not torch.equal(got[n], t.to("cpu"))]
    if bad:
        raise CommandError(
            f"the exported checkpoint does not read back as the model ({', '.join(bad[:5])}); not written"
        )


# ---------------------------------------------------------------------------------------------
# the folder


def shard(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive tensors in shards of at most ``max_bytes`` (a larger tensor alone in its shard)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    return shards


def checkpoint_files(tensors: dict[str, torch.Tensor], max_bytes: int) -> dict[str, Any]:
    """File name → its tensors (a dict) or its JSON text: one model.safetensors, or shards and their index."""
    shards = shard(tensors, max_bytes)
    if len(shards) == 1:
        return {SINGLE: shards[0]}
    files: dict[str, Any] = {}
    weight_map = {}
    for i, part in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        files[fname] = part
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    files[INDEX] = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
    return files


def generation_config_text(hf_config: Any) -> str | None:
    """generation_config.json as save_pretrained writes it, or None when the config sets no generation default."""
    from transformers import GenerationConfig

    gen = GenerationConfig.from_model_config(hf_config)
    diff = {k: v for k, v in gen.to_diff_dict().items() if k != "transformers_version"}
    return gen.to_json_string(use_diff=True) if diff else None


def export_hf(
    model: MoecModel,
    out: str | os.PathLike[str],
    *,
    family: str | None = None,
    config: Mapping[str, Any] | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD,
    force: bool = False,
    drop_training: bool = False,
    readme: str | None = None,
) -> list[str]:
    """Write ``model`` as a Hugging Face checkpoint folder ``out`` (see the module's docstring) that
    transformers' from_pretrained and moec.from_hf load; return the file names written. ``family``: the
    model_type to write (default: the config the model was imported from, else the first family that
    expresses its plan exactly); ``config``: the config.json to write, which must import to the model's plan
    (a family without an exporter); ``drop_training``: as for export_hf_config; ``readme``: the text of a
    README.md written beside them (how the weights were made). ``out`` must not exist, be empty, or (with ``force``) be a folder moec wrote."""
    from moec.codegen.output import check_output_dir, clear_leftovers, write_folder

    max_bytes = parse_size(max_shard_size) if isinstance(max_shard_size, str) else int(max_shard_size)
    clear_leftovers(out)
    check_output_dir(out, force=force)
    config = model_config(model, family=family, config=config, drop_training=drop_training)
    model_type = config["model_type"]
    shapes, hf_config = saved_layout(config)
    tensors = shaped(export_state_dict(model, model_type, shapes), shapes)
    check_reads_back(model, model_type, tensors)
    files: dict[str, Any] = {"config.json": json.dumps(config, indent=2) + "\n"}
    gen = generation_config_text(hf_config)
    if gen is not None:
        files["generation_config.json"] = gen
    files.update(checkpoint_files(tensors, max_bytes))
    if readme is not None:
        files["README.md"] = readme
    return write_folder(out, files, force=force, written_by="moec export-hf")


# ---------------------------------------------------------------------------------------------
# a moec weights file


def load_moec_weights(plan: ResolvedModel, path: str | os.PathLike[str]) -> MoecModel:
    """The model of ``plan`` holding a moec state_dict saved as safetensors (``moec build --weights``'s
    model.safetensors: moec's names, a tied head stored once as embed.weight), in the file's dtype."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from moec.hf.weights import install, model_targets
    from moec.nn.build import build_model

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise CommandError(f"{path}: not a readable safetensors file ({e})") from None
    floats = [t.dtype for t in tensors.values() if t.dtype.is_floating_point]
    dtype = max(set(floats), key=floats.count) if floats else torch.float32
    model = build_model(plan, device="meta", dtype=dtype)
    targets = model_targets(model)
    problems = [f"{n}: missing" for n in targets if n not in tensors]
    problems += [f"{n}: not a tensor of {plan.name}" for n in tensors if n not in targets]
    problems += [
        f"{n}: shape {tuple(t.shape)}, the spec's model needs {tuple(targets[n].shape)}"
        for n, t in tensors.items()
        if n in targets and tuple(t.shape) != tuple(targets[n].shape)
    ]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CommandError(f"{path}: does not hold the spec's weights: " + "; ".join(problems[:5]) + more)
    install(model, tensors, torch.device("cpu"))
    return model.eval()
