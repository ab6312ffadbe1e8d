#!/usr/bin/env python3
"""End-to-end driver: Heisenbridge (a Matrix application service) bridging a homeserver and
Debian's ngircd, checked with a raw IRC client on one side and a Matrix user on the other.

Run it with the Python of tests/appservice/.venv (which has heisenbridge installed).

  generate --url http://127.0.0.1:PORT --out reg.yaml
      Writes a registration file with Heisenbridge's own `--generate`, for a bridge that will
      listen on 127.0.0.1:PORT.
  ircd --dir DIR [--port P]
      Writes an ngircd config into DIR and runs ngircd in the foreground (for trying by hand).
  run --homeserver http://127.0.0.1:HSPORT --registration reg.yaml [--server-name localhost]
      Starts ngircd and Heisenbridge, registers a Matrix user, drives the bridge through its
      bot and checks that messages cross in both directions. Exits 0 on success, 1 with a
      "FAILED: ..." line (and the logs' tails) otherwise. Stops its children on any exit.

Only the standard library is used for HTTP and IRC; Matrix calls are plain client-server API.
"""

import argparse
import ctypes
import json
import os
import random
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

NGIRCD = shutil.which("ngircd") or "/usr/sbin/ngircd"
START = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - START:6.1f}s] {msg}", flush=True)


