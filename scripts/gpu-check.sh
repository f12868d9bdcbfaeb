#!/usr/bin/env bash
# One GPU check, start to end, on a machine with an NVIDIA GPU and its driver (nothing else):
# set-up with the cuda extra (the NVIDIA runtime wheels), the models' hashes, the inference
# benchmark (CPU and CUDA side by side), and a short end-to-end run that fails unless the models
# really run on CUDA (SCANSTREAM_REQUIRE_GPU=true). Prints one JSON line; exits non-zero on the
# first failure. Budget: about 8 minutes (set-up ~3, bench ~1, demo ~2).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$(mktemp -d)}"
step() { echo "== $*" >&2; }

step "set-up with the cuda extra"
make setup CUDA=1 >"$out/setup.log" 2>&1
step "models verify"
.venv/bin/scanstream models verify >"$out/verify.log" 2>&1
step "bench --stage inference"
timeout 240 .venv/bin/scanstream bench --stage inference --results "$out/bench" >"$out/bench.json" 2>"$out/bench.log"
step "demo with SCANSTREAM_REQUIRE_GPU=true"
SCANSTREAM_REQUIRE_GPU=true timeout 240 .venv/bin/scanstream demo --timeout 180 >"$out/demo.log" 2>&1
.venv/bin/python - "$out" <<'PY'
import json, pathlib, sys
import onnxruntime as ort
from worker.inference import ModelSet
from worker.inference.cuda import cuda_unusable_reason
out = pathlib.Path(sys.argv[1])
models = ModelSet.load(require_gpu=True)
bench = json.loads((out / "bench.json").read_text().strip().splitlines()[-1])
print(json.dumps({
    "ok": True,
    "onnxruntime": ort.__version__,
    "provider": models.provider,
    "provider_note": models.provider_note,
    "cuda_unusable_reason": cuda_unusable_reason(),
    "bench_inference": bench,
    "demo_tail": (out / "demo.log").read_text(errors="replace")[-400:],
}))
PY
