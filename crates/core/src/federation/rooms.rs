//! Rooms over federation: events received from other servers (checked, authorised, stored),
//! joins both ways (`make_join`/`send_join` as the resident server, and joining a room another
//! server hosts), and the events other servers fetch.
//!
//! A received event goes through [`Homeserver::receive_pdu`], the one path of every remote
//! event, under the room's send lock (so it orders with local events):
//! 1. its ID is its reference hash; one already stored is done;
//! 2. hashes and signatures are checked (a mismatched content hash keeps the redacted form);
//!    `check_event_for_spam` runs on it, and a spammy event is stored redacted and
//!    soft-failed (Synapse's behaviour), the sender getting no error;
//! 3. it is authorised against its own auth events, then against the state before it (its
//!    parents' state, resolved if they fork); failing either stores it as rejected;
//! 4. it is checked against the current state: failing soft-fails it (stored, never shown,
//!    never a parent, no state change);
//! 5. the current state follows it (resolved against the old one unless it descends from every
//!    forward extremity), and it is written through the event writer with its state group.
//!
//! An event whose parents are unknown is authorised against the current state as its state
//! before; fetching missing events (`/get_missing_events`) is not done yet.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use myelin_module_api::EventView;
use myelin_storage::{OutlierEvent, RoomRow, StateChange, StateEntry};
use ruma::room_version_rules::RoomVersionRules;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, RoomId};
use serde_json::{Map, Value, json};

use super::client::FederationFailure;
use super::remote_keys::{REMOTE_TIMEOUT, Verified};
use crate::events::{EventDraft, Pdu, event_references, parse_event_references, sign_event};
use crate::server::now_ms;
use crate::writer::{EventWrite, EventWriter};
use crate::{Error, ErrorKind, Homeserver, Requester, Result};

/// The largest PDU accepted, in bytes of JSON (the spec's limit).
use crate::events::MAX_PDU_BYTES;

type StateMap = HashMap<(String, String), OwnedEventId>;

/// What became of a received event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Stored, part of the room.
    Accepted,
    /// Stored, but not shown and no state change (failed against current state, or spam).
    SoftFailed,
    /// Stored as rejected (failed the authorization rules).
    Rejected(String),
    /// Stored before (nothing done).
    Known,
    /// A module's `should_drop_federated_event` dropped it (not stored).
    Dropped,
}

/// A received event, handled.
pub(crate) struct Received {
    pub event_id: OwnedEventId,
    pub outcome: Outcome,
    /// The state before the event, as it was authorised against.
    pub state_before: Option<Arc<StateMap>>,
    /// The event as stored.
    pub json: String,
}

/// A PDU as it travels between servers: without the `event_id` Myelin stores beside it (room
/// versions 3+ derive it) and without `unsigned`.
pub(crate) fn wire_pdu(stored_json: &str) -> Result<Value> {
    let mut value: Value = serde_json::from_str(stored_json).map_err(Error::internal)?;
    if let Value::Object(m) = &mut value {
        // Room versions 1 and 2 name events `$id:server`, and that ID is part of the signed
        // event; later versions' IDs are unpadded base64 hashes, which never hold a colon.
        if m.get("event_id").and_then(Value::as_str).is_none_or(|id| !id.contains(':')) {
            m.remove("event_id");
        }
        m.remove("unsigned");
    }
    Ok(value)
}

/// The room version rules of a version ID Myelin supports.
pub(crate) fn rules_for(version: &str) -> Option<RoomVersionRules> {
    if !crate::config::SUPPORTED_ROOM_VERSIONS.contains(&version) {
        return None;
    }
    ruma::RoomVersionId::try_from(version).ok().and_then(|v| v.rules())
}

/// A received PDU, hashed: `(event ID, canonical object without event_id, JSON with it)`.
pub(crate) fn identify(pdu: &Value, rules: &RoomVersionRules) -> Result<(OwnedEventId, CanonicalJsonObject)> {
    let Value::Object(map) = pdu else { return Err(Error::bad_json("PDU is not an object")) };
    let mut map = map.clone();
    map.remove("unsigned");
    // Room versions 1 and 2: the event carries its ID (signed with it). Later: derived.
    let carried_id = if rules.event_format.require_event_id {
        let id = map.get("event_id").and_then(Value::as_str).ok_or_else(|| Error::bad_json("PDU has no event_id"))?;
        Some(OwnedEventId::try_from(id).map_err(|_| Error::bad_json("Bad event ID"))?)
    } else {
        map.remove("event_id");
        None
    };
    let object = ruma::canonical_json::try_from_json_map(map)
        .map_err(|e| Error::bad_json(format!("PDU is not canonical JSON: {e}")))?;
    let size = serde_json::to_vec(&object).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_PDU_BYTES {
        return Err(Error::new(ErrorKind::TooLarge, "PDU is larger than 65536 bytes"));
    }
    if let Some(event_id) = carried_id {
        return Ok((event_id, object));
    }
    let hash = ruma::signatures::reference_hash(&object, rules)
        .map_err(|e| Error::bad_json(format!("PDU cannot be hashed: {e}")))?;
    let event_id = OwnedEventId::try_from(format!("${hash}")).map_err(|_| Error::bad_json("Bad event ID"))?;
    Ok((event_id, object))
}

