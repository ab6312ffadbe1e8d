"""Account data and media repository callbacks, and the categories Myelin accepts without
calling, for the black-box tests."""

from synapse.module_api import MediaUploadLimit, RatelimitOverride

from seen import Seen


class Repository:
    def __init__(self, config, api):
        self.seen = {"account_data": []}
        api.register_account_data_callbacks(on_account_data_updated=self.on_account_data_updated)
        api.register_media_repository_callbacks(
            get_media_config_for_user=self.get_media_config_for_user,
            is_user_allowed_to_upload_media_of_size=self.is_user_allowed_to_upload_media_of_size,
            get_media_upload_limits_for_user=self.get_media_upload_limits_for_user,
            on_media_upload_limit_exceeded=self.on_media_upload_limit_exceeded,
        )
        # Accepted (Myelin has nothing for them to do yet); start-up must not fail.
        api.register_background_update_controller_callbacks(on_update=self.on_update)
        api.register_ratelimit_callbacks(get_ratelimit_override_for_user=self.ratelimit_override)
        api.register_web_resource("/_synapse/client/repository/seen", Seen(self.seen))

    async def on_account_data_updated(self, user_id, room_id, account_data_type, content):
        self.seen["account_data"].append([user_id, room_id, account_data_type, dict(content)])

    async def get_media_config_for_user(self, user_id):
        return {"m.upload.size": 10} if user_id.startswith("@small:") else None

    async def is_user_allowed_to_upload_media_of_size(self, user_id, size):
        return not (user_id.startswith("@small:") and size > 10)

    async def get_media_upload_limits_for_user(self, user_id):
        if user_id.startswith("@quota:"):
            return [MediaUploadLimit(10, 60_000, "https://example.com/upgrade", True)]
        return None

    async def on_media_upload_limit_exceeded(self, user_id, limit, sent_bytes, attempted_bytes):
        self.seen.setdefault("exceeded", []).append([user_id, limit.max_bytes, sent_bytes, attempted_bytes])

    async def on_update(self, update_name, database_name, one_shot):
        raise AssertionError("never called")

    async def ratelimit_override(self, user_id, limiter_name):
        self.seen.setdefault("limiters", [])
        if limiter_name not in self.seen["limiters"]:
            self.seen["limiters"].append(limiter_name)
        if user_id.startswith("@slow:") and limiter_name == "rc_message":
            return RatelimitOverride(per_second=0.001, burst_count=2)
        if user_id.startswith("@free:"):
            return RatelimitOverride(per_second=0, burst_count=0)
        return None
