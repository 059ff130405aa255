"""Cost probes and composed speedup: the arithmetic on known costs, and the probes on a real model."""

from __future__ import annotations

import pytest

from scylla.decode.stats import DecodeStats
from scylla.decode.tree import TreeSpec
import numpy as np

from scylla.measure.compose import predict_seconds, predict_seconds_draws, predict_speedup, required_widths, step_plan
from scylla.measure.probes import (CostDraws, CostTable, CpuContention, ForwardProbe, OverheadProbe, probe_forwards,
                                  probe_overhead, probe_prefill)
from scylla.testing import random_prompts, tiny_llama


def _probe(role, kind, width, batch, t):
    return ForwardProbe(role, kind, batch, width, 16, [t, t * 1.1, t * 0.9])


def _table(batches=(1, 2, 4)):
    # target: 10 ms + 1 ms per row per token of width; draft: 2 ms flat; prefill 5 ms; overhead 1 ms/step.
    probes = []
    for b in batches:
        for w in (1, 2, 3, 4, 5):
            probes.append(_probe("target", "decode", w, b, 0.010 + 0.001 * b * w))
        for w in (1, 2):
            probes.append(_probe("draft", "decode", w, b, 0.002))
        probes.append(ForwardProbe("target", "prefill", b, 16, 16, [0.005] * 3))
        probes.append(ForwardProbe("draft", "prefill", b, 16, 16, [0.001] * 3))
    overheads = [OverheadProbe(b, "chain:0", [0.001] * 3, 0.0) for b in batches]
    overheads += [OverheadProbe(b, "chain:2", [0.003] * 3, 2.0) for b in batches]
    return probes, overheads


def test_step_plans_name_the_forwards_each_shape_runs():
    chain = step_plan(TreeSpec.chain(4), True)
    assert (chain.target_width, chain.target_kind, chain.draft_forwards) == (5, "decode", 4)
    tree = step_plan(TreeSpec.parse("static:3x2x1"), True)
    assert (tree.target_width, tree.target_kind) == (1 + 3 + 6 + 6, "tree")
    assert tree.draft_blocks == ((3, "tree"), (6, "tree"))
    assert step_plan(TreeSpec.chain(0), False).draft_forwards == 0
    need = required_widths([TreeSpec.chain(2), TreeSpec.parse("static:2x2")], True)
    assert need["target"]["decode"] == {1, 3} and need["target"]["tree"] == {7} and need["draft"]["tree"] == {2}
    with pytest.raises(ValueError, match="dynamic"):
        step_plan(TreeSpec.parse("dynamic:2x2x3"), True)


def test_predicted_seconds_replay_the_ragged_batch():
    """Rows needing 3 and 1 steps at batch 2: forwards at 2, 1 and 1 active rows, plus the prefills."""
    probes, overheads = _table()
    table = CostTable(probes, overheads)
    plain = predict_seconds([3, 1], 2, table, step_plan(TreeSpec.chain(0), False))
    expect = 0.005 + sum(0.010 + 0.001 * b * 1 + 0.001 for b in (2, 1, 1))
    assert plain == pytest.approx(expect)
    chain = predict_seconds([3, 1], 2, table, step_plan(TreeSpec.chain(2), True), full_accept_rate=0.0)
    # target width 3, draft width-1 forward twice, overhead 1 ms + 1 ms per draft forward
    expect = 0.005 + 0.001 + sum(0.010 + 0.001 * b * 3 + 2 * 0.002 + 0.003 for b in (2, 1, 1))
    assert chain == pytest.approx(expect)
    with pytest.raises(KeyError, match="width 9"):
        table.time("target", "decode", 9, 1)


@pytest.mark.parametrize("shape", ["chain:0", "chain:2", "static:2x1"])
@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_vectorised_replay_equals_the_scalar_one(shape: str, batch: int):
    """The interval's K-draw replay must price a draw exactly as `predict_seconds` prices one table,
    with ragged and fractional (temperature > 0 expectation) step counts, beyond the probed batch sizes too."""
    probes, overheads = _table(batches=(1, 3))
    probes += [_probe("target", "tree", 5, b, 0.011 + 0.005 * b) for b in (1, 3)]
    probes += [_probe("draft", "tree", 2, b, 0.003) for b in (1, 3)]
    plan = step_plan(TreeSpec.parse(shape), shape != "chain:0")
    steps = [3, 1, 4.5, 2, 0.4, 6]
    for summary in ("median", "best"):
        table = CostTable(probes, overheads, summary)
        want = predict_seconds(steps, batch, table, plan, 0.3)
        got = predict_seconds_draws(np.asarray([steps]), batch, CostDraws(probes, overheads, summary), plan, 0.3)
        assert got.shape == (1,) and got[0] == pytest.approx(want, rel=1e-12)
    draws = CostDraws(probes, overheads, n_boot=63)
    many = predict_seconds_draws(np.tile(steps, (64, 1)), batch, draws, plan, 0.3)
    assert many.shape == (64,) and many[0] == pytest.approx(predict_seconds(steps, batch, CostTable(probes, overheads),
                                                                            plan, 0.3))
    assert many[1:].std() > 0  # row 0 is the measured times, the rest resample each probe's repeats


