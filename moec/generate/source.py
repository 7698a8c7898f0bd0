"""What `moec generate` runs: a model from a spec, a ``moec build`` folder or a Hugging Face checkpoint
folder, ready to decode, and the tokenizer.json beside it when there is one.

- SPEC (a path or a shipped name, with ``--set``): the model with seeded random weights;
- BUILD_DIR (``spec.resolved.yaml``, ``model.safetensors`` when built with ``--weights``, ``model.py``): its own
  ``model.py`` (edits included) holding its weights, which decodes as moec.nn does (tests/codegen), and its plan;
- HF_DIR (``config.json`` and safetensors): :func:`moec.from_hf`.

A model whose routing has a capacity factor is decoded with the same weights and no capacity
(:func:`moec.nn.cache.without_capacity`; docs/decode.md, "Capacity"), and a note says so; for a build folder that
means moec.nn's model of its plan, since its model.py refuses to decode capacity.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moec.codegen.output import MODEL_PY, RESOLVED, WEIGHTS
from moec.errors import CommandError
from moec.nn.build import build_model
from moec.nn.cache import capacity_layers, without_capacity
from moec.nn.model import MoecModel
from moec.spec.encdec import refuse_encoder_decoder

TOKENIZER = "tokenizer.json"


@dataclass
class Loaded:
    model: MoecModel | torch.nn.Module  # in eval mode; a build folder's model.py Model carries its ``plan`` too
    kind: str  # "spec", "build" or "hf"
    tokenizer_file: Path | None
    notes: list[str] = field(default_factory=list)
    user_code: Path | None = None  # a build folder's model.py, when it decodes: its errors are the file's, not moec's


def load_source(
    source: str,
    *,
    device: torch.device,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    sets: tuple[str, ...] = (),
) -> Loaded:
    """The model ``source`` names, on ``device``; ``dtype`` None: the checkpoint's (HF), else fp32."""
    folder = Path(source)
    if folder.is_dir() and (folder / "config.json").is_file():
        if sets:
            raise CommandError("--set applies to moec specs; a Hugging Face folder's config is read as it is")
        from moec.hf.config import hf_to_model
        from moec.hf.weights import from_hf

        refuse_encoder_decoder(hf_to_model(folder), "moec generate")  # from its config, before its weights are read
        loaded = Loaded(from_hf(folder, device=device, dtype=dtype), "hf", _tokenizer(folder))
    elif folder.is_dir() and (folder / RESOLVED).is_file():
        if sets:
            raise CommandError("--set applies to moec specs; a build folder's plan is read as it is")
        loaded = _build_folder(folder, device, dtype or torch.float32, seed)
    elif folder.is_dir():
        raise CommandError(f"{source}: a folder holding neither config.json (Hugging Face) nor {RESOLVED} (moec build)")
    else:
        plan = _spec_plan(source, sets)
        refuse_encoder_decoder(plan, "moec generate")  # decoding one needs its source: not written yet
        model = build_model(without_capacity(plan), device=device, dtype=dtype or torch.float32, seed=seed)
        loaded = Loaded(model, "spec", None, [f"random weights (seed {seed})"])
        _note_capacity(loaded, plan)
        return _eval(loaded)
    if capacity_layers(loaded.model.plan):
        _note_capacity(loaded, loaded.model.plan)
        loaded.model = _same_weights(loaded.model, without_capacity(loaded.model.plan))
    return _eval(loaded)


