"""Speed of the eas sweep engine against the naive loop, in one process, same model and items.

The naive loop is what peer code does: batch 1, one hook, full-vocabulary logits, one
whole forward pass per (item, layer, strength), and vectors rebuilt per layer with one
pass per train text. eas: one batched capture pass for every layer, then the engine
(prefix key/value cache shared by every cell, cells stacked as query tokens).

The naive loop is timed on a subset (``--naive-items``) and its rate (item-cells per
second) extrapolated to the whole grid; agreement is measured on that subset.

Examples:
    python benchmarks/sweep_bench.py                                   # CPU: SmolLM2, 4x6 grid, 64 items
    python benchmarks/sweep_bench.py --model random --arch llama-8b --device cuda --dtype bfloat16 \\
        --layers 10 --strengths 14 --items 256 --tokens 200
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch

from eas import models, resources
from eas.core import capture, engine, score, tokens, vectors

SHAPES = {
    "llama-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192, "rope_theta": 500000.0},
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192},
    "llama-tiny": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 8, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 32000, "max_position_embeddings": 2048},
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(device, fn, repeat: int = 1):
    """(result, seconds): the fastest of ``repeat`` runs (steady state, not first-call costs)."""
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return out, best


def load(args):
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if args.model == "random":
        model = models.random_model("llama", SHAPES[args.arch], seed=0, dtype=dtype, device=args.device)
        tok = models.tiny_tokenizer()
        return model, models.site_map(model), tok
    cfg = SimpleNamespace(name=args.model, source="embedded", id=args.model, dtype=args.dtype, device=args.device,
                          quantization="none", device_map=None, revision=None, trust_remote_code=False)
    lm = models.load(cfg)
    return lm.model, lm.sites, lm.tokenizer


def make_items(args, tok, vocab):
    g = torch.Generator().manual_seed(0)
    if args.model == "random":  # random token ids of ~--tokens length; the prompt ends in "Answer:"
        tail = tokens.encode(tok, ["\nAnswer:"])[0]
        rows = []
        for _ in range(args.items + args.train):
            n = int(args.tokens * (0.9 + 0.2 * torch.rand(1, generator=g).item()))
            rows.append(torch.randint(3, min(vocab, 400), (n - len(tail),), generator=g).tolist() + tail)
    else:
        from eas.data import load_benchmark
        from eas.prompts import Prompter

        b = load_benchmark(SimpleNamespace(name="eas_facts", format="eas", path=None, hub_id=None,
                                           hub_config=None, hub_split=None, kind="mc", options={}))
        p = Prompter(tok, "chat")
        texts = [p.mc(it) for it in b.items][: args.items + args.train]
        rows = tokens.encode(tok, texts)
    return rows[args.train:], rows[: args.train]


def flops_per_token(model) -> float:
    n = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name and "lm_head" not in name)
    return 2.0 * n


def fp32_reference(model, args, sub, n_opts, letter_ids, cells, fast, naive) -> dict:
    """Both low-precision paths against the naive loop in float32 on the same item-cells.

    bf16 rounds differently in a batched prefix-cache pass and in a batch-1 full pass, so
    where two letters' logits are closer than that rounding the two paths can pick
    different letters; neither is the float32 answer more often by construction. The
    float32 reference says which is closer to exact arithmetic, and the margin split
    separates real disagreements (a clear float32 margin) from near ties.
    """
    import copy

    ref_model = copy.deepcopy(model).float()
    ref = engine.naive_sweep_mc(ref_model, models.site_map(ref_model), sub, n_opts[: len(sub)], letter_ids,
                               args.site, cells)
    del ref_model
    top2 = ref.topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]  # float32 gap between the best and second-best letter
    finite = torch.isfinite(ref)
    noise = max((fast[finite] - ref[finite]).abs().max().item(), (naive[finite] - ref[finite]).abs().max().item())
    clear = margin > 2 * noise
    pick = ref.argmax(-1)

    def rate(x, where=None):
        hit = (x.argmax(-1) == pick)
        return (hit[where].float().mean().item() if where is not None and where.any() else
                hit.float().mean().item())

    return {
        "fp32_ref_eas_same_letter": rate(fast), f"fp32_ref_naive_{args.dtype}_same_letter": rate(naive),
        f"{args.dtype}_max_abs_diff_vs_fp32": noise,
        "fp32_ref_clear_margin_share": clear.float().mean().item(),
        "fp32_ref_eas_same_letter_clear_margin": rate(fast, clear),
        f"fp32_ref_naive_{args.dtype}_same_letter_clear_margin": rate(naive, clear),
        "eas_vs_naive_same_letter_clear_margin": ((fast.argmax(-1) == naive.argmax(-1))[clear].float().mean().item()
                                                  if clear.any() else None),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2_135m", help="smollm2_135m | gemma3_270m | random")
    ap.add_argument("--arch", default="llama-8b", choices=sorted(SHAPES), help="shape for --model random")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--layers", type=int, default=4, help="number of layers in the grid")
    ap.add_argument("--strengths", type=int, default=6)
    ap.add_argument("--items", type=int, default=64, help="val items scored per cell")
    ap.add_argument("--train", type=int, default=32, help="train texts for vector building")
    ap.add_argument("--tokens", type=int, default=200, help="prompt length for --model random")
    ap.add_argument("--batch-size", type=int, default=0, help="0: auto")
    ap.add_argument("--cells-per-pass", type=int, default=0, help="0: the whole grid in one pass")
    ap.add_argument("--naive-items", type=int, default=4, help="items timed in the naive loop")
    ap.add_argument("--naive-cells", type=int, default=0, help="cells timed in the naive loop (0: all)")
    ap.add_argument("--site", default="residual")
    ap.add_argument("--repeat", type=int, default=3, help="eas phases: fastest of this many runs")
    ap.add_argument("--fp32-reference", action="store_true",
                    help="with a bf16/fp16 --dtype: also run the naive loop in float32 on the same subset, and "
                         "report how often each low-precision path matches it (the precision's noise floor)")
    ap.add_argument("--compile", action="store_true",
                    help="then compile the model (model.compile=true) and time the eas phases again")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    torch.manual_seed(0)

    model, sites, tok = load(args)
    vocab = model.config.vocab_size
    val_rows, train_rows = make_items(args, tok, vocab)
    pad = tokens.pad_id(tok)
    letter_ids = score.letter_token_ids(tok, 4)
    head = score.LetterHead(model, letter_ids)
    n_opts = [4] * len(val_rows)
    L = sites.n_layers
    layers = sorted({round(i * (L - 1) / max(1, args.layers)) + (L // (2 * args.layers)) for i in range(args.layers)})
    layers = [min(x, L - 1) for x in layers]
    strengths = [0.5 * (i + 1) for i in range(args.strengths)]
    bs = args.batch_size or resources.auto_batch_size(model, max_tokens=max(len(r) for r in val_rows),
                                                  cells_per_pass=len(layers) * len(strengths))
    cpp = args.cells_per_pass or len(layers) * len(strengths)
    half = len(train_rows) // 2
    n_val_tokens = sum(len(r) for r in val_rows)

    def eas_phases():
        """The eas path, each phase the fastest of --repeat runs (the first warms kernels and
        allocator): the grid's cells, their scores and the seconds of each phase."""
        acts, t_cap = timed(args.device, lambda: capture.capture(
            model, sites, train_rows, layers, args.site, ("last",), bs, pad)["last"], args.repeat)
        vecs = {layer: vectors.mean_difference(acts[k, :half], acts[k, half:]) for k, layer in enumerate(layers)}
        grid = [engine.Cell(layer, s, vecs[layer]) for layer in layers for s in strengths]
        _, t_un = timed(args.device, lambda: score.score_mc(model, val_rows, n_opts, head, bs, pad), args.repeat)
        scores, t_sw = timed(args.device, lambda: engine.sweep_mc(
            model, sites, val_rows, n_opts, head, args.site, grid, bs, cpp, pad), args.repeat)
        return grid, scores, t_cap, t_un, t_sw

    cells, fast, t_capture, t_unsteered, t_sweep = eas_phases()
    t_eas = t_capture + t_sweep
    capture_tokens = sum(len(r) for r in train_rows) * (max(layers) + 1) / L
    capture_tflops = flops_per_token(model) * capture_tokens / t_capture / 1e12

    # -- naive ------------------------------------------------------------
    naive_cells = cells[: args.naive_cells] if args.naive_cells else cells
    sub = val_rows[: args.naive_items]

    def naive_vectors():
        for layer in layers:  # peers rebuild per layer: one pass per text per layer
            capture.capture(model, sites, train_rows[: args.naive_items], [layer], args.site, ("last",), 1, pad)

    _, t_nvec_sub = timed(args.device, naive_vectors)
    t_nvec = t_nvec_sub * len(train_rows) / min(len(train_rows), args.naive_items)
    slow, t_nsub = timed(args.device, lambda: engine.naive_sweep_mc(
        model, sites, sub, n_opts[: len(sub)], letter_ids, args.site, naive_cells))
    naive_rate = len(sub) * len(naive_cells) / t_nsub  # item-cells per second
    t_naive = t_nvec + len(val_rows) * len(cells) / naive_rate
    idx = [cells.index(c) for c in naive_cells]
    f = fast[idx, : len(sub)]
    agree = (f.argmax(-1) == slow.argmax(-1)).float().mean().item()
    finite = torch.isfinite(slow)
    max_abs = (f[finite] - slow[finite]).abs().max().item()

    peak = next((v for k, v in PEAK_BF16_TFLOPS.items()
                 if args.device.startswith("cuda") and k in torch.cuda.get_device_name()), None)
    out = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu x{torch.get_num_threads()}",
        "model": args.model if args.model != "random" else f"random {args.arch}",
        "dtype": args.dtype, "site": args.site, "layers": layers, "strengths": len(strengths), "cells": len(cells),
        "items": len(val_rows), "mean_tokens": n_val_tokens / len(val_rows), "batch_size": bs,
        "cells_per_pass": cpp,
        "eas_seconds": t_eas, "eas_capture_s": t_capture, "eas_sweep_s": t_sweep,
        "naive_seconds_extrapolated": t_naive, "naive_vectors_s": t_nvec,
        "naive_timed": f"{len(sub)} items x {len(naive_cells)} cells in {t_nsub:.2f}s",
        "speedup_end_to_end": t_naive / t_eas,
        "speedup_scoring_only": (t_naive - t_nvec) / t_sweep,
        "grid_cost_vs_one_unsteered_pass": t_sweep / t_unsteered,
        "unsteered_pass_s": t_unsteered,
        "cells_per_s": len(cells) * len(val_rows) / t_sweep / len(val_rows),
        "item_cells_per_s": len(cells) * len(val_rows) / t_sweep,
        "unsteered_tokens_per_s": n_val_tokens / t_unsteered,
        "capture_tflops": capture_tflops,
        "capture_fraction_of_bf16_peak": capture_tflops / peak if peak else None,
        "unsteered_fraction_of_bf16_peak": (flops_per_token(model) * n_val_tokens / t_unsteered / 1e12 / peak
                                            if peak else None),
        "agreement_pred_letter": agree, "max_abs_letter_logit_diff": max_abs,
    }
    if args.fp32_reference and args.dtype != "float32":
        out.update(fp32_reference(model, args, sub, n_opts, letter_ids, naive_cells, f, slow))
    if args.compile:  # same process, same items: compiled eas phases against the eager ones above
        from eas.core.compile import compile_blocks

        _, t_compile = timed(args.device, lambda: compile_blocks(model, sites))
        _, cfast, c_capture, c_unsteered, c_sweep = eas_phases()
        out.update({
            "compile_s": t_compile,
            "compiled_speedup_capture": t_capture / c_capture,
            "compiled_speedup_unsteered": t_unsteered / c_unsteered,
            "compiled_speedup_sweep": t_sweep / c_sweep,
            "compiled_vs_eager_same_letter": (cfast.argmax(-1) == fast.argmax(-1)).float().mean().item(),
            "compiled_vs_eager_max_abs_diff": (cfast - fast)[torch.isfinite(fast)].abs().max().item(),
        })
    width = max(len(k) for k in out)
    for k, v in out.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
