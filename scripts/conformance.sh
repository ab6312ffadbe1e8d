#!/usr/bin/env bash
# The sytest ratchet (docs/conformance.md): runs the conformance kit in ../shared/conformance/sytest
# against a freshly started Myelin (the debug build scripts/test.sh made, the kit's config
# template: HTTPS, client and federation on one port, a new database), writes the results to
# target/conformance/, and compares the passing tests with tests/conformance/sytest-passing.txt.
# A listed test that fails, and fails again when its file is run once more, is a regression:
# the script fails. Newly passing tests are listed in target/conformance/newly-passing.txt so the
# list can grow. Without the kit, it says so and succeeds.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT="$(realpath -m ../shared/conformance/sytest)"
if [ ! -x "$KIT/run.sh" ]; then
  echo "conformance: no sytest kit at $KIT; skipped"
  exit 0
fi
OUT="$(pwd)/target/conformance"
rm -rf "$OUT" && mkdir -p "$OUT/server"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -e "s#PORT#$PORT#g" -e "s#KIT#$KIT#g" "$KIT/homeserver-template.yaml" > "$OUT/server/homeserver.yaml"
SERVER=
# A new server on a new database (sytest registers fixed user names, so each run needs its own).
start_server() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
  rm -rf "$OUT/server/data" "$OUT/server/server.log"
  (cd "$OUT/server" && exec "$OLDPWD/target/debug/myelin" -c homeserver.yaml > server.log 2>&1) &
  SERVER=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$OUT/server/server.log" 2>/dev/null && return
    sleep 0.1
  done
}
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null || true' EXIT
start_server

"$KIT/run.sh" "$PORT" "$OUT/run" | tail -1
python3 scripts/conformance.py compare "$OUT/run" tests/conformance/sytest-passing.txt "$OUT" > "$OUT/regressed-files.txt" || true
if [ -s "$OUT/regressed-files.txt" ]; then
  # A second chance for the files of the tests that failed: sytest's federation tests can
  # time out under load, and a real regression fails twice.
  echo "conformance: running again: $(tr '\n' ' ' < "$OUT/regressed-files.txt")"
  start_server
  # shellcheck disable=SC2046
  "$KIT/run.sh" "$PORT" "$OUT/rerun" -- $(cat "$OUT/regressed-files.txt") | tail -1
  python3 scripts/conformance.py recheck "$OUT/run" "$OUT/rerun" tests/conformance/sytest-passing.txt "$OUT"
else
  python3 scripts/conformance.py recheck "$OUT/run" "" tests/conformance/sytest-passing.txt "$OUT"
fi
