"""Benchmark harness for the entitlement engine (see docs/benchmarks.md and scripts/bench).

Each workload of `../shared/spec/BENCHMARKS.md` is measured beside a floor taken in the same run,
on the same machine, with the same load generator, so that the ratios survive a noisy machine.
"""
