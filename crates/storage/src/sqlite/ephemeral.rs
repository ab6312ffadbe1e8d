//! Receipts, read markers, presence, pushers and push counts (`EphemeralStore`).

use super::*;

pub(super) fn receipt_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReceiptRow> {
    Ok(ReceiptRow {
        room_id: r.get(0)?,
        receipt_type: r.get(1)?,
        user_id: r.get(2)?,
        thread_id: r.get(3)?,
        event_id: r.get(4)?,
        ts: r.get(5)?,
    })
}

pub(super) fn presence_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PresenceRow> {
    Ok(PresenceRow { user_id: r.get(0)?, state: r.get(1)?, status_msg: r.get(2)?, last_active_ts: r.get(3)? })
}

impl EphemeralStore for SqliteStore {
    fn set_receipt(&self, receipt: &ReceiptRow) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let pos = next_stream_position(&tx)?;
        tx.exec(
            "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts, stream_ordering)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE
             SET event_id = excluded.event_id, ts = excluded.ts, stream_ordering = excluded.stream_ordering",
            params![
                receipt.room_id,
                receipt.receipt_type,
                receipt.user_id,
                receipt.thread_id,
                receipt.event_id,
                receipt.ts,
                pos
            ],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(pos)
    }

    fn receipts_between(&self, rooms: &[String], from: i64, to: i64) -> Result<Vec<ReceiptRow>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT room_id, receipt_type, user_id, thread_id, event_id, ts FROM receipts
                 WHERE room_id = ?1 AND stream_ordering > ?2 AND stream_ordering <= ?3 ORDER BY stream_ordering",
            )
            .map_err(backend)?;
        // One read transaction for all the rooms, not one per statement (each takes and
        // releases the WAL's read lock).
        conn.execute_batch("BEGIN").map_err(backend)?;
        let mut out = Vec::new();
        let mut read = || -> Result<()> {
            for room in rooms {
                let rows: Vec<ReceiptRow> = stmt
                    .query_map(params![room, from, to], receipt_from_row)
                    .and_then(|r| r.collect())
                    .map_err(backend)?;
                out.extend(rows);
            }
            Ok(())
        };
        let result = read();
        conn.execute_batch("COMMIT").map_err(backend)?;
        result.map(|()| out)
    }

    fn receipts_since(&self, from: i64, to: i64) -> Result<Vec<ReceiptRow>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT room_id, receipt_type, user_id, thread_id, event_id, ts FROM receipts
                 WHERE stream_ordering > ?1 AND stream_ordering <= ?2 ORDER BY stream_ordering",
            )
            .map_err(backend)?;
        stmt.query_map(params![from, to], receipt_from_row).and_then(|r| r.collect()).map_err(backend)
    }

    fn read_position(&self, room_id: &str, user_id: &str) -> Result<i64> {
        self.reader()
            .row(
                "SELECT coalesce(max(e.stream_ordering), 0) FROM receipts r JOIN events e ON e.event_id = r.event_id
                 WHERE r.room_id = ?1 AND r.user_id = ?2 AND r.receipt_type IN ('m.read', 'm.read.private')
                   AND r.thread_id IN ('', 'main')",
                params![room_id, user_id],
                |r| r.get(0),
            )
            .map_err(backend)
    }

    fn receipt_position(&self, room_id: &str, user_id: &str, receipt_type: &str) -> Result<Option<i64>> {
        self.reader()
            .row(
                "SELECT e.stream_ordering FROM receipts r JOIN events e ON e.event_id = r.event_id
                 WHERE r.room_id = ?1 AND r.user_id = ?2 AND r.receipt_type = ?3 AND r.thread_id = ''",
                params![room_id, user_id, receipt_type],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
    }

    fn read_positions(&self, user_id: &str) -> Result<Vec<(String, i64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT r.room_id, max(e.stream_ordering) FROM receipts r JOIN events e ON e.event_id = r.event_id
                 WHERE r.user_id = ?1 AND r.receipt_type IN ('m.read', 'm.read.private')
                   AND r.thread_id IN ('', 'main')
                 GROUP BY r.room_id",
            )
            .map_err(backend)?;
        stmt.query_map(params![user_id], |r| Ok((r.get(0)?, r.get(1)?))).and_then(|r| r.collect()).map_err(backend)
    }

    fn join_positions(&self, user_id: &str) -> Result<Vec<(String, i64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT room_id, membership, stream_ordering FROM events
                 WHERE type = 'm.room.member' AND state_key = ?1 AND rejected = 0 AND soft_failed = 0
                 ORDER BY stream_ordering",
            )
            .map_err(backend)?;
        let rows: Vec<(String, String, i64)> = stmt
            .query_map(params![user_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|r| r.collect())
            .map_err(backend)?;
        // A join after a profile change is the same stay; one after a leave starts a new one.
        let mut since: HashMap<String, Option<i64>> = HashMap::new();
        for (room, membership, position) in rows {
            let entry = since.entry(room).or_default();
            match (membership == "join", *entry) {
                (true, None) => *entry = Some(position),
                (true, Some(_)) => {}
                (false, _) => *entry = None,
            }
        }
        Ok(since.into_iter().filter_map(|(room, p)| p.map(|p| (room, p))).collect())
    }

    fn set_presence(&self, presence: &PresenceRow) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let pos = next_stream_position(&tx)?;
        tx.exec(
            "INSERT INTO presence (user_id, state, status_msg, last_active_ts, stream_ordering) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg,
             last_active_ts = excluded.last_active_ts, stream_ordering = excluded.stream_ordering",
            params![presence.user_id, presence.state, presence.status_msg, presence.last_active_ts, pos],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(pos)
    }

    fn get_presence(&self, user_id: &str) -> Result<Option<PresenceRow>> {
        self.reader()
            .row(
                "SELECT user_id, state, status_msg, last_active_ts FROM presence WHERE user_id = ?1",
                [user_id],
                presence_from_row,
            )
            .optional()
            .map_err(backend)
    }

    fn presence_since(&self, from: i64, to: i64) -> Result<Vec<PresenceRow>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT user_id, state, status_msg, last_active_ts FROM presence
                 WHERE stream_ordering > ?1 AND stream_ordering <= ?2",
            )
            .map_err(backend)?;
        stmt.query_map(params![from, to], presence_from_row).and_then(|r| r.collect()).map_err(backend)
    }

    fn presence_between(&self, users: &[String], from: i64, to: i64) -> Result<Vec<PresenceRow>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT user_id, state, status_msg, last_active_ts FROM presence
                 WHERE user_id = ?1 AND stream_ordering > ?2 AND stream_ordering <= ?3",
            )
            .map_err(backend)?;
        let mut out = Vec::new();
        for user in users {
            if let Some(row) = stmt.query_row(params![user, from, to], presence_from_row).optional().map_err(backend)? {
                out.push(row);
            }
        }
        Ok(out)
    }

    fn pushers(&self, user_id: &str) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT pusher_json FROM pushers WHERE user_id = ?1 ORDER BY app_id, pushkey")
            .map_err(backend)?;
        strings(stmt.query_map([user_id], |r| r.get(0)).and_then(|rows| rows.collect()))
    }

    fn all_pushers(&self) -> Result<Vec<(String, String)>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT user_id, pusher_json FROM pushers").map_err(backend)?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).and_then(|r| r.collect()).map_err(backend)
    }

    fn set_pusher(&self, user_id: &str, app_id: &str, pushkey: &str, json: &str, append: bool) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        if !append {
            tx.exec(
                "DELETE FROM pushers WHERE app_id = ?1 AND pushkey = ?2 AND user_id != ?3",
                params![app_id, pushkey, user_id],
            )
            .map_err(backend)?;
        }
        tx.exec(
            "INSERT INTO pushers (user_id, app_id, pushkey, pusher_json) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (app_id, pushkey, user_id) DO UPDATE SET pusher_json = excluded.pusher_json",
            params![user_id, app_id, pushkey, json],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> Result<()> {
        self.conn()
            .exec(
                "DELETE FROM pushers WHERE user_id = ?1 AND app_id = ?2 AND pushkey = ?3",
                params![user_id, app_id, pushkey],
            )
            .map(drop)
            .map_err(backend)
    }

    fn allocate_stream_position(&self) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let pos = next_stream_position(&tx)?;
        tx.commit().map_err(backend)?;
        Ok(pos)
    }
}
