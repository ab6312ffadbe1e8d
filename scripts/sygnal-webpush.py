#!/usr/bin/env python3
"""Push notifications through a real Sygnal (matrix-org's push gateway) to a Web Push receiver.

Run with the Python of a venv that has matrix-sygnal installed (scripts/sygnal-webpush.sh makes
one from a snapshot of Sygnal's repository: PyPI's index here has no matrix-sygnal):

    SYGNAL_VENV/bin/python scripts/sygnal-webpush.py

It starts the debug build of Myelin (target/debug/myelin) and Sygnal with a `webpush` app, each
on a free loopback port, and a Web Push endpoint of its own; Bob's pusher names Sygnal as its
gateway and the endpoint as his browser's. Alice's message must reach the endpoint, encrypted
for Bob's subscription keys (RFC 8291), within a second, and decrypt to the event Sygnal was
given (room, event ID, sender, content, unread count). Then the pushers' refusals: Sygnal
rejecting a pushkey (the endpoint answers 410 Gone) makes Myelin remove that pusher.
Exits non-zero with the reason on any failure.
"""

import base64
import http.server
import json
import os
import queue
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import http_ece
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid

ROOT = Path(__file__).resolve().parent.parent
MYELIN = ROOT / "target" / "debug" / "myelin"
APP_ID = "org.myelin.webpush"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def request(base, method, path, body=None, token=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def wait_until(what, check, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


class Endpoint(http.server.BaseHTTPRequestHandler):
    """A browser's push service: records each push; answers 410 for the `gone` path."""

    pushes: "queue.Queue" = queue.Queue()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Endpoint.pushes.put((time.time(), self.path, dict(self.headers), body))
        self.send_response(410 if self.path.endswith("/gone") else 201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    work = Path(tempfile.mkdtemp(prefix="sygnal-webpush-"))
    myelin_port, sygnal_port, endpoint_port = free_port(), free_port(), free_port()

    # Sygnal, with a webpush app and its VAPID key.
    vapid = Vapid()
    vapid.generate_keys()
    vapid.save_key(str(work / "vapid.pem"))
    (work / "sygnal.yaml").write_text(json.dumps({
        "log": {"setup": {"version": 1, "disable_existing_loggers": False, "handlers": {"stderr": {"class": "logging.StreamHandler"}},
                          "root": {"level": "INFO", "handlers": ["stderr"]}},
                "access": {"x_forwarded_for": False}},
        "http": {"bind_addresses": ["127.0.0.1"], "port": sygnal_port},
        "apps": {APP_ID: {"type": "webpush", "vapid_private_key": str(work / "vapid.pem"),
                          "vapid_contact_email": "push@example.org"}},
    }))
    sygnal = subprocess.Popen([sys.executable, "-m", "sygnal.sygnal"], env=dict(os.environ, SYGNAL_CONF=str(work / "sygnal.yaml")),
                              stdout=open(work / "sygnal.log", "w"), stderr=subprocess.STDOUT, cwd=work)

    # Myelin, which may reach loopback (the gateway is there).
    (work / "homeserver.yaml").write_text(f"""server_name: test
public_baseurl: http://127.0.0.1:{myelin_port}/
listeners: [{{port: {myelin_port}, bind_addresses: ['127.0.0.1'], resources: [{{names: [client]}}]}}]
database: {{name: sqlite3, args: {{database: data/homeserver.db}}}}
signing_key_path: data/signing.key
media_store_path: data/media
enable_registration: true
enable_registration_without_verification: true
ip_range_whitelist: ['127.0.0.0/8']
rc_message: {{per_second: 1000, burst_count: 1000}}
rc_registration: {{per_second: 1000, burst_count: 1000}}
""")
    myelin = subprocess.Popen([str(MYELIN), "-c", "homeserver.yaml"], stdout=open(work / "myelin.log", "w"),
                              stderr=subprocess.STDOUT, cwd=work)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", endpoint_port), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{myelin_port}"
        wait_until("Myelin", lambda: urllib.request.urlopen(base + "/_matrix/client/versions", timeout=1))
        wait_until("Sygnal", lambda: socket.create_connection(("127.0.0.1", sygnal_port), timeout=1).close() or True)

        def register(name):
            status, body = request(base, "POST", "/_matrix/client/v3/register",
                                   {"username": name, "password": "pw-" + name, "auth": {"type": "m.login.dummy"}})
            assert status == 200, body
            return body["access_token"], body["user_id"]

        alice, alice_id = register("alice")
        bob, bob_id = register("bob")
        status, body = request(base, "POST", "/_matrix/client/v3/createRoom",
                               {"preset": "private_chat", "invite": [bob_id], "name": "Push test"}, alice)
        assert status == 200, body
        room = body["room_id"]
        status, body = request(base, "POST", f"/_matrix/client/v3/join/{room}", {}, bob)
        assert status == 200, body

        # Bob's browser subscription: a P-256 key pair and an auth secret; Sygnal encrypts for them.
        private = ec.generate_private_key(ec.SECP256R1())
        p256dh = b64url(private.public_key().public_bytes(serialization.Encoding.X962,
                                                         serialization.PublicFormat.UncompressedPoint))
        auth_secret = secrets.token_bytes(16)
        pusher = {
            "kind": "http", "app_id": APP_ID, "pushkey": p256dh, "app_display_name": "Web",
            "device_display_name": "Bob's browser", "lang": "en",
            "data": {"url": f"http://127.0.0.1:{sygnal_port}/_matrix/push/v1/notify",
                     "endpoint": f"http://127.0.0.1:{endpoint_port}/push/bob", "auth": b64url(auth_secret)},
        }
        status, body = request(base, "POST", "/_matrix/client/v3/pushers/set", pusher, bob)
        assert status == 200, body

        sent_at = time.time()
        status, body = request(base, "PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/t1",
                               {"msgtype": "m.text", "body": "Hello Bob"}, alice)
        assert status == 200, body
        event_id = body["event_id"]
        try:
            arrived_at, path, headers, ciphertext = Endpoint.pushes.get(timeout=10)
        except queue.Empty:
            raise SystemExit("no push reached the Web Push endpoint in 10 s; see " + str(work))
        latency = arrived_at - sent_at
        headers = {k.lower(): v for k, v in headers.items()}
        assert path == "/push/bob", path
        assert headers.get("content-encoding") == "aes128gcm", headers
        assert headers.get("authorization", "").startswith("vapid t="), headers
        payload = json.loads(http_ece.decrypt(ciphertext, private_key=private, auth_secret=auth_secret,
                                              version="aes128gcm"))
        expected = {"room_id": room, "event_id": event_id, "sender": alice_id, "type": "m.room.message"}
        for key, value in expected.items():
            assert payload.get(key) == value, (key, payload)
        assert payload["content"]["body"] == "Hello Bob", payload
        assert payload.get("room_name") == "Push test", payload
        assert payload.get("unread") == 1, payload
        assert latency < 1.0, f"the push took {latency:.3f} s"

        # A pushkey the push service no longer knows (410 Gone): Sygnal rejects it, and Myelin
        # drops the pusher.
        other = ec.generate_private_key(ec.SECP256R1()).public_key()
        other_key = b64url(other.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
        gone = dict(pusher, pushkey=other_key, data=dict(
            pusher["data"], endpoint=f"http://127.0.0.1:{endpoint_port}/push/gone"))
        status, body = request(base, "POST", "/_matrix/client/v3/pushers/set", dict(gone, append=True), bob)
        assert status == 200, body
        status, body = request(base, "PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/t2",
                               {"msgtype": "m.text", "body": "Again"}, alice)
        assert status == 200, body

        def only_good_pusher_left():
            _, listed = request(base, "GET", "/_matrix/client/v3/pushers", None, bob)
            return [p["pushkey"] for p in listed["pushers"]] == [p256dh]
        wait_until("the rejected pusher to be removed", only_good_pusher_left)
        print(f"sygnal-webpush: ok (Myelin -> Sygnal -> Web Push endpoint in {latency * 1000:.0f} ms, "
              f"decrypted and checked; a rejected pushkey removed)")
    finally:
        server.shutdown()
        for proc in (myelin, sygnal):
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
