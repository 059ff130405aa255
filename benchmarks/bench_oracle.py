"""Oracle benchmarks (issue 14): every figure is measured side by side in this run.

The pair is `make demo`'s: SmolLM2-135M-Instruct and its largest draft (draft-w64 over 8,192 target
tokens, 600k training tokens; `benchmarks.common.demo_pair`).

1. Cost of measuring acceptance for 3 gammas x 4 batch sizes x 3 tasks on the demo pair: the oracle
   (target continuations once per task, one teacher-forced draft pass pricing every gamma; batch size
   does not change acceptance) against decoding the same 36 cells with the engine. Goal: at least 20x
   cheaper, with identical counters (temperature 0).
2. Composed (predicted) against measured speedup on engine-decoded cells at batch sizes 1 to 32:
   the oracle's counters composed with cost probes (`scylla.measure.compose.predict_speedup`) against
   `measure_speedup` on the same prompts. Goal: |measured / predicted - 1| <= 0.10.

The continuation cache is bypassed (a fresh temporary folder) so part 1 prices the oracle from nothing.
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

from scylla import acceptance_oracle, speculative_generate
from scylla.data.tasks import eval_prompts
from scylla.measure.compose import predict_speedup, required_widths
from scylla.measure.continuations import target_continuations
from scylla.decode.tree import TreeSpec
from scylla.measure.probes import probe_forwards, probe_overhead, probe_prefill
from scylla.measure.speedup import measure_speedup

GAMMAS = (1, 2, 4)
BATCHES = (1, 4, 8, 16)
TASKS = ("code", "shakespeare", "chat-summarise")
MAX_NEW = 32
N_PROMPTS = 16
PROMPT_TOKENS = 48
CHECK_BATCHES = (1, 2, 4, 8, 16, 32)
COUNTERS = ("drafted", "accepted", "steps", "prompt_drafted", "prompt_accepted", "prompt_steps",
            "accepted_per_position", "reached_per_position")


def oracle_against_decoding(target, draft, tokenizer, eos: int | None) -> None:
    print(f"[1] acceptance for {len(GAMMAS)} gammas x {len(BATCHES)} batch sizes x {len(TASKS)} tasks "
          f"({N_PROMPTS} prompts, {MAX_NEW} new tokens, T=0, EOS stops a row)")
    prompts = {t: eval_prompts(t, tokenizer, N_PROMPTS, PROMPT_TOKENS, seed=0) for t in TASKS}
    trees = [f"chain:{g}" for g in GAMMAS]
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        oracle = {}
        for task in TASKS:
            cont = target_continuations(target, prompts[task], max_new_tokens=MAX_NEW, temperature=0.0, seed=0,
                                        eos_token_id=eos, cache_dir=cache)
            oracle[task] = acceptance_oracle(target, draft, prompts[task], trees=trees, max_new_tokens=MAX_NEW,
                                             eos_token_id=eos, continuations=cont)
        t_oracle = time.perf_counter() - t0
    t0 = time.perf_counter()
    mismatches = 0
    for task in TASKS:
        for g in GAMMAS:
            for b in BATCHES:
                s = speculative_generate(target, draft, prompts[task], gamma=g, max_new_tokens=MAX_NEW,
                                         batch_size=b, eos_token_id=eos).stats
                o = oracle[task][f"chain:{g}"]
                mismatches += sum(getattr(s, k) != getattr(o, k) for k in COUNTERS)
    t_engine = time.perf_counter() - t0
    cells = len(GAMMAS) * len(BATCHES) * len(TASKS)
    print(f"    oracle   {t_oracle:8.1f} s (continuations + one teacher-forced pass per task)")
    print(f"    engine   {t_engine:8.1f} s ({cells} cells decoded)")
    print(f"    ratio engine / oracle = {t_engine / t_oracle:.1f}x   (goal >= 20x)   "
          f"counter mismatches: {mismatches} (goal 0)")


def composed_against_measured(target, draft, tokenizer, eos: int | None, repeats: int) -> None:
    n = max(CHECK_BATCHES)
    print(f"[2] composed vs measured speedup, task chat-summarise, {n} prompts, {MAX_NEW} new tokens, "
          f"repeats {repeats} (median)")
    prompts = eval_prompts("chat-summarise", tokenizer, n, PROMPT_TOKENS, seed=0)
    shapes = [TreeSpec.parse(f"chain:{g}") for g in GAMMAS]
    with tempfile.TemporaryDirectory() as cache:
        cont = target_continuations(target, prompts, max_new_tokens=MAX_NEW, temperature=0.0, seed=0,
                                    eos_token_id=eos, cache_dir=cache)
    oracle = acceptance_oracle(target, draft, prompts, trees=[s.describe() for s in shapes], max_new_tokens=MAX_NEW,
                               eos_token_id=eos, continuations=cont)
    mean_prompt = round(sum(map(len, prompts)) / len(prompts))
    need = required_widths(shapes, True)
    probes = []
    for role, model in (("target", target), ("draft", draft)):
        probes += probe_forwards(model, role=role, batch_sizes=range(1, max(CHECK_BATCHES) + 1),
                                 widths=sorted(need[role]["decode"]),
                                 tree_widths=sorted(need[role]["tree"]), context=mean_prompt + MAX_NEW // 2,
                                 repeats=repeats)
        probes += probe_prefill(model, role=role, batch_sizes=CHECK_BATCHES, context=mean_prompt, repeats=repeats)
    overheads = probe_overhead(target, None, prompts, batch_sizes=CHECK_BATCHES, shape="chain:0")
    overheads += probe_overhead(target, draft, prompts, batch_sizes=CHECK_BATCHES, shape=shapes[-1].describe())
    mismatches = 0
    print(f"    {'B':>3} {'gamma':>5} {'tau':>5} {'predicted':>9} {'interval':>13} {'measured':>8} {'ratio':>6}")
    worst = 0.0
    for b in CHECK_BATCHES:
        for spec in shapes:
            stats = oracle[spec.describe()]
            pred = predict_speedup(stats, b, probes, overheads)
            m = measure_speedup(target, draft, prompts, tree=spec.describe(), batch_size=b, max_new_tokens=MAX_NEW,
                                eos_token_id=eos, repeats=repeats)
            mismatches += sum(getattr(m.speculative, k) != getattr(stats, k) for k in COUNTERS)
            ratio = m.speedup / pred["speedup"]
            worst = max(worst, abs(ratio - 1))
            print(f"    {b:3d} {spec.depth:5d} {stats.tau:5.2f} {pred['speedup']:9.3f} "
                  f"[{pred['low']:.2f}, {pred['high']:.2f}] {m.speedup:8.3f} {ratio:6.3f}")
    print(f"    worst |measured / predicted - 1| = {worst:.3f}   (goal <= 0.10); engine counters differing from "
          f"the oracle's: {mismatches} (goal 0)")


def main() -> None:
    from benchmarks.common import demo_pair

    repeats = int(os.environ.get("SCYLLA_BENCH_REPEATS", "5"))
    target, draft, ctx = demo_pair()
    print(f"pair: SmolLM2-135M-Instruct and {ctx.cfg.draft.name} (vocabulary {ctx.cfg.draft.vocab_size:,}, "
          f"{ctx.cfg.draft.tokens:,} tokens); threads {torch.get_num_threads()}; tau includes the bonus token")
    oracle_against_decoding(target, draft, ctx.tokenizer, ctx.eos_token_id)
    composed_against_measured(target, draft, ctx.tokenizer, ctx.eos_token_id, max(1, (repeats + 1) // 2))


if __name__ == "__main__":
    main()