/// The stored JSON of a verified object: itself with its `event_id`.
fn stored_json(event_id: &OwnedEventId, object: &CanonicalJsonObject) -> Result<(String, Pdu)> {
    let mut object = object.clone();
    object.insert("event_id".into(), CanonicalJsonValue::String(event_id.to_string()));
    let json = serde_json::to_string(&object).map_err(Error::internal)?;
    let pdu: Pdu = serde_json::from_str(&json).map_err(|e| Error::bad_json(format!("Malformed PDU: {e}")))?;
    Ok((json, pdu))
}

impl Homeserver {
    /// The parsed events of `ids` and every event in their auth chains, as far as stored.
    pub(crate) async fn load_auth_closure(&self, ids: Vec<OwnedEventId>) -> Result<HashMap<OwnedEventId, Pdu>> {
        let mut all: HashMap<OwnedEventId, Pdu> = HashMap::new();
        let mut todo: Vec<OwnedEventId> = ids;
        while !todo.is_empty() {
            let wanted: Vec<String> = todo.iter().filter(|e| !all.contains_key(*e)).map(|e| e.to_string()).collect();
            let loaded = self.load_events(wanted).await?;
            todo = Vec::new();
            for (id, pdu) in loaded {
                for a in &pdu.auth_events {
                    if !all.contains_key(a) {
                        todo.push(a.clone());
                    }
                }
                all.insert(id, pdu);
            }
            todo.retain(|e| !all.contains_key(e));
            todo.sort();
            todo.dedup();
        }
        Ok(all)
    }

