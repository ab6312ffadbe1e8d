-- Each application service's delivery position and the transaction it has in flight (written
-- before it is sent, so a restart sends the same transaction again, with the same ID).
CREATE TABLE appservice_state (
    as_id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    last_txn_id INTEGER NOT NULL DEFAULT 0,
    pending_txn_id INTEGER,
    pending_to INTEGER,
    pending_body TEXT
);
-- Appservices read every recipient's to-device messages by position.
CREATE INDEX to_device_by_position ON to_device_messages (stream_ordering);
-- Rooms an appservice lists in the room directory under one of its third-party networks
-- (`PUT /directory/list/appservice/{networkId}/{roomId}`).
CREATE TABLE appservice_room_list (
    as_id TEXT NOT NULL,
    network_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (as_id, network_id, room_id)
);
