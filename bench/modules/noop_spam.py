"""A Python module whose check_event_for_spam allows everything: the cost of the Python path."""

from synapse.module_api import NOT_SPAM


class NoopSpam:
    def __init__(self, config, api):
        api.register_spam_checker_callbacks(check_event_for_spam=self.check_event_for_spam)

    async def check_event_for_spam(self, event):
        return NOT_SPAM


class NoopInvite:
    """A no-op user_may_invite, async: what one Python callback costs (crates/python/benches)."""

    def __init__(self, config, api):
        api.register_spam_checker_callbacks(user_may_invite=self.user_may_invite)

    async def user_may_invite(self, inviter, invitee, room_id):
        return NOT_SPAM
