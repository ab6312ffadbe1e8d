//! Account data, tags and filters (`ClientDataStore`).

use super::*;

impl ClientDataStore for PostgresStore {
    fn set_account_data(&self, user_id: &str, room_id: &str, data_type: &str, content: &Value) -> Result<i64> {
        self.write(|tx| {
            let pos = next_stream_position(tx)?;
            tx.exec(
                "INSERT INTO account_data (user_id, room_id, type, content, stream_ordering)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (user_id, room_id, type) DO UPDATE
                 SET content = excluded.content, stream_ordering = excluded.stream_ordering",
                &[&user_id, &room_id, &data_type, &content.to_string(), &pos],
            )?;
            Ok(pos)
        })
    }

    fn get_account_data(&self, user_id: &str, room_id: &str, data_type: &str) -> Result<Option<Value>> {
        let row = self.read(|db| {
            db.opt(
                "SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3",
                &[&user_id, &room_id, &data_type],
            )
        })?;
        Ok(row.and_then(|r| serde_json::from_str(r.get(0)).ok()))
    }

    fn account_data_since(&self, user_id: &str, from: i64, to: i64) -> Result<Vec<(String, String, Value)>> {
        let rows = self.read(|db| {
            db.rows(
                "SELECT room_id, type, content FROM account_data WHERE user_id = $1
                 AND stream_ordering > $2 AND stream_ordering <= $3 ORDER BY stream_ordering",
                &[&user_id, &from, &to],
            )
        })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), serde_json::from_str(r.get(2)).unwrap_or(Value::Null))).collect())
    }

    fn create_filter(&self, user_id: &str, filter: &Value) -> Result<i64> {
        self.write(|tx| {
            Ok(tx
                .one(
                    "INSERT INTO filters (user_id, filter_id, filter_json)
                     SELECT $1, coalesce(max(filter_id) + 1, 0), $2 FROM filters WHERE user_id = $1
                     RETURNING filter_id",
                    &[&user_id, &filter.to_string()],
                )?
                .get(0))
        })
    }

    fn import_filter(&self, user_id: &str, filter_id: i64, filter: &Value) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO filters (user_id, filter_id, filter_json) VALUES ($1, $2, $3)",
                &[&user_id, &filter_id, &filter.to_string()],
            )?;
            Ok(())
        })
    }

    fn get_filter(&self, user_id: &str, filter_id: i64) -> Result<Option<Value>> {
        let row = self.read(|db| {
            db.opt("SELECT filter_json FROM filters WHERE user_id = $1 AND filter_id = $2", &[&user_id, &filter_id])
        })?;
        Ok(row.and_then(|r| serde_json::from_str(r.get(0)).ok()))
    }
}