@contextmanager
def decode_errors(loaded: Loaded) -> Iterator[None]:
    """Around a decode of ``loaded``: the cache's refusals (ValueErrors naming the feature) and, for a build
    folder's model.py, whatever that file raises, as one CommandError: the user's input, not moec's fault."""
    try:
        yield
    except ValueError as e:
        raise CommandError(f"{loaded.model.plan.name}: {e}") from None
    except (CommandError, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as e:  # the file is the user's to edit
        if loaded.user_code is None:
            raise
        raise CommandError(f"{loaded.user_code}: fails while decoding ({type(e).__name__}: {e})") from None


def require_cache_memory(plan: Any, dtype: torch.dtype, *, batch: int, positions: int, device: Any, hint: str) -> None:
    """Refuse, before it is allocated, a KV cache (and a hybrid's mixer state) that does not fit in what the
    loaded weights left free: a cache of --batch 4096 is allocated whole, and a CPU that overcommits would crawl
    instead of failing."""
    from moec.analyze import analyze
    from moec.analyze.memory import RunMemory
    from moec.nn.build import require_memory
    from moec.vocab import TORCH_DTYPE_NAMES

    names = [k for k, v in TORCH_DTYPE_NAMES.items() if f"torch.{v}" == str(dtype)]
    if not names:  # a model loaded in a dtype moec does not decode in (float64, say)
        raise CommandError(f"{plan.name}: decoding runs in {', '.join(TORCH_DTYPE_NAMES)}; the model is {dtype}")
    name = names[0]
    memory = analyze(plan, seq=positions, batch=batch, dtype=name).memory
    parts = (("KV cache", memory.kv_cache_bytes),)
    if memory.state_bytes:  # a hybrid's other token mixers keep a state of constant size instead (docs/mixers.md)
        parts += (("mixer state", memory.state_bytes),)
    held = " and ".join(part.replace("mixer", "its mixers'") for part, _ in parts)
    require_memory(
        RunMemory(name, parts),
        device,
        lead=f"{plan.name}: its {held} at batch {batch} × {positions} positions needs",
        hint=hint,
    )


def _spec_plan(source: str, sets: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """A moec spec (path or shipped name), or a lone Hugging Face config.json (random weights too)."""
    if source.endswith(".json"):
        if sets:
            raise CommandError("--set applies to moec specs; import the config with `moec import-hf` first")
        from moec.hf.config import hf_to_model

        return hf_to_model(source)
    from moec.spec import load_model

    return load_model(source, sets=sets)


def _eval(loaded: Loaded) -> Loaded:
    loaded.model.eval()
    return loaded


def _note_capacity(loaded: Loaded, plan) -> None:  # type: ignore[no-untyped-def]
    layers = capacity_layers(plan)
    if layers:
        loaded.notes.append(f"capacity_factor of {len(layers)} MoE layer(s) left out: decode routes every token")


def _same_weights(model: MoecModel, plan) -> MoecModel:  # type: ignore[no-untyped-def]
    """A model of ``plan`` (the same parameters) holding ``model``'s tensors, without a copy."""
    weight = model.lm_head.weight
    other = MoecModel(plan, device="meta", dtype=weight.dtype)
    other.load_state_dict(model.state_dict(), assign=True)
    if plan.tie_embeddings:
        other.lm_head.weight = other.embed.weight
    return other


def _build_folder(folder: Path, device: torch.device, dtype: torch.dtype, seed: int) -> Loaded:
    from moec.codegen.output import read_build_plan

    plan = read_build_plan(folder)
    refuse_encoder_decoder(plan, "moec generate")
    weights = folder / WEIGHTS
    if weights.exists() and not weights.is_file():  # not "no weights": random ones would pass for the folder's
        raise CommandError(f"{weights}: is not a file")
    # moec.nn's seeded weights: what the folder holds replaces them, and a model.py without weights takes them
    model = build_model(plan, device=device, dtype=dtype, seed=seed)
    notes = []
    if (folder / MODEL_PY).is_file() and not capacity_layers(plan):  # its model.py refuses to decode capacity
        generated = _generated_model(folder / MODEL_PY, device, dtype)
        try:  # an edited model.py may name or shape its parameters otherwise than the plan's
            generated.load_state_dict(model.state_dict(), strict=True)
        except RuntimeError as e:
            raise CommandError(
                f"{folder / MODEL_PY}: its parameters are not the plan's ({_first_problem(e)})"
            ) from None
        generated.plan, model = plan, generated  # `moec generate` reads the layers and sizes from the plan
        user_code = folder / MODEL_PY
        notes.append(f"decoded by {user_code}")
    else:
        user_code = None
        if not (folder / MODEL_PY).is_file():  # say which code decodes: not the folder's own, which is gone
            notes.append(f"{folder} holds no {MODEL_PY}: decoded by moec.nn's model of its plan")
    if not weights.is_file():
        notes.append(f"{folder} holds no {WEIGHTS}: random weights (seed {seed})")
        return Loaded(model, "build", _tokenizer(folder), notes, user_code)
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except (RuntimeError, ValueError, OSError, SafetensorError) as e:  # the last: a damaged file
        raise CommandError(f"{weights}: does not hold this plan's weights ({str(e).splitlines()[0]})") from None
    return Loaded(model, "build", _tokenizer(folder), notes, user_code)


def _first_problem(error: Exception) -> str:
    """torch's load_state_dict message without its header line: the missing, unexpected or mis-shaped names."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines[1:3] or lines[:1])


def _generated_model(path: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The ``Model`` of a build folder's model.py, on ``device`` in ``dtype``. Importing it runs the file, which is
    what naming the folder asks for: moec build wrote it to be read and edited."""
    import sys

    from moec.generated import NotAPythonFile, import_python_file

    name = f"moec_build_{abs(hash(str(path.resolve())))}"
    try:
        module = import_python_file(path, name)
        with torch.device(device):
            model = module.Model()
    except NotAPythonFile as e:
        raise CommandError(str(e)) from None
    except Exception as e:  # the file is the user's to edit: any error it raises is reported, not a traceback
        sys.modules.pop(name, None)
        raise CommandError(f"{path}: does not run ({type(e).__name__}: {e})") from None
    return model.to(dtype)


def _tokenizer(folder: Path) -> Path | None:
    path = folder / TOKENIZER
    return path if path.is_file() else None


def encode(tokenizer_file: Path | None, text: str) -> list[int]:
    """``text`` → token ids with the tokenizer.json beside the model (the ``tokenizers`` package)."""
    tok = _tokenizer_of(tokenizer_file)
    ids = tok.encode(text).ids
    if not ids:
        raise CommandError(f"--prompt {text!r} encodes to no tokens")
    return ids


def decode(tokenizer_file: Path | None, ids: list[int]) -> str:
    return _tokenizer_of(tokenizer_file).decode(ids)


def _tokenizer_of(tokenizer_file: Path | None):  # type: ignore[no-untyped-def]
    if tokenizer_file is None:
        raise CommandError(
            f"--prompt needs a {TOKENIZER} beside the model (in the Hugging Face or build folder); "
            "give --prompt-tokens instead"
        )
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise CommandError(
            "--prompt needs the tokenizers package: pip install 'moec[generate]' (or give --prompt-tokens)"
        ) from None
    try:
        return Tokenizer.from_file(str(tokenizer_file))
    except Exception as e:  # the tokenizers package raises its own exception type for a bad file
        raise CommandError(f"{tokenizer_file}: not a tokenizer the tokenizers package reads ({e})") from None
