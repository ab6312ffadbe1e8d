-- Rooms an admin blocked (Synapse's blocked_rooms): no local user may join or be invited, and a
-- purge keeps the row so the room stays blocked.
CREATE TABLE blocked_rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL
);
