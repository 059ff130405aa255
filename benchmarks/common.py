"""Models shared by the benchmarks, built through the pipeline's own stages (`scylla.harness.pipeline`) and
the checkpoint cache, so a benchmark measures exactly the models a job would and reuses them:

- `demo_pair`: the real default target SmolLM2-135M-Instruct and the largest draft of `make demo`
  (draft-w64 over its 8,192 most frequent tokens, 600k tokens): trained by `make demo` or on first use;
- `bench_pair`: the small self-trained pair (`target=demo`, 5.9M parameters, vocabulary 4,096) that the
  engine and MTP benchmarks of issues 2 and 6 were defined on.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

BENCH_DRAFT = "draft-w64"  # ~0.36M params at vocab 4096: ~16x smaller than the 5.9M demo target
BENCH_DRAFT_TOKENS = 1_600_000
# The demo grid's budgets for this draft: the benchmark reuses the checkpoint `make demo` trained.
BENCH_DRAFT_BUDGETS = (400_000, 800_000, 1_600_000)


def bench_context(overrides: list[str] | None = None) -> Any:
    """A pipeline JobContext for the default config (+ overrides), tokenizer ready."""
    from scylla.config import compose, validate
    from scylla.harness.pipeline import JobContext, resolve_path, build_tokenizer, resolve_device
    from scylla.harness.tracking import make_tracker

    cfg = validate(compose(list(overrides or [])))
    ctx = JobContext(cfg=cfg, cache_dir=resolve_path(cfg.paths.cache_dir), device=resolve_device("auto"),
                     threads=torch.get_num_threads(), tracker=make_tracker(cfg.logger, run_id="bench", config={}),
                     progress=True)
    ctx.tokenizer = build_tokenizer(ctx)
    return ctx


DEMO_DRAFT = ["experiment=demo", "draft=draft-w64", "draft.tokens=600000",
              "draft.token_budgets=[60000,200000,600000]"]


def demo_pair() -> tuple[Any, Any, Any]:
    """(SmolLM2 target, the demo's largest draft, the context with the target's tokenizer)."""
    from scylla.harness.pipeline import build_target, draft_family

    ctx = bench_context([*DEMO_DRAFT, "logger=none"])
    ctx.target = build_target(ctx)
    draft = draft_family("llama").build(ctx)
    ctx.eos_token_id = ctx.tokenizer.eos_token_id
    return ctx.target.model, draft.model, ctx


def bench_pair(n_prompts: int = 32, prompt_tokens: int = 64) -> tuple[Any, Any, list[list[int]]]:
    """(target, draft, code-task prompts): trained on first use, cached afterwards."""
    from scylla.data.tasks import eval_prompts
    from scylla.harness.pipeline import build_target, draft_family

    budgets = "[" + ",".join(map(str, BENCH_DRAFT_BUDGETS)) + "]"
    ctx = bench_context([f"draft={BENCH_DRAFT}", f"draft.tokens={BENCH_DRAFT_TOKENS}", f"draft.token_budgets={budgets}",
                         "logger=none"])
    ctx.target = build_target(ctx)
    draft = draft_family("llama").build(ctx)
    prompts = eval_prompts("code", ctx.tokenizer, n_prompts, prompt_tokens, seed=0)
    return ctx.target.model, draft.model, prompts


def block_forward_ratio(forward_for: Callable[[int], Callable[[torch.Tensor, Any], Any]], prompt: list[int],
                        width: int, fresh_cache: Callable[[], Any], repeats: int = 60) -> float:
    """Time of one cached forward on ``width`` new tokens over one on a single token (raw model, no
    decoding loop), fastest of ``repeats`` interleaved calls each.

    Leviathan's speedup formula takes this ratio to be 1 (verification is free, as on a GPU at small
    batch); measured on this CPU it bounds what any engine can reach, which is why the benchmarks print
    it. ``forward_for(w)`` gives the forward that a block of ``w`` tokens runs (``(tokens [1, w], cache)``,
    appending to the cache); each width gets its own cache from ``fresh_cache()``, prefilled with ``prompt``.
    """
    import time

    widths = (1, width)
    calls = {w: forward_for(w) for w in widths}
    caches = {w: fresh_cache() for w in widths}
    block = {w: torch.tensor([prompt[-w:]]) for w in widths}
    best = {w: float("inf") for w in widths}
    with torch.inference_mode():
        for w in widths:
            calls[w](torch.tensor([prompt]), caches[w])
        for _ in range(repeats):
            for w in widths:
                t0 = time.perf_counter()
                calls[w](block[w], caches[w])
                best[w] = min(best[w], time.perf_counter() - t0)
                caches[w].crop(-w)
    return best[width] / best[1]
