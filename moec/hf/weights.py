"""Load a Hugging Face safetensors checkpoint into a moec model: :func:`from_hf` (``moec.from_hf``).

    config.json ──hf_to_model──▶ plan ──build on meta──▶ MoecModel
    safetensors ──read, renamed, re-laid-out, cast, put on the device──▶ its parameters

The files are read by ``checkpoint.py``: safetensors only (pickles are refused unopened), and only tensors of
a floating-point dtype.

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
from moec.hf.checkpoint import (
    Checkpoint,
    CheckpointError,
    Missing,
    NotFloat,
    checkpoint_folder,
    fail,
    unquantized_model_type,
)
from moec.hf.config import hf_to_model
from moec.nn.build import build_model, require_memory, weights_memory
from moec.nn.model import MoecModel
from moec.spec.plan import DenseFFNPlan, LayerPlan, MoEPlan, ResolvedModel

# Tensors a checkpoint may hold that no moec parameter takes: rotary caches (old Llama-style saves)
IGNORABLE = re.compile(r"(^|\.)rotary_emb\.(inv_freq|original_inv_freq)$")

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
        raise Missing([f"<no checkpoint name known for moec's {name}>"])

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
        raise Missing([f"<no checkpoint name known for moec's layer part {part}.{leaf}>"])

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
        raise Missing([f"<no checkpoint name known for moec's FFN {leaf}>"])

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
        raise Missing([f"<no checkpoint name known for moec's MoE {leaf}>"])

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
                raise Missing([f"{blk}{leaf}"])
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
        raise Missing([f"{e}{leaf}"])


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
            raise Missing([f"{blk}experts.{leaf}"])
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
            raise Missing([f"{a}{leaf}"])
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
        raise Missing([f"{f}{leaf}"])


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
    model_type = unquantized_model_type(folder, mapped=MAPPERS)
    ck = Checkpoint(folder)
    skip_mtp = False
    if plan.mtp:
        first = MAPPERS[model_type].layer_fmt.format(i=plan.n_layers)
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
    _install(model, tensors, device)
    return model.eval()


def load_hf_state_dict(model: MoecModel, path: str | PathLike[str]) -> None:
    """Load a Hugging Face checkpoint folder into an existing moec model of the same architecture: copied
    into its tensors (same device and dtypes), or, for a model on ``meta``, materialised on the CPU."""
    folder = checkpoint_folder(path)
    model_type = unquantized_model_type(folder, mapped=MAPPERS)
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
