#!/usr/bin/env python3
"""Where Myelin's CPU goes in one workload: `bench/profile.py send|sync|sliding|herd`.

Starts a release Myelin on loopback (as bench/run.py does), sets up the workload, records it with
`perf record --call-graph dwarf`, and prints each thread's share and the functions with the
largest inclusive share of the samples (the numbers docs/benchmarks.md quotes). Needs `perf` and
a release build (bench/run.sh makes one); run it with the Synapse venv's Python (it has aiohttp).
"""

import asyncio
import collections
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402

# Frames worth naming: Myelin's own, SQLite's entry point, signing, JSON, HTTP.
INTERESTING = ("myelin", "sqlite3_step", "hash_and_sign_event", "ed25519", "serde_json::de::from_trait",
               "hyper::proto::h1::dispatch", "malloc", "pwrite", "__libc_pread")


async def record(pid: int, workload, out: Path):
    perf = subprocess.Popen(["perf", "record", "-F", "499", "--call-graph", "dwarf,16384", "-p", str(pid),
                             "-o", str(out)], stderr=subprocess.DEVNULL)
    await asyncio.sleep(0.5)
    await workload()
    perf.send_signal(2)
    perf.wait()


def summarise(data: Path, top=40):
    text = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True, text=True).stdout
    inclusive, threads, total = collections.Counter(), collections.Counter(), 0
    for sample in text.split("\n\n"):
        lines = sample.strip().split("\n")
        if len(lines) < 2:
            continue
        total += 1
        threads[lines[0].split()[0]] += 1
        frames = {" ".join(line.split()[1:-1]).split("+0x")[0][:120] for line in lines[1:]}
        for frame in frames:
            inclusive[frame] += 1
    print(f"{total} samples; by thread:", {k: f"{v * 100 / total:.0f}%" for k, v in threads.most_common()})
    shown = 0
    for frame, n in inclusive.most_common():
        if any(x in frame for x in INTERESTING):
            print(f"{n * 100 / total:5.1f}%  {frame}")
            shown += 1
            if shown == top:
                break


async def main(kind: str):
    t = R.Target("profile", 28480)
    d = R.WORK / "profile-data"
    subprocess.run(["rm", "-rf", str(d)])
    cmd = R.myelin_config(d, t.port)
    log = open(R.WORK / "profile.log", "w")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as s:
        t.proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=d)
        try:
            await t.wait_ready(s, time.monotonic())
            users = [await R.register(s, t, f"p{i}") for i in range(100 if kind == "herd" else 8)]
            a = users[0]
            room = (await R.call(s, "POST", t.base + "/_matrix/client/v3/createRoom", a["access_token"],
                                 {"preset": "public_chat"}))["room_id"]
            for u in users[1:]:
                await R.call(s, "POST", f"{t.base}/_matrix/client/v3/join/{room}", u["access_token"], {})
            if kind == "send":
                await R.send_throughput(s, t, users, room, 8, 400)  # warm-up

                async def workload():
                    rate, cpu = await R.send_throughput(s, t, users, room, 8, 4000)
                    print(f"send, 8 clients: {rate:,.0f} msg/s, server CPU {cpu * 1e6:.0f} us/msg")
            elif kind == "herd":
                # What a woken long-poll computes: an incremental sync holding one new message,
                # for each of many members of the room.
                sinces = []
                for u in users:
                    r = await R.call(s, "GET", t.base + "/_matrix/client/v3/sync?timeout=0&set_presence=offline",
                                     u["access_token"])
                    sinces.append(r["next_batch"])

                async def workload():
                    for round_ in range(30):
                        await R.call(s, "PUT", f"{t.base}/_matrix/client/v3/rooms/{room}/send/m.room.message/h{round_}",
                                     a["access_token"], {"msgtype": "m.text", "body": f"herd {round_}"})
                        answers = await asyncio.gather(*(
                            R.call(s, "GET", t.base + "/_matrix/client/v3/sync?timeout=0"
                                   f"&set_presence=offline&since={since}", u["access_token"])
                            for u, since in zip(users, sinces)))
                        sinces[:] = [r["next_batch"] for r in answers]
            elif kind == "sliding":
                for i in range(499):
                    r = await R.call(s, "POST", t.base + "/_matrix/client/v3/createRoom", a["access_token"],
                                     {"preset": "public_chat", "name": f"room {i}"})
                    await R.call(s, "PUT", f"{t.base}/_matrix/client/v3/rooms/{r['room_id']}/send/m.room.message/t{i}",
                                 a["access_token"], {"msgtype": "m.text", "body": f"hello {i}"})
                body = {"lists": {"all_rooms": R.ELEMENT_X_LIST}}

                async def workload():
                    for _ in range(200):
                        await R.call(s, "POST", t.base + R.SSS + "?timeout=0", a["access_token"], body)
            else:
                for i in range(499):
                    await R.call(s, "POST", t.base + "/_matrix/client/v3/createRoom", a["access_token"],
                                 {"preset": "public_chat", "name": f"room {i}"})

                async def workload():
                    for _ in range(40):
                        async with s.get(t.base + "/_matrix/client/v3/sync",
                                         headers={"Authorization": f"Bearer {a['access_token']}"}) as r:
                            await r.read()
            await record(t.proc.pid, workload, R.WORK / f"profile-{kind}.data")
        finally:
            t.stop()
    summarise(R.WORK / f"profile-{kind}.data")


if __name__ == "__main__":
    if sys.argv[1:] not in (["send"], ["sync"], ["sliding"], ["herd"]):
        sys.exit("usage: bench/profile.py send|sync|sliding|herd")
    asyncio.run(main(sys.argv[1]))
