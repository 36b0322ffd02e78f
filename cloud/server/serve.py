"""`zapcloud serve`: load or create the cloud key, then run the API under uvicorn."""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from sqlalchemy.exc import ArgumentError

from cloud.server.app import create_app
from cloud_sync.keys import KeyFileError, key_id, load_or_create_signing_key, public_key_b64
from cloud_sync.wire import MAX_REQUEST_SKEW_S
from zapd.clock import clock_from_env
from zapd.logs import configure as configure_logging


def run_serve(
    *, db_url: str, host: str, port: int, key_path: str, planner: bool = True, planner_idle_s: float = 5.0
) -> int:
    """Run until SIGINT/SIGTERM. Exit 0 after a clean stop, 1 if it could not start, 2 on bad input."""
    configure_logging()
    try:
        key = load_or_create_signing_key(Path(key_path))
    except (KeyFileError, OSError) as exc:
        print(f"zapcloud: {exc}", file=sys.stderr)
        return 2
    # The Zap pins this key in its config; printing it is the supported way to learn it.
    print(f"zapcloud: cloud public key {public_key_b64(key)} key_id {key_id(key)}", flush=True)
    try:
        sim_clock = clock_from_env()  # the real clock unless an e2e test shares a fast one
    except ValueError as exc:
        print(f"zapcloud: {exc}", file=sys.stderr)
        return 2
    try:
        app = create_app(
            db_url,
            key,
            clock=sim_clock.now,
            planner=planner,
            planner_idle_s=planner_idle_s,
            # The allowed skew of a signed request is real time; on a sped-up test clock it scales.
            max_request_skew_s=MAX_REQUEST_SKEW_S * sim_clock.speed,
        )
    except (ArgumentError, ValueError) as exc:
        print(f"zapcloud: --db: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"zapcloud: --db: database driver not installed: {exc.name or exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
        proxy_headers=False,
        server_header=False,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
