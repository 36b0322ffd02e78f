"""The cloud's web pages: a site's day (load, PV, grid, battery, SoC, plan vs actual, prices) and the fleet.

Server-rendered HTML with inline SVG charts: no JavaScript, no build step, nothing from a CDN. The data
comes from the GraphQL schema itself (`schema.execute` with the viewer's token), so a page shows exactly
what that token may read and nothing else.

Sign-in: site owners go through the same OAuth flow as any app (authorization code + PKCE, the built-in
public client `zapcloud-web`); the access token lands in an HttpOnly, SameSite=Lax cookie. The fleet page
is the operator's: it asks for the admin token once and keeps it in an HttpOnly, SameSite=Strict cookie.
Pages only read, so a forged cross-site request can change nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from cloud.dataapi.access import Access, AccessDenied, authenticate
from cloud.dataapi.graphql import schema
from cloud.dataapi.mount import WEB_CALLBACK
from cloud.dataapi.oauth import WEB_CLIENT, WEB_CLIENT_ID, FormRequest, OAuthEndpoints
from cloud.db import Database

TOKEN_COOKIE = "zc_token"
PKCE_COOKIE = "zc_pkce"
ADMIN_COOKIE = "zc_admin"
COLORS = {"grid": "#1f77b4", "pv": "#e6a700", "battery": "#2ca02c", "load": "#d62728", "soc": "#2ca02c",
          "plan": "#9467bd", "import": "#d62728", "export": "#1f77b4", "spot": "#555555"}  # fmt: skip

Series = tuple[str, str, list[tuple[float, float]]]  # label, colour, (hour of day, value)


# --- charts -----------------------------------------------------------------------------------


def svg_chart(title: str, unit: str, series: Sequence[Series], *, hours: float = 24.0, step: bool = False,
              width: int = 900, height: int = 220) -> str:  # fmt: skip
    """A line chart over one day as inline SVG (x: hour 0..24; y: auto range incl. 0)."""
    left, right, top, bottom = 56, 24, 26, 28
    pw, ph = width - left - right, height - top - bottom
    values = [v for _l, _c, pts in series for _t, v in pts]
    lo, hi = min([0.0, *values]), max([0.0, *values])
    if hi - lo < 1e-9:
        hi = lo + 1.0
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad if lo < 0 else lo, hi + pad

    def x(t: float) -> float:
        return left + pw * t / hours

    def y(v: float) -> float:
        return top + ph * (1 - (v - lo) / (hi - lo))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="16" font-weight="bold">{html.escape(title)} ({html.escape(unit)})</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>']  # fmt: skip
    for h in range(0, int(hours) + 1, 3):
        parts.append(f'<line x1="{x(h):.1f}" y1="{top}" x2="{x(h):.1f}" y2="{top + ph}" stroke="#eee"/>')
        parts.append(f'<text x="{x(h):.1f}" y="{height - 8}" text-anchor="middle" font-size="11">{h:02d}:00</text>')
    for frac in (0.0, 0.5, 1.0):
        v = lo + (hi - lo) * frac
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">{v:.3g}</text>')
    if lo < 0 < hi:
        parts.append(f'<line x1="{left}" y1="{y(0):.1f}" x2="{left + pw}" y2="{y(0):.1f}" stroke="#999"/>')
    legend_x = left + 8
    for label, color, pts in series:
        if pts:
            coords: list[str] = []
            for i, (t, v) in enumerate(pts):
                if step and i > 0:
                    coords.append(f"{x(t):.1f},{y(pts[i - 1][1]):.1f}")
                coords.append(f"{x(t):.1f},{y(v):.1f}")
            parts.append(f'<polyline class="series" data-series="{html.escape(label)}" data-points="{len(pts)}" '
                         f'fill="none" stroke="{color}" stroke-width="1.6" points="{" ".join(coords)}"/>')  # fmt: skip
        parts.append(f'<text x="{legend_x}" y="{top + 14}" font-size="12" fill="{color}">■ {html.escape(label)}'
                     f"{'' if pts else ' (no data)'}</text>")  # fmt: skip
        legend_x += 30 + 8 * (len(label) + (10 if not pts else 0))
    parts.append("</svg>")
    return "".join(parts)


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font:14px system-ui,sans-serif;margin:1.5em auto;max-width:940px;color:#222}"
        "table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:.3em .7em;text-align:left}"
        ".chart{display:block;margin:.8em 0;font-family:system-ui,sans-serif}.muted{color:#777}"
        f"</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


# --- data, through the GraphQL schema -----------------------------------------------------------

SITE_DAY = """query($site: ID!, $from: DateTime!, $to: DateTime!) { site(id: $site) {
  ders { derId kind }
  tariffPrices(from: $from, to: $to) { start importPrice exportPrice spot }
  plans(first: 20) { version issuedAt validUntil slots }
} }"""

SERIES = """query($site: ID!, $der: String!, $field: String!, $from: DateTime!, $to: DateTime!) { site(id: $site) {
  telemetry(der: $der, field: $field, from: $from, to: $to, resolution: MIN15) { buckets { start mean } }
} }"""

FLEET = """query($after: String) { sites(first: 200, after: $after) }"""
FLEET_SITE = """query($site: ID!) { site(id: $site) { link { storedThrough lostReadings lastReadingAt }
  plans(first: 1) { version validUntil } forecasts(first: 4) { kind maeKw }
  live { connected rung statusAt }
  flexibility { availableKwh headroomKwh maxChargeKw maxDischargeKw reserveSoc soc socSource } } }"""


async def run_query(db: Database, access: Access, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    result = await schema.execute(query, variable_values=variables, context_value={"db": db, "access": access,
                                                                                   "cost": 0})  # fmt: skip
    if result.errors:
        raise PageError("; ".join(e.message for e in result.errors))
    return result.data or {}


class PageError(Exception):
    """The GraphQL query behind a page failed for this viewer (scope, site): shown as a 403 page, never a 500."""


def _hour(ts: str, day0: datetime) -> float:
    return (datetime.fromisoformat(ts) - day0).total_seconds() / 3600.0


@dataclass
class Web:
    db: Database
    clock: Callable[[], datetime]
    admin_token: str | None
    oauth: OAuthEndpoints

    async def _viewer(self, request: Request) -> Access | None:
        token = request.cookies.get(TOKEN_COOKIE)
        if not token:
            return None
        try:
            return await authenticate(self.db, f"Bearer {token}", None, self.clock())
        except AccessDenied:
            return None

    # --- owner sign-in through OAuth ---

    async def login(self, request: Request) -> Response:
        nxt = request.query_params.get("next", "/web/")
        if not _local_page(nxt):
            nxt = "/web/"
        verifier = secrets.token_urlsafe(48)
        state = secrets.token_urlsafe(16)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        params = {"response_type": "code", "client_id": WEB_CLIENT_ID, "redirect_uri": WEB_CALLBACK,
                  "scope": WEB_CLIENT.scope, "state": state, "code_challenge": challenge,
                  "code_challenge_method": "S256"}  # fmt: skip
        resp = RedirectResponse("/oauth/authorize?" + urlencode(params), status_code=303)
        resp.set_cookie(PKCE_COOKIE, f"{state}.{verifier}.{quote(nxt, safe='')}", max_age=600, httponly=True,
                        samesite="lax", path="/web")  # fmt: skip
        return resp

    async def callback(self, request: Request) -> Response:
        stash = request.cookies.get(PKCE_COOKIE, "")
        state, _, rest = stash.partition(".")
        verifier, _, nxt = rest.partition(".")
        got = request.query_params.get("state", "")
        if not state or not hmac.compare_digest(state.encode(), got.encode()):
            return HTMLResponse(_page("Sign-in failed", "<p>state mismatch; <a href='/web/'>try again</a></p>"), 400)
        if "code" not in request.query_params:
            err = html.escape(request.query_params.get("error", "no code"))
            return HTMLResponse(_page("Sign-in failed", f"<p>{err}; <a href='/web/'>try again</a></p>"), 400)
        form = {"grant_type": "authorization_code", "code": request.query_params["code"],
                "redirect_uri": WEB_CALLBACK, "client_id": WEB_CLIENT_ID, "code_verifier": verifier}  # fmt: skip
        oreq = FormRequest("POST", str(request.url), {}, {}, form, {k: [v] for k, v in form.items()})
        token_resp: Response = await anyio.to_thread.run_sync(lambda: self.oauth.server.create_token_response(oreq))
        if token_resp.status_code != 200:
            return HTMLResponse(_page("Sign-in failed", "<p>the code was not accepted</p>"), 400)
        tok = json.loads(bytes(token_resp.body))
        target = unquote(nxt) if nxt else "/web/"
        resp = RedirectResponse(target if _local_page(target) else "/web/", status_code=303)
        resp.set_cookie(TOKEN_COOKIE, tok["access_token"], max_age=int(tok["expires_in"]), httponly=True,
                        samesite="lax", path="/")  # fmt: skip
        resp.delete_cookie(PKCE_COOKIE, path="/web")
        return resp

    async def home(self, request: Request) -> Response:
        access = await self._viewer(request)
        if access is None:
            return RedirectResponse("/web/login?next=/web/", status_code=303)
        sites = sorted(access.sites or ())
        items = "".join(f"<li><a href='/web/site/{quote(s)}'>{html.escape(s)}</a></li>" for s in sites)
        return HTMLResponse(_page("Your sites", f"<ul>{items or '<li>none granted</li>'}</ul>"))

    # --- a site's day ---

    async def site_page(self, request: Request) -> Response:
        site_id = request.path_params["site_id"]
        access = await self._viewer(request)
        if access is None:
            return RedirectResponse(f"/web/login?next=/web/site/{quote(site_id)}", status_code=303)
        try:
            day = date.fromisoformat(request.query_params.get("day", self.clock().date().isoformat()))
        except ValueError:
            return HTMLResponse(_page("Bad day", "<p>day=YYYY-MM-DD</p>"), 422)
        try:
            body = await self._site_day(access, site_id, day)
        except PageError as exc:
            return HTMLResponse(_page(f"Site {site_id}", f"<p role='alert'>{html.escape(str(exc))}</p>"), 403)
        return HTMLResponse(_page(f"Site {site_id} — {day.isoformat()}", body))

    async def _series(
        self, access: Access, site_id: str, der: str, field: str, day0: datetime
    ) -> list[tuple[float, float]]:
        data = await run_query(self.db, access, SERIES, {"site": site_id, "der": der, "field": field,
                               "from": day0.isoformat(), "to": (day0 + timedelta(days=1)).isoformat()})  # fmt: skip
        return [(_hour(b["start"], day0) + 0.125, b["mean"]) for b in data["site"]["telemetry"]["buckets"]]

    async def _site_day(self, access: Access, site_id: str, day: date) -> str:
        day0 = datetime(day.year, day.month, day.day, tzinfo=UTC)
        end = day0 + timedelta(days=1)
        meta = (await run_query(self.db, access, SITE_DAY, {"site": site_id, "from": day0.isoformat(),
                                                             "to": end.isoformat()}))["site"]  # fmt: skip
        by_kind: dict[str, list[str]] = {}
        for d in meta["ders"]:
            by_kind.setdefault(d["kind"], []).append(d["derId"])

        async def total(kind: str, field: str = "power_w") -> list[tuple[float, float]]:
            acc: dict[float, float] = {}
            for der in by_kind.get(kind, []):
                for t, v in await self._series(access, site_id, der, field, day0):
                    acc[t] = acc.get(t, 0.0) + v
            return sorted(acc.items())

        grid, pv, battery = await total("meter"), await total("pv"), await total("battery")
        soc = [(t, v * 100) for t, v in await total("battery", "soc")]  # stored as a fraction
        load = await total("load")
        if not load and grid:
            # Load from the balance: grid import + PV − battery charge (battery + = charging).
            pv_d, bat_d = dict(pv), dict(battery)
            load = [(t, g + pv_d.get(t, 0.0) - bat_d.get(t, 0.0)) for t, g in grid]
        kw = [(lbl, COLORS[lbl], [(t, v / 1000) for t, v in pts])
              for lbl, pts in (("load", load), ("pv", pv), ("grid", grid), ("battery", battery))]  # fmt: skip
        planned = _planned_battery(meta["plans"], day0)
        prices = meta["tariffPrices"]
        price_series: list[Series] = [
            ("import", COLORS["import"], [(_hour(p["start"], day0), p["importPrice"]) for p in prices]),
            ("export", COLORS["export"], [(_hour(p["start"], day0), p["exportPrice"]) for p in prices]),
        ]
        prev, nxt = (day - timedelta(days=1)).isoformat(), (day + timedelta(days=1)).isoformat()
        nav = (f"<p><a href='?day={prev}'>← {prev}</a> · <a href='?day={nxt}'>{nxt} →</a> · "
               f"<span class='muted'>15-minute means, UTC</span></p>")  # fmt: skip
        return "".join([
            nav,
            svg_chart("Power", "kW", kw),
            svg_chart("Battery state of charge", "%", [("soc", COLORS["soc"], soc)]),
            svg_chart("Battery: plan against what happened", "kW", [
                ("plan", COLORS["plan"], planned),
                ("battery", COLORS["battery"], [(t, v / 1000) for t, v in battery]),
            ], step=True),
            svg_chart("Prices", "per kWh", price_series, step=True),
            f"<p class='muted'>{len(meta['plans'])} plan versions stored; DERs: "
            f"{html.escape(', '.join(f'{k}: {len(v)}' for k, v in sorted(by_kind.items())) or 'none reported')}</p>",
        ])  # fmt: skip

    # --- the operator's fleet ---

    async def fleet_login(self, request: Request) -> Response:
        if request.method == "GET":
            return HTMLResponse(_page("Operator sign-in", "<form method='post'><label>Admin token "
                                      "<input name='token' type='password' required></label> <button>Sign in</button>"
                                      "</form>"))  # fmt: skip
        body = await request.body()
        token = dict(parse_qsl(body[:4096].decode(errors="replace"))).get("token", "")
        if self.admin_token is None or not hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return HTMLResponse(_page("Operator sign-in", "<p role='alert'>wrong token</p>"), 401)
        resp = RedirectResponse("/web/fleet", status_code=303)
        resp.set_cookie(ADMIN_COOKIE, token, max_age=8 * 3600, httponly=True, samesite="strict", path="/web")
        return resp

    async def fleet(self, request: Request) -> Response:
        token = request.cookies.get(ADMIN_COOKIE, "")
        try:
            access = await authenticate(self.db, f"Bearer {token}", self.admin_token, self.clock())
        except AccessDenied:
            access = None
        if access is None or not access.operator:
            return RedirectResponse("/web/fleet/login", status_code=303)
        ids = (await run_query(self.db, access, FLEET, {"after": None}))["sites"]
        now = self.clock()
        rows = []
        for sid in ids:
            s = (await run_query(self.db, access, FLEET_SITE, {"site": sid}))["site"]
            link = s["link"]
            last = link["lastReadingAt"]
            age = "—" if last is None else _age(now - datetime.fromisoformat(last))
            state = "up" if last is not None and now - datetime.fromisoformat(last) < timedelta(minutes=10) else "down"
            plan = s["plans"][0] if s["plans"] else None
            maes = ", ".join(f"{f['kind']} {f['maeKw']:.2f}" for f in s["forecasts"] if f["maeKw"] is not None)
            rows.append(
                f"<tr data-site='{html.escape(sid)}'><td><a href='/web/site/{quote(sid)}'>{html.escape(sid)}</a></td>"
                f"<td class='link-{state}'>{state}</td><td>{age}</td><td>{link['storedThrough']}</td>"
                f"<td>{link['lostReadings']}</td><td>{'—' if plan is None else plan['version']}</td>"
                f"{_rung_cell(s['live'], now)}{_flex_cell(s['flexibility'])}"
                f"<td>{html.escape(maes) or '—'}</td></tr>"
            )  # fmt: skip
        table = ("<table><tr><th>site</th><th>link</th><th>last upload</th><th>stored through</th><th>lost</th>"
                 "<th>plan</th><th>rung</th><th>flexibility</th><th>forecast MAE (kW)</th></tr>" + "".join(rows)
                 + "</table><p class='muted'>Rung: the Zap's live channel status (— without a channel). "
                 "Flexibility: battery energy above reserve / below top, max charge / discharge power; per slot "
                 "for the fleet: <code>GET /v1/fleet/flexibility</code> (admin).</p>")  # fmt: skip
        return HTMLResponse(_page(f"Fleet — {len(ids)} sites", table))


def _rung_cell(live: dict[str, Any] | None, now: datetime) -> str:
    if live is None or live["rung"] is None:
        return "<td class='rung' data-rung=''>—</td>"
    rung = html.escape(live["rung"])
    when = "" if live["statusAt"] is None else f" ({_age(now - datetime.fromisoformat(live['statusAt']))})"
    state = "" if live["connected"] else " · channel down"
    return f"<td class='rung' data-rung='{rung}'>{rung}{html.escape(when + state)}</td>"


def _flex_cell(flex: dict[str, Any]) -> str:
    def kw(v: float | None) -> str:
        return "?" if v is None else f"{v:.1f}"

    if flex["availableKwh"] is None:
        return "<td class='flex' data-available-kwh=''>—</td>"
    up, down = kw(flex["maxChargeKw"]), kw(flex["maxDischargeKw"])
    text = (
        f"{flex['availableKwh']:.1f} kWh above {flex['reserveSoc']:.0%} reserve, "
        f"{flex['headroomKwh']:.1f} kWh room; ↑{up} / ↓{down} kW"
    )
    return (
        f"<td class='flex' data-available-kwh='{flex['availableKwh']}' data-charge-kw='{flex['maxChargeKw']}' "
        f"data-discharge-kw='{flex['maxDischargeKw']}'>{html.escape(text)}</td>"
    )


def _local_page(path: str) -> bool:
    """Only our own pages are redirect targets after sign-in (no open redirect)."""
    return path.startswith("/web/") and "//" not in path and "\\" not in path and len(path) <= 512


def _age(delta: timedelta) -> str:
    s = int(delta.total_seconds())
    if s < 120:
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    if s < 172800:
        return f"{s // 3600} h ago"
    return f"{s // 86400} d ago"


def _planned_battery(plans: list[dict[str, Any]], day0: datetime) -> list[tuple[float, float]]:
    """The battery power each slot of the day was planned for, from the newest plan covering it (kW)."""
    end = day0 + timedelta(days=1)
    best: dict[float, tuple[int, float]] = {}
    for plan in plans:
        for slot in plan["slots"] or []:
            try:
                start = datetime.fromisoformat(slot["start"]).astimezone(UTC)
                w = slot.get("intent", {}).get("battery_w")
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
            if w is None or not day0 <= start < end:
                continue
            t = (start - day0).total_seconds() / 3600
            if t not in best or best[t][0] < plan["version"]:
                best[t] = (plan["version"], float(w) / 1000)
    return [(t, v) for t, (_ver, v) in sorted(best.items())]
