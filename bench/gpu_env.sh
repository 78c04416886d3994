# Sourced by the GPU scripts in bench/: the output folder, the wheels the GPU image lacks (from .whl/ and, for
# bitsandbytes, .whl-bnb/, when carried), this tree's src/ on the path, an offline hub and a model cache in /tmp.
# The wheels go to /tmp/site once per machine (a warm machine keeps it): pip --no-index, nothing is fetched.
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
for folder in .whl .whl-bnb; do
  if ls "$folder"/*.whl >/dev/null 2>&1 && [ ! -e "/tmp/site/.from-$folder" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$folder"/*.whl && touch "/tmp/site/.from-$folder"
  fi
done
export PYTHONPATH=$PWD/src:/tmp/site
export VLMPPO_CACHE=${VLMPPO_CACHE:-/tmp/vlmppo-cache} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 SDL_VIDEODRIVER=dummy
export COLUMNS=200
