//! Account data, tags and filters (`ClientDataStore`).

use super::*;

impl ClientDataStore for SqliteStore {
    fn set_account_data(&self, user_id: &str, room_id: &str, data_type: &str, content: &Value) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let pos = next_stream_position(&tx)?;
        tx.exec(
            "INSERT OR REPLACE INTO account_data (user_id, room_id, type, content, stream_ordering)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![user_id, room_id, data_type, content.to_string(), pos],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(pos)
    }

    fn get_account_data(&self, user_id: &str, room_id: &str, data_type: &str) -> Result<Option<Value>> {
        let s: Option<String> = self
            .conn()
            .row(
                "SELECT content FROM account_data WHERE user_id = ?1 AND room_id = ?2 AND type = ?3",
                params![user_id, room_id, data_type],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        Ok(s.and_then(|s| serde_json::from_str(&s).ok()))
    }

    fn account_data_since(&self, user_id: &str, from: i64, to: i64) -> Result<Vec<(String, String, Value)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT room_id, type, content FROM account_data WHERE user_id = ?1
                 AND stream_ordering > ?2 AND stream_ordering <= ?3 ORDER BY stream_ordering",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![user_id, from, to], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (room, t, c) = row.map_err(backend)?;
            out.push((room, t, serde_json::from_str(&c).unwrap_or(Value::Null)));
        }
        Ok(out)
    }

    fn create_filter(&self, user_id: &str, filter: &Value) -> Result<i64> {
        self.conn()
            .row(
                "INSERT INTO filters (user_id, filter_id, filter_json)
                 SELECT ?1, coalesce(max(filter_id) + 1, 0), ?2 FROM filters WHERE user_id = ?1
                 RETURNING filter_id",
                params![user_id, filter.to_string()],
                |r| r.get(0),
            )
            .map_err(backend)
    }

    fn import_filter(&self, user_id: &str, filter_id: i64, filter: &Value) -> Result<()> {
        self.conn()
            .exec(
                "INSERT INTO filters (user_id, filter_id, filter_json) VALUES (?1, ?2, ?3)",
                params![user_id, filter_id, filter.to_string()],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn get_filter(&self, user_id: &str, filter_id: i64) -> Result<Option<Value>> {
        let s: Option<String> = self
            .conn()
            .row(
                "SELECT filter_json FROM filters WHERE user_id = ?1 AND filter_id = ?2",
                params![user_id, filter_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        Ok(s.and_then(|s| serde_json::from_str(&s).ok()))
    }
}
