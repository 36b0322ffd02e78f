"""The Zap's cloud transport rule (issue 10): plain http:// only to loopback unless allowed.

A forged `{"stored_through": 1e18}` over plain http:// to a LAN address deleted the outbox;
whatever the ACK checks, a plain link to another host lets anyone on the path read and answer.
The expected verdicts are written out per URL (RFC 6761 for `localhost`, RFC 5735 / 4291 for the
loopback blocks), not derived from the code under test.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from cloud_sync.keys import public_key_b64
from cloud_sync.session import CloudSync
from cloud_sync.transport import InsecureTransportError, insecure_url_problem
from zapd.clock import ManualClock
from zapd.config import CloudConfig

CLOUD_PUB = public_key_b64(SigningKey(b"\x07" * 32).verify_key)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://cloud.example.com", True),
        ("https://192.168.1.55:8443/", True),
        ("http://127.0.0.1:8080", True),
        ("http://127.9.8.7", True),  # all of 127.0.0.0/8 is loopback
        ("http://[::1]:8080/", True),
        ("http://localhost:8080", True),
        ("http://LOCALHOST", True),
        ("http://192.168.1.55/", False),
        ("http://10.0.0.1:8080", False),
        ("http://cloud.example.com", False),
        ("http://localhost.example.com", False),  # only the name localhost itself
        ("http://127.0.0.1.nip.io", False),
        ("http://[::ffff:192.168.1.5]", False),
        ("http://0.0.0.0:8080", False),
    ],
)
def test_plain_http_only_to_loopback(url: str, allowed: bool) -> None:
    assert (insecure_url_problem(url, allow_insecure=False) is None) is allowed
    assert insecure_url_problem(url, allow_insecure=True) is None


def test_the_client_refuses_what_the_check_refuses(tmp_path: Path) -> None:
    """For callers that build the cloud link without the CLI (the daemon, tests, the demo)."""

    def link(config: CloudConfig) -> CloudSync:
        clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
        # The store is not touched while the link is built.
        return CloudSync(config=config, site_id="s", key=SigningKey.generate(), store=None,  # type: ignore[arg-type]
                         clock=clock, capabilities=list)  # fmt: skip

    config = CloudConfig(url="http://192.168.1.55:8080", public_key=CLOUD_PUB)
    with pytest.raises(InsecureTransportError, match=r"192\.168\.1\.55"):
        link(config)
    sync = link(config.model_copy(update={"allow_insecure": True}))
    assert str(sync.client.base_url).startswith("http://192.168.1.55")


def _config(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "zapd.toml"
    path.write_text(
        f'[site]\nid = "s1"\nfuse_a = 25\n\n[store]\nstate_dir = "{tmp_path}"\n\n'
        f'[cloud]\nurl = "{url}"\npublic_key = "{CLOUD_PUB}"\n{extra}'
    )
    return path


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zapd.cli", "config", "check", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_config_check_reports_plain_http_to_another_host(tmp_path: Path) -> None:
    bad = _config(tmp_path, "http://192.168.1.55:8080")
    out = _check(str(bad))
    assert out.returncode == 2, out.stdout
    assert "cloud.url" in out.stderr and "192.168.1.55" in out.stderr and "allow_insecure" in out.stderr
    assert _check(str(bad), "--allow-insecure").returncode == 0
    assert _check(str(_config(tmp_path, "http://192.168.1.55:8080", "allow_insecure = true\n"))).returncode == 0
    assert _check(str(_config(tmp_path, "http://127.0.0.1:8080"))).returncode == 0
    assert _check(str(_config(tmp_path, "https://cloud.example.com"))).returncode == 0
