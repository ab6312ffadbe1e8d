//! `/sync`: initial and incremental, with long-polling on the stream watch.
//!
//! Tokens are `s<N>`: everything up to stream position N has been delivered. An incremental
//! sync returns rooms with events in `(since, now]`, membership changes, and account data; when
//! nothing is new it waits on [`Homeserver::stream`] until something is or the timeout passes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::events::client_event_from_str;
use crate::rooms::parse_token;
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

/// The response body.
pub type SyncResponse = Value;

/// The parts of a filter `/sync` honours.
struct SyncFilter {
    timeline_limit: usize,
    rooms: Option<HashSet<String>>,
    not_rooms: HashSet<String>,
}

impl SyncFilter {
    fn from_json(f: &Value) -> Self {
        let room = &f["room"];
        let list = |v: &Value| {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect::<HashSet<_>>())
        };
        SyncFilter {
            timeline_limit: room["timeline"]["limit"].as_u64().map(|l| l.clamp(1, 500) as usize).unwrap_or(10),
            rooms: list(&room["rooms"]),
            not_rooms: list(&room["not_rooms"]).unwrap_or_default(),
        }
    }
    fn wants(&self, room: &str) -> bool {
        !self.not_rooms.contains(room) && self.rooms.as_ref().is_none_or(|r| r.contains(room))
    }
}

