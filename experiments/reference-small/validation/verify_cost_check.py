"""How well the fitted cost model, fitted on the study (drafts at gamma 4 only), prices verification at
the validation run's gammas 1 and 2: predicted vs measured verify/plain step ratio per gamma and batch.

    .venv/bin/python experiments/reference/validation/verify_cost_check.py > experiments/reference/validation/verify_cost_check.txt
"""

import warnings
from pathlib import Path

import pandas as pd

from scylla.fit.cost import fit_cost_model

here = Path(__file__).resolve().parent
study = pd.read_csv(here.parent / "results.csv")
study = study[study["family"] == "llama"]
validation = pd.read_csv(here / "results.csv")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    cost = fit_cost_model(study)
for w in caught:
    print(f"warning: {w.message}")
batch = validation["batch_size"].to_numpy(float)
measured = validation["verify_step_seconds"] / validation["target_step_seconds"]
predicted = cost.target_time(batch, validation["gamma"].to_numpy(float) + 1) / cost.target_time(batch, 1.0)
table = pd.DataFrame({"gamma": validation["gamma"], "batch": validation["batch_size"], "measured": measured,
                      "predicted": predicted})
print("gammas in the study's draft rows:", sorted(study["gamma"].unique().tolist()))
print("verify/plain step ratio, median over rows (tasks):")
print(table.groupby(["gamma", "batch"])[["measured", "predicted"]].median().round(2).to_string())
print("\nprediction error, % (predicted / measured - 1):")
err = (table["predicted"] / table["measured"] - 1) * 100
print(table.assign(err=err).groupby(["gamma", "batch"])["err"].median().unstack().round(0).to_string())
