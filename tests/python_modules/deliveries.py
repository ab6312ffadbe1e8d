"""Records `on_event_delivered_over_federation` (Synapse 1.158's federation callback), for the
black-box tests; a delivery holding an event with the body "explode" raises."""

from synapse.module_api.callbacks.federation import FederatedEventDeliveryMethod

from seen import Seen


class Deliveries:
    def __init__(self, config, api):
        self.seen = []
        api.register_federation_callbacks(on_event_delivered_over_federation=self.delivered)
        api.register_web_resource("/_synapse/client/deliveries", Seen(self.seen))

    async def delivered(self, delivery):
        assert isinstance(delivery.method, FederatedEventDeliveryMethod)
        self.seen.append({
            "server_name": delivery.server_name,
            "method": delivery.method.value,
            "events": [{"event_id": e.event_id, "type": e.type, "body": e.content.get("body")}
                       for e in delivery.events],
        })
        if any(e.content.get("body") == "explode" for e in delivery.events):
            raise RuntimeError("the module failed on purpose")
