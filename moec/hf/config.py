"""Hugging Face ``config.json`` ↔ moec spec.

Import: a config (a dict, a config.json, or a directory holding one) → spec YAML whose comments name
the config.json field behind every value (:func:`import_hf_config`), or straight to the resolved
plan (:func:`hf_to_model`). The per-family semantics live in ``families/``, a module per family. Every field of the
config is accounted for: read by the family's translator, inert (token ids, init, caching), or at
its transformers default; anything else, and anything the schema cannot express, is a SpecError
naming the field. Nothing is approximated.

Export: a plan → the config.json of the first family that expresses it (:func:`export_hf_config`).
The config is imported again and must give the identical plan, so an export cannot drop a feature
silently either.

No torch, no transformers: ``moec analyze config.json`` stays fast.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from moec.errors import Problem, SpecError
from moec.hf.draft import INERT, CannotExport, Draft, Family, Gap, HFConfig, layer_selections, shown
from moec.hf.families import FAMILIES, export_order, layer_pattern
from moec.hf.jsontext import KeyLocator, parse_object, printable
from moec.hf.refused import refusal
from moec.spec.load import LoadedSpec, load_spec, read_text_file
from moec.spec.plan import ResolvedModel
from moec.spec.resolve import resolve
from moec.spec.schema import Balance

# Released config.json files are a few KiB (Phi-3.5-MoE's LongRoPE factor lists included); at 1 MiB even a
# text of nothing but empty lists parses in well under 100 MB.
MAX_CONFIG_BYTES = 1 << 20
# the balance section's fields (flattened into the MoE plan): they shape training only
TRAINING_ONLY = tuple(Balance.model_fields)

Source = dict[str, Any] | str | PathLike[str]


# ---------------------------------------------------------------------------------------------
# reading


def read_hf_config(source: Source) -> tuple[dict[str, Any], str, str]:
    """(config mapping, file name for messages, JSON text for line numbers)."""
    if isinstance(source, dict):
        return dict(source), "<config>", ""  # no text, so no line numbers
    p = Path(source)
    if p.is_dir():
        p = p / "config.json"
    file = str(p)
    text = read_text_file(file, max_bytes=MAX_CONFIG_BYTES, kind="config.json")
    return parse_object(text, file), file, text


# ---------------------------------------------------------------------------------------------
# translating


@dataclass
class Translation:
    family: Family
    config: HFConfig
    draft: Draft
    file: str
    text: str
    name: str
    locator: KeyLocator = field(init=False)

    def __post_init__(self) -> None:
        self.locator = KeyLocator(self.text)

    @property
    def gaps(self) -> list[Gap]:
        return self.draft.gaps

    def problem(self, hf_field: str, message: str) -> Problem:
        """A problem at a config field's key, under the name the config wrote it (an alias: HFConfig.as_written);
        no line for a config given as a mapping, which has no text."""
        for c in (self.config, *self.config.children):
            hf_field = c.as_written(hf_field)
        line, col = self.locator.locate(hf_field) if self.text else (None, None)
        return Problem(self.file, line, col, printable(hf_field), message)

    def problems(self, *, gaps: bool = True) -> list[Problem]:
        out = []
        for c in (self.config, *self.config.children):
            out += [self.problem(f, msg) for f, msg in c.issues]
            for k in c.unread():
                out.append(
                    self.problem(
                        c.prefix + k,
                        f"{shown(c.raw[k])}: moec's {self.family.model_type} importer does not map this field and it is "
                        "not at its transformers default, so it may change the model; refusing to guess",
                    )
                )
        if gaps:
            for g in self.gaps:
                out.append(
                    self.problem(
                        g.field,
                        f"{shown(g.value)}: {g.message}; the moec spec cannot represent this "
                        f"(proposed schema addition: {g.proposal})",
                    )
                )
        return out


def translate(source: Source, *, name: str | None = None) -> Translation:
    """Read a config and run its family's translator. Gaps and problems are collected, not raised
    (:func:`import_hf_config` raises them); the parity tests use the gaps' ``param_delta``."""
    raw, file, text = read_hf_config(source)
    mt = raw.get("model_type")
    if isinstance(mt, str) and (why := refusal(mt)) is not None:
        raise SpecError([_at_key(file, text, "model_type", why)])
    if not isinstance(mt, str) or mt not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise SpecError([_at_key(file, text, "model_type", f"{shown(mt)} is not a supported model_type ({known})")])
    fam = FAMILIES[mt]
    c = HFConfig(raw, fam.defaults, aliases=fam.aliases)
    d = Draft(mt)
    fam.translate(c, d)
    return Translation(fam, c, d, file, text, _spec_name(name, c.raw, file, mt))


