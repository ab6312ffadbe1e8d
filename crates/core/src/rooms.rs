//! Rooms: the local event graph (build, auth, persist), room creation, membership, sending,
//! state and history.
//!
//! Every local event goes through [`Homeserver::append_event`]: pick auth events from the state
//! it is built on, sign, run module callbacks and the authorization rules, persist (event, state
//! group delta, extremities, txn ID) in one transaction, then update the cache and wake `/sync`.
//! State events do all of it under the room's send lock; messages only read and persist under
//! it, so concurrent messages may share parents (see `append_event`).

use std::collections::HashMap;
use std::sync::Arc;

use myelin_module_api::EventView;
use myelin_storage::{RoomRow, StateChange, StateEntry};
use ruma::events::TimelineEventType;
use ruma::room_version_rules::RoomVersionRules;
use ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::events::{EventDraft, Pdu, client_event, client_event_from_str, redact_json, sign_event};
use crate::server::{now_ms, random_string};
use crate::writer::{EventWrite, EventWriter, PendingWrite};
use crate::{Error, ErrorKind, Homeserver, Requester, Result};

/// A room's cached current state, extremities and depth; guarded by the room's send lock.
pub(crate) struct RoomCache {
    pub(crate) rules: RoomVersionRules,
    /// Shared with in-flight [`Basis`] snapshots; a state change copies it only if one is out.
    pub(crate) state: Arc<HashMap<(String, String), OwnedEventId>>,
    /// The state group matching `state`, or `None` when the next write must be a snapshot.
    pub(crate) state_group: Option<i64>,
    /// Deltas since the last full snapshot.
    pub(crate) chain_len: i64,
    pub(crate) extremities: Vec<OwnedEventId>,
    pub(crate) depth: u64,
    /// Joined members of other servers: the servers each new event is sent to.
    pub(crate) remote_members: std::collections::BTreeSet<String>,
    /// Joined members of this server: with none, this server is not in the room.
    pub(crate) local_members: std::collections::BTreeSet<String>,
}

/// The most parents an event gets (Synapse's limit too); further extremities wait for the next.
const MAX_PREV_EVENTS: usize = 10;

/// The newest messages' client transaction IDs, so that a retry is recognised without a
/// storage read on every send: `(user, device, txn ID)` -> event ID, oldest dropped first.
#[derive(Default)]
pub(crate) struct RecentTxns {
    events: HashMap<(String, String, String), String>,
    /// The same, by event ID (`/sync` gives the sending device its transaction IDs back).
    by_event: HashMap<String, (String, String, String)>,
    order: std::collections::VecDeque<(String, String, String)>,
}

impl RecentTxns {
    pub(crate) const CAPACITY: usize = 50_000;

    pub(crate) fn get(&self, key: &(String, String, String)) -> Option<&String> {
        self.events.get(key)
    }

    /// The transaction ID `device` of `user` sent `event_id` with, if it is among these.
    pub(crate) fn txn_of(&self, event_id: &str, user: &str, device: &str) -> Option<&str> {
        let (u, d, txn) = self.by_event.get(event_id)?;
        (u == user && d == device).then_some(txn.as_str())
    }

    pub(crate) fn insert(&mut self, key: (String, String, String), event_id: String) {
        self.by_event.insert(event_id.clone(), key.clone());
        if self.events.insert(key.clone(), event_id).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > Self::CAPACITY {
            if let Some(old) = self.order.pop_front()
                && let Some(id) = self.events.remove(&old)
            {
                self.by_event.remove(&id);
            }
        }
    }
}

/// A stored event as [`Homeserver::append_event`] answers with it.
fn appended(row: myelin_storage::EventRow) -> Result<Appended> {
    let mut pdu = Pdu::from_json_str(&row.json)?;
    pdu.rejected = row.rejected;
    Ok(Appended { pdu, json: row.json })
}

/// How many parsed state events [`Homeserver::state_events`] holds.
const MAX_CACHED_STATE_EVENTS: usize = 10_000;

impl RoomCache {
    /// After `event` (built on `basis`) is persisted: its parents leave the extremities (those
    /// beyond the cap stay for the next event), it joins them, and the depth follows.
    fn record(&mut self, basis: &Basis, event: &OwnedEventId) {
        self.extremities.retain(|e| !basis.prev_events.contains(e));
        // Twice only when two sends made the very same event (see `finish_write`).
        if !self.extremities.contains(event) {
            self.extremities.push(event.clone());
        }
        self.depth = self.depth.max(basis.depth + 1);
    }

    pub(crate) fn basis(&self) -> Basis {
        Basis {
            rules: self.rules.clone(),
            state: self.state.clone(),
            prev_events: self.extremities.iter().take(MAX_PREV_EVENTS).cloned().collect(),
            depth: self.depth,
            destinations: self.destinations(),
        }
    }

    /// The other servers with members in the room.
    pub(crate) fn destinations(&self) -> Vec<String> {
        let servers: std::collections::BTreeSet<&str> =
            self.remote_members.iter().filter_map(|u| u.split_once(':').map(|(_, s)| s)).collect();
        servers.into_iter().map(str::to_owned).collect()
    }

    /// Follows a member event of a remote user: joined members' servers get the room's events.
    pub(crate) fn track_member(&mut self, user_id: &str, membership: Option<&str>, local_server: &str) {
        let members = if user_id.split_once(':').is_some_and(|(_, server)| server == local_server) {
            &mut self.local_members
        } else {
            &mut self.remote_members
        };
        if membership == Some("join") {
            members.insert(user_id.to_owned());
        } else {
            members.remove(user_id);
        }
    }
}

/// What an event is built on: a snapshot of the room cache.
pub(crate) struct Basis {
    pub(crate) rules: RoomVersionRules,
    pub(crate) state: Arc<HashMap<(String, String), OwnedEventId>>,
    pub(crate) prev_events: Vec<OwnedEventId>,
    /// The room's greatest depth; the event gets one more.
    pub(crate) depth: u64,
    /// The other servers in the room, which the event is sent to.
    destinations: Vec<String>,
}

/// An event built, signed and checked, not yet written.
struct Checked {
    pdu: Pdu,
    json: String,
    /// `(redacted event ID, its pruned JSON)` when this redacts an event of the room.
    redaction: Option<(String, String)>,
    /// The room state as module views, when third-party rules need it.
    state_views: Vec<EventView>,
    /// The other servers in the room, which the event is sent to.
    destinations: Vec<String>,
}

/// Current state as storage entries, those `keep` accepts.
fn state_entries(
    state: &HashMap<(String, String), OwnedEventId>,
    keep: impl Fn(&str, &str) -> bool,
) -> Vec<StateEntry> {
    state
        .iter()
        .filter(|((t, k), _)| keep(t, k))
        .map(|((t, k), e)| StateEntry { event_type: t.clone(), state_key: k.clone(), event_id: e.to_string() })
        .collect()
}

/// Options of one appended event.
#[derive(Default)]
pub(crate) struct AppendOptions {
    /// `(user_id, device_id, txn_id)` for idempotent sends.
    pub txn: Option<(String, String, String)>,
    /// Whether `check_event_for_spam` applies (non-membership events from clients and modules,
    /// but not createRoom's initial events).
    pub spam_check: bool,
    /// An invite of this remote user, with the room summary to show them: their server signs
    /// the event before it is stored.
    pub remote_invite: Option<(String, Vec<Value>)>,
    /// The event's timestamp, when the caller has already hashed it (a room version 12 create
    /// event, whose hash names the room); now otherwise.
    pub origin_server_ts: Option<MilliSecondsSinceUnixEpoch>,
}

/// The result of appending an event.
pub(crate) struct Appended {
    pub(crate) pdu: Pdu,
    pub(crate) json: String,
}

/// `POST /createRoom`'s body, shape-checked by `http` and validated here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CreateRoomRequest {
    /// `public` or `private`.
    pub visibility: Option<String>,
    /// Local alias localpart.
    pub room_alias_name: Option<String>,
    /// `m.room.name`.
    pub name: Option<String>,
    /// `m.room.topic`.
    pub topic: Option<String>,
    /// Users to invite.
    pub invite: Vec<String>,
    /// Extra content for `m.room.create`.
    pub creation_content: Option<Map<String, Value>>,
    /// Extra state events.
    pub initial_state: Vec<InitialStateEvent>,
    /// `private_chat`, `public_chat` or `trusted_private_chat`.
    pub preset: Option<String>,
    /// Mark invites as direct chats.
    pub is_direct: bool,
    /// Merged into the default power levels.
    pub power_level_content_override: Option<Map<String, Value>>,
    /// Room version.
    pub room_version: Option<String>,
}

/// An `initial_state` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct InitialStateEvent {
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// State key.
    #[serde(default)]
    pub state_key: String,
    /// Content.
    pub content: Map<String, Value>,
}

/// What `/messages` is asked for.
#[derive(Debug, Clone, Copy)]
pub struct Pagination<'a> {
    /// Start token; the room's end (backwards) or start (forwards) if absent.
    pub from: Option<&'a str>,
    /// Stop token.
    pub to: Option<&'a str>,
    /// Direction `b`.
    pub backwards: bool,
    /// Page size.
    pub limit: usize,
    /// Event filter.
    pub filter: Option<&'a EventFilter>,
}

/// A page of `/messages`.
#[derive(Debug, Clone)]
pub struct MessagesPage {
    /// Client-format events.
    pub chunk: Vec<Value>,
    /// The token the page started at.
    pub start: String,
    /// Where to continue, if there is more.
    pub end: Option<String>,
    /// Member events of the senders (lazy loading).
    pub state: Vec<Value>,
}

/// Power levels, with the spec's defaults, and the room's creators where the room version
/// gives them unlimited power (12 on).
struct PowerLevels {
    content: Map<String, Value>,
    privileged_creators: Vec<String>,
}

impl PowerLevels {
    fn int(&self, key: &str, default: i64) -> i64 {
        self.content.get(key).and_then(as_int).unwrap_or(default)
    }
    fn user(&self, user: &str) -> i64 {
        if self.privileged_creators.iter().any(|c| c == user) {
            return i64::MAX;
        }
        self.content
            .get("users")
            .and_then(|u| u.get(user))
            .and_then(as_int)
            .unwrap_or_else(|| self.int("users_default", 0))
    }
}

