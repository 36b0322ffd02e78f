"""zapctl's failures are one line on stderr and exit 1, whatever the socket does."""

from __future__ import annotations

from typing import Any

import pytest

from zapd import zapctl


class _FailingSocket:
    error: BaseException = OSError()

    def __init__(self, *args: Any) -> None:
        pass

    def settimeout(self, value: float) -> None:
        pass

    def connect(self, address: str) -> None:
        raise self.error

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("error", "needle"),
    [
        (PermissionError(13, "Permission denied"), "permission denied on /x.sock (join the zapd group"),
        (FileNotFoundError(2, "No such file"), "socket /x.sock not found"),
        (ConnectionRefusedError(111, "refused"), "connection refused on /x.sock"),
        (TimeoutError(), "did not accept the connection"),
        (OSError(22, "Invalid argument"), "cannot reach zapd on /x.sock: Invalid argument"),
    ],
)
def test_connect_errors_are_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: BaseException, needle: str
) -> None:
    failing = type("F", (_FailingSocket,), {"error": error})
    monkeypatch.setattr(zapctl.socket, "socket", failing)
    assert zapctl.main(["status", "--socket", "/x.sock"]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 1 and out.err.startswith("zapctl: ") and needle in out.err


def test_an_api_error_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(self: zapctl.ApiClient, message: dict[str, Any]) -> dict[str, Any]:
        return zapctl._data({"ok": False, "code": "bad_request", "error": "minutes must be in (0, 1440]"})

    monkeypatch.setattr(zapctl.ApiClient, "request", refuse)
    assert zapctl.main(["fallback", "force", "safe_hold", "--for", "9999"]) == 1
    err = capsys.readouterr().err
    assert err == "zapctl: zapd refused: minutes must be in (0, 1440] (bad_request)\n"


def test_socket_option_before_or_after_the_command_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def record(self: zapctl.ApiClient, message: dict[str, Any]) -> dict[str, Any]:
        seen.append(self.path)
        return {"devices": []}

    monkeypatch.setattr(zapctl.ApiClient, "request", record)
    monkeypatch.setenv("ZAPD_SOCKET", "/env.sock")
    assert zapctl.main(["devices"]) == 0
    assert zapctl.main(["--socket", "/a.sock", "devices"]) == 0
    assert zapctl.main(["devices", "--socket", "/b.sock", "--json"]) == 0
    monkeypatch.delenv("ZAPD_SOCKET")
    assert zapctl.main(["devices"]) == 0
    assert seen == ["/env.sock", "/a.sock", "/b.sock", zapctl.DEFAULT_SOCKET]
