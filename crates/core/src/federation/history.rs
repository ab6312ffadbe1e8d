//! A room's history for other servers (`/state`, `/state_ids`, `/backfill`,
//! `/get_missing_events`, `/publicRooms`), and, receiving, filling a gap before an event whose
//! parents are unknown (`/get_missing_events` asked of the server that sent it).

use std::collections::{HashSet, VecDeque};

use ruma::{OwnedEventId, OwnedRoomId, RoomId};
use serde_json::{Value, json};

use myelin_module_api::federation::DeliveryMethod;

use super::remote_keys::REMOTE_TIMEOUT;
use crate::events::Pdu;
use crate::server::{now_ms, url_encode};
use crate::{Error, Homeserver, Result};

/// The most events one `/backfill` or `/get_missing_events` answer holds.
const MAX_HISTORY_EVENTS: usize = 100;
/// How many missing events are asked for before an event with unknown parents.
const MISSING_EVENTS_ASKED: usize = 20;

fn room(room_id: &str) -> Result<OwnedRoomId> {
    OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))
}

fn event_id(id: &str) -> Result<OwnedEventId> {
    OwnedEventId::try_from(id).map_err(|_| Error::invalid_param("Invalid event ID"))
}

impl Homeserver {
    /// Fails unless `origin` has a member joined to the room (the history is theirs to see).
    async fn require_server_in_room(&self, origin: &str, room_id: &RoomId) -> Result<()> {
        {
            let guard = self.room_lock(room_id).await?;
            match guard.as_ref() {
                None => return Err(Error::not_found("Unknown room")),
                Some(cache) if cache.destinations().iter().any(|d| d == origin) => {}
                Some(_) => return Err(Error::forbidden("Your server is not in the room")),
            }
        }
        self.check_server_acl(origin, room_id).await
    }

    /// A stored event of the room, parsed.
    async fn room_event(&self, room_id: &RoomId, id: &OwnedEventId) -> Result<Pdu> {
        let i = id.to_string();
        let row = self.db(move |s| s.get_event(&i)).await?.ok_or_else(|| Error::not_found("Unknown event"))?;
        let pdu = Pdu::from_json_str(&row.json)?;
        if pdu.room_id != *room_id {
            return Err(Error::not_found("Unknown event"));
        }
        Ok(pdu)
    }

    /// The state before an event and the auth chain of it: `(state IDs, auth chain IDs)`. An
    /// event rejected by the auth rules, or one stored without state (an outlier), has no state
    /// to give: 404, as Synapse.
    async fn state_at(&self, room_id: &RoomId, id: &OwnedEventId) -> Result<(Vec<OwnedEventId>, Vec<OwnedEventId>)> {
        let i = id.to_string();
        let row = self.db(move |s| s.get_event(&i)).await?.ok_or_else(|| Error::not_found("Unknown event"))?;
        if row.rejected || row.state_group.is_none() {
            return Err(Error::not_found("Unknown event"));
        }
        let pdu = self.room_event(room_id, id).await?;
        let rules = {
            let guard = self.room_lock(room_id).await?;
            guard.as_ref().map(|c| c.rules.clone()).ok_or_else(|| Error::not_found("Unknown room"))?
        };
        // A message's state group is the state before it too (its parents may be outliers,
        // when it was stored across a gap); a state event's is the state after it.
        let state_ids: Vec<OwnedEventId> = match (pdu.state_key.is_none(), row.state_group) {
            (true, Some(group)) => self
                .db(move |s| s.get_state_group(group))
                .await?
                .into_iter()
                .filter_map(|e| OwnedEventId::try_from(e.event_id).ok())
                .collect(),
            _ => self
                .state_after_events(&rules, &pdu.prev_events)
                .await?
                .ok_or_else(|| Error::not_found("The state at that event is not known here"))?
                .into_values()
                .collect(),
        };
        let chain = self.auth_chain_of(state_ids.clone()).await?;
        Ok((state_ids, chain))
    }

