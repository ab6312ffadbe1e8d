"""A Python test module whose callbacks return what its config says, recording every call.

config:
  label: name for /_synapse/client/py/<label>/calls
  returns: {callback_name: "<python expression>"}   e.g. "False", "(Codes.LIMIT_EXCEEDED, {'k': 'v'})"
           or "raise <expression>" to raise it
  sync: [callback names implemented as plain functions instead of coroutines]
  one_arg: [callbacks registered in their one-parameter form]
  web: true   also mounts the Twisted test resources under /_synapse/client/py/<label>/...
  log: true   logs one line at each level from the constructor, on logger "scripted.<label>"
"""

import json
import logging

from twisted.internet import defer, reactor, task, threads
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from synapse.api.errors import Codes, SynapseError
from synapse.http.server import DirectServeJsonResource
from synapse.module_api import NOT_SPAM, ModuleApi
from synapse.module_api.errors import ConfigError
from synapse.spam_checker_api import RegistrationBehaviour

NAMESPACE = {"Codes": Codes, "NOT_SPAM": NOT_SPAM, "SynapseError": SynapseError,
             "RegistrationBehaviour": RegistrationBehaviour}


class WhoAmI(DirectServeJsonResource):
    """Authenticates the request as Synapse modules do, with get_user_by_req."""

    def __init__(self, api):
        super().__init__()
        self.api = api

    async def _async_render_GET(self, request):
        requester = await self.api.get_user_by_req(request)
        return 200, {"user_id": requester.user.to_string()}


class Calls(DirectServeJsonResource):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    async def _async_render_GET(self, request):
        return 200, self.calls


class Plain(Resource):
    isLeaf = False

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"args": {k.decode(): [x.decode() for x in v] for k, v in request.args.items()},
                           "client": request.getClientAddress().host}).encode()

    def render_PUT(self, request):
        return b"put:" + request.content.read()


class Leaf(Resource):
    """A leaf: every path below it comes here, the rest of it in `postpath` (as rendezvous
    servers use it)."""

    isLeaf = True

    def render_GET(self, request):
        return b"leaf:" + b"/".join(request.postpath)


class Tree(Resource):
    """A resource with a child put under it."""

    def __init__(self):
        super().__init__()
        kid = Resource()
        kid.render_GET = lambda request: b"kid"
        self.putChild(b"kid", kid)

    def render_GET(self, request):
        return b"tree"


class ReturnsStr(Resource):
    def render_GET(self, request):
        return "not bytes"


class Raises(Resource):
    def render_GET(self, request):
        raise ValueError("boom")


class Later(Resource):
    def render_GET(self, request):
        def finish():
            request.write(b"later")
            request.finish()

        task.deferLater(reactor, 0.05, finish)
        return NOT_DONE_YET


class Threaded(Resource):
    def render_GET(self, request):
        d = threads.deferToThread(lambda: b"from a thread")

        def done(body):
            request.write(body)
            request.finish()

        d.addCallback(done)
        return NOT_DONE_YET


class Blocks(Resource):
    """Holds the Python thread for a while, as a badly written module would."""

    def render_GET(self, request):
        import time

        time.sleep(2)
        return b"done"


