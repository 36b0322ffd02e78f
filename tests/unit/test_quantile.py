"""cloud.quantile is numpy's linear quantile, bit for bit: a plan computed with it is the plan numpy gave."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from cloud.quantile import linear_quantiles

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
levels = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=60), st.lists(levels, min_size=1, max_size=5))
@example([0.1, 0.3, 0.2], [0.0, 0.1, 0.5, 0.9, 1.0])
@example([5.0], [0.1, 0.9])
def test_the_same_bits_as_numpy(values: list[float], qs: list[float]) -> None:
    expected = np.quantile(np.asarray(values), np.asarray(qs))
    got = linear_quantiles(values, qs)
    assert got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


@given(st.lists(finite, min_size=1, max_size=30), levels)
def test_a_scalar_level_gives_numpy_s_scalar(values: list[float], q: float) -> None:
    assert float(linear_quantiles(values, q)) == float(np.quantile(values, q))


def test_nan_and_empty_answer_as_numpy() -> None:
    assert np.isnan(linear_quantiles([1.0, np.nan, 2.0], [0.1, 0.9])).all()
    try:
        np.quantile(np.zeros(0), 0.5)
    except (IndexError, ValueError) as numpy_error:
        try:
            linear_quantiles([], 0.5)
        except type(numpy_error):
            return
        raise AssertionError("an empty series must fail as numpy's does") from None
    assert np.isnan(linear_quantiles([], 0.5))


def test_infinite_values_answer_as_numpy() -> None:
    values = [1.0, np.inf, 2.0, -np.inf, 3.0]
    with np.errstate(invalid="ignore"):
        expected = np.quantile(values, [0.1, 0.5, 0.9])
        got = linear_quantiles(values, [0.1, 0.5, 0.9])
    assert got.tobytes() == expected.tobytes()