    /// `GET /_matrix/federation/v1/state_ids/{roomId}?event_id=`.
    pub async fn federation_state_ids(&self, origin: &str, room_id: &str, event: &str) -> Result<Value> {
        let room_id = room(room_id)?;
        self.require_server_in_room(origin, &room_id).await?;
        let (state, chain) = self.state_at(&room_id, &event_id(event)?).await?;
        Ok(json!({"pdu_ids": state, "auth_chain_ids": chain}))
    }

    /// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`: the event's auth chain.
    pub async fn federation_event_auth(&self, origin: &str, room_id: &str, event: &str) -> Result<Value> {
        let room_id = room(room_id)?;
        self.require_server_in_room(origin, &room_id).await?;
        let pdu = self.room_event(&room_id, &event_id(event)?).await?;
        let chain: Vec<OwnedEventId> = self.load_auth_closure(pdu.auth_events.clone()).await?.into_keys().collect();
        self.notify_delivered_ids(origin, &chain, DeliveryMethod::EventAuth).await;
        Ok(json!({"auth_chain": self.wire_pdus(chain).await?}))
    }

    /// `GET /_matrix/federation/v1/state/{roomId}?event_id=`.
    pub async fn federation_state(&self, origin: &str, room_id: &str, event: &str) -> Result<Value> {
        let room_id = room(room_id)?;
        self.require_server_in_room(origin, &room_id).await?;
        let (state, chain) = self.state_at(&room_id, &event_id(event)?).await?;
        let delivered: Vec<OwnedEventId> = state.iter().chain(&chain).cloned().collect();
        self.notify_delivered_ids(origin, &delivered, DeliveryMethod::State).await;
        Ok(json!({"pdus": self.wire_pdus(state).await?, "auth_chain": self.wire_pdus(chain).await?}))
    }

    /// Walks parents from `from` (not included unless `include_start`), newest first, stopping
    /// at `stop` and after `limit` events.
    async fn walk_back(
        &self,
        room_id: &RoomId,
        from: Vec<OwnedEventId>,
        stop: &HashSet<OwnedEventId>,
        limit: usize,
        include_start: bool,
    ) -> Result<Vec<Pdu>> {
        let mut out = Vec::new();
        let mut seen: HashSet<OwnedEventId> = from.iter().cloned().collect();
        let mut queue: VecDeque<(OwnedEventId, bool)> = from.into_iter().map(|e| (e, include_start)).collect();
        while let Some((id, keep)) = queue.pop_front() {
            if out.len() >= limit {
                break;
            }
            let Ok(pdu) = self.room_event(room_id, &id).await else { continue };
            for p in &pdu.prev_events {
                if !stop.contains(p) && seen.insert(p.clone()) {
                    queue.push_back((p.clone(), true));
                }
            }
            if keep {
                out.push(pdu);
            }
        }
        Ok(out)
    }

    /// `GET /_matrix/federation/v1/backfill/{roomId}?v=..&limit=..`: events from `v` back.
    pub async fn federation_backfill(
        &self,
        origin: &str,
        room_id: &str,
        from: &[String],
        limit: usize,
    ) -> Result<Value> {
        let room_id = room(room_id)?;
        self.require_server_in_room(origin, &room_id).await?;
        let from: Vec<OwnedEventId> = from.iter().map(|e| event_id(e)).collect::<Result<_>>()?;
        let events = self.walk_back(&room_id, from, &HashSet::new(), limit.clamp(1, MAX_HISTORY_EVENTS), true).await?;
        let ids = events.into_iter().map(|p| p.event_id).collect();
        let pdus = self.wire_pdus_delivered(origin, ids, DeliveryMethod::Backfill).await?;
        Ok(json!({"origin": self.server_name(), "origin_server_ts": now_ms(), "pdus": pdus}))
    }

