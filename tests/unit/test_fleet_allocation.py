"""Demand-response allocation: convex hull of each site's curve, greedy by marginal cost."""

from __future__ import annotations

import pytest

from cloud.fleet import Option, SiteCurve, _lower_hull, allocate


def opt(r: float, c: float, lam: float = 0.1) -> Option:
    return Option(incentive=lam, reduction_kw=r, extra_cost=c)


def test_hull_drops_dominated_and_non_convex_points() -> None:
    pts = [opt(1.0, 1.0), opt(2.0, 5.0), opt(3.0, 6.0), opt(0.0, 0.0), opt(2.5, 9.0)]
    hull = _lower_hull(pts)
    # from (0,0): slope 1 to (1,1); then (3,6) at 2.5/kW beats (2,5) at 4/kW
    assert [(p.reduction_kw, p.extra_cost) for p in hull] == [(1.0, 1.0), (3.0, 6.0)]


def test_greedy_takes_the_cheapest_kw_first_and_stops_at_the_target() -> None:
    cheap = SiteCurve("cheap", [opt(1.0, 0.5), opt(2.0, 2.0)])  # 0.5/kW then 1.5/kW
    dear = SiteCurve("dear", [opt(1.5, 1.5)])  # 1.0/kW
    chosen = allocate([cheap, dear], 2.4)
    # order: cheap 1 kW (0.5), dear 1.5 kW (1.0) → 2.5 kW met, cheap's second step not needed
    assert set(chosen) == {"cheap", "dear"}
    assert chosen["cheap"].reduction_kw == 1.0
    assert sum(o.reduction_kw for o in chosen.values()) == pytest.approx(2.5)


def test_unreachable_target_takes_everything() -> None:
    chosen = allocate([SiteCurve("a", [opt(1.0, 1.0), opt(2.0, 3.0)]), SiteCurve("b", [])], 10.0)
    assert chosen["a"].reduction_kw == 2.0 and "b" not in chosen


def test_equal_sites_are_taken_in_site_order_whatever_their_order_or_float_noise() -> None:
    # Two sites with the same curve but for noise in the last bits (as two solves of equal sites may give):
    # the target needs one, and it is the first by id, in whichever order the curves arrive.
    a = SiteCurve("a", [opt(1.0, 0.5 + 1e-16)])
    b = SiteCurve("b", [opt(1.0, 0.5)])
    assert set(allocate([a, b], 1.0)) == {"a"}
    assert set(allocate([b, a], 1.0)) == {"a"}


def test_collinear_hull_points_keep_the_nearer_one_whatever_the_noise() -> None:
    # (1, 1), (2, 2) and (3, 3) lie on one line from (0, 0): noise of 1e-16 on the far point's cost must
    # not make the hull skip the near points (the nearer point is taken on a slope tie).
    pts = [opt(1.0, 1.0, 0.1), opt(2.0, 2.0, 0.15), opt(3.0, 3.0 - 4e-16, 0.25)]
    assert [p.incentive for p in _lower_hull(pts)] == [0.1, 0.15, 0.25]
