//! Remote keys, the outbox and outliers (`FederationStore`).

use std::collections::HashSet;

use super::keys::record_device_change;
use super::*;

impl FederationStore for PostgresStore {
    fn server_keys(&self, server_name: &str) -> Result<Vec<(String, String, i64)>> {
        self.read(|db| {
            // By key ID, the order SQLite's primary-key index gives.
            let rows = db.rows(
                "SELECT key_id, public_key, valid_until_ts FROM server_keys WHERE server_name = $1 ORDER BY key_id",
                &[&server_name],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
        })
    }

    fn server_key_response(&self, server_name: &str) -> Result<Option<(String, i64)>> {
        self.read(|db| {
            Ok(db
                .opt(
                    "SELECT response, valid_until_ts FROM server_key_responses WHERE server_name = $1",
                    &[&server_name],
                )?
                .map(|r| (r.get(0), r.get(1))))
        })
    }

    fn store_server_keys(
        &self,
        server_name: &str,
        keys: &[(String, String, i64)],
        response: (&str, i64),
    ) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO server_key_responses (server_name, response, valid_until_ts) VALUES ($1, $2, $3)
                 ON CONFLICT (server_name) DO UPDATE
                 SET response = EXCLUDED.response, valid_until_ts = EXCLUDED.valid_until_ts",
                &[&server_name, &response.0, &response.1],
            )?;
            // A server has a handful of keys: row by row, a key ID given twice keeps the last.
            for (key_id, key, valid_until) in keys {
                tx.exec(
                    "INSERT INTO server_keys (server_name, key_id, public_key, valid_until_ts) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (server_name, key_id) DO UPDATE
                     SET public_key = EXCLUDED.public_key, valid_until_ts = EXCLUDED.valid_until_ts",
                    &[&server_name, key_id, key, valid_until],
                )?;
            }
            Ok(())
        })
    }

    fn queue_edus(&self, edus: &[(String, String)]) -> Result<()> {
        if edus.is_empty() {
            return Ok(());
        }
        let destinations: Vec<&str> = edus.iter().map(|(d, _)| d.as_str()).collect();
        let bodies: Vec<&str> = edus.iter().map(|(_, b)| b.as_str()).collect();
        self.write(|tx| {
            // One statement for the lot (a presence change can reach many servers), inserted in
            // the order given so that the IDs, the queue order, follow it.
            tx.exec(
                "INSERT INTO federation_outbox (destination, kind, body)
                 SELECT e.destination, 'edu', e.body
                 FROM unnest($1::TEXT[], $2::TEXT[]) WITH ORDINALITY AS e (destination, body, n)
                 ORDER BY e.n",
                &[&destinations, &bodies],
            )?;
            Ok(())
        })
    }

    fn outbox(&self, destination: &str, limit: usize) -> Result<Vec<OutboxRow>> {
        self.read(|db| {
            // Each kind is limited on its own, so that queued EDUs cannot hold PDUs back.
            let rows = db.rows(
                "(SELECT id, kind, body FROM federation_outbox WHERE destination = $1 AND kind = 'pdu'
                  ORDER BY id LIMIT $2)
                 UNION ALL
                 (SELECT id, kind, body FROM federation_outbox WHERE destination = $1 AND kind = 'edu'
                  ORDER BY id LIMIT $2)
                 ORDER BY id",
                &[&destination, &int(limit)],
            )?;
            Ok(rows.iter().map(|r| OutboxRow { id: r.get(0), kind: r.get(1), body: r.get(2) }).collect())
        })
    }

    fn outbox_sent(&self, destination: &str, ids: &[i64]) -> Result<()> {
        self.write(|tx| {
            tx.exec("DELETE FROM federation_outbox WHERE destination = $1 AND id = ANY($2)", &[&destination, &ids])?;
            Ok(())
        })
    }

    fn outbox_destinations(&self) -> Result<Vec<String>> {
        self.read(|db| {
            let rows = db.rows("SELECT DISTINCT destination FROM federation_outbox ORDER BY destination", &[])?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn note_device_list_change(&self, user_id: &str) -> Result<i64> {
        self.write(|tx| record_device_change(tx, user_id))
    }

    fn persist_outliers(&self, events: &[OutlierEvent]) -> Result<()> {
        // An event given twice is stored once, from its first appearance.
        let mut seen = HashSet::with_capacity(events.len());
        let events: Vec<&OutlierEvent> = events.iter().filter(|ev| seen.insert(ev.event_id.as_str())).collect();
        if events.is_empty() {
            return Ok(());
        }
        let event_ids: Vec<&str> = events.iter().map(|ev| ev.event_id.as_str()).collect();
        let room_ids: Vec<&str> = events.iter().map(|ev| ev.room_id.as_str()).collect();
        let types: Vec<&str> = events.iter().map(|ev| ev.event_type.as_str()).collect();
        let state_keys: Vec<Option<&str>> = events.iter().map(|ev| ev.state_key.as_deref()).collect();
        let senders: Vec<&str> = events.iter().map(|ev| ev.sender.as_str()).collect();
        let memberships: Vec<Option<&str>> = events.iter().map(|ev| ev.membership.as_deref()).collect();
        let jsons: Vec<&str> = events.iter().map(|ev| ev.json.as_str()).collect();
        let rejected: Vec<bool> = events.iter().map(|ev| ev.rejected).collect();
        self.write(|tx| {
            // Outliers take negative stream positions: every timeline and sync query reads
            // positions above a token (never below zero), so they never show there. Those not
            // stored yet take the next ones down, in the order given; one statement for them
            // all, since a join can bring tens of thousands.
            tx.exec(
                "INSERT INTO events (event_id, room_id, type, state_key, sender, membership, json,
                                     state_group, rejected, soft_failed, stream_ordering)
                 SELECT e.event_id, e.room_id, e.type, e.state_key, e.sender, e.membership, e.json,
                        NULL, e.rejected, FALSE,
                        (SELECT LEAST(coalesce(min(stream_ordering), 0), 0) FROM events)
                          - row_number() OVER (ORDER BY e.n)
                 FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[],
                             $8::BOOLEAN[])
                      WITH ORDINALITY AS e (event_id, room_id, type, state_key, sender, membership, json, rejected, n)
                 WHERE NOT EXISTS (SELECT 1 FROM events WHERE events.event_id = e.event_id)
                 ON CONFLICT DO NOTHING",
                &[&event_ids, &room_ids, &types, &state_keys, &senders, &memberships, &jsons, &rejected],
            )?;
            Ok(())
        })
    }

    fn persist_backfilled(&self, room_id: &str, state: &[StateEntry], events: &[OutlierEvent]) -> Result<()> {
        self.write(|tx| {
            let group =
                super::rooms::write_state_group(tx, room_id, &StateChange::New { prev: None, delta: state.to_vec() })?;
            let mut next: i64 =
                tx.one("SELECT LEAST(coalesce(min(stream_ordering), 0), 0) - 1 FROM events", &[])?.get(0);
            for ev in events {
                let stored = tx.opt("SELECT state_group FROM events WHERE event_id = $1", &[&ev.event_id])?;
                match stored.map(|r| r.get::<_, Option<i64>>(0)) {
                    Some(Some(_)) => continue,
                    Some(None) => {
                        tx.exec(
                            "UPDATE events SET state_group = $2, stream_ordering = $3 WHERE event_id = $1",
                            &[&ev.event_id, &group, &next],
                        )?;
                    }
                    None => {
                        tx.exec(
                            "INSERT INTO events (event_id, room_id, type, state_key, sender, membership, json,
                                                 state_group, rejected, soft_failed, stream_ordering)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, FALSE, $10)",
                            &[
                                &ev.event_id,
                                &ev.room_id,
                                &ev.event_type,
                                &ev.state_key,
                                &ev.sender,
                                &ev.membership,
                                &ev.json,
                                &group,
                                &ev.rejected,
                                &next,
                            ],
                        )?;
                    }
                }
                next -= 1;
            }
            Ok(())
        })
    }
}
