"""The config reference (docs/config-reference.md), generated from the pydantic schema in zapd.config.

Generated, not written, so that it cannot drift from what `zapd config check` accepts: a unit test
(run by `make test` in CI) compares the committed file with `render_reference()`, and every field must
carry a `description=`. A constraint kind this module does not know raises instead of being left out,
so a new kind of limit cannot silently go missing from the reference.
"""

from __future__ import annotations

import argparse
import functools
import operator
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from zapd.config import DEFAULT_CONFIG_PATH, ZapdConfig


@dataclass(frozen=True)
class Key:
    """Public so tests can hold the reference against the models and the example config, not only its text.

    `variant` is the discriminator value (the `driver`) of the table the key belongs to: keys differ by driver.
    """

    path: tuple[str, ...]
    variant: str | None
    owner: type[BaseModel]
    info: FieldInfo


@dataclass(frozen=True)
class _Nested:
    """A field that becomes its own section (a table, an array of tables, or one per tag) instead of a row."""

    models: tuple[type[BaseModel], ...]
    array: bool
    discriminator: str | None


def _strip_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = tuple(a for a in get_args(annotation) if a is not type(None))
        return functools.reduce(operator.or_, args)
    return annotation


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _nested(annotation: Any) -> _Nested | None:
    tp = _strip_none(annotation)
    array = False
    if get_origin(tp) is list:
        (tp,) = get_args(tp)
        array = True
    discriminator: str | None = None
    if get_origin(tp) is Annotated:
        tp, *extra = get_args(tp)
        for item in extra:
            if isinstance(item, FieldInfo) and isinstance(item.discriminator, str):
                discriminator = item.discriminator
    if _is_model(tp):
        return _Nested((tp,), array, None)
    if get_origin(tp) in (Union, types.UnionType) and all(_is_model(m) for m in get_args(tp)):
        return _Nested(tuple(get_args(tp)), array, discriminator)
    return None


def _tag(model: type[BaseModel], discriminator: str) -> str:
    annotation = model.model_fields[discriminator].annotation
    (value,) = get_args(annotation)
    return str(value)


