"""`zapcloud serve`: check the credentials and the database file, load or create the cloud key, then
run the API under uvicorn with the connection and time limits of cloud/server/limits.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import uvicorn
from sqlalchemy.exc import ArgumentError

from cloud.db import DatabaseFileError, secure_sqlite_file
from cloud.planner_settings import PlannerSettings
from cloud.server.app import create_app
from cloud.server.auth import ADMIN_TOKEN_ENV, METRICS_TOKEN_ENV, TokenError, resolve_token
from cloud.server.limits import Limits
from cloud.server.protocol import uvicorn_options
from cloud_sync.keys import KeyFileError, key_id, load_or_create_signing_key, public_key_b64
from cloud_sync.wire import MAX_REQUEST_SKEW_S
from zapd.clock import clock_from_env
from zapd.logs import configure as configure_logging

# Open files beyond the connections and channels: the listening socket, the database pool and its files,
# the PostgreSQL doorbell, logs.
FD_MARGIN = 64


def raise_fd_limit(limits: Limits) -> str | None:
    """Raise this process's soft limit on open files to what `limits` can hold open, up to the hard limit.

    A channel is a socket: a worker started under the usual soft limit of 1024 (a shell, a systemd unit
    without LimitNOFILE) would run out of descriptors at ~1,000 Zaps while `max_channels` says 20,000,
    and asyncio then stops accepting for a second at a time, every new Zap failing, the API too. Returns
    a warning when even the hard limit is below what the limits need (the operator lowers
    --max-channels or raises the hard limit), else None.
    """
    import resource

    need = limits.max_channels + limits.max_connections + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < need:
        return (
            f"open files limit {hard} is below what --max-channels {limits.max_channels} and "
            f"--max-connections {limits.max_connections} need ({need}); raise the hard limit (LimitNOFILE) "
            "or lower --max-channels"
        )
    return None


def _fail(message: str) -> int:
    print(f"zapcloud: {message}", file=sys.stderr)
    return 2


def run_serve(
    *,
    db_url: str,
    host: str,
    port: int,
    key_path: str,
    admin_token_file: str | None = None,
    metrics_token_file: str | None = None,
    limits: Limits | None = None,
    planner: bool = True,
    planner_idle_s: float = 5.0,
    planner_settings: PlannerSettings | None = None,
) -> int:
    """Run until SIGINT/SIGTERM. Exit 0 after a clean stop, 1 if it could not start, 2 on bad input."""
    configure_logging()
    # Every file we create (database, its -wal/-shm, the key) is for zapcloud's user only.
    os.umask(0o077)
    try:
        admin_token = resolve_token(admin_token_file, ADMIN_TOKEN_ENV, "admin token", required=True)
        metrics_token = resolve_token(metrics_token_file, METRICS_TOKEN_ENV, "metrics token", required=False)
    except TokenError as exc:
        return _fail(str(exc))
    assert admin_token is not None
    try:
        secure_sqlite_file(db_url)
    except DatabaseFileError as exc:
        return _fail(f"--db: {exc}")
    except ArgumentError as exc:
        return _fail(f"--db: {exc}")
    try:
        key = load_or_create_signing_key(Path(key_path))
    except (KeyFileError, OSError) as exc:
        return _fail(str(exc))
    # The Zap pins this key in its config; printing it is the supported way to learn it.
    print(f"zapcloud: cloud public key {public_key_b64(key)} key_id {key_id(key)}", flush=True)
    try:
        sim_clock = clock_from_env()  # the real clock unless an e2e test shares a fast one
    except ValueError as exc:
        return _fail(str(exc))
    limits = limits or Limits()
    fd_warning = raise_fd_limit(limits)
    if fd_warning is not None:
        print(f"zapcloud: warning: {fd_warning}", file=sys.stderr, flush=True)
    # the planner's options load pvlib and LightGBM: only in a worker that plans
    planner_options = (planner_settings or PlannerSettings()).options() if planner else None
    try:
        app = create_app(
            db_url,
            key,
            admin_token=admin_token,
            metrics_token=metrics_token,
            limits=limits,
            clock=sim_clock.now,
            planner=planner,
            planner_idle_s=planner_idle_s,
            planner_options=planner_options,
            # The allowed skew of a signed request is real time; on a sped-up test clock it scales,
            # and so do the request rates (a Zap on that clock uploads that much more often).
            max_request_skew_s=MAX_REQUEST_SKEW_S * sim_clock.speed,
            rate_scale=sim_clock.speed,
        )
    except (ArgumentError, ValueError) as exc:
        return _fail(f"--db: {exc}")
    except ImportError as exc:
        return _fail(f"--db: database driver not installed: {exc.name or exc}")
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        timeout_graceful_shutdown=10,
        proxy_headers=False,
        server_header=False,
        **uvicorn_options(limits, app.state.metrics),
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
