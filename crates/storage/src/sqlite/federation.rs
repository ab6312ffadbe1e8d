//! Remote keys, the outbox and inbound transactions (`FederationStore`).

use super::*;

impl FederationStore for SqliteStore {
    fn server_keys(&self, server_name: &str) -> Result<Vec<(String, String, i64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT key_id, public_key, valid_until_ts FROM server_keys WHERE server_name = ?1")
            .map_err(backend)?;
        let rows = stmt.query_map([server_name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn server_key_response(&self, server_name: &str) -> Result<Option<(String, i64)>> {
        self.reader()
            .row(
                "SELECT response, valid_until_ts FROM server_key_responses WHERE server_name = ?1",
                [server_name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)
    }

    fn store_server_keys(
        &self,
        server_name: &str,
        keys: &[(String, String, i64)],
        response: (&str, i64),
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.exec(
            "INSERT OR REPLACE INTO server_key_responses (server_name, response, valid_until_ts) VALUES (?1, ?2, ?3)",
            params![server_name, response.0, response.1],
        )
        .map_err(backend)?;
        for (key_id, key, valid_until) in keys {
            tx.exec(
                "INSERT OR REPLACE INTO server_keys (server_name, key_id, public_key, valid_until_ts)
                 VALUES (?1, ?2, ?3, ?4)",
                params![server_name, key_id, key, valid_until],
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn queue_edus(&self, edus: &[(String, String)]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        for (destination, edu) in edus {
            tx.exec(
                "INSERT INTO federation_outbox (destination, kind, body) VALUES (?1, 'edu', ?2)",
                params![destination, edu],
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn outbox(&self, destination: &str, limit: usize) -> Result<Vec<OutboxRow>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, kind, body FROM (
                   SELECT id, kind, body FROM federation_outbox WHERE destination = ?1 AND kind = 'pdu'
                   ORDER BY id LIMIT ?2)
                 UNION ALL
                 SELECT id, kind, body FROM (
                   SELECT id, kind, body FROM federation_outbox WHERE destination = ?1 AND kind = 'edu'
                   ORDER BY id LIMIT ?2)
                 ORDER BY id",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![destination, limit as i64], |r| {
                Ok(OutboxRow { id: r.get(0)?, kind: r.get(1)?, body: r.get(2)? })
            })
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn outbox_sent(&self, destination: &str, ids: &[i64]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        for id in ids {
            tx.exec("DELETE FROM federation_outbox WHERE destination = ?1 AND id = ?2", params![destination, id])
                .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn outbox_destinations(&self) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT DISTINCT destination FROM federation_outbox").map_err(backend)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn note_device_list_change(&self, user_id: &str) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let pos = record_device_change(&tx, user_id)?;
        tx.commit().map_err(backend)?;
        Ok(pos)
    }

    fn persist_outliers(&self, events: &[OutlierEvent]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        // Outliers take negative stream positions: every timeline and sync query reads
        // positions above a token (never below zero), so they never show there.
        let mut next = lowest_free_position(&tx)?;
        for ev in events {
            if insert_fetched_event(&tx, ev, None, next)? > 0 {
                next -= 1;
            }
        }
        tx.commit().map_err(backend)
    }

    fn persist_backfilled(&self, room_id: &str, state: &[StateEntry], events: &[OutlierEvent]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let group =
            super::rooms::write_state_group(&tx, room_id, &StateChange::New { prev: None, delta: state.to_vec() })?;
        let mut next = lowest_free_position(&tx)?;
        for ev in events {
            let stored: Option<Option<i64>> = tx
                .row("SELECT state_group FROM events WHERE event_id = ?1", [&ev.event_id], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            match stored {
                Some(Some(_)) => continue,
                Some(None) => {
                    tx.exec(
                        "UPDATE events SET state_group = ?2, stream_ordering = ?3 WHERE event_id = ?1",
                        params![ev.event_id, group, next],
                    )
                    .map_err(backend)?;
                }
                None => {
                    insert_fetched_event(&tx, ev, Some(group), next)?;
                }
            }
            next -= 1;
        }
        tx.commit().map_err(backend)
    }
}

/// The next stream position down, below every stored one and below zero (outliers and
/// backfilled events live there).
fn lowest_free_position(tx: &rusqlite::Connection) -> Result<i64> {
    tx.row("SELECT min(coalesce(min(stream_ordering), 0), 0) - 1 FROM events", [], |r| r.get(0)).map_err(backend)
}

/// An event fetched from another server, at `stream` with `state_group` (none for an outlier);
/// one already stored is left alone. Returns the rows inserted.
fn insert_fetched_event(
    tx: &rusqlite::Connection,
    ev: &OutlierEvent,
    state_group: Option<i64>,
    stream: i64,
) -> Result<usize> {
    tx.exec(
        "INSERT OR IGNORE INTO events (event_id, room_id, type, state_key, sender, membership, json,
                                       state_group, rejected, soft_failed, stream_ordering)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10)",
        params![
            ev.event_id,
            ev.room_id,
            ev.event_type,
            ev.state_key,
            ev.sender,
            ev.membership,
            ev.json,
            state_group,
            ev.rejected,
            stream
        ],
    )
    .map_err(backend)
}
