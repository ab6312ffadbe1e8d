"""Joining a big room over federation: a Myelin user and a Synapse user join the same
Synapse-hosted room of ROOM_SIZE members (1,000; 100 with BENCH_QUICK=1).

Three servers on loopback, each with a TLS federation listener (certificates from a CA made
here) trusting only that CA and allowed to reach loopback: Synapse H hosts the room, Synapse S
and Myelin M each have a user who joins it. Each join is timed from the client's POST /join to
its answer, with the joining server's CPU time over it; the user then leaves and joins again
(with no other member on their server, each join is a full federated join), three times.

Run by bench/run.sh after run.py, in the Synapse venv (it has aiohttp, PyYAML, cryptography).
"""

import asyncio
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import MYELIN, QUICK, SYNAPSE_PY, WORK, Target, call, cpu_seconds, register, rss_mb  # noqa: E402

ROOM_SIZE = int(os.environ.get("FED_ROOM_SIZE", "100" if QUICK else "1000"))
JOINS = 3
DIR = WORK / "federation"


def make_certs(d: Path):
    """A CA and a certificate for localhost and 127.0.0.1, as PEM files in `d`."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Myelin bench CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    (d / "ca.pem").write_bytes(pem(ca))
    (d / "cert.pem").write_bytes(pem(leaf) + pem(ca))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def synapse(name: str, client_port: int, fed_port: int) -> list:
    d = DIR / name
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "homeserver.yaml"
    subprocess.run(
        [str(SYNAPSE_PY), "-m", "synapse.app.homeserver", "--generate-config", "--server-name", f"localhost:{fed_port}",
         "--config-path", str(cfg), "--report-stats=no", "--data-directory", str(d)],
        check=True, capture_output=True, cwd=d,
    )
    unlimited = {"per_second": 100000, "burst_count": 100000}
    config = yaml.safe_load(cfg.read_text())
    config.update({
        "listeners": [
            {"port": client_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False, "resources": [{"names": ["client"]}]},
            {"port": fed_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": True, "resources": [{"names": ["federation"]}]},
        ],
        "tls_certificate_path": str(DIR / "cert.pem"), "tls_private_key_path": str(DIR / "key.pem"),
        "federation_custom_ca_list": [str(DIR / "ca.pem")], "ip_range_whitelist": ["127.0.0.0/8"],
        "database": {"name": "sqlite3", "args": {"database": str(d / "homeserver.db")}},
        "enable_registration": True, "enable_registration_without_verification": True,
        "trusted_key_servers": [], "suppress_key_server_warning": True, "report_stats": False, "bcrypt_rounds": 4,
        "rc_message": unlimited, "rc_registration": unlimited, "rc_joins": {"local": unlimited, "remote": unlimited},
        "rc_joins_per_room": unlimited, "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
        "rc_federation": {"concurrent": 1000, "sleep_limit": 100000, "reject_limit": 100000},
    })
    cfg.write_text(yaml.safe_dump(config))
    return [str(SYNAPSE_PY), "-m", "synapse.app.homeserver", "-c", str(cfg)]


def myelin(client_port: int, fed_port: int) -> list:
    d = DIR / "myelin"
    d.mkdir(parents=True, exist_ok=True)
    (d / "homeserver.yaml").write_text(
        f"""server_name: "localhost:{fed_port}"
listeners:
  - port: {client_port}
    bind_addresses: ['127.0.0.1']
    resources: [{{names: [client]}}]
  - port: {fed_port}
    tls: true
    bind_addresses: ['127.0.0.1']
    resources: [{{names: [federation]}}]