/// The creators a room version 12+ create event gives unlimited power: its sender and its
/// `additional_creators`. None in earlier versions.
pub(crate) fn privileged_creators(create: &Pdu) -> Vec<String> {
    let content = create.content_map();
    let version = content.get("room_version").and_then(Value::as_str).unwrap_or("1");
    let privileged = ruma::RoomVersionId::try_from(version)
        .ok()
        .and_then(|v| v.rules())
        .is_some_and(|r| r.authorization.explicitly_privilege_room_creators);
    if !privileged {
        return Vec::new();
    }
    let mut creators = vec![create.sender.to_string()];
    let extra = content.get("additional_creators").and_then(Value::as_array);
    creators.extend(extra.into_iter().flatten().filter_map(Value::as_str).map(str::to_owned));
    creators
}

pub(crate) fn guest_forbidden() -> Error {
    Error::new(
        ErrorKind::Module { status: 403, errcode: "M_GUEST_ACCESS_FORBIDDEN".into() },
        "Guest access not allowed",
    )
}

/// The parts of a `RoomEventFilter` that `/messages` applies.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EventFilter {
    /// Only these types (`*` wildcards allowed).
    pub types: Option<Vec<String>>,
    /// Not these types.
    pub not_types: Vec<String>,
    /// Only these senders.
    pub senders: Option<Vec<String>>,
    /// Not these senders.
    pub not_senders: Vec<String>,
}

impl EventFilter {
    fn matches(&self, event: &Value) -> bool {
        let t = event["type"].as_str().unwrap_or_default();
        let sender = event["sender"].as_str().unwrap_or_default();
        let type_match = |p: &String| crate::directory::glob_match(p, t);
        self.types.as_ref().is_none_or(|ts| ts.iter().any(type_match))
            && !self.not_types.iter().any(type_match)
            && self.senders.as_ref().is_none_or(|s| s.iter().any(|x| x == sender))
            && !self.not_senders.iter().any(|x| x == sender)
    }
}

fn as_int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

pub(crate) fn parse_room_id(room_id: &str) -> Result<OwnedRoomId> {
    OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param(format!("Invalid room ID: {room_id}")))
}

fn parse_user_id(user_id: &str) -> Result<OwnedUserId> {
    OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param(format!("Invalid user ID: {user_id}")))
}

/// Stream tokens: `s<N>` from /sync, `t<N>` from pagination; both mean "position N".
pub(crate) fn parse_token(token: &str) -> Option<i64> {
    token.strip_prefix('s').or_else(|| token.strip_prefix('t')).and_then(|n| n.parse().ok()).filter(|n| *n >= 0)
}

/// The rooms service's in-memory state (`hs.rooms`). The database holds every room; this holds
/// what makes appending and reading fast, and the send locks.
pub(crate) struct RoomsState {
    /// Per-room caches of current state, extremities and depth (a cache: rebuilt from storage
    /// when missing). The inner async mutex is also the room's send lock (a lock: with several
    /// processes it must become a database or routing lock): state events hold it across
    /// build, auth and persist; messages only to read their parents and to persist (see
    /// `append_event`). The outer std mutex is only held to look the entry up, never across
    /// an await.
    pub(crate) caches: std::sync::Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<Option<RoomCache>>>>>,
    /// Parsed state events by ID (a cache; see `load_events`). Stored events do not change,
    /// except a redaction's target, which the redaction removes from here.
    pub(crate) state_events: std::sync::Mutex<HashMap<OwnedEventId, Pdu>>,
    /// Commits events, batching concurrent ones (see `writer`): this process's writer thread.
    pub(crate) writer: EventWriter,
    /// `(user, device, txn ID)` of messages queued for writing and not yet committed, so that a
    /// retry arriving meanwhile waits for the first instead of writing a second event (the only
    /// copy, and a lock: several processes need it in the database).
    pub(crate) txns_in_flight: std::sync::Mutex<std::collections::HashSet<(String, String, String)>>,
    /// The newest messages' transaction IDs (a cache of the `event_txn_ids` table; see
    /// [`RecentTxns`]).
    pub(crate) recent_txns: std::sync::Mutex<RecentTxns>,
    /// The history visibility of state groups read so far (a cache: groups never change).
    pub(crate) visibility_cache: std::sync::Mutex<HashMap<i64, crate::visibility::HistoryVisibility>>,
}

impl RoomsState {
    pub(crate) fn new(writer: EventWriter, recent_txns: RecentTxns) -> Self {
        RoomsState {
            caches: Default::default(),
            state_events: Default::default(),
            writer,
            txns_in_flight: Default::default(),
            recent_txns: std::sync::Mutex::new(recent_txns),
            visibility_cache: Default::default(),
        }
    }
}

impl Homeserver {
    pub(crate) async fn room_lock(&self, room_id: &RoomId) -> Result<tokio::sync::OwnedMutexGuard<Option<RoomCache>>> {
        let entry = {
            let mut rooms = self.rooms.caches.lock().unwrap_or_else(|p| p.into_inner());
            rooms.entry(room_id.to_owned()).or_default().clone()
        };
        let mut guard = entry.lock_owned().await;
        if guard.is_none() {
            *guard = self.load_room_cache(room_id).await?;
        }
        Ok(guard)
    }

    async fn load_room_cache(&self, room_id: &RoomId) -> Result<Option<RoomCache>> {
        let rid = room_id.to_string();
        let loaded = self
            .db(move |s| {
                let Some(room) = s.get_room(&rid)? else { return Ok(None) };
                let state = s.get_current_state(&rid)?;
                let extremities = s.get_forward_extremities(&rid)?;
                let mut depth = 0;
                let mut group = None;
                for id in &extremities {
                    if let Some(ev) = s.get_event(id)? {
                        let v: Value = serde_json::from_str(&ev.json).unwrap_or_default();
                        depth = depth.max(v["depth"].as_u64().unwrap_or(0));
                        group = ev.state_group;
                    }
                }
                if extremities.len() != 1 {
                    group = None;
                }
                let chain_len = match group {
                    Some(g) => s.state_group_chain_length(g)?,
                    None => 0,
                };
                let members = s.room_memberships(&rid)?;
                Ok(Some((room, state, extremities, depth, group, chain_len, members)))
            })
            .await?;
        let Some((room, state, extremities, depth, state_group, chain_len, members)) = loaded else {
            return Ok(None);
        };
        let local_suffix = format!(":{}", self.server_name());
        let (local_members, remote_members) = members
            .into_iter()
            .filter(|(_, membership)| membership == "join")
            .map(|(user, _)| user)
            .partition(|user| user.ends_with(&local_suffix));
        let rules = ruma::RoomVersionId::try_from(room.room_version.as_str())
            .ok()
            .and_then(|v| v.rules())
            .ok_or_else(|| Error::internal(format!("unknown room version {}", room.room_version)))?;
        Ok(Some(RoomCache {
            rules,
            state: Arc::new(
                state
                    .into_iter()
                    .filter_map(|e| Some(((e.event_type, e.state_key), OwnedEventId::try_from(e.event_id).ok()?)))
                    .collect(),
            ),
            state_group,
            chain_len,
            extremities: extremities.into_iter().filter_map(|e| OwnedEventId::try_from(e).ok()).collect(),
            depth,
            remote_members,
            local_members,
        }))
    }

