//! Receipts, read markers, typing notifications and presence: what `/sync` carries besides
//! room events.
//!
//! Receipts and presence are stored, each change at a stream position, so `/sync` finds them
//! with the same `since` token as everything else. Typing lives in memory only (it expires in
//! seconds anyway); each change still takes a stream position, so long-polls wake for it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use myelin_storage::{PresenceRow, ReceiptRow};
use ruma::OwnedRoomId;
use serde_json::{Map, Value, json};

use crate::server::now_ms;
use crate::{Error, Homeserver, Requester, Result};

/// The longest typing timeout honoured; clients ask for 30 s.
const MAX_TYPING_TIMEOUT: Duration = Duration::from_secs(120);

/// Who is typing in a room, and the stream position of the last change.
#[derive(Default)]
pub(crate) struct RoomTyping {
    users: HashMap<String, tokio::time::Instant>,
    position: i64,
}

/// The receipt types a client may send.
const RECEIPT_TYPES: &[&str] = &["m.read", "m.read.private", "m.fully_read"];

fn room_id(room: &str) -> Result<OwnedRoomId> {
    OwnedRoomId::try_from(room).map_err(|_| Error::invalid_param(format!("Invalid room ID: {room}")))
}

/// The ephemeral service's in-memory state (`hs.ephemeral`).
pub(crate) struct EphemeralState {
    /// Who is typing where (the only copy, as on Synapse, where one typing writer holds it).
    pub(crate) typing: std::sync::Mutex<HashMap<OwnedRoomId, RoomTyping>>,
    /// The presence state and time this process last wrote for each user (a cache: it only
    /// spares writes).
    pub(crate) presence_written: std::sync::Mutex<crate::cache::BoundedMap<String, (String, i64)>>,
    /// Local users whose next sync carries everyone's current presence again
    /// (`ModuleApi.send_local_online_presence_to`; the only copy, per process: Synapse keeps it
    /// in its database).
    pub(crate) full_presence_for: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl EphemeralState {
    pub(crate) fn new(sizes: &crate::cache::CacheSizes) -> Self {
        EphemeralState {
            typing: Default::default(),
            presence_written: std::sync::Mutex::new(crate::cache::BoundedMap::new("presence", sizes.presence)),
            full_presence_for: Default::default(),
        }
    }
}

impl Homeserver {
    /// The event must be one of the room's, and the user joined to it.
    async fn check_receipt_target(&self, me: &Requester, room: &OwnedRoomId, event_id: &str) -> Result<()> {
        if self.membership_of(room, me.user_id.as_str()).await?.as_deref() != Some("join") {
            return Err(Error::forbidden(format!("User {} not in room {room}", me.user_id)));
        }
        let id = event_id.to_owned();
        match self.db(move |s| s.get_event(&id)).await? {
            Some(row)
                if serde_json::from_str::<Value>(&row.json)
                    .is_ok_and(|e| e["room_id"].as_str() == Some(room.as_str())) =>
            {
                Ok(())
            }
            _ => Err(Error::not_found("Event not found")),
        }
    }

