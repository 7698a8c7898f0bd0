"""A safetensors checkpoint folder, read safely: which files hold it (:func:`checkpoint_files`), and its
tensors on demand (:class:`Checkpoint`), each checked to be of a floating-point dtype before it is used as a
weight. The mapping onto moec's parameters is in ``mapper.py`` and each family's module, the loading in
``weights.py``.

**safetensors only.** ``pytorch_model.bin``, ``*.pt`` and the like are pickles, and unpickling can run
arbitrary code; they are refused without being opened.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from moec.errors import Problem, SpecError
from moec.hf.config import read_hf_config
from moec.hf.draft import shown
from moec.hf.jsontext import KeyLocator, parse_object
from moec.hf.mapper import Missing, NotFloat
from moec.spec.load import read_text_file

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# The largest released indexes (DeepSeek-V3: ~90,000 tensors) are under 10 MiB.
MAX_INDEX_BYTES = 32 << 20
# safetensors dtype names of floating-point kinds (F64 ... F8_E4M3, BF16); I*, U*, BOOL and C* are not
FLOATING = ("F", "BF")


_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


class CheckpointError(SpecError):
    """A checkpoint that does not fit the model its config.json describes (or cannot be read safely).
    A :class:`SpecError`, so the CLI prints every problem and exits 2; the lists are kept apart too."""

    def __init__(
        self,
        problems: list[Problem],
        *,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        mismatched: Iterable[str] = (),
    ):
        super().__init__(problems)
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)


def fail(where: Path | str, message: str, path: str = "") -> CheckpointError:
    return CheckpointError([Problem(str(where), None, None, path, message)])


# ---------------------------------------------------------------------------------------------
# the checkpoint files


def checkpoint_folder(path: str | PathLike[str]) -> Path:
    """The folder a checkpoint path names (a config.json or a weights file: the folder holding it)."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise fail(folder, "no such checkpoint folder")
    return folder


def unquantized_model_type(folder: Path, mapped: Container[str]) -> str:
    """The model_type of a checkpoint's config.json (translated already), refusing a quantized checkpoint and
    a family without a weight mapping (not in ``mapped``)."""
    raw, file, text = read_hf_config(folder)
    q = raw.get("quantization_config")
    if q:
        method = q.get("quant_method", "?") if isinstance(q, dict) else "?"
        method = method if isinstance(method, str) and method.isprintable() and len(method) <= 60 else shown(method)
        line, col = KeyLocator(text).locate("quantization_config")
        message = f"a quantized checkpoint ({method}); moec loads unquantized safetensors only (dequantize it first)"
        raise CheckpointError([Problem(file, line, col, "quantization_config", message)])
    if raw["model_type"] not in mapped:
        raise fail(folder, f"no weight mapping for model_type {raw['model_type']!r}", "model_type")
    return raw["model_type"]


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder: ``model.safetensors``, else the shards that
    ``model.safetensors.index.json`` names (transformers' order of preference)."""
    if (folder / SINGLE).is_file():
        return [folder / SINGLE]
    index = folder / INDEX
    if index.is_file():
        text = read_text_file(str(index), max_bytes=MAX_INDEX_BYTES, kind="safetensors index")
        weight_map = parse_object(text, str(index), "a safetensors index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise fail(index, "weight_map must map tensor names to shard file names")
        names = sorted(set(weight_map.values()), key=str)
        for name in names:
            # a shard is a plain file in this folder: no paths (nothing outside the folder is read)
            if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
                raise fail(index, f"{name!r} is not a file name in the checkpoint folder", "weight_map")
            if not name.endswith(".safetensors"):
                raise fail(index, f"{name!r} is not a safetensors file; only safetensors are loaded", "weight_map")
            if not (folder / name).is_file():
                raise fail(index, f"names the shard {name!r}, which is not in {folder}", "weight_map")
        return [folder / n for n in names]
    pickles = sorted(
        p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES or p.name.endswith(".bin.index.json")
    )
    if pickles:
        raise fail(
            folder,
            f"holds only pickle checkpoints ({', '.join(pickles)}), which moec refuses to open: unpickling can run "
            "arbitrary code. Convert them to safetensors with a tool you trust (e.g. transformers' "
            "save_pretrained), then load model.safetensors",
        )
    raise fail(folder, f"holds no {SINGLE} and no {INDEX}")


class Checkpoint:
    """The tensors of a safetensors checkpoint, read on demand; remembers which ones were used."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.folder = folder
        self.file_of: dict[str, Path] = {}
        self._files: dict[Path, Any] = {}
        for path in checkpoint_files(folder):
            try:
                f = safe_open(str(path), framework="pt")
            except Exception as e:  # safetensors raises its own error types for malformed headers
                raise fail(path, f"not a readable safetensors file: {e}") from None
            self._files[path] = f
            for name in f.keys():
                if name in self.file_of:
                    raise fail(path, f"also in {self.file_of[name].name}: a tensor must be stored once", name)
                self.file_of[name] = path
        self.used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self.file_of

    def get(self, name: str) -> torch.Tensor:
        if name not in self.file_of:
            raise Missing([name])
        self.used.add(name)
        f = self._files[self.file_of[name]]
        stored = f.get_slice(name).get_dtype()  # from the header: nothing is read yet
        if not stored.startswith(FLOATING):
            raise NotFloat(name, stored, self.file_of[name])
        return f.get_tensor(name)

    def get_all(self, names: list[str]) -> list[torch.Tensor]:
        """Several tensors, reporting every absent one at once (a stack of per-expert weights)."""
        absent = [n for n in names if n not in self.file_of]
        if absent:
            self.used.update(n for n in names if n in self.file_of)  # not unexpected: only incomplete
            raise Missing(absent)
        return [self.get(n) for n in names]

    def dtype_of(self, name: str) -> torch.dtype | None:
        f = self._files[self.file_of[name]]
        return _DTYPES.get(f.get_slice(name).get_dtype())

    def numel_of(self, name: str) -> int:
        n = 1
        for s in self._files[self.file_of[name]].get_slice(name).get_shape():
            n *= s
        return n

    def main_dtype(self) -> torch.dtype:
        """The floating dtype holding most of the checkpoint's elements (fp32 if it has none)."""
        by_dtype: dict[torch.dtype, int] = {}
        for name in self.file_of:
            dt = self.dtype_of(name)
            if dt is not None and dt.is_floating_point:
                by_dtype[dt] = by_dtype.get(dt, 0) + self.numel_of(name)
        return max(by_dtype, key=by_dtype.__getitem__) if by_dtype else torch.float32


class MemoryCheckpoint(Checkpoint):
    """Tensors held in memory under checkpoint names, read as a folder's would be (what ``export_weights.py``
    traces the import with, and reads its own output back with). ``tensors`` may make each tensor when read."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], folder: Path):
        self.folder = folder
        self.file_of = dict.fromkeys(tensors, folder)
        self._tensors = tensors
        self._files = {}
        self.used = set()

    def get(self, name: str) -> torch.Tensor:
        if name not in self.file_of:
            raise Missing([name])
        self.used.add(name)
        t = self._tensors[name]
        if not t.dtype.is_floating_point:
            raise NotFloat(name, str(t.dtype), self.folder)
        return t

    def dtype_of(self, name: str) -> torch.dtype | None:
        return self._tensors[name].dtype

    def numel_of(self, name: str) -> int:
        return self._tensors[name].numel()
