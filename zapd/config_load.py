"""The daemon's config: validated by the pydantic models in a short-lived child, run on msgspec Structs.

`zapd run` must not hold pydantic (its modules, its core library and the models' validators are
~8 MB of the gateway's 50 MB, docs/decisions.md footprint). So the file is checked exactly as
`zapd config check` checks it (every problem, `file: key: reason` on stderr) by
`python -m zapd.config_load` in a child process, which prints the validated config as JSON; the
daemon decodes that into the Structs generated from the same models (zapd/config_structs.py).
This module imports neither pydantic nor the models.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from zapd.config_structs import ZapdConfig

if TYPE_CHECKING:
    from zapd.config import ZapdConfig as ZapdModel

CHILD_TIMEOUT_S = 120.0  # the check builds every device through its factory; no I/O, a few seconds at most


def _dec_hook(tp: type, obj: Any) -> Any:
    if tp is Path and isinstance(obj, str):
        return Path(obj)
    raise NotImplementedError(f"no decoder for {tp!r}")


def decode_config(data: bytes) -> ZapdConfig:
    """The Structs of a validated config's JSON (as the child prints it); msgspec re-checks types and bounds."""
    return msgspec.json.decode(data, type=ZapdConfig, dec_hook=_dec_hook)


def to_structs(model: ZapdModel) -> ZapdConfig:
    """A validated pydantic config as the daemon's Structs (in-process: tests, the demo)."""
    return decode_config(model.model_dump_json().encode())


def _enc_hook(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    if callable(dump):  # the pydantic model itself (tests and the demo hand the daemon one): same keys
        return dump(mode="json")
    return str(obj)  # Path


def as_builtins(config: ZapdConfig) -> dict[str, Any]:
    """The config as JSON-ready dicts (paths as strings), e.g. for `zapctl diag`."""
    out: dict[str, Any] = msgspec.to_builtins(config, enc_hook=_enc_hook)
    return out


def load_in_child(path: Path, *, allow_insecure: bool = False) -> ZapdConfig | None:
    """The config checked in a child process; None when it is not usable (the child printed why)."""
    cmd = [sys.executable, "-m", "zapd.config_load", str(path)]
    if allow_insecure:
        cmd.append("--allow-insecure")
    # stderr is inherited: the child's `file: key: reason` lines reach the operator as they are.
    res = subprocess.run(cmd, stdout=subprocess.PIPE, timeout=CHILD_TIMEOUT_S, check=False)
    if res.returncode != 0:
        return None
    try:
        return decode_config(res.stdout)
    except msgspec.DecodeError as exc:  # a bug, not a bad file: say so instead of a traceback
        print(f"{path}: the config check's result could not be read ({exc}); please report", file=sys.stderr)
        return None


def main(argv: list[str]) -> int:
    """The child: `zapd config check`'s report on stderr, the validated config as JSON on stdout."""
    from zapd.cli import EXIT_BAD_CONFIG, load_or_report

    result = sys.stdout
    sys.stdout = sys.stderr  # whatever the check prints (a driver's log line) must not mix into the JSON
    try:
        config = load_or_report(Path(argv[0]), allow_insecure="--allow-insecure" in argv[1:])
    finally:
        sys.stdout = result
    if config is None:
        return EXIT_BAD_CONFIG
    result.buffer.write(config.model_dump_json().encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
