#!/usr/bin/env python3
"""Runs matrix-rust-sdk's integration suite (already built by scripts/sdk-integration.sh) against
Myelin, then Synapse, each fresh on port 28228 with the suite's settings (open registration, rate
limits lifted, MSC3266 on for Synapse as the suite's CI does), and writes both counts and the
tests that differ to bench/work/sdk-integration.md."""

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: the two servers' configs)

SRC = Path(sys.argv[1])
PORT = 28228
DEADLINE = 600


def wait_ready(proc, name):
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/_matrix/client/versions", timeout=1)
            return
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited; see bench/work/sdk-{name}.log")
            time.sleep(0.2)
    raise SystemExit(f"{name} never answered")


def run_suite(name):
    d = run.WORK / f"sdk-{name}"
    shutil.rmtree(d, ignore_errors=True)
    if name == "synapse":
        cmd = run.synapse_config(d, PORT)
        cfg = d / "homeserver.yaml"
        import yaml

        config = yaml.safe_load(cfg.read_text())
        config["experimental_features"] = {"msc3266_enabled": True}
        cfg.write_text(yaml.safe_dump(config))
    else:
        cmd = run.myelin_config(d, PORT)
    log = open(run.WORK / f"sdk-{name}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=d)
    try:
        wait_ready(proc, name)
        if name == "synapse":
            run.wait_background_updates(d)
        # A test that hangs (waiting for a sync that never comes) would hold the run forever:
        # after the deadline the run is stopped, and every test without a result counts as failed.
        try:
            out = subprocess.run(
                ["cargo", "test", "-p", "matrix-sdk-integration-testing", "--", "--test-threads=2"],
                cwd=SRC, capture_output=True, text=True, timeout=DEADLINE)
            text = out.stdout + out.stderr
        except subprocess.TimeoutExpired as e:
            text = (e.stdout or b"").decode() + (e.stderr or b"").decode() + "\n(stopped at the deadline)\n"
            subprocess.run(["pkill", "-f", "matrix_sdk_integration_testing-"])
        (run.WORK / f"sdk-{name}-output.txt").write_text(text)
    finally:
        proc.terminate()
        proc.wait(30)
    results = dict(re.findall(r"^test (\S+) \.\.\. (ok|FAILED|ignored)", text, re.M))
    return results


def main():
    # SDK_SERVERS=myelin re-runs Myelin alone, keeping Synapse's last results.
    servers = os.environ.get("SDK_SERVERS", "myelin,synapse").split(",")
    results = {}
    for name in ("myelin", "synapse"):
        if name in servers:
            results[name] = run_suite(name)
        else:
            text = (run.WORK / f"sdk-{name}-output.txt").read_text()
            results[name] = dict(re.findall(r"^test (\S+) \.\.\. (ok|FAILED|ignored)", text, re.M))
    names = sorted(set(results["myelin"]) | set(results["synapse"]))
    for r in results.values():
        for t in names:
            r.setdefault(t, "no result")
    count = {n: sum(1 for v in r.values() if v == "ok") for n, r in results.items()}
    total = len(names)
    out = (f"matrix-rust-sdk integration suite ({SRC.name}), {total} tests, same machine, same run:\n\n"
           f"| server | passed | failed or ignored |\n|---|---:|---:|\n"
           f"| Myelin | {count['myelin']} | {total - count['myelin']} |\n"
           f"| Synapse 1.163.2 | {count['synapse']} | {total - count['synapse']} |\n\n")
    differ = [(t, results["myelin"].get(t, "-"), results["synapse"].get(t, "-")) for t in names
              if results["myelin"].get(t) != results["synapse"].get(t)]
    if differ:
        out += "| test | Myelin | Synapse |\n|---|---|---|\n" + "".join(f"| {t} | {m} | {s} |\n" for t, m, s in differ)
    (run.WORK / "sdk-integration.md").write_text(out)
    print(out)


if __name__ == "__main__":
    main()
