//! Users' reports of events, rooms and users (`AdminStore`).

use super::*;

fn event_report(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventReport> {
    let content: String = r.get(6)?;
    Ok(EventReport {
        id: r.get(0)?,
        received_ts: r.get(1)?,
        room_id: r.get(2)?,
        event_id: r.get(3)?,
        user_id: r.get(4)?,
        reason: r.get(5)?,
        content: serde_json::from_str(&content).unwrap_or(Value::Null),
    })
}

const EVENT_REPORT_COLUMNS: &str = "id, received_ts, room_id, event_id, user_id, reason, content";

/// The `ORDER BY` column of each [`UserOrder`] (fixed text, never from the request).
pub(crate) fn user_order_column(order: UserOrder) -> &'static str {
    match order {
        UserOrder::Name => "u.user_id",
        UserOrder::DisplayName => "p.displayname",
        UserOrder::CreationTs => "u.creation_ts",
        UserOrder::Admin => "u.is_admin",
        UserOrder::Deactivated => "u.deactivated",
        UserOrder::IsGuest => "u.is_guest",
        UserOrder::ShadowBanned => "u.shadow_banned",
    }
}

impl AdminStore for SqliteStore {
    fn block_room(&self, room_id: &str, user_id: &str) -> Result<()> {
        self.conn()
            .exec(
                "INSERT INTO blocked_rooms (room_id, user_id) VALUES (?1, ?2) ON CONFLICT (room_id) DO NOTHING",
                params![room_id, user_id],
            )
            .map(drop)
            .map_err(backend)
    }

    fn unblock_room(&self, room_id: &str) -> Result<bool> {
        Ok(self.conn().exec("DELETE FROM blocked_rooms WHERE room_id = ?1", [room_id]).map_err(backend)? > 0)
    }

    fn room_blocked_by(&self, room_id: &str) -> Result<Option<String>> {
        self.reader()
            .query_row("SELECT user_id FROM blocked_rooms WHERE room_id = ?1", [room_id], |r| r.get(0))
            .optional()
            .map_err(backend)
    }