def _toml(value: object) -> str:
    """A value as it would be written in the TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"no TOML form for {value!r}")


def _type_name(annotation: Any) -> str:
    tp = _strip_none(annotation)
    if get_origin(tp) is Literal:
        values = get_args(tp)
        return _toml(values[0]) if len(values) == 1 else "one of " + " | ".join(_toml(v) for v in values)
    if get_origin(tp) is list:
        (item,) = get_args(tp)
        return "list of " + _type_name(item)
    names: dict[Any, str] = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "string (path)"}
    if tp in names:
        return names[tp]
    raise TypeError(f"no reference type name for {annotation!r}")


def _number(value: object) -> str:
    return _toml(value) if isinstance(value, int | float) else str(value)


def _constraints(info: FieldInfo) -> str:
    parts: list[str] = []
    min_len: int | None = None
    max_len: int | None = None
    for item in info.metadata:
        if isinstance(item, annotated_types.Gt):
            parts.append(f"> {_number(item.gt)}")
        elif isinstance(item, annotated_types.Ge):
            parts.append(f"≥ {_number(item.ge)}")
        elif isinstance(item, annotated_types.Lt):
            parts.append(f"< {_number(item.lt)}")
        elif isinstance(item, annotated_types.Le):
            parts.append(f"≤ {_number(item.le)}")
        elif isinstance(item, annotated_types.MinLen):
            min_len = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            max_len = item.max_length
        elif getattr(item, "pattern", None) is not None:
            parts.append(f"pattern `{item.pattern}`")
        else:
            raise TypeError(f"no reference text for the constraint {item!r}")
    if min_len is not None and max_len is not None:
        parts.insert(0, f"length {min_len}–{max_len}")
    elif min_len is not None:
        parts.insert(0, f"length ≥ {min_len}")
    elif max_len is not None:
        parts.insert(0, f"length ≤ {max_len}")
    return ", ".join(parts)


def _default(info: FieldInfo, nested: _Nested | None) -> str:
    if info.is_required():
        return "required"
    value: object = info.get_default(call_default_factory=True, validated_data={})
    if value is None or value == []:
        return "not set"
    if isinstance(value, BaseModel):
        return "all defaults"
    if value is PydanticUndefined or nested is not None:
        raise TypeError(f"no reference text for the default {value!r}")
    return f"`{_toml(value)}`"


def _header(path: tuple[str, ...], array: bool) -> str:
    dotted = ".".join(path)
    return f"[[{dotted}]]" if array else f"[{dotted}]"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _model_keys(model: type[BaseModel], path: tuple[str, ...], variant: str | None) -> Iterator[Key]:
    for name, info in model.model_fields.items():
        yield Key((*path, name), variant, model, info)
        nested = _nested(info.annotation)
        if nested is None:
            continue
        for sub in nested.models:
            sub_variant = _tag(sub, nested.discriminator) if nested.discriminator else variant
            yield from _model_keys(sub, (*path, name), sub_variant)


def iter_keys() -> Iterator[Key]:
    """Every key of the config file, depth first in declaration order; what the reference documents."""
    return _model_keys(ZapdConfig, (), None)


def _render_table(
    model: type[BaseModel],
    path: tuple[str, ...],
    level: int,
    title: str,
    intro: str | None,
    out: list[str],
    *,
    child_level: int | None = None,
    tag_key: str | None = None,
) -> None:
    """A heading, the table of keys, then the nested tables under it (one level deeper unless told)."""
    sub_level = level + 1 if child_level is None else child_level
    out += ["#" * level + " " + title, ""]
    if intro:
        out += [intro, ""]
    out += ["| key | type | default | constraints | description |", "| --- | --- | --- | --- | --- |"]
    children: list[tuple[str, FieldInfo, _Nested]] = []
    for name, info in model.model_fields.items():
        nested = _nested(info.annotation)
        if nested is None:
            kind = _type_name(info.annotation)
        else:
            kind = ("array of tables " if nested.array else "table ") + f"`{_header((*path, name), nested.array)}`"
            children.append((name, info, nested))
        description = info.description or ""
        if name == tag_key:
            description = "Picks this kind of entry, described above."
        row = [f"`{name}`", kind, _default(info, nested), _constraints(info), description]
        out.append("| " + " | ".join(_cell(c) for c in row) + " |")
    out.append("")
    for name, info, nested in children:
        child_path = (*path, name)
        header = _header(child_path, nested.array)
        need = "Required." if info.is_required() else "Optional."
        child_intro = f"{info.description or ''} {need}".strip()
        if nested.discriminator is None:
            (sub,) = nested.models
            _render_table(sub, child_path, sub_level, f"`{header}`", child_intro, out)
            continue
        tags = ", ".join(f"`{_tag(m, nested.discriminator)}`" for m in nested.models)
        out += ["#" * sub_level + f" `{header}`", "", child_intro, ""]
        out += [f"The keys depend on `{nested.discriminator}`: {tags}.", ""]
        for sub in nested.models:
            tag = _tag(sub, nested.discriminator)
            tag_intro = sub.model_fields[nested.discriminator].description
            title = f"`{header}` with `{nested.discriminator} = {_toml(tag)}`"
            _render_table(sub, child_path, sub_level + 1, title, tag_intro, out, tag_key=nested.discriminator)


_PREAMBLE = f"""\
# Configuration reference

<!-- Generated from zapd/config.py by `python -m zapd.config_doc`. Do not edit: run `make docs`. -->

zapd reads one TOML file, `{DEFAULT_CONFIG_PATH}` by default; `zapd config check PATH` validates it
without starting anything and names the file, key and reason of every problem. Units: W, Wh, A, V and
seconds; a state of charge (SoC) is a fraction 0..1; grid power is + when importing.

A *required* key must be given; every other key may be left out for its default, and "not set" means
leaving it out (TOML has no null). Unknown keys are errors. `config/zapd.example.toml` in the source
tree is a commented example.
"""


def render_reference() -> str:
    out = [_PREAMBLE]
    _render_table(ZapdConfig, (), 2, "Top level", "The file consists of these tables.", out, child_level=2)
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zapd.config_doc", description="Print the config reference generated from the schema."
    )
    parser.add_argument("--check", metavar="PATH", type=Path, help="exit 1 if PATH differs from the generated text")
    args = parser.parse_args(argv)
    text = render_reference()
    if args.check is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8"))  # UTF-8 whatever the locale: the file is compared byte for byte
        return 0
    path: Path = args.check
    try:
        current = path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"{path} cannot be read ({exc.strerror}): run `make docs`", file=sys.stderr)
        return 1
    if current != text:
        print(f"{path} is out of date: run `make docs`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
