//! Events, state groups, extremities, memberships and the stream (`RoomStore`).

use super::*;

pub(super) fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        stream_ordering: r.get(0)?,
        json: r.get(1)?,
        state_group: r.get(2)?,
        rejected: r.get(3)?,
        soft_failed: r.get(4)?,
    })
}

pub(super) const EVENT_COLUMNS: &str = "stream_ordering, json, state_group, rejected, soft_failed";

/// The rows of one event, inside the caller's transaction.
pub(super) fn write_event(tx: &Connection, ev: &NewEvent<'_>) -> Result<(i64, i64)> {
    let group = write_state_group(tx, ev.room_id, &ev.state)?;
    let stream = next_stream_position(tx)?;
    tx.exec(
        "INSERT INTO events (event_id, room_id, type, state_key, sender, membership, json,
                             state_group, rejected, soft_failed, stream_ordering)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            ev.event_id,
            ev.room_id,
            ev.event_type,
            ev.state_key,
            ev.sender,
            ev.membership,
            ev.json,
            group,
            ev.rejected,
            ev.soft_failed,
            stream
        ],
    )
    .map_err(backend)?;
    if !ev.rejected && !ev.soft_failed {
        // A relation (edit, thread reply, reference, annotation) is indexed by its parent.
        tx.exec(
            "INSERT OR IGNORE INTO event_relations (event_id, relates_to, rel_type, room_id, type, sender, stream_ordering)
             SELECT event_id, json_extract(json, '$.content.\"m.relates_to\".event_id'),
                    json_extract(json, '$.content.\"m.relates_to\".rel_type'), room_id, type, sender, stream_ordering
             FROM events WHERE stream_ordering = ?1
               AND json_type(json, '$.content.\"m.relates_to\".event_id') = 'text'
               AND json_type(json, '$.content.\"m.relates_to\".rel_type') = 'text'",
            params![stream],
        )
        .map_err(backend)?;
        // Only what changes: the parents leave, the event joins (a busy room can have many).
        for id in ev.prev_events {
            tx.exec("DELETE FROM forward_extremities WHERE room_id = ?1 AND event_id = ?2", params![ev.room_id, id])
                .map_err(backend)?;
        }
        tx.exec(
            "INSERT INTO forward_extremities (room_id, event_id) VALUES (?1, ?2)",
            params![ev.room_id, ev.event_id],
        )
        .map_err(backend)?;
    }
    if let Some(state) = ev.current_state {
        tx.exec("DELETE FROM current_state WHERE room_id = ?1", [ev.room_id]).map_err(backend)?;
        // The membership column comes from the events themselves (this one is stored above).
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO current_state (room_id, type, state_key, event_id, membership)
                 SELECT ?1, ?2, ?3, ?4, (SELECT membership FROM events WHERE event_id = ?4)",
            )
            .map_err(backend)?;
        for e in state {
            stmt.execute(params![ev.room_id, e.event_type, e.state_key, e.event_id]).map_err(backend)?;
        }
    } else if ev.updates_current_state
        && let Some(key) = ev.state_key
    {
        tx.exec(
            "INSERT OR REPLACE INTO current_state (room_id, type, state_key, event_id, membership)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![ev.room_id, ev.event_type, key, ev.event_id, ev.membership],
        )
        .map_err(backend)?;
    }
    if let Some((user, device, txn)) = ev.txn {
        tx.exec(
            "INSERT INTO event_txn_ids (user_id, device_id, txn_id, event_id) VALUES (?1, ?2, ?3, ?4)",
            params![user, device, txn, ev.event_id],
        )
        .map_err(backend)?;
    }
    if let Some((target, redacted_json)) = ev.redaction {
        tx.exec("UPDATE events SET json = ?2 WHERE event_id = ?1", params![target, redacted_json]).map_err(backend)?;
    }
    for destination in ev.destinations {
        tx.exec(
            "INSERT INTO federation_outbox (destination, kind, body) VALUES (?1, 'pdu', ?2)",
            params![destination, ev.event_id],
        )
        .map_err(backend)?;
    }
    Ok((stream, group))
}

