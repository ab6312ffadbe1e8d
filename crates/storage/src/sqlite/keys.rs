//! End-to-end encryption: device, one-time, fallback and cross-signing keys, to-device messages, key backup (`KeyStore`).

use super::*;

/// Drops a device's keys and pending messages (one device, or all but `keep`), and records a
/// device-list change if it had identity keys.
pub(super) fn delete_device_crypto(
    tx: &Transaction<'_>,
    user_id: &str,
    device: Option<&str>,
    keep: Option<&str>,
) -> Result<()> {
    let (clause, arg) = match (device, keep) {
        (Some(d), _) => ("device_id = ?2", d),
        (None, k) => ("device_id != ?2", k.unwrap_or("")),
    };
    let had_keys = tx
        .exec(&format!("DELETE FROM device_keys WHERE user_id = ?1 AND {clause}"), params![user_id, arg])
        .map_err(backend)?;
    for table in ["one_time_keys", "fallback_keys", "to_device_messages"] {
        tx.exec(&format!("DELETE FROM {table} WHERE user_id = ?1 AND {clause}"), params![user_id, arg])
            .map_err(backend)?;
    }
    if had_keys > 0 {
        record_device_change(tx, user_id)?;
    }
    Ok(())
}

pub(super) fn record_device_change(tx: &Transaction<'_>, user_id: &str) -> Result<i64> {
    let pos = next_stream_position(tx)?;
    tx.exec("INSERT INTO device_list_changes (stream_ordering, user_id) VALUES (?1, ?2)", params![pos, user_id])
        .map_err(backend)?;
    Ok(pos)
}

/// Inserts or replaces a cached remote device.
fn upsert_remote_device(tx: &Transaction<'_>, user_id: &str, d: &RemoteDevice) -> Result<()> {
    tx.exec(
        "INSERT INTO remote_devices (user_id, device_id, keys_json, display_name) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (user_id, device_id) DO UPDATE SET keys_json = excluded.keys_json,
             display_name = excluded.display_name",
        params![user_id, d.device_id, d.keys, d.display_name],
    )
    .map(drop)
    .map_err(backend)
}

/// Inserts or replaces cached remote cross-signing keys `(key_type, json)`.
fn upsert_remote_cross_signing(tx: &Transaction<'_>, user_id: &str, keys: &[(String, String)]) -> Result<()> {
    for (kind, json) in keys {
        tx.exec(
            "INSERT INTO remote_cross_signing_keys (user_id, key_type, key_json) VALUES (?1, ?2, ?3)
             ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
            params![user_id, kind, json],
        )
        .map_err(backend)?;
    }
    Ok(())
}

/// Records a change of `user_id`'s keys that only `viewer` hears of; returns the position.
pub(super) fn record_private_device_change(tx: &Transaction<'_>, viewer: &str, user_id: &str) -> Result<i64> {
    let pos = next_stream_position(tx)?;
    tx.exec(
        "INSERT INTO private_device_list_changes (stream_ordering, viewer, user_id) VALUES (?1, ?2, ?3)",
        params![pos, viewer, user_id],
    )
    .map_err(backend)?;
    Ok(pos)
}

/// A backup version's keys changed: clients compare etags to know.
pub(super) fn bump_backup_etag(tx: &Transaction<'_>, user_id: &str, version: i64) -> Result<()> {
    tx.exec(
        "UPDATE room_key_versions SET etag = etag + 1 WHERE user_id = ?1 AND version = ?2",
        params![user_id, version],
    )
    .map(drop)
    .map_err(backend)
}

pub(super) fn strings(rows: rusqlite::Result<Vec<String>>) -> Result<Vec<String>> {
    rows.map_err(backend)
}

