#!/usr/bin/env python3
"""Soak test: Myelin's RSS under mixed load (an hour by default), then idle. Not in the default test run.

    python3 bench/soak.py                        # 60 min of load, then 2 min idle
    MYELIN_BIN=target/debug/myelin python3 bench/soak.py --minutes 3 --interval 15 --idle-minutes 0.5

Runs $MYELIN_BIN (default target/release/myelin if built, else target/debug/myelin) on a free
loopback port in a temp dir (SQLite, open registration, rate limits lifted; deleted afterwards)
and drives it with threads over http.client: 32 senders (each its own user) posting into 4 shared
rooms and a room of their own, with typing, receipts and account data now and then; 200 /sync
long-pollers (timeout=30000, following next_batch; a shared room and two senders' rooms each;
receipts now and then); 2 threads of room churn (a room created with name and topic, joined by
two more users, one a sync user, given messages and a new topic, then left by all three: the room
count only grows); and every --register-every seconds a new user and a new device (password
login) for an existing user, every other one logged out again.

Every --interval seconds it prints `t=..s rss=..MB rooms=.. users=.. msgs=.. errors=..` (the
server's VmRSS) and writes the sample to --csv. Then: RSS at 10%, 50% and 100% of the load, the
least-squares slope of RSS over the load's second half, the load rates achieved, RSS after
--idle-minutes without load, and the verdict: "plateau" if the slope is under 0.2 MB/min
(12 MB/hour), else "growing". RSS should climb while caches and pools fill, then flatten though
rooms, users, devices and events keep growing; plot rss_mb against t_s from the CSV for the docs.
The load generator shares the CPU with the server: its rates are the load applied, not a benchmark.
"""

import argparse, collections, csv, http.client, json, os, random, re, shutil, socket  # noqa: E401
import math, statistics, subprocess, sys, tempfile, threading, time, uuid  # noqa: E401
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "soak-password"
CONFIG = """server_name: soak
public_baseurl: http://127.0.0.1:PORT/
listeners: [{port: PORT, bind_addresses: ['127.0.0.1'], resources: [{names: [client, federation]}]}]
signing_key_path: data/soak.signing.key
media_store_path: data/media
log_level: warn
database: {name: sqlite3, args: {database: data/homeserver.db}}
enable_registration: true
enable_registration_without_verification: true
rc_message: LIMIT
rc_registration: LIMIT
rc_login: {address: LIMIT, account: LIMIT, failed_attempts: LIMIT}
rc_joins: {local: LIMIT, remote: LIMIT}
rc_joins_per_room: LIMIT
rc_room_creation: LIMIT
rc_invites: {per_room: LIMIT, per_user: LIMIT, per_issuer: LIMIT}
""".replace("LIMIT", "{per_second: 1000000, burst_count: 1000000}")
FIELDS = ["t_s", "phase", "rss_mb", "rooms", "users", "logins", "msgs", "syncs", "receipts", "typing",
          "account_data", "errors"]

stop = threading.Event()
lock = threading.Lock()
stats, error_kinds = collections.Counter(), collections.Counter()


def count(key, kind=None):
    with lock:
        stats[key] += 1
        if kind:
            error_kinds[kind] += 1


def q(s):
    return quote(s, safe="")


def rss_mb(pid):
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[1]) / 1024


class Client:
    """One user's keep-alive connection, for one thread. `call` returns the JSON body, or None
    after counting an error (and pausing 0.2 s); on success it counts `tally` if given."""

    def __init__(self, port, token=None, user=None):
        self.port, self.token, self.user, self.conn = port, token, user, None

    def call(self, method, path, body=None, tally=None):
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = None if body is None else json.dumps(body)
        for attempt in (0, 1):
            reused = self.conn is not None
            try:
                self.conn = self.conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=90)
                self.conn.request(method, "/_matrix/client/v3" + path, payload, headers)
                r = self.conn.getresponse()
                data = r.read()
                if r.status != 200:  # named by the path without its IDs, and the errcode
                    route = "/".join(p for p in path.split("?")[0].split("/") if p and "%" not in p and len(p) < 30)
                    errcode = re.search(rb'"errcode"\s*:\s*"(\w+)"', data)
                    raise RuntimeError(f"{method} {route} -> {r.status} {errcode[1].decode() if errcode else ''}")
                if tally:
                    count(tally)
                return json.loads(data) if data else {}
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self.close()  # the server may have closed an idle keep-alive connection: retry once
                if attempt == 0 and reused:
                    continue
                kind = type(e).__name__
            except Exception as e:  # noqa: BLE001 - a soak counts every failure and carries on
                self.close()
                kind = str(e) if isinstance(e, RuntimeError) else type(e).__name__
            count("errors", kind=kind)
            stop.wait(0.2)
            return None

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None


