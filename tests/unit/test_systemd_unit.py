"""The shipped unit keeps the promises docs/operations.md makes (notify, watchdog, hardening)."""

from __future__ import annotations

from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"

REQUIRED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "RestartSec": "5",
    "User": "zapd",
    "Group": "zapd",
    "SupplementaryGroups": "dialout",
    "StateDirectory": "zapd",
    "RuntimeDirectory": "zapd",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/zapd",
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "ExecStart": "/usr/bin/zapd run --config /etc/zapd/zapd.toml",
    "TimeoutStopSec": "30",
}


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """systemd's format, not INI: keys repeat and later lines add to earlier ones."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line}"
        current.append((key.strip(), value.strip()))
    return sections


def test_unit_has_the_required_service_keys() -> None:
    unit = parse_unit((SYSTEMD / "zapd.service").read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service: dict[str, list[str]] = {}
    for key, value in unit["Service"]:
        service.setdefault(key, []).append(value)
    for key, expected in REQUIRED.items():
        assert service.get(key) == [expected], f"Service.{key}: {service.get(key)} != [{expected!r}]"
    assert ("WantedBy", "multi-user.target") in unit["Install"]


@pytest.mark.parametrize(
    ("name", "needles"),
    [
        ("zapd.sysusers.conf", ["u     zapd", "m     zapd  dialout"]),
        ("zapd.tmpfiles.conf", ["/var/lib/zapd ", "/var/lib/zapd/keys   0700", "/run/zapd "]),
    ],
)
def test_sysusers_and_tmpfiles_snippets(name: str, needles: list[str]) -> None:
    text = (SYSTEMD / name).read_text()
    for needle in needles:
        assert needle in text
