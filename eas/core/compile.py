"""Optional ``torch.compile`` of a model's blocks, safe for eas's hooks.

Every capture, steer and ablation in eas is a forward hook (output sites) or a forward
pre-hook (input sites) on a site module (a block, its MLP, its attention, a norm). Compiling a module's ``__call__`` traces its hooks into
the graph, and dynamo does not re-check hooks added later by default: a capture hook
registered after compiling silently never runs. So eas compiles *regions* instead,
and only a module's ``forward``: hooks live in ``nn.Module.__call__``, outside the
compiled code, and keep working whatever is registered when.

The regions are each block's children that hold weights, except its attention module:
attention updates the key/value cache by layer index, which would specialise one graph
per layer (past dynamo's recompile limit), while an MLP or a norm is the same graph in
every block. What compiling buys is the fusion of the elementwise work around the
matmuls (norms, activations, gating); the matmuls and SDPA are the same kernels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from eas.core.sites import SiteMap


@dataclass(frozen=True)
class Compiled:
    """What ``compile_blocks`` did, for the caller to report.

    Attributes:
        regions: ``"block.child"`` names of the compiled modules (e.g. ``"0.mlp"``).
        seconds: wall time of the warm-up pass in which compiling happens.
    """

    regions: tuple[str, ...]
    seconds: float

    @property
    def kinds(self) -> list[str]:
        """The child names compiled in a block, sorted (e.g. ``["input_layernorm", "mlp", ...]``)."""
        return sorted({name.split(".", 1)[1] for name in self.regions})


def regions(sites: SiteMap) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every region ``compile_blocks`` compiles, block by block."""
    attn = sites.table["self_attn"].path if "self_attn" in sites.table else None
    out = []
    for i, block in enumerate(sites.blocks):
        for name, child in block.named_children():
            if name == attn or not any(True for _ in child.parameters()):
                continue
            out.append((f"{i}.{name}", child))
    return out


def compile_blocks(model: nn.Module, sites: SiteMap) -> Compiled:
    """Compile the ``forward`` of every region (module docstring), with dynamic shapes.

    Runs one small forward pass so that compiling happens (and fails, if it does)
    here rather than in the middle of a job.

    Returns:
        The compiled regions and how long compiling took.

    Raises:
        RuntimeError: torch.compile could not compile the model here (no C++ compiler on
            CPU, no Triton on GPU, an unsupported op); the message says how to run without it.
    """
    found = regions(sites)
    for _, module in found:
        if not getattr(module.forward, "_eas_compiled", False):
            compiled = torch.compile(module.forward, dynamic=True)
            compiled._eas_compiled = True
            module.forward = compiled
    device = next(model.parameters()).device
    t = time.perf_counter()
    try:
        with torch.inference_mode():
            ids = torch.ones(2, 3, dtype=torch.long, device=device)  # not 1: dynamo specialises sizes 0 and 1
            model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    except Exception as e:
        first = next(iter(str(e).strip().splitlines()), "")
        raise RuntimeError(f"model.compile=true: torch.compile failed on {type(model).__name__} "
                           f"({type(e).__name__}: {first}); run with model.compile=false") from e
    return Compiled(tuple(name for name, _ in found), time.perf_counter() - t)
