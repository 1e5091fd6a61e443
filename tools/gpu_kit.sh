#!/usr/bin/env bash
# Run fewshot on a GPU machine that has PyTorch but no network and none of this project's other packages
# (a lent accelerator, a cluster node). Two steps:
#
#   here, with the project's venv:  tools/gpu_kit.sh prepare DATASET [PARTS]
#       -> .gpu-kit/whl/*.whl (the packages such a machine lacks, for CPython 3.12 on x86-64 Linux)
#          .gpu-kit/DATASET.npz, or DATASET.1-of-N.npz ... with PARTS=N (`fewshot pack`)
#   there, in a copy of the repo with .gpu-kit/:  tools/gpu_kit.sh run FEWSHOT-ARGS...
#       -> installs the wheels into /tmp/site (the image's own packages stay as they are), then `python3 -m fewshot ARGS`
#
# Example (CHAOS MRI, 26 MiB packed): prepare chaos-mr, carry .gpu-kit/whl and .gpu-kit/chaos-mr.npz, then there
#   tools/gpu_kit.sh run cv --recipe mri-gpu --data .gpu-kit/chaos-mr.npz --folds 3,4 --jobs 2 --out /tmp/cv
# Settings: GPU_KIT_DIR (default .gpu-kit), GPU_KIT_PYTHON (the remote python's version, default 3.12),
# GPU_KIT_SITE (where run installs the wheels, default /tmp/site), PYTHON (the interpreter: .venv/bin/python for
# prepare, python3 for run).
# docs/development.md "A GPU machine without network" has the measured sizes and the device command.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KIT="${GPU_KIT_DIR:-$ROOT/.gpu-kit}"
# What the GPU image lacks: albumentations with its own needs, and the scan readers (typing-extensions because this
# pydantic needs a newer one than the image may have). Versions: the ones constraints.txt tests where it pins them.
WHEELS=(albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
        typing-inspection==0.4.5 typing-extensions==4.16.0 simsimd==6.5.16 stringzilla==5.3.2 nibabel==5.4.2
        pydicom==3.0.2)
# What the project and those wheels take from the image as it is (KINDS.md of the lent device lists it).
IMAGE=(torch torchvision numpy scipy scikit-image opencv-python-headless pytorch-lightning pillow pyyaml tqdm packaging)

usage() { echo "usage: $0 prepare DATASET [PARTS] | run FEWSHOT-ARGS..." >&2; exit 2; }

case "${1:-}" in
  prepare)
    [ $# -ge 2 ] || usage
    dataset=$2 parts=${3:-1}
    PY=${PYTHON:-"$ROOT/.venv/bin/python"}
    mkdir -p "$KIT/whl"
    rm -f "$KIT"/whl/*.whl  # one version of each: an old pin left beside a new one would stop the install there
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_KIT_PYTHON:-3.12}" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
      -d "$KIT/whl" "${WHEELS[@]}"
    "$PY" -m fewshot pack --dataset "$dataset" --out "$KIT/$dataset.npz" --parts "$parts" --overwrite
    du -sh "$KIT/whl" "$KIT"/*.npz
    ;;
  run)
    shift
    [ $# -ge 1 ] || usage
    ls "$KIT"/whl/*.whl >/dev/null 2>&1 || { echo "no wheels in $KIT/whl: run '$0 prepare DATASET' first" >&2; exit 2; }
    PY=${PYTHON:-python3}
    site=${GPU_KIT_SITE:-/tmp/site}
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$KIT"/whl/*.whl
    export PYTHONPATH="$site:$ROOT${PYTHONPATH:+:$PYTHONPATH}" NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
    exec "$PY" -m fewshot "$@"
    ;;
  *) usage ;;
esac