    /// Parsed events by ID. State events (auth events, power levels, memberships: read for
    /// nearly every event sent) come from [`Homeserver::state_events`] when they can.
    pub(crate) async fn load_events(&self, ids: Vec<String>) -> Result<HashMap<OwnedEventId, Pdu>> {
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.rooms.state_events.lock().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                match OwnedEventId::try_from(id.as_str()).ok().and_then(|e| cache.get(&e).cloned()) {
                    Some(pdu) => {
                        out.insert(pdu.event_id.clone(), pdu);
                    }
                    None => missing.push(id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let loaded = self
            .db(move |s| {
                let mut loaded = Vec::new();
                for id in missing {
                    if let Some(row) = s.get_event(&id)?
                        && let Ok(mut pdu) = Pdu::from_json_str(&row.json)
                    {
                        pdu.rejected = row.rejected;
                        loaded.push(pdu);
                    }
                }
                Ok(loaded)
            })
            .await?;
        for pdu in loaded {
            if pdu.state_key.is_some() {
                self.remember_state_event(&pdu);
            }
            out.insert(pdu.event_id.clone(), pdu);
        }
        Ok(out)
    }

    pub(crate) fn remember_state_event(&self, pdu: &Pdu) {
        let mut cache = self.rooms.state_events.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_STATE_EVENTS {
            // Crude but bounded; the hot entries (a room's auth events) come straight back.
            cache.clear();
        }
        cache.insert(pdu.event_id.clone(), pdu.clone());
    }

    /// Builds, authorises and persists one local event. The one path every local event takes.
    ///
    /// State events and redactions are built, checked and persisted under the room's send lock,
    /// against the current state. Other events (messages) take the lock only to read what they
    /// are built on and, later, to persist: building, signing, module callbacks and auth checks
    /// run outside it, so a slow module (a Python spam checker, an HTTP antispam backend) does
    /// not serialise a busy room. Messages built at the same time share parents, and the next
    /// event merges them, as on Synapse; their state is the state they were built on.
    pub(crate) async fn append_event(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        kind: &str,
        state_key: Option<&str>,
        content: Map<String, Value>,
        options: AppendOptions,
    ) -> Result<Appended> {
        let mut guard = self.room_lock(room_id).await?;
        let Some(cache) = guard.as_mut() else {
            return Err(Error::not_found(format!("Unknown room {room_id}")));
        };
        let basis = cache.basis();
        if let (None, Some(group), false) = (state_key, cache.state_group, kind == "m.room.redaction") {
            drop(guard);
            // A retry is answered before anything is built (or any module asked again), from
            // the recent transaction IDs kept in memory (loaded at start-up, so across restarts).
            if let Some(existing) = self.recent_txn_event(&options).await? {
                return Ok(existing);
            }
            let checked = self.build_checked(room_id, sender, kind, None, content, &options, &basis).await?;
            let mut guard = self.room_lock(room_id).await?;
            let Some(cache) = guard.as_mut() else {
                return Err(Error::not_found(format!("Unknown room {room_id}")));
            };
            // A retry with the same transaction ID may be on its way to the writer (then wait
            // for it), or have landed while this one was built. Claimed first, looked up
            // second: a request gives its claim up only after its commit.
            let txn_key = options.txn.clone();
            if let Some(key) = &txn_key
                && !self.rooms.txns_in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone())
            {
                drop(guard);
                return self.wait_for_txn(&options).await;
            }
            let txn_done = || {
                if let Some(key) = &txn_key {
                    self.rooms.txns_in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
                }
            };
            if let Some(existing) = self.recent_txn_event(&options).await.inspect_err(|_| txn_done())? {
                txn_done();
                return Ok(existing);
            }
            let pending = self
                .submit_checked(room_id, sender, kind, None, &checked, StateChange::Same(group), &basis, &options)
                .await
                .inspect_err(|_| txn_done())?;
            // The cache moves on now, so the next message builds on this one while it is being
            // committed (the writer keeps queue order, so parents commit first).
            cache.record(&basis, &checked.pdu.event_id);
            drop(guard);
            let written = self.finish_write(room_id, &checked, pending).await;
            if written.is_ok()
                && let Some(key) = &txn_key
            {
                let mut recent = self.rooms.recent_txns.lock().unwrap_or_else(|p| p.into_inner());
                recent.insert(key.clone(), checked.pdu.event_id.to_string());
            }
            txn_done();
            let (stream, _) = match written {
                Ok(w) => w,
                Err(e) => {
                    // The cache counted the event as an extremity: start again from storage.
                    self.forget_room_cache(room_id);
                    // A retry of a transaction too old for memory conflicts here with its
                    // first event, which is the answer.
                    if txn_key.is_some()
                        && let Ok(Some(existing)) = self.txn_event(&options).await
                    {
                        return Ok(existing);
                    }
                    return Err(e);
                }
            };
            return Ok(self.announce(stream, checked));
        }

        if let Some(existing) = self.txn_event(&options).await? {
            return Ok(existing);
        }
        // As Synapse: a state event the sender already set, with the same content, is not
        // sent again (setting a topic twice, joining twice); the current one is the answer.
        if let Some(key) = state_key
            && let Some(current) = cache.state.get(&(kind.to_owned(), key.to_owned())).cloned()
            && let Some(existing) = self.load_events(vec![current.to_string()]).await?.remove(&current)
            && existing.sender == *sender
            && existing.content_map() == content
        {
            let id = current.to_string();
            if let Some(row) = self.db(move |s| s.get_event(&id)).await? {
                return appended(row);
            }
        }
        let mut checked = self.build_checked(room_id, sender, kind, state_key, content, &options, &basis).await?;
        if let Some((target, room_state)) = &options.remote_invite {
            checked.json = self.invite_over_federation(room_id, &checked.json, target, room_state).await?;
        }
        let state_change = match state_key {
            Some(key) => {
                let entry = StateEntry {
                    event_type: kind.to_owned(),
                    state_key: key.to_owned(),
                    event_id: checked.pdu.event_id.to_string(),
                };
                match cache.state_group {
                    Some(prev) if cache.chain_len < myelin_storage::sqlite::MAX_STATE_DELTA_CHAIN => {
                        StateChange::New { prev: Some(prev), delta: vec![entry] }
                    }
                    _ => {
                        let mut full = state_entries(&cache.state, |t, k| !(t == kind && k == key));
                        full.push(entry);
                        StateChange::New { prev: None, delta: full }
                    }
                }
            }
            None => match cache.state_group {
                Some(g) => StateChange::Same(g),
                None => StateChange::New { prev: None, delta: state_entries(&cache.state, |_, _| true) },
            },
        };
        let is_snapshot = matches!(&state_change, StateChange::New { prev: None, .. });
        let pending =
            self.submit_checked(room_id, sender, kind, state_key, &checked, state_change, &basis, &options).await?;
        let (stream, group) = self.finish_write(room_id, &checked, pending).await?;
        if let Some(key) = state_key {
            Arc::make_mut(&mut cache.state).insert((kind.to_owned(), key.to_owned()), checked.pdu.event_id.clone());
            cache.chain_len = if is_snapshot { 0 } else { cache.chain_len + 1 };
            if kind == "m.room.member" {
                cache.track_member(key, checked.pdu.membership().as_deref(), self.server_name());
            }
        }
        cache.state_group = Some(group);
        cache.record(&basis, &checked.pdu.event_id);
        if state_key.is_some() {
            // Known now, so that reading the new group's visibility later costs nothing.
            self.remember_group_visibility(group, &cache.state).await;
        }
        drop(guard);
        Ok(self.announce(stream, checked))
    }

    /// For a request whose transaction ID another request is writing: that request's event,
    /// once written.
    async fn wait_for_txn(&self, options: &AppendOptions) -> Result<Appended> {
        for _ in 0..1000 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            if let Some(existing) = self.txn_event(options).await? {
                return Ok(existing);
            }
        }
        Err(Error::internal("a request with the same transaction ID did not finish"))
    }

    /// Drops a room's cache, so the next event reloads it from storage.
    pub(crate) fn forget_room_cache(&self, room_id: &RoomId) {
        self.rooms.caches.lock().unwrap_or_else(|p| p.into_inner()).remove(room_id);
    }

    /// [`Homeserver::txn_event`] from the transaction IDs kept in memory (the newest
    /// [`RecentTxns::CAPACITY`] messages'). A client retries within moments; one retrying an
    /// older transaction than that gets a new event.
    async fn recent_txn_event(&self, options: &AppendOptions) -> Result<Option<Appended>> {
        let Some(key) = &options.txn else { return Ok(None) };
        let Some(id) = self.rooms.recent_txns.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned() else {
            return Ok(None);
        };
        self.db(move |s| s.get_event(&id)).await?.map(appended).transpose()
    }

    /// The event an earlier request with the same transaction ID created, if any.
    async fn txn_event(&self, options: &AppendOptions) -> Result<Option<Appended>> {
        let Some((user, device, txn)) = &options.txn else { return Ok(None) };
        let (u, d, t) = (user.clone(), device.clone(), txn.clone());
        let row = self
            .db(move |s| match s.get_txn_event(&u, &d, &t)? {
                Some(id) => s.get_event(&id),
                None => Ok(None),
            })
            .await?;
        row.map(appended).transpose()
    }

    /// Builds and signs an event on `basis`, runs the module callbacks that may change or refuse
    /// it and the authorization rules. Nothing is written.
    #[allow(clippy::too_many_arguments)]
    async fn build_checked(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        kind: &str,
        state_key: Option<&str>,
        content: Map<String, Value>,
        options: &AppendOptions,
        basis: &Basis,
    ) -> Result<Checked> {
        let timeline_type = TimelineEventType::from(kind);
        let raw_content = serde_json::value::to_raw_value(&content).map_err(Error::internal)?;
        let auth_types = ruma::state_res::auth_types_for_event(
            &timeline_type,
            sender,
            state_key,
            &raw_content,
            &basis.rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;
        let auth_ids: Vec<OwnedEventId> =
            auth_types.iter().filter_map(|(t, k)| basis.state.get(&(t.to_string(), k.clone())).cloned()).collect();
        let redacts = if timeline_type == TimelineEventType::RoomRedaction {
            content.get("redacts").and_then(Value::as_str).map(str::to_owned)
        } else {
            None
        };
        let mut to_load: Vec<String> = auth_ids.iter().map(|e| e.to_string()).collect();
        to_load.extend(crate::state::implied_auth_events(&basis.rules, room_id).map(|e| e.to_string()));
        if let Some(target) = &redacts {
            to_load.push(target.clone());
        }
        let loaded = self.load_events(to_load).await?;

        let references = basis.prev_events.iter().chain(&auth_ids).cloned().collect();
        let reference_hashes = self.reference_hashes(&basis.rules, references).await?;
        let origin_server_ts = options
            .origin_server_ts
            .unwrap_or_else(|| MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(now_ms() as u64)));
        let draft = |content: Map<String, Value>| EventDraft {
            room_id,
            sender,
            kind,
            state_key,
            content,
            prev_events: basis.prev_events.clone(),
            auth_events: auth_ids.clone(),
            depth: basis.depth + 1,
            // v11 moved `redacts` into content; v10 needs it at the top level too.
            redacts: if basis.rules.redaction.keep_room_redaction_redacts { None } else { redacts.as_deref() },
            origin_server_ts,
            reference_hashes: reference_hashes.clone(),
        };
        let mut signed = sign_event(draft(content), &basis.rules, self.server_name(), &self.key)?;
        // Third-party rules see every local event, membership included, before the spam check;
        // a module may replace the content, and the event is then built again.
        let state_views = if self.modules.has_check_event_allowed() || self.modules.has_on_new_event() {
            self.state_views(&basis.state).await?
        } else {
            Vec::new()
        };
        if self.modules.has_check_event_allowed() {
            let view = EventView::new(serde_json::from_str(&signed.json).map_err(Error::internal)?);
            if let Some(content) = self.modules.check_event_allowed(&view, &state_views).await? {
                signed = sign_event(draft(content), &basis.rules, self.server_name(), &self.key)?;
            }
        }
        let pdu = signed.pdu;

        crate::state::check_auth(&basis.rules, &pdu, &loaded, &basis.state).map_err(Error::forbidden)?;

        // Redacting someone else's event needs the redact power level.
        let mut redaction = None;
        if let Some(target) = &redacts {
            let target_id =
                OwnedEventId::try_from(target.as_str()).map_err(|_| Error::bad_json("Invalid event ID in redacts"))?;
            if let Some(original) = loaded.get(&target_id) {
                if original.room_id != *room_id {
                    return Err(Error::new(
                        ErrorKind::Module { status: 400, errcode: "M_UNKNOWN".into() },
                        "Cannot redact event from a different room",
                    ));
                }
                if original.sender != *sender {
                    let pl = self.power_levels(&basis.state).await?;
                    if pl.user(sender.as_str()) < pl.int("redact", 50) {
                        return Err(Error::forbidden("You don't have permission to redact events"));
                    }
                }
                let because = client_event(&serde_json::from_str(&signed.json).map_err(Error::internal)?);
                let original_json = self
                    .db({
                        let t = target.clone();
                        move |s| s.get_event(&t)
                    })
                    .await?
                    .map(|r| r.json)
                    .unwrap_or_default();
                redaction = Some((target.clone(), redact_json(&original_json, &basis.rules, Some(&because))?));
            }
        }

        if options.spam_check {
            let view = EventView::new(serde_json::from_str(&signed.json).map_err(Error::internal)?);
            self.modules.check_event_for_spam(&view).await?;
        }
        Ok(Checked { pdu, json: signed.json, redaction, state_views, destinations: basis.destinations.clone() })
    }

