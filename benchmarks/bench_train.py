"""Training benchmark: tokens/s per model size with ``bf16: auto`` beside fp32 and bf16 autocast
(goal: auto / max(fp32, bf16) >= 0.95), and the cost of a K-budget token sweep divided by the cost of
the largest budget alone (goal: <= 1.3).

Run: ``.venv/bin/python benchmarks/bench_train.py`` (``make bench``). Options through environment:
``BENCH_THREADS`` (default 2), ``BENCH_STEPS`` (timed steps per size and precision, default 6),
``BENCH_PRESETS`` (comma-separated preset names, default draft-w32, draft-w128, demo),
``BENCH_SWEEP_PRESET`` (default draft-w64). ``auto`` is decided afresh for each size (a temporary
precision cache), exactly as `train_budgets` decides it, so its measurement is part of what is shown.
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

from scylla.training.precision import decide_precision

from scylla.training.checkpoints import read_provenance
from scylla.models.llama import ModelSpec, build_llama, count_parameters
from scylla.harness.presets import spec_for
from scylla.data.tokenizer import default_cache_dir, get_tokenizer
from scylla.training.trainer import BatchSampler, TrainConfig, lm_loss, make_optimizer, plan_branch, train_budgets


def throughput(spec: ModelSpec, sampler: BatchSampler, cfg: TrainConfig, steps: int,
               sides: dict[str, bool]) -> dict[str, tuple[float, float]]:
    """Training tokens/s (forward, backward, AdamW) of each side (name -> bf16 autocast on or off), as
    (fastest step, median step).

    The sides alternate step by step on copies of the model, so load from other processes hits all
    alike, after one warm-up step each. Interference only ever slows a step, so the fastest step is
    the best estimate of the cost on a shared machine; the median is printed beside it."""
    models = {name: build_llama(spec, seed=0).train() for name in sides}
    opts = {name: make_optimizer(m, cfg) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for step in range(steps + 1):
        x, y, _ = sampler.batch(step)
        for name, model in models.items():
            bf16 = sides[name]
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = lm_loss(model(input_ids=x, labels=y))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            if step:
                times[name].append(time.perf_counter() - t0)
    return {name: (cfg.tokens_per_step / min(ts), cfg.tokens_per_step / statistics.median(ts))
            for name, ts in times.items()}


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
    presets = names.split(",") if names else ["draft-w32", "draft-w128", "demo"]
    print(f"# load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other processes slow every figure)")
    print(f"# training throughput (fastest step; fp32, bf16 and auto steps interleaved): seq_len {cfg.seq_len}, "
          f"batch {cfg.batch_size}, {threads} thread(s), {steps} timed steps, vocab {tok.vocab_size}, "
          f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("# auto: decided per size by decide_precision (fresh cache: measured now); 'decide s' is that "
          "one-off measurement, cached per machine afterwards")
    print(f"{'preset':>10} {'params':>9} {'fp32 tok/s':>11} {'bf16 tok/s':>11} {'bf16/fp32':>9} {'auto':>5} "
          f"{'auto tok/s':>11} {'auto/best':>9} {'(median)':>8} {'decide s':>8}")
    worst = float("inf")
    for name in presets:
        spec = spec_for(name, tok.vocab_size)
        model = build_llama(spec, seed=0)
        params = count_parameters(model)["total"]
        with tempfile.TemporaryDirectory(prefix="scylla-bench-precision-") as precision_cache:
            t0 = time.perf_counter()
            decision = decide_precision("auto", model, "cpu", seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                                        cache_dir=precision_cache)
            decide_seconds = time.perf_counter() - t0
        rates = throughput(spec, sampler, cfg, steps, {"fp32": False, "bf16": True, "auto": decision.bf16})
        (fp32, fp32_med), (bf16, bf16_med), (auto, auto_med) = rates["fp32"], rates["bf16"], rates["auto"]
        worst = min(worst, auto / max(fp32, bf16))
        print(f"{name:>10} {params / 1e6:8.2f}M {fp32:11.0f} {bf16:11.0f} {bf16 / fp32:9.2f} {decision.precision:>5} "
              f"{auto:11.0f} {auto / max(fp32, bf16):9.2f} {auto_med / max(fp32_med, bf16_med):8.2f} "
              f"{decide_seconds:8.1f}")
    print(f"auto / max(fp32, bf16): worst {worst:.2f} over {len(presets)} sizes (goal >= 0.95); the auto column "
          "runs the same code as the side it chose, so a ratio below 1 is noise unless auto chose the slower side")

    # Token sweep: K log-spaced budgets in one run vs the largest budget alone, same model and config.
    sweep_preset = os.environ.get("BENCH_SWEEP_PRESET", "draft-w64")
    spec = spec_for(sweep_preset, tok.vocab_size)
    tps = cfg.tokens_per_step
    budgets = [tps * s for s in (12, 25, 50, 100)]  # doubling: 49k .. 410k tokens
    # Resolve bf16=auto once first (measured, then cached), so no timed run below pays the one-off
    # precision measurement and all four train under the same precision.
    decide_precision(cfg.bf16, build_llama(spec, seed=cfg.seed), "cpu", seq_len=cfg.seq_len,
                     batch_size=cfg.batch_size, vocab_size=spec.vocab_size)
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
