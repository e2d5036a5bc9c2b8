"""Speed of steered generation on vLLM (eas.backends.vllm) against eas's built-in engine, same CPU.

Four phases, each in a fresh subprocess (so each peak RSS is its own): engine ``eas`` or
``vllm`` x cells ``unsteered`` (one unsteered cell) or ``mixed`` (``--layers`` x
``--strengths`` steered cells, 12 by default, at several layers). Every row is greedy and runs
exactly ``--tokens`` new tokens (``eos=[]``), so both engines do the same work; tokens/s counts
new tokens over the generation call only (model load excluded, timed apart). Both get the same
``--threads`` (OMP_NUM_THREADS). Prints per phase tokens/s, load seconds and peak RSS, then the
ratios vllm/eas, and mixed/unsteered per engine; ``--json`` writes them.

Run it with the vLLM environment's python (tools/vllm_env.sh):

    /work/vllm-env/bin/python benchmarks/vllm_bench.py                 # SmolLM2, 32 prompts x 64 tokens
    /work/vllm-env/bin/python benchmarks/vllm_bench.py --prompts 8 --tokens 16   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

TOPICS = ["a stranger who dropped their wallet", "a coworker moving a meeting", "a friend before an exam",
          "a neighbour whose cat is lost", "a child asking why the sky is blue", "a customer with a late parcel",
          "a colleague who feels faint", "a student who failed a test"]
PHASES = ["eas:unsteered", "eas:mixed", "vllm:unsteered", "vllm:mixed"]


def _phase(args) -> dict:
    """One phase in this process: load, generate, time."""
    import torch
    from omegaconf import OmegaConf

    from eas import config, models
    from eas.core import generate as gen
    from eas.core import tokens
    from eas.prompts import Prompter

    engine, kind = args.phase.split(":")
    t0 = time.perf_counter()
    lm = models.load(OmegaConf.merge(OmegaConf.structured(config.ModelConfig),
                                     config.model_preset(args.model, "model")), seed=0)
    prompter = Prompter(lm.tokenizer, "chat")
    texts = [f"Write two sentences to {TOPICS[i % len(TOPICS)]} (request {i})." for i in range(args.prompts)]
    rows = tokens.encode(lm.tokenizer, [prompter.generation(p) for p in texts], prompter.add_special_tokens)
    width, n_layers = lm.model.config.hidden_size, lm.sites.n_layers
    if kind == "unsteered":
        cells = [gen.GenCell()]
    else:
        layers = [round(n_layers * (k + 1) / (args.layers + 1)) for k in range(args.layers)]
        g = torch.Generator().manual_seed(0)
        cells = []
        for layer in layers:
            v = torch.randn(width, generator=g)
            v = v / v.norm()
            cells += [gen.GenCell(layer, 2.0 * (s + 1), v) for s in range(args.strengths)]
    s = gen.Sampling(max_new_tokens=args.tokens)
    pad = tokens.pad_id(lm.tokenizer)
    if engine == "eas":
        load_s = time.perf_counter() - t0
        t = time.perf_counter()
        out = gen.generate(lm.model, lm.sites, rows, "residual", cells, s, eos=[], batch_size=args.batch_size,
                           pad=pad)
    else:
        from eas.backends import vllm as ev

        del lm
        t1 = time.perf_counter()
        vm = ev.load(models.embedded_cache(args.model), max_model_len=max(map(len, rows)) + args.tokens + 8,
                     kv_cache_gib=args.kv_cache_gib)
        load_s = time.perf_counter() - t1
        t = time.perf_counter()
        out = ev.generate(vm, rows, "residual", cells, s, eos=[])
    wall = time.perf_counter() - t
    new = sum(len(r) for c in out for r in c)
    return {"phase": args.phase, "rows": len(cells) * len(rows), "new_tokens": new, "gen_s": wall,
            "tokens_per_s": new / wall, "load_s": load_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2_135m", help="an embedded model key")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--strengths", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128, help="rows eas's engine decodes together")
    p.add_argument("--kv-cache-gib", type=int, default=2, help="vLLM's CPU key/value cache (GiB)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP_NUM_THREADS of every phase")
    p.add_argument("--phases", default=",".join(PHASES))
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase, print its JSON
    args = p.parse_args(argv)
    if args.phase:
        print("EAS_BENCH " + json.dumps(_phase(args)), flush=True)
        return {}

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    passed = ["--model", args.model, "--prompts", str(args.prompts), "--tokens", str(args.tokens), "--layers",
              str(args.layers), "--strengths", str(args.strengths), "--batch-size", str(args.batch_size),
              "--kv-cache-gib", str(args.kv_cache_gib)]
    results = {}
    for phase in args.phases.split(","):
        proc = subprocess.run([sys.executable, __file__, *passed, "--phase", phase], env=env, text=True,
                              capture_output=True, check=False)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("EAS_BENCH ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{phase}: failed (rc {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        r = results[phase] = json.loads(line[len("EAS_BENCH "):])
        print(f"{phase:16s} rows={r['rows']:5d} new_tokens={r['new_tokens']:7d} gen={r['gen_s']:8.1f}s "
              f"{r['tokens_per_s']:8.1f} tok/s  load={r['load_s']:5.1f}s  peak_rss={r['peak_rss_mb']:7.0f} MB",
              flush=True)

    def tps(ph):
        return results[ph]["tokens_per_s"] if ph in results else None

    ratios = {}
    for kind in ("unsteered", "mixed"):
        a, b = tps(f"vllm:{kind}"), tps(f"eas:{kind}")
        if a and b:
            ratios[f"vllm/eas {kind}"] = a / b
    for engine in ("eas", "vllm"):
        a, b = tps(f"{engine}:mixed"), tps(f"{engine}:unsteered")
        if a and b:
            ratios[f"{engine} mixed/unsteered"] = a / b
    for k, v in ratios.items():
        print(f"{k:26s} {v:6.2f}x tokens/s")
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results, "ratios": ratios}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
