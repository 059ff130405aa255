"""`scylla-export`: write a trained EAGLE-3 head as the folder SGLang and vLLM load.

    scylla-export ~/.cache/scylla/checkpoints/<eagle3 checkpoint> --out exports/smollm2-eagle3 [--dtype bfloat16]
    python -m scylla.export CHECKPOINT --out FOLDER

The folder holds ``config.json`` (``architectures: ["LlamaForCausalLMEagle3"]``, ``draft_vocab_size``, the
layer config, ``eagle_config.eagle_aux_hidden_state_layer_ids``) and ``model.safetensors`` (``fc.weight``,
``midlayer.*``, ``layers.{i}.*`` for heads deeper than one layer, ``norm.weight``, ``lm_head.weight``, ``d2t``,
``t2d``; no ``embed_tokens``: serving shares the target's). One layer loads in SGLang and vLLM; deeper
heads load in vLLM only (SGLang refuses ``num_hidden_layers != 1``); docs/eagle3.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main", "export_checkpoint"]

_DTYPES = ("float32", "bfloat16", "float16")


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, dtype: str | None = None) -> Path:
    """Export the EAGLE-3 head saved in ``checkpoint`` (a scylla checkpoint folder) to ``out``."""
    import torch

    from scylla.models.eagle3 import Eagle3Draft, export_eagle3
    from scylla.training.checkpoints import load_checkpoint

    model, prov = load_checkpoint(checkpoint)
    if not isinstance(model, Eagle3Draft):
        raise SystemExit(f"error: {checkpoint} holds a {type(model).__name__}, not an EAGLE-3 head "
                         "(train one with draft=eagle3-l1 or scylla.training.eagle3.train_eagle3)")
    torch_dtype = getattr(torch, dtype) if dtype else None
    extra = {"checkpoint": str(checkpoint), "tokens_seen": prov.get("tokens_seen"),
             "ttt_metrics": prov.get("ttt_metrics"), "code_version": prov.get("code_version")}
    return export_eagle3(model, out, dtype=torch_dtype, extra=extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scylla-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a scylla checkpoint folder holding an EAGLE-3 head")
    parser.add_argument("--out", required=True, help="the folder to write (created)")
    parser.add_argument("--dtype", choices=_DTYPES, default=None, help="cast the weights (default: as trained)")
    args = parser.parse_args(argv)
    if not Path(args.checkpoint).is_dir():
        print(f"error: no checkpoint folder at {args.checkpoint}", file=sys.stderr)
        return 2
    folder = export_checkpoint(args.checkpoint, args.out, dtype=args.dtype)
    print(f"wrote {folder} (config.json, model.safetensors)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