/// Claims the next position of the one stream that events and account data share, so that a
/// single sync token orders both. Called inside the writing transaction, so positions commit in
/// order.
pub(super) fn next_stream_position(tx: &Connection) -> Result<i64> {
    tx.row("UPDATE stream_position SET position = position + 1 RETURNING position", [], |r| r.get(0)).map_err(backend)
}

pub(super) fn write_state_group(tx: &Connection, room_id: &str, change: &StateChange) -> Result<i64> {
    match change {
        StateChange::Same(group) => Ok(*group),
        StateChange::New { prev, delta } => {
            tx.exec("INSERT INTO state_groups (room_id, prev_group) VALUES (?1, ?2)", params![room_id, prev])
                .map_err(backend)?;
            let group = tx.last_insert_rowid();
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO state_group_entries (state_group, type, state_key, event_id)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(backend)?;
            for e in delta {
                stmt.execute(params![group, e.event_type, e.state_key, e.event_id]).map_err(backend)?;
            }
            Ok(group)
        }
    }
}

impl RoomStore for SqliteStore {
    fn create_room(&self, room: &RoomRow) -> Result<()> {
        self.conn()
            .exec(
                "INSERT INTO rooms (room_id, room_version, creator, is_public) VALUES (?1, ?2, ?3, ?4)",
                params![room.room_id, room.room_version, room.creator, room.is_public],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn get_room(&self, room_id: &str) -> Result<Option<RoomRow>> {
        self.reader()
            .row("SELECT room_id, room_version, creator, is_public FROM rooms WHERE room_id = ?1", [room_id], |r| {
                Ok(RoomRow { room_id: r.get(0)?, room_version: r.get(1)?, creator: r.get(2)?, is_public: r.get(3)? })
            })
            .optional()
            .map_err(backend)
    }

    fn persist_event(&self, ev: &NewEvent<'_>) -> Result<(i64, i64)> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let written = write_event(&tx, ev)?;
        tx.commit().map_err(backend)?;
        Ok(written)
    }

    fn persist_events(&self, events: &[NewEvent<'_>]) -> Vec<Result<(i64, i64)>> {
        let mut conn = self.conn();
        let failed = |e: &StorageError| events.iter().map(|_| Err(e.clone())).collect();
        let mut tx = match conn.transaction().map_err(backend) {
            Ok(tx) => tx,
            Err(e) => return failed(&e),
        };
        // Each event in its own savepoint: one that fails (a repeated transaction ID) is
        // undone alone and the others still commit.
        let mut results = Vec::with_capacity(events.len());
        for ev in events {
            let result = tx.savepoint().map_err(backend).and_then(|sp| {
                let written = write_event(&sp, ev)?;
                sp.commit().map_err(backend)?;
                Ok(written)
            });
            results.push(result);
        }
        match tx.commit().map_err(backend) {
            Ok(()) => results,
            Err(e) => failed(&e),
        }
    }

    fn get_event(&self, event_id: &str) -> Result<Option<EventRow>> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ?1")).map_err(backend)?;
        stmt.query_row([event_id], event_from_row).optional().map_err(backend)
    }

    fn get_state_group(&self, group: i64) -> Result<Vec<StateEntry>> {
        // Walk from the group back to its snapshot; the newest entry for a key wins.
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "WITH RECURSIVE chain(g, depth) AS (
                   SELECT ?1, 0
                   UNION ALL
                   SELECT s.prev_group, chain.depth + 1 FROM state_groups s JOIN chain ON s.id = chain.g
                   WHERE s.prev_group IS NOT NULL
                 )
                 SELECT e.type, e.state_key, e.event_id FROM state_group_entries e
                 JOIN chain ON e.state_group = chain.g ORDER BY chain.depth DESC",
            )
            .map_err(backend)?;
        let mut map = std::collections::HashMap::new();
        let rows = stmt
            .query_map([group], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .map_err(backend)?;
        for row in rows {
            let (t, k, e) = row.map_err(backend)?;
            map.insert((t, k), e);
        }
        Ok(map
            .into_iter()
            .map(|((event_type, state_key), event_id)| StateEntry { event_type, state_key, event_id })
            .collect())
    }

    fn state_group_entry(&self, group: i64, event_type: &str, state_key: &str) -> Result<Option<String>> {
        self.reader()
            .row(
                "WITH RECURSIVE chain(g, depth) AS (
                   SELECT ?1, 0
                   UNION ALL
                   SELECT s.prev_group, chain.depth + 1 FROM state_groups s JOIN chain ON s.id = chain.g
                   WHERE s.prev_group IS NOT NULL
                 )
                 SELECT e.event_id FROM chain JOIN state_group_entries e
                   ON e.state_group = chain.g AND e.type = ?2 AND e.state_key = ?3
                 ORDER BY chain.depth LIMIT 1",
                rusqlite::params![group, event_type, state_key],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
    }

    fn state_group_chain_length(&self, group: i64) -> Result<i64> {
        self.reader()
            .row(
                "WITH RECURSIVE chain(g, n) AS (
                   SELECT ?1, 0
                   UNION ALL
                   SELECT s.prev_group, chain.n + 1 FROM state_groups s JOIN chain ON s.id = chain.g
                   WHERE s.prev_group IS NOT NULL
                 ) SELECT max(n) FROM chain",
                [group],
                |r| r.get(0),
            )
            .map_err(backend)
    }

