#!/usr/bin/env bash
# One install step for fcos_plugin: builds the project-local virtual environment `.venv/`
# with the OpenMMLab stack that works on torch 2.14 (see README "Installation").
#
#   bash tools/install.sh            # idempotent; a second run takes seconds
#   PYTHON=/path/to/python3.11 bash tools/install.sh   # another interpreter (>= 3.11, setup.py's
#                                                      # python_requires; 3.11 is what is measured)
#
# Where things go:
#   .venv/                                  the environment (inside the checkout, git-ignored)
#   $FCOS_PLUGIN_CACHE/wheels/<torch-tag>/  mmcv wheels we compiled, keyed by torch version and
#                                           Python ABI, so a wheel built against another torch is
#                                           never picked up (default ~/.cache/fcos_plugin)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
VENV="${FCOS_PLUGIN_VENV:-$ROOT/.venv}"
CACHE="${FCOS_PLUGIN_CACHE:-$HOME/.cache/fcos_plugin}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0

log() { printf '[install] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    log "error: '$PYTHON' is not a Python >= 3.11 (setup.py's python_requires); set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  log "creating virtual environment $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# Fast path: everything already installed at the pinned versions -> only (re)link the package.
if "$PY" - "$ROOT/requirements/pinned.txt" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
from packaging.requirements import Requirement
ok = True
for line in open(sys.argv[1]):
    line = line.split('#')[0].strip()
    if not line:
        continue
    req = Requirement(line)
    try:
        if not req.specifier.contains(version(req.name), prereleases=True):
            ok = False
    except PackageNotFoundError:
        ok = False
for name, want in (('torch', '2.14.1'), ('mmcv', '2.1.0'), ('mmdeploy', '1.3.1')):
    try:
        ok &= version(name).split('+')[0] == want
    except PackageNotFoundError:
        ok = False
try:
    import pkg_resources  # noqa: F401  mmengine's Config needs it (setuptools < 81)
    import mmcv.ops  # noqa: F401  compiled ops must load
    import fcos_plugin  # noqa: F401
except Exception:
    ok = False
sys.exit(0 if ok else 1)
PYEOF
then
  log "environment $VENV is complete (torch $TORCH_VERSION, mmcv $MMCV_VERSION with ops); nothing to do"
  exit 0
fi

log "installing build tools and torch $TORCH_VERSION / torchvision $TORCHVISION_VERSION"
# setuptools: torch 2.14.1 needs >=77.0.3, and >=81 has no `pkg_resources`, which mmengine's Config imports
# for `mmdet::` base configs and the mmcv build needs. Every pip call below carries the same pin, or pip
# upgrades it to the newest while resolving torch (what broke CI once: the venv's 65.5 satisfied `<81`).
SETUPTOOLS='setuptools>=77.0.3,<81'
"${PIP[@]}" install -q "$SETUPTOOLS" wheel packaging ninja
"${PIP[@]}" install -q "$SETUPTOOLS" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

# ---- mmcv with compiled ops, built once per torch version ----------------------------------
TORCH_TAG=$("$PY" -c 'import sys, torch; v = torch.__version__.replace("+", "_"); print(f"torch-{v}-cp{sys.version_info[0]}{sys.version_info[1]}")')
WHEELS="$CACHE/wheels/$TORCH_TAG"
mkdir -p "$WHEELS"
have_mmcv() { "$PY" -c 'import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != "'"$MMCV_VERSION"'")' 2>/dev/null; }
if ! have_mmcv; then
  WHL=$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$WHL" ]; then
    log "building mmcv $MMCV_VERSION with compiled ops against $TORCH_TAG (~19 min on 2 cores, once)"
    BUILD_START=$SECONDS
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT
    "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$BUILD"
    tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
    # torch >= 2.10 headers require C++20; mmcv 2.1.0 hard-codes -std=c++14/17 (docs/en/faq.md, "Building mmcv fails").
    sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$BUILD/mmcv-$MMCV_VERSION/setup.py"
    (cd "$BUILD/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "${PIP[@]}" wheel -q --no-build-isolation --no-deps --no-cache-dir -w "$BUILD/dist" .)
    # write-then-rename so an interrupted build never leaves a half wheel in the store
    built=$(ls "$BUILD"/dist/mmcv-*.whl)
    cp "$built" "$WHEELS/.partial-$(basename "$built")"
    mv "$WHEELS/.partial-$(basename "$built")" "$WHEELS/$(basename "$built")"
    WHL="$WHEELS/$(basename "$built")"
    log "mmcv built in $(( (SECONDS - BUILD_START) / 60 )) min $(( (SECONDS - BUILD_START) % 60 )) s: $WHL"
  else
    log "reusing $WHL"
  fi
  "${PIP[@]}" install -q --no-deps --no-cache-dir --force-reinstall "$WHL"
fi

log "installing pinned requirements"
"${PIP[@]}" install -q -r "$ROOT/requirements/pinned.txt"
# mmdeploy's metadata pins protobuf<=3.20.2 and grpcio, neither needed at run time.
"${PIP[@]}" install -q --no-deps "mmdeploy==1.3.1"
"${PIP[@]}" install -q --no-deps -e "$ROOT"
"$PY" -c 'import pkg_resources, mmcv.ops, mmdet, mmdeploy, fcos_plugin; print("[install] ok: mmcv", mmcv.__version__, "mmdet", mmdet.__version__, "mmdeploy", mmdeploy.__version__)'
log "install took $(( SECONDS / 60 )) min $(( SECONDS % 60 )) s"
