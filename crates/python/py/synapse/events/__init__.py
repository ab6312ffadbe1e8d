"""synapse.events: the event objects handed to callbacks (each callback gets its own)."""


class _InternalMetadata:
    def __init__(self, d):
        self.soft_failed = bool(d.get("soft_failed", False))
        self.outlier = False
        self.spam_checker_spammy = False

    def is_outlier(self):
        return self.outlier


class EventBase:
    def __init__(self, d):
        self._dict = dict(d)
        self.internal_metadata = _InternalMetadata(self._dict.pop("internal_metadata", {}) or {})

    def get_dict(self):
        d = dict(self._dict)
        d.pop("event_id", None)
        return d

    def get(self, key, default=None):
        return self._dict.get(key, default)

    def get_pdu_json(self):
        return self.get_dict()

    def __getitem__(self, key):
        return self._dict[key]

    def __contains__(self, key):
        return key in self._dict

    def is_state(self):
        return "state_key" in self._dict

    @property
    def event_id(self):
        return self._dict.get("event_id")

    @property
    def type(self):
        return self._dict.get("type")

    @property
    def sender(self):
        return self._dict.get("sender")

    @property
    def room_id(self):
        return self._dict.get("room_id")

    @property
    def state_key(self):
        if "state_key" not in self._dict:
            raise AttributeError("state_key")
        return self._dict["state_key"]

    @property
    def content(self):
        # A plain dict, as Synapse's events carry by default (`use_frozen_dicts: false`);
        # modules that copy or edit it see what they would on Synapse. Each callback gets its
        # own copy, so an edit changes nothing in Myelin.
        return self._dict.setdefault("content", {})

    @property
    def membership(self):
        return self._dict.get("content", {}).get("membership")

    @property
    def origin_server_ts(self):
        return self._dict.get("origin_server_ts")

    @property
    def redacts(self):
        return self._dict.get("redacts") or self._dict.get("content", {}).get("redacts")

    @property
    def depth(self):
        return self._dict.get("depth")

    def __repr__(self):
        return "<EventBase event_id=%r type=%r>" % (self.event_id, self.type)


def make_event(d):
    return EventBase(d)
