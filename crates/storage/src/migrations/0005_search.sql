-- Myelin schema, version 5: full-text search over message bodies, room names and topics
-- (`POST /search`), filled in batches from `events`; a redaction takes an event out.

CREATE VIRTUAL TABLE event_search USING fts5(
    value,
    key UNINDEXED,
    event_id UNINDEXED,
    room_id UNINDEXED,
    stream_ordering UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 2'
);

-- New events are indexed in batches, off the send path (see `index_search_backlog` in
-- sqlite.rs): this is how far the index has got.
CREATE TABLE search_position (position INTEGER NOT NULL);
INSERT INTO search_position (position) SELECT coalesce(max(stream_ordering), 0) FROM events;

-- A redaction rewrites the event's JSON without its content: it leaves the index.
CREATE TRIGGER event_search_redact AFTER UPDATE OF json ON events
BEGIN
    DELETE FROM event_search WHERE event_id = NEW.event_id;
END;

INSERT INTO event_search (value, key, event_id, room_id, stream_ordering)
SELECT v, k, event_id, room_id, stream_ordering FROM (
    SELECT json_extract(json, '$.content.body') AS v, 'content.body' AS k, event_id, room_id, stream_ordering
    FROM events WHERE rejected = 0 AND type = 'm.room.message'
    UNION ALL
    SELECT json_extract(json, '$.content.name'), 'content.name', event_id, room_id, stream_ordering
    FROM events WHERE rejected = 0 AND type = 'm.room.name'
    UNION ALL
    SELECT json_extract(json, '$.content.topic'), 'content.topic', event_id, room_id, stream_ordering
    FROM events WHERE rejected = 0 AND type = 'm.room.topic'
) WHERE typeof(v) = 'text';
