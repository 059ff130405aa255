"""Training benchmark: tokens/s per model size (fp32 vs bf16 autocast), and the cost of a K-budget
token sweep divided by the cost of the largest budget alone (goal: <= 1.3).

Run: ``.venv/bin/python benchmarks/bench_train.py`` (``make bench``). Options through environment:
``BENCH_THREADS`` (default 2), ``BENCH_STEPS`` (timed steps per size and precision, default 6),
``BENCH_PRESETS`` (comma-separated preset names), ``BENCH_SWEEP_PRESET`` (default draft-s).
Figures are measured in this run; on a shared machine they move with the load.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scylla.training.checkpoints import read_provenance
from scylla.models.llama import ModelSpec, build_llama, count_parameters
from scylla.harness.presets import spec_for
from scylla.data.tokenizer import default_cache_dir, get_tokenizer
from scylla.training.trainer import BatchSampler, TrainConfig, _loss, _make_optimizer, plan_branch, train_budgets


def throughput(spec: ModelSpec, sampler: BatchSampler, cfg: TrainConfig, steps: int) -> dict[bool, float]:
    """Training tokens/s (forward, backward, AdamW) in fp32 and with bf16 autocast.

    The two precisions alternate step by step on two copies of the model, so load from other processes
    hits both alike; the median step time is used, after one warm-up step each."""
    models = {bf16: build_llama(spec, seed=0).train() for bf16 in (False, True)}
    opts = {bf16: _make_optimizer(m, cfg) for bf16, m in models.items()}
    times: dict[bool, list[float]] = {False: [], True: []}
    for step in range(steps + 1):
        x, y, _ = sampler.batch(step)
        for bf16, model in models.items():
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = _loss(model(input_ids=x, labels=y))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opts[bf16].step()
            opts[bf16].zero_grad(set_to_none=True)
            if step:
                times[bf16].append(time.perf_counter() - t0)
    return {bf16: cfg.tokens_per_step / statistics.median(ts) for bf16, ts in times.items()}


def _fresh_cache(shared_tokens: Path) -> Path:
    """A temporary checkpoint cache that shares the token-stream cache (tokenising is not training)."""
    root = Path(tempfile.mkdtemp(prefix="scylla-bench-"))
    (root / "tokens").symlink_to(shared_tokens, target_is_directory=True)
    return root


def main() -> None:
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    steps = int(os.environ.get("BENCH_STEPS", "6"))
    torch.set_num_threads(threads)
    corpora = ["pycode", "shakespeare", "kjv"]
    shared = default_cache_dir()
    tok = get_tokenizer("bpe", 4096, corpora, cache_dir=shared)
    (shared / "tokens").mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(seq_len=256, batch_size=16)

    from scylla.data.corpora import load_corpus
    from scylla.training.trainer import token_stream

    stream = token_stream(load_corpus("kjv"), tok, "train", shared)
    sampler = BatchSampler(stream, cfg.seq_len, cfg.batch_size, seed=0)
    names = os.environ.get("BENCH_PRESETS")
    presets = names.split(",") if names else ["draft-xs", "draft-s", "draft-m", "draft-l", "draft-xl", "demo"]
    print(f"# load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other processes slow every figure)")
    print(f"# training throughput (median step, fp32 and bf16 steps interleaved): seq_len {cfg.seq_len}, batch {cfg.batch_size}, {threads} thread(s), "
          f"{steps} timed steps, vocab {tok.vocab_size}")
    print(f"{'preset':>10} {'params':>9} {'fp32 tok/s':>11} {'bf16 tok/s':>11} {'bf16/fp32':>9}")
    for name in presets:
        spec = spec_for(name, tok.vocab_size)
        params = count_parameters(build_llama(spec))["total"]
        rates = throughput(spec, sampler, cfg, steps)
        fp32, bf16 = rates[False], rates[True]
        print(f"{name:>10} {params / 1e6:8.2f}M {fp32:11.0f} {bf16:11.0f} {bf16 / fp32:9.2f}")

    # Token sweep: K log-spaced budgets in one run vs the largest budget alone, same model and config.
    sweep_preset = os.environ.get("BENCH_SWEEP_PRESET", "draft-s")
    spec = spec_for(sweep_preset, tok.vocab_size)
    tps = cfg.tokens_per_step
    budgets = [tps * s for s in (12, 25, 50, 100)]  # doubling: 49k .. 410k tokens
    timings: dict[str, list[float]] = {"sweep": [], "largest": []}
    cpu: dict[str, list[float]] = {"sweep": [], "largest": []}
    # Order A B B A, each in a fresh cache: load drifting on a shared machine hits both alike.
    for label in ("sweep", "largest", "largest", "sweep"):
        todo = budgets if label == "sweep" else budgets[-1:]
        cache = _fresh_cache(shared / "tokens")
        t0, c0 = time.perf_counter(), time.process_time()
        out = train_budgets(spec, corpora, tok, todo, cfg, cache, progress=False)
        timings[label].append(time.perf_counter() - t0)
        cpu[label].append(time.process_time() - c0)
        if label == "sweep":
            losses = {b: read_provenance(p)["val_loss"] for b, p in out.items()}
        shutil.rmtree(cache)  # removes the tokens symlink, not the shared token cache it points to
    token_ratio = (budgets[-1] + sum(b - plan_branch(b, cfg).start_step * tps for b in budgets[:-1])) / budgets[-1]
    print(f"\n# token sweep on {sweep_preset}: budgets {budgets} (cooldown fraction {cfg.cooldown_fraction})")
    print("val loss per budget: " + ", ".join(f"{b}: {v:.3f}" for b, v in losses.items()))
    def fmt(xs: list[float]) -> str:
        return ", ".join(f"{x:.1f}" for x in xs)

    print(f"sweep of {len(budgets)} budgets: {fmt(timings['sweep'])} s; largest alone: {fmt(timings['largest'])} s")
    print(f"cost ratio (wall clock, best of 2 each) = {min(timings['sweep']) / min(timings['largest']):.2f}  "
          f"(goal <= 1.3); total of 2 each = {sum(timings['sweep']) / sum(timings['largest']):.2f}")
    print(f"cost ratio (process CPU time, total of 2 each) = {sum(cpu['sweep']) / sum(cpu['largest']):.2f}")
    print(f"cost ratio (tokens trained) = {token_ratio:.2f}; separate runs would cost "
          f"{sum(budgets) / budgets[-1]:.2f}x")
    print(f"# load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
