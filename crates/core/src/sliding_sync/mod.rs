//! Simplified sliding sync (MSC4186), as Synapse serves it at
//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`.
//!
//! A request names lists (the user's rooms filtered, sorted by latest activity, cut to index
//! ranges) and room subscriptions; the response sends each room in them with what its lists ask
//! for (`required_state`, `timeline_limit`), plus the extensions (to-device, E2EE, account data,
//! receipts, typing). What a connection (`conn_id` of a device) has already been sent is kept per
//! response position, so a later request with that `pos` gets only what changed since, and an
//! incremental request with nothing new waits on the stream for up to `timeout`.
//!
//! Connection state lives in this process's memory: after a restart (or on another process) a
//! `pos` is answered with `M_UNKNOWN_POS`, which tells the client to start the connection again.

mod request;

use crate::cache::BoundedMap;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use myelin_storage::UserMembership;
use ruma::{OwnedEventId, OwnedRoomId};
use serde_json::{Map, Value, json};

use crate::error::ErrorKind;
use crate::events::client_event_from_str;
use crate::sync::SyncFilter;
use crate::visibility::Reader;
use crate::{Error, Homeserver, Requester, Result};
use request::{Body, Filters, PerRoom, RoomConfig};

/// Event types that move a room up the list (`bump_stamp`), as on Synapse.
const BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];
/// The most heroes a room summary names.
const MAX_HEROES: usize = 5;
/// How many events [`RoomReads`] holds before it starts again empty.
const MAX_KEPT_EVENTS: usize = 200_000;
/// How long a user's membership list is trusted without reading it whole again.
const MEMBERSHIPS_FRESH: Duration = Duration::from_secs(60);
/// How many connections this process remembers before it forgets the least recently used.
const MAX_CONNECTIONS: usize = 10_000;

/// A parsed request: `pos` and `timeout` from the query, the JSON body.
#[derive(Debug, Default)]
pub struct SlidingSyncRequest {
    /// `pos` from a previous response.
    pub pos: Option<String>,
    /// Long-poll timeout.
    pub timeout: Duration,
    /// The request body.
    pub body: Value,
}

/// What one connection has been sent of one room.
#[derive(Debug, Clone)]
struct SentRoom {
    /// Stream position the connection is up to date with for this room.
    up_to: i64,
    /// The user's membership when it was sent.
    membership: String,
    /// What it was sent with.
    config: RoomConfig,
    /// The unread counts it was sent (notifications, highlights): sent again when they move.
    counts: (u64, u64),
}

/// A connection's knowledge after one response.
#[derive(Debug, Clone, Default)]
struct ConnectionState {
    rooms: HashMap<String, SentRoom>,
}

/// One `conn_id` of one device: its states by connection position, so that a client that
/// repeats a request (a lost response) finds the state it asked from.
struct Connection {
    next_position: u64,
    states: BTreeMap<u64, Arc<ConnectionState>>,
    last_used: Instant,
}

/// The sliding sync service's memory (`hs.sliding_sync`).
pub(crate) struct SlidingSyncState {
    /// `(user, device, conn_id)` -> connection.
    connections: Mutex<HashMap<(String, String, String), Connection>>,
    /// Room -> the newest event position storage had when first asked (see
    /// [`Homeserver::latest_activity`]).
    latest: Mutex<BoundedMap<String, i64>>,
    /// User -> (stream position read at, when, their memberships); see
    /// [`Homeserver::user_memberships`].
    memberships: Mutex<BoundedMap<String, KeptMemberships>>,
    /// Rooms' current state and latest timelines as read for members (see
    /// [`Homeserver::keep_read`]).
    reads: Mutex<RoomReads>,
}

/// What was read of rooms for their members, kept while the room is unchanged; the validity
/// rule is the sync cache's ([`crate::sync::SyncCache`]): kept at position `built_at`, it holds
/// while the room's last write is at or before it and none is in flight.
#[derive(Default)]
struct RoomReads {
    rooms: HashMap<String, RoomRead>,
    /// Events held in all of them (bounded by [`MAX_KEPT_EVENTS`]).
    events: usize,
}

struct RoomRead {
    built_at: i64,
    state: Option<Arc<Vec<(Value, i64)>>>,
    /// By timeline limit.
    timelines: HashMap<usize, Arc<crate::sync::Timeline>>,
    events: usize,
}

/// (stream position read at, when, what was read).
type KeptMemberships = (i64, Instant, Arc<Memberships>);

/// A user's memberships and, for joined rooms, where their current stay began (unread counts
/// start there or at their read receipt).
struct Memberships {
    rooms: Vec<UserMembership>,
    joined_at: HashMap<String, i64>,
}

