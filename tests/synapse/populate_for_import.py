#!/usr/bin/env python3
"""Fills a running Synapse with what `myelin import-synapse` must carry over, through its
client API only, and prints (as JSON on stdout) what a later check needs: users with their
access tokens, rooms, event IDs, media.

  populate_for_import.py BASE_URL [REGISTRATION_SHARED_SECRET]

Run with Synapse's Python (tests/synapse/.venv): the keys are real ed25519 keys, signed with
signedjson, since Synapse checks cross-signing signatures.
"""

import hashlib, hmac, io, json, sys, urllib.error, urllib.parse, urllib.request

from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json

BASE = sys.argv[1].rstrip("/")


def call(method, path, body=None, token=None, raw=None, ctype="application/json"):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(BASE + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", ctype)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{method} {path}: {e.code} {e.read()[:300]!r}")


def q(s):
    return urllib.parse.quote(s, safe="")


def register(name, password):
    body = {"username": name, "password": password, "auth": {"type": "m.login.dummy"},
            "initial_device_display_name": f"{name}'s laptop"}
    r = call("POST", "/_matrix/client/v3/register", body)
    return {"user_id": r["user_id"], "token": r["access_token"], "device_id": r["device_id"], "password": password}


def send(token, room, text, extra=None, txn=[0]):
    txn[0] += 1
    content = {"msgtype": "m.text", "body": text, **(extra or {})}
    return call("PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/t{txn[0]}", content, token)["event_id"]


def pubkey(key):
    return encode_verify_key_base64(get_verify_key(key))


def cross_sign(user):
    """Uploads a user's master, self-signing and user-signing keys (the first upload needs no
    password); returns the signing keys and the master key's JSON."""
    keys = {kind: generate_signing_key(kind) for kind in ("master", "self_signing", "user_signing")}
    for key in keys.values():
        key.version = pubkey(key)  # a cross-signing key is named by its public key

    def key_json(kind):
        body = {"user_id": user["user_id"], "usage": [kind],
                "keys": {f"ed25519:{pubkey(keys[kind])}": pubkey(keys[kind])}}
        return body if kind == "master" else sign_json(body, user["user_id"], keys["master"])

    call("POST", "/_matrix/client/v3/keys/device_signing/upload",
         {"master_key": key_json("master"), "self_signing_key": key_json("self_signing"),
          "user_signing_key": key_json("user_signing"),
          "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user["user_id"]},
                   "password": user["password"]}}, user["token"])
    return {**keys, "master_json": key_json("master")}


def register_with_shared_secret(name, password, secret):
    """Synapse's admin registration (`/_synapse/admin/v1/register`), an admin account."""
    nonce = call("GET", "/_synapse/admin/v1/register")["nonce"]
    mac = hmac.new(secret.encode(), b"\x00".join([nonce.encode(), name.encode(), password.encode(), b"admin"]),
                   hashlib.sha1).hexdigest()
    r = call("POST", "/_synapse/admin/v1/register",
             {"nonce": nonce, "username": name, "password": password, "admin": True, "mac": mac})
    return {"user_id": r["user_id"], "token": r["access_token"], "device_id": r["device_id"], "password": password}


