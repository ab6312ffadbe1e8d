"""Third-party rules and account validity callbacks, for the black-box tests."""

from synapse.api.errors import SynapseError

from seen import Seen


class Rules:
    def __init__(self, config, api):
        self.seen = {"new_events": [], "registered": [], "state_types": [], "profiles": [], "deactivated": [],
                     "logins": [], "visibility": [], "threepids": []}
        api.register_third_party_rules_callbacks(
            check_event_allowed=self.check_event_allowed,
            on_create_room=self.on_create_room,
            on_new_event=self.on_new_event,
            on_profile_update=self.on_profile_update,
            check_can_deactivate_user=self.check_can_deactivate_user,
            on_user_deactivation_status_changed=self.on_user_deactivation_status_changed,
            check_visibility_can_be_modified=self.check_visibility_can_be_modified,
            check_threepid_can_be_invited=self.check_threepid_can_be_invited,
        )
        api.register_account_validity_callbacks(
            is_user_expired=self.is_user_expired,
            on_user_registration=self.on_user_registration,
            on_user_login=self.on_user_login,
        )
        api.register_web_resource("/_synapse/client/rules/seen", Seen(self.seen))

    async def check_event_allowed(self, event, state_events):
        body = event.content.get("body")
        if body == "blocked":
            return False, None
        if body == "censor me":
            d = event.get_dict()
            d["content"] = {"msgtype": "m.text", "body": "***"}
            return True, d
        if event.type == "m.room.message":
            self.seen["state_types"] = sorted({k[0] for k in state_events})
        return True, None

    async def on_create_room(self, requester, config, is_requester_admin):
        if config.get("name") == "forbidden":
            raise Exception("no")
        if config.get("name") == "teapot":
            raise SynapseError(418, "short and stout", "M_TEAPOT")
        config["topic"] = "set by module"

    async def on_new_event(self, event, state_events):
        self.seen["new_events"].append(event.event_id)

    async def is_user_expired(self, user):
        return True if user == "@expired:test" else None

    async def on_user_registration(self, user):
        self.seen["registered"].append(user)

    async def on_profile_update(self, user_id, new_profile, by_admin, deactivation):
        self.seen["profiles"].append([user_id, new_profile.display_name, new_profile.avatar_url, by_admin,
                                      deactivation])
        if new_profile.display_name == "raise":
            raise RuntimeError("a module's bug must not fail the profile change")

    async def check_can_deactivate_user(self, user_id, by_admin):
        return not user_id.startswith("@keeper:")

    async def on_user_deactivation_status_changed(self, user_id, deactivated, by_admin):
        self.seen["deactivated"].append([user_id, deactivated, by_admin])

    async def check_visibility_can_be_modified(self, room_id, state_events, new_visibility):
        name = state_events.get(("m.room.name", ""))
        self.seen["visibility"].append([new_visibility, len(state_events)])
        return not (name is not None and name.content.get("name") == "secret" and new_visibility == "public")

    async def check_threepid_can_be_invited(self, medium, address, state_events):
        self.seen["threepids"].append([medium, address, ("m.room.create", "") in state_events])
        if address.startswith("raise@"):
            raise RuntimeError("a module's bug counts as no objection")
        return not address.endswith("@blocked.example")

    async def on_user_login(self, user_id, auth_provider_type, auth_provider_id):
        self.seen["logins"].append([user_id, auth_provider_type, auth_provider_id])
