#!/usr/bin/env python3
"""An application service bot built on mautrix-python, used as a black-box client of a homeserver.

Subcommands:

    mautrix_bot.py generate --url http://127.0.0.1:PORT --out reg.yaml [--id mautrixbot]
                            [--server-name localhost]
    mautrix_bot.py run --homeserver http://127.0.0.1:HSPORT --registration reg.yaml --port PORT
                       [--server-name localhost] [--verbose]

`run` starts a mautrix `AppService` on 127.0.0.1:PORT and plays a bridge scenario against the
homeserver (ping, registration, masquerading, a portal room, transactions with ephemeral events,
timestamp massaging, exclusivity, user/alias queries, third-party protocols). Every check that
fails names itself; the exit status is 0 only when all pass. At the end it prints a JSON summary
of what the homeserver did (`OBSERVED ...`), and every request the appservice received; with
--verbose it also prints each request body as it arrives (`TRANSACTION <path> {...}` for
transactions, `AS <- body <path> {...}` for the rest).

The refusals it checks exactly (status and errcode) are in EXPECTED_REFUSALS; what Synapse did
throughout is recorded in SYNAPSE_OBSERVED. Validate against Synapse with
`python3 mautrix_synapse_check.py [--verbose]` (it uses the .venv beside this file).

Requirements: see requirements.txt beside this file (mautrix, ruamel.yaml).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import secrets
import sys
import time
import urllib.parse
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp import web
from ruamel.yaml import YAML

from mautrix.api import Method, Path
from mautrix.appservice import AppService
from mautrix.appservice.state_store import ASStateStore
from mautrix.client.state_store import MemoryStateStore
from mautrix.types import RoomCreatePreset

PROTOCOL = "mbotproto"
USER_PREFIX = "mbot_"
BRIDGED_TS = 1600000000000
FAILING_PING_PREFIX = "mautrix-fail-"

# What real Synapse 1.163.2 was seen doing with this scenario (filled from validation runs; the
# run prints the same keys, measured live, under "OBSERVED").
SYNAPSE_OBSERVED: dict[str, Any] = {
    # Every HS -> AS request: `Authorization: Bearer <hs_token>`, no `access_token` query
    # parameter (use_appservice_legacy_authorization is off by default), no other query params.
    # Paths are /_matrix/app/v1/... only (never the legacy unprefixed /transactions, /users, /rooms);
    # user IDs and aliases in paths are percent-encoded (@ -> %40, # -> %23, : -> %3A).
    "auth": "Authorization: Bearer <hs_token> only",
    "ping": {
        # client: POST /_matrix/client/v1/appservice/mautrixbot/ping?user_id=@mautrixbot:localhost
        # (mautrix adds user_id) {"transaction_id": "..."} with the as_token
        "hs_to_as": "POST /_matrix/app/v1/ping, JSON body {'transaction_id': <as given, null if absent>}",
        "client_answer": "200 {'duration_ms': <int, 1-4 here>}",
        "as_answers_500": "502 {'errcode': 'M_BAD_STATUS', 'error': 'HTTP 500 Internal Server Error', "
        "'status': 500, 'body': '<the AS's raw response body as a string>'}",
        "other_appservice_id": "403 M_FORBIDDEN (Mismatching application service ID in path)",
        "ordinary_user": "403 M_FORBIDDEN (Only application services can use ...)",
    },
    "transactions": {
        "path": "PUT /_matrix/app/v1/transactions/{txnId}, txnIds 1, 2, 3, ... (a counter)",
        # with receive_ephemeral + de.sorunome.msc2409.push_ephemeral, EVERY transaction has all four:
        "fields": ["events", "ephemeral", "de.sorunome.msc2409.ephemeral", "de.sorunome.msc2409.to_device"],
        "ephemeral": "the same list under both keys; [] when none (EDUs came in their own txns here, events: [])",
        "pdu_fields": "client format + legacy top-level age, user_id (=sender), prev_content, "
        "replaces_state, invite_room_state (member invites; also in unsigned); unsigned.age",
        "m.typing": {"type": "m.typing", "room_id": "!r", "content": {"user_ids": ["@real:localhost"]}},
        "m.receipt": {"type": "m.receipt", "room_id": "!r", "content": {"$ev": {"m.read": {"@real:localhost": {"ts": 1}}}}},
        "delivered": "events of rooms with a namespaced member (create/member/power_levels/"
        "canonical_alias/join_rules/.../invite/join/message), each transaction within ~0.1 s",
    },
    "registration": {
        "as_register_sender_localpart": "200 {user_id, home_server} (inhibit_login) - allowed",
        "as_register_outside_namespace": "400 M_EXCLUSIVE",
        "as_register_without_type": "400 M_UNKNOWN",
        "ordinary_register_mbot_bob": "400 M_EXCLUSIVE on the first request (before UIA)",
        "register_available_mbot_bob": "400 M_EXCLUSIVE",
    },
    "masquerade": {
        "outside_namespace_send": "403 M_FORBIDDEN 'Application service cannot masquerade as this user (@someoneelse:localhost).'",
        "outside_namespace_whoami": "403 M_FORBIDDEN",
        "unregistered_namespaced_user": "403 M_FORBIDDEN 'Application service has not registered this user (...)'",
        "as_token_without_user_id": "acts as @mautrixbot:localhost (whoami 200)",
        "ordinary_token_with_user_id": "user_id ignored, acts as the token's user",
        "wrong_as_token": "401 M_UNKNOWN_TOKEN",
        "ts_param": "as AS: origin_server_ts == ts (seen in /messages, /event, and the AS txn); "
        "as ordinary user: ignored",
    },
    "aliases": {
        "ordinary_put_directory_mbot_x": "400 M_EXCLUSIVE",
        "ordinary_createroom_alias_mbot_y": "400 M_EXCLUSIVE",
        "ordinary_delete_as_alias": "403 M_FORBIDDEN",
    },
    "queries": {
        "profile_unknown_namespaced_user": "404 M_UNKNOWN 'No row found (profiles)', AS NOT queried",
        "invite_unknown_namespaced_user": "GET /_matrix/app/v1/users/%40mbot_invitee%3Alocalhost "
        "BEFORE the invite transaction (also for createRoom {invite: [...]}); invite itself 200",
        "directory_lookup_unknown_alias": "GET /_matrix/app/v1/rooms/%23mbot_lazy%3Alocalhost; the AS "
        "creates the room+alias during the query, answers 200, Synapse re-reads -> 200 {room_id, servers}",
        "join_unknown_alias": "same query, then the join succeeds",
        "alias_as_404": "client gets 404 M_NOT_FOUND",
        "known_alias": "not queried again",
    },
    "thirdparty": {
        "protocols": "GET /_matrix/app/v1/thirdparty/protocol/mbotproto; the answer needs an "
        "`instances` list (else dropped); each instance gets instance_id '<as id>|<network_id>'; "
        "cached (a second /protocol/mbotproto call did not reach the AS)",
        "location": "GET /_matrix/app/v1/thirdparty/location/mbotproto?channel=lobby (client query passed through)",
        "user": "GET /_matrix/app/v1/thirdparty/user/mbotproto?username=carol",
        "unknown_protocol": "404 {'error': 'Unknown protocol'} (no errcode)",
    },
}


# The refusals checked exactly (status, errcode), as real Synapse 1.163.2 answers them.
EXPECTED_REFUSALS: dict[str, tuple[int, str]] = {
    # POST /_matrix/client/v1/appservice/{another id}/ping with our as_token
    "ping_other_id": (403, "M_FORBIDDEN"),
    # POST /register {type: m.login.application_service, username outside the namespace}
    "as_register_outside": (400, "M_EXCLUSIVE"),
    # any request with the as_token and ?user_id=@someoneelse:localhost (outside the namespace)
    "masquerade_outside": (403, "M_FORBIDDEN"),
    # an ordinary client: GET /register/available and POST /register (first request, before UIA)
    "register_exclusive": (400, "M_EXCLUSIVE"),
    # an ordinary user: PUT /directory/room/#mbot_x, or createRoom {room_alias_name: mbot_y}
    "alias_exclusive": (400, "M_EXCLUSIVE"),
    # an ordinary user: DELETE /directory/room/#mbot_portal (the AS's alias)
    "alias_delete_foreign": (403, "M_FORBIDDEN"),
}


class CheckFailed(Exception):
    pass


def log(msg: str) -> None:
    print(f"[mautrix_bot {time.strftime('%H:%M:%S')}] {msg}", flush=True)


CURRENT_STEP = ["start"]


def step(name: str) -> None:
    CURRENT_STEP[0] = name
    log(f"step: {name}")


def check(name: str, ok: bool, detail: Any = "") -> None:
    if not ok:
        raise CheckFailed(f"CHECK FAILED: {name}: {detail}")
    log(f"ok: {name}")


def q(s: str) -> str:
    """Percent-encodes a path segment (room IDs, aliases, user IDs)."""
    return urllib.parse.quote(s, safe="")


# ---------------------------------------------------------------------------------------------
# generate


def generate(args: argparse.Namespace) -> int:
    server = re.escape(args.server_name)
    reg = {
        "id": args.id,
        "url": args.url,
        "as_token": secrets.token_hex(24),
        "hs_token": secrets.token_hex(24),
        "sender_localpart": "mautrixbot",
        "namespaces": {
            "users": [{"exclusive": True, "regex": f"@{USER_PREFIX}.*:{server}"}],
            "aliases": [{"exclusive": True, "regex": f"#{USER_PREFIX}.*:{server}"}],
            "rooms": [],
        },
        "rate_limited": False,
        "receive_ephemeral": True,
        "de.sorunome.msc2409.push_ephemeral": True,
        "protocols": [PROTOCOL],
    }
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    with open(args.out, "w") as f:
        yaml.dump(reg, f)
    print(args.out)
    return 0


# ---------------------------------------------------------------------------------------------
# run


class MemoryASStateStore(ASStateStore, MemoryStateStore):
    """mautrix's appservice state store, kept in memory (no file in the working directory)."""

    def __init__(self) -> None:
        ASStateStore.__init__(self)
        MemoryStateStore.__init__(self)