def _at_key(file: str, text: str, hf_field: str, message: str) -> Problem:
    line, col = KeyLocator(text).locate(hf_field) if text else (None, None)
    return Problem(file, line, col, printable(hf_field), message)


def _spec_name(name: str | None, raw: dict[str, Any], file: str, mt: str) -> str:
    if name is None:
        named = raw.get("_name_or_path")
        if isinstance(named, str) and named.strip("/"):
            name = named.rstrip("/").rsplit("/", 1)[-1]
        elif file != "<config>":
            name = Path(file).resolve().parent.name
        name = name or mt
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).lstrip("._-")[:100]
    return name or mt


# ---------------------------------------------------------------------------------------------
# the spec as YAML, with the source of every value in a comment


def _tree(t: Translation) -> dict[str, Any]:
    d = t.draft
    tree: dict[str, Any] = {}
    kinds = set(d.ffn) | ({d.get("mtp.ffn")} if "mtp.ffn" in d.fields else set())
    if "encoder.layers" in d.fields:  # an encoder-decoder model's encoder layers use their FFN sections too
        enc = d.get("encoder.layers")
        kinds |= {enc["default"]["ffn"], *(o["ffn"] for o in enc.get("overrides", []))}
    if "model.block" in d.fields and d.get("model.block") != "standard":  # its pairs' dense FFNs (LongCat-Flash)
        kinds.add("dense")
    for path, leaf in d.fields.items():
        top = path.split(".", 1)[0]
        if (top == "ffn" and "dense" not in kinds) or (top in ("moe", "mtp") and "moe" not in kinds):
            continue
        node = tree
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf

    layers: dict[str, Any] = {"default": {}}
    overrides: list[tuple[dict[str, Any], str]] = []
    ffn_default, ffn_over = layer_pattern(d.ffn)
    layers["default"]["ffn"] = (ffn_default, d.ffn_note)
    overrides += [({"select": sel, "ffn": v}, d.ffn_note) for sel, v in ffn_over]
    if any(m != "attention" for m in d.mixer):  # an attention-only model's spec says nothing of mixers
        mixer_default, mixer_over = layer_pattern(d.mixer)
        layers["default"]["mixer"] = (mixer_default, d.mixer_note)
        overrides += [({"select": sel, "mixer": v}, d.mixer_note) for sel, v in mixer_over]
    if len(set(d.window)) == 1:
        if d.window[0] is not None:
            tree["attention"]["window"] = (d.window[0], d.window_note)
    else:
        w_default, w_over = layer_pattern(d.window)
        layers["default"]["attention"] = {"window": (w_default, d.window_note)}
        overrides += [({"select": sel, "attention": {"window": v}}, d.window_note) for sel, v in w_over]
    if not all(d.rope):
        r_default, r_over = layer_pattern(d.rope)
        layers["default"].setdefault("attention", {})["rope"] = (r_default, d.rope_note)
        overrides += [({"select": sel, "attention": {"rope": v}}, d.rope_note) for sel, v in r_over]
    for name, (values, note) in d.layer_attention.items():
        if len(set(values)) == 1:
            if name != "temperature_tuning" and values[0] not in (None, False):
                tree["attention"][name] = (values[0], note)
            continue
        v_default, v_over = layer_pattern(values)
        layers["default"].setdefault("attention", {})[name] = (v_default, note)
        overrides += [({"select": sel, "attention": {name: v}}, note) for sel, v in v_over]
    for name, (values, note) in d.layer_moe.items():  # None: the moe section's own value
        overrides += [({"select": sel, "moe": {name: v}}, note) for sel, v in layer_selections(values)]
    if overrides:
        layers["overrides"] = overrides
    tree["layers"] = layers
    order = ("model", "attention", "mixers", "ffn", "moe", "layers", "mtp", "encoder")
    return {k: tree[k] for k in order if k in tree}


