"""synapse.api.errors: the error types modules raise and return."""

from enum import Enum


class Codes(str, Enum):
    UNRECOGNIZED = "M_UNRECOGNIZED"
    UNAUTHORIZED = "M_UNAUTHORIZED"
    FORBIDDEN = "M_FORBIDDEN"
    BAD_JSON = "M_BAD_JSON"
    NOT_JSON = "M_NOT_JSON"
    USER_IN_USE = "M_USER_IN_USE"
    ROOM_IN_USE = "M_ROOM_IN_USE"
    BAD_PAGINATION = "M_BAD_PAGINATION"
    BAD_STATE = "M_BAD_STATE"
    UNKNOWN = "M_UNKNOWN"
    NOT_FOUND = "M_NOT_FOUND"
    MISSING_TOKEN = "M_MISSING_TOKEN"
    UNKNOWN_TOKEN = "M_UNKNOWN_TOKEN"
    GUEST_ACCESS_FORBIDDEN = "M_GUEST_ACCESS_FORBIDDEN"
    LIMIT_EXCEEDED = "M_LIMIT_EXCEEDED"
    CAPTCHA_NEEDED = "M_CAPTCHA_NEEDED"
    CAPTCHA_INVALID = "M_CAPTCHA_INVALID"
    MISSING_PARAM = "M_MISSING_PARAM"
    INVALID_PARAM = "M_INVALID_PARAM"
    TOO_LARGE = "M_TOO_LARGE"
    EXCLUSIVE = "M_EXCLUSIVE"
    THREEPID_AUTH_FAILED = "M_THREEPID_AUTH_FAILED"
    THREEPID_IN_USE = "M_THREEPID_IN_USE"
    THREEPID_NOT_FOUND = "M_THREEPID_NOT_FOUND"
    THREEPID_DENIED = "M_THREEPID_DENIED"
    INVALID_USERNAME = "M_INVALID_USERNAME"
    SERVER_NOT_TRUSTED = "M_SERVER_NOT_TRUSTED"
    CONSENT_NOT_GIVEN = "M_CONSENT_NOT_GIVEN"
    CANNOT_LEAVE_SERVER_NOTICE_ROOM = "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM"
    RESOURCE_LIMIT_EXCEEDED = "M_RESOURCE_LIMIT_EXCEEDED"
    UNSUPPORTED_ROOM_VERSION = "M_UNSUPPORTED_ROOM_VERSION"
    INCOMPATIBLE_ROOM_VERSION = "M_INCOMPATIBLE_ROOM_VERSION"
    WRONG_ROOM_KEYS_VERSION = "M_WRONG_ROOM_KEYS_VERSION"
    EXPIRED_ACCOUNT = "ORG_MATRIX_EXPIRED_ACCOUNT"
    PASSWORD_TOO_SHORT = "M_PASSWORD_TOO_SHORT"
    PASSWORD_NO_DIGIT = "M_PASSWORD_NO_DIGIT"
    PASSWORD_NO_UPPERCASE = "M_PASSWORD_NO_UPPERCASE"
    PASSWORD_NO_LOWERCASE = "M_PASSWORD_NO_LOWERCASE"
    PASSWORD_NO_SYMBOL = "M_PASSWORD_NO_SYMBOL"
    PASSWORD_IN_DICTIONARY = "M_PASSWORD_IN_DICTIONARY"
    WEAK_PASSWORD = "M_WEAK_PASSWORD"
    INVALID_SIGNATURE = "M_INVALID_SIGNATURE"
    USER_DEACTIVATED = "M_USER_DEACTIVATED"
    USER_LOCKED = "M_USER_LOCKED"
    USER_SUSPENDED = "M_USER_SUSPENDED"
    BAD_ALIAS = "M_BAD_ALIAS"
    DUPLICATE_ANNOTATION = "M_DUPLICATE_ANNOTATION"
    CANNOT_OVERWRITE_MEDIA = "M_CANNOT_OVERWRITE_MEDIA"
    NOT_YET_UPLOADED = "M_NOT_YET_UPLOADED"
    USER_AWAITING_APPROVAL = "ORG_MATRIX_MSC3866_USER_AWAITING_APPROVAL"
    INVALID_ROOM_STATE = "M_INVALID_ROOM_STATE"
    TEAPOT = "M_TEAPOT"  # used by module tests


class CodeMessageException(RuntimeError):
    def __init__(self, code, msg):
        super().__init__("%d: %s" % (code, msg))
        self.code = int(code)
        self.msg = msg


class SynapseError(CodeMessageException):
    """An error that reaches the client as {"errcode", "error", **additional_fields}."""

    def __init__(self, code, msg, errcode=Codes.UNKNOWN, additional_fields=None):
        super().__init__(code, msg)
        self.errcode = errcode
        self._additional_fields = dict(additional_fields or {})

    def error_dict(self, config=None):
        return dict(errcode=str(getattr(self.errcode, "value", self.errcode)), error=self.msg, **self._additional_fields)


class NotFoundError(SynapseError):
    def __init__(self, msg="Not found", errcode=Codes.NOT_FOUND):
        super().__init__(404, msg, errcode=errcode)


class AuthError(SynapseError):
    def __init__(self, code, msg, errcode=Codes.FORBIDDEN, additional_fields=None):
        super().__init__(code, msg, errcode, additional_fields)


class InvalidClientCredentialsError(SynapseError):
    def __init__(self, msg, errcode):
        super().__init__(code=401, msg=msg, errcode=errcode)


class InvalidClientTokenError(InvalidClientCredentialsError):
    def __init__(self, msg="Unrecognised access token", soft_logout=False):
        super().__init__(msg=msg, errcode=Codes.UNKNOWN_TOKEN)


class RedirectException(CodeMessageException):
    def __init__(self, location, http_code=302):
        super().__init__(http_code, "Redirect")
        self.location = location
        self.cookies = []


class HttpResponseException(CodeMessageException):
    """A non-2xx answer to an outbound request; `response` holds the body bytes."""

    def __init__(self, code, msg, response):
        super().__init__(code, msg)
        self.response = response


class InvalidRuleException(Exception):
    pass


class RuleNotFoundException(Exception):
    pass


class LimitExceededError(SynapseError):
    def __init__(self, code=429, msg="Too Many Requests", retry_after_ms=None, errcode=Codes.LIMIT_EXCEEDED):
        super().__init__(code, msg, errcode)
        self.retry_after_ms = retry_after_ms