    /// `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`.
    pub async fn send_receipt(
        &self,
        me: &Requester,
        room: &str,
        receipt_type: &str,
        event_id: &str,
        body: &Map<String, Value>,
    ) -> Result<()> {
        if !RECEIPT_TYPES.contains(&receipt_type) {
            return Err(Error::invalid_param(format!("Receipt type must be one of {}", RECEIPT_TYPES.join(", "))));
        }
        let thread_id = match body.get("thread_id") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(t)) if t == "main" || t.starts_with('$') => t.clone(),
            Some(_) => return Err(Error::invalid_param("thread_id must be \"main\" or an event ID")),
        };
        if receipt_type == "m.fully_read" && !thread_id.is_empty() {
            return Err(Error::invalid_param("m.fully_read receipts cannot be threaded"));
        }
        let room = room_id(room)?;
        self.check_receipt_target(me, &room, event_id).await?;
        self.store_marker(me, &room, receipt_type, event_id, thread_id).await
    }

    async fn store_marker(
        &self,
        me: &Requester,
        room: &OwnedRoomId,
        receipt_type: &str,
        event_id: &str,
        thread_id: String,
    ) -> Result<()> {
        if receipt_type == "m.fully_read" {
            // The read marker is room account data, as the spec says.
            let (u, r, e) = (me.user_id.to_string(), room.to_string(), event_id.to_owned());
            let pos = self.db(move |s| s.set_account_data(&u, &r, "m.fully_read", &json!({"event_id": e}))).await?;
            self.advance_stream(pos);
            return Ok(());
        }
        // As Synapse: a read receipt never moves back (a client acknowledging an older event
        // changes nothing).
        if thread_id.is_empty() && self.receipt_is_older(me, room, receipt_type, event_id).await? {
            return Ok(());
        }
        let row = ReceiptRow {
            room_id: room.to_string(),
            receipt_type: receipt_type.to_owned(),
            user_id: me.user_id.to_string(),
            thread_id,
            event_id: event_id.to_owned(),
            ts: now_ms(),
        };
        let edu = (receipt_type == "m.read").then(|| {
            let mut data = json!({"ts": row.ts});
            if !row.thread_id.is_empty() {
                data["thread_id"] = json!(row.thread_id);
            }
            json!({"edu_type": "m.receipt", "content": {room.as_str(): {"m.read": {me.user_id.as_str(): {
                "event_ids": [event_id], "data": data,
            }}}}})
        });
        let pos = self.db(move |s| s.set_receipt(&row)).await?;
        self.advance_stream(pos);
        self.badge_may_have_changed(&me.user_id);
        if let Some(edu) = edu {
            let destinations = self.room_destinations(room).await?;
            self.queue_edu(destinations, edu).await;
        }
        Ok(())
    }

    /// Whether the user's current unthreaded receipt of this type in the room points at a
    /// later event than `event_id`.
    async fn receipt_is_older(&self, me: &Requester, room: &OwnedRoomId, kind: &str, event_id: &str) -> Result<bool> {
        let (r, u, k, new_id) = (room.to_string(), me.user_id.to_string(), kind.to_owned(), event_id.to_owned());
        self.db(move |s| match (s.receipt_position(&r, &u, &k)?, s.stream_of_event(&new_id)?) {
            (Some(current), Some(new)) => Ok(new < current),
            _ => Ok(false),
        })
        .await
    }

    /// `POST /rooms/{roomId}/read_markers`: any of `m.fully_read`, `m.read`, `m.read.private`.
    pub async fn set_read_markers(&self, me: &Requester, room: &str, body: &Map<String, Value>) -> Result<()> {
        let room = room_id(room)?;
        for kind in ["m.fully_read", "m.read", "m.read.private"] {
            match body.get(kind) {
                None | Some(Value::Null) => {}
                Some(Value::String(event_id)) => {
                    self.check_receipt_target(me, &room, event_id).await?;
                    self.store_marker(me, &room, kind, event_id, String::new()).await?;
                }
                Some(_) => return Err(Error::bad_json(format!("{kind} must be an event ID"))),
            }
        }
        Ok(())
    }

    /// The `m.receipt` events for `rooms` in `(from, to]`, one per room; private receipts only
    /// for their owner.
    pub(crate) async fn receipt_events(
        &self,
        me: &str,
        rooms: &[String],
        from: i64,
        to: i64,
    ) -> Result<HashMap<String, Value>> {
        let r = rooms.to_vec();
        // An initial sync asks room by room; an incremental one scans the few new receipts.
        let rows = if from == 0 {
            self.db(move |s| s.receipts_between(&r, from, to)).await?
        } else {
            let wanted: HashSet<String> = r.into_iter().collect();
            let all = self.db(move |s| s.receipts_since(from, to)).await?;
            all.into_iter().filter(|row| wanted.contains(&row.room_id)).collect()
        };
        let mut out: HashMap<String, Value> = HashMap::new();
        for row in rows {
            if row.receipt_type == "m.read.private" && row.user_id != me {
                continue;
            }
            let event = out.entry(row.room_id.clone()).or_insert_with(|| json!({"type": "m.receipt", "content": {}}));
            let mut receipt = json!({"ts": row.ts});
            if !row.thread_id.is_empty() {
                receipt["thread_id"] = json!(row.thread_id);
            }
            event["content"][&row.event_id][&row.receipt_type][&row.user_id] = receipt;
        }
        Ok(out)
    }

    /// `PUT /rooms/{roomId}/typing/{userId}`.
    pub async fn set_typing(
        self: &Arc<Self>,
        me: &Requester,
        room: &str,
        user_id: &str,
        typing: bool,
        timeout: Option<u64>,
    ) -> Result<()> {
        if user_id != me.user_id.as_str() {
            return Err(Error::forbidden("Cannot set another user's typing state"));
        }
        let room = room_id(room)?;
        if self.membership_of(&room, user_id).await?.as_deref() != Some("join") {
            return Err(Error::forbidden(format!("User {user_id} not in room {room}")));
        }
        self.apply_typing(&room, user_id, typing, timeout).await?;
        let destinations = self.room_destinations(&room).await?;
        self.queue_edu(
            destinations,
            json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": user_id, "typing": typing}}),
        )
        .await;
        Ok(())
    }

    /// A typing notification from another server, for a member of a room this server is in.
    pub(crate) async fn remote_typing(&self, room: &str, user_id: &str, typing: bool) {
        let Some(hs) = self.arc() else { return };
        let Ok(room) = room_id(room) else { return };
        if self.membership_of(&room, user_id).await.ok().flatten().as_deref() != Some("join") {
            return;
        }
        let _ = hs.apply_typing(&room, user_id, typing, None).await;
    }

    /// A read receipt from another server, for a member of a room this server is in.
    pub(crate) async fn remote_receipt(&self, room: &str, user_id: &str, event_id: &str, thread_id: String) {
        let Ok(room) = room_id(room) else { return };
        if self.membership_of(&room, user_id).await.ok().flatten().as_deref() != Some("join") {
            return;
        }
        let row = ReceiptRow {
            room_id: room.to_string(),
            receipt_type: "m.read".into(),
            user_id: user_id.to_owned(),
            thread_id,
            event_id: event_id.to_owned(),
            ts: now_ms(),
        };
        if let Ok(pos) = self.db(move |s| s.set_receipt(&row)).await {
            self.advance_stream(pos);
        }
    }

    /// Records who types where and wakes syncs; the notification ends at its deadline.
    async fn apply_typing(
        self: &Arc<Self>,
        room: &OwnedRoomId,
        user_id: &str,
        typing: bool,
        timeout: Option<u64>,
    ) -> Result<()> {
        let room = room.clone();
        let pos = self.db(|s| s.allocate_stream_position()).await?;
        let deadline = if typing {
            let wait = timeout.map(Duration::from_millis).unwrap_or(Duration::from_secs(30)).min(MAX_TYPING_TIMEOUT);
            Some(tokio::time::Instant::now() + wait)
        } else {
            None
        };
        self.record_typing(room.clone(), user_id, pos, deadline);
        self.publish_typing(&room, user_id, pos, deadline);
        self.advance_stream(pos);
        if let Some(deadline) = deadline {
            // Stop the notification at its deadline unless it was renewed or ended meanwhile.
            let hs = Arc::downgrade(self);
            let user = user_id.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline).await;
                let Some(hs) = hs.upgrade() else { return };
                let expired = {
                    let all = hs.ephemeral.typing.lock().unwrap_or_else(|p| p.into_inner());
                    all.get(&room).and_then(|t| t.users.get(&user)).is_some_and(|d| *d <= deadline)
                };
                if !expired {
                    return;
                }
                let Ok(pos) = hs.db(|s| s.allocate_stream_position()).await else { return };
                {
                    let mut all = hs.ephemeral.typing.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(t) = all.get_mut(&room)
                        && t.users.get(&user).is_some_and(|d| *d <= deadline)
                    {
                        t.users.remove(&user);
                        t.position = pos;
                    }
                }
                hs.publish_typing(&room, &user, pos, None);
                hs.advance_stream(pos);
            });
        }
        Ok(())
    }

    fn record_typing(&self, room: OwnedRoomId, user_id: &str, pos: i64, deadline: Option<tokio::time::Instant>) {
        let mut all = self.ephemeral.typing.lock().unwrap_or_else(|p| p.into_inner());
        let entry = all.entry(room).or_default();
        match deadline {
            Some(d) => entry.users.insert(user_id.to_owned(), d),
            None => entry.users.remove(user_id),
        };
        entry.position = pos;
    }

    /// Typing lives in memory only: the deployment's other processes are told (see `bus`).
    fn publish_typing(&self, room: &OwnedRoomId, user_id: &str, pos: i64, deadline: Option<tokio::time::Instant>) {
        if self.has_bus() {
            let timeout = deadline.map_or("-".to_owned(), |d| {
                d.saturating_duration_since(tokio::time::Instant::now()).as_millis().to_string()
            });
            self.publish(format!("typing {room} {user_id} {pos} {timeout}"));
        }
    }

    /// Typing started (`timeout`) or stopped (`None`) on another process; that process also
    /// announces the end, so nothing expires here (an entry past its deadline is not shown).
    pub(crate) fn typing_elsewhere(&self, room: OwnedRoomId, user_id: &str, pos: i64, timeout: Option<Duration>) {
        self.record_typing(room, user_id, pos, timeout.map(|t| tokio::time::Instant::now() + t));
    }

    /// The `m.typing` event of each room in `rooms` whose typing changed after `since` (every
    /// room with someone typing when `since` is `None`).
    pub(crate) fn typing_events(&self, rooms: &[String], since: Option<i64>) -> HashMap<String, Value> {
        let all = self.ephemeral.typing.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        let mut out = HashMap::new();
        for room in rooms {
            let Ok(id) = OwnedRoomId::try_from(room.as_str()) else { continue };
            let Some(t) = all.get(&id) else { continue };
            let mut users: Vec<&String> = t.users.iter().filter(|(_, d)| **d > now).map(|(u, _)| u).collect();
            let changed = since.is_none_or(|s| t.position > s);
            if !changed || (since.is_none() && users.is_empty()) {
                continue;
            }
            users.sort();
            out.insert(room.clone(), json!({"type": "m.typing", "content": {"user_ids": users}}));
        }
        out
    }

    /// The `m.typing` event (with its `room_id`) of every room whose typing changed in
    /// `(after, upto]`, for appservice transactions.
    pub(crate) fn typing_changes(&self, after: i64, upto: i64) -> Vec<Value> {
        let all = self.ephemeral.typing.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        let mut out = Vec::new();
        for (room, t) in all.iter().filter(|(_, t)| t.position > after && t.position <= upto) {
            let mut users: Vec<&String> = t.users.iter().filter(|(_, d)| **d > now).map(|(u, _)| u).collect();
            users.sort();
            out.push(json!({"type": "m.typing", "room_id": room, "content": {"user_ids": users}}));
        }
        out
    }

    // --- presence ----------------------------------------------------------------------------

    /// `PUT /presence/{userId}/status`. With presence off in the config, accepted and ignored.
    pub async fn set_presence(&self, me: &Requester, user_id: &str, body: &Map<String, Value>) -> Result<()> {
        if user_id != me.user_id.as_str() {
            return Err(Error::forbidden("You may only set your own presence state"));
        }
        self.limit_user(&self.limiters.presence_per_user, user_id, None).await?;
        let state = match body.get("presence").and_then(Value::as_str) {
            Some(s @ ("online" | "offline" | "unavailable")) => s.to_owned(),
            Some(other) => return Err(Error::invalid_param(format!("Invalid presence state {other}"))),
            None => return Err(Error::bad_json("presence must be a string")),
        };
        let status_msg = match body.get("status_msg") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() <= 1024 => Some(s.clone()),
            Some(Value::String(_)) => return Err(Error::invalid_param("status_msg is too long")),
            Some(_) => return Err(Error::bad_json("status_msg must be a string")),
        };
        if !self.config.presence_enabled {
            return Ok(());
        }
        self.write_presence(PresenceRow { user_id: user_id.to_owned(), state, status_msg, last_active_ts: now_ms() })
            .await
    }

    /// `ModuleApi.set_presence_for_users`: each user's presence state and status message, local
    /// or remote users alike (nothing when presence is off).
    pub(crate) async fn module_set_presence(&self, users: Vec<(String, String, Option<String>)>) -> Result<()> {
        for (user_id, state, _) in &users {
            ruma::UserId::parse(user_id.as_str())
                .map_err(|_| Error::invalid_param(format!("Invalid user ID {user_id}")))?;
            if !["online", "offline", "unavailable"].contains(&state.as_str()) {
                return Err(Error::invalid_param(format!("Invalid presence state {state}")));
            }
        }
        if !self.config.presence_enabled {
            return Ok(());
        }
        for (user_id, state, status_msg) in users {
            self.write_presence(PresenceRow { user_id, state, status_msg, last_active_ts: now_ms() }).await?;
        }
        Ok(())
    }

    /// `ModuleApi.send_local_online_presence_to`: local users get every online user's presence
    /// they may see in their next sync; remote users' servers are sent the presence of this
    /// server's online users who share a room with them (or whom a presence router sends it to).
    pub(crate) async fn module_send_online_presence_to(&self, users: Vec<String>) -> Result<()> {
        let mut parsed = Vec::new();
        for user in &users {
            parsed.push(
                ruma::UserId::parse(user.as_str())
                    .map_err(|_| Error::invalid_param(format!("Invalid user ID {user}")))?,
            );
        }
        if !self.config.presence_enabled {
            return Ok(());
        }
        for user in parsed {
            if self.is_mine(&user) {
                // Delivered with the user's next sync (a long-poll already waiting is not woken).
                self.ephemeral.full_presence_for.lock().unwrap_or_else(|p| p.into_inner()).insert(user.to_string());
                continue;
            }
            let events = self.presence_events(user.as_str(), None, crate::server::now_ms()).await?;
            let push: Vec<Value> = events
                .into_iter()
                .filter(|e| e["content"]["presence"] != "offline")
                .filter(|e| {
                    e["sender"].as_str().and_then(|u| ruma::UserId::parse(u).ok()).is_some_and(|u| self.is_mine(&u))
                })
                .map(|e| {
                    let mut push = e["content"].clone();
                    push["user_id"] = e["sender"].clone();
                    push
                })
                .collect();
            if !push.is_empty() {
                let edu = json!({"edu_type": "m.presence", "content": {"push": push}});
                self.queue_edu(vec![user.server_name().to_string()], edu).await;
            }
        }
        Ok(())
    }

    /// Whether `user`'s sync should carry full presence once (see
    /// [`Homeserver::module_send_online_presence_to`]); the mark is spent.
    fn take_full_presence(&self, user: &str) -> bool {
        self.ephemeral.full_presence_for.lock().unwrap_or_else(|p| p.into_inner()).remove(user)
    }

    /// Marks a syncing user online (`set_presence` of `/sync`), writing only on a change.
    pub(crate) async fn presence_from_sync(&self, me: &Requester, state: &str) -> Result<()> {
        if !self.config.presence_enabled || !["online", "unavailable"].contains(&state) {
            return Ok(());
        }
        // A minute of staleness in last_active_ago is fine; a write (or a read) per sync is not.
        let fresh = |written: &str, at: i64| written == state && now_ms() - at < 60_000;
        let known =
            self.ephemeral.presence_written.lock().unwrap_or_else(|p| p.into_inner()).get(me.user_id.as_str()).cloned();
        if known.is_some_and(|(written, at)| fresh(&written, at)) {
            return Ok(());
        }
        let u = me.user_id.to_string();
        let current = self.db(move |s| s.get_presence(&u)).await?;
        if current.as_ref().is_some_and(|c| fresh(&c.state, c.last_active_ts)) {
            return Ok(());
        }
        let row = PresenceRow {
            user_id: me.user_id.to_string(),
            state: state.to_owned(),
            status_msg: current.and_then(|c| c.status_msg),
            last_active_ts: now_ms(),
        };
        self.write_presence(row).await
    }

    /// Stores presence, remembering what was written so syncs need not read it back; a local
    /// user's goes to the servers sharing a room with them (`m.presence`).
    async fn write_presence(&self, row: PresenceRow) -> Result<()> {
        self.ephemeral
            .presence_written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(row.user_id.clone(), (row.state.clone(), row.last_active_ts));
        let local = ruma::OwnedUserId::try_from(row.user_id.as_str()).is_ok_and(|u| self.is_mine(&u));
        let edu = local.then(|| {
            let mut push = Self::presence_content(&row);
            push["user_id"] = json!(row.user_id);
            json!({"edu_type": "m.presence", "content": {"push": [push]}})
        });
        let user = row.user_id.clone();
        let routed = if local && self.modules.has_presence_router() {
            self.modules.presence_users_for_states(&[Self::presence_state(&row)]).await
        } else {
            Default::default()
        };
        let pos = self.db(move |s| s.set_presence(&row)).await?;
        self.advance_stream(pos);
        if let Some(edu) = edu {
            let mut servers = self.servers_sharing_rooms(&user).await?;
            // Servers of the users a presence router sends it to (Synapse's
            // get_interested_remotes).
            for target in routed.keys() {
                if let Some((_, server)) = target.split_once(':')
                    && server != self.server_name()
                    && !servers.iter().any(|s| s == server)
                {
                    servers.push(server.to_owned());
                }
            }
            self.queue_edu(servers, edu).await;
        }
        Ok(())
    }

    /// An `m.presence` EDU from `origin`: its users' presence, shown to local users sharing a
    /// room with them.
    pub(crate) async fn receive_presence(&self, origin: &str, content: &Value) {
        if !self.config.presence_enabled {
            return;
        }
        for push in content["push"].as_array().into_iter().flatten() {
            let Some(user) = push["user_id"].as_str() else { continue };
            if user.split_once(':').map(|(_, s)| s) != Some(origin) {
                continue;
            }
            let Some(state @ ("online" | "offline" | "unavailable")) = push["presence"].as_str() else { continue };
            let ago = push["last_active_ago"].as_i64().unwrap_or(0).max(0);
            let row = PresenceRow {
                user_id: user.to_owned(),
                state: state.to_owned(),
                status_msg: push["status_msg"].as_str().filter(|m| m.len() <= 1024).map(str::to_owned),
                last_active_ts: now_ms() - ago,
            };
            if let Err(e) = self.write_presence(row).await {
                tracing::info!(origin, error = %e, "presence not stored");
            }
        }
    }

    pub(crate) fn presence_content(row: &PresenceRow) -> Value {
        let ago = (now_ms() - row.last_active_ts).max(0);
        let mut content = json!({
            "presence": row.state,
            "last_active_ago": ago,
            "currently_active": row.state == "online" && ago < 5 * 60_000,
        });
        if let Some(m) = &row.status_msg {
            content["status_msg"] = json!(m);
        }
        content
    }

    /// A stored presence as a presence router sees it.
    pub(crate) fn presence_state(row: &PresenceRow) -> myelin_module_api::presence::PresenceState {
        let content = Self::presence_content(row);
        myelin_module_api::presence::PresenceState {
            user_id: row.user_id.clone(),
            state: row.state.clone(),
            last_active_ts: row.last_active_ts,
            status_msg: row.status_msg.clone(),
            currently_active: content["currently_active"].as_bool().unwrap_or(false),
        }
    }

    /// `GET /presence/{userId}/status`: local users sharing a room with the requester (or the
    /// requester); others are 403, as on Synapse.
    pub async fn get_presence(&self, me: &Requester, user_id: &str) -> Result<Value> {
        let user = ruma::OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
        // One answer for users who do not exist and users who share no room, so that presence
        // cannot be used to find out who has an account (as on Synapse).
        let m = me.user_id.to_string();
        let sharing: HashSet<String> = self.db(move |s| s.users_sharing_rooms(&m)).await?.into_iter().collect();
        let routed = match self.modules.presence_interested_users(me.user_id.as_str()).await {
            Some(myelin_module_api::presence::InterestedUsers::All) => true,
            Some(myelin_module_api::presence::InterestedUsers::Users(users)) => users.iter().any(|u| u == user_id),
            None => false,
        };
        if user != me.user_id && !routed && (!sharing.contains(user_id) || !self.is_mine(&user)) {
            return Err(Error::forbidden("You are not allowed to see their presence."));
        }
        if !self.config.presence_enabled {
            return Ok(json!({"presence": "offline"}));
        }
        let u = user_id.to_owned();
        Ok(match self.db(move |s| s.get_presence(&u)).await? {
            Some(row) => Self::presence_content(&row),
            None => json!({"presence": "offline"}),
        })
    }

    /// The current presence of `users` as `m.presence` events, offline for those never seen
    /// (none at all when presence is off).
    pub(crate) async fn presence_states(&self, users: &[String]) -> Result<Vec<Value>> {
        if !self.config.presence_enabled || users.is_empty() {
            return Ok(Vec::new());
        }
        let wanted = users.to_vec();
        let rows = self.db(move |s| s.presence_between(&wanted, 0, i64::MAX)).await?;
        let mut found: HashMap<&str, Value> =
            rows.iter().map(|row| (row.user_id.as_str(), Self::presence_content(row))).collect();
        Ok(users
            .iter()
            .map(|user| {
                let content = found.remove(user.as_str()).unwrap_or_else(|| json!({"presence": "offline"}));
                json!({"type": "m.presence", "sender": user, "content": content})
            })
            .collect())
    }

    /// [`Self::presence_events`] with a presence router (Synapse's `get_new_events`): the users
    /// `me` shares a room with and those `get_interested_users` names; or, when it answers
    /// "all", everybody's changes (online ones only for an initial sync) that
    /// `get_users_for_states` sends to `me`.
    async fn routed_presence_events(&self, me: &str, since: Option<i64>, now: i64) -> Result<Vec<Value>> {
        use myelin_module_api::presence::InterestedUsers;
        let from = since.unwrap_or(0);
        let changed = self.db(move |s| s.presence_since(from, now)).await?;
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<PresenceRow> = match self.modules.presence_interested_users(me).await {
            Some(InterestedUsers::All) => {
                let candidates: Vec<PresenceRow> =
                    changed.into_iter().filter(|row| from > 0 || row.state != "offline").collect();
                let states: Vec<_> = candidates.iter().map(Self::presence_state).collect();
                let routed = self.modules.presence_users_for_states(&states).await;
                let mine: HashSet<&str> =
                    routed.get(me).into_iter().flatten().map(|state| state.user_id.as_str()).collect();
                candidates.into_iter().filter(|row| mine.contains(row.user_id.as_str())).collect()
            }
            interested => {
                let m = me.to_owned();
                let mut wanted: HashSet<String> =
                    self.db(move |s| s.users_sharing_rooms(&m)).await?.into_iter().collect();
                wanted.insert(me.to_owned());
                if let Some(InterestedUsers::Users(extra)) = interested {
                    wanted.extend(extra);
                }
                changed.into_iter().filter(|row| wanted.contains(&row.user_id)).collect()
            }
        };
        Ok(rows
            .iter()
            .map(|row| json!({"type": "m.presence", "sender": row.user_id, "content": Self::presence_content(row)}))
            .collect())
    }

    /// `m.presence` events of users sharing a room with `me`, changed in `(since, now]`.
    pub(crate) async fn presence_events(&self, me: &str, since: Option<i64>, now: i64) -> Result<Vec<Value>> {
        if !self.config.presence_enabled {
            return Ok(Vec::new());
        }
        if since.is_some() && self.take_full_presence(me) {
            // Everyone's current presence again, online users only (Synapse's forced initial sync).
            let mut all = Box::pin(self.presence_events(me, None, now)).await?;
            all.retain(|e| e["content"]["presence"] != "offline");
            return Ok(all);
        }
        if self.modules.has_presence_router() {
            return self.routed_presence_events(me, since, now).await;
        }
        let m = me.to_owned();
        let from = since.unwrap_or(0);
        let rows = self
            .db(move |s| {
                if from > 0 {
                    // Incremental: the few changes first, then whether this user may see them.
                    let changed = s.presence_since(from, now)?;
                    if changed.is_empty() {
                        return Ok(changed);
                    }
                    let sharing: HashSet<String> = s.users_sharing_rooms(&m)?.into_iter().collect();
                    return Ok(changed.into_iter().filter(|p| sharing.contains(&p.user_id)).collect());
                }
                let users = s.users_sharing_rooms(&m)?;
                s.presence_between(&users, from, now)
            })
            .await?;
        Ok(rows
            .iter()
            .map(|row| json!({"type": "m.presence", "sender": row.user_id, "content": Self::presence_content(row)}))
            .collect())
    }
}
