"""What a serving engine needs to run the recommended draft: the Hydra draft config, the exported draft
folder, vLLM's ``speculative_config`` and SGLang's server flags, written atomically with a summary.

Field names follow the engines' sources as read for this module (docs/serving.md, "Engine configs"):

- vLLM: ``SpeculativeConfig`` in ``vllm/config/speculative.py``: ``method`` (``draft_model``, ``ngram``,
  ``eagle3``, ``mtp``), ``model``, ``num_speculative_tokens``, ``prompt_lookup_max``/``prompt_lookup_min``
  (ngram) and ``disable_by_batch_size`` ("disable speculative decoding for new incoming requests when the
  number of enqueued requests is larger than this value", ``>= 2``). vLLM's main branch (read at commit
  002e77c) has dropped ``disable_by_batch_size`` for ``num_speculative_tokens_per_batch_size``
  (``[[first, last, k], ...]``, inclusive batch-size ranges): a second file carries that form.
- SGLang: ``python -m sglang.launch_server`` flags from ``docs/advanced_features/speculative_decoding.md``:
  ``--speculative-algorithm`` (``STANDALONE`` for a small draft LM, ``EAGLE3``, ``NGRAM``, ``NEXTN``),
  ``--speculative-draft-model-path``, ``--speculative-num-steps`` (draft depth),
  ``--speculative-eagle-topk`` (branching per step), ``--speculative-num-draft-tokens`` (tokens verified
  per step, the root included: a chain of gamma is gamma + 1), and the ngram window flags.

Exporters are registered per draft family (`register_exporter`); ``llama`` and ``ngram`` are built in.
A family without one (``eagle3`` until its exporter lands) gets a clear `ExportError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from scylla.decode.tree import TreeSpec

from .serving import ServingError, ServingRecommendation, validation_cells

__all__ = ["ENGINE_METHODS", "ExportError", "ExportResult", "register_exporter", "exporter_for", "engine_families",
           "export_draft", "export_llama", "export_ngram", "export_eagle3", "reference_llama", "hydra_draft_yaml",
           "vllm_speculative_config", "vllm_per_batch_config", "sglang_flags", "write_serving", "serving_name"]

# Which engine method serves each draft family (the engines' own names).
ENGINE_METHODS: dict[str, dict[str, str]] = {
    "vllm": {"llama": "draft_model", "ngram": "ngram", "eagle3": "eagle3", "mtp": "mtp"},
    "sglang": {"llama": "STANDALONE", "ngram": "NGRAM", "eagle3": "EAGLE3", "mtp": "NEXTN"},
}
VLLM_SOURCE = ("vllm-project/vllm, vllm/config/speculative.py (SpeculativeConfig): disable_by_batch_size as in the "
               "releases that have it; num_speculative_tokens_per_batch_size as on main at commit 002e77c")
SGLANG_SOURCE = "sgl-project/sglang, docs/advanced_features/speculative_decoding.md (Full Parameter Reference)"


class ExportError(ServingError):
    """A draft that cannot be exported (the message says why and what to do)."""


@dataclass
class ExportResult:
    """An exported draft: its folder (None when the family needs none, e.g. n-gram lookup), the settings
    an engine needs besides it, and per engine None (it can load this) or the reason it cannot."""

    family: str
    path: Path | None
    settings: dict[str, Any] = field(default_factory=dict)
    servable: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "path": None if self.path is None else str(self.path),
                "settings": self.settings, "servable": self.servable, "notes": self.notes}


Exporter = Callable[[Mapping[str, Any], Path], ExportResult]
_EXPORTERS: dict[str, Exporter] = {}


def register_exporter(family: str, fn: Exporter | None) -> Exporter | None:
    """Add (or replace) the exporter of a draft family: ``fn(record, dest)`` writes the draft of the job
    ``record`` into the new folder ``dest`` (or nothing, for a family without weights) and returns an
    `ExportResult`. Registering a family also makes it eligible for the vLLM/SGLang deploy choice.
    ``fn=None`` removes it. Returns the exporter it replaced (or None)."""
    previous = _EXPORTERS.pop(family, None)
    if fn is not None:
        _EXPORTERS[family] = fn
    return previous


def exporter_for(family: str) -> Exporter:
    if family not in _EXPORTERS:
        raise ExportError(f"no exporter registered for family {family!r} (registered: {sorted(_EXPORTERS)}); "
                          "add one with scylla.fit.deploy.register_exporter")
    return _EXPORTERS[family]


def engine_families() -> dict[str, set[str]]:
    """Per engine profile, the families it can serve and Scylla can export (profile ``any``, Scylla's own
    engine, serves every family and is not listed)."""
    return {engine: {f for f in methods if f in _EXPORTERS} for engine, methods in ENGINE_METHODS.items()}


def export_draft(record: Mapping[str, Any], dest: str | os.PathLike) -> ExportResult:
    """Export the draft of job ``record`` into ``dest`` with its family's exporter."""
    family = str((record.get("draft") or {}).get("family") or "llama")
    return exporter_for(family)(record, Path(dest))


