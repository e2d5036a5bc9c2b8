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
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from eas.core.capture import POSITION_RULES
from eas.core.sites import FAMILIES

SITES = tuple(dict.fromkeys(name for family in FAMILIES.values() for name in family.sites))  # any family's
POSITIONS = POSITION_RULES
READ_RULES = ("same", "pas_reference")  # method.read
RULES = ("eas", "pas_reference")  # benchmark.item_rules, split_rule, selection_rule
PROMPT_FORMATS = ("chat", "plain", "pas_reference")
LETTER_RULES = ("both", "bare")  # prompt.letters
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "4bit", "8bit")
MODEL_SOURCES = ("embedded", "hub", "local", "random")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the config tree Hydra composes
MAX_STRENGTH = 1e4  # |strength| above this swamps any residual stream (norms are O(1-100))


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
    adapter: str | None = None  # a peft (LoRA) adapter folder, merged into the weights on load
    layers: Any = field(default_factory=lambda: [8, 14, 20])  # the model's default layer grid
    n_layers: int | None = None  # its blocks, checked on load; ${eas_depths:${model.n_layers}} needs it


@dataclass
class BenchmarkConfig:
    name: str = "eas_facts"
    format: str = "eas"  # a module of eas.data.formats, or a dotted import path
    path: str | None = None  # a local file or folder; wins over hub_id
    hub_id: str | None = None
    hub_config: str | None = None
    hub_split: str | None = None
    kind: str = "mc"  # mc | ab
    options: dict[str, Any] = field(default_factory=dict)  # format-specific
    duplicates: str = "drop"  # drop | error: items repeating an earlier one's question and options
    # eas | pas_reference: eas's item rules (TruthfulQA options shuffled per item, other formats in
    # file order) or the PAS reference's (every item's options permuted by one random.Random(seed)
    # per question, TruthfulQA from file order; ETHICS worded as the reference words it)
    item_rules: str = "eas"


@dataclass
class PromptsConfig:
    """A free-form prompt set (prompts without options), read by ``eas.data.load_prompts``."""

    name: str = "task_conflict"
    format: str = "eas_prompts"  # a module of eas.data.formats defining load_prompts, or a dotted path
    path: str | None = None  # a local file or folder; wins over hub_id
    hub_id: str | None = None
    hub_config: str | None = None
    hub_split: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # format-specific
    categories: Any = None  # None (all) or a list: keep the prompts of these categories
    labels: Any = None  # None (all) or a list: keep the prompts with these labels
    limit: int | None = None  # the first N prompts after the filters, in file order; None = all


@dataclass
class MethodConfig:
    name: str = "pasf"  # eas/methods/<name>.py
    module: str | None = None  # a dotted import path for a method outside eas; None = eas.methods.<name>
    position: str = "last"  # last | mid | mean: where train activations are read
    normalize: bool = False  # scale each vector to unit norm (strength is then in residual units)
    min_per_class: int = 2  # fewer positives or negatives than this is an error
    # vectors made elsewhere instead of extracted: a .safetensors file or a run dir whose
    # vectors/ (steer, cmaes) or probes/ (probe) hold this method's vectors at this site
    vector_path: str | None = None
    source: str = "pasf"  # method=refined: the extracted method the refined vector started from
    # where a vector for layer L is read: "same" = the tensor it steers (eas's contract);
    # "pas_reference" = the PAS authors' rule: a residual vector is read from block L's input
    # (their hidden_states[L], the output of block L-1) and added to block L's output
    read: str = "same"


@dataclass
class SteerTargetConfig:
    site: str = "residual"


@dataclass
class PromptConfig:
    format: str = "chat"  # chat (the model's template, if it has one) | plain | pas_reference
    system: str | None = None
    instruction: str = "Answer with the letter of the correct option."
    # both: a letter's score is the log-sum-exp of its "A" and " A" tokens; bare: the token "A" only
    # (the PAS reference's rule)
    letters: str = "both"


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
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    steer_target: SteerTargetConfig = field(default_factory=SteerTargetConfig)
    # the kind's own fields: typed by the kind module's Config (eas/experiments/<name>.py), checked in validate
    experiment: Any = field(default_factory=lambda: {"name": "steer"})
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
    # eas: random.Random(seed) shuffle, round() sizes; pas_reference: pandas sample(frac=1,
    # random_state=seed), int() sizes with the remainder to train
    split_rule: str = "eas"
    # eas: best val accuracy, ties to the smaller |strength| then the lower layer; pas_reference: the
    # first strict maximum over layers in descending order, strengths as listed
    selection_rule: str = "eas"
    batch_size: int = 0  # 0 = adapt to free memory
    cells_per_pass: int = 64  # steered cells stacked as query tokens in one forward pass
    cells_per_chunk: int = 256  # cells scored between two writes to the store
    capture_shard_size: int = 2048  # texts per activation shard written to the store
    progress: bool = True