class Recorder:
    """Everything the homeserver sent to the appservice."""

    def __init__(self, hs_token: str, verbose: bool) -> None:
        self.hs_token = hs_token
        self.verbose = verbose
        self.requests: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []  # through mautrix's event handlers
        self.ephemeral: list[dict[str, Any]] = []  # through mautrix's event handlers (EDUs)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable]):
        body_raw = await request.read()  # aiohttp caches it; the handler can read it again
        auth = request.headers.get("Authorization")
        entry: dict[str, Any] = {
            "method": request.method,
            "raw_path": request.rel_url.raw_path,
            "path": request.path,
            "query": dict(request.rel_url.query),
            "auth_header": (
                None
                if auth is None
                else ("Bearer <hs_token>" if auth == f"Bearer {self.hs_token}" else auth)
            ),
            "access_token_query": (
                None
                if "access_token" not in request.rel_url.query
                else request.rel_url.query["access_token"] == self.hs_token
            ),
            "content_type": request.headers.get("Content-Type"),
        }
        if "access_token" in entry["query"]:
            entry["query"]["access_token"] = "<redacted>"
        if body_raw:
            try:
                entry["body"] = json.loads(body_raw)
            except ValueError:
                entry["body_text"] = body_raw.decode("utf-8", "replace")
        status = 500
        try:
            body = entry.get("body")
            if (
                request.path == "/_matrix/app/v1/ping"
                and isinstance(body, dict)
                and str(body.get("transaction_id")).startswith(FAILING_PING_PREFIX)
            ):
                # A ping the appservice refuses on purpose, to see what the homeserver answers.
                resp = web.json_response({"errcode": "M_UNKNOWN", "error": "refused on purpose"}, status=500)
            else:
                resp = await handler(request)
            status = resp.status
        except web.HTTPException as e:  # mautrix answers some requests by raising
            status = e.status
            raise
        finally:
            entry["status"] = status
            self.requests.append(entry)
            line = f"AS <- {request.method} {entry['raw_path']}"
            if request.query_string:
                line += "?" + re.sub(r"access_token=[^&]*", "access_token=<redacted>", request.query_string)
            line += f" auth={entry['auth_header']!r} -> {entry['status']}"
            log(line)
            if self.verbose and "body" in entry:
                label = "TRANSACTION" if "/transactions/" in entry["path"] else "AS <- body"
                print(f"{label} {entry['raw_path']} " + json.dumps(entry["body"], sort_keys=True), flush=True)
        return resp

    def matching(self, method: str, path_prefix: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and r["path"].startswith(path_prefix)]

    def transactions(self) -> list[dict[str, Any]]:
        return self.matching("PUT", "/_matrix/app/v1/transactions/")


