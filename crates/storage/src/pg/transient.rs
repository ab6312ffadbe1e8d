//! UIA sessions, nonces, OpenID tokens (`TransientStore`) on PostgreSQL.

use super::*;

impl TransientStore for PostgresStore {
    fn put_transient(&self, kind: &str, key: &str, value: &str, expires_ts: i64) -> Result<()> {
        let now = crate::now_ms();
        self.write(|tx| {
            tx.exec("DELETE FROM transient WHERE expires_ts < $1", &[&now])?;
            tx.exec(
                "INSERT INTO transient (kind, key, value, expires_ts) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, expires_ts = excluded.expires_ts",
                &[&kind, &key, &value, &expires_ts],
            )?;
            Ok(())
        })
    }

    fn get_transient(&self, kind: &str, key: &str, now: i64) -> Result<Option<String>> {
        self.read(|db| {
            Ok(db
                .opt(
                    "SELECT value FROM transient WHERE kind = $1 AND key = $2 AND expires_ts >= $3",
                    &[&kind, &key, &now],
                )?
                .map(|r| r.get(0)))
        })
    }

    fn take_transient(&self, kind: &str, key: &str, now: i64) -> Result<Option<String>> {
        // One DELETE: of two processes taking the same record, only one gets the row back.
        self.write(|tx| {
            let taken = tx.opt(
                "DELETE FROM transient WHERE kind = $1 AND key = $2 RETURNING value, expires_ts",
                &[&kind, &key],
            )?;
            Ok(taken.filter(|r| r.get::<_, i64>(1) >= now).map(|r| r.get(0)))
        })
    }

    fn transient_entries(&self, kind: &str, now: i64) -> Result<Vec<(String, String)>> {
        let rows = self.read(|db| {
            db.rows(
                "SELECT key, value FROM transient WHERE kind = $1 AND expires_ts >= $2 ORDER BY key",
                &[&kind, &now],
            )
        })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
