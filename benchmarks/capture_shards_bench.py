"""What streaming the capture to disk in shards costs: the steer job's capture step
(``Experiment.activations``: every layer captured, each shard a store record written when
done) timed with one shard holding every text and with smaller shards, in one process,
on the same model and texts, each run into an empty store.

A shard ends a batch early (its last batch is partial) and writes a safetensors record;
the issue's budget is at most 10% throughput lost.

Examples:
    python benchmarks/capture_shards_bench.py                        # CPU: SmolLM2, 636 texts
    python benchmarks/capture_shards_bench.py --model llama31_8b_instruct --random --device cuda \\
        --dtype bfloat16 --texts 4096 --shards 4096,2048,512
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas.cli import CONF_DIR
from eas.experiments.steer import Steer

# the architecture of a conf/model preset, built random-init (speed does not depend on the weights)
RANDOM_SHAPES = {
    "llama31_8b_instruct": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "max_position_embeddings": 8192},
}


def job_config(args, shard: int, store_root: Path):
    overrides = [f"model={args.model}", f"benchmark={args.benchmark}", "progress=false", f"store.root={store_root}",
                 f"capture_shard_size={shard}", f"batch_size={args.batch_size}"]
    if args.device:
        overrides.append(f"model.device={args.device}")
    if args.dtype:
        overrides.append(f"model.dtype={args.dtype}")
    if args.random:
        overrides += ["model.source=random", "model.architecture=llama", "model.id=null"]
        overrides += [f"++model.random_config.{k}={v}" for k, v in RANDOM_SHAPES[args.model].items()]
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=overrides)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2_135m", help="a conf/model preset")
    ap.add_argument("--random", action="store_true", help="random-init weights of the preset's shape")
    ap.add_argument("--benchmark", default="eas_facts")
    ap.add_argument("--texts", type=int, default=0, help="texts captured (0: every item x option of the set)")
    ap.add_argument("--shards", default="0,256,64", help="shard sizes; 0 = one shard of every text")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--batch-size", type=int, default=0, help="0: auto")
    ap.add_argument("--repeat", type=int, default=2, help="fastest of this many runs per shard size")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="eas-shards-"))
    try:
        job = Steer(job_config(args, 2048, root / "warm"), root / "run")
        job.load()
        texts = [job.prompter.mc_with_letter(it, k) for it in job.bench.items for k in range(len(it.options))]
        if args.texts:
            texts = (texts * (args.texts // len(texts) + 1))[: args.texts]
        job.activations(texts[: 2 * job.batch_size])  # warm kernels and the allocator
        sizes = [int(s) or len(texts) for s in args.shards.split(",")]
        seconds: dict[int, float] = {}
        for size in sizes:
            job.cfg.capture_shard_size = size
            for rep in range(args.repeat):
                job.store.root = root / f"store-{size}-{rep}"  # an empty store: every shard is captured
                if str(job.lm.model.device).startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                acts = job.activations(texts)
                if str(job.lm.model.device).startswith("cuda"):
                    torch.cuda.synchronize()
                seconds[size] = min(seconds.get(size, float("inf")), time.perf_counter() - t)
                n_records = sum(1 for _ in (job.store.root / "activations").rglob("*.safetensors"))
                shutil.rmtree(job.store.root, ignore_errors=True)
            assert all(v.shape[0] == len(texts) for v in acts.values())
        whole = seconds[len(texts)] if len(texts) in seconds else seconds[max(seconds)]
        out = {"model": args.model + (" (random init)" if args.random else ""), "texts": len(texts),
               "layers_captured": job.lm.sites.n_layers, "batch_size": job.batch_size,
               "device": str(job.lm.model.device), "dtype": str(next(job.lm.model.parameters()).dtype)}
        for size in sizes:
            out[f"shard_{size}_s"] = seconds[size]
            out[f"shard_{size}_texts_per_s"] = len(texts) / seconds[size]
            out[f"shard_{size}_throughput_vs_one_shard"] = whole / seconds[size]
        out["last_run_records"] = n_records
    finally:
        shutil.rmtree(root, ignore_errors=True)
    width = max(len(k) for k in out)
    for k, v in out.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