class ApiCalls(DirectServeJsonResource):
    def __init__(self, api):
        super().__init__()
        self.api = api

    async def _async_render_POST(self, request):
        body = json.loads(request.content.read())
        op = body["op"]
        if op == "userinfo":
            info = await self.api.get_userinfo_by_id(body["user_id"])
            return 200, None if info is None else {"user_id": info.user_id.to_string(), "is_admin": info.is_admin}
        if op == "exists":
            return 200, {"exists": await self.api.check_user_exists(body["user"])}
        if op == "profile":
            p = await self.api.get_profile_for_user(body["user"])
            return 200, None if p is None else {"display_name": p.display_name}
        if op == "send":
            try:
                ev = await self.api.create_and_send_event_into_room(body["event"])
                return 200, {"event_id": ev.event_id}
            except SynapseError as e:
                return 200, {"error": [e.code, str(getattr(e.errcode, "value", e.errcode)), e.msg]}
        if op == "create_room":
            room_id, alias = await self.api.create_room(body["user_id"], body.get("config", {}))
            return 200, {"room_id": room_id, "alias": alias}
        if op == "get_json":
            try:
                return 200, {"ok": await self.api.http_client.get_json(body["url"])}
            except Exception as e:
                return 200, {"error": type(e).__name__, "code": getattr(e, "code", None)}
        if op == "sleep":
            await self.api.sleep(0.05)
            return 200, {"slept": True}
        if op == "room_state":
            state = await self.api.get_room_state(body["room_id"])
            return 200, sorted("%s|%s" % k for k in state)
        if op == "account_data":
            mgr = self.api.account_data_manager
            await mgr.put_global(body["user_id"], "org.example.module", {"set": "by module"})
            got = await mgr.get_global(body["user_id"], "org.example.module")
            errors = []
            for bad in (lambda: mgr.put_global("@x:elsewhere", "t", {}), lambda: mgr.put_global(body["user_id"], "t", [1])):
                try:
                    bad()
                except (ValueError, TypeError) as e:
                    errors.append(type(e).__name__)
            return 200, {"got": dict(got), "errors": errors}
        if op == "mail":
            # read_templates, then send_mail with what they rendered; the server's facts.
            (template,) = self.api.read_templates([body["template"]], body["dir"])
            text = template.render(name=body["name"])
            try:
                await self.api.send_mail(body["to"], "Hello from a module", "<p>%s</p>" % text, text)
                sent = None
            except Exception as e:
                sent = "%s: %s" % (type(e).__name__, e)
            return 200, {"app": self.api.email_app_name, "base": self.api.public_baseurl, "text": text,
                         "error": sent}
        if op == "accounts":
            # register_user, register_device, set_displayname, set_user_admin, then the failures.
            user_id = await self.api.register_user(body["localpart"], body.get("displayname"), emails=body.get("emails"))
            _, device_id, token, refresh = await self.api.register_device(user_id, initial_display_name="module device")
            await self.api.set_displayname(user_id, "Renamed by module")
            await self.api.set_user_admin(user_id, True)
            old_user, old_token = await self.api.register(body["localpart"] + "2")
            errors = []
            for bad in (lambda: self.api.register_user(body["localpart"]),
                        lambda: self.api.register_user("Bad Name!"),
                        lambda: self.api.register_device("@ghost:test"),
                        lambda: self.api.set_user_admin("@ghost:test", True)):
                try:
                    await bad()
                except SynapseError as e:
                    errors.append([e.code, str(getattr(e.errcode, "value", e.errcode))])
            return 200, {"user_id": user_id, "device_id": device_id, "token": token, "refresh": refresh,
                         "old_user": old_user, "old_token": old_token, "errors": errors,
                         "threepids": await self.api.get_threepids_for_user(user_id)}
        if op == "state_events":
            events = await self.api.get_state_events_in_room(body["room_id"], [("m.room.create", ""), ("m.room.member", None)])
            return 200, sorted("%s|%s" % (e.type, e.state_key) for e in events)
        if op == "canonical_alias":
            alias = await self.api.get_canonical_room_alias(body["room_id"])
            return 200, {"alias": None if alias is None else alias.to_string()}
        if op == "check_username":
            try:
                await self.api.check_username(body["username"])
                return 200, {"ok": True}
            except SynapseError as e:
                return 200, {"error": [e.code, str(getattr(e.errcode, "value", e.errcode)), e.msg]}
        if op == "ips":
            rows = await self.api.get_user_ip_and_agents(body["user_id"], body.get("since_ts", 0))
            return 200, [[r.ip, r.user_agent, r.last_seen > 0] for r in rows]
        if op == "set_presence":
            await self.api.set_presence_for_users({body["user_id"]: ("unavailable", "set by a module")})
            try:
                await self.api.set_presence_for_users({body["user_id"]: ("dancing", None)})
            except SynapseError as e:
                return 200, {"refused": e.code}
            return 200, {"refused": None}
        if op == "push_rule_action":
            from synapse.module_api.errors import InvalidRuleException, RuleNotFoundException

            out = []
            for kind, rule, actions in (("override", ".m.rule.master", ["notify"]),
                                        ("override", "no.such.rule", ["notify"]),
                                        ("override", ".m.rule.master", ["bogus"])):
                try:
                    await self.api.set_push_rule_action(body["user_id"], "global", kind, rule, actions)
                    out.append("ok")
                except RuleNotFoundException:
                    out.append("RuleNotFoundException")
                except InvalidRuleException:
                    out.append("InvalidRuleException")
            return 200, out
        if op == "invalidate_token":
            await self.api.invalidate_access_token(body["token"])
            return 200, {"done": True}
        if op == "helpers":
            # defer_to_threadpool, and @cached with register_cached_function/invalidate_cache.
            from twisted.internet import reactor
            from synapse.module_api import cached

            pool = reactor.getThreadPool()
            doubled = await self.api.defer_to_threadpool(pool, lambda x: x * 2, 21)

            class Counter:
                calls = 0

                @cached()
                async def count(self, key):
                    Counter.calls += 1
                    return Counter.calls

            c = Counter()
            self.api.register_cached_function(c.count)
            first, again = await c.count("k"), await c.count("k")
            await self.api.invalidate_cache(c.count, ("k",))
            after = await c.count("k")
            return 200, {"doubled": doubled, "cached": [first, again, after]}
        if op == "missing":
            try:
                self.api.run_db_interaction
            except AttributeError as e:
                return 200, {"error": str(e)}
        return 400, {"error": "unknown op"}


