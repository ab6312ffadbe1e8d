//! Rooms: the local event graph (build, auth, persist), room creation, membership, sending,
//! state and history.
//!
//! Every local event goes through [`Homeserver::append_event`]: pick auth events from the state
//! it is built on, sign, run module callbacks and the authorization rules, persist (event, state
//! group delta, extremities, txn ID) in one transaction, then update the cache and wake `/sync`.
//! State events do all of it under the room's send lock; messages only read and persist under
//! it, so concurrent messages may share parents (see `append_event`).
//!
//! Here: the room cache (current state, extremities, depth) and reads of current state. Beside
//! it: `append` (the write path), `create` (createRoom, upgrades), `membership`, `send`
//! (messages, state, redactions) and `read` (state, members, events, history).

mod append;
mod create;
mod membership;
mod read;
mod send;

use std::collections::HashMap;
use std::sync::Arc;

use myelin_module_api::EventView;
use myelin_storage::{RoomRow, StateChange, StateEntry};
use ruma::events::TimelineEventType;
use ruma::room_version_rules::RoomVersionRules;
use ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::cache::BoundedMap;
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
#[derive(Default, Clone)]
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
    /// Third-party rules (`check_event_allowed`) have already approved this content.
    pub rules_approved: bool,
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
    /// Third-party identifiers to invite (`id_server`, `id_access_token`, `medium`, `address`).
    pub invite_3pid: Vec<Value>,
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
pub(crate) struct PowerLevels {
    content: Map<String, Value>,
    privileged_creators: Vec<String>,
}

impl PowerLevels {
    pub(crate) fn int(&self, key: &str, default: i64) -> i64 {
        self.content.get(key).and_then(as_int).unwrap_or(default)
    }
    pub(crate) fn user(&self, user: &str) -> i64 {
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
    /// `lazy_load_members`: the answer's `state` carries the memberships of the events'
    /// senders.
    pub lazy_load_members: bool,
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
/// A pagination token (`/messages`): `t<N>` may be below zero (backfilled history).
pub(crate) fn parse_page_token(token: &str) -> Option<i64> {
    match token.strip_prefix('t') {
        Some(n) => n.parse().ok(),
        None => parse_token(token),
    }
}

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
    pub(crate) state_events: std::sync::Mutex<BoundedMap<OwnedEventId, Pdu>>,
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
    pub(crate) visibility_cache: std::sync::Mutex<BoundedMap<i64, crate::visibility::HistoryVisibility>>,
    /// Timestamps for create events (see `create::found_room`; per process: a collision
    /// between processes is caught by the database and retried).
    pub(crate) create_clock: CreateClock,
    /// How many rooms' caches are kept (idle ones beyond it are dropped; see `room_lock`).
    max_room_caches: usize,
}

/// Hands out create-event timestamps: `now`, or one millisecond after the last one handed out
/// if that is not earlier, so no two create events made here share one.
#[derive(Default)]
pub(crate) struct CreateClock(std::sync::atomic::AtomicI64);

impl CreateClock {
    pub(crate) fn next(&self, now: i64) -> i64 {
        use std::sync::atomic::Ordering;
        let previous = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(now.max(last + 1)));
        now.max(previous.unwrap_or(now) + 1)
    }
}

impl RoomsState {
    pub(crate) fn new(writer: EventWriter, recent_txns: RecentTxns, sizes: &crate::cache::CacheSizes) -> Self {
        RoomsState {
            caches: Default::default(),
            state_events: std::sync::Mutex::new(BoundedMap::new("state_events", sizes.state_events)),
            writer,
            txns_in_flight: Default::default(),
            recent_txns: std::sync::Mutex::new(recent_txns),
            visibility_cache: std::sync::Mutex::new(BoundedMap::new("state_group_visibility", sizes.visibility)),
            create_clock: Default::default(),
            max_room_caches: sizes.rooms,
        }
    }
}
impl Homeserver {
    /// Tells the deployment's other processes that this process wrote an event of the room.
    pub(crate) fn room_written(&self, room_id: &str, position: i64) {
        if self.has_bus() {
            self.publish(format!("room {room_id} {position}"));
        }
    }

    /// [`Homeserver::room_written`] for an event that changes no state: the other processes
    /// move their cached extremities on instead of reading the room again (a busy room written
    /// through several processes would otherwise be reloaded on every message).
    pub(crate) fn message_written(&self, room_id: &str, position: i64, pdu: &crate::events::Pdu) {
        if !self.has_bus() {
            return;
        }
        if pdu.state_key.is_some() {
            return self.room_written(room_id, position);
        }
        let prevs: Vec<&str> = pdu.prev_events.iter().map(|e| e.as_str()).collect();
        self.publish(format!("room {room_id} {position} {} {} {}", pdu.event_id, pdu.depth, prevs.join(",")));
    }

