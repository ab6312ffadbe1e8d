//! Users' reports of events, rooms and users (`AdminStore`) on PostgreSQL.

use super::*;

fn event_report(r: &Row) -> EventReport {
    let content: String = r.get(6);
    EventReport {
        id: r.get(0),
        received_ts: r.get(1),
        room_id: r.get(2),
        event_id: r.get(3),
        user_id: r.get(4),
        reason: r.get(5),
        content: serde_json::from_str(&content).unwrap_or(Value::Null),
    }
}

const EVENT_REPORT_COLUMNS: &str = "id, received_ts, room_id, event_id, user_id, reason, content";

impl AdminStore for PostgresStore {
    fn block_room(&self, room_id: &str, user_id: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO blocked_rooms (room_id, user_id) VALUES ($1, $2) ON CONFLICT (room_id) DO NOTHING",
                &[&room_id, &user_id],
            )?;
            Ok(())
        })
    }

    fn unblock_room(&self, room_id: &str) -> Result<bool> {
        self.write(|tx| Ok(tx.exec("DELETE FROM blocked_rooms WHERE room_id = $1", &[&room_id])? > 0))
    }

    fn room_blocked_by(&self, room_id: &str) -> Result<Option<String>> {
        self.read(|db| {
            Ok(db.opt("SELECT user_id FROM blocked_rooms WHERE room_id = $1", &[&room_id])?.map(|r| r.get(0)))
        })
    }

    fn purge_history(&self, room_id: &str, before: i64, delete_local: bool, local_server: &str) -> Result<u64> {
        let purged = "SELECT event_id FROM events WHERE room_id = $1 AND stream_ordering < $2 AND state_key IS NULL
             AND event_id NOT IN (SELECT event_id FROM forward_extremities WHERE room_id = $1)
             AND ($3 OR right(sender, length($4) + 1) != ':' || $4)";
        self.write(|tx| {
            let args: &Params<'_> = &[&room_id, &before, &delete_local, &local_server];
            for table in ["event_search", "event_relations", "event_txn_ids"] {
                tx.exec(&format!("DELETE FROM {table} WHERE event_id IN ({purged})"), args)?;
            }
            tx.exec(&format!("DELETE FROM events WHERE event_id IN ({purged})"), args)
        })
    }

    fn delete_extra_forward_extremities(&self, room_id: &str) -> Result<Option<u64>> {
        self.write(|tx| {
            let newest = tx.opt(
                "SELECT f.event_id FROM forward_extremities f JOIN events e ON e.event_id = f.event_id
                 WHERE f.room_id = $1 ORDER BY e.stream_ordering DESC LIMIT 1",
                &[&room_id],
            )?;
            let Some(newest) = newest.map(|r| r.get::<_, String>(0)) else { return Ok(None) };
            let deleted =
                tx.exec("DELETE FROM forward_extremities WHERE room_id = $1 AND event_id != $2", &[&room_id, &newest])?;
            Ok(Some(deleted))
        })
    }

    fn purge_room(&self, room_id: &str) -> Result<bool> {
        self.write(|tx| {
            if tx.opt("SELECT room_id FROM rooms WHERE room_id = $1 FOR UPDATE", &[&room_id])?.is_none() {
                return Ok(false);
            }
            for table in PURGED_ROOM_TABLES {
                tx.exec(&format!("DELETE FROM {table} WHERE room_id = $1"), &[&room_id])?;
            }
            tx.exec(
                "DELETE FROM event_txn_ids WHERE event_id IN (SELECT event_id FROM events WHERE room_id = $1)",
                &[&room_id],
            )?;
            tx.exec(
                "DELETE FROM state_group_entries WHERE state_group IN (SELECT id FROM state_groups WHERE room_id = $1)",
                &[&room_id],
            )?;
            tx.exec("DELETE FROM events WHERE room_id = $1", &[&room_id])?;
            tx.exec("DELETE FROM state_groups WHERE room_id = $1", &[&room_id])?;
            tx.exec("DELETE FROM rooms WHERE room_id = $1", &[&room_id])?;
            Ok(true)
        })
    }

    fn list_users(&self, q: &UserListQuery) -> Result<(Vec<ListedUser>, i64)> {
        let filter = "FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id
             WHERE ($1::TEXT IS NULL OR strpos(lower(u.user_id), lower($1)) > 0 OR strpos(lower(coalesce(p.displayname, '')), lower($1)) > 0)
               AND ($2::TEXT IS NULL OR strpos(lower(u.user_id), lower($2)) > 0)
               AND ($3 OR NOT u.is_guest) AND ($4::BOOLEAN IS NULL OR u.deactivated = $4) AND ($5::BOOLEAN IS NULL OR u.is_admin = $5)
               AND ($6 OR NOT u.locked)
               AND (NOT $7 OR (u.user_type IS NULL AND NOT $8) OR (u.user_type IS NOT NULL AND NOT (u.user_type = ANY($9))))";
        let order = if q.forwards { "ASC" } else { "DESC" };
        let column = crate::sqlite::user_order_column(q.order_by);
        let filtering = !q.not_user_types.is_empty();
        let no_regular = q.not_user_types.iter().any(String::is_empty);
        let types: Vec<String> = q.not_user_types.iter().filter(|t| !t.is_empty()).cloned().collect();
        self.read(|db| {
            let total: i64 = db
                .one(
                    &format!("SELECT count(*) {filter}"),
                    &[&q.name, &q.user_id, &q.guests, &q.deactivated, &q.admins, &q.locked, &filtering, &no_regular, &types],
                )?
                .get(0);
            let rows = db.rows(
                &format!(
                    "SELECT u.user_id, u.password_hash, u.is_admin, u.is_guest, u.deactivated, u.shadow_banned, u.creation_ts,
                        u.locked, u.suspended, p.displayname, p.avatar_url, (SELECT max(last_seen_ts) FROM devices d WHERE d.user_id = u.user_id),
                        u.user_type
                     {filter} ORDER BY {column} {order} NULLS LAST, u.user_id {order} LIMIT $10 OFFSET $11"
                ),
                &[
                    &q.name,
                    &q.user_id,
                    &q.guests,
                    &q.deactivated,
                    &q.admins,
                    &q.locked,
                    &filtering,
                    &no_regular,
                    &types,
                    &q.limit,
                    &q.from,
                ],
            )?;
            let users = rows
                .iter()
                .map(|r| ListedUser {
                    user: super::users::user_from_row(r),
                    displayname: r.get(9),
                    avatar_url: r.get(10),
                    last_seen_ts: r.get(11),
                    user_type: r.get(12),
                })
                .collect();
            Ok((users, total))
        })
    }

    fn list_rooms(&self) -> Result<Vec<(String, i64)>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT r.room_id, (SELECT count(*) FROM current_state c WHERE c.room_id = r.room_id
                   AND c.type = 'm.room.member' AND c.membership = 'join') FROM rooms r ORDER BY r.room_id",
                &[],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn largest_rooms(&self, limit: usize) -> Result<Vec<(String, i64)>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT room_id, sum(octet_length(json))::BIGINT AS size FROM events GROUP BY room_id
                 ORDER BY size DESC, room_id LIMIT $1",
                &[&(limit as i64)],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn add_event_report(&self, report: &EventReport) -> Result<i64> {
        let content = report.content.to_string();
        self.write(|tx| {
            Ok(tx
                .one(
                    "INSERT INTO event_reports (received_ts, room_id, event_id, user_id, reason, content)
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                    &[
                        &report.received_ts,
                        &report.room_id,
                        &report.event_id,
                        &report.user_id,
                        &report.reason,
                        &content,
                    ],
                )?
                .get(0))
        })
    }

    fn add_room_report(&self, room_id: &str, user_id: &str, reason: &str, received_ts: i64) -> Result<i64> {
        self.write(|tx| {
            Ok(tx
                .one(
                    "INSERT INTO room_reports (received_ts, room_id, user_id, reason) VALUES ($1, $2, $3, $4) RETURNING id",
                    &[&received_ts, &room_id, &user_id, &reason],
                )?
                .get(0))
        })
    }

    fn add_user_report(&self, target_user_id: &str, user_id: &str, reason: &str, received_ts: i64) -> Result<i64> {
        self.write(|tx| {
            Ok(tx
                .one(
                    "INSERT INTO user_reports (received_ts, target_user_id, user_id, reason) VALUES ($1, $2, $3, $4)
                     RETURNING id",
                    &[&received_ts, &target_user_id, &user_id, &reason],
                )?
                .get(0))
        })
    }

    fn event_reports(&self, query: &EventReportQuery) -> Result<(Vec<EventReport>, i64)> {
        let filter =
            "WHERE ($1::TEXT IS NULL OR strpos(user_id, $1) > 0) AND ($2::TEXT IS NULL OR strpos(room_id, $2) > 0)";
        let order = if query.forwards { "ASC" } else { "DESC" };
        self.read(|db| {
            let total: i64 = db
                .one(&format!("SELECT count(*) FROM event_reports {filter}"), &[&query.user_id, &query.room_id])?
                .get(0);
            let rows = db.rows(
                &format!(
                    "SELECT {EVENT_REPORT_COLUMNS} FROM event_reports {filter} ORDER BY received_ts {order}, id {order}
                     LIMIT $3 OFFSET $4"
                ),
                &[&query.user_id, &query.room_id, &query.limit, &query.from],
            )?;
            Ok((rows.iter().map(event_report).collect(), total))
        })
    }

    fn event_report(&self, id: i64) -> Result<Option<EventReport>> {
        self.read(|db| {
            Ok(db
                .opt(&format!("SELECT {EVENT_REPORT_COLUMNS} FROM event_reports WHERE id = $1"), &[&id])?
                .map(|r| event_report(&r)))
        })
    }

    fn delete_event_report(&self, id: i64) -> Result<bool> {
        self.write(|tx| Ok(tx.exec("DELETE FROM event_reports WHERE id = $1", &[&id])? > 0))
    }

    fn delete_user_report(&self, id: i64) -> Result<bool> {
        self.write(|tx| Ok(tx.exec("DELETE FROM user_reports WHERE id = $1", &[&id])? > 0))
    }

    fn room_reports(&self) -> Result<Vec<SubjectReport>> {
        self.read(|db| {
            let rows =
                db.rows("SELECT id, received_ts, room_id, user_id, reason FROM room_reports ORDER BY id", &[])?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect())
        })
    }

    fn user_reports(&self) -> Result<Vec<SubjectReport>> {
        self.read(|db| {
            let rows =
                db.rows("SELECT id, received_ts, target_user_id, user_id, reason FROM user_reports ORDER BY id", &[])?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect())
        })
    }
}