impl KeyStore for SqliteStore {
    fn upload_keys(
        &self,
        user_id: &str,
        device_id: &str,
        device_keys: Option<&str>,
        one_time_keys: &[(String, String, String)],
        fallback_keys: &[(String, String, String)],
    ) -> Result<Option<i64>> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let mut changed = None;
        if let Some(json) = device_keys {
            let old: Option<String> = tx
                .row(
                    "SELECT key_json FROM device_keys WHERE user_id = ?1 AND device_id = ?2",
                    params![user_id, device_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            if old.as_deref() != Some(json) {
                tx.exec(
                    "INSERT INTO device_keys (user_id, device_id, key_json) VALUES (?1, ?2, ?3)
                     ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
                    params![user_id, device_id, json],
                )
                .map_err(backend)?;
                changed = Some(record_device_change(&tx, user_id)?);
            }
        }
        for (algorithm, key_id, json) in one_time_keys {
            tx.exec(
                "INSERT OR IGNORE INTO one_time_keys (user_id, device_id, algorithm, key_id, key_json)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![user_id, device_id, algorithm, key_id, json],
            )
            .map_err(backend)?;
        }
        for (algorithm, key_id, json) in fallback_keys {
            tx.exec(
                "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0)
                 ON CONFLICT (user_id, device_id, algorithm) DO UPDATE
                 SET key_id = excluded.key_id, key_json = excluded.key_json, used = 0",
                params![user_id, device_id, algorithm, key_id, json],
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok(changed)
    }

    fn one_time_key_counts(&self, user_id: &str, device_id: &str) -> Result<Vec<(String, i64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT algorithm, count(*) FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2 GROUP BY algorithm",
            )
            .map_err(backend)?;
        stmt.query_map(params![user_id, device_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(backend)
    }

    fn unused_fallback_key_types(&self, user_id: &str, device_id: &str) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT algorithm FROM fallback_keys WHERE user_id = ?1 AND device_id = ?2 AND used = 0 ORDER BY algorithm",
            )
            .map_err(backend)?;
        strings(stmt.query_map(params![user_id, device_id], |r| r.get(0)).and_then(|rows| rows.collect()))
    }

    fn device_keys(&self, user_id: &str) -> Result<Vec<(String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT device_id, key_json FROM device_keys WHERE user_id = ?1 ORDER BY device_id")
            .map_err(backend)?;
        stmt.query_map([user_id], |r| Ok((r.get(0)?, r.get(1)?))).and_then(|rows| rows.collect()).map_err(backend)
    }

    fn set_device_keys(&self, user_id: &str, device_id: &str, json: &str) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.exec(
            "UPDATE device_keys SET key_json = ?3 WHERE user_id = ?1 AND device_id = ?2",
            params![user_id, device_id, json],
        )
        .map_err(backend)?;
        let pos = record_device_change(&tx, user_id)?;
        tx.commit().map_err(backend)?;
        Ok(pos)
    }

    fn claim_key(&self, user_id: &str, device_id: &str, algorithm: &str) -> Result<Option<(String, String)>> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let otk: Option<(String, String)> = tx
            .row(
                "DELETE FROM one_time_keys WHERE rowid = (SELECT rowid FROM one_time_keys
                 WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 ORDER BY key_id LIMIT 1)
                 RETURNING key_id, key_json",
                params![user_id, device_id, algorithm],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)?;
        let found = match otk {
            Some(k) => Some(k),
            None => tx
                .row(
                    "UPDATE fallback_keys SET used = 1 WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3
                     RETURNING key_id, key_json",
                    params![user_id, device_id, algorithm],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(backend)?,
        };
        tx.commit().map_err(backend)?;
        Ok(found)
    }

    fn cross_signing_keys(&self, user_id: &str) -> Result<Vec<(String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT key_type, key_json FROM cross_signing_keys WHERE user_id = ?1 ORDER BY key_type")
            .map_err(backend)?;
        stmt.query_map([user_id], |r| Ok((r.get(0)?, r.get(1)?))).and_then(|rows| rows.collect()).map_err(backend)
    }

