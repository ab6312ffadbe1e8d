-- Every change of a file's quarantine, in order (Synapse's `quarantined_media_changes`), for
-- `GET /_synapse/admin/v1/media/quarantine_changes`. `origin` is NULL for this server's files.
CREATE TABLE quarantine_changes (
    stream_id INTEGER PRIMARY KEY AUTOINCREMENT,
    origin TEXT,
    media_id TEXT NOT NULL,
    quarantined INTEGER NOT NULL
);
