#!/usr/bin/env python3
"""Validates mautrix_bot.py against a real Synapse (stdlib only).

    python3 tests/appservice/mautrix_synapse_check.py --bot-python PATH/TO/venv/bin/python [--verbose]

Starts Synapse (tests/synapse/.venv) in a temp directory on 127.0.0.1 with a generated appservice
registration, runs `mautrix_bot.py run` against it, stops Synapse (by PID) and exits with the
bot's status. On failure the tail of Synapse's log is printed; MAUTRIX_KEEP_DIR=1 keeps the temp
directory (Synapse's config, log and database, the registration).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
SYNAPSE_PYTHON = HERE.parent / "synapse" / ".venv" / "bin" / "python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--bot-python", default=str(HERE / ".venv" / "bin" / "python"))
    p.add_argument("--synapse-python", default=str(SYNAPSE_PYTHON))
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()

    d = pathlib.Path(tempfile.mkdtemp(prefix="mautrix_synapse_"))
    hs_port, as_port = free_port(), free_port()
    reg = d / "mautrix_reg.yaml"
    subprocess.run(
        [args.bot_python, str(HERE / "mautrix_bot.py"), "generate", "--url", f"http://127.0.0.1:{as_port}", "--out", str(reg)],
        check=True,
    )
    config = d / "homeserver.yaml"
    subprocess.run(
        [args.synapse_python, "-m", "synapse.app.homeserver", "--generate-config", "--server-name", "localhost",
         "--config-path", str(config), "--data-directory", str(d), "--report-stats=no"],
        check=True, cwd=d, stdout=subprocess.DEVNULL,
    )
    unlimited = {"per_second": 100000, "burst_count": 100000}
    overrides = {
        "listeners": [{"port": hs_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                       "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}]}],
        "database": {"name": "sqlite3", "args": {"database": str(d / "homeserver.db")}},
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "app_service_config_files": [str(reg)],
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "report_stats": False,
        "presence": {"enabled": False},
        "rc_message": unlimited, "rc_registration": unlimited,
        "rc_joins": {"local": unlimited, "remote": unlimited}, "rc_joins_per_room": unlimited,
        "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
        "rc_invites": {"per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited},
        "rc_room_creation": unlimited,
    }
    subprocess.run(
        [args.synapse_python, "-c",
         "import sys, json, yaml; p = sys.argv[1]; c = yaml.safe_load(open(p)); c.update(json.loads(sys.argv[2])); yaml.safe_dump(c, open(p, 'w'))",
         str(config), json.dumps(overrides)],
        check=True,
    )
    synapse = subprocess.Popen(
        [args.synapse_python, "-m", "synapse.app.homeserver", "-c", str(config)],
        cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    rc = 1
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{hs_port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if synapse.poll() is not None or time.monotonic() > deadline:
                print("Synapse did not start")
                return 1
            time.sleep(0.3)
        print(f"Synapse (pid {synapse.pid}) on 127.0.0.1:{hs_port}; appservice on 127.0.0.1:{as_port}", flush=True)
        cmd = [args.bot_python, str(HERE / "mautrix_bot.py"), "run", "--homeserver", f"http://127.0.0.1:{hs_port}",
               "--registration", str(reg), "--port", str(as_port)]
        if args.verbose:
            cmd.append("--verbose")
        rc = subprocess.run(cmd, timeout=180).returncode
    finally:
        synapse.terminate()
        try:
            synapse.wait(timeout=20)
        except subprocess.TimeoutExpired:
            synapse.kill()
            synapse.wait()
        if rc != 0:
            for log in d.glob("*.log"):
                lines = log.read_text(errors="replace").splitlines()
                print(f"--- tail of {log.name}")
                print("\n".join(lines[-80:]))
        if os.environ.get("MAUTRIX_KEEP_DIR"):
            print(f"kept {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)
    print(f"bot exit status {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