_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_YAML_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_scalar(x)}" for k, x in v.items()) + "}"
    s = str(v)
    return s if _PLAIN.match(s) and s.lower() not in _YAML_WORDS else json.dumps(s)


def _with_note(line: str, note: str) -> str:
    return f"{line:<44}  # {note}" if note else line


def _emit(node: dict[str, Any], indent: int, out: list[str]) -> None:
    pad = "  " * indent
    for key, v in node.items():
        if isinstance(v, dict):
            out.append(f"{pad}{key}:")
            _emit(v, indent + 1, out)
        elif isinstance(v, list):
            out.append(f"{pad}{key}:")
            out += [_with_note(f"{pad}  - {_scalar(item)}", note) for item, note in v]
        else:
            value, note = v
            out.append(_with_note(f"{pad}{key}: {_scalar(value)}", note))


def render_yaml(t: Translation) -> str:
    fam = t.family
    ignored = sorted(k for c in (t.config, *t.config.children) for k in c.raw if k in INERT and k != "model_type")
    where = "a config mapping" if t.file == "<config>" else t.file
    head = [
        f"# Imported by `moec import-hf` from {' '.join(where.splitlines())}",  # a comment is one line
        f"# (model_type {fam.model_type}: {fam.architecture} as transformers 5.23 builds it).",
        '# Each comment names the config.json field a value comes from; "(transformers default)" marks a field',
        "# the config omits, filled in with the transformers class default.",
    ]
    if ignored:
        head.append("# Ignored (no effect on the architecture): " + ", ".join(ignored) + ".")
    if t.draft.training_only:
        head.append(
            "# Not represented (training only: dropout and noise, identity at inference, no parameters): "
            + ", ".join(t.draft.training_only)
            + "."
        )
    out = head + [
        "moec: 1",
        f"name: {_scalar(t.name)}",
        f"description: {_scalar(f'{fam.architecture} imported from a Hugging Face config.json')}",
        f"source: {_scalar(f'Hugging Face config.json ({where})'[:2000])}",
    ]
    _emit(_tree(t), 0, out)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# public entry points


def import_hf_config(source: Source, *, name: str | None = None) -> str:
    """A Hugging Face config → spec YAML text that loads with :func:`moec.spec.load_spec`."""
    return _import(source, name)[0]


def hf_to_model(source: Source, *, name: str | None = None) -> ResolvedModel:
    """A Hugging Face config → the resolved moec plan."""
    return resolve(_import(source, name)[1])


def _import(source: Source, name: str | None) -> tuple[str, LoadedSpec]:
    t = translate(source, name=name)
    problems = t.problems()
    if problems:
        raise SpecError(problems)
    text = render_yaml(t)
    try:
        return text, load_spec(t.file, text=text)
    except SpecError as e:
        raise SpecError(_back_to_config(t, e.problems)) from None


def _back_to_config(t: Translation, problems: list[Problem]) -> list[Problem]:
    """The problems the spec checks found in the imported spec, pointed back at their config.json fields: one per
    field and message, so that a value the import wrote to several spec fields (moe_intermediate_size to moe.d_ff
    and moe.d_ff_shared) is one problem naming them all."""
    spec_paths: dict[tuple[str, str], list[str]] = {}
    for p in problems:
        spec_paths.setdefault((_config_field(t, p.path), p.message), []).append(p.path)
    out = []
    for (config_field, message), paths in spec_paths.items():
        named = f"spec field{'s' if len(paths) > 1 else ''} {', '.join(paths)}"
        # a config field of "": a value the family fixes in code, located at the config as a whole
        out.append(t.problem(config_field, f"{message} ({named}{'' if config_field else ' of the imported spec'})"))
    return out


def _config_field(t: Translation, spec_path: str) -> str:
    """The config.json field a spec field came from, by its note ("" where the family fixes the value in code)."""
    leaf = t.draft.fields.get(spec_path)
    note = _layers_note(t.draft, spec_path) if spec_path.startswith("layers") else leaf[1] if leaf else ""
    m = re.match(r"[A-Za-z_][\w.]*", note or "")
    return m.group(0).rstrip(".") if m else ""  # a note's "x.<type>"


