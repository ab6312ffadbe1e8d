"""synapse.module_api.callbacks.federation: what `on_event_delivered_over_federation` gets."""

from dataclasses import dataclass
from enum import Enum


class FederatedEventDeliveryMethod(str, Enum):
    """How events reached another server (more may come)."""

    SEND = "/send"
    BACKFILL = "/backfill"
    GET_MISSING_EVENTS = "/get_missing_events"
    EVENT = "/event"
    EVENT_AUTH = "/event_auth"
    STATE = "/state"
    SEND_JOIN = "/send_join"


@dataclass(frozen=True)
class FederationEventDeliveryEvent:
    """Some events delivered to one server."""

    server_name: str
    events: list
    method: FederatedEventDeliveryMethod
