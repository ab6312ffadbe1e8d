#!/usr/bin/env python3
"""How fast `myelin import-synapse` moves a big Synapse database, and at what memory cost.

  bench/import_synapse.py [--rooms 10000] [--events 100] [--keep DIR]

A real Synapse 1.163.2 (tests/synapse/.venv) is started once with a generated config and
stopped, so the database has Synapse's real schema (version 94). The rooms are then written
straight into its tables as Synapse lays them out (events, event_json, state groups as deltas,
current state, forward extremities, memberships): each room has its create event, its creator's
join, power levels, join rules, history visibility, and then messages up to --events events in
all. The events are well-formed but not signed (the import does not check signatures, as
Synapse did when it stored them). Then `target/release/myelin import-synapse` runs into a new
Myelin SQLite database under /usr/bin/time, and the script prints events per second and peak
RSS, the figures docs/benchmarks.md quotes.
"""

import argparse, json, os, random, shutil, sqlite3, string, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SYNAPSE_PY = os.path.join(ROOT, "tests", "synapse", ".venv", "bin", "python")
MYELIN = os.environ.get("MYELIN_BIN") or os.path.join(ROOT, "target", "release", "myelin")
SERVER = "bench.test"


def rand_id(n=43):
    return "".join(random.choice(string.ascii_letters + string.digits) for _ in range(n))