    /// `POST /_matrix/federation/v1/get_missing_events/{roomId}`: events before
    /// `latest_events` back to `earliest_events`, oldest first.
    pub async fn federation_missing_events(&self, origin: &str, room_id: &str, body: &Value) -> Result<Value> {
        let room_id = room(room_id)?;
        self.require_server_in_room(origin, &room_id).await?;
        let list = |k: &str| -> Result<Vec<OwnedEventId>> {
            match body.get(k) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => a.iter().map(|e| event_id(e.as_str().unwrap_or_default())).collect(),
                Some(_) => Err(Error::bad_json(format!("{k} must be a list of event IDs"))),
            }
        };
        let (earliest, latest) = (list("earliest_events")?, list("latest_events")?);
        let limit = body["limit"].as_u64().unwrap_or(10) as usize;
        let min_depth = body["min_depth"].as_u64().unwrap_or(0);
        let stop: HashSet<OwnedEventId> = earliest.into_iter().collect();
        let mut events = self.walk_back(&room_id, latest, &stop, limit.clamp(1, MAX_HISTORY_EVENTS), false).await?;
        events.retain(|p| p.depth >= min_depth);
        events.sort_by_key(|p| (p.depth, p.origin_server_ts));
        let ids = events.into_iter().map(|p| p.event_id).collect();
        Ok(json!({"events": self.wire_pdus_delivered(origin, ids, DeliveryMethod::GetMissingEvents).await?}))
    }

    /// Before handling an event whose parents are not all stored: asks `origin` for the
    /// events between the room's forward extremities and it, and handles those first (oldest
    /// first; their own gaps are not filled).
    /// (Boxed as a `Send` trait object: handling an event may fill a gap, which handles
    /// events.)
    pub(crate) fn fill_gap<'a>(
        &'a self,
        origin: &'a str,
        room_id: &'a RoomId,
        event_id: &'a OwnedEventId,
        prev_events: &'a [OwnedEventId],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(self.fill_gap_now(origin, room_id, event_id, prev_events))
    }

    async fn fill_gap_now(
        &self,
        origin: &str,
        room_id: &RoomId,
        event_id: &OwnedEventId,
        prev_events: &[OwnedEventId],
    ) {
        if self.missing_prevs(prev_events).await.unwrap_or_default().is_empty() {
            return;
        }
        let rules = match self.room_lock(room_id).await {
            Ok(guard) => guard.as_ref().map(|c| c.rules.clone()),
            Err(_) => None,
        };
        let earliest: Vec<String> = {
            let r = room_id.to_string();
            self.db(move |s| s.get_forward_extremities(&r)).await.unwrap_or_default()
        };
        let body = json!({
            "earliest_events": earliest,
            "latest_events": [event_id],
            "limit": MISSING_EVENTS_ASKED,
            "min_depth": 0,
        });
        let path = format!("/_matrix/federation/v1/get_missing_events/{}", url_encode(room_id.as_str()));
        let answer = match self
            .federation
            .client
            .request(&self.key, self.server_name(), origin, "POST", &path, Some(&body), REMOTE_TIMEOUT)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(
                    %event_id, origin, error = %e.into_error("get_missing_events"),
                    "could not fetch the events missing before an event"
                );
                return;
            }
        };
        let mut events: Vec<Value> = answer["events"].as_array().cloned().unwrap_or_default();
        events.sort_by_key(|e| e["depth"].as_u64().unwrap_or(0));
        for event in events {
            if event["room_id"].as_str() != Some(room_id.as_str()) {
                continue;
            }
            // The event itself (answers may include it) is handled by its caller.
            if event["event_id"].as_str() == Some(event_id.as_str())
                || rules
                    .as_ref()
                    .is_some_and(|r| super::rooms::identify(&event, r).is_ok_and(|(id, _)| id == *event_id))
            {
                continue;
            }
            if let Err(e) = self.receive_pulled(origin, room_id, &event).await {
                tracing::info!(origin, error = %e, "a missing event was refused");
            }
        }
    }

    /// `GET|POST /_matrix/federation/v1/publicRooms`: this server's room directory.
    pub async fn federation_public_rooms(
        &self,
        limit: Option<usize>,
        since: Option<&str>,
        term: Option<&str>,
    ) -> Result<Value> {
        self.public_rooms(limit, since, term, crate::directory::RoomListScope::Main).await
    }
}
