-- Myelin's PostgreSQL schema, version 1: the same tables as SQLite's migrations 1 to 11, with
-- PostgreSQL's types (BIGINT for every integer, BOOLEAN flags, BIGSERIAL for generated IDs) and
-- full-text search as a tsvector column under a GIN index instead of an FTS5 table.

CREATE TABLE users (
    user_id TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    is_guest BOOLEAN NOT NULL DEFAULT FALSE,
    deactivated BOOLEAN NOT NULL DEFAULT FALSE,
    shadow_banned BOOLEAN NOT NULL DEFAULT FALSE,
    creation_ts BIGINT NOT NULL
);
CREATE INDEX users_lower ON users (lower(user_id));

CREATE TABLE profiles (
    user_id TEXT PRIMARY KEY NOT NULL REFERENCES users (user_id),
    displayname TEXT,
    avatar_url TEXT
);

CREATE TABLE devices (
    user_id TEXT NOT NULL REFERENCES users (user_id),
    device_id TEXT NOT NULL,
    display_name TEXT,
    last_seen_ts BIGINT,
    last_seen_ip TEXT,
    last_seen_user_agent TEXT,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE access_tokens (
    token TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id)
);

-- The single stream position shared by events, account data, receipts, presence, device-list
-- changes and to-device messages. Every write transaction takes the store-wide write lock first
-- (see `PostgresStore::write`), so positions commit in order, as on SQLite.
CREATE TABLE stream_position (position BIGINT NOT NULL);
INSERT INTO stream_position (position) VALUES (0);

CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    room_version TEXT NOT NULL,
    creator TEXT NOT NULL,
    is_public BOOLEAN NOT NULL DEFAULT FALSE,
    join_rule TEXT
);

CREATE TABLE state_groups (
    id BIGSERIAL PRIMARY KEY,
    room_id TEXT NOT NULL REFERENCES rooms (room_id),
    prev_group BIGINT REFERENCES state_groups (id)
);

CREATE TABLE state_group_entries (
    state_group BIGINT NOT NULL REFERENCES state_groups (id),
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (state_group, type, state_key)
);

CREATE TABLE events (
    stream_ordering BIGINT PRIMARY KEY NOT NULL,
    event_id TEXT UNIQUE NOT NULL,
    room_id TEXT NOT NULL REFERENCES rooms (room_id),
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    membership TEXT,
    json TEXT NOT NULL,
    state_group BIGINT REFERENCES state_groups (id),
    rejected BOOLEAN NOT NULL DEFAULT FALSE,
    soft_failed BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX events_room_stream ON events (room_id, stream_ordering);
CREATE INDEX events_member ON events (state_key, type, stream_ordering) WHERE type = 'm.room.member';

CREATE TABLE forward_extremities (
    room_id TEXT NOT NULL REFERENCES rooms (room_id),
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

CREATE TABLE current_state (
    room_id TEXT NOT NULL REFERENCES rooms (room_id),
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    membership TEXT,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX current_state_members ON current_state (state_key, membership, room_id) WHERE type = 'm.room.member';
CREATE INDEX current_state_members_by_room ON current_state (room_id, membership, state_key)
    WHERE type = 'm.room.member';

-- `id` orders rows by insertion (SQLite's rowid).
CREATE TABLE event_txn_ids (
    id BIGSERIAL NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);
CREATE INDEX event_txn_ids_event ON event_txn_ids (event_id);
CREATE INDEX event_txn_ids_order ON event_txn_ids (id);

CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_stream ON account_data (user_id, stream_ordering);

CREATE TABLE filters (
    filter_id BIGSERIAL PRIMARY KEY,
    user_id TEXT NOT NULL,
    filter_json TEXT NOT NULL
);

CREATE TABLE room_aliases (
    alias TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL REFERENCES rooms (room_id),
    creator TEXT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

CREATE TABLE media (
    media_id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    content_type TEXT,
    upload_name TEXT,
    length BIGINT,
    created_ts BIGINT NOT NULL,
    pending BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE media_thumbnails (
    media_id TEXT NOT NULL REFERENCES media (media_id),
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    method TEXT NOT NULL,
    content_type TEXT NOT NULL,
    length BIGINT NOT NULL,
    PRIMARY KEY (media_id, width, height, method)
);

CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY NOT NULL,
    uses_allowed BIGINT,
    pending BIGINT NOT NULL DEFAULT 0,
    completed BIGINT NOT NULL DEFAULT 0,
    expiry_time BIGINT
);

CREATE TABLE device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);

CREATE TABLE fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    used BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, device_id, algorithm)
);

CREATE TABLE cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

CREATE TABLE device_list_changes (
    stream_ordering BIGINT NOT NULL,
    user_id TEXT NOT NULL
);
CREATE INDEX device_list_changes_by_position ON device_list_changes (stream_ordering);

-- `id` orders a position's messages as they were queued.
CREATE TABLE to_device_messages (
    id BIGSERIAL NOT NULL,
    stream_ordering BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    message_json TEXT NOT NULL
);
CREATE INDEX to_device_by_recipient ON to_device_messages (user_id, device_id, stream_ordering);

CREATE TABLE to_device_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE room_key_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag BIGINT NOT NULL DEFAULT 0,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE room_keys (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);

CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_by_position ON receipts (stream_ordering);
CREATE INDEX receipts_by_user ON receipts (user_id);

CREATE TABLE presence (
    user_id TEXT PRIMARY KEY NOT NULL,
    state TEXT NOT NULL,
    status_msg TEXT,
    last_active_ts BIGINT NOT NULL,
    stream_ordering BIGINT NOT NULL
);
CREATE INDEX presence_by_position ON presence (stream_ordering);

CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    pusher_json TEXT NOT NULL,
    PRIMARY KEY (app_id, pushkey, user_id)
);

-- Full-text search: one row per searchable field of an event (`content.body`, `content.name`,
-- `content.topic`), written with the event; a redaction deletes the event's rows.
-- The 'simple' configuration lower-cases and splits on non-letters without stemming, as
-- SQLite's unicode61 tokenizer does.
CREATE TABLE event_search (
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    key TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    vector TSVECTOR NOT NULL
);
CREATE INDEX event_search_vector ON event_search USING GIN (vector);
CREATE INDEX event_search_event ON event_search (event_id);

CREATE TABLE server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

CREATE TABLE server_key_responses (
    server_name TEXT PRIMARY KEY NOT NULL,
    response TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL
);

CREATE TABLE federation_outbox (
    id BIGSERIAL PRIMARY KEY,
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX federation_outbox_destination ON federation_outbox (destination, id);

CREATE TABLE ratelimit_override (
    user_id TEXT NOT NULL PRIMARY KEY,
    messages_per_second DOUBLE PRECISION,
    burst_count BIGINT
);

CREATE TABLE event_relations (
    event_id TEXT NOT NULL PRIMARY KEY,
    relates_to TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    sender TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL
);
CREATE INDEX event_relations_parent ON event_relations (relates_to, rel_type, stream_ordering);
CREATE INDEX event_relations_threads ON event_relations (room_id, rel_type, stream_ordering);
