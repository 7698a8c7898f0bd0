"""The machinery every family translator shares: a config.json read field by field (:class:`HFConfig`,
which supplies transformers' class defaults and remembers what was read), the spec being drafted from it
(:class:`Draft`), what the schema cannot say (:class:`Gap`, with the schema addition it would take), and
the fields that never matter (:data:`INERT`), and what a family is (:class:`Family`: its translator, exporter
and weight mapping). The families themselves are the modules of ``moec/hf/families/``.
"""

from __future__ import annotations

import math
import reprlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from moec.hf.mapper import Mapper
from moec.spec.plan import ResolvedModel

# Fields that change neither the architecture nor its forward math at inference (token ids, init,
# caching, output switches, provenance). Present or absent, they never affect the spec.
# fmt: off
INERT = frozenset(
    {
        "_name_or_path", "architectures", "auto_map", "model_type", "transformers_version",
        "torch_dtype", "dtype", "use_cache", "initializer_range", "initializer_factor",
        "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
        "output_router_logits", "output_attentions", "output_hidden_states", "return_dict",
        "use_return_dict", "torchscript", "id2label", "label2id", "problem_type", "tokenizer_class",
        "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "add_cross_attention",
        "tie_encoder_decoder", "prefix", "task_specific_params", "finetuning_task", "pruned_heads",
        "use_bfloat16", "tf_legacy_loss", "_attn_implementation", "_experts_implementation",
        "attn_implementation", "experts_implementation",
        # numerically equivalent sharding of the projections (Llama-2's slow path)
        "pretraining_tp",
        # a storage format for the same weights (fp8 blocks, mxfp4): not the architecture
        "quantization_config",
        # the width of cross-attention to an encoder, which a decoder-only model never builds (add_cross_attention)
        "cross_attention_hidden_size",
        # generation settings older transformers wrote into every (sub-)config (Qwen3-Omni's release carries them);
        # transformers 5 pops them on load (GenerationConfig._get_default_generation_params)
        "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
        "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty",
        "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "encoder_repetition_penalty", "bad_words_ids",
        "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
        "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
        "begin_suppress_tokens", "epsilon_cutoff", "eta_cutoff",
    }
)
# fmt: on


@dataclass(frozen=True)
class Gap:
    """Something a config.json says that the moec schema cannot express (yet)."""

    field: str  # the config.json field(s)
    value: Any
    message: str  # what it means
    proposal: str  # the schema addition that would carry it
    param_delta: int = 0  # transformers' parameter count minus the count of the spec as emitted


# The schema additions gaps point to (the report lists them; keep the wording precise).
PROPOSE = {
    "sparsemixer": "moe.router.kind: 'topk' | 'sparsemixer' (Phi-3.5-MoE's SparseMixer top-2 with "
    "router_jitter_noise as its threshold eps). No count change",
    "moe_jitter": "moe.router.jitter_target: 'router' | 'router_and_experts' (Mixtral and Phi-MoE scale the "
    "hidden state fed to the experts too). Training only; no count change",
    "longrope": "model.positions.scaling.kind 'longrope' with an attention_factor in place of "
    "short_mscale / long_mscale (Llama and Phi-3's LongRoPE). No count change",
    "rope_extra": "model.positions.scaling: the named rope parameter (partial_rotary_factor, or one a "
    "rope_type does not define). No count change",
    "activation": "a new activation value (see the message)",
    "mla_bias": "attention.bias with kind mla (biases on q_a_proj, kv_a_proj_with_mqa and o_proj). Count: "
    "+q_lora_rank + kv_lora_rank + qk_rope_head_dim + d",
}


# The longest list a config.json field may hold: per-layer lists (≤ the schema's layer bound) and LongRoPE
# factor lists (head_dim / 2). Longer ones are refused before anything iterates over them.
MAX_LIST = 4096


