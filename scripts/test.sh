#!/usr/bin/env bash
# The test command: lint, type-check every package, colcon build, colcon test, and fail on any failed test.
# `colcon test` exits 0 even when tests fail, so the verdict comes from `colcon test-result`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck disable=SC1091
source .venv/bin/activate
export PYTHONUNBUFFERED=1
# Tests start real DDS participants: keep them off any robot's domain on this machine.
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 100 ))}"
export ROS_LOCALHOST_ONLY=1
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST

echo "== ruff"
ruff check .
echo "== mypy"
mypy
echo "== colcon build"
colcon build --event-handlers console_cohesion- 2>&1 | tail -n 3
echo "== colcon test"
rm -f build/nmr/pytest.xml
pytest_args=()
if [ "$#" -gt 0 ]; then pytest_args=(--pytest-args "$@"); fi
colcon test --event-handlers console_direct+ "${pytest_args[@]}" 2>&1 || true
[ -f build/nmr/pytest.xml ] || { echo "colcon test produced no results (build/nmr/pytest.xml)"; exit 1; }
echo "== colcon test-result"
colcon test-result --verbose
