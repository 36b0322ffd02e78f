"""Key files on a real filesystem: permissions, refusal to overwrite, round trips."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cloud_sync.keys import (
    KeyFileError,
    KeyFileExistsError,
    generate_keypair,
    key_id,
    load_or_create_signing_key,
    load_signing_key,
    public_key_b64,
    zap_key_path,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_writes_private_files(tmp_path: Path) -> None:
    vk = generate_keypair(tmp_path / "state")
    path = zap_key_path(tmp_path / "state")
    assert path == tmp_path / "state" / "keys" / "zap.key"
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert load_signing_key(path).verify_key == vk
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


def test_generate_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = generate_keypair(tmp_path)
    with pytest.raises(KeyFileExistsError, match="refusing to overwrite"):
        generate_keypair(tmp_path)
    assert load_signing_key(zap_key_path(tmp_path)).verify_key == first
    second = generate_keypair(tmp_path, force=True)
    assert second != first
    assert load_signing_key(zap_key_path(tmp_path)).verify_key == second
    assert _mode(zap_key_path(tmp_path)) == 0o600


def test_load_or_create_is_stable(tmp_path: Path) -> None:
    path = tmp_path / "cloud.key"
    a = load_or_create_signing_key(path)
    b = load_or_create_signing_key(path)
    assert bytes(a) == bytes(b)
    assert _mode(path) == 0o600
    assert len(key_id(a)) == 16 and int(key_id(a), 16) >= 0
    assert public_key_b64(a) == public_key_b64(a.verify_key)


@pytest.mark.parametrize("content", [b"", b"not base64!!", b"c2hvcnQ=\n"])
def test_bad_key_files_are_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=str(path)):
        load_signing_key(path)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_signing_key(tmp_path / "missing")