def is_int(v: Any) -> bool:
    """A JSON integer (not a bool, which Python counts as one)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite JSON number (JSON has no NaN or infinity; a float literal of 1e999 reads as one)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_SHORT = reprlib.Repr()
_SHORT.maxlist = _SHORT.maxdict = 8
_SHORT.maxstring = _SHORT.maxother = 60


def shown(v: Any, limit: int = 60) -> str:
    """A value as a message quotes it: its repr, cut short without first writing out a list of thousands."""
    s = _SHORT.repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def spelt(v: Any) -> str:
    """A config value as config.json spells it in a note: true/false for booleans, else as :func:`shown`."""
    return str(v).lower() if isinstance(v, bool) else shown(v)


class HFConfig:
    """A config.json mapping plus the transformers class defaults; remembers each field read.

    Every value a translator uses goes through a typed reader (int, float, bool, str, int_list, str_list,
    mapping). A reader records a wrong value once as an issue (same field, same message: once, however often
    it is read) and returns a harmless stand-in, so translation goes on and every problem is reported."""

    def __init__(
        self,
        raw: Mapping[str, Any],
        defaults: Mapping[str, Any],
        prefix: str = "",
        aliases: Mapping[str, str] | None = None,
    ):
        self.raw, self.defaults, self.prefix = dict(raw), defaults, prefix
        self.read: set[str] = set()
        self.issues: list[tuple[str, str]] = []  # (field, message): invalid values
        self.children: list[HFConfig] = []  # nested configs (DBRX attn_config, ffn_config)
        # a family's other names of a field (alias → the name its translator reads): read under that name, and
        # the name the config wrote kept (canonical → alias), so that a problem names and locates the written key
        self.written_as: dict[str, str] = {}
        for alias, canon in (aliases or {}).items():
            if alias not in self.raw:
                continue
            value = self.raw.pop(alias)
            if canon not in self.raw:
                self.raw[canon], self.written_as[canon] = value, alias
            elif self.raw[canon] != value:
                self.bad(alias, f"disagrees with {canon} ({shown(self.raw[canon])}); they name one field")

    def as_written(self, path: str) -> str:
        """A field path of this config (under its prefix) with a canonical name the config wrote as an alias
        spelt as written; any other path unchanged."""
        head, dot, rest = path.removeprefix(self.prefix).partition(".")
        if not path.startswith(self.prefix) or head not in self.written_as:
            return path
        return self.prefix + self.written_as[head] + dot + rest

    def given(self, key: str) -> bool:
        return key in self.raw

    def value(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        if key in self.raw:
            return self.raw[key]
        return self.defaults.get(key, default)

    def src(self, key: str) -> str:
        """How a comment names the field: ``hidden_size`` or ``sliding_window (default)``."""
        name = self.prefix + key
        return name if key in self.raw else f"{name} (transformers default)"

    def bad(self, key: str, message: str) -> None:
        issue = (self.prefix + key, message)
        if issue not in self.issues:
            self.issues.append(issue)

    def failed(self, key: str) -> bool:
        """Whether a reader has refused this field's value."""
        return any(f == self.prefix + key for f, _ in self.issues)

    def int(self, key: str, *, minimum: int = 1, maximum: int | None = None, optional: bool = False) -> Any:
        v = self.value(key)
        if v is None and optional:
            return None
        if not is_int(v) or v < minimum or (maximum is not None and v > maximum):
            bound = f"≥ {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            self.bad(key, f"{shown(v)}: expected an integer {bound}")
            return max(minimum, 1)
        return v

    def float(self, key: str, *, optional: bool = False, default: Any = None) -> Any:
        v = self.value(key, default)
        if v is None and optional:
            return None
        if not is_number(v):
            self.bad(key, f"{shown(v)}: expected a finite number")
            return 1.0
        return float(v)

    def bool(self, key: str, *, default: Any = None) -> bool:
        v = self.value(key, default)
        if not isinstance(v, bool):
            self.bad(key, f"{shown(v)}: expected true or false")
            return False
        return v

    def str(self, key: str, *, default: Any = None, optional: bool = False) -> Any:
        """A string, or None: absent and optional, or refused (then already reported)."""
        v = self.value(key, default)
        if v is None and optional:
            return None
        if not isinstance(v, str):
            self.bad(key, f"{shown(v)}: expected a string")
            return None
        return v

    def _list(self, key: str, ok: Callable[[Any], bool], what: str) -> list[Any] | None:
        v = self.value(key)
        if v is None:
            return None
        if not isinstance(v, list) or len(v) > MAX_LIST or not all(ok(x) for x in v):
            self.bad(key, f"{shown(v)}: expected a list of at most {MAX_LIST} {what}")
            return None
        return v

    def int_list(self, key: str) -> list[int]:
        return self._list(key, is_int, "integers") or []

    def str_list(self, key: str) -> list[str] | None:
        """A list of strings; None when absent or refused (then already reported)."""
        return self._list(key, lambda x: isinstance(x, str), "strings")

    def mapping(self, key: str) -> dict[str, Any]:
        """A JSON object; {} when absent (null) or refused (then already reported)."""
        v = self.value(key)
        if v is None:
            return {}
        if not isinstance(v, dict):
            self.bad(key, f"{shown(v)}: expected a mapping")
            return {}
        return v

    def unread(self) -> list[str]:
        """Given fields nobody read that are neither inert nor at their transformers default."""
        out = []
        for k, v in self.raw.items():
            if k in self.read or k in INERT:
                continue
            if k in self.defaults and self.defaults[k] == v:
                continue
            out.append(k)
        return out


