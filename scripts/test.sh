#!/usr/bin/env bash
# The test command (README): builds everything in debug and runs every test, unit and black-box.
# Each black-box test starts the real server on 127.0.0.1:0 in its own temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real clients used by the black-box tests: matrix-nio in a venv, matrix-js-sdk with a Node 22
# binary from npm (the SDK needs Node >= 22; the machine has 20).
if [ ! -x tests/clients/.venv/bin/python ]; then
  python3 -m venv tests/clients/.venv
fi
tests/clients/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
# The Python original of the native antispam module, for the differential tests. It depends on
# matrix-synapse, which Myelin's own `synapse` package stands in for.
tests/clients/.venv/bin/pip install --quiet --disable-pip-version-check --no-deps synapse-http-antispam==0.5.1
# Published modules the tests run unchanged (tests/blackbox/published_modules.rs): attrs comes
# with Twisted; synapse-freeze-room imports frozendict, which older Synapses brought along.
tests/clients/.venv/bin/pip install --quiet --disable-pip-version-check --no-deps \
  matrix-http-rendezvous-synapse==0.1.12 synapse-freeze-room==1.1.0 synapse-room-access-rules==1.0.0 \
  frozendict==2.5.1
# synapse-token-authenticator with its own dependencies (jwcrypto, pydantic), pinned.
tests/clients/.venv/bin/pip install --quiet --disable-pip-version-check \
  synapse-token-authenticator==0.14.1 jwcrypto==1.6.1 pydantic==2.14.4
# synapse-s3-storage-provider (tests/blackbox/media_storage.rs) with what it imports: boto3 and
# six (--no-deps: its psycopg2, tqdm and humanize serve only its offline upload script), and a
# local S3 (moto in server mode) in its own venv.
tests/clients/.venv/bin/pip install --quiet --disable-pip-version-check boto3==1.44.18 six==1.17.0
tests/clients/.venv/bin/pip install --quiet --disable-pip-version-check --no-deps synapse-s3-storage-provider==1.7.0
if [ ! -x tests/s3/.venv/bin/python ]; then
  python3 -m venv tests/s3/.venv
fi
tests/s3/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/s3/requirements.txt
# A real Synapse for the federation tests, in its own venv (its dependencies would clash with
# the module venv's stand-in `synapse` package).
if [ ! -x tests/synapse/.venv/bin/python ]; then
  python3 -m venv tests/synapse/.venv
fi
tests/synapse/.venv/bin/pip install --quiet --disable-pip-version-check "matrix-synapse==1.163.2" \
  psycopg2-binary==2.9.13  # Synapse on PostgreSQL, for tests/blackbox/import_synapse.rs
# Real appservices for tests/blackbox/appservices.rs: Heisenbridge (with Debian's ngircd, which
# .ci/run installs) and a mautrix-python bot, in their own venv (pinned).
if [ ! -x tests/appservice/.venv/bin/python ]; then
  python3 -m venv tests/appservice/.venv
fi
tests/appservice/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/appservice/requirements.txt
(cd tests/clients/js && npm ci --no-audit --no-fund --loglevel=error)
# Hydrogen, bundled with vite, for the browser test (Debian's chromium runs it; .ci/run installs it).
(cd tests/clients/hydrogen && npm ci --no-audit --no-fund --loglevel=error && npx vite build >/dev/null)
# A local OpenID Connect provider (oidc-provider) and playwright-core, for the SSO tests.
(cd tests/clients/sso && npm ci --no-audit --no-fund --loglevel=error)

# pyo3 builds against this interpreter, and the binaries get an rpath to its libpython.
PYO3_PYTHON="${PYO3_PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}"
export PYO3_PYTHON

# A throwaway PostgreSQL cluster (scripts/test-postgres.sh) for the storage contract suite and
# the black-box suite's second pass.
MYELIN_TEST_PG="$(scripts/test-postgres.sh)"
export MYELIN_TEST_PG

cargo fmt --all -- --check
cargo build --workspace --all-targets --locked
# matrix-rust-sdk's driver (tests/rust_sdk, its own workspace: the SDK's tree is only built here),
# into the shared target dir, for tests/blackbox/clients.rs.
(cd tests/rust_sdk && cargo fmt -- --check && CARGO_TARGET_DIR="$PWD/../../target" cargo build --locked)
cargo clippy --workspace --all-targets --locked -- -D warnings
# Four test threads on two cores: each black-box test runs a server that mostly waits on I/O.
# Both passes run whatever the first gives; the script fails if either did.
set +e
cargo test --workspace --locked -- --test-threads="${MYELIN_TEST_THREADS:-4}" 2>&1 | tee target/test-output.txt
status=${PIPESTATUS[0]}
# The whole black-box suite again, every server on PostgreSQL (a database of its own each).
echo "black-box suite on PostgreSQL:" | tee -a target/test-output.txt
MYELIN_TEST_BACKEND=postgres cargo test -p myelin-tests --test blackbox --locked -- \
  --test-threads="${MYELIN_TEST_THREADS:-4}" 2>&1 | tee -a target/test-output.txt
pg_status=${PIPESTATUS[0]}
[ "$status" = 0 ] && status=$pg_status
passed=$(grep -Eo '[0-9]+ passed' target/test-output.txt | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' target/test-output.txt | awk '{s+=$1} END {print s+0}')
echo "total: ${passed} passed, ${failed} failed"
exit "$status"
