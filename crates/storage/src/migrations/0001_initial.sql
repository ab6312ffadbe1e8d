-- Myelin schema, version 1.

CREATE TABLE users (
    user_id TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT,
    is_admin INTEGER NOT NULL DEFAULT 0,
    is_guest INTEGER NOT NULL DEFAULT 0,
    deactivated INTEGER NOT NULL DEFAULT 0,
    shadow_banned INTEGER NOT NULL DEFAULT 0,
    creation_ts INTEGER NOT NULL
);

CREATE TABLE profiles (
    user_id TEXT PRIMARY KEY NOT NULL REFERENCES users (user_id),
    displayname TEXT,
    avatar_url TEXT
);

CREATE TABLE devices (
    user_id TEXT NOT NULL REFERENCES users (user_id),
    device_id TEXT NOT NULL,
    display_name TEXT,
    last_seen_ts INTEGER,
    last_seen_ip TEXT,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE access_tokens (
    token TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id)
);

-- The single stream position shared by events and account data.
CREATE TABLE stream_position (position INTEGER NOT NULL);
INSERT INTO stream_position (position) VALUES (0);

CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    room_version TEXT NOT NULL,
    creator TEXT NOT NULL,
    is_public INTEGER NOT NULL DEFAULT 0
);

-- A state group is the full room state at some point: a delta over prev_group, or a full
-- snapshot when prev_group is NULL.
CREATE TABLE state_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL REFERENCES rooms (room_id),
    prev_group INTEGER REFERENCES state_groups (id)
);

CREATE TABLE state_group_entries (
    state_group INTEGER NOT NULL REFERENCES state_groups (id),
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (state_group, type, state_key)
);

CREATE TABLE events (
    stream_ordering INTEGER PRIMARY KEY NOT NULL,
    event_id TEXT UNIQUE NOT NULL,
    room_id TEXT NOT NULL REFERENCES rooms (room_id),
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    membership TEXT,
    json TEXT NOT NULL,
    state_group INTEGER REFERENCES state_groups (id),
    rejected INTEGER NOT NULL DEFAULT 0,
    soft_failed INTEGER NOT NULL DEFAULT 0
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
CREATE INDEX current_state_members ON current_state (state_key, membership) WHERE type = 'm.room.member';

CREATE TABLE event_txn_ids (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_stream ON account_data (user_id, stream_ordering);

CREATE TABLE filters (
    filter_id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    filter_json TEXT NOT NULL
);
