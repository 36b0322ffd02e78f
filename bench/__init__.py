"""Benchmarks: `python -m bench` prints the table of figures collected from the modules here."""
