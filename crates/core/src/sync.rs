//! `/sync`: initial and incremental, with long-polling on the stream watch.
//!
//! Tokens are `s<N>`: everything up to stream position N has been delivered. An incremental
//! sync returns rooms with events in `(since, now]`, membership changes, and account data; when
//! nothing is new it waits on [`Homeserver::stream`] until something is or the timeout passes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::{RawValue, to_raw_value};
use serde_json::{Map, Value, json};

use crate::cache::BoundedMap;
use crate::events::client_event_from_str;
use crate::rooms::parse_token;
use crate::visibility::Reader;
use crate::{Error, Homeserver, Requester, Result};

/// A parsed `/sync` request.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    /// `since` token.
    pub since: Option<String>,
    /// Long-poll timeout.
    pub timeout: Duration,
    /// `full_state`.
    pub full_state: bool,
    /// Inline filter JSON or a stored filter ID.
    pub filter: Option<String>,
    /// `set_presence`: `online` (the default), `unavailable` or `offline`.
    pub set_presence: Option<String>,
}

/// The response body. Joined rooms keep their cached [`Section`]s, which are written out as
/// they are, never parsed again.
#[derive(Debug, Serialize)]
pub struct SyncResponse {
    next_batch: String,
    rooms: SyncRooms,
    account_data: Value,
    presence: Value,
    to_device: Value,
    device_lists: Value,
    device_one_time_keys_count: Value,
    device_unused_fallback_key_types: Value,
}

impl SyncResponse {
    /// The body as JSON, written into a buffer sized for it up front: a sync of hundreds of
    /// rooms is megabytes, and growing a buffer that size by doubling costs copies and faults.
    pub fn to_json(&self) -> Vec<u8> {
        let sections: usize = self.rooms.join.iter().map(|(_, r)| r.section.bytes() + 512).sum();
        let mut out = Vec::with_capacity(sections + 4096);
        // Serialising Values and raw JSON into memory cannot fail.
        let _ = serde_json::to_writer(&mut out, self);
        out
    }
}

#[derive(Debug, Serialize)]
struct SyncRooms {
    #[serde(serialize_with = "as_map")]
    join: Vec<(String, JoinedRoom)>,
    invite: Map<String, Value>,
    leave: Map<String, Value>,
    knock: Map<String, Value>,
}

fn as_map<S: serde::Serializer>(rooms: &[(String, JoinedRoom)], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_map(rooms.iter().map(|(k, v)| (k, v)))
}

/// Which timeline a joined room's answer carries (MSC4115's `unsigned.membership` makes it
/// the reader's).
#[derive(Debug)]
enum TimelineFor {
    /// The section's, every event labelled `join`: shared by the members whose own
    /// membership does not change within it.
    Joined,
    /// Labelled for this reader, whose member event is in it.
    Own(Box<RawValue>),
}

/// One joined room in a response: the shared section and this user's parts.
#[derive(Debug)]
struct JoinedRoom {
    section: Arc<Section>,
    timeline: TimelineFor,
    /// `m.heroes` for this user (the section's candidates but themselves), if the room has
    /// no name.
    heroes: Vec<String>,
    account_data: Value,
    unread_notifications: Value,
    ephemeral: Value,
}

impl Serialize for JoinedRoom {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut room = s.serialize_struct("JoinedRoom", 6)?;
        match &self.timeline {
            TimelineFor::Joined => room.serialize_field("timeline", self.section.joined_timeline())?,
            TimelineFor::Own(timeline) => room.serialize_field("timeline", timeline)?,
        }
        room.serialize_field("state", &self.section.state)?;
        if self.heroes.is_empty() {
            room.serialize_field("summary", &self.section.summary)?;
        } else {
            let mut summary: Map<String, Value> =
                serde_json::from_str(self.section.summary.get()).map_err(serde::ser::Error::custom)?;
            summary.insert("m.heroes".into(), json!(self.heroes));
            room.serialize_field("summary", &summary)?;
        }
        room.serialize_field("account_data", &self.account_data)?;
        room.serialize_field("unread_notifications", &self.unread_notifications)?;
        room.serialize_field("ephemeral", &self.ephemeral)?;
        room.end()
    }
}

/// How far back a timeline with an event filter looks for events that match.
const MAX_FILTERED_SCAN: usize = 1000;

/// Account-data rows `(room or "", type, content)` as events: the global ones, and each
/// room's.
pub(crate) fn split_account_data(rows: Vec<(String, String, Value)>) -> (Vec<Value>, HashMap<String, Vec<Value>>) {
    let mut global = Vec::new();
    let mut by_room: HashMap<String, Vec<Value>> = HashMap::new();
    for (room, kind, content) in rows {
        let item = json!({"type": kind, "content": content});
        if room.is_empty() {
            global.push(item);
        } else {
            by_room.entry(room).or_default().push(item);
        }
    }
    (global, by_room)
}

/// An event filter's `types`, `not_types`, `senders` and `not_senders` (types may end in `*`).
#[derive(Default)]
pub(crate) struct EventMatcher {
    types: Option<Vec<String>>,
    not_types: Vec<String>,
    senders: Option<HashSet<String>>,
    not_senders: HashSet<String>,
}

impl EventMatcher {
    fn from_json(f: &Value) -> Self {
        let strings =
            |v: &Value| v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect());
        EventMatcher {
            types: strings(&f["types"]),
            not_types: strings(&f["not_types"]).unwrap_or_default(),
            senders: strings(&f["senders"]).map(|v: Vec<String>| v.into_iter().collect()),
            not_senders: strings(&f["not_senders"]).map(|v: Vec<String>| v.into_iter().collect()).unwrap_or_default(),
        }
    }
    /// Whether it lets every event through.
    fn is_open(&self) -> bool {
        self.types.is_none() && self.not_types.is_empty() && self.senders.is_none() && self.not_senders.is_empty()
    }
    fn matches(&self, event: &Value) -> bool {
        let kind = event["type"].as_str().unwrap_or_default();
        let sender = event["sender"].as_str().unwrap_or_default();
        let type_is = |pattern: &String| match pattern.strip_suffix('*') {
            Some(prefix) => kind.starts_with(prefix),
            None => kind == pattern,
        };
        !self.not_types.iter().any(type_is)
            && self.types.as_ref().is_none_or(|t| t.iter().any(type_is))
            && !self.not_senders.contains(sender)
            && self.senders.as_ref().is_none_or(|s| s.contains(sender))
    }
}

