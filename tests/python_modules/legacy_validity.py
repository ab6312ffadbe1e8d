"""A module that takes Synapse's legacy account validity endpoints over, as
synapse-email-account-validity does (its own dates, links and mails), for the black-box tests."""

import time

from synapse.api.errors import SynapseError
from synapse.http.servlet import parse_json_object_from_request

from seen import Seen


class LegacyValidity:
    def __init__(self, config, api):
        self.expires = {}
        # Renewal tokens this module handed out (by mail, in real life): token -> user.
        self.tokens = {"good-token": "@alice:test"}
        self.used = set()
        self.seen = {"mailed": []}
        api.register_account_validity_callbacks(
            is_user_expired=self.is_user_expired,
            on_legacy_send_mail=self.on_legacy_send_mail,
            on_legacy_renew=self.on_legacy_renew,
            on_legacy_admin_request=self.on_legacy_admin_request,
        )
        api.register_web_resource("/_synapse/client/legacy_validity/seen", Seen(self.seen))

    async def is_user_expired(self, user_id):
        if user_id not in self.expires:
            return None
        return time.time() * 1000 >= self.expires[user_id]

    async def on_legacy_send_mail(self, user_id):
        if user_id.startswith("@nomail"):
            raise SynapseError(400, "No address to mail", "M_THREEPID_NOT_FOUND")
        self.seen["mailed"].append(user_id)

    async def on_legacy_renew(self, renewal_token):
        user = self.tokens.get(renewal_token)
        if user is None:
            return False, False, 0
        if renewal_token in self.used:
            return False, True, self.expires[user]
        self.used.add(renewal_token)
        self.expires[user] = int(time.time() * 1000) + 3_600_000
        return True, False, self.expires[user]

    async def on_legacy_admin_request(self, request):
        body = parse_json_object_from_request(request)
        if "user_id" not in body:
            raise SynapseError(400, "The module wants a user_id")
        self.expires[body["user_id"]] = body.get("expiration_ts", 0)
        return self.expires[body["user_id"]]
