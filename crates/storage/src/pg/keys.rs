//! End-to-end encryption: device, one-time, fallback and cross-signing keys, device-list changes,
//! to-device messages, key backup (`KeyStore`).
//!
//! Lists a client uploads at once (one-time keys, to-device messages, backup keys) are written
//! by one statement over arrays rather than a statement per item: each would be a round trip
//! to the server while the store-wide write lock is held.

use std::collections::HashMap;

use postgres::GenericClient;

use super::*;

/// Drops a device's keys and pending messages (one device, or all but `keep`), and records a
/// device-list change if it had identity keys.
pub(super) fn delete_device_crypto<C: GenericClient>(
    tx: &mut Db<'_, C>,
    user_id: &str,
    device: Option<&str>,
    keep: Option<&str>,
) -> Result<()> {
    let (clause, arg) = match (device, keep) {
        (Some(d), _) => ("device_id = $2", d),
        (None, k) => ("device_id != $2", k.unwrap_or("")),
    };
    let had_keys = tx.exec(&format!("DELETE FROM device_keys WHERE user_id = $1 AND {clause}"), &[&user_id, &arg])?;
    for table in ["one_time_keys", "fallback_keys", "to_device_messages"] {
        tx.exec(&format!("DELETE FROM {table} WHERE user_id = $1 AND {clause}"), &[&user_id, &arg])?;
    }
    if had_keys > 0 {
        record_device_change(tx, user_id)?;
    }
    Ok(())
}

/// Records that a user's device list changed; returns the stream position.
pub(super) fn record_device_change<C: GenericClient>(tx: &mut Db<'_, C>, user_id: &str) -> Result<i64> {
    let pos = next_stream_position(tx)?;
    tx.exec("INSERT INTO device_list_changes (stream_ordering, user_id) VALUES ($1, $2)", &[&pos, &user_id])?;
    Ok(pos)
}

/// Inserts or replaces a cached remote device.
fn upsert_remote_device<C: GenericClient>(tx: &mut Db<'_, C>, user_id: &str, d: &RemoteDevice) -> Result<()> {
    tx.exec(
        "INSERT INTO remote_devices (user_id, device_id, keys_json, display_name) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, device_id) DO UPDATE SET keys_json = EXCLUDED.keys_json,
             display_name = EXCLUDED.display_name",
        &[&user_id, &d.device_id, &d.keys, &d.display_name],
    )?;
    Ok(())
}

/// Inserts or replaces cached remote cross-signing keys `(key_type, json)`.
fn upsert_remote_cross_signing<C: GenericClient>(
    tx: &mut Db<'_, C>,
    user_id: &str,
    keys: &[(String, String)],
) -> Result<()> {
    for (kind, json) in keys {
        tx.exec(
            "INSERT INTO remote_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = EXCLUDED.key_json",
            &[&user_id, kind, json],
        )?;
    }
    Ok(())
}

/// Records a change of `user_id`'s keys that only `viewer` hears of; returns the position.
pub(super) fn record_private_device_change<C: GenericClient>(
    tx: &mut Db<'_, C>,
    viewer: &str,
    user_id: &str,
) -> Result<i64> {
    let pos = next_stream_position(tx)?;
    tx.exec(
        "INSERT INTO private_device_list_changes (stream_ordering, viewer, user_id) VALUES ($1, $2, $3)",
        &[&pos, &viewer, &user_id],
    )?;
    Ok(pos)
}

/// A backup version's keys changed: clients compare etags to know.
pub(super) fn bump_backup_etag<C: GenericClient>(tx: &mut Db<'_, C>, user_id: &str, version: i64) -> Result<()> {
    tx.exec("UPDATE room_key_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2", &[&user_id, &version])?;
    Ok(())
}

/// The first column of each row, as text.
pub(super) fn strings(rows: Vec<Row>) -> Vec<String> {
    rows.iter().map(|r| r.get(0)).collect()
}

