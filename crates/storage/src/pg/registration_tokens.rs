//! Registration tokens (`RegistrationTokenStore`).

use super::*;

fn token(row: &Row) -> RegistrationToken {
    RegistrationToken {
        token: row.get(0),
        uses_allowed: row.get(1),
        pending: row.get(2),
        completed: row.get(3),
        expiry_time: row.get(4),
    }
}

impl RegistrationTokenStore for PostgresStore {
    fn create_registration_token(&self, t: &RegistrationToken) -> Result<()> {
        // A token that exists is a unique violation, which `backend` reports as a conflict.
        self.write(|tx| {
            tx.exec(
                "INSERT INTO registration_tokens (token, uses_allowed, pending, completed, expiry_time)
                 VALUES ($1, $2, 0, 0, $3)",
                &[&t.token, &t.uses_allowed, &t.expiry_time],
            )?;
            Ok(())
        })
    }

    fn get_registration_token(&self, token_id: &str) -> Result<Option<RegistrationToken>> {
        self.read(|db| {
            let row = db.opt(
                "SELECT token, uses_allowed, pending, completed, expiry_time FROM registration_tokens WHERE token = $1",
                &[&token_id],
            )?;
            Ok(row.as_ref().map(token))
        })
    }

    fn list_registration_tokens(&self) -> Result<Vec<RegistrationToken>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT token, uses_allowed, pending, completed, expiry_time FROM registration_tokens ORDER BY token",
                &[],
            )?;
            Ok(rows.iter().map(token).collect())
        })
    }

    fn set_registration_token_limits(
        &self,
        token: &str,
        uses_allowed: Option<i64>,
        expiry_time: Option<i64>,
    ) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.exec(
                "UPDATE registration_tokens SET uses_allowed = $2, expiry_time = $3 WHERE token = $1",
                &[&token, &uses_allowed, &expiry_time],
            )? > 0)
        })
    }

    fn delete_registration_token(&self, token: &str) -> Result<bool> {
        self.write(|tx| Ok(tx.exec("DELETE FROM registration_tokens WHERE token = $1", &[&token])? > 0))
    }

    fn use_registration_token(&self, token_id: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec("UPDATE registration_tokens SET completed = completed + 1 WHERE token = $1", &[&token_id])?;
            Ok(())
        })
    }
}
