#!/usr/bin/env bash
# One entry point for a fresh machine. Idempotent: re-running skips what is done.
#   ./dev.sh launch   set up, then open napari with the plugin docked and a sample image
#   ./dev.sh test     set up, then run the whole test suite (GUI tests under Xvfb, with PyQt5 then PyQt6)
#   ./dev.sh setup    set up only
set -euo pipefail
cd "$(dirname "$0")"
VENV=${SEGTOOL_VENV:-.venv}
PYTHON=${SEGTOOL_PYTHON:-python3}   # e.g. SEGTOOL_PYTHON=python3.12 SEGTOOL_VENV=.venv312 ./dev.sh test
PY="$VENV/bin/python"
STAMP="$VENV/.segtool-setup"

system_packages() {
  # Xvfb + the xcb libraries PyQt5 and PyQt6 need, for GUI tests and headless screenshots (Debian/Ubuntu).
  if command -v Xvfb >/dev/null 2>&1 && command -v strace >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q libxcb-icccm \
     && ldconfig -p 2>/dev/null | grep -q libxcb-cursor; then return; fi
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "==> installing Xvfb, Qt's xcb libraries and strace (crash-safety tests) (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xauth libxcb-icccm4 libxcb-keysyms1 \
      libxcb-xinerama0 libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxkbcommon-x11-0 \
      libxcb-cursor0 libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 strace >/dev/null
  else
    echo "==> note: install Xvfb and libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 for headless GUI tests"
  fi
}

python_packages() {
  local want
  want=$(cat pyproject.toml dev.sh | sha256sum | cut -c1-16)
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$PY" -c "import napari_segtool, torch, napari" 2>/dev/null; then
    return
  fi
  [ -x "$PY" ] || { echo "==> creating $VENV"; "$PYTHON" -m venv "$VENV"; }
  "$PY" -m pip install -q --upgrade pip
  if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    echo "==> installing torch + torchvision (a few minutes)"
    "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
  fi
  echo "==> installing napari-segtool and its dependencies"
  "$PY" -m pip install -q -e ".[pyqt5,pyqt6,test,bench,export]"
  # bioimageio.core 0.11 pins bioimageio.spec 0.5.12.0, which cannot serialise with current pydantic (docs/export.md)
  "$PY" -m pip install -q --no-deps "bioimageio.spec==0.5.14.3"
  # triton (GPU kernels only) loads an LLVM that segfaults next to Mesa's OpenGL in napari.
  "$PY" -m pip uninstall -y -q triton 2>/dev/null || true
  echo "$want" > "$STAMP"
}

setup() { system_packages; python_packages; }

case "${1:-}" in
  setup) setup ;;
  launch)
    setup
    shift
    if [ -z "${DISPLAY:-}" ] && [ "$(uname)" = Linux ]; then
      echo "==> no display: running napari under Xvfb and saving a screenshot to out/launch.png"
      mkdir -p out
      exec xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" scripts/launch_napari.py --screenshot out/launch.png "$@"
    fi
    exec "$PY" scripts/launch_napari.py "$@"
    ;;
  test)
    setup
    shift
    export QT_QPA_PLATFORM=xcb
    if [ $# -gt 0 ]; then exec "$PY" -m pytest -q "$@"; fi
    # the whole suite with PyQt5 (the card's binding), then the GUI tests again with PyQt6 (napari's default).
    # pytest-qt picks its binding from PYTEST_QT_API only (else PyQt6 first) and qtpy/napari from QT_API: set both
    PYTEST_QT_API=pyqt5 QT_API=pyqt5 "$PY" -m pytest -q
    echo "==> GUI tests with PyQt6"
    PYTEST_QT_API=pyqt6 QT_API=pyqt6 exec "$PY" -m pytest -q tests/plugin
    ;;
  *) echo "usage: $0 launch|test|setup" >&2; exit 2 ;;
esac
