"""Tree benchmarks (issue 16): every figure is measured side by side in this run.

1. Tree against chain with the same draft on the demo pair (SmolLM2-135M-Instruct and `make demo`'s largest
   draft, `benchmarks.common.demo_pair`), at batch sizes 1 to 32: tau (tokens per
   target forward, bonus included), tokens verified per step and wall-clock speedup over plain decoding.
   The batch-size law predicts that wider trees pay at batch 1 and lose as batch grows, because each
   verified node costs target compute that a large batch no longer hides.
2. The engine's wall time outside its model forwards (sampling, acceptance, KV bookkeeping, Python) as a
   share of the total, for chains and trees. Goal: <= 5%.
"""

from __future__ import annotations

import os

from scylla.data.tasks import eval_prompts
from scylla.measure.speedup import measure_speedup

SHAPES = ("chain:1", "chain:4", "static:2x2x1x1", "static:3x2x2", "dynamic:4x4x12")
BATCHES = (1, 2, 4, 8, 16, 32)
MAX_NEW = 32
MIN_PROMPTS = 8  # prompts per cell: max(MIN_PROMPTS, batch size), so every batch is full


def main() -> None:
    from benchmarks.common import demo_pair

    repeats = max(1, (int(os.environ.get("SCYLLA_BENCH_REPEATS", "5")) + 1) // 2)
    target, draft, ctx = demo_pair()
    all_prompts = eval_prompts("chat-summarise", ctx.tokenizer, max(BATCHES), 48, seed=0)
    print(f"[1] tree vs chain, task chat-summarise, max({MIN_PROMPTS}, B) prompts, {MAX_NEW} new tokens, T=0, "
          f"repeats {repeats} (each side's fastest run; median speedup beside it); tau includes the bonus token")
    print(f"    {'B':>3} {'shape':>16} {'tau':>5} {'verified/step':>13} {'speedup':>8} {'median':>7} {'overhead':>8}")
    worst_share = 0.0
    for b in BATCHES:
        prompts = all_prompts[:max(MIN_PROMPTS, b)]
        for shape in SHAPES:
            m = measure_speedup(target, draft, prompts, tree=shape, batch_size=b, max_new_tokens=MAX_NEW,
                                eos_token_id=ctx.eos_token_id, repeats=repeats)
            s = m.speculative
            runs = m.speculative_runs or [s]
            fastest = min(runs, key=lambda r: r.wall_seconds)
            share = fastest.overhead_seconds / fastest.wall_seconds
            worst_share = max(worst_share, share)
            per_step = s.verified_tokens / max(s.steps, 1)
            print(f"    {b:3d} {shape:>16} {s.tau:5.2f} {per_step:13.1f} {m.summarised('best').speedup:8.3f} "
                  f"{m.speedup:7.3f} {share:8.1%}")
    print(f"[2] engine time outside the forwards, worst cell (fastest run's share): {worst_share:.1%}   (goal <= 5%)")


if __name__ == "__main__":
    main()
