"""The OCPP 1.6J listener: chargers connect to ws(s)://HOST:PORT/ocpp/<charge point id>.

The handshake is where strangers are turned away: an unknown path or charge point id gets HTTP
404, a wrong or missing password (security profile 1, HTTP basic auth, user = the id) HTTP 401,
a client that does not offer subprotocol `ocpp1.6` HTTP 400 (websockets' negotiation). Each is
counted and logged once per id. With `tls_cert` the listener speaks TLS (security profile 2).
A second connection of the same charge point replaces the first (a charger that reconnected
before its old TCP connection timed out).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import itertools
import ssl
import time
from pathlib import Path

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHeader
from websockets.headers import build_www_authenticate_basic, parse_authorization_basic
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from drivers.api import ReadingSink
from drivers.config_structs import OcppDevice
from drivers.health import DeviceHealth, HealthState
from drivers.ocpp.charge_point import BOOT_WAIT_S, MAX_LOGGED_KINDS, ChargePointSession, OcppConnector, _Link
from drivers.resilience import Backoff
from zapd.clock import Clock
from zapd.model import DerCapabilities

log = structlog.get_logger(__name__)

PATH_PREFIX = "/ocpp/"
MAX_WAKE_S = 30.0  # the worker looks at the live profiles' age at least this often
LEAVE_SAFE_S = 3.0  # within the daemon's 5 s for stopping tasks
MAX_MESSAGE_BYTES = 64 * 1024  # the largest OCPP 1.6 message a charger sends is a few kB
COUNTER_NAMES = (
    "connections", "refused_unknown", "refused_auth", "malformed", "rate_limited", "calls", "call_timeouts",
    "call_errors", "calls_refused", "values_rejected", "meter_values", "readings", "commands", "commands_refused",
    "command_errors", "profiles_sent", "profiles_refused", "verify_mismatch", "boots", "transactions",
)  # fmt: skip


class OcppServer:
    """Driver for every charge point of one `ocpp` device: the listener owns their connections."""

    def __init__(self, config: OcppDevice, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        # Transaction ids stay unique across zapd restarts: they start from the wall clock.
        self._tx = itertools.count(int(time.time()) % 1_000_000_000)
        self.sessions = {
            cp.id: ChargePointSession(
                device_id=config.id,
                config=cp,
                clock=clock,
                counters=self.counters,
                heartbeat_s=config.heartbeat_s,
                meter_interval_s=config.meter_interval_s,
                call_timeout_s=config.call_timeout_s,
                profile_validity_s=config.profile_validity_s,
                tx_ids=lambda: next(self._tx),
            )
            for cp in config.charge_points
        }
        self._logged_refusals: set[tuple[str, str]] = set()
        self.port: int | None = None  # the bound port once listening (config port 0 in tests)
        self.listening = asyncio.Event()
        # ok while every configured charge point is connected; connecting while any is away.
        self._health = DeviceHealth(config.id, clock, event_prefix="ocpp")

    @property
    def name(self) -> str:
        return self._config.id

    @property
    def health(self) -> DeviceHealth:
        return self._health

    def _update_health(self) -> None:
        away = [cp_id for cp_id, s in self.sessions.items() if not s.connected]
        if away:
            reason = f"listening on port {self.port}; not connected: {', '.join(away)}"
            if self._health.healthy:  # one that was there left: an outage, logged once
                self._health.failed(reason, HealthState.CONNECTING)
            else:
                self._health.connecting(reason)
        else:
            self._health.ok()

    def capabilities(self) -> list[DerCapabilities]:
        return [cap for s in self.sessions.values() for cap in s.capabilities()]

    def actuators(self) -> dict[str, OcppConnector]:
        return {conn.der_id: OcppConnector(s, n) for s in self.sessions.values() for n, conn in s.connectors.items()}

    async def _leave_safe(self) -> None:
        live = [s for s in self.sessions.values() if s.link is not None and s.setup_done]
        await asyncio.gather(*(_leave_one_safe(s) for s in live), return_exceptions=True)

    def connected(self) -> list[str]:
        """Charge point ids with a live connection (for status and scan)."""
        return [cp_id for cp_id, s in self.sessions.items() if s.connected]

    # ---- handshake ----

    def _refuse(self, connection: ServerConnection, status: http.HTTPStatus, cp_id: str, why: str) -> Response:
        key = (cp_id, why)
        if key not in self._logged_refusals and len(self._logged_refusals) < MAX_LOGGED_KINDS:
            self._logged_refusals.add(key)
            peer = connection.remote_address[0] if connection.remote_address else "?"
            log.warning("ocpp.connection_refused", device=self.name, charge_point=cp_id, reason=why, peer=peer)
        response = connection.respond(status, f"{why}\n")
        if status is http.HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = build_www_authenticate_basic(f"zapd {self.name}")
        return response

    def _password(self, session: ChargePointSession) -> str | None:
        cp = session.config
        if cp.password_file is None:
            return cp.password
        try:
            return Path(cp.password_file).read_text().splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            session.log_once(
                "password_file", "ocpp.password_file_unreadable", path=str(cp.password_file), error=str(exc)
            )
            return ""  # no password matches: refuse rather than let anyone in

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        cp_id = path[len(PATH_PREFIX) :] if path.startswith(PATH_PREFIX) else ""
        session = self.sessions.get(cp_id)
        if session is None:
            self.counters["refused_unknown"] += 1
            return self._refuse(connection, http.HTTPStatus.NOT_FOUND, cp_id or path[:64], "unknown charge point id")
        expected = self._password(session)
        if expected is None:
            return None  # security profile 0: configured without a password
        problem = _check_basic_auth(request.headers, cp_id, expected)
        if problem is not None:
            self.counters["refused_auth"] += 1
            return self._refuse(connection, http.HTTPStatus.UNAUTHORIZED, cp_id, problem)
        return None

    # ---- connections ----

    async def _handle(self, ws: ServerConnection) -> None:
        cp_id = ws.request.path.split("?", 1)[0][len(PATH_PREFIX) :] if ws.request is not None else ""
        session = self.sessions[cp_id]
        old = session.link
        if old is not None:
            session.count("replaced_connections")
            await old._connection.close(code=1001, reason="replaced by a new connection")
        link = _Link(session, ws)
        session.link = link
        session.setup_done = False
        self.counters["connections"] += 1
        self._update_health()
        log.info("ocpp.connected", device=self.name, charge_point=cp_id, peer=str(ws.remote_address))
        reader = asyncio.create_task(link.start(), name=f"ocpp-read:{cp_id}")
        worker = asyncio.create_task(self._work(session, link), name=f"ocpp-work:{cp_id}")
        emitter = asyncio.create_task(self._emit(session), name=f"ocpp-emit:{cp_id}")
        try:
            await asyncio.wait({reader, worker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, worker, emitter):
                task.cancel()
            await asyncio.gather(reader, worker, emitter, return_exceptions=True)
            if session.link is link:
                session.link = None
                session.setup_done = False
                log.info("ocpp.disconnected", device=self.name, charge_point=cp_id, code=ws.close_code)
                self._update_health()
        for task in (reader, worker):
            exc = task.exception() if task.done() and not task.cancelled() else None
            if exc is not None and not isinstance(exc, ConnectionClosed):
                session.count("link_failures")
                session.log_once(f"link:{type(exc).__name__}", "ocpp.link_failed", error=repr(exc))

    async def _work(self, session: ChargePointSession, link: _Link) -> None:
        """Set the charger up once it is registered, then keep the live profiles valid."""
        try:
            async with asyncio.timeout(BOOT_WAIT_S):
                await link.heard.wait()
        except TimeoutError:
            pass  # a charger that says nothing still gets its safe profile
        link.booted.clear()  # this setup covers the boot that got us here; only a later one means a reboot
        await session.setup()
        while True:
            interval = session.profile_validity_s / 3
            booted = asyncio.ensure_future(link.booted.wait())
            queued = asyncio.ensure_future(link.work.get())
            try:
                done, _ = await asyncio.wait(
                    {booted, queued}, timeout=min(interval, MAX_WAKE_S), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                booted.cancel()
                queued.cancel()
            if booted in done:
                link.booted.clear()  # it rebooted while connected: profiles and settings are gone
                await session.setup()
            if queued in done:
                conn = session.connectors.get(queued.result())
                if conn is not None:
                    await session.send_live(conn)
            await session.keepalive()

    async def _emit(self, session: ChargePointSession) -> None:
        """While connected, repeat each connector's state once per meter interval: silence means it is gone."""
        while True:
            for conn in session.connectors.values():
                session.emit(conn, force=True)
            await self._clock.sleep(session.meter_interval_s)

    # ---- driver ----

    def _ssl(self) -> ssl.SSLContext | None:
        if self._config.tls_cert is None or self._config.tls_key is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # OCPP 1.6 security profile 2: TLS 1.2 or higher
        ctx.load_cert_chain(self._config.tls_cert, self._config.tls_key)
        return ctx

    async def _serve(self) -> Server:
        return await serve(
            self._handle,
            self._config.host,
            self._config.port,
            subprotocols=[Subprotocol("ocpp1.6")],
            process_request=self.process_request,
            ssl=self._ssl(),
            max_size=MAX_MESSAGE_BYTES,
            max_queue=32,
            ping_interval=30,
            ping_timeout=30,
            open_timeout=10,
            close_timeout=5,
            compression=None,
        )

    async def run(self, sink: ReadingSink) -> None:
        for session in self.sessions.values():
            session.sink = sink
        backoff = Backoff(1.0, 60.0)
        last_error = ""
        while True:
            try:
                server = await self._serve()
            except (OSError, ssl.SSLError, ValueError) as exc:
                self.counters["listen_failures"] = self.counters.get("listen_failures", 0) + 1
                if str(exc) != last_error:  # once per distinct cause; retries in between are silent
                    last_error = str(exc)
                    log.error("ocpp.listen_failed", device=self.name, host=self._config.host,
                              port=self._config.port, error=last_error, retrying=True)  # fmt: skip
                where = f"{self._config.host}:{self._config.port}"
                self._health.failed(f"cannot listen on {where}: {exc}", HealthState.UNUSABLE)
                await asyncio.sleep(backoff.next_delay())
                continue
            last_error = ""
            backoff.reset()
            self.port = int(next(iter(server.sockets)).getsockname()[1])
            log.info("ocpp.listening", device=self.name, host=self._config.host, port=self.port,
                     tls=self._config.tls_cert is not None, charge_points=list(self.sessions))  # fmt: skip
            open_cps = [
                s.id for s in self.sessions.values() if s.config.password is None and s.config.password_file is None
            ]
            if open_cps:
                log.warning("ocpp.no_authentication", device=self.name, charge_points=open_cps,
                            hint="any client that knows the id gets in: set password or password_file")  # fmt: skip
            self.listening.set()
            self._update_health()
            try:
                # Not serve_forever(): cancelling it closes every connection before the chargers are safe.
                await asyncio.get_running_loop().create_future()
            finally:
                self.listening.clear()
                # Stopping (or restarting): every connected charger gets its safe current while the
                # connection still exists; its own fallback (validTo) covers the rest.
                leave = asyncio.ensure_future(self._leave_safe())
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(asyncio.shield(leave), LEAVE_SAFE_S)
                server.close()
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(asyncio.shield(server.wait_closed()), LEAVE_SAFE_S)


async def _leave_one_safe(session: ChargePointSession) -> None:
    for number in session.connectors:
        await session.safe_mode(number)


def _check_basic_auth(headers: Headers, user: str, password: str) -> str | None:
    """None when the Authorization header carries this user and password, else why not (never the password)."""
    try:
        raw = headers["Authorization"]
    except KeyError:
        return "missing credentials"
    try:
        got_user, got_password = parse_authorization_basic(raw)
    except InvalidHeader:
        return "unsupported credentials"
    ok_user = hmac.compare_digest(got_user.encode(errors="surrogateescape"), user.encode())
    ok_password = hmac.compare_digest(got_password.encode(errors="surrogateescape"), password.encode())
    return None if ok_user and ok_password else "wrong user or password"
