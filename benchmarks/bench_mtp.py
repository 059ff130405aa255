"""Self-speculative decoding benchmark (issue 6): tokens per forward and wall-clock speedup of an MTP
model with k = 1..n heads, at batch sizes 1..32, on this machine.

Goal: at batch 1, wall-clock speedup >= 0.85 x tokens per forward (tau; the paper reaches
3.05 / 3.50 = 0.87 on code). Every speedup is measured side by side against the same model's plain
decoding (k = 1) through the same loop, same prompts, same batch size (`measure_self_speculative`).

Model (state how obtained, printed with the table):
- ``SCYLLA_MTP_BENCH_SOURCE=corpus`` (default): a 4-head MTP model trained with the project's loop
  (`train_budgets(..., model_factory=mtp_factory(4))`) on the ``pycode`` corpus, byte-level, cached
  under ``$SCYLLA_CACHE`` (trained on first use, ~5-10 minutes on 2 cores; reused afterwards); prompts
  from the ``code`` task's eval split.
- ``SCYLLA_MTP_BENCH_SOURCE=synthetic``: the same shape trained for seconds on a second-order Markov
  stream (`scylla.mtp.synthetic_stream`), for a quick look at the cost side.

Knobs: ``SCYLLA_BENCH_THREADS`` (2), ``SCYLLA_MTP_BENCH_BATCHES`` ("1,2,4,8,16,32"),
``SCYLLA_MTP_BENCH_TOKENS`` (training budget in bytes, 524_288), ``SCYLLA_MTP_BENCH_NEW`` (64 new tokens).
"""

from __future__ import annotations

import math
import os
import time

import torch

from scylla.models import ModelSpec
from scylla.mtp import MTPForCausalLM, build_mtp, mtp_factory, mtp_parameter_counts, synthetic_stream, train_on_stream
from scylla.mtp_decode import measure_self_speculative

N_FUTURE = 4
# Trunk 6 layers + 4 one-layer heads at width 64, byte-level: a model this CPU trains in minutes. Bytes
# suit MTP (the paper's largest gains are byte-level) and keep the unembedding cheap (257 ids).
D_MODEL, N_LAYERS, N_HEADS = 64, 7, 4


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def corpus_model() -> tuple[MTPForCausalLM, list[list[int]], str]:
    """4-head MTP model trained on pycode through `train_budgets` (cached), and code-task prompts."""
    from scylla.checkpoints import load_checkpoint
    from scylla.data import eval_prompts
    from scylla.tokenizer import default_cache_dir, get_tokenizer
    from scylla.train import TrainConfig, train_budgets

    corpora = ["pycode"]
    cache = default_cache_dir()
    tok = get_tokenizer("byte")
    spec = ModelSpec(d_model=D_MODEL, n_layers=N_LAYERS, n_heads=N_HEADS, vocab_size=tok.vocab_size, max_seq_len=512)
    budget = _env_int("SCYLLA_MTP_BENCH_TOKENS", 524_288)
    cfg = TrainConfig(seq_len=256, batch_size=16, lr=3e-3, warmup_steps=20, eval_tokens=16_384)
    t0 = time.perf_counter()
    path = train_budgets(spec, corpora, tok, [budget], cfg, cache, model_factory=mtp_factory(N_FUTURE))[budget]
    model, prov = load_checkpoint(path)
    took = time.perf_counter() - t0
    prompts = eval_prompts("code", tok, 32, 64, seed=0)
    how = (f"trained with train_budgets on pycode, {budget:,} tokens, byte-level "
           f"(val loss head 1+..+{N_FUTURE}: {prov.get('val_loss', float('nan')):.3f}; ready in {took:.0f} s, "
           f"cached at {path})")
    return model, prompts, how


