"""Figures the README quotes from the reference study that no fit file holds: per-draft alpha (4-token
chains) and tau by token budget, each draft's slope of alpha in ln tokens, the best shape per batch size and
the best gamma per batch size at each draft's largest budget.

    .venv/bin/python experiments/reference/claims.py experiments/reference/results.csv outputs/study/results \
        > experiments/reference/claims.txt   (the records folder is optional: the responses corpus size)
"""
import sys
from pathlib import Path
import numpy as np
import pandas as pd
from scylla.harness.results import load
from scylla.harness.demo import job_labels
src = Path(sys.argv[1])
f = pd.read_csv(src) if src.suffix == ".csv" else load(sorted(src.glob("*.json")))
f = f[f.source == "oracle"].copy()
f["label"] = job_labels(f)
b1 = f[f.batch_size == 1]
def chain(g): return b1[b1.tree == f"chain:{g}"]
c4 = chain(4)
print("== alpha (chain:4) / tau by label x tokens (mean over tasks)")
t = c4.groupby(["family", "label", "draft_tokens"]).agg(alpha=("alpha", "mean"), tau=("tau", "mean"),
    loss=("draft_val_loss", "mean"), params=("draft_params_non_embedding", "first"), c=("c", "mean"))
print(t.to_string())
print("== slope of alpha vs ln tokens per label (chain:4, pooled tasks)")
for lab, g in c4.groupby("label"):
    m = g.groupby("draft_tokens").alpha.mean()
    if len(m) >= 3:
        b, a = np.polyfit(np.log(m.index.values.astype(float)), m.values, 1)
        r = np.corrcoef(np.log(m.index.values.astype(float)), m.values)[0, 1]
        print(f"{lab:22s} slope {b:.4f} R2 {r*r:.3f}  alpha {m.iloc[0]:.3f} -> {m.iloc[-1]:.3f}")
print("== best shape per batch (speedup pooled mean over tasks) over all jobs")
f["shape"] = f["tree"]
per = f.groupby(["batch_size", "label", "draft_tokens", "shape"]).predicted_speedup.mean().reset_index()
for bsz, g in per.groupby("batch_size"):
    top = g.sort_values("predicted_speedup", ascending=False).head(3)
    print(bsz, "; ".join(f"{r.label}@{r.draft_tokens:,} {r.shape} {r.predicted_speedup:.2f}" for r in top.itertuples()))
print("== best gamma per batch for each label at its largest budget")
for lab, g in f[f.tree.str.startswith("chain")].groupby("label"):
    g = g[g.draft_tokens == g.draft_tokens.max()]
    s = g.groupby(["batch_size", "gamma"]).predicted_speedup.mean().reset_index()
    best = s.loc[s.groupby("batch_size").predicted_speedup.idxmax()]
    print(f"{lab:22s}", " ".join(f"B{int(r.batch_size)}:g{int(r.gamma)}({r.predicted_speedup:.2f})" for r in best.itertuples()))


print("== data source: each (label, tokens) trained on the target's own answers against corpus text; tau (chain:4, batch 1) per task")
src_t = c4.groupby(["label", "data_source", "draft_tokens", "task"]).tau.mean().unstack("task")
src_t["mean"] = src_t.mean(axis=1)
labels = set(c4.loc[c4.data_source == "responses", "label"])
print(src_t[src_t.index.get_level_values(0).isin(labels | {lab.split("[")[0] for lab in labels})]
      .loc[lambda t: t.index.get_level_values(2) <= c4.loc[c4.data_source == "responses", "draft_tokens"].max()]
      .round(3).to_string())
if len(sys.argv) > 2:  # the records folder: how many tokens the responses corpus holds (not in results.csv)
    import json
    for path in sorted(Path(sys.argv[2]).glob("*.json")):
        resp = (json.loads(path.read_text()).get("draft") or {}).get("responses")
        if resp:
            total = resp["prompt_tokens"] + resp["response_tokens"]
            print(f"responses corpus: {resp['n_prompts']} requests, {resp['prompt_tokens']:,} prompt + "
                  f"{resp['response_tokens']:,} answer tokens = {total:,} (all splits); "
                  f"400,000 training tokens = {400_000 / total:.1f} passes over all of it")
            break
print("== probed target step per batch size (ms, median over jobs): 1 token (plain decoding) and 2 tokens (chain:1 verify)")
c1 = f[(f.tree == "chain:1") & (f.family == "llama")]
steps = c1.groupby("batch_size")[["target_step_seconds", "verify_step_seconds"]].median() * 1000
steps["verify / plain"] = steps.verify_step_seconds / steps.target_step_seconds
print(steps.round(3).to_string())
