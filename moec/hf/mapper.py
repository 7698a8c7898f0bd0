"""The weight mapping most Hugging Face families share: which checkpoint tensor (and which re-layout of it)
gives each moec parameter. :class:`Mapper` holds transformers' common names; a family module subclasses it
for what its checkpoints name or lay out differently, and names the subclass in its ``Family.mapper``.

Importing this module never imports torch (``moec analyze config.json`` loads every family module): torch is
imported inside the methods that build tensors, and only the annotations name it. The checkpoint reading and
the whole-model loop are in ``checkpoint.py`` and ``weights.py``.

**Names and layouts** the base Mapper knows: what transformers 5.23's save_pretrained writes, what older
releases hold, and transformers' in-memory layout (``L.`` is ``model.layers.{i}.``; moec's names are in
:mod:`moec.nn.model`).

- ``model.embed_tokens``, ``model.norm``, ``lm_head`` → ``embed``, ``norm``, ``lm_head``;
  ``L.input_layernorm`` / ``L.post_attention_layernorm`` → ``layers.{i}.attn_norm`` / ``ffn_norm``.
- ``L.self_attn.*`` → ``layers.{i}.attn.*``: the same names and [out, in] layout, GQA and MLA alike; no
  permutation (moec's rotary conventions, DeepSeek's interleaved one included, are transformers').
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
    into halves; ``down_proj`` (E, f, d) as is; their ``_bias`` vectors alike.
- DeepSeek-V3's MTP depth j is decoder layer n_layers + j: ``enorm``, ``hnorm``, ``eh_proj``, the block
  and ``shared_head.norm`` → ``mtp.{j}.*``; its ``embed_tokens`` and ``shared_head.head`` must equal the
  model's (moec shares them).

Other names and layouts (DBRX's fused Wqkv, Llama-4's rotary pairs, ...) are described by the Mapper subclass
in their family's module.

Exporting weights (``export_weights.py``) runs this same mapping over a checkpoint of element indices and
inverts it, so a name or layout written here is exported too: there is no second table.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from moec.spec.plan import DenseFFNPlan, LayerPlan, MoEPlan, ResolvedModel

if TYPE_CHECKING:
    import torch

    from moec.hf.checkpoint import Checkpoint


class NotFloat(Exception):
    """A checkpoint tensor stored as integers, booleans or complex numbers where a float weight is needed:
    cast, it would give weights of the integers' size (a quantized or damaged checkpoint), so it is refused."""

    def __init__(self, name: str, stored: str, file: Path):
        self.name, self.stored, self.file = name, stored, file

    def message(self, needed_by: str) -> str:
        return (
            f"stored as {self.stored} in {self.file.name}, not a floating-point dtype, but moec's {needed_by} is a "
            "float weight (casting integers would make weights of their size: a quantized or damaged checkpoint?)"
        )


class Missing(Exception):
    """Checkpoint tensors a moec parameter needs that the checkpoint does not hold."""

    def __init__(self, names: list[str]):
        self.names = names


def gate_up(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Two nn.Linear weights (f, d) → moec's (d, 2f) [gate | up]."""
    import torch

    return torch.cat((gate.T, up.T), dim=1)


def deinterleave(x: torch.Tensor) -> torch.Tensor:
    """gpt-oss: (..., 2f) with gate in even and up in odd columns → (..., 2f) as [gate | up]."""
    import torch

    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)


