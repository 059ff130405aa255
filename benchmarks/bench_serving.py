"""Benchmark: the measured-cell serving recommender on a study of the size it must handle quickly:
100 oracle jobs x 5 tasks x 8 shapes x 6 serving batch sizes, 32 prompts per task (24,000 oracle rows,
801 candidates with no speculation), priced with 200 and with 1000 paired bootstrap draws, then written
(configs, summary; the synthetic drafts have no checkpoints, so nothing is exported).

Side by side: the vectorised pricing's point estimates against `predict_speedup` (the per-cell trace
composition a job records) on a sample of cells: they must agree to rounding."""

from __future__ import annotations

import dataclasses
import tempfile
import time


def main() -> None:
    from scylla.decode.stats import DecodeStats
    from scylla.fit.deploy import write_serving
    from scylla.fit.serving import recommend_cells
    from scylla.fit.synthetic import synthetic_serving_study
    from scylla.measure.compose import predict_speedup
    from scylla.measure.probes import ForwardProbe, OverheadProbe

    t0 = time.perf_counter()
    records = synthetic_serving_study(100)
    rows = sum(len(r["measurements"]) for r in records)
    print(f"bench_serving: {len(records)} jobs, {rows} oracle rows (built in {time.perf_counter() - t0:.1f} s)")
    for n_boot in (200, 1000):
        t0 = time.perf_counter()
        rec = recommend_cells(records, n_boot=n_boot)
        dt = time.perf_counter() - t0
        print(f"  recommend_cells, {n_boot:4d} paired draws: {dt:6.2f} s  ({rec.speedup.shape[1]} candidates x "
              f"{rec.speedup.shape[2]} batch sizes x {rec.speedup.shape[0]} rows)")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_serving(rec, f"{tmp}/serving")
        print(f"  write_serving: {time.perf_counter() - t0:.2f} s")
    b = rec.per_batch[0]
    print(f"  B={b['batch_size']}: best {b['best']['draft_name']}@{b['best']['draft_tokens']:.3g} {b['best']['shape']} "
          f"S={b['best']['speedup']:.3f} [{b['best']['low']:.3f}, {b['best']['high']:.3f}] P(best)={b['p_best']:.2f}")

    names = {f.name for f in dataclasses.fields(DecodeStats)}
    worst = 0.0
    for record in records[::25]:
        fp = [ForwardProbe(**{k: v for k, v in p.items() if k not in ("median", "best")}) for p in record["probes"]]
        op = [OverheadProbe(**{k: v for k, v in o.items() if k not in ("median", "best")}) for o in record["overheads"]]
        has_model = record["draft"]["family"] != "ngram"
        for m in record["measurements"][::97]:
            ref = predict_speedup(DecodeStats(**{k: v for k, v in m["speculative"].items() if k in names}),
                                  m["batch_size"], fp, op, has_draft_model=has_model, n_boot=0)["speedup"]
            ts = rec.task_speedups
            mine = ts[(ts["run_id"] == record["run_id"]) & (ts["shape"] == m["tree"]) & (ts["task"] == m["task"])
                      & (ts["batch_size"] == m["batch_size"])]["speedup"].iloc[0]
            worst = max(worst, abs(mine / ref - 1))
    print(f"  point estimates vs predict_speedup on sampled cells: max relative difference {worst:.1e} "
          f"({'OK' if worst < 1e-9 else 'MISMATCH'})")


if __name__ == "__main__":
    main()
