//! Receipts, read markers, presence and pushers (`EphemeralStore`).

use super::*;

const RECEIPT_COLUMNS: &str = "r.room_id, r.receipt_type, r.user_id, r.thread_id, r.event_id, r.ts";

fn receipt(row: &Row) -> ReceiptRow {
    ReceiptRow {
        room_id: row.get(0),
        receipt_type: row.get(1),
        user_id: row.get(2),
        thread_id: row.get(3),
        event_id: row.get(4),
        ts: row.get(5),
    }
}

fn presence(row: &Row) -> PresenceRow {
    PresenceRow { user_id: row.get(0), state: row.get(1), status_msg: row.get(2), last_active_ts: row.get(3) }
}

impl EphemeralStore for PostgresStore {
    fn set_receipt(&self, receipt: &ReceiptRow) -> Result<i64> {
        self.write(|tx| {
            let pos = next_stream_position(tx)?;
            tx.exec(
                "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts, stream_ordering)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE
                 SET event_id = excluded.event_id, ts = excluded.ts, stream_ordering = excluded.stream_ordering",
                &[
                    &receipt.room_id,
                    &receipt.receipt_type,
                    &receipt.user_id,
                    &receipt.thread_id,
                    &receipt.event_id,
                    &receipt.ts,
                    &pos,
                ],
            )?;
            Ok(pos)
        })
    }

    fn receipts_between(&self, rooms: &[String], from: i64, to: i64) -> Result<Vec<ReceiptRow>> {
        // One query for all the rooms, in the order of `rooms` and then of the stream, as one
        // query per room would return them.
        let sql = format!(
            "SELECT {RECEIPT_COLUMNS} FROM unnest($1::TEXT[]) WITH ORDINALITY AS wanted (room_id, n)
             JOIN receipts r ON r.room_id = wanted.room_id
             WHERE r.stream_ordering > $2 AND r.stream_ordering <= $3
             ORDER BY wanted.n, r.stream_ordering"
        );
        self.read(|db| Ok(db.rows(&sql, &[&rooms, &from, &to])?.iter().map(receipt).collect()))
    }

    fn receipts_since(&self, from: i64, to: i64) -> Result<Vec<ReceiptRow>> {
        let sql = format!(
            "SELECT {RECEIPT_COLUMNS} FROM receipts r
             WHERE r.stream_ordering > $1 AND r.stream_ordering <= $2 ORDER BY r.stream_ordering"
        );
        self.read(|db| Ok(db.rows(&sql, &[&from, &to])?.iter().map(receipt).collect()))
    }

    fn read_position(&self, room_id: &str, user_id: &str) -> Result<i64> {
        self.read(|db| {
            Ok(db
                .one(
                    "SELECT coalesce(max(e.stream_ordering), 0) FROM receipts r JOIN events e ON e.event_id = r.event_id
                     WHERE r.room_id = $1 AND r.user_id = $2 AND r.receipt_type IN ('m.read', 'm.read.private')
                       AND r.thread_id IN ('', 'main')",
                    &[&room_id, &user_id],
                )?
                .get(0))
        })
    }

    fn receipt_position(&self, room_id: &str, user_id: &str, receipt_type: &str) -> Result<Option<i64>> {
        self.read(|db| {
            Ok(db
                .opt(
                    "SELECT e.stream_ordering FROM receipts r JOIN events e ON e.event_id = r.event_id
                     WHERE r.room_id = $1 AND r.user_id = $2 AND r.receipt_type = $3 AND r.thread_id = ''",
                    &[&room_id, &user_id, &receipt_type],
                )?
                .map(|row| row.get(0)))
        })
    }

