"""Legacy (`spam_checker:`) spam checkers, written the pre-1.37 way: sync methods, no `api`."""

from synapse.spam_checker_api import RegistrationBehaviour


class LegacyChecker:
    def __init__(self, config):
        self.config = config

    def user_may_invite(self, inviter, invitee, room_id):
        return False

    def check_event_for_spam(self, event):
        if event.content.get("body") == "forbidden words":
            return "legacy says no"
        return False

    def check_registration_for_spam(self, email_threepid, username, request_info):
        return RegistrationBehaviour.DENY if username == "legacydeny" else RegistrationBehaviour.ALLOW


class Empty:
    """A legacy checker implementing nothing (case 42)."""

    def __init__(self, config, api):
        self.api = api


class BadRegistration:
    def __init__(self, config):
        pass

    def check_registration_for_spam(self, only_one):
        return RegistrationBehaviour.ALLOW