def make_callback(name, spec, calls, label, sync):
    def compute(args):
        calls.append({"callback": name, "module": label, "args": args})
        # The expression may read the call's arguments as `args`.
        if spec.startswith("raise "):
            raise eval(spec[len("raise "):], NAMESPACE, {"args": args})
        return eval(spec, NAMESPACE, {"args": args})

    def plain(*args):
        return compute([_jsonable(a) for a in args])

    async def coro(*args):
        return compute([_jsonable(a) for a in args])

    return plain if sync else coro


def _jsonable(a):
    if hasattr(a, "get_dict"):
        return {"event_id": a.event_id, "type": a.type, "content": dict(a.content)}
    if isinstance(a, (str, int, float, bool, type(None), list, dict)):
        return a
    if isinstance(a, tuple):
        return list(a)
    return str(a)


class Scripted:
    def __init__(self, config, api: ModuleApi):
        self.calls = []
        config = config or {}
        label = config.get("label", "py")
        callbacks = {}
        for name, spec in (config.get("returns") or {}).items():
            fn = make_callback(name, spec, self.calls, label, name in config.get("sync", []))
            if name in config.get("one_arg", []):
                inner = fn
                fn = (lambda f: lambda first: f(first))(inner)
            elif name in ("user_may_create_room", "check_username_for_spam"):
                inner = fn
                fn = (lambda f: lambda a, b: f(a, b))(inner)
            callbacks[name] = fn
        if config.get("bad_callback"):
            callbacks["not_a_callback"] = lambda: None
        api.register_spam_checker_callbacks(**callbacks)
        api.register_web_resource(f"/_synapse/client/py/{label}/calls", Calls(self.calls))
        api.register_web_resource(f"/_synapse/client/py/{label}/api", ApiCalls(api))
        api.register_web_resource(f"/_synapse/client/py/{label}/whoami", WhoAmI(api))
        if config.get("web"):
            base = f"/_synapse/client/py/{label}"
            api.register_web_resource(base + "/plain", Plain())
            api.register_web_resource(base + "/leaf", Leaf())
            api.register_web_resource(base + "/tree", Tree())
            api.register_web_resource(base + "/str", ReturnsStr())
            api.register_web_resource(base + "/raises", Raises())
            api.register_web_resource(base + "/later", Later())
            api.register_web_resource(base + "/thread", Threaded())
            api.register_web_resource(base + "/block", Blocks())
        if config.get("log"):
            log = logging.getLogger("scripted." + label)
            log.debug("a debug line from %s", label)
            log.info("an info line from %s", label)
            log.warning("a warning line from %s", label)
            try:
                raise ValueError("logged with its traceback")
            except ValueError:
                log.exception("an error line from %s", label)
        if config.get("constructor_raises"):
            raise RuntimeError("constructor says no")

    @staticmethod
    def parse_config(config):
        if config.get("threshold") is not None and config["threshold"] <= 0:
            raise ConfigError("threshold must be positive", path=["threshold"])
        if config.get("value_error"):
            raise ValueError("oops")
        if config.get("return_none"):
            return None
        return config


class NoneConfig:
    """parse_config returns None; the constructor must receive None (case 7)."""

    def __init__(self, config, api):
        assert config is None, config
        api.register_spam_checker_callbacks(user_may_invite=self.user_may_invite)

    @staticmethod
    def parse_config(config):
        return None

    async def user_may_invite(self, inviter, invitee, room_id):
        return NOT_SPAM
