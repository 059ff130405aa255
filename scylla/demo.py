"""`make demo`: the smallest end-to-end path (grown by the sweep issue into the main job)."""

from __future__ import annotations

import torch

from scylla.measure import measure_speedup
from scylla.testing import perturbed_copy, random_prompts, tiny_llama


def main() -> None:
    torch.manual_seed(0)
    target = tiny_llama(256, d_model=128, n_layers=4, n_heads=4, seed=1)
    draft = perturbed_copy(target, noise=0.01, seed=2)
    prompts = random_prompts(8, 256, 8, 32, seed=0)
    print("batch  alpha   tau(incl. bonus)  speedup  c")
    for batch in (1, 4, 8):
        m = measure_speedup(target, draft, prompts, gamma=4, batch_size=batch, max_new_tokens=48)
        print(f"{batch:5d}  {m.speculative.alpha:.3f}  {m.speculative.tau:16.3f}  {m.speedup:7.2f}  {m.c:.2f}")


if __name__ == "__main__":
    main()