    /// Checks an event against `state` (only the entries its type needs are loaded).
    async fn authorised_by(
        &self,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        state: &StateMap,
    ) -> Result<std::result::Result<(), String>> {
        let types = ruma::state_res::auth_types_for_event(
            &pdu.kind,
            &pdu.sender,
            pdu.state_key.as_deref(),
            &pdu.content,
            &rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;
        let mut relevant = HashMap::new();
        let mut ids: Vec<String> = pdu.auth_events.iter().map(|e| e.to_string()).collect();
        ids.extend(crate::state::implied_auth_events(rules, &pdu.room_id).map(|e| e.to_string()));
        for (t, k) in types {
            let key = (t.to_string(), k);
            if let Some(id) = state.get(&key) {
                ids.push(id.to_string());
                relevant.insert(key, id.clone());
            }
        }
        let events = self.load_events(ids).await?;
        Ok(crate::state::check_auth(rules, pdu, &events, &relevant))
    }

    /// The state after each of `prev_events`, resolved into one; `None` when a parent is not
    /// stored in the timeline.
    pub(crate) async fn state_after_events(
        &self,
        rules: &RoomVersionRules,
        prev_events: &[OwnedEventId],
    ) -> Result<Option<StateMap>> {
        let ids: Vec<String> = prev_events.iter().map(|e| e.to_string()).collect();
        let sets = self
            .db(move |s| {
                let mut sets = Vec::new();
                for id in ids {
                    let Some(row) = s.get_event(&id)? else { return Ok(None) };
                    let Some(group) = row.state_group else { return Ok(None) };
                    sets.push(s.get_state_group(group)?);
                }
                Ok(Some(sets))
            })
            .await?;
        let Some(sets) = sets else { return Ok(None) };
        let maps: Vec<StateMap> = sets
            .into_iter()
            .map(|entries| {
                entries
                    .into_iter()
                    .filter_map(|e| Some(((e.event_type, e.state_key), OwnedEventId::try_from(e.event_id).ok()?)))
                    .collect()
            })
            .collect();
        match maps.len() {
            0 => Ok(Some(StateMap::new())),
            1 => Ok(maps.into_iter().next()),
            _ => self.resolve_states(rules, maps).await.map(Some),
        }
    }

    /// State resolution v2 over stored events.
    async fn resolve_states(&self, rules: &RoomVersionRules, sets: Vec<StateMap>) -> Result<StateMap> {
        if sets.windows(2).all(|w| w[0] == w[1]) {
            return Ok(sets.into_iter().next().unwrap_or_default());
        }
        let ids: Vec<OwnedEventId> = sets.iter().flat_map(|s| s.values().cloned()).collect();
        let events = self.load_auth_closure(ids).await?;
        let state_sets: Vec<ruma::state_res::StateMap<OwnedEventId>> = sets
            .iter()
            .map(|s| s.iter().map(|((t, k), id)| ((t.as_str().into(), k.clone()), id.clone())).collect())
            .collect();
        let resolved = crate::state::resolve(rules, &state_sets, &events)
            .map_err(|e| Error::internal(format!("state resolution failed: {e}")))?;
        Ok(resolved.into_iter().map(|((t, k), id)| ((t.to_string(), k), id)).collect())
    }

    /// Handles one event received from `origin` for a room this server is in (see the module
    /// doc). `destinations` are servers to pass it on to (a resident server passes on joins).
    pub(crate) async fn receive_pdu(
        &self,
        origin: Option<&str>,
        room_id: &RoomId,
        pdu_value: &Value,
        destinations: Vec<String>,
    ) -> Result<Received> {
        let rules = {
            let guard = self.room_lock(room_id).await?;
            let Some(cache) = guard.as_ref() else { return Err(Error::not_found(format!("Unknown room {room_id}"))) };
            cache.rules.clone()
        };
        let (event_id, mut object) = identify(pdu_value, &rules)?;
        if object.get("room_id").and_then(|v| v.as_str()) != Some(room_id.as_str()) {
            return Err(Error::bad_json("PDU is for another room"));
        }
        let existing = {
            let id = event_id.to_string();
            self.db(move |s| s.get_event(&id)).await?
        };
        if let Some(row) = existing {
            return Ok(Received { event_id, outcome: Outcome::Known, state_before: None, json: row.json });
        }
        match self.verify_event_signatures(&object, &rules).await? {
            Verified::All => {}
            Verified::Signatures => {
                object = ruma::canonical_json::redact(object, &rules.redaction, None)
                    .map_err(|e| Error::bad_json(format!("PDU cannot be redacted: {e}")))?;
            }
        }
        let (mut json, pdu) = stored_json(&event_id, &object)?;
        if self.modules.has_should_drop_federated_event() {
            let view = EventView::new(serde_json::from_str(&json).map_err(Error::internal)?);
            if self.modules.should_drop_federated_event(&view).await {
                return Ok(Received { event_id, outcome: Outcome::Dropped, state_before: None, json });
            }
        }
        let mut spammy = false;
        if self.modules.has_check_event_for_spam() {
            let view = EventView::new(serde_json::from_str(&json).map_err(Error::internal)?);
            if self.modules.check_event_for_spam(&view).await.is_err() {
                spammy = true;
                json = crate::events::redact_json(&json, &rules, None)?;
            }
        }

        // Parents this server has not seen are asked for first, from the server that sent it.
        if let Some(origin) = origin {
            self.fill_gap(origin, room_id, &event_id, &pdu.prev_events).await;
        }

        let mut guard = self.room_lock(room_id).await?;
        let Some(cache) = guard.as_mut() else { return Err(Error::not_found(format!("Unknown room {room_id}"))) };

        // 3. Its own auth events, then the state before it.
        let missing_auth = {
            let loaded = self.load_events(pdu.auth_events.iter().map(|e| e.to_string()).collect()).await?;
            pdu.auth_events.iter().any(|a| !loaded.contains_key(a))
        };
        let auth_state: StateMap = {
            let loaded = self.load_events(pdu.auth_events.iter().map(|e| e.to_string()).collect()).await?;
            loaded
                .values()
                .filter_map(|e| Some(((e.kind.to_string(), e.state_key.clone()?), e.event_id.clone())))
                .collect()
        };
        let mut rejection = if missing_auth {
            Some("its auth events are unknown".to_owned())
        } else {
            self.authorised_by(&rules, &pdu, &auth_state).await?.err()
        };
        let state_before: Arc<StateMap> = if pdu.prev_events.len() == 1 && cache.extremities == pdu.prev_events {
            cache.state.clone()
        } else {
            match self.state_after_events(&rules, &pdu.prev_events).await? {
                Some(s) => Arc::new(s),
                None => cache.state.clone(),
            }
        };
        if rejection.is_none() {
            rejection = self.authorised_by(&rules, &pdu, &state_before).await?.err();
        }
        // 4. Soft failure against the current state.
        let mut soft_failed = spammy;
        if rejection.is_none() && !soft_failed && !Arc::ptr_eq(&state_before, &cache.state) {
            soft_failed = self.authorised_by(&rules, &pdu, &cache.state).await?.is_err();
        }

        // 5. The state after it, and the room's current state.
        let accepted = rejection.is_none() && !soft_failed;
        let mut state_after = state_before.clone();
        if rejection.is_none()
            && let Some(key) = &pdu.state_key
        {
            Arc::make_mut(&mut state_after).insert((pdu.kind.to_string(), key.clone()), event_id.clone());
        }
        let new_current: Arc<StateMap> = if !accepted {
            cache.state.clone()
        } else if cache.extremities.iter().all(|e| pdu.prev_events.contains(e)) {
            state_after.clone()
        } else {
            Arc::new(
                self.resolve_states(&rules, vec![cache.state.as_ref().clone(), state_after.as_ref().clone()]).await?,
            )
        };
        let own_key_only = {
            let mut expected = cache.state.as_ref().clone();
            if accepted && let Some(key) = &pdu.state_key {
                expected.insert((pdu.kind.to_string(), key.clone()), event_id.clone());
            }
            expected == *new_current
        };
        let entries = |state: &StateMap| -> Vec<StateEntry> {
            state
                .iter()
                .map(|((t, k), e)| StateEntry { event_type: t.clone(), state_key: k.clone(), event_id: e.to_string() })
                .collect()
        };
        let state_change = match cache.state_group {
            Some(g) if Arc::ptr_eq(&state_after, &cache.state) || *state_after == *cache.state => StateChange::Same(g),
            _ => StateChange::New { prev: None, delta: entries(&state_after) },
        };
        let rid = room_id.to_string();
        let destinations = if accepted { destinations } else { Vec::new() };
        let written = self
            .write_marked(EventWrite {
                event_id: event_id.to_string(),
                room_id: rid.clone(),
                event_type: pdu.kind.to_string(),
                state_key: pdu.state_key.clone(),
                sender: pdu.sender.to_string(),
                membership: pdu.membership(),
                json: json.clone(),
                state: state_change,
                prev_events: pdu.prev_events.iter().map(|e| e.to_string()).collect(),
                txn: None,
                redaction: None,
                rejected: rejection.is_some(),
                soft_failed,
                current_state: if own_key_only { None } else { Some(entries(&new_current)) },
                destinations: destinations.clone(),
            })
            .await;
        let (stream, group) = match written {
            Ok(w) => w,
            Err(e) => {
                *guard = None;
                return Err(e);
            }
        };
        if accepted {
            let follows_after = *new_current == *state_after;
            cache.state = new_current.clone();
            cache.state_group = follows_after.then_some(group);
            cache.chain_len = 0;
            cache.extremities.retain(|e| !pdu.prev_events.contains(e));
            cache.extremities.push(event_id.clone());
            cache.depth = cache.depth.max(pdu.depth);
            if pdu.kind == ruma::events::TimelineEventType::RoomMember
                && let Some(key) = &pdu.state_key
            {
                cache.track_member(key, pdu.membership().as_deref(), self.server_name());
            }
            if pdu.state_key.is_some() {
                self.remember_state_event(&pdu);
            }
        }
        drop(guard);
        self.advance_stream(stream);
        self.wake_destinations(&destinations);
        if accepted
            && self.modules.has_on_new_event()
            && let Ok(object) = serde_json::from_str(&json)
        {
            let views = self.state_views(&new_current).await.unwrap_or_default();
            self.modules.spawn_on_new_event(EventView::new(object), views);
        }
        let outcome = match (rejection, soft_failed) {
            (Some(why), _) => Outcome::Rejected(why),
            (None, true) => Outcome::SoftFailed,
            (None, false) => Outcome::Accepted,
        };
        Ok(Received { event_id, outcome, state_before: Some(state_before), json })
    }

    /// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`: a join event for `user_id` to
    /// fill in and sign, built on the room's current state.
    pub async fn make_join(&self, origin: &str, room_id: &str, user_id: &str, versions: &[String]) -> Result<Value> {
        self.membership_template(origin, room_id, user_id, "join", Some(versions)).await
    }

    /// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`: the same for a leave (an
    /// invite rejected by a server that is not in the room).
    pub async fn make_leave(&self, origin: &str, room_id: &str, user_id: &str) -> Result<Value> {
        self.membership_template(origin, room_id, user_id, "leave", None).await
    }

    async fn membership_template(
        &self,
        origin: &str,
        room_id: &str,
        user_id: &str,
        membership: &str,
        versions: Option<&[String]>,
    ) -> Result<Value> {
        let room_id = OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
        self.check_server_acl(origin, &room_id).await?;
        let user = ruma::OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
        if user.server_name().as_str() != origin {
            return Err(Error::forbidden("The user is not from the server asking"));
        }
        let version = {
            let r = room_id.to_string();
            self.db(move |s| s.get_room(&r)).await?.map(|r| r.room_version)
        }
        .ok_or_else(|| Error::not_found("Unknown room"))?;
        let versions: Vec<&str> = match versions {
            Some([]) => vec!["1"],
            Some(v) => v.iter().map(String::as_str).collect(),
            None => vec![version.as_str()],
        };
        if !versions.contains(&version.as_str()) {
            return Err(Error::new(
                ErrorKind::Module { status: 400, errcode: "M_INCOMPATIBLE_ROOM_VERSION".into() },
                "Your homeserver does not support the features required to join this room",
            )
            .with_fields([("room_version".to_owned(), json!(version))].into_iter().collect()));
        }
        let (rules, state, prev_events, depth) = {
            let guard = self.room_lock(&room_id).await?;
            let Some(cache) = guard.as_ref() else { return Err(Error::not_found("Unknown room")) };
            let basis = cache.basis();
            (basis.rules, basis.state, basis.prev_events, basis.depth)
        };
        if !self.participates_in(&room_id).await? {
            return Err(Error::not_found("This server is not in the room"));
        }
        let content: Map<String, Value> = [("membership".to_owned(), json!(membership))].into_iter().collect();
        let raw = serde_json::value::to_raw_value(&content).map_err(Error::internal)?;
        let auth_types = ruma::state_res::auth_types_for_event(
            &ruma::events::TimelineEventType::RoomMember,
            &user,
            Some(user.as_str()),
            &raw,
            &rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;
        let auth_events: Vec<OwnedEventId> =
            auth_types.iter().filter_map(|(t, k)| state.get(&(t.to_string(), k.clone())).cloned()).collect();
        let ids: Vec<OwnedEventId> = prev_events.iter().chain(&auth_events).cloned().collect();
        let reference_hashes = self.reference_hashes(&rules, ids).await?;
        let ts = now_ms();
        // Checked now, as the resident server would check the signed join: a user who may not
        // join hears it here.
        let trial = sign_event(
            EventDraft {
                room_id: &room_id,
                sender: &user,
                kind: "m.room.member",
                state_key: Some(user.as_str()),
                content: content.clone(),
                prev_events: prev_events.clone(),
                auth_events: auth_events.clone(),
                depth: depth + 1,
                redacts: None,
                origin_server_ts: ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(ts as u64)),
                reference_hashes: reference_hashes.clone(),
            },
            &rules,
            self.server_name(),
            &self.key,
        )?;
        self.authorised_by(&rules, &trial.pdu, &state).await?.map_err(Error::forbidden)?;
        Ok(json!({
            "room_version": version,
            "event": {
                "type": "m.room.member",
                "room_id": room_id,
                "sender": user,
                "state_key": user,
                "content": content,
                "prev_events": event_references(&prev_events, &rules, &reference_hashes),
                "auth_events": event_references(&auth_events, &rules, &reference_hashes),
                "depth": depth + 1,
                "origin": origin,
                "origin_server_ts": ts,
            }
        }))
    }

    /// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`: accepts a signed leave.
    pub async fn send_leave(&self, origin: &str, room_id: &str, event_id: &str, pdu: &Value) -> Result<Value> {
        self.send_membership(origin, room_id, event_id, pdu, "leave").await?;
        Ok(json!({}))
    }

    /// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`: accepts a signed join and
    /// answers with the room's state before it and the auth chain.
    pub async fn send_join(&self, origin: &str, room_id: &str, event_id: &str, pdu: &Value) -> Result<Value> {
        self.send_membership(origin, room_id, event_id, pdu, "join").await
    }

    async fn send_membership(
        &self,
        origin: &str,
        room_id: &str,
        event_id: &str,
        pdu: &Value,
        membership: &str,
    ) -> Result<Value> {
        let room_id = OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
        self.check_server_acl(origin, &room_id).await?;
        let rules = {
            let guard = self.room_lock(&room_id).await?;
            guard.as_ref().map(|c| c.rules.clone()).ok_or_else(|| Error::not_found("Unknown room"))?
        };
        let (id, object) = identify(pdu, &rules)?;
        if id.as_str() != event_id {
            return Err(Error::bad_json("The event ID does not match the event"));
        }
        let field = |k: &str| object.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let sender = field("sender").unwrap_or_default();
        if field("type").as_deref() != Some("m.room.member")
            || field("state_key").as_deref() != Some(sender.as_str())
            || object
                .get("content")
                .and_then(|c| c.as_object())
                .and_then(|c| c.get("membership"))
                .and_then(|m| m.as_str())
                != Some(membership)
        {
            return Err(Error::bad_json(format!("Not a {membership} event")));
        }
        if sender.split_once(':').map(|(_, s)| s) != Some(origin) {
            return Err(Error::forbidden("The joining user is not from the server sending the join"));
        }
        let others: Vec<String> = {
            let guard = self.room_lock(&room_id).await?;
            guard.as_ref().map(|c| c.destinations()).unwrap_or_default().into_iter().filter(|d| d != origin).collect()
        };
        let received = self.receive_pdu(Some(origin), &room_id, pdu, others).await?;
        match &received.outcome {
            Outcome::Accepted | Outcome::Known => {}
            Outcome::Dropped => return Err(Error::forbidden(format!("The {membership} was dropped"))),
            Outcome::SoftFailed => {
                return Err(Error::forbidden(format!("The {membership} is not allowed by the room's current state")));
            }
            Outcome::Rejected(why) => return Err(Error::forbidden(format!("The {membership} is not allowed: {why}"))),
        }
        if membership != "join" {
            return Ok(json!({}));
        }
        let state_before = match received.state_before {
            Some(s) => s,
            None => {
                let pdu = Pdu::from_json_str(&received.json)?;
                Arc::new(self.state_after_events(&rules, &pdu.prev_events).await?.unwrap_or_default())
            }
        };
        let state_ids: Vec<OwnedEventId> = state_before.values().cloned().collect();
        let mut chain_ids: HashSet<OwnedEventId> = {
            let closure = self.load_auth_closure(state_ids.iter().cloned().chain([id.clone()]).collect()).await?;
            closure.keys().cloned().collect()
        };
        for s in &state_ids {
            chain_ids.remove(s);
        }
        chain_ids.remove(&id);
        let state_json = self.wire_pdus(state_ids).await?;
        let chain_json = self.wire_pdus(chain_ids.into_iter().collect()).await?;
        Ok(json!({
            "origin": self.server_name(),
            "state": state_json,
            "auth_chain": chain_json,
            "event": wire_pdu(&received.json)?,
            "members_omitted": false,
        }))
    }

    /// Stored events as PDUs to send (unknown IDs are left out).
    pub(crate) async fn wire_pdus(&self, ids: Vec<OwnedEventId>) -> Result<Vec<Value>> {
        let ids: Vec<String> = ids.into_iter().map(|e| e.to_string()).collect();
        let rows = self
            .db(move |s| {
                let mut out = Vec::new();
                for id in ids {
                    if let Some(row) = s.get_event(&id)? {
                        out.push(row.json);
                    }
                }
                Ok(out)
            })
            .await?;
        rows.iter().map(|j| wire_pdu(j)).collect()
    }

    /// The events of `ids` (in order, unknown ones left out) for the wire, as `origin` may see
    /// them: redacted where its users could not (see `visibility`).
    pub(crate) async fn wire_pdus_for(&self, origin: &str, ids: Vec<OwnedEventId>) -> Result<Vec<Value>> {
        let rows = self.event_rows(ids.into_iter().map(|e| e.to_string()).collect()).await?;
        self.visible_to_server(origin, rows).await?.iter().map(|j| wire_pdu(j)).collect()
    }

    /// `GET /_matrix/federation/v1/event/{eventId}`: an event of a room `origin` is in.
    pub async fn federation_event(&self, origin: &str, event_id: &str) -> Result<Value> {
        let id = event_id.to_owned();
        let row = self.db(move |s| s.get_event(&id)).await?.ok_or_else(|| Error::not_found("Unknown event"))?;
        let pdu = Pdu::from_json_str(&row.json)?;
        let in_room = {
            let guard = self.room_lock(&pdu.room_id).await?;
            guard.as_ref().is_some_and(|c| {
                c.destinations().iter().any(|d| d == origin) || pdu.sender.server_name().as_str() == origin
            })
        };
        if !in_room {
            return Err(Error::forbidden("Your server is not in the room"));
        }
        Ok(json!({
            "origin": self.server_name(),
            "origin_server_ts": now_ms(),
            "pdus": self.wire_pdus_for(origin, vec![pdu.event_id]).await?,
        }))
    }

    /// Joins a local user to a room this server is not in, through one of `servers`
    /// (`make_join`, sign, `send_join`, then store the state it answers with).
    pub(crate) async fn join_remote_room(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        servers: &[String],
    ) -> Result<()> {
        let user = &requester.user_id;
        let versions: String =
            crate::config::SUPPORTED_ROOM_VERSIONS.iter().map(|v| format!("ver={v}")).collect::<Vec<_>>().join("&");
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?{versions}",
            crate::server::url_encode(room_id.as_str()),
            crate::server::url_encode(user.as_str())
        );
        let (server, answer) = self.ask_in_turn(servers, &path, "make_join").await?;
        let version = answer["room_version"].as_str().unwrap_or("1").to_owned();
        let rules = rules_for(&version).ok_or_else(|| {
            Error::new(ErrorKind::UnsupportedRoomVersion, format!("Room version {version} is not supported"))
        })?;
        let template = &answer["event"];
        let (prev_events, mut reference_hashes) = parse_event_references(&template["prev_events"]);
        let (auth_events, auth_hashes) = parse_event_references(&template["auth_events"]);
        reference_hashes.extend(auth_hashes);
        let mut content = template["content"].as_object().cloned().unwrap_or_default();
        content.insert("membership".into(), json!("join"));
        let (displayname, avatar_url) = self.profile_of(user.as_str()).await?;
        if let Some(d) = displayname {
            content.entry("displayname").or_insert(json!(d));
        }
        if let Some(a) = avatar_url {
            content.entry("avatar_url").or_insert(json!(a));
        }
        let signed = sign_event(
            EventDraft {
                room_id,
                sender: user,
                kind: "m.room.member",
                state_key: Some(user.as_str()),
                content,
                prev_events: prev_events.clone(),
                auth_events,
                depth: template["depth"].as_u64().unwrap_or(1),
                redacts: None,
                origin_server_ts: ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(now_ms() as u64)),
                reference_hashes,
            },
            &rules,
            self.server_name(),
            &self.key,
        )?;
        let join_id = signed.pdu.event_id.clone();
        let body = wire_pdu(&signed.json)?;
        let path = format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            crate::server::url_encode(room_id.as_str()),
            crate::server::url_encode(join_id.as_str())
        );
        let answer = self
            .federation
            .client
            .request(&self.key, self.server_name(), &server, "PUT", &path, Some(&body), REMOTE_TIMEOUT)
            .await
            .map_err(|e| e.into_error(&format!("send_join via {server}")))?;

        // Every event of the answer: hashed, verified, authorised in depth order. Hashing and
        // signature checks (most of the work for a big room) run on every core.
        let items: Vec<(Value, bool)> = [(&answer["state"], true), (&answer["auth_chain"], false)]
            .into_iter()
            .flat_map(|(list, is_state)| {
                list.as_array().cloned().unwrap_or_default().into_iter().map(move |v| (v, is_state))
            })
            .collect();
        let hashed = {
            let rules = rules.clone();
            parallel_map(items, move |(value, is_state)| {
                identify(&value, &rules).ok().map(|(id, object)| (id, object, is_state))
            })
            .await?
        };
        let hashed: Vec<(OwnedEventId, CanonicalJsonObject, bool)> = hashed.into_iter().flatten().collect();
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
                    tracing::warn!(server, signer = %needed, error = %e, "a send_join answer is signed by a server whose keys are unknown")
                }
            }
        }
        let verified = {
            let (rules, key_map, room) = (rules.clone(), Arc::new(key_map), room_id.to_owned());
            parallel_map(hashed, move |(id, object, is_state)| {
                let object = match ruma::signatures::verify_event(&key_map, &object, &rules) {
                    Ok(Verified::All) => object,
                    Ok(Verified::Signatures) => ruma::canonical_json::redact(object, &rules.redaction, None).ok()?,
                    Err(_) => return None,
                };
                let (json, pdu) = stored_json(&id, &object).ok()?;
                (pdu.room_id == room).then_some((id, pdu, json, is_state))
            })
            .await?
        };
        let mut events: HashMap<OwnedEventId, (Pdu, String)> = HashMap::new();
        let mut state_ids = Vec::new();
        for (id, pdu, json, is_state) in verified.into_iter().flatten() {
            if is_state {
                state_ids.push(id.clone());
            }
            events.insert(id, (pdu, json));
        }
        let mut order: Vec<&OwnedEventId> = events.keys().collect();
        order.sort_by_key(|id| (events[*id].0.depth, (*id).clone()));
        let mut rejected: HashSet<OwnedEventId> = HashSet::new();
        let pdus: HashMap<OwnedEventId, Pdu> = events.iter().map(|(id, (p, _))| (id.clone(), p.clone())).collect();
        for id in &order {
            let pdu = &pdus[*id];
            let auth_ok = pdu.auth_events.iter().all(|a| pdus.contains_key(a) && !rejected.contains(a));
            let auth_state: StateMap = pdu
                .auth_events
                .iter()
                .filter_map(|a| pdus.get(a))
                .filter_map(|e| Some(((e.kind.to_string(), e.state_key.clone()?), e.event_id.clone())))
                .collect();
            if !auth_ok || crate::state::check_auth(&rules, pdu, &pdus, &auth_state).is_err() {
                rejected.insert((*id).clone());
            }
        }
        let mut state: StateMap = StateMap::new();
        for id in &state_ids {
            if rejected.contains(id) {
                continue;
            }
            let pdu = &pdus[id];
            if let Some(key) = &pdu.state_key {
                state.insert((pdu.kind.to_string(), key.clone()), id.clone());
            }
        }
        let create =
            state.get(&("m.room.create".to_owned(), String::new())).and_then(|id| pdus.get(id)).ok_or_else(|| {
                Error::new(
                    ErrorKind::Module { status: 502, errcode: "M_UNKNOWN".into() },
                    "The resident server sent no valid room state",
                )
            })?;
        let creator = create.sender.to_string();
        // Our own join, against the state it was built on.
        let mut with_join = pdus.clone();
        with_join.insert(join_id.clone(), signed.pdu.clone());
        let relevant: StateMap = {
            let types = ruma::state_res::auth_types_for_event(
                &signed.pdu.kind,
                &signed.pdu.sender,
                signed.pdu.state_key.as_deref(),
                &signed.pdu.content,
                &rules.authorization,
            )
            .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;
            types
                .into_iter()
                .filter_map(|(t, k)| {
                    let key = (t.to_string(), k);
                    state.get(&key).map(|id| (key, id.clone()))
                })
                .collect()
        };
        crate::state::check_auth(&rules, &signed.pdu, &with_join, &relevant)
            .map_err(|e| Error::forbidden(format!("The room's state does not allow this join: {e}")))?;

        let outliers: Vec<OutlierEvent> = events
            .iter()
            .map(|(id, (pdu, json))| OutlierEvent {
                event_id: id.to_string(),
                room_id: room_id.to_string(),
                event_type: pdu.kind.to_string(),
                state_key: pdu.state_key.clone(),
                sender: pdu.sender.to_string(),
                membership: pdu.membership(),
                json: json.clone(),
                rejected: rejected.contains(id),
            })
            .collect();
        state.insert(("m.room.member".to_owned(), user.to_string()), join_id.clone());
        let entries: Vec<StateEntry> = state
            .iter()
            .map(|((t, k), e)| StateEntry { event_type: t.clone(), state_key: k.clone(), event_id: e.to_string() })
            .collect();

        let mut guard = self.room_lock(room_id).await?;
        let room_row =
            RoomRow { room_id: room_id.to_string(), room_version: version.clone(), creator, is_public: false };
        self.db(move |s| {
            if s.get_room(&room_row.room_id)?.is_none() {
                s.create_room(&room_row)?;
            }
            s.persist_outliers(&outliers)
        })
        .await?;
        let rid = room_id.to_string();
        let written = self
            .write_marked(EventWrite {
                event_id: join_id.to_string(),
                room_id: rid.clone(),
                event_type: "m.room.member".into(),
                state_key: Some(user.to_string()),
                sender: user.to_string(),
                membership: Some("join".into()),
                json: signed.json.clone(),
                state: StateChange::New { prev: None, delta: entries.clone() },
                prev_events: prev_events.iter().map(|e| e.to_string()).collect(),
                txn: None,
                redaction: None,
                rejected: false,
                soft_failed: false,
                current_state: Some(entries),
                destinations: Vec::new(),
            })
            .await;
        // The room is read again from storage by whoever needs it next.
        *guard = None;
        drop(guard);
        let (stream, _) = written?;
        self.advance_stream(stream);
        Ok(())
    }

    /// Whether this server is in a room (has a member joined), from the room's cache.
    pub(crate) async fn participates_in(&self, room_id: &RoomId) -> Result<bool> {
        let guard = self.room_lock(room_id).await?;
        Ok(guard.as_ref().is_some_and(|c| !c.local_members.is_empty()))
    }
}

