"""The aiomqtt client zapd uses: aiomqtt's own, with waits that keep a cancellation.

aiomqtt 2.5 waits for CONNACK, SUBACK, PUBACK and the disconnect through one method,
`Client._wait_for`, built on `asyncio.wait_for`, which on Python 3.11 can swallow a cancellation
(see zapd/cancellation.py). Wrapping that one method fixes every call at once, including the
ones inside `async with client`; aiomqtt is pinned to 2.5.x, and a unit test fails if the hook
moves.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import aiomqtt

from zapd.cancellation import honour_cancel

T = TypeVar("T")


class Client(aiomqtt.Client):
    """`aiomqtt.Client`; a task cancelled while it waits for the broker is cancelled, always."""

    async def _wait_for(self, fut: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109 (aiomqtt's signature)
        return await honour_cancel(super()._wait_for(fut, timeout))