    /// Queues a checked event's write (with its state change, the forward extremities it
    /// replaces, its parents, and its transaction ID, all in one transaction) on the event
    /// writer; [`Homeserver::finish_write`] waits for it. Writes commit in the order queued, so
    /// an event queued under the room's lock commits after its parents.
    #[allow(clippy::too_many_arguments)]
    async fn submit_checked(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        kind: &str,
        state_key: Option<&str>,
        checked: &Checked,
        state: StateChange,
        basis: &Basis,
        options: &AppendOptions,
    ) -> Result<PendingWrite> {
        let rid = room_id.to_string();
        if kind == "m.room.join_rules"
            && let Some(rule) = checked.pdu.content_map().get("join_rule").and_then(Value::as_str).map(str::to_owned)
        {
            let r = rid.clone();
            self.db(move |s| s.set_room_join_rule(&r, &rule)).await?;
        }
        // Marked before the commit so that no sync trusts a cached section of this room
        // once the stream can cover the event.
        self.sync.cache.writing(&rid);
        Ok(self.rooms.writer.submit(EventWrite {
            event_id: checked.pdu.event_id.to_string(),
            room_id: rid,
            event_type: kind.to_owned(),
            state_key: state_key.map(str::to_owned),
            sender: sender.to_string(),
            membership: checked.pdu.membership(),
            json: checked.json.clone(),
            state,
            prev_events: basis.prev_events.iter().map(|e| e.to_string()).collect(),
            txn: options.txn.clone(),
            redaction: checked.redaction.clone(),
            rejected: false,
            soft_failed: false,
            current_state: None,
            destinations: checked.destinations.clone(),
        }))
    }

    /// Waits for a write [`Homeserver::submit_checked`] queued. Returns `(stream position,
    /// state group)`.
    async fn finish_write(&self, room_id: &RoomId, checked: &Checked, pending: PendingWrite) -> Result<(i64, i64)> {
        let written = match EventWriter::finish(pending).await {
            // The same event is already stored: messages built at the same moment on the same
            // parents with the same content and sender are one event (the same reference hash),
            // as they would be on Synapse. The first one's position stands for both.
            Err(myelin_storage::StorageError::Conflict) => {
                let id = checked.pdu.event_id.to_string();
                match self.db(move |s| s.get_event(&id)).await? {
                    Some(row) => Ok((row.stream_ordering, row.state_group.unwrap_or_default())),
                    None => Err(Error::from(myelin_storage::StorageError::Conflict)),
                }
            }
            other => other.map_err(Error::from),
        };
        let position = written.as_ref().ok().map(|(stream, _)| *stream);
        self.sync.cache.written(room_id.as_str(), position, *self.sync.stream.borrow());
        if written.is_ok() {
            if let Some((target, _)) = &checked.redaction
                && let Ok(target) = OwnedEventId::try_from(target.as_str())
            {
                // Its stored JSON was just rewritten.
                self.rooms.state_events.lock().unwrap_or_else(|p| p.into_inner()).remove(&target);
            }
            if checked.pdu.state_key.is_some() {
                self.remember_state_event(&checked.pdu);
            }
            self.wake_destinations(&checked.destinations);
        }
        written
    }

    /// After a persist: wakes `/sync` and runs `on_new_event` in the background.
    fn announce(&self, stream: i64, checked: Checked) -> Appended {
        self.advance_stream(stream);
        if self.modules.has_on_new_event()
            && let Ok(object) = serde_json::from_str(&checked.json)
        {
            self.modules.spawn_on_new_event(EventView::new(object), checked.state_views);
        }
        Appended { pdu: checked.pdu, json: checked.json }
    }

