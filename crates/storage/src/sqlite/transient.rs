//! UIA sessions, nonces, OpenID tokens (`TransientStore`).

use super::*;

impl TransientStore for SqliteStore {
    fn put_transient(&self, kind: &str, key: &str, value: &str, expires_ts: i64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.exec("DELETE FROM transient WHERE expires_ts < ?1", params![now_ms()]).map_err(backend)?;
        tx.exec(
            "INSERT INTO transient (kind, key, value, expires_ts) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, expires_ts = excluded.expires_ts",
            params![kind, key, value, expires_ts],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn get_transient(&self, kind: &str, key: &str, now: i64) -> Result<Option<String>> {
        self.reader()
            .row(
                "SELECT value FROM transient WHERE kind = ?1 AND key = ?2 AND expires_ts >= ?3",
                params![kind, key, now],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
    }

    fn take_transient(&self, kind: &str, key: &str, now: i64) -> Result<Option<String>> {
        let taken: Option<(String, i64)> = self
            .conn()
            .row(
                "DELETE FROM transient WHERE kind = ?1 AND key = ?2 RETURNING value, expires_ts",
                params![kind, key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)?;
        Ok(taken.filter(|(_, expires)| *expires >= now).map(|(value, _)| value))
    }

    fn transient_entries(&self, kind: &str, now: i64) -> Result<Vec<(String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT key, value FROM transient WHERE kind = ?1 AND expires_ts >= ?2 ORDER BY key")
            .map_err(backend)?;
        let rows = stmt.query_map(params![kind, now], |r| Ok((r.get(0)?, r.get(1)?))).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }
}
