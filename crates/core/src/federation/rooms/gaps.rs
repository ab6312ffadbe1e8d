//! Gaps in a room's graph: events whose parents this server has not stored in the timeline.
//!
//! As Synapse's: an event another server *pushes* (`/send`) with unknown parents first has the
//! gap filled from that server (`/get_missing_events`, see `history`); when parents are still
//! unknown after that, it is refused (not stored), since its state could otherwise not be
//! trusted. An event *pulled* while filling the gap may still have unknown parents: the state
//! after each of them is asked of the server (`/state_ids`), the events it names that are not
//! stored are fetched (`/event`, or `/state` when many), checked against their own auth events
//! and stored as outliers, and the state before the event is the resolution of its parents'.

use super::*;
use crate::server::url_encode;

/// Above this many unknown events in a remote state, `/state` is asked for instead of
/// `/event` for each.
const EVENTS_FETCHED_ONE_BY_ONE: usize = 20;
/// How many servers in a room a backfill asks at most, one after another.
const BACKFILL_SERVERS_ASKED: usize = 3;

impl Homeserver {
    /// Remote events, hashed and their signatures checked (on every core, with the signers'
    /// keys fetched first): those that fail, or are for another room, are left out; a
    /// content-hash mismatch keeps the redacted form. Each keeps its `tag`.
    pub(crate) async fn verify_remote_events<T: Send + 'static>(
        &self,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        items: Vec<(Value, T)>,
        what: &str,
    ) -> Result<Vec<(OwnedEventId, Pdu, String, T)>> {
        let hashed = {
            let rules = rules.clone();
            parallel_map(items, move |(value, tag)| identify(&value, &rules).ok().map(|(id, object)| (id, object, tag)))
                .await?
        };
        let hashed: Vec<(OwnedEventId, CanonicalJsonObject, T)> = hashed.into_iter().flatten().collect();
        let mut key_map = ruma::signatures::PublicKeyMap::new();
        let mut servers = std::collections::BTreeSet::new();
        for (_, object, _) in &hashed {
            if let Ok(needed) = ruma::signatures::required_server_signatures_to_verify_event(object, &rules.signatures)
            {
                servers.extend(needed);
            }
        }
        for needed in servers {
            match self.server_verify_keys(needed.as_str(), None).await {
                Ok(keys) => {
                    let set = keys
                        .into_iter()
                        .filter_map(|(id, key)| Some((id, ruma::serde::Base64::parse(&key).ok()?)))
                        .collect();
                    key_map.insert(needed.to_string(), set);
                }
                Err(e) => {
                    tracing::warn!(signer = %needed, error = %e, "{what} is signed by a server whose keys are unknown")
                }
            }
        }
        let (rules, key_map, room) = (rules.clone(), Arc::new(key_map), room_id.to_owned());
        let verified = parallel_map(hashed, move |(id, object, tag)| {
            let object = match ruma::signatures::verify_event(&key_map, &object, &rules) {
                Ok(Verified::All) => object,
                Ok(Verified::Signatures) => ruma::canonical_json::redact(object, &rules.redaction, None).ok()?,
                Err(_) => return None,
            };
            let (json, pdu) = stored_json(&id, &object).ok()?;
            (pdu.room_id == room).then_some((id, pdu, json, tag))
        })
        .await?;
        Ok(verified.into_iter().flatten().collect())
    }

    /// The parents among `prevs` not stored in the room's timeline (unknown, or only an
    /// outlier, which has no state).
    pub(crate) async fn missing_prevs(&self, prevs: &[OwnedEventId]) -> Result<Vec<OwnedEventId>> {
        let ids: Vec<OwnedEventId> = prevs.to_vec();
        self.db(move |s| {
            let mut missing = Vec::new();
            for id in ids {
                if s.get_event(id.as_str())?.is_none_or(|row| row.state_group.is_none()) {
                    missing.push(id);
                }
            }
            Ok(missing)
        })
        .await
    }

    /// The state before a pulled event some of whose parents (`missing`) are not in the
    /// timeline: the known parents' state and, for each missing one, the state after it as
    /// `origin` gives it, resolved into one.
    pub(crate) async fn state_across_gap(
        &self,
        origin: &str,
        room_id: &RoomId,
        rules: &RoomVersionRules,
        prevs: &[OwnedEventId],
        missing: &[OwnedEventId],
    ) -> Result<StateMap> {
        let known: Vec<OwnedEventId> = prevs.iter().filter(|p| !missing.contains(p)).cloned().collect();
        let mut sets = Vec::new();
        if !known.is_empty()
            && let Some(state) = self.state_after_events(rules, &known).await?
        {
            sets.push(state);
        }
        for prev in missing {
            sets.push(self.remote_state_after(origin, room_id, rules, prev).await?);
        }
        match sets.len() {
            1 => Ok(sets.pop().unwrap_or_default()),
            _ => self.resolve_states(rules, sets).await,
        }
    }

    /// The state after `event` (a parent this server lacks) as `origin` gives it: the state
    /// before it from `/state_ids`, the events named there and the parent itself fetched and
    /// stored as outliers, then the parent applied when it is an accepted state event.
    async fn remote_state_after(
        &self,
        origin: &str,
        room_id: &RoomId,
        rules: &RoomVersionRules,
        event: &OwnedEventId,
    ) -> Result<StateMap> {
        let room = url_encode(room_id.as_str());
        let path = format!("/_matrix/federation/v1/state_ids/{room}?event_id={}", url_encode(event.as_str()));
        let answer = self
            .federation
            .client
            .request(&self.key, self.server_name(), origin, "GET", &path, None, REMOTE_TIMEOUT)
            .await
            .map_err(|e| e.into_error(&format!("state_ids via {origin}")))?;
        let ids = |key: &str| -> Result<Vec<OwnedEventId>> {
            let list = answer[key].as_array().ok_or_else(|| Error::bad_json(format!("state_ids has no {key}")))?;
            list.iter()
                .map(|v| v.as_str().and_then(|s| OwnedEventId::try_from(s).ok()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| Error::bad_json(format!("state_ids has a bad {key}")))
        };
        let (state_ids, chain_ids) = (ids("pdu_ids")?, ids("auth_chain_ids")?);
        let mut wanted: Vec<OwnedEventId> = state_ids.iter().chain(&chain_ids).cloned().collect();
        wanted.push(event.clone());
        wanted.sort();
        wanted.dedup();
        let unknown: Vec<OwnedEventId> = {
            let stored = self.load_events(wanted.iter().map(|e| e.to_string()).collect()).await?;
            wanted.into_iter().filter(|e| !stored.contains_key(e)).collect()
        };
        if !unknown.is_empty() {
            let values = self.fetch_remote_events(origin, room_id, event, &unknown).await;
            let verified = self
                .verify_remote_events(rules, room_id, values.into_iter().map(|v| (v, ())).collect(), "a remote state")
                .await?;
            let wanted: HashSet<&OwnedEventId> = unknown.iter().collect();
            let fetched: HashMap<OwnedEventId, (Pdu, String)> = verified
                .into_iter()
                .filter(|(id, ..)| wanted.contains(id))
                .map(|(id, pdu, json, ())| (id, (pdu, json)))
                .collect();
            self.store_outliers(rules, room_id, fetched).await?;
        }
        let mut loaded = self.load_events(state_ids.iter().chain([event]).map(|e| e.to_string()).collect()).await?;
        let parent = loaded
            .remove(event)
            .ok_or_else(|| Error::bad_json(format!("{origin} did not give the missing event {event}")))?;
        let mut state = StateMap::new();
        for pdu in loaded.into_values().chain([parent]) {
            if let Some(key) = &pdu.state_key
                && !pdu.rejected
                && pdu.room_id == *room_id
            {
                state.insert((pdu.kind.to_string(), key.clone()), pdu.event_id.clone());
            }
        }
        Ok(state)
    }

    /// Events of a room from `origin`, as JSON: one by one with `/event`, or, when many, the
    /// state at `at` with `/state` (and `/event` for what that left out). Those that cannot be
    /// had are left out.
    async fn fetch_remote_events(
        &self,
        origin: &str,
        room_id: &RoomId,
        at: &OwnedEventId,
        ids: &[OwnedEventId],
    ) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        let mut left: Vec<&OwnedEventId> = ids.iter().collect();
        if ids.len() > EVENTS_FETCHED_ONE_BY_ONE {
            let path = format!(
                "/_matrix/federation/v1/state/{}?event_id={}",
                url_encode(room_id.as_str()),
                url_encode(at.as_str())
            );
            match self
                .federation
                .client
                .request(&self.key, self.server_name(), origin, "GET", &path, None, REMOTE_TIMEOUT)
                .await
            {
                Ok(answer) => {
                    for list in ["pdus", "auth_chain"] {
                        out.extend(answer[list].as_array().cloned().unwrap_or_default());
                    }
                    // The state before `at` leaves `at` itself out.
                    left.retain(|id| *id == at);
                }
                Err(e) => {
                    tracing::info!(origin, error = %e.into_error("state"), "could not fetch a remote state");
                }
            }
        }
        for id in left {
            let path = format!("/_matrix/federation/v1/event/{}", url_encode(id.as_str()));
            match self
                .federation
                .client
                .request(&self.key, self.server_name(), origin, "GET", &path, None, REMOTE_TIMEOUT)
                .await
            {
                Ok(answer) => out.extend(answer["pdus"].as_array().cloned().unwrap_or_default()),
                Err(e) => {
                    tracing::info!(origin, event_id = %id, error = %e.into_error("event"), "could not fetch an event")
                }
            }
        }
        out
    }

    /// Fetched events checked against their own auth events (fetched or stored), oldest
    /// first: one whose auth events are unknown, rejected or in another room, or that the
    /// rules refuse, is marked rejected.
    pub(super) async fn check_fetched(
        &self,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        fetched: HashMap<OwnedEventId, (Pdu, String)>,
    ) -> Result<Vec<OutlierEvent>> {
        if fetched.is_empty() {
            return Ok(Vec::new());
        }
        let implied = crate::state::implied_auth_events(rules, room_id);
        let auth_ids: Vec<String> = fetched
            .values()
            .flat_map(|(p, _)| p.auth_events.iter())
            .chain(implied.as_ref())
            .filter(|a| !fetched.contains_key(*a))
            .map(|a| a.to_string())
            .collect();
        let mut known: HashMap<OwnedEventId, Pdu> = self.load_events(auth_ids).await?;
        let mut order: Vec<&OwnedEventId> = fetched.keys().collect();
        order.sort_by_key(|id| (fetched[*id].0.depth, (*id).clone()));
        let mut outliers = Vec::with_capacity(order.len());
        for id in order {
            let (pdu, json) = &fetched[id];
            let auth: Vec<Option<&Pdu>> =
                pdu.auth_events.iter().map(|a| known.get(a).or_else(|| fetched.get(a).map(|(p, _)| p))).collect();
            let auth_ok = auth.iter().all(|a| a.is_some_and(|a| !a.rejected && a.room_id == *room_id));
            let rejected = !auth_ok || {
                let mut events: HashMap<OwnedEventId, Pdu> =
                    auth.iter().flatten().map(|a| (a.event_id.clone(), (*a).clone())).collect();
                if let Some(create) =
                    implied.as_ref().and_then(|c| known.get(c).or_else(|| fetched.get(c).map(|(p, _)| p)))
                {
                    events.insert(create.event_id.clone(), create.clone());
                }
                let auth_state: StateMap = events
                    .values()
                    .filter_map(|e| Some(((e.kind.to_string(), e.state_key.clone()?), e.event_id.clone())))
                    .collect();
                crate::state::check_auth(rules, pdu, &events, &auth_state).is_err()
            };
            if rejected {
                tracing::info!(event_id = %id, "a fetched event fails its own auth events; stored rejected");
            }
            let mut stored = pdu.clone();
            stored.rejected = rejected;
            known.insert(id.clone(), stored);
            outliers.push(OutlierEvent {
                event_id: id.to_string(),
                room_id: room_id.to_string(),
                event_type: pdu.kind.to_string(),
                state_key: pdu.state_key.clone(),
                sender: pdu.sender.to_string(),
                membership: pdu.membership(),
                json: json.clone(),
                rejected,
            });
        }
        Ok(outliers)
    }

    /// Stores fetched events as outliers (see [`Homeserver::check_fetched`]).
    async fn store_outliers(
        &self,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        fetched: HashMap<OwnedEventId, (Pdu, String)>,
    ) -> Result<()> {
        let outliers = self.check_fetched(rules, room_id, fetched).await?;
        if outliers.is_empty() {
            return Ok(());
        }
        self.db(move |s| s.persist_outliers(&outliers)).await
    }

    /// Fetches events from before the start of a room's timeline from a server in the room
    /// (`/backfill`, at most `limit`), when the oldest timeline event has parents this server
    /// lacks (once per such event). They are checked against their own auth events and stored
    /// below the timeline with the state before it (the oldest event's state, without its own
    /// membership when it is one: a join's history is judged without the join). True when
    /// some were stored.
    pub(crate) async fn backfill(&self, room_id: &RoomId, limit: usize) -> Result<bool> {
        let rid = room_id.to_string();
        let oldest = self.db(move |s| s.room_events(&rid, i64::MIN, i64::MAX, false, 1)).await?;
        let Some(oldest) = oldest.into_iter().next() else { return Ok(false) };
        let Some(group) = oldest.state_group else { return Ok(false) };
        let oldest_pdu = Pdu::from_json_str(&oldest.json)?;
        let missing = self.missing_prevs(&oldest_pdu.prev_events).await?;
        if missing.is_empty() {
            return Ok(false);
        }
        if !self
            .federation
            .backfilled_before
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(oldest_pdu.event_id.to_string())
        {
            return Ok(false);
        }
        let (rules, in_room) = {
            let guard = self.room_lock(room_id).await?;
            let Some(cache) = guard.as_ref() else { return Ok(false) };
            (cache.rules.clone(), cache.destinations())
        };
        // A client waits on this page: the likeliest servers only (the one whose user sent the
        // oldest event, the room ID's), then a few others, rather than every server in a big
        // room one timeout after another.
        let mut servers: Vec<String> = [oldest_pdu.sender.server_name().to_string()]
            .into_iter()
            .chain(room_id.server_name().map(|s| s.to_string()))
            .filter(|s| in_room.contains(s))
            .collect();
        servers.extend(in_room);
        let mut seen = HashSet::new();
        servers.retain(|s| s != self.server_name() && seen.insert(s.clone()));
        servers.truncate(BACKFILL_SERVERS_ASKED);
        let from: Vec<String> = missing.iter().map(|e| format!("v={}", url_encode(e.as_str()))).collect();
        let path = format!(
            "/_matrix/federation/v1/backfill/{}?{}&limit={}",
            url_encode(room_id.as_str()),
            from.join("&"),
            limit.clamp(1, 100)
        );
        let answer = match self.ask_in_turn(&servers, &path, "backfill").await {
            Ok((_, answer)) => answer,
            Err(e) => {
                tracing::info!(room = %room_id, error = %e, "could not backfill");
                return Ok(false);
            }
        };
        let values: Vec<(Value, ())> =
            answer["pdus"].as_array().cloned().unwrap_or_default().into_iter().map(|v| (v, ())).collect();
        let verified = self.verify_remote_events(&rules, room_id, values, "a backfill answer").await?;
        let fetched: HashMap<OwnedEventId, (Pdu, String)> =
            verified.into_iter().map(|(id, pdu, json, ())| (id, (pdu, json))).collect();
        let mut events = self.check_fetched(&rules, room_id, fetched).await?;
        if events.is_empty() {
            return Ok(false);
        }
        // Newest first: the newest takes the position just below the timeline.
        events.reverse();
        let mut state = self.db(move |s| s.get_state_group(group)).await?;
        if oldest_pdu.kind == ruma::events::TimelineEventType::RoomMember {
            let key = oldest_pdu.state_key.clone().unwrap_or_default();
            state.retain(|e| !(e.event_type == "m.room.member" && e.state_key == key));
        }
        let r = room_id.to_string();
        self.db(move |s| s.persist_backfilled(&r, &state, &events)).await?;
        Ok(true)
    }
}
