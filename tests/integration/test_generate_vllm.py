"""experiment=generate with experiment.engine=vllm on the embedded SmolLM2: the same job, the same
outputs as the built-in engine (greedy float32 texts equal), and steering that takes effect.

Needs vLLM, which lives in its own environment (``bash tools/vllm_env.sh``):
    /work/vllm-env/bin/python -m pytest tests/integration/test_generate_vllm.py
"""

from __future__ import annotations

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas.cli import CONF_DIR
from eas.experiments import generate as generate_job
from eas.experiments.base import prepare

pytestmark = pytest.mark.integration


def _cfg(engine: str):
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[
            "experiment=generate", "progress=false", "layer=[14]", "strength=[8.0]", "prompts.limit=6",
            "experiment.max_new_tokens=24", "~experiment.scorers", "+experiment.scorers={length: {}}",
            "experiment.success.column=length_tokens", "experiment.success.threshold=5",
            f"experiment.engine={engine}"])
    prepare(cfg)
    return cfg


def test_engine_vllm_writes_the_built_in_engines_texts(tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed here: it lives in its own environment "
                                       "(bash tools/vllm_env.sh)")
    ours = generate_job.run(_cfg("eas"), tmp_path / "eas")
    theirs = generate_job.run(_cfg("vllm"), tmp_path / "vllm")
    assert "error" not in ours and "error" not in theirs
    a, b = (pd.read_parquet(tmp_path / d / "generations.parquet").sort_values(["cell", "prompt_id"])
            for d in ("eas", "vllm"))
    assert list(a.cell) == list(b.cell) and len(a) == 12
    assert list(a.text) == list(b.text)
    steered, plain = (b[b.cell == c].text.tolist() for c in ("L14_s8", "unsteered"))
    assert sum(s != p for s, p in zip(steered, plain)) >= 4  # steering took effect on vLLM
