"""Load a Hugging Face safetensors checkpoint into a moec model: :func:`from_hf` (``moec.from_hf``).

    config.json ──hf_to_model──▶ plan ──build on meta──▶ MoecModel
    safetensors ──read, renamed, re-laid-out, cast, put on the device──▶ its parameters

**safetensors only.** ``pytorch_model.bin``, ``*.pt`` and the like are pickles, and unpickling can run
arbitrary code; they are refused without being opened.

**Names and layouts** — what transformers 5.23's save_pretrained writes, what older releases hold, and
transformers' in-memory layout (``L.`` is ``model.layers.{i}.``; moec's names are in :mod:`moec.nn.model`):

- ``model.embed_tokens``, ``model.norm``, ``lm_head`` → ``embed``, ``norm``, ``lm_head``;
  ``L.input_layernorm`` / ``L.post_attention_layernorm`` → ``layers.{i}.attn_norm`` / ``ffn_norm``.
- ``L.self_attn.*`` → ``layers.{i}.attn.*``: the same names and [out, in] layout, GQA and MLA alike; no
  permutation (moec's rotary conventions, DeepSeek's interleaved one included, are transformers'), except
  Llama-4's (below).
- a dense MLP ``L.mlp.{gate,up,down}_proj`` (nn.Linear, [out, in]) → ``ffn.w_gate_up`` (d, 2f) =
  [gate.T | up.T], ``ffn.w_down`` (f, d) = down.T; shared experts (``mlp.shared_expert[s]``) alike.
- the router ``L.mlp.gate`` (Mixtral, Qwen, DeepSeek, OLMoE), ``mlp.router`` (gpt-oss, with a bias),
  ``block_sparse_moe.router[.layer]`` (Granite) → ``ffn.router.weight`` (E, d), no transpose;
  ``gate.e_score_correction_bias`` → the ``ffn.router.expert_bias`` buffer.
- routed experts → ``ffn.experts.w_gate_up`` (E, d, 2f) [gate | up] and ``w_down`` (E, f, d), from
  * per-expert Linear (what save_pretrained writes): ``mlp.experts.{e}.{gate,up,down}_proj.weight``, or
    Mixtral's ``block_sparse_moe.experts.{e}.{w1,w3,w2}.weight``: stacked and transposed;
  * stacked (transformers' in-memory layout): ``mlp.experts.gate_up_proj`` (E, 2f, d) and ``down_proj``
    (E, d, f): transposed; Granite's released ``input_linear`` / ``output_linear`` alike;
  * gpt-oss: ``gate_up_proj`` (E, d, 2f) with gate and up in *alternate* columns (0::2, 1::2), re-split
    into halves; ``down_proj`` (E, f, d) as is; their ``_bias`` vectors alike;
  * DBRX: ``w1``, ``v1`` (E·f, d), [out, in] per expert, are gate and up; ``w2`` (E·f, d) is [in, out].
- Llama-4: ``feed_forward.`` for both MLP and MoE, ``router``, ``shared_expert``; stacked experts
  ``gate_up_proj`` (E, d, 2f) and ``down_proj`` (E, f, d) are moec's layout already; its rotary pairs
  adjacent dims, so q_proj and k_proj rows are permuted per head into moec's half layout.
- DBRX's attention: ``Wqkv`` split by rows into q, k, v; ``out_proj`` → ``o_proj``.
- DeepSeek-V3's MTP depth j is decoder layer n_layers + j: ``enorm``, ``hnorm``, ``eh_proj``, the block
  and ``shared_head.norm`` → ``mtp.{j}.*``; its ``embed_tokens`` and ``shared_head.head`` must equal the
  model's (moec shares them).

Every parameter and persistent buffer of the moec model must be found, and every tensor of the
checkpoint must be used (only rotary ``inv_freq`` caches, a tied model's duplicate ``lm_head.weight`` and
unwanted MTP layers are let go); otherwise :class:`CheckpointError` lists them all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moec.errors import Problem, SpecError
from moec.hf.config import hf_to_model, read_hf_config
from moec.nn.build import EXPLICIT_FRACTION, DoesNotFitError, available_bytes, build_model, weight_bytes
from moec.nn.model import MoecModel
from moec.spec.plan import DenseFFNPlan, LayerPlan, MoEPlan, ResolvedModel

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

# Tensors a checkpoint may hold that no moec parameter takes: rotary caches (old Llama-style saves)
IGNORABLE = re.compile(r"(^|\.)rotary_emb\.(inv_freq|original_inv_freq)$")

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


def _fail(where: Path | str, message: str, path: str = "") -> CheckpointError:
    return CheckpointError([Problem(str(where), None, None, path, message)])


class _Missing(Exception):
    def __init__(self, names: list[str]):
        self.names = names


# ---------------------------------------------------------------------------------------------
# the checkpoint files


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder: ``model.safetensors``, else the shards that
    ``model.safetensors.index.json`` names (transformers' order of preference)."""
    if (folder / SINGLE).is_file():
        return [folder / SINGLE]
    index = folder / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise _fail(index, f"not a safetensors index (a JSON object with a weight_map): {e}") from None
        if not isinstance(weight_map, dict):
            raise _fail(index, "weight_map must map tensor names to shard file names")
        names = sorted(set(weight_map.values()), key=str)
        for name in names:
            # a shard is a plain file in this folder: no paths (nothing outside the folder is read)
            if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
                raise _fail(index, f"{name!r} is not a file name in the checkpoint folder", "weight_map")
            if not name.endswith(".safetensors"):
                raise _fail(index, f"{name!r} is not a safetensors file; only safetensors are loaded", "weight_map")
            if not (folder / name).is_file():
                raise _fail(index, f"names the shard {name!r}, which is not in {folder}", "weight_map")
        return [folder / n for n in names]
    pickles = sorted(
        p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES or p.name.endswith(".bin.index.json")
    )
    if pickles:
        raise _fail(
            folder,
            f"holds only pickle checkpoints ({', '.join(pickles)}), which moec refuses to open: unpickling can run "
            "arbitrary code. Convert them to safetensors with a tool you trust (e.g. transformers' "
            "save_pretrained), then load model.safetensors",
        )
    raise _fail(folder, f"holds no {SINGLE} and no {INDEX}")


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
                raise _fail(path, f"not a readable safetensors file: {e}") from None
            self._files[path] = f
            for name in f.keys():
                if name in self.file_of:
                    raise _fail(path, f"also in {self.file_of[name].name}: a tensor must be stored once", name)
                self.file_of[name] = path
        self.used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self.file_of

    def get(self, name: str) -> torch.Tensor:
        if name not in self.file_of:
            raise _Missing([name])
        self.used.add(name)
        return self._files[self.file_of[name]].get_tensor(name)

    def get_all(self, names: list[str]) -> list[torch.Tensor]:
        """Several tensors, reporting every absent one at once (a stack of per-expert weights)."""
        absent = [n for n in names if n not in self.file_of]
        if absent:
            self.used.update(n for n in names if n in self.file_of)  # not unexpected: only incomplete
            raise _Missing(absent)
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