def register(port, name):
    body = {"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
    r = Client(port).call("POST", "/register", body, tally="users")
    return r and Client(port, r["access_token"], r["user_id"])


def send(c, room, text):
    body = {"msgtype": "m.text", "body": text}
    return c.call("PUT", f"/rooms/{q(room)}/send/m.room.message/{uuid.uuid4().hex}", body, tally="msgs")


def sender(c, rooms, delay):
    n = 0
    while not stop.is_set():
        n, room, roll = n + 1, random.choice(rooms), random.random()
        r = send(c, room, f"soak {n} " + "x" * random.randint(10, 300))
        if r and roll < 0.1:
            c.call("POST", f"/rooms/{q(room)}/receipt/m.read/{q(r['event_id'])}", {}, tally="receipts")
        elif roll < 0.2:
            c.call("PUT", f"/rooms/{q(room)}/typing/{q(c.user)}", {"typing": True, "timeout": 5000}, tally="typing")
        elif roll < 0.25:
            c.call("PUT", f"/user/{q(c.user)}/account_data/org.myelin.soak.{n % 20}", {"n": n}, tally="account_data")
        stop.wait(delay)


def syncer(c, home):
    since = None
    while not stop.is_set():
        r = c.call("GET", "/sync?timeout=30000" + (f"&since={q(since)}" if since else ""), tally="syncs")
        since = (r or {}).get("next_batch", since)
        for room, joined in (r or {}).get("rooms", {}).get("join", {}).items():
            events = joined.get("timeline", {}).get("events", [])
            # not in churn rooms: the user may have left them since
            if room in home and events and random.random() < 0.05 and not stop.is_set():
                c.call("POST", f"/rooms/{q(room)}/receipt/m.read/{q(events[-1]['event_id'])}", {}, tally="receipts")


def churner(port, own, sync_users, delay):
    n = 0
    while not stop.is_set():
        n, (creator, other), guest = n + 1, random.sample(own, 2), Client(port, *random.choice(sync_users))
        r = creator.call("POST", "/createRoom", {"preset": "public_chat", "name": f"churn {n} {uuid.uuid4().hex[:6]}",
                                                  "topic": f"soak churn room {n}"}, tally="rooms")
        if r:
            room = r["room_id"]
            members = [creator] + [c for c in (other, guest) if c.call("POST", f"/join/{q(room)}", {}) is not None]
            for i in range(5):
                send(random.choice(members), room, f"churn message {i}")
            creator.call("PUT", f"/rooms/{q(room)}/state/m.room.topic/", {"topic": f"changed {n}"})
            for c in reversed(members):
                c.call("POST", f"/rooms/{q(room)}/leave", {})
        guest.close()
        stop.wait(delay)


def newcomers(port, users, every):
    n = 0
    while not stop.is_set():
        n, c = n + 1, register(port, f"new{n}_{uuid.uuid4().hex[:6]}")
        if c:
            c.call("PUT", f"/profile/{q(c.user)}/displayname", {"displayname": f"Newcomer {n}"})
            c.call("PUT", f"/user/{q(c.user)}/account_data/org.myelin.soak", {"n": n}, tally="account_data")
            c.call("GET", "/sync")
            users.append(c.user.split(":")[0][1:])
            c.close()
        login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": random.choice(users)},
                 "password": PASSWORD, "initial_device_display_name": f"soak device {n}"}
        r = Client(port).call("POST", "/login", login, tally="logins")
        if r and n % 2:
            Client(port, r["access_token"]).call("POST", "/logout", {})
        stop.wait(every)


