"""Speed of activation patching: every (layer, position) patch of a pair, eas's tiled engine
(``eas.core.patch.patch``) against the naive loop (``patch_naive``: one full forward per patch), in one process.

The naive loop is timed on ``--naive-patches`` patches spread over the grid (every layer, positions
from first to last) and extrapolated per patch; the rows it timed are checked against the engine's
(max abs difference of the logit difference). Attribution patching (one forward + backward) is timed
too, with its agreement (Pearson r) with exact patching over the grid. Peak memory: the process's
peak resident set after each phase (on CUDA the peak allocated).

Examples:
    python benchmarks/patch_bench.py                      # CPU: SmolLM2 (30 layers) x 64 positions, 1 pair
    python benchmarks/patch_bench.py --quick              # a smoke run
    python benchmarks/patch_bench.py --rows 96 --positions-per-pass 16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_bench import timed
from sweep_bench import SHAPES, load

from eas.core import patch as P


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2_135m", help="an embedded model key, or 'random'")
    p.add_argument("--arch", default="llama-tiny", choices=sorted(SHAPES), help="shape of --model random")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--positions", type=int, default=64, help="tokens of the pair's texts")
    p.add_argument("--pairs", type=int, default=1)
    p.add_argument("--site", default="residual")
    p.add_argument("--rows", type=int, default=48, help="patches per forward (rows_per_pass)")
    p.add_argument("--positions-per-pass", type=int, default=8)
    p.add_argument("--naive-patches", type=int, default=60, help="patches the naive loop times")
    p.add_argument("--quick", action="store_true", help="16 positions, 2 naive patches per layer")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.positions, args.naive_patches = 16, 12
    torch.manual_seed(0)
    model, sites, tok = load(args)
    model.eval()
    vocab = model.config.vocab_size
    n_layers = sites.n_layers
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randint(10, vocab, (args.positions,), generator=g).tolist(),
              torch.randint(10, vocab, (args.positions,), generator=g).tolist()) for _ in range(args.pairs)]
    patches = [P.Patch(layer, (q,)) for layer in range(n_layers) for q in range(args.positions)]
    readout = P.Readout([[11], [12]], 0, 1)

    def engine():
        return [P.patch(model, sites, args.site, t, patches, readout, s, rows_per_pass=args.rows,
                        positions_per_pass=args.positions_per_pass) for s, t in pairs]

    got, t_engine, mem_engine = timed(args.device, engine)
    step = max(1, len(patches) // args.naive_patches)
    sample = patches[::step][:args.naive_patches]
    src, tgt = pairs[0]
    naive, t_naive_s, mem_naive = timed(args.device, lambda: P.patch_naive(model, sites, args.site, tgt, sample,
                                                                         readout, src))
    t_naive = t_naive_s / len(sample) * len(patches) * len(pairs)
    idx = torch.tensor([patches.index(q) for q in sample])
    err = float((got[0]["logit_diff"][idx] - naive["logit_diff"]).abs().max())

    def metric(logits):
        return logits[11] - logits[12]

    attr, t_attr, mem_attr = timed(args.device, lambda: [P.attribution(model, sites, args.site, t, s,
                                                                       range(n_layers), metric) for s, t in pairs])
    exact = (got[0]["logit_diff"] - got[0]["target"]["logit_diff"]).reshape(n_layers, args.positions)
    r = float(torch.corrcoef(torch.stack([exact.flatten(), attr[0].flatten()]))[0, 1])
    res = {
        "model": args.model, "device": args.device, "dtype": args.dtype, "layers": n_layers,
        "positions": args.positions, "pairs": args.pairs, "patches": len(patches) * len(pairs),
        "rows_per_pass": args.rows, "positions_per_pass": args.positions_per_pass,
        "engine_s": round(t_engine, 2), "naive_s_extrapolated": round(t_naive, 2),
        "naive_patches_timed": len(sample), "speedup_vs_naive": round(t_naive / t_engine, 2),
        "max_abs_diff_vs_naive": err, "attribution_s": round(t_attr, 3),
        "attribution_speedup_vs_engine": round(t_engine / t_attr, 1), "attribution_pearson_r": round(r, 3),
        "peak_mb": {"engine": round(mem_engine), "naive": round(mem_naive), "attribution": round(mem_attr)},
    }
    print(f"{len(patches)} patches x {args.pairs} pair(s) ({n_layers} layers x {args.positions} positions, "
          f"{args.model}, {args.device}):")
    print(f"  naive (one forward per patch, {len(sample)} timed): {t_naive:8.1f} s   peak {mem_naive:.0f} MB")
    print(f"  eas patch (tiles of {args.rows} rows):      {t_engine:8.1f} s   peak {mem_engine:.0f} MB   "
          f"-> {t_naive / t_engine:.1f}x naive; max |diff| {err:.1e}")
    print(f"  attribution patching (1 fwd + bwd):   {t_attr:8.2f} s   peak {mem_attr:.0f} MB   "
          f"Pearson r with exact {r:.3f}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
