"""Load a Hugging Face safetensors checkpoint into a moec model: :func:`from_hf` (``moec.from_hf``).

    config.json ──hf_to_model──▶ plan ──build on meta──▶ MoecModel
    safetensors ──read, renamed, re-laid-out, cast, put on the device──▶ its parameters

The files are read by ``checkpoint.py``: safetensors only (pickles are refused unopened), and only tensors of
a floating-point dtype.

Which checkpoint tensor gives which moec parameter, and how it is re-laid out, is the family's Mapper
(:class:`moec.hf.mapper.Mapper` for transformers' common names, a subclass in the family's module of
``moec/hf/families/`` for the rest), named by the registry.

Every parameter and persistent buffer of the moec model must be found, of a floating-point dtype, and every
tensor of the checkpoint must be used (only rotary ``inv_freq`` caches, a tied model's duplicate
``lm_head.weight`` and unwanted MTP layers are let go); otherwise :class:`CheckpointError` lists them all.
"""

from __future__ import annotations

import re
from os import PathLike

import torch
from torch import nn

from moec.errors import Problem
from moec.hf.checkpoint import Checkpoint, CheckpointError, checkpoint_folder, fail, unquantized_model_type
from moec.hf.config import hf_to_model, read_hf_config
from moec.hf.families import FAMILIES
from moec.hf.mapper import Mapper, Missing, NotFloat
from moec.nn.build import build_model, require_memory, weights_memory
from moec.nn.model import MoecModel

# Tensors a checkpoint may hold that no moec parameter takes: rotary caches (old Llama-style saves)
IGNORABLE = re.compile(r"(^|\.)rotary_emb\.(inv_freq|original_inv_freq)$")

# ---------------------------------------------------------------------------------------------
# reading a whole checkpoint


def model_targets(model: nn.Module) -> dict[str, torch.Tensor]:
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
    mapper = FAMILIES[model_type].mapper(ck, plan)
    out: dict[str, torch.Tensor] = {}
    missing: dict[str, str] = {}  # checkpoint name → the moec tensor that needs it
    mismatched: dict[str, str] = {}
    for name, want in model_targets(model).items():
        try:
            t = mapper.load(name)
        except Missing as e:
            missing.update({n: name for n in e.names})
            continue
        except NotFloat as e:
            mismatched[e.name] = e.message(needed_by=name)
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
            try:
                t = ck.get(copy)
            except NotFloat as e:
                problems.append(Problem(str(ck.folder), None, None, copy, e.message(needed_by=own)))
                continue
            if t.shape != out[own].shape or not torch.equal(t.to(out[own]), out[own]):
                msg = f"differs from the model's {own}, which moec's MTP module shares"
                problems.append(Problem(str(ck.folder), None, None, copy, msg))
    return problems


# ---------------------------------------------------------------------------------------------
# public entry points


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
    folder = checkpoint_folder(path)
    plan = hf_to_model(folder)
    model_type = unquantized_model_type(folder, mapped=FAMILIES)
    ck = Checkpoint(folder)
    skip_mtp = False
    if plan.mtp:
        first = FAMILIES[model_type].mapper.layer_fmt.format(i=plan.n_layers)
        held = any(n.startswith(first) for n in ck.file_of)
        if mtp is False or (mtp is None and not held):
            plan, skip_mtp = plan.replace(mtp=()), True
    elif mtp:
        raise fail(folder, "mtp=True, but the config has no MTP layers (num_nextn_predict_layers)", "mtp")
    dtype = dtype or ck.main_dtype()
    device = torch.device(device)
    if device.type != "meta":
        require_memory(weights_memory(plan, dtype), device, lead=f"{plan.name}: its weights need")
    model = build_model(plan, device="meta", dtype=dtype, backend=backend)
    if device.type == "meta":
        return model.eval()
    tensors = read_weights(ck, model_type, model, device=device, skip_mtp=skip_mtp)
    install(model, tensors, device)
    model.hf_config = read_hf_config(folder)[0]  # what moec.export_hf writes back while the plan is unchanged
    return model.eval()


def load_hf_state_dict(model: MoecModel, path: str | PathLike[str]) -> None:
    """Load a Hugging Face checkpoint folder into an existing moec model of the same architecture: copied
    into its tensors (same device and dtypes), or, for a model on ``meta``, materialised on the CPU."""
    folder = checkpoint_folder(path)
    model_type = unquantized_model_type(folder, mapped=FAMILIES)
    targets = model_targets(model)
    device = next(iter(targets.values())).device
    on_meta = device.type == "meta"
    skip_mtp = bool(hf_to_model(folder).mtp) and not model.plan.mtp
    ck = Checkpoint(folder)
    tensors = read_weights(ck, model_type, model, device=torch.device("cpu") if on_meta else device, skip_mtp=skip_mtp)
    if on_meta:
        install(model, tensors, torch.device("cpu"))
        return
    with torch.no_grad():
        for name, t in targets.items():
            t.copy_(tensors[name])


def install(model: nn.Module, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
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
