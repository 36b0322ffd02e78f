"""The bench table: rows of (metric, value, target, command) and the pass/fail verdict for each."""

from __future__ import annotations

import re
from collections.abc import Callable

Row = dict[str, str]


def row(name: str, value: str, target: str, command: str) -> Row:
    """One line of the table; `target` like "<= 50 MB" or ">= 20,000 readings/s", "-" for none."""
    return {"name": name, "value": value, "target": target, "command": command}


_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
_TARGET = re.compile(r"^\s*(<=|>=|<|>)\s*([-+]?\d[\d,]*(?:\.\d+)?)")


def _number(text: str) -> float | None:
    m = _NUMBER.search(text)
    return float(m.group(0).replace(",", "")) if m else None


def verdict(row: Row) -> str:
    """pass/fail from the row's own `ok` if it has one, else by comparing value to a `<= N`/`>= N` target."""
    if "ok" in row:
        return row["ok"]
    m = _TARGET.match(row.get("target", ""))
    value = _number(row.get("value", ""))
    if m is None:
        return "-"
    if value is None:
        return "fail"
    op, limit = m.group(1), float(m.group(2).replace(",", ""))
    ok = {"<=": value <= limit, ">=": value >= limit, "<": value < limit, ">": value > limit}[op]
    return "pass" if ok else "fail"


def print_table(rows: list[Row], out: Callable[[str], None] = print) -> None:
    cols = [("metric", "name"), ("value", "value"), ("target", "target"), ("pass/fail", "verdict"),
            ("command to reproduce", "command")]  # fmt: skip
    table = [{**r, "verdict": verdict(r)} for r in rows]
    widths = {key: max(len(title), *(len(r.get(key, "")) for r in table)) for title, key in cols}
    out("  ".join(title.ljust(widths[key]) for title, key in cols).rstrip())
    out("  ".join("-" * widths[key] for _, key in cols))
    for r in table:
        out("  ".join(r.get(key, "").ljust(widths[key]) for _, key in cols).rstrip())