    /// Another process wrote a message (no state change) to the room: its cached extremities
    /// and depth move on as if it had been written here. With the cache in use by a send here,
    /// the room is read again instead.
    pub(crate) fn message_written_elsewhere(&self, room_id: OwnedRoomId, event_id: &str, depth: u64, prevs: &str) {
        let entry = self.rooms.caches.lock().unwrap_or_else(|p| p.into_inner()).get(&room_id).cloned();
        let Some(entry) = entry else { return };
        let (Ok(mut guard), Ok(event_id)) = (entry.try_lock(), OwnedEventId::try_from(event_id)) else {
            return self.forget_room_cache(&room_id);
        };
        if let Some(cache) = guard.as_mut() {
            cache.extremities.retain(|e| !prevs.split(',').any(|p| p == e.as_str()));
            if !cache.extremities.contains(&event_id) {
                cache.extremities.push(event_id);
            }
            cache.depth = cache.depth.max(depth);
        }
    }

    /// [`Homeserver::forget_room_cache`] for every room.
    pub(crate) fn forget_all_room_caches(&self) {
        self.rooms.caches.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub(crate) async fn room_lock(&self, room_id: &RoomId) -> Result<tokio::sync::OwnedMutexGuard<Option<RoomCache>>> {
        let entry = {
            let mut rooms = self.rooms.caches.lock().unwrap_or_else(|p| p.into_inner());
            let entry = rooms.entry(room_id.to_owned()).or_default().clone();
            if rooms.len() > self.rooms.max_room_caches {
                // Idle rooms go (nobody holds their lock or waits for it: the map's is the only
                // reference), down to three quarters of the limit; a busy room is never dropped,
                // or two requests could hold two different locks for it.
                let keep = self.rooms.max_room_caches * 3 / 4;
                let idle: Vec<OwnedRoomId> =
                    rooms.iter().filter(|(_, e)| Arc::strong_count(e) == 1).map(|(r, _)| r.clone()).collect();
                let excess = rooms.len().saturating_sub(keep);
                for room in idle.into_iter().take(excess) {
                    rooms.remove(&room);
                }
            }
            entry
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
            let mut cache = self.rooms.state_events.lock().unwrap_or_else(|p| p.into_inner());
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

    /// Drops a parsed state event (a redaction rewrote it).
    pub(crate) fn forget_state_event(&self, event_id: &OwnedEventId) {
        self.rooms.state_events.lock().unwrap_or_else(|p| p.into_inner()).remove(event_id);
    }

    pub(crate) fn remember_state_event(&self, pdu: &Pdu) {
        self.rooms.state_events.lock().unwrap_or_else(|p| p.into_inner()).insert(pdu.event_id.clone(), pdu.clone());
    }

    /// Drops a room's cache, so the next event reloads it from storage.
    pub(crate) fn forget_room_cache(&self, room_id: &RoomId) {
        self.rooms.caches.lock().unwrap_or_else(|p| p.into_inner()).remove(room_id);
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

    pub(crate) async fn power_levels(&self, state: &HashMap<(String, String), OwnedEventId>) -> Result<PowerLevels> {
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

    /// The current state of a room, shared with the room cache (no copy of the map).
    pub(crate) async fn current_state_shared(
        &self,
        room_id: &RoomId,
    ) -> Result<Option<Arc<HashMap<(String, String), OwnedEventId>>>> {
        let guard = self.room_lock(room_id).await?;
        Ok(guard.as_ref().map(|c| c.state.clone()))
    }

    /// The joined members of a room, as stored (any server's users).
    pub(crate) async fn joined_member_ids(&self, room_id: &str) -> Result<Vec<String>> {
        let r = room_id.to_owned();
        Ok(self
            .db(move |s| s.room_memberships(&r))
            .await?
            .into_iter()
            .filter(|(_, m)| m == "join")
            .map(|(u, _)| u)
            .collect())
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
}

#[cfg(test)]
mod tests {
    use super::CreateClock;

    #[test]
    fn create_event_timestamps_made_in_one_millisecond_are_all_different() {
        let clock = CreateClock::default();
        let stamps: Vec<i64> = (0..5).map(|_| clock.next(1_000)).collect();
        assert_eq!(stamps, vec![1_000, 1_001, 1_002, 1_003, 1_004]);
        assert_eq!(clock.next(2_000), 2_000, "a later millisecond is used as it is");
        assert_eq!(clock.next(1_500), 2_001, "never earlier than the last one");
    }
}
