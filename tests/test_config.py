"""Config tree: every group composes and instantiates; bad overrides fail at compose time, clearly."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from scylla.config import (ConfigError, ScyllaConfig, compose, config_dir, config_hash, scrub_secrets,
                           to_plain_dict, validate)
from scylla.harness.pipeline import resolve_threads

CONFIGS = config_dir()
GROUPS = ["data", "tokenizer", "target", "draft", "train", "decode", "eval", "logger", "sweep", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert options(group), f"configs/{group}/ is empty"
    assert {"tokens", "capacity", "batch", "grid"} <= set(options("sweep"))
    assert {"smoke", "demo"} <= set(options("experiment"))
    assert {"slurm", "local"} <= {p.stem for p in (CONFIGS / "hydra" / "launcher").glob("*.yaml")}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_instantiates(group: str, option: str) -> None:
    extra = ["target.path=/models/some-lm", "tokenizer=byte"] if (group, option) == ("target", "pretrained") else []
    cfg = compose([f"{group}={option}", *extra], return_hydra_config=True)
    job = validate(cfg)
    assert isinstance(job, ScyllaConfig)
    vocab = 512
    if job.target.source == "preset":
        assert job.target.to_spec(vocab).n_layers == job.target.n_layers
    if job.draft.family == "eagle3":  # a head's shape is its target's (scylla.training.eagle3.eagle3_spec)
        assert job.draft.d_model is None and job.draft.n_layers >= 1
    else:
        draft_spec = job.draft.to_spec(vocab)
        assert draft_spec.d_model == job.draft.d_model and draft_spec.ffn >= 1
    train = job.train.to_train_config(threads=1)
    train.validate()
    assert train.tokens_per_step == job.train.batch_size * job.train.seq_len
    plain = to_plain_dict(cfg)
    assert "hydra" not in plain and plain["draft"]["name"] == job.draft.name
    if group == "sweep":
        params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)
        assert params, f"sweep={option} sets no hydra.sweeper.params"


def test_sweep_presets_expand_to_the_expected_jobs() -> None:
    from scylla.harness.sweep_summary import count_jobs

    cfg = compose(["sweep=grid", "experiment=smoke"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)
    assert params == {"draft": "tiny1,tiny2", "draft.tokens": "2048,4096", "draft.token_budgets": "[2048,4096]",
                      "decode.batch_sizes": "[1,4]"}
    assert list(cfg.hydra.overrides.task) == ["sweep=grid", "experiment=smoke"]
    assert count_jobs(cfg) == 4
    demo = compose(["sweep=grid", "experiment=demo"], return_hydra_config=True)
    axes = demo.axes
    assert count_jobs(demo) == len(axes.drafts) * len(axes.tokens)
    batch = compose(["sweep=batch", "experiment=smoke"], return_hydra_config=True)
    assert OmegaConf.to_container(batch.hydra.sweeper.params, resolve=True) == {
        "decode.gamma": "2,3", "decode.batch_sizes": "[1,4]"}


def test_draft_family_spans_decades_with_depth_and_width_knobs() -> None:
    from scylla.models.llama import build_llama, count_parameters

    sizes = {}
    shapes = set()
    for name in options("draft"):
        job = validate(compose([f"draft={name}"]))
        if job.draft.family != "llama" or name.startswith("tiny"):
            continue  # t1/t2 are smoke-test drafts
        spec = job.draft.to_spec(4096)
        sizes[name] = count_parameters(build_llama(spec, seed=None))["non_embedding"]
        shapes.add((job.draft.d_model, job.draft.n_layers))
    assert math.log10(max(sizes.values()) / min(sizes.values())) >= 1.5, sizes
    assert len({d for d, _ in shapes}) > 1 and len({n for _, n in shapes}) > 1, shapes


def test_presets_are_read_from_the_config_files() -> None:
    from scylla.harness.presets import shapes, spec_for

    drafts = shapes("draft")
    assert "draft-w128-l4" in drafts and "ngram" not in drafts and "tiny-mtp" not in drafts  # trained Llamas only
    for name in ("draft-w64", "draft-w128-l4"):
        node = OmegaConf.load(CONFIGS / "draft" / f"{name}.yaml")
        spec = spec_for(name, 4096)
        assert (spec.d_model, spec.n_layers, spec.n_heads, spec.ffn) == (node.d_model, node.n_layers, node.n_heads,
                                                                          node.ffn_dim)
    assert spec_for("demo", 4096).d_model == OmegaConf.load(CONFIGS / "target" / "demo.yaml").d_model
    with pytest.raises(KeyError, match="configs/target and configs/draft"):
        spec_for("draft-xs", 4096)


def test_schema_defaults_agree_with_the_default_yaml() -> None:
    """The dataclass defaults are what a config file that omits a key gets: they must equal the
    defaults the YAML tree declares (one source of truth)."""
    from scylla.config import DecodeConfig, TargetConfig, TrainSchema

    for schema, path in ((TrainSchema, "train/default.yaml"), (DecodeConfig, "decode/default.yaml"),
                         (TargetConfig, "target/demo.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(CONFIGS / path))
        default = schema()
        for key, value in node.items():
            assert getattr(default, key) == value, (path, key, getattr(default, key), value)


@pytest.mark.parametrize("override,needle", [
    ("draft=huge", "draft/huge"),
    ("draft.tokens=-5", "draft.tokens"),
    ("decode.batch_sizes=[1,0]", "decode.batch_sizes"),
    ("draft.no_such_key=1", "no_such_key"),
    ("+draft.no_such_key=1", "draft.no_such_key"),
    ("+frobnicate=1", "frobnicate"),
    ("decode.gamma=many", "decode.gamma"),
    ("eval.tasks=[poetry]", "poetry"),
    ("draft.n_heads=3", "n_heads"),
    ("logger.mode=sometimes", "logger.mode"),
    ("axes.tokens=[0,10]", "axes.tokens"),
    ("axes.gammas=[]", "axes.gammas: list at least one value"),
    ("draft.tokens=100", "smaller than one training step"),
    ("draft.parameter_matched=true", "draft.parameter_matched"),
])
def test_bad_overrides_fail_at_compose_time(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose([override])
    assert needle in str(info.value)
    assert "Traceback" not in str(info.value)


def test_parameter_matched_mtp_needs_a_trunk() -> None:
    job = validate(compose(["draft=mtp-w64-k4", "draft.parameter_matched=true"]))
    assert job.draft.parameter_matched and job.draft.k == 4
    with pytest.raises(ConfigError, match="draft.parameter_matched"):
        compose(["draft=mtp-w64-k4", "draft.parameter_matched=true", "draft.n_layers=3"])


def test_token_must_be_one_of_the_sweep_budgets() -> None:
    with pytest.raises(ConfigError, match="draft.token_budgets"):
        compose(["draft.tokens=10000", "draft.token_budgets=[20000,40000]"])
    job = validate(compose(["draft.tokens=20000", "draft.token_budgets=[40000,20000]"]))
    assert job.draft.budgets == [20000, 40000]


@pytest.mark.parametrize("args,needle", [
    (["draft=huge"], "draft/huge"),  # Hydra's own check of group options
    (["decode.batch_sizes=[0]"], "decode.batch_sizes: batch sizes must be >= 1"),  # the schema's range check
    (["-m", "decode.gamma=2,-1"], "decode.gamma=-1"),  # one bad job stops the whole sweep before launch
    (["-m", "draft=tiny1,huge"], "draft/huge"),  # a bad preset among the swept values: also before launch
    (["-m", "draft.width=1,2"], "draft.width"),  # an unknown key in a swept override
])
def test_cli_rejects_bad_overrides_without_a_traceback(args: list[str], needle: str, python: str,
                                                       subprocess_env: dict, tmp_path: Path) -> None:
    proc = subprocess.run([python, "-m", "scylla.harness.run", *args, f"hydra.run.dir={tmp_path}/run",
                           f"hydra.sweep.dir={tmp_path}/sweep", f"paths.results_dir={tmp_path}/results"],
                          capture_output=True, text=True, env=subprocess_env, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists(), "a job ran despite the bad config"


def test_record_key_ignores_runtime_and_budget_list_but_not_the_measurement() -> None:
    base = config_hash(compose([]), "cpu")
    assert config_hash(compose(["runtime.threads=3", "logger=wandb", "paths.results_dir=/x",
                                "runtime.progress=false", "logger.group=g", "train.log_every=99"]), "cpu") == base
    assert config_hash(compose(["draft.token_budgets=[1000000,2000000]"]), "cpu") == base
    assert config_hash(compose(["draft.tokens=2000000"]), "cpu") != base
    assert config_hash(compose(["decode.batch_sizes=[1,2]"]), "cpu") != base
    assert config_hash(compose([]), "cuda:1") != base


def test_secrets_never_travel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-0123456789abcdef")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value_42")
    cfg = compose(["logger=wandb", "logger.project=proj-wandb-secret-0123456789abcdef"])
    plain = to_plain_dict(cfg)
    blob = str(plain)
    assert "wandb-secret-0123456789abcdef" not in blob and "<redacted>" in plain["logger"]["project"]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value-123")
    scrubbed = scrub_secrets({"api_key": "abc12345678", "hf_token": "x" * 12, "tokens": 5, "nested": [
        "hf_secret_token_value_42", "s3://aws-secret-value-123@bucket"], "tokenizer_fingerprint": "bpe-abc",
        "max_new_tokens": 8})
    assert scrubbed == {"api_key": "<redacted>", "hf_token": "<redacted>", "tokens": 5,
                        "nested": ["<redacted>", "s3://<redacted>@bucket"], "tokenizer_fingerprint": "bpe-abc",
                        "max_new_tokens": 8}


def test_threads_per_job_do_not_oversubscribe(monkeypatch: pytest.MonkeyPatch) -> None:
    import scylla.harness.pipeline as pipeline

    monkeypatch.setattr(pipeline, "available_cores", lambda: 8)
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert resolve_threads(None, None) == 8
    assert resolve_threads(None, {"_target_": joblib, "n_jobs": 2}) == 4
    assert resolve_threads(None, {"_target_": joblib, "n_jobs": -1}) == 1
    assert resolve_threads(None, {"_target_": joblib, "n_jobs": -1}, sweep_jobs=2) == 4
    local = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    assert resolve_threads(None, {"_target_": local}, sweep_jobs=4) == 2
    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert resolve_threads(None, {"_target_": slurm, "cpus_per_task": 8}) == 6
    assert resolve_threads(3, {"_target_": joblib, "n_jobs": 8}) == 3


def test_slurm_launcher_preset_is_complete() -> None:
    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.timeout_min > 0
    assert launcher.gpus_per_node == 1 and launcher.array_parallelism >= 1 and launcher.cpus_per_task >= 1


@pytest.mark.parametrize("launcher,target", [
    ("basic", "BasicLauncher"), ("joblib", "JoblibLauncher"), ("submitit_local", "LocalLauncher"),
    ("local", "LocalLauncher"), ("submitit_slurm", "SlurmLauncher"), ("slurm", "SlurmLauncher"),
])
def test_every_launcher_choice_composes_and_resolves_to_a_launcher(launcher: str, target: str) -> None:
    from hydra.utils import get_class

    cfg = compose([f"hydra/launcher={launcher}", "sweep=grid", "experiment=smoke"], return_hydra_config=True)
    node = cfg.hydra.launcher
    assert node._target_.endswith(target)
    assert isinstance(get_class(node._target_), type)  # the plugin is installed and importable
    validate(cfg)
    threads = resolve_threads(None, OmegaConf.to_container(node, resolve=True), sweep_jobs=4)
    assert threads >= 1


def test_credentials_are_refused_on_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from scylla.config import secret_overrides

    monkeypatch.setenv("WANDB_API_KEY", "wandb-cli-secret-5566778899")
    bad = secret_overrides(["-m", "sweep=grid", "draft.tokens=1000000", "eval.prompt_tokens=8",
                            "hydra.job.env_set.WANDB_API_KEY=abc", "+logger.api_key=abc",
                            "logger.group=run-wandb-cli-secret-5566778899"])
    assert len(bad) == 3 and all("5566778899" not in b for b in bad)
    assert "WANDB_API_KEY" in bad[-1]  # names the variable, never the value
    assert secret_overrides(["tokenizer.kind=pretrained:/models/x", "draft.token_budgets=[1,2]"]) == []


def test_scrubbing_covers_key_names_urls_and_overlapping_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHORT_TOKEN", "abcdefgh")
    monkeypatch.setenv("LONG_SECRET", "xx-abcdefgh-yy")  # contains the shorter secret
    out = scrub_secrets({"private_key": "pem", "client_secret": "s", "Authorization": "Bearer q",
                         "run_key": "keep-me", "url": "https://bob:hunter22@host/x",
                         "note": "xx-abcdefgh-yy and abcdefgh"})
    assert out == {"private_key": "<redacted>", "client_secret": "<redacted>", "Authorization": "<redacted>",
                   "run_key": "keep-me", "url": "https://bob:<redacted>@host/x",
                   "note": "<redacted> and <redacted>"}


def test_cli_refuses_a_credential_before_hydra_writes_anything(python: str, subprocess_env: dict,
                                                               tmp_path: Path) -> None:
    secret = "wandb-cli-secret-0099887766"
    env = {**subprocess_env, "WANDB_API_KEY": secret}
    proc = subprocess.run([python, "-m", "scylla.harness.run", f"logger.project={secret}", f"hydra.run.dir={tmp_path}/run",
                           f"paths.results_dir={tmp_path}/results"],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "credentials are not accepted" in proc.stderr
    assert "$WANDB_API_KEY" in proc.stderr and secret not in proc.stderr + proc.stdout
    assert not (tmp_path / "run").exists(), "Hydra wrote its .hydra/ dump of the overrides"
