"""Speed of steered generation: eas's batched engine against HF ``generate``, in one process.

Every row is greedy and runs exactly ``--tokens`` new tokens (no EOS stop), so every method
does the same work. The rows, all on the same prompts and cells:

- naive: HF ``generate``, batch 1, one cell at a time, a plain hook (``eas.core.generate.
  naive_generate``); timed on ``--naive-rows`` rows and extrapolated to the grid;
- HF batched, cell by cell: one ``generate`` call per cell over all prompts (left-padded), the
  cell's delta added by a hook at every position;
- eas grid: ``eas.core.generate.generate`` over every (prompt, cell), with ``steer_on=all``
  and ``steer_on=generated`` (the unsteered prompt prefill then runs once per prompt);
- eas unsteered, the same rows (the prompts repeated once per cell): what the grid costs
  against generating as many texts without steering; and eas unsteered, once per prompt.

Peak memory: the process's peak resident set after each phase (monotone, so phases run in
rising order of memory; on CUDA the peak allocated per phase). Agreement: the eas grid's
tokens against the naive rows that were timed.

Examples:
    python benchmarks/generate_bench.py                      # CPU: SmolLM2, 32 prompts x 64 tokens x 12 cells
    python benchmarks/generate_bench.py --quick              # a smoke run
    python benchmarks/generate_bench.py --model random --arch llama-8b --device cuda --dtype bfloat16 \\
        --prompts 256 --tokens 128 --layers 20 --strengths 7   # 140 mixed cells
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_bench import SHAPES, load, sync

from eas.core import generate as gen
from eas.core import tokens
from eas.core.intervene import add
from eas.prompts import Prompter

TOPICS = ["a stranger who dropped their wallet", "a coworker moving a meeting", "a friend before an exam",
          "a neighbour whose cat is lost", "a child asking why the sky is blue", "a customer with a late parcel",
          "a colleague who feels faint", "a student who failed a test"]


def prompts(n: int) -> list[str]:
    return [f"Write two sentences to {TOPICS[i % len(TOPICS)]} (request {i})." for i in range(n)]


def peak_mb(device) -> float:
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(device, fn):
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t, peak_mb(device)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2_135m", help="an embedded model key, or 'random'")
    p.add_argument("--arch", default="llama-8b", choices=sorted(SHAPES), help="shape of --model random")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--strengths", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128, help="rows (prompt x cell) the engine decodes together")
    p.add_argument("--naive-rows", type=int, default=6, help="rows the naive loop is timed on")
    p.add_argument("--quick", action="store_true", help="4 prompts x 8 tokens x 2 cells")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.tokens, args.layers, args.strengths, args.naive_rows = 4, 8, 2, 1, 2
    torch.manual_seed(0)
    model, sites, tok = load(args)
    dev = args.device
    prompter = Prompter(tok, "chat")
    rows = tokens.encode(tok, [prompter.generation(t) for t in prompts(args.prompts)], prompter.add_special_tokens)
    n_layers = sites.n_layers
    layers = [round(n_layers * (k + 1) / (args.layers + 1)) for k in range(args.layers)]
    g = torch.Generator().manual_seed(0)
    cells = []
    for L in layers:
        v = torch.randn(model.config.hidden_size, generator=g)
        for k in range(args.strengths):
            cells.append(gen.GenCell(L, 0.5 * (k + 1), v / v.norm() * 4))
    s = gen.Sampling(max_new_tokens=args.tokens)
    pad = tokens.pad_id(tok)
    n_rows = len(rows) * len(cells)
    n_new = n_rows * args.tokens
    out: dict = {"model": args.model if args.model != "random" else f"random {args.arch}", "device": dev,
                 "dtype": args.dtype, "prompts": len(rows), "cells": len(cells), "tokens": args.tokens,
                 "mean_prompt_tokens": sum(map(len, rows)) / len(rows), "threads": torch.get_num_threads()}

    def engine(cs, rs, steer_on="all"):
        return gen.generate(model, sites, rs, "residual", cs, s, steer_on, eos=[], batch_size=args.batch_size,
                            pad=pad)

    results = {}
    results["eas unsteered, once per prompt"] = timed(dev, lambda: engine([gen.GenCell()], rows))
    grid_all = timed(dev, lambda: engine(cells, rows, "all"))
    results["eas grid, steer_on=all"] = grid_all
    results["eas grid, steer_on=generated"] = timed(dev, lambda: engine(cells, rows, "generated"))
    same_rows = [r for r in rows for _ in cells]
    results["eas unsteered, the grid's rows"] = timed(dev, lambda: engine([gen.GenCell()], same_rows))

    def hf_batched():
        got = []
        ids, mask = tokens.pad_left(rows, pad, dev)
        for c in cells:
            with add(sites, c.layer, "residual", (c.strength * c.vector).to(dev), position="all"):
                o = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.tokens, do_sample=False,
                                   eos_token_id=[], pad_token_id=pad, temperature=None, top_p=None, top_k=None)
            got.append(o[:, ids.shape[1]:].tolist())
        return got

    results["HF generate batched, cell by cell"] = timed(dev, hf_batched)
    k = min(args.naive_rows, n_rows)
    sub = [(c, i) for c in range(len(cells)) for i in range(len(rows))][:: max(1, n_rows // k)][:k]

    def naive():
        return [gen.naive_generate(model, sites, [rows[i]], "residual", [cells[c]], s, eos=[], pad=pad)[0][0]
                for c, i in sub]

    naive_out, naive_t, naive_mem = timed(dev, naive)
    results["naive (HF generate, batch 1, one cell at a time)"] = (None, naive_t * n_rows / len(sub), naive_mem)
    agree = sum(grid_all[0][c][i] == t for (c, i), t in zip(sub, naive_out))
    out["agreement_with_naive"] = f"{agree}/{len(sub)} rows token for token"

    table = []
    base = results["eas grid, steer_on=all"][1]
    for name, (_, sec, mem) in results.items():
        n_tok = len(rows) * args.tokens if "once per prompt" in name else n_new
        table.append({"row": name, "seconds": round(sec, 2), "new_tokens_per_s": round(n_tok / sec, 1),
                      "peak_memory_mb": round(mem), "seconds_vs_eas_grid_all": round(sec / base, 2)})
    out["table"] = table
    r = {t["row"]: t["seconds"] for t in table}
    out["ratios"] = {
        "eas grid (all) vs naive: speed-up": round(r["naive (HF generate, batch 1, one cell at a time)"] / base, 2),
        "eas grid (all) vs HF batched cell by cell: speed-up": round(r["HF generate batched, cell by cell"] / base, 2),
        "eas grid (generated) vs HF batched cell by cell: speed-up": round(
            r["HF generate batched, cell by cell"] / r["eas grid, steer_on=generated"], 2),
        "eas grid (all) / unsteered on the same rows: cost": round(base / r["eas unsteered, the grid's rows"], 3),
        "eas grid (generated) / unsteered on the same rows: cost": round(
            r["eas grid, steer_on=generated"] / r["eas unsteered, the grid's rows"], 3),
    }
    out["naive_timed_rows"] = len(sub)
    print(f"{out['model']} on {dev} ({args.dtype}, {out['threads']} threads): {len(rows)} prompts "
          f"(mean {out['mean_prompt_tokens']:.0f} tokens) x {len(cells)} cells x {args.tokens} new tokens, greedy")
    w = max(len(t["row"]) for t in table)
    print(f"{'':{w}}  {'seconds':>9}  {'tokens/s':>9}  {'peak MB':>8}  {'vs eas grid':>11}")
    for t in table:
        print(f"{t['row']:{w}}  {t['seconds']:9.2f}  {t['new_tokens_per_s']:9.1f}  {t['peak_memory_mb']:8d}  "
              f"{t['seconds_vs_eas_grid_all']:11.2f}")
    print(f"naive timed on {len(sub)} rows and extrapolated; agreement: {out['agreement_with_naive']}")
    for k_, v in out["ratios"].items():
        print(f"  {k_}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
