"""Where one batched forward pass spends its time (torch.profiler, CUDA kernels).

    python benchmarks/profile_forward.py --arch llama-8b --batch 232 --tokens 200
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.sweep_bench import SHAPES, flops_per_token
from eas import models
from eas.core.tokens import position_ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="llama-8b", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--pad", action="store_true", help="ragged lengths (left padding)")
    ap.add_argument("--attn", default="sdpa")
    args = ap.parse_args()
    model = models.random_model("llama", {**SHAPES[args.arch], "attn_implementation": args.attn},
                                dtype=torch.bfloat16, device="cuda")
    ids = torch.randint(3, 400, (args.batch, args.tokens), device="cuda")
    mask = torch.ones_like(ids)
    if args.pad:
        for i in range(args.batch):
            mask[i, : i % 40] = 0
    pos = position_ids(mask)

    def step():
        with torch.inference_mode():
            model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / 5
    tf = flops_per_token(model) * ids.numel() / dt / 1e12
    print(f"{args.arch} batch {args.batch} x {args.tokens} pad={args.pad} attn={args.attn}: "
          f"{dt * 1000:.1f} ms/pass, {tf:.0f} TFLOP/s ({tf / 989:.1%} of 989)")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
