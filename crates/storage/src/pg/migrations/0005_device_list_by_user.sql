-- A user's latest device-list change before a position: the `prev_id` of the next
-- `m.device_list_update` sent to other servers.
CREATE INDEX device_list_changes_by_user ON device_list_changes (user_id, stream_ordering);
