#!/usr/bin/env bash
# Creates .venv with the pinned environment if it is missing or stale; safe to run again.
#
# speechbrain 1.1.2 imports torchaudio at import time, and no torchaudio release matches
# torch 2.13. torchaudio 2.11.0 installs (with --no-deps, so that it cannot pull another torch),
# but its compiled extension fails to load against this torch. speechbrain only uses its
# pure-Python part here (audio I/O goes through soundfile), and torchaudio skips extension
# libraries that are absent, so when the import fails we move the extension libraries aside
# and say so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.installed-lock
if [ -f "$STAMP" ] && cmp -s requirements.lock "$STAMP"; then
  exit 0
fi
# pyproject.toml's requires-python (the code uses datetime.UTC, new in 3.11), checked on the
# interpreter the environment is (or will be) made of
[ -x "$VENV/bin/python" ] && base="$VENV/bin/python" || base=$PY
if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  found=$("$base" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo "not runnable")
  echo "setup: Python >= 3.11 is required, but $base ($(command -v "$base" || echo "not found"))" \
       "is $found; set PYTHON to a Python 3.11+ interpreter (PYTHON=python3.12 make ...)," \
       "after rm -rf $VENV if $VENV was made with the old one" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
echo "setup: installing requirements.lock into $VENV (about 2 minutes on a fresh machine)"
"$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.lock
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps torchaudio==2.11.0 speechbrain==1.1.2
if ! "$VENV/bin/python" -c "import torchaudio" 2>/dev/null; then
  libdir=$("$VENV/bin/python" -c "import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec('torchaudio').origin), 'lib'))")
  mkdir -p "$VENV/torchaudio-disabled-ext"
  for so in "$libdir"/*.so; do
    [ -e "$so" ] || continue
    mv "$so" "$VENV/torchaudio-disabled-ext/"
    echo "setup: torchaudio's compiled extension does not load against torch 2.13; moved $(basename "$so") to $VENV/torchaudio-disabled-ext/"
  done
fi
"$VENV/bin/python" -c "import torchaudio, speechbrain, asteroid; print('setup: torch', __import__('torch').__version__, '| torchaudio', torchaudio.__version__, '| speechbrain', speechbrain.__version__, '| asteroid', asteroid.__version__)"
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e .
cp requirements.lock "$STAMP"
