"""The Python side of Myelin's module host. Runs only on the dedicated Python thread.

Rust starts the thread, calls `start()` (an asyncio loop with Twisted's asyncio reactor installed
before any module is imported), `watch()` and then `run()`. Work from other threads arrives
through Rust's job queue, drained when its wake-up socket is readable. Results go back by calling the `done` callables Rust passes in,
always with JSON text (or, for web responses, bytes), so Rust never touches Python objects
outside the GIL.
"""

import asyncio
import inspect
import json
import sys
import traceback
from types import CoroutineType as _CoroutineType

_loop = None


def start():
    global _loop
    _log_to_myelin()
    _loop = asyncio.new_event_loop()
    asyncio.set_event_loop(_loop)
    from twisted.internet import asyncioreactor

    asyncioreactor.install(_loop)
    # Names the per-call paths use, bound once now that importing Twisted is safe.
    global _defer, _NOT_SPAM, _Codes, _RegistrationBehaviour
    from twisted.internet import defer as _defer
    from synapse.api.errors import Codes as _Codes
    from synapse.module_api import NOT_SPAM as _NOT_SPAM
    from synapse.spam_checker_api import RegistrationBehaviour as _RegistrationBehaviour
    return _loop


def _log_to_myelin():
    """Every module's log records go to Myelin's log (`_rust_log`, set by Rust), with the
    logger's name. Myelin's log decides which levels it shows (its level is set after module
    configs are read, so it is asked per record, before the record is formatted)."""
    import logging

    class ToMyelin(logging.Handler):
        def emit(self, record):
            if not _rust_log_enabled(record.levelno):
                return
            try:
                message = record.getMessage()
            except Exception:
                message = str(record.msg)
            # A traceback goes in a field of its own, so the line keeps its logger name.
            trace = ""
            if record.exc_info:
                trace = logging.Formatter().formatException(record.exc_info)
            elif record.exc_text:
                trace = record.exc_text
            try:
                _rust_log(record.levelno, record.name, message, trace)
            except Exception:
                pass

    handler = ToMyelin()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)


def run():
    from twisted.internet import reactor

    reactor.startRunning(installSignalHandlers=False)
    _loop.run_forever()


def watch(fd, drain):
    """Rust's job queue: `drain` runs queued jobs whenever the wake-up socket `fd` is readable."""
    global _drain
    _drain = drain
    _loop.add_reader(fd, drain)


def rewake():
    """A drain that used up its time budget continues after the loop's other ready work."""
    _loop.call_soon(_drain)


# --- loading -----------------------------------------------------------------------------------

def load_module(name, config_json, legacy, done):
    """Imports `a.b.Class`, runs its parse_config; done(dict) with {"ok"} or {"config_error"} or {"fatal"}."""
    try:
        module_path, _, attr = name.rpartition(".")
        if not module_path:
            raise ValueError("not enough values to unpack (expected 2, got 1)")
        import importlib

        cls = getattr(importlib.import_module(module_path), attr)
        config = json.loads(config_json)
        if hasattr(cls, "parse_config"):
            try:
                config = cls.parse_config(config)
            except Exception as e:
                from synapse.config._base import ConfigError

                if isinstance(e, ConfigError):
                    done({"config_error": {"message": e.msg, "path": [str(p) for p in (e.path or [])], "wrapped": True}})
                else:
                    done({"config_error": {"message": str(e), "path": [], "wrapped": True}})
                return
        global _loaded
        _loaded += 1
        _pending[name, _loaded] = (cls, config, legacy)
        done({"ok": _loaded})
    except BaseException:
        done({"fatal": traceback.format_exc()})


_pending = {}
_loaded = 0
_instances = []

# The methods a legacy spam checker may implement (Synapse's load_legacy_spam_checkers).
_LEGACY_SPAM_METHODS = (
    "check_event_for_spam", "user_may_invite", "federated_user_may_invite", "user_may_create_room",
    "user_may_create_room_alias", "user_may_publish_room", "check_username_for_spam",
    "check_registration_for_spam", "check_media_file_for_spam",
)