# ---------------------------------------------------------------------------------------------------
# Built-in exporters

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
_REDUCED_NOTE = (
    "reduced draft vocabulary ({vd} of {v} tokens): the lm_head predicts {vd} draft ids, mapped to target ids by "
    "d2t (written as draft_vocab.safetensors with d2t/t2d, EAGLE-3's layout). vLLM's draft_model method and "
    "SGLang's STANDALONE load a standard causal LM whose vocabulary equals the target's (vLLM checks the sizes; "
    "the architecture ReducedVocabLlama is in neither registry), so neither engine can load this folder. Their "
    "d2t/t2d support belongs to EAGLE-3 heads (and SGLang's FR-Spec token map to EAGLE-2 heads), which are "
    "different models. Padding the lm_head to the full vocabulary with zero rows would change which token the "
    "draft proposes (a zero logit beats negative in-vocabulary ones), so the measured acceptance would not hold; "
    "it is not done. To serve with vLLM or SGLang, train the draft with draft.vocab_size=null.")


def _checkpoint(record: Mapping[str, Any]) -> Path:
    draft = record.get("draft") or {}
    ckpt = draft.get("checkpoint")
    if not ckpt or not Path(ckpt).is_dir():
        raise ExportError(f"run {record.get('run_id')}: its draft checkpoint {ckpt!r} is not on this machine; export "
                          "where the checkpoint cache (paths.cache_dir) is, or copy the folder there")
    from scylla.integrity import IntegrityError, verify_folder

    try:
        verify_folder(ckpt)
    except IntegrityError as exc:
        raise ExportError(f"run {record.get('run_id')}: {exc}") from None
    return Path(ckpt)


def export_llama(record: Mapping[str, Any], dest: Path) -> ExportResult:
    """A separate Llama draft: its safetensors, config and the tokenizer files, as a Hugging Face model
    folder; for a reduced vocabulary also ``draft_vocab.safetensors`` (d2t/t2d) and the reason engines
    cannot load it."""
    ckpt = _checkpoint(record)
    config = json.loads((ckpt / "config.json").read_text())
    dest.mkdir(parents=True)
    copied = []
    for f in sorted(ckpt.iterdir()):
        if f.suffix == ".safetensors" or f.name in ("config.json", "generation_config.json"):
            shutil.copy2(f, dest / f.name)
            copied.append(f.name)
    for name in _TOKENIZER_FILES:
        if (ckpt / "tokenizer" / name).is_file():
            shutil.copy2(ckpt / "tokenizer" / name, dest / name)
            copied.append(name)
    result = ExportResult("llama", dest, {"vocab_size": config.get("vocab_size")})
    _judge_llama(config, result)
    if config.get("draft_vocab_size") is not None:
        from safetensors import safe_open

        from scylla.models.vocab import DraftVocab

        with safe_open(str(ckpt / "model.safetensors"), framework="pt") as fh:
            ids = fh.get_tensor("draft_to_target")
        DraftVocab(ids, int(config["vocab_size"])).save(dest)
        copied.append("draft_vocab.safetensors")
    from scylla.integrity import sha256_file

    result.settings["files"] = copied
    (dest / "scylla_export.json").write_text(json.dumps({
        "run_id": record.get("run_id"), "family": "llama", "checkpoint": str(ckpt),
        "draft": {k: v for k, v in (record.get("draft") or {}).items() if not isinstance(v, (dict, list))},
        "sha256": {name: sha256_file(dest / name) for name in copied},
        "servable": result.servable}, indent=2, default=str) + "\n")
    return result


