#!/usr/bin/env bash
# The GPU checks, in one go, on the GPU machine lent through the device tool: the CUDA tests
# and the GPU benchmarks. Build the bundle here first (scripts/device-bundle.sh), then call
# the tool's `run` with command `bash scripts/device-run.sh`, carry [".device"], timeout_s 600.
#
# There, from the repository root (the repo is not pip-installed: PYTHONPATH), it
#   - installs .device/wheels into /tmp/site (no network there) and points
#     DRIFTLINE_MINILM_DIR at .device/minilm (the float16 MiniLM copy);
#   - prints nvidia-smi and the versions (env.log), checks the imports;
#   - runs, most important first, each with a timeout and its output in $OUT/<name>.log:
#       pytest-gpu       the `gpu`-marked tests (tests/embeddings/test_gpu.py, tests/detectors)
#       bench-embeddings benchmarks/bench_embeddings.py --device cuda --n 100000
#       bench-mmd        benchmarks/bench_mmd.py --sizes 2000,5000,10000 (CUDA column) and
#                        the 50,000-per-side blocked row in torch on CUDA (no out-of-memory)
#       bench-ks-cuda    benchmarks/bench_detectors.py --device cuda (batched KS on CUDA)
#   - goes on after a failure, writes summary.txt and exits 1 if any step failed.
# The steps share a wall-clock budget (DEVICE_RUN_BUDGET_S, default 530 s: the tool stops a
# command at 600 s); a step gets at most what is left of it.
#
# Environment (all optional): OUT (set by the device tool; default ./device-out),
# DEVICE_BUNDLE (default .device), DEVICE_RUN_BUDGET_S, and each step's arguments:
# PYTEST_ARGS, EMB_ARGS, MMD_ARGS, KS_ARGS.
set -uo pipefail   # no -e: every step runs; exit codes are collected

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT="$PWD"
BUNDLE="${DEVICE_BUNDLE:-.device}"
OUT="${OUT:-$ROOT/device-out}"
BUDGET="${DEVICE_RUN_BUDGET_S:-530}"
RESERVE=20          # seconds kept back: timeout's kill grace, the summary
MIN_STEP=30         # a step is not started with less than this left
SITE=/tmp/site
START=$SECONDS
mkdir -p "$OUT"

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export DRIFTLINE_MINILM_DIR="$ROOT/$BUNDLE/minilm"
export PYTHONPATH="$SITE:$ROOT"

PYTEST_ARGS="${PYTEST_ARGS:--p no:cacheprovider -m gpu -q tests/embeddings/test_gpu.py tests/detectors}"
# --repeat 1: at 100,000 sentences (25,000 images) one timed run after the warm-up lasts
# seconds; the default 3 would not fit the budget beside the other steps.
EMB_ARGS="${EMB_ARGS:---device cuda --n 100000 --repeat 1}"
MMD_ARGS="${MMD_ARGS:---sizes 2000,5000,10000 --big 50000 --big-backend torch --big-device cuda}"
KS_ARGS="${KS_ARGS:---device cuda}"

names=() codes=() notes=()
record() { names+=("$1"); codes+=("$2"); notes+=("$3"); }

# run_step NAME TIMEOUT_S CMD...: CMD under `timeout`, output shown and kept in $OUT/NAME.log
run_step() {
  local name="$1" limit="$2"
  shift 2
  local log="$OUT/$name.log" left=$((BUDGET - RESERVE - (SECONDS - START)))
  if ((left < MIN_STEP)); then
    echo "=== $name: not started, ${left}s left of the ${BUDGET}s budget" | tee "$log"
    record "$name" 125 "not started: out of time"
    return
  fi
  ((limit > left)) && limit=$left
  echo "=== $name (timeout ${limit}s): $*" | tee "$log"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  local note="$((SECONDS - t0))s"
  ((rc == 124 || rc == 137)) && note="$note, TIMED OUT at ${limit}s"
  echo "=== $name: exit $rc ($note)" | tee -a "$log"
  record "$name" "$rc" "$note"
}

# --- set-up -------------------------------------------------------------------------------
{
  echo "=== set-up: $(date -u +%FT%TZ), $(uname -r), $(nproc) CPUs"
  free -g | sed -n 2p
  nvidia-smi || echo "nvidia-smi failed"
  [[ -d "$BUNDLE/wheels" && -d "$BUNDLE/minilm" ]] ||
    echo "ERROR: $BUNDLE/wheels or $BUNDLE/minilm missing: run scripts/device-bundle.sh here and name $BUNDLE in carry"
} 2>&1 | tee "$OUT/env.log"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" "$BUNDLE"/wheels/*.whl 2>&1 | grep -v "Running pip as the 'root' user" |
  tee -a "$OUT/env.log"
record wheels "${PIPESTATUS[0]}" "pip install --target $SITE"

python3 - 2>&1 <<'EOF' | tee -a "$OUT/env.log"
import importlib.metadata as md
import platform
import sys

print("python", platform.python_version(), sys.executable)
names = ["torch", "transformers", "sentence-transformers", "tokenizers", "safetensors", "numpy",
         "scipy", "scikit-learn", "pytest", "pytest-timeout", "hypothesis", "pydantic",
         "pydantic-core", "sqlalchemy", "kafka-python", "crc32c", "psycopg", "typing-extensions"]
versions = []
for name in names:
    try:
        versions.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        versions.append(f"{name} MISSING")
print(", ".join(versions))
import torch

print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF

python3 -c "
import crc32c, detectors, embeddings, kafka, monitor, psycopg, pydantic, sqlalchemy, torch
import detectors.ks_torch, detectors.mmd, monitor.kafka_io, monitor.settings, monitor.storage
assert torch.cuda.is_available(), 'torch sees no CUDA device'
print('imports ok; CUDA ok')" 2>&1 | tee -a "$OUT/env.log"
record imports "${PIPESTATUS[0]}" "repo packages and bundled wheels import; CUDA visible"

# --- steps, most important first ----------------------------------------------------------
# shellcheck disable=SC2086  # the *_ARGS are word-split on purpose
run_step pytest-gpu 240 python3 -m pytest $PYTEST_ARGS
# shellcheck disable=SC2086
run_step bench-embeddings 330 python3 benchmarks/bench_embeddings.py $EMB_ARGS
# shellcheck disable=SC2086
run_step bench-mmd 300 python3 benchmarks/bench_mmd.py $MMD_ARGS

# shellcheck disable=SC2086
run_step bench-ks-cuda 150 python3 benchmarks/bench_detectors.py $KS_ARGS

# --- summary ------------------------------------------------------------------------------
failed=0
for code in "${codes[@]}"; do ((code != 0)) && failed=$((failed + 1)); done
{
  echo "=== summary: $((SECONDS - START))s of the ${BUDGET}s budget; logs in $OUT"
  for i in "${!names[@]}"; do
    status=ok
    ((codes[i] != 0)) && status="FAILED (exit ${codes[i]})"
    printf '%-17s %-18s %s\n' "${names[i]}" "$status" "${notes[i]}"
  done
  ((failed == 0)) || echo "$failed step(s) failed"
} | tee "$OUT/summary.txt"
((failed == 0))
