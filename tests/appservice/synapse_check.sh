#!/usr/bin/env bash
# Runs heisenbridge_flow.py against a real Synapse (tests/synapse/.venv) in a temp dir: the
# reference run that Myelin's black-box test mirrors. Usage: tests/appservice/synapse_check.sh [run args]
# Keeps Synapse's log in $WORK (printed at the end) so what Synapse did can be read afterwards.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
SYNAPSE_PY="$HERE/../synapse/.venv/bin/python"
FLOW_PY="$HERE/.venv/bin/python"
WORK="$(mktemp -d /tmp/hb-synapse-XXXXXX)"
free_port() { "$FLOW_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HS_PORT="$(free_port)"
BRIDGE_PORT="$(free_port)"

"$FLOW_PY" "$HERE/heisenbridge_flow.py" generate --url "http://127.0.0.1:$BRIDGE_PORT" --out "$WORK/reg.yaml" >/dev/null
(cd "$WORK" && "$SYNAPSE_PY" -m synapse.app.homeserver --generate-config --server-name localhost \
  --config-path "$WORK/homeserver.yaml" --data-directory "$WORK" --report-stats=no >/dev/null)
"$SYNAPSE_PY" - "$WORK" "$HS_PORT" <<'EOF'
import sys, yaml
work, port = sys.argv[1], int(sys.argv[2])
p = f"{work}/homeserver.yaml"
c = yaml.safe_load(open(p))
unlimited = {"per_second": 100000, "burst_count": 100000}
c.update({
    "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                   "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}]}],
    "database": {"name": "sqlite3", "args": {"database": f"{work}/homeserver.db"}},
    "enable_registration": True,
    "enable_registration_without_verification": True,
    "app_service_config_files": [f"{work}/reg.yaml"],
    "trusted_key_servers": [],
    "suppress_key_server_warning": True,
    "report_stats": False,
    "presence": {"enabled": False},
    "rc_message": unlimited, "rc_registration": unlimited,
    "rc_joins": {"local": unlimited, "remote": unlimited}, "rc_joins_per_room": unlimited,
    "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
    "rc_invites": {"per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited},
    "rc_room_creation": unlimited,
})
yaml.safe_dump(c, open(p, "w"))
# Log requests (Synapse's access log is at INFO in synapse.access.http.*).
lp = f"{work}/localhost.log.config"
lc = yaml.safe_load(open(lp))
lc["root"]["level"] = "INFO"
yaml.safe_dump(lc, open(lp, "w"))
EOF

(cd "$WORK" && exec "$SYNAPSE_PY" -m synapse.app.homeserver -c "$WORK/homeserver.yaml" >"$WORK/synapse.stdout" 2>&1) &
SYN_PID=$!
trap 'kill $SYN_PID 2>/dev/null; wait $SYN_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$HS_PORT/health" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$HS_PORT/health" >/dev/null
echo "Synapse up on 127.0.0.1:$HS_PORT (pid $SYN_PID), work dir $WORK"

rc=0
"$FLOW_PY" "$HERE/heisenbridge_flow.py" run --homeserver "http://127.0.0.1:$HS_PORT" \
  --registration "$WORK/reg.yaml" --server-name localhost --workdir "$WORK/flow" "$@" || rc=$?
echo "flow exit code $rc; Synapse log: $WORK/homeserver.log"
exit $rc
