"""`zapcloud optimize PROBLEM.json`: one problem in, one solution JSON out.

Exit codes let scripts branch without parsing: 0 optimal, 1 infeasible, 2 bad input (one line on stderr),
3 solver failure such as the time limit (also one line on stderr). The solution JSON, with the error message
for a bad problem, is printed on stdout whenever the input could be read.
"""

from __future__ import annotations

import sys

from cloud.optimizer import solve
from cloud.optimizer_io import ProblemError, Solution, decode_problem, encode_solution, error_solution

EXIT_OPTIMAL = 0
EXIT_INFEASIBLE = 1
EXIT_BAD_INPUT = 2
EXIT_SOLVER_ERROR = 3


def run_optimize(path: str) -> int:
    try:
        data = sys.stdin.buffer.read() if path == "-" else _read(path)
    except OSError as exc:
        print(f"zapcloud optimize: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        problem = decode_problem(data)
    except ProblemError as exc:
        message = _one_line(str(exc))
        _emit(error_solution("error", message))
        print(f"zapcloud optimize: {path}: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    solution = solve(problem)
    _emit(solution)
    if solution.status == "optimal":
        return EXIT_OPTIMAL
    message = _one_line(solution.message or "unknown error")
    print(f"zapcloud optimize: {solution.status}: {message}", file=sys.stderr)
    return EXIT_INFEASIBLE if solution.status == "infeasible" else EXIT_SOLVER_ERROR


def _emit(solution: Solution) -> None:
    sys.stdout.buffer.write(encode_solution(solution) + b"\n")
    sys.stdout.flush()


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _one_line(message: str) -> str:
    return " ".join(message.split())