/// Triples as three parallel columns, to pass as arrays for `unnest`.
fn columns(items: &[(String, String, String)]) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
    (
        items.iter().map(|(a, _, _)| a.as_str()).collect(),
        items.iter().map(|(_, b, _)| b.as_str()).collect(),
        items.iter().map(|(_, _, c)| c.as_str()).collect(),
    )
}

fn backup_version_from_row(r: &Row) -> BackupVersion {
    BackupVersion { version: r.get(0), algorithm: r.get(1), auth_data: r.get(2), etag: r.get(3) }
}

impl KeyStore for PostgresStore {
    fn upload_keys(
        &self,
        user_id: &str,
        device_id: &str,
        device_keys: Option<&str>,
        one_time_keys: &[(String, String, String)],
        fallback_keys: &[(String, String, String)],
    ) -> Result<Option<i64>> {
        self.write(|tx| {
            let mut changed = None;
            if let Some(json) = device_keys {
                let old: Option<String> = tx
                    .opt(
                        "SELECT key_json FROM device_keys WHERE user_id = $1 AND device_id = $2",
                        &[&user_id, &device_id],
                    )?
                    .map(|r| r.get(0));
                // Re-uploading the same keys is not a change other users need to hear about.
                if old.as_deref() != Some(json) {
                    tx.exec(
                        "INSERT INTO device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3)
                         ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = EXCLUDED.key_json",
                        &[&user_id, &device_id, &json],
                    )?;
                    changed = Some(record_device_change(tx, user_id)?);
                }
            }
            if !one_time_keys.is_empty() {
                // Inserted in upload order, so a key ID named twice keeps its first value.
                let (algorithms, key_ids, jsons) = columns(one_time_keys);
                tx.exec(
                    "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key_json)
                     SELECT $1, $2, k.algorithm, k.key_id, k.key_json
                     FROM unnest($3::TEXT[], $4::TEXT[], $5::TEXT[]) WITH ORDINALITY AS k (algorithm, key_id, key_json, n)
                     ORDER BY k.n
                     ON CONFLICT DO NOTHING",
                    &[&user_id, &device_id, &algorithms, &key_ids, &jsons],
                )?;
            }
            // One per algorithm, so few: row by row, the last of an algorithm wins.
            for (algorithm, key_id, json) in fallback_keys {
                tx.exec(
                    "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)
                     VALUES ($1, $2, $3, $4, $5, FALSE)
                     ON CONFLICT (user_id, device_id, algorithm) DO UPDATE
                     SET key_id = EXCLUDED.key_id, key_json = EXCLUDED.key_json, used = FALSE",
                    &[&user_id, &device_id, algorithm, key_id, json],
                )?;
            }
            Ok(changed)
        })
    }

    fn one_time_key_counts(&self, user_id: &str, device_id: &str) -> Result<Vec<(String, i64)>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT algorithm, count(*) FROM one_time_keys WHERE user_id = $1 AND device_id = $2
                 GROUP BY algorithm ORDER BY algorithm",
                &[&user_id, &device_id],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn unused_fallback_key_types(&self, user_id: &str, device_id: &str) -> Result<Vec<String>> {
        self.read(|db| {
            Ok(strings(db.rows(
                "SELECT algorithm FROM fallback_keys WHERE user_id = $1 AND device_id = $2 AND NOT used
                 ORDER BY algorithm",
                &[&user_id, &device_id],
            )?))
        })
    }

    fn device_keys(&self, user_id: &str) -> Result<Vec<(String, String)>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT device_id, key_json FROM device_keys WHERE user_id = $1 ORDER BY device_id",
                &[&user_id],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn set_device_keys(&self, user_id: &str, device_id: &str, json: &str) -> Result<i64> {
        self.write(|tx| {
            tx.exec(
                "UPDATE device_keys SET key_json = $3 WHERE user_id = $1 AND device_id = $2",
                &[&user_id, &device_id, &json],
            )?;
            record_device_change(tx, user_id)
        })
    }

