//! Events, state groups, extremities, memberships and the stream (`RoomStore`) on PostgreSQL.
//!
//! The same rows as the SQLite backend, with two differences in how they are written: the
//! relation of an event (`content."m.relates_to"`) is read in Rust rather than with SQL JSON
//! functions, and the full-text search rows are written with the event (SQLite indexes in
//! batches off the send path; here a GIN index takes the insert).

use serde_json::Value;

use super::*;

/// The columns [`event_from_row`] reads, in its order.
pub(super) const EVENT_COLUMNS: &str = "stream_ordering, json, state_group, rejected, soft_failed";

/// An event from a row starting with [`EVENT_COLUMNS`].
pub(super) fn event_from_row(row: &Row) -> EventRow {
    EventRow {
        stream_ordering: row.get(0),
        json: row.get(1),
        state_group: row.get(2),
        rejected: row.get(3),
        soft_failed: row.get(4),
    }
}

/// A column that SQLite reads as a non-optional value although the schema allows NULL: an
/// error, as there, rather than the panic of [`Row::get`].
fn required<'a, T: postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i).map_err(backend)
}

/// The searchable field of an event type: its key in `event_search` and its name in `content`.
fn search_field(event_type: &str) -> Option<(&'static str, &'static str)> {
    match event_type {
        "m.room.message" => Some(("content.body", "body")),
        "m.room.name" => Some(("content.name", "name")),
        "m.room.topic" => Some(("content.topic", "topic")),
        _ => None,
    }
}

/// `(parent, rel_type)` of an event's `content."m.relates_to"`, when both are strings.
fn relation(content: &Value) -> Option<(&str, &str)> {
    let relates_to = content.get("m.relates_to")?;
    Some((relates_to.get("event_id")?.as_str()?, relates_to.get("rel_type")?.as_str()?))
}