def _layers_note(d: Draft, path: str) -> str:
    """The note of the per-layer list a spec field under ``layers`` came from: a per-layer attention or MoE value's
    own (Draft.layer_attention, layer_moe), the rotations', the mixers', the windows', else the FFN kinds'."""
    m = re.search(r"\.(attention|moe)\.(\w+)", path)
    if m:
        own = d.layer_attention if m.group(1) == "attention" else d.layer_moe
        if m.group(2) in own:
            return own[m.group(2)][1]
        if m.group(2) == "rope":
            return d.rope_note
    if path.endswith(".mixer"):
        return d.mixer_note
    return d.window_note if "window" in path else d.ffn_note


def plan_fields(model: ResolvedModel, *, training: bool = True) -> dict[str, Any]:
    """The plan as plain data without its name and provenance (and without the informational
    fine-grained ``granularity``); ``training=False`` also drops the balance coefficients, which only
    shape training and which config.json files spell inconsistently."""
    d = model.to_dict()
    for k in ("name", "description", "spec_hash", "source_file"):
        d.pop(k)
    for lp in (*d["layers"], *d["mtp"]):
        if lp["ffn"]["kind"] == "moe":
            lp["ffn"].pop("granularity")
            if not training:
                for k in TRAINING_ONLY:
                    lp["ffn"].pop(k)
    return d


def plan_differences(a: ResolvedModel, b: ResolvedModel, *, training: bool = True) -> list[str]:
    """Field paths where two plans differ (per-layer paths collapsed to ``layers[*]``), a vs b."""
    out: dict[str, str] = {}

    def walk(x: Any, y: Any, path: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in x.keys() | y.keys():
                walk(x.get(k), y.get(k), f"{path}.{k}" if path else k)
        elif isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            if len(x) != len(y):
                out.setdefault(path, f"{path}: {len(x)} vs {len(y)} entries")
                return
            for i, (p, q) in enumerate(zip(x, y, strict=False)):
                walk(p, q, f"{path}[{i}]")
        elif x != y:
            key = re.sub(r"\[\d+\]", "[*]", path)
            out.setdefault(key, f"{key}: {shown(x)} vs {shown(y)}")

    walk(plan_fields(a, training=training), plan_fields(b, training=training), "")
    return sorted(out.values())


def export_hf_config(model: ResolvedModel | str | PathLike[str], *, drop_training: bool = False) -> dict[str, Any]:
    """A plan (or a spec path / shipped spec name) → the config.json of the first Hugging Face family
    that expresses it exactly; a SpecError saying why each family cannot, otherwise.

    ``drop_training`` lets the balance coefficients (training only) go where the family's config.json
    has no field for them (DeepSeek-V3's bias update rate); every architectural field must still match.
    """
    if isinstance(model, ResolvedModel):
        m = model
    else:
        from moec.spec import load_model

        m = load_model(str(model))
    where = m.source_file or m.name
    why: dict[str, list[str]] = {}  # reason → the families it rules out
    for fam in export_order(moe=bool(m.moe_layers)):
        model_type = fam.model_type
        try:
            cfg = fam.export(m)
            back = hf_to_model(cfg)
            diff = plan_differences(m, back, training=not drop_training)
        except CannotExport as e:
            why.setdefault(str(e), []).append(model_type)
            continue
        except SpecError as e:
            why.setdefault(e.problems[0].message, []).append(model_type)
            continue
        if not diff:
            return cfg
        if not plan_differences(m, back, training=False):
            why.setdefault(
                "has no config.json field for " + "; ".join(diff) + " (training only; drop_training / "
                "--drop-training exports without it)",
                [],
            ).append(model_type)
            continue
        more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
        why.setdefault("cannot express (spec vs family) " + "; ".join(diff[:3]) + more, []).append(model_type)
    head = Problem(where, None, None, "", "no supported Hugging Face family expresses this spec exactly")
    raise SpecError([head] + [Problem(where, None, None, ", ".join(fams), r) for r, fams in why.items()])
