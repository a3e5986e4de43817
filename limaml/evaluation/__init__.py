"""Offline evaluation: the time-split protocol, baselines, reports and ablations.

See docs/evaluation.md for the protocol and how to run it (`limaml eval`, `limaml ablate`).
"""
