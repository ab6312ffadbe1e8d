"""synapse.module_api, backed by Myelin.

`ModuleApi` forwards to the Rust host: registration goes into Myelin's one callback registry,
and the asynchronous members return Deferreds that the host fires on this thread's reactor.
Members Myelin lacks raise an AttributeError saying so.
"""

import base64
import json
import logging

from twisted.internet import defer, task

from synapse.api.errors import Codes, HttpResponseException, SynapseError  # noqa: F401
from synapse.events import EventBase  # noqa: F401
from synapse.http.server import (  # noqa: F401
    DirectServeHtmlResource,
    DirectServeJsonResource,
    respond_with_html,
    respond_with_json,
)
from synapse.http.servlet import parse_json_object_from_request  # noqa: F401
from synapse.logging.context import make_deferred_yieldable, run_in_background  # noqa: F401
from synapse.metrics.background_process_metrics import run_as_background_process  # noqa: F401
from synapse.module_api import errors  # noqa: F401
from synapse.spam_checker_api import RegistrationBehaviour  # noqa: F401
from synapse.types import (  # noqa: F401
    Absent,
    AbsentType,
    DomainSpecificString,
    JsonDict,
    JsonMapping,
    Requester,
    RoomAlias,
    RoomID,
    StateMap,
    UserID,
)
from synapse.util.caches.descriptors import CachedFunction, cached  # noqa: F401

# What Synapse 1.163's `synapse.module_api` exports, name for name (a test compares the two).
__all__ = [
    "errors",
    "make_deferred_yieldable",
    "parse_json_object_from_request",
    "respond_with_html",
    "run_in_background",
    "run_as_background_process",
    "cached",
    "CachedFunction",
    "NOT_SPAM",
    "UserID",
    "DomainSpecificString",
    "DatabasePool",
    "LoggingTransaction",
    "DirectServeHtmlResource",
    "DirectServeJsonResource",
    "SimpleHttpClient",
    "SynapseRequest",
    "ModuleApi",
    "AccountDataManager",
    "PublicRoomListManager",
    "PRESENCE_ALL_USERS",
    "UserPresenceState",
    "LoginResponse",
    "JsonDict",
    "JsonMapping",
    "EventBase",
    "StateMap",
    "ProfileInfo",
    "RoomAlias",
    "RoomID",
    "Requester",
    "UserInfo",
    "UserIpAndAgent",
    "UserProfile",
    "Absent",
    "AbsentType",
    "RatelimitOverride",
    "MediaUploadLimit",
]

from twisted.web.server import Request as SynapseRequest  # noqa: E402,F401

logger = logging.getLogger(__name__)

NOT_SPAM = "NOT_SPAM"
PRESENCE_ALL_USERS = "ALL"

class UserProfile(dict):
    pass


class LoginResponse(dict):
    """What a login answers (Synapse's TypedDict): user_id, access_token, home_server,
    expires_in_ms, refresh_token, device_id, well_known."""


class UserIpAndAgent:
    """An IP address and user agent a user connected from, and when last."""

    def __init__(self, ip, user_agent, last_seen):
        self.ip = ip
        self.user_agent = user_agent
        self.last_seen = last_seen


class UserPresenceState:
    """A user's presence, with Synapse's fields."""

    def __init__(self, user_id, state, last_active_ts=0, last_federation_update_ts=0, last_user_sync_ts=0,
                 status_msg=None, currently_active=False):
        self.user_id = user_id
        self.state = state
        self.last_active_ts = last_active_ts
        self.last_federation_update_ts = last_federation_update_ts
        self.last_user_sync_ts = last_user_sync_ts
        self.status_msg = status_msg
        self.currently_active = currently_active

    def as_dict(self):
        return dict(vars(self))

    def _key(self):
        return (self.user_id, self.state, self.last_active_ts, self.last_federation_update_ts,
                self.last_user_sync_ts, self.status_msg, self.currently_active)

    # Frozen and hashable by value, as Synapse's attrs class: modules keep states in sets.
    def __eq__(self, other):
        return isinstance(other, UserPresenceState) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def copy_and_replace(self, **kwargs):
        return UserPresenceState(**dict(vars(self), **kwargs))

    def __repr__(self):
        return "UserPresenceState(user_id=%r, state=%r)" % (self.user_id, self.state)


class RatelimitOverride:
    """A per-user rate limit: actions per second (0 disables limiting) and the burst."""

    def __init__(self, per_second, burst_count):
        self.per_second = per_second
        self.burst_count = burst_count