    fn get_current_state(&self, room_id: &str) -> Result<Vec<StateEntry>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT type, state_key, event_id FROM current_state WHERE room_id = ?1")
            .map_err(backend)?;
        let rows = stmt
            .query_map([room_id], |r| {
                Ok(StateEntry { event_type: r.get(0)?, state_key: r.get(1)?, event_id: r.get(2)? })
            })
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn get_forward_extremities(&self, room_id: &str) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT event_id FROM forward_extremities WHERE room_id = ?1 ORDER BY event_id")
            .map_err(backend)?;
        let rows = stmt.query_map([room_id], |r| r.get(0)).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn recent_txn_ids(&self, limit: usize) -> Result<Vec<(String, String, String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT user_id, device_id, txn_id, event_id FROM event_txn_ids ORDER BY rowid DESC LIMIT ?1",
            )
            .map_err(backend)?;
        stmt.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .and_then(|r| r.collect())
            .map_err(backend)
    }

    fn txn_ids_of_events(&self, user_id: &str, device_id: &str, event_ids: &[String]) -> Result<Vec<(String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT event_id, txn_id FROM event_txn_ids WHERE event_id = ?1 AND user_id = ?2 AND device_id = ?3",
            )
            .map_err(backend)?;
        let mut out = Vec::new();
        for id in event_ids {
            if let Some(txn) =
                stmt.query_row(params![id, user_id, device_id], |r| r.get(1)).optional().map_err(backend)?
            {
                out.push((id.clone(), txn));
            }
        }
        Ok(out)
    }

    fn get_txn_event(&self, user_id: &str, device_id: &str, txn_id: &str) -> Result<Option<String>> {
        self.reader()
            .row(
                "SELECT event_id FROM event_txn_ids WHERE user_id = ?1 AND device_id = ?2 AND txn_id = ?3",
                params![user_id, device_id, txn_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
    }

    fn rooms_for_user(&self, user_id: &str, membership: &str) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT room_id FROM current_state WHERE type = 'm.room.member' AND state_key = ?1
                 AND membership = ?2 ORDER BY room_id",
            )
            .map_err(backend)?;
        let rows = stmt.query_map([user_id, membership], |r| r.get(0)).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn joined_servers_by_room(&self) -> Result<Vec<(String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT DISTINCT room_id, substr(state_key, instr(state_key, ':') + 1) AS server FROM current_state
                 WHERE type = 'm.room.member' AND membership = 'join' ORDER BY server, room_id",
            )
            .map_err(backend)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn user_memberships(&self, user_id: &str) -> Result<Vec<UserMembership>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT c.room_id, c.membership, COALESCE(e.sender, ''), c.event_id, COALESCE(e.stream_ordering, 0)
                 FROM current_state c LEFT JOIN events e ON e.event_id = c.event_id
                 WHERE c.type = 'm.room.member' AND c.state_key = ?1 AND c.membership IS NOT NULL",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([user_id], |r| {
                Ok(UserMembership {
                    room_id: r.get(0)?,
                    membership: r.get(1)?,
                    sender: r.get(2)?,
                    event_id: r.get(3)?,
                    stream_ordering: r.get(4)?,
                })
            })
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn last_event_positions(&self, rooms: &[String], types: &[&str], to: i64) -> Result<Vec<(String, i64)>> {
        let conn = self.reader();
        // One indexed walk back from `to` per room (`events_room_stream`).
        let type_test = if types.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = types.iter().map(|t| format!("'{}'", t.replace('\'', "''"))).collect();
            format!("AND type IN ({})", quoted.join(","))
        };
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT stream_ordering FROM events WHERE room_id = ?1 AND stream_ordering <= ?2
                 AND rejected = 0 AND soft_failed = 0 {type_test} ORDER BY stream_ordering DESC LIMIT 1"
            ))
            .map_err(backend)?;
        let mut out = Vec::with_capacity(rooms.len());
        for room in rooms {
            if let Some(pos) = stmt.query_row(params![room, to], |r| r.get(0)).optional().map_err(backend)? {
                out.push((room.clone(), pos));
            }
        }
        Ok(out)
    }

    fn room_memberships(&self, room_id: &str) -> Result<Vec<(String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT state_key, membership FROM current_state WHERE room_id = ?1 AND type = 'm.room.member'
                 ORDER BY state_key",
            )
            .map_err(backend)?;
        let rows = stmt.query_map([room_id], |r| Ok((r.get(0)?, r.get(1)?))).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn relations(&self, query: &RelationQuery<'_>) -> Result<Vec<EventRow>> {
        let order = if query.backwards { "DESC" } else { "ASC" };
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT e.stream_ordering, e.json, e.state_group, e.rejected, e.soft_failed
                 FROM event_relations r JOIN events e ON e.event_id = r.event_id
                 WHERE r.relates_to = ?1 AND (?2 IS NULL OR r.rel_type = ?2) AND (?3 IS NULL OR r.type = ?3)
                   AND r.stream_ordering > ?4 AND r.stream_ordering < ?5
                 ORDER BY r.stream_ordering {order} LIMIT ?6"
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map(
                params![query.parent, query.rel_type, query.event_type, query.after, query.before, query.limit as i64],
                event_from_row,
            )
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn relation_summaries(&self, parents: &[String]) -> Result<Vec<RelationRow>> {
        // One query for the whole page: the parents go in as a JSON array.
        let list = serde_json::to_string(parents).map_err(|e| StorageError::Backend(e.to_string()))?;
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT r.relates_to, r.rel_type, r.event_id, r.sender, r.stream_ordering
                 FROM event_relations r
                 WHERE r.relates_to IN (SELECT value FROM json_each(?1))
                   AND r.rel_type IN ('m.replace', 'm.thread', 'm.reference')
                 ORDER BY r.stream_ordering",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([list], |r| {
                Ok(RelationRow {
                    parent: r.get(0)?,
                    rel_type: r.get(1)?,
                    event_id: r.get(2)?,
                    sender: r.get(3)?,
                    stream_ordering: r.get(4)?,
                })
            })
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn events_by_timestamp(&self, room_id: &str, ts: i64, forwards: bool, limit: usize) -> Result<Vec<EventRow>> {
        // A scan of the room's events in time order (no index on the timestamp: this endpoint is
        // rare and rooms are read newest first otherwise).
        let (cmp, order) = if forwards { (">=", "ASC") } else { ("<=", "DESC") };
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE room_id = ?1 AND rejected = 0 AND soft_failed = 0
                   AND stream_ordering > 0 AND json_extract(json, '$.origin_server_ts') {cmp} ?2
                 ORDER BY json_extract(json, '$.origin_server_ts') {order}, stream_ordering {order} LIMIT ?3"
            ))
            .map_err(backend)?;
        let rows = stmt.query_map(params![room_id, ts, limit as i64], event_from_row).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn thread_roots(
        &self,
        room_id: &str,
        participant: Option<&str>,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(String, i64)>> {
        // A thread's position is its latest reply; threads come newest first.
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT relates_to, max(stream_ordering) AS latest FROM event_relations
                 WHERE room_id = ?1 AND rel_type = 'm.thread'
                 GROUP BY relates_to
                 HAVING latest < ?3 AND (?2 IS NULL OR max(sender = ?2) = 1
                        OR EXISTS (SELECT 1 FROM events e WHERE e.event_id = relates_to AND e.sender = ?2))
                 ORDER BY latest DESC LIMIT ?4",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![room_id, participant, before, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn room_events(&self, room_id: &str, from: i64, to: i64, backwards: bool, limit: usize) -> Result<Vec<EventRow>> {
        let order = if backwards { "DESC" } else { "ASC" };
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE room_id = ?1 AND stream_ordering > ?2
                 AND stream_ordering <= ?3 AND rejected = 0 AND soft_failed = 0 AND state_group IS NOT NULL
                 ORDER BY stream_ordering {order} LIMIT ?4"
            ))
            .map_err(backend)?;
        let rows = stmt.query_map(params![room_id, from, to, limit as i64], event_from_row).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn events_between(&self, from: i64, to: i64, limit: usize) -> Result<Vec<(String, EventRow)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS}, room_id FROM events WHERE stream_ordering > ?1 AND stream_ordering <= ?2
                 AND rejected = 0 AND soft_failed = 0 ORDER BY stream_ordering LIMIT ?3"
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![from, to, limit as i64], |r| Ok((r.get(5)?, event_from_row(r)?)))
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn current_state_events(&self, room_id: &str) -> Result<Vec<EventRow>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT e.stream_ordering, e.json, e.state_group, e.rejected, e.soft_failed
                 FROM current_state c JOIN events e ON e.event_id = c.event_id WHERE c.room_id = ?1",
            )
            .map_err(backend)?;
        stmt.query_map([room_id], event_from_row).and_then(|r| r.collect()).map_err(backend)
    }

    fn rooms_with_events_between(&self, rooms: &[String], from: i64, to: i64) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT DISTINCT room_id FROM events WHERE stream_ordering > ?1 AND stream_ordering <= ?2
                 AND rejected = 0 AND soft_failed = 0",
            )
            .map_err(backend)?;
        let rows = stmt.query_map(params![from, to], |r| r.get::<_, String>(0)).map_err(backend)?;
        let changed: std::collections::HashSet<String> = rows.collect::<rusqlite::Result<_>>().map_err(backend)?;
        Ok(rooms.iter().filter(|r| changed.contains(*r)).cloned().collect())
    }

    fn max_stream_ordering(&self) -> Result<i64> {
        self.reader().row("SELECT position FROM stream_position", [], |r| r.get(0)).map_err(backend)
    }

    fn stream_of_event(&self, event_id: &str) -> Result<Option<i64>> {
        self.reader()
            .row("SELECT stream_ordering FROM events WHERE event_id = ?1", [event_id], |r| r.get(0))
            .optional()
            .map_err(backend)
    }

    fn state_group_at(&self, room_id: &str, stream: i64) -> Result<Option<i64>> {
        self.reader()
            .row(
                "SELECT state_group FROM events WHERE room_id = ?1 AND stream_ordering <= ?2 AND rejected = 0
                 AND soft_failed = 0 ORDER BY stream_ordering DESC LIMIT 1",
                params![room_id, stream],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
            .map(Option::flatten)
    }

    fn member_changes_between(&self, from: i64, to: i64) -> Result<Vec<(String, String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT room_id, state_key, membership FROM events
                 WHERE stream_ordering > ?1 AND stream_ordering <= ?2 AND type = 'm.room.member'
                 AND rejected = 0 AND soft_failed = 0 ORDER BY stream_ordering",
            )
            .map_err(backend)?;
        let rows = stmt.query_map(params![from, to], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn membership_at(&self, user_id: &str, room_id: &str, at: i64) -> Result<Option<String>> {
        self.reader()
            .row(
                "SELECT membership FROM events WHERE room_id = ?1 AND type = 'm.room.member' AND state_key = ?2
                 AND stream_ordering <= ?3 AND rejected = 0 AND soft_failed = 0
                 ORDER BY stream_ordering DESC LIMIT 1",
                params![room_id, user_id, at],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
            .map(Option::flatten)
    }

    fn membership_changes(&self, user_id: &str, from: i64, to: i64) -> Result<Vec<(String, String, i64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT room_id, membership, max(stream_ordering) FROM events
                 WHERE type = 'm.room.member' AND state_key = ?1 AND stream_ordering > ?2
                 AND stream_ordering <= ?3 AND rejected = 0 AND soft_failed = 0
                 GROUP BY room_id",
            )
            .map_err(backend)?;
        let rows =
            stmt.query_map(params![user_id, from, to], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }
}