async def wait_until(name: str, pred: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise CheckFailed(f"CHECK FAILED: {name}: not seen within {timeout:.0f}s")
        await asyncio.sleep(0.1)


class Client:
    """A plain client-server API client (the real user, and raw appservice calls)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str | None = None) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.token = token

    async def req(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        token: str | None = None,
    ) -> tuple[int, Any]:
        headers = {}
        tok = token or self.token
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        kw: dict[str, Any] = {"headers": headers, "params": params}
        if body is not None:
            kw["json"] = body
        async with self.session.request(method, self.base + path, **kw) as r:
            text = await r.text()
            try:
                data = json.loads(text) if text else None
            except ValueError:
                data = text
            return r.status, data


def errcode(body: Any) -> Any:
    return body.get("errcode") if isinstance(body, dict) else body


def expect(name: str, key: str, status: int, body: Any) -> None:
    """Checks a refusal against EXPECTED_REFUSALS (what Synapse answers)."""
    want = EXPECTED_REFUSALS[key]
    check(f"{name} ({want[0]} {want[1]})", (status, errcode(body)) == want, (status, body))


async def run(args: argparse.Namespace) -> int:
    with open(args.registration) as f:
        reg = YAML(typ="safe", pure=True).load(f)
    server_name = args.server_name
    hs = args.homeserver.rstrip("/")
    rec = Recorder(reg["hs_token"], args.verbose)
    obs: dict[str, Any] = {}
    bot_mxid = f"@{reg['sender_localpart']}:{server_name}"

    appservice = AppService(
        server=hs,
        domain=server_name,
        as_token=reg["as_token"],
        hs_token=reg["hs_token"],
        bot_localpart=reg["sender_localpart"],
        id=reg["id"],
        state_store=MemoryASStateStore(),
        ephemeral_events=True,
        aiohttp_params={"middlewares": [rec.middleware]},
        log=logging.getLogger("mautrix_bot"),
    )

    # mautrix hands every PDU and (with ephemeral_events=True) every EDU of a transaction to
    # its event handlers.
    lazily_created: dict[str, str] = {}

    async def on_event(evt) -> None:
        raw = evt.serialize()
        if evt.type.is_ephemeral:
            rec.ephemeral.append(raw)
        else:
            rec.events.append(raw)
            # A bridge's answer to an invite of one of its users: join as that user.
            if (
                raw.get("type") == "m.room.member"
                and raw.get("content", {}).get("membership") == "invite"
                and raw.get("state_key", "").startswith(f"@{USER_PREFIX}")
                and raw.get("sender") != raw.get("state_key")
            ):
                invitee = appservice.intent.user(raw["state_key"])
                await invitee.join_room_by_id(raw["room_id"])
                log(f"bridge: {raw['state_key']} accepted the invite to {raw['room_id']}")

    appservice.matrix_event_handler(on_event)

    # User query (GET /_matrix/app/v1/users/{userId}): a truthy answer is a 200, None a 404.
    async def query_user(user_id: str):
        if not user_id.startswith(f"@{USER_PREFIX}") or user_id.startswith(f"@{USER_PREFIX}ghost"):
            return None
        intent = appservice.intent.user(user_id)
        await intent.ensure_registered()
        log(f"bridge: user query for {user_id}: registered it")
        return {"registered": True}  # Synapse looks only at the status

    # Alias query (GET /_matrix/app/v1/rooms/{alias}): create the room, then answer 200.
    async def query_alias(alias: str):
        localpart = alias[1:].split(":", 1)[0]
        if not localpart.startswith(f"{USER_PREFIX}lazy"):
            return None
        room_id = await appservice.intent.create_room(
            alias_localpart=localpart, name=f"Lazy {localpart}", preset=RoomCreatePreset.PUBLIC
        )
        lazily_created[alias] = room_id
        log(f"bridge: alias query for {alias}: created {room_id}")
        return {"room_id": room_id}  # Synapse looks only at the status

    appservice.query_user = query_user
    appservice.query_alias = query_alias

    # Third-party protocol metadata: Synapse asks GET /_matrix/app/v1/thirdparty/protocol/{p}
    # and drops answers without an `instances` list.
    async def tp_protocol(request: web.Request) -> web.Response:
        if not appservice._check_token(request):
            return web.json_response({"errcode": "M_FORBIDDEN", "error": "bad hs_token"}, status=403)
        if request.match_info["protocol"] != PROTOCOL:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "unknown protocol"}, status=404)
        return web.json_response(
            {
                "user_fields": ["username"],
                "location_fields": ["channel"],
                "icon": "mxc://localhost/mbotproto",
                "field_types": {
                    "username": {"regexp": "[a-z]+", "placeholder": "alice"},
                    "channel": {"regexp": "[a-z]+", "placeholder": "lobby"},
                },
                "instances": [
                    {
                        "desc": "Mbot network",
                        "icon": "mxc://localhost/mbotnet",
                        "fields": {},
                        "network_id": "mbotnet",
                    }
                ],
            }
        )

    async def tp_location(request: web.Request) -> web.Response:
        if not appservice._check_token(request):
            return web.json_response({"errcode": "M_FORBIDDEN", "error": "bad hs_token"}, status=403)
        channel = request.rel_url.query.get("channel", "lobby")
        return web.json_response(
            [{"alias": f"#{USER_PREFIX}{channel}:{server_name}", "protocol": PROTOCOL, "fields": {"channel": channel}}]
        )

    async def tp_user(request: web.Request) -> web.Response:
        if not appservice._check_token(request):
            return web.json_response({"errcode": "M_FORBIDDEN", "error": "bad hs_token"}, status=403)
        username = request.rel_url.query.get("username", "alice")
        return web.json_response(
            [{"userid": f"@{USER_PREFIX}{username}:{server_name}", "protocol": PROTOCOL, "fields": {"username": username}}]
        )

    appservice.app.router.add_get("/_matrix/app/v1/thirdparty/protocol/{protocol}", tp_protocol)
    appservice.app.router.add_get("/_matrix/app/v1/thirdparty/location/{protocol}", tp_location)
    appservice.app.router.add_get("/_matrix/app/v1/thirdparty/user/{protocol}", tp_user)

    await appservice.start(host="127.0.0.1", port=args.port)
    log(f"appservice {reg['id']} listening on 127.0.0.1:{args.port}, homeserver {hs}")
    session = aiohttp.ClientSession()
    try:
        await scenario(appservice, rec, obs, session, hs, server_name, bot_mxid, reg, lazily_created)
    except CheckFailed as e:
        log(str(e))
        dump(rec, obs, args.verbose)
        return 1
    except Exception as e:  # an unexpected error is a failure too, named by the step log
        log(f"CHECK FAILED: step '{CURRENT_STEP[0]}': unexpected error: {type(e).__name__}: {e}")
        dump(rec, obs, args.verbose)
        return 2
    finally:
        await session.close()
        await appservice.stop()
    dump(rec, obs, args.verbose)
    log("ALL CHECKS PASSED")
    return 0


def dump(rec: Recorder, obs: dict[str, Any], verbose: bool) -> None:
    txns = rec.transactions()
    obs["as_requests"] = [
        {k: r[k] for k in ("method", "raw_path", "query", "auth_header", "access_token_query", "status")}
        for r in rec.requests
    ]
    obs["transaction_field_sets"] = sorted({",".join(sorted(t.get("body", {}).keys())) for t in txns})
    print("OBSERVED " + json.dumps(obs, indent=1, sort_keys=True), flush=True)


async def scenario(
    appservice: AppService,
    rec: Recorder,
    obs: dict[str, Any],
    session: aiohttp.ClientSession,
    hs: str,
    server_name: str,
    bot_mxid: str,
    reg: dict[str, Any],
    lazily_created: dict[str, str],
) -> None:
    bot = appservice.intent
    as_client = Client(session, hs, reg["as_token"])
    anon = Client(session, hs)

    # 0. The homeserver is up.
    step("wait for the homeserver")
    deadline = time.monotonic() + 30
    while True:
        try:
            s, _ = await anon.req("GET", "/_matrix/client/versions")
            if s == 200:
                break
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise CheckFailed("CHECK FAILED: homeserver reachable: /_matrix/client/versions never answered 200")
        await asyncio.sleep(0.2)

    # 1. Ping: POST /_matrix/client/v1/appservice/{id}/ping, through mautrix (it adds ?user_id=bot).
    step("appservice ping")
    ping_txn = "mautrix-ping-" + secrets.token_hex(4)
    resp = await bot.api.request(
        Method.POST, Path.v1.appservice[reg["id"]].ping, content={"transaction_id": ping_txn}
    )
    obs["ping_response"] = resp
    check("ping answer has integer duration_ms", isinstance(resp.get("duration_ms"), int), resp)
    pings = rec.matching("POST", "/_matrix/app/v1/ping")
    check("homeserver POSTed /_matrix/app/v1/ping to the AS", len(pings) >= 1, rec.requests)
    obs["ping_as_request"] = {
        k: pings[-1].get(k) for k in ("raw_path", "query", "auth_header", "content_type", "body")
    }
    check(
        "ping carried our transaction_id",
        pings[-1].get("body") == {"transaction_id": ping_txn},
        pings[-1].get("body"),
    )
    duration = await appservice.ping_self()  # mautrix's own helper (no transaction ID)
    obs["ping_without_txn_as_body"] = rec.matching("POST", "/_matrix/app/v1/ping")[-1].get("body")
    log(f"mautrix ping_self() -> duration_ms {duration}")
    s, b = await as_client.req("POST", f"/_matrix/client/v1/appservice/{q('not-' + reg['id'])}/ping", {})
    obs["ping_other_appservice_id"] = [s, errcode(b)]
    expect("pinging another appservice's ID is refused", "ping_other_id", s, b)

    s, b = await as_client.req(
        "POST", f"/_matrix/client/v1/appservice/{q(reg['id'])}/ping",
        {"transaction_id": FAILING_PING_PREFIX + secrets.token_hex(3)},
    )
    obs["ping_when_as_answers_500"] = [s, b]
    check(
        "a ping the AS answers with 500 is 502 M_BAD_STATUS with status 500",
        s == 502 and errcode(b) == "M_BAD_STATUS" and b.get("status") == 500,
        (s, b),
    )
    s, b = await as_client.req("GET", "/_matrix/client/v3/account/whoami", token="not-the-as-token")
    obs["wrong_as_token_whoami"] = [s, errcode(b)]

    # 2. The bot user: /register with m.login.application_service, a displayname.
    step("bot registration")
    s, b = await as_client.req(
        "POST", "/_matrix/client/v3/register",
        {"type": "m.login.application_service", "username": reg["sender_localpart"], "inhibit_login": True},
    )
    obs["register_sender_localpart"] = [s, errcode(b) if s != 200 else b]
    await bot.ensure_registered()
    await bot.set_displayname("Mautrix Bot")
    s, b = await as_client.req("GET", "/_matrix/client/v3/account/whoami")
    obs["whoami_no_user_id"] = [s, b]
    check("whoami with the as_token alone is the sender", s == 200 and b.get("user_id") == bot_mxid, (s, b))

    s, b = await as_client.req(
        "POST", "/_matrix/client/v3/register",
        {"type": "m.login.application_service", "username": "notmine" + secrets.token_hex(3)},
    )
    obs["as_register_outside_namespace"] = [s, errcode(b)]
    expect("the AS registering a user outside its namespace is refused", "as_register_outside", s, b)
    s, b = await as_client.req(
        "POST", "/_matrix/client/v3/register", {"username": USER_PREFIX + "notype"}
    )
    obs["as_register_without_type"] = [s, errcode(b)]

    # 3. A real user, registered the ordinary way (m.login.dummy).
    step("real user registration")
    real_local = "real" + secrets.token_hex(3)
    s, b = await anon.req("POST", "/_matrix/client/v3/register", {"username": real_local, "password": "pw-" + real_local})
    check("registration starts user-interactive auth", s == 401 and "session" in b, (s, b))
    s, b = await anon.req(
        "POST", "/_matrix/client/v3/register",
        {"username": real_local, "password": "pw-" + real_local, "auth": {"type": "m.login.dummy", "session": b["session"]}},
    )
    check("real user registered", s == 200 and "access_token" in b, (s, b))
    real_id, real = b["user_id"], Client(session, hs, b["access_token"])
    s, b = await real.req("POST", f"/_matrix/client/v1/appservice/{q(reg['id'])}/ping", {})
    obs["ping_by_ordinary_user"] = [s, errcode(b)]
    check("an ordinary user cannot ping the appservice", s == 403 and errcode(b) == "M_FORBIDDEN", (s, b))

    # 4. A namespaced (masqueraded) user creates the portal room with an alias and invites.
    step("masqueraded user and portal room")
    alice_id = f"@{USER_PREFIX}alice:{server_name}"
    alice = bot.user(alice_id)
    await alice.ensure_registered()
    await alice.set_displayname("Alice (bridged)")
    s, b = await as_client.req("GET", "/_matrix/client/v3/account/whoami", params={"user_id": alice_id})
    obs["whoami_masquerade_in_namespace"] = [s, b]
    check("whoami?user_id=<namespaced user> is that user", s == 200 and b.get("user_id") == alice_id, (s, b))
    portal_alias = f"#{USER_PREFIX}portal:{server_name}"
    room_id = await alice.create_room(
        alias_localpart=f"{USER_PREFIX}portal", name="Portal", invitees=[real_id],
        preset=RoomCreatePreset.PRIVATE,
    )
    log(f"portal room {room_id}")
    s, b = await real.req("GET", f"/_matrix/client/v3/directory/room/{q(portal_alias)}")
    check("portal alias resolves", s == 200 and b.get("room_id") == room_id, (s, b))

    async def invited() -> bool:
        s, b = await real.req("GET", "/_matrix/client/v3/sync", params={"timeout": "0"})
        return s == 200 and room_id in b.get("rooms", {}).get("invite", {})

    deadline = time.monotonic() + 10
    while not await invited():
        if time.monotonic() > deadline:
            raise CheckFailed("CHECK FAILED: the real user sees the invite in /sync")
        await asyncio.sleep(0.3)
    log("ok: the real user sees the invite in /sync")
    s, b = await real.req("POST", f"/_matrix/client/v3/join/{q(portal_alias)}", {})
    check("real user joins the portal by its alias", s == 200 and b.get("room_id") == room_id, (s, b))
    await wait_until(
        "AS receives the real user's join",
        lambda: any(
            e.get("type") == "m.room.member" and e.get("state_key") == real_id
            and e.get("content", {}).get("membership") == "join"
            for e in rec.events
        ),
    )
    log("ok: AS receives the real user's join")

    # 5. Message, typing and receipt from the real user reach the appservice.
    step("real user's message, typing, receipt")
    s, b = await real.req(
        "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/t1",
        {"msgtype": "m.text", "body": "hello bridge"},
    )
    check("real user sends a message", s == 200, (s, b))
    msg_id = b["event_id"]
    await wait_until(
        "AS receives the real user's message event",
        lambda: any(e.get("event_id") == msg_id and e.get("type") == "m.room.message" for e in rec.events),
    )
    log("ok: AS receives the real user's message event")
    s, b = await real.req(
        "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/typing/{q(real_id)}", {"typing": True, "timeout": 20000}
    )
    check("real user starts typing", s == 200, (s, b))
    await wait_until(
        "AS receives the m.typing EDU (ephemeral)",
        lambda: any(
            e.get("type") == "m.typing" and e.get("room_id") == room_id
            and real_id in e.get("content", {}).get("user_ids", [])
            for e in rec.ephemeral
        ),
    )
    log("ok: AS receives the m.typing EDU (ephemeral)")
    s, b = await real.req("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/receipt/m.read/{q(msg_id)}", {})
    check("real user sends a read receipt", s == 200, (s, b))
    await wait_until(
        "AS receives the m.receipt EDU (ephemeral)",
        lambda: any(
            e.get("type") == "m.receipt" and e.get("room_id") == room_id
            and real_id in e.get("content", {}).get(msg_id, {}).get("m.read", {})
            for e in rec.ephemeral
        ),
    )
    log("ok: AS receives the m.receipt EDU (ephemeral)")
    for t in rec.transactions():
        body = t.get("body") or {}
        check(
            f"transaction {t['raw_path']} has an events list",
            isinstance(body.get("events"), list),
            sorted(body),
        )
    eph_keys = sorted(
        {k for t in rec.transactions() for k, v in (t.get("body") or {}).items() if "ephemeral" in k and v}
    )
    obs["ephemeral_keys_used"] = eph_keys
    check("ephemeral events came under `ephemeral` or `de.sorunome.msc2409.ephemeral`", bool(eph_keys), eph_keys)
    obs["ephemeral_samples"] = {
        e["type"]: e for e in rec.ephemeral if e.get("type") in ("m.typing", "m.receipt")
    }

    # 6. Timestamp massaging: ?ts= on a masqueraded send.
    step("timestamp massaging")
    ts_id = await alice.send_text(room_id, "a message from 2020", timestamp=BRIDGED_TS)
    s, b = await real.req("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages", params={"dir": "b", "limit": "30"})
    seen = [e for e in (b.get("chunk", []) if s == 200 else []) if e.get("event_id") == ts_id]
    obs["ts_message_origin_server_ts"] = seen[0].get("origin_server_ts") if seen else None
    check(
        "the real user sees the bridged message with origin_server_ts == ts (/messages)",
        bool(seen) and seen[0].get("origin_server_ts") == BRIDGED_TS and seen[0].get("sender") == alice_id,
        seen or (s, b),
    )
    s, b = await real.req("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/event/{q(ts_id)}")
    check("…and through /event", s == 200 and b.get("origin_server_ts") == BRIDGED_TS, (s, b))

    s, b = await real.req(
        "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/ts1",
        {"msgtype": "m.text", "body": "ordinary user tries ts"}, params={"ts": str(BRIDGED_TS)},
    )
    if s == 200:
        s2, b2 = await real.req("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/event/{q(b['event_id'])}")
        obs["ts_param_from_ordinary_user"] = {"send": s, "origin_server_ts_is_ts": b2.get("origin_server_ts") == BRIDGED_TS}
        check("an ordinary user's ?ts= is ignored", b2.get("origin_server_ts") != BRIDGED_TS, b2)
    else:
        obs["ts_param_from_ordinary_user"] = {"send": s, "errcode": errcode(b)}

    # 7. Masquerading outside the namespace.
    step("masquerading outside the namespace")
    outsider = f"@someoneelse:{server_name}"
    s, b = await as_client.req(
        "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/out1",
        {"msgtype": "m.text", "body": "should not be sent"}, params={"user_id": outsider},
    )
    obs["masquerade_outside_namespace_send"] = [s, errcode(b), b.get("error") if isinstance(b, dict) else None]
    expect("masquerading as a user outside the namespace is refused", "masquerade_outside", s, b)
    s, b = await as_client.req("GET", "/_matrix/client/v3/account/whoami", params={"user_id": outsider})
    obs["masquerade_outside_namespace_whoami"] = [s, errcode(b)]
    expect("whoami?user_id=<outsider> is refused", "masquerade_outside", s, b)
    never = f"@{USER_PREFIX}neverregistered{secrets.token_hex(2)}:{server_name}"
    s, b = await as_client.req("GET", "/_matrix/client/v3/account/whoami", params={"user_id": never})
    obs["masquerade_unregistered_namespaced_whoami"] = [s, errcode(b) if s != 200 else b, b.get("error")]
    s, b = await real.req("GET", "/_matrix/client/v3/account/whoami", params={"user_id": alice_id})
    obs["real_user_with_user_id_param_whoami"] = [s, b if s == 200 else errcode(b)]

    # 8. Exclusivity for ordinary users.
    step("exclusive namespaces refuse ordinary users")
    s, b = await anon.req("GET", "/_matrix/client/v3/register/available", params={"username": f"{USER_PREFIX}bob"})
    obs["register_available_exclusive"] = [s, errcode(b)]
    expect("GET /register/available?username=mbot_bob is refused", "register_exclusive", s, b)
    s, b = await anon.req("POST", "/_matrix/client/v3/register", {"username": f"{USER_PREFIX}bob", "password": "pw-bob"})
    obs["register_exclusive_first_request"] = [s, errcode(b) if s != 401 else "UIA 401"]
    if s == 401:
        s, b = await anon.req(
            "POST", "/_matrix/client/v3/register",
            {"username": f"{USER_PREFIX}bob", "password": "pw-bob", "auth": {"type": "m.login.dummy", "session": b["session"]}},
        )
        obs["register_exclusive_after_dummy_auth"] = [s, errcode(b)]
    expect("an ordinary user registering mbot_bob is refused", "register_exclusive", s, b)
    s, b = await real.req("PUT", f"/_matrix/client/v3/directory/room/{q(f'#{USER_PREFIX}x:{server_name}')}", {"room_id": room_id})
    obs["real_user_create_exclusive_alias"] = [s, errcode(b)]
    expect("an ordinary user creating #mbot_x is refused", "alias_exclusive", s, b)
    s, b = await real.req("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": f"{USER_PREFIX}y"})
    obs["real_user_createroom_exclusive_alias"] = [s, errcode(b)]
    expect("an ordinary user's createRoom with alias #mbot_y is refused", "alias_exclusive", s, b)
    s, b = await real.req("DELETE", f"/_matrix/client/v3/directory/room/{q(portal_alias)}")
    obs["real_user_delete_exclusive_alias"] = [s, errcode(b)]
    expect("an ordinary user deleting the AS's alias is refused", "alias_delete_foreign", s, b)

    # 9. User queries.
    step("user queries")
    before = len(rec.matching("GET", "/_matrix/app/v1/users/"))
    unknown = f"@{USER_PREFIX}unknown:{server_name}"
    s, b = await real.req("GET", f"/_matrix/client/v3/profile/{q(unknown)}")
    await asyncio.sleep(0.5)
    obs["profile_unknown_namespaced_user"] = {
        "status": s, "errcode": errcode(b), "error": b.get("error") if isinstance(b, dict) else b,
        "as_queried": [r["raw_path"] for r in rec.matching("GET", "/_matrix/app/v1/users/")[before:]],
    }
    log(f"profile of {unknown}: {s} {errcode(b)}; AS queries: {obs['profile_unknown_namespaced_user']['as_queried']}")
    invitee = f"@{USER_PREFIX}invitee:{server_name}"
    before = len(rec.matching("GET", "/_matrix/app/v1/users/"))
    s, b = await real.req("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/invite", {"user_id": invitee})
    obs["invite_unknown_namespaced_user"] = [s, b if s == 200 else errcode(b)]
    check("the real user invites an unregistered namespaced user", s == 200, (s, b))
    await wait_until(
        "the invited bridged user joins (AS got the invite, bridge accepted)",
        lambda: any(
            e.get("type") == "m.room.member" and e.get("state_key") == invitee
            and e.get("content", {}).get("membership") == "join"
            for e in rec.events
        ),
    )
    log("ok: the invited bridged user joins (AS got the invite, bridge accepted)")
    queried = [r["raw_path"] for r in rec.matching("GET", "/_matrix/app/v1/users/")[before:]]
    obs["invite_unknown_user_as_queries"] = queried
    check("the homeserver queried the AS for the unknown invitee", any(q(invitee) in p or invitee in p for p in queried), queried)
    dm_user = f"@{USER_PREFIX}dm:{server_name}"
    before = len(rec.matching("GET", "/_matrix/app/v1/users/"))
    s, b = await real.req("POST", "/_matrix/client/v3/createRoom", {"invite": [dm_user], "is_direct": True, "preset": "trusted_private_chat"})
    check("the real user starts a DM with an unregistered namespaced user", s == 200, (s, b))
    dm_room = b["room_id"]
    await wait_until(
        "the DM's bridged user joins",
        lambda: any(
            e.get("type") == "m.room.member" and e.get("state_key") == dm_user and e.get("room_id") == dm_room
            and e.get("content", {}).get("membership") == "join"
            for e in rec.events
        ),
    )
    log("ok: the DM's bridged user joins")
    queried = [r["raw_path"] for r in rec.matching("GET", "/_matrix/app/v1/users/")[before:]]
    obs["dm_unknown_user_as_queries"] = queried
    check("the homeserver queried the AS for the unknown DM invitee", any(q(dm_user) in p or dm_user in p for p in queried), queried)
    obs["user_query_request"] = {
        k: rec.matching("GET", "/_matrix/app/v1/users/")[-1].get(k) for k in ("raw_path", "query", "auth_header")
    }

    # 10. Alias queries: the AS creates the room on demand.
    step("alias queries")
    lazy = f"#{USER_PREFIX}lazy:{server_name}"
    s, b = await real.req("GET", f"/_matrix/client/v3/directory/room/{q(lazy)}")
    obs["directory_lookup_lazy_alias"] = [s, b if s == 200 else errcode(b)]
    check(
        "GET /directory/room/#mbot_lazy resolves to the room the AS created during the query",
        s == 200 and b.get("room_id") == lazily_created.get(lazy), (s, b, lazily_created),
    )
    obs["alias_query_request"] = {
        k: rec.matching("GET", "/_matrix/app/v1/rooms/")[-1].get(k) for k in ("raw_path", "query", "auth_header")
    }
    n = len(rec.matching("GET", "/_matrix/app/v1/rooms/"))
    s, b = await real.req("GET", f"/_matrix/client/v3/directory/room/{q(lazy)}")
    obs["second_lookup_queries_again"] = len(rec.matching("GET", "/_matrix/app/v1/rooms/")) > n
    check("second lookup of the same alias resolves", s == 200, (s, b))
    lazy2 = f"#{USER_PREFIX}lazy2:{server_name}"
    s, b = await real.req("POST", f"/_matrix/client/v3/join/{q(lazy2)}", {})
    obs["join_lazy_alias"] = [s, b if s == 200 else errcode(b)]
    check("joining #mbot_lazy2 (unknown) works through an alias query", s == 200 and b.get("room_id") == lazily_created.get(lazy2), (s, b))
    nothere = f"#{USER_PREFIX}nothere:{server_name}"
    s, b = await real.req("GET", f"/_matrix/client/v3/directory/room/{q(nothere)}")
    obs["directory_lookup_alias_as_404"] = [s, errcode(b)]
    check("an alias the AS answers 404 for is 404", s == 404, (s, b))
    obs["alias_queries"] = [r["raw_path"] + " -> " + str(r["status"]) for r in rec.matching("GET", "/_matrix/app/v1/rooms/")]

    # 11. Third-party protocols.
    step("third-party protocols")
    s, b = await real.req("GET", "/_matrix/client/v3/thirdparty/protocols")
    obs["thirdparty_protocols"] = [s, b]
    check(
        "GET /thirdparty/protocols lists mbotproto",
        s == 200 and isinstance(b, dict) and PROTOCOL in b and isinstance(b[PROTOCOL].get("instances"), list),
        (s, b),
    )
    obs["thirdparty_protocol_as_request"] = {
        k: rec.matching("GET", "/_matrix/app/v1/thirdparty/protocol/")[-1].get(k)
        for k in ("raw_path", "query", "auth_header")
    }
    s, b = await real.req("GET", f"/_matrix/client/v3/thirdparty/protocol/{PROTOCOL}")
    obs["thirdparty_protocol_single"] = [s, b]
    check("GET /thirdparty/protocol/mbotproto answers", s == 200 and "instances" in b, (s, b))
    s, b = await real.req("GET", f"/_matrix/client/v3/thirdparty/location/{PROTOCOL}", params={"channel": "lobby"})
    obs["thirdparty_location"] = [s, b]
    check("GET /thirdparty/location/mbotproto?channel=lobby answers the AS's list", s == 200 and isinstance(b, list) and len(b) == 1, (s, b))
    s, b = await real.req("GET", f"/_matrix/client/v3/thirdparty/user/{PROTOCOL}", params={"username": "carol"})
    obs["thirdparty_user"] = [s, b]
    check("GET /thirdparty/user/mbotproto?username=carol answers the AS's list", s == 200 and isinstance(b, list) and len(b) == 1, (s, b))
    s, b = await real.req("GET", "/_matrix/client/v3/thirdparty/protocol/nosuchproto")
    obs["thirdparty_protocol_unknown"] = [s, b]

    # 12. Every request came with the hs_token.
    step("final checks")
    bad = [r for r in rec.requests if r["auth_header"] != "Bearer <hs_token>" and r["access_token_query"] is not True]
    check("every request from the homeserver carried the hs_token", not bad, bad)
    obs["auth_forms"] = sorted(
        {f"header={r['auth_header']} access_token_query={r['access_token_query']}" for r in rec.requests}
    )
    s, b = await real.req("GET", f"/_matrix/client/v3/profile/{q(bot_mxid)}/displayname")
    check("the bot's displayname is set", s == 200 and b.get("displayname") == "Mautrix Bot", (s, b))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write a registration file")
    g.add_argument("--url", required=True, help="where the appservice listens, e.g. http://127.0.0.1:PORT")
    g.add_argument("--out", required=True)
    g.add_argument("--id", default="mautrixbot")
    g.add_argument("--server-name", default="localhost")
    r = sub.add_parser("run", help="run the appservice and its scenario")
    r.add_argument("--homeserver", required=True)
    r.add_argument("--registration", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--server-name", default="localhost")
    r.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    if args.cmd == "generate":
        return generate(args)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = time.monotonic()
    try:
        rc = asyncio.run(asyncio.wait_for(run(args), timeout=90))
    except asyncio.TimeoutError:
        log("CHECK FAILED: the whole run took over 90 s")
        rc = 3
    log(f"done in {time.monotonic() - started:.1f}s, exit {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