    fn set_cross_signing_keys(&self, user_id: &str, keys: &[(String, String)]) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        for (kind, json) in keys {
            tx.exec(
                "INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
                params![user_id, kind, json],
            )
            .map_err(backend)?;
        }
        let pos = if keys.iter().all(|(kind, _)| kind == "user_signing") {
            record_private_device_change(&tx, user_id, user_id)?
        } else {
            record_device_change(&tx, user_id)?
        };
        tx.commit().map_err(backend)?;
        Ok(pos)
    }

    fn add_user_signature(&self, signer: &str, target_user_id: &str, target_key_id: &str, json: &str) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.exec(
            "INSERT INTO cross_signing_signatures (signer, target_user_id, target_key_id, signatures_json)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (signer, target_user_id, target_key_id) DO UPDATE SET signatures_json = excluded.signatures_json",
            params![signer, target_user_id, target_key_id, json],
        )
        .map_err(backend)?;
        let pos = record_private_device_change(&tx, signer, target_user_id)?;
        tx.commit().map_err(backend)?;
        Ok(pos)
    }

    fn user_signatures(&self, signer: &str, target_user_ids: &[String]) -> Result<Vec<(String, String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT target_user_id, target_key_id, signatures_json FROM cross_signing_signatures
                 WHERE signer = ?1 AND target_user_id = ?2 ORDER BY target_key_id",
            )
            .map_err(backend)?;
        let mut out = Vec::new();
        for target in target_user_ids {
            let rows = stmt
                .query_map(params![signer, target], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(backend)?;
            out.extend(rows);
        }
        Ok(out)
    }

    fn private_device_list_changes(&self, viewer: &str, from: i64, to: i64) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT DISTINCT user_id FROM private_device_list_changes
                 WHERE viewer = ?1 AND stream_ordering > ?2 AND stream_ordering <= ?3 ORDER BY user_id",
            )
            .map_err(backend)?;
        strings(stmt.query_map(params![viewer, from, to], |r| r.get(0)).and_then(|rows| rows.collect()))
    }

    fn device_list_changes(&self, from: i64, to: i64) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT DISTINCT user_id FROM device_list_changes WHERE stream_ordering > ?1 AND stream_ordering <= ?2",
            )
            .map_err(backend)?;
        strings(stmt.query_map(params![from, to], |r| r.get(0)).and_then(|rows| rows.collect()))
    }

    fn device_list_change_before(&self, user_id: &str, before: i64) -> Result<Option<i64>> {
        let conn = self.reader();
        conn.row(
            "SELECT max(stream_ordering) FROM device_list_changes WHERE user_id = ?1 AND stream_ordering < ?2",
            params![user_id, before],
            |r| r.get(0),
        )
        .map_err(backend)
    }

    fn users_sharing_rooms(&self, user_id: &str) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT DISTINCT b.state_key FROM current_state a JOIN current_state b ON a.room_id = b.room_id
                 WHERE a.type = 'm.room.member' AND a.state_key = ?1 AND a.membership = 'join'
                   AND b.type = 'm.room.member' AND b.membership IN ('join', 'invite')",
            )
            .map_err(backend)?;
        let mut users = strings(stmt.query_map([user_id], |r| r.get(0)).and_then(|rows| rows.collect()))?;
        if !users.iter().any(|u| u == user_id) {
            users.push(user_id.to_owned());
        }
        Ok(users)
    }

    fn remote_device_list(&self, user_id: &str) -> Result<Option<RemoteDeviceList>> {
        let conn = self.reader();
        let Some(stream_id) = conn
            .row("SELECT stream_id FROM remote_device_lists WHERE user_id = ?1", [user_id], |r| r.get::<_, i64>(0))
            .optional()
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let mut stmt = conn
            .prepare_cached(
                "SELECT device_id, keys_json, display_name FROM remote_devices WHERE user_id = ?1 ORDER BY device_id",
            )
            .map_err(backend)?;
        let devices = stmt
            .query_map([user_id], |r| {
                Ok(RemoteDevice { device_id: r.get(0)?, keys: r.get(1)?, display_name: r.get(2)? })
            })
            .and_then(|rows| rows.collect())
            .map_err(backend)?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT key_type, key_json FROM remote_cross_signing_keys WHERE user_id = ?1 ORDER BY key_type",
            )
            .map_err(backend)?;
        let cross_signing = stmt
            .query_map([user_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(backend)?;
        Ok(Some(RemoteDeviceList { stream_id, devices, cross_signing }))
    }

    fn replace_remote_device_list(&self, user_id: &str, list: &RemoteDeviceList) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        for table in ["remote_devices", "remote_cross_signing_keys"] {
            tx.exec(&format!("DELETE FROM {table} WHERE user_id = ?1"), [user_id]).map_err(backend)?;
        }
        tx.exec(
            "INSERT INTO remote_device_lists (user_id, stream_id) VALUES (?1, ?2)
             ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id",
            params![user_id, list.stream_id],
        )
        .map_err(backend)?;
        for d in &list.devices {
            upsert_remote_device(&tx, user_id, d)?;
        }
        upsert_remote_cross_signing(&tx, user_id, &list.cross_signing)?;
        let pos = record_device_change(&tx, user_id)?;
        tx.commit().map_err(backend)?;
        Ok(pos)
    }

    fn update_remote_device(
        &self,
        user_id: &str,
        device: &RemoteDevice,
        deleted: bool,
        stream_id: i64,
    ) -> Result<Option<i64>> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let cached = tx
            .exec("UPDATE remote_device_lists SET stream_id = ?2 WHERE user_id = ?1", params![user_id, stream_id])
            .map_err(backend)?;
        if cached == 0 {
            return Ok(None);
        }
        if deleted {
            tx.exec(
                "DELETE FROM remote_devices WHERE user_id = ?1 AND device_id = ?2",
                params![user_id, device.device_id],
            )
            .map_err(backend)?;
        } else {
            upsert_remote_device(&tx, user_id, device)?;
        }
        let pos = record_device_change(&tx, user_id)?;
        tx.commit().map_err(backend)?;
        Ok(Some(pos))
    }

    fn update_remote_cross_signing(&self, user_id: &str, keys: &[(String, String)]) -> Result<Option<i64>> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let cached = tx
            .row("SELECT count(*) FROM remote_device_lists WHERE user_id = ?1", [user_id], |r| r.get::<_, i64>(0))
            .map_err(backend)?;
        if cached == 0 {
            return Ok(None);
        }
        upsert_remote_cross_signing(&tx, user_id, keys)?;
        let pos = record_device_change(&tx, user_id)?;
        tx.commit().map_err(backend)?;
        Ok(Some(pos))
    }

    fn forget_unshared_remote_device_lists(&self, room_id: &str) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let users = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT l.user_id FROM remote_device_lists l
                     JOIN current_state m ON m.room_id = ?1 AND m.type = 'm.room.member' AND m.state_key = l.user_id
                     WHERE NOT EXISTS (
                         SELECT 1 FROM current_state a JOIN current_state b ON a.room_id = b.room_id
                         WHERE a.type = 'm.room.member' AND a.state_key = l.user_id AND a.membership = 'join'
                           AND b.type = 'm.room.member' AND b.membership = 'join'
                           AND b.state_key IN (SELECT user_id FROM users))",
                )
                .map_err(backend)?;
            strings(stmt.query_map([room_id], |r| r.get(0)).and_then(|rows| rows.collect()))?
        };
        for user in &users {
            for table in ["remote_device_lists", "remote_devices", "remote_cross_signing_keys"] {
                tx.exec(&format!("DELETE FROM {table} WHERE user_id = ?1"), [user]).map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)?;
        Ok(users)
    }

    fn queue_to_device(
        &self,
        sender: &str,
        sender_device: &str,
        txn_id: &str,
        messages: &[(String, String, String)],
    ) -> Result<Option<i64>> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let fresh = tx
            .exec(
                "INSERT OR IGNORE INTO to_device_txns (user_id, device_id, txn_id) VALUES (?1, ?2, ?3)",
                params![sender, sender_device, txn_id],
            )
            .map_err(backend)?;
        if fresh == 0 {
            return Ok(None);
        }
        let pos = next_stream_position(&tx)?;
        for (user, device, json) in messages {
            tx.exec(
                "INSERT INTO to_device_messages (stream_ordering, user_id, device_id, message_json) VALUES (?1, ?2, ?3, ?4)",
                params![pos, user, device, json],
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok(Some(pos))
    }

    fn to_device_messages(&self, user_id: &str, device_id: &str, to: i64) -> Result<Vec<(i64, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT stream_ordering, message_json FROM to_device_messages
                 WHERE user_id = ?1 AND device_id = ?2 AND stream_ordering <= ?3 ORDER BY stream_ordering, rowid",
            )
            .map_err(backend)?;
        stmt.query_map(params![user_id, device_id, to], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(backend)
    }

    fn to_device_between(&self, from: i64, to: i64) -> Result<Vec<(i64, String, String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT stream_ordering, user_id, device_id, message_json FROM to_device_messages
                 WHERE stream_ordering > ?1 AND stream_ordering <= ?2 ORDER BY stream_ordering, rowid",
            )
            .map_err(backend)?;
        stmt.query_map(params![from, to], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .and_then(|rows| rows.collect())
            .map_err(backend)
    }

    fn delete_to_device(&self, user_id: &str, device_id: &str, upto: i64) -> Result<()> {
        self.conn()
            .exec(
                "DELETE FROM to_device_messages WHERE user_id = ?1 AND device_id = ?2 AND stream_ordering <= ?3",
                params![user_id, device_id, upto],
            )
            .map(drop)
            .map_err(backend)
    }

    fn create_backup_version(&self, user_id: &str, algorithm: &str, auth_data: &str) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let next: i64 = tx
            .row("SELECT coalesce(max(version), 0) + 1 FROM room_key_versions WHERE user_id = ?1", [user_id], |r| {
                r.get(0)
            })
            .map_err(backend)?;
        tx.exec(
            "INSERT INTO room_key_versions (user_id, version, algorithm, auth_data) VALUES (?1, ?2, ?3, ?4)",
            params![user_id, next, algorithm, auth_data],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(next)
    }

    fn backup_version(&self, user_id: &str, version: Option<i64>) -> Result<Option<BackupVersion>> {
        let map = |r: &rusqlite::Row<'_>| {
            Ok(BackupVersion { version: r.get(0)?, algorithm: r.get(1)?, auth_data: r.get(2)?, etag: r.get(3)? })
        };
        let conn = self.reader();
        match version {
            Some(v) => conn.row(
                "SELECT version, algorithm, auth_data, etag FROM room_key_versions
                 WHERE user_id = ?1 AND version = ?2 AND deleted = 0",
                params![user_id, v],
                map,
            ),
            None => conn.row(
                "SELECT version, algorithm, auth_data, etag FROM room_key_versions
                 WHERE user_id = ?1 AND deleted = 0 ORDER BY version DESC LIMIT 1",
                [user_id],
                map,
            ),
        }
        .optional()
        .map_err(backend)
    }

    fn update_backup_version(&self, user_id: &str, version: i64, algorithm: &str, auth_data: &str) -> Result<bool> {
        let n = self
            .conn()
            .exec(
                "UPDATE room_key_versions SET algorithm = ?3, auth_data = ?4
                 WHERE user_id = ?1 AND version = ?2 AND deleted = 0",
                params![user_id, version, algorithm, auth_data],
            )
            .map_err(backend)?;
        Ok(n > 0)
    }

    fn delete_backup_version(&self, user_id: &str, version: i64) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let n = tx
            .exec(
                "UPDATE room_key_versions SET deleted = 1 WHERE user_id = ?1 AND version = ?2 AND deleted = 0",
                params![user_id, version],
            )
            .map_err(backend)?;
        tx.exec("DELETE FROM room_keys WHERE user_id = ?1 AND version = ?2", params![user_id, version])
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(n > 0)
    }

    fn backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Vec<(String, String, String)>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT room_id, session_id, key_json FROM room_keys WHERE user_id = ?1 AND version = ?2
                 AND (?3 IS NULL OR room_id = ?3) AND (?4 IS NULL OR session_id = ?4) ORDER BY room_id, session_id",
            )
            .map_err(backend)?;
        stmt.query_map(params![user_id, version, room_id, session_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(backend)
    }

    fn put_backup_keys(&self, user_id: &str, version: i64, keys: &[(String, String, String)]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        for (room, session, json) in keys {
            tx.exec(
                "INSERT INTO room_keys (user_id, version, room_id, session_id, key_json) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET key_json = excluded.key_json",
                params![user_id, version, room, session, json],
            )
            .map_err(backend)?;
        }
        bump_backup_etag(&tx, user_id, version)?;
        tx.commit().map_err(backend)
    }

    fn delete_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.exec(
            "DELETE FROM room_keys WHERE user_id = ?1 AND version = ?2
             AND (?3 IS NULL OR room_id = ?3) AND (?4 IS NULL OR session_id = ?4)",
            params![user_id, version, room_id, session_id],
        )
        .map_err(backend)?;
        bump_backup_etag(&tx, user_id, version)?;
        tx.commit().map_err(backend)
    }

    fn count_backup_keys(&self, user_id: &str, version: i64) -> Result<i64> {
        self.reader()
            .row("SELECT count(*) FROM room_keys WHERE user_id = ?1 AND version = ?2", params![user_id, version], |r| {
                r.get(0)
            })
            .map_err(backend)
    }
}
