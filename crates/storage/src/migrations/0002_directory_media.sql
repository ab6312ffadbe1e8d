-- Myelin schema, version 2: aliases, the room and user directories, media.

CREATE TABLE room_aliases (
    alias TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL REFERENCES rooms (room_id),
    creator TEXT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- The room's current join rule, kept by the room graph so directory queries need no event JSON.
ALTER TABLE rooms ADD COLUMN join_rule TEXT;

CREATE TABLE media (
    media_id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    content_type TEXT,
    upload_name TEXT,
    length INTEGER,
    created_ts INTEGER NOT NULL,
    -- Reserved by /create and not uploaded yet.
    pending INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE media_thumbnails (
    media_id TEXT NOT NULL REFERENCES media (media_id),
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    method TEXT NOT NULL,
    content_type TEXT NOT NULL,
    length INTEGER NOT NULL,
    PRIMARY KEY (media_id, width, height, method)
);