def register() -> None:
    """Put the schema in Hydra's ConfigStore (called before composing)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="eas_schema", node=EasConfig)
    OmegaConf.register_new_resolver("eas_n", lambda x: len(x), replace=True)
    OmegaConf.register_new_resolver("eas_depths", depths, replace=True)


def depths(n_layers: int | None) -> list[int]:
    """The first, middle and last block of a model of ``n_layers`` blocks (``${eas_depths:...}``)."""
    if n_layers is None:
        raise ConfigError("model.n_layers is not set: give the model's number of blocks (model.n_layers=N)")
    n = int(n_layers)
    if n < 1:
        raise ConfigError(f"model.n_layers={n_layers!r}: a model has at least one block")
    return sorted({0, n // 2, n - 1})


def choice(field_name: str, value: Any, allowed: tuple[str, ...]) -> None:
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
    (``random_config``, ``options``, ...) take any key; ``experiment.*`` is checked against its
    kind's ``Config`` (``eas.experiments.base.prepare``)."""
    import dataclasses

    schema = schema or EasConfig
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in cfg:
        if key == "hydra" and not prefix:  # present when composed with return_hydra_config
            continue
        if key not in fields:
            raise ConfigError(f"unknown config key {prefix + key!r}: it is not a field of the eas schema "
                              f"(eas/config.py); known here: {', '.join(fields)}")
        sub = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub) and OmegaConf.is_dict(cfg.get(key)):
            check_keys(cfg.get(key), sub, f"{prefix}{key}.")


def validate(cfg: DictConfig) -> None:
    """Check every value that the schema's types cannot; raise ConfigError on the first problem.
    The experiment kind and the method check their own fields (``eas.experiments.base.prepare``)."""
    check_keys(cfg)
    choice("model.source", cfg.model.source, MODEL_SOURCES)
    choice("model.dtype", cfg.model.dtype, DTYPES)
    choice("model.quantization", cfg.model.quantization, QUANTIZATIONS)
    if cfg.model.source in ("hub", "local", "embedded") and not cfg.model.id:
        raise ConfigError(f"model.id is empty for model.source={cfg.model.source}; set model.id=...")
    if cfg.model.source == "random" and not cfg.model.architecture:
        raise ConfigError("model.architecture is required for model.source=random")
    choice("method.position", cfg.method.position, POSITIONS)
    choice("method.read", cfg.method.read, READ_RULES)
    choice("steer_target.site", cfg.steer_target.site, SITES)
    choice("prompt.format", cfg.prompt.format, PROMPT_FORMATS)
    choice("benchmark.duplicates", cfg.benchmark.duplicates, ("drop", "error"))
    choice("benchmark.item_rules", cfg.benchmark.item_rules, RULES)
    choice("prompt.letters", cfg.prompt.letters, LETTER_RULES)
    choice("split_rule", cfg.split_rule, RULES)
    choice("selection_rule", cfg.selection_rule, RULES)
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
    limit = (cfg.get("prompts") or {}).get("limit")  # a config saved before prompts existed has none
    if limit is not None and limit < 1:
        raise ConfigError(f"prompts.limit={limit}: must be >= 1, or null for all prompts")
    if cfg.max_sample_size is not None and cfg.max_sample_size < 3:
        raise ConfigError(f"max_sample_size={cfg.max_sample_size}: need at least 3 items")
    if cfg.batch_size < 0:
        raise ConfigError(f"batch_size={cfg.batch_size}: must be >= 0 (0 adapts to free memory)")
    for name in ("cells_per_pass", "cells_per_chunk", "capture_shard_size"):
        if not cfg[name] >= 1:
            raise ConfigError(f"{name}={cfg[name]}: must be an integer >= 1")
    if cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed}: must be >= 0")


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def model_preset(name: str, field_name: str) -> DictConfig:
    """The ``ModelConfig`` of the ``conf/model/<name>.yaml`` preset (a judge's or a second model's).

    Raises:
        ConfigError: no preset of that name; names ``field_name`` and the presets there are.
    """
    preset = CONF_DIR / "model" / f"{name}.yaml"
    if not preset.exists():
        names = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
        raise ConfigError(f"{field_name}={name!r}: no conf/model preset of that name; "
                          f"use 'same' or one of: {', '.join(names)}")
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(preset))
