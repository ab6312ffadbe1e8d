-- Other servers' signing keys, as fetched from them (self-signed) and cached until they expire.
CREATE TABLE server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    valid_until_ts INTEGER NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- The latest self-signed key answer of each server, as it came: what this server, as a notary,
-- passes on (with its own signature added) to servers that ask for those keys.
CREATE TABLE server_key_responses (
    server_name TEXT PRIMARY KEY NOT NULL,
    response TEXT NOT NULL,
    valid_until_ts INTEGER NOT NULL
);

-- What is still to be sent to each destination, in order. PDU rows name the event (its JSON is
-- read when sending); EDU rows carry the EDU. Written in the transaction that stores the event,
-- deleted once the destination has accepted the transaction holding them.
CREATE TABLE federation_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX federation_outbox_destination ON federation_outbox (destination, id);