def _build_legacy(cls, config, api):
    """Synapse's legacy construction: keywords, `api` only if the constructor names it."""
    params = inspect.signature(cls).parameters
    checker = cls(config=config, api=api) if "api" in params else cls(config=config)
    found = {}
    for name in _LEGACY_SPAM_METHODS:
        method = getattr(checker, name, None)
        if method is None:
            continue
        if name == "check_registration_for_spam":
            n = arity(method)
            if n == 3:
                method = (lambda m: lambda email, username, request_info, auth_provider_id=None: m(email, username, request_info))(method)
            elif n != 4:
                raise RuntimeError("Bad signature for callback check_registration_for_spam")
        found[name] = method
    api.register_spam_checker_callbacks(**found)
    return checker


def instantiate(name, index, host, done):
    try:
        cls, config, legacy = _pending.pop((name, index))
        from synapse.module_api import ModuleApi

        api = ModuleApi(host, name)
        _instances.append(_build_legacy(cls, config, api) if legacy else cls(config, api))
        done({"ok": True})
    except BaseException:
        done({"fatal": traceback.format_exc()})


# --- media storage providers ------------------------------------------------------------------

_providers = []


class _ProviderHomeServer:
    """The part of Synapse's HomeServer a storage provider's constructor uses."""

    def __init__(self, api, media_store_path):
        from types import SimpleNamespace
        from twisted.internet import reactor

        self._api = api
        self._reactor = reactor
        self.hostname = api.server_name
        self.config = SimpleNamespace(
            media=SimpleNamespace(media_store_path=media_store_path),
            server=SimpleNamespace(server_name=api.server_name),
        )

    def get_module_api(self):
        return self._api

    def get_reactor(self):
        return self._reactor


def instantiate_storage_provider(name, index, host, media_store_path, done):
    """Builds a `media_storage_providers` class as Synapse does: `Class(hs, parsed_config)`."""
    try:
        cls, config, _ = _pending.pop((name, index))
        from synapse.module_api import ModuleApi

        hs = _ProviderHomeServer(ModuleApi(host, name), media_store_path)
        _providers.append(cls(hs, config))
        done({"ok": len(_providers) - 1})
    except BaseException:
        done({"fatal": traceback.format_exc()})


def _file_info(info_json):
    from synapse.media._base import FileInfo, ThumbnailInfo

    info = json.loads(info_json)
    thumbnail = info.get("thumbnail")
    if thumbnail is not None:
        thumbnail = ThumbnailInfo(
            width=thumbnail["width"], height=thumbnail["height"], method=thumbnail["method"],
            type=thumbnail["type"], length=thumbnail["length"])
    return FileInfo(info.get("server_name"), info["file_id"], url_cache=info.get("url_cache", False), thumbnail=thumbnail)


def _settle(make, done, answer):
    """Runs `make()` (sync, coroutine or Deferred); done(answer(value)) or done(the error)."""
    try:
        result = make()
        if not isinstance(result, _defer.Deferred):
            if inspect.isawaitable(result):
                result = _defer.ensureDeferred(result)
            else:
                result = _defer.succeed(result)
    except BaseException as e:
        done(_error_payload(e))
        return
    result.addCallbacks(lambda value: done(answer(value)), lambda f: done(_error_payload(f.value)))


def provider_store_file(index, path, info_json, done):
    provider = _providers[index]
    _settle(lambda: provider.store_file(path, _file_info(info_json)), done, lambda _: {"ok": True})


class _FileConsumer:
    """A Twisted consumer writing what a Responder produces into a file. Push producers write
    as they like; a pull producer (`streaming=False`) is asked for more until it unregisters."""

    def __init__(self, f):
        self._f = f
        self._producer = None

    def registerProducer(self, producer, streaming):
        self._producer = producer
        if not streaming:
            from twisted.internet import reactor

            def pull():
                if self._producer is producer:
                    producer.resumeProducing()
                    reactor.callLater(0, pull)

            reactor.callLater(0, pull)

    def unregisterProducer(self):
        self._producer = None

    def write(self, data):
        self._f.write(data)


