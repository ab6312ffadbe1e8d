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
//! An event whose parents are not in the timeline first has the gap filled from the server
//! that sent it; parents still unknown after that refuse it (see `gaps`).
//!
//! Beside it: `joins` (make/send join and leave, both ways) and `gaps`.

mod gaps;
mod joins;

use myelin_module_api::federation::DeliveryMethod;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use myelin_module_api::EventView;
use myelin_storage::{OutlierEvent, RoomRow, StateChange, StateEntry};
use ruma::room_version_rules::RoomVersionRules;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, RoomId};
use serde_json::{Map, Value, json};

use super::client::FederationFailure;
use super::remote_keys::{REMOTE_TIMEOUT, Verified};
use crate::events::{EventDraft, Pdu, event_references, sign_event};
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

/// What a received redaction does (see [`Homeserver::received_redaction`]).
enum RedactionVerdict {
    Withhold,
    Show,
    /// The target's ID and its redacted JSON.
    Apply(String, String),
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

    /// The auth chain of `roots` as Synapse answers it (`get_auth_chain`): every event reachable
    /// through their `auth_events`, the roots themselves only when reachable from another root
    /// (the create event is in a room's state and in its auth chain), oldest first.
    pub(crate) async fn auth_chain_of(&self, roots: Vec<OwnedEventId>) -> Result<Vec<OwnedEventId>> {
        let closure = self.load_auth_closure(roots.clone()).await?;
        let mut chain: HashSet<OwnedEventId> = HashSet::new();
        let mut todo: Vec<OwnedEventId> =
            roots.iter().filter_map(|r| closure.get(r)).flat_map(|p| p.auth_events.iter().cloned()).collect();
        while let Some(id) = todo.pop() {
            if let Some(pdu) = closure.get(&id)
                && chain.insert(id)
            {
                todo.extend(pdu.auth_events.iter().cloned());
            }
        }
        // Oldest first, as Synapse's: a server that reads the chain in order and keeps the
        // last event of each state key (sytest's does) ends with the newest.
        let mut chain: Vec<OwnedEventId> = chain.into_iter().collect();
        chain.sort_by_key(|id| (closure.get(id).map(|p| p.depth).unwrap_or(0), id.clone()));
        Ok(chain)
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
        self.handle_pdu(origin, room_id, pdu_value, destinations, false).await
    }

    /// Handles an event fetched from `origin` to fill a gap before a pushed one (see `gaps`).
    pub(crate) async fn receive_pulled(&self, origin: &str, room_id: &RoomId, pdu_value: &Value) -> Result<Received> {
        self.handle_pdu(Some(origin), room_id, pdu_value, Vec::new(), true).await
    }

