"""The demo: a whole simulated site on loopback (simulators, a local zapcloud, the real daemon).

Its own package because it runs the cloud's optimizer and server: the edge package `zapd` never
imports `cloud` (tests/unit/test_layering.py). `zapd demo` starts it as `python -m zapd_demo`.
"""
