//! Accounts, devices, tokens, profiles (`UserStore`).
//!
//! Unlike the SQLite store, nothing here is cached: other processes share the database, and a
//! logout or deactivation there must take effect here on the next request.

use super::keys::delete_device_crypto;
use super::*;

pub(super) const USER_COLUMNS: &str =
    "user_id, password_hash, is_admin, is_guest, deactivated, shadow_banned, creation_ts, locked, suspended";

/// A [`UserRow`] from a row selected as [`USER_COLUMNS`].
pub(super) fn user_from_row(r: &Row) -> UserRow {
    UserRow {
        user_id: r.get(0),
        password_hash: r.get(1),
        is_admin: r.get(2),
        is_guest: r.get(3),
        deactivated: r.get(4),
        shadow_banned: r.get(5),
        creation_ts: r.get(6),
        locked: r.get(7),
        suspended: r.get(8),
    }
}

impl UserStore for PostgresStore {
    fn create_user(&self, u: &UserRow, displayname: Option<&str>) -> Result<()> {
        self.write(|tx| {
            // A taken ID is a unique violation, which `backend` reports as `Conflict`.
            tx.exec(
                &format!("INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
                &[
                    &u.user_id,
                    &u.password_hash,
                    &u.is_admin,
                    &u.is_guest,
                    &u.deactivated,
                    &u.shadow_banned,
                    &u.creation_ts,
                    &u.locked,
                    &u.suspended,
                ],
            )?;
            tx.exec("INSERT INTO profiles (user_id, displayname) VALUES ($1, $2)", &[&u.user_id, &displayname])?;
            Ok(())
        })
    }

    fn get_user(&self, user_id: &str) -> Result<Option<UserRow>> {
        self.read(|db| {
            Ok(db
                .opt(&format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = $1"), &[&user_id])?
                .map(|r| user_from_row(&r)))
        })
    }

    fn find_user_case_insensitive(&self, user_id: &str) -> Result<Option<UserRow>> {
        self.read(|db| {
            // `lower` finds the candidates through the `users_lower` index; it folds only ASCII
            // under the `C` ctype, but may fold more under another locale (`allow_unsafe_locale`),
            // so the ASCII comparison decides. Of IDs differing only in case, SQLite returns the
            // first registered: the oldest here, then by ID.
            let rows = db.rows(
                &format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE lower(user_id) = lower($1) ORDER BY creation_ts, user_id"
                ),
                &[&user_id],
            )?;
            Ok(rows.iter().map(user_from_row).find(|u| u.user_id.eq_ignore_ascii_case(user_id)))
        })
    }

    fn set_password_hash(&self, user_id: &str, hash: Option<&str>) -> Result<()> {
        self.write(|tx| {
            tx.exec("UPDATE users SET password_hash = $2 WHERE user_id = $1", &[&user_id, &hash])?;
            Ok(())
        })
    }

    fn set_user_type(&self, user_id: &str, user_type: Option<&str>) -> Result<()> {
        self.write(|tx| {
            tx.exec("UPDATE users SET user_type = $2 WHERE user_id = $1", &[&user_id, &user_type])?;
            Ok(())
        })
    }

    fn user_type(&self, user_id: &str) -> Result<Option<String>> {
        self.read(|db| {
            Ok(db.opt("SELECT user_type FROM users WHERE user_id = $1", &[&user_id])?.and_then(|r| r.get(0)))
        })
    }

    fn set_account_validity(&self, v: &AccountValidity) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO account_validity (user_id, expiration_ts_ms, email_sent, renewal_token, token_used_ts_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (user_id) DO UPDATE SET expiration_ts_ms = $2, email_sent = $3, renewal_token = $4,
                     token_used_ts_ms = $5",
                &[&v.user_id, &v.expiration_ts, &v.email_sent, &v.renewal_token, &v.token_used_ts],
            )?;
            Ok(())
        })
    }

    fn account_validity(&self, user_id: &str) -> Result<Option<AccountValidity>> {
        self.account_validity_where("user_id = $1", user_id)
    }

    fn account_validity_by_token(&self, token: &str) -> Result<Option<AccountValidity>> {
        self.account_validity_where("renewal_token = $1", token)
    }

    fn accounts_expiring_by(&self, ts: i64) -> Result<Vec<AccountValidity>> {
        self.read(|db| {
            let rows = db.rows(
                &format!(
                    "SELECT {VALIDITY_COLUMNS} FROM account_validity WHERE NOT email_sent AND expiration_ts_ms <= $1
                     ORDER BY expiration_ts_ms, user_id"
                ),
                &[&ts],
            )?;
            Ok(rows.iter().map(validity_from_row).collect())
        })
    }

    fn delete_account_validity(&self, user_id: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec("DELETE FROM account_validity WHERE user_id = $1", &[&user_id])?;
            Ok(())
        })
    }

    fn accounts_without_validity(&self) -> Result<Vec<String>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT u.user_id FROM users u LEFT JOIN account_validity v ON v.user_id = u.user_id
                 WHERE v.user_id IS NULL AND NOT u.deactivated ORDER BY u.user_id",
                &[],
            )?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
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
        self.write(|tx| {
            tx.exec(&format!("UPDATE users SET {column} = $2 WHERE user_id = $1"), &[&user_id, &value])?;
            Ok(())
        })
    }

    fn mark_user_erased(&self, user_id: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec("INSERT INTO erased_users (user_id) VALUES ($1) ON CONFLICT DO NOTHING", &[&user_id])?;
            Ok(())
        })
    }

    fn erased_users(&self) -> Result<Vec<String>> {
        self.read(|db| {
            let rows = db.rows("SELECT user_id FROM erased_users ORDER BY user_id", &[])?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn record_external_id(&self, auth_provider: &str, external_id: &str, user_id: &str) -> Result<bool> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO user_external_ids (auth_provider, external_id, user_id) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&auth_provider, &external_id, &user_id],
            )?;
            let owner = tx.opt(
                "SELECT user_id FROM user_external_ids WHERE auth_provider = $1 AND external_id = $2",
                &[&auth_provider, &external_id],
            )?;
            Ok(owner.map(|r| r.get::<_, String>(0)).as_deref() == Some(user_id))
        })
    }

    fn invites_sent_by(&self, sender: &str) -> Result<Vec<String>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT json FROM events WHERE type = 'm.room.member' AND membership = 'invite' AND sender = $1
                 ORDER BY stream_ordering",
                &[&sender],
            )?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn events_sent_in_room(&self, room_id: &str, sender: &str, types: &[&str]) -> Result<Vec<String>> {
        let types: Vec<String> = types.iter().map(|t| (*t).to_owned()).collect();
        self.read(|db| {
            let rows = db.rows(
                "SELECT json FROM events WHERE room_id = $1 AND sender = $2 AND NOT rejected AND type = ANY($3)
                 ORDER BY stream_ordering DESC",
                &[&room_id, &sender, &types],
            )?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn remove_external_id(&self, auth_provider: &str, external_id: &str, user_id: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "DELETE FROM user_external_ids WHERE auth_provider = $1 AND external_id = $2 AND user_id = $3",
                &[&auth_provider, &external_id, &user_id],
            )?;
            Ok(())
        })
    }

    fn external_ids(&self, user_id: &str) -> Result<Vec<(String, String)>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT auth_provider, external_id FROM user_external_ids WHERE user_id = $1
                 ORDER BY auth_provider, external_id",
                &[&user_id],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn user_by_external_id(&self, auth_provider: &str, external_id: &str) -> Result<Option<String>> {
        self.read(|db| {
            Ok(db
                .opt(
                    "SELECT user_id FROM user_external_ids WHERE auth_provider = $1 AND external_id = $2",
                    &[&auth_provider, &external_id],
                )?
                .map(|r| r.get(0)))
        })
    }

    fn add_threepid_binding(&self, user_id: &str, medium: &str, address: &str, id_server: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO threepid_bindings (user_id, medium, address, id_server) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[&user_id, &medium, &address, &id_server],
            )?;
            Ok(())
        })
    }

    fn threepid_bindings(&self, user_id: &str) -> Result<Vec<(String, String, String)>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT medium, address, id_server FROM threepid_bindings WHERE user_id = $1
                 ORDER BY medium, address, id_server",
                &[&user_id],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
        })
    }

    fn remove_threepid_binding(&self, user_id: &str, medium: &str, address: &str, id_server: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "DELETE FROM threepid_bindings WHERE user_id = $1 AND medium = $2 AND address = $3 AND id_server = $4",
                &[&user_id, &medium, &address, &id_server],
            )?;
            Ok(())
        })
    }

    fn user_threepids(&self, user_id: &str) -> Result<Vec<ThreepidRow>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT medium, address, validated_at, added_at FROM user_threepids WHERE user_id = $1
                 ORDER BY medium, address",
                &[&user_id],
            )?;
            Ok(rows
                .iter()
                .map(|r| ThreepidRow {
                    medium: r.get(0),
                    address: r.get(1),
                    validated_at: r.get(2),
                    added_at: r.get(3),
                })
                .collect())
        })
    }

    fn user_by_threepid(&self, medium: &str, address: &str) -> Result<Option<String>> {
        self.read(|db| {
            Ok(db
                .opt("SELECT user_id FROM user_threepids WHERE medium = $1 AND address = $2", &[&medium, &address])?
                .map(|r| r.get(0)))
        })
    }

    fn add_user_threepid(&self, user_id: &str, t: &ThreepidRow) -> Result<bool> {
        self.write(|tx| {
            let n = tx.exec(
                "INSERT INTO user_threepids (medium, address, user_id, validated_at, added_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (medium, address) DO UPDATE SET
                   validated_at = excluded.validated_at, added_at = excluded.added_at
                 WHERE user_threepids.user_id = excluded.user_id",
                &[&t.medium, &t.address, &user_id, &t.validated_at, &t.added_at],
            )?;
            Ok(n > 0)
        })
    }

    fn remove_user_threepid(&self, user_id: &str, medium: &str, address: &str) -> Result<bool> {
        self.write(|tx| {
            let n = tx.exec(
                "DELETE FROM user_threepids WHERE user_id = $1 AND medium = $2 AND address = $3",
                &[&user_id, &medium, &address],
            )?;
            Ok(n > 0)
        })
    }

    fn threepid_session(&self, session_id: &str) -> Result<Option<ThreepidSessionRow>> {
        self.read(|db| {
            Ok(db
                .opt(
                    "SELECT session_id, medium, address, client_secret, last_send_attempt, validated_at
                     FROM threepid_validation_sessions WHERE session_id = $1",
                    &[&session_id],
                )?
                .map(|r| threepid_session_row(&r)))
        })
    }

    fn unvalidated_threepid_session(
        &self,
        medium: &str,
        client_secret: &str,
        address: &str,
    ) -> Result<Option<ThreepidSessionRow>> {
        self.read(|db| {
            Ok(db
                .opt(
                    "SELECT session_id, medium, address, client_secret, last_send_attempt, validated_at
                     FROM threepid_validation_sessions
                     WHERE medium = $1 AND client_secret = $2 AND address = $3 AND validated_at IS NULL
                     ORDER BY last_send_attempt DESC LIMIT 1",
                    &[&medium, &client_secret, &address],
                )?
                .map(|r| threepid_session_row(&r)))
        })
    }

    fn save_threepid_token(
        &self,
        session: &ThreepidSessionRow,
        token: &str,
        next_link: Option<&str>,
        expires: i64,
    ) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO threepid_validation_sessions
                   (session_id, medium, address, client_secret, last_send_attempt, validated_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (session_id) DO UPDATE SET last_send_attempt = excluded.last_send_attempt",
                &[
                    &session.session_id,
                    &session.medium,
                    &session.address,
                    &session.client_secret,
                    &session.last_send_attempt,
                    &session.validated_at,
                ],
            )?;
            tx.exec(
                "INSERT INTO threepid_validation_tokens (token, session_id, next_link, expires) VALUES ($1, $2, $3, $4)",
                &[&token, &session.session_id, &next_link, &expires],
            )?;
            Ok(())
        })
    }

    fn threepid_token(&self, session_id: &str, token: &str) -> Result<Option<(i64, Option<String>)>> {
        self.read(|db| {
            Ok(db
                .opt(
                    "SELECT expires, next_link FROM threepid_validation_tokens WHERE session_id = $1 AND token = $2",
                    &[&session_id, &token],
                )?
                .map(|r| (r.get(0), r.get(1))))
        })
    }

    fn validate_threepid_session(&self, session_id: &str, at: i64) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "UPDATE threepid_validation_sessions SET validated_at = $2
                 WHERE session_id = $1 AND validated_at IS NULL",
                &[&session_id, &at],
            )?;
            Ok(())
        })
    }

    fn delete_threepid_session(&self, session_id: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec("DELETE FROM threepid_validation_tokens WHERE session_id = $1", &[&session_id])?;
            tx.exec("DELETE FROM threepid_validation_sessions WHERE session_id = $1", &[&session_id])?;
            Ok(())
        })
    }

    fn upsert_device(&self, user_id: &str, device_id: &str, name: Option<&str>) -> Result<()> {
        self.write(|tx| {
            // A login without a display name keeps the one the device has.
            tx.exec(
                "INSERT INTO devices (user_id, device_id, display_name) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id, device_id) DO UPDATE SET
                   display_name = coalesce(EXCLUDED.display_name, devices.display_name)",
                &[&user_id, &device_id, &name],
            )?;
            Ok(())
        })
    }

    fn get_devices(&self, user_id: &str) -> Result<Vec<DeviceRow>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent FROM devices
                 WHERE user_id = $1 ORDER BY device_id",
                &[&user_id],
            )?;
            Ok(rows
                .iter()
                .map(|r| DeviceRow {
                    device_id: r.get(0),
                    display_name: r.get(1),
                    last_seen_ts: r.get(2),
                    last_seen_ip: r.get(3),
                    last_seen_user_agent: r.get(4),
                })
                .collect())
        })
    }

    fn rename_device(&self, user_id: &str, device_id: &str, name: Option<&str>) -> Result<bool> {
        self.write(|tx| {
            let n = tx.exec(
                "UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2",
                &[&user_id, &device_id, &name],
            )?;
            Ok(n > 0)
        })
    }

    fn delete_device(&self, user_id: &str, device_id: &str) -> Result<bool> {
        self.write(|tx| {
            // Tokens first: they reference the device.
            tx.exec("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2", &[&user_id, &device_id])?;
            tx.exec("DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2", &[&user_id, &device_id])?;
            let n = tx.exec("DELETE FROM devices WHERE user_id = $1 AND device_id = $2", &[&user_id, &device_id])?;
            delete_device_crypto(tx, user_id, Some(device_id), None)?;
            Ok(n > 0)
        })
    }

    fn add_access_token(&self, t: &NewAccessToken<'_>) -> Result<()> {
        self.write(|tx| insert_access_token(tx, t))
    }

    fn get_access_token(&self, token: &str) -> Result<Option<AccessTokenRow>> {
        self.read(|db| {
            Ok(db
                .opt(
                    "SELECT user_id, device_id, valid_until_ms, refresh_token_id, used FROM access_tokens
                     WHERE token = $1",
                    &[&token],
                )?
                .map(|r| AccessTokenRow {
                    user_id: r.get(0),
                    device_id: r.get(1),
                    valid_until_ms: r.get(2),
                    refresh_token_id: r.get(3),
                    used: r.get(4),
                }))
        })
    }

    fn mark_access_token_used(&self, token: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec("UPDATE access_tokens SET used = TRUE WHERE token = $1", &[&token])?;
            Ok(())
        })
    }

    fn add_refresh_token(&self, t: &NewRefreshToken<'_>) -> Result<i64> {
        self.write(|tx| insert_refresh_token(tx, t))
    }

    fn get_refresh_token(&self, token: &str) -> Result<Option<RefreshTokenRow>> {
        self.read(|db| {
            Ok(db
                .opt(
                    "SELECT rt.id, rt.user_id, rt.device_id, rt.expiry_ts, rt.ultimate_session_expiry_ts,
                            nrt.next_token_id IS NOT NULL
                              OR EXISTS (SELECT 1 FROM access_tokens a WHERE a.refresh_token_id = nrt.id AND a.used)
                     FROM refresh_tokens rt LEFT JOIN refresh_tokens nrt ON nrt.id = rt.next_token_id
                     WHERE rt.token = $1",
                    &[&token],
                )?
                .map(|r| RefreshTokenRow {
                    id: r.get(0),
                    user_id: r.get(1),
                    device_id: r.get(2),
                    expiry_ts: r.get(3),
                    ultimate_session_expiry_ts: r.get(4),
                    superseded: r.get::<_, Option<bool>>(5).unwrap_or(false),
                }))
        })
    }

    fn rotate_refresh_token(
        &self,
        old_id: i64,
        refresh: &NewRefreshToken<'_>,
        access: &NewAccessToken<'_>,
    ) -> Result<()> {
        self.write(|tx| {
            let new_id = insert_refresh_token(tx, refresh)?;
            insert_access_token(tx, &NewAccessToken { refresh_token_id: Some(new_id), ..*access })?;
            // The earlier successor (a refresh that was retried) and the predecessors go.
            let doomed = "SELECT next_token_id FROM refresh_tokens WHERE id = $1 AND next_token_id IS NOT NULL
                          UNION SELECT id FROM refresh_tokens WHERE next_token_id = $1";
            tx.exec(&format!("DELETE FROM access_tokens WHERE refresh_token_id IN ({doomed})"), &[&old_id])?;
            tx.exec(&format!("DELETE FROM refresh_tokens WHERE id IN ({doomed})"), &[&old_id])?;
            tx.exec("UPDATE refresh_tokens SET next_token_id = $2 WHERE id = $1", &[&old_id, &new_id])?;
            Ok(())
        })
    }

    fn touch_device(&self, user_id: &str, device_id: &str, ip: &str, user_agent: &str, ts: i64) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "UPDATE devices SET last_seen_ts = $3, last_seen_ip = $4, last_seen_user_agent = $5
                 WHERE user_id = $1 AND device_id = $2",
                &[&user_id, &device_id, &ts, &ip, &user_agent],
            )?;
            Ok(())
        })
    }

    fn delete_access_token(&self, token: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec("DELETE FROM access_tokens WHERE token = $1", &[&token])?;
            Ok(())
        })
    }

    fn delete_all_devices(&self, user_id: &str, keep: Option<&str>) -> Result<()> {
        // No device has an empty ID, so "" keeps none.
        let keep = keep.unwrap_or("");
        self.write(|tx| {
            tx.exec("DELETE FROM access_tokens WHERE user_id = $1 AND device_id != $2", &[&user_id, &keep])?;
            tx.exec("DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id != $2", &[&user_id, &keep])?;
            tx.exec("DELETE FROM devices WHERE user_id = $1 AND device_id != $2", &[&user_id, &keep])?;
            delete_device_crypto(tx, user_id, None, Some(keep))
        })
    }

    fn set_ratelimit_override(&self, user_id: &str, value: Option<(Option<f64>, Option<i64>)>) -> Result<()> {
        self.write(|tx| {
            match value {
                None => tx.exec("DELETE FROM ratelimit_override WHERE user_id = $1", &[&user_id])?,
                Some((per_second, burst)) => tx.exec(
                    "INSERT INTO ratelimit_override (user_id, messages_per_second, burst_count) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id) DO UPDATE SET messages_per_second = $2, burst_count = $3",
                    &[&user_id, &per_second, &burst],
                )?,
            };
            Ok(())
        })
    }

    fn get_ratelimit_override(&self, user_id: &str) -> Result<Option<(Option<f64>, Option<i64>)>> {
        self.read(|db| {
            Ok(db
                .opt("SELECT messages_per_second, burst_count FROM ratelimit_override WHERE user_id = $1", &[&user_id])?
                .map(|r| (r.get(0), r.get(1))))
        })
    }

    fn get_profile(&self, user_id: &str) -> Result<Option<(Option<String>, Option<String>)>> {
        self.read(|db| {
            Ok(db
                .opt("SELECT displayname, avatar_url FROM profiles WHERE user_id = $1", &[&user_id])?
                .map(|r| (r.get(0), r.get(1))))
        })
    }

    fn set_profile_field(&self, user_id: &str, field: ProfileField, value: Option<&str>) -> Result<()> {
        let column = match field {
            ProfileField::DisplayName => "displayname",
            ProfileField::AvatarUrl => "avatar_url",
        };
        self.write(|tx| {
            tx.exec(
                &format!(
                    "INSERT INTO profiles (user_id, {column}) VALUES ($1, $2)
                     ON CONFLICT (user_id) DO UPDATE SET {column} = EXCLUDED.{column}"
                ),
                &[&user_id, &value],
            )?;
            Ok(())
        })
    }

    fn get_custom_profile_fields(&self, user_id: &str) -> Result<serde_json::Map<String, Value>> {
        let stored: Option<String> = self.read(|db| {
            Ok(db.opt("SELECT fields FROM profiles WHERE user_id = $1", &[&user_id])?.and_then(|r| r.get(0)))
        })?;
        Ok(profile_fields(stored.as_deref()))
    }

    fn set_custom_profile_field(
        &self,
        user_id: &str,
        field: &str,
        value: Option<&Value>,
        max_bytes: usize,
    ) -> Result<bool> {
        self.write(|tx| {
            let row = tx.opt("SELECT displayname, avatar_url, fields FROM profiles WHERE user_id = $1", &[&user_id])?;
            let (displayname, avatar_url, stored): (Option<String>, Option<String>, Option<String>) =
                row.map(|r| (r.get(0), r.get(1), r.get(2))).unwrap_or_default();
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
                "INSERT INTO profiles (user_id, fields) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO UPDATE SET fields = excluded.fields",
                &[&user_id, &text],
            )?;
            Ok(true)
        })
    }

    fn count_users(&self) -> Result<i64> {
        self.read(|db| Ok(db.one("SELECT count(*) FROM users", &[])?.get(0)))
    }
}