    fn claim_key(&self, user_id: &str, device_id: &str, algorithm: &str) -> Result<Option<(String, String)>> {
        // The write lock makes the pick and the delete one step: two claims never get one key.
        self.write(|tx| {
            let one_time = tx.opt(
                "DELETE FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
                   AND key_id = (SELECT key_id FROM one_time_keys
                                 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 ORDER BY key_id LIMIT 1)
                 RETURNING key_id, key_json",
                &[&user_id, &device_id, &algorithm],
            )?;
            // None left: the fallback key, which stays (marked used) until replaced.
            let found = match one_time {
                Some(row) => Some(row),
                None => tx.opt(
                    "UPDATE fallback_keys SET used = TRUE WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
                     RETURNING key_id, key_json",
                    &[&user_id, &device_id, &algorithm],
                )?,
            };
            Ok(found.map(|r| (r.get(0), r.get(1))))
        })
    }

    fn cross_signing_keys(&self, user_id: &str) -> Result<Vec<(String, String)>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT key_type, key_json FROM cross_signing_keys WHERE user_id = $1 ORDER BY key_type",
                &[&user_id],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn set_cross_signing_keys(&self, user_id: &str, keys: &[(String, String)]) -> Result<i64> {
        self.write(|tx| {
            for (kind, json) in keys {
                tx.exec(
                    "INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = EXCLUDED.key_json",
                    &[&user_id, kind, json],
                )?;
            }
            if keys.iter().all(|(kind, _)| kind == "user_signing") {
                record_private_device_change(tx, user_id, user_id)
            } else {
                record_device_change(tx, user_id)
            }
        })
    }

