#!/usr/bin/env python3
"""Proves that what Myelin acknowledges survives an OS crash or power loss, not only a kill -9.

A kill -9 loses nothing the kernel holds: data still in the page cache reaches the disk later.
A power loss also loses the page cache: only what was fsynced survives. Simulated on ext4:

  1. A sparse image file is formatted (mkfs.ext4) and loop-mounted; the server's whole data
     directory (config, signing key, SQLite database, media store) lives on it.
  2. Load runs from several threads: users register, a room is created and joined, messages
     are sent, media uploaded, account data written. A write answered 200 is acknowledged;
     failed or unanswered requests are not.
  3. Mid-load, the server is frozen (SIGSTOP: the instant of the cut) and `mount -o
     remount,abort` aborts the filesystem: nothing more reaches the disk and its dirty page
     cache is lost, as in a power cut. The server is killed, the image unmounted and mounted
     again (the ext4 journal is replayed).
  4. The server restarts on the same data. It must start, and every acknowledged write must be
     there: each event by id, each upload's bytes by hash, each user's account-data counter at
     least the last acknowledged value, each registered user's access token.

Each round crashes twice on a new image. The first crash comes within a second of the server's
first start on a fresh data directory: the signing key it just generated must be on disk, or it
never starts again. The second comes after --seconds of load on the recovered server.

  scripts/power-loss.py [--synchronous full|normal] [--rounds N] [--seconds S]

Exits 1 if an acknowledged write was lost or the server did not start again. `--synchronous
normal` (SQLite does not fsync each commit) is expected to lose some: it shows the method sees
page-cache loss. Needs root and loop devices, else prints "SKIPPED: <reason>" and exits 2 (0 with
POWER_LOSS_ALLOW_SKIP=1). MYELIN_BIN overrides the binary (default ../target/debug/myelin).
"""

import argparse, concurrent.futures, hashlib, http.client, itertools, json, os, random
import shutil, signal, socket, subprocess, sys, tempfile, threading, time, urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.abspath(os.environ.get("MYELIN_BIN") or os.path.join(HERE, "..", "target", "debug", "myelin"))
CONFIG = """server_name: test
public_baseurl: http://127.0.0.1:PORT/
listeners:
  - port: PORT
    bind_addresses: ['127.0.0.1']
    resources:
      - names: [client, federation]
signing_key_path: data/test.signing.key
media_store_path: data/media
log_level: warn
database:
  name: sqlite3
  args:
    database: data/homeserver.db
    synchronous: SYNCHRONOUS
enable_registration: true
enable_registration_without_verification: true
rc_message: LIMIT
rc_registration: LIMIT
rc_login: {address: LIMIT, account: LIMIT, failed_attempts: LIMIT}
rc_joins: {local: LIMIT, remote: LIMIT}
""".replace("LIMIT", "{per_second: 100000, burst_count: 100000}")
USERS = 4  # each sends messages; the first creates the room and uploads media
KINDS = ["registrations", "messages", "uploads", "account-data"]


def run(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def new_filesystem(image, mnt, size):
    with open(image, "wb") as f:
        f.truncate(size)  # sparse
    run("mkfs.ext4", "-q", "-F", image)
    os.makedirs(mnt, exist_ok=True)
    run("mount", "-o", "loop", image, mnt)


def unmount(mnt, check=True):
    if subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["umount", "-l", mnt], check=check)


def q(s):
    return urllib.parse.quote(s, safe="")


