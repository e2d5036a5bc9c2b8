"""Trait monitoring speed and memory: per-token projection onto many directions at every layer,
in one process against baselines run the same way.

1. overhead: the forward pass over prompts (``eas.core.monitor.project``'s batches) with the
   monitor's hooks against the same forward without them; and steered-free generation with
   ``monitor=`` against the same ``generate`` call without it. Ratio = with / without.
2. scale: prompts/s of the scale path (shards through ``project``, one score per prompt kept)
   against a naive loop (one prompt at a time, ``output_hidden_states=True``, every hidden state
   kept, projected afterwards). Peak memory of the scale path at 1x and 10x the prompt count,
   each in its own process (peak resident set; on CUDA the peak allocated).
3. storage: bytes per token of a per-token record (float16 projections + the token id).

Examples:
    python benchmarks/traits_bench.py                 # SmolLM2, 64 directions x 30 layers, 64 prompts
    python benchmarks/traits_bench.py --quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_bench import peak_mb, timed
from sweep_bench import SHAPES, load

from eas.core import generate as gen
from eas.core import monitor as M
from eas.core.tokens import batches


def prompts(tok, n: int) -> list[list[int]]:
    """Chat-formatted rows from the built-in harmful/benign prompt set, cycled to ``n``."""
    from types import SimpleNamespace

    from eas.data import load_prompts
    from eas.prompts import Prompter

    ps = load_prompts(SimpleNamespace(name="eas_harm", format="eas_prompts", path=None, hub_id=None, hub_config=None,
                                      hub_split=None, options={}, categories=None, labels=None, limit=None)).prompts
    pr = Prompter(tok, "chat")
    texts = [pr.generation(f"{ps[i % len(ps)].text} (case {i})") for i in range(n)]
    return [list(r) for r in tok(texts, add_special_tokens=not pr.uses_chat)["input_ids"]]


def plain_forward(model, rows, batch_size, pad):
    with torch.inference_mode():
        for b in batches(rows, batch_size, pad, next(model.parameters()).device):
            model.base_model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                             use_cache=False)


def naive(model, rows, dirs):
    """One prompt at a time, every hidden state kept, projected afterwards."""
    kept = []
    with torch.inference_mode():
        for r in rows:
            out = model(input_ids=torch.tensor([r], device=next(model.parameters()).device), output_hidden_states=True)
            kept.append(torch.stack(out.hidden_states[1:])[:, 0].cpu())  # [layer, pos, d]; the last one normed
        return [torch.stack([h[L] @ dirs[L].T for L in sorted(dirs)], dim=1) for h in kept], kept


def scale_path(model, sites, rows, dirs, batch_size, pad, shard):
    """The job's scale path: shards through ``project``, the last token's score per prompt kept."""
    mon = M.Monitor(sites, "residual", dirs)
    scores = []
    for s in range(0, len(rows), shard):
        for p in M.project(model, mon, rows[s:s + shard], batch_size, pad):
            scores.append(p[-1].clone())
    return torch.stack(scores)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2_135m")
    p.add_argument("--arch", default="llama-tiny", choices=sorted(SHAPES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--directions", type=int, default=64)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--gen-prompts", type=int, default=16)
    p.add_argument("--naive-prompts", type=int, default=16)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--memory-only", type=int, default=0, help=argparse.SUPPRESS)  # child: the scale path on N prompts
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.gen_prompts, args.new_tokens, args.naive_prompts = 16, 4, 8, 4
    torch.manual_seed(0)
    model, sites, tok = load(args)
    model.eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    g = torch.Generator().manual_seed(0)
    layers = list(range(sites.n_layers))
    dirs = {L: torch.nn.functional.normalize(torch.randn(args.directions, model.config.hidden_size, generator=g), dim=1)
            .to(args.device) for L in layers}
    if args.memory_only:
        rows = prompts(tok, args.memory_only)
        _, t, mem = timed(args.device, lambda: scale_path(model, sites, rows, dirs, args.batch_size, pad, args.shard))
        print(json.dumps({"prompts": len(rows), "seconds": t, "peak_mb": mem}))
        return {}
    rows = prompts(tok, args.prompts)
    n_tok = sum(len(r) for r in rows)
    mon = M.Monitor(sites, "residual", dirs)
    plain_forward(model, rows[:4], args.batch_size, pad)  # warm-up
    _, t_plain, _ = timed(args.device, lambda: plain_forward(model, rows, args.batch_size, pad))
    # the hooks' cost: the same batches and blocks (project stops at the top monitored layer, here the
    # last block), no shared prefix; then what running the shared prefix once saves
    proj, t_mon, _ = timed(args.device, lambda: M.project(model, mon, rows, args.batch_size, pad, min_shared=10**9))
    proj_p, t_pre, _ = timed(args.device, lambda: M.project(model, mon, rows, args.batch_size, pad))
    prefix_err = max(float((a - b).abs().max()) for a, b in zip(proj, proj_p))
    grow = rows[:args.gen_prompts]
    s = gen.Sampling(args.new_tokens)
    cell = [gen.GenCell()]
    out0, t_gen, _ = timed(args.device, lambda: gen.generate(model, sites, grow, "residual", cell, s, eos=[],
                                                             batch_size=args.batch_size, pad=pad))
    out1, t_gen_mon, _ = timed(args.device, lambda: gen.generate(model, sites, grow, "residual", cell, s, eos=[],
                                                                 batch_size=args.batch_size, pad=pad, monitor=mon))
    assert out0 == out1
    few = rows[:args.naive_prompts]
    (ref, kept), t_naive, _ = timed(args.device, lambda: naive(model, few, dirs))
    # hidden_states[-1] is after the final norm, not the last block's output: compared below it
    err = max(float((a[:, :-1] - b[:, :-1]).abs().max()) for a, b in zip(ref, proj))
    kept_mb = sum(h.numel() * h.element_size() for h in kept) / 2**20
    _, t_scale, _ = timed(args.device, lambda: scale_path(model, sites, rows, dirs, args.batch_size, pad, args.shard))
    naive_per = t_naive / len(few)
    scale_per = t_scale / len(rows)
    mems = {}
    for k in (1, 10):
        cmd = [sys.executable, __file__, "--memory-only", str(k * args.prompts), "--model", args.model,
               "--arch", args.arch, "--device", args.device, "--dtype", args.dtype, "--directions",
               str(args.directions), "--batch-size", str(args.batch_size), "--shard", str(args.shard)]
        mems[k] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
                             .splitlines()[-1])
    res = {
        "model": args.model, "device": args.device, "layers": len(layers), "directions": args.directions,
        "prompts": len(rows), "tokens": n_tok,
        "forward_s": t_plain, "forward_monitored_s": t_mon, "forward_overhead": t_mon / t_plain,
        "forward_monitored_shared_prefix_s": t_pre, "shared_prefix_speedup": t_mon / t_pre,
        "shared_prefix_max_abs_diff": prefix_err,
        "generate_s": t_gen, "generate_monitored_s": t_gen_mon, "generate_overhead": t_gen_mon / t_gen,
        "naive_prompts_per_s": 1 / naive_per, "scale_prompts_per_s": 1 / scale_per, "scale_vs_naive": naive_per / scale_per,
        "naive_max_abs_diff": err, "naive_hidden_kept_mb_per_prompt": kept_mb / len(few),
        "bytes_per_token_all_layers": len(layers) * args.directions * 2 + 8,
        "bytes_per_token_per_trait_layer": 2,
        "scale_1x": mems[1], "scale_10x": mems[10], "peak_mb_parent": peak_mb(args.device),
    }
    print(f"{args.model} on {args.device}: {len(layers)} layers x {args.directions} directions, {len(rows)} prompts "
          f"({n_tok} tokens)")
    print(f"  forward: {t_plain:.2f}s plain, {t_mon:.2f}s monitored -> {res['forward_overhead']:.3f}x; the shared "
          f"prefix once: {t_pre:.2f}s ({t_mon / t_pre:.2f}x faster, max |diff| {prefix_err:.1e})")
    print(f"  generate {len(grow)} x {args.new_tokens}: {t_gen:.2f}s plain, {t_gen_mon:.2f}s monitored -> "
          f"{res['generate_overhead']:.3f}x")
    print(f"  scale: {res['scale_prompts_per_s']:.1f} prompts/s vs naive {res['naive_prompts_per_s']:.1f} -> "
          f"{res['scale_vs_naive']:.1f}x (max |diff| {err:.2e}; naive keeps {kept_mb / len(few):.1f} MB per prompt)")
    print(f"  peak memory of the scale path: {mems[1]['peak_mb']:.0f} MB at {mems[1]['prompts']} prompts, "
          f"{mems[10]['peak_mb']:.0f} MB at {mems[10]['prompts']}")
    print(f"  stored per token: {res['bytes_per_token_all_layers']} B for {args.directions} directions x "
          f"{len(layers)} layers (float16 + token id); 2 B per (trait, layer)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
