#!/usr/bin/env bash
# Push notifications through a real Sygnal (docs/conformance.md): builds a venv with Sygnal from a
# snapshot of its repository at a release tag (PyPI's index here has no matrix-sygnal), pinned as
# its poetry.lock pins it, then runs scripts/sygnal-webpush.py against the debug build.
#
#   scripts/sygnal-webpush.sh SYGNAL_REPO [TAG]    (TAG defaults to v0.15.1)
#
# Not part of the test command: CI has no snapshot of Sygnal.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="${1:?usage: scripts/sygnal-webpush.sh SYGNAL_REPO [TAG]}"
TAG="${2:-v0.15.1}"
WORK="$(pwd)/target/sygnal"
rm -rf "$WORK/src" && mkdir -p "$WORK/src"
git -C "$REPO" archive "$TAG" | tar -x -C "$WORK/src"
python3 - "$WORK/src/poetry.lock" > "$WORK/constraints.txt" <<'PY'
import re, sys
lock = open(sys.argv[1]).read()
for name, version in re.findall(r'\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', lock):
    print(f"{name}=={version}")
PY
[ -x "$WORK/venv/bin/python" ] || python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet --disable-pip-version-check -c "$WORK/constraints.txt" "$WORK/src"
[ -x target/debug/myelin ] || cargo build --locked
"$WORK/venv/bin/python" -W ignore::DeprecationWarning scripts/sygnal-webpush.py
