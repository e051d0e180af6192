#!/usr/bin/env bash
# `make gpu-check`: the GPU check (python -m tools.gpu_check; arguments are passed on) under
# $PYTHON, default python3. When that interpreter lacks the project's libraries (a GPU machine
# with torch but no package index), the wheels tools/fetch_gpu_wheels.sh put in .whl/gpu are
# installed first, without an index or dependency resolution, into .whl/site, which goes on
# PYTHONPATH (Lightning's DDP ranks inherit it). Not a venv: on such machines python3 is often
# itself a venv, and a venv made from it with --system-site-packages would not see its torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=.whl/gpu
SITE=.whl/site
NEEDS="import asteroid, speechbrain, soundfile, fvcore, ptflops, pytorch_lightning"
if ! "$PY" -c "$NEEDS" 2>/dev/null; then
  if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "gpu_check.sh: $PY lacks the project's libraries and $WHEELS has no wheels;" \
         "run tools/fetch_gpu_wheels.sh where PyPI is reachable and carry .whl/ along" >&2
    exit 2
  fi
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
    --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "$NEEDS"
fi
exec "$PY" -m tools.gpu_check "$@"