def test_predicted_speedup_and_its_interval_on_known_costs():
    probes, overheads = _table()
    stats = DecodeStats(gamma=2, temperature=0.0, batch_size=0, n_prompts=4, tree="chain:2",
                        accepted_per_position=[6, 2], reached_per_position=[8, 6], prompt_steps=[3, 3, 2, 2],
                        prompt_generated=[9, 8, 6, 5], prompt_accepted=[5, 4, 3, 2], prompt_drafted=[6, 6, 4, 4])
    stats.steps, stats.accepted = 10, 14
    out = predict_speedup(stats, 2, probes, overheads, n_boot=50)
    table = CostTable(probes, overheads)
    t_spec = predict_seconds([3, 3, 2, 2], 2, table, step_plan(TreeSpec.chain(2), True), 2 / 10)
    t_plain = predict_seconds([8, 7, 5, 4], 2, table, step_plan(TreeSpec.chain(0), False))
    assert out["speedup"] == pytest.approx(t_plain / t_spec)
    assert out["low"] <= out["speedup"] <= out["high"]
    steady = stats.tau * (0.012 + 0.001) / (0.016 + 0.8 * 0.002 + 0.2 * 0.002 + 0.002 + 0.003)
    assert out["steady_state"] == pytest.approx(steady)


def test_probes_time_every_requested_forward_of_a_real_model():
    model = tiny_llama(64, d_model=32, n_layers=1, n_heads=2)
    probes = probe_forwards(model, role="target", batch_sizes=[1, 3], widths=[1, 4], tree_widths=[4], context=10,
                            repeats=2)
    assert {(p.batch_size, p.kind, p.width) for p in probes} == {(b, k, w) for b in (1, 3) for k, w in
                                                                   (("decode", 1), ("decode", 4), ("tree", 4))}
    assert all(len(p.times) == 2 and p.best <= p.median and p.context == 10 for p in probes)
    assert probes[0].machine["threads"] >= 1 and "cpu_capability" in probes[0].machine
    pre = probe_prefill(model, role="target", batch_sizes=[2], context=12, repeats=2)
    assert pre[0].kind == "prefill" and len(pre[0].times) == 2
    ov = probe_overhead(model, None, random_prompts(4, 64, seed=1), batch_sizes=[2], shape="chain:0", new_tokens=4,
                        repeats=2)
    assert ov[0].batch_size == 2 and all(t >= 0 for t in ov[0].per_step) and ov[0].draft_forwards_per_step == 0
    table = CostTable(probes + pre, ov)
    assert table.time("target", "decode", 4, 2) == pytest.approx(
        (table.time("target", "decode", 4, 1) + table.time("target", "decode", 4, 3)) / 2)


@pytest.mark.skipif(not __import__("os").path.exists("/proc/stat"), reason="CPU accounting comes from /proc/stat (Linux)")
def test_cpu_contention_counts_other_processes_and_not_this_one():
    """A process spinning beside the block is counted (about one core); this process's own work is not."""
    import subprocess
    import sys
    import time

    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<3: pass"])
    try:
        time.sleep(0.3)
        with CpuContention() as busy:
            time.sleep(1.0)
    finally:
        spinner.kill()
        spinner.wait()
    with CpuContention() as own:
        t = time.perf_counter()
        while time.perf_counter() - t < 1.0:
            pass
    assert busy.foreign_cores is not None and busy.foreign_cores > 0.6
    assert own.foreign_cores is not None and own.foreign_cores < 0.5


@pytest.mark.skipif(not __import__("os").path.exists("/proc/stat"), reason="CPU accounting comes from /proc/stat (Linux)")
def test_contended_probe_rounds_are_retimed_then_flagged(monkeypatch):
    """Rounds over the contention limit are timed again; when the re-timing budget is spent, the kept
    contended rounds are counted in the record and a warning names the fix."""
    monkeypatch.setattr(CpuContention, "MIN_WALL", 0.0)  # a tiny model's rounds are shorter than a tick
    model = tiny_llama(64, d_model=32, n_layers=1, n_heads=2)
    with pytest.warns(UserWarning, match="idle machine"):
        probes = probe_forwards(model, role="target", batch_sizes=[1], widths=[1], context=8, repeats=3,
                                max_foreign_cores=-1.0, max_retimed=2)  # every round counts as contended
    m = probes[0].machine
    assert len(probes[0].times) == 3 and m["rounds_retimed"] == 2 and m["contended_rounds_kept"] == 3
    quiet = probe_forwards(model, role="target", batch_sizes=[1], widths=[1], context=8, repeats=3,
                           max_foreign_cores=1e9)
    assert quiet[0].machine["rounds_retimed"] == 0 and quiet[0].machine["contended_rounds_kept"] == 0
    # a cached probe is reused only when it kept no contended round
    from scylla.measure.probes import timed_while_contended

    assert timed_while_contended(m) and not timed_while_contended({**quiet[0].machine, "foreign_cores_max": 0.0})


def test_probe_rounds_rotate_their_cells_after_an_untimed_forward():
    """Each round warms every batch size's cache with one untimed 1-token forward, then visits its cells
    starting one later than the round before, so no cell always comes first."""
    model = tiny_llama(64, d_model=32, n_layers=1, n_heads=2)
    calls: list[tuple[int, int]] = []
    model.register_forward_hook(lambda mod, args, kwargs, out: calls.append(tuple(kwargs["input_ids"].shape)),
                                with_kwargs=True)
    probe_forwards(model, role="target", batch_sizes=[1, 2], widths=[2, 3], tree_widths=[4], context=8, repeats=3,
                   max_foreign_cores=1e9)
    rounds = [calls[i:i + 8] for i in range(2, len(calls), 8)]  # after the two prefills: 2 x (warm-up + 3 cells)
    assert len(rounds) == 4  # round 0 warms up, then 3 timed rounds
    for r, seen in enumerate(rounds):
        assert seen[0] == (1, 1) and seen[4] == (2, 1)  # the untimed forward before each batch size's cells
        order = [w for _, w in seen[1:4]]
        assert order == ([2, 3, 4] * 2)[r % 3:r % 3 + 3]
