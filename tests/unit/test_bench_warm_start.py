"""bench.warm_start on a few real days: every re-plan after the first starts from the shifted basis, HiGHS
takes each, and the audit's cold re-solves find the same optima in more iterations."""

from __future__ import annotations

import re

import pytest

from bench.warm_start import main


def test_the_audit_of_a_few_real_days(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ausgrid_c12_nl_2023.csv", "--days", "3"]) == 0
    out = capsys.readouterr().out
    replans = int(re.search(r"(\d+) re-plans", out).group(1))  # type: ignore[union-attr]
    starts = re.search(r"first LPs: (\d+) shifted, (\d+) same matrix, (\d+) cold, (\d+) refused", out)
    assert starts is not None
    shifted, same, cold, refused = (int(g) for g in starts.groups())
    assert replans == 3 * 24  # hourly re-plans of the half-hourly trace
    assert (cold, refused) == (1, 0) and shifted + same == replans - 1
    warm_iterations, cold_iterations = (int(g) for g in re.findall(r"(\d+) warm, (\d+) the same", out)[0])
    assert 0 < warm_iterations < cold_iterations
    worst = float(re.search(r"warm vs cold: (\S+) over", out).group(1))  # type: ignore[union-attr]
    assert worst < 1e-6
