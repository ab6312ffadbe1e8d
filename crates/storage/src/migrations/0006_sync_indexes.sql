-- Indexes an initial sync of many rooms reads through without touching the tables: one
-- user's read receipts (unread counts), one user's rooms, and the members of those rooms
-- (presence of everyone the user shares a room with).
CREATE INDEX receipts_by_user ON receipts (user_id);
DROP INDEX current_state_members;
CREATE INDEX current_state_members ON current_state (state_key, membership, room_id) WHERE type = 'm.room.member';
CREATE INDEX current_state_members_by_room ON current_state (room_id, membership, state_key)
    WHERE type = 'm.room.member';