class MediaUploadLimit:
    """A limit on how many bytes a user may upload in a time period."""

    def __init__(self, max_bytes, time_period_ms, info_uri=None, can_upgrade=False):
        self.max_bytes = max_bytes
        self.time_period_ms = time_period_ms
        self.info_uri = info_uri
        self.can_upgrade = can_upgrade


class DatabasePool:
    """Synapse's database pool, for annotations only: Myelin gives modules no SQL access."""


class LoggingTransaction:
    """Synapse's database transaction, for annotations only: Myelin gives modules no SQL access."""


class ProfileInfo:
    def __init__(self, avatar_url, display_name):
        self.avatar_url = avatar_url
        self.display_name = display_name


class UserInfo:
    def __init__(self, d):
        self.user_id = UserID.from_string(d["user_id"])
        self.is_admin = d["is_admin"]
        self.is_guest = d["is_guest"]
        self.is_deactivated = d["is_deactivated"]
        self.is_shadow_banned = d["is_shadow_banned"]
        self.creation_ts = d.get("creation_ts", 0)
        self.user_type = None
        self.approved = True
        self.locked = False
        self.suspended = False
        self.appservice_id = d.get("appservice_id")
        self.consent_server_notice_sent = None
        self.consent_version = None
        self.consent_ts = None


def _request_failure(message):
    from twisted.internet.error import ConnectError

    if message.startswith("invalid JSON"):
        return ValueError(message)
    return ConnectError(string=message)


def _deferred_call(host, op, args, convert=lambda x: x):
    d = defer.Deferred()

    def resolve(text):
        r = json.loads(text)
        if "error" in r:
            e = r["error"]
            d.errback(SynapseError(e["status"], e["message"], e["errcode"], e.get("fields") or None))
        elif "http_status" in r:
            d.errback(HttpResponseException(r["http_status"], "HTTP %d" % r["http_status"],
                                            base64.b64decode(r["body"])))
        elif "exception" in r:
            # The request never got an answer (refused, unreachable, timed out, blocked) or the
            # answer was not JSON: Synapse's client raises here too.
            d.errback(_request_failure(r["exception"]))
        elif "ok" in r:
            # A conversion that raises (a refusal, a malformed answer) fails the Deferred
            # rather than leaving it unfired.
            try:
                value = convert(r["ok"])
            except Exception as e:
                d.errback(e)
            else:
                d.callback(value)
        else:
            d.errback(RuntimeError("unexpected answer from Myelin: %r" % (r,)))

    host.call(op, json.dumps(args), resolve)
    return d


class SimpleHttpClient:
    """ModuleApi.http_client: get_json and post_json_get_json, raising HttpResponseException."""

    def __init__(self, host):
        self._host = host

    @staticmethod
    def _headers(headers):
        out = []
        for k, v in (headers or {}).items():
            k = k.decode() if isinstance(k, bytes) else k
            for value in v if isinstance(v, (list, tuple)) else [v]:
                out.append([k, value.decode() if isinstance(value, bytes) else value])
        return out

    def get_json(self, uri, args=None, headers=None):
        if args:
            from urllib.parse import urlencode

            uri = uri + ("&" if "?" in uri else "?") + urlencode(args, doseq=True)
        return _deferred_call(self._host, "http", {"method": "GET", "url": uri, "headers": self._headers(headers)})

    def post_json_get_json(self, uri, post_json, headers=None):
        return _deferred_call(self._host, "http", {"method": "POST", "url": uri, "headers": self._headers(headers),
                                                   "body": post_json})


class PublicRoomListManager:
    def __init__(self, host):
        self._host = host

    def room_is_in_public_room_list(self, room_id):
        return _deferred_call(self._host, "room_is_public", {"room_id": room_id})

    def add_room_to_public_room_list(self, room_id):
        return _deferred_call(self._host, "set_room_public", {"room_id": room_id, "public": True})

    def remove_room_from_public_room_list(self, room_id):
        return _deferred_call(self._host, "set_room_public", {"room_id": room_id, "public": False})


