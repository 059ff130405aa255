"""SmolLM2-135M-Instruct: an EAGLE-3 head against the standalone draft of about equal draft-step cost,
both trained on the same number of tokens (reduced vocabulary of 8,192 target tokens).

    python -m benchmarks.run_all eagle3                   (full: ~200k training tokens each; tens of minutes)
    BENCH_EAGLE3_QUICK=1 python -m benchmarks.run_all eagle3     (a smoke run: minutes, numbers meaningless)

Knobs (environment): ``BENCH_EAGLE3_TOKENS`` (training tokens of each draft, default 200000),
``BENCH_EAGLE3_TTT`` (training-time-test steps of the head, default 3, ModelOpt's; SpecForge uses 7),
``BENCH_EAGLE3_LAYERS`` (head layers, default 1), ``BENCH_EAGLE3_RESULTS`` (records folder, default
outputs/bench-eagle3), ``BENCH_THREADS``.

Steps: (1) the head's draft-step time and each candidate standalone shape's are probed on this machine
(untrained models: a forward's cost depends on shapes, not weights), and the candidate closest in cost is
chosen; (2) both are trained and measured by the ordinary job pipeline (`scylla.harness.pipeline.run_job`:
one record each in the results folder, reused on a re-run), which prices tau with the oracle, predicts the
speedup from probed costs and decodes the best predicted cell at batch 1 and 8 with the engine; (3) tau at
batch 1 and the speedups (predicted and engine-measured) are printed side by side with their ratios.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch

VOCAB = 8192
# Standalone Llama drafts whose step cost may match a one-layer head at SmolLM2's width (576):
# (d_model, n_layers, n_heads, ffn_dim).
CANDIDATES = ((576, 1, 9, 1536), (512, 1, 8, 1376), (384, 2, 6, 1024), (320, 2, 5, 864), (256, 2, 4, 704),
              (256, 3, 4, 704), (192, 4, 3, 512))


def _env(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def settings() -> dict[str, Any]:
    quick = os.environ.get("BENCH_EAGLE3_QUICK", "") not in ("", "0")
    return {
        "quick": quick,
        "tokens": _env("BENCH_EAGLE3_TOKENS", 4096 if quick else 200_000),
        "ttt": _env("BENCH_EAGLE3_TTT", 2 if quick else 3),
        "layers": _env("BENCH_EAGLE3_LAYERS", 1),
        "results": os.environ.get("BENCH_EAGLE3_RESULTS", "outputs/bench-eagle3-quick" if quick else "outputs/bench-eagle3"),
        "batch_sizes": [1, 2] if quick else [1, 8],
    }


def common_overrides(s: dict[str, Any]) -> list[str]:
    quick = s["quick"]
    batches = ",".join(map(str, s["batch_sizes"]))
    return [
        *(["data=small"] if quick else []),
        "target=smollm2", f"draft.vocab_size={VOCAB}", f"draft.tokens={s['tokens']}", "draft.token_budgets=null",
        f"train.seq_len={64 if quick else 256}", f"train.batch_size={4 if quick else 8}", "train.warmup_steps=5",
        f"train.eval_tokens={1024 if quick else 8192}", "decode.gamma=3",
        f"decode.gammas={'[2,3]' if quick else '[1,2,3,4]'}", f"decode.batch_sizes=[{batches}]",
        f"decode.check_batch_sizes=[{batches}]", "decode.check_cells=1", f"decode.check_prompts={4 if quick else 8}",
        f"decode.check_repeats={1 if quick else 3}", f"decode.probe_repeats={2 if quick else 5}",
        f"decode.max_new_tokens={16 if quick else 48}",
        f"eval.tasks={'[shakespeare]' if quick else '[shakespeare,chat-summarise]'}",
        f"eval.n_prompts={4 if quick else 8}", f"eval.prompt_tokens={32 if quick else 64}",
        f"paths.results_dir={s['results']}", "logger=none", f"runtime.threads={torch.get_num_threads()}",
    ]


def step_costs(s: dict[str, Any]) -> tuple[float, list[tuple[tuple[int, int, int, int], float]]]:
    """Batch-1 draft-step time (one token on a cache of ~100) of the head and of each candidate shape."""
    from scylla.config import compose, validate
    from scylla.harness.pipeline import resolve_path
    from scylla.measure.probes import probe_forwards
    from scylla.models.eagle3 import build_eagle3
    from scylla.models.llama import ModelSpec
    from scylla.models.pretrained import load_causal_lm, target_location
    from scylla.models.reduced import ReducedVocabFactory
    from scylla.models.vocab import DraftVocab

    cfg = validate(compose(["target=smollm2"]))
    folder, _ = target_location(cfg.target, resolve_path(cfg.paths.cache_dir))
    target = load_causal_lm(folder)
    v = int(target.get_input_embeddings().weight.shape[0])
    vocab = DraftVocab(torch.arange(VOCAB, dtype=torch.int64), v)
    repeats = 3 if s["quick"] else 15

    def cost(model: Any) -> float:
        return probe_forwards(model, role="draft", batch_sizes=[1], widths=[1], context=96, repeats=repeats)[0].best

    head = build_eagle3(target.config, n_layers=s["layers"], draft_vocab=vocab, layer_ids=None,
                        embeddings=target.get_input_embeddings().weight)
    head_cost = cost(head.cost_view())
    rows = []
    for shape in CANDIDATES:
        d, n, h, f = shape
        model = ReducedVocabFactory(vocab)(ModelSpec(d_model=d, n_layers=n, n_heads=h, ffn_dim=f, vocab_size=v))
        rows.append((shape, cost(model)))
    return head_cost, rows


def _summary(record: dict[str, Any], batch_sizes: list[int]) -> dict[str, Any]:
    rows = [m for m in record["measurements"] if m["source"] == "oracle"]
    out: dict[str, Any] = {"params": record["draft"].get("params"), "tokens": record["draft"].get("tokens"),
                           "params_ne": record["draft"].get("params_non_embedding")}
    chain3 = [m for m in rows if m["tree"] == "chain:3" and m["batch_size"] == batch_sizes[0]]
    acc = sum(m["speculative"]["accepted"] for m in chain3)
    steps = sum(m["speculative"]["steps"] for m in chain3)
    out["tau1"] = 1 + acc / steps if steps else float("nan")
    for b in batch_sizes:
        cells: dict[str, list[float]] = {}
        for m in rows:
            if m["batch_size"] == b:
                cells.setdefault(m["tree"], []).append(m["speedup"])
        best = max(cells, key=lambda t: sum(cells[t]) / len(cells[t]))
        out[f"pred{b}"] = sum(cells[best]) / len(cells[best])
        out[f"pred_shape{b}"] = best
        checks = [c for c in record.get("checks") or [] if c["batch_size"] == b]
        out[f"meas{b}"] = checks[0]["speedup"] if checks else float("nan")
        out[f"meas_pred{b}"] = checks[0].get("predicted_speedup") if checks else float("nan")
        out[f"meas_shape{b}"] = checks[0]["tree"] if checks else "-"
        out[f"engine_tau{b}"] = checks[0]["speculative"]["tau"] if checks else float("nan")
    out["train_tau"] = record["draft"].get("train_simulated_tau")
    return out


def main() -> None:
    from scylla.config import compose
    from scylla.harness.pipeline import run_job

    s = settings()
    t0 = time.perf_counter()
    print(f"threads {torch.get_num_threads()}; SmolLM2-135M-Instruct fp32; draft vocabulary {VOCAB}; "
          f"{s['tokens']:,} training tokens each; head: {s['layers']} layer(s), {s['ttt']} training-time-test steps"
          + ("; QUICK smoke settings (numbers meaningless)" if s["quick"] else ""))
    head_cost, costs = step_costs(s)
    print(f"\ndraft step, batch 1 (best of repeats): EAGLE-3 head {head_cost * 1e3:.2f} ms")
    for shape, c in costs:
        print(f"  standalone d{shape[0]} x L{shape[1]}: {c * 1e3:.2f} ms ({c / head_cost:.2f} x the head)")
    (d, n, h, f), chosen = min(costs, key=lambda sc: abs(math.log(sc[1] / head_cost)))
    print(f"chosen: d{d} x L{n} ({chosen / head_cost:.2f} x the head's step time)")
    common = common_overrides(s)
    eagle = run_job(compose(common + [f"draft=eagle3-l{s['layers']}" if s["layers"] in (1, 2, 3, 4, 6, 8) else
                                      "draft=eagle3-l1", f"draft.n_layers={s['layers']}",
                                      f"draft.ttt_steps={s['ttt']}", f"draft.name=eagle3-l{s['layers']}-bench"]))
    stand = run_job(compose(common + ["draft=draft-w128", f"draft.d_model={d}", f"draft.n_layers={n}",
                                      f"draft.n_heads={h}", f"draft.ffn_dim={f}", f"draft.name=standalone-d{d}-l{n}"]))
    from scylla.harness.results import ResultStore

    records = [ResultStore(o.record_path.parent).read(o.run_id) for o in (eagle, stand)]
    e, x = (_summary(r, s["batch_sizes"]) for r in records)
    b1, b2 = s["batch_sizes"]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:6.2f}" if b and math.isfinite(a) and math.isfinite(b) else "     -"

    print(f"\n{'':34s} {'EAGLE-3':>9s} {'standalone':>11s} {'ratio':>7s}")
    lines = [("own parameters", e["params"], x["params"], ",.0f"),
             ("  of which non-embedding", e["params_ne"], x["params_ne"], ",.0f"),
             (f"tau, chain:3, batch {b1} (oracle)", e["tau1"], x["tau1"], ".2f"),
             (f"tau, engine check, batch {b1}", e[f"engine_tau{b1}"], x[f"engine_tau{b1}"], ".2f")]
    for b in (b1, b2):
        lines.append((f"speedup predicted, batch {b}", e[f"pred{b}"], x[f"pred{b}"], ".2f"))
        lines.append((f"speedup engine-measured, batch {b}", e[f"meas{b}"], x[f"meas{b}"], ".2f"))
    for name, a, b, fmt in lines:
        print(f"  {name:32s} {format(a, fmt):>9s} {format(b, fmt):>11s} {ratio(a, b)}")
    print(f"  best predicted shapes: EAGLE-3 {e[f'pred_shape{b1}']} / {e[f'pred_shape{b2}']}, standalone "
          f"{x[f'pred_shape{b1}']} / {x[f'pred_shape{b2}']} (batch {b1} / {b2}); the engine checks decode the best "
          f"predicted shape of each batch size ({e[f'meas_shape{b1}']}, {x[f'meas_shape{b1}']} at batch {b1})")
    print("  own parameters: the standalone draft's include its input embedding; the head shares the target's "
          "(excluded)")
    print(f"  EAGLE-3 training-time tau (1 + SpecForge simulated_acc_len, {s['ttt']} steps): {e['train_tau']:.2f}")
    print("tau = 1 + accepted/steps (bonus token included); speedup = tokens/s over plain decoding, same target, "
          "prompts and batch size; records in " + s["results"])
    print(f"(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
