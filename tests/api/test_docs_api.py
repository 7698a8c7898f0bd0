"""docs/api.md: every Python example on the page runs, in order, as a reader would paste them; and the README's
drop-in example trains (its loss falls)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def test_every_example_in_docs_api_runs():
    blocks = python_blocks((ROOT / "docs" / "api.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 8
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/api.md, example {i + 1}", "exec"), namespace)  # noqa: S102


def readme_drop_in_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### A drop-in MoE layer") :]
    return python_blocks(section)[0]


def test_readme_drop_in_moe_trains():
    namespace: dict = {}
    exec(compile(readme_drop_in_example(), "README.md, drop-in example", "exec"), namespace)  # noqa: S102
    losses = namespace["losses"]
    assert len(losses) == 30
    assert losses[-1] < 0.5 * losses[0], losses