def provider_fetch(index, path, info_json, dest, done):
    """Asks a provider for a file; its Responder writes the file to `dest` (Synapse's
    `ensure_media_is_in_local_cache`). done({"fetched": bool})."""
    import os

    provider = _providers[index]

    async def fetch():
        responder = provider.fetch(path, _file_info(info_json))
        if inspect.isawaitable(responder):
            responder = await responder
        if responder is None:
            return False
        with responder:
            with open(dest, "wb") as f:
                written = responder.write_to_consumer(_FileConsumer(f))
                if inspect.isawaitable(written):
                    await written
                f.flush()
                os.fsync(f.fileno())
        return True

    _settle(fetch, done, lambda fetched: {"fetched": bool(fetched)})


# --- callbacks ---------------------------------------------------------------------------------

def _is_codes(value):
    return isinstance(value, _Codes)


def classify(kind, value):
    """Synapse's return-value normalisation (spamchecker_callbacks.py), as plain data."""
    NOT_SPAM, RegistrationBehaviour = _NOT_SPAM, _RegistrationBehaviour
    forbidden = {"deny": "M_FORBIDDEN", "fields": {}}
    if kind == "check_event_allowed":
        # (allowed, replacement dict); an old-style plain dict means allowed with it.
        if isinstance(value, dict):
            return {"allowed": True, "replacement": value}
        if isinstance(value, tuple) and len(value) == 2:
            allowed, new = value
            return {"allowed": bool(allowed), "replacement": new if isinstance(new, dict) else None}
        return {"allowed": bool(value), "replacement": None}
    if kind == "on_create_room":
        result, config = value
        if result is False:
            return {"exception": "on_create_room returned False"}
        return {"config": config}
    if kind in ("auth_checker", "check_3pid_auth"):
        # Synapse wants (user_id, optional callback); anything else is logged and skipped.
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
            return {"user": value[0]}
        if value is not None:
            return {"user": None, "warning": "Wrong type returned by module API callback %r" % (value,)}
        return {"user": None}
    if kind in ("on_new_event", "on_user_registration", "on_logged_out", "on_profile_update",
                "on_user_deactivation_status_changed", "on_user_login", "on_account_data_updated",
                "on_add_user_third_party_identifier", "on_remove_user_third_party_identifier", "on_threepid_bind",
                "on_event_delivered_over_federation"):
        return {"done": True}
    if kind == "get_interested_users":
        from synapse.module_api import PRESENCE_ALL_USERS

        if value == PRESENCE_ALL_USERS:
            return {"all": True}
        if not isinstance(value, set):
            return {"users": [], "warning": "Wrong type returned by module API callback %r, expected set" % (value,)}
        return {"users": [str(u) for u in value]}
    if kind == "get_users_for_states":
        if not isinstance(value, dict):
            return {"routed": {}, "warning": "Wrong type returned by module API callback %r, expected Dict" % (value,)}
        routed = {}
        for user, states in value.items():
            if not isinstance(states, set):
                return {"routed": routed, "warning": "Wrong type returned by module API callback %r, expected Set" % (states,)}
            routed[str(user)] = [_presence_dict(state) for state in states]
        return {"routed": routed}
    if kind == "add_field_to_unsigned_callback":
        # Synapse merges the answer with dict.update: anything else fails the request.
        return {"fields": dict(value)}
    if kind == "is_user_expired":
        return {"expired": None if value is None else bool(value)}
    if kind == "on_legacy_send_mail":
        return {"done": True}
    if kind == "on_legacy_renew":
        valid, stale, expiration_ts = value
        return {"valid": bool(valid), "stale": bool(stale), "expiration_ts": int(expiration_ts)}
    if kind == "on_legacy_admin_request":
        return {"expiration_ts": int(value)}
    if kind in ("check_username_for_spam", "should_drop_federated_event"):
        return {"bool": bool(value)}
    if kind in ("get_username_for_registration", "get_displayname_for_registration"):
        if value is not None and not isinstance(value, str):
            return {"name": None, "warning": "Ignoring non-string value returned by %s callback: %r" % (kind, value)}
        return {"name": value}
    if kind == "get_ratelimit_override_for_user":
        if value is None:
            return {"override": None}
        return {"override": {"per_second": float(value.per_second), "burst_count": int(value.burst_count)}}
    if kind == "get_media_config_for_user":
        return {"config": value if isinstance(value, dict) and value else None}
    if kind == "get_media_upload_limits_for_user":
        if value is None:
            return {"limits": None}
        return {"limits": [{"max_bytes": int(l.max_bytes), "time_period_ms": int(l.time_period_ms),
                            "info_uri": l.info_uri, "can_upgrade": bool(l.can_upgrade)} for l in value]}
    if kind == "on_media_upload_limit_exceeded":
        return {"done": True}
    if kind == "is_user_allowed_to_upload_media_of_size":
        # Synapse refuses on any falsy answer.
        return {"bool": bool(value)}
    if kind == "is_3pid_allowed":
        # Synapse refuses only on a literal False; another non-bool answer is warned about.
        if not isinstance(value, bool):
            return {"bool": True, "warning": "Ignoring non-string value returned by is_3pid_allowed callback: %r" % (value,)}
        return {"bool": value}
    if kind in ("check_visibility_can_be_modified", "check_can_deactivate_user", "check_threepid_can_be_invited",
                "check_can_shutdown_room"):
        # Synapse refuses only on a literal False.
        return {"bool": value is not False}
    if kind == "check_registration_for_spam":
        if isinstance(value, RegistrationBehaviour):
            return {"registration": value.value}
        return {"exception": "AssertionError: check_registration_for_spam returned %r" % (value,)}
    tuple_ok = isinstance(value, tuple) and len(value) == 2 and _is_codes(value[0]) and isinstance(value[1], dict)
    if kind == "check_event_for_spam":
        if value is False or value == NOT_SPAM:
            return {"allow": True}
        if value is True:
            return forbidden
        if _is_codes(value):
            return {"deny": value.value, "fields": {}}
        if tuple_ok:
            return {"deny": value[0].value, "fields": value[1]}
        if isinstance(value, str):
            return {"message": value}
        return dict(forbidden, warning="Module returned invalid value, rejecting message as spam")
    if kind == "check_media_file_for_spam":
        if value is False or value == NOT_SPAM:
            return {"allow": True}
    elif kind in ("user_may_send_state_event",):
        if value == NOT_SPAM:
            return {"allow": True}
        if _is_codes(value):
            return {"deny": value.value, "fields": {}}
        return dict(forbidden, warning="Module returned invalid value, rejecting")
    elif kind == "check_login_for_spam":
        if value == NOT_SPAM:
            return {"allow": True}
    else:  # the user_may_* family: True allows
        if value is True or value == NOT_SPAM:
            return {"allow": True}
        if value is False:
            return forbidden
    if _is_codes(value):
        return {"deny": value.value, "fields": {}}
    if tuple_ok:
        return {"deny": value[0].value, "fields": value[1]}
    return dict(forbidden, warning="Module returned invalid value, rejecting")


