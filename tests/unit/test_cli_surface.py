"""The command lines a technician meets: every option says what it does, and the docs use the options that exist.

Walks the real argparse parsers of zapd, zapctl, zapcloud (and the demo that `zapd demo` runs);
the docs check reads every `zapd …`, `zapctl …`, `zapcloud …` command in docs/*.md and README.md
and asks the parser of that (sub)command whether each `--option` is one of its own.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud import cli as zapcloud_cli
from zapd import cli as zapd_cli
from zapd import zapctl
from zapd_demo import __main__ as demo_cli

REPO = Path(__file__).resolve().parents[2]
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "zapd": zapd_cli.build_parser,
    "zapctl": zapctl.build_parser,
    "zapcloud": zapcloud_cli.build_parser,
    "zapd demo": demo_cli.build_parser,
}
# Arguments after these go to another program (`zapctl logs` → journalctl).
PASS_THROUGH = {("zapctl", "logs")}


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser] | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    sub = _subparsers(parser)
    if sub is not None:
        for name, child in sub.choices.items():
            yield from _walk(child, f"{path} {name}")


def _all_parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for prog, build in PARSERS.items():
        yield from _walk(build(), prog)


def test_every_option_positional_and_subcommand_has_help() -> None:
    missing: list[str] = []
    for path, parser in _all_parsers():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{path} {c.dest}" for c in action._choices_actions if not (c.help or "").strip()]
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def check_command(words: list[str]) -> list[str]:
    """Problems with one documented command line (`zapctl fallback force --for 60`), [] when it parses."""
    prog = words[0]
    if prog == "zapd" and words[1:2] == ["demo"]:
        prog, words = "zapd demo", ["zapd demo", *words[2:]]
    parser = PARSERS[prog]()
    known = _options(parser)
    path = [prog]
    for word in words[1:]:
        if (path[0], path[-1]) in PASS_THROUGH:
            break
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            if option not in known:
                return [f"{' '.join(path)}: no option {option} (it has {', '.join(sorted(known))})"]
            continue
        sub = _subparsers(parser)
        if sub is not None and word in sub.choices:
            parser = sub.choices[word]
            known |= _options(parser)
            path.append(word)
    return []


_CODE = re.compile(r"`([^`\n]+)`|^```[^\n]*\n(.*?)^```", re.S | re.M)
_COMMAND = re.compile(r"(?:^|\$ |sudo |&& |; |\| )((?:zapd|zapctl|zapcloud)\s[^|;&#\n]*)")


def documented_commands() -> Iterator[tuple[str, list[str]]]:
    """(file:line, words) for each zapd/zapctl/zapcloud command written in a code span or block."""
    for doc in sorted([*(REPO / "docs").glob("*.md"), REPO / "README.md"]):
        text = doc.read_text()
        for m in _CODE.finditer(text):
            code = m.group(1) if m.group(1) is not None else m.group(2)
            line_no = text.count("\n", 0, m.start()) + 1
            for offset, line in enumerate(code.splitlines()):
                for cm in _COMMAND.finditer(line.strip()):
                    try:
                        words = shlex.split(cm.group(1))
                    except ValueError:
                        words = cm.group(1).split()
                    words = [w for w in words if not (w.startswith("[") or w.endswith("]"))]
                    yield f"{doc.relative_to(REPO)}:{line_no + offset}", words


def test_the_docs_find_commands_to_check() -> None:
    found = list(documented_commands())
    assert len(found) > 30
    assert any(words[:3] == ["zapctl", "fallback", "force"] for _, words in found)


def test_every_documented_option_exists() -> None:
    problems = [f"{where}: {p}" for where, words in documented_commands() for p in check_command(words)]
    assert problems == []


@pytest.mark.parametrize(
    ("words", "bad"),
    [
        (["zapctl", "fallback", "force", "safe_hold", "--minutes", "5"], True),
        (["zapctl", "fallback", "force", "safe_hold", "--for", "5"], False),
        (["zapctl", "logs", "--since", "today"], False),  # journalctl's option, passed through
        (["zapd", "demo", "--hours", "6"], False),
        (["zapd", "demo", "--days", "6"], True),
        (["zapcloud", "serve", "--port", "8080"], False),
    ],
)
def test_the_check_itself_tells_good_from_bad(words: list[str], bad: bool) -> None:
    assert bool(check_command(words)) is bad