def half_layout(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q or k projection (h·hd, ...) with rotary pairs (2i, 2i+1) per head → pairs (i, i + hd/2):
    [0, 2, 4, ..., 1, 3, 5, ...] within each head. q and k get the same permutation, so q·k is unchanged;
    moec's half-layout rotary on the permuted rows is an interleaved rotary (Llama-4, ERNIE-4.5) on the original
    ones."""
    import torch

    hd = w.shape[0] // n_heads
    order = torch.cat((torch.arange(0, hd, 2), torch.arange(1, hd, 2)))  # (hd,)
    return w.view(n_heads, hd, *w.shape[1:])[:, order].reshape(w.shape)


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
    # DeepSeek-V3's selection bias inside the block (EXAONE-MoE, MiniMax-M2: beside the router); the one present wins
    expert_biases = ("gate.e_score_correction_bias",)
    shared = "shared_experts."  # Qwen2-MoE: shared_expert.
    interleaved = False  # gpt-oss: stacked experts are (E, d, 2f) with gate and up in alternate columns
    dropped: tuple[str, ...] = ()  # prefixes of the tensors moec lets go (an MTP layer, a vision tower)
    hc_head = "model.hc_head."  # hyper-connections' head (DeepSeek-V4, HY-V4): hc_fn, hc_base, hc_scale

    def __init__(self, ck: Checkpoint, plan: ResolvedModel):
        self.ck, self.plan = ck, plan
        if self.dropped:
            ck.used.update(n for n in ck.file_of if n.startswith(self.dropped))

    def let_go_mtp_layers(self, config_section: str | None = None) -> None:
        """Marks read the tensors of the multi-token-prediction layers a release stores after the last decoder
        layer (layers n_layers … n_layers + m − 1, m the checkpoint config.json's ``num_nextn_predict_layers`` or
        ``num_mtp_layers``, read in ``config_section`` such as a wrapper's ``text_config`` when given), as
        transformers lets them go on load; with no config.json, or no such count, nothing is let go."""
        config = self.ck.folder / "config.json"
        raw = json.loads(config.read_text()) if config.is_file() else {}
        if config_section is not None:
            raw = raw.get(config_section) if isinstance(raw, dict) else None
        raw = raw if isinstance(raw, dict) else {}
        n_mtp = next((raw[k] for k in ("num_nextn_predict_layers", "num_mtp_layers") if k in raw), 0)
        if not isinstance(n_mtp, int) or isinstance(n_mtp, bool) or n_mtp <= 0:
            return
        first = len(self.plan.layers)
        head, tail = self.layer_fmt.split("{i}")
        for name in self.ck.file_of:
            index, dot, _ = name.removeprefix(head).partition(tail)
            layer = int(index) if name.startswith(head) and dot and index.isascii() and index.isdigit() else -1
            if first <= layer < first + n_mtp:
                self.ck.used.add(name)

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
        if name.startswith("hc_head."):  # moec's fn, base, scale
            return ck.get(self.hc_head + "hc_" + name.removeprefix("hc_head."))
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
        """One decoder layer's ``part`` (attn_norm, attn, mixer, ffn_norm, ffn) parameter ``leaf``."""
        p = self.layer(i)
        if part == "attn_norm":
            return self.ck.get(p + self.attn_norm + leaf)
        if part == "ffn_norm":
            return self.ck.get(p + self.ffn_norm + leaf)
        if part in ("attn_hc", "ffn_hc"):  # hyper-connections around each sublayer: the same names (fn, base, scale)
            return self.ck.get(p + part + "." + leaf)
        if part == "attn":
            return self.attention(p, lp, leaf)
        if part == "mixer":
            return self.mixer(p, lp, leaf)
        if part == "ffn":
            if isinstance(lp.ffn, DenseFFNPlan):
                return self.dense(p + "mlp.", leaf)
            return self.moe(p, lp.ffn, leaf)
        raise Missing([f"<no checkpoint name known for moec's layer part {part}.{leaf}>"])

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        return self.ck.get(p + self.attn + leaf)  # moec keeps transformers' names, GQA and MLA alike

    def derived(self) -> dict[str, torch.Tensor]:
        """Checkpoint tensors the family computes from the plan and no moec tensor holds (MiniMax's decay
        buffers), by checkpoint name: what an export writes besides the moec tensors. None by default."""
        return {}

    def mixer(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        """A token mixer other than attention (docs/mixers.md): moec.kernels.mixers keeps transformers' names
        below the mixer, which families keep under ``linear_attn.`` or ``self_attn.`` or ``mamba.``: the first the
        checkpoint holds. A family whose names differ overrides this."""
        return self.ck.get(self._first([p + m + leaf for m in ("linear_attn.", self.attn, "mamba.", "mixer.")]))

    def dense(self, p: str, leaf: str) -> torch.Tensor:
        """A gated FFN stored as three nn.Linear: gate_proj, up_proj (f, d), down_proj (d, f)."""
        import torch

        ck = self.ck
        if leaf == "w_gate_up":
            return gate_up(ck.get(p + "gate_proj.weight"), ck.get(p + "up_proj.weight"))  # (d, 2f)
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
                return ck.get(self._first([blk + x for x in self.expert_biases]))
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
        import torch

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
                    return torch.stack([gate_up(a, c) for a, c in zip(g, u, strict=True)])  # (E, d, 2f)
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
            return deinterleave(t) if leaf.endswith("gate_up") else t
        if leaf == "w_gate_up":
            return ck.get(e + "gate_up_proj").transpose(1, 2)  # (E, 2f, d) → (E, d, 2f)
        if leaf == "w_down":
            return ck.get(e + "down_proj").transpose(1, 2)  # (E, d, f) → (E, f, d)
        raise Missing([f"{e}{leaf}"])


class LanguageModelMapper(Mapper):
    """A multimodal wrapper's text model under ``model.language_model.``; the vision tower's tensors
    (``model.visual.``) are let go (the spec's notes count them)."""

    layer_fmt = "model.language_model.layers.{i}."
    embed = "model.language_model.embed_tokens.weight"
    final_norm = "model.language_model.norm."
    dropped = ("model.visual.",)


class WrappedCausalLMMapper(Mapper):
    """A ForConditionalGeneration wrapper holding the whole causal LM, its head too, under ``language_model.``
    (Aria's and Llama-4's); the tensors under ``dropped`` (the vision tower, the projector) are let go. Listed
    before the family's own Mapper among the bases, so that its names win."""

    layer_fmt = "language_model.model.layers.{i}."
    embed = "language_model.model.embed_tokens.weight"
    final_norm = "language_model.model.norm."

    def load(self, name: str) -> torch.Tensor:
        if name.startswith("lm_head."):
            return self.ck.get("language_model." + name)
        return super().load(name)