def _upload_limit_args(args):
    from synapse.module_api import MediaUploadLimit

    user_id, limit, sent, attempted = args
    return [user_id, MediaUploadLimit(limit["max_bytes"], limit["time_period_ms"], limit.get("info_uri"),
                                      limit.get("can_upgrade", False)), sent, attempted]


def _presence_dict(state):
    return {"user_id": state.user_id, "state": state.state, "last_active_ts": state.last_active_ts,
            "status_msg": state.status_msg, "currently_active": bool(state.currently_active)}


def _presence_states_args(args):
    from synapse.module_api import UserPresenceState

    return [[UserPresenceState(**state) for state in args[0]]]


def _error_payload(exc):
    from synapse.api.errors import SynapseError

    if isinstance(exc, SynapseError):
        return {"matrix": {"status": exc.code, "errcode": str(getattr(exc.errcode, "value", exc.errcode)), "error": exc.msg,
                           "fields": getattr(exc, "_additional_fields", {}) or {}}}
    return {"exception": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}


def _event_args(args):
    from synapse.events import make_event

    return [make_event(args[0])]


def _event_and_state_args(args):
    from synapse.events import make_event

    state = {(e["type"], e.get("state_key", "")): make_event(e) for e in args[1]}
    return [make_event(args[0]), state]