    async fn handle_pdu(
        &self,
        origin: Option<&str>,
        room_id: &RoomId,
        pdu_value: &Value,
        destinations: Vec<String>,
        pulled: bool,
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
        // As Synapse: only what is pushed may be dropped; a dropped event fetched again to fill
        // a gap is stored, or its children could never be.
        if !pulled && self.modules.has_should_drop_federated_event() {
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

        // Parents not in the timeline (see `gaps`): a pushed event has the gap filled from the
        // server that sent it, and is refused if that leaves one unknown; a pulled one has the
        // state after its unknown parents from that server.
        let mut state_across_gap = None;
        let missing = self.missing_prevs(&pdu.prev_events).await?;
        if let Some(origin) = origin
            && !missing.is_empty()
        {
            if pulled {
                state_across_gap =
                    Some(self.state_across_gap(origin, room_id, &rules, &pdu.prev_events, &missing).await?);
            } else {
                self.fill_gap(origin, room_id, &event_id, &pdu.prev_events).await;
                let id = event_id.to_string();
                if let Some(row) = self.db(move |s| s.get_event(&id)).await? {
                    return Ok(Received { event_id, outcome: Outcome::Known, state_before: None, json: row.json });
                }
                if !self.missing_prevs(&pdu.prev_events).await?.is_empty() {
                    return Err(Error::forbidden(
                        "Your server isn't divulging details about prev_events referenced in this event.",
                    ));
                }
            }
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
        let state_before: Arc<StateMap> = if let Some(state) = state_across_gap {
            Arc::new(state)
        } else if pdu.prev_events.len() == 1 && cache.extremities == pdu.prev_events {
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
        let mut redaction = None;
        if rejection.is_none() && !soft_failed && pdu.kind == ruma::events::TimelineEventType::RoomRedaction {
            match self.received_redaction(&rules, &pdu, &json, &state_before).await? {
                RedactionVerdict::Withhold => soft_failed = true,
                RedactionVerdict::Show => {}
                RedactionVerdict::Apply(target, redacted) => redaction = Some((target, redacted)),
            }
        }

        // 5. The state after it, and the room's current state.
        let accepted = rejection.is_none() && !soft_failed;
        if let Some(key) = &pdu.state_key {
            let replaced = state_before.get(&(pdu.kind.to_string(), key.clone()));
            json = crate::unsigned::with_replaced_state(json, event_id.as_str(), replaced.map(|e| e.as_str()))?;
        }
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
                redaction: redaction.clone(),
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
        if let Some((target, _)) = &redaction
            && let Ok(target) = OwnedEventId::try_from(target.as_str())
        {
            // Its stored JSON was just rewritten, here and for every process.
            self.forget_state_event(&target);
            if self.has_bus() {
                self.publish(format!("redacted {target}"));
            }
        }
        self.room_written(room_id.as_str(), stream);
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

    /// A received redaction the rules allowed, judged as Synapse serves it: withheld
    /// (soft-failed, never shown) when its target is unknown, a create event, in another room,
    /// or sent by someone below the redact level from another server than the target's sender
    /// (room versions 3 on leave that check to the reader); shown but not applied when it names
    /// itself; applied otherwise.
    async fn received_redaction(
        &self,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        json: &str,
        state: &StateMap,
    ) -> Result<RedactionVerdict> {
        use RedactionVerdict::*;
        let Some(target) = pdu.redacts_id() else { return Ok(Withhold) };
        if target == pdu.event_id {
            return Ok(Show);
        }
        let id = target.to_string();
        let Some(row) = self.db(move |s| s.get_event(&id)).await? else { return Ok(Withhold) };
        let Ok(original) = Pdu::from_json_str(&row.json) else { return Ok(Withhold) };
        if original.room_id != pdu.room_id || original.kind == ruma::events::TimelineEventType::RoomCreate {
            return Ok(Withhold);
        }
        if original.sender.server_name() != pdu.sender.server_name() {
            let levels = self.power_levels(state).await?;
            if levels.user(pdu.sender.as_str()) < levels.int("redact", 50) {
                return Ok(Withhold);
            }
        }
        let because = crate::events::client_event(&serde_json::from_str(json).map_err(Error::internal)?);
        Ok(Apply(target.to_string(), crate::events::redact_json(&row.json, rules, Some(&because))?))
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
    /// them: redacted where its users could not (see `visibility`). Modules hear what went
    /// (`on_event_delivered_over_federation`, with the events as sent).
    pub(crate) async fn wire_pdus_delivered(
        &self,
        origin: &str,
        ids: Vec<OwnedEventId>,
        method: myelin_module_api::federation::DeliveryMethod,
    ) -> Result<Vec<Value>> {
        let rows = self.event_rows(ids.into_iter().map(|e| e.to_string()).collect()).await?;
        let visible = self.visible_to_server(origin, rows).await?;
        self.notify_delivered(origin, &visible, method).await;
        visible.iter().map(|j| wire_pdu(j)).collect()
    }

    /// Tells modules that the events of `ids` went to `destination`; reads them only when a
    /// module listens.
    pub(crate) async fn notify_delivered_ids(
        &self,
        destination: &str,
        ids: &[OwnedEventId],
        method: myelin_module_api::federation::DeliveryMethod,
    ) {
        if ids.is_empty() || !self.modules.has_on_event_delivered_over_federation() {
            return;
        }
        match self.event_rows(ids.iter().map(|e| e.to_string()).collect()).await {
            Ok(rows) => {
                let jsons: Vec<String> = rows.into_iter().map(|r| r.json).collect();
                self.notify_delivered(destination, &jsons, method).await;
            }
            Err(e) => tracing::warn!(error = %e, "could not read the events delivered, for the modules"),
        }
    }

    /// `on_event_delivered_over_federation` with stored events (each with its ID).
    pub(crate) async fn notify_delivered(
        &self,
        destination: &str,
        stored: &[String],
        method: myelin_module_api::federation::DeliveryMethod,
    ) {
        if stored.is_empty() || !self.modules.has_on_event_delivered_over_federation() {
            return;
        }
        let events: Vec<Value> = stored
            .iter()
            .filter_map(|j| serde_json::from_str::<Value>(j).ok())
            .map(|mut e| {
                if let Value::Object(m) = &mut e {
                    m.remove("unsigned");
                }
                e
            })
            .collect();
        self.modules.on_event_delivered_over_federation(destination, &events, method).await;
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
            "pdus": self.wire_pdus_delivered(origin, vec![pdu.event_id], DeliveryMethod::Event).await?,
        }))
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
        let ends_sharing = ends_sharing(write.membership.as_deref()) && !write.rejected && !write.soft_failed;
        self.sync.cache.writing(&room);
        let written = EventWriter::finish(self.rooms.writer.submit(write)).await.map_err(Error::from);
        self.sync.cache.written(&room, written.as_ref().ok().map(|(s, _)| *s), *self.sync.stream.borrow());
        if ends_sharing && written.is_ok() {
            self.forget_unshared_device_lists(&room).await;
        }
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

/// Whether a membership can end two users' sharing a room (for the device-list cache).
pub(crate) fn ends_sharing(membership: Option<&str>) -> bool {
    matches!(membership, Some("leave" | "ban"))
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
