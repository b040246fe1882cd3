#!/usr/bin/env bash
# Creates .venv for light_rcnn (used by `make setup`). Idempotent: a stamp file records the
# hash of constraints.txt + setup.py + this script; when unchanged, a re-run returns at once.
#
# Two paths (README "Set-up"):
#  * PYTHON names an interpreter that already imports detectron2 (e.g. a cluster build from
#    source): the venv sees its packages (--system-site-packages) and only what is missing
#    (fvcore, pycocotools, ...) is installed; torch and detectron2 are never replaced.
#  * otherwise: a Python 3.10 interpreter is found (python3.10 on PATH, else pyenv) and the pinned
#    set from constraints.txt is installed, detectron2 coming from PyPI's `sal-detectron2`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.light_rcnn_setup"
want=$(cat constraints.txt setup.py tools/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import light_rcnn" 2>/dev/null; then
  echo "setup: $VENV is up to date"; exit 0
fi

works() { [ -n "$1" ] && "$1" -c "import sys; assert sys.version_info[:2] >= (3, 8)" >/dev/null 2>&1; }
PY=${PYTHON:-}
if [ -n "$PY" ] && ! works "$PY"; then
  echo "setup: PYTHON=$PY does not run a Python >= 3.8 interpreter" >&2; exit 1
fi
if [ -z "$PY" ]; then
  if works python3.10; then PY=$(command -v python3.10)
  elif command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.10(\.|$)' | sort -V -r); do
      cand="$(pyenv prefix "$v")/bin/python3.10"
      if works "$cand"; then PY=$cand; break; fi
    done
  fi
fi
if [ -z "$PY" ]; then
  echo "setup: no Python 3.10 found. sal-detectron2 (detectron2 from PyPI) ships a CPython 3.10" \
       "wheel only. Install Python 3.10 (e.g. 'pyenv install 3.10'), or run" \
       "'make setup PYTHON=/path/to/python' with an interpreter that already has detectron2." >&2
  exit 1
fi

if "$PY" -c "import detectron2, torch" >/dev/null 2>&1; then
  echo "setup: $PY already has detectron2 $("$PY" -c 'import detectron2; print(detectron2.__version__)'); using it"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
  missing=$("$VENV/bin/python" - <<'PYEOF'
import importlib.util
mods = {"fvcore": "fvcore", "iopath": "iopath", "pycocotools": "pycocotools", "cv2": "opencv-python",
        "matplotlib": "matplotlib", "pytest": "pytest", "tqdm": "tqdm", "onnx": "onnx",
        "onnxruntime": "onnxruntime", "ml_dtypes": "ml-dtypes<0.6"}
print(" ".join(pkg for mod, pkg in mods.items() if importlib.util.find_spec(mod) is None))
PYEOF
)
  # ml-dtypes 0.6 needs numpy >= 2 (onnx imports it): keep it below 0.6 so numpy 1.x is not replaced.
  # shellcheck disable=SC2086
  [ -z "$missing" ] || "$VENV/bin/pip" install -q $missing
else
  case "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" in
    3.10) ;;
    *) echo "setup: $PY has no detectron2 and is not Python 3.10; sal-detectron2 needs 3.10" >&2; exit 1;;
  esac
  # The pinned torch is PyPI's CUDA build: the venv ends at ~5.9 GiB and the install needs more at
  # its peak, pip's unpacked wheels beside the venv (measured: free space fell by 6.7 GiB). Check
  # first, so a full disk is named here rather than as pip's OSError half-way through
  # (LIGHT_RCNN_SETUP_MIN_FREE_GIB=0 skips the check). A venv that already has torch (a re-run
  # after a pin change) is not checked: pip then adds little.
  need=${LIGHT_RCNN_SETUP_MIN_FREE_GIB:-8}
  "$VENV/bin/python" -c "import torch" >/dev/null 2>&1 && need=0
  for dir in "$(dirname "$VENV")" "${TMPDIR:-/tmp}"; do
    free=$({ df -Pk "$dir" 2>/dev/null || true; } | awk 'NR == 2 {print int($4 / 1048576)}')
    if [ -n "$free" ] && [ "$free" -lt "$need" ]; then
      echo "setup: only $free GiB free on the file system of '$dir'; installing torch, detectron2 and" \
           "the rest into $VENV needs about $need GiB (the venv ends at ~6 GiB; pip's unpacked wheels" \
           "come on top). Free space there (or point TMPDIR / VENV elsewhere), or set" \
           "LIGHT_RCNN_SETUP_MIN_FREE_GIB=0 to try anyway." >&2
      exit 1
    fi
  done
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  # One resolver call, so opencv/numpy/detectron2 pins are solved together (numpy < 2).
  "$VENV/bin/pip" install -q --disable-pip-version-check -c constraints.txt \
    torch torchvision sal-detectron2 fvcore iopath setuptools numpy opencv-python pycocotools matplotlib pytest \
    tqdm onnx onnxruntime ml-dtypes
fi
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import light_rcnn, detectron2, torch, onnx, onnxruntime; print('setup: light_rcnn ready; detectron2', detectron2.__version__, 'torch', torch.__version__)"
echo "$want" > "$STAMP"