    fn read_positions(&self, user_id: &str) -> Result<Vec<(String, i64)>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT r.room_id, max(e.stream_ordering) FROM receipts r JOIN events e ON e.event_id = r.event_id
                 WHERE r.user_id = $1 AND r.receipt_type IN ('m.read', 'm.read.private')
                   AND r.thread_id IN ('', 'main')
                 GROUP BY r.room_id ORDER BY r.room_id",
                &[&user_id],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn join_positions(&self, user_id: &str) -> Result<Vec<(String, i64)>> {
        let rows = self.read(|db| {
            db.rows(
                "SELECT room_id, membership, stream_ordering FROM events
                 WHERE type = 'm.room.member' AND state_key = $1 AND NOT rejected AND NOT soft_failed
                 ORDER BY stream_ordering",
                &[&user_id],
            )
        })?;
        // A join after a profile change is the same stay; one after a leave starts a new one.
        let mut since: HashMap<String, Option<i64>> = HashMap::new();
        for row in &rows {
            let entry = since.entry(row.get(0)).or_default();
            let joined = row.get::<_, Option<&str>>(1) == Some("join");
            match (joined, *entry) {
                (true, None) => *entry = Some(row.get(2)),
                (true, Some(_)) => {}
                (false, _) => *entry = None,
            }
        }
        let mut positions: Vec<(String, i64)> =
            since.into_iter().filter_map(|(room, p)| p.map(|p| (room, p))).collect();
        // By room, so that the answer does not depend on the map's order.
        positions.sort_unstable();
        Ok(positions)
    }

    fn set_presence(&self, presence: &PresenceRow) -> Result<i64> {
        self.write(|tx| {
            let pos = next_stream_position(tx)?;
            tx.exec(
                "INSERT INTO presence (user_id, state, status_msg, last_active_ts, stream_ordering)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg,
                 last_active_ts = excluded.last_active_ts, stream_ordering = excluded.stream_ordering",
                &[&presence.user_id, &presence.state, &presence.status_msg, &presence.last_active_ts, &pos],
            )?;
            Ok(pos)
        })
    }

    fn get_presence(&self, user_id: &str) -> Result<Option<PresenceRow>> {
        self.read(|db| {
            let row = db.opt(
                "SELECT user_id, state, status_msg, last_active_ts FROM presence WHERE user_id = $1",
                &[&user_id],
            )?;
            Ok(row.as_ref().map(presence))
        })
    }

    fn presence_since(&self, from: i64, to: i64) -> Result<Vec<PresenceRow>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT user_id, state, status_msg, last_active_ts FROM presence
                 WHERE stream_ordering > $1 AND stream_ordering <= $2 ORDER BY stream_ordering",
                &[&from, &to],
            )?;
            Ok(rows.iter().map(presence).collect())
        })
    }

    fn presence_between(&self, users: &[String], from: i64, to: i64) -> Result<Vec<PresenceRow>> {
        // In the order of `users`, as one lookup per user would return them.
        self.read(|db| {
            let rows = db.rows(
                "SELECT p.user_id, p.state, p.status_msg, p.last_active_ts
                 FROM unnest($1::TEXT[]) WITH ORDINALITY AS wanted (user_id, n)
                 JOIN presence p ON p.user_id = wanted.user_id
                 WHERE p.stream_ordering > $2 AND p.stream_ordering <= $3
                 ORDER BY wanted.n",
                &[&users, &from, &to],
            )?;
            Ok(rows.iter().map(presence).collect())
        })
    }

    fn pushers(&self, user_id: &str) -> Result<Vec<String>> {
        self.read(|db| {
            let rows =
                db.rows("SELECT pusher_json FROM pushers WHERE user_id = $1 ORDER BY app_id, pushkey", &[&user_id])?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn all_pushers(&self) -> Result<Vec<(String, String)>> {
        // Ordered only so that the answer is stable (PostgreSQL has no insertion order to fall back on).
        self.read(|db| {
            let rows = db.rows("SELECT user_id, pusher_json FROM pushers ORDER BY user_id, app_id, pushkey", &[])?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn set_pusher(&self, user_id: &str, app_id: &str, pushkey: &str, json: &str, append: bool) -> Result<()> {
        self.write(|tx| {
            if !append {
                tx.exec(
                    "DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id != $3",
                    &[&app_id, &pushkey, &user_id],
                )?;
            }
            tx.exec(
                "INSERT INTO pushers (user_id, app_id, pushkey, pusher_json) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (app_id, pushkey, user_id) DO UPDATE SET pusher_json = excluded.pusher_json",
                &[&user_id, &app_id, &pushkey, &json],
            )?;
            Ok(())
        })
    }

    fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3",
                &[&user_id, &app_id, &pushkey],
            )?;
            Ok(())
        })
    }

    // A closure, not the function itself: naming the generic function fixes the transaction's
    // lifetime, and `write` wants a function of any.
    #[allow(clippy::redundant_closure)]
    fn allocate_stream_position(&self) -> Result<i64> {
        self.write(|tx| next_stream_position(tx))
    }
}