tls_certificate_path: {DIR / "cert.pem"}
tls_private_key_path: {DIR / "key.pem"}
federation_custom_ca_list: [{DIR / "ca.pem"}]
ip_range_whitelist: ['127.0.0.0/8']
database: {{name: sqlite3, args: {{database: {d / "homeserver.db"}}}}}
signing_key_path: {d / "signing.key"}
media_store_path: {d / "media"}
enable_registration: true
enable_registration_without_verification: true
log_level: warning
rc_message: {{per_second: 100000, burst_count: 100000}}
rc_registration: {{per_second: 100000, burst_count: 100000}}
rc_login: {{address: {{per_second: 100000, burst_count: 100000}}, account: {{per_second: 100000, burst_count: 100000}}}}
rc_joins: {{local: {{per_second: 100000, burst_count: 100000}}, remote: {{per_second: 100000, burst_count: 100000}}}}
rc_joins_per_room: {{per_second: 100000, burst_count: 100000}}
rc_federation: {{concurrent: 1000, sleep_limit: 100000, reject_limit: 100000}}
"""
    )
    return [str(MYELIN), "-c", str(d / "homeserver.yaml")]


async def start(t: Target, cmd, session):
    log = open(DIR / f"{t.name}.log", "w")
    t.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=DIR)
    await t.wait_ready(session, time.monotonic())


async def populate(session, host: Target, room_alias_fed: str):
    owner = await register(session, host, "owner")
    room = (await call(session, "POST", host.base + "/_matrix/client/v3/createRoom", owner["access_token"], {"preset": "public_chat"}))["room_id"]
    sem = asyncio.Semaphore(8)

    async def member(i):
        async with sem:
            user = await register(session, host, f"member{i}")
            await call(session, "POST", f"{host.base}/_matrix/client/v3/join/{room}", user["access_token"], {})

    await asyncio.gather(*(member(i) for i in range(ROOM_SIZE - 1)))
    await call(session, "PUT", f"{host.base}/_matrix/client/v3/rooms/{room}/send/m.room.message/t0", owner["access_token"], {"msgtype": "m.text", "body": "welcome"})
    return room


async def joins(session, t: Target, room: str, host_name: str):
    user = await register(session, t, "joiner")
    token = user["access_token"]
    latencies, cpus = [], []
    for i in range(JOINS):
        before = cpu_seconds(t.proc.pid)
        started = time.perf_counter()
        await call(session, "POST", f"{t.base}/_matrix/client/v3/join/{room}?server_name={host_name}", token, {})
        latencies.append(time.perf_counter() - started)
        cpus.append(cpu_seconds(t.proc.pid) - before)
        members = await call(session, "GET", f"{t.base}/_matrix/client/v3/rooms/{room}/joined_members", token)
        if len(members["joined"]) < ROOM_SIZE:
            raise RuntimeError(f"{t.name} sees only {len(members['joined'])} members after joining")
        await call(session, "POST", f"{t.base}/_matrix/client/v3/rooms/{room}/leave", token, {})
        await asyncio.sleep(1)
    return latencies, cpus, rss_mb(t.proc.pid)


async def main():
    begun = time.monotonic()
    shutil.rmtree(DIR, ignore_errors=True)
    DIR.mkdir(parents=True)
    make_certs(DIR)
    host = Target("synapse-host", 28460)
    syn = Target("synapse-joiner", 28462)
    my = Target("myelin-joiner", 28464)
    timeout = aiohttp.ClientTimeout(total=600)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await start(host, synapse("synapse-host", 28460, 28461), session)
            await start(syn, synapse("synapse-joiner", 28462, 28463), session)
            await start(my, myelin(28464, 28465), session)
            populated = time.monotonic()
            room = await populate(session, host, "localhost:28461")
            populated = time.monotonic() - populated
            results = {}
            # Interleaved, so that machine noise falls on both.
            results["myelin"] = await joins(session, my, room, "localhost:28461")
            results["synapse"] = await joins(session, syn, room, "localhost:28461")
    finally:
        for t in (host, syn, my):
            t.stop()
    (ml, mc, mr), (sl, sc, sr) = results["myelin"], results["synapse"]
    out = (
        f"Joining a Synapse-hosted room of {ROOM_SIZE} members over federation (TLS on loopback), "
        f"{JOINS} joins each (join, check all members are known, leave):\n\n"
        "| | Synapse joiner | Myelin joiner | ratio |\n|---|---:|---:|---:|\n"
        f"| join latency, median (s) | {statistics.median(sl):.3f} | {statistics.median(ml):.3f} | {statistics.median(sl) / statistics.median(ml):.1f}x |\n"
        f"| joining server CPU per join, median (s) | {statistics.median(sc):.3f} | {statistics.median(mc):.3f} | {statistics.median(sc) / max(statistics.median(mc), 0.001):.1f}x |\n"
        f"| joining server RSS after (MB) | {sr:.0f} | {mr:.0f} | {sr / max(mr, 1):.1f}x |\n"
        f"\nEach join (s): Synapse {', '.join(f'{x:.3f}' for x in sl)}; Myelin {', '.join(f'{x:.3f}' for x in ml)}. "
        f"Populating the room took {populated:.0f} s; federation_join.py took {time.monotonic() - begun:.0f} s.\n"
    )
    (WORK / "results-federation.md").write_text(out)
    print(out)


if __name__ == "__main__":
    asyncio.run(main())
