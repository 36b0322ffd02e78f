"""`zapcloud serve`'s planner flags and a site's `assets.planning` overrides: parsed, bounded, turned into the
planner's options; a bad flag is exit 2 naming it, a bad override a clear error naming the field."""

from __future__ import annotations

import pytest

from cloud.assets import AssetsError, decode_assets
from cloud.cli import _planner_settings, build_parser, main
from cloud.execution import DEFAULT_EXECUTION, Execution
from cloud.forecast import OpenMeteoClient
from cloud.planner import PlannerOptions
from cloud.planner_settings import EXECUTIONS, LOAD_MODELS, OPEN_METEO_URL, PV_MODELS, PlannerSettings
from cloud.site_forecast import LoadChoice, ModelChoice, PvChoice

BASE = {"location": {"lat": 52.1, "lon": 5.18}, "grid": {"max_import_kw": 17, "max_export_kw": 10}}


def test_the_names_are_the_planners_choices() -> None:
    assert set(PV_MODELS) == {c.value for c in PvChoice}
    assert set(LOAD_MODELS) == {c.value for c in LoadChoice}
    assert set(EXECUTIONS) == {e.value for e in Execution}


def test_serve_defaults_and_flags() -> None:
    default = _planner_settings(build_parser().parse_args(["serve"]))
    assert default == PlannerSettings()
    opts = default.options()
    assert isinstance(opts.weather, OpenMeteoClient)  # on by default: a site asks for it by registering `weather`
    assert opts.models == ModelChoice() and opts.price_forecast is False and opts.execution is DEFAULT_EXECUTION
    assert default.weather_url == OPEN_METEO_URL

    args = build_parser().parse_args(
        ["serve", "--weather-url", "http://127.0.0.1:9/v1/forecast", "--weather-timeout-s", "2",
         "--weather-cache-s", "0", "--pv-model", "fit", "--load-model", "gbm", "--price-forecast",
         "--execution", "setpoint"]
    )  # fmt: skip
    opts = _planner_settings(args).options()
    assert opts.models.pv is PvChoice.FIT and opts.models.load is LoadChoice.GBM
    assert opts.price_forecast is True and opts.execution is Execution.SETPOINT
    assert opts.models.load_day_level and opts.models.load_day_kinds  # the load defaults (loadfc)
    plain = _planner_settings(build_parser().parse_args(["serve", "--no-load-day-level", "--no-load-day-kinds"]))
    assert not plain.options().models.load_day_level and not plain.options().models.load_day_kinds
    off = _planner_settings(build_parser().parse_args(["serve", "--no-weather"]))
    assert off.weather_url is None and off.options().weather is None


def test_the_risk_flags_reach_the_planner() -> None:
    """--scenarios / --load-reserve and their --no- forms (cloud.plan_risk)."""
    default = _planner_settings(build_parser().parse_args(["serve"])).options()
    assert (default.scenarios, default.load_reserve) == (PlannerSettings().scenarios, PlannerSettings().load_reserve)
    on = _planner_settings(build_parser().parse_args(["serve", "--scenarios", "--load-reserve"])).options()
    assert on.scenarios is True and on.load_reserve is True
    off = _planner_settings(build_parser().parse_args(["serve", "--no-scenarios", "--no-load-reserve"])).options()
    assert off.scenarios is False and off.load_reserve is False
    site = decode_assets({**BASE, "planning": {"scenarios": False}})
    assert on.for_site(site).scenarios is False and on.for_site(site).load_reserve is True
    assert off.for_site(decode_assets({**BASE, "planning": {"load_reserve": True}})).load_reserve is True


def test_the_pv_index_flag_reaches_the_planner() -> None:
    """--pv-index (default) / --no-pv-index: whether a site's uploaded regional PV forecast is planned on."""
    assert _planner_settings(build_parser().parse_args(["serve"])).options().pv_index is True
    assert PlannerOptions().pv_index is True
    assert _planner_settings(build_parser().parse_args(["serve", "--no-pv-index"])).options().pv_index is False


def test_the_fine_hours_reach_the_planner() -> None:
    """--fine-hours: the hours at the 15-minute step before the far hours' hourly slots (cloud.plan_grid)."""
    assert _planner_settings(build_parser().parse_args(["serve"])).options().fine_hours == PlannerOptions().fine_hours
    assert _planner_settings(build_parser().parse_args(["serve", "--fine-hours", "168"])).options().fine_hours == 168


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--weather-timeout-s", "0"], "--weather-timeout-s"),
        (["--weather-timeout-s", "nan"], "--weather-timeout-s"),
        (["--weather-timeout-s", "1e9"], "--weather-timeout-s"),
        (["--weather-cache-s", "-1"], "--weather-cache-s"),
        (["--weather-cache-s", "inf"], "--weather-cache-s"),
        (["--weather-url", "ftp://example.org/x"], "--weather-url"),
        (["--weather-url", "not a url"], "--weather-url"),
        (["--fine-hours", "-1"], "--fine-hours"),
        (["--fine-hours", "nan"], "--fine-hours"),
        (["--fine-hours", "169"], "--fine-hours"),
    ],
)
def test_bad_serve_flag_is_exit_2_naming_it(flags: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", *flags]) == 2
    assert named in capsys.readouterr().err


def test_bad_choice_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", "--pv-model", "magic"])
    assert exc.value.code == 2
    assert "--pv-model" in capsys.readouterr().err


def test_site_overrides_win_where_given() -> None:
    serve = PlannerOptions(models=ModelChoice(pv=PvChoice.FIT), price_forecast=True, execution=Execution.VALUE)
    assert serve.for_site(decode_assets(BASE)) is serve
    site = decode_assets({**BASE, "planning": {"load_model": "gbm", "price_forecast": False}})
    mine = serve.for_site(site)
    assert mine.models.pv is PvChoice.FIT and mine.models.load is LoadChoice.GBM  # pv: the serve default
    assert mine.price_forecast is False and mine.execution is Execution.VALUE
    assert serve.for_site(decode_assets({**BASE, "planning": {"execution": "setpoint"}})).execution is (
        Execution.SETPOINT
    )


@pytest.mark.parametrize(
    ("planning", "field"),
    [
        ({"pv_model": "magic"}, "planning.pv_model"),
        ({"load_model": 3}, "planning.load_model"),
        ({"price_forecast": "yes"}, "planning.price_forecast"),
        ({"execution": "yolo"}, "planning.execution"),
        ({"scenarios": "on"}, "planning.scenarios"),
        ({"load_reserve": 1}, "planning.load_reserve"),
        ({"horizon": 10}, "planning"),
        ("fit", "planning"),
    ],
)
def test_bad_override_names_the_field(planning: object, field: str) -> None:
    with pytest.raises(AssetsError, match=field.replace(".", r"\.")):
        decode_assets({**BASE, "planning": planning})
