"""How the generated ``model.py`` is laid out: calls, imports and per-layer tables written as ``ruff format`` writes
them, so the file is stable under it (tests/codegen runs ruff on every case)."""

from __future__ import annotations

from dataclasses import dataclass

WIDTH = 120  # the generated file's line length (the project's ruff setting)
INDENT = " " * 8  # statements inside Model.__init__
OPERAND = 50  # the longest operand of a layer table (table_lines)


@dataclass(frozen=True)
class Call:
    """``keyword=func(args)`` to print; each argument is checked text or a nested call."""

    func: str
    args: tuple[str | Call, ...]
    keyword: str = ""

    def flat(self) -> str:
        inner = ", ".join(a if isinstance(a, str) else a.flat() for a in self.args)
        return f"{self.keyword}{self.func}({inner})"


def call_lines(call: Call, indent: str, prefix: str = "", suffix: str = "") -> list[str]:
    """The call on one line when it fits; else its arguments on one indented line when they fit; else one
    argument per line with a trailing comma, nested calls laid out the same way (ruff's order of attempts)."""
    one = f"{indent}{prefix}{call.flat()}{suffix}"
    if len(one) <= WIDTH:
        return [one]
    inner = indent + "    "
    head, tail = f"{indent}{prefix}{call.keyword}{call.func}(", f"{indent}){suffix}"
    hugged = inner + ", ".join(a if isinstance(a, str) else a.flat() for a in call.args)
    if len(hugged) <= WIDTH:
        return [head, hugged, tail]
    if len(call.args) == 1 and isinstance(call.args[0], str) and " for " in call.args[0]:
        # a lone generator: ruff breaks it before its `for`, and it takes no trailing comma
        element, loop = call.args[0].rsplit(" for ", 1)
        return [head, f"{inner}{element}", f"{inner}for {loop}", tail]
    lines = [head]
    for a in call.args:
        lines += [f"{inner}{a},"] if isinstance(a, str) else call_lines(a, inner, suffix=",")
    return [*lines, tail]


def import_lines(module: str, names: list[str], comment: str = "") -> list[str]:
    """``from module import names``, the names in ruff's order (constants, classes, then the rest, each
    alphabetically regardless of case), on one line when it fits, else one per line (ruff format's layout)."""
    names = sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n.lower(), n))
    one = f"from {module} import {', '.join(names)}{comment}"
    if len(one) <= WIDTH:
        return [one]
    return [f"from {module} import ({comment}", *(f"    {n}," for n in names), ")"]


def runs(items: list[str], longest: int = 8, fewest: int = 4) -> list[tuple[int, list[str]]]:
    """``items`` as (repeats, block) pairs: at each point the block of up to ``longest`` items that repeats over
    the most items (the shortest on a tie), if it repeats 3 times or over ``fewest`` items; the other items are
    gathered into blocks of 1 repeat (``[a, b, b]`` reads better than ``[a] + 2 * [b]``)."""
    out: list[tuple[int, list[str]]] = []
    i = 0
    while i < len(items):
        repeats, size = 1, 1
        for n in range(1, min(longest, len(items) - i) + 1):
            r = 1
            while items[i + r * n : i + (r + 1) * n] == items[i : i + n]:
                r += 1
            if r > 1 and (r > 2 or r * n >= fewest) and r * n > repeats * size:
                repeats, size = r, n
        if repeats == 1 and out and out[-1][0] == 1:
            out[-1][1].append(items[i])
        else:
            out.append((repeats, items[i : i + size]))
        i += repeats * size
    return out


def table_lines(name: str, items: list[str]) -> list[str]:
    """``NAME = 3 * [a] + 58 * [b]``: a per-layer list written as its repeats. Each operand is kept under
    ``OPERAND`` characters (a longer repeat is listed item by item), so a table too long for one line has three
    operands or more, which ruff lays out one per line inside parentheses (it splits two differently)."""
    # a long repeat that fits on one line stays one (Qwen3-Next: 12 * [three mixers, "attention"])
    pairs = runs(items)
    whole = [f"{r} * [{', '.join(block)}]" if r > 1 else f"[{', '.join(block)}]" for r, block in pairs]
    long_repeat = any(op[0].isdigit() and len(op) > OPERAND for op in whole)
    if long_repeat and len(f"{name} = {' + '.join(whole)}") <= WIDTH:
        return [f"{name} = {' + '.join(whole)}"]
    operands: list[str] = []
    for (repeats, block), listed in zip(pairs, whole, strict=True):
        if len(listed) <= OPERAND:
            operands.append(listed)
            continue
        for item in block * repeats:
            if operands and operands[-1].startswith("[") and len(operands[-1]) + len(item) + 2 <= OPERAND:
                operands[-1] = f"{operands[-1][:-1]}, {item}]"
            else:
                operands.append(f"[{item}]")
    one = f"{name} = {' + '.join(operands)}"
    if len(one) <= WIDTH:
        return [one]
    if len("    " + " + ".join(operands)) <= WIDTH:
        return [f"{name} = (", "    " + " + ".join(operands), ")"]
    return [f"{name} = (", *(f"    {'+ ' if i else ''}{op}" for i, op in enumerate(operands)), ")"]
