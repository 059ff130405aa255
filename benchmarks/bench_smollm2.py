"""SmolLM2-135M-Instruct (the real default target): draft training speed by draft vocabulary, and our
plain decoding against HF ``generate`` at batch sizes 1 and 8 (greedy, identical outputs checked).

    python -m benchmarks.run_all smollm2
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

VOCABS = (49_152, 8_192, 4_096)
TRAIN_STEPS = 6  # after 2 warm-up steps; seq 256 x batch 16 = 4,096 tokens per step


def _smollm2() -> tuple[Any, Any]:
    from scylla.config import compose, validate
    from scylla.data.tokenizer import get_tokenizer
    from scylla.harness.pipeline import resolve_path
    from scylla.models.pretrained import load_causal_lm, target_location

    cfg = validate(compose(["target=smollm2"]))
    folder, _ = target_location(cfg.target, resolve_path(cfg.paths.cache_dir))
    return load_causal_lm(folder), get_tokenizer(f"pretrained:{folder}")


def train_speed(tok: Any, d_model: int = 64, n_layers: int = 2) -> list[dict[str, Any]]:
    """Optimizer steps/s of a d64x2 draft on real SmolLM2 tokens, full vocabulary vs reduced ones."""
    from scylla.data.corpora import load_corpus
    from scylla.harness.pipeline import resolve_path
    from scylla.config import compose, validate
    from scylla.models.llama import ModelSpec, build_llama
    from scylla.models.reduced import ReducedVocabFactory, vocab_from_streams
    from scylla.training.trainer import token_stream

    cache = resolve_path(validate(compose([])).paths.cache_dir)
    stream = np.asarray(token_stream(load_corpus("shakespeare"), tok, "train", cache), dtype=np.int64)
    spec = ModelSpec(d_model=d_model, n_layers=n_layers, n_heads=2, vocab_size=tok.vocab_size)
    x = torch.from_numpy(stream[: 16 * 256].copy()).view(16, 256)
    rows = []
    for v in VOCABS:
        if v >= tok.vocab_size:
            model = build_llama(spec)
        else:
            vocab, _ = vocab_from_streams([stream], tok.vocab_size, v, always=(tok.eos_token_id,))
            model = ReducedVocabFactory(vocab)(spec)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for step in range(2 + TRAIN_STEPS):
            if step == 2:
                t0 = time.perf_counter()
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        rows.append({"vocab": v, "params": params, "tok_per_s": TRAIN_STEPS * x.numel() / dt})
    return rows


def decode_speed(model: Any, tok: Any, max_new: int = 32) -> list[dict[str, Any]]:
    """Wall-clock tok/s of plain greedy decoding: ours (speculative_generate, gamma 0) vs HF generate."""
    from scylla.data.tasks import eval_prompts
    from scylla.decode.engine import speculative_generate

    prompts = eval_prompts("shakespeare", tok, 8, 32, seed=7, min_tokens=32)  # equal lengths: no padding in HF
    rows = []
    for batch in (1, 8):
        use = prompts[:batch]
        speculative_generate(model, None, use, gamma=0, max_new_tokens=4, batch_size=batch)  # warm-up
        t0 = time.perf_counter()
        ours = speculative_generate(model, None, use, gamma=0, max_new_tokens=max_new, batch_size=batch).sequences
        t_ours = time.perf_counter() - t0
        ids = torch.tensor(use)
        t0 = time.perf_counter()
        with torch.inference_mode():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, min_new_tokens=max_new,
                                 do_sample=False, eos_token_id=None, pad_token_id=tok.eos_token_id)
        t_hf = time.perf_counter() - t0
        same = [list(o) for o in ours] == ref[:, ids.shape[1]:].tolist()
        n = batch * max_new
        rows.append({"batch": batch, "ours_tok_s": n / t_ours, "hf_tok_s": n / t_hf, "ratio": t_hf / t_ours,
                     "identical": same})
    return rows


def main() -> None:
    torch.manual_seed(0)
    model, tok = _smollm2()
    print(f"threads {torch.get_num_threads()}; SmolLM2-135M-Instruct fp32, vocabulary {tok.vocab_size}")
    print("\ndraft training, d64x2, seq 256 x batch 16 (tok/s):")
    for r in train_speed(tok):
        print(f"  vocab {r['vocab']:>6,}: {r['tok_per_s']:8,.0f} tok/s  ({r['params'] / 1e6:.2f}M params)")
    print("\nplain greedy decoding, 32 prompt + 32 new tokens (ours = speculative_generate gamma 0):")
    for r in decode_speed(model, tok):
        print(f"  batch {r['batch']}: ours {r['ours_tok_s']:6.1f} tok/s, HF generate {r['hf_tok_s']:6.1f} tok/s, "
              f"ours/HF speed {r['ratio']:.2f}, identical outputs: {r['identical']}")


if __name__ == "__main__":
    main()