impl SlidingSyncState {
    pub(crate) fn new(sizes: &crate::cache::CacheSizes) -> Self {
        SlidingSyncState {
            connections: Default::default(),
            latest: Mutex::new(BoundedMap::new("room_activity", sizes.room_activity)),
            memberships: Mutex::new(BoundedMap::new("user_memberships", sizes.user_memberships)),
            reads: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String, String), Connection>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `pos`: `<connection position>_<stream position>`.
fn parse_pos(pos: &str) -> Option<(u64, i64)> {
    let (conn, stream) = pos.split_once('_')?;
    Some((conn.parse().ok()?, stream.parse().ok()?))
}

fn unknown_pos() -> Error {
    Error::new(ErrorKind::Module { status: 400, errcode: "M_UNKNOWN_POS".to_owned() }, "Unknown position")
}

/// The user's rooms as lists see them.
struct RoomEntry {
    membership: UserMembership,
    /// Sort key: latest activity the user may see.
    activity: i64,
}

/// One computed response and the connection state it leaves.
struct Outcome {
    /// The stream position it covers.
    now: i64,
    body: Map<String, Value>,
    has_updates: bool,
    state: ConnectionState,
}

impl Homeserver {
    /// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`.
    pub async fn sliding_sync(&self, requester: &Requester, request: SlidingSyncRequest) -> Result<Value> {
        let body = Body::parse(request.body)?;
        let from = match &request.pos {
            Some(p) => Some(parse_pos(p).ok_or_else(|| Error::invalid_param(format!("Invalid pos {p}")))?),
            None => None,
        };
        let key =
            (requester.user_id.to_string(), requester.device_id.clone(), body.conn_id.clone().unwrap_or_default());
        let previous = match from {
            // Connection position 0: nothing was kept (a request without lists or rooms).
            None | Some((0, _)) => Arc::new(ConnectionState::default()),
            Some((position, _)) => {
                let mut connections = self.sliding_sync.lock();
                let conn = connections.get_mut(&key).ok_or_else(unknown_pos)?;
                conn.last_used = Instant::now();
                conn.states.get(&position).cloned().ok_or_else(unknown_pos)?
            }
        };
        if from.is_none() {
            // A new connection under this ID replaces the old one.
            self.sliding_sync.lock().remove(&key);
        }
        // A position from the future (another process, a restored database) is taken as now.
        let since = from.map(|(_, stream)| stream.min(*self.sync.stream.borrow()));
        let mut watch = self.sync.stream.subscribe();
        let mut stopping = self.sync.stopping.subscribe();
        let deadline = tokio::time::Instant::now() + request.timeout;
        let outcome = loop {
            let now = *watch.borrow_and_update();
            let outcome = self.sliding_sync_once(requester, &body, &previous, since, now).await?;
            if outcome.has_updates || since.is_none() || *stopping.borrow_and_update() {
                break outcome;
            }
            tokio::select! {
                changed = tokio::time::timeout_at(deadline, watch.changed()) => match changed {
                    Ok(Ok(())) => continue,
                    _ => break outcome,
                },
                _ = stopping.changed() => break outcome,
            }
        };
        let now = outcome.now;
        let keeps_state = body.lists.as_ref().is_some_and(|l| !l.is_empty())
            || body.room_subscriptions.as_ref().is_some_and(|s| !s.is_empty());
        let position = if keeps_state { self.keep_connection_state(key, from, outcome.state) } else { 0 };
        let mut out = outcome.body;
        out.insert("pos".to_owned(), json!(format!("{position}_{now}")));
        Ok(Value::Object(out))
    }

    /// Records a connection's new state; returns its position. States older than the one the
    /// client asked from are dropped: it has seen a later response.
    fn keep_connection_state(
        &self,
        key: (String, String, String),
        from: Option<(u64, i64)>,
        state: ConnectionState,
    ) -> u64 {
        let mut connections = self.sliding_sync.lock();
        if connections.len() >= MAX_CONNECTIONS && !connections.contains_key(&key) {
            let oldest = connections.iter().min_by_key(|(_, c)| c.last_used).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                connections.remove(&oldest);
            }
        }
        let conn = connections.entry(key).or_insert_with(|| Connection {
            next_position: 1,
            states: BTreeMap::new(),
            last_used: Instant::now(),
        });
        if let Some((asked, _)) = from {
            conn.states.retain(|p, _| *p >= asked);
        }
        let position = conn.next_position;
        conn.next_position += 1;
        conn.states.insert(position, Arc::new(state));
        conn.last_used = Instant::now();
        position
    }

    /// One pass over `(since, now]`.
    async fn sliding_sync_once(
        &self,
        requester: &Requester,
        body: &Body,
        previous: &ConnectionState,
        since: Option<i64>,
        now: i64,
    ) -> Result<Outcome> {
        let me = requester.user_id.to_string();
        let user_memberships = self.user_memberships(&me, now).await?;
        let memberships = &user_memberships.rooms;
        // Rooms the user may list: everything but rooms they left themselves, unless they left
        // since the last response (their leave is the last thing they see of it).
        let listed: Vec<UserMembership> = memberships
            .iter()
            .filter(|m| m.stream_ordering <= now)
            .filter(|m| m.membership != "leave" || m.sender != me || since.is_some_and(|s| m.stream_ordering > s))
            .cloned()
            .collect();
        let by_room: HashMap<&str, &UserMembership> = memberships.iter().map(|m| (m.room_id.as_str(), m)).collect();
        let dm_rooms = self.dm_rooms(&me, &listed).await?;

        // Lists: filter, sort by latest activity, cut to ranges.
        let mut relevant: BTreeMap<String, RoomConfig> = BTreeMap::new();
        let mut lists = Map::new();
        let mut list_rooms: HashMap<&str, Vec<String>> = HashMap::new();
        if let Some(requested) = &body.lists {
            let entries = self.sorted_rooms(&listed, now).await?;
            for (name, list) in requested {
                let filters = list.filters.as_ref();
                let mut matching = Vec::new();
                for entry in &entries {
                    if self.passes_filters(&me, entry, filters, &dm_rooms).await? {
                        matching.push(entry.membership.room_id.clone());
                    }
                }
                let config = RoomConfig::new(&list.required_state, list.timeline_limit);
                let ranges = match (&list.ranges, list.slow_get_all_rooms) {
                    (_, Some(true)) | (None, _) => vec![(0, matching.len().saturating_sub(1) as u64)],
                    (Some(r), _) => r.clone(),
                };
                let mut ops = Vec::new();
                let mut in_list = Vec::new();
                for (start, end) in ranges {
                    let room_ids: Vec<String> = matching
                        .iter()
                        .skip(usize::try_from(start).unwrap_or(usize::MAX))
                        .take(usize::try_from(end.saturating_sub(start).saturating_add(1)).unwrap_or(usize::MAX))
                        .cloned()
                        .collect();
                    for room in &room_ids {
                        relevant.entry(room.clone()).or_insert_with(|| config.clone()).merge(&config);
                        in_list.push(room.clone());
                    }
                    ops.push(json!({"op": "SYNC", "range": [start, end], "room_ids": room_ids}));
                }
                list_rooms.insert(name.as_str(), in_list);
                lists.insert(name.clone(), json!({"count": matching.len(), "ops": ops}));
            }
        }
        // Subscriptions: rooms the user is or was in (nothing is said of others).
        let mut subscribed = HashSet::new();
        for (room, params) in body.room_subscriptions.iter().flatten() {
            if by_room.get(room.as_str()).is_none_or(|m| m.stream_ordering > now) {
                continue;
            }
            let config = RoomConfig::new(&params.required_state, params.timeline_limit);
            relevant.entry(room.clone()).or_insert_with(|| config.clone()).merge(&config);
            subscribed.insert(room.clone());
        }

        // Rooms already sent with nothing new since are left out of an incremental response.
        let mut rooms = Map::new();
        let mut state = previous.clone();
        let mut initial_rooms = HashSet::new();
        // Rooms already sent with the same config: which have events since. One storage read
        // per distinct position they are up to (all of them, usually: the request's).
        let mut to_check: HashMap<i64, Vec<String>> = HashMap::new();
        for (room, config) in &relevant {
            if let (Some(_), Some(m), Some(sent)) = (since, by_room.get(room.as_str()), previous.rooms.get(room))
                && sent.config == *config
                && !(m.membership == "join" && sent.membership != "join")
                && sent.up_to < now
            {
                to_check.entry(sent.up_to).or_default().push(room.clone());
            }
        }
        let mut with_news = HashSet::new();
        for (up_to, rooms) in to_check {
            with_news.extend(self.db(move |s| s.rooms_with_events_between(&rooms, up_to, now)).await?);
        }
        let rules = self.ruleset(&requester.user_id).await?;
        let mut read_positions: Option<HashMap<String, i64>> = None;
        for (room, config) in &relevant {
            let Some(membership) = by_room.get(room.as_str()) else { continue };
            let sent = previous.rooms.get(room);
            let newly_joined = membership.membership == "join" && sent.is_some_and(|s| s.membership != "join");
            let initial = since.is_none() || sent.is_none() || newly_joined;
            let config_changed = sent.is_some_and(|s| s.config != *config);
            let until = if matches!(membership.membership.as_str(), "leave" | "ban") {
                membership.stream_ordering
            } else {
                now
            };
            // Unread counts of a joined room (zero elsewhere), as /sync counts them.
            let counts = if membership.membership == "join" {
                if read_positions.is_none() {
                    let u = me.clone();
                    read_positions = Some(self.db(move |s| s.read_positions(&u)).await?.into_iter().collect());
                }
                let read = read_positions.as_ref().and_then(|p| p.get(room)).copied().unwrap_or(0);
                let read_at = read.max(user_memberships.joined_at.get(room).copied().unwrap_or(0));
                let counts = self.unread_counts(&requester.user_id, &rules, room, now, read_at).await?;
                (counts["notification_count"].as_u64().unwrap_or(0), counts["highlight_count"].as_u64().unwrap_or(0))
            } else {
                (0, 0)
            };
            let sent_room =
                SentRoom { up_to: now, membership: membership.membership.clone(), config: config.clone(), counts };
            let mut result = if !initial && !config_changed && !with_news.contains(room) {
                // Nothing new in the room; its counts may still have moved (a read receipt).
                state.rooms.insert(room.clone(), sent_room);
                if sent.is_some_and(|s| s.counts == counts) {
                    continue;
                }
                Map::new()
            } else {
                let from_bound = if initial { None } else { sent.map(|s| s.up_to) };
                state.rooms.insert(room.clone(), sent_room);
                self.sliding_room(requester, membership, config, from_bound, since, until, config_changed).await?
            };
            if dm_rooms.contains(room) {
                result.insert("is_dm".to_owned(), json!(true));
            }
            result.insert("notification_count".to_owned(), json!(counts.0));
            result.insert("highlight_count".to_owned(), json!(counts.1));
            if initial {
                result.insert("initial".to_owned(), json!(true));
                initial_rooms.insert(room.clone());
            }
            let has_news = initial
                || sent.is_some_and(|s| s.counts != counts)
                || ["name", "avatar", "heroes", "joined_count", "required_state", "timeline", "invite_state"]
                    .iter()
                    .any(|k| result.contains_key(*k));
            if has_news || since.is_none() {
                rooms.insert(room.clone(), Value::Object(result));
            }
        }

        let extensions =
            self.sliding_extensions(requester, body, since, now, &list_rooms, &subscribed, &initial_rooms).await?;
        let has_updates = !rooms.is_empty() || extensions.1;
        let mut out = Map::new();
        if !lists.is_empty() {
            out.insert("lists".to_owned(), Value::Object(lists));
        }
        out.insert("rooms".to_owned(), Value::Object(rooms));
        out.insert("extensions".to_owned(), Value::Object(extensions.0));
        Ok(Outcome { now, body: out, has_updates, state })
    }

    /// The user's listable rooms, most recently active first: a joined room by its latest
    /// event, any other by the user's membership event (they see nothing after it).
    async fn sorted_rooms(&self, listed: &[UserMembership], now: i64) -> Result<Vec<RoomEntry>> {
        let joined: Vec<String> = listed.iter().filter(|m| m.membership == "join").map(|m| m.room_id.clone()).collect();
        let latest = self.latest_activity(&joined, now).await?;
        let mut entries: Vec<RoomEntry> = listed
            .iter()
            .map(|m| RoomEntry {
                activity: if m.membership == "join" {
                    latest.get(&m.room_id).copied().unwrap_or(m.stream_ordering)
                } else {
                    m.stream_ordering
                },
                membership: m.clone(),
            })
            .collect();
        entries
            .sort_by(|a, b| b.activity.cmp(&a.activity).then_with(|| a.membership.room_id.cmp(&b.membership.room_id)));
        Ok(entries)
    }

    /// The stream position of each room's newest event: read from storage once per room, then
    /// moved on by the writes this process records ([`crate::sync::SyncCache::written_at`]),
    /// so sorting a long room list costs no storage read per room.
    async fn latest_activity(&self, rooms: &[String], now: i64) -> Result<HashMap<String, i64>> {
        let missing: Vec<String> = {
            let known = self.sliding_sync.latest.lock().unwrap_or_else(|p| p.into_inner());
            rooms.iter().filter(|r| !known.contains_key(*r)).cloned().collect()
        };
        if !missing.is_empty() {
            let asked = missing.clone();
            let found: HashMap<String, i64> =
                self.db(move |s| s.last_event_positions(&asked, &[], now)).await?.into_iter().collect();
            let mut known = self.sliding_sync.latest.lock().unwrap_or_else(|p| p.into_inner());
            for room in missing {
                let at = found.get(&room).copied().unwrap_or(0);
                let before = known.get(&room).copied().unwrap_or(at);
                known.insert(room, before.max(at));
            }
        }
        let known = self.sliding_sync.latest.lock().unwrap_or_else(|p| p.into_inner());
        Ok(rooms
            .iter()
            .map(|r| {
                let stored = known.peek(r).copied().unwrap_or(0);
                (r.clone(), stored.max(self.sync.cache.written_at(r).unwrap_or(0)))
            })
            .collect())
    }

    /// The user's memberships ([`myelin_storage::RoomStore::user_memberships`]), kept between
    /// requests while the user's own member events show no change since they were read (a
    /// cheap index range read instead of the whole list), and re-read at least once a minute
    /// (a state reset can change a membership without a new member event).
    async fn user_memberships(&self, me: &str, now: i64) -> Result<Arc<Memberships>> {
        let cached = self.sliding_sync.memberships.lock().unwrap_or_else(|p| p.into_inner()).get(me).cloned();
        if let Some((read_at, when, rows)) = cached
            && when.elapsed() < MEMBERSHIPS_FRESH
        {
            let u = me.to_owned();
            let changed = read_at < now && !self.db(move |s| s.membership_changes(&u, read_at, now)).await?.is_empty();
            if !changed {
                return Ok(rows);
            }
        }
        let u = me.to_owned();
        let rows = Arc::new(
            self.db(move |s| {
                Ok(Memberships {
                    rooms: s.user_memberships(&u)?,
                    joined_at: s.join_positions(&u)?.into_iter().collect(),
                })
            })
            .await?,
        );
        self.sliding_sync
            .memberships
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(me.to_owned(), (now, Instant::now(), rows.clone()));
        Ok(rows)
    }

    /// Direct-message rooms: those in `m.direct` account data, and invites marked `is_direct`.
    async fn dm_rooms(&self, me: &str, listed: &[UserMembership]) -> Result<HashSet<String>> {
        let u = me.to_owned();
        let direct = self.db(move |s| s.get_account_data(&u, "", "m.direct")).await?;
        let mut out: HashSet<String> = direct
            .as_ref()
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect();
        let invites: Vec<String> =
            listed.iter().filter(|m| m.membership == "invite").map(|m| m.event_id.clone()).collect();
        if !invites.is_empty() {
            for event in self.client_events(invites).await? {
                if event["content"]["is_direct"] == json!(true)
                    && let Some(room) = event["room_id"].as_str()
                {
                    out.insert(room.to_owned());
                }
            }
        }
        Ok(out)
    }

    /// Whether a room passes a list's filters (all of them; an absent filter passes all).
    async fn passes_filters(
        &self,
        me: &str,
        entry: &RoomEntry,
        filters: Option<&Filters>,
        dm_rooms: &HashSet<String>,
    ) -> Result<bool> {
        let Some(f) = filters else { return Ok(true) };
        let room = entry.membership.room_id.as_str();
        if f.is_dm.is_some_and(|dm| dm != dm_rooms.contains(room)) {
            return Ok(false);
        }
        if f.is_invite.is_some_and(|invite| invite != (entry.membership.membership == "invite")) {
            return Ok(false);
        }
        let needs_state = f.is_encrypted.is_some()
            || f.room_types.is_some()
            || f.not_room_types.is_some()
            || f.room_name_like.is_some();
        if needs_state {
            let state = match OwnedRoomId::try_from(room) {
                Ok(id) => self.current_state_shared(&id).await?,
                Err(_) => None,
            };
            let has = |kind: &str| state.as_ref().is_some_and(|s| s.contains_key(&(kind.to_owned(), String::new())));
            if f.is_encrypted.is_some_and(|e| e != has("m.room.encryption")) {
                return Ok(false);
            }
            if f.room_types.is_some() || f.not_room_types.is_some() {
                let kind = self.state_string(state.as_deref(), "m.room.create", "type").await?;
                if f.room_types.as_ref().is_some_and(|t| !t.contains(&kind)) {
                    return Ok(false);
                }
                if f.not_room_types.as_ref().is_some_and(|t| t.contains(&kind)) {
                    return Ok(false);
                }
            }
            if let Some(like) = &f.room_name_like {
                let name = self.state_string(state.as_deref(), "m.room.name", "name").await?.unwrap_or_default();
                if !name.to_lowercase().contains(&like.to_lowercase()) {
                    return Ok(false);
                }
            }
        }
        if f.tags.is_some() || f.not_tags.is_some() {
            let (u, r) = (me.to_owned(), room.to_owned());
            let tags = self.db(move |s| s.get_account_data(&u, &r, "m.tag")).await?;
            let has_tag = |t: &String| tags.as_ref().is_some_and(|v| v["tags"].get(t).is_some());
            if f.not_tags.as_ref().is_some_and(|t| t.iter().any(has_tag)) {
                return Ok(false);
            }
            if f.tags.as_ref().is_some_and(|t| !t.iter().any(has_tag)) {
                return Ok(false);
            }
        }
        if let Some(spaces) = &f.spaces {
            let mut in_space = false;
            for space in spaces {
                if self.space_children(me, space).await?.contains(room) {
                    in_space = true;
                    break;
                }
            }
            if !in_space {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A string field of a state event's content (`None` when absent or not a string).
    async fn state_string(
        &self,
        state: Option<&HashMap<(String, String), OwnedEventId>>,
        kind: &str,
        field: &str,
    ) -> Result<Option<String>> {
        let Some(id) = state.and_then(|s| s.get(&(kind.to_owned(), String::new()))) else { return Ok(None) };
        let content = self.load_events(vec![id.to_string()]).await?.values().next().map(|p| p.content_map());
        Ok(content.and_then(|c| c.get(field).and_then(Value::as_str).map(str::to_owned)))
    }

    /// The rooms a space the user is joined to names as children (`m.space.child` with `via`).
    async fn space_children(&self, me: &str, space: &str) -> Result<HashSet<String>> {
        let Ok(id) = OwnedRoomId::try_from(space) else { return Ok(HashSet::new()) };
        if self.membership_of(&id, me).await?.as_deref() != Some("join") {
            return Ok(HashSet::new());
        }
        let state = self.current_state_shared(&id).await?.unwrap_or_default();
        let children: Vec<String> =
            state.iter().filter(|((t, _), _)| t == "m.space.child").map(|(_, id)| id.to_string()).collect();
        Ok(self
            .client_events(children)
            .await?
            .into_iter()
            .filter(|e| e["content"]["via"].as_array().is_some_and(|v| !v.is_empty()))
            .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
            .collect())
    }

    /// One room of the response. `from_bound` is where the connection is up to with this room
    /// (`None`: the room is new to it); `until` is the last position the user may see (their
    /// leave or ban, or now).
    #[allow(clippy::too_many_arguments)]
    async fn sliding_room(
        &self,
        requester: &Requester,
        membership: &UserMembership,
        config: &RoomConfig,
        from_bound: Option<i64>,
        since: Option<i64>,
        until: i64,
        config_changed: bool,
    ) -> Result<Map<String, Value>> {
        let me = requester.user_id.as_str();
        let room = membership.room_id.as_str();
        let initial = from_bound.is_none();
        let mut out = Map::new();
        if matches!(membership.membership.as_str(), "invite" | "knock") {
            out.insert("invite_state".to_owned(), json!(self.stripped_state(room, me).await?));
            out.insert("bump_stamp".to_owned(), json!(membership.stream_ordering.max(0)));
            return Ok(out);
        }
        let joined = membership.membership == "join";
        let reader = if joined { Reader::MEMBER } else { Reader { until, peeking: false, sees_everything: false } };

        // Timeline.
        let mut timeline_events: Vec<Value> = Vec::new();
        let mut limited = false;
        if config.timeline_limit > 0 {
            let timeline = self.latest_timeline(me, reader, room, from_bound, until, config.timeline_limit).await?;
            limited = timeline.json["limited"].as_bool().unwrap_or(false);
            let num_live = match since {
                Some(s) => timeline.positions.iter().rev().take_while(|p| **p > s).count(),
                None => 0,
            };
            out.insert("prev_batch".to_owned(), timeline.json["prev_batch"].clone());
            out.insert("limited".to_owned(), json!(limited));
            out.insert("num_live".to_owned(), json!(num_live));
            timeline_events = timeline.json["events"].as_array().cloned().unwrap_or_default();
            // Events are sent without `room_id`, as in `/sync` (the room is the key).
            for event in &mut timeline_events {
                event.as_object_mut().map(|e| e.remove("room_id"));
            }
            if let Some(bump) = timeline
                .positions
                .iter()
                .zip(&timeline_events)
                .rev()
                .find(|(_, e)| BUMP_TYPES.contains(&e["type"].as_str().unwrap_or_default()))
                .map(|(p, _)| *p)
            {
                out.insert("bump_stamp".to_owned(), json!(bump));
            }
            let own: Vec<String> = timeline_events
                .iter()
                .filter(|e| e["sender"] == me)
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                .collect();
            if !own.is_empty() {
                let txns = self.transaction_ids(requester, own, true).await?;
                for event in &mut timeline_events {
                    if let Some(txn) = event["event_id"].as_str().and_then(|id| txns.get(id)) {
                        event["unsigned"]["transaction_id"] = json!(txn);
                    }
                }
            }
        }

        // State: all of it that is asked for on a room new to the connection (or asked for
        // differently), else what changed since the connection was up to date.
        let state_rows = if joined {
            self.current_state_rows(room, until).await?
        } else {
            Arc::new(self.state_readable_at(room, false, until).await?)
        };
        let whole = initial || config_changed;
        let changed_rows: Vec<&(Value, i64)> =
            state_rows.iter().filter(|(_, pos)| whole || from_bound.is_some_and(|b| *pos > b)).collect();
        let changed_key = |kind: &str| changed_rows.iter().any(|(e, _)| e["type"] == kind && e["state_key"] == "");
        let membership_changed = changed_rows.iter().any(|(e, _)| e["type"] == "m.room.member");
        let lazy: HashSet<&str> = if config.lazy_members() {
            timeline_events
                .iter()
                .flat_map(|e| {
                    let member = if e["type"] == "m.room.member" { e["state_key"].as_str() } else { None };
                    e["sender"].as_str().into_iter().chain(member)
                })
                .collect()
        } else {
            HashSet::new()
        };
        let mut required = Vec::new();
        for (event, pos) in state_rows.iter() {
            let (kind, key) =
                (event["type"].as_str().unwrap_or_default(), event["state_key"].as_str().unwrap_or_default());
            let wanted = config.wants_state(kind, key, me) || (kind == "m.room.member" && lazy.contains(key));
            // Lazy members are sent with the timeline that needs them, changed or not.
            let fresh =
                whole || from_bound.is_some_and(|b| *pos > b) || (kind == "m.room.member" && lazy.contains(key));
            if wanted && fresh {
                required.push(event.clone());
            }
        }
        let content_of = |kind: &str, field: &str| {
            state_rows
                .iter()
                .find(|(e, _)| e["type"] == kind && e["state_key"] == "")
                .and_then(|(e, _)| e["content"][field].as_str().map(str::to_owned))
        };
        let name = content_of("m.room.name", "name").filter(|n| !n.is_empty());
        if (whole || changed_key("m.room.name"))
            && let Some(name) = &name
        {
            out.insert("name".to_owned(), json!(name));
        }
        if (whole || changed_key("m.room.avatar"))
            && let Some(avatar) = content_of("m.room.avatar", "url").filter(|a| !a.is_empty())
        {
            out.insert("avatar".to_owned(), json!(avatar));
        }
        if name.is_none() && joined && (whole || membership_changed) {
            let heroes = heroes(me, &state_rows);
            if !heroes.is_empty() {
                out.insert("heroes".to_owned(), Value::Array(heroes));
            }
        }
        if joined && (whole || membership_changed) {
            let members = state_rows.iter().filter(|(e, _)| e["type"] == "m.room.member");
            let count = |m: &str| members.clone().filter(|(e, _)| e["content"]["membership"] == m).count();
            out.insert("joined_count".to_owned(), json!(count("join")));
            out.insert("invited_count".to_owned(), json!(count("invite")));
        }
        if !required.is_empty() {
            out.insert("required_state".to_owned(), Value::Array(required));
        }
        if !timeline_events.is_empty() {
            out.insert("timeline".to_owned(), Value::Array(timeline_events));
        }
        // `bump_stamp` from outside the timeline when the client cannot know it otherwise.
        if !out.contains_key("bump_stamp") && (initial || limited || !joined) {
            let bump = if joined {
                let r = vec![room.to_owned()];
                self.db(move |s| s.last_event_positions(&r, BUMP_TYPES, until))
                    .await?
                    .first()
                    .map(|(_, p)| *p)
                    .unwrap_or(membership.stream_ordering)
            } else {
                membership.stream_ordering
            };
            out.insert("bump_stamp".to_owned(), json!(bump.max(0)));
        }
        Ok(out)
    }

    /// The room's timeline for the connection: events after `from_bound` up to `until`, at most
    /// `limit`. A joined room's latest events (a room new to the connection) are kept for the
    /// next request until the room changes, when every member would see the same ones.
    async fn latest_timeline(
        &self,
        me: &str,
        reader: Reader,
        room: &str,
        from_bound: Option<i64>,
        until: i64,
        limit: usize,
    ) -> Result<Arc<crate::sync::Timeline>> {
        let shareable = reader == Reader::MEMBER && from_bound.is_none();
        if shareable && let Some(t) = self.cached_read(room, until, |r| r.timelines.get(&limit).cloned()) {
            return Ok(t);
        }
        let filter = SyncFilter::timeline_limit(limit);
        let timeline = Arc::new(self.timeline_events(me, reader, room, from_bound.unwrap_or(0), until, &filter).await?);
        if shareable && timeline.same_for_members {
            self.keep_read(room, until, |r| {
                r.timelines.insert(limit, timeline.clone());
                timeline.positions.len()
            });
        }
        Ok(timeline)
    }

    /// A joined room's current state as client events with their positions, kept until the
    /// room changes.
    async fn current_state_rows(&self, room: &str, now: i64) -> Result<Arc<Vec<(Value, i64)>>> {
        if let Some(state) = self.cached_read(room, now, |r| r.state.clone()) {
            return Ok(state);
        }
        let state = Arc::new(self.state_readable_at(room, true, now).await?);
        self.keep_read(room, now, |r| {
            r.state = Some(state.clone());
            state.len()
        });
        Ok(state)
    }

    /// Something kept of `room` by [`Homeserver::keep_read`], if the room has not changed since.
    fn cached_read<T>(&self, room: &str, now: i64, pick: impl FnOnce(&RoomRead) -> Option<T>) -> Option<T> {
        let changed = self.sync.cache.changed_at(room);
        let reads = self.sliding_sync.reads.lock().unwrap_or_else(|p| p.into_inner());
        let read = reads.rooms.get(room)?;
        if changed <= read.built_at && read.built_at <= now { pick(read) } else { None }
    }

    /// Keeps something read of `room` at stream position `built_at` (`add` stores it and says
    /// how many events it holds), unless the room changed since.
    fn keep_read(&self, room: &str, built_at: i64, add: impl FnOnce(&mut RoomRead) -> usize) {
        if self.sync.cache.changed_at(room) > built_at {
            return; // written while it was read
        }
        let mut reads = self.sliding_sync.reads.lock().unwrap_or_else(|p| p.into_inner());
        if reads.events > MAX_KEPT_EVENTS {
            reads.rooms.clear();
            reads.events = 0;
        }
        let stale = reads.rooms.get(room).map(|r| (r.built_at, r.events));
        match stale {
            Some((at, _)) if at > built_at => return, // a newer read is kept
            Some((at, events)) if at < built_at => {
                reads.events -= events;
                reads.rooms.remove(room);
            }
            _ => {}
        }
        let read = reads.rooms.entry(room.to_owned()).or_insert_with(|| RoomRead {
            built_at,
            state: None,
            timelines: HashMap::new(),
            events: 0,
        });
        let added = add(read);
        read.events += added;
        reads.events += added;
    }

    /// The room state the user may read (now for a member, at their leave or ban otherwise),
    /// as client events with the stream position of each.
    async fn state_readable_at(&self, room: &str, joined: bool, until: i64) -> Result<Vec<(Value, i64)>> {
        let r = room.to_owned();
        let rows = if joined {
            self.db(move |s| s.current_state_events(&r)).await?
        } else {
            self.db(move |s| {
                let Some(group) = s.state_group_at(&r, until)? else { return Ok(Vec::new()) };
                let mut rows = Vec::new();
                for entry in s.get_state_group(group)? {
                    rows.extend(s.get_event(&entry.event_id)?);
                }
                Ok(rows)
            })
            .await?
        };
        Ok(rows
            .into_iter()
            .map(|r| {
                let mut event = client_event_from_str(&r.json);
                event.as_object_mut().map(|e| e.remove("room_id"));
                (event, r.stream_ordering)
            })
            .collect())
    }

    /// The extensions section, and whether it carries anything that should end a long-poll.
    #[allow(clippy::too_many_arguments)]
    async fn sliding_extensions(
        &self,
        requester: &Requester,
        body: &Body,
        since: Option<i64>,
        now: i64,
        list_rooms: &HashMap<&str, Vec<String>>,
        subscribed: &HashSet<String>,
        initial_rooms: &HashSet<String>,
    ) -> Result<(Map<String, Value>, bool)> {
        let ext = body.extensions();
        let me = requester.user_id.as_str();
        let mut out = Map::new();
        let mut news = false;
        let enabled = |e: Option<bool>| e == Some(true);

        if let Some(to_device) = ext.to_device.as_ref().filter(|t| enabled(t.enabled)) {
            let acked = to_device.since.as_deref().and_then(|s| s.parse::<i64>().ok());
            let (u, d) = (me.to_owned(), requester.device_id.clone());
            let messages = self
                .db(move |s| {
                    if let Some(acked) = acked {
                        s.delete_to_device(&u, &d, acked)?;
                    }
                    s.to_device_messages(&u, &d, now)
                })
                .await?;
            let limit = to_device.limit.max(0) as usize;
            let truncated = messages.len() > limit;
            let taken: Vec<(i64, String)> = messages.into_iter().take(limit).collect();
            let next_batch = match (truncated, taken.last()) {
                (true, Some((pos, _))) => *pos,
                _ => now.max(acked.unwrap_or(0)),
            };
            let events: Vec<Value> = taken.iter().filter_map(|(_, j)| serde_json::from_str(j).ok()).collect();
            news |= !events.is_empty();
            out.insert("to_device".to_owned(), json!({"next_batch": next_batch.to_string(), "events": events}));
        }

        if ext.e2ee.as_ref().is_some_and(|e| enabled(e.enabled)) {
            let (changed, left) = match since {
                Some(from) => self.device_list_updates(me, from, now).await?,
                None => Default::default(),
            };
            news |= !changed.is_empty() || !left.is_empty();
            let (u, d) = (me.to_owned(), requester.device_id.clone());
            let fallback = self.db(move |s| s.unused_fallback_key_types(&u, &d)).await?;
            out.insert(
                "e2ee".to_owned(),
                json!({
                    "device_lists": {"changed": changed, "left": left},
                    "device_one_time_keys_count": self.key_counts(me, &requester.device_id).await?,
                    "device_unused_fallback_key_types": fallback,
                }),
            );
        }

        let rooms_for = |per_room: &PerRoom| -> Vec<String> {
            let mut rooms: HashSet<String> = HashSet::new();
            for list in per_room.lists.iter().flatten() {
                if list == "*" {
                    rooms.extend(list_rooms.values().flatten().cloned());
                } else if let Some(r) = list_rooms.get(list.as_str()) {
                    rooms.extend(r.iter().cloned());
                }
            }
            for room in per_room.rooms.iter().flatten() {
                if room == "*" {
                    rooms.extend(subscribed.iter().cloned());
                } else if subscribed.contains(room) {
                    rooms.insert(room.clone());
                }
            }
            let mut rooms: Vec<String> = rooms.into_iter().collect();
            rooms.sort();
            rooms
        };

        if let Some(account_data) = ext.account_data.as_ref().filter(|a| enabled(a.enabled)) {
            let rooms: HashSet<String> = rooms_for(account_data).into_iter().collect();
            // Everything for a new connection or a room new to it, else the changes.
            let from =
                if since.is_none() || rooms.iter().any(|r| initial_rooms.contains(r)) { 0 } else { since.unwrap_or(0) };
            let u = me.to_owned();
            let rows = self.db(move |s| s.account_data_since(&u, from, now)).await?;
            let (mut global, mut by_room) = (Vec::new(), Map::new());
            // Changes are positions after `since`; a row read from 0 for an initial room is
            // only sent for that room.
            let u = me.to_owned();
            let changed: HashSet<(String, String)> = match since {
                Some(s) if from == 0 => self
                    .db(move |st| st.account_data_since(&u, s, now))
                    .await?
                    .into_iter()
                    .map(|(r, t, _)| (r, t))
                    .collect(),
                _ => HashSet::new(),
            };
            for (room, kind, content) in rows {
                let fresh = since.is_none() || from != 0 || changed.contains(&(room.clone(), kind.clone()));
                let event = json!({"type": kind, "content": content});
                if room.is_empty() {
                    if fresh {
                        global.push(event);
                    }
                } else if rooms.contains(&room)
                    && (fresh || initial_rooms.contains(&room))
                    && let Some(events) = by_room.entry(room).or_insert_with(|| json!([])).as_array_mut()
                {
                    events.push(event);
                }
            }
            news |= since.is_some() && (!global.is_empty() || !by_room.is_empty());
            out.insert("account_data".to_owned(), json!({"global": global, "rooms": by_room}));
        }

        if let Some(receipts) = ext.receipts.as_ref().filter(|r| enabled(r.enabled)) {
            let rooms = rooms_for(receipts);
            let (fresh, seen): (Vec<String>, Vec<String>) =
                rooms.into_iter().partition(|r| since.is_none() || initial_rooms.contains(r));
            let mut events = self.receipt_events(me, &fresh, 0, now).await?;
            if let Some(from) = since {
                events.extend(self.receipt_events(me, &seen, from, now).await?);
            }
            news |= since.is_some() && !events.is_empty();
            let rooms: Map<String, Value> = events.into_iter().collect();
            out.insert("receipts".to_owned(), json!({"rooms": rooms}));
        }

        if let Some(typing) = ext.typing.as_ref().filter(|t| enabled(t.enabled)) {
            let rooms = rooms_for(typing);
            let (fresh, seen): (Vec<String>, Vec<String>) =
                rooms.into_iter().partition(|r| since.is_none() || initial_rooms.contains(r));
            let mut events = self.typing_events(&fresh, None);
            events.extend(self.typing_events(&seen, since));
            news |= since.is_some() && !events.is_empty();
            let rooms: Map<String, Value> = events.into_iter().collect();
            out.insert("typing".to_owned(), json!({"rooms": rooms}));
        }
        Ok((out, news))
    }
}

/// Up to five members who stand for a room without a name: joined and invited members other
/// than the user, in the order they arrived; failing those, former members.
fn heroes(me: &str, state: &[(Value, i64)]) -> Vec<Value> {
    let mut members: Vec<&(Value, i64)> =
        state.iter().filter(|(e, _)| e["type"] == "m.room.member" && e["state_key"] != me).collect();
    members.sort_by_key(|(_, pos)| *pos);
    let with = |wanted: &[&str]| -> Vec<&Value> {
        members
            .iter()
            .filter(|(e, _)| wanted.contains(&e["content"]["membership"].as_str().unwrap_or_default()))
            .map(|(e, _)| e)
            .collect()
    };
    let mut chosen = with(&["join", "invite"]);
    if chosen.is_empty() {
        chosen = with(&["leave", "ban"]);
    }
    chosen
        .into_iter()
        .take(MAX_HEROES)
        .map(|e| {
            let mut hero = json!({"user_id": e["state_key"]});
            if let Some(name) = e["content"]["displayname"].as_str() {
                hero["displayname"] = json!(name);
            }
            if let Some(avatar) = e["content"]["avatar_url"].as_str() {
                hero["avatar_url"] = json!(avatar);
            }
            hero
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse() {
        assert_eq!(parse_pos("3_120"), Some((3, 120)));
        assert_eq!(parse_pos("0_0"), Some((0, 0)));
        for bad in ["", "3", "a_1", "1_b", "-1_2"] {
            assert_eq!(parse_pos(bad), None, "{bad}");
        }
    }

    #[test]
    fn heroes_prefer_current_members_in_arrival_order() {
        let member = |user: &str, m: &str| json!({"type": "m.room.member", "state_key": user, "content": {"membership": m, "displayname": user}});
        let state = vec![
            (member("@me:x", "join"), 1),
            (member("@c:x", "invite"), 5),
            (member("@b:x", "join"), 3),
            (member("@gone:x", "leave"), 2),
        ];
        let ids: Vec<Value> = heroes("@me:x", &state).into_iter().map(|h| h["user_id"].clone()).collect();
        assert_eq!(ids, vec![json!("@b:x"), json!("@c:x")]);
        let alone = vec![(member("@me:x", "join"), 1), (member("@gone:x", "leave"), 2)];
        assert_eq!(heroes("@me:x", &alone)[0]["user_id"], "@gone:x");
    }
}
