//! The admin API's federation destinations (`/_synapse/admin/v1/federation/destinations`):
//! the servers this one shares rooms or queued traffic with, their delivery state and rooms,
//! and resetting a destination's backoff.
//!
//! Synapse keeps delivery state in its `destinations` table; Myelin's is kept in memory by the
//! process that sends to the destination (see `sender`), so in a deployment of several
//! processes these endpoints should be routed to the federation sender.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::sender::RetryTimings;
use crate::admin::{forwards, paging};
use crate::error::ErrorKind;
use crate::{Error, Homeserver, Requester, Result};

/// `GET /_synapse/admin/v1/federation/destinations`'s parameters, as given.
#[derive(Debug, Clone, Default)]
pub struct DestinationListParams {
    /// `from` (default 0).
    pub from: Option<i64>,
    /// `limit` (default 100).
    pub limit: Option<i64>,
    /// `destination`: a part of the server name.
    pub destination: Option<String>,
    /// `order_by` (default `destination`).
    pub order_by: Option<String>,
    /// `dir`: `f` (default) or `b`.
    pub dir: Option<String>,
}

fn destination_json(name: &str, t: &RetryTimings) -> Value {
    json!({
        "destination": name,
        "retry_last_ts": t.retry_last_ts,
        "retry_interval": t.retry_interval,
        "failure_ts": t.failure_ts,
        "last_successful_stream_ordering": t.last_successful_stream_ordering,
    })
}

/// A page of `items` with Synapse's `total` and `next_token`.
fn paged(key: &str, items: Vec<Value>, from: i64, limit: i64) -> Value {
    let (from, limit) = (from as usize, limit as usize);
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(from).take(limit).collect();
    let mut out = json!({ key: page, "total": total });
    if from.saturating_add(limit) < total {
        out["next_token"] = json!((from + out[key].as_array().map_or(0, Vec::len)).to_string());
    }
    out
}

impl Homeserver {
    /// Every server this one shares a room with, has traffic queued for or has a sending task
    /// for, with its delivery state, and the rooms shared (with their newest stream position).
    async fn known_destinations(&self) -> Result<BTreeMap<String, (RetryTimings, BTreeSet<String>)>> {
        let mut known: BTreeMap<String, (RetryTimings, BTreeSet<String>)> = BTreeMap::new();
        for (name, timings) in self.destination_timings() {
            known.entry(name).or_default().0 = timings;
        }
        for name in self.db(|s| s.outbox_destinations()).await? {
            known.entry(name).or_default();
        }
        // One query over current memberships, rather than loading every room's state.
        for (room, server) in self.db(|s| s.joined_servers_by_room()).await? {
            known.entry(server).or_default().1.insert(room);
        }
        known.remove(self.server_name());
        Ok(known)
    }

    /// `GET /_synapse/admin/v1/federation/destinations`.
    pub async fn admin_list_destinations(&self, requester: &Requester, params: DestinationListParams) -> Result<Value> {
        self.require_admin(requester)?;
        let (from, limit) = paging(params.from, params.limit)?;
        let backwards = !forwards(params.dir.as_deref())?;
        let order_by = params.order_by.unwrap_or_else(|| "destination".into());
        let mut listed: Vec<(String, RetryTimings)> = self
            .known_destinations()
            .await?
            .into_iter()
            .filter(|(name, _)| params.destination.as_ref().is_none_or(|part| name.contains(part.as_str())))
            .map(|(name, (timings, _))| (name, timings))
            .collect();
        match order_by.as_str() {
            "destination" => {}
            "retry_last_ts" => listed.sort_by_key(|(_, t)| t.retry_last_ts),
            "retry_interval" => listed.sort_by_key(|(_, t)| t.retry_interval),
            "failure_ts" => listed.sort_by_key(|(_, t)| t.failure_ts),
            "last_successful_stream_ordering" => listed.sort_by_key(|(_, t)| t.last_successful_stream_ordering),
            other => {
                return Err(Error::invalid_param(format!(
                    "Query parameter \"order_by\" must be one of [\"destination\", \"retry_last_ts\", \"retry_interval\", \"failure_ts\", \"last_successful_stream_ordering\"], not {other:?}"
                )));
            }
        }
        if backwards {
            listed.reverse();
        }
        let items = listed.iter().map(|(name, t)| destination_json(name, t)).collect();
        Ok(paged("destinations", items, from, limit))
    }

    /// `GET /_synapse/admin/v1/federation/destinations/{destination}`.
    pub async fn admin_destination(&self, requester: &Requester, destination: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let known = self.known_destinations().await?;
        let (timings, _) = known.get(destination).ok_or_else(|| Error::not_found("Unknown destination"))?;
        Ok(destination_json(destination, timings))
    }

    /// `GET /_synapse/admin/v1/federation/destinations/{destination}/rooms`: the rooms shared
    /// with it, each with its newest event's stream position.
    pub async fn admin_destination_rooms(
        &self,
        requester: &Requester,
        destination: &str,
        from: Option<i64>,
        limit: Option<i64>,
        dir: Option<&str>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let (from, limit) = paging(from, limit)?;
        let backwards = !forwards(dir)?;
        let known = self.known_destinations().await?;
        let (_, rooms) = known.get(destination).ok_or_else(|| Error::not_found("Unknown destination"))?;
        let mut rooms: Vec<String> = rooms.iter().cloned().collect();
        if backwards {
            rooms.reverse();
        }
        let lookup = rooms.clone();
        let positions: BTreeMap<String, i64> =
            self.db(move |s| s.last_event_positions(&lookup, &[], i64::MAX)).await?.into_iter().collect();
        let items = rooms
            .into_iter()
            .map(|room| {
                let position = positions.get(&room).copied().unwrap_or(0);
                json!({"room_id": room, "stream_ordering": position})
            })
            .collect();
        Ok(paged("rooms", items, from, limit))
    }

    /// `POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection`: ends
    /// the destination's backoff and sends its backlog now.
    pub async fn admin_reset_destination(&self, requester: &Requester, destination: &str) -> Result<Value> {
        self.require_admin(requester)?;
        if !self.known_destinations().await?.contains_key(destination) {
            return Err(Error::not_found("Unknown destination"));
        }
        if !self.reset_destination(destination) {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "The retry timing does not need to be reset for this destination.",
            ));
        }
        crate::admin::audit!(requester, "reset federation connection", destination);
        Ok(json!({}))
    }
}
