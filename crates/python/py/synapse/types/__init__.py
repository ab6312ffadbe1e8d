"""synapse.types: identifiers and typing aliases modules use."""

from enum import Enum
from typing import Any, Dict, Mapping, MutableMapping, Tuple, TypeVar

JsonDict = Dict[str, Any]
JsonMapping = Mapping[str, Any]
T = TypeVar("T")
StateKey = Tuple[str, str]
# Generic, as Synapse's: modules annotate `StateMap[EventBase]`.
StateMap = Mapping[StateKey, T]
MutableStateMap = MutableMapping[StateKey, T]


class AbsentType(Enum):
    """Synapse's sentinel type for "absent", as opposed to JSON null."""

    _Absent = None

    def __bool__(self):
        return False


Absent = AbsentType._Absent


class DomainSpecificString:
    SIGIL = ""

    def __init__(self, localpart, domain):
        self.localpart = localpart
        self.domain = domain

    @classmethod
    def from_string(cls, s):
        if not s or s[0] != cls.SIGIL or ":" not in s:
            from synapse.api.errors import Codes, SynapseError

            raise SynapseError(400, "Expected %s string to start with '%s'" % (cls.__name__, cls.SIGIL), Codes.INVALID_PARAM)
        local, _, domain = s[1:].partition(":")
        return cls(local, domain)

    @classmethod
    def is_valid(cls, s):
        try:
            cls.from_string(s)
            return True
        except Exception:
            return False

    def to_string(self):
        return "%s%s:%s" % (self.SIGIL, self.localpart, self.domain)

    __str__ = to_string

    def __repr__(self):
        return "%s(%r, %r)" % (type(self).__name__, self.localpart, self.domain)

    def __eq__(self, other):
        return type(self) is type(other) and self.to_string() == other.to_string()

    def __hash__(self):
        return hash(self.to_string())


class UserID(DomainSpecificString):
    SIGIL = "@"


class RoomAlias(DomainSpecificString):
    SIGIL = "#"


class RoomID(DomainSpecificString):
    """`!localpart:domain`, or (room version 12 on) `!` and the create event's hash, with no
    domain: `domain` is then None, as `get_domain()` is in Synapse."""

    SIGIL = "!"

    @classmethod
    def from_string(cls, s):
        if s and s[0] == cls.SIGIL and ":" not in s and len(s) > 1:
            return cls(s[1:], None)
        return super().from_string(s)

    def get_domain(self):
        return self.domain

    def to_string(self):
        if self.domain is None:
            return self.SIGIL + self.localpart
        return super().to_string()

    __str__ = to_string


class EventID(DomainSpecificString):
    SIGIL = "$"


def create_requester(user_id, device_id=None, is_guest=False, shadow_banned=False, authenticated_entity=None, **_):
    return Requester(UserID.from_string(str(user_id)), device_id, is_guest, shadow_banned)


class Requester:
    def __init__(self, user, device_id=None, is_guest=False, shadow_banned=False, access_token_id=None):
        self.user = user
        self.device_id = device_id
        self.is_guest = is_guest
        self.shadow_banned = shadow_banned
        self.access_token_id = access_token_id
        self.authenticated_entity = user.to_string()
        self.app_service = None
