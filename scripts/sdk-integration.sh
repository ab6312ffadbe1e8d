#!/usr/bin/env bash
# matrix-rust-sdk's own integration suite (its testing/matrix-sdk-integration-testing crate) against
# Myelin and against Synapse 1.163.2 on this machine, one after the other on the same port, and
# both pass counts (written to bench/work/sdk-integration.md). Not part of the test command: it
# needs a snapshot of the SDK's repository, which CI does not have.
#
#   scripts/sdk-integration.sh SDK_REPO [TAG]
#
# SDK_REPO is a git repository of matrix-rust-sdk (the search tool's `fetch` brings one); TAG
# defaults to matrix-sdk-0.18.0, the release tests/rust_sdk uses. The snapshot is built against
# crates.io only: the workspace's git `[patch]` section is dropped. Needs bench/run.sh's Synapse
# venv and a release build of Myelin (bench/run.sh makes both).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$1
tag=${2:-matrix-sdk-0.18.0}
work=${SDK_WORK:-/tmp/myelin-sdk-integration}
src=$work/src-$tag
if [ ! -f "$src/.extracted" ]; then
  rm -rf "$src"
  mkdir -p "$src"
  git -C "$repo" archive "$tag" | tar -x -C "$src"
  # Drop [patch.crates-io] (git sources): everything from its header to the next section.
  python3 - "$src/Cargo.toml" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
text = re.sub(r"\n\[patch\.crates-io\]\n.*?(?=\n\[|\Z)", "\n", text, flags=re.S)
open(path, "w").write(text)
PY
  touch "$src/.extracted"
fi
# The suite reads the server's address at compile time (option_env!).
export HOMESERVER_URL=http://127.0.0.1:28228 HOMESERVER_DOMAIN=bench
export CARGO_TARGET_DIR=$work/target
(cd "$src" && cargo test -p matrix-sdk-integration-testing --no-run)
bench/work/synapse-venv/bin/python bench/sdk_integration.py "$src"