def _judge_llama(config: Mapping[str, Any], result: ExportResult) -> None:
    """Which engines can load a Llama checkpoint with this ``config.json``, and why not."""
    if config.get("draft_vocab_size") is not None:
        note = _REDUCED_NOTE.format(vd=config["draft_vocab_size"], v=config["vocab_size"])
        result.settings["draft_vocab_size"] = int(config["draft_vocab_size"])
        result.servable = {"vllm": note, "sglang": note}
        result.notes.append(note)
    elif config.get("architectures") != ["LlamaForCausalLM"]:
        why = f"architecture {config.get('architectures')} is not a standard LlamaForCausalLM"
        result.servable = {"vllm": why, "sglang": why}
    else:
        result.servable = {"vllm": None, "sglang": None}
        result.notes.append("a full-vocabulary LlamaForCausalLM: vLLM (method draft_model) and SGLang (STANDALONE) "
                            "load it next to the target, whose tokenizer and vocabulary it shares")


def reference_llama(record: Mapping[str, Any]) -> ExportResult:
    """A Llama draft left where it is (no copy): the engine configs point at the job's checkpoint."""
    ckpt = _checkpoint(record)
    result = ExportResult("llama", ckpt, {})
    _judge_llama(json.loads((ckpt / "config.json").read_text()), result)
    result.notes.append("not exported (--no-export): the configs point at the job's checkpoint folder, which also "
                        "holds Scylla's provenance and training files")
    return result


def export_ngram(record: Mapping[str, Any], dest: Path) -> ExportResult:
    """Prompt lookup has no weights: only its n-gram window settings."""
    draft = {**((record.get("config") or {}).get("draft") or {}), **(record.get("draft") or {})}
    lo, hi = int(draft.get("ngram_min") or 1), int(draft.get("ngram_max") or 3)
    return ExportResult("ngram", None, {"prompt_lookup_min": lo, "prompt_lookup_max": hi},
                        {"vllm": None, "sglang": None},
                        ["SGLang's NGRAM looks candidates up in a cache of recent tokens of all requests (a trie), "
                         "not only in this request's prompt and output as vLLM's and Scylla's prompt lookup do: "
                         "its acceptance will differ from the measured one"])


def export_eagle3(record: Mapping[str, Any], dest: Path) -> ExportResult:
    """An EAGLE-3 head in the layout SGLang and vLLM load (`scylla.export`, docs/eagle3.md): vLLM loads
    any depth, SGLang one layer only; both take the embedding from the target they serve."""
    from scylla.export import export_checkpoint

    ckpt = _checkpoint(record)
    export_checkpoint(ckpt, dest)
    config = json.loads((dest / "config.json").read_text())
    layers = int(config.get("num_hidden_layers", 1))
    result = ExportResult("eagle3", dest, {"draft_vocab_size": config.get("draft_vocab_size"), "layers": layers})
    sglang = None if layers == 1 else (f"SGLang's EAGLE-3 loader takes one draft layer; this head has {layers} "
                                       "(vLLM loads it)")
    result.servable = {"vllm": None, "sglang": sglang}
    result.notes.append("EAGLE-3 head: no embed_tokens in the folder; the serving engine shares the target's")
    return result


register_exporter("llama", export_llama)
register_exporter("ngram", export_ngram)
register_exporter("eagle3", export_eagle3)


# ---------------------------------------------------------------------------------------------------
# Configs


def _human(n: float) -> str:
    for unit, s in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= unit:
            return f"{n / unit:.3g}{s}".replace(".", "p")
    return f"{n:.3g}"


def serving_name(draft: Mapping[str, Any]) -> str:
    """A file-safe name for a deployed draft: ``serve_<draft>_t<tokens>[_<data source>]``."""
    name = f"serve_{draft.get('draft_name')}_t{_human(float(draft.get('draft_tokens') or 0))}"
    if draft.get("data_source") not in (None, "corpus", "-"):
        name += f"_{draft['data_source']}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def hydra_draft_yaml(record: Mapping[str, Any], name: str, comments: list[str] = ()) -> str:
    """The job's own ``draft`` node (so family-specific keys come along) as a Hydra draft group file
    named ``name``: ``token_budgets`` dropped, keys at their schema default left out unless they define
    the model's shape. Checked against `scylla.config.DraftConfig` when it knows every key."""
    import yaml

    from scylla.config import DraftConfig

    node = dict((record.get("config") or {}).get("draft") or {})
    draft = record.get("draft") or {}
    if not node:
        node = {k: draft[k] for k in ("family", "d_model", "n_layers", "n_heads", "ffn_dim", "tokens") if k in draft}
    node.pop("token_budgets", None)
    node["name"] = name
    node["tokens"] = int(draft.get("tokens") or node.get("tokens") or 1)
    defaults = {f.name: f.default for f in dataclasses.fields(DraftConfig)}
    keep = {"name", "family", "tokens"}
    if node.get("family", "llama") != "ngram":
        keep |= {"d_model", "n_layers", "n_heads", "ffn_dim"}
    node = {k: v for k, v in node.items() if k in keep or k not in defaults or v != defaults[k]}
    order = ["name", "family", "d_model", "n_layers", "n_heads", "ffn_dim", "tokens"]
    node = {**{k: node[k] for k in order if k in node}, **{k: v for k, v in node.items() if k not in order}}
    if set(node) <= set(defaults):
        DraftConfig(**node)  # raises ConfigError naming the key
    head = [f"# {c}" for c in comments]
    return "\n".join(head) + ("\n" if head else "") + yaml.safe_dump(node, sort_keys=False)


