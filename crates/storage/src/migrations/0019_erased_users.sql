-- Users deactivated with `erase`: their events are shown redacted to anyone who was not in
-- the room when they were sent, and to other servers (Synapse's `erased_users`).
CREATE TABLE erased_users (
    user_id TEXT PRIMARY KEY NOT NULL
);