def synthetic_model() -> tuple[MTPForCausalLM, list[list[int]], str]:
    """Same shape, trained for seconds on a Markov stream (vocab 256)."""
    vocab = 256
    spec = ModelSpec(d_model=D_MODEL, n_layers=N_LAYERS, n_heads=N_HEADS, vocab_size=vocab, max_seq_len=512)
    stream = synthetic_stream(200_000, vocab, determinism=0.8, seed=0)
    model = build_mtp(spec, N_FUTURE, seed=0)
    t0 = time.perf_counter()
    losses = train_on_stream(model, stream, steps=300, seq_len=64, batch_size=16, seed=0)
    g = torch.Generator().manual_seed(1)
    prompts = []
    for _ in range(32):
        start, length = torch.randint(0, len(stream) - 64, (1,), generator=g).item(), torch.randint(16, 33, (1,),
                                                                                                     generator=g).item()
        prompts.append(stream[start : start + length].tolist())
    how = (f"trained {len(losses)} steps on a synthetic 2nd-order Markov stream (vocab {vocab}, determinism 0.8) "
           f"in {time.perf_counter() - t0:.0f} s; loss {losses[0]:.2f} -> {losses[-1]:.2f}")
    return model, prompts, how


def main() -> None:
    torch.set_num_threads(_env_int("SCYLLA_BENCH_THREADS", 2))
    source = os.environ.get("SCYLLA_MTP_BENCH_SOURCE", "corpus")
    if source not in ("corpus", "synthetic"):
        raise SystemExit(f"SCYLLA_MTP_BENCH_SOURCE must be 'corpus' or 'synthetic', got {source!r}")
    model, prompts, how = corpus_model() if source == "corpus" else synthetic_model()
    model.eval()
    counts = mtp_parameter_counts(model)
    batches = [int(b) for b in os.environ.get("SCYLLA_MTP_BENCH_BATCHES", "1,2,4,8,16,32").split(",")]
    max_new = _env_int("SCYLLA_MTP_BENCH_NEW", 64)
    print(f"MTP model: d={model.config.hidden_size}, trunk {counts['trunk_layers']} layers + {counts['n_future']} "
          f"one-layer heads, {counts['total'] / 1e6:.2f}M params ({counts['non_embedding'] / 1e6:.2f}M non-embedding); "
          f"{how}")
    print(f"greedy, {max_new} new tokens per prompt, threads={torch.get_num_threads()}; tau = tokens per forward "
          "= 1 + accepted/steps (bonus/correction token included); speedup = tok/s(k) / tok/s(k=1), same loop, "
          "same batch; median of interleaved repeats")
    header = (f"{'B':>3} {'k':>2} {'tau':>6} {'alpha_n (heads 2..k)':<24} {'tok/s':>9} {'plain tok/s':>11} "
              f"{'speedup':>8} {'speedup/tau':>11} {'T_verify/T_plain':>16}")
    print(header)
    print("-" * len(header))
    best_b1 = (0.0, 0.0, 0)
    for batch in batches:
        n_prompts = max(batch, 8 if batch == 1 else batch)  # batch 1: 8 prompts one after another
        part = prompts[:n_prompts] if n_prompts <= len(prompts) else (prompts * math.ceil(n_prompts / len(prompts)))[
            :n_prompts]
        repeats = 3 if batch <= 4 else 2
        for k in range(1, N_FUTURE + 1):
            m = measure_self_speculative(model, part, k=k, batch_size=batch, max_new_tokens=max_new, repeats=repeats)
            d = m.to_dict()
            ratio = d["speedup"] / d["tau"]
            alphas = ", ".join(f"{a:.2f}" for a in d["alpha_n"]) or "-"
            print(f"{batch:>3} {k:>2} {d['tau']:>6.2f} {alphas:<24} {d['tokens_per_second']:>9.1f} "
                  f"{d['baseline_tokens_per_second']:>11.1f} {d['speedup']:>8.2f} {ratio:>11.2f} "
                  f"{d['verify_step_seconds'] / d['target_step_seconds']:>16.2f}", flush=True)
            if batch == 1 and k > 1 and d["speedup"] > best_b1[0]:
                best_b1 = (d["speedup"], ratio, k)
    if best_b1[2]:
        speedup, ratio, k = best_b1
        verdict = "met" if ratio >= 0.85 else "NOT met"
        print(f"goal (batch 1, best k={k}): speedup {speedup:.2f}x = {ratio:.2f} x tokens per forward "
              f"(goal >= 0.85: {verdict}; paper 0.87 on code)")


if __name__ == "__main__":
    main()