def synapse_schema(work):
    """A stopped Synapse's directory: config, empty database with the real schema, signing key."""
    config = os.path.join(work, "homeserver.yaml")
    subprocess.run([SYNAPSE_PY, "-m", "synapse.app.homeserver", "--generate-config", "--server-name", SERVER,
                    "--config-path", config, "--report-stats=no", "--data-directory", work],
                   check=True, capture_output=True, cwd=work)
    # Synapse creates its schema when it starts; it is stopped as soon as it listens.
    subprocess.run([SYNAPSE_PY, "-c", "import sys, yaml; p = sys.argv[1]; c = yaml.safe_load(open(p)); "
                    "c['listeners'][0]['port'] = int(sys.argv[2]); c['listeners'][0]['bind_addresses'] = "
                    "['127.0.0.1']; yaml.safe_dump(c, open(p, 'w'))", config, str(free_port())], check=True)
    proc = subprocess.Popen([SYNAPSE_PY, "-m", "synapse.app.homeserver", "-c", config], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = os.path.join(work, "homeserver.db")
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(1)
        try:
            with sqlite3.connect(db) as c:
                if c.execute("SELECT count(*) FROM sqlite_master WHERE name = 'event_json'").fetchone()[0]:
                    time.sleep(3)
                    break
        except sqlite3.Error:
            pass
    proc.terminate()
    proc.wait(60)
    return config, db


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill(db, rooms, events_per_room, server=SERVER):
    """Writes the rooms into Synapse's tables (after what is there); returns how many events."""
    c = sqlite3.connect(db)
    c.execute("PRAGMA synchronous = OFF")
    users = [f"@user{i}:{server}" for i in range(max(1, rooms // 10))]
    for u in users:
        c.execute("INSERT INTO users (name, password_hash, creation_ts, admin, is_guest, deactivated) "
                  "VALUES (?, NULL, 0, 0, 0, 0)", (u,))
        c.execute("INSERT INTO profiles (user_id, full_user_id, displayname) VALUES (?, ?, ?)",
                  (u.split(":")[0][1:], u, u[1:]))
    stream = c.execute("SELECT coalesce(max(stream_ordering), 0) + 1 FROM events").fetchone()[0]
    group = c.execute("SELECT coalesce(max(id), 0) + 1 FROM state_groups").fetchone()[0]
    total, ts = 0, 1_700_000_000_000
    for r in range(rooms):
        room = "!" + rand_id(18) + ":" + server
        creator = users[r % len(users)]
        c.execute("INSERT INTO rooms (room_id, is_public, creator, room_version) VALUES (?, 0, ?, '10')",
                  (room, creator))
        state, prev, depth, state_group = {}, [], 0, None
        templates = [("m.room.create", "", {"creator": creator, "room_version": "10"}),
                     ("m.room.member", creator, {"membership": "join", "displayname": creator[1:]}),
                     ("m.room.power_levels", "", {"users": {creator: 100}}),
                     ("m.room.join_rules", "", {"join_rule": "invite"}),
                     ("m.room.history_visibility", "", {"history_visibility": "shared"})]
        for n in range(events_per_room):
            kind, key, content = templates[n] if n < len(templates) else \
                ("m.room.message", None, {"msgtype": "m.text", "body": f"message {n} in room {r}"})
            depth += 1
            ts += 1
            event_id = "$" + rand_id()
            auth = [state[k] for k in [("m.room.create", ""), ("m.room.power_levels", ""),
                                       ("m.room.member", creator)] if k in state]
            pdu = {"auth_events": auth, "prev_events": prev, "type": kind, "room_id": room, "sender": creator,
                   "content": content, "depth": depth, "origin_server_ts": ts,
                   "hashes": {"sha256": rand_id()}, "signatures": {server: {"ed25519:a_bench": rand_id(86)}}}
            if key is not None:
                pdu["state_key"] = key
            c.execute("INSERT INTO events (stream_ordering, topological_ordering, event_id, type, room_id, content, "
                      "processed, outlier, depth, origin_server_ts, received_ts, sender, state_key) "
                      "VALUES (?, ?, ?, ?, ?, ?, 1, 0, ?, ?, ?, ?, ?)",
                      (stream, depth, event_id, kind, room, json.dumps(content), depth, ts, ts, creator, key))
            c.execute("INSERT INTO event_json (event_id, room_id, internal_metadata, json, format_version) "
                      "VALUES (?, ?, '{}', ?, 3)", (event_id, room, json.dumps(pdu)))
            if key is not None:
                # A new state group: a delta on the previous one, as Synapse stores them.
                state[(kind, key)] = event_id
                c.execute("INSERT INTO state_groups (id, room_id, event_id) VALUES (?, ?, ?)", (group, room, event_id))
                c.execute("INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id) "
                          "VALUES (?, ?, ?, ?, ?)", (group, room, kind, key, event_id))
                if state_group is not None:
                    c.execute("INSERT INTO state_group_edges (state_group, prev_state_group) VALUES (?, ?)",
                              (group, state_group))
                state_group, group = group, group + 1
                c.execute("INSERT INTO current_state_events (event_id, room_id, type, state_key, membership, "
                          "event_stream_ordering) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (room_id, type, state_key) "
                          "DO UPDATE SET event_id = excluded.event_id", (event_id, room, kind, key,
                                                                          content.get("membership"), stream))
                if kind == "m.room.member":
                    c.execute("INSERT INTO room_memberships (event_id, user_id, sender, room_id, membership, "
                              "event_stream_ordering) VALUES (?, ?, ?, ?, 'join', ?)",
                              (event_id, key, creator, room, stream))
            c.execute("INSERT INTO event_to_state_groups (event_id, state_group) VALUES (?, ?)",
                      (event_id, state_group))
            prev, stream, total = [event_id], stream + 1, total + 1
        c.execute("INSERT INTO event_forward_extremities (event_id, room_id) VALUES (?, ?)", (prev[0], room))
        if r % 1000 == 999:
            c.commit()
            print(f"  {r + 1} rooms written", file=sys.stderr, flush=True)
    c.commit()
    c.close()
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=10000)
    parser.add_argument("--events", type=int, default=100, help="events per room (at least 5)")
    parser.add_argument("--keep", help="leave the databases in this directory")
    parser.add_argument("--fill", metavar="DB", help="only add the rooms to this Synapse database (tests use it)")
    parser.add_argument("--server", default=SERVER, help="with --fill: the server name")
    args = parser.parse_args()
    if args.fill:
        print(fill(args.fill, args.rooms, max(5, args.events), args.server))
        return
    work = args.keep or tempfile.mkdtemp(prefix="myelin-import-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        synapse_dir, myelin_dir = os.path.join(work, "synapse"), os.path.join(work, "myelin")
        for d in (synapse_dir, myelin_dir):
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
        config, db = synapse_schema(synapse_dir)
        started = time.time()
        total = fill(db, args.rooms, max(5, args.events))
        size = os.path.getsize(db) >> 20
        print(f"Synapse database: {args.rooms} rooms, {total} events, {size} MiB "
              f"(written in {time.time() - started:.0f} s)", flush=True)
        myelin_config = os.path.join(myelin_dir, "homeserver.yaml")
        subprocess.run([MYELIN, "-c", myelin_config, "generate-config", "--server-name", SERVER], check=True,
                       capture_output=True)
        started = time.time()
        run = subprocess.run(["/usr/bin/time", "-v", MYELIN, "-c", myelin_config, "import-synapse",
                              "--synapse-config", config], capture_output=True, text=True)
        seconds = time.time() - started
        if run.returncode != 0:
            sys.exit(f"import failed:\n{run.stdout}\n{run.stderr}")
        rss = next(int(l.split(":")[1]) for l in run.stderr.splitlines() if "Maximum resident set size" in l)
        print(run.stdout)
        print(f"import-synapse: {total} events in {seconds:.1f} s = {total / seconds:,.0f} events/s; "
              f"peak RSS {rss / 1024:.0f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