class Failure(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    # Children get SIGTERM if this driver dies, even by SIGKILL.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# ---------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------


class Child:
    def __init__(self, name, argv, logpath, env=None):
        self.name = name
        self.logpath = logpath
        self.logfile = open(logpath, "wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            env=env,
        )
        log(f"started {name} (pid {self.proc.pid}): {' '.join(argv)}")

    def log_text(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def tail(self, lines=60):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.logfile.close()


def wait_until(what, predicate, timeout, children=(), pause=lambda seconds_left: time.sleep(0.1)):
    """Polls `predicate` until it is truthy (returning it), failing if a child process dies or
    `timeout` passes; `pause` waits between polls (given the seconds left)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        for c in children:
            if not c.alive():
                raise Failure(f"{c.name} exited (code {c.proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise Failure(f"timed out after {timeout:.0f}s waiting for {what}")
        pause(deadline - time.monotonic())


# ---------------------------------------------------------------------------------------------
# ngircd
# ---------------------------------------------------------------------------------------------


def write_ngircd_conf(directory, port):
    os.makedirs(directory, exist_ok=True)
    include = os.path.join(directory, "ngircd.conf.d")
    os.makedirs(include, exist_ok=True)
    # ngircd drops root to "nobody", which must be able to read its config.
    for p in (directory, include):
        os.chmod(p, 0o755)
    path = os.path.join(directory, "ngircd.conf")
    with open(path, "w") as f:
        f.write(
            f"""[Global]
\tName = irc.myelin.test
\tInfo = Myelin appservice test IRC server
\tAdminInfo1 = test
\tAdminInfo2 = test
\tAdminEMail = test@invalid
\tListen = 127.0.0.1
\tPorts = {port}
\tMotdPhrase = Myelin appservice test
\tHelpFile = /dev/null

[Limits]
\tMaxConnections = 0
\tMaxConnectionsIP = 0
\tMaxJoins = 0
\tMaxNickLength = 30
\tPingTimeout = 300
\tPongTimeout = 60

[Options]
\tDNS = no
\tIdent = no
\tPAM = no
\tRequireAuthPing = no
\tIncludeDir = {include}
"""
        )
    os.chmod(path, 0o644)
    return path


def start_ngircd(directory):
    port = free_port()
    conf = write_ngircd_conf(directory, port)
    # ngircd drops root to "nobody", which clears the parent-death signal; a small sh keeps it
    # and stops ngircd when it gets it (or when this driver stops it).
    sitter = 'ngircd="$1"; shift; "$ngircd" "$@" & p=$!; trap \'kill "$p"; wait "$p"; exit 0\' TERM INT HUP; wait "$p"'
    child = Child(
        "ngircd", ["/bin/sh", "-c", sitter, "sh", NGIRCD, "-n", "-f", conf], os.path.join(directory, "ngircd.log")
    )
    wait_until(
        f"ngircd to listen on 127.0.0.1:{port}",
        lambda: "Now listening on" in child.log_text() and "ready" in child.log_text(),
        15,
        [child],
    )
    return child, port


# ---------------------------------------------------------------------------------------------
# A raw IRC client
# ---------------------------------------------------------------------------------------------


class IrcClient:
    def __init__(self, port, nick):
        self.nick = nick
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.settimeout(None)
        self.lines = []
        self.lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._reader, daemon=True)
        self.thread.start()
        self.send(f"NICK {nick}")
        self.send(f"USER {nick} 0 * :Raw IRC test client")

    def send(self, line):
        self.sock.sendall(line.encode("utf-8") + b"\r\n")

    def _reader(self):
        buf = b""
        try:
            while True:
                data = self.sock.recv(4096)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    line = raw.rstrip(b"\r").decode("utf-8", "replace")
                    if line.startswith("PING"):
                        self.send("PONG" + line[4:])
                    with self.lock:
                        self.lines.append(line)
        except OSError:
            pass
        self.closed = True

    def find(self, pattern):
        rx = re.compile(pattern)
        with self.lock:
            for line in self.lines:
                m = rx.search(line)
                if m:
                    return m
        return None

    def wait(self, what, pattern, timeout, children=()):
        return wait_until(f"IRC: {what}", lambda: self.find(pattern), timeout, children)

    def close(self):
        try:
            self.send("QUIT :bye")
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# A Matrix client (plain client-server API, urllib)
# ---------------------------------------------------------------------------------------------


class MatrixClient:
    def __init__(self, base):
        self.base = base.rstrip("/")
        self.token = None
        self.user_id = None
        self.since = None
        self.txn = 0
        self.events = {}  # room_id -> [timeline events]
        self.invites = {}  # room_id -> [stripped state events]
        self.joined = set()

    def request(self, method, path, body=None, timeout=30, ok=(200,)):
        url = self.base + path
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            raise Failure(f"{method} {path}: {e}")
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"raw": raw.decode("utf-8", "replace")}
        if ok is not None and status not in ok:
            raise Failure(f"{method} {path} -> {status}: {parsed}")
        return status, parsed

    def register(self, username, password):
        body = {"username": username, "password": password, "inhibit_login": False}
        status, resp = self.request("POST", "/_matrix/client/v3/register", body, ok=(200, 401))
        if status == 401:
            if not any("m.login.dummy" in f.get("stages", []) for f in resp.get("flows", [])):
                raise Failure(f"registration offers no m.login.dummy flow: {resp}")
            body["auth"] = {"type": "m.login.dummy"}
            if "session" in resp:
                body["auth"]["session"] = resp["session"]
            status, resp = self.request("POST", "/_matrix/client/v3/register", body)
        self.token = resp["access_token"]
        self.user_id = resp["user_id"]
        return self.user_id

    def sync(self, timeout_ms=1000):
        q = {"timeout": str(timeout_ms)}
        if self.since:
            q["since"] = self.since
        _, resp = self.request(
            "GET", "/_matrix/client/v3/sync?" + urllib.parse.urlencode(q), timeout=timeout_ms / 1000 + 30
        )
        self.since = resp.get("next_batch", self.since)
        rooms = resp.get("rooms", {})
        for room_id, room in rooms.get("join", {}).items():
            self.joined.add(room_id)
            self.invites.pop(room_id, None)
            for ev in room.get("timeline", {}).get("events", []):
                self.events.setdefault(room_id, []).append(ev)
        for room_id, room in rooms.get("invite", {}).items():
            if room_id not in self.joined:
                self.invites[room_id] = room.get("invite_state", {}).get("events", [])

    def wait(self, what, predicate, timeout, children=()):
        # Between polls, a long-polling /sync brings what may satisfy the predicate.
        return wait_until(what, predicate, timeout, children,
                          pause=lambda left: self.sync(timeout_ms=int(min(1000, max(0, left) * 1000))))

    def find_event(self, room_id, predicate):
        for ev in self.events.get(room_id, []):
            if predicate(ev):
                return ev
        return None

    def wait_event(self, what, room_id, predicate, timeout, children=()):
        return self.wait(what, lambda: self.find_event(room_id, predicate), timeout, children)

    def create_room(self, body):
        _, resp = self.request("POST", "/_matrix/client/v3/createRoom", body)
        return resp["room_id"]

    def join(self, room_id):
        self.request("POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room_id, safe='')}", {})
        self.joined.add(room_id)
        self.invites.pop(room_id, None)

    def send_text(self, room_id, body):
        self.txn += 1
        path = (
            f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id, safe='')}/send/m.room.message/"
            f"t{int(time.time() * 1000)}.{self.txn}"
        )
        _, resp = self.request("PUT", path, {"msgtype": "m.text", "body": body})
        return resp["event_id"]


def is_notice_from(sender, contains):
    def pred(ev):
        c = ev.get("content", {})
        return (
            ev.get("type") == "m.room.message"
            and ev.get("sender") == sender
            and c.get("msgtype") == "m.notice"
            and contains in c.get("body", "")
        )

    return pred


def invite_named(client, contains):
    for room_id, state in client.invites.items():
        for ev in state:
            if ev.get("type") == "m.room.name" and contains in ev.get("content", {}).get("name", ""):
                return room_id
    return None


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------


def load_registration(path):
    from ruamel.yaml import YAML  # comes with mautrix

    with open(path) as f:
        return YAML(typ="safe").load(f)


def cmd_generate(args):
    url = urllib.parse.urlparse(args.url)
    if not url.port:
        sys.exit("--url needs an explicit port, e.g. http://127.0.0.1:9898")
    if os.path.exists(args.out):
        os.unlink(args.out)
    argv = [
        sys.executable,
        "-m",
        "heisenbridge",
        "--generate-compat" if args.compat else "--generate",
        "-c",
        args.out,
        "-l",
        url.hostname or "127.0.0.1",
        "-p",
        str(url.port),
    ]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"heisenbridge --generate failed: {out.stdout}{out.stderr}")
    print(open(args.out).read(), end="")


def cmd_bridge(args):
    """Runs Heisenbridge in this process, logging each transaction the homeserver pushes to it
    (one "TXN <id> <json>" line each) before mautrix handles it."""
    import mautrix.appservice.as_handler as as_handler

    original = as_handler.AppServiceServerMixin._read_transaction_header

    async def logged(self, request):
        txn_id, data = await original(self, request)
        print(f"TXN {txn_id} {json.dumps(data, sort_keys=True)}", flush=True)
        return txn_id, data

    as_handler.AppServiceServerMixin._read_transaction_header = logged
    import heisenbridge.__main__ as hb

    sys.argv = ["heisenbridge"] + args.bridge_args
    hb.main()


def cmd_ircd(args):
    port = args.port or free_port()
    conf = write_ngircd_conf(os.path.abspath(args.dir), port)
    print(f"ngircd on 127.0.0.1:{port}, config {conf}", flush=True)
    os.execv(NGIRCD, [NGIRCD, "-n", "-f", conf])


# ---------------------------------------------------------------------------------------------
# The flow
# ---------------------------------------------------------------------------------------------


def flow(args, workdir, children):
    reg = load_registration(args.registration)
    bot_id = f"@{reg['sender_localpart']}:{args.server_name}"
    puppet_ns = [
        ns["regex"]
        for ns in reg["namespaces"]["users"]
        if ns["regex"].split(":")[0] != f"@{reg['sender_localpart']}"
    ][0]
    prefix = re.match(r"^@(.+[_/])\.[*+]", puppet_ns).group(1)
    bridge_url = urllib.parse.urlparse(reg["url"])
    suffix = "".join(random.choice(string.digits) for _ in range(4))
    network = "testnet"
    channel = args.channel
    irc_nick = f"ircpeer{suffix}"
    username = args.user or f"alice{suffix}"
    t = args.step_timeout

    # 1. The homeserver answers.
    mx = MatrixClient(args.homeserver)
    _, versions = mx.request("GET", "/_matrix/client/versions")
    log(f"homeserver {args.homeserver} speaks {versions.get('versions', [])[-3:]}")

    # 2. ngircd
    ircd, irc_port = start_ngircd(os.path.join(workdir, "ircd"))
    children.append(ircd)
    log(f"ngircd is listening on 127.0.0.1:{irc_port}")

    # 3. The raw IRC client joins the channel first.
    irc = IrcClient(irc_port, irc_nick)
    args._irc = irc
    irc.wait("welcome (001) for the raw client", rf"^:\S+ 001 {irc_nick} ", t, [ircd])
    irc.send(f"JOIN {channel}")
    irc.wait(f"raw client in {channel} (366)", rf"^:\S+ 366 {irc_nick} {re.escape(channel)} ", t, [ircd])
    log(f"raw IRC client {irc_nick} joined {channel}")

    # 4. Heisenbridge.
    bridge_argv = [sys.executable, os.path.abspath(__file__), "bridge", "-c", args.registration]
    bridge_argv += ["-v"] * args.bridge_verbosity
    bridge_argv += ["-l", bridge_url.hostname or "127.0.0.1", "-p", str(bridge_url.port or 9898)]
    bridge_argv.append(args.homeserver)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    bridge = Child("heisenbridge", bridge_argv, os.path.join(workdir, "heisenbridge.log"), env=env)
    children.append(bridge)
    wait_until(
        "Heisenbridge to finish starting ('bridge is now running!' in its log)",
        lambda: "bridge is now running!" in bridge.log_text(),
        args.start_timeout,
        [bridge],
    )
    log("Heisenbridge is running")
    procs = [ircd, bridge]

    # 5. A Matrix user.
    user_id = mx.register(username, "correct horse battery " + suffix)
    log(f"registered {user_id}")
    mx.sync(timeout_ms=0)

    # 6. A DM with the bridge bot; the first local user to invite it becomes its owner.
    control = mx.create_room({"preset": "trusted_private_chat", "is_direct": True, "invite": [bot_id]})
    log(f"created DM {control} inviting {bot_id}")
    mx.wait_event(
        f"{bot_id} to join the DM",
        control,
        lambda ev: ev.get("type") == "m.room.member"
        and ev.get("state_key") == bot_id
        and ev.get("content", {}).get("membership") == "join",
        t,
        procs,
    )
    mx.wait_event("the bot's greeting in the DM", control, is_notice_from(bot_id, "Howdy, stranger!"), t, procs)
    log("bot joined the DM and greeted")

    def command(room, text, expect, what=None):
        seen = len(mx.events.get(room, []))
        mx.send_text(room, text)
        log(f"-> {text}")

        def pred():
            for ev in mx.events.get(room, [])[seen:]:
                if is_notice_from(bot_id, expect)(ev):
                    return ev
            return None

        ev = mx.wait(what or f"reply containing {expect!r} to {text!r}", pred, t, procs)
        log(f"<- {ev['content']['body'].splitlines()[0]}")

    command(control, f"ADDNETWORK {network}", "Network added.")
    command(control, f"ADDSERVER {network} 127.0.0.1 {irc_port}", "Server added.")
    command(control, f"OPEN {network}", f"You have been invited to {network}")

    # 7. The network room the bot creates and invites us to.
    net_room = mx.wait(f"an invite to the {network} network room", lambda: invite_named(mx, network), t, procs)
    mx.join(net_room)
    log(f"joined network room {net_room}")
    mx.wait_event("the network room's help", net_room, is_notice_from(bot_id, "CONNECT"), t, procs)

    # 8. Connect to IRC; wait until the server has the bridge's nick online.
    command(net_room, "CONNECT", f"Connecting to 127.0.0.1:{irc_port}")
    bridge_nick = username
    deadline = time.monotonic() + t
    while not irc.find(rf"^:\S+ 303 {irc_nick} :.*\b{re.escape(bridge_nick)}\b"):
        if time.monotonic() > deadline:
            raise Failure(f"timed out waiting for the bridge's IRC user {bridge_nick} to come online")
        irc.send(f"ISON {bridge_nick}")
        mx.sync(timeout_ms=500)
    log(f"bridge's IRC user {bridge_nick} is online")
    mx.wait_event(
        "the IRC welcome relayed as a notice", net_room, is_notice_from(bot_id, "Welcome"), t, procs
    )
    log("IRC server welcome relayed to the network room")

    # 9. Join the channel through the bridge.
    mx.send_text(net_room, f"JOIN {channel}")
    log(f"-> JOIN {channel}")
    irc.wait(
        f"the bridge's nick to JOIN {channel}",
        rf"^:{re.escape(bridge_nick)}!\S+ JOIN :?{re.escape(channel)}\b",
        t,
        procs,
    )
    log(f"raw client saw {bridge_nick} join {channel}")
    chan_room = mx.wait(f"an invite to the {channel} portal room", lambda: invite_named(mx, channel), t, procs)
    mx.join(chan_room)
    log(f"joined portal room {chan_room}")

    # 10. Matrix -> IRC.
    to_irc = f"hello IRC from Matrix {suffix}"
    mx.send_text(chan_room, to_irc)
    log(f"Matrix user said {to_irc!r} in the portal room")
    irc.wait(
        "the Matrix user's message in the channel",
        rf"^:{re.escape(bridge_nick)}!\S+ PRIVMSG {re.escape(channel)} :{re.escape(to_irc)}$",
        t,
        procs,
    )
    log("PASS Matrix -> IRC: the raw client got it")

    # 11. IRC -> Matrix.
    to_mx = f"hello Matrix from IRC {suffix}"
    irc.send(f"PRIVMSG {channel} :{to_mx}")
    log(f"raw IRC client said {to_mx!r} in {channel}")
    puppet = f"@{prefix}{network}_{irc_nick}:{args.server_name}".lower()
    ev = mx.wait_event(
        "the IRC message in the portal room",
        chan_room,
        lambda ev: ev.get("type") == "m.room.message" and ev.get("content", {}).get("body") == to_mx,
        t,
        procs,
    )
    if ev["sender"] != puppet:
        raise Failure(f"IRC message arrived from {ev['sender']}, expected puppet {puppet}")
    log(f"PASS IRC -> Matrix: {ev['sender']} said it in {chan_room}")

    # 12. The puppet's display name was set by the bridge (masquerading as the puppet).
    def displayname():
        s, body = mx.request(
            "GET", f"/_matrix/client/v3/profile/{urllib.parse.quote(puppet, safe='')}/displayname", ok=None
        )
        return s == 200 and body.get("displayname") == irc_nick

    wait_until(f"{puppet}'s displayname to be {irc_nick!r}", displayname, t, procs)
    log(f"PASS puppet {puppet} has displayname {irc_nick!r}")


def cmd_run(args):
    args.registration = os.path.abspath(args.registration)
    if args.workdir:
        workdir = os.path.abspath(args.workdir)
        os.makedirs(workdir, exist_ok=True)
    else:
        workdir = tempfile.mkdtemp(prefix="heisenbridge-flow-")
    children = []
    args._irc = None

    def on_signal(signum, _frame):
        raise Failure(f"interrupted by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    ok = False
    try:
        flow(args, workdir, children)
        ok = True
    except Failure as e:
        log(f"FAILED: {e}")
    except Exception as e:  # a bug in the driver or a surprising reply: still report and clean up
        import traceback

        traceback.print_exc()
        log(f"FAILED: unexpected {type(e).__name__}: {e}")
    finally:
        if args._irc:
            if not ok:
                print("----- raw IRC client's last lines -----")
                with args._irc.lock:
                    print("\n".join(args._irc.lines[-30:]))
            args._irc.close()
        for c in reversed(children):
            c.stop()
            log(f"stopped {c.name} (pid {c.proc.pid})")
        if not ok:
            for c in children:
                print(f"----- {c.name} log tail ({c.logpath}) -----")
                print(c.tail(args.log_lines))
        if ok and not args.workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif ok:
            log(f"logs kept in {workdir}")
    if ok:
        log("ALL PASSED")
        return 0
    return 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="write a Heisenbridge registration file")
    g.add_argument("--url", required=True, help="where the bridge will listen, e.g. http://127.0.0.1:9898")
    g.add_argument("--out", required=True, help="registration YAML to write (overwritten)")
    g.add_argument(
        "--compat", action="store_true", help="use --generate-compat (adds @heisenbridge:.* to the user namespace)"
    )

    i = sub.add_parser("ircd", help="run ngircd in the foreground with this driver's config")
    i.add_argument("--dir", required=True)
    i.add_argument("--port", type=int, default=0, help="default: a free port")

    sub.add_parser("bridge", help="run Heisenbridge (all further args are its own), logging received transactions")

    r = sub.add_parser("run", help="run the whole flow against a running homeserver")
    r.add_argument("--homeserver", required=True, help="client API base URL, e.g. http://127.0.0.1:8008")
    r.add_argument("--registration", required=True, help="the registration file the homeserver loaded")
    r.add_argument("--server-name", default="localhost", help="the homeserver's server name (default localhost)")
    r.add_argument("--user", default=None, help="Matrix localpart to register (default alice + 4 digits)")
    r.add_argument("--channel", default="#myelin", help="IRC channel (default #myelin)")
    r.add_argument("--workdir", default=None, help="keep configs and logs here (default: temp dir)")
    r.add_argument("--keep", action="store_true", help="keep the temp dir on success too")
    r.add_argument("--step-timeout", type=float, default=20, help="seconds per step (default 20)")
    r.add_argument("--start-timeout", type=float, default=30, help="seconds for Heisenbridge to start")
    r.add_argument("--bridge-verbosity", type=int, default=2, help="number of -v for Heisenbridge (default 2)")
    r.add_argument("--log-lines", type=int, default=80, help="log lines shown per process on failure")

    if sys.argv[1:2] == ["bridge"]:  # everything after it goes to Heisenbridge untouched
        cmd_bridge(argparse.Namespace(bridge_args=sys.argv[2:]))
        return
    args = p.parse_args()
    if args.cmd == "generate":
        cmd_generate(args)
    elif args.cmd == "ircd":
        cmd_ircd(args)
    else:
        sys.exit(cmd_run(args))


if __name__ == "__main__":
    main()
