#!/usr/bin/env bash
# The benchmark command: installs Synapse (pinned) into bench/work/synapse-venv, builds Myelin in
# release, and runs both side by side (bench/run.py). BENCH_QUICK=1 runs smaller workloads.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/work
if [ ! -x bench/work/synapse-venv/bin/python ]; then
  python3 -m venv bench/work/synapse-venv
fi
bench/work/synapse-venv/bin/pip install --quiet --disable-pip-version-check "matrix-synapse==1.157.1" "aiohttp==3.14.5"
cargo build --release --locked -p myelin
bench/work/synapse-venv/bin/python bench/run.py
