"""Model-loading reliability: the fingerprint, device checks, the converted checkpoint, the API judge's HTTP."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from eas import cli, judges, models
from eas.config import ConfigError, ModelConfig

CONF_MODEL = Path(__file__).resolve().parents[2] / "conf" / "model"

BASE = models.ModelIdentity(
    source="random", id="", revision="", dtype="float32", device="cpu", attn_implementation="sdpa",
    quantization="none", compile=False, trust_remote_code=False, architecture="llama",
    random_config={"hidden_size": 64}, seed=0,
)
PERTURBED = {
    "source": "hub", "id": "org/model", "revision": "abc123", "dtype": "bfloat16", "device": "cuda:0",
    "attn_implementation": "eager", "quantization": "4bit", "compile": True, "trust_remote_code": True,
    "architecture": "gpt2", "random_config": {"hidden_size": 128}, "seed": 1, "adapter": "sha256:0123456789abcdef",
}


def test_every_identity_field_is_perturbed_below():
    assert set(PERTURBED) == {f.name for f in dataclasses.fields(models.ModelIdentity)}


@pytest.mark.parametrize("field", sorted(PERTURBED))
def test_fingerprint_changes_with_each_load_input(field):
    changed = dataclasses.replace(BASE, **{field: PERTURBED[field]})
    assert models.model_fingerprint(changed) != models.model_fingerprint(BASE)


def test_fingerprint_ignores_the_device_index():
    fps = {models.model_fingerprint(dataclasses.replace(BASE, device=d)) for d in ("cuda", "cuda:0", "cuda:1")}
    assert len(fps) == 1


def tiny_cfg(**fields):
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(CONF_MODEL / "tiny_random.yaml"))
    for k, v in fields.items():
        cfg[k] = v
    return cfg


def test_load_fingerprint_tracks_dtype_and_attention():
    base = models.load(tiny_cfg())
    bf16 = models.load(tiny_cfg(dtype="bfloat16"))
    eager = models.load(tiny_cfg(attn_implementation="eager"))
    assert eager.model.config._attn_implementation == "eager"  # the configured kernel is used
    assert len({base.fingerprint, bf16.fingerprint, eager.fingerprint}) == 3
    assert models.load(tiny_cfg()).fingerprint == base.fingerprint


@pytest.mark.parametrize("device,gpus,match", [
    ("cuda", 0, r"model\.device=cuda: torch sees no CUDA GPU"),
    ("cuda:3", 2, r"model\.device=cuda:3: this machine has 2 CUDA GPU\(s\), cuda:0\.\.cuda:1"),
    ("bogus", 0, r"model\.device='bogus' is not a device; use auto, cpu, cuda, cuda:N or mps"),
    ("meta", 0, r"model\.device='meta' is not a device"),
])
def test_bad_device_fails_before_weights_load(monkeypatch, device, gpus, match):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)

    def no_weights(*a, **k):
        raise AssertionError("weights loaded before the device was checked")

    for loader in ("_load_embedded", "random_model", "_load_pretrained"):
        monkeypatch.setattr(models, loader, no_weights)
    for source in ("embedded", "random"):
        cfg = tiny_cfg(device=device, source=source, id="smollm2_135m")
        with pytest.raises(models.ModelError, match=match) as e:
            models.load(cfg)
        assert "\n" not in str(e.value)


def test_converted_checkpoint_reads_back_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    tiny = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 400, "tie_word_embeddings": True}
    model = models.random_model("llama", tiny, seed=3)
    model.config.quantization_config = {"quant_method": "gguf"}  # what a GGUF load leaves in the config
    folder = tmp_path / "ckpt"
    models._save_converted(model, models.tiny_tokenizer(), folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.embed_tokens.weight" in names
    plain = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model(ids).logits)


# --- the API judge's endpoint -------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    replies: ClassVar[list[int]] = []  # status codes to answer, in order (then 200)
    seen: ClassVar[list[str]] = []

    def _answer(self):
        self.seen.append(f"{self.command} {self.path}")
        code = self.replies.pop(0) if self.replies else 200
        body = json.dumps({"choices": [{"message": {"content": "Yes"}}]} if code == 200 else {"error": "busy"})
        if self.command == "POST":
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = _answer

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    _Handler.replies, _Handler.seen = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probe_endpoint_accepts_any_http_answer(server):
    _Handler.replies = [404]
    judges.probe_endpoint(server, timeout=2)
    assert _Handler.seen == ["GET /v1/models"]


def test_probe_endpoint_refused_is_a_user_error():
    base = f"http://127.0.0.1:{_closed_port()}/v1"
    with pytest.raises(ConfigError, match=r"experiment\.judge\.api_base=.*: no answer from .*/v1/models") as e:
        judges.probe_endpoint(base, timeout=1)
    assert "\n" not in str(e.value) and isinstance(e.value, cli._user_errors())


def test_probe_endpoint_silent_server_times_out():
    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(ConfigError, match=r"within 0\.3 s \(ReadTimeout\)"):
            judges.probe_endpoint(f"http://127.0.0.1:{s.getsockname()[1]}/v1", timeout=0.3)


def test_probe_endpoint_rejects_a_url_without_scheme():
    with pytest.raises(ConfigError, match=r"is not an http\(s\) URL"):
        judges.probe_endpoint("localhost:8000/v1")


def test_api_judge_retries_transient_errors(server, tmp_path, monkeypatch):
    monkeypatch.setenv("EAS_TEST_KEY", "k")
    _Handler.replies = [503]
    j = judges.ApiJudge("m", server, "EAS_TEST_KEY", tmp_path, "{question} {response}", timeout=5)
    assert j(["q"], ["r"]).tolist() == [0.0]  # "Yes" as text, after one retried 503
    assert _Handler.seen == ["POST /v1/chat/completions"] * 2


def test_api_judge_reports_a_client_error_without_retrying(server, tmp_path, monkeypatch):
    monkeypatch.setenv("EAS_TEST_KEY", "k")
    _Handler.replies = [400]
    j = judges.ApiJudge("m", server, "EAS_TEST_KEY", tmp_path, "{question} {response}", timeout=5)
    with pytest.raises(RuntimeError, match=r"HTTP 400: .*busy"):
        j(["q"], ["r"])
    assert len(_Handler.seen) == 1


def test_unreachable_judge_endpoint_fails_before_the_model_loads(tmp_path):
    import subprocess
    import sys

    base = f"http://127.0.0.1:{_closed_port()}/v1"
    env = {**__import__("os").environ, "EAS_TEST_KEY": "k", "EAS_STORE": str(tmp_path / "st")}
    out = subprocess.run([sys.executable, "-m", "eas.cli", "experiment=cmaes", "model=tiny_random", "method=mean_diff",
                          "experiment.fitness=api_judge", f"experiment.judge.api_base={base}",
                          "experiment.judge.api_key_env=EAS_TEST_KEY", "progress=false"],
                         check=False, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("eas: error: experiment.judge.api_base=") and "no answer from" in last
    assert "loaded in" not in out.stderr  # the model was never loaded
