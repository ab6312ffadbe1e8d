//! Accounts, devices, tokens, profiles (`UserStore`).

use super::*;

pub(super) fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        user_id: r.get(0)?,
        password_hash: r.get(1)?,
        is_admin: r.get(2)?,
        is_guest: r.get(3)?,
        deactivated: r.get(4)?,
        shadow_banned: r.get(5)?,
        creation_ts: r.get(6)?,
        locked: r.get(7)?,
        suspended: r.get(8)?,
    })
}

pub(super) const USER_COLUMNS: &str =
    "user_id, password_hash, is_admin, is_guest, deactivated, shadow_banned, creation_ts, locked, suspended";

impl UserStore for SqliteStore {
    fn create_user(&self, u: &UserRow, displayname: Option<&str>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.exec(
            &format!("INSERT INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                u.user_id,
                u.password_hash,
                u.is_admin,
                u.is_guest,
                u.deactivated,
                u.shadow_banned,
                u.creation_ts,
                u.locked,
                u.suspended
            ],
        )
        .map_err(backend)?;
        tx.exec("INSERT INTO profiles (user_id, displayname) VALUES (?1, ?2)", params![u.user_id, displayname])
            .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn get_user(&self, user_id: &str) -> Result<Option<UserRow>> {
        let generation = {
            let cache = self.user_cache();
            if let Some(user) = cache.rows.get(user_id) {
                return Ok(Some(user.clone()));
            }
            cache.generation
        };
        let found = self
            .reader()
            .row(&format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = ?1"), [user_id], user_from_row)
            .optional()
            .map_err(backend)?;
        let mut cache = self.user_cache();
        // A write since the read began may have changed the row: keep it only if none did.
        if let Some(user) = &found
            && cache.generation == generation
        {
            if cache.rows.len() >= MAX_CACHED_TOKENS {
                cache.rows.clear();
            }
            cache.rows.insert(user_id.to_owned(), user.clone());
        }
        Ok(found)
    }

    fn find_user_case_insensitive(&self, user_id: &str) -> Result<Option<UserRow>> {
        self.reader()
            .row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE lower(user_id) = lower(?1) LIMIT 1"),
                [user_id],
                user_from_row,
            )
            .optional()
            .map_err(backend)
    }

    fn set_password_hash(&self, user_id: &str, hash: Option<&str>) -> Result<()> {
        self.conn()
            .exec("UPDATE users SET password_hash = ?2 WHERE user_id = ?1", params![user_id, hash])
            .map_err(backend)?;
        self.users_changed();
        Ok(())
    }

    fn set_user_type(&self, user_id: &str, user_type: Option<&str>) -> Result<()> {
        self.conn()
            .exec("UPDATE users SET user_type = ?2 WHERE user_id = ?1", params![user_id, user_type])
            .map_err(backend)?;
        Ok(())
    }

    fn user_type(&self, user_id: &str) -> Result<Option<String>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT user_type FROM users WHERE user_id = ?1").map_err(backend)?;
        let mut rows = stmt.query_map([user_id], |r| r.get::<_, Option<String>>(0)).map_err(backend)?;
        Ok(rows.next().transpose().map_err(backend)?.flatten())
    }

    fn set_account_validity(&self, v: &AccountValidity) -> Result<()> {
        self.conn()
            .exec(
                "INSERT INTO account_validity (user_id, expiration_ts_ms, email_sent, renewal_token, token_used_ts_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (user_id) DO UPDATE SET expiration_ts_ms = ?2, email_sent = ?3, renewal_token = ?4,
                     token_used_ts_ms = ?5",
                params![v.user_id, v.expiration_ts, v.email_sent, v.renewal_token, v.token_used_ts],
            )
            .map(drop)
            .map_err(backend)
    }

    fn account_validity(&self, user_id: &str) -> Result<Option<AccountValidity>> {
        self.account_validity_where("user_id = ?1", user_id)
    }

    fn account_validity_by_token(&self, token: &str) -> Result<Option<AccountValidity>> {
        self.account_validity_where("renewal_token = ?1", token)
    }

