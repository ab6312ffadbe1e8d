#!/usr/bin/env python3
"""Differential test of Matrix history visibility.

Runs one fixed scenario against a homeserver's Client-Server API and prints a
single JSON object describing which messages (labelled m1..m4) each kind of
user can see on each read path (/messages, /event, /context, /search, /sync,
/initialSync, /members, /state, /relations, /threads), for each history_visibility
setting.

The output holds only server-independent data (labels, status codes and
errcodes), so the output of a run against Synapse can be compared for
equality with the output of a run against Myelin.

Usage: python3 matrix.py BASE_URL      (e.g. http://127.0.0.1:8008)

The server needs open registration, guest access and no rate limits.
Standard library only.
"""

import json
import random
import string
import sys
import urllib.error
import urllib.parse
import urllib.request

VISIBILITIES = ["world_readable", "shared", "invited", "joined"]
ROLES = ["alice", "erin", "gus", "ivan", "lena", "bart", "nina"]
LABELS = ["m1", "m2", "m3", "m4"]
SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 50}, "include_leave": True}})
TIMEOUT = 30


class ApiError(Exception):
    """A non-2xx answer; str() is "<status> <errcode>"."""

    def __init__(self, status, errcode):
        super().__init__(f"{status} {errcode}")
        self.status = status
        self.errcode = errcode


def rand_word(n=10):
    return "".join(random.choice(string.ascii_lowercase) for _ in range(n))


def q(part):
    return urllib.parse.quote(part, safe="")


class Client:
    def __init__(self, base, token=None, user_id=None):
        self.base = base.rstrip("/")
        self.token = token
        self.user_id = user_id

    def request(self, method, path, body=None, params=None):
        """Returns (status, parsed JSON or None)."""
        # Paths under v1 name their version; the others are v3.
        url = self.base + (path[len("v1:"):] if path.startswith("v1:") else "/_matrix/client/v3" + path)
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            parsed = json.loads(raw.decode("utf-8")) if raw else None
        except ValueError:
            parsed = None
        return status, parsed

    def call(self, method, path, body=None, params=None):
        """Like request() but raises ApiError unless the answer is 200 + JSON object."""
        status, parsed = self.request(method, path, body, params)
        if status != 200:
            errcode = parsed.get("errcode", "?") if isinstance(parsed, dict) else "non-json"
            raise ApiError(status, errcode)
        if not isinstance(parsed, dict):
            raise ValueError("non-JSON answer")
        return parsed


def register(base, name):
    c = Client(base)
    body = {"username": f"{name}_{rand_word(8)}", "password": "pw-" + rand_word(12),
            "auth": {"type": "m.login.dummy"}}
    status, resp = c.request("POST", "/register", body)
    if status == 401 and isinstance(resp, dict) and "session" in resp:
        body["auth"]["session"] = resp["session"]
        status, resp = c.request("POST", "/register", body)
    if status != 200:
        raise RuntimeError(f"register {name}: {status} {resp}")
    return Client(base, resp["access_token"], resp["user_id"])


def register_guest(base):
    resp = Client(base).call("POST", "/register", {}, {"kind": "guest"})
    return Client(base, resp["access_token"], resp["user_id"])


class Room:
    """One room of the scenario: its ID, its search token and m1..m4's IDs."""

    def __init__(self, vis):
        self.vis = vis
        self.token = rand_word(14)
        self.room_id = None
        self.event_ids = {}
        self.erin_since = None

    def path(self, suffix=""):
        return f"/rooms/{q(self.room_id)}{suffix}"

    def send(self, alice, label):
        body = {"msgtype": "m.text", "body": f"{self.vis}-{label} {self.token}"}
        # m2..m4 are replies in a thread under m1, for /relations and /threads.
        if label != "m1":
            body["m.relates_to"] = {"rel_type": "m.thread", "event_id": self.event_ids["m1"]}
        txn = rand_word(16)
        resp = alice.call("PUT", self.path(f"/send/m.room.message/{txn}"), body)
        self.event_ids[label] = resp["event_id"]

    def label_of(self, event):
        """The label m1..m4 of a message event of this room, or None."""
        if not isinstance(event, dict) or event.get("type") != "m.room.message":
            return None
        body = (event.get("content") or {}).get("body")
        if not isinstance(body, str) or not body.endswith(" " + self.token):
            return None
        label = body[: -len(self.token) - 1].rsplit("-", 1)[-1]
        return label if label in LABELS else None

    def labels(self, events):
        found = {self.label_of(e) for e in events or []}
        return sorted(found - {None})


def setup_room(u, room):
    alice = u["alice"]
    state = [
        ("m.room.history_visibility", {"history_visibility": room.vis}),
        ("m.room.guest_access", {"guest_access": "can_join"}),
        ("m.room.join_rules", {"join_rule": "public"}),
    ]
    create = {"preset": "private_chat",
              "initial_state": [{"type": t, "state_key": "", "content": c} for t, c in state]}
    room.room_id = alice.call("POST", "/createRoom", create)["room_id"]
    for name in ("lena", "bart"):
        alice.call("POST", room.path("/invite"), {"user_id": u[name].user_id})
        u[name].call("POST", room.path("/join"), {})
    room.send(alice, "m1")
    room.send(alice, "m2")
    u["lena"].call("POST", room.path("/leave"), {})
    alice.call("POST", room.path("/ban"), {"user_id": u["bart"].user_id, "reason": "test"})
    alice.call("POST", room.path("/invite"), {"user_id": u["ivan"].user_id})
    room.send(alice, "m3")
    room.erin_since = u["erin"].call("GET", "/sync", params={"timeout": "0"})["next_batch"]
    u["erin"].call("POST", f"/join/{q(room.room_id)}", {})
    u["gus"].call("POST", f"/join/{q(room.room_id)}", {})
    room.send(alice, "m4")