    /// The state events of a room as module views (for third-party rules).
    pub(crate) async fn state_views(&self, state: &HashMap<(String, String), OwnedEventId>) -> Result<Vec<EventView>> {
        let ids: Vec<String> = state.values().map(|e| e.to_string()).collect();
        self.db(move |s| {
            let mut out = Vec::new();
            for id in ids {
                if let Some(row) = s.get_event(&id)?
                    && let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&row.json)
                {
                    out.push(EventView::new(m));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn power_levels(&self, state: &HashMap<(String, String), OwnedEventId>) -> Result<PowerLevels> {
        let id_of = |kind: &str| state.get(&(kind.to_owned(), String::new())).cloned();
        let (pl_id, create_id) = (id_of("m.room.power_levels"), id_of("m.room.create"));
        let events =
            self.load_events([&pl_id, &create_id].into_iter().flatten().map(|e| e.to_string()).collect()).await?;
        let content = pl_id.and_then(|id| events.get(&id)).map(Pdu::content_map).unwrap_or_default();
        let privileged_creators = create_id.and_then(|id| events.get(&id)).map(privileged_creators).unwrap_or_default();
        Ok(PowerLevels { content, privileged_creators })
    }

    /// The current state of a room as `(type, state_key) -> event_id`, if the room exists.
    pub(crate) async fn current_state(
        &self,
        room_id: &RoomId,
    ) -> Result<Option<HashMap<(String, String), OwnedEventId>>> {
        let guard = self.room_lock(room_id).await?;
        Ok(guard.as_ref().map(|c| c.state.as_ref().clone()))
    }

    pub(crate) async fn state_content_of(
        &self,
        room_id: &RoomId,
        kind: &str,
        key: &str,
    ) -> Result<Option<Map<String, Value>>> {
        self.state_content(room_id, kind, key).await
    }

    /// Whether `user` has the power to send state of `kind` in the room.
    pub(crate) async fn can_send_state(&self, room_id: &RoomId, user: &str, kind: &str) -> Result<bool> {
        if self.membership_of(room_id, user).await?.as_deref() != Some("join") {
            return Ok(false);
        }
        let state = self.current_state(room_id).await?.unwrap_or_default();
        let pl = self.power_levels(&state).await?;
        let needed = pl
            .content
            .get("events")
            .and_then(|e| e.get(kind))
            .and_then(as_int)
            .unwrap_or_else(|| pl.int("state_default", 50));
        Ok(pl.user(user) >= needed)
    }

    pub(crate) async fn state_content(
        &self,
        room_id: &RoomId,
        kind: &str,
        key: &str,
    ) -> Result<Option<Map<String, Value>>> {
        let Some(state) = self.current_state(room_id).await? else { return Ok(None) };
        let Some(id) = state.get(&(kind.to_owned(), key.to_owned())) else { return Ok(None) };
        Ok(self.load_events(vec![id.to_string()]).await?.values().next().map(Pdu::content_map))
    }

    /// A user's current membership in a room.
    pub(crate) async fn membership_of(&self, room_id: &RoomId, user_id: &str) -> Result<Option<String>> {
        Ok(self
            .state_content(room_id, "m.room.member", user_id)
            .await?
            .and_then(|c| c.get("membership").and_then(Value::as_str).map(str::to_owned)))
    }

    async fn require_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        if self.membership_of(room_id, user_id.as_str()).await?.as_deref() == Some("join") {
            Ok(())
        } else {
            Err(Error::forbidden(format!("User {user_id} not in room {room_id}")))
        }
    }

    /// Makes a room: its row and its `m.room.create` event. From room version 12 the room is
    /// named after its create event (`!` and the event's reference hash), so the event is
    /// signed once to learn the name, then appended with the same timestamp: the same hash.
    async fn found_room(
        &self,
        version: &str,
        rules: &RoomVersionRules,
        creator: &UserId,
        mut content: Map<String, Value>,
        is_public: bool,
    ) -> Result<OwnedRoomId> {
        if !rules.authorization.use_room_create_sender {
            content.insert("creator".into(), json!(creator));
        }
        content.insert("room_version".into(), json!(version));
        // Room version 12 names the room after its create event, whose only entropy is its
        // timestamp: a user making rooms with the same content in the same millisecond would
        // name the same room. As Synapse, a taken name is tried again a few milliseconds on.
        let mut attempt = 0;
        let (room_id, origin_server_ts) = loop {
            let named = OwnedRoomId::try_from(format!("!{}:{}", random_string(18), self.server_name()))
                .map_err(Error::internal)?;
            let jitter = if attempt == 0 { 0 } else { rand::Rng::gen_range(&mut rand::thread_rng(), 1..=10) };
            let origin_server_ts = MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(now_ms() as u64 + jitter));
            let draft = EventDraft {
                room_id: &named,
                sender: creator,
                kind: "m.room.create",
                state_key: Some(""),
                content: content.clone(),
                prev_events: Vec::new(),
                auth_events: Vec::new(),
                depth: 1,
                redacts: None,
                origin_server_ts,
                reference_hashes: HashMap::new(),
            };
            let signed = sign_event(draft, rules, self.server_name(), &self.key)?;
            // Checked before anything is stored: a bad `additional_creators` leaves no empty room.
            crate::state::check_auth(rules, &signed.pdu, &HashMap::new(), &HashMap::new())
                .map_err(|e| Error::bad_json(format!("Invalid creation_content: {e}")))?;
            let room_id = signed.pdu.room_id.clone();
            let row = RoomRow {
                room_id: room_id.to_string(),
                room_version: version.to_owned(),
                creator: creator.to_string(),
                is_public,
            };
            let made = self
                .db(move |s| match s.create_room(&row) {
                    Ok(()) => Ok(true),
                    Err(myelin_storage::StorageError::Conflict) => Ok(false),
                    Err(e) => Err(e),
                })
                .await?;
            match (made, attempt) {
                (true, _) => break (room_id, origin_server_ts),
                (false, 0..5) => attempt += 1,
                (false, _) => return Err(Error::internal("could not find a free room ID")),
            }
        };
        let options = AppendOptions { origin_server_ts: Some(origin_server_ts), ..AppendOptions::default() };
        let appended = self.append_event(&room_id, creator, "m.room.create", Some(""), content, options).await?;
        if appended.pdu.room_id != room_id {
            // A third-party rules module rewrote the create event; in room version 12 that
            // would name another room.
            return Err(Error::internal("the room's create event changed while it was made"));
        }
        Ok(room_id)
    }

    /// `POST /createRoom` (and `ModuleApi.create_room`). Returns `(room_id, alias)`.
    pub async fn create_room(
        &self,
        requester: &Requester,
        body: Map<String, Value>,
    ) -> Result<(OwnedRoomId, Option<String>)> {
        if requester.is_guest {
            return Err(guest_forbidden());
        }
        // As Synapse: `rc_room_creation` and `rc_message` both, neither counted unless both pass.
        let user = requester.user_id.as_str();
        self.peek_user(&self.limiters.room_creation, user, None).await?;
        self.limit_message(user, false).await?;
        self.limit_user(&self.limiters.room_creation, user, None).await?;
        let body = self.modules.on_create_room(requester.user_id.as_str(), body, requester.is_admin).await?;
        let request: CreateRoomRequest = serde_json::from_value(Value::Object(body.clone()))
            .map_err(|e| Error::bad_json(format!("Invalid createRoom body: {e}")))?;
        let version = request.room_version.clone().unwrap_or_else(|| self.config.default_room_version.clone());
        if !crate::config::SUPPORTED_ROOM_VERSIONS.contains(&version.as_str()) {
            return Err(Error::new(
                ErrorKind::UnsupportedRoomVersion,
                "Your homeserver does not support this room version",
            ));
        }
        let rules = ruma::RoomVersionId::try_from(version.as_str())
            .ok()
            .and_then(|v| v.rules())
            .ok_or_else(|| Error::new(ErrorKind::UnsupportedRoomVersion, "Unknown room version"))?;
        let visibility = request.visibility.as_deref().unwrap_or("private");
        if !["public", "private"].contains(&visibility) {
            return Err(Error::invalid_param("visibility must be 'public' or 'private'"));
        }
        let preset = request
            .preset
            .clone()
            .unwrap_or_else(|| if visibility == "public" { "public_chat".into() } else { "private_chat".into() });
        if !["private_chat", "public_chat", "trusted_private_chat"].contains(&preset.as_str()) {
            return Err(Error::invalid_param(format!("Unknown preset {preset}")));
        }
        let mut invitees = Vec::new();
        for i in &request.invite {
            invitees.push(parse_user_id(i)?);
        }
        let alias = match &request.room_alias_name {
            Some(local) => {
                let alias = format!("#{local}:{}", self.server_name());
                self.check_alias_available(&alias).await?;
                Some(alias)
            }
            None => None,
        };
        if !requester.is_admin {
            self.modules.user_may_create_room(requester.user_id.as_str(), &body).await?;
        }

        let creator = &requester.user_id;
        let mut create_content = request.creation_content.clone().unwrap_or_default();
        // Room version 12: a trusted private chat's invitees are creators too (as in Synapse),
        // rather than users at power 100.
        let invitees_are_creators = rules.authorization.additional_room_creators && preset == "trusted_private_chat";
        if invitees_are_creators && !invitees.is_empty() {
            let mut creators: Vec<String> = create_content
                .get("additional_creators")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            creators.extend(invitees.iter().map(|i| i.to_string()));
            creators.sort();
            creators.dedup();
            create_content.insert("additional_creators".into(), json!(creators));
        }
        // createRoom's visibility publishes without `user_may_publish_room`, as in Synapse.
        let room_id = self.found_room(&version, &rules, creator, create_content, visibility == "public").await?;

        let send = |kind: &'static str, key: Option<String>, content: Value| {
            let room_id = room_id.clone();
            async move {
                let Value::Object(content) = content else { return Err(Error::bad_json("content must be an object")) };
                self.append_event(&room_id, creator, kind, key.as_deref(), content, AppendOptions::default()).await
            }
        };
        let (displayname, avatar_url) = self.profile_of(creator.as_str()).await?;
        let mut join = json!({"membership": "join"});
        if let Some(d) = displayname {
            join["displayname"] = json!(d);
        }
        if let Some(a) = avatar_url {
            join["avatar_url"] = json!(a);
        }
        send("m.room.member", Some(creator.to_string()), join).await?;

        // From room version 12 creators have unlimited power and may not be listed.
        let creators_privileged = rules.authorization.explicitly_privilege_room_creators;
        let mut users = Map::new();
        if !creators_privileged {
            users.insert(creator.to_string(), json!(100));
        }
        if preset == "trusted_private_chat" && !invitees_are_creators {
            for i in &invitees {
                users.insert(i.to_string(), json!(100));
            }
        }
        let mut power = json!({
            "users": users, "users_default": 0,
            "events": {
                "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
                "m.room.server_acl": 100, "m.room.encryption": 100
            },
            "events_default": 0, "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 50,
            "historical": 100
        });
        if creators_privileged {
            // Above any power a creator can hand out, so only creators may upgrade the room.
            power["events"]["m.room.tombstone"] = json!(150);
        }
        // Synapse's presets: anyone may invite to a private room; only moderators to a public
        // one, where starting a call takes a moderator too.
        if preset == "public_chat" {
            power["events"]["m.call.invite"] = json!(50);
        } else {
            power["invite"] = json!(0);
        }
        if let Some(over) = &request.power_level_content_override {
            for (k, v) in over {
                power[k] = v.clone();
            }
        }
        send("m.room.power_levels", Some(String::new()), power).await?;
        let join_rule = if preset == "public_chat" { "public" } else { "invite" };
        send("m.room.join_rules", Some(String::new()), json!({"join_rule": join_rule})).await?;
        send("m.room.history_visibility", Some(String::new()), json!({"history_visibility": "shared"})).await?;
        if preset != "public_chat" {
            send("m.room.guest_access", Some(String::new()), json!({"guest_access": "can_join"})).await?;
        }
        for ev in &request.initial_state {
            let room_id = room_id.clone();
            self.append_event(
                &room_id,
                creator,
                &ev.kind,
                Some(&ev.state_key),
                ev.content.clone(),
                AppendOptions::default(),
            )
            .await?;
        }
        if let Some(name) = &request.name {
            send("m.room.name", Some(String::new()), json!({"name": name})).await?;
        }
        if let Some(topic) = &request.topic {
            send("m.room.topic", Some(String::new()), json!({"topic": topic})).await?;
        }
        // The alias is created after the room exists: a module denial fails the request but
        // leaves the room, as in Synapse.
        if let Some(alias) = &alias {
            self.create_alias(requester, alias, room_id.as_str()).await?;
            send("m.room.canonical_alias", Some(String::new()), json!({"alias": alias})).await?;
        }
        // Invites run after the room exists: a denied invite fails the request but the room
        // stays, as in Synapse. Shadow-banned creators' invites are silently dropped.
        if !requester.shadow_banned {
            for invitee in &invitees {
                let mut extra = Map::new();
                if request.is_direct {
                    extra.insert("is_direct".into(), json!(true));
                }
                self.update_membership_unlimited(requester, &room_id, invitee, "invite", None, extra).await?;
            }
        }
        Ok((room_id, alias))
    }

    /// Changes `target`'s membership as `requester`: invite, join, leave, kick, ban,
    /// unban. `user_may_invite` and `user_may_join_room` are called here, their one call site.
    ///
    /// Rate-limited as a client's request (`rc_joins`, `rc_joins_per_room`, `rc_invites`);
    /// see [`Homeserver::update_membership_unlimited`] for the server's own changes.
    pub async fn update_membership(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        target: &UserId,
        action: &str,
        reason: Option<String>,
        content: Map<String, Value>,
    ) -> Result<Arc<Value>> {
        self.change_membership(requester, room_id, target, action, reason, content, true).await
    }

    /// [`Homeserver::update_membership`] without rate limits, as Synapse for the invites of
    /// `createRoom`, the module API and deactivation.
    pub(crate) async fn update_membership_unlimited(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        target: &UserId,
        action: &str,
        reason: Option<String>,
        content: Map<String, Value>,
    ) -> Result<Arc<Value>> {
        self.change_membership(requester, room_id, target, action, reason, content, false).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn change_membership(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        target: &UserId,
        action: &str,
        reason: Option<String>,
        mut content: Map<String, Value>,
        ratelimit: bool,
    ) -> Result<Arc<Value>> {
        let sender = &requester.user_id;
        // Guests may join and leave, nothing more (as on Synapse).
        if requester.is_guest && !["join", "leave"].contains(&action) {
            return Err(guest_forbidden());
        }
        // Rejecting an invite to a room this server is not in goes through the inviter (a local
        // inviter's room is left here, even once nobody is joined).
        if action == "leave"
            && target == sender
            && !self.participates_in(room_id).await?
            && let Some(server) = self.invite_origin(room_id, target.as_str()).await?
            && server != self.server_name()
        {
            let mut servers = vec![server];
            servers.extend(room_id.server_name().map(|s| s.to_string()));
            self.leave_remote_room(requester, room_id, &servers).await?;
            return Ok(Arc::new(json!({})));
        }
        let current = self.membership_of(room_id, target.as_str()).await?;
        if self.current_state(room_id).await?.is_none() {
            return Err(Error::not_found("No known servers"));
        }
        let membership = match action {
            "unban" => {
                if current.as_deref() != Some("ban") {
                    return Err(Error::forbidden(format!("{target} is not banned")));
                }
                "leave"
            }
            "invite" | "join" | "leave" | "ban" => action,
            // As Synapse: only a member (joined, invited or knocking) can be kicked.
            "kick" => {
                if !matches!(current.as_deref(), Some("join" | "invite" | "knock")) {
                    return Err(Error::forbidden("The target user is not in the room"));
                }
                "leave"
            }
            "knock" => {
                if target != sender {
                    return Err(Error::forbidden("You can only knock for yourself"));
                }
                match current.as_deref() {
                    Some("join") => return Err(Error::forbidden(format!("{target} is already in the room."))),
                    Some("ban") => return Err(Error::forbidden(format!("{target} is banned from the room"))),
                    Some("invite") => return Err(Error::forbidden("You are already invited to this room")),
                    _ => {}
                }
                "knock"
            }
            other => return Err(Error::invalid_param(format!("Unknown membership {other}"))),
        };
        match membership {
            "invite" => {
                if requester.shadow_banned {
                    crate::users::shadow_ban_delay().await;
                    return Ok(Arc::new(json!({})));
                }
                if current.as_deref() == Some("join") {
                    return Err(Error::forbidden(format!("{target} is already in the room.")));
                }
                if current.as_deref() == Some("ban") {
                    return Err(Error::forbidden(format!("{target} is banned from the room")));
                }
                if ratelimit {
                    let user = sender.as_str();
                    self.limit_user(&self.limiters.invites_per_room, user, Some(room_id.as_str())).await?;
                    self.limit_user(&self.limiters.invites_per_user, user, Some(target.as_str())).await?;
                    self.limit_user(&self.limiters.invites_per_issuer, user, None).await?;
                }
                if !requester.is_admin {
                    self.modules.user_may_invite(sender.as_str(), target.as_str(), room_id.as_str()).await?;
                }
            }
            "join" => {
                if requester.is_guest
                    && self
                        .state_content(room_id, "m.room.guest_access", "")
                        .await?
                        .and_then(|c| c.get("guest_access").cloned())
                        != Some(json!("can_join"))
                {
                    return Err(guest_forbidden());
                }
                if current.as_deref() == Some("ban") {
                    return Err(Error::forbidden(format!("{target} is banned from the room")));
                }
                // A restricted room admits members of the rooms its join rule names, vouched
                // for by a local user who may invite.
                if target == sender
                    && !matches!(current.as_deref(), Some("join") | Some("invite"))
                    && let Some(authoriser) = self.restricted_join_authoriser(room_id, target.as_str()).await?
                {
                    content.insert("join_authorised_via_users_server".into(), json!(authoriser));
                }
                // As Synapse: a join that only updates a profile is not limited.
                if ratelimit && current.as_deref() != Some("join") {
                    self.limit_user(&self.limiters.joins_local, sender.as_str(), None).await?;
                    self.peek_user(&self.limiters.joins_per_room, sender.as_str(), Some(room_id.as_str())).await?;
                }
                if !requester.is_admin && current.as_deref() != Some("join") {
                    let is_invited = current.as_deref() == Some("invite");
                    self.modules.user_may_join_room(sender.as_str(), room_id.as_str(), is_invited).await?;
                }
            }
            _ => {}
        }
        if membership == "join" || (membership == "invite" && self.is_mine(target)) {
            let (displayname, avatar_url) = self.profile_of(target.as_str()).await?;
            if let Some(d) = displayname {
                content.entry("displayname").or_insert(json!(d));
            }
            if let Some(a) = avatar_url {
                content.entry("avatar_url").or_insert(json!(a));
            }
        }
        content.insert("membership".into(), json!(membership));
        if let Some(r) = reason {
            content.insert("reason".into(), json!(r));
        }
        // Read before the room's lock is taken (the summary reads the room's state).
        let remote_invite = if membership == "invite" && !self.is_mine(target) {
            Some((target.to_string(), self.stripped_state(room_id.as_str(), target.as_str()).await?))
        } else {
            None
        };
        let options = AppendOptions { remote_invite, ..AppendOptions::default() };
        let appended =
            self.append_event(room_id, sender, "m.room.member", Some(target.as_str()), content, options).await?;
        if membership == "join" {
            self.limiters.joins_per_room.record(room_id.as_str());
        }
        Ok(Arc::new(serde_json::from_str(&appended.json).map_err(Error::internal)?))
    }

    /// Joins a room by ID or alias. `content` (the request's body: a `reason`, or any other
    /// keys, as Synapse allows) goes into the member event.
    pub async fn join_room(
        &self,
        requester: &Requester,
        room_id: &str,
        via: &[String],
        mut content: Map<String, Value>,
    ) -> Result<OwnedRoomId> {
        // The server decides these.
        for key in ["membership", "join_authorised_via_users_server"] {
            content.remove(key);
        }
        let mut via = via.to_vec();
        let room_id = if room_id.starts_with('#') {
            let (room, servers) = self.resolve_alias(room_id).await?;
            via.extend(servers);
            parse_room_id(&room)?
        } else {
            parse_room_id(room_id)?
        };
        // A room this server is not in is joined through a server that is: those the client
        // named, then the room ID's own server.
        if !self.participates_in(&room_id).await? {
            let mut servers: Vec<String> = via.to_vec();
            if let Some(inviter) = self.invite_origin(&room_id, requester.user_id.as_str()).await? {
                servers.push(inviter);
            }
            if let Some(server) = room_id.server_name() {
                servers.push(server.to_string());
            }
            servers.retain(|s| s != self.server_name());
            servers.dedup();
            if !servers.is_empty() {
                if requester.is_guest {
                    return Err(guest_forbidden());
                }
                self.limit_user(&self.limiters.joins_remote, requester.user_id.as_str(), None).await?;
                if !requester.is_admin {
                    self.modules.user_may_join_room(requester.user_id.as_str(), room_id.as_str(), false).await?;
                }
                self.join_remote_room(requester, &room_id, &servers).await?;
                return Ok(room_id);
            }
        }
        let user = requester.user_id.clone();
        let reason = content.remove("reason").and_then(|r| r.as_str().map(str::to_owned));
        self.update_membership(requester, &room_id, &user, "join", reason, content).await?;
        Ok(room_id)
    }

    /// Sends a message-like event (`PUT /send`), idempotent per device and transaction ID.
    pub async fn send_message(
        &self,
        requester: &Requester,
        room_id: &str,
        kind: &str,
        txn_id: &str,
        content: Map<String, Value>,
    ) -> Result<String> {
        let room_id = parse_room_id(room_id)?;
        if requester.shadow_banned {
            crate::users::shadow_ban_delay().await;
            return Ok(format!("${}", random_string(43)));
        }
        if kind == "m.room.member" || kind == "m.room.create" {
            return Err(Error::bad_json(format!("Cannot send {kind} with /send")));
        }
        self.require_joined(&room_id, &requester.user_id).await?;
        self.limit_message(requester.user_id.as_str(), false).await?;
        let txn = Some((requester.user_id.to_string(), requester.device_id.clone(), txn_id.to_owned()));
        let appended = self
            .append_event(
                &room_id,
                &requester.user_id,
                kind,
                None,
                content,
                AppendOptions { txn, spam_check: true, remote_invite: None, ..AppendOptions::default() },
            )
            .await?;
        Ok(appended.pdu.event_id.to_string())
    }

    /// `PUT /state/{type}/{key}`. Member events go through [`Homeserver::update_membership`].
    pub async fn send_state(
        &self,
        requester: &Requester,
        room_id: &str,
        kind: &str,
        state_key: &str,
        content: Map<String, Value>,
    ) -> Result<String> {
        let room_id = parse_room_id(room_id)?;
        if !requester.is_admin {
            self.modules
                .user_may_send_state_event(requester.user_id.as_str(), room_id.as_str(), kind, state_key, &content)
                .await?;
        }
        if kind == "m.room.member" {
            let target = parse_user_id(state_key)?;
            let membership = content.get("membership").and_then(Value::as_str).unwrap_or_default().to_owned();
            let ev = self.update_membership(requester, &room_id, &target, &membership, None, content).await?;
            return Ok(ev["event_id"].as_str().unwrap_or_default().to_owned());
        }
        if kind == "m.room.create" {
            return Err(Error::forbidden("Cannot change m.room.create"));
        }
        if kind == "m.room.canonical_alias" {
            self.check_canonical_alias(&room_id, &content).await?;
        }
        if requester.shadow_banned {
            crate::users::shadow_ban_delay().await;
            return Ok(format!("${}", random_string(43)));
        }
        self.require_joined(&room_id, &requester.user_id).await?;
        self.limit_message(requester.user_id.as_str(), false).await?;
        let appended = self
            .append_event(
                &room_id,
                &requester.user_id,
                kind,
                Some(state_key),
                content,
                AppendOptions { txn: None, spam_check: true, remote_invite: None, ..AppendOptions::default() },
            )
            .await?;
        Ok(appended.pdu.event_id.to_string())
    }

    /// `PUT /redact/{eventId}/{txnId}`.
    pub async fn redact(
        &self,
        requester: &Requester,
        room_id: &str,
        event_id: &str,
        txn_id: &str,
        reason: Option<String>,
    ) -> Result<String> {
        let room_id = parse_room_id(room_id)?;
        OwnedEventId::try_from(event_id).map_err(|_| Error::invalid_param("Invalid event ID"))?;
        if requester.shadow_banned {
            crate::users::shadow_ban_delay().await;
            return Ok(format!("${}", random_string(43)));
        }
        self.require_joined(&room_id, &requester.user_id).await?;
        let others_event = match self.limiters.admin_redaction {
            // Only worth a read when `rc_admin_redaction` gives moderators their own limit.
            Some(_) => {
                self.load_events(vec![event_id.to_owned()]).await?.values().any(|e| e.sender != requester.user_id)
            }
            None => false,
        };
        self.limit_message(requester.user_id.as_str(), others_event).await?;
        let mut content = Map::new();
        content.insert("redacts".into(), json!(event_id));
        if let Some(r) = reason {
            content.insert("reason".into(), json!(r));
        }
        let txn = Some((requester.user_id.to_string(), requester.device_id.clone(), format!("redact:{txn_id}")));
        let appended = self
            .append_event(
                &room_id,
                &requester.user_id,
                "m.room.redaction",
                None,
                content,
                AppendOptions { txn, spam_check: true, remote_invite: None, ..AppendOptions::default() },
            )
            .await?;
        Ok(appended.pdu.event_id.to_string())
    }

    /// The client-format events of a room's current state; the user must be joined.
    pub async fn room_state(&self, requester: &Requester, room_id: &str) -> Result<Vec<Value>> {
        let room_id = parse_room_id(room_id)?;
        let state = self.readable_state(&room_id, requester.user_id.as_str()).await?;
        self.client_events(state.into_values().collect()).await
    }

    /// `GET /rooms/{roomId}/initialSync`: the latest events the user may see, the state they
    /// may read and their membership (members, former members up to their leave, and anyone
    /// for a world-readable room).
    pub async fn room_initial_sync(&self, requester: &Requester, room_id: &str) -> Result<Value> {
        let rid = parse_room_id(room_id)?;
        let user = requester.user_id.as_str();
        let reader = self.reader(&rid, user).await?;
        let membership = self.membership_of(&rid, user).await?;
        let page = Pagination { from: None, to: None, backwards: true, limit: 20, filter: None };
        let messages = self.page_events(user, &rid, reader, page).await?;
        let mut chunk = messages.chunk;
        chunk.reverse();
        let start = messages.end.unwrap_or_else(|| "t0".to_owned());
        let state = self.room_state(requester, room_id).await?;
        let mut out = json!({
            "room_id": rid,
            "messages": {"chunk": chunk, "start": start, "end": format!("s{}", *self.sync.stream.borrow())},
            "state": state,
            "presence": [],
            "receipts": [],
            "account_data": [],
            "visibility": self.room_visibility(room_id).await?,
        });
        if let Some(m) = membership {
            out["membership"] = json!(m);
        }
        Ok(out)
    }

    /// For a join to a `restricted` or `knock_restricted` room: the local user who vouches for
    /// it (`join_authorised_via_users_server`), when `user` is joined to one of the rooms the
    /// join rule allows; `None` for other join rules; 403 when the user may not join.
    async fn restricted_join_authoriser(&self, room_id: &RoomId, user: &str) -> Result<Option<String>> {
        let Some(rules) = self.state_content(room_id, "m.room.join_rules", "").await? else { return Ok(None) };
        if !matches!(rules.get("join_rule").and_then(Value::as_str), Some("restricted" | "knock_restricted")) {
            return Ok(None);
        }
        let mut allowed = false;
        for entry in rules.get("allow").and_then(Value::as_array).into_iter().flatten() {
            let Some(other) = entry.get("room_id").and_then(Value::as_str) else { continue };
            if entry.get("type").and_then(Value::as_str) != Some("m.room_membership") {
                continue;
            }
            let Ok(other) = OwnedRoomId::try_from(other) else { continue };
            if self.membership_of(&other, user).await?.as_deref() == Some("join") {
                allowed = true;
                break;
            }
        }
        if !allowed {
            return Err(Error::forbidden("You do not belong to any of the required rooms/spaces to join this room."));
        }
        let state = self.current_state(room_id).await?.unwrap_or_default();
        let power = self.power_levels(&state).await?;
        let invite_level = power.int("invite", 0);
        let suffix = format!(":{}", self.server_name());
        let rid = room_id.to_string();
        let members = self.db(move |s| s.room_memberships(&rid)).await?;
        let authoriser = members
            .into_iter()
            .filter(|(member, membership)| membership == "join" && member.ends_with(&suffix))
            .map(|(member, _)| member)
            .find(|member| power.user(member) >= invite_level);
        authoriser.map(Some).ok_or_else(|| Error::forbidden("Unable to find a user which could issue an invite"))
    }

    /// `POST /knock/{roomIdOrAlias}`: asks to join a room whose join rule is `knock` or
    /// `knock_restricted` (rooms this server is in; knocking over federation is not built yet).
    pub async fn knock(&self, requester: &Requester, room: &str, reason: Option<String>) -> Result<OwnedRoomId> {
        let room_id = if room.starts_with('#') {
            parse_room_id(&self.resolve_alias(room).await?.0)?
        } else {
            parse_room_id(room)?
        };
        if !self.participates_in(&room_id).await? {
            return Err(Error::new(
                ErrorKind::Module { status: 404, errcode: "M_NOT_FOUND".into() },
                "Knocking on a room this server is not in is not supported yet",
            ));
        }
        let user = requester.user_id.clone();
        self.update_membership(requester, &room_id, &user, "knock", reason, Map::new()).await?;
        Ok(room_id)
    }

    /// The stored events of `ids`, in order; unknown ones are left out.
    pub(crate) async fn event_rows(&self, ids: Vec<String>) -> Result<Vec<myelin_storage::EventRow>> {
        self.db(move |s| {
            let mut out = Vec::new();
            for id in ids {
                out.extend(s.get_event(&id)?);
            }
            Ok(out)
        })
        .await
    }

    /// Whether an event of that ID is stored in that room.
    pub(crate) async fn event_exists_in(&self, room_id: &str, event_id: &str) -> Result<bool> {
        let id = event_id.to_owned();
        let row = self.db(move |s| s.get_event(&id)).await?;
        Ok(row.is_some_and(|r| {
            serde_json::from_str::<Value>(&r.json).is_ok_and(|v| v["room_id"].as_str() == Some(room_id))
        }))
    }

    /// The room state `user` may read: the current state for members and peekers of a
    /// world-readable room, the state at their leave for those who left or were banned.
    pub(crate) async fn readable_state(
        &self,
        room_id: &RoomId,
        user: &str,
    ) -> Result<HashMap<(String, String), String>> {
        let reader = self.reader(room_id, user).await?;
        if reader.until == i64::MAX {
            let state = self.current_state(room_id).await?.unwrap_or_default();
            return Ok(state.iter().map(|(k, v)| (k.clone(), v.to_string())).collect());
        }
        let r = room_id.to_string();
        self.db(move |s| {
            Ok(match s.state_group_at(&r, reader.until)? {
                Some(g) => {
                    s.get_state_group(g)?.into_iter().map(|e| ((e.event_type, e.state_key), e.event_id)).collect()
                }
                None => HashMap::new(),
            })
        })
        .await
    }

    /// One state event's content.
    /// `GET /rooms/{roomId}/state/{type}/{key}`: the content, or with `whole_event`
    /// (`?format=event`) the client-format event.
    pub async fn room_state_event(
        &self,
        requester: &Requester,
        room_id: &str,
        kind: &str,
        key: &str,
        whole_event: bool,
    ) -> Result<Value> {
        let room_id = parse_room_id(room_id)?;
        let state = self.readable_state(&room_id, requester.user_id.as_str()).await?;
        let Some(id) = state.get(&(kind.to_owned(), key.to_owned())) else {
            return Err(Error::not_found("Event not found."));
        };
        if whole_event {
            return self
                .client_events(vec![id.to_string()])
                .await?
                .pop()
                .ok_or_else(|| Error::not_found("Event not found."));
        }
        match self.load_events(vec![id.clone()]).await?.values().next() {
            Some(pdu) => Ok(Value::Object(pdu.content_map())),
            None => Err(Error::not_found("Event not found.")),
        }
    }

    /// Client-format events by ID, in the given order, skipping unknown ones.
    pub(crate) async fn client_events(&self, ids: Vec<String>) -> Result<Vec<Value>> {
        self.db(move |s| {
            let mut out = Vec::new();
            for id in ids {
                if let Some(row) = s.get_event(&id)? {
                    out.push(client_event_from_str(&row.json));
                }
            }
            Ok(out)
        })
        .await
    }

    /// `GET /rooms/{roomId}/event/{eventId}`.
    pub async fn get_room_event(&self, requester: &Requester, room_id: &str, event_id: &str) -> Result<Value> {
        let room_id = parse_room_id(room_id)?;
        let id = event_id.to_owned();
        let row = self.db(move |s| s.get_event(&id)).await?;
        let not_found = || Error::not_found("Event not found.");
        let Some(row) = row else { return Err(not_found()) };
        let v: Value = serde_json::from_str(&row.json).map_err(Error::internal)?;
        if v["room_id"] != json!(room_id) {
            return Err(not_found());
        }
        let user = requester.user_id.as_str();
        let reader = self.event_reader(&room_id, user).await?;
        if self.visible_events(user, reader, vec![row]).await?.0.is_empty() {
            return Err(not_found());
        }
        let mut event = [client_event(&v)];
        self.bundle_aggregations(user, reader, &mut event).await?;
        let [event] = event;
        Ok(event)
    }

    /// `GET /joined_rooms`.
    pub async fn joined_rooms(&self, requester: &Requester) -> Result<Vec<String>> {
        let user = requester.user_id.to_string();
        self.db(move |s| s.rooms_for_user(&user, "join")).await
    }

    /// `GET /members`: member events, filtered by membership.
    pub async fn room_members(
        &self,
        requester: &Requester,
        room_id: &str,
        at: Option<&str>,
        membership: Option<&str>,
        not_membership: Option<&str>,
    ) -> Result<Vec<Value>> {
        let room_id = parse_room_id(room_id)?;
        // Only for those who may read the room; a former member no later than their leave.
        let reader = self.reader(&room_id, requester.user_id.as_str()).await?;
        let ids: Vec<String> = match at {
            // Members as of a sync or pagination token: the state after the last event before it.
            Some(token) => {
                let pos = parse_token(token).ok_or_else(|| Error::invalid_param(format!("Invalid token {token}")))?;
                let pos = if token.starts_with('t') { pos - 1 } else { pos };
                let pos = pos.min(reader.until);
                let r = room_id.to_string();
                self.db(move |s| {
                    Ok(match s.state_group_at(&r, pos)? {
                        Some(g) => s
                            .get_state_group(g)?
                            .into_iter()
                            .filter(|e| e.event_type == "m.room.member")
                            .map(|e| e.event_id)
                            .collect(),
                        None => Vec::new(),
                    })
                })
                .await?
            }
            // Members now, or as at the leave of one who left.
            None => {
                let state = self.readable_state(&room_id, requester.user_id.as_str()).await?;
                state.into_iter().filter(|((t, _), _)| t == "m.room.member").map(|(_, e)| e).collect()
            }
        };
        let events = self.client_events(ids).await?;
        Ok(events
            .into_iter()
            .filter(|e| {
                let m = e["content"]["membership"].as_str();
                membership.is_none_or(|want| m == Some(want)) && not_membership.is_none_or(|not| m != Some(not))
            })
            .collect())
    }

    /// `GET /joined_members`: `user_id -> {display_name, avatar_url}`.
    pub async fn joined_members(&self, requester: &Requester, room_id: &str) -> Result<Map<String, Value>> {
        let members = self.room_members(requester, room_id, None, Some("join"), None).await?;
        Ok(members
            .into_iter()
            .map(|e| {
                let key = e["state_key"].as_str().unwrap_or_default().to_owned();
                let mut member = Map::new();
                for (field, source) in [("display_name", "displayname"), ("avatar_url", "avatar_url")] {
                    if let Some(v) = e["content"].get(source).filter(|v| v.is_string()) {
                        member.insert(field.to_owned(), v.clone());
                    }
                }
                (key, Value::Object(member))
            })
            .collect())
    }

    /// `GET /messages`.
    pub async fn messages(&self, requester: &Requester, room_id: &str, page: Pagination<'_>) -> Result<MessagesPage> {
        let room_id = parse_room_id(room_id)?;
        // A user who left sees history up to their leave; a non-member may peek into a
        // world-readable room; each event is then filtered by its history visibility.
        let reader = self.reader(&room_id, requester.user_id.as_str()).await?;
        self.page_events(requester.user_id.as_str(), &room_id, reader, page).await
    }

    /// A page of the room's events as `reader` may see them.
    async fn page_events(
        &self,
        user: &str,
        room_id: &RoomId,
        reader: crate::visibility::Reader,
        page: Pagination<'_>,
    ) -> Result<MessagesPage> {
        let Pagination { from, to, backwards, limit, filter } = page;
        let max = *self.sync.stream.borrow();
        // Backwards pagination of one who left starts at their leave (as on Synapse); later
        // events are otherwise left to the visibility filter, which shows them only when
        // world-readable.
        let visible_until = reader.until.min(max);
        let parse = |t: &str| parse_token(t).ok_or_else(|| Error::invalid_param(format!("Invalid token {t}")));
        // A `t<N>` token names an event already returned (exclusive); a sync token `s<N>` means
        // "everything up to N was delivered", so paginating backwards from it includes N.
        let from_pos = match from {
            Some(t) if t.starts_with('s') && backwards => parse(t)? + 1,
            Some(t) => parse(t)?,
            None if backwards => max + 1,
            None => 0,
        };
        let to_pos = to.map(parse).transpose()?;
        let limit = limit.clamp(1, 1000);
        let rid = room_id.to_string();
        let rows = if backwards {
            let lower = to_pos.unwrap_or(0);
            let upper = (from_pos - 1).min(visible_until);
            self.db(move |s| s.room_events(&rid, lower, upper, true, limit)).await?
        } else {
            let upper = to_pos.unwrap_or(i64::MAX).min(max);
            self.db(move |s| s.room_events(&rid, from_pos, upper, false, limit)).await?
        };
        let end = if rows.len() == limit { rows.last().map(|r| format!("t{}", r.stream_ordering)) } else { None };
        // The filters apply to the page read, so a filtered page may hold fewer than `limit`
        // events while `end` still points further; the spec allows that.
        let (rows, _) = self.visible_events(user, reader, rows).await?;
        let mut chunk: Vec<Value> = rows
            .iter()
            .map(|r| client_event_from_str(&r.json))
            .filter(|e| filter.is_none_or(|f| f.matches(e)))
            .collect();
        self.bundle_aggregations(user, reader, &mut chunk).await?;
        Ok(MessagesPage {
            chunk,
            start: from.map(str::to_owned).unwrap_or_else(|| format!("t{from_pos}")),
            end,
            state: vec![],
        })
    }

    /// `GET /context/{eventId}`.
    pub async fn context(&self, requester: &Requester, room_id: &str, event_id: &str, limit: usize) -> Result<Value> {
        // An event the user may not see is a 403 here (a 404 through `/event`), as on Synapse.
        let event = match self.get_room_event(requester, room_id, event_id).await {
            Err(e) if e.kind == ErrorKind::NotFound && self.event_exists_in(room_id, event_id).await? => {
                return Err(Error::forbidden("You don't have permission to access that event."));
            }
            other => other?,
        };
        let id = event_id.to_owned();
        let pos =
            self.db(move |s| s.stream_of_event(&id)).await?.ok_or_else(|| Error::not_found("Event not found."))?;
        let half = (limit.min(100) / 2).max(1);
        let rid = parse_room_id(room_id)?;
        let user = requester.user_id.as_str();
        let reader = self.event_reader(&rid, user).await?;
        let from = format!("t{pos}");
        let page = |backwards| Pagination { from: Some(&from), to: None, backwards, limit: half, filter: None };
        let before = self.page_events(user, &rid, reader, page(true)).await?;
        let after = self.page_events(user, &rid, reader, page(false)).await?;
        // The state the user may read (none for those who may not read the room as a whole).
        let state = self.room_state(requester, room_id).await.unwrap_or_default();
        Ok(json!({
            "event": event,
            "events_before": before.chunk,
            "events_after": after.chunk,
            "start": before.end.unwrap_or_else(|| format!("t{pos}")),
            "end": after.end.unwrap_or_else(|| format!("t{}", *self.sync.stream.borrow())),
            "state": state,
        }))
    }

    /// `POST /rooms/{roomId}/upgrade`: a new room with the old one's state, a tombstone in the
    /// old room, and the old room restricted. `user_may_create_room` runs here with a
    /// synthesised config and no admin exemption, as in Synapse.
    pub async fn upgrade_room(&self, requester: &Requester, room_id: &str, new_version: &str) -> Result<String> {
        let old = parse_room_id(room_id)?;
        if !crate::config::SUPPORTED_ROOM_VERSIONS.contains(&new_version) {
            return Err(Error::new(
                ErrorKind::UnsupportedRoomVersion,
                "Your homeserver does not support this room version",
            ));
        }
        if self.current_state(&old).await?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        if !self.can_send_state(&old, requester.user_id.as_str(), "m.room.tombstone").await? {
            return Err(Error::forbidden("You don't have permission to upgrade the room"));
        }
        if requester.shadow_banned {
            crate::users::shadow_ban_delay().await;
            use rand::Rng;
            let fake: String = (0..18).map(|_| rand::thread_rng().gen_range(b'a'..=b'z') as char).collect();
            return Ok(fake);
        }
        const COPIED: &[&str] = &[
            "m.room.server_acl",
            "m.room.encryption",
            "m.room.name",
            "m.room.avatar",
            "m.room.topic",
            "m.room.guest_access",
            "m.room.history_visibility",
            "m.room.join_rules",
            "m.room.power_levels",
        ];
        let mut copied = Vec::new();
        for kind in COPIED {
            if let Some(content) = self.state_content(&old, kind, "").await? {
                copied.push((kind.to_string(), content));
            }
        }
        let last = self
            .db({
                let r = old.to_string();
                move |s| s.get_forward_extremities(&r)
            })
            .await?
            .into_iter()
            .next()
            .unwrap_or_default();
        let creation_content = json!({"predecessor": {"room_id": old, "event_id": last}});
        let initial_state: Vec<Value> =
            copied.iter().map(|(t, c)| json!({"type": t, "state_key": "", "content": c})).collect();
        let config = json!({"creation_content": creation_content, "initial_state": initial_state});
        self.modules.user_may_create_room(requester.user_id.as_str(), config.as_object().expect("object")).await?;

        let me = &requester.user_id;
        let rules = ruma::RoomVersionId::try_from(new_version)
            .ok()
            .and_then(|v| v.rules())
            .ok_or_else(|| Error::internal("rules"))?;
        let create = creation_content.as_object().cloned().unwrap_or_default();
        let new = self.found_room(new_version, &rules, me, create, false).await?;
        let (displayname, avatar_url) = self.profile_of(me.as_str()).await?;
        let mut join = Map::new();
        join.insert("membership".into(), json!("join"));
        if let Some(d) = displayname {
            join.insert("displayname".into(), json!(d));
        }
        if let Some(a) = avatar_url {
            join.insert("avatar_url".into(), json!(a));
        }
        self.append_event(&new, me, "m.room.member", Some(me.as_str()), join, AppendOptions::default()).await?;
        // Copy power levels with the upgrader at 100 so the rest can be copied, then restore.
        // Into room version 12, the upgrader is the creator: unlimited power, and not listed.
        let mut original_pl =
            copied.iter().find(|(t, _)| t == "m.room.power_levels").map(|(_, c)| c.clone()).unwrap_or_default();
        // Out of it, the old room's creators (unlimited power there) are listed at 100, where
        // Synapse would leave them at the default level.
        if rules.authorization.explicitly_privilege_room_creators {
            if let Some(Value::Object(users)) = original_pl.get_mut("users") {
                users.remove(me.as_str());
            }
        } else {
            let old_state = self.current_state(&old).await?.unwrap_or_default();
            let old_creators = self.power_levels(&old_state).await?.privileged_creators;
            if !old_creators.is_empty()
                && let Value::Object(users) = original_pl.entry("users").or_insert(json!({}))
            {
                for creator in old_creators {
                    users.entry(creator).or_insert(json!(100));
                }
            }
        }
        let mut boosted = original_pl.clone();
        if !rules.authorization.explicitly_privilege_room_creators {
            let users = boosted.entry("users").or_insert(json!({}));
            if let Value::Object(u) = users {
                u.insert(me.to_string(), json!(100));
            }
        }
        self.append_event(&new, me, "m.room.power_levels", Some(""), boosted.clone(), AppendOptions::default()).await?;
        for (kind, content) in &copied {
            if kind != "m.room.power_levels" {
                self.append_event(&new, me, kind, Some(""), content.clone(), AppendOptions::default()).await?;
            }
        }
        if boosted != original_pl && !original_pl.is_empty() {
            self.append_event(&new, me, "m.room.power_levels", Some(""), original_pl.clone(), AppendOptions::default())
                .await?;
        }
        let mut tombstone = Map::new();
        tombstone.insert("body".into(), json!("This room has been replaced"));
        tombstone.insert("replacement_room".into(), json!(new));
        self.append_event(&old, me, "m.room.tombstone", Some(""), tombstone, AppendOptions::default()).await?;
        // Restrict the old room so conversation moves on.
        let old_pl = copied.iter().find(|(t, _)| t == "m.room.power_levels").map(|(_, c)| c.clone());
        let mut restricted = old_pl.unwrap_or_default();
        let users_default = restricted.get("users_default").and_then(as_int).unwrap_or(0);
        let level = json!(50.max(users_default + 1));
        restricted.insert("events_default".into(), level.clone());
        restricted.insert("invite".into(), level);
        let _ =
            self.append_event(&old, me, "m.room.power_levels", Some(""), restricted, AppendOptions::default()).await;
        Ok(new.to_string())
    }

    /// `ModuleApi.get_room_state`: the current state events, no membership check.
    pub(crate) async fn module_room_state(&self, room_id: &str) -> Result<Vec<EventView>> {
        let room_id = parse_room_id(room_id)?;
        let state = self.current_state(&room_id).await?.ok_or_else(|| Error::not_found("Unknown room"))?;
        self.state_views(&state).await
    }

    /// Sends an event on a module's behalf (`ModuleApi.create_and_send_event_into_room`): no
    /// shadow-ban or rate limit, but `check_event_for_spam` applies.
    pub(crate) async fn module_send_event(&self, event: Map<String, Value>) -> Result<String> {
        let field = |k: &str| event.get(k).and_then(Value::as_str).map(str::to_owned);
        let kind = field("type").ok_or_else(|| Error::bad_json("event needs a type"))?;
        if kind == "m.room.member" {
            return Err(Error::internal("Tried to send member event through non-member codepath"));
        }
        let room_id = parse_room_id(&field("room_id").ok_or_else(|| Error::bad_json("event needs a room_id"))?)?;
        let sender = parse_user_id(&field("sender").ok_or_else(|| Error::bad_json("event needs a sender"))?)?;
        let content = event.get("content").and_then(Value::as_object).cloned().unwrap_or_default();
        let state_key = field("state_key");
        let appended = self
            .append_event(
                &room_id,
                &sender,
                &kind,
                state_key.as_deref(),
                content,
                AppendOptions { txn: None, spam_check: true, remote_invite: None, ..AppendOptions::default() },
            )
            .await?;
        Ok(appended.json)
    }
}
