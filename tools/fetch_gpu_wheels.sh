#!/usr/bin/env bash
# Downloads, where PyPI is reachable, the wheels `tools/gpu_check.sh` installs on a GPU machine
# that has no package index. That machine's python3 (CPython 3.12, x86_64) already has torch
# 2.11, pytorch-lightning, torchmetrics, torchaudio, numpy, scipy, pandas, matplotlib, pyyaml,
# requests, huggingface_hub, sentencepiece, tabulate and portalocker; PACKAGES below is the rest
# of what `python -m tools.gpu_check` imports (traced on the pinned environment), at the
# versions requirements.lock pins. No torch: the machine's own build is the one to test.
# fvcore and iopath publish only source archives; their pure-Python wheels are built here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=.whl/gpu
LIMIT_MIB=64  # the GPU machine's transfer limit for the working tree and the wheels together
PACKAGES=(
  asteroid asteroid-filterbanks torch-optimizer pytorch-ranger  # baselines, asteroid.engine
  HyperPyYAML ruamel.yaml                                       # speechbrain
  soundfile cffi                                                # experiments.training
  fvcore iopath termcolor ptflops                               # experiments.complexity, benchmark
)
SPEECHBRAIN=speechbrain==1.1.2  # installed by tools/setup_env.sh, not in requirements.lock
SOURCE_ONLY=(fvcore iopath)

pin() {
  grep -i -m1 "^$1==" requirements.lock \
    || { echo "fetch_gpu_wheels: $1 is not pinned in requirements.lock" >&2; exit 1; }
}
binary=("$SPEECHBRAIN") built=()
for name in "${PACKAGES[@]}"; do
  if [[ " ${SOURCE_ONLY[*]} " == *" $name "* ]]; then built+=("$(pin "$name")"); else binary+=("$(pin "$name")"); fi
done

tmp="$DEST.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$tmp" "${binary[@]}"
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$tmp" "${built[@]}"
rm -rf "$DEST"
mv "$tmp" "$DEST"

wheels=$(du -sb "$DEST" | cut -f1)
tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
total_mib=$(( (wheels + tree) / 1048576 ))
ls -1 "$DEST"
echo "fetch_gpu_wheels: $(ls "$DEST" | wc -l) wheels, $((wheels / 1024)) KiB in $DEST;" \
     "with the tracked tree ($((tree / 1024)) KiB): ${total_mib} MiB of ${LIMIT_MIB}"
if (( total_mib >= LIMIT_MIB )); then
  echo "fetch_gpu_wheels: over the ${LIMIT_MIB} MiB the GPU machine accepts" >&2
  exit 1
fi
