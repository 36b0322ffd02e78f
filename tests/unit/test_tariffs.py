"""Tariffs: worked examples a person can check by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cloud.tariffs import (
    TariffError,
    billing_period_end,
    billing_period_start,
    decode_tariff,
    demand_charge,
    export_price,
    import_price,
    price_arrays,
)

# A Dutch-style dynamic contract: spot + supplier markup, a day/night grid fee, energy tax, 21 % VAT.
DYNAMIC = {
    "timezone": "Europe/Amsterdam",
    "spot_area": "10YNL----------L",
    "energy": {"kind": "spot", "markup": 0.02},
    "grid_fee": {
        "default": 0.03,
        "windows": [{"start": "07:00", "end": "23:00", "days": [0, 1, 2, 3, 4], "value": 0.06}],
    },
    "energy_tax": 0.10,
    "vat": 0.21,
    "export": {"kind": "spot_minus_fee", "fee": 0.015},
    "capacity": {"price_per_kw": 4.5},
}


def test_import_price_spot_plus_tou_fee_tax_and_vat() -> None:
    t = decode_tariff(DYNAMIC)
    # Wednesday 2026-06-03 10:00 CEST = 08:00 UTC: weekday day window, fee 0.06.
    ts = datetime(2026, 6, 3, 8, 0, tzinfo=UTC)
    # (0.085 spot + 0.02 markup + 0.06 fee + 0.10 tax) × 1.21 = 0.265 × 1.21 = 0.32065
    assert import_price(t, ts, 0.085) == pytest.approx(0.32065)
    # Same instant on Saturday: night/weekend fee 0.03 → (0.085 + 0.02 + 0.03 + 0.10) × 1.21 = 0.28435
    assert import_price(t, datetime(2026, 6, 6, 8, 0, tzinfo=UTC), 0.085) == pytest.approx(0.28435)
    # Wednesday 06:30 CEST (04:30 UTC) is before the window: 0.03 fee.
    assert import_price(t, datetime(2026, 6, 3, 4, 30, tzinfo=UTC), 0.0) == pytest.approx(0.15 * 1.21)


def test_tou_windows_follow_local_time_across_dst() -> None:
    t = decode_tariff(DYNAMIC)
    # Winter: 07:00 CET = 06:00 UTC is inside the window; summer 07:00 CEST = 05:00 UTC.
    assert import_price(t, datetime(2026, 1, 7, 6, 0, tzinfo=UTC), 0.0) == pytest.approx(0.18 * 1.21)
    assert import_price(t, datetime(2026, 1, 7, 5, 59, tzinfo=UTC), 0.0) == pytest.approx(0.15 * 1.21)
    assert import_price(t, datetime(2026, 7, 8, 5, 0, tzinfo=UTC), 0.0) == pytest.approx(0.18 * 1.21)


def test_negative_spot_makes_import_cheaper_but_taxes_stay() -> None:
    t = decode_tariff(DYNAMIC)
    ts = datetime(2026, 6, 7, 11, 0, tzinfo=UTC)  # Sunday: fee 0.03
    # (-0.40 + 0.02 + 0.03 + 0.10) × 1.21 = -0.25 × 1.21 = -0.3025: importing is paid
    assert import_price(t, ts, -0.40) == pytest.approx(-0.3025)


@pytest.mark.parametrize(
    ("export", "spot", "expected"),
    [
        ({"kind": "spot"}, 0.08, 0.08),
        ({"kind": "spot"}, -0.05, -0.05),
        ({"kind": "spot", "floor_zero": True}, -0.05, 0.0),
        ({"kind": "spot_minus_fee", "fee": 0.015}, 0.08, 0.065),
        ({"kind": "spot_minus_fee", "fee": 0.015, "floor_zero": True}, 0.01, 0.0),
        ({"kind": "fixed", "price": 0.07}, -0.2, 0.07),
        ({"kind": "fixed", "price": 0.05, "vat": True}, None, 0.0605),
        ({"kind": "none"}, 0.30, 0.0),
    ],
)
def test_export_rules(export: dict[str, object], spot: float | None, expected: float) -> None:
    t = decode_tariff({**DYNAMIC, "export": export})
    assert export_price(t, datetime(2026, 6, 3, 12, tzinfo=UTC), spot) == pytest.approx(expected)


def test_fixed_and_tou_tariffs_need_no_spot() -> None:
    fixed = decode_tariff(
        {"energy": {"kind": "fixed", "price": 0.25}, "vat": 0.2, "export": {"kind": "fixed", "price": 0.06}}
    )
    assert not fixed.needs_spot
    imp, exp = price_arrays(fixed, [datetime(2026, 1, 1, h, tzinfo=UTC) for h in range(3)])
    assert imp == pytest.approx([0.30] * 3)
    assert exp == pytest.approx([0.06] * 3)

    # Economy 7 style: cheap 00:30-07:30 local (UK), wrapping windows also work.
    tou = decode_tariff(
        {
            "timezone": "Europe/London",
            "energy": {
                "kind": "tou",
                "tou": {"default": 0.30, "windows": [{"start": "23:30", "end": "06:30", "value": 0.09}]},
            },
        }
    )
    assert import_price(tou, datetime(2026, 1, 5, 23, 45, tzinfo=UTC)) == pytest.approx(0.09)
    assert import_price(tou, datetime(2026, 1, 6, 3, 0, tzinfo=UTC)) == pytest.approx(0.09)
    assert import_price(tou, datetime(2026, 1, 6, 6, 30, tzinfo=UTC)) == pytest.approx(0.30)


def test_wrapping_window_days_belong_to_the_evening_it_starts() -> None:
    # Friday-night-only cheap window 22:00-06:00: Saturday 02:00 is inside (it started Friday), Sunday 02:00 not.
    t = decode_tariff(
        {
            "energy": {
                "kind": "tou",
                "tou": {"default": 0.3, "windows": [{"start": "22:00", "end": "06:00", "days": [4], "value": 0.1}]},
            }
        }
    )
    assert import_price(t, datetime(2026, 1, 10, 2, tzinfo=UTC)) == pytest.approx(0.1)  # Saturday
    assert import_price(t, datetime(2026, 1, 11, 2, tzinfo=UTC)) == pytest.approx(0.3)  # Sunday
    assert import_price(t, datetime(2026, 1, 9, 23, tzinfo=UTC)) == pytest.approx(0.1)  # Friday


def test_spot_tariff_without_spot_price_is_an_error() -> None:
    t = decode_tariff(DYNAMIC)
    with pytest.raises(TariffError, match="spot price missing"):
        import_price(t, datetime(2026, 1, 1, tzinfo=UTC), None)


@pytest.mark.parametrize(
    ("tariff", "field"),
    [
        ({"energy": {"kind": "spot"}}, "spot_area"),
        ({"energy": {"kind": "tou"}}, "energy.tou"),
        ({"energy": {"kind": "fixed", "price": 0.2}, "timezone": "Mars/Olympus"}, "timezone"),
        ({"energy": {"kind": "fixed", "price": 0.2}, "vat": -0.1}, "vat"),
        ({"energy": {"kind": "fixed"}, "flat": 0.3}, "flat"),
        ({"energy": {"kind": "tou", "tou": {"windows": [{"start": "7:00", "end": "09:00", "value": 1}]}}}, "start"),
    ],
)
def test_bad_tariffs_name_the_field(tariff: dict[str, object], field: str) -> None:
    with pytest.raises(TariffError, match=field.replace(".", r"\.")):
        decode_tariff(tariff)


def test_capacity_charge_carries_the_peak_already_set() -> None:
    t = decode_tariff(DYNAMIC)
    dc = demand_charge(t, peak_already_kw=3.2)
    assert dc is not None
    assert dc.price_per_kw == 4.5
    assert dc.peak_already_kw == 3.2
    # Worked example: a plan peaking at 5 kW pays 4.5 × (5 - 3.2) = 8.10 more this month; 3 kW pays nothing.
    assert dc.price_per_kw * max(0.0, 5.0 - dc.peak_already_kw) == pytest.approx(8.10)
    assert demand_charge(decode_tariff({"energy": {"kind": "fixed", "price": 0.2}}), 3.0) is None


def test_billing_period_is_the_local_calendar_month() -> None:
    t = decode_tariff(DYNAMIC)
    # 2026-06-30 22:30 UTC is already July 1st 00:30 in Amsterdam.
    now = datetime(2026, 6, 30, 22, 30, tzinfo=UTC)
    assert billing_period_start(t, now).astimezone(UTC) == datetime(2026, 6, 30, 22, 0, tzinfo=UTC)
    assert billing_period_end(t, now).astimezone(UTC) == datetime(2026, 7, 31, 22, 0, tzinfo=UTC)
    assert billing_period_start(t, datetime(2026, 6, 30, 21, 59, tzinfo=UTC)).astimezone(UTC) == datetime(
        2026, 5, 31, 22, 0, tzinfo=UTC
    )


def test_decode_from_json_bytes() -> None:
    t = decode_tariff(b'{"energy": {"kind": "fixed", "price": 0.2}, "energy_tax": 0.1}')
    assert import_price(t, datetime(2026, 1, 1, tzinfo=UTC)) == pytest.approx(0.3)
    with pytest.raises(TariffError, match="malformed"):
        decode_tariff(b"{nope")