/// The parts of a filter `/sync` honours.
pub(crate) struct SyncFilter {
    timeline_limit: usize,
    /// `room.timeline`'s event filter.
    timeline: EventMatcher,
    /// `room.state`'s event filter.
    state: EventMatcher,
    rooms: Option<HashSet<String>>,
    not_rooms: HashSet<String>,
    /// `room.include_leave`: rooms left or banned from in an initial sync too.
    include_leave: bool,
    /// `room.state.lazy_load_members`: the state carries only the memberships of the
    /// timeline's senders (and the user's own).
    lazy_load_members: bool,
    /// `room.state.include_redundant_members`: with lazy loading, memberships this device was
    /// already sent are sent again.
    include_redundant_members: bool,
    /// `event_format: federation`: events as stored (with `prev_events`, `auth_events`,
    /// `depth`, `hashes`, `signatures`), not in the client format.
    federation_format: bool,
}

impl SyncFilter {
    fn from_json(f: &Value) -> Self {
        let room = &f["room"];
        let list = |v: &Value| {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect::<HashSet<_>>())
        };
        SyncFilter {
            timeline_limit: room["timeline"]["limit"].as_u64().map(|l| l.min(500) as usize).unwrap_or(10),
            timeline: EventMatcher::from_json(&room["timeline"]),
            state: EventMatcher::from_json(&room["state"]),
            rooms: list(&room["rooms"]),
            not_rooms: list(&room["not_rooms"]).unwrap_or_default(),
            include_leave: room["include_leave"].as_bool().unwrap_or(false),
            lazy_load_members: room["state"]["lazy_load_members"].as_bool().unwrap_or(false),
            include_redundant_members: room["state"]["include_redundant_members"].as_bool().unwrap_or(false),
            federation_format: f["event_format"] == "federation",
        }
    }
    /// No filter but a timeline limit (sliding sync's `timeline_limit`).
    pub(crate) fn timeline_limit(limit: usize) -> Self {
        SyncFilter { timeline_limit: limit, ..SyncFilter::from_json(&Value::Null) }
    }
    /// A stored event in the format the filter asks for.
    fn event(&self, stored_json: &str) -> Value {
        if self.federation_format {
            serde_json::from_str(stored_json).unwrap_or(Value::Null)
        } else {
            client_event_from_str(stored_json)
        }
    }
    fn wants(&self, room: &str) -> bool {
        !self.not_rooms.contains(room) && self.rooms.as_ref().is_none_or(|r| r.contains(room))
    }
}

/// The sync service's in-memory state (`hs.sync`).
pub(crate) struct SyncState {
    /// The latest stream position, watched by long-polling `/sync` requests (a wake-up bus:
    /// the position itself is the database's; with several processes, commits on another
    /// process must wake these too). Written after each commit that advances the stream.
    pub(crate) stream: tokio::sync::watch::Sender<i64>,
    /// When rooms last changed, and cached initial-sync room sections (a cache; see
    /// [`SyncCache`]).
    pub(crate) cache: SyncCache,
    /// Set once this process begins to shut down: long-polls answer at once.
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
    /// With lazy-loaded members: the membership events each `(user, device)` was sent, per
    /// room (member -> event ID), so that later syncs leave them out. A cache, as Synapse's: a
    /// forgotten entry means a membership is sent again, which clients accept.
    pub(crate) lazy_members_sent: std::sync::Mutex<LazyMembersSent>,
}

/// `(user, device)` -> room -> member -> the membership event ID last sent.
pub(crate) type LazyMembersSent = BoundedMap<(String, String), HashMap<String, HashMap<String, String>>>;

/// How many devices' lazy-loading records are kept.
const LAZY_MEMBERS_DEVICES: usize = 10_000;

impl SyncState {
    pub(crate) fn new(position: i64) -> Self {
        SyncState {
            stream: tokio::sync::watch::Sender::new(position),
            cache: SyncCache::new(position),
            stopping: tokio::sync::watch::Sender::new(false),
            lazy_members_sent: std::sync::Mutex::new(BoundedMap::new("lazy_members_sent", LAZY_MEMBERS_DEVICES)),
        }
    }
}