# ---------------------------------------------------------------------------------------------
# names: moec parameter → checkpoint tensor(s), per family


def _gate_up(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Two nn.Linear weights (f, d) → moec's (d, 2f) [gate | up]."""
    return torch.cat((gate.T, up.T), dim=1)


def _deinterleave(x: torch.Tensor) -> torch.Tensor:
    """gpt-oss: (..., 2f) with gate in even and up in odd columns → (..., 2f) as [gate | up]."""
    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)


class Mapper:
    """The transformers naming most families share (Llama, Mixtral, Qwen, DeepSeek, OLMoE, gpt-oss, Granite).
    Family differences are the class attributes; DBRX, which names everything its own way, subclasses."""

    layer_fmt = "model.layers.{i}."
    embed = "model.embed_tokens.weight"
    final_norm = "model.norm."
    attn = "self_attn."
    attn_norm = "input_layernorm."
    ffn_norm = "post_attention_layernorm."
    moe_blocks = ("mlp.",)  # the MoE block's prefix (Mixtral: also block_sparse_moe.); the one present wins
    routers = ("gate.",)  # the router's prefix inside the block; the one present wins
    shared = "shared_experts."  # Qwen2-MoE: shared_expert.
    interleaved = False  # gpt-oss: stacked experts are (E, d, 2f) with gate and up in alternate columns

    def __init__(self, ck: Checkpoint, plan: ResolvedModel):
        self.ck, self.plan = ck, plan

    def layer(self, i: int) -> str:
        return self.layer_fmt.format(i=i)

    # -- the whole model --------------------------------------------------------------------------

    def load(self, name: str) -> torch.Tensor:
        """The tensor for one moec parameter or buffer, in its moec layout (on the CPU, checkpoint dtype)."""
        ck = self.ck
        if name == "embed.weight":
            return ck.get(self.embed)
        if name.startswith("lm_head."):
            return ck.get(name)
        if name.startswith("norm."):
            return ck.get(self.final_norm + name.removeprefix("norm."))
        m = re.fullmatch(r"layers\.(\d+)\.(\w+)\.(.+)", name)
        if m:
            i = int(m.group(1))
            return self.block(self.plan.layers[i], i, m.group(2), m.group(3))
        m = re.fullmatch(r"mtp\.(\d+)\.(.+)", name)
        if m:  # DeepSeek-V3 stores MTP depth j as one more decoder layer, n_layers + j
            j, rest = int(m.group(1)), m.group(2)
            hf = self.plan.n_layers + j
            if rest.startswith("block."):
                part, _, leaf = rest.removeprefix("block.").partition(".")
                return self.block(self.plan.mtp[j], hf, part, leaf)
            if rest.startswith("norm."):
                return ck.get(self.layer(hf) + "shared_head." + rest)
            return ck.get(self.layer(hf) + rest)  # enorm, hnorm, eh_proj
        raise _Missing([f"<no checkpoint name known for moec's {name}>"])

    def block(self, lp: LayerPlan, i: int, part: str, leaf: str) -> torch.Tensor:
        """One decoder layer's ``part`` (attn_norm, attn, ffn_norm, ffn) parameter ``leaf``."""
        p = self.layer(i)
        if part == "attn_norm":
            return self.ck.get(p + self.attn_norm + leaf)
        if part == "ffn_norm":
            return self.ck.get(p + self.ffn_norm + leaf)
        if part == "attn":
            return self.attention(p, lp, leaf)
        if part == "ffn":
            if isinstance(lp.ffn, DenseFFNPlan):
                return self.dense(p + "mlp.", leaf)
            return self.moe(p, lp.ffn, leaf)
        raise _Missing([f"<no checkpoint name known for moec's layer part {part}.{leaf}>"])

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        return self.ck.get(p + self.attn + leaf)  # moec keeps transformers' names, GQA and MLA alike

    def dense(self, p: str, leaf: str) -> torch.Tensor:
        """A gated FFN stored as three nn.Linear: gate_proj, up_proj (f, d), down_proj (d, f)."""
        ck = self.ck
        if leaf == "w_gate_up":
            return _gate_up(ck.get(p + "gate_proj.weight"), ck.get(p + "up_proj.weight"))  # (d, 2f)
        if leaf == "w_down":
            return ck.get(p + "down_proj.weight").T  # (f, d)
        if leaf == "b_gate_up":
            return torch.cat((ck.get(p + "gate_proj.bias"), ck.get(p + "up_proj.bias")))  # (2f,)
        if leaf == "b_down":
            return ck.get(p + "down_proj.bias")
        raise _Missing([f"<no checkpoint name known for moec's FFN {leaf}>"])

    # -- the MoE block ----------------------------------------------------------------------------

    def _first(self, names: list[str]) -> str:
        """The first name the checkpoint holds (else the first, to be reported missing)."""
        return next((n for n in names if n in self.ck), names[0])

    def moe(self, p: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        ck = self.ck
        b = self._first([f"{p}{blk}{r}weight" for blk in self.moe_blocks for r in self.routers])
        blk = p + next(x for x in self.moe_blocks if b.startswith(p + x))
        part, _, rest = leaf.partition(".")
        if part == "router":
            if rest == "expert_bias":  # DeepSeek-V3's selection bias, a buffer in both
                return ck.get(blk + "gate.e_score_correction_bias")
            return ck.get(self._first([blk + r + rest for r in self.routers]))
        if part == "experts":
            return self.experts(blk, plan, rest)
        if part == "shared":
            return self.dense(blk + self.shared, rest)
        if part == "shared_gate":  # Qwen2-MoE: sigmoid(Linear(d, 1)) on the shared expert's output
            return ck.get(blk + "shared_expert_gate." + rest)
        raise _Missing([f"<no checkpoint name known for moec's MoE {leaf}>"])

    def experts(self, blk: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        """Stacked routed experts in moec's layout: w_gate_up (E, d, 2f), w_down (E, f, d), b_* (E, ·)."""
        ck, E = self.ck, plan.n_experts
        e = f"{blk}experts."
        for gate, up, down in (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2")):
            if any(f"{e}{x}.{gate}.weight" in ck for x in range(E)):  # per-expert nn.Linear [out, in]
                kind = "weight" if leaf.startswith("w_") else "bias"
                if leaf in ("w_gate_up", "b_gate_up"):
                    g = ck.get_all([f"{e}{x}.{gate}.{kind}" for x in range(E)])
                    u = ck.get_all([f"{e}{x}.{up}.{kind}" for x in range(E)])
                    if kind == "bias":
                        return torch.cat((torch.stack(g), torch.stack(u)), dim=1)  # (E, 2f)
                    return torch.stack([_gate_up(a, c) for a, c in zip(g, u, strict=True)])  # (E, d, 2f)
                d = ck.get_all([f"{e}{x}.{down}.{kind}" for x in range(E)])
                return torch.stack([t.T if kind == "weight" else t for t in d])  # (E, f, d) / (E, d)
        if f"{blk}input_linear.weight" in ck:  # Granite as released: (E, 2f, d) [gate | up], (E, d, f)
            name = {"w_gate_up": "input_linear.weight", "w_down": "output_linear.weight"}.get(leaf)
            if name is None:
                raise _Missing([f"{blk}{leaf}"])
            return ck.get(blk + name).transpose(1, 2)
        # stacked, as transformers holds them in memory
        if self.interleaved:  # gpt-oss: (E, d, 2f) alternate gate/up columns; (E, f, d); biases alike
            src = {"w_gate_up": "gate_up_proj", "w_down": "down_proj", "b_gate_up": "gate_up_proj_bias",
                   "b_down": "down_proj_bias"}[leaf]  # fmt: skip
            t = ck.get(e + src)
            return _deinterleave(t) if leaf.endswith("gate_up") else t
        if leaf == "w_gate_up":
            return ck.get(e + "gate_up_proj").transpose(1, 2)  # (E, 2f, d) → (E, d, 2f)
        if leaf == "w_down":
            return ck.get(e + "down_proj").transpose(1, 2)  # (E, d, f) → (E, f, d)
        raise _Missing([f"{e}{leaf}"])


class MixtralMapper(Mapper):
    moe_blocks = ("block_sparse_moe.", "mlp.")  # released checkpoints: block_sparse_moe.experts.{e}.w1/w2/w3


class Qwen2MoeMapper(Mapper):
    shared = "shared_expert."


class GraniteMoeMapper(Mapper):
    moe_blocks = ("block_sparse_moe.",)
    routers = ("router.layer.", "router.")  # released: router.layer.weight; transformers 5: router.weight


class GptOssMapper(Mapper):
    routers = ("router.",)
    interleaved = True


def _half_layout(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q or k projection (h·hd, ...) with rotary pairs (2i, 2i+1) per head → pairs (i, i + hd/2):
    [0, 2, 4, ..., 1, 3, 5, ...] within each head. q and k get the same permutation, so q·k is unchanged;
    moec's half-layout rotary on the permuted rows is Llama-4's interleaved rotary on the original ones."""
    hd = w.shape[0] // n_heads
    order = torch.cat((torch.arange(0, hd, 2), torch.arange(1, hd, 2)))  # (hd,)
    return w.view(n_heads, hd, *w.shape[1:])[:, order].reshape(w.shape)


class Llama4Mapper(Mapper):
    """Llama-4: ``feed_forward.`` blocks (dense MLP or MoE), ``router``, ``shared_expert``, stacked experts
    already in moec's layout, and interleaved rotary pairs re-laid out by permuting q and k rows."""

    moe_blocks = ("feed_forward.",)
    routers = ("router.",)
    shared = "shared_expert."

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        t = super().attention(p, lp, leaf)
        heads = {"q_proj": lp.attention.n_heads, "k_proj": lp.attention.n_kv_heads}.get(leaf.split(".")[0])
        return _half_layout(t, heads) if heads else t

    def block(self, lp: LayerPlan, i: int, part: str, leaf: str) -> torch.Tensor:
        if part == "ffn" and isinstance(lp.ffn, DenseFFNPlan):
            return self.dense(self.layer(i) + "feed_forward.", leaf)
        return super().block(lp, i, part, leaf)

    def experts(self, blk: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        src = {"w_gate_up": "gate_up_proj", "w_down": "down_proj"}.get(leaf)  # (E, d, 2f) [gate | up], (E, f, d)
        if src is None:
            raise _Missing([f"{blk}experts.{leaf}"])
        return self.ck.get(f"{blk}experts.{src}")


class DbrxMapper(Mapper):
    """DBRX's own names: a fused Wqkv, norms inside norm_attn_norm, experts as (E·f, d) matrices."""

    layer_fmt = "transformer.blocks.{i}."
    embed = "transformer.wte.weight"
    final_norm = "transformer.norm_f."
    attn_norm = "norm_attn_norm.norm_1."
    ffn_norm = "norm_attn_norm.norm_2."

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        a = p + "norm_attn_norm.attn."
        if leaf == "o_proj.weight":
            return self.ck.get(a + "out_proj.weight")
        q, kv = lp.attention.n_heads * lp.attention.head_dim, lp.attention.n_kv_heads * lp.attention.head_dim
        rows = {"q_proj.weight": (0, q), "k_proj.weight": (q, q + kv), "v_proj.weight": (q + kv, q + 2 * kv)}
        if leaf not in rows:
            raise _Missing([f"{a}{leaf}"])
        start, stop = rows[leaf]
        return self.ck.get(a + "Wqkv.weight")[start:stop]  # (q + 2·kv, d) rows [q | k | v]

    def moe(self, p: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        f = p + "ffn."
        if leaf == "router.weight":
            return self.ck.get(f + "router.layer.weight")
        E, ff = plan.n_experts, plan.d_ff
        mlp = f + "experts.mlp."

        def per_expert(name: str) -> torch.Tensor:
            return self.ck.get(mlp + name).view(E, ff, -1)  # (E·f, d) → (E, f, d)

        if leaf == "experts.w_gate_up":  # w1 = gate, v1 = up, each [out, in] per expert
            return torch.cat((per_expert("w1").transpose(1, 2), per_expert("v1").transpose(1, 2)), dim=2)
        if leaf == "experts.w_down":  # DbrxExpertGLU: intermediate @ w2, so w2 is already [in, out]
            return per_expert("w2")
        raise _Missing([f"{f}{leaf}"])


MAPPERS: dict[str, type[Mapper]] = {
    "mixtral": MixtralMapper,
    "phimoe": MixtralMapper,  # block_sparse_moe.gate and experts.{e}.w1/w2/w3, as Mixtral
    "qwen2_moe": Qwen2MoeMapper,
    "granitemoe": GraniteMoeMapper,
    "gpt_oss": GptOssMapper,
    "dbrx": DbrxMapper,
    "llama4_text": Llama4Mapper,
    # the rest share transformers' common names
    **{mt: Mapper for mt in ("qwen3_moe", "deepseek_v2", "deepseek_v3", "olmoe", "llama", "mistral", "qwen2", "qwen3")},
}


# ---------------------------------------------------------------------------------------------
# reading a whole checkpoint


def _targets(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer by its first name (a tied weight once)."""
    seen: set[int] = set()
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = t
    return out


def read_weights(
    ck: Checkpoint,
    model_type: str,
    model: MoecModel,
    *,
    device: torch.device,
    skip_mtp: bool = False,
) -> dict[str, torch.Tensor]:
    """Every tensor ``model`` holds (by name, in its dtype, on ``device``), read from the checkpoint.
    Raises :class:`CheckpointError` listing every missing, mismatched and unused tensor. ``skip_mtp``: the
    config's MTP layers were left out of the model, so their tensors (layers ≥ n_layers) go unused."""
    plan = model.plan
    mapper = MAPPERS[model_type](ck, plan)
    out: dict[str, torch.Tensor] = {}
    missing: dict[str, str] = {}  # checkpoint name → the moec tensor that needs it
    mismatched: dict[str, str] = {}
    for name, want in _targets(model).items():
        try:
            t = mapper.load(name)
        except _Missing as e:
            missing.update({n: name for n in e.names})
            continue
        except (IndexError, RuntimeError) as e:  # a tensor of the wrong rank or size for its re-layout
            mismatched[name] = f"the checkpoint's tensors cannot be laid out as the config's model needs ({e})"
            continue
        if tuple(t.shape) != tuple(want.shape):
            mismatched[name] = f"the checkpoint gives shape {tuple(t.shape)}, the config's model {tuple(want.shape)}"
            continue
        out[name] = t.to(device=device, dtype=want.dtype).contiguous()

    problems = [Problem(str(ck.folder), None, None, n, f"missing (moec's {m} needs it)") for n, m in missing.items()]
    problems += [Problem(str(ck.folder), None, None, n, msg) for n, msg in mismatched.items()]
    problems += _shared_copies(ck, mapper, out)
    unexpected = []
    for n in sorted(set(ck.file_of) - ck.used):
        if IGNORABLE.search(n) or (n == "lm_head.weight" and plan.tie_embeddings):
            continue  # a rotary cache; a tied head saved twice (transformers uses the embedding too)
        if skip_mtp and (_layer_index(mapper, n) or 0) >= plan.n_layers:
            continue  # MTP layers the caller left out
        unexpected.append(n)
    problems += [
        Problem(
            str(ck.folder), None, None, n, f"unexpected: no tensor of the moec model takes it ({ck.file_of[n].name})"
        )
        for n in unexpected
    ]
    if problems:
        raise CheckpointError(problems, missing=missing, unexpected=unexpected, mismatched=mismatched)
    return out


def _layer_index(mapper: Mapper, name: str) -> int | None:
    prefix = mapper.layer_fmt.split("{i}")[0]
    m = re.match(re.escape(prefix) + r"(\d+)\.", name)
    return int(m.group(1)) if m else None


def _shared_copies(ck: Checkpoint, mapper: Mapper, out: dict[str, torch.Tensor]) -> list[Problem]:
    """DeepSeek-V3 stores each MTP layer's embedding and head as copies of the model's; moec shares them,
    so they are read, checked equal, and let go."""
    problems = []
    head = "lm_head.weight" if "lm_head.weight" in out else "embed.weight"  # tied: the embedding is the head
    for j in range(len(mapper.plan.mtp)):
        p = mapper.layer(mapper.plan.n_layers + j)
        for copy, own in ((p + "embed_tokens.weight", "embed.weight"), (p + "shared_head.head.weight", head)):
            if copy not in ck or own not in out:
                continue
            t = ck.get(copy)
            if t.shape != out[own].shape or not torch.equal(t.to(out[own]), out[own]):
                msg = f"differs from the model's {own}, which moec's MTP module shares"
                problems.append(Problem(str(ck.folder), None, None, copy, msg))
    return problems


# ---------------------------------------------------------------------------------------------
# public entry points


def _folder(path: str | PathLike[str]) -> Path:
    folder = Path(path)
    if folder.is_file():  # a config.json or a weights file: its folder holds the checkpoint
        folder = folder.parent
    if not folder.is_dir():
        raise _fail(folder, "no such checkpoint folder")
    return folder


def _model_type(folder: Path) -> str:
    raw, file, _ = read_hf_config(folder)
    q = raw.get("quantization_config")
    if q:
        method = q.get("quant_method", "?") if isinstance(q, dict) else "?"
        raise _fail(
            file,
            f"a quantized checkpoint ({method}); moec loads unquantized safetensors only (dequantize it first)",
            "quantization_config",
        )
    return raw["model_type"]


def from_hf(
    path: str | PathLike[str],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    backend: str = "auto",
    mtp: bool | None = None,
) -> MoecModel:
    """A Hugging Face checkpoint folder (config.json + safetensors) → a moec model holding its weights.

    dtype: default the checkpoint's (the floating dtype of most of its elements). backend: the MoE kernel
    backend (moec.kernels). mtp: DeepSeek-V3 multi-token prediction — None loads the MTP layers when the
    checkpoint holds them and leaves them out when it does not (transformers saves none); True requires
    them; False leaves them out. The model is returned in eval mode, as transformers' from_pretrained does.
    """
    folder = _folder(path)
    plan = hf_to_model(folder)
    model_type = _model_type(folder)
    if model_type not in MAPPERS:
        raise _fail(folder, f"no weight mapping for model_type {model_type!r}", "model_type")
    ck = Checkpoint(folder)
    skip_mtp = False
    if plan.mtp:
        first = MAPPERS[model_type].layer_fmt.format(i=plan.n_layers)
        held = any(n.startswith(first) for n in ck.file_of)
        if mtp is False or (mtp is None and not held):
            plan, skip_mtp = plan.replace(mtp=()), True
    elif mtp:
        raise _fail(folder, "mtp=True, but the config has no MTP layers (num_nextn_predict_layers)", "mtp")
    dtype = dtype or ck.main_dtype()
    device = torch.device(device)
    if device.type != "meta":
        need, free = weight_bytes(plan, dtype), available_bytes(device)
        if free is not None and need > EXPLICIT_FRACTION * free:
            raise DoesNotFitError(
                f"{plan.name}: its weights need {need / 2**30:,.1f} GiB in {str(dtype).removeprefix('torch.')}, "
                f"but {device} has {free / 2**30:,.1f} GiB free"
            )
    model = build_model(plan, device="meta", dtype=dtype, backend=backend)
    if device.type == "meta":
        return model.eval()
    tensors = read_weights(ck, model_type, model, device=device, skip_mtp=skip_mtp)
    _install(model, tensors, device)
    return model.eval()


def load_hf_state_dict(model: MoecModel, path: str | PathLike[str]) -> None:
    """Load a Hugging Face checkpoint folder into an existing moec model of the same architecture: copied
    into its tensors (same device and dtypes), or, for a model on ``meta``, materialised on the CPU."""
    folder = _folder(path)
    model_type = _model_type(folder)
    if model_type not in MAPPERS:
        raise _fail(folder, f"no weight mapping for model_type {model_type!r}", "model_type")
    targets = _targets(model)
    device = next(iter(targets.values())).device
    on_meta = device.type == "meta"
    skip_mtp = bool(hf_to_model(folder).mtp) and not model.plan.mtp
    ck = Checkpoint(folder)
    tensors = read_weights(ck, model_type, model, device=torch.device("cpu") if on_meta else device, skip_mtp=skip_mtp)
    if on_meta:
        _install(model, tensors, torch.device("cpu"))
        return
    with torch.no_grad():
        for name, t in targets.items():
            t.copy_(tensors[name])


def _install(model: nn.Module, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    """Swap every meta tensor of ``model`` for its loaded one; a tied weight stays one Parameter."""
    names = {id(t): n for n, t in reversed(list(model.state_dict(keep_vars=True).items()))}  # first name wins
    new: dict[int, torch.Tensor] = {}
    for mod in model.modules():
        for leaf, p in list(mod._parameters.items()):
            if p is not None:
                if id(p) not in new:
                    new[id(p)] = nn.Parameter(tensors[names[id(p)]], requires_grad=p.requires_grad)
                mod._parameters[leaf] = new[id(p)]
        for leaf, b in list(mod._buffers.items()):
            if b is not None:
                if id(b) not in new:
                    # a non-persistent buffer is no checkpoint's business: moec's are running counts
                    # (the router's expert_load), which start at zero
                    new[id(b)] = tensors[names[id(b)]] if id(b) in names else torch.zeros_like(b, device=device)
                mod._buffers[leaf] = new[id(b)]
