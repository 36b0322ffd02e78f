"""A real HTTP server on loopback for tests that play the cloud: an ASGI app under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette

from tests.ports import free_port
from tests.waiting import wait_until


@contextlib.asynccontextmanager
async def serve_on_loopback(app: Starlette) -> AsyncIterator[str]:
    """Run `app` on 127.0.0.1 in this event loop; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started or task.done(), 5, "uvicorn started")  # it has no started event
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