    fn add_user_signature(&self, signer: &str, target_user_id: &str, target_key_id: &str, json: &str) -> Result<i64> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO cross_signing_signatures (signer, target_user_id, target_key_id, signatures_json)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (signer, target_user_id, target_key_id) DO UPDATE SET signatures_json = EXCLUDED.signatures_json",
                &[&signer, &target_user_id, &target_key_id, &json],
            )?;
            record_private_device_change(tx, signer, target_user_id)
        })
    }

    fn user_signatures(&self, signer: &str, target_user_ids: &[String]) -> Result<Vec<(String, String, String)>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT target_user_id, target_key_id, signatures_json FROM cross_signing_signatures
                 WHERE signer = $1 AND target_user_id = ANY($2) ORDER BY target_user_id, target_key_id",
                &[&signer, &target_user_ids],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
        })
    }

    fn private_device_list_changes(&self, viewer: &str, from: i64, to: i64) -> Result<Vec<String>> {
        self.read(|db| {
            Ok(strings(db.rows(
                "SELECT DISTINCT user_id FROM private_device_list_changes
                 WHERE viewer = $1 AND stream_ordering > $2 AND stream_ordering <= $3 ORDER BY user_id",
                &[&viewer, &from, &to],
            )?))
        })
    }

    fn device_list_changes(&self, from: i64, to: i64) -> Result<Vec<String>> {
        // In order of each user's first change in the range, as SQLite lists them.
        self.read(|db| {
            Ok(strings(db.rows(
                "SELECT user_id FROM device_list_changes WHERE stream_ordering > $1 AND stream_ordering <= $2
                 GROUP BY user_id ORDER BY min(stream_ordering)",
                &[&from, &to],
            )?))
        })
    }

    fn device_list_change_before(&self, user_id: &str, before: i64) -> Result<Option<i64>> {
        self.read(|db| {
            let row = db.one(
                "SELECT max(stream_ordering) FROM device_list_changes WHERE user_id = $1 AND stream_ordering < $2",
                &[&user_id, &before],
            )?;
            Ok(row.get::<_, Option<i64>>(0))
        })
    }

    fn users_sharing_rooms(&self, user_id: &str) -> Result<Vec<String>> {
        // SQLite's order, which its indexes give: rooms by ID, and in each, invited members
        // before joined ones, by user ID; a user is listed where first met.
        let mut users = self.read(|db| {
            Ok(strings(db.rows(
                "SELECT b.state_key FROM current_state a JOIN current_state b ON a.room_id = b.room_id
                 WHERE a.type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join'
                   AND b.type = 'm.room.member' AND b.membership IN ('join', 'invite')
                 GROUP BY b.state_key ORDER BY min(ARRAY[a.room_id, b.membership]), b.state_key",
                &[&user_id],
            )?))
        })?;
        if !users.iter().any(|u| u == user_id) {
            users.push(user_id.to_owned());
        }
        Ok(users)
    }

    fn remote_device_list(&self, user_id: &str) -> Result<Option<RemoteDeviceList>> {
        self.read(|db| {
            let Some(row) = db.opt("SELECT stream_id FROM remote_device_lists WHERE user_id = $1", &[&user_id])? else {
                return Ok(None);
            };
            let devices = db
                .rows(
                    "SELECT device_id, keys_json, display_name FROM remote_devices WHERE user_id = $1 ORDER BY device_id",
                    &[&user_id],
                )?
                .iter()
                .map(|r| RemoteDevice { device_id: r.get(0), keys: r.get(1), display_name: r.get(2) })
                .collect();
            let cross_signing = db
                .rows(
                    "SELECT key_type, key_json FROM remote_cross_signing_keys WHERE user_id = $1 ORDER BY key_type",
                    &[&user_id],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            Ok(Some(RemoteDeviceList { stream_id: row.get(0), devices, cross_signing }))
        })
    }

    fn replace_remote_device_list(&self, user_id: &str, list: &RemoteDeviceList) -> Result<i64> {
        self.write(|tx| {
            for table in ["remote_devices", "remote_cross_signing_keys"] {
                tx.exec(&format!("DELETE FROM {table} WHERE user_id = $1"), &[&user_id])?;
            }
            tx.exec(
                "INSERT INTO remote_device_lists (user_id, stream_id) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO UPDATE SET stream_id = EXCLUDED.stream_id",
                &[&user_id, &list.stream_id],
            )?;
            for d in &list.devices {
                upsert_remote_device(tx, user_id, d)?;
            }
            upsert_remote_cross_signing(tx, user_id, &list.cross_signing)?;
            record_device_change(tx, user_id)
        })
    }

    fn update_remote_device(
        &self,
        user_id: &str,
        device: &RemoteDevice,
        deleted: bool,
        stream_id: i64,
    ) -> Result<Option<i64>> {
        self.write(|tx| {
            let cached =
                tx.exec("UPDATE remote_device_lists SET stream_id = $2 WHERE user_id = $1", &[&user_id, &stream_id])?;
            if cached == 0 {
                return Ok(None);
            }
            if deleted {
                tx.exec(
                    "DELETE FROM remote_devices WHERE user_id = $1 AND device_id = $2",
                    &[&user_id, &device.device_id],
                )?;
            } else {
                upsert_remote_device(tx, user_id, device)?;
            }
            record_device_change(tx, user_id).map(Some)
        })
    }

    fn update_remote_cross_signing(&self, user_id: &str, keys: &[(String, String)]) -> Result<Option<i64>> {
        self.write(|tx| {
            if tx.opt("SELECT 1 FROM remote_device_lists WHERE user_id = $1 FOR UPDATE", &[&user_id])?.is_none() {
                return Ok(None);
            }
            upsert_remote_cross_signing(tx, user_id, keys)?;
            record_device_change(tx, user_id).map(Some)
        })
    }

    fn forget_unshared_remote_device_lists(&self, room_id: &str) -> Result<Vec<String>> {
        self.write(|tx| {
            let users = strings(tx.rows(
                "SELECT l.user_id FROM remote_device_lists l
                 JOIN current_state m ON m.room_id = $1 AND m.type = 'm.room.member' AND m.state_key = l.user_id
                 WHERE NOT EXISTS (
                     SELECT 1 FROM current_state a JOIN current_state b ON a.room_id = b.room_id
                     WHERE a.type = 'm.room.member' AND a.state_key = l.user_id AND a.membership = 'join'
                       AND b.type = 'm.room.member' AND b.membership = 'join'
                       AND b.state_key IN (SELECT user_id FROM users))
                 ORDER BY l.user_id",
                &[&room_id],
            )?);
            for table in ["remote_device_lists", "remote_devices", "remote_cross_signing_keys"] {
                tx.exec(&format!("DELETE FROM {table} WHERE user_id = ANY($1)"), &[&users])?;
            }
            Ok(users)
        })
    }

    fn queue_to_device(
        &self,
        sender: &str,
        sender_device: &str,
        txn_id: &str,
        messages: &[(String, String, String)],
    ) -> Result<Option<i64>> {
        self.write(|tx| {
            let fresh = tx.exec(
                "INSERT INTO to_device_txns (user_id, device_id, txn_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&sender, &sender_device, &txn_id],
            )?;
            if fresh == 0 {
                return Ok(None);
            }
            let pos = next_stream_position(tx)?;
            if !messages.is_empty() {
                // In the order given: messages to one device at one position are read back in
                // insertion order.
                let (users, devices, jsons) = columns(messages);
                tx.exec(
                    "INSERT INTO to_device_messages (stream_ordering, user_id, device_id, message_json)
                     SELECT $1, m.user_id, m.device_id, m.message_json
                     FROM unnest($2::TEXT[], $3::TEXT[], $4::TEXT[]) WITH ORDINALITY AS m (user_id, device_id, message_json, n)
                     ORDER BY m.n",
                    &[&pos, &users, &devices, &jsons],
                )?;
            }
            Ok(Some(pos))
        })
    }

    fn to_device_messages(&self, user_id: &str, device_id: &str, to: i64) -> Result<Vec<(i64, String)>> {
        self.read(|db| {
            // A position's messages in the order they were queued (`id`), as SQLite's rowid.
            let rows = db.rows(
                "SELECT stream_ordering, message_json FROM to_device_messages
                 WHERE user_id = $1 AND device_id = $2 AND stream_ordering <= $3 ORDER BY stream_ordering, id",
                &[&user_id, &device_id, &to],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn to_device_between(&self, from: i64, to: i64) -> Result<Vec<(i64, String, String, String)>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT stream_ordering, user_id, device_id, message_json FROM to_device_messages
                 WHERE stream_ordering > $1 AND stream_ordering <= $2 ORDER BY stream_ordering, id",
                &[&from, &to],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
        })
    }

    fn delete_to_device(&self, user_id: &str, device_id: &str, upto: i64) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = $2 AND stream_ordering <= $3",
                &[&user_id, &device_id, &upto],
            )?;
            Ok(())
        })
    }

    fn create_backup_version(&self, user_id: &str, algorithm: &str, auth_data: &str) -> Result<i64> {
        // Deleted versions keep their rows, so a number is never reused.
        self.write(|tx| {
            Ok(tx
                .one(
                    "INSERT INTO room_key_versions (user_id, version, algorithm, auth_data)
                     SELECT $1, coalesce(max(version), 0) + 1, $2, $3 FROM room_key_versions WHERE user_id = $1
                     RETURNING version",
                    &[&user_id, &algorithm, &auth_data],
                )?
                .get(0))
        })
    }

    fn backup_version(&self, user_id: &str, version: Option<i64>) -> Result<Option<BackupVersion>> {
        self.read(|db| {
            let row = match version {
                Some(v) => db.opt(
                    "SELECT version, algorithm, auth_data, etag FROM room_key_versions
                     WHERE user_id = $1 AND version = $2 AND NOT deleted",
                    &[&user_id, &v],
                )?,
                None => db.opt(
                    "SELECT version, algorithm, auth_data, etag FROM room_key_versions
                     WHERE user_id = $1 AND NOT deleted ORDER BY version DESC LIMIT 1",
                    &[&user_id],
                )?,
            };
            Ok(row.as_ref().map(backup_version_from_row))
        })
    }

    fn update_backup_version(&self, user_id: &str, version: i64, algorithm: &str, auth_data: &str) -> Result<bool> {
        self.write(|tx| {
            let n = tx.exec(
                "UPDATE room_key_versions SET algorithm = $3, auth_data = $4
                 WHERE user_id = $1 AND version = $2 AND NOT deleted",
                &[&user_id, &version, &algorithm, &auth_data],
            )?;
            Ok(n > 0)
        })
    }

    fn delete_backup_version(&self, user_id: &str, version: i64) -> Result<bool> {
        self.write(|tx| {
            let n = tx.exec(
                "UPDATE room_key_versions SET deleted = TRUE WHERE user_id = $1 AND version = $2 AND NOT deleted",
                &[&user_id, &version],
            )?;
            tx.exec("DELETE FROM room_keys WHERE user_id = $1 AND version = $2", &[&user_id, &version])?;
            Ok(n > 0)
        })
    }

    fn backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Vec<(String, String, String)>> {
        self.read(|db| {
            // The casts type the parameters, which `IS NULL` alone cannot.
            let rows = db.rows(
                "SELECT room_id, session_id, key_json FROM room_keys WHERE user_id = $1 AND version = $2
                   AND ($3::TEXT IS NULL OR room_id = $3) AND ($4::TEXT IS NULL OR session_id = $4)
                 ORDER BY room_id, session_id",
                &[&user_id, &version, &room_id, &session_id],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
        })
    }

    fn put_backup_keys(&self, user_id: &str, version: i64, keys: &[(String, String, String)]) -> Result<()> {
        // One statement may not update a row twice, so a session given twice keeps its last
        // value here, as row-by-row upserts would leave it.
        let mut latest: HashMap<(&str, &str), &str> = HashMap::with_capacity(keys.len());
        for (room, session, json) in keys {
            latest.insert((room.as_str(), session.as_str()), json.as_str());
        }
        let (mut rooms, mut sessions, mut jsons) = (Vec::new(), Vec::new(), Vec::new());
        for ((room, session), json) in latest {
            rooms.push(room);
            sessions.push(session);
            jsons.push(json);
        }
        self.write(|tx| {
            if !rooms.is_empty() {
                tx.exec(
                    "INSERT INTO room_keys (user_id, version, room_id, session_id, key_json)
                     SELECT $1, $2, k.room_id, k.session_id, k.key_json
                     FROM unnest($3::TEXT[], $4::TEXT[], $5::TEXT[]) AS k (room_id, session_id, key_json)
                     ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET key_json = EXCLUDED.key_json",
                    &[&user_id, &version, &rooms, &sessions, &jsons],
                )?;
            }
            bump_backup_etag(tx, user_id, version)
        })
    }

    fn delete_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "DELETE FROM room_keys WHERE user_id = $1 AND version = $2
                   AND ($3::TEXT IS NULL OR room_id = $3) AND ($4::TEXT IS NULL OR session_id = $4)",
                &[&user_id, &version, &room_id, &session_id],
            )?;
            bump_backup_etag(tx, user_id, version)
        })
    }

    fn count_backup_keys(&self, user_id: &str, version: i64) -> Result<i64> {
        self.read(|db| {
            Ok(db
                .one("SELECT count(*) FROM room_keys WHERE user_id = $1 AND version = $2", &[&user_id, &version])?
                .get(0))
        })
    }
}