impl Homeserver {
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
            Some(t) => Some(parse_token(t).ok_or_else(|| Error::invalid_param(format!("Invalid since token {t}")))?),
            None => None,
        };
        self.presence_from_sync(requester, request.set_presence.as_deref().unwrap_or("online")).await?;
        let mut watch = self.stream.subscribe();
        let deadline = tokio::time::Instant::now() + request.timeout;
        loop {
            let now = *watch.borrow_and_update();
            let response = self.sync_once(requester, since, now, request.full_state, &filter).await?;
            let empty = response.1;
            if !empty || since.is_none() || request.full_state {
                return Ok(response.0);
            }
            // Nothing new: wait for the stream to move, then look again.
            match tokio::time::timeout_at(deadline, watch.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Ok(response.0),
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
    ) -> Result<(Value, bool)> {
        let user = requester.user_id.to_string();
        let from = since.unwrap_or(0);
        let (joined, invited, changes, account_data) = {
            let u = user.clone();
            self.db(move |s| {
                Ok((
                    s.rooms_for_user(&u, "join")?,
                    s.rooms_for_user(&u, "invite")?,
                    s.membership_changes(&u, from, now)?,
                    s.account_data_since(&u, if since.is_some() { from } else { 0 }, now)?,
                ))
            })
            .await?
        };
        let changed: HashMap<String, (String, i64)> = changes.into_iter().map(|(r, m, p)| (r, (m, p))).collect();
        let mut join = Map::new();
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
        let mut room_account_data: HashMap<String, Vec<Value>> = HashMap::new();
        let mut global_account_data = Vec::new();
        for (room, kind, content) in account_data {
            let item = json!({"type": kind, "content": content});
            if room.is_empty() {
                global_account_data.push(item);
            } else {
                room_account_data.entry(room).or_default().push(item);
            }
        }

        for room in &joined {
            if !filter.wants(room) {
                continue;
            }
            let newly_joined = since.is_some() && changed.get(room).is_some_and(|(m, _)| m == "join");
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
            let body = self.joined_room_sync(room, timeline_from, now, whole_state, filter.timeline_limit).await?;
            let mut body = body;
            body["account_data"] = json!({"events": room_account_data.remove(room).unwrap_or_default()});
            body["unread_notifications"] = self.unread_counts(&requester.user_id, &rules, room, now).await?;
            body["ephemeral"] =
                json!({"events": receipts.remove(room).into_iter().chain(typing.remove(room)).collect::<Vec<_>>()});
            join.insert(room.clone(), body);
        }
        for room in &invited {
            if !filter.wants(room) || (since.is_some() && !changed.contains_key(room)) {
                continue;
            }
            invite.insert(room.clone(), json!({"invite_state": {"events": self.stripped_state(room, &user).await?}}));
        }
        if since.is_some() {
            for (room, (membership, pos)) in &changed {
                if !["leave", "ban"].contains(&membership.as_str()) || !filter.wants(room) {
                    continue;
                }
                let timeline = self.timeline(room, from, *pos, filter.timeline_limit).await?;
                leave.insert(
                    room.clone(),
                    json!({"timeline": timeline, "state": {"events": []}, "account_data": {"events": []}}),
                );
            }
        }
        let keys = self.sync_keys(requester, since, now).await?;
        let presence = self.presence_events(&user, since, now).await?;
        let empty = join.is_empty()
            && invite.is_empty()
            && leave.is_empty()
            && global_account_data.is_empty()
            && keys.to_device.is_empty()
            && keys.changed.is_empty()
            && presence.is_empty();
        let body = json!({
            "next_batch": format!("s{now}"),
            "rooms": {"join": join, "invite": invite, "leave": leave, "knock": {}},
            "account_data": {"events": global_account_data},
            "presence": {"events": presence},
            "to_device": {"events": keys.to_device},
            "device_lists": {"changed": keys.changed, "left": []},
            "device_one_time_keys_count": keys.one_time_key_counts,
            "device_unused_fallback_key_types": keys.unused_fallback_key_types,
        });
        Ok((body, empty))
    }

    async fn timeline(&self, room: &str, from: i64, to: i64, limit: usize) -> Result<Value> {
        let r = room.to_owned();
        let mut rows = self.db(move |s| s.room_events(&r, from, to, true, limit + 1)).await?;
        let limited = rows.len() > limit;
        rows.truncate(limit);
        rows.reverse();
        let prev_batch = rows.first().map(|r| format!("t{}", r.stream_ordering)).unwrap_or_else(|| format!("t{to}"));
        let events: Vec<Value> = rows.iter().map(|r| client_event_from_str(&r.json)).collect();
        Ok(json!({"events": events, "limited": limited, "prev_batch": prev_batch}))
    }

    async fn joined_room_sync(
        &self,
        room: &str,
        from: i64,
        now: i64,
        whole_state: bool,
        limit: usize,
    ) -> Result<Value> {
        let timeline = self.timeline(room, from, now, limit).await?;
        let in_timeline: HashSet<&str> =
            timeline["events"].as_array().into_iter().flatten().filter_map(|e| e["event_id"].as_str()).collect();
        let limited = timeline["limited"].as_bool().unwrap_or(false);
        // State up to the start of the timeline: all of it for a room new to this sync; on a
        // gappy incremental sync, the state that changed in the gap.
        let mut state = Vec::new();
        if whole_state || limited {
            let r = room.to_owned();
            for row in self.db(move |s| s.current_state_events(&r)).await? {
                if !whole_state && row.stream_ordering <= from {
                    continue;
                }
                let event = client_event_from_str(&row.json);
                if !in_timeline.contains(event["event_id"].as_str().unwrap_or_default()) {
                    state.push(event);
                }
            }
        }
        let r = room.to_owned();
        let memberships = self.db(move |s| s.room_memberships(&r)).await?;
        let joined_count = memberships.iter().filter(|(_, m)| m == "join").count();
        let invited_count = memberships.iter().filter(|(_, m)| m == "invite").count();
        Ok(json!({
            "timeline": timeline,
            "state": {"events": state},
            "ephemeral": {"events": []},
            "summary": {"m.joined_member_count": joined_count, "m.invited_member_count": invited_count},
            "unread_notifications": {"notification_count": 0, "highlight_count": 0},
        }))
    }

    /// Stripped state shown with an invite.
    async fn stripped_state(&self, room: &str, user: &str) -> Result<Vec<Value>> {
        let room_id = ruma::OwnedRoomId::try_from(room).map_err(Error::internal)?;
        let state = self.current_state(&room_id).await?.unwrap_or_default();
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
        let ids = keys
            .iter()
            .filter_map(|(t, k)| state.get(&(t.to_string(), k.to_string())))
            .map(|e| e.to_string())
            .collect();
        let events = self.client_events(ids).await?;
        Ok(events
            .into_iter()
            .map(|e| json!({"type": e["type"], "state_key": e["state_key"], "sender": e["sender"], "content": e["content"]}))
            .collect())
    }
}