class Client:
    """A keep-alive connection; `call` returns (status, body) or raises on a network error."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def call(self, method, path, body=None, token=None, ctype="application/json"):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if body is not None:
            headers["Content-Type"] = ctype
            body = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            return response.status, response.read()
        except Exception:
            self.conn.close()
            raise


class Server:
    """A server process on `directory`; `tail` keeps its last lines of stderr."""

    def __init__(self, directory):
        self.tail, self.ready = [], threading.Event()
        self.proc = subprocess.Popen([BIN, "-c", os.path.join(directory, "homeserver.yaml")], cwd=directory,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.tail = (self.tail + [line.rstrip()])[-20:]
            if "myelin: listening on" in line:
                self.ready.set()

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while not self.ready.wait(0.1):
            if self.proc.poll() is not None or time.time() > deadline:
                self.kill()
                self.reader.join(5)  # the whole of `tail`
                return self.ready.is_set()
        return True

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Acked:
    """What the server acknowledged during a round, and the accounts and room the load uses."""

    def __init__(self):
        self.users, self.room, self.joined = [], None, set()  # users: [(user_id, access_token)]
        self.events, self.media, self.counters = [], [], {}  # media: [(mxc, sha256)], counters: {user: n}
        self.counter_writes, self.next_n, self.lock = 0, itertools.count(1), threading.Lock()


class Load:
    """Sets up the users and the room (as far as a previous crash left them), then writes until halted."""

    def __init__(self, port, acked):
        self.port, self.a, self.stop = port, acked, threading.Event()
        self.threads = [threading.Thread(target=self._main, daemon=True)]
        self.threads[0].start()

    def _main(self):
        client, a = Client(self.port), self.a
        while not self.stop.is_set() and len(a.joined) < USERS:
            try:
                if len(a.users) < USERS:
                    body = {"username": f"u{random.randrange(1 << 30)}", "password": "pw",
                            "auth": {"type": "m.login.dummy"}}
                    status, r = client.call("POST", "/_matrix/client/v3/register", body)
                    if status == 200:
                        a.users.append((json.loads(r)["user_id"], json.loads(r)["access_token"]))
                elif a.room is None:
                    status, r = client.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"},
                                            a.users[0][1])
                    if status == 200:
                        a.room = json.loads(r)["room_id"]
                        a.joined.add(a.users[0][0])
                else:
                    user, token = next(u for u in a.users if u[0] not in a.joined)
                    status, _ = client.call("POST", f"/_matrix/client/v3/join/{q(a.room)}", {}, token)
                    if status == 200:
                        a.joined.add(user)
            except Exception:
                time.sleep(0.05)
        steps = [(self._send, user) for user in a.users] + [(self._upload, a.users[0]), (self._account_data, None)]
        for step, arg in [] if self.stop.is_set() else steps:
            self.threads.append(threading.Thread(target=self._loop, args=(step, arg), daemon=True))
            self.threads[-1].start()

    def _loop(self, step, arg):
        client = Client(self.port)
        for i in itertools.count():
            if self.stop.is_set():
                return
            try:
                step(client, arg, i)
            except Exception:
                time.sleep(0.05)  # in flight at the crash, or the server is gone: not acknowledged

    def _send(self, client, user, i):
        path = f"/_matrix/client/v3/rooms/{q(self.a.room)}/send/m.room.message/{time.time_ns()}-{i}"
        status, r = client.call("PUT", path, {"msgtype": "m.text", "body": f"message {i}"}, user[1])
        if status == 200:
            with self.a.lock:
                self.a.events.append(json.loads(r)["event_id"])

    def _upload(self, client, user, i):
        data = os.urandom(random.randint(1024, 8192))
        status, r = client.call("POST", "/_matrix/media/v3/upload", data, user[1], "application/octet-stream")
        if status == 200:
            with self.a.lock:
                self.a.media.append((json.loads(r)["content_uri"], hashlib.sha256(data).hexdigest()))

    def _account_data(self, client, _, i):
        user, token = self.a.users[i % USERS]
        n = next(self.a.next_n)  # increasing across crashes
        path = f"/_matrix/client/v3/user/{q(user)}/account_data/org.example.counter"
        if client.call("PUT", path, {"n": n}, token)[0] == 200:
            with self.a.lock:
                self.a.counters[user] = max(n, self.a.counters.get(user, 0))
                self.a.counter_writes += 1

    def halt(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def lost_writes(port, a):
    """{kind: how many acknowledged writes the restarted server does not have}."""
    tokens, owner, local = dict(a.users), a.users[0][1] if a.users else None, threading.local()
    checks = [("registrations", "/_matrix/client/v3/account/whoami", token,
               lambda r, user=user: json.loads(r)["user_id"] == user) for user, token in a.users]
    checks += [("messages", f"/_matrix/client/v3/rooms/{q(a.room)}/event/{q(event_id)}", owner, lambda r: True)
               for event_id in a.events]
    checks += [("uploads", f"/_matrix/client/v1/media/download/test/{q(mxc.rsplit('/', 1)[1])}", owner,
                lambda r, digest=digest: hashlib.sha256(r).hexdigest() == digest) for mxc, digest in a.media]
    checks += [("account-data", f"/_matrix/client/v3/user/{q(user)}/account_data/org.example.counter", tokens[user],
                lambda r, n=n: json.loads(r)["n"] >= n) for user, n in a.counters.items()]

    def there(check):
        local.client = getattr(local, "client", None) or Client(port)
        status, body = local.client.call("GET", check[1], token=check[2])
        return (status == 200 and check[3](body)), status, body

    lost = dict.fromkeys(KINDS, 0)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for check, (ok, status, body) in zip(checks, pool.map(there, checks)):
            lost[check[0]] += not ok
            if not ok:
                # What the restarted server answered, to tell a lost write from a refused read.
                print(f"  not there: {check[0]} {check[1]} -> {status} {body[:200]!r}", flush=True)
    return lost


def crash(mnt, image, server, load, after):
    """Lets `load` run `after` seconds, then cuts the power under it: the server is frozen, the
    filesystem aborted, the server killed, the image unmounted and mounted again.

    Frozen first because a power cut is an instant and `mount -o remount,abort` is not: it takes
    some 15 ms, and an fsync that returns inside that window may still be undone by the abort
    (acknowledged writes lost this way were all answered in the last milliseconds of the
    `mount` command, about one round in ten). SIGSTOP makes the cut the moment the server stops:
    a system call in progress finishes, nothing more is answered, and what only reached the page
    cache is still lost (`--synchronous normal` still loses hundreds of writes)."""
    time.sleep(after)
    server.proc.send_signal(signal.SIGSTOP)
    run("mount", "-o", "remount,abort", mnt)
    server.kill()
    load.halt()
    unmount(mnt)
    run("mount", "-o", "loop", image, mnt)


def summary(a, lost):
    return (f"{len(a.users)} registrations, {len(a.events)} messages, {len(a.media)} uploads, "
            f"{a.counter_writes} account-data writes acknowledged; lost: "
            + ", ".join(f"{lost.get(kind, 0)} {kind}" for kind in KINDS))


def failed(number, why, server):
    print(f"round {number}: FAILED: {why}; the server said:\n  " + "\n  ".join(server.tail), flush=True)
    return False


def one_round(number, args, work):
    """One round on a new filesystem; True if nothing acknowledged was lost."""
    image, mnt = os.path.join(work, "fs.img"), os.path.join(work, "mnt")
    data, acked, started, server, lost = os.path.join(mnt, "server"), Acked(), time.time(), None, {}
    new_filesystem(image, mnt, 1 << 30)
    try:
        os.makedirs(os.path.join(data, "data"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with open(os.path.join(data, "homeserver.yaml"), "w") as f:
            f.write(CONFIG.replace("PORT", str(port)).replace("SYNCHRONOUS", args.synchronous))
        os.sync()  # the operator's setup is on disk before the server first runs
        for crash_number, seconds in ((1, random.uniform(0.2, 1.0)), (2, args.seconds)):
            server = Server(data)
            if not server.wait_ready():
                return failed(number, f"the server did not start before crash {crash_number}", server)
            crash(mnt, image, server, Load(port, acked), seconds)
            server = Server(data)
            if not server.wait_ready():
                return failed(number, f"the server did not start again after crash {crash_number}", server)
            try:
                lost = lost_writes(port, acked)
            except Exception as e:
                return failed(number, f"checking after crash {crash_number}: {e!r}", server)
            server.kill()
            print(f"  after crash {crash_number} ({seconds:.1f}s after listening), so far: {summary(acked, lost)}",
                  flush=True)
        print(f"round {number}: power-loss (synchronous={args.synchronous}): {summary(acked, lost)} "
              f"({time.time() - started:.1f}s)", flush=True)
        return not any(lost.values())
    finally:
        if server:
            server.kill()
        unmount(mnt, check=False)
        os.remove(image)


def why_not(work):
    """Why this machine cannot run the test (no root, no loop devices, ...), or None."""
    if os.geteuid() != 0:
        return "not root (mounting a loop device needs root)"
    if not os.access(BIN, os.X_OK):
        return f"no server binary at {BIN}"
    try:
        new_filesystem(os.path.join(work, "probe.img"), os.path.join(work, "probe"), 64 << 20)
        run("umount", os.path.join(work, "probe"))
    except subprocess.CalledProcessError as e:
        return f"{' '.join(e.cmd)}: {e.stderr.decode(errors='replace').strip()}"
    except OSError as e:
        return str(e)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0, help="load before the second crash of a round")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="myelin-power-loss-")
    try:
        reason = why_not(work)
        if reason:
            print(f"SKIPPED: {reason}")
            sys.exit(0 if os.environ.get("POWER_LOSS_ALLOW_SKIP") == "1" else 2)
        ok = [one_round(number, args, work) for number in range(1, args.rounds + 1)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if all(ok) else 1)


if __name__ == "__main__":
    main()
