"""Benchmark: the three per-axis laws plus the joint law, each with 1000 bootstrap resamples, on a
realistic synthetic results table (goal: under 10 s in total on this machine).

Side by side in the same run: the vectorised IRLS bootstrap used for linear forms against fitting
every resample with warm-started L-BFGS-B (same resamples, same objective), with the largest
difference between their interval endpoints."""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np

N_BOOT = 1000


def main() -> None:
    from scylla.fit import FitWarning, fit_law, get_form
    from scylla.fit import core
    from scylla.fit.recommend import acceptance_table
    from scylla.fit.synthetic import synthetic_results

    warnings.simplefilter("ignore", FitWarning)
    table = synthetic_results(0, batch_sizes=(1, 2, 4, 8, 16, 32))
    acc = acceptance_table(table)
    big_n = acc[acc["draft_params"] == acc["draft_params"].max()]
    big_t = acc[acc["draft_tokens"] == acc["draft_tokens"].max()]
    name, tokens = table.groupby(["draft_name", "draft_tokens"])["speedup"].mean().idxmax()
    best = table[(table["draft_name"] == name) & (table["draft_tokens"] == tokens)]
    per_batch = best.groupby("batch_size", as_index=False)["speedup"].max()  # best gamma per batch size

    jobs = [
        ("alpha vs tokens (logit_linear)", big_n, "logit_linear", "draft_tokens", "alpha"),
        ("alpha vs params (logit_linear)", big_t, "logit_linear", "draft_params", "alpha"),
        ("speedup vs batch (log_linear)", per_batch, "log_linear", "batch_size", "speedup"),
        ("alpha joint (joint_logit_linear)", acc, "joint_logit_linear", ["draft_tokens", "draft_params"], "alpha"),
    ]
    total = 0.0
    print(f"bench_fit: {len(table)} result rows, {len(acc)} draft configurations, {N_BOOT} bootstrap resamples")
    for name, frame, form, x, y in jobs:
        t0 = time.perf_counter()
        res = fit_law(frame, form, x, y, n_bootstrap=N_BOOT, seed=0)
        dt = time.perf_counter() - t0
        total += dt
        print(f"  {name:<36} n={res.n:<3} {dt:6.2f} s   ({res.bootstrap_mode}, R^2 {res.r2:.3f})")
    print(f"  total for the four laws: {total:.2f} s (goal < 10 s): {'OK' if total < 10 else 'SLOW'}")

    # side by side: batched IRLS vs per-resample L-BFGS-B on the joint law
    form = get_form("joint_logit_linear")
    data = core._prepare(acc, form, ["draft_tokens", "draft_params"], "alpha", None)
    delta = core._robust_delta(form, data)
    theta, *_ = core._fit_point(form, data, delta)
    timed = {}
    for label, f in (("irls", form), ("lbfgsb", dataclasses.replace(form, convex=False))):
        t0 = time.perf_counter()
        draws, failed = core.single_thread_blas(core._bootstrap)(f, data, theta, delta, N_BOOT, 0)
        timed[label] = (time.perf_counter() - t0, draws)
    q = np.nanpercentile(timed["irls"][1], [2.5, 97.5], axis=0)
    r = np.nanpercentile(timed["lbfgsb"][1], [2.5, 97.5], axis=0)
    print(f"  joint-law bootstrap: IRLS {timed['irls'][0]:.2f} s vs L-BFGS-B {timed['lbfgsb'][0]:.2f} s "
          f"-> {timed['lbfgsb'][0] / timed['irls'][0]:.1f}x faster; "
          f"max interval-endpoint difference {np.max(np.abs(q - r)):.2e}")


if __name__ == "__main__":
    main()