def _room_state_args(args):
    """(room_id, state events, visibility): the state as Synapse's StateMap."""
    from synapse.events import make_event

    state = {(e["type"], e.get("state_key", "")): make_event(e) for e in args[1]}
    return [args[0], state, args[2]]


def _threepid_state_args(args):
    """(medium, address, state events): the state as Synapse's StateMap."""
    from synapse.events import make_event

    state = {(e["type"], e.get("state_key", "")): make_event(e) for e in args[2]}
    return [args[0], args[1], state]


def _profile_args(args):
    from synapse.module_api import ProfileInfo

    profile = args[1]
    return [args[0], ProfileInfo(profile.get("avatar_url"), profile.get("display_name"))] + args[2:]


def _create_room_args(args):
    from synapse.types import create_requester

    return [create_requester(args[0]), args[1], args[2]]


def _username_args(args):
    from synapse.module_api import UserProfile

    return [UserProfile(args[0])] + args[1:]


class _AdminRequest:
    """What `on_legacy_admin_request` reads of Synapse's request: its JSON body (through
    `parse_json_object_from_request`), method, path and query arguments."""

    def __init__(self, body):
        import io

        self.content = io.BytesIO(json.dumps(body).encode())
        self.method = b"POST"
        self.path = b"/_synapse/admin/v1/account_validity/validity"
        self.uri = self.path
        self.args = {}
        self.requestHeaders = None


def _admin_request_args(args):
    return [_AdminRequest(args[0])]


def _delivery_args(args):
    from synapse.events import make_event
    from synapse.module_api.callbacks.federation import (
        FederatedEventDeliveryMethod,
        FederationEventDeliveryEvent,
    )

    server_name, events, method = args
    return [FederationEventDeliveryEvent(server_name, [make_event(e) for e in events],
                                         FederatedEventDeliveryMethod(method))]


def _request_info_args(args):
    args[-2] = [tuple(x) for x in args[-2]]
    return args


def _media_args(args):
    from synapse.media._base import FileInfo
    from synapse.media.media_storage import ReadableFileWrapper

    path, media_id, server_name, thumbnail = args
    return [ReadableFileWrapper(None, path), FileInfo(server_name, media_id, False, None)]


def _alias_args(args):
    from synapse.types import RoomAlias

    return [args[0], RoomAlias.from_string(args[1])]


# How each callback's JSON arguments become the objects Synapse passes.
_ARGUMENTS = {
    "on_legacy_admin_request": _admin_request_args,
    "on_event_delivered_over_federation": _delivery_args,
    "check_event_for_spam": _event_args,
    "check_event_allowed": _event_and_state_args,
    "on_new_event": _event_and_state_args,
    "on_create_room": _create_room_args,
    "check_visibility_can_be_modified": _room_state_args,
    "check_threepid_can_be_invited": _threepid_state_args,
    "on_profile_update": _profile_args,
    "check_username_for_spam": _username_args,
    "check_login_for_spam": _request_info_args,
    "check_registration_for_spam": _request_info_args,
    "check_media_file_for_spam": _media_args,
    "user_may_create_room_alias": _alias_args,
    "get_users_for_states": _presence_states_args,
    "add_field_to_unsigned_callback": _event_args,
    "on_media_upload_limit_exceeded": _upload_limit_args,
}


