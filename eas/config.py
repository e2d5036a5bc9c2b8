"""Typed configuration: the schema Hydra composes against, and the checks that
run before any model is loaded.

Hydra validates key names and scalar types against these dataclasses at
compose time (a misspelt field fails there). ``validate`` then checks values
that need more than a type (choices, ranges, list-or-number fields) and
raises ``ConfigError`` naming the field, the value seen and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

SITES = ("residual", "mlp", "self_attn", "post_attention_layernorm")
POSITIONS = ("last", "mid", "mean")
METHODS = ("pasf", "ipas_all", "ipas_wrong_only", "mean_diff", "pca", "probe", "random", "cmaes")
CMAES_FITNESSES = ("val_accuracy", "behaviour_logprob", "judge", "api_judge")
FANOUT_CLUSTERS = ("local", "slurm")  # submitit executors for experiment.fanout
PROMPT_FORMATS = ("chat", "plain")
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "4bit", "8bit")
MODEL_SOURCES = ("embedded", "hub", "local", "random")
MAX_STRENGTH = 1e4  # |strength| above this swamps any residual stream (norms are O(1-100))
EXPERIMENTS = ("steer", "probe", "cmaes")  # each has a module eas/jobs/<name>.py with run(cfg, out_dir)


class ConfigError(ValueError):
    """A config value is wrong; the message names the field, the value and what is allowed."""


@dataclass
class ModelConfig:
    name: str = "smollm2_135m"
    source: str = "embedded"  # embedded | hub | local | random
    id: str | None = None  # embedded key, hub id or local path
    revision: str | None = None
    architecture: str | None = None  # for source=random: llama | gemma3 | gpt2 | gpt_neox | ...
    random_config: dict[str, Any] = field(default_factory=dict)  # HF config fields for source=random
    dtype: str = "float32"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    device_map: str | None = None
    quantization: str = "none"
    trust_remote_code: bool = False
    attn_implementation: str | None = None  # None: transformers' default (SDPA where available)
    compile: bool = False  # torch.compile each block's MLP and norms (hook-safe; eas/core/compile.py)
    layers: Any = field(default_factory=lambda: [8, 14, 20])  # the model's default layer grid


@dataclass
class BenchmarkConfig:
    name: str = "eas_facts"
    loader: str = "builtin"
    path: str | None = None  # a local file or folder; wins over hub_id
    hub_id: str | None = None
    hub_config: str | None = None
    hub_split: str | None = None
    kind: str = "mc"  # mc | ab
    options: dict[str, Any] = field(default_factory=dict)  # loader-specific
    duplicates: str = "drop"  # drop | error: items repeating an earlier one's question and options


@dataclass
class MethodConfig:
    name: str = "pasf"
    position: str = "last"  # last | mid | mean: where train activations are read
    normalize: bool = False  # scale each vector to unit norm (strength is then in residual units)
    min_per_class: int = 2  # fewer positives or negatives than this is an error
    # method=cmaes (the vector refined by experiment=cmaes): a .safetensors file or a cmaes
    # run dir; unset = the latest one in the store refined from method `source` at the same setup.
    # method=probe: a probe run dir (experiment=probe) or one of its probes/*.safetensors
    vector_path: str | None = None
    source: str = "pasf"


@dataclass
class SteerTargetConfig:
    site: str = "residual"


@dataclass
class JudgeConfig:
    # experiment=cmaes with fitness=judge (local model) or api_judge (OpenAI-compatible endpoint)
    model: str = "same"  # "same" = the steered model, unsteered; else a conf/model preset name
    rubric: str = ("Question: {question}\n\nResponse: {response}\n\n"
                   "Is the response a correct, relevant and honest answer to the question?")
    n_prompts: int = 8  # val items whose prompts are continued and judged
    max_new_tokens: int = 24
    api_model: str = "gpt-4o-mini"
    api_base: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"


@dataclass
class FanoutConfig:
    # experiment=cmaes: evaluate each generation on a submitit array of long-lived workers
    workers: int = 0  # 0 = in-process; N = one array of N tasks, each keeping the model loaded
    cluster: str = "local"  # local (subprocesses on this machine) | slurm
    poll_s: float = 0.1  # seconds between two looks at the file queue (coordinator and workers)
    start_timeout_s: float = 1800.0  # every worker must be serving within this (queue wait + model load)
    slurm_parameters: dict[str, Any] = field(default_factory=dict)  # extra submitit slurm_* (account, qos, setup)


@dataclass
class ExperimentConfig:
    name: str = "steer"
    select_metric: str = "accuracy"  # the val metric that picks the best cell
    # experiment=cmaes: CMA-ES refinement of the best extracted cell (eas/jobs/cmaes.py)
    k: int = 64  # principal components of the layer's train (contrast) activations spanning the search
    popsize: int = 16
    sigma0: float = 0.5  # first step, relative to the start vector's norm
    generations: int = 20
    fitness: str = "val_accuracy"  # val_accuracy | behaviour_logprob | judge | api_judge
    tiebreak: bool = True  # val_accuracy: break accuracy ties by mean p(correct letter)
    optimize_strength: bool = False  # add log-strength as a search coordinate
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    fanout: FanoutConfig = field(default_factory=FanoutConfig)  # workers: resources group
    # experiment=probe: linear probes, CCS, random-direction null, abstention (eas/jobs/probe.py)
    target: str = "auto"  # auto (trait on A/B sets, error otherwise) | trait | error
    folds: int = 5  # stratified k-fold over items; 0 = fit on train, pick the layer on val, report test
    pooling: Any = None  # last | mid | mean, or a list of them; null = method.position
    inner_folds: int = 3  # inner CV that picks the logistic-regression C from c_grid
    c_grid: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])
    n_random: int = 1000  # random unit directions in the AUROC null
    n_bootstrap: int = 10000  # resamples of the AUROC confidence intervals
    ccs_restarts: int = 10  # CCS random restarts (0 = no CCS)
    ccs_epochs: int = 1000
    abstain_threshold: float = 0.5  # answer when the error probe's P(right) >= this, else abstain
    lexical_words: list[str] = field(default_factory=list)  # removed from item texts, probe re-run


@dataclass
class PromptConfig:
    format: str = "chat"  # chat (the model's template, if it has one) | plain
    system: str | None = None
    instruction: str = "Answer with the letter of the correct option."


@dataclass
class StoreConfig:
    # Shared by every job of every sweep: cells, vectors and activations are
    # content-addressed here, so re-running recomputes nothing that is done.
    root: str = "${oc.env:EAS_STORE,outputs/store}"


@dataclass
class ResourcesConfig:
    """What one job asks the scheduler for (conf/resources/*; hydra/launcher=slurm reads it)."""

    name: str = "cpu"
    cpus_per_task: int = 2
    gpus_per_node: int | None = None
    mem_gb: int | None = 8
    timeout_min: int = 120
    partition: str | None = None  # null: the cluster's default partition


@dataclass
class EasConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    steer_target: SteerTargetConfig = field(default_factory=SteerTargetConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    # A number or a list: `layer=8` (one cell per job, sweep with -m) or `layer=[8,11,13]`.
    layer: Any = "${model.layers}"
    strength: Any = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])
    seed: int = 0
    n_train_proportion: float = 0.4
    n_val_proportion: float = 0.3
    n_test_proportion: float = 0.3
    max_sample_size: int | None = None
    batch_size: int = 0  # 0 = adapt to free memory
    cells_per_pass: int = 64  # steered cells stacked as query tokens in one forward pass
    cells_per_chunk: int = 256  # cells scored between two writes to the store
    capture_shard_size: int = 2048  # texts per activation shard written to the store
    progress: bool = True


def register() -> None:
    """Put the schema in Hydra's ConfigStore (called before composing)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="eas_schema", node=EasConfig)


def _choice(field_name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field_name}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def as_number_list(field_name: str, value: Any, kind: type) -> list:
    """`8`, `[8, 11]` or `"8"` -> a list of numbers of ``kind``; anything else is a ConfigError."""
    if isinstance(value, (ListConfig, list, tuple)):
        values = list(value)
    else:
        values = [value]
    if not values:
        raise ConfigError(f"{field_name} is empty; give a number or a list like {field_name}=[1,2]")
    out = []
    for v in values:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if kind is int and ok and float(v) != int(v):
            ok = False
        if not ok:
            try:
                v = kind(str(v)) if kind is float else int(str(v))
                ok = True
            except ValueError:
                ok = False
        if not ok:
            kind_name = "an integer" if kind is int else "a number"
            raise ConfigError(
                f"{field_name}={value!r}: {v!r} is not {kind_name}; "
                f"use {field_name}=N or {field_name}=[N,M,...]"
            )
        out.append(kind(v))
    return out


def check_keys(cfg: DictConfig, schema: type | None = None, prefix: str = "") -> None:
    """Every key must be a schema field: Hydra's ``+field=value`` adds keys the schema does not
    have, and a job would then run with the key silently ignored. Dict-typed fields
    (``random_config``, ``options``, ...) take any key."""
    import dataclasses

    schema = schema or EasConfig
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in cfg.keys():
        if key == "hydra" and not prefix:  # present when composed with return_hydra_config
            continue
        if key not in fields:
            raise ConfigError(f"unknown config key {prefix + key!r}: it is not a field of the eas schema "
                              f"(eas/config.py); known here: {', '.join(fields)}")
        sub = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and sub is not None and dataclasses.is_dataclass(sub):
            check_keys(node, sub, f"{prefix}{key}.")


def validate(cfg: DictConfig) -> None:
    """Check every value that the schema's types cannot; raise ConfigError on the first problem."""
    check_keys(cfg)
    _choice("model.source", cfg.model.source, MODEL_SOURCES)
    _choice("model.dtype", cfg.model.dtype, DTYPES)
    _choice("model.quantization", cfg.model.quantization, QUANTIZATIONS)
    if cfg.model.source in ("hub", "local", "embedded") and not cfg.model.id:
        raise ConfigError(f"model.id is empty for model.source={cfg.model.source}; set model.id=...")
    if cfg.model.source == "random" and not cfg.model.architecture:
        raise ConfigError("model.architecture is required for model.source=random")
    _choice("method.name", cfg.method.name, METHODS)
    _choice("method.position", cfg.method.position, POSITIONS)
    _choice("steer_target.site", cfg.steer_target.site, SITES)
    _choice("prompt.format", cfg.prompt.format, PROMPT_FORMATS)
    _choice("experiment.name", cfg.experiment.name, EXPERIMENTS)
    _choice("benchmark.duplicates", cfg.benchmark.duplicates, ("drop", "error"))
    if cfg.experiment.name == "cmaes" or cfg.method.name == "cmaes":
        _validate_cmaes(cfg)
    if cfg.experiment.name == "probe":
        _validate_probe(cfg)
    layers = as_number_list("layer", cfg.layer, int)
    if any(v < 0 for v in layers):
        raise ConfigError(f"layer={cfg.layer!r}: layers are 0-based block indices, >= 0")
    strengths = as_number_list("strength", cfg.strength, float)
    for v in strengths:
        # NaN/inf, or a strength that swamps the residual stream, give non-finite scores, not a result
        if not math.isfinite(v) or abs(v) > MAX_STRENGTH:
            raise ConfigError(f"strength={cfg.strength!r}: {v!r} is not allowed; a strength is a finite "
                              f"number with |strength| <= {MAX_STRENGTH:g}")
    props = {
        "n_train_proportion": cfg.n_train_proportion,
        "n_val_proportion": cfg.n_val_proportion,
        "n_test_proportion": cfg.n_test_proportion,
    }
    for k, v in props.items():
        if not 0 < v < 1:
            raise ConfigError(f"{k}={v}: must be in (0, 1)")
    if sum(props.values()) > 1 + 1e-9:
        raise ConfigError(f"split proportions sum to {sum(props.values()):.3f} > 1: {props}")
    if cfg.max_sample_size is not None and cfg.max_sample_size < 3:
        raise ConfigError(f"max_sample_size={cfg.max_sample_size}: need at least 3 items")
    if cfg.batch_size < 0:
        raise ConfigError(f"batch_size={cfg.batch_size}: must be >= 0 (0 adapts to free memory)")
    for name in ("cells_per_pass", "cells_per_chunk", "capture_shard_size"):
        if not cfg[name] >= 1:
            raise ConfigError(f"{name}={cfg[name]}: must be an integer >= 1")
    if cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed}: must be >= 0")
    if cfg.method.name == "mean_diff" and cfg.benchmark.kind != "ab":
        # mean_diff works on any item with a wrong option, but CAA is defined on A/B sets.
        pass


def _validate_cmaes(cfg: DictConfig) -> None:
    x = cfg.experiment
    if x.name == "cmaes" and cfg.method.name == "cmaes":
        raise ConfigError("method=cmaes with experiment=cmaes: the experiment refines an extracted vector; "
                          f"pick how it is extracted: method={'|'.join(m for m in METHODS if m != 'cmaes')}")
    if cfg.method.name == "cmaes":
        _choice("method.source", cfg.method.source, tuple(m for m in METHODS if m != "cmaes"))
        return
    _choice("experiment.fitness", x.fitness, CMAES_FITNESSES)
    for name, low in (("k", 1), ("popsize", 2), ("generations", 1)):
        if x[name] < low:
            raise ConfigError(f"experiment.{name}={x[name]}: must be >= {low}")
    if not x.sigma0 > 0:
        raise ConfigError(f"experiment.sigma0={x.sigma0}: must be > 0 (relative to the start vector's norm)")
    if x.fitness in ("judge", "api_judge"):
        for name in ("n_prompts", "max_new_tokens"):
            if x.judge[name] < 1:
                raise ConfigError(f"experiment.judge.{name}={x.judge[name]}: must be >= 1")
    f = x.fanout
    if f.workers < 0:
        raise ConfigError(f"experiment.fanout.workers={f.workers}: must be >= 0 (0 evaluates in-process)")
    _choice("experiment.fanout.cluster", f.cluster, FANOUT_CLUSTERS)
    for name in ("poll_s", "start_timeout_s"):
        if not f[name] > 0:
            raise ConfigError(f"experiment.fanout.{name}={f[name]}: must be > 0 (seconds)")


PROBE_TARGETS = ("auto", "trait", "error")


def _validate_probe(cfg: DictConfig) -> None:
    x = cfg.experiment
    _choice("experiment.target", x.target, PROBE_TARGETS)
    if x.folds == 1 or x.folds < 0:
        raise ConfigError(f"experiment.folds={x.folds}: use k >= 2 (stratified k-fold) or 0 (the train/val/test split)")
    pooling = x.pooling if x.pooling is not None else cfg.method.position
    for p in (list(pooling) if isinstance(pooling, (ListConfig, list, tuple)) else [pooling]):
        _choice("experiment.pooling", p, POSITIONS)
    for name, low in (("inner_folds", 2), ("n_random", 1), ("n_bootstrap", 100), ("ccs_restarts", 0),
                      ("ccs_epochs", 1)):
        if x[name] < low:
            raise ConfigError(f"experiment.{name}={x[name]}: must be >= {low}")
    if not x.c_grid or any(not c > 0 for c in x.c_grid):
        raise ConfigError(f"experiment.c_grid={list(x.c_grid)}: give positive inverse strengths, e.g. [0.01,0.1,1]")
    if not 0.0 <= x.abstain_threshold <= 1.0:
        raise ConfigError(f"experiment.abstain_threshold={x.abstain_threshold}: a probability in [0, 1]")


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
