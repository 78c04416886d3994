# Sourced by the GPU scripts in bench/: the output folder, the wheels the GPU image lacks (from .whl/, when
# carried), this tree's src/ on the path, an offline hub and a model cache in /tmp.
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=$PWD/src:/tmp/site
export VLMPPO_CACHE=${VLMPPO_CACHE:-/tmp/vlmppo-cache} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 SDL_VIDEODRIVER=dummy
export COLUMNS=200
