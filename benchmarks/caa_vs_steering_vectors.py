"""CAA mean-difference vectors for every layer: eas against steering-vectors, same pairs, one process.

Both read the residual stream (decoder block output) at the last token of "A/B prompt +
answer letter" texts (behaviour-matching minus not matching) from the built-in
``eas_sycophancy`` set, and average the differences. Prints the per-layer cosine between
the two libraries' vectors and the time each took.

    pip install -e '.[bench]'   # steering-vectors (pins transformers<5; install with --no-deps on 5.x)
    python benchmarks/caa_vs_steering_vectors.py --pairs 100
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch

from eas import models
from eas.core import capture, tokens, vectors
from eas.data import load_benchmark
from eas.prompts import Prompter


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--batch-sizes", default="1,16", help="steering-vectors batch sizes to time")
    ap.add_argument("--eas-batch-size", type=int, default=16)
    args = ap.parse_args(argv)
    import steering_vectors as sv

    cfg = SimpleNamespace(name=args.model, source="embedded", id=args.model, dtype="float32", device="cpu",
                          quantization="none", device_map=None, revision=None, trust_remote_code=False)
    lm = models.load(cfg)
    bench = load_benchmark(SimpleNamespace(name="eas_sycophancy", format="eas", path=None, hub_id=None,
                                           hub_config=None, hub_split=None, kind="ab", options={}))
    p = Prompter(lm.tokenizer, "chat")
    items = list(bench.items)[: args.pairs]
    pairs = [(p.mc_with_letter(it, it.label), p.mc_with_letter(it, 1 - it.label)) for it in items]
    n_layers = lm.sites.n_layers
    layers = list(range(n_layers))
    # steering-vectors tokenises with the tokenizer's defaults: match that for an exact comparison
    add_special = True

    t = time.perf_counter()
    texts = [a for a, _ in pairs] + [b for _, b in pairs]  # one sorted, batched pass over both sides
    acts = capture.capture(lm.model, lm.sites, tokens.encode(lm.tokenizer, texts, add_special), layers,
                           "residual", ("last",), args.eas_batch_size, tokens.pad_id(lm.tokenizer))["last"]
    pos, neg = acts[:, : len(pairs)], acts[:, len(pairs):]
    ours = {L: vectors.mean_difference(pos[L], neg[L]) for L in layers}
    t_eas = time.perf_counter() - t
    print(f"eas: {len(pairs)} pairs x {n_layers} layers in {t_eas:.1f}s (batch {args.eas_batch_size})")

    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        t = time.perf_counter()
        theirs = sv.train_steering_vector(lm.model, lm.tokenizer, pairs, layers=layers, layer_type="decoder_block",
                                          read_token_index=-1, batch_size=bs, move_to_cpu=True)
        t_sv = time.perf_counter() - t
        cos = torch.stack([torch.nn.functional.cosine_similarity(ours[L], theirs.layer_activations[L].float(), dim=0)
                           for L in layers])
        print(f"steering-vectors batch {bs}: {t_sv:.1f}s; eas is {t_sv / t_eas:.1f}x faster; "
              f"cosine per layer min {cos.min():.6f} mean {cos.mean():.6f}")
        if cos.min() < 0.9999:
            worst = int(cos.argmin())
            print(f"  layers below 0.9999: {[L for L in layers if cos[L] < 0.9999]} (worst {worst}: {cos[worst]:.6f})")


if __name__ == "__main__":
    main()
