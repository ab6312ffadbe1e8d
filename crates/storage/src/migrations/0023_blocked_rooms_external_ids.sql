-- Rooms an admin blocked (Synapse's blocked_rooms): no local user may join or be invited, and a
-- purge keeps the row so the room stays blocked.
CREATE TABLE blocked_rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL
);

-- Accounts' identities at SSO providers (Synapse's user_external_ids): one account per
-- (provider, external ID).
CREATE TABLE user_external_ids (
    auth_provider TEXT NOT NULL,
    external_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (auth_provider, external_id)
);
CREATE INDEX user_external_ids_user ON user_external_ids (user_id);
