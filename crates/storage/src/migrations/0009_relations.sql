-- Which event relates to which (content."m.relates_to"), for /relations, /threads and the
-- bundled aggregations clients read in unsigned."m.relations". Filled as events are written;
-- events stored before this migration are indexed here once.
CREATE TABLE event_relations (
    event_id TEXT NOT NULL PRIMARY KEY,
    relates_to TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    sender TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL
);
CREATE INDEX event_relations_parent ON event_relations (relates_to, rel_type, stream_ordering);
CREATE INDEX event_relations_threads ON event_relations (room_id, rel_type, stream_ordering);
INSERT OR IGNORE INTO event_relations (event_id, relates_to, rel_type, room_id, type, sender, stream_ordering)
    SELECT event_id, json_extract(json, '$.content."m.relates_to".event_id'),
           json_extract(json, '$.content."m.relates_to".rel_type'), room_id, type, sender, stream_ordering
    FROM events
    WHERE rejected = 0 AND soft_failed = 0
      AND json_type(json, '$.content."m.relates_to".event_id') = 'text'
      AND json_type(json, '$.content."m.relates_to".rel_type') = 'text';