def vllm_speculative_config(choice: Mapping[str, Any], export: ExportResult, model_path: str | None) -> dict[str, Any]:
    """vLLM's ``speculative_config`` for the ``vllm`` deploy choice of a `ServingRecommendation`."""
    family = choice["draft"]["family"]
    cfg: dict[str, Any] = {"method": ENGINE_METHODS["vllm"][family]}
    if export.path is not None or family != "ngram":
        cfg["model"] = model_path
    cfg["num_speculative_tokens"] = int(choice["gamma"])
    if choice.get("vllm_disable_by_batch_size"):
        cfg["disable_by_batch_size"] = int(choice["vllm_disable_by_batch_size"])
    if family == "ngram":
        cfg["prompt_lookup_max"] = export.settings["prompt_lookup_max"]
        cfg["prompt_lookup_min"] = export.settings["prompt_lookup_min"]
    return cfg


def vllm_per_batch_config(choice: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any] | None:
    """The same draft with vLLM's batch-size schedule (``num_speculative_tokens_per_batch_size``, newer
    vLLM without ``disable_by_batch_size``): the best gamma of the chosen draft at each serving batch
    size, 0 where speculation does not pay, each measured size's choice kept up to the next one."""
    gammas = choice.get("per_batch_gamma") or {}
    if not gammas or max(gammas.values()) == 0:
        return None
    sizes = sorted(int(b) for b in gammas)
    ranges = [[1 if i == 0 else b, (sizes[i + 1] - 1) if i + 1 < len(sizes) else b, int(gammas[b])]
              for i, b in enumerate(sizes)]
    cfg = {k: v for k, v in base.items() if k != "disable_by_batch_size"}
    cfg["num_speculative_tokens"] = max(r[2] for r in ranges)
    cfg["num_speculative_tokens_per_batch_size"] = ranges
    return cfg


def sglang_flags(choice: Mapping[str, Any], export: ExportResult,
                 model_path: str | None) -> tuple[list[str], list[str]]:
    """(``launch_server`` flags, notes) for the ``sglang`` deploy choice. Chains map exactly (steps = gamma,
    topk 1, gamma + 1 draft tokens); static trees map to the nearest SGLang tree (steps = depth, topk =
    widest branching, 1 + tree size draft tokens within what that expansion can hold), which SGLang
    builds dynamically by draft score: approximate."""
    family = choice["draft"]["family"]
    spec = TreeSpec.parse(choice["shape"])
    flags = ["--speculative-algorithm", ENGINE_METHODS["sglang"][family]]
    notes: list[str] = []
    if family != "ngram":
        flags += ["--speculative-draft-model-path", str(model_path)]
    if family == "ngram":
        flags += ["--speculative-num-draft-tokens", str(spec.depth + 1),
                  "--speculative-ngram-min-match-window-size", str(export.settings["prompt_lookup_min"]),
                  "--speculative-ngram-max-match-window-size", str(export.settings["prompt_lookup_max"]),
                  "--speculative-ngram-min-bfs-breadth", "1", "--speculative-ngram-max-bfs-breadth", "1"]
        notes.append("the ngram window flags are those of SGLang's documented parameter reference; newer SGLang "
                     "replaced them by --speculative-ngram-max-trie-depth: drop them there")
    elif spec.kind == "chain":
        flags += ["--speculative-num-steps", str(spec.depth), "--speculative-eagle-topk", "1",
                  "--speculative-num-draft-tokens", str(spec.depth + 1)]
    elif spec.kind == "static":
        topk = max(spec.branching)
        capacity = 1 + topk + (spec.depth - 1) * topk * topk
        flags += ["--speculative-num-steps", str(spec.depth), "--speculative-eagle-topk", str(topk),
                  "--speculative-num-draft-tokens", str(min(1 + spec.size, capacity))]
        notes.append(f"approximate: {spec.describe()} is a fixed tree; SGLang expands the top-{topk} children of "
                     f"its best {topk} nodes per step and keeps the best-scored nodes, so its tree differs and the "
                     "measured acceptance of the static tree does not carry over exactly")
    else:  # dynamic: EAGLE-2-style, SGLang's own rule
        flags += ["--speculative-num-steps", str(spec.depth), "--speculative-eagle-topk", str(spec.top_k),
                  "--speculative-num-draft-tokens", str(spec.total_tokens + 1)]
        notes.append("dynamic tree: both engines keep the best-scored nodes of a depth x top-k expansion; their "
                     "scoring details may differ")
    return flags, notes


