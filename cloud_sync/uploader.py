"""Store-and-forward telemetry upload: the outbox goes up in order, exactly once.

At-least-once delivery from here (the acknowledged position moves only on the server's
answer, and survives restarts in the store) plus the server's idempotency by (site, seq)
gives exactly-once storage, in order. Batches are built by splicing the stored JSON of each
reading instead of decoding and re-encoding it: that keeps a drain of a long outage fast.

The outbox is deleted only on an answer the Zap can trust and that makes sense: signed by
the pinned cloud key for this site (cloud_sync.wire.verify_ack), with a stored_through that
lies between the start of the batch and the highest seq the Zap has ever sent
(`ack_range_problem`). Anything else is a protocol error: counted, logged once per reason,
the link is not up, and nothing is deleted (issue 10: a forged `{"stored_through": 1e18}`
emptied the outbox).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import datetime

import httpx
import msgspec
import structlog
from nacl.signing import SigningKey, VerifyKey

from cloud_sync.link import LinkStatus
from cloud_sync.transport import MAX_ACK_BYTES, Answer, request_limited
from cloud_sync.wire import (
    HEADER_SIGNATURE,
    MAX_BATCH_READINGS,
    AckRejected,
    AckRejectReason,
    CommandReport,
    DiscoveryReport,
    WireError,
    command_problem,
    gzip_body,
    sign_body,
    signed_request_body,
    verify_ack,
    wire_safe_capabilities,
)
from drivers.resilience import Backoff, FailureLatch
from zapd.bounds import check_ts
from zapd.clock import Clock
from zapd.model import Command, DerCapabilities
from zapd.store import CommandLogRow, OutboxRow, Store

log = structlog.get_logger(__name__)

_command_decoder = msgspec.json.Decoder(Command)


class UploadRejected(Exception):
    """The server refused a batch for a reason re-sending will not fix by itself (401/422)."""


REFUSED_KEY = "sync.refused_by_cloud"
# The highest seq the Zap has ever sent: a signed ACK may confirm up to it (an earlier, larger batch
# whose answer was lost), never beyond.
SENT_THROUGH_KEY = "sync.sent_through"
# A reading the cloud refuses on its own is skipped (declared lost) so that it cannot block the
# outbox; this many in a row, with nothing accepted in between, is no longer one bad reading but a
# cloud that refuses everything (a version mismatch, a bug): then the uploader stops skipping and
# waits, keeping the readings, with the reason on the link status.
MAX_SKIPS_IN_ROW = 10


def ack_range_problem(
    stored: int, *, first_seq: int, last_seq: int, sent_through: int, gap: bool
) -> tuple[AckRejectReason, str] | None:
    """Why the Zap must not act on `stored` as the answer to the batch first_seq..last_seq, or None.

    200: first_seq - 1 <= stored <= the highest seq ever sent. Below, the server says it took the
    batch yet stands before it; above, it confirms readings it was never sent.
    409 (gap): 0 <= stored < first_seq - 1, the server is behind and the Zap re-sends from there;
    a gap answer at or past the batch start contradicts itself.
    """
    high = max(last_seq, sent_through)
    if stored > high:
        return "ahead", f"stored_through {stored} is past {high}, the highest seq sent"
    if gap:
        if stored < 0:
            return "behind", f"409 with stored_through {stored} < 0"
        if stored >= first_seq - 1:
            return "not_a_gap", f"409 with stored_through {stored}, but the batch starts at {first_seq}"
        return None
    if stored < first_seq - 1:
        return "behind", f"200 with stored_through {stored}, before the batch start {first_seq}"
    return None


def _content_refusal(resp: Answer) -> bool:
    """True when the server refused the batch for what it holds (so a smaller batch may pass)."""
    if resp.status_code == 413:
        return True
    if resp.status_code != 422:
        return False
    try:
        body = msgspec.json.decode(resp.content)
    except msgspec.DecodeError:
        return False
    return isinstance(body, dict) and body.get("error") == "malformed"


def batch_body(site_id: str, rows: list[OutboxRow], commands: list[CommandReport], lost_through: int | None) -> bytes:
    """The TelemetryBatch JSON, with each stored reading spliced in with its sequence number."""
    parts = [b'{"seq":%d,%s' % (row.seq, row.body[1:]) for row in rows]
    head = msgspec.json.encode(
        {"site_id": site_id, "first_seq": rows[0].seq, "last_seq": rows[-1].seq, "lost_through": lost_through}
    )
    tail = b',"commands":' + msgspec.json.encode(commands) + b',"readings":[' + b",".join(parts) + b"]}"
    return head[:-1] + tail


def command_reports(rows: list[CommandLogRow]) -> list[CommandReport]:
    out = []
    for row in rows:
        try:
            command = _command_decoder.decode(row.command)
        except msgspec.DecodeError:
            continue  # a row from an older schema (or a NaN stored as null): the command log keeps it locally
        ts = datetime.fromisoformat(row.ts)
        if command_problem(command) is not None or check_ts(ts) is not None:
            continue  # the cloud would refuse the whole batch for it: it stays in the local command log
        out.append(
            CommandReport(
                ts=ts,
                der_id=row.der_id,
                command=command,
                result="ok" if row.ok else (row.detail or "failed"),
                clamped_reason=row.clamped_reason or None,
            )
        )
    return out


class Uploader:
    def __init__(
        self,
        *,
        store: Store,
        client: httpx.AsyncClient,
        site_id: str,
        key: SigningKey,
        clock: Clock,
        link: LinkStatus,
        interval_s: float = 10.0,
        batch_max: int = 5000,
        compress: bool = True,
        capabilities: Callable[[], list[DerCapabilities]] | None = None,
        cloud_key: VerifyKey | None = None,
    ) -> None:
        """`cloud_key`: the pinned cloud key; when given (the daemon always gives it) every ACK must
        be signed by it. Without it only the format and the range of an ACK are checked."""
        self._store = store
        self._client = client
        self._site_id = site_id
        self._key = key
        self._clock = clock
        self._link = link
        self._interval_s = interval_s
        self._batch_max = min(batch_max, MAX_BATCH_READINGS)
        self._compress = compress
        self._capabilities = capabilities
        self._reported_caps: bytes | None = None
        self._cursor: int | None = None
        self._backoff = Backoff(1.0, 300.0)
        self._store_latch = FailureLatch(log, "upload.store_failed", "upload.store_recovered")
        # After a refused batch: send smaller ones (halving down to one reading) until the one the
        # cloud refuses is found and skipped; grows back on success.
        self._limit = self._batch_max
        # While narrowing down: the refused reading lies at or before this seq (a binary search, one POST a step).
        self._suspect_through: int | None = None
        self._skip_through = 0  # readings up to here that the cloud refused alone: declared lost
        self._skips_in_row = 0
        self._pending_skips = 0  # skipped readings the cloud has not yet confirmed as lost
        self._without_commands = False  # the last batch was refused with command reports attached
        self._refused_with: tuple[int, int, int] | None = None  # (first seq, last seq, last command id)
        self.refused_by_cloud = 0
        self._discovery_error = ""
        self._cloud_key = cloud_key
        self._sent_through: int | None = None
        self.acks_rejected: dict[str, int] = {}
        self._logged_ack_reasons: set[str] = set()
        self._ready: asyncio.Event | None = None  # set by data_ready(): None until a writer says it will call it

    def data_ready(self) -> None:
        """New readings are in the outbox (zapd.telemetry_writer calls this after each flush).

        Once called, a round starts when both the interval since the last round's start has passed
        and new readings are there (or a second interval has passed: command reports, a quiet site),
        so the upload follows the write instead of drifting up to an interval against it. The
        interval stays the bound on the upload rate.
        """
        if self._ready is None:
            self._ready = asyncio.Event()
        self._ready.set()

    async def _pause(self, started: datetime) -> None:
        elapsed = (self._clock.now() - started).total_seconds()
        await self._clock.sleep(self._interval_s - elapsed)
        ready = self._ready
        if ready is None or ready.is_set():
            return
        waiter = asyncio.ensure_future(ready.wait())
        timer = asyncio.ensure_future(self._clock.sleep(self._interval_s))
        try:
            await asyncio.wait((waiter, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            timer.cancel()

    @property
    def path(self) -> str:
        return f"/v1/sites/{self._site_id}/telemetry"

    async def report_discovery(self) -> bool:
        """Send the DER set when it changed since the last successful report."""
        if self._capabilities is None:
            return False
        # A nameplate that is not a number must not make the cloud refuse the report (and, with it, the site's DERs).
        ders = [wire_safe_capabilities(c) for c in self._capabilities()]
        encoded = msgspec.json.encode(ders)
        if encoded == self._reported_caps or not ders:
            return False
        body, headers = signed_request_body(self._key, DiscoveryReport(site_id=self._site_id, ders=ders))
        resp = await self._client.post(f"/v1/sites/{self._site_id}/discovery", content=body, headers=headers)
        if resp.status_code >= 300:
            raise UploadRejected(f"discovery: HTTP {resp.status_code}: {resp.text[:200]}")
        self._reported_caps = encoded
        log.info("upload.discovery_reported", ders=len(ders))
        return True

    async def _report_discovery_apart(self) -> None:
        """Discovery is sent before telemetry, but its failure must not hold the telemetry back."""
        try:
            await self.report_discovery()
        except (UploadRejected, WireError) as exc:
            if str(exc) != self._discovery_error:
                self._discovery_error = str(exc)
                log.warning("upload.discovery_refused", error=str(exc)[:300])
        else:
            self._discovery_error = ""

    async def upload_once(self) -> int:
        """Send one batch; returns how many readings the server newly acknowledged (0 = drained).

        A batch the cloud refuses for its content (422 malformed, 413) never blocks the outbox: it is
        re-sent without its command reports, then in halves, until the one reading the cloud refuses
        alone is found; that one is skipped (declared lost through `lost_through`, counted, logged).
        """
        if self._cursor is None:
            self._cursor = await self._store.acked_seq()
        while True:
            # Retention waits while a batch is read, sent and acknowledged (zapd.store.Store.sending).
            async with self._store.sending:
                sent = await self._upload_batch()
            if sent is not None:
                return sent

    async def _upload_batch(self) -> int | None:
        """One batch out and its answer recorded; None when it was refused and is to be narrowed down."""
        assert self._cursor is not None
        rows = await self._store.outbox_after(max(self._cursor, self._skip_through), self._limit)
        if not rows:
            return 0
        lost_through = rows[0].seq - 1 if rows[0].seq > self._cursor + 1 else None
        command_rows = [] if self._without_commands else await self._store.unsent_commands(limit=1000)
        resp, sent_through = await self._post(rows, command_rows, lost_through)
        if resp.status_code == 409:
            # The server is missing what comes before this batch: continue from where it stands.
            stored = self._checked_ack(resp, rows, sent_through)
            log.warning("upload.gap", server_stored_through=stored, our_cursor=self._cursor)
            if stored < self._cursor:
                # What lay between is to be re-sent, not declared lost with a skip.
                self._skip_through = self._pending_skips = 0
            self._cursor = min(stored, self._cursor)
            return 0
        if _content_refusal(resp):
            await self._refused(rows, command_rows, resp)
            return None
        if resp.status_code != 200:
            raise UploadRejected(f"HTTP {resp.status_code}: {resp.text[:200]}")
        stored = self._checked_ack(resp, rows, sent_through)
        before = max(self._cursor, lost_through or 0)  # declared lost is not uploaded
        await self._store.ack_through(stored)
        if command_rows:
            await self._store.mark_commands_uploaded(command_rows[-1].id)
        elif self._refused_with is not None and self._refused_with[:2] == (rows[0].seq, rows[-1].seq):
            # The same readings passed without the command reports they were refused with: those are
            # at fault. They stay in the local command log; the cloud will not get them.
            log.error("upload.command_reports_refused", through_id=self._refused_with[2])
            await self._store.mark_commands_uploaded(self._refused_with[2])
        self._without_commands, self._refused_with = False, None
        if self._pending_skips and lost_through is not None:
            # The cloud took the batch that declared the skipped readings lost: now they are.
            self.refused_by_cloud += self._pending_skips
            total = int(await self._store.kv_get(REFUSED_KEY) or 0) + self._pending_skips
            await self._store.kv_set(REFUSED_KEY, str(total))
            log.warning("upload.readings_declared_lost", count=self._pending_skips, through=lost_through,
                        refused_by_cloud_total=total)  # fmt: skip
        self._pending_skips = 0
        self._skips_in_row = 0
        if self._suspect_through is not None and rows[-1].seq < self._suspect_through:
            # This half went through: the refused reading is in the rest; try the first half of that next.
            self._limit = max(1, (self._suspect_through - rows[-1].seq + 1) // 2)
        else:
            self._suspect_through, self._limit = None, self._batch_max
        self._cursor = max(self._cursor, stored)
        return max(0, self._cursor - before)

    async def _post(
        self, rows: list[OutboxRow], command_rows: list[CommandLogRow], lost: int | None
    ) -> tuple[Answer, int]:
        """Send one batch; returns the answer and the highest seq ever sent (this batch included)."""
        body = batch_body(self._site_id, rows, command_reports(command_rows), lost)
        headers = {**sign_body(self._key, body), "Content-Type": "application/json"}
        if self._compress:
            headers["Content-Encoding"] = "gzip"
            body = gzip_body(body)
        sent_through = await self._mark_sent(rows[-1].seq)
        answer = await request_limited(
            self._client, "POST", self.path, limit=MAX_ACK_BYTES, content=body, headers=headers
        )
        return answer, sent_through

    async def _mark_sent(self, last_seq: int) -> int:
        """Persist the sent high-water mark before the batch leaves (an ACK may confirm up to it later)."""
        if self._sent_through is None:
            try:
                self._sent_through = int(await self._store.kv_get(SENT_THROUGH_KEY) or 0)
            except ValueError:
                self._sent_through = 0
        if last_seq > self._sent_through:
            await self._store.kv_set(SENT_THROUGH_KEY, str(last_seq))
            self._sent_through = last_seq
        return self._sent_through

    def _checked_ack(self, resp: Answer, rows: list[OutboxRow], sent_through: int) -> int:
        """stored_through of a 200/409 answer the Zap may act on; else AckRejected (counted, logged once)."""
        try:
            ack = verify_ack(resp.content, resp.headers.get(HEADER_SIGNATURE), self._cloud_key, site_id=self._site_id)
            problem = ack_range_problem(ack.stored_through, first_seq=rows[0].seq, last_seq=rows[-1].seq,
                                        sent_through=sent_through, gap=resp.status_code == 409)  # fmt: skip
            if problem is not None:
                raise AckRejected(*problem)
        except AckRejected as exc:
            self.acks_rejected[exc.reason] = self.acks_rejected.get(exc.reason, 0) + 1
            if exc.reason not in self._logged_ack_reasons:
                self._logged_ack_reasons.add(exc.reason)
                log.error("upload.ack_rejected", reason=exc.reason, detail=exc.detail, status=resp.status_code,
                          batch=f"{rows[0].seq}..{rows[-1].seq}", keeping="outbox")  # fmt: skip
            raise
        self._logged_ack_reasons.clear()
        return ack.stored_through

    async def _refused(self, rows: list[OutboxRow], command_rows: list[CommandLogRow], resp: Answer) -> None:
        """Narrow a refused batch down: without commands, then halves, then skip the one reading."""
        detail = resp.text[:200]
        if command_rows:
            self._without_commands = True
            self._refused_with = (rows[0].seq, rows[-1].seq, command_rows[-1].id)
            log.warning("upload.batch_refused", readings=len(rows), retry="without command reports", detail=detail)
            return
        if len(rows) > 1:
            self._suspect_through = rows[-1].seq
            self._limit = max(1, len(rows) // 2)
            log.warning("upload.batch_refused", readings=len(rows), retry=f"batches of {self._limit}", detail=detail)
            return
        if self._skips_in_row >= MAX_SKIPS_IN_ROW:
            # Not one bad reading but a cloud that refuses them all: declare nothing lost, wait with the outbox.
            self._skip_through = self._pending_skips = 0
            raise UploadRejected(
                f"the cloud refused {self._skips_in_row + 1} readings in a row one by one; not skipping more "
                f"(seq {rows[0].seq}): {detail}"
            )
        seq = rows[0].seq
        self._skip_through = seq
        self._suspect_through, self._limit = None, self._batch_max  # found: full batches again
        self._skips_in_row += 1
        self._pending_skips += 1
        log.error("upload.reading_refused", seq=seq, reading=rows[0].body[:300].decode("utf-8", "replace"),
                  detail=detail)  # fmt: skip

    async def drain(self) -> int:
        """Upload until the outbox is empty; returns readings sent."""
        total = 0
        while True:
            sent = await self.upload_once()
            if sent == 0:
                return total
            total += sent

    async def run(self) -> None:
        while True:
            now = self._clock.now()
            if self._ready is not None:
                self._ready.clear()  # before the outbox is read: a flush from now on wakes the next round
            try:
                await self._report_discovery_apart()
                sent = await self.drain()
                self._link.ok(now, "upload")
                if sent:
                    self._link.last_upload = now
                    self._link.uploaded_readings += sent
                self._backoff.reset()
                await self._pause(now)
            except (httpx.HTTPError, UploadRejected, WireError, OSError) as exc:
                self._link.failed(now, "upload", f"{type(exc).__name__}: {exc}")
                await self._clock.sleep(self._backoff.next_delay())
            except sqlite3.Error as exc:
                # The local store (disk full) refused the ack or the read: a local problem, not the link's.
                # The cloud keeps what it stored; the next round re-sends the batch and it answers the same.
                self._store_latch.failed(error=str(exc))
                await self._clock.sleep(self._backoff.next_delay())
            else:
                self._store_latch.ok()
