"""synapse.http.servlet: request parsing helpers with Synapse's errcodes."""

import json

from synapse.api.errors import Codes, SynapseError


def parse_json_value_from_request(request, allow_empty_body=False):
    content = request.content.read() if request.content else b""
    if not content and allow_empty_body:
        return None
    try:
        return json.loads(content)
    except Exception:
        raise SynapseError(400, "Content not JSON.", errcode=Codes.NOT_JSON)


def parse_json_object_from_request(request, allow_empty_body=False):
    content = parse_json_value_from_request(request, allow_empty_body=allow_empty_body)
    if allow_empty_body and content is None:
        return {}
    if not isinstance(content, dict):
        raise SynapseError(400, "Content must be a JSON object.", errcode=Codes.BAD_JSON)
    return content


_missing = object()


def parse_string(request, name, default=None, required=False, allowed_values=None, encoding="ascii"):
    raw = request.args.get(name.encode("ascii"))
    if raw is None:
        if required:
            raise SynapseError(400, "Missing string query parameter %r" % (name,), errcode=Codes.MISSING_PARAM)
        return default
    value = raw[0].decode(encoding)
    if allowed_values is not None and value not in allowed_values:
        raise SynapseError(400, "Query parameter %r must be one of [%s]" % (name, ", ".join(allowed_values)),
                           errcode=Codes.INVALID_PARAM)
    return value


def parse_integer(request, name, default=None, required=False):
    raw = parse_string(request, name, required=required)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SynapseError(400, "Query parameter %r must be an integer" % (name,), errcode=Codes.INVALID_PARAM)


def parse_boolean(request, name, default=None, required=False):
    raw = parse_string(request, name, required=required)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise SynapseError(400, "Boolean query parameter %r must be one of ['true', 'false']" % (name,),
                           errcode=Codes.INVALID_PARAM)
    return raw == "true"
