#!/usr/bin/env bash
# Create (or bring up to date) .venv/ in the checkout with everything nmr needs.
# Idempotent: re-running only installs what changed in requirements*.txt.
# With a ROS 2 installation sourced (ROS_DISTRO set and rclpy importable), the venv
# sees that installation's rclpy (--system-site-packages) instead of the PyPI wheels.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
venv="$root/.venv"

use_system_ros=0
if [ -n "${ROS_DISTRO:-}" ] && "$python" -c 'import rclpy' 2>/dev/null; then
  use_system_ros=1
fi

if [ ! -x "$venv/bin/python" ]; then
  if [ "$use_system_ros" = 1 ]; then
    echo "setup: ROS 2 $ROS_DISTRO is sourced: the venv uses its rclpy"
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
fi

stamp="$venv/.nmr-requirements.sha256"
want="$(cat requirements.txt requirements-ros.txt requirements-nodeps.txt setup.py | sha256sum | cut -d' ' -f1)-$use_system_ros"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: .venv is up to date"
else
  pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  torch_args=()
  if [ -n "${NMR_TORCH_INDEX:-}" ]; then torch_args=(--extra-index-url "$NMR_TORCH_INDEX"); fi
  reqs=(-r requirements.txt)
  if [ "$use_system_ros" = 0 ]; then reqs+=(-r requirements-ros.txt); fi
  "${pip[@]}" "${torch_args[@]}" "${reqs[@]}"
  "${pip[@]}" --no-deps -r requirements-nodeps.txt
  "${pip[@]}" --no-deps -e .
  echo "$want" > "$stamp"
  echo "setup: .venv ready ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
fi
