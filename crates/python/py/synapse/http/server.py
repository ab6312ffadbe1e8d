"""synapse.http.server: the resource base classes modules subclass."""

import inspect
import json
import logging

from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from synapse.api.errors import Codes, SynapseError

logger = logging.getLogger(__name__)


def respond_with_json(request, code, json_object, send_cors=False, canonical_json=True):
    body = json.dumps(json_object).encode("utf-8")
    return respond_with_json_bytes(request, code, body, send_cors)


def respond_with_json_bytes(request, code, json_bytes, send_cors=False):
    if getattr(request, "_disconnected", False):
        return None
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % (len(json_bytes),))
    request.setHeader(b"Cache-Control", b"no-cache, no-store, must-revalidate")
    if send_cors:
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
    request.write(json_bytes)
    request.finish()
    return None


def respond_with_html(request, code, html):
    return respond_with_html_bytes(request, code, html.encode("utf-8"))


def respond_with_html_bytes(request, code, html_bytes):
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    request.setHeader(b"Content-Length", b"%d" % (len(html_bytes),))
    request.write(html_bytes)
    request.finish()
    return None


class _AsyncResource(Resource):
    """Runs `_async_render_<METHOD>` as a coroutine, as Synapse's DirectServe resources do."""

    isLeaf = True

    def __init__(self, clock=None, extract_context=False):
        super().__init__()

    def render(self, request):
        defer.ensureDeferred(self._async_render_wrapper(request))
        return NOT_DONE_YET

    async def _async_render_wrapper(self, request):
        try:
            method = request.method.decode("ascii")
            handler = getattr(self, "_async_render_%s" % (method,), None)
            if handler is None and method == "HEAD":
                handler = getattr(self, "_async_render_GET", None)
            if handler is None:
                raise SynapseError(400, "Unrecognized request", Codes.UNRECOGNIZED)
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                code, response = result
                self._send_response(request, code, response)
        except Exception as e:
            self._send_error_response(e, request)

    def _send_error_response(self, e, request):
        raise NotImplementedError


class DirectServeJsonResource(_AsyncResource):
    def _send_response(self, request, code, response_object):
        respond_with_json(request, code, response_object)

    def _send_error_response(self, e, request):
        if isinstance(e, SynapseError):
            respond_with_json(request, e.code, e.error_dict(None))
        else:
            logger.error("Failed handle request via %r", request, exc_info=e)
            respond_with_json(request, 500, {"errcode": Codes.UNKNOWN.value, "error": "Internal server error"})


class DirectServeHtmlResource(_AsyncResource):
    def _send_response(self, request, code, response_object):
        respond_with_html(request, code, response_object)

    def _send_error_response(self, e, request):
        code = e.code if isinstance(e, SynapseError) else 500
        msg = e.msg if isinstance(e, SynapseError) else "Internal server error"
        respond_with_html(request, code, "<html><body><h1>%s</h1></body></html>" % (msg,))


class JsonResource(DirectServeJsonResource):
    pass