def setup(port):
    """Users, 4 shared rooms, a room per sender, memberships (8 requests at a time)."""
    def create(c, name):
        r = c.call("POST", "/createRoom", {"preset": "public_chat", "name": name}, tally="rooms")
        return r and r["room_id"]

    def join(c, rooms):
        for room in rooms:
            c.call("POST", f"/join/{q(room)}", {})

    with ThreadPoolExecutor(8) as pool:
        owner = register(port, "owner")
        shared = [create(owner, f"shared {i}") for i in range(4)]
        senders = [c for c in pool.map(lambda i: register(port, f"sender{i}"), range(32)) if c]
        syncers = [c for c in pool.map(lambda i: register(port, f"sync{i}"), range(200)) if c]
        churners = [c for c in pool.map(lambda i: register(port, f"churn{i}"), range(8)) if c]
        own = list(pool.map(lambda c: create(c, f"room of {c.user}"), senders))
        list(pool.map(join, senders, [shared] * len(senders)))
        rooms = [r for r in own if r]
        homes = [[shared[i % 4], *random.sample(rooms, 2)] for i in range(len(syncers))]
        list(pool.map(join, syncers, homes))
    return shared, own, senders, syncers, homes, churners


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60, help="minutes of load")
    ap.add_argument("--interval", type=float, default=30, help="seconds between RSS samples")
    ap.add_argument("--idle-minutes", type=float, default=2, help="minutes of sampling without load afterwards")
    ap.add_argument("--csv", default=str(ROOT / "bench" / "work" / "soak.csv"))
    ap.add_argument("--send-delay", type=float, default=0.1, help="each sender's pause between messages (s)")
    ap.add_argument("--churn-delay", type=float, default=0.5, help="each churn thread's pause between rooms (s)")
    ap.add_argument("--register-every", type=float, default=1.0, help="seconds between new users and new devices")
    args = ap.parse_args()
    candidates = [p for p in (ROOT / "target/release/myelin", ROOT / "target/debug/myelin") if p.exists()]
    binary = str(Path(os.environ.get("MYELIN_BIN") or (candidates or ["myelin"])[0]).resolve())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="myelin-soak-"))
    (tmp / "data").mkdir()
    (tmp / "homeserver.yaml").write_text(CONFIG.replace("PORT", str(port)))
    log, proc = open(tmp / "stderr.log", "w+"), None
    server_log = lambda: (tmp / "stderr.log").read_text()  # noqa: E731
    try:
        proc = subprocess.Popen([binary, "-c", str(tmp / "homeserver.yaml")], cwd=tmp, stdout=log, stderr=log)
        print(f"soak: {binary} (pid {proc.pid}, port {port}): {args.minutes} min load, {args.idle_minutes} min idle")
        deadline = time.monotonic() + 120
        while "myelin: listening on" not in server_log():
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"server did not start:\n{server_log()[-3000:]}")
            time.sleep(0.05)
        started = time.monotonic()
        shared, own, senders, syncers, homes, churners = setup(port)
        print(f"setup: {time.monotonic() - started:.0f}s, {stats['errors']} errors")
        users = [c.user.split(":")[0][1:] for c in senders + syncers]
        sync_users = [(c.token, c.user) for c in syncers]
        work = [(sender, c, shared + ([room] if room else []), args.send_delay) for c, room in zip(senders, own)]
        work += [(syncer, c, set(home)) for c, home in zip(syncers, homes)]
        work += [(churner, port, churners[i::2], sync_users, args.churn_delay) for i in (0, 1)]
        work += [(newcomers, port, users, args.register_every)]
        threads = [threading.Thread(target=w[0], args=w[1:], daemon=True) for w in work]

        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        out = open(args.csv, "w", newline="")
        writer = csv.DictWriter(out, FIELDS)
        writer.writeheader()
        duration, idle, samples = args.minutes * 60, args.idle_minutes * 60, []

        def steps(a, b):  # every --interval seconds after a, and b
            return [min(a + i * args.interval, b) for i in range(1, math.ceil((b - a) / args.interval) + 1)]

        plan = [(0.0, "load")] + [(t, "load") for t in steps(0, duration)]
        plan += [(t, "idle") for t in steps(duration, duration + idle)]
        t0 = time.monotonic()
        for t, phase in plan:  # a sample before the load, every --interval seconds, and at the end of each phase
            if phase == "idle":
                stop.set()
            time.sleep(max(0.0, t0 + t - time.monotonic()))
            if proc.poll() is not None:
                sys.exit(f"server exited ({proc.returncode}):\n{server_log()[-3000:]}")
            with lock:
                row = {k: stats[k] for k in FIELDS[3:]}
            row.update(t_s=round(time.monotonic() - t0, 1), phase=phase, rss_mb=round(rss_mb(proc.pid), 2))
            samples.append(row)
            writer.writerow(row)
            out.flush()
            print(f"t={row['t_s']:.0f}s rss={row['rss_mb']:.1f}MB rooms={row['rooms']} users={row['users']} "
                  f"msgs={row['msgs']} errors={row['errors']}" + (" (idle)" if phase == "idle" else ""), flush=True)
            if t == 0:
                for th in threads:
                    th.start()
        stop.set()
        out.close()

        load = [s for s in samples if s["phase"] == "load"]
        first, last = load[0], load[-1]
        at = {f: min(load, key=lambda s: abs(s["t_s"] - f * duration)) for f in (0.1, 0.5, 1.0)}
        half = [s for s in load if s["t_s"] >= duration / 2]
        slope = (statistics.linear_regression([s["t_s"] / 60 for s in half], [s["rss_mb"] for s in half]).slope
                 if len(half) >= 2 else float("nan"))
        rate = lambda k, per=1: (last[k] - first[k]) * per / max(last["t_s"], 1e-9)  # noqa: E731
        print("\nsummary")
        print("  rss at " + ", ".join(f"{int(f * 100)}%: {s['rss_mb']:.1f} MB" for f, s in at.items())
              + f" (before load: {first['rss_mb']:.1f} MB)")
        print(f"  second-half growth: {slope:+.3f} MB/min ({len(half)} samples)")
        print(f"  load: {rate('msgs'):.1f} msgs/s, {rate('syncs'):.1f} syncs answered/s, "
              f"{rate('rooms', 60):.1f} rooms created/min, {rate('users', 60):.1f} users/min, "
              f"{rate('logins', 60):.1f} logins/min, "
              f"{rate('receipts'):.1f} receipts/s, {rate('typing'):.1f} typing/s, {last['errors']} errors")
        if error_kinds:
            print("  errors: " + ", ".join(f"{k} x{n}" for k, n in error_kinds.most_common(6)))
        if samples[-1]["phase"] == "idle":
            print(f"  rss after {args.idle_minutes:g} min idle: {samples[-1]['rss_mb']:.1f} MB")
        print(f"  samples: {args.csv}")
        print("verdict: " + ("plateau" if slope < 0.2 else "growing" if slope >= 0.2 else "unknown (too few samples)"))
    finally:
        stop.set()
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