fn insert_access_token(tx: &mut WriteTx<'_>, t: &NewAccessToken<'_>) -> Result<()> {
    tx.exec(
        "INSERT INTO access_tokens (token, user_id, device_id, valid_until_ms, refresh_token_id)
         VALUES ($1, $2, $3, $4, $5)",
        &[&t.token, &t.user_id, &t.device_id, &t.valid_until_ms, &t.refresh_token_id],
    )?;
    Ok(())
}

fn insert_refresh_token(tx: &mut WriteTx<'_>, t: &NewRefreshToken<'_>) -> Result<i64> {
    Ok(tx
        .one(
            "INSERT INTO refresh_tokens (token, user_id, device_id, expiry_ts, ultimate_session_expiry_ts)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[&t.token, &t.user_id, &t.device_id, &t.expiry_ts, &t.ultimate_session_expiry_ts],
        )?
        .get(0))
}

fn threepid_session_row(r: &postgres::Row) -> ThreepidSessionRow {
    ThreepidSessionRow {
        session_id: r.get(0),
        medium: r.get(1),
        address: r.get(2),
        client_secret: r.get(3),
        last_send_attempt: r.get(4),
        validated_at: r.get(5),
    }
}

const VALIDITY_COLUMNS: &str = "user_id, expiration_ts_ms, email_sent, renewal_token, token_used_ts_ms";

fn validity_from_row(r: &Row) -> AccountValidity {
    AccountValidity {
        user_id: r.get(0),
        expiration_ts: r.get(1),
        email_sent: r.get(2),
        renewal_token: r.get(3),
        token_used_ts: r.get(4),
    }
}

impl PostgresStore {
    fn account_validity_where(&self, condition: &str, value: &str) -> Result<Option<AccountValidity>> {
        self.read(|db| {
            Ok(db
                .opt(&format!("SELECT {VALIDITY_COLUMNS} FROM account_validity WHERE {condition}"), &[&value])?
                .map(|r| validity_from_row(&r)))
        })
    }
}