/// The rows of one event, inside the caller's write transaction; returns
/// `(stream_ordering, state_group)`.
pub(crate) fn write_event<C: postgres::GenericClient>(tx: &mut Db<'_, C>, ev: &NewEvent<'_>) -> Result<(i64, i64)> {
    let group = write_state_group(tx, ev.room_id, &ev.state)?;
    let stream = next_stream_position(tx)?;
    tx.exec(
        "INSERT INTO events (event_id, room_id, type, state_key, sender, membership, json,
                             state_group, rejected, soft_failed, stream_ordering)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &ev.event_id,
            &ev.room_id,
            &ev.event_type,
            &ev.state_key,
            &ev.sender,
            &ev.membership,
            &ev.json,
            &group,
            &ev.rejected,
            &ev.soft_failed,
            &stream,
        ],
    )?;

    let accepted = !ev.rejected && !ev.soft_failed;
    // Search indexes every event that passed auth (soft-failed ones too, as SQLite's indexer).
    let searchable = if ev.rejected { None } else { search_field(ev.event_type) };
    if accepted || searchable.is_some() {
        let content = match serde_json::from_str::<Value>(ev.json) {
            Ok(mut json) => json.get_mut("content").map(Value::take).unwrap_or(Value::Null),
            // As on SQLite, malformed JSON fails the write of an accepted event (whose relation
            // is read in the same transaction there too); search alone just finds nothing.
            Err(e) if accepted => return Err(StorageError::Backend(format!("malformed event JSON: {e}"))),
            Err(_) => Value::Null,
        };
        if accepted
            && let Some((parent, rel_type)) = relation(&content)
            // PostgreSQL's TEXT cannot hold NUL: no stored event has such an ID, and the event
            // itself must still be stored.
            && !parent.contains('\0')
            && !rel_type.contains('\0')
        {
            // A relation (edit, thread reply, reference, annotation) is indexed by its parent.
            tx.exec(
                "INSERT INTO event_relations (event_id, relates_to, rel_type, room_id, type, sender, stream_ordering)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                &[&ev.event_id, &parent, &rel_type, &ev.room_id, &ev.event_type, &ev.sender, &stream],
            )?;
        }
        if let Some((key, field)) = searchable
            && let Some(value) = content.get(field).and_then(Value::as_str)
        {
            // As Synapse does: PostgreSQL's TEXT cannot hold NUL, and it separates words anyway.
            // Lower-cased here (and in search queries): in a `C`-ctype database PostgreSQL folds
            // only ASCII, where SQLite's tokenizer folds all of Unicode.
            let value = value.replace('\0', " ").to_lowercase();
            tx.exec(
                "INSERT INTO event_search (event_id, room_id, key, stream_ordering, vector)
                 VALUES ($1, $2, $3, $4, to_tsvector('simple', $5))",
                &[&ev.event_id, &ev.room_id, &key, &stream, &value],
            )?;
        }
    }

    if accepted {
        // Only what changes: the parents leave, the event joins (a busy room can have many).
        if !ev.prev_events.is_empty() {
            tx.exec(
                "DELETE FROM forward_extremities WHERE room_id = $1 AND event_id = ANY($2)",
                &[&ev.room_id, &ev.prev_events],
            )?;
        }
        tx.exec("INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2)", &[&ev.room_id, &ev.event_id])?;
    }

    if let Some(state) = ev.current_state {
        tx.exec("DELETE FROM current_state WHERE room_id = $1", &[&ev.room_id])?;
        // One statement for the whole state (a room's can hold thousands of entries); the
        // membership column comes from the events themselves (this one is stored above).
        let types: Vec<&str> = state.iter().map(|e| e.event_type.as_str()).collect();
        let keys: Vec<&str> = state.iter().map(|e| e.state_key.as_str()).collect();
        let ids: Vec<&str> = state.iter().map(|e| e.event_id.as_str()).collect();
        tx.exec(
            "INSERT INTO current_state (room_id, type, state_key, event_id, membership)
             SELECT $1::TEXT, s.type, s.state_key, s.event_id,
                    (SELECT e.membership FROM events e WHERE e.event_id = s.event_id)
             FROM unnest($2::TEXT[], $3::TEXT[], $4::TEXT[]) AS s (type, state_key, event_id)",
            &[&ev.room_id, &types, &keys, &ids],
        )?;
    } else if ev.updates_current_state
        && let Some(key) = ev.state_key
    {
        tx.exec(
            "INSERT INTO current_state (room_id, type, state_key, event_id, membership)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (room_id, type, state_key)
             DO UPDATE SET event_id = excluded.event_id, membership = excluded.membership",
            &[&ev.room_id, &ev.event_type, &key, &ev.event_id, &ev.membership],
        )?;
    }

    if let Some((user, device, txn)) = ev.txn {
        tx.exec(
            "INSERT INTO event_txn_ids (user_id, device_id, txn_id, event_id) VALUES ($1, $2, $3, $4)",
            &[&user, &device, &txn, &ev.event_id],
        )?;
    }

    if let Some((target, redacted_json)) = ev.redaction {
        tx.exec("UPDATE events SET json = $2 WHERE event_id = $1", &[&target, &redacted_json])?;
        // The redacted content leaves the search index (SQLite does this in a trigger).
        tx.exec("DELETE FROM event_search WHERE event_id = $1", &[&target])?;
    }

    if !ev.destinations.is_empty() {
        tx.exec(
            "INSERT INTO federation_outbox (destination, kind, body)
             SELECT d, 'pdu', $2::TEXT FROM unnest($1::TEXT[]) AS d",
            &[&ev.destinations, &ev.event_id],
        )?;
    }
    Ok((stream, group))
}

/// The state group of a state change, inside the caller's write transaction: the existing one,
/// or a new group holding the delta (or full snapshot).
pub(crate) fn write_state_group<C: postgres::GenericClient>(
    tx: &mut Db<'_, C>,
    room_id: &str,
    change: &StateChange,
) -> Result<i64> {
    let (prev, delta) = match change {
        StateChange::Same(group) => return Ok(*group),
        StateChange::New { prev, delta } => (prev, delta),
    };
    let group: i64 = tx
        .one("INSERT INTO state_groups (room_id, prev_group) VALUES ($1, $2) RETURNING id", &[&room_id, prev])?
        .get(0);
    // The last entry for a key wins, as SQLite's INSERT OR REPLACE one entry at a time; the
    // group is new, so no stored row can conflict and one statement writes them all.
    let mut latest: HashMap<(&str, &str), &str> = HashMap::with_capacity(delta.len());
    for e in delta {
        latest.insert((&e.event_type, &e.state_key), &e.event_id);
    }
    if latest.is_empty() {
        return Ok(group);
    }
    let mut types = Vec::with_capacity(latest.len());
    let mut keys = Vec::with_capacity(latest.len());
    let mut ids = Vec::with_capacity(latest.len());
    for ((event_type, state_key), event_id) in latest {
        types.push(event_type);
        keys.push(state_key);
        ids.push(event_id);
    }
    tx.exec(
        "INSERT INTO state_group_entries (state_group, type, state_key, event_id)
         SELECT $1::BIGINT, s.type, s.state_key, s.event_id
         FROM unnest($2::TEXT[], $3::TEXT[], $4::TEXT[]) AS s (type, state_key, event_id)",
        &[&group, &types, &keys, &ids],
    )?;
    Ok(group)
}

