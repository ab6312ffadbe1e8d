//! Registration tokens (`RegistrationTokenStore`).

use super::*;

pub(super) fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RegistrationToken> {
    Ok(RegistrationToken {
        token: r.get(0)?,
        uses_allowed: r.get(1)?,
        pending: r.get(2)?,
        completed: r.get(3)?,
        expiry_time: r.get(4)?,
    })
}

impl RegistrationTokenStore for SqliteStore {
    fn create_registration_token(&self, t: &RegistrationToken) -> Result<()> {
        self.conn()
            .exec(
                "INSERT INTO registration_tokens (token, uses_allowed, pending, completed, expiry_time)
                 VALUES (?1, ?2, 0, 0, ?3)",
                params![t.token, t.uses_allowed, t.expiry_time],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn get_registration_token(&self, token: &str) -> Result<Option<RegistrationToken>> {
        self.reader()
            .row(
                "SELECT token, uses_allowed, pending, completed, expiry_time FROM registration_tokens WHERE token = ?1",
                [token],
                token_from_row,
            )
            .optional()
            .map_err(backend)
    }

    fn list_registration_tokens(&self) -> Result<Vec<RegistrationToken>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT token, uses_allowed, pending, completed, expiry_time FROM registration_tokens ORDER BY token",
            )
            .map_err(backend)?;
        let rows = stmt.query_map([], token_from_row).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn set_registration_token_limits(
        &self,
        token: &str,
        uses_allowed: Option<i64>,
        expiry_time: Option<i64>,
    ) -> Result<bool> {
        let changed = self
            .conn()
            .exec(
                "UPDATE registration_tokens SET uses_allowed = ?2, expiry_time = ?3 WHERE token = ?1",
                params![token, uses_allowed, expiry_time],
            )
            .map_err(backend)?;
        Ok(changed > 0)
    }

    fn delete_registration_token(&self, token: &str) -> Result<bool> {
        Ok(self.conn().exec("DELETE FROM registration_tokens WHERE token = ?1", [token]).map_err(backend)? > 0)
    }

    fn use_registration_token(&self, token: &str) -> Result<()> {
        self.conn()
            .exec("UPDATE registration_tokens SET completed = completed + 1 WHERE token = ?1", [token])
            .map_err(backend)?;
        Ok(())
    }
}
