import numpy as np, time
from scylla.fit.synthetic import simulate_oracle_stats, synthetic_probes, oracle_record
from scylla.fit import serving
from scylla.measure.compose import predict_speedup
from scylla.measure.probes import ForwardProbe, OverheadProbe
from scylla.decode.stats import DecodeStats
import dataclasses
rng = np.random.default_rng(1)
shapes = ["chain:1", "chain:3", "static:2x2x1"]
B = [1, 3, 8]
lengths = rng.integers(5, 33, 13)
stats = {"code": {s: simulate_oracle_stats(np.full(13, 0.6), s, lengths, rng) for s in shapes}}
probes, overheads = synthetic_probes(shapes, B, rng=rng)
rec = oracle_record("r1", draft={"name": "d", "family": "llama", "tokens": 100}, stats=stats, batch_sizes=B, probes=probes, overheads=overheads)
r = serving.recommend_cells([rec], n_boot=50, engine_families={"any": {"llama"}, "vllm": {"llama"}, "sglang": {"llama"}})
fp = [ForwardProbe(**{k: v for k, v in p.items() if k not in ("median", "best")}) for p in probes]
op = [OverheadProbe(**{k: v for k, v in p.items() if k not in ("median", "best")}) for p in overheads]
names = {f.name for f in dataclasses.fields(DecodeStats)}
for s in shapes:
    st = DecodeStats(**{k: v for k, v in stats["code"][s].items() if k in names})
    for b in B:
        ref = predict_speedup(st, b, fp, op, n_boot=0)["speedup"]
        c = r.candidates.index[r.candidates["shape"] == s][0]
        print(s, b, ref, r.speedup[0, c, B.index(b)], ref / r.speedup[0, c, B.index(b)] - 1)
print(r.to_markdown())
