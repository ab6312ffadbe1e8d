"""Third-party identifier callbacks (is_3pid_allowed and the 3PID notifications), for the
black-box e-mail tests."""

from seen import Seen


class ThreepidRules:
    def __init__(self, config, api):
        self.seen = {"allowed": [], "added": [], "bound": [], "removed": []}
        api.register_password_auth_provider_callbacks(is_3pid_allowed=self.is_3pid_allowed)
        api.register_third_party_rules_callbacks(
            on_add_user_third_party_identifier=self.on_add,
            on_remove_user_third_party_identifier=self.on_remove,
            on_threepid_bind=self.on_bind,
        )
        api.register_web_resource("/_synapse/client/threepid_rules/seen", Seen(self.seen))

    async def is_3pid_allowed(self, medium, address, registration):
        self.seen["allowed"].append([medium, address, registration])
        if address.endswith("@boom.test"):
            raise RuntimeError("a module's bug refuses with 500, as on Synapse")
        return not address.endswith("@blocked.test")

    async def on_add(self, user_id, medium, address):
        self.seen["added"].append([user_id, medium, address])
        if address.startswith("raise@"):
            raise RuntimeError("logged, and the address is still added")

    async def on_bind(self, user_id, medium, address):
        self.seen["bound"].append([user_id, medium, address])

    async def on_remove(self, user_id, medium, address):
        self.seen["removed"].append([user_id, medium, address])
