"""Admin and metrics credentials of `zapcloud serve`.

The cloud signs every plan a Zap executes, so whoever can publish a plan or re-key a site steers
batteries: there is no "open" mode. `zapcloud serve` refuses to start without an admin token, read
from `--admin-token-file` or `$ZAPCLOUD_ADMIN_TOKEN`. A separate, read-only metrics token
(`--metrics-token-file` / `$ZAPCLOUD_METRICS_TOKEN`) lets Prometheus scrape `/metrics` without
holding admin rights; the admin token opens `/metrics` as well.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Final

ADMIN_TOKEN_ENV: Final = "ZAPCLOUD_ADMIN_TOKEN"
METRICS_TOKEN_ENV: Final = "ZAPCLOUD_METRICS_TOKEN"
# 16 characters of a random token are ~96 bits: beyond guessing even without the rate limit.
MIN_TOKEN_CHARS: Final = 16
MAX_TOKEN_CHARS: Final = 512


class TokenError(Exception):
    """No usable credential: the message is the one line `zapcloud serve` prints before exit 2."""


def check_token(token: str, what: str) -> str:
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenError(f"{what} is too short ({len(token)} characters, need at least {MIN_TOKEN_CHARS})")
    if len(token) > MAX_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token:
        raise TokenError(f"{what} must be one line of at most {MAX_TOKEN_CHARS} printable ASCII characters")
    return token


def read_token_file(path: Path, what: str) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII"
        raise TokenError(f"{what} {path}: cannot read: {reason}") from None
    if mode & stat.S_IWOTH:
        raise TokenError(f"{what} {path}: file is world-writable (chmod 600 it)")
    return check_token(text, f"{what} {path}")


def resolve_token(path: str | None, env_name: str, what: str, *, required: bool) -> str | None:
    """The token from the file if given, else from the environment; None only if not `required`."""
    if path:
        return read_token_file(Path(path), what)
    value = os.environ.get(env_name, "")
    if value.strip():
        return check_token(value, f"${env_name}")
    if required:
        raise TokenError(
            f"no {what}: pass --admin-token-file PATH or set ${env_name} (`zapcloud token PATH` writes a new one)"
        )
    return None


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_token_file(path: Path) -> str:
    """Create a new random token in `path` (mode 0600); refuses to overwrite an existing file."""
    token = new_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (token + "\n").encode("ascii"))
    finally:
        os.close(fd)
    return token


class BearerTokens:
    """Constant-time check of `Authorization: Bearer <token>` against a set of accepted tokens.

    Both sides are hashed first, so the comparison takes the same time whatever the lengths.
    """

    def __init__(self, tokens: dict[str, str]) -> None:
        # name -> digest; the name keys the rate-limit bucket of that credential.
        self._digests = {name: hashlib.sha256(t.encode()).digest() for name, t in tokens.items()}

    def match(self, authorization: str | None) -> str | None:
        """The name of the credential the header carries, or None."""
        scheme, _, token = (authorization or "").partition(" ")
        digest = hashlib.sha256(token.strip().encode("utf-8", "replace")).digest()
        found = None
        for name, good in self._digests.items():
            if hmac.compare_digest(digest, good) and scheme.lower() == "bearer":
                found = name
        return found