class AccountDataManager:
    """ModuleApi.account_data_manager: global account data of local users."""

    def __init__(self, api):
        self._api = api

    def _check_user(self, user_id):
        if not self._api.is_mine(user_id):
            raise ValueError("Trying to get or set account data for non-local user %r" % (user_id,))

    def get_global(self, user_id, data_type):
        from types import MappingProxyType

        self._check_user(user_id)
        return _deferred_call(self._api._host, "get_global_account_data", {"user_id": user_id, "type": data_type},
                              lambda r: None if r is None else MappingProxyType(r))

    def put_global(self, user_id, data_type, new_data):
        self._check_user(user_id)
        if not isinstance(data_type, str):
            raise TypeError("data_type must be a str")
        if not isinstance(new_data, dict):
            raise TypeError("new_data must be a dict")
        return _deferred_call(self._api._host, "put_global_account_data",
                              {"user_id": user_id, "type": data_type, "content": new_data})


class ModuleApi:
    def __init__(self, host, module_name):
        self._host = host
        self._module_name = module_name
        self._http_client = SimpleHttpClient(host)
        self._public_room_list_manager = PublicRoomListManager(host)

    def __getattr__(self, name):
        raise AttributeError("Myelin's ModuleApi does not provide %r (yet)" % (name,))

    # --- registration ---

    def _callbacks(self, method, given):
        """The (name, function) pairs given to `register_<method>_callbacks` that Myelin calls
        (its list comes from Rust: module-api's `callbacks::NAMES`); the others are warned of."""
        calls = self._host.callback_names(method)
        chosen = []
        for name, fn in given.items():
            if name == "self" or fn is None:
                continue
            if name in calls:
                chosen.append((name, fn))
            else:
                logger.warning("Module %s registered %s, which Myelin does not call yet", self._module_name, name)
        return chosen

    def register_spam_checker_callbacks(
        self, *, check_event_for_spam=None, user_may_invite=None, user_may_join_room=None,
        user_may_create_room=None, user_may_create_room_alias=None, user_may_publish_room=None,
        user_may_send_state_event=None, check_username_for_spam=None, check_registration_for_spam=None,
        check_login_for_spam=None, check_media_file_for_spam=None, federated_user_may_invite=None,
        user_may_send_3pid_invite=None, should_drop_federated_event=None,
    ):
        given = dict(locals())
        from myelin_host import arity

        for name, fn in self._callbacks("spam_checker", given):
            self._host.register_spam(self._module_name, name, fn, arity(fn))

    def register_third_party_rules_callbacks(
        self, *, check_event_allowed=None, on_create_room=None, check_threepid_can_be_invited=None,
        check_visibility_can_be_modified=None, on_new_event=None, check_can_shutdown_room=None,
        check_can_deactivate_user=None, on_profile_update=None, on_user_deactivation_status_changed=None,
        on_threepid_bind=None, on_add_user_third_party_identifier=None, on_remove_user_third_party_identifier=None,
    ):
        for name, fn in self._callbacks("third_party_rules", locals()):
            self._host.register_third_party(self._module_name, name, fn)

    def register_password_auth_provider_callbacks(
        self, *, check_3pid_auth=None, on_logged_out=None, auth_checkers=None, get_username_for_registration=None,
        get_displayname_for_registration=None, is_3pid_allowed=None,
    ):
        for (login_type, fields), fn in (auth_checkers or {}).items():
            self._host.register_auth_checker(self._module_name, login_type, list(fields), fn)
        if check_3pid_auth is not None:
            self._host.register_third_party(self._module_name, "check_3pid_auth", check_3pid_auth)
        if on_logged_out is not None:
            self._host.register_third_party(self._module_name, "on_logged_out", on_logged_out)
        for name, fn in (("get_username_for_registration", get_username_for_registration),
                         ("get_displayname_for_registration", get_displayname_for_registration)):
            if fn is not None:
                self._host.register_third_party(self._module_name, name, fn)
        if is_3pid_allowed is not None:
            self._host.register_third_party(self._module_name, "is_3pid_allowed", is_3pid_allowed)

    def register_account_validity_callbacks(
        self, *, is_user_expired=None, on_user_registration=None, on_user_login=None, on_legacy_send_mail=None,
        on_legacy_renew=None, on_legacy_admin_request=None,
    ):
        for name, fn in self._callbacks("account_validity", locals()):
            self._host.register_third_party(self._module_name, name, fn)

    def register_account_data_callbacks(self, *, on_account_data_updated=None):
        for name, fn in self._callbacks("account_data", locals()):
            self._host.register_repository(self._module_name, name, fn)

    def register_media_repository_callbacks(
        self, *, get_media_config_for_user=None, is_user_allowed_to_upload_media_of_size=None,
        get_media_upload_limits_for_user=None, on_media_upload_limit_exceeded=None,
    ):
        for name, fn in self._callbacks("media_repository", locals()):
            self._host.register_repository(self._module_name, name, fn)

    def register_presence_router_callbacks(self, *, get_users_for_states=None, get_interested_users=None):
        if [get_users_for_states, get_interested_users].count(None) == 1:
            raise RuntimeError(
                "PresenceRouter modules must register neither or both of the paired callbacks: "
                "[get_users_for_states, get_interested_users]"
            )
        chosen = dict(self._callbacks("presence_router", locals()))
        if chosen:
            self._host.register_presence_router(
                self._module_name, chosen["get_users_for_states"], chosen["get_interested_users"])

    def register_ratelimit_callbacks(self, *, get_ratelimit_override_for_user=None):
        for name, fn in self._callbacks("ratelimit", locals()):
            self._host.register_repository(self._module_name, name, fn)

    def register_add_extra_fields_to_unsigned_client_event_callbacks(self, *, add_field_to_unsigned_callback=None):
        for _, fn in self._callbacks("add_extra_fields_to_unsigned_client_event", locals()):
            self._host.register_unsigned(self._module_name, fn)

    def register_federation_callbacks(self, *, on_event_delivered_over_federation=None):
        for name, fn in self._callbacks("federation", locals()):
            self._host.register_repository(self._module_name, name, fn)

    def register_background_update_controller_callbacks(self, *, on_update, default_batch_size=None,
                                                        min_batch_size=None):
        # Myelin's storage has no background updates for a controller to pace: accepted, unused.
        logger.info("Module %s registered a background update controller; Myelin runs no background "
                    "updates, so it is never called", self._module_name)

    def register_web_resource(self, path, resource):
        import myelin_host

        if self._host.register_web(self._module_name, path):
            myelin_host.mount(path, resource)

    # --- facts ---

    @property
    def server_name(self):
        return self._host.server_name()

    @property
    def public_baseurl(self):
        return self._host.public_baseurl()

    @property
    def email_app_name(self):
        return self._host.email_app_name()

    @property
    def custom_template_dir(self):
        return self._host.custom_template_directory()

    def send_mail(self, recipient, subject, html, text):
        """Sends a mail from the server (its `email.notif_from`), as Synapse's send_mail."""
        return _deferred_call(self._host, "send_mail",
                              {"recipient": recipient, "subject": subject, "html": html, "text": text},
                              lambda _: None)

    def read_templates(self, filenames, custom_template_directory=None):
        """Jinja2 templates by file name, looked up in the server's `custom_template_directory`
        and then `custom_template_directory`, as Synapse's; HTML ones auto-escaped, with
        Synapse's `format_ts` and `mxc_to_http` filters. Needs jinja2 (a dependency of the module,
        as it is of Synapse)."""
        import time
        import urllib.parse

        import jinja2

        dirs = [d for d in (self.custom_template_dir, custom_template_directory) if d]
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(dirs),
                                 autoescape=jinja2.select_autoescape(["html", "htm", "xml"]))
        base = self.public_baseurl

        def format_ts(value, fmt):
            return time.strftime(fmt, time.localtime(value / 1000))

        def mxc_to_http(value, width, height, resize_method="crop"):
            if not value.startswith("mxc://"):
                return ""
            server_and_media_id = value[6:]
            fragment = None
            if "#" in server_and_media_id:
                server_and_media_id, fragment = server_and_media_id.split("#", 1)
                fragment = "#" + fragment
            params = {"width": width, "height": height, "method": resize_method}
            return "%s_matrix/media/v1/thumbnail/%s?%s%s" % (
                base, server_and_media_id, urllib.parse.urlencode(params), fragment or "")

        env.filters.update({"format_ts": format_ts, "mxc_to_http": mxc_to_http})
        return [env.get_template(name) for name in filenames]

    @property
    def worker_name(self):
        return None

    @property
    def worker_app(self):
        return None

    @property
    def http_client(self):
        return self._http_client

    @property
    def public_room_list_manager(self):
        return self._public_room_list_manager

    @property
    def account_data_manager(self):
        return AccountDataManager(self)

    def get_user_by_req(self, req, allow_guest=False, allow_expired=False):
        """The Requester behind a module web request's access token (401 errors as Synapse)."""
        from synapse.api.errors import Codes, InvalidClientCredentialsError
        from synapse.types import create_requester

        token = None
        auth = req.requestHeaders.getRawHeaders(b"Authorization") or []
        if auth and auth[0].startswith(b"Bearer "):
            token = auth[0][len(b"Bearer "):].decode("ascii")
        elif req.args.get(b"access_token"):
            token = req.args[b"access_token"][0].decode("ascii")
        if not token:
            return defer.fail(InvalidClientCredentialsError("Missing access token.", Codes.MISSING_TOKEN))
        d = _deferred_call(self._host, "get_user_by_req", {"token": token, "allow_expired": allow_expired},
                           create_requester)

        def translate(failure):
            e = failure.value
            if isinstance(e, SynapseError) and e.code == 401:
                raise InvalidClientCredentialsError(e.msg, e.errcode)
            return failure

        d.addErrback(translate)
        return d

    def get_room_state(self, room_id, event_filter=None):
        def to_map(events):
            state = {(e["type"], e.get("state_key", "")): EventBase(e) for e in events}
            if event_filter is not None:
                wanted = set(event_filter)
                state = {k: v for k, v in state.items() if k in wanted or (k[0], None) in wanted}
            return state

        return _deferred_call(self._host, "get_room_state", {"room_id": room_id}, to_map)

    def get_state_events_in_room(self, room_id, types):
        """The current state events of `room_id` matching `(type, state_key)` pairs (a `None`
        state key matches any)."""

        def pick(events):
            wanted = set(types)
            return [EventBase(e) for e in events
                    if (e["type"], e.get("state_key", "")) in wanted or (e["type"], None) in wanted]

        return _deferred_call(self._host, "get_room_state", {"room_id": room_id}, pick)

    def register_user(self, localpart, displayname=None, emails=None, admin=False):
        """Creates a local user with no password; returns its user ID. Each of `emails` is added
        to the account, as on Synapse."""

        async def register():
            user_id = await _deferred_call(self._host, "register_user",
                                           {"localpart": localpart, "displayname": displayname, "admin": bool(admin)})
            for email in emails or []:
                await _deferred_call(self._host, "add_email_to_user", {"user_id": user_id, "email": email})
            return user_id

        return defer.ensureDeferred(register())

    def register_device(self, user_id, device_id=None, initial_display_name=None):
        """Logs `user_id` in on a device: (user_id, device_id, access_token, refresh_token=None)."""
        return _deferred_call(self._host, "register_device",
                              {"user_id": str(user_id), "device_id": device_id, "display_name": initial_display_name},
                              lambda r: (str(user_id), r[0], r[1], None))

    def register(self, localpart, displayname=None, emails=None):
        """Deprecated in Synapse: register_user then register_device; (user_id, access_token)."""
        logger.warning("Using deprecated ModuleApi.register which creates a dummy user device.")

        async def both():
            user_id = await self.register_user(localpart, displayname, emails or [])
            _, _, token, _ = await self.register_device(user_id)
            return user_id, token

        return defer.ensureDeferred(both())

    def set_user_admin(self, user_id, admin):
        return _deferred_call(self._host, "set_user_admin", {"user_id": str(user_id), "admin": bool(admin)},
                              lambda _: None)

    def set_displayname(self, user_id, new_displayname, deactivation=False):
        return _deferred_call(self._host, "set_displayname",
                              {"user_id": str(user_id), "displayname": new_displayname}, lambda _: None)

    def get_threepids_for_user(self, user_id):
        """The user's third-party identifiers: dicts of medium, address, validated_at, added_at."""
        return _deferred_call(self._host, "get_threepids_for_user", {"user_id": str(user_id)})

    def get_qualified_user_id(self, username):
        if username.startswith("@"):
            return username
        return UserID(username, self.server_name).to_string()

    def is_mine(self, id):
        s = id.to_string() if hasattr(id, "to_string") else str(id)
        return s.partition(":")[2] == self.server_name

    def should_run_background_tasks(self):
        return True

    def get_current_time_msec(self):
        import time

        return int(time.time() * 1000)

    # --- users ---

    def get_userinfo_by_id(self, user_id):
        return _deferred_call(self._host, "get_userinfo_by_id", {"user_id": user_id},
                              lambda r: UserInfo(r) if r else None)

    def check_user_exists(self, user_id):
        user_id = self.get_qualified_user_id(user_id)
        return _deferred_call(self._host, "get_userinfo_by_id", {"user_id": user_id},
                              lambda r: r["user_id"] if r else None)

    def check_username(self, username):
        """Synapse's registration checks of a localpart: grammar, length, and not taken."""
        import re

        if re.search(r"[^a-z0-9._=\-/+]", username):
            raise SynapseError(400, "User ID can only contain characters a-z, 0-9, or '=_-./+'",
                               Codes.INVALID_USERNAME)
        if not username:
            raise SynapseError(400, "User ID cannot be empty", Codes.INVALID_USERNAME)
        if username[0] == "_":
            raise SynapseError(400, "User ID may not begin with _", Codes.INVALID_USERNAME)
        user_id = "@%s:%s" % (username, self.server_name)
        if len(user_id) > 255:
            raise SynapseError(400, "User ID may not be longer than 255 characters", Codes.INVALID_USERNAME)

        def taken(info):
            if info:
                raise SynapseError(400, "User ID already taken.", Codes.USER_IN_USE)

        return _deferred_call(self._host, "get_userinfo_by_id", {"user_id": user_id}, taken)

    def get_user_ip_and_agents(self, user, since_ts=0):
        """UserIpAndAgent entries a local user was seen with since `since_ts` (ms)."""
        return _deferred_call(self._host, "get_user_ip_and_agents", {"user_id": str(user), "since_ts": int(since_ts)},
                              lambda rows: [UserIpAndAgent(ip, ua, ts) for ip, ua, ts in rows])

    def set_presence_for_users(self, users):
        """`users`: user ID -> (presence state, status message or None)."""
        rows = [[str(u), state, msg] for u, (state, msg) in users.items()]
        return _deferred_call(self._host, "set_presence_for_users", {"users": rows}, lambda r: None)

    def check_push_rule_actions(self, actions):
        """Synapse's check of push rule actions: raises InvalidRuleException."""
        from synapse.module_api.errors import InvalidRuleException

        if not isinstance(actions, list):
            raise InvalidRuleException("No actions found")
        for a in actions:
            if a in ["notify", "dont_notify", "coalesce"]:
                continue
            if isinstance(a, dict) and "set_tweak" in a:
                continue
            raise InvalidRuleException("Unrecognised action %s" % (a,))

    def set_push_rule_action(self, user_id, scope, kind, rule_id, actions):
        from synapse.module_api.errors import InvalidRuleException, RuleNotFoundException

        if scope != "global":
            raise RuntimeError("invalid scope %s, only 'global' is currently allowed" % scope)
        self.check_push_rule_actions(actions)
        d = _deferred_call(self._host, "set_push_rule_action",
                           {"user_id": str(user_id), "kind": kind, "rule_id": rule_id, "actions": actions},
                           lambda r: None)

        def translate(failure):
            e = failure.value
            if isinstance(e, SynapseError) and e.code == 404:
                raise RuleNotFoundException("Unknown rule %s" % (rule_id,))
            if isinstance(e, SynapseError) and e.code == 400:
                raise InvalidRuleException(e.msg)
            return failure

        return d.addErrback(translate)

    def invalidate_access_token(self, access_token):
        """Logs the session of this access token out (its device goes, as a logout's does);
        password providers' `on_logged_out` runs."""
        return _deferred_call(self._host, "invalidate_access_token", {"token": access_token}, lambda r: None)

    def record_user_external_id(self, auth_provider_id, remote_user_id, registered_user_id):
        """Records that the local account is `remote_user_id` at SSO provider `auth_provider_id`."""
        return _deferred_call(self._host, "record_user_external_id",
                              {"auth_provider_id": auth_provider_id, "remote_user_id": remote_user_id,
                               "registered_user_id": registered_user_id}, lambda r: None)

    def send_local_online_presence_to(self, users):
        """Local users get every online user's presence in their next sync; remote users'
        servers are sent it."""
        return _deferred_call(self._host, "send_local_online_presence_to", {"users": list(users)}, lambda r: None)

    def delete_room(self, room_id):
        """Schedules the room's shutdown and purge (Synapse 1.89); does not wait for it."""
        return _deferred_call(self._host, "delete_room", {"room_id": room_id}, lambda r: None)

    async def complete_sso_login_async(self, registered_user_id, request, client_redirect_url,
                                       new_user=False, auth_provider_id="<unknown>"):
        """Answers `request` (a browser's, at the module's web resource) as Synapse's SSO does
        once it knows the user: a redirect to the client with a login token when the URL is
        whitelisted, else the confirmation page."""
        page = await _deferred_call(self._host, "complete_sso_login",
                                    {"user_id": registered_user_id, "client_redirect_url": client_redirect_url,
                                     "new_user": bool(new_user), "auth_provider_id": auth_provider_id})
        request.setResponseCode(page["status"])
        if page.get("location"):
            request.setHeader(b"Location", page["location"].encode("utf-8"))
        for cookie in page.get("set_cookies") or []:
            request.responseHeaders.addRawHeader(b"Set-Cookie", cookie.encode("utf-8"))
        request.setHeader(b"Cache-Control", b"no-cache, no-store, must-revalidate")
        if page.get("html"):
            body = page["html"].encode("utf-8")
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            request.setHeader(b"Content-Length", b"%d" % len(body))
            request.write(body)
        request.finish()

    def create_login_token(self, user_id, duration_in_ms=2 * 60 * 1000, auth_provider_id=None,
                           auth_provider_session_id=None):
        """A token the user logs in with (`m.login.token`), valid `duration_in_ms`."""
        return _deferred_call(self._host, "create_login_token",
                              {"user_id": user_id, "duration_in_ms": int(duration_in_ms),
                               "auth_provider_id": auth_provider_id}, lambda r: r)

    def is_user_admin(self, user_id):
        return _deferred_call(self._host, "get_userinfo_by_id", {"user_id": user_id},
                              lambda r: bool(r and r["is_admin"]))

    def get_profile_for_user(self, localpart):
        return _deferred_call(self._host, "get_profile_for_user", {"user": localpart},
                              lambda r: ProfileInfo(r["avatar_url"], r["display_name"]) if r else None)

    # --- rooms ---

    def create_and_send_event_into_room(self, event_dict):
        return _deferred_call(self._host, "create_and_send_event_into_room", {"event": event_dict}, EventBase)

    def update_room_membership(self, sender, target, room_id, new_membership, content=None, remote_room_hosts=None):
        return _deferred_call(self._host, "update_room_membership",
                              {"sender": sender, "target": target, "room_id": room_id, "membership": new_membership},
                              EventBase)

    def create_room(self, user_id, config, ratelimit=True, creator_join_profile=None):
        return _deferred_call(self._host, "create_room", {"user_id": user_id, "config": config}, tuple)

    def get_canonical_room_alias(self, room_id):
        """The room's canonical alias, as a RoomAlias, or None."""

        def alias_of(events):
            for e in events:
                if e.get("type") == "m.room.canonical_alias" and e.get("state_key") == "":
                    alias = (e.get("content") or {}).get("alias")
                    return RoomAlias.from_string(alias) if alias else None
            return None

        return _deferred_call(self._host, "get_room_state", {"room_id": str(room_id)}, alias_of)

    def lookup_room_alias(self, room_alias):
        return _deferred_call(self._host, "lookup_room_alias", {"alias": str(room_alias)}, tuple)

    # --- background work ---

    def sleep(self, seconds):
        from twisted.internet import reactor

        return task.deferLater(reactor, seconds, lambda: None)

    def looping_background_call(self, f, msec, *args, desc=None, run_on_all_instances=False, **kwargs):
        def call():
            return run_as_background_process(desc or getattr(f, "__name__", "looping_call"), f, *args, **kwargs)

        loop = task.LoopingCall(call)
        loop.start(msec / 1000.0, now=False)
        return loop

    def delayed_background_call(self, msec, f, *args, desc=None, **kwargs):
        from twisted.internet import reactor

        return reactor.callLater(msec / 1000.0, run_as_background_process, desc or "delayed_call", f, *args, **kwargs)

    def run_as_background_process(self, desc, func, *args, bg_start_span=True, **kwargs):
        return run_as_background_process(desc, func, *args, **kwargs)

    def defer_to_threadpool(self, threadpool, f, *args, **kwargs):
        from twisted.internet import reactor, threads

        return threads.deferToThreadPool(reactor, threadpool, f, *args, **kwargs)

    def register_cached_function(self, cached_func):
        """Synapse registers it for invalidation across workers; one process needs nothing."""

    def invalidate_cache(self, cached_func, keys):
        cached_func.invalidate(keys)
        return defer.succeed(None)

    def defer_to_thread(self, f, *args, **kwargs):
        from twisted.internet import threads

        return threads.deferToThread(f, *args, **kwargs)