# ---- read paths: each takes (client, room) and returns a JSON-able value ----

def read_messages(direction):
    def read(c, room):
        seen, params = set(), {"dir": direction, "limit": "100"}
        for _ in range(10):
            resp = c.call("GET", room.path("/messages"), params=params)
            chunk = resp.get("chunk") or []
            seen.update(room.labels(chunk))
            if not chunk or not resp.get("end"):
                break
            params = dict(params, **{"from": resp["end"]})
        return sorted(seen)
    return read


def read_event(c, room):
    visible = []
    for label in LABELS:
        status, resp = c.request("GET", room.path(f"/event/{q(room.event_ids[label])}"))
        if status == 200 and room.label_of(resp) == label:
            visible.append(label)
    return visible


def read_context(c, room):
    resp = c.call("GET", room.path(f"/context/{q(room.event_ids['m2'])}"), params={"limit": "10"})
    events = [resp.get("event")] + (resp.get("events_before") or []) + (resp.get("events_after") or [])
    return room.labels(events)


def read_search(c, room):
    body = {"search_categories": {"room_events": {
        "search_term": room.token, "filter": {"rooms": [room.room_id]}}}}
    resp = c.call("POST", "/search", body)
    results = resp["search_categories"]["room_events"].get("results") or []
    return room.labels([r.get("result") for r in results])


def sync_sections(room, resp, sections):
    rooms = resp.get("rooms") or {}
    out = {}
    for section in sections:
        entry = (rooms.get(section) or {}).get(room.room_id)
        if entry is not None:
            out[section] = room.labels((entry.get("timeline") or {}).get("events"))
    return out or "absent"


def read_sync_initial(c, room):
    resp = c.call("GET", "/sync", params={"timeout": "0", "filter": SYNC_FILTER})
    return sync_sections(room, resp, ["join", "leave"])


def read_sync_incremental(c, room):
    params = {"since": room.erin_since, "timeout": "0", "filter": SYNC_FILTER}
    resp = c.call("GET", "/sync", params=params)
    result = sync_sections(room, resp, ["join"])
    return result["join"] if isinstance(result, dict) else result


def read_initial_sync_room(c, room):
    resp = c.call("GET", room.path("/initialSync"))
    return room.labels((resp.get("messages") or {}).get("chunk"))


def read_members(c, room):
    c.call("GET", room.path("/members"))
    return "200"


def read_state(c, room):
    # The answer is a JSON list, which call() does not take.
    status, parsed = c.request("GET", room.path("/state"))
    if status != 200:
        errcode = parsed.get("errcode", "?") if isinstance(parsed, dict) else "non-json"
        return f"{status} {errcode}"
    return "200" if isinstance(parsed, list) else "200 non-list"


def read_relations(c, room):
    resp = c.call("GET", "v1:/_matrix/client/v1" + room.path(f"/relations/{q(room.event_ids['m1'])}"),
                  params={"limit": "50"})
    return room.labels(resp.get("chunk"))


def read_threads(c, room):
    resp = c.call("GET", "v1:/_matrix/client/v1" + room.path("/threads"))
    return room.labels(resp.get("chunk"))


PATHS = {
    "messages_b": read_messages("b"),
    "messages_f": read_messages("f"),
    "event": read_event,
    "context": read_context,
    "search": read_search,
    "sync_initial": read_sync_initial,
    "sync_incremental": read_sync_incremental,
    "initial_sync_room": read_initial_sync_room,
    "members": read_members,
    "state": read_state,
    "relations": read_relations,
    "threads": read_threads,
}


def safe(fn, *args):
    try:
        return fn(*args)
    except ApiError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 -- any failure becomes this path's value
        return f"error: {type(e).__name__}: {str(e)[:80]}"


def observe(u, room):
    result = {}
    for role in ROLES:
        views = {}
        for name, fn in PATHS.items():
            if name == "sync_incremental" and role != "erin":
                continue
            views[name] = safe(fn, u[role], room)
        result[role] = views
    return result


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: matrix.py BASE_URL")
    base = sys.argv[1]
    u = {name: register(base, name) for name in ROLES if name != "gus"}
    u["gus"] = register_guest(base)
    rooms = [Room(v) for v in VISIBILITIES]
    output = {}
    for room in rooms:
        try:
            setup_room(u, room)
        except Exception as e:  # noqa: BLE001
            output[room.vis] = {"setup_error": f"{type(e).__name__}: {str(e)[:120]}"}
    for room in rooms:
        if room.vis not in output:
            output[room.vis] = observe(u, room)
    print(json.dumps(output, sort_keys=True, indent=1))


if __name__ == "__main__":
    main()