# ---------------------------------------------------------------------------------------------------
# The serving folder


def _dump(path: Path, obj: Any) -> None:
    from scylla.harness.results import json_safe

    path.write_text(json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def write_serving(rec: ServingRecommendation, out_dir: str | os.PathLike, *, export: bool = True) -> dict[str, Path]:
    """Write the serving folder atomically (a temporary sibling, renamed into place; an existing folder is
    replaced only once the new one is complete, and nothing is left behind on error):

    ``serving.json`` / ``serving.md`` (the per-batch-size table, the deploy choices, the engine configs,
    the cells to check), ``cells.csv`` (every candidate x batch size), ``checks.csv``,
    ``draft/<name>.yaml`` (Hydra draft group file per deployed draft), ``export/<name>/`` (the exported
    draft folder), ``vllm_speculative_config.json`` (+ ``.per_batch_size.json``) and ``sglang_flags.txt``
    when the chosen draft can be served by that engine. ``export=False`` skips the weight copies (the
    configs then point at a ``llama`` draft's checkpoint; other families are always exported)."""
    final = Path(out_dir).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        summary = _write_into(rec, tmp, final, export)
        if final.exists():
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old.exists():
                os.replace(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {k: final / v for k, v in summary.items()}


def _write_into(rec: ServingRecommendation, tmp: Path, final: Path, export: bool) -> dict[str, str]:
    written: dict[str, str] = {}
    notes: list[str] = []  # what writing found (the recommendation itself is left unchanged)
    engines: dict[str, Any] = {}
    exports: dict[str, Any] = {}
    results: dict[str, ExportResult | ExportError] = {}
    for profile in ("any", "vllm", "sglang"):
        d = rec.deploy[profile]
        if not d["speculation"]:
            continue
        run = d["draft"]["run_id"]
        name = serving_name(d["draft"])
        record = rec.records[run]
        if name not in results:
            dest = tmp / "export" / name
            try:
                if export or d["draft"]["family"] != "llama":
                    results[name] = export_draft(record, dest)
                else:
                    results[name] = reference_llama(record)
            except ExportError as exc:
                shutil.rmtree(dest, ignore_errors=True)
                results[name] = exc
            yaml_path = tmp / "draft" / f"{name}.yaml"
            yaml_path.parent.mkdir(exist_ok=True)
            comments = [f"Deployed draft (scylla-fit serving recommendation): use as draft={name} "
                        "(copy to configs/draft/)",
                        f"run {run}: {d['draft']['family']} {d['draft']['draft_name']}, data source "
                        f"{d['draft']['data_source']}"]
            try:
                yaml_path.write_text(hydra_draft_yaml(record, name, comments))
                written[f"draft/{name}.yaml"] = f"draft/{name}.yaml"
            except (ValueError, TypeError) as exc:
                notes.append(f"draft/{name}.yaml not written: the job's draft node does not validate ({exc})")
        res = results[name]
        if isinstance(res, ExportError):
            exports[name] = {"error": str(res)}
        else:
            path = res.path
            if path is not None and tmp in path.parents:
                path = final / path.relative_to(tmp)
                written[f"export/{name}"] = str(path.relative_to(final))
            exports[name] = {**res.to_dict(), "path": None if path is None else str(path)}
        if profile == "any":
            continue
        if isinstance(res, ExportError):
            engines[profile] = {"config": None, "reason": str(res)}
            continue
        why = res.servable.get(profile)
        if why:
            engines[profile] = {"config": None, "reason": why}
            continue
        model = exports[name]["path"]
        if profile == "vllm":
            cfg = vllm_speculative_config(d, res, model)
            _dump(tmp / "vllm_speculative_config.json", cfg)
            written["vllm"] = "vllm_speculative_config.json"
            dyn = vllm_per_batch_config(d, cfg)
            if dyn is not None:
                _dump(tmp / "vllm_speculative_config.per_batch_size.json", dyn)
                written["vllm_per_batch_size"] = "vllm_speculative_config.per_batch_size.json"
            engines["vllm"] = {"config": cfg, "per_batch_size_config": dyn, "source": VLLM_SOURCE,
                               "usage": "vllm serve <target> --speculative-config "
                                        "\"$(cat vllm_speculative_config.json)\""}
        else:
            flags, notes = sglang_flags(d, res, model)
            target = (record.get("target") or {}).get("path") or "<target model path>"
            lines = [f"# SGLang server flags for {name} (scylla-fit serving recommendation; {SGLANG_SOURCE})",
                     *[f"# note: {n}" for n in notes + res.notes],
                     f"python -m sglang.launch_server --model-path {target} \\"]
            pairs = [flags[i:i + 2] for i in range(0, len(flags), 2)]
            lines += [f"    {' '.join(p)}" + (" \\" if k + 1 < len(pairs) else "") for k, p in enumerate(pairs)]
            (tmp / "sglang_flags.txt").write_text("\n".join(lines) + "\n")
            written["sglang"] = "sglang_flags.txt"
            engines["sglang"] = {"flags": flags, "notes": notes, "source": SGLANG_SOURCE}
    for profile in ("vllm", "sglang"):
        if not rec.deploy[profile]["speculation"]:
            engines[profile] = {"config": None, "reason": "no servable draft beats plain decoding: serve without "
                                                          "speculation"}
    try:
        checks = [dataclasses.asdict(c) for c in validation_cells(rec)]
    except ServingError as exc:
        checks = []
        notes.append(f"no cells to check: {exc}")
    summary = {**rec.to_dict(), "engines": engines, "exports": exports, "checks": checks}
    summary["notes"] = summary["notes"] + notes
    _dump(tmp / "serving.json", summary)
    (tmp / "serving.md").write_text(rec.to_markdown() + _engines_markdown(engines, exports, checks)
                                    + "".join(f"- {n}\n" for n in notes))
    rec.cells().to_csv(tmp / "cells.csv", index=False)
    pd.DataFrame(checks).to_csv(tmp / "checks.csv", index=False)
    written.update(json="serving.json", markdown="serving.md", cells="cells.csv", checks="checks.csv")
    return written


def _engines_markdown(engines: Mapping[str, Any], exports: Mapping[str, Any], checks: list[dict[str, Any]]) -> str:
    out = ["", "## Engine configs", ""]
    for engine in ("vllm", "sglang"):
        e = engines.get(engine, {})
        if engine == "vllm" and e.get("config"):
            out += [f"- vLLM (`vllm_speculative_config.json`): `{json.dumps(e['config'])}`"]
            if e.get("per_batch_size_config"):
                out += ["  - newer vLLM without disable_by_batch_size: `vllm_speculative_config.per_batch_size.json`"]
        elif engine == "sglang" and e.get("flags"):
            out += [f"- SGLang (`sglang_flags.txt`): `{' '.join(e['flags'])}`"]
            out += [f"  - {n}" for n in e.get("notes", [])]
        else:
            out += [f"- {engine}: not written: {e.get('reason', 'no choice')}"]
    out += ["", "## Exported drafts", ""]
    for name, x in exports.items():
        if "error" in x:
            out.append(f"- `{name}`: not exported: {x['error']}")
        else:
            out.append(f"- `{name}` ({x['family']}): {x['path'] or 'no folder (settings only)'}; settings "
                       f"{json.dumps({k: v for k, v in x['settings'].items() if k != 'files'})}")
            out += [f"  - {n}" for n in x["notes"]]
    if checks:
        out += ["", "## Cells to check with the engine", "",
                "Decode these for real and compare with `scylla.fit.serving.compare_checks` "
                "(|measured / predicted - 1| <= 0.10 at every cell).", "",
                "| run | task | shape | batch | role | predicted |", "|---|---|---|---:|---|---:|"]
        out += [f"| {c['run_id']} | {c['task']} | {c['shape']} | {c['batch_size']} | {c['role']} | "
                f"{c['predicted_speedup']:.3f} |" for c in checks]
    return "\n".join(out) + "\n"