def _resume(coro, yielded):
    """A generator that continues `coro` from its first suspension, for Twisted to drive.

    Forwards every send and throw, so the coroutine runs exactly as it would have under
    `ensureDeferred` from the start.
    """
    while True:
        try:
            sent = yield yielded
        except BaseException as e:
            try:
                yielded = coro.throw(e)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


def invoke(kind, fn, args, done):
    """Calls a module callback; sync, async and Deferred-returning ones all work.

    A coroutine is first stepped here: most module callbacks finish without suspending, and
    then no Deferred is built at all. One that suspends is handed to Twisted where it stopped.
    """
    try:
        convert = _ARGUMENTS.get(kind)
        if convert is not None:
            args = convert(args)
        result = fn(*args)
        if type(result) is _CoroutineType:
            try:
                yielded = result.send(None)
            except StopIteration as stop:
                result = stop.value
            else:
                result = _defer.ensureDeferred(_resume(result, yielded))
        elif not isinstance(result, _defer.Deferred) and inspect.isawaitable(result):
            result = _defer.ensureDeferred(result)
    except BaseException as e:
        done(_error_payload(e))
        return
    if isinstance(result, _defer.Deferred):
        result.addCallbacks(lambda value: _finish(kind, args, value, done), lambda f: done(_error_payload(f.value)))
    else:
        _finish(kind, args, result, done)


def _finish(kind, args, value, done):
    if kind == "on_create_room":
        value = (value, args[1])
    try:
        answer = classify(kind, value)
    except BaseException as e:
        answer = _error_payload(e)
    done(answer)


def arity(fn):
    try:
        return len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return -1


# --- web resources -----------------------------------------------------------------------------

_sites = {}


def mount(path, resource):
    """A Site whose tree holds `resource` at `path`, as Synapse's create_resource_tree does."""
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    root = Resource()
    node = root
    segments = path.encode().split(b"/")[1:]
    for i, seg in enumerate(segments):
        if i == len(segments) - 1:
            node.putChild(seg, resource)
        else:
            child = Resource()
            node.putChild(seg, child)
            node = child
    site = Site(root)
    site.logRequest = False
    site.noisy = False
    _sites[path] = site


def serve(path, method, uri, headers, body, client_ip, done):
    """Feeds one HTTP request to the resource's Site over an in-memory transport."""
    from twisted.internet import address
    from twisted.internet.testing import StringTransport

    site = _sites[path]

    class Transport(StringTransport):
        finished = False

        def loseConnection(self):
            if not self.finished:
                self.finished = True
                raw = self.value()
                head, _, rest = raw.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                status = int(lines[0].split(b" ")[1])
                hdrs = []
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    hdrs.append([k.decode("latin-1"), v.strip().decode("latin-1")])
                done(status, json.dumps(hdrs), rest)
            StringTransport.loseConnection(self)

    try:
        proto = site.buildProtocol(address.IPv4Address("TCP", client_ip or "127.0.0.1", 0))
        transport = Transport(peerAddress=address.IPv4Address("TCP", client_ip or "127.0.0.1", 0))
        proto.makeConnection(transport)
        req = [f"{method} {uri} HTTP/1.0".encode()]
        for k, v in json.loads(headers):
            if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                req.append(f"{k}: {v}".encode("latin-1"))
        req.append(b"Content-Length: %d" % len(body))
        req.append(b"Connection: close")
        proto.dataReceived(b"\r\n".join(req) + b"\r\n\r\n" + bytes(body))
    except BaseException:
        traceback.print_exc(file=sys.stderr)
        done(500, "[]", b'{"errcode":"M_UNKNOWN","error":"Internal server error"}')
