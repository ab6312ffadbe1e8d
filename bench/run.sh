#!/usr/bin/env bash
# The benchmark command: installs Synapse (pinned) into bench/work/synapse-venv and the Python
# module venv the Myelin runs use, builds Myelin in release, runs both servers side by side
# (bench/run.py), the federated join of a big room (bench/federation_join.py), then the module dispatch micro-benchmark (criterion). BENCH_QUICK=1 runs
# smaller workloads.
set -euo pipefail
cd "$(dirname "$0")/.."
PYO3_PYTHON="${PYO3_PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}"
export PYO3_PYTHON
mkdir -p bench/work
if [ ! -x bench/work/synapse-venv/bin/python ]; then
  python3 -m venv bench/work/synapse-venv
fi
# With its PostgreSQL driver (psycopg2 builds against Debian's libpq-dev).
bench/work/synapse-venv/bin/pip install --quiet --disable-pip-version-check "matrix-synapse[postgres]==1.163.2" "aiohttp==3.14.5"
# Python modules loaded into Myelin (Twisted, the real synapse-http-antispam) live in the
# test venv, as in the test suite.
if [ ! -x tests/clients/.venv/bin/python ]; then
  python3 -m venv tests/clients/.venv
fi
tests/clients/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
tests/clients/.venv/bin/pip install --quiet --disable-pip-version-check --no-deps synapse-http-antispam==0.5.1
cargo build --release --locked -p myelin -p myelin-loadgen
bench/work/synapse-venv/bin/python bench/run.py
# Synapse and Myelin on one PostgreSQL (Myelin with one and two processes), and Myelin on SQLite.
bench/work/synapse-venv/bin/python bench/run.py postgres
# Appservice transaction delivery latency, the same appservice on both servers.
bench/work/synapse-venv/bin/python bench/run.py appservice
# Simplified sliding sync: an account in 500 rooms, first request and wake-up.
bench/work/synapse-venv/bin/python bench/run.py sliding
# Federation: a Myelin and a Synapse user joining a Synapse-hosted room of 1,000 members.
bench/work/synapse-venv/bin/python bench/federation_join.py
cargo bench --locked -p myelin-core --bench dispatch -- --noplot --warm-up-time 1 --measurement-time 3 2>&1 | grep -E "^(user_may|check_event|rate limit)|time:" | tee bench/work/dispatch.txt
PYTHONPATH="$PWD/bench/modules" VIRTUAL_ENV="$PWD/tests/clients/.venv" \
  cargo bench --locked -p myelin-python --bench python_dispatch -- --noplot --warm-up-time 1 --measurement-time 3 2>&1 | grep -E "^user_may|time:" | tee -a bench/work/dispatch.txt
