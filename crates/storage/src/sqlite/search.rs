//! Full-text search over FTS5 (`SearchStore`).

use super::*;

impl SearchStore for SqliteStore {
    fn search_events(
        &self,
        rooms: &[String],
        words: &[String],
        keys: &[String],
        newest_first: bool,
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<SearchHit>)> {
        if words.is_empty() || rooms.is_empty() {
            return Ok((0, Vec::new()));
        }
        // Each word quoted (so FTS syntax in user input is literal) and prefix-matched.
        let query = words.iter().map(|w| format!("\"{}\"*", w.replace('"', "\"\""))).collect::<Vec<_>>().join(" ");
        let rooms_json = serde_json::to_string(rooms).map_err(|e| StorageError::Backend(e.to_string()))?;
        let keys_json = serde_json::to_string(keys).map_err(|e| StorageError::Backend(e.to_string()))?;
        // What was sent a moment ago is found too: the backlog first.
        index_search_backlog(&self.conn())?;
        let filter = "event_search MATCH ?1
             AND room_id IN (SELECT value FROM json_each(?2)) AND key IN (SELECT value FROM json_each(?3))";
        let conn = self.conn();
        let count: i64 = conn
            .row(
                &format!("SELECT count(*) FROM event_search WHERE {filter}"),
                params![query, rooms_json, keys_json],
                |r| r.get(0),
            )
            .map_err(backend)?;
        let order = if newest_first { "stream_ordering DESC" } else { "bm25(event_search), stream_ordering DESC" };
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT event_id, room_id, -bm25(event_search) FROM event_search WHERE {filter}
                 ORDER BY {order} LIMIT ?4 OFFSET ?5"
            ))
            .map_err(backend)?;
        let hits = stmt
            .query_map(params![query, rooms_json, keys_json, limit as i64, offset as i64], |r| {
                Ok(SearchHit { event_id: r.get(0)?, room_id: r.get(1)?, rank: r.get(2)? })
            })
            .and_then(|rows| rows.collect())
            .map_err(backend)?;
        Ok((count as usize, hits))
    }
}