    fn purge_room(&self, room_id: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let known: Option<String> = tx
            .query_row("SELECT room_id FROM rooms WHERE room_id = ?1", [room_id], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        if known.is_none() {
            return Ok(false);
        }
        for table in PURGED_ROOM_TABLES {
            tx.exec(&format!("DELETE FROM {table} WHERE room_id = ?1"), [room_id]).map_err(backend)?;
        }
        tx.exec(
            "DELETE FROM event_txn_ids WHERE event_id IN (SELECT event_id FROM events WHERE room_id = ?1)",
            [room_id],
        )
        .map_err(backend)?;
        tx.exec(
            "DELETE FROM state_group_entries WHERE state_group IN (SELECT id FROM state_groups WHERE room_id = ?1)",
            [room_id],
        )
        .map_err(backend)?;
        tx.exec("DELETE FROM events WHERE room_id = ?1", [room_id]).map_err(backend)?;
        tx.exec("DELETE FROM state_groups WHERE room_id = ?1", [room_id]).map_err(backend)?;
        tx.exec("DELETE FROM rooms WHERE room_id = ?1", [room_id]).map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(true)
    }

    fn purge_history(&self, room_id: &str, before: i64, delete_local: bool, local_server: &str) -> Result<u64> {
        let purged = "SELECT event_id FROM events WHERE room_id = ?1 AND stream_ordering < ?2 AND state_key IS NULL
             AND event_id NOT IN (SELECT event_id FROM forward_extremities WHERE room_id = ?1)
             AND (?3 OR substr(sender, -length(?4) - 1) != ':' || ?4)";
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let args = params![room_id, before, delete_local, local_server];
        for table in ["event_search", "event_relations", "event_txn_ids"] {
            tx.exec(&format!("DELETE FROM {table} WHERE event_id IN ({purged})"), args).map_err(backend)?;
        }
        let deleted = tx.exec(&format!("DELETE FROM events WHERE event_id IN ({purged})"), args).map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(deleted as u64)
    }

    fn delete_extra_forward_extremities(&self, room_id: &str) -> Result<Option<u64>> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let newest: Option<String> = tx
            .query_row(
                "SELECT f.event_id FROM forward_extremities f JOIN events e ON e.event_id = f.event_id
                 WHERE f.room_id = ?1 ORDER BY e.stream_ordering DESC LIMIT 1",
                [room_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        let Some(newest) = newest else { return Ok(None) };
        let deleted = tx
            .exec("DELETE FROM forward_extremities WHERE room_id = ?1 AND event_id != ?2", params![room_id, newest])
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(Some(deleted as u64))
    }

    fn list_users(&self, q: &UserListQuery) -> Result<(Vec<ListedUser>, i64)> {
        let filter = "FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id
             WHERE (?1 IS NULL OR instr(lower(u.user_id), lower(?1)) > 0 OR instr(lower(coalesce(p.displayname, '')), lower(?1)) > 0)
               AND (?2 IS NULL OR instr(lower(u.user_id), lower(?2)) > 0)
               AND (?3 OR u.is_guest = 0) AND (?4 IS NULL OR u.deactivated = ?4) AND (?5 IS NULL OR u.is_admin = ?5)
               AND (?8 OR u.locked = 0)
               AND (NOT ?9 OR (u.user_type IS NULL AND NOT ?10)
                    OR (u.user_type IS NOT NULL AND u.user_type NOT IN (SELECT value FROM json_each(?11))))";
        let conn = self.reader();
        let (filtering, no_regular, types) = not_user_types(&q.not_user_types);
        let args = params![
            q.name,
            q.user_id,
            q.guests,
            q.deactivated,
            q.admins,
            q.limit,
            q.from,
            q.locked,
            filtering,
            no_regular,
            types
        ];
        let total: i64 = conn.row(&format!("SELECT count(*) {filter}"), args, |r| r.get(0)).map_err(backend)?;
        let order = if q.forwards { "ASC" } else { "DESC" };
        let column = user_order_column(q.order_by);
        let mut stmt = conn
            .prepare(&format!(
                "SELECT u.user_id, u.password_hash, u.is_admin, u.is_guest, u.deactivated, u.shadow_banned, u.creation_ts,
                    u.locked, u.suspended, p.displayname, p.avatar_url, (SELECT max(last_seen_ts) FROM devices d WHERE d.user_id = u.user_id),
                    u.user_type
                 {filter} ORDER BY {column} {order} NULLS LAST, u.user_id {order} LIMIT ?6 OFFSET ?7"
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map(args, |r| {
                Ok(ListedUser {
                    user: super::users::user_from_row(r)?,
                    displayname: r.get(9)?,
                    avatar_url: r.get(10)?,
                    last_seen_ts: r.get(11)?,
                    user_type: r.get(12)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(backend)?;
        Ok((rows, total))
    }

    fn list_rooms(&self) -> Result<Vec<(String, i64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT r.room_id, (SELECT count(*) FROM current_state c WHERE c.room_id = r.room_id
                   AND c.type = 'm.room.member' AND c.membership = 'join') FROM rooms r ORDER BY r.room_id",
            )
            .map_err(backend)?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).and_then(|rows| rows.collect()).map_err(backend)
    }

    fn largest_rooms(&self, limit: usize) -> Result<Vec<(String, i64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT room_id, sum(length(json)) AS size FROM events GROUP BY room_id
                 ORDER BY size DESC, room_id LIMIT ?1",
            )
            .map_err(backend)?;
        stmt.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?))).and_then(|rows| rows.collect()).map_err(backend)
    }

    fn add_event_report(&self, report: &EventReport) -> Result<i64> {
        self.conn()
            .row(
                "INSERT INTO event_reports (received_ts, room_id, event_id, user_id, reason, content)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
                params![
                    report.received_ts,
                    report.room_id,
                    report.event_id,
                    report.user_id,
                    report.reason,
                    report.content.to_string()
                ],
                |r| r.get(0),
            )
            .map_err(backend)
    }

    fn add_room_report(&self, room_id: &str, user_id: &str, reason: &str, received_ts: i64) -> Result<i64> {
        self.conn()
            .row(
                "INSERT INTO room_reports (received_ts, room_id, user_id, reason) VALUES (?1, ?2, ?3, ?4) RETURNING id",
                params![received_ts, room_id, user_id, reason],
                |r| r.get(0),
            )
            .map_err(backend)
    }

    fn add_user_report(&self, target_user_id: &str, user_id: &str, reason: &str, received_ts: i64) -> Result<i64> {
        self.conn()
            .row(
                "INSERT INTO user_reports (received_ts, target_user_id, user_id, reason) VALUES (?1, ?2, ?3, ?4)
                 RETURNING id",
                params![received_ts, target_user_id, user_id, reason],
                |r| r.get(0),
            )
            .map_err(backend)
    }

    fn event_reports(&self, query: &EventReportQuery) -> Result<(Vec<EventReport>, i64)> {
        let filter = "WHERE (?1 IS NULL OR instr(user_id, ?1) > 0) AND (?2 IS NULL OR instr(room_id, ?2) > 0)";
        let conn = self.reader();
        let total: i64 = conn
            .row(&format!("SELECT count(*) FROM event_reports {filter}"), params![query.user_id, query.room_id], |r| {
                r.get(0)
            })
            .map_err(backend)?;
        let order = if query.forwards { "ASC" } else { "DESC" };
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {EVENT_REPORT_COLUMNS} FROM event_reports {filter} ORDER BY received_ts {order}, id {order}
                 LIMIT ?3 OFFSET ?4"
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![query.user_id, query.room_id, query.limit, query.from], event_report)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(backend)?;
        Ok((rows, total))
    }

    fn event_report(&self, id: i64) -> Result<Option<EventReport>> {
        self.reader()
            .row(&format!("SELECT {EVENT_REPORT_COLUMNS} FROM event_reports WHERE id = ?1"), params![id], event_report)
            .optional()
            .map_err(backend)
    }

    fn delete_event_report(&self, id: i64) -> Result<bool> {
        Ok(self.conn().exec("DELETE FROM event_reports WHERE id = ?1", params![id]).map_err(backend)? > 0)
    }

    fn delete_user_report(&self, id: i64) -> Result<bool> {
        Ok(self.conn().exec("DELETE FROM user_reports WHERE id = ?1", params![id]).map_err(backend)? > 0)
    }

    fn room_reports(&self) -> Result<Vec<SubjectReport>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT id, received_ts, room_id, user_id, reason FROM room_reports ORDER BY id")
            .map_err(backend)?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .and_then(|rows| rows.collect())
            .map_err(backend)
    }

    fn user_reports(&self) -> Result<Vec<SubjectReport>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT id, received_ts, target_user_id, user_id, reason FROM user_reports ORDER BY id")
            .map_err(backend)?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .and_then(|rows| rows.collect())
            .map_err(backend)
    }
}

/// `not_user_types` as the listing's query takes it: whether to filter at all, whether regular
/// accounts (`""`) go, and the other types as a JSON array.
pub(crate) fn not_user_types(types: &[String]) -> (bool, bool, String) {
    let named: Vec<&String> = types.iter().filter(|t| !t.is_empty()).collect();
    (!types.is_empty(), types.iter().any(String::is_empty), serde_json::to_string(&named).unwrap_or_default())
}