impl RoomStore for PostgresStore {
    fn create_room(&self, room: &RoomRow) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO rooms (room_id, room_version, creator, is_public) VALUES ($1, $2, $3, $4)",
                &[&room.room_id, &room.room_version, &room.creator, &room.is_public],
            )?;
            Ok(())
        })
    }

    fn get_room(&self, room_id: &str) -> Result<Option<RoomRow>> {
        let row = self.read(|db| {
            db.opt("SELECT room_id, room_version, creator, is_public FROM rooms WHERE room_id = $1", &[&room_id])
        })?;
        Ok(row.map(|r| RoomRow { room_id: r.get(0), room_version: r.get(1), creator: r.get(2), is_public: r.get(3) }))
    }

    fn persist_event(&self, ev: &NewEvent<'_>) -> Result<(i64, i64)> {
        self.write(|tx| write_event(tx, ev))
    }

    fn persist_events(&self, events: &[NewEvent<'_>]) -> Vec<Result<(i64, i64)>> {
        // Each event in its own savepoint: one that fails (a repeated transaction ID) is undone
        // alone and the others still commit.
        self.write_each(events, |tx, ev| write_event(tx, ev))
    }

    fn get_event(&self, event_id: &str) -> Result<Option<EventRow>> {
        let row =
            self.read(|db| db.opt(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $1"), &[&event_id]))?;
        Ok(row.as_ref().map(event_from_row))
    }

    fn get_state_group(&self, group: i64) -> Result<Vec<StateEntry>> {
        // Walk from the group back to its snapshot; the newest entry for a key wins.
        let rows = self.read(|db| {
            db.rows(
                "WITH RECURSIVE chain (g, depth) AS (
                   SELECT $1::BIGINT, 0
                   UNION ALL
                   SELECT s.prev_group, chain.depth + 1 FROM state_groups s JOIN chain ON s.id = chain.g
                   WHERE s.prev_group IS NOT NULL
                 )
                 SELECT DISTINCT ON (e.type, e.state_key) e.type, e.state_key, e.event_id
                 FROM state_group_entries e JOIN chain ON e.state_group = chain.g
                 ORDER BY e.type, e.state_key, chain.depth",
                &[&group],
            )
        })?;
        Ok(rows.iter().map(|r| StateEntry { event_type: r.get(0), state_key: r.get(1), event_id: r.get(2) }).collect())
    }

    fn state_group_entry(&self, group: i64, event_type: &str, state_key: &str) -> Result<Option<String>> {
        let row = self.read(|db| {
            db.opt(
                "WITH RECURSIVE chain (g, depth) AS (
                   SELECT $1::BIGINT, 0
                   UNION ALL
                   SELECT s.prev_group, chain.depth + 1 FROM state_groups s JOIN chain ON s.id = chain.g
                   WHERE s.prev_group IS NOT NULL
                 )
                 SELECT e.event_id FROM chain JOIN state_group_entries e
                   ON e.state_group = chain.g AND e.type = $2 AND e.state_key = $3
                 ORDER BY chain.depth LIMIT 1",
                &[&group, &event_type, &state_key],
            )
        })?;
        Ok(row.map(|r| r.get(0)))
    }

    fn state_group_chain_length(&self, group: i64) -> Result<i64> {
        self.read(|db| {
            let row = db.one(
                "WITH RECURSIVE chain (g, n) AS (
                   SELECT $1::BIGINT, 0::BIGINT
                   UNION ALL
                   SELECT s.prev_group, chain.n + 1 FROM state_groups s JOIN chain ON s.id = chain.g
                   WHERE s.prev_group IS NOT NULL
                 ) SELECT max(n) FROM chain",
                &[&group],
            )?;
            Ok(row.get(0))
        })
    }

    fn get_current_state(&self, room_id: &str) -> Result<Vec<StateEntry>> {
        let rows = self.read(|db| {
            db.rows(
                "SELECT type, state_key, event_id FROM current_state WHERE room_id = $1 ORDER BY type, state_key",
                &[&room_id],
            )
        })?;
        Ok(rows.iter().map(|r| StateEntry { event_type: r.get(0), state_key: r.get(1), event_id: r.get(2) }).collect())
    }

    fn get_forward_extremities(&self, room_id: &str) -> Result<Vec<String>> {
        let rows = self.read(|db| {
            db.rows("SELECT event_id FROM forward_extremities WHERE room_id = $1 ORDER BY event_id", &[&room_id])
        })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn recent_txn_ids(&self, limit: usize) -> Result<Vec<(String, String, String, String)>> {
        let rows = self.read(|db| {
            db.rows(
                "SELECT user_id, device_id, txn_id, event_id FROM event_txn_ids ORDER BY id DESC LIMIT $1",
                &[&int(limit)],
            )
        })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
    }

    fn txn_ids_of_events(&self, user_id: &str, device_id: &str, event_ids: &[String]) -> Result<Vec<(String, String)>> {
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.read(|db| {
            db.rows(
                "SELECT event_id, txn_id FROM event_txn_ids WHERE event_id = ANY($1) AND user_id = $2 AND device_id = $3",
                &[&event_ids, &user_id, &device_id],
            )
        })?;
        // In the order asked (an event has at most one transaction ID: both are written together).
        let txns: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(event_ids.iter().filter_map(|id| Some((id.clone(), txns.get(id)?.clone()))).collect())
    }

    fn get_txn_event(&self, user_id: &str, device_id: &str, txn_id: &str) -> Result<Option<String>> {
        let row = self.read(|db| {
            db.opt(
                "SELECT event_id FROM event_txn_ids WHERE user_id = $1 AND device_id = $2 AND txn_id = $3",
                &[&user_id, &device_id, &txn_id],
            )
        })?;
        Ok(row.map(|r| r.get(0)))
    }

    fn joined_servers_by_room(&self) -> Result<Vec<(String, String)>> {
        let rows = self.read(|db| {
            db.rows(
                "SELECT DISTINCT room_id, substr(state_key, strpos(state_key, ':') + 1) AS server FROM current_state
                 WHERE type = 'm.room.member' AND membership = 'join' ORDER BY server, room_id",
                &[],
            )
        })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn rooms_for_user(&self, user_id: &str, membership: &str) -> Result<Vec<String>> {
        let rows = self.read(|db| {
            db.rows(
                "SELECT room_id FROM current_state WHERE type = 'm.room.member' AND state_key = $1
                 AND membership = $2 ORDER BY room_id",
                &[&user_id, &membership],
            )
        })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn user_memberships(&self, user_id: &str) -> Result<Vec<UserMembership>> {
        let rows = self.read(|db| {
            db.rows(
                "SELECT c.room_id, c.membership, COALESCE(e.sender, ''), c.event_id, COALESCE(e.stream_ordering, 0)
                 FROM current_state c LEFT JOIN events e ON e.event_id = c.event_id
                 WHERE c.type = 'm.room.member' AND c.state_key = $1 AND c.membership IS NOT NULL",
                &[&user_id],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| UserMembership {
                room_id: r.get(0),
                membership: r.get(1),
                sender: r.get(2),
                event_id: r.get(3),
                stream_ordering: r.get(4),
            })
            .collect())
    }

    fn last_event_positions(&self, rooms: &[String], types: &[&str], to: i64) -> Result<Vec<(String, i64)>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        // One indexed walk back from `to` per room (`events_room_stream`).
        let rows = self.read(|db| {
            db.rows(
                "SELECT r.room_id, (SELECT e.stream_ordering FROM events e WHERE e.room_id = r.room_id
                     AND e.stream_ordering <= $2 AND NOT e.rejected AND NOT e.soft_failed
                     AND (cardinality($3::TEXT[]) = 0 OR e.type = ANY($3))
                     ORDER BY e.stream_ordering DESC LIMIT 1)
                 FROM unnest($1::TEXT[]) AS r(room_id)",
                &[&rooms, &to, &types],
            )
        })?;
        Ok(rows.iter().filter_map(|r| Some((r.get::<_, String>(0), r.get::<_, Option<i64>>(1)?))).collect())
    }

    fn room_memberships(&self, room_id: &str) -> Result<Vec<(String, String)>> {
        let rows = self.read(|db| {
            db.rows(
                "SELECT state_key, membership FROM current_state WHERE room_id = $1 AND type = 'm.room.member'
                 ORDER BY state_key",
                &[&room_id],
            )
        })?;
        rows.iter().map(|r| Ok((r.get(0), required(r, 1)?))).collect()
    }

    fn relations(&self, query: &RelationQuery<'_>) -> Result<Vec<EventRow>> {
        let order = if query.backwards { "DESC" } else { "ASC" };
        let rows = self.read(|db| {
            db.rows(
                &format!(
                    "SELECT e.stream_ordering, e.json, e.state_group, e.rejected, e.soft_failed
                     FROM event_relations r JOIN events e ON e.event_id = r.event_id
                     WHERE r.relates_to = $1 AND ($2::TEXT IS NULL OR r.rel_type = $2)
                       AND ($3::TEXT IS NULL OR r.type = $3)
                       AND r.stream_ordering > $4 AND r.stream_ordering < $5
                     ORDER BY r.stream_ordering {order} LIMIT $6"
                ),
                &[&query.parent, &query.rel_type, &query.event_type, &query.after, &query.before, &int(query.limit)],
            )
        })?;
        Ok(rows.iter().map(event_from_row).collect())
    }

    fn relation_summaries(&self, parents: &[String]) -> Result<Vec<RelationRow>> {
        if parents.is_empty() {
            return Ok(Vec::new());
        }
        // One query for the whole page.
        let rows = self.read(|db| {
            db.rows(
                "SELECT relates_to, rel_type, event_id, sender, stream_ordering FROM event_relations
                 WHERE relates_to = ANY($1) AND rel_type IN ('m.replace', 'm.thread', 'm.reference')
                 ORDER BY stream_ordering",
                &[&parents],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| RelationRow {
                parent: r.get(0),
                rel_type: r.get(1),
                event_id: r.get(2),
                sender: r.get(3),
                stream_ordering: r.get(4),
            })
            .collect())
    }

    fn events_by_timestamp(&self, room_id: &str, ts: i64, forwards: bool, limit: usize) -> Result<Vec<EventRow>> {
        // A scan of the room's events in time order (no index on the timestamp: this endpoint is
        // rare and rooms are read newest first otherwise). Only a numeric `origin_server_ts`
        // counts, and the CASE keeps the cast from seeing anything else. PostgreSQL's JSON
        // operators refuse a document with an escaped NUL anywhere in it (they cannot make it
        // text), so those escapes become spaces first: one such message must not break the room.
        let (cmp, order) = if forwards { (">=", "ASC") } else { ("<=", "DESC") };
        let rows = self.read(|db| {
            db.rows(
                &format!(
                    r"SELECT e.stream_ordering, e.json, e.state_group, e.rejected, e.soft_failed
                     FROM events e
                     CROSS JOIN LATERAL (
                         SELECT replace(e.json, E'\\u0000', E'\\u0020')::json -> 'origin_server_ts' AS v
                     ) j
                     CROSS JOIN LATERAL (
                         SELECT CASE WHEN json_typeof(j.v) = 'number' THEN (j.v #>> '{{}}')::NUMERIC END AS ts
                     ) t
                     WHERE e.room_id = $1 AND NOT e.rejected AND NOT e.soft_failed AND e.stream_ordering > 0
                       AND t.ts {cmp} $2::BIGINT
                     ORDER BY t.ts {order}, e.stream_ordering {order} LIMIT $3"
                ),
                &[&room_id, &ts, &int(limit)],
            )
        })?;
        Ok(rows.iter().map(event_from_row).collect())
    }

    fn thread_roots(
        &self,
        room_id: &str,
        participant: Option<&str>,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(String, i64)>> {
        // A thread's position is its latest reply; threads come newest first.
        let rows = self.read(|db| {
            db.rows(
                "SELECT relates_to, max(stream_ordering) AS latest FROM event_relations
                 WHERE room_id = $1 AND rel_type = 'm.thread'
                 GROUP BY relates_to
                 HAVING max(stream_ordering) < $3 AND ($2::TEXT IS NULL OR bool_or(sender = $2)
                        OR EXISTS (SELECT 1 FROM events e WHERE e.event_id = relates_to AND e.sender = $2))
                 ORDER BY latest DESC LIMIT $4",
                &[&room_id, &participant, &before, &int(limit)],
            )
        })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn room_events(&self, room_id: &str, from: i64, to: i64, backwards: bool, limit: usize) -> Result<Vec<EventRow>> {
        let order = if backwards { "DESC" } else { "ASC" };
        let rows = self.read(|db| {
            db.rows(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE room_id = $1 AND stream_ordering > $2
                     AND stream_ordering <= $3 AND NOT rejected AND NOT soft_failed AND state_group IS NOT NULL
                     ORDER BY stream_ordering {order} LIMIT $4"
                ),
                &[&room_id, &from, &to, &int(limit)],
            )
        })?;
        Ok(rows.iter().map(event_from_row).collect())
    }

    fn events_between(&self, from: i64, to: i64, limit: usize) -> Result<Vec<(String, EventRow)>> {
        let rows = self.read(|db| {
            db.rows(
                &format!(
                    "SELECT {EVENT_COLUMNS}, room_id FROM events WHERE stream_ordering > $1 AND stream_ordering <= $2
                     AND NOT rejected AND NOT soft_failed ORDER BY stream_ordering LIMIT $3"
                ),
                &[&from, &to, &int(limit)],
            )
        })?;
        Ok(rows.iter().map(|r| (r.get(5), event_from_row(r))).collect())
    }

    fn current_state_events(&self, room_id: &str) -> Result<Vec<EventRow>> {
        let rows = self.read(|db| {
            db.rows(
                "SELECT e.stream_ordering, e.json, e.state_group, e.rejected, e.soft_failed
                 FROM current_state c JOIN events e ON e.event_id = c.event_id WHERE c.room_id = $1
                 ORDER BY c.type, c.state_key",
                &[&room_id],
            )
        })?;
        Ok(rows.iter().map(event_from_row).collect())
    }

    fn rooms_with_events_between(&self, rooms: &[String], from: i64, to: i64) -> Result<Vec<String>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.read(|db| {
            db.rows(
                "SELECT DISTINCT room_id FROM events WHERE room_id = ANY($1) AND stream_ordering > $2
                 AND stream_ordering <= $3 AND NOT rejected AND NOT soft_failed",
                &[&rooms, &from, &to],
            )
        })?;
        // In the caller's order.
        let changed: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(rooms.iter().filter(|r| changed.contains(*r)).cloned().collect())
    }

    fn max_stream_ordering(&self) -> Result<i64> {
        self.read(|db| Ok(db.one("SELECT position FROM stream_position", &[])?.get(0)))
    }

    fn stream_of_event(&self, event_id: &str) -> Result<Option<i64>> {
        let row = self.read(|db| db.opt("SELECT stream_ordering FROM events WHERE event_id = $1", &[&event_id]))?;
        Ok(row.map(|r| r.get(0)))
    }

    fn state_group_at(&self, room_id: &str, stream: i64) -> Result<Option<i64>> {
        let row = self.read(|db| {
            db.opt(
                "SELECT state_group FROM events WHERE room_id = $1 AND stream_ordering <= $2 AND NOT rejected
                 AND NOT soft_failed ORDER BY stream_ordering DESC LIMIT 1",
                &[&room_id, &stream],
            )
        })?;
        Ok(row.and_then(|r| r.get(0)))
    }

    fn member_changes_between(&self, from: i64, to: i64) -> Result<Vec<(String, String, String)>> {
        let rows = self.read(|db| {
            db.rows(
                "SELECT room_id, state_key, membership FROM events
                 WHERE stream_ordering > $1 AND stream_ordering <= $2 AND type = 'm.room.member'
                 AND NOT rejected AND NOT soft_failed ORDER BY stream_ordering",
                &[&from, &to],
            )
        })?;
        rows.iter().map(|r| Ok((r.get(0), required(r, 1)?, required(r, 2)?))).collect()
    }

    fn membership_at(&self, user_id: &str, room_id: &str, at: i64) -> Result<Option<String>> {
        let row = self.read(|db| {
            db.opt(
                "SELECT membership FROM events WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2
                 AND stream_ordering <= $3 AND NOT rejected AND NOT soft_failed
                 ORDER BY stream_ordering DESC LIMIT 1",
                &[&room_id, &user_id, &at],
            )
        })?;
        Ok(row.and_then(|r| r.get::<_, Option<String>>(0)))
    }

    fn membership_changes(&self, user_id: &str, from: i64, to: i64) -> Result<Vec<(String, String, i64)>> {
        // The latest member event per room.
        let rows = self.read(|db| {
            db.rows(
                "SELECT DISTINCT ON (room_id) room_id, membership, stream_ordering FROM events
                 WHERE type = 'm.room.member' AND state_key = $1 AND stream_ordering > $2
                 AND stream_ordering <= $3 AND NOT rejected AND NOT soft_failed
                 ORDER BY room_id, stream_ordering DESC",
                &[&user_id, &from, &to],
            )
        })?;
        rows.iter().map(|r| Ok((r.get(0), required(r, 1)?, r.get(2)))).collect()
    }
}
