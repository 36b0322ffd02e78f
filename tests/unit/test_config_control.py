"""The closed loop's timing knobs in `[control]`: bounded, and a settle time that cannot precede the dead time."""

from __future__ import annotations

import pytest

from zapd.config import ConfigError, validate_config

BASE: dict[str, object] = {"site": {"id": "s", "fuse_a": 25}}


def test_defaults_are_the_ones_the_controller_was_tested_with() -> None:
    control = validate_config(BASE, "zapd.toml").control
    assert (control.dead_time_s, control.settle_s, control.estimate_tolerance_w) == (5.0, 30.0, 50.0)


def test_a_settle_time_not_longer_than_the_dead_time_is_an_error() -> None:
    with pytest.raises(ConfigError, match="settle_s"):
        validate_config({**BASE, "control": {"dead_time_s": 10, "settle_s": 10}}, "zapd.toml")


@pytest.mark.parametrize("key", ["dead_time_s", "settle_s", "estimate_tolerance_w"])
@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), 1e9])
def test_out_of_range_values_are_refused(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=key):
        validate_config({**BASE, "control": {key: value}}, "zapd.toml")
