-- Other servers' users' device lists, cached while they share a room with a local user
-- (Synapse's `device_lists_remote_cache`): `/keys/query` answers from here, and
-- `m.device_list_update` keeps it current. `stream_id` is the remote server's position of the
-- list, the `prev_id` its next update must name for it to apply without a resync.
CREATE TABLE remote_device_lists (
    user_id TEXT PRIMARY KEY NOT NULL,
    stream_id INTEGER NOT NULL
);
CREATE TABLE remote_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    keys_json TEXT,
    display_name TEXT,
    PRIMARY KEY (user_id, device_id)
);
CREATE TABLE remote_cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);
