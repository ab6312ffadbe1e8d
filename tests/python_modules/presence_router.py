"""A presence router as Synapse's docs describe one, and an unsigned-fields callback, for the
black-box tests. `observers` get the presence of the users in `watched`; `everyone` gets
everybody's (ALL_USERS), through `get_users_for_states`. `half: true` registers only one of the
paired callbacks, which Synapse refuses. With `routes_file`, the three lists are read from that
JSON file at each call instead (for servers whose names are known only once they run)."""

import json

from synapse.module_api import PRESENCE_ALL_USERS


class Router:
    def __init__(self, config, api):
        self.observers = set(config.get("observers", []))
        self.watched = set(config.get("watched", []))
        self.everyone = set(config.get("everyone", []))
        self.routes_file = config.get("routes_file")
        if config.get("half"):
            api.register_presence_router_callbacks(get_interested_users=self.get_interested_users)
            return
        api.register_presence_router_callbacks(
            get_users_for_states=self.get_users_for_states,
            get_interested_users=self.get_interested_users,
        )
        api.register_add_extra_fields_to_unsigned_client_event_callbacks(
            add_field_to_unsigned_callback=self.add_to_unsigned,
        )

    def _reload(self):
        if self.routes_file:
            with open(self.routes_file) as f:
                routes = json.load(f)
            self.observers = set(routes.get("observers", []))
            self.watched = set(routes.get("watched", []))
            self.everyone = set(routes.get("everyone", []))

    async def get_users_for_states(self, state_updates):
        self._reload()
        routed = {}
        for state in state_updates:
            if state.user_id in self.watched:
                for observer in self.observers:
                    routed.setdefault(observer, set()).add(state)
            for user in self.everyone:
                routed.setdefault(user, set()).add(state)
        return routed

    async def get_interested_users(self, user_id):
        self._reload()
        if user_id in self.everyone:
            return PRESENCE_ALL_USERS
        if user_id in self.observers:
            return set(self.watched)
        return set()

    async def add_to_unsigned(self, event):
        # A server field ("age") is never replaced by a module's.
        return {"org.example.sender_length": len(event.sender), "age": -1}
