"""Ed25519 key files for the Zap (edge) and the cloud endpoint.

Both sides use the same file format so one set of helpers serves `zapd keygen` and
`zapcloud serve`: the 32-byte seed, base64, one line, in a file only the owner can read.
A key id (first 16 hex chars of sha256 of the public key) lets a receiver pick the right
verify key without trusting anything else in the request.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

KEY_DIR = "keys"
ZAP_KEY_FILE = "zap.key"
_SEED_BYTES = 32


class KeyFileError(Exception):
    """A key file is missing, unreadable, malformed or must not be overwritten."""


class KeyFileExistsError(KeyFileError):
    """Raised instead of silently replacing a key: a new key orphans the site registration."""


def zap_key_path(state_dir: Path) -> Path:
    return state_dir / KEY_DIR / ZAP_KEY_FILE


def generate_keypair(state_dir: Path, *, force: bool = False) -> VerifyKey:
    """Create the Zap's key pair under `state_dir/keys/zap.key` and return its public half.

    Refuses to overwrite an existing key unless `force`: the cloud knows the site by this key,
    so replacing it by accident cuts the site off until it is registered again.
    """
    key_dir = state_dir / KEY_DIR
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask and ignored for an existing dir: enforce it.
    os.chmod(key_dir, 0o700)
    key = SigningKey.generate()
    write_signing_key(key_dir / ZAP_KEY_FILE, key, force=force)
    return key.verify_key


def write_signing_key(path: Path, key: SigningKey, *, force: bool = False) -> None:
    """Write `key` to `path` (mode 0600) atomically; no reader ever sees a half-written key.

    Without `force` the final step is a hard link, which fails if `path` exists, so two
    concurrent generators cannot both "win".
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not force and path.exists():
        raise KeyFileExistsError(f"{path}: key file exists; refusing to overwrite it (use --force)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = base64.b64encode(bytes(key)) + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyFileExistsError(f"{path}: key file exists; refusing to overwrite it (use --force)") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def load_signing_key(path: Path) -> SigningKey:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror}") from exc
    try:
        seed = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{path}: not a key file (expected one base64 line)") from None
    if len(seed) != _SEED_BYTES:
        raise KeyFileError(f"{path}: not a key file (expected a {_SEED_BYTES}-byte seed)")
    return SigningKey(seed)


def load_or_create_signing_key(path: Path) -> SigningKey:
    """The cloud's key: created on first start so `zapcloud serve` needs no setup step."""
    if path.exists():
        return load_signing_key(path)
    # Another worker may create it first: then use theirs.
    with contextlib.suppress(KeyFileExistsError):
        write_signing_key(path, SigningKey.generate(), force=False)
    return load_signing_key(path)


def public_key_b64(key: SigningKey | VerifyKey) -> str:
    verify_key = key.verify_key if isinstance(key, SigningKey) else key
    return base64.b64encode(bytes(verify_key)).decode("ascii")


def load_verify_key_b64(s: str) -> VerifyKey:
    """Parse a pinned/registered public key; raises ValueError with a usable message."""
    try:
        raw = base64.b64decode(s.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public key is not valid base64") from None
    if len(raw) != _SEED_BYTES:
        raise ValueError(f"public key must be {_SEED_BYTES} bytes, got {len(raw)}")
    try:
        return VerifyKey(raw)
    except CryptoError as exc:
        raise ValueError(f"not an Ed25519 public key: {exc}") from None


def key_id(key: SigningKey | VerifyKey) -> str:
    verify_key = key.verify_key if isinstance(key, SigningKey) else key
    return hashlib.sha256(bytes(verify_key)).hexdigest()[:16]


def _fsync_dir(path: Path) -> None:
    # Makes the new directory entry survive power loss; not supported everywhere, hence best effort.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