    fn accounts_expiring_by(&self, ts: i64) -> Result<Vec<AccountValidity>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {VALIDITY_COLUMNS} FROM account_validity WHERE NOT email_sent AND expiration_ts_ms <= ?1
                 ORDER BY expiration_ts_ms, user_id"
            ))
            .map_err(backend)?;
        stmt.query_map([ts], validity_from_row).and_then(|rows| rows.collect()).map_err(backend)
    }

    fn delete_account_validity(&self, user_id: &str) -> Result<()> {
        self.conn().exec("DELETE FROM account_validity WHERE user_id = ?1", [user_id]).map(drop).map_err(backend)
    }

    fn accounts_without_validity(&self) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT u.user_id FROM users u LEFT JOIN account_validity v ON v.user_id = u.user_id
                 WHERE v.user_id IS NULL AND NOT u.deactivated ORDER BY u.user_id",
            )
            .map_err(backend)?;
        stmt.query_map([], |r| r.get(0)).and_then(|rows| rows.collect()).map_err(backend)
    }

    fn set_user_flag(&self, user_id: &str, flag: UserFlag, value: bool) -> Result<()> {
        let column = match flag {
            UserFlag::Admin => "is_admin",
            UserFlag::Deactivated => "deactivated",
            UserFlag::ShadowBanned => "shadow_banned",
            UserFlag::Locked => "locked",
            UserFlag::Suspended => "suspended",
            UserFlag::Guest => "is_guest",
        };
        self.conn()
            .exec(&format!("UPDATE users SET {column} = ?2 WHERE user_id = ?1"), params![user_id, value])
            .map_err(backend)?;
        self.users_changed();
        Ok(())
    }

    fn mark_user_erased(&self, user_id: &str) -> Result<()> {
        self.conn()
            .exec("INSERT INTO erased_users (user_id) VALUES (?1) ON CONFLICT DO NOTHING", [user_id])
            .map(drop)
            .map_err(backend)
    }

    fn erased_users(&self) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT user_id FROM erased_users ORDER BY user_id").map_err(backend)?;
        stmt.query_map([], |r| r.get(0)).and_then(|rows| rows.collect()).map_err(backend)
    }

    fn record_external_id(&self, auth_provider: &str, external_id: &str, user_id: &str) -> Result<bool> {
        let conn = self.conn();
        conn.exec(
            "INSERT INTO user_external_ids (auth_provider, external_id, user_id) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            params![auth_provider, external_id, user_id],
        )
        .map_err(backend)?;
        let owner: String = conn
            .query_row(
                "SELECT user_id FROM user_external_ids WHERE auth_provider = ?1 AND external_id = ?2",
                params![auth_provider, external_id],
                |r| r.get(0),
            )
            .map_err(backend)?;
        Ok(owner == user_id)
    }

    fn invites_sent_by(&self, sender: &str) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT json FROM events WHERE type = 'm.room.member' AND membership = 'invite' AND sender = ?1
                 ORDER BY stream_ordering",
            )
            .map_err(backend)?;
        let rows = stmt.query_map([sender], |r| r.get(0)).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn events_sent_in_room(&self, room_id: &str, sender: &str, types: &[&str]) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT json FROM events WHERE room_id = ?1 AND sender = ?2 AND rejected = 0
                 AND type IN (SELECT value FROM json_each(?3)) ORDER BY stream_ordering DESC",
            )
            .map_err(backend)?;
        let types = serde_json::to_string(types).map_err(|e| StorageError::Backend(e.to_string()))?;
        let rows = stmt.query_map(params![room_id, sender, types], |r| r.get(0)).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn remove_external_id(&self, auth_provider: &str, external_id: &str, user_id: &str) -> Result<()> {
        self.conn()
            .exec(
                "DELETE FROM user_external_ids WHERE auth_provider = ?1 AND external_id = ?2 AND user_id = ?3",
                params![auth_provider, external_id, user_id],
            )
            .map(drop)
            .map_err(backend)
    }

    fn external_ids(&self, user_id: &str) -> Result<Vec<(String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT auth_provider, external_id FROM user_external_ids WHERE user_id = ?1
                 ORDER BY auth_provider, external_id",
            )
            .map_err(backend)?;
        let rows = stmt.query_map([user_id], |r| Ok((r.get(0)?, r.get(1)?))).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn user_by_external_id(&self, auth_provider: &str, external_id: &str) -> Result<Option<String>> {
        self.reader()
            .query_row(
                "SELECT user_id FROM user_external_ids WHERE auth_provider = ?1 AND external_id = ?2",
                params![auth_provider, external_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
    }

    fn add_threepid_binding(&self, user_id: &str, medium: &str, address: &str, id_server: &str) -> Result<()> {
        self.conn()
            .exec(
                "INSERT INTO threepid_bindings (user_id, medium, address, id_server) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
                params![user_id, medium, address, id_server],
            )
            .map(drop)
            .map_err(backend)
    }

    fn threepid_bindings(&self, user_id: &str) -> Result<Vec<(String, String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT medium, address, id_server FROM threepid_bindings WHERE user_id = ?1
                 ORDER BY medium, address, id_server",
            )
            .map_err(backend)?;
        stmt.query_map([user_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(backend)
    }

    fn remove_threepid_binding(&self, user_id: &str, medium: &str, address: &str, id_server: &str) -> Result<()> {
        self.conn()
            .exec(
                "DELETE FROM threepid_bindings WHERE user_id = ?1 AND medium = ?2 AND address = ?3 AND id_server = ?4",
                params![user_id, medium, address, id_server],
            )
            .map(drop)
            .map_err(backend)
    }

    fn user_threepids(&self, user_id: &str) -> Result<Vec<ThreepidRow>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT medium, address, validated_at, added_at FROM user_threepids WHERE user_id = ?1
                 ORDER BY medium, address",
            )
            .map_err(backend)?;
        stmt.query_map([user_id], |r| {
            Ok(ThreepidRow { medium: r.get(0)?, address: r.get(1)?, validated_at: r.get(2)?, added_at: r.get(3)? })
        })
        .and_then(|rows| rows.collect())
        .map_err(backend)
    }

    fn user_by_threepid(&self, medium: &str, address: &str) -> Result<Option<String>> {
        self.reader()
            .query_row(
                "SELECT user_id FROM user_threepids WHERE medium = ?1 AND address = ?2",
                params![medium, address],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
    }

    fn add_user_threepid(&self, user_id: &str, t: &ThreepidRow) -> Result<bool> {
        let n = self
            .conn()
            .exec(
                "INSERT INTO user_threepids (medium, address, user_id, validated_at, added_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (medium, address) DO UPDATE SET
                   validated_at = excluded.validated_at, added_at = excluded.added_at
                 WHERE user_id = excluded.user_id",
                params![t.medium, t.address, user_id, t.validated_at, t.added_at],
            )
            .map_err(backend)?;
        Ok(n > 0)
    }

    fn remove_user_threepid(&self, user_id: &str, medium: &str, address: &str) -> Result<bool> {
        let n = self
            .conn()
            .exec(
                "DELETE FROM user_threepids WHERE user_id = ?1 AND medium = ?2 AND address = ?3",
                params![user_id, medium, address],
            )
            .map_err(backend)?;
        Ok(n > 0)
    }

    fn threepid_session(&self, session_id: &str) -> Result<Option<ThreepidSessionRow>> {
        self.reader()
            .query_row(
                "SELECT session_id, medium, address, client_secret, last_send_attempt, validated_at
                 FROM threepid_validation_sessions WHERE session_id = ?1",
                [session_id],
                threepid_session_row,
            )
            .optional()
            .map_err(backend)
    }

    fn unvalidated_threepid_session(
        &self,
        medium: &str,
        client_secret: &str,
        address: &str,
    ) -> Result<Option<ThreepidSessionRow>> {
        self.reader()
            .query_row(
                "SELECT session_id, medium, address, client_secret, last_send_attempt, validated_at
                 FROM threepid_validation_sessions
                 WHERE medium = ?1 AND client_secret = ?2 AND address = ?3 AND validated_at IS NULL
                 ORDER BY last_send_attempt DESC LIMIT 1",
                params![medium, client_secret, address],
                threepid_session_row,
            )
            .optional()
            .map_err(backend)
    }

    fn save_threepid_token(
        &self,
        session: &ThreepidSessionRow,
        token: &str,
        next_link: Option<&str>,
        expires: i64,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.exec(
            "INSERT INTO threepid_validation_sessions
               (session_id, medium, address, client_secret, last_send_attempt, validated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (session_id) DO UPDATE SET last_send_attempt = excluded.last_send_attempt",
            params![
                session.session_id,
                session.medium,
                session.address,
                session.client_secret,
                session.last_send_attempt,
                session.validated_at
            ],
        )
        .map_err(backend)?;
        tx.exec(
            "INSERT INTO threepid_validation_tokens (token, session_id, next_link, expires) VALUES (?1, ?2, ?3, ?4)",
            params![token, session.session_id, next_link, expires],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn threepid_token(&self, session_id: &str, token: &str) -> Result<Option<(i64, Option<String>)>> {
        self.reader()
            .query_row(
                "SELECT expires, next_link FROM threepid_validation_tokens WHERE session_id = ?1 AND token = ?2",
                params![session_id, token],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)
    }

    fn validate_threepid_session(&self, session_id: &str, at: i64) -> Result<()> {
        self.conn()
            .exec(
                "UPDATE threepid_validation_sessions SET validated_at = ?2
                 WHERE session_id = ?1 AND validated_at IS NULL",
                params![session_id, at],
            )
            .map(drop)
            .map_err(backend)
    }

    fn delete_threepid_session(&self, session_id: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.exec("DELETE FROM threepid_validation_tokens WHERE session_id = ?1", [session_id]).map_err(backend)?;
        tx.exec("DELETE FROM threepid_validation_sessions WHERE session_id = ?1", [session_id]).map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn upsert_device(&self, user_id: &str, device_id: &str, name: Option<&str>) -> Result<()> {
        self.conn()
            .exec(
                "INSERT INTO devices (user_id, device_id, display_name) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id, device_id) DO UPDATE SET
                   display_name = coalesce(excluded.display_name, display_name)",
                params![user_id, device_id, name],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn get_devices(&self, user_id: &str) -> Result<Vec<DeviceRow>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent FROM devices
                 WHERE user_id = ?1 ORDER BY device_id",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([user_id], |r| {
                Ok(DeviceRow {
                    device_id: r.get(0)?,
                    display_name: r.get(1)?,
                    last_seen_ts: r.get(2)?,
                    last_seen_ip: r.get(3)?,
                    last_seen_user_agent: r.get(4)?,
                })
            })
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn rename_device(&self, user_id: &str, device_id: &str, name: Option<&str>) -> Result<bool> {
        let n = self
            .conn()
            .exec(
                "UPDATE devices SET display_name = ?3 WHERE user_id = ?1 AND device_id = ?2",
                params![user_id, device_id, name],
            )
            .map_err(backend)?;
        Ok(n > 0)
    }

    fn delete_device(&self, user_id: &str, device_id: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.exec("DELETE FROM access_tokens WHERE user_id = ?1 AND device_id = ?2", params![user_id, device_id])
            .map_err(backend)?;
        tx.exec("DELETE FROM refresh_tokens WHERE user_id = ?1 AND device_id = ?2", params![user_id, device_id])
            .map_err(backend)?;
        // Under the connection's lock, which every cache fill holds too.
        self.token_cache().clear();
        let n = tx
            .exec("DELETE FROM devices WHERE user_id = ?1 AND device_id = ?2", params![user_id, device_id])
            .map_err(backend)?;
        delete_device_crypto(&tx, user_id, Some(device_id), None)?;
        tx.commit().map_err(backend)?;
        Ok(n > 0)
    }

    fn add_access_token(&self, t: &NewAccessToken<'_>) -> Result<()> {
        insert_access_token(&self.conn(), t)
    }

    fn get_access_token(&self, token: &str) -> Result<Option<AccessTokenRow>> {
        if let Some(found) = self.token_cache().get(token) {
            return Ok(Some(found.clone()));
        }
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT user_id, device_id, valid_until_ms, refresh_token_id, used FROM access_tokens WHERE token = ?1",
            )
            .map_err(backend)?;
        let found = stmt
            .query_row([token], |r| {
                Ok(AccessTokenRow {
                    user_id: r.get(0)?,
                    device_id: r.get(1)?,
                    valid_until_ms: r.get(2)?,
                    refresh_token_id: r.get(3)?,
                    used: r.get(4)?,
                })
            })
            .optional()
            .map_err(backend)?;
        if let Some(found) = &found {
            let mut cache = self.token_cache();
            if cache.len() >= MAX_CACHED_TOKENS {
                cache.clear();
            }
            cache.insert(token.to_owned(), found.clone());
        }
        Ok(found)
    }

    fn mark_access_token_used(&self, token: &str) -> Result<()> {
        let conn = self.conn();
        conn.exec("UPDATE access_tokens SET used = 1 WHERE token = ?1", [token]).map_err(backend)?;
        // Under the connection's lock, which every cache fill holds too.
        if let Some(row) = self.token_cache().get_mut(token) {
            row.used = true;
        }
        Ok(())
    }

    fn add_refresh_token(&self, t: &NewRefreshToken<'_>) -> Result<i64> {
        insert_refresh_token(&self.conn(), t)
    }

    fn get_refresh_token(&self, token: &str) -> Result<Option<RefreshTokenRow>> {
        self.reader()
            .query_row(
                "SELECT rt.id, rt.user_id, rt.device_id, rt.expiry_ts, rt.ultimate_session_expiry_ts,
                        nrt.next_token_id IS NOT NULL
                          OR EXISTS (SELECT 1 FROM access_tokens a WHERE a.refresh_token_id = nrt.id AND a.used)
                 FROM refresh_tokens rt LEFT JOIN refresh_tokens nrt ON nrt.id = rt.next_token_id
                 WHERE rt.token = ?1",
                [token],
                |r| {
                    Ok(RefreshTokenRow {
                        id: r.get(0)?,
                        user_id: r.get(1)?,
                        device_id: r.get(2)?,
                        expiry_ts: r.get(3)?,
                        ultimate_session_expiry_ts: r.get(4)?,
                        superseded: r.get::<_, Option<bool>>(5)?.unwrap_or(false),
                    })
                },
            )
            .optional()
            .map_err(backend)
    }

    fn rotate_refresh_token(
        &self,
        old_id: i64,
        refresh: &NewRefreshToken<'_>,
        access: &NewAccessToken<'_>,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let new_id = insert_refresh_token(&tx, refresh)?;
        insert_access_token(&tx, &NewAccessToken { refresh_token_id: Some(new_id), ..*access })?;
        // The earlier successor (a refresh that was retried) and the predecessors go.
        let doomed = "SELECT next_token_id FROM refresh_tokens WHERE id = ?1 AND next_token_id IS NOT NULL
                      UNION SELECT id FROM refresh_tokens WHERE next_token_id = ?1";
        tx.exec(&format!("DELETE FROM access_tokens WHERE refresh_token_id IN ({doomed})"), [old_id])
            .map_err(backend)?;
        tx.exec(&format!("DELETE FROM refresh_tokens WHERE id IN ({doomed})"), [old_id]).map_err(backend)?;
        tx.exec("UPDATE refresh_tokens SET next_token_id = ?2 WHERE id = ?1", [old_id, new_id]).map_err(backend)?;
        // Under the connection's lock, which every cache fill holds too.
        self.token_cache().clear();
        tx.commit().map_err(backend)
    }

    fn touch_device(&self, user_id: &str, device_id: &str, ip: &str, user_agent: &str, ts: i64) -> Result<()> {
        self.conn()
            .exec(
                "UPDATE devices SET last_seen_ts = ?3, last_seen_ip = ?4, last_seen_user_agent = ?5
                 WHERE user_id = ?1 AND device_id = ?2",
                params![user_id, device_id, ts, ip, user_agent],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn delete_access_token(&self, token: &str) -> Result<()> {
        let conn = self.conn();
        conn.exec("DELETE FROM access_tokens WHERE token = ?1", [token]).map_err(backend)?;
        // Under the connection's lock, which every cache fill holds too.
        self.token_cache().clear();
        Ok(())
    }

    fn delete_all_devices(&self, user_id: &str, keep: Option<&str>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let keep = keep.unwrap_or("");
        tx.exec("DELETE FROM access_tokens WHERE user_id = ?1 AND device_id != ?2", params![user_id, keep])
            .map_err(backend)?;
        tx.exec("DELETE FROM refresh_tokens WHERE user_id = ?1 AND device_id != ?2", params![user_id, keep])
            .map_err(backend)?;
        // Under the connection's lock, which every cache fill holds too.
        self.token_cache().clear();
        tx.exec("DELETE FROM devices WHERE user_id = ?1 AND device_id != ?2", params![user_id, keep])
            .map_err(backend)?;
        delete_device_crypto(&tx, user_id, None, Some(keep))?;
        tx.commit().map_err(backend)
    }

    fn set_ratelimit_override(&self, user_id: &str, value: Option<(Option<f64>, Option<i64>)>) -> Result<()> {
        let conn = self.conn();
        match value {
            None => conn.exec("DELETE FROM ratelimit_override WHERE user_id = ?1", [user_id]),
            Some((per_second, burst)) => conn.exec(
                "INSERT INTO ratelimit_override (user_id, messages_per_second, burst_count) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id) DO UPDATE SET messages_per_second = ?2, burst_count = ?3",
                params![user_id, per_second, burst],
            ),
        }
        .map_err(backend)?;
        Ok(())
    }

    fn get_ratelimit_override(&self, user_id: &str) -> Result<Option<(Option<f64>, Option<i64>)>> {
        self.reader()
            .row("SELECT messages_per_second, burst_count FROM ratelimit_override WHERE user_id = ?1", [user_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(backend)
    }

    fn get_profile(&self, user_id: &str) -> Result<Option<(Option<String>, Option<String>)>> {
        self.reader()
            .row("SELECT displayname, avatar_url FROM profiles WHERE user_id = ?1", [user_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(backend)
    }

    fn set_profile_field(&self, user_id: &str, field: ProfileField, value: Option<&str>) -> Result<()> {
        let column = match field {
            ProfileField::DisplayName => "displayname",
            ProfileField::AvatarUrl => "avatar_url",
        };
        self.conn()
            .exec(
                &format!(
                    "INSERT INTO profiles (user_id, {column}) VALUES (?1, ?2)
                     ON CONFLICT (user_id) DO UPDATE SET {column} = excluded.{column}"
                ),
                params![user_id, value],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn get_custom_profile_fields(&self, user_id: &str) -> Result<serde_json::Map<String, Value>> {
        let stored: Option<Option<String>> = self
            .reader()
            .row("SELECT fields FROM profiles WHERE user_id = ?1", [user_id], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        Ok(profile_fields(stored.flatten().as_deref()))
    }

    fn set_custom_profile_field(
        &self,
        user_id: &str,
        field: &str,
        value: Option<&Value>,
        max_bytes: usize,
    ) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let row: Option<(Option<String>, Option<String>, Option<String>)> = tx
            .row("SELECT displayname, avatar_url, fields FROM profiles WHERE user_id = ?1", [user_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
            .map_err(backend)?;
        let (displayname, avatar_url, stored) = row.unwrap_or_default();
        let Some(fields) = updated_profile_fields(
            displayname.as_deref(),
            avatar_url.as_deref(),
            stored.as_deref(),
            field,
            value,
            max_bytes,
        ) else {
            return Ok(false);
        };
        let text = (!fields.is_empty()).then(|| Value::Object(fields).to_string());
        tx.exec(
            "INSERT INTO profiles (user_id, fields) VALUES (?1, ?2)
             ON CONFLICT (user_id) DO UPDATE SET fields = excluded.fields",
            params![user_id, text],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(true)
    }

    fn count_users(&self) -> Result<i64> {
        self.reader().row("SELECT count(*) FROM users", [], |r| r.get(0)).map_err(backend)
    }
}

fn insert_access_token(conn: &Connection, t: &NewAccessToken<'_>) -> Result<()> {
    conn.exec(
        "INSERT INTO access_tokens (token, user_id, device_id, valid_until_ms, refresh_token_id)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![t.token, t.user_id, t.device_id, t.valid_until_ms, t.refresh_token_id],
    )
    .map_err(backend)?;
    Ok(())
}

fn insert_refresh_token(conn: &Connection, t: &NewRefreshToken<'_>) -> Result<i64> {
    conn.exec(
        "INSERT INTO refresh_tokens (token, user_id, device_id, expiry_ts, ultimate_session_expiry_ts)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![t.token, t.user_id, t.device_id, t.expiry_ts, t.ultimate_session_expiry_ts],
    )
    .map_err(backend)?;
    Ok(conn.last_insert_rowid())
}

fn threepid_session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ThreepidSessionRow> {
    Ok(ThreepidSessionRow {
        session_id: r.get(0)?,
        medium: r.get(1)?,
        address: r.get(2)?,
        client_secret: r.get(3)?,
        last_send_attempt: r.get(4)?,
        validated_at: r.get(5)?,
    })
}

const VALIDITY_COLUMNS: &str = "user_id, expiration_ts_ms, email_sent, renewal_token, token_used_ts_ms";

fn validity_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AccountValidity> {
    Ok(AccountValidity {
        user_id: r.get(0)?,
        expiration_ts: r.get(1)?,
        email_sent: r.get(2)?,
        renewal_token: r.get(3)?,
        token_used_ts: r.get(4)?,
    })
}

impl SqliteStore {
    fn account_validity_where(&self, condition: &str, value: &str) -> Result<Option<AccountValidity>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!("SELECT {VALIDITY_COLUMNS} FROM account_validity WHERE {condition}"))
            .map_err(backend)?;
        stmt.query_row([value], validity_from_row).optional().map_err(backend)
    }
}
