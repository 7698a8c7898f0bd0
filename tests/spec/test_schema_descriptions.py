"""Every field of the spec's JSON Schema (`moec schema`, what editors show as help) has a one-line description."""

from __future__ import annotations

import json

from click.testing import CliRunner

from moec.cli import cli


def fields(schema: dict) -> list[tuple[str, dict]]:
    """(Model.field, its schema) for every property of every object in the schema, nested ones included."""
    objects = {"Spec": schema, **schema.get("$defs", {})}
    return [(f"{name}.{f}", prop) for name, obj in objects.items() for f, prop in obj.get("properties", {}).items()]


def test_every_field_has_a_one_line_description() -> None:
    r = CliRunner().invoke(cli, ["schema"])
    assert r.exit_code == 0
    schema = json.loads(r.stdout)
    found = fields(schema)
    assert len(found) > 140  # every section's fields, not just the top level
    undescribed = [name for name, prop in found if not prop.get("description", "").strip()]
    assert undescribed == []
    multi_line = [name for name, prop in found if "\n" in prop["description"]]
    assert multi_line == []
    assert "segmentation" in schema["$defs"]["MoE"]["properties"]  # resolved away, yet documented for editors