impl Homeserver {
    /// Writes an event through the event writer, marking its room for `/sync` before the
    /// commit and after it (see `sync::SyncCache`): `(stream position, state group)`.
    pub(crate) async fn write_marked(&self, write: EventWrite) -> Result<(i64, i64)> {
        let room = write.room_id.clone();
        self.sync.cache.writing(&room);
        let written = EventWriter::finish(self.rooms.writer.submit(write)).await.map_err(Error::from);
        self.sync.cache.written(&room, written.as_ref().ok().map(|(s, _)| *s), *self.sync.stream.borrow());
        written
    }
}

impl Homeserver {
    /// The reference hashes of stored events, for room versions 1 and 2, whose events name
    /// their parents and auth events with them (none otherwise).
    pub(crate) async fn reference_hashes(
        &self,
        rules: &RoomVersionRules,
        ids: Vec<OwnedEventId>,
    ) -> Result<HashMap<OwnedEventId, String>> {
        if rules.events_reference_format != ruma::room_version_rules::EventsReferenceFormatVersion::V1 {
            return Ok(HashMap::new());
        }
        let rows = self.event_rows(ids.iter().map(|e| e.to_string()).collect()).await?;
        let mut out = HashMap::new();
        for row in rows {
            let Ok(object) = serde_json::from_str::<CanonicalJsonObject>(&row.json) else { continue };
            let id = object.get("event_id").and_then(|v| v.as_str()).and_then(|e| OwnedEventId::try_from(e).ok());
            if let (Some(id), Ok(hash)) = (id, ruma::signatures::reference_hash(&object, rules)) {
                out.insert(id, hash);
            }
        }
        Ok(out)
    }
}