def main():
    alice, bob = register("alice", "alice-password"), register("bob", "bob-password")
    carl = register_with_shared_secret("carl", "carl-password", sys.argv[2]) if len(sys.argv) > 2 else None
    if carl:
        # The admin lets bob's bot-like sends through: a rate-limit override.
        call("POST", f"/_synapse/admin/v1/users/{q(bob['user_id'])}/override_ratelimit",
             {"messages_per_second": 0, "burst_count": 0}, carl["token"])
        # Bob signs in through an SSO provider too: an external ID.
        call("PUT", f"/_synapse/admin/v2/users/{q(bob['user_id'])}",
             {"external_ids": [{"auth_provider": "oidc-example", "external_id": "bob-at-idp"}],
              "threepids": [{"medium": "email", "address": "bob@example.org"}]}, carl["token"])
    # A second device for alice, logged in with her password.
    login = call("POST", "/_matrix/client/v3/login",
                 {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                  "password": "alice-password", "initial_device_display_name": "alice's phone"})
    alice["phone"] = {"token": login["access_token"], "device_id": login["device_id"]}
    # A third, with a refresh token (Synapse issues them by default), refreshed once and its
    # new access token used: the first refresh token is spent, the second is the session's.
    tablet = call("POST", "/_matrix/client/v3/login",
                  {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                   "password": "alice-password", "initial_device_display_name": "alice's tablet",
                   "refresh_token": True})
    renewed = call("POST", "/_matrix/client/v3/refresh", {"refresh_token": tablet["refresh_token"]})
    call("GET", "/_matrix/client/v3/account/whoami", token=renewed["access_token"])
    alice["tablet"] = {"device_id": tablet["device_id"], "refresh_token": renewed["refresh_token"],
                       "spent_refresh_token": tablet["refresh_token"]}

    call("PUT", f"/_matrix/client/v3/profile/{q(alice['user_id'])}/displayname", {"displayname": "Alice A."},
         alice["token"])
    call("PUT", f"/_matrix/client/v3/profile/{q(alice['user_id'])}/m.tz", {"m.tz": "Europe/Paris"}, alice["token"])
    avatar = call("POST", "/_matrix/media/v3/upload?filename=avatar.png", token=alice["token"],
                  raw=b"\x89PNG fake avatar bytes", ctype="image/png")["content_uri"]
    call("PUT", f"/_matrix/client/v3/profile/{q(alice['user_id'])}/avatar_url", {"avatar_url": avatar},
         alice["token"])
    # A picture, which Synapse thumbnails at its standard sizes on upload.
    from PIL import Image
    png = io.BytesIO()
    Image.effect_mandelbrot((400, 300), (-2.0, -1.2, 1.0, 1.2), 60).convert("RGB").save(png, "PNG")
    picture = call("POST", "/_matrix/media/v3/upload?filename=fractal.png", token=alice["token"],
                   raw=png.getvalue(), ctype="image/png")["content_uri"]
    document = b"a document's bytes\n" * 100
    media = call("POST", "/_matrix/media/v3/upload?filename=notes.txt", token=bob["token"], raw=document,
                 ctype="text/plain")["content_uri"]

    # Account data, a room tag, a push rule.
    call("PUT", f"/_matrix/client/v3/user/{q(alice['user_id'])}/account_data/org.example.settings",
         {"theme": "dark"}, alice["token"])
    call("PUT", "/_matrix/client/v3/pushrules/global/content/cats", {"pattern": "cats", "actions": ["notify"]},
         alice["token"])

    # A public room in the directory, with an alias, of the default version.
    public = call("POST", "/_matrix/client/v3/createRoom",
                  {"preset": "public_chat", "name": "Town square", "topic": "Everything",
                   "room_alias_name": "town", "visibility": "public"}, alice["token"])["room_id"]
    call("POST", f"/_matrix/client/v3/join/{q(public)}", {}, bob["token"])
    first = send(alice["token"], public, "hello from Synapse")
    reply = send(bob["token"], public, "hi alice")
    edit = send(alice["token"], public, "* hello from Synapse (edited)",
                {"m.new_content": {"msgtype": "m.text", "body": "hello from Synapse (edited)"},
                 "m.relates_to": {"rel_type": "m.replace", "event_id": first}})
    secret = send(bob["token"], public, "this will be redacted")
    call("PUT", f"/_matrix/client/v3/rooms/{q(public)}/redact/{q(secret)}/r1", {"reason": "oops"}, bob["token"])
    call("PUT", f"/_matrix/client/v3/rooms/{q(public)}/state/m.room.topic/", {"topic": "Everything, now"},
         alice["token"])
    call("POST", f"/_matrix/client/v3/rooms/{q(public)}/receipt/m.read/{q(reply)}", {}, alice["token"])
    call("PUT", f"/_matrix/client/v3/user/{q(alice['user_id'])}/rooms/{q(public)}/tags/u.work", {"order": 0.5},
         alice["token"])
    last = send(alice["token"], public, "last word")
    # A send whose answer the client never got: it retries the same transaction after the move.
    retried = call("PUT", f"/_matrix/client/v3/rooms/{q(public)}/send/m.room.message/retried-send",
                   {"msgtype": "m.text", "body": "sent once"}, alice["token"])["event_id"]

    # A private room of an older version, with a message bob must not read before his invite.
    private = call("POST", "/_matrix/client/v3/createRoom",
                   {"preset": "private_chat", "room_version": "10", "name": "Secrets"}, alice["token"])["room_id"]
    call("PUT", f"/_matrix/client/v3/rooms/{q(private)}/state/m.room.history_visibility/",
         {"history_visibility": "joined"}, alice["token"])
    hidden = send(alice["token"], private, "before bob")
    call("POST", f"/_matrix/client/v3/rooms/{q(private)}/invite", {"user_id": bob["user_id"]}, alice["token"])
    call("POST", f"/_matrix/client/v3/join/{q(private)}", {}, bob["token"])
    seen = send(alice["token"], private, "after bob joined")

    # A room of version 1: event IDs with the server name, references with hashes.
    oldest = call("POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat", "room_version": "1"},
                  alice["token"])["room_id"]
    vintage = send(alice["token"], oldest, "from a version 1 room")

    # A room the server left (its last member left): Synapse deletes its current state.
    abandoned = call("POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat", "name": "Abandoned"},
                     bob["token"])["room_id"]
    farewell = send(bob["token"], abandoned, "anyone here?")
    call("POST", f"/_matrix/client/v3/rooms/{q(abandoned)}/leave", {}, bob["token"])

    # E2EE: device keys, one-time keys, a fallback key, a backup version with a key.
    device_key = generate_signing_key(alice["device_id"])
    device_keys = sign_json({"user_id": alice["user_id"], "device_id": alice["device_id"],
                             "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                             "keys": {f"curve25519:{alice['device_id']}": "Y3VydmUyNTUxOWtleQ",
                                      f"ed25519:{alice['device_id']}": pubkey(device_key)}},
                            alice["user_id"], device_key)
    call("POST", "/_matrix/client/v3/keys/upload",
         {"device_keys": device_keys,
          "one_time_keys": {f"signed_curve25519:AAAA{i}": {"key": f"b3RrIHtpfQ{i}", "signatures": {}}
                            for i in range(3)},
          "fallback_keys": {"signed_curve25519:FFFF": {"key": "ZmFsbGJhY2s", "fallback": True, "signatures": {}}}},
         alice["token"])
    version = call("POST", "/_matrix/client/v3/room_keys/version",
                   {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                    "auth_data": {"public_key": "YmFja3VwIGtleQ"}}, alice["token"])["version"]
    session = {"first_message_index": 0, "forwarded_count": 0, "is_verified": False,
               "session_data": {"ephemeral": "ZQ", "ciphertext": "Yw", "mac": "bQ"}}
    call("PUT", f"/_matrix/client/v3/room_keys/keys/{q(public)}/sess1?version={version}", session, alice["token"])

    # Cross-signing: alice's keys, her device signed by her self-signing key; bob's keys, and
    # alice's master key signed by bob's user-signing key (bob verified alice).
    alice_cross = cross_sign(alice)
    bob_cross = cross_sign(bob)
    signed_device = sign_json(dict(device_keys), alice["user_id"], alice_cross["self_signing"])
    signed_master = sign_json(dict(alice_cross["master_json"]), bob["user_id"], bob_cross["user_signing"])
    call("POST", "/_matrix/client/v3/keys/signatures/upload",
         {alice["user_id"]: {alice["device_id"]: signed_device}}, alice["token"])
    call("POST", "/_matrix/client/v3/keys/signatures/upload",
         {alice["user_id"]: {pubkey(alice_cross["master"]): signed_master}}, bob["token"])

    # A to-device message to alice's phone, which never syncs before the move.
    call("PUT", "/_matrix/client/v3/sendToDevice/org.example.ping/td1",
         {"messages": {alice["user_id"]: {alice["phone"]["device_id"]: {"hello": "phone"}}}}, bob["token"])

    json.dump({"alice": alice, "bob": bob, "public": public, "private": private, "alias": "#town:" +
               alice["user_id"].split(":", 1)[1], "events": {"first": first, "reply": reply, "edit": edit,
               "secret": secret, "last": last, "retried": retried, "hidden": hidden, "seen": seen,
               "farewell": farewell, "vintage": vintage}, "abandoned": abandoned, "oldest": oldest, "carl": carl,
               "avatar": avatar, "picture": picture, "media": media, "document": document.decode(), "backup_version": version,
               "master_keys": {"alice": pubkey(alice_cross["master"]), "bob": pubkey(bob_cross["master"])},
               "self_signing_key_id": "ed25519:" + pubkey(alice_cross["self_signing"]),
               "device_ed25519": pubkey(device_key)},
              sys.stdout)


if __name__ == "__main__":
    main()
