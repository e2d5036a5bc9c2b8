"""The per-architecture site table: what ``(layer, site)`` means, as data.

A site is a module inside decoder block ``layer`` and a direction: ``output`` reads or
writes what the module returns (its first element when it returns a tuple), ``input``
what it is called with (its first positional argument, or ``hidden_states=``). Every
site is a ``[batch, pos, d_model]`` tensor. ``layer=L`` is 0-based and means the same
for capture and steering:

- ``residual``: the output of block L (the residual stream after block L).
- ``residual_pre``: the input of block L (the residual stream before block L): at L > 0
  the output of block L - 1; at L = 0 the embeddings as the model feeds them to its first
  block (Gemma scales them by sqrt(d_model), GPT-2 adds position embeddings).
- ``mlp``: the output of block L's MLP, before it is added to the residual stream.
- ``mlp_input``: the input of block L's MLP. In Llama/Mistral/Qwen/Gemma 1/GPT-NeoX it is
  the output of ``post_attention_layernorm``; in Gemma 2/3 of ``pre_feedforward_layernorm``;
  in GPT-2 of ``ln_2``; in Phi (parallel attention and MLP) the normalised block input.
- ``self_attn``: the output of block L's attention module (after its output projection),
  before it is added to the residual stream.
- ``post_attention_layernorm``: the output of block L's norm that follows attention. In
  Llama/Mistral/Qwen/GPT-2/GPT-NeoX this is the MLP's input; in Gemma 2/3 it is the
  normalised attention output (Gemma has a separate pre-feedforward norm).

A new architecture is one row of ``FAMILIES`` (and its ``config.model_type`` values in
``MODEL_TYPES``); a new site is one entry in the rows that have it. No site has code of
its own: the hooks (``eas.core.intervene.hook``) read the direction from the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

Direction = Literal["input", "output"]
INPUT: Direction = "input"
OUTPUT: Direction = "output"


class ModelError(ValueError):
    """A model, layer or site eas cannot resolve; the message says what to change."""


@dataclass(frozen=True)
class Site:
    """One site of a family: a module path inside a block ("" = the block) and a direction."""

    path: str
    direction: Direction


@dataclass(frozen=True)
class Family:
    """One architecture family: where its decoder blocks are and the sites inside a block."""

    blocks: str  # path from the model to its list of decoder blocks
    sites: dict[str, Site]


# Llama-style and Gemma blocks name their modules alike (what the post-attention norm
# normalises differs: see the module docstring)
_DECODER_SITES = {
    "residual": Site("", OUTPUT),
    "residual_pre": Site("", INPUT),
    "mlp": Site("mlp", OUTPUT),
    "mlp_input": Site("mlp", INPUT),
    "self_attn": Site("self_attn", OUTPUT),
    "post_attention_layernorm": Site("post_attention_layernorm", OUTPUT),
}

FAMILIES: dict[str, Family] = {
    "llama": Family("model.layers", dict(_DECODER_SITES)),
    "gemma": Family("model.layers", dict(_DECODER_SITES)),
    "gpt2": Family("transformer.h", {
        "residual": Site("", OUTPUT),
        "residual_pre": Site("", INPUT),
        "mlp": Site("mlp", OUTPUT),
        "mlp_input": Site("mlp", INPUT),
        "self_attn": Site("attn", OUTPUT),
        "post_attention_layernorm": Site("ln_2", OUTPUT),
    }),
    "gpt_neox": Family("gpt_neox.layers", {
        "residual": Site("", OUTPUT),
        "residual_pre": Site("", INPUT),
        "mlp": Site("mlp", OUTPUT),
        "mlp_input": Site("mlp", INPUT),
        "self_attn": Site("attention", OUTPUT),
        "post_attention_layernorm": Site("post_attention_layernorm", OUTPUT),
    }),
    # OPT flattens tokens for its final norm and fc1/fc2 (no MLP module): no MLP sites
    "opt": Family("model.decoder.layers", {
        "residual": Site("", OUTPUT),
        "residual_pre": Site("", INPUT),
        "self_attn": Site("self_attn", OUTPUT),
    }),
    # parallel attention and MLP share one input norm: no post-attention norm
    "phi": Family("model.layers", {
        "residual": Site("", OUTPUT),
        "residual_pre": Site("", INPUT),
        "mlp": Site("mlp", OUTPUT),
        "mlp_input": Site("mlp", INPUT),
        "self_attn": Site("self_attn", OUTPUT),
    }),
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


@dataclass
class SiteMap:
    """Resolves ``(layer, site)`` to a module of one loaded model and the site's direction."""

    model: nn.Module
    family: str

    @property
    def table(self) -> dict[str, Site]:
        """This family's sites by name."""
        return FAMILIES[self.family].sites

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.table)

    @property
    def blocks(self) -> nn.ModuleList:
        return _get(self.model, FAMILIES[self.family].blocks)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def block(self, layer: int) -> nn.Module:
        self.check_layer(layer)
        return self.blocks[layer]

    def site(self, site: str) -> Site:
        """The table row of ``site``.

        Raises:
            ModelError: this family has no such site (the message lists those it has).
        """
        if site not in self.table:
            raise ModelError(
                f"steer_target site {site!r} does not exist for the {self.family} family; "
                f"available: {', '.join(self.table)}"
            )
        return self.table[site]

    def module(self, layer: int, site: str) -> nn.Module:
        """The module the site's hook goes on (its input or output, as ``direction`` says)."""
        path = self.site(site).path
        block = self.block(layer)
        return _get(block, path) if path else block

    def direction(self, site: str) -> Direction:
        return self.site(site).direction

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
    """The family of a loaded HF model, from its ``config.model_type``.

    Raises:
        ModelError: a model type with no row in the table.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in MODEL_TYPES:
        raise ModelError(
            f"unknown architecture {model_type!r}: eas has site maps for model types "
            f"{', '.join(sorted(MODEL_TYPES))}. Add a row to eas.core.sites.FAMILIES and MODEL_TYPES."
        )
    return MODEL_TYPES[model_type]


def site_map(model: nn.Module) -> SiteMap:
    return SiteMap(model=model, family=family_of(model))