impl Homeserver {
    /// The room's events in `(from, to]`, newest first, at most `limit`
    /// ([`myelin_storage::RoomStore::room_events`]); the same read by concurrent requests is
    /// made once (see [`SyncCacheInner::ranges`]).
    pub(crate) async fn newest_room_events(
        &self,
        room: &str,
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<Arc<Vec<myelin_storage::EventRow>>> {
        let key = (room.to_owned(), from, to, limit);
        if let Some(rows) = self.sync.cache.lock().ranges.get(&key).cloned() {
            return Ok(rows);
        }
        let r = room.to_owned();
        let rows = Arc::new(self.db(move |s| s.room_events(&r, from, to, true, limit)).await?);
        // Only ranges up to the newest position, which requests stop asking for as soon as
        // anything (a redaction rewriting an event in it, too) moves the stream on; a range
        // ending earlier (a left room's, a sliding sync `until`) could be asked for long after.
        let newest = to >= *self.sync.stream.borrow();
        if newest && rows.iter().map(|row| row.json.len()).sum::<usize>() <= KEPT_RANGE_BYTES {
            self.sync.cache.lock().ranges.insert(key, rows.clone());
        }
        Ok(rows)
    }

    /// The room's joined and invited member counts at `now` (kept while the room is unchanged).
    pub(crate) async fn member_counts(&self, room: &str, now: i64) -> Result<(usize, usize)> {
        let summary = self.member_summary(room, now).await?;
        Ok((summary.joined, summary.invited))
    }

    /// The room's member counts and hero candidates at `now`, from one read of its
    /// memberships (kept while the room is unchanged).
    async fn member_summary(&self, room: &str, now: i64) -> Result<MemberSummary> {
        if let Some(summary) = self.sync.cache.member_summary(room, now) {
            return Ok(summary);
        }
        let r = room.to_owned();
        let memberships = self.db(move |s| s.room_memberships(&r)).await?;
        let sorted = |wanted: &[&str]| {
            let mut users: Vec<String> =
                memberships.iter().filter(|(_, m)| wanted.contains(&m.as_str())).map(|(u, _)| u.clone()).collect();
            users.sort();
            users.truncate(6);
            users
        };
        let summary = MemberSummary {
            joined: memberships.iter().filter(|(_, m)| m == "join").count(),
            invited: memberships.iter().filter(|(_, m)| m == "invite").count(),
            heroes: Arc::new((sorted(&["join", "invite"]), sorted(&["leave", "ban"]))),
        };
        self.sync.cache.keep_member_summary(room, now, summary.clone());
        Ok(summary)
    }

    async fn sync_filter(&self, requester: &Requester, filter: Option<&str>) -> Result<SyncFilter> {
        let Some(f) = filter else { return Ok(SyncFilter::from_json(&Value::Null)) };
        if f.trim_start().starts_with('{') {
            let v: Value = serde_json::from_str(f).map_err(|_| Error::bad_json("Invalid filter JSON"))?;
            return Ok(SyncFilter::from_json(&v));
        }
        let stored = self.get_filter(requester, requester.user_id.as_str(), f).await?;
        Ok(SyncFilter::from_json(&stored))
    }

    /// `GET /sync`.
    pub async fn sync(&self, requester: &Requester, request: SyncRequest) -> Result<SyncResponse> {
        let filter = self.sync_filter(requester, request.filter.as_deref()).await?;
        let since = match &request.since {
            // A token Synapse gave out before its data was imported (`s72_4_0_…`, or `m…~…`
            // from several writers; Myelin's never hold `_`): the client starts over with an
            // initial sync, as documented in docs/migrating-from-synapse.md.
            Some(t) if is_synapse_token(t) => None,
            Some(t) => Some(parse_token(t).ok_or_else(|| Error::invalid_param(format!("Invalid since token {t}")))?),
            None => None,
        };
        // A sync is a read: presence it would record (a write) must not fail it, e.g. on a
        // full disk.
        if let Err(e) = self.presence_from_sync(requester, request.set_presence.as_deref().unwrap_or("online")).await {
            tracing::debug!(error = %e.message, "could not record presence from a sync");
        }
        let mut watch = self.sync.stream.subscribe();
        let mut stopping = self.sync.stopping.subscribe();
        let deadline = tokio::time::Instant::now() + request.timeout;
        let mut woken = false;
        loop {
            let now = *watch.borrow_and_update();
            let response = self.sync_once(requester, since, now, request.full_state, &filter).await?;
            let empty = response.1;
            if !empty || since.is_none() || request.full_state {
                if woken {
                    count_wakeup("new_data");
                }
                return Ok(response.0);
            }
            // Nothing new: wait for the stream to move, then look again.
            // A shutting-down server answers at once, so that it can stop within a
            // container's grace period instead of after the longest long-poll.
            if *stopping.borrow_and_update() {
                return Ok(response.0);
            }
            tokio::select! {
                changed = tokio::time::timeout_at(deadline, watch.changed()) => match changed {
                    Ok(Ok(())) => {
                        woken = true;
                        let stream = myelin_metrics::StreamLabel { stream: "events" };
                        myelin_metrics::metrics().users_woken.get_or_create(&stream).inc();
                        continue;
                    }
                    _ => {
                        count_wakeup("timeout");
                        return Ok(response.0);
                    }
                },
                _ = stopping.changed() => return Ok(response.0),
            }
        }
    }

    /// One pass over `(since, now]`; returns the body and whether it carries nothing new.
    async fn sync_once(
        &self,
        requester: &Requester,
        since: Option<i64>,
        now: i64,
        full_state: bool,
        filter: &SyncFilter,
    ) -> Result<(SyncResponse, bool)> {
        let user = requester.user_id.to_string();
        let from = since.unwrap_or(0);
        let (joined, invited, knocked, changes, account_data) = {
            let u = user.clone();
            let include_leave = filter.include_leave;
            self.db(move |s| {
                Ok((
                    s.rooms_for_user(&u, "join")?,
                    s.rooms_for_user(&u, "invite")?,
                    s.rooms_for_user(&u, "knock")?,
                    // An initial sync shows current memberships only, and the rooms left or
                    // banned from when the filter asks for them (`include_leave`).
                    if since.is_some() || include_leave { s.membership_changes(&u, from, now)? } else { Vec::new() },
                    s.account_data_since(&u, if since.is_some() { from } else { 0 }, now)?,
                ))
            })
            .await?
        };
        let changed: HashMap<String, (String, i64)> = changes.into_iter().map(|(r, m, p)| (r, (m, p))).collect();
        if since.is_none() && filter.lazy_load_members {
            // An initial sync starts the device's record of what it was sent again.
            let device = (user.clone(), requester.device_id.clone());
            self.sync.lazy_members_sent.lock().unwrap_or_else(|p| p.into_inner()).remove(&device);
        }
        let mut join = Vec::new();
        let mut invite = Map::new();
        let mut leave = Map::new();

        let rooms_with_news: HashSet<String> = match since {
            None => joined.iter().cloned().collect(),
            Some(_) => {
                let (j, f) = (joined.clone(), from);
                self.db(move |s| s.rooms_with_events_between(&j, f, now)).await?.into_iter().collect()
            }
        };
        // Receipts and typing count as news for a room, as events do.
        let mut receipts = self.receipt_events(&user, &joined, from, now).await?;
        let mut typing = self.typing_events(&joined, since);
        let rules = self.ruleset(&requester.user_id).await?;
        // Read only once a joined room is sent: a long-poll woken by another room's news
        // sends none.
        let mut read_positions: Option<HashMap<String, i64>> = None;
        let (global_account_data, mut room_account_data) = split_account_data(account_data);

        for room in &joined {
            if !filter.wants(room) {
                continue;
            }
            // Newly joined: a join since the last sync by someone who was not joined then (a
            // profile change is a join event too, and must not resend the whole room).
            let newly_joined = since.is_some()
                && changed.get(room).is_some_and(|(m, _)| m == "join")
                && self.was_not_joined(&user, room, from).await?;
            let has_account_data = room_account_data.contains_key(room);
            let has_ephemeral = receipts.contains_key(room) || typing.contains_key(room);
            if since.is_some() && !full_state && !rooms_with_news.contains(room) && !has_account_data && !has_ephemeral
            {
                continue;
            }
            // A room new to this sync is sent as in an initial sync (as Synapse does): its latest
            // events, `limited` if there are more, and the state before them, so clients can
            // paginate back from there.
            let whole_state = since.is_none() || newly_joined || full_state;
            let timeline_from = if since.is_none() || newly_joined { 0 } else { from };
            let section = self.room_section(requester, room, timeline_from, now, whole_state, filter).await?;
            let section = self.with_transaction_ids(requester, section, since.is_some()).await?;
            if read_positions.is_none() {
                read_positions = Some(self.unread_starts(&user).await?);
            }
            let read_at = read_positions.as_ref().and_then(|p| p.get(room)).copied().unwrap_or(0);
            // A room whose news this user is not shown (all filtered out, or from users they
            // ignore) is left out of an incremental sync, as Synapse does.
            if since.is_some() && !full_state && section.has_no_events() && !has_account_data && !has_ephemeral {
                continue;
            }
            let heroes = section.heroes_for(&user);
            let timeline = if section.member_keys.contains(&user) {
                let mut timeline: Value = serde_json::from_str(section.timeline.get()).map_err(Error::internal)?;
                if let Some(events) = timeline["events"].as_array_mut() {
                    crate::unsigned::label_memberships(events, &user, "join");
                }
                TimelineFor::Own(to_raw_value(&timeline).map_err(Error::internal)?)
            } else {
                TimelineFor::Joined
            };
            let body = JoinedRoom {
                section,
                timeline,
                heroes,
                account_data: json!({"events": room_account_data.remove(room).unwrap_or_default()}),
                unread_notifications: self.unread_counts(&requester.user_id, &rules, room, now, read_at).await?,
                ephemeral: json!({
                    "events": receipts.remove(room).into_iter().chain(typing.remove(room)).collect::<Vec<_>>()
                }),
            };
            join.push((room.clone(), body));
        }
        let ignored = if invited.is_empty() { Default::default() } else { self.ignored_users(&user).await? };
        for room in &invited {
            if !filter.wants(room) || (since.is_some() && !changed.contains_key(room)) {
                continue;
            }
            let stripped = self.stripped_state(room, &user).await?;
            // An invite from someone the user ignores is not shown (Synapse).
            let inviter = stripped
                .iter()
                .find(|e| e["type"] == "m.room.member" && e["state_key"] == user.as_str())
                .and_then(|e| e["sender"].as_str());
            if inviter.is_some_and(|sender| ignored.contains(sender)) {
                continue;
            }
            invite.insert(room.clone(), json!({"invite_state": {"events": stripped}}));
        }
        let mut knock = Map::new();
        for room in &knocked {
            if !filter.wants(room) || (since.is_some() && !changed.contains_key(room)) {
                continue;
            }
            knock.insert(room.clone(), json!({"knock_state": {"events": self.stripped_state(room, &user).await?}}));
        }
        if since.is_some() || filter.include_leave {
            for (room, (membership, pos)) in &changed {
                if !["leave", "ban"].contains(&membership.as_str()) || !filter.wants(room) {
                    continue;
                }
                let reader = crate::visibility::Reader { until: *pos, peeking: false, sees_everything: false };
                let (mut timeline, _) = self.timeline(&user, reader, room, from, *pos, filter).await?;
                if let Some(events) = timeline["events"].as_array_mut() {
                    crate::unsigned::label_memberships(events, &user, membership);
                }
                leave.insert(
                    room.clone(),
                    json!({"timeline": timeline, "state": {"events": []}, "account_data": {"events": []}}),
                );
            }
        }
        let keys = self.sync_keys(requester, since, now).await?;
        let mut presence = self.presence_events(&user, since, now).await?;
        // Users who came to share a room: their presence, changed or not (Synapse).
        if !keys.newly_shared.is_empty() {
            let known: HashSet<String> =
                presence.iter().filter_map(|p| p["sender"].as_str().map(str::to_owned)).collect();
            let wanted: Vec<String> = keys.newly_shared.iter().filter(|u| !known.contains(*u)).cloned().collect();
            presence.extend(self.presence_states(&wanted).await?);
        }
        let empty = join.is_empty()
            && invite.is_empty()
            && knock.is_empty()
            && leave.is_empty()
            && global_account_data.is_empty()
            && keys.to_device.is_empty()
            && keys.changed.is_empty()
            && keys.left.is_empty()
            && presence.is_empty();
        let body = SyncResponse {
            next_batch: format!("s{now}"),
            rooms: SyncRooms { join, invite, leave, knock },
            account_data: json!({"events": global_account_data}),
            presence: json!({"events": presence}),
            to_device: json!({"events": keys.to_device}),
            device_lists: json!({"changed": keys.changed, "left": keys.left}),
            device_one_time_keys_count: json!(keys.one_time_key_counts),
            device_unused_fallback_key_types: json!(keys.unused_fallback_key_types),
        };
        Ok((body, empty))
    }

    /// Where each joined room's unread count starts: the user's read receipt, or their join if
    /// that is later (events from before they joined never notified them, as on Synapse).
    pub(crate) async fn unread_starts(&self, user: &str) -> Result<HashMap<String, i64>> {
        let u = user.to_owned();
        self.db(move |s| {
            let mut at: HashMap<String, i64> = s.join_positions(&u)?.into_iter().collect();
            for (room, read) in s.read_positions(&u)? {
                let entry = at.entry(room).or_default();
                *entry = (*entry).max(read);
            }
            Ok(at)
        })
        .await
    }

    /// `GET /events` (the spec's legacy event stream, which is also how clients peek into a
    /// world-readable room with `room_id`): the events after `from` that the user may see, in
    /// the named room or in every room they joined, waiting up to `timeout` for some.
    pub async fn event_stream(
        &self,
        requester: &Requester,
        room_id: Option<&str>,
        from: Option<&str>,
        timeout: Duration,
    ) -> Result<Value> {
        let user = requester.user_id.as_str();
        // As Synapse: a guest's stream is one room's (the global one would be its account's).
        if requester.is_guest && room_id.is_none() {
            return Err(Error::new(crate::ErrorKind::BadRequest, "Guest users must specify room_id param"));
        }
        let rooms: Vec<(String, Reader)> = match room_id {
            Some(room) => {
                let rid = crate::rooms::parse_room_id(room)?;
                vec![(rid.to_string(), self.reader(&rid, user).await?)]
            }
            None => {
                let u = user.to_owned();
                let joined = self.db(move |s| s.rooms_for_user(&u, "join")).await?;
                joined.into_iter().map(|r| (r, Reader::MEMBER)).collect()
            }
        };
        let mut watch = self.sync.stream.subscribe();
        let mut stopping = self.sync.stopping.subscribe();
        let from = match from {
            Some(t) => parse_token(t).ok_or_else(|| Error::invalid_param(format!("Invalid from token {t}")))?,
            None => *watch.borrow(),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = *watch.borrow_and_update();
            let mut chunk = Vec::new();
            for (room, reader) in &rooms {
                let r = room.clone();
                let rows = self.db(move |s| s.room_events(&r, from, now, false, 100)).await?;
                let (rows, _) = self.visible_events(user, *reader, rows).await?;
                let start = chunk.len();
                chunk.extend(rows.iter().map(|r| client_event_from_str(&r.json)));
                self.complete_unsigned(&mut chunk[start..]).await?;
            }
            if now > from {
                match room_id {
                    None => chunk.extend(self.stream_extras(user, &rooms, from, now).await?),
                    Some(_) => chunk.extend(self.room_stream_extras(user, &rooms[0].0, from, now).await?),
                }
            }
            let done = !chunk.is_empty() || tokio::time::Instant::now() >= deadline || *stopping.borrow_and_update();
            if done {
                return Ok(json!({"chunk": chunk, "start": format!("s{from}"), "end": format!("s{now}")}));
            }
            tokio::select! {
                _ = tokio::time::timeout_at(deadline, watch.changed()) => {}
                _ = stopping.changed() => {}
            }
        }
    }

    /// What the global `/events` stream carries beside room events, as Synapse's does: account
    /// data (room account data with its `room_id`), read receipts and presence changes in
    /// `(from, now]`.
    async fn stream_extras(&self, user: &str, rooms: &[(String, Reader)], from: i64, now: i64) -> Result<Vec<Value>> {
        let u = user.to_owned();
        let mut out: Vec<Value> = self
            .db(move |s| s.account_data_since(&u, from, now))
            .await?
            .into_iter()
            .map(|(room, kind, content)| {
                let mut event = json!({"type": kind, "content": content});
                if !room.is_empty() {
                    event["room_id"] = json!(room);
                }
                event
            })
            .collect();
        let joined: Vec<String> = rooms.iter().map(|(r, _)| r.clone()).collect();
        for (room, mut receipt) in self.receipt_events(user, &joined, from, now).await? {
            receipt["room_id"] = json!(room);
            out.push(receipt);
        }
        out.extend(self.presence_events(user, Some(from), now).await?);
        Ok(out)
    }

    /// What one room's `/events` stream (`room_id`, which is how a world-readable room is
    /// peeked) carries beside its events, as Synapse's: the room's typing and read receipts and
    /// its joined members' presence, changed in `(from, now]`, each with the room's ID.
    async fn room_stream_extras(&self, user: &str, room: &str, from: i64, now: i64) -> Result<Vec<Value>> {
        let rooms = [room.to_owned()];
        let mut out: Vec<Value> = Vec::new();
        for (_, mut typing) in self.typing_events(&rooms, Some(from)) {
            typing["room_id"] = json!(room);
            out.push(typing);
        }
        for (_, mut receipt) in self.receipt_events(user, &rooms, from, now).await? {
            receipt["room_id"] = json!(room);
            out.push(receipt);
        }
        if self.config.presence_enabled {
            let members: HashSet<String> = self.joined_member_ids(room).await?.into_iter().collect();
            let changed = self.db(move |s| s.presence_since(from, now)).await?;
            for row in changed.iter().filter(|row| members.contains(&row.user_id)) {
                let mut content = Self::presence_content(row);
                content["user_id"] = json!(row.user_id);
                out.push(json!({"type": "m.presence", "sender": row.user_id, "content": content}));
            }
        }
        Ok(out)
    }

    /// The latest events of `(from, to]` that `user` may see, and whether every member would
    /// see the same ones (see [`Homeserver::visible_events`]).
    async fn timeline(
        &self,
        user: &str,
        reader: crate::visibility::Reader,
        room: &str,
        from: i64,
        to: i64,
        filter: &SyncFilter,
    ) -> Result<(Value, bool)> {
        let mut timeline = self.timeline_events(user, reader, room, from, to, filter).await?;
        // As Synapse: a room new to the sync whose timeline holds all its events names the end
        // of the timeline as `prev_batch`, so paginating back from it reads them again (clients
        // drop what they have) and gets an `end` to stop at.
        if from == 0 && timeline.json["limited"] == false {
            timeline.json["prev_batch"] = json!(format!("s{to}"));
        }
        Ok((timeline.json, timeline.same_for_members))
    }

    /// [`Homeserver::timeline`], with the stream position of each event.
    pub(crate) async fn timeline_events(
        &self,
        user: &str,
        reader: crate::visibility::Reader,
        room: &str,
        from: i64,
        to: i64,
        filter: &SyncFilter,
    ) -> Result<Timeline> {
        let (limit, matcher) = (filter.timeline_limit, &filter.timeline);
        // A filtered timeline reads further back to find `limit` events that match.
        let wanted = if matcher.is_open() { limit + 1 } else { MAX_FILTERED_SCAN };
        let mut rows = (*self.newest_room_events(room, from, to, wanted).await?).clone();
        if !matcher.is_open() {
            rows.retain(|row| matcher.matches(&client_event_from_str(&row.json)));
        }
        let limited = rows.len() > limit;
        rows.truncate(limit);
        rows.reverse();
        let (rows, same_for_members) = self.visible_timeline_events(user, reader, room, rows).await?;
        let prev_batch = rows.first().map(|r| format!("t{}", r.stream_ordering)).unwrap_or_else(|| format!("t{to}"));
        let mut events: Vec<Value> = rows.iter().map(|r| filter.event(&r.json)).collect();
        self.bundle_aggregations(user, reader, &mut events).await?;
        // `age` as at the section's making: a cached section is served unchanged.
        self.complete_unsigned(&mut events).await?;
        // A thread summary says whether *this* user took part: not a section to share.
        let per_user = events.iter().any(|e| e["unsigned"]["m.relations"].get("m.thread").is_some());
        Ok(Timeline {
            json: json!({"events": events, "limited": limited, "prev_batch": prev_batch}),
            same_for_members: same_for_members && !per_user,
            positions: rows.iter().map(|r| r.stream_ordering).collect(),
        })
    }

    /// A joined room's timeline (from `from`), state and summary. The sections of initial
    /// syncs (the whole state, the latest events) are cached until the room changes, when
    /// every member would get the same one (no event in it is hidden from any of them by its
    /// history visibility); others are built for their user each time.
    async fn room_section(
        &self,
        requester: &Requester,
        room: &str,
        from: i64,
        now: i64,
        whole_state: bool,
        filter: &SyncFilter,
    ) -> Result<Arc<Section>> {
        let user = requester.user_id.as_str();
        let limit = filter.timeline_limit;
        // Sections shared between members are those of unfiltered events.
        let cacheable = from == 0
            && whole_state
            && filter.timeline.is_open()
            && filter.state.is_open()
            && !filter.lazy_load_members
            && !filter.federation_format
            && self.ignored_users(user).await?.is_empty();
        if cacheable && let Some(section) = self.sync.cache.section(room, limit, now) {
            return Ok(section);
        }
        let (timeline, same_for_members) = self.timeline(user, Reader::MEMBER, room, from, now, filter).await?;
        let in_timeline: HashSet<&str> =
            timeline["events"].as_array().into_iter().flatten().filter_map(|e| e["event_id"].as_str()).collect();
        let limited = timeline["limited"].as_bool().unwrap_or(false);
        // With lazy-loaded members: whose memberships the timeline needs (its senders whose
        // membership is not in it), and the user's own in a room new to this sync.
        let timeline_members: HashMap<&str, &str> = timeline["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.room.member")
            .filter_map(|e| Some((e["state_key"].as_str()?, e["event_id"].as_str()?)))
            .collect();
        let mut needed: HashSet<&str> = HashSet::new();
        if filter.lazy_load_members {
            needed.extend(
                timeline["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["sender"].as_str())
                    .filter(|sender| !timeline_members.contains_key(sender)),
            );
            if whole_state {
                needed.insert(user);
            }
        }
        // State up to the start of the timeline: all of it for a room new to this sync; on a
        // gappy incremental sync, the state that changed in the gap. Lazy loading leaves out
        // the memberships the timeline does not need, in a room new to this sync only: a gap's
        // changes are all sent, as Synapse does.
        let mut state = Vec::new();
        if whole_state || limited {
            let r = room.to_owned();
            for row in self.db(move |s| s.current_state_events(&r)).await? {
                if !whole_state && row.stream_ordering <= from {
                    continue;
                }
                let event = filter.event(&row.json);
                let unneeded_member = filter.lazy_load_members
                    && whole_state
                    && event["type"] == "m.room.member"
                    && !event["state_key"].as_str().is_some_and(|k| needed.contains(k));
                if !in_timeline.contains(event["event_id"].as_str().unwrap_or_default())
                    && filter.state.matches(&event)
                    && !unneeded_member
                {
                    state.push(event);
                }
            }
        }
        if filter.lazy_load_members {
            self.add_lazy_members(requester, room, whole_state, &needed, &timeline_members, filter, &mut state).await?;
        }
        crate::unsigned::stamp_age(&mut state);
        let members = self.member_summary(room, now).await?;
        let hero_candidates = self.hero_candidates(room, &members).await?;
        let raw = |v: &Value| to_raw_value(v).map_err(Error::internal);
        let timeline_senders = timeline["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["sender"].as_str()?.to_owned(), e["event_id"].as_str()?.to_owned())))
            .collect();
        let member_keys = timeline["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.room.member")
            .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
            .collect();
        let section = Arc::new(Section {
            built_at: now,
            timeline: raw(&timeline)?,
            joined_timeline: Default::default(),
            timeline_senders,
            member_keys,
            state: raw(&json!({"events": state}))?,
            summary: raw(&json!({"m.joined_member_count": members.joined, "m.invited_member_count": members.invited}))?,
            hero_candidates,
        });
        if cacheable && same_for_members {
            self.sync.cache.keep(room, limit, section.clone());
        }
        Ok(section)
    }

    /// A room's hero candidates (see [`Section::hero_candidates`]); none for a room with a
    /// name or a canonical alias.
    async fn hero_candidates(&self, room: &str, members: &MemberSummary) -> Result<Arc<(Vec<String>, Vec<String>)>> {
        let room_id = ruma::OwnedRoomId::try_from(room).map_err(Error::internal)?;
        let named = |content: Option<Map<String, Value>>, key: &str| {
            content.and_then(|c| c.get(key).and_then(Value::as_str).map(str::to_owned)).is_some_and(|v| !v.is_empty())
        };
        if named(self.state_content(&room_id, "m.room.name", "").await?, "name")
            || named(self.state_content(&room_id, "m.room.canonical_alias", "").await?, "alias")
        {
            return Ok(Default::default());
        }
        Ok(members.heroes.clone())
    }

    /// Whether `user` was not joined to `room` at stream position `at`.
    async fn was_not_joined(&self, user: &str, room: &str, at: i64) -> Result<bool> {
        let (u, r) = (user.to_owned(), room.to_owned());
        Ok(self.db(move |s| s.membership_at(&u, &r, at)).await?.as_deref() != Some("join"))
    }

    /// Lazy loading on an incremental sync: adds the memberships the timeline needs that the
    /// state does not carry yet; leaves out those this device was already sent (unless the
    /// filter asks for redundant ones) except changes from the gap; and records what it sent.
    #[allow(clippy::too_many_arguments)]
    async fn add_lazy_members(
        &self,
        requester: &Requester,
        room: &str,
        whole_state: bool,
        needed: &HashSet<&str>,
        timeline_members: &HashMap<&str, &str>,
        filter: &SyncFilter,
        state: &mut Vec<Value>,
    ) -> Result<()> {
        let device = (requester.user_id.to_string(), requester.device_id.clone());
        if !whole_state {
            let in_state: HashSet<String> = state
                .iter()
                .filter(|e| e["type"] == "m.room.member")
                .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
                .collect();
            let room_id = ruma::OwnedRoomId::try_from(room).map_err(Error::internal)?;
            let current = self.current_state_shared(&room_id).await?.unwrap_or_default();
            let sent = {
                let mut records = self.sync.lazy_members_sent.lock().unwrap_or_else(|p| p.into_inner());
                records.get(&device).and_then(|rooms| rooms.get(room)).cloned().unwrap_or_default()
            };
            let ids: Vec<String> = needed
                .iter()
                .filter(|member| !in_state.contains(**member))
                .filter_map(|member| {
                    let id = current.get(&("m.room.member".to_owned(), (*member).to_owned()))?.to_string();
                    let already_sent = sent.get(*member) == Some(&id);
                    (filter.include_redundant_members || !already_sent).then_some(id)
                })
                .collect();
            if !ids.is_empty() {
                state.extend(self.client_events(ids).await?.into_iter().filter(|e| filter.state.matches(e)));
            }
        }
        let mut records = self.sync.lazy_members_sent.lock().unwrap_or_else(|p| p.into_inner());
        if records.get(&device).is_none() {
            records.insert(device.clone(), HashMap::new());
        }
        if let Some(rooms) = records.get_mut(&device) {
            let sent = rooms.entry(room.to_owned()).or_default();
            for event in state.iter().filter(|e| e["type"] == "m.room.member") {
                if let (Some(member), Some(id)) = (event["state_key"].as_str(), event["event_id"].as_str()) {
                    sent.insert(member.to_owned(), id.to_owned());
                }
            }
            for (member, id) in timeline_members {
                sent.insert((*member).to_owned(), (*id).to_owned());
            }
        }
        Ok(())
    }

    /// A section as the requesting device sees it: the events it sent with a transaction ID
    /// carry it in `unsigned.transaction_id` (the section itself is shared by all members).
    /// The recent transaction IDs kept in memory answer first; an incremental sync (a handful
    /// of events) asks storage for the rest, an initial sync does not.
    async fn with_transaction_ids(
        &self,
        requester: &Requester,
        section: Arc<Section>,
        incremental: bool,
    ) -> Result<Arc<Section>> {
        let sender = requester.user_id.as_str();
        let own: Vec<String> =
            section.timeline_senders.iter().filter(|(s, _)| s == sender).map(|(_, id)| id.clone()).collect();
        if own.is_empty() {
            return Ok(section);
        }
        let txns = self.transaction_ids(requester, own, incremental).await?;
        if txns.is_empty() {
            return Ok(section);
        }
        let mut timeline: Value = serde_json::from_str(section.timeline.get()).map_err(Error::internal)?;
        for event in timeline["events"].as_array_mut().into_iter().flatten() {
            if let Some(txn) = event["event_id"].as_str().and_then(|id| txns.get(id)) {
                event["unsigned"]["transaction_id"] = json!(txn);
            }
        }
        Ok(Arc::new(Section {
            built_at: section.built_at,
            timeline: to_raw_value(&timeline).map_err(Error::internal)?,
            joined_timeline: Default::default(),
            timeline_senders: section.timeline_senders.clone(),
            member_keys: section.member_keys.clone(),
            state: section.state.clone(),
            summary: section.summary.clone(),
            hero_candidates: section.hero_candidates.clone(),
        }))
    }

    /// The transaction IDs the requesting device sent `own` (its user's events) with: the
    /// recent ones kept in memory, and with `ask_storage` the rest from storage.
    pub(crate) async fn transaction_ids(
        &self,
        requester: &Requester,
        own: Vec<String>,
        ask_storage: bool,
    ) -> Result<HashMap<String, String>> {
        let sender = requester.user_id.as_str();
        let device = requester.device_id.as_str();
        let mut txns: HashMap<String, String> = HashMap::new();
        let mut unknown = Vec::new();
        {
            let recent = self.rooms.recent_txns.lock().unwrap_or_else(|p| p.into_inner());
            for id in own {
                match recent.txn_of(&id, sender, device) {
                    Some(txn) => {
                        txns.insert(id, txn.to_owned());
                    }
                    None => unknown.push(id),
                }
            }
        }
        if ask_storage && !unknown.is_empty() {
            let (user, device) = (sender.to_owned(), device.to_owned());
            txns.extend(self.db(move |s| s.txn_ids_of_events(&user, &device, &unknown)).await?);
        }
        Ok(txns)
    }

    /// Stripped state shown with an invite.
    pub(crate) async fn stripped_state(&self, room: &str, user: &str) -> Result<Vec<Value>> {
        let room_id = ruma::OwnedRoomId::try_from(room).map_err(Error::internal)?;
        let state = self.current_state(&room_id).await?.unwrap_or_default();
        // A room this server is not in: what the inviting server said of it, and the invite.
        if !state.contains_key(&("m.room.create".to_owned(), String::new()))
            && let Some(member) = state.get(&("m.room.member".to_owned(), user.to_owned()))
        {
            let invite = self.client_events(vec![member.to_string()]).await?;
            let id = member.to_string();
            let stored = self.db(move |s| s.get_event(&id)).await?;
            let mut out: Vec<Value> = stored
                .and_then(|r| serde_json::from_str::<Value>(&r.json).ok())
                .and_then(|v| v["unsigned"]["invite_room_state"].as_array().cloned())
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e["type"] != "m.room.member" || e["state_key"] != user)
                .collect();
            out.extend(invite.into_iter().map(
                |e| json!({"type": e["type"], "state_key": e["state_key"], "sender": e["sender"], "content": e["content"]}),
            ));
            return Ok(out);
        }
        let keys = [
            ("m.room.create", ""),
            ("m.room.join_rules", ""),
            ("m.room.name", ""),
            ("m.room.avatar", ""),
            ("m.room.canonical_alias", ""),
            ("m.room.encryption", ""),
            ("m.room.topic", ""),
            ("m.room.member", user),
        ];
        let mut ids: Vec<String> = keys
            .iter()
            .filter_map(|(t, k)| state.get(&(t.to_string(), k.to_string())))
            .map(|e| e.to_string())
            .collect();
        // MSC4319, as Synapse: an invite also carries the inviter's membership, so the invitee
        // can show who invited them.
        let own = state.get(&("m.room.member".to_owned(), user.to_owned())).map(|e| e.to_string());
        if let Some(own) = own {
            let invite = self.client_events(vec![own.clone()]).await?.pop();
            if let Some(inviter) = invite
                .filter(|e| e["content"]["membership"] == "invite")
                .and_then(|e| e["sender"].as_str().map(str::to_owned))
                .filter(|s| s != user)
                && let Some(theirs) = state.get(&("m.room.member".to_owned(), inviter))
            {
                let at = ids.iter().position(|id| *id == own).unwrap_or(ids.len());
                ids.insert(at, theirs.to_string());
            }
        }
        let events = self.client_events(ids).await?;
        Ok(events
            .into_iter()
            .map(|e| json!({"type": e["type"], "state_key": e["state_key"], "sender": e["sender"], "content": e["content"]}))
            .collect())
    }
}

/// A room's timeline as `/sync` sends it (`events`, `limited`, `prev_batch`).
pub(crate) struct Timeline {
    pub(crate) json: Value,
    /// Whether every member would see the same events.
    pub(crate) same_for_members: bool,
    /// The stream position of each event, in order.
    pub(crate) positions: Vec<i64>,
}

/// A room's member counts and who could name it (`m.heroes`), from one read of its members.
#[derive(Debug, Clone)]
struct MemberSummary {
    joined: usize,
    invited: usize,
    /// `(joined or invited, left or banned)`, each sorted and cut to six.
    heroes: Arc<(Vec<String>, Vec<String>)>,
}

/// A joined room's timeline, state and member summary as `/sync` sends them, serialised once.
#[derive(Debug)]
pub(crate) struct Section {
    /// The stream position the section was read at.
    built_at: i64,
    timeline: Box<RawValue>,
    /// The timeline with MSC4115's `unsigned.membership: join` on every event, made when a
    /// member first needs it and then shared.
    joined_timeline: std::sync::OnceLock<Box<RawValue>>,
    /// `(sender, event ID)` of the timeline's events, to find a device's own without parsing.
    timeline_senders: Vec<(String, String)>,
    /// The state keys of the timeline's member events: a reader among them gets a timeline of
    /// their own (their membership changes within it).
    member_keys: Vec<String>,
    state: Box<RawValue>,
    summary: Box<RawValue>,
    /// For a room without a name or canonical alias: who could name it, `(joined or invited,
    /// left or banned)`, each sorted and cut to six (the syncing user leaves five).
    hero_candidates: Arc<(Vec<String>, Vec<String>)>,
}

impl Section {
    /// `m.heroes` for `user`: up to five other members, joined or invited ones first, those
    /// who left only when there are none (the spec's summary).
    fn heroes_for(&self, user: &str) -> Vec<String> {
        let pick = |list: &[String]| -> Vec<String> { list.iter().filter(|u| *u != user).take(5).cloned().collect() };
        let present = pick(&self.hero_candidates.0);
        if present.is_empty() { pick(&self.hero_candidates.1) } else { present }
    }

    /// [`Section::joined_timeline`], made once.
    fn joined_timeline(&self) -> &RawValue {
        self.joined_timeline.get_or_init(|| {
            let labelled = serde_json::from_str::<Value>(self.timeline.get()).ok().and_then(|mut timeline| {
                for event in timeline["events"].as_array_mut().into_iter().flatten() {
                    if let Some(map) = event.as_object_mut() {
                        let unsigned = map.entry("unsigned").or_insert_with(|| json!({}));
                        unsigned["membership"] = json!("join");
                    }
                }
                to_raw_value(&timeline).ok()
            });
            labelled.unwrap_or_else(|| self.timeline.clone())
        })
    }

    /// Neither timeline events nor state events.
    fn has_no_events(&self) -> bool {
        self.timeline_senders.is_empty() && self.state.get() == r#"{"events":[]}"#
    }
    fn bytes(&self) -> usize {
        self.timeline.get().len() + self.state.get().len() + self.summary.get().len()
    }
}

/// What `/sync` keeps between requests: when each room last changed, and the sections of
/// initial syncs (the same for every member asking with the same timeline limit), so that an
/// initial sync of many unchanged rooms costs a lookup per room instead of parsing and
/// serialising every event again.
///
/// Validity is by stream position: a section built at `p` holds while the room's last write is
/// at or before `p` and none is in flight. A write marks its room before it is queued
/// ([`SyncCache::writing`]) and records its position once committed ([`SyncCache::written`]),
/// so no sync can read a `now` covering a write and still find the room unchanged. Messages of
/// one room can be in flight together, hence a count.
pub(crate) struct SyncCache {
    inner: Mutex<SyncCacheInner>,
    /// The stream position at start-up: a room not written since may have changed at any point
    /// before it.
    started_at: i64,
}

struct SyncCacheInner {
    /// Room -> (writes in flight, stream position of its last event written by this process).
    changes: HashMap<String, (u32, i64)>,
    sections: HashMap<(String, usize), Arc<Section>>,
    bytes: usize,
    /// Room -> (built at, its member summary): every sync of the room reads it.
    member_counts: BoundedMap<String, (i64, MemberSummary)>,
    /// `(room, from, to, limit)` -> the room's events in `(from, to]`, newest first: the same
    /// read made by every request of a herd woken by one event. Positions up to `to` are all
    /// committed (an event in flight gets a later one), so a range never changes, but for a
    /// redaction's rewrite, which a fresh read at the same `to` may or may not see either.
    ranges: BoundedMap<(String, i64, i64, usize), Arc<Vec<myelin_storage::EventRow>>>,
}

/// How many event ranges [`SyncCacheInner::ranges`] holds, and the most JSON one may hold.
const KEPT_RANGES: usize = 256;
const KEPT_RANGE_BYTES: usize = 256 * 1024;

/// How many rooms' member counts are kept.
const KEPT_MEMBER_COUNTS: usize = 10_000;

impl SyncCacheInner {
    /// The room's last change, or `i64::MAX` while one is in flight.
    fn changed_at(&self, room: &str, started_at: i64) -> i64 {
        match self.changes.get(room) {
            Some((0, at)) => *at,
            Some(_) => i64::MAX,
            None => started_at,
        }
    }
}

/// How much serialised JSON the section cache holds before it drops entries.
const SECTION_CACHE_BYTES: usize = 32 << 20;

impl SyncCache {
    pub(crate) fn new(started_at: i64) -> Self {
        let inner = SyncCacheInner {
            changes: HashMap::new(),
            sections: HashMap::new(),
            bytes: 0,
            member_counts: BoundedMap::new("sync_member_counts", KEPT_MEMBER_COUNTS),
            ranges: BoundedMap::new("sync_event_ranges", KEPT_RANGES),
        };
        SyncCache { inner: Mutex::new(inner), started_at }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncCacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Before an event of `room` is queued for writing.
    pub(crate) fn writing(&self, room: &str) {
        let started_at = self.started_at;
        self.lock().changes.entry(room.to_owned()).or_insert((0, started_at)).0 += 1;
    }

    /// After a write [`SyncCache::writing`] announced: at `position`, or, if it failed,
    /// nothing changed and `current` (the stream position now) is a safe bound.
    pub(crate) fn written(&self, room: &str, position: Option<i64>, current: i64) {
        let started_at = self.started_at;
        let mut inner = self.lock();
        let entry = inner.changes.entry(room.to_owned()).or_insert((1, started_at));
        entry.0 = entry.0.saturating_sub(1);
        entry.1 = entry.1.max(position.unwrap_or(current));
    }

    /// Another process wrote an event of `room` at `position`.
    pub(crate) fn written_elsewhere(&self, room: &str, position: i64) {
        let started_at = self.started_at;
        let mut inner = self.lock();
        let entry = inner.changes.entry(room.to_owned()).or_insert((0, started_at));
        entry.1 = entry.1.max(position);
    }

    /// Drops every section (messages from other processes may have been missed).
    pub(crate) fn forget_all(&self) {
        let mut inner = self.lock();
        // Sections built from now on read storage as it is, so dropping these is enough.
        inner.sections.clear();
        inner.bytes = 0;
        // Counts kept before the gap would pass the validity rule: a missed write never moved
        // their room's change position on.
        inner.member_counts.clear();
    }

    /// The stream position of the room's last change this process knows of (`i64::MAX` while
    /// one is being written; `started_at` for rooms it has not written).
    pub(crate) fn changed_at(&self, room: &str) -> i64 {
        self.lock().changed_at(room, self.started_at)
    }

    /// The stream position of the room's last write this process committed or heard of from
    /// another process since start-up (a lower bound of its newest event; `None` if none).
    pub(crate) fn written_at(&self, room: &str) -> Option<i64> {
        let inner = self.lock();
        inner.changes.get(room).map(|(_, at)| *at).filter(|at| *at > self.started_at)
    }

    /// The room's member summary as kept at or before `now`, while it is unchanged.
    fn member_summary(&self, room: &str, now: i64) -> Option<MemberSummary> {
        let mut inner = self.lock();
        let changed = inner.changed_at(room, self.started_at);
        let (built_at, summary) = inner.member_counts.get(room)?;
        (changed <= *built_at && *built_at <= now).then(|| summary.clone())
    }

    fn keep_member_summary(&self, room: &str, built_at: i64, summary: MemberSummary) {
        let mut inner = self.lock();
        if inner.changed_at(room, self.started_at) <= built_at {
            inner.member_counts.insert(room.to_owned(), (built_at, summary));
        }
    }

    fn section(&self, room: &str, limit: usize, now: i64) -> Option<Arc<Section>> {
        let inner = self.lock();
        let section = inner.sections.get(&(room.to_owned(), limit))?;
        let changed = inner.changed_at(room, self.started_at);
        (changed <= section.built_at && section.built_at <= now).then(|| section.clone())
    }

    fn keep(&self, room: &str, limit: usize, section: Arc<Section>) {
        let mut inner = self.lock();
        if inner.changed_at(room, self.started_at) > section.built_at {
            return; // written while it was being built
        }
        while inner.bytes + section.bytes() > SECTION_CACHE_BYTES {
            let Some(key) = inner.sections.keys().next().cloned() else { break };
            if let Some(old) = inner.sections.remove(&key) {
                inner.bytes -= old.bytes();
            }
        }
        inner.bytes += section.bytes();
        if let Some(old) = inner.sections.insert((room.to_owned(), limit), section) {
            inner.bytes -= old.bytes();
        }
    }
}

/// A `/sync` token in Synapse's formats (`s{events}_{…}` or `m{…}~{…}_{…}`): Myelin never
/// issues one, so it comes from a Synapse whose database was imported.
fn is_synapse_token(token: &str) -> bool {
    (token.starts_with('s') || token.starts_with('m')) && token.contains('_')
}

/// Counts a long-polling sync's answer by why it came (`myelin_sync_wakeups_total`).
fn count_wakeup(outcome: &'static str) {
    myelin_metrics::metrics().sync_wakeups.get_or_create(&myelin_metrics::OutcomeLabel { outcome }).inc();
}