impl Homeserver {
    /// A signed GET to each of `servers` in turn (this one skipped) until one answers:
    /// `(server, answer)`, else the last failure.
    pub(crate) async fn ask_in_turn(&self, servers: &[String], path: &str, what: &str) -> Result<(String, Value)> {
        let mut last_error = Error::not_found("No known servers to ask");
        for server in servers.iter().filter(|s| s.as_str() != self.server_name()) {
            match self
                .federation
                .client
                .request(&self.key, self.server_name(), server, "GET", path, None, REMOTE_TIMEOUT)
                .await
            {
                Ok(answer) => return Ok((server.clone(), answer)),
                Err(e) => last_error = e.into_error(&format!("{what} via {server}")),
            }
        }
        Err(last_error)
    }
}

impl From<FederationFailure> for Error {
    fn from(f: FederationFailure) -> Error {
        f.into_error("federation request")
    }
}

/// Maps `f` over `items` on the blocking pool, one chunk per core, keeping order.
async fn parallel_map<T, R, F>(items: Vec<T>, f: F) -> Result<Vec<R>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> R + Send + Sync + 'static,
{
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(1);
    let chunk = items.len().div_ceil(cores).max(1);
    let f = Arc::new(f);
    let mut chunks = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let part: Vec<T> = items.by_ref().take(chunk).collect();
        let f = f.clone();
        chunks.push(tokio::task::spawn_blocking(move || part.into_iter().map(|t| f(t)).collect::<Vec<R>>()));
    }
    let mut out = Vec::new();
    for c in chunks {
        out.extend(c.await.map_err(Error::internal)?);
    }
    Ok(out)
}