@dataclass
class Draft:
    """A spec under construction: dotted field → (value, note), per-layer lists, and the gaps."""

    model_type: str
    fields: dict[str, tuple[Any, str]] = field(default_factory=dict)
    n_layers: int = 1
    # False when the layer count was refused: per-layer lists are then not checked against the stand-in
    layers_known: bool = True
    ffn: list[str] = field(default_factory=list)
    ffn_note: str = ""
    # each layer's token mixer (moec.vocab.MIXER_KINDS; docs/mixers.md): attention unless a hybrid family says
    mixer: list[str] = field(default_factory=list)
    mixer_note: str = ""
    window: list[int | None] = field(default_factory=list)
    window_note: str = ""
    rope: list[bool] = field(default_factory=list)
    rope_note: str = ""
    # other per-layer attention fields (chunk, qk_norm, temperature_tuning): name → (per-layer values, note);
    # a uniform list goes to the attention section (temperature_tuning: the section's own value decides),
    # a mixed one to layers.default and overrides
    layer_attention: dict[str, tuple[list[Any], str]] = field(default_factory=dict)
    # per-layer MoE fields (layers.*.moe: activation, activation_limit, shared_*): name → (per-layer values, None
    # where the layer keeps the moe section's, note); each other value becomes an override (layer_selections)
    layer_moe: dict[str, tuple[list[Any], str]] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    # config fields that only act in training and that a moec spec has no field for (dropout): the written
    # YAML names them in its header, so that leaving them out is never silent
    training_only: list[str] = field(default_factory=list)

    def put(self, path: str, value: Any, note: str = "") -> None:
        self.fields[path] = (value, note)

    def section(self, prefix: str, **values: tuple[Any, str]) -> None:
        for k, (v, note) in values.items():
            self.put(f"{prefix}.{k}", v, note)

    def gap(self, hf_field: str, value: Any, message: str, proposal: str, param_delta: int = 0) -> None:
        gap = Gap(hf_field, value, message, PROPOSE.get(proposal, proposal), param_delta)
        if gap not in self.gaps:  # one field read by two translator steps (hidden_act) is one problem
            self.gaps.append(gap)

    def fits_layers(self, c: HFConfig, key: str, values: list[Any] | None) -> bool:
        """Whether the per-layer list ``values`` of ``c``'s field ``key`` can be judged: read (not None, which
        was reported), the layer count known, and one entry per layer (a count that differs is reported)."""
        if values is None or not self.layers_known:
            return False
        if len(values) != self.n_layers:
            c.bad(key, f"{len(values)} entries for {self.n_layers} layers")
            return False
        return True

    def get(self, path: str) -> Any:
        return self.fields[path][0]


class CannotExport(Exception):
    """This family cannot express the plan (the message says why)."""


@dataclass(frozen=True)
class Family:
    """Everything moec knows about one Hugging Face ``model_type``, defined by its module in
    ``moec/hf/families/``."""

    model_type: str
    architecture: str  # the *ForCausalLM class transformers builds
    defaults: Mapping[str, Any]  # transformers 5.23 class defaults of the fields the translator reads
    translate: Callable[[HFConfig, Draft], None]
    aliases: Mapping[str, str] = field(default_factory=dict)  # attribute_map: alias → canonical
    # a plan → this family's config.json, raising CannotExport for what the family cannot say; None: import only
    export: Callable[[ResolvedModel], dict[str, Any]] | None = None
    # export tries the families in ascending rank (ties by model_type) and keeps the first that expresses the
    # plan exactly, so the commoner, plainer family of two that both fit goes first
    export_rank: int = 1000
    # a dense family is tried only for specs without MoE layers, an MoE family only for specs with some
    dense: bool = False
    mapper: type[Mapper] = Mapper  # checkpoint tensor names and layouts (moec.hf.mapper)


def layer_pattern(values: list[Any]) -> tuple[Any, list[tuple[dict[str, Any], Any]]]:
    """A per-layer list as (default, [(select, value), ...]): the commonest value is the default and
    each other value gets the most readable selector (a range, every N from a start, or a list)."""
    counts = Counter(values)
    default = max(counts, key=lambda v: (counts[v], -values.index(v)))
    out = []
    for v in sorted({v for v in values if v != default}, key=values.index):
        idx = [i for i, x in enumerate(values) if x == v]
        out.append((_selector(idx, len(values)), v))
    return default, out


def layer_selections(values: list[Any]) -> list[tuple[dict[str, Any], Any]]:
    """A per-layer list whose None entries keep a section's value: one (select, value) per other value, in the
    order of its first layer."""
    return [
        (_selector([i for i, x in enumerate(values) if x == v], len(values)), v)
        for v in dict.fromkeys(x for x in values if x is not None)
    ]


def _selector(idx: list[int], n: int) -> dict[str, Any]:
    if len(idx) == 1:
        return {"layers": idx}
    step = idx[1] - idx[0]
    if all(b - a == step for a, b in zip(idx, idx[1:], strict=False)):
        if step == 1:
            return {"first": idx[0], "last": idx[-1]}
        sel: dict[str, Any] = {"every": step, "start": idx[0]}
        if idx[-1] + step <= n - 1:
            sel["last"] = idx[-1]
        return sel
    return {"layers": idx}
