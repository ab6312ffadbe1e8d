//! Push notifications: each new event that a local user's push rules say notifies them is sent
//! to their HTTP pushers' gateways (`POST {data.url}`, the Push Gateway API's `notify`), as
//! Synapse's `HttpPusher` does: the event's fields (or only its ID with `format:
//! event_id_only`), the badge count, priority `high` for encrypted events and for those with a
//! sound or highlight tweak, the pusher's `data` (without `url`) and the rule's tweaks. A
//! gateway's `rejected` pushkeys are removed; a failed request is retried with backoff (1 s,
//! doubling, at most an hour, given up after a day).
//!
//! One task follows the event stream from start-up; events from before a restart are not
//! pushed again (Synapse keeps a position per pusher; this is a known gap). Gateways are
//! reached through the outbound IP filter, like every other outbound request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{Map, Value, json};

use crate::events::client_event_from_str;
use crate::{Homeserver, Result};

/// Events read per pass of the stream; the rest wait for the next pass.
const EVENTS_PER_PASS: usize = 1000;
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60 * 60);
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// Every user's pushers as stored: `(user ID, pusher JSON)`.
pub(crate) type StoredPushers = Arc<Vec<(String, String)>>;

/// One pusher of one user, as stored.
pub(crate) struct HttpPusher {
    user: OwnedUserId,
    config: Map<String, Value>,
}

impl HttpPusher {
    fn url(&self) -> Option<&str> {
        self.config.get("data").and_then(|d| d.get("url")).and_then(Value::as_str)
    }
    fn event_id_only(&self) -> bool {
        self.config.get("data").and_then(|d| d.get("format")).and_then(Value::as_str) == Some("event_id_only")
    }
    fn text(&self, key: &str) -> &str {
        self.config.get(key).and_then(Value::as_str).unwrap_or_default()
    }
}

impl Homeserver {
    /// Starts the task that delivers push notifications (see the module doc).
    pub fn start_push_gateway_sender(self: &Arc<Self>) {
        self.start_email_notifier();
        let hs = self.clone();
        let http = match self
            .config
            .federation
            .ip_filter
            .web_client_builder(self.config.insecure_outbound_tls)
            .and_then(|b| b.timeout(Duration::from_secs(30)).build().map_err(|e| e.to_string()))
        {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "push notifications are off: no HTTP client");
                return;
            }
        };
        let (badge_tx, mut badge_rx) = tokio::sync::mpsc::unbounded_channel();
        *self.push.badge_updates.lock().unwrap_or_else(|p| p.into_inner()) = Some(badge_tx);
        tokio::spawn(async move {
            let mut stream = hs.sync.stream.subscribe();
            let mut done = *stream.borrow_and_update();
            loop {
                tokio::select! {
                    changed = stream.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    Some(user) = badge_rx.recv() => {
                        if let Err(e) = hs.push_badge(&http, &user).await {
                            tracing::warn!(user = %user, error = %e, "badge update not sent");
                        }
                        continue;
                    }
                }
                let now = *stream.borrow_and_update();
                while done < now {
                    match hs.push_events_between(&http, done, now).await {
                        Ok(reached) => done = reached,
                        Err(e) => {
                            tracing::warn!(position = done, error = %e, "push notifications stalled");
                            done = now;
                        }
                    }
                }
            }
        });
    }

    /// After `user` sent a read receipt: tells their gateways the new badge if it changed
    /// (Synapse's `_update_badge`: a notification with only `counts`).
    pub(crate) fn badge_may_have_changed(&self, user: &OwnedUserId) {
        if let Some(tx) = self.push.badge_updates.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(user.clone());
        }
    }

    async fn push_badge(self: &Arc<Self>, http: &reqwest::Client, user: &OwnedUserId) -> Result<()> {
        let stored = self.all_pushers().await?;
        let Some(theirs) = http_pushers(&stored, Some(user.as_str())).remove(user.as_str()) else { return Ok(()) };
        let badge = self.badge_count(user).await?;
        if self.push.last_badge.lock().unwrap_or_else(|p| p.into_inner()).insert(user.clone(), badge) == Some(badge) {
            return Ok(());
        }
        for pusher in theirs {
            let body = badge_body(&pusher, badge);
            self.enqueue(http, pusher, body);
        }
        Ok(())
    }

    /// Every user's pushers, from the cache when it holds them.
    pub(crate) async fn all_pushers(&self) -> Result<StoredPushers> {
        if let Some(cached) = self.push.pushers.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(cached);
        }
        let stored = Arc::new(self.db(|s| s.all_pushers()).await?);
        *self.push.pushers.lock().unwrap_or_else(|p| p.into_inner()) = Some(stored.clone());
        Ok(stored)
    }

    /// Forgets the cached pushers (one was added, changed or removed), here and in the
    /// deployment's other processes.
    pub(crate) fn pushers_changed(&self) {
        self.pushers_changed_here();
        if self.has_bus() {
            self.publish("pushers".into());
        }
    }

    /// Forgets this process's cached pushers.
    pub(crate) fn pushers_changed_here(&self) {
        *self.push.pushers.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Pushes the events of `(from, to]` (at most [`EVENTS_PER_PASS`]); returns how far it got.
    async fn push_events_between(self: &Arc<Self>, http: &reqwest::Client, from: i64, to: i64) -> Result<i64> {
        let stored = self.all_pushers().await?;
        let pushers = http_pushers(&stored, None);
        let mailed = self.email_pushers(&stored);
        if pushers.is_empty() && mailed.is_empty() {
            return Ok(to);
        }
        let events = self.db(move |s| s.events_between(from, to, EVENTS_PER_PASS)).await?;
        let reached =
            if events.len() == EVENTS_PER_PASS { events.last().map_or(to, |(_, row)| row.stream_ordering) } else { to };
        // Where each user's unread events start in each room (their join or read receipt):
        // nothing before is pushed, whenever this pass runs.
        let mut starts: HashMap<String, HashMap<String, i64>> = HashMap::new();
        for (room, row) in events {
            let event = client_event_from_str(&row.json);
            let sender = event["sender"].as_str().unwrap_or_default().to_owned();
            let mut members = self.joined_member_ids(&room).await?;
            let member_count = members.len();
            // An invite also reaches the invitee, who is not a member yet (as Synapse).
            if event["type"] == "m.room.member"
                && event["content"]["membership"] == "invite"
                && let Some(invitee) = event["state_key"].as_str()
                && !members.iter().any(|m| m == invitee)
            {
                members.push(invitee.to_owned());
            }
            let Ok(room_id) = OwnedRoomId::try_from(room.as_str()) else { continue };
            for user in members.iter().filter(|u| **u != sender) {
                let (theirs, addresses) = (pushers.get(user), mailed.get(user));
                if theirs.is_none() && addresses.is_none() {
                    continue;
                }
                let Ok(user_id) = OwnedUserId::try_from(user.as_str()) else { continue };
                if !starts.contains_key(user) {
                    starts.insert(user.clone(), self.unread_starts(user).await?);
                }
                if row.stream_ordering <= starts[user].get(&room).copied().unwrap_or(0) {
                    continue;
                }
                // One user's failure (a storage error reading their rules) costs them this
                // notification, not everyone else theirs.
                let targets = PushTargets {
                    pushers: theirs.map(Vec::as_slice).unwrap_or_default(),
                    addresses: addresses.map(Vec::as_slice).unwrap_or_default(),
                    position: row.stream_ordering,
                };
                if let Err(e) = self.push_to_user(http, &user_id, targets, &event, &room_id, member_count).await {
                    tracing::warn!(user = %user, error = %e, "push notification not evaluated");
                }
            }
        }
        Ok(reached)
    }

    /// Evaluates `user`'s rules for one event and, if it notifies them, sends it to each of
    /// their HTTP pushers (in the background, with retries) and queues it for their e-mail
    /// pushers.
    async fn push_to_user(
        self: &Arc<Self>,
        http: &reqwest::Client,
        user: &OwnedUserId,
        targets: PushTargets<'_>,
        event: &Value,
        room: &OwnedRoomId,
        member_count: usize,
    ) -> Result<()> {
        let u = user.to_string();
        let display = self.db(move |s| Ok(s.get_profile(&u)?.and_then(|p| p.0).unwrap_or_default())).await?;
        let rules = self.ruleset(user).await?;
        let actions = Self::actions(&rules, event, user, &display, room, member_count).await;
        if !actions.iter().any(|a| a.should_notify()) {
            return Ok(());
        }
        if !targets.addresses.is_empty() {
            self.queue_email_notification(user, targets.addresses, room, event, targets.position).await?;
        }
        let pushers = targets.pushers;
        if pushers.is_empty() {
            return Ok(());
        }
        let mut tweaks = Map::new();
        for action in &actions {
            if let ruma::push::Action::SetTweak(tweak) = action
                && let Ok(Value::Object(t)) = serde_json::to_value(tweak)
                && let (Some(name), value) = (t.get("set_tweak").and_then(Value::as_str), t.get("value"))
            {
                // `highlight` without a value means true.
                tweaks.insert(name.to_owned(), value.cloned().unwrap_or(json!(true)));
            }
        }
        let high = event["type"] == "m.room.encrypted"
            || tweaks.get("highlight").is_some_and(|h| h == true)
            || tweaks.contains_key("sound");
        let badge = self.badge_count(user).await?;
        self.push.last_badge.lock().unwrap_or_else(|p| p.into_inner()).insert(user.clone(), badge);
        let context = self.notification_context(event, room, user).await?;
        for pusher in pushers {
            let body = notify_body(pusher, event, &tweaks, high, badge, &context);
            self.enqueue(http, pusher.clone(), body);
        }
        Ok(())
    }

    /// The rules' actions for one client-format event.
    async fn actions(
        rules: &ruma::push::Ruleset,
        event: &Value,
        user: &OwnedUserId,
        display_name: &str,
        room: &OwnedRoomId,
        member_count: usize,
    ) -> Vec<ruma::push::Action> {
        let Ok(raw) = ruma::serde::Raw::<Value>::from_json_string(event.to_string()) else { return Vec::new() };
        let ctx = ruma::push::PushConditionRoomCtx::new(
            room.clone(),
            ruma::UInt::new_saturating(member_count as u64),
            user.clone(),
            display_name.to_owned(),
        );
        rules.get_actions(&raw, &ctx).await.to_vec()
    }

    /// The room name and the sender's display name, as a notification shows them (Synapse's
    /// `get_context_for_event`): the room's name, else its canonical alias, else a name made
    /// of its other members when there are at least two; the sender's display name, else
    /// their user ID.
    pub(crate) async fn notification_context(
        &self,
        event: &Value,
        room: &OwnedRoomId,
        user: &OwnedUserId,
    ) -> Result<Map<String, Value>> {
        let mut context = Map::new();
        let state = self.current_state_shared(room).await?.unwrap_or_default();
        let sender = event["sender"].as_str().unwrap_or_default();
        // The few state events every notification needs; the room's members only when neither a
        // name nor an alias names the room (a room's member events can be thousands).
        let wanted = [("m.room.name", ""), ("m.room.canonical_alias", ""), ("m.room.member", sender)];
        let ids: Vec<String> = wanted
            .iter()
            .filter_map(|(kind, key)| state.get(&((*kind).to_owned(), (*key).to_owned())))
            .map(|id| id.to_string())
            .collect();
        let events = self.load_events(ids).await?;
        let content_of = |kind: &str, key: &str| {
            state.get(&(kind.to_owned(), key.to_owned())).and_then(|id| events.get(id)).map(|e| e.content_map())
        };
        let explicit = explicit_room_name(&content_of);
        if let Some(name) = &explicit {
            context.insert("explicit_room_name".into(), json!(name));
        }
        let name = match explicit {
            Some(name) => Some(name),
            None => {
                let member_ids = state
                    .iter()
                    .filter(|((kind, _), _)| kind == "m.room.member")
                    .map(|(_, id)| id.to_string())
                    .collect();
                let members = self.load_events(member_ids).await?;
                room_name_from_members(&members.values().collect::<Vec<_>>(), user)
            }
        };
        if let Some(name) = name {
            context.insert("room_name".into(), json!(name));
        }
        if let Some(member) = content_of("m.room.member", sender) {
            context.insert("sender_display_name".into(), json!(name_of_member(&member, sender)));
        }
        Ok(context)
    }

    /// The badge: how many rooms have notifications the user has not read (Synapse's default,
    /// `push.group_unread_count_by_room`).
    async fn badge_count(&self, user: &OwnedUserId) -> Result<u64> {
        let u = user.to_string();
        let rooms = self.db(move |s| s.rooms_for_user(&u, "join")).await?;
        let rules = self.ruleset(user).await?;
        let now = *self.sync.stream.borrow();
        let u = user.to_string();
        let read_positions = self.unread_starts(&u).await?;
        let mut badge = 0;
        for room in rooms {
            let read_at = read_positions.get(&room).copied().unwrap_or(0);
            let counts = self.unread_counts(user, &rules, &room, now, read_at).await?;
            if counts["notification_count"].as_u64().unwrap_or(0) > 0 {
                badge += 1;
            }
        }
        Ok(badge)
    }

    /// Queues a notification for one pusher. Each pusher's notifications go out one at a time,
    /// in order, as Synapse sends them (a retried one holds back those after it).
    fn enqueue(self: &Arc<Self>, http: &reqwest::Client, pusher: Arc<HttpPusher>, body: Value) {
        let key = format!("{}\n{}\n{}", pusher.user, pusher.text("app_id"), pusher.text("pushkey"));
        let mut queues = self.push.queues.lock().unwrap_or_else(|p| p.into_inner());
        let queue = queues.entry(key).or_insert_with(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Arc<HttpPusher>, Value)>();
            let (hs, http) = (self.clone(), http.clone());
            tokio::spawn(async move {
                while let Some((pusher, body)) = rx.recv().await {
                    hs.deliver(&http, &pusher, body).await;
                }
            });
            tx
        });
        let _ = queue.send((pusher, body));
    }

    /// Posts one notification, retrying with backoff; removes pushkeys the gateway rejects.
    async fn deliver(&self, http: &reqwest::Client, pusher: &HttpPusher, body: Value) {
        let Some(url) = pusher.url() else { return };
        let started = std::time::Instant::now();
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let request =
                http.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(ascii_json(&body));
            let answer = match self.config.federation.ip_filter.send(http, request).await {
                Ok(resp) if resp.status().is_success() => resp.json::<Value>().await.map_err(|e| e.to_string()),
                Ok(resp) => Err(format!("status {}", resp.status())),
                Err(e) => Err(e),
            };
            match answer {
                Ok(answer) => {
                    myelin_metrics::metrics().pushes_processed.inc();
                    let rejected = answer["rejected"].as_array().cloned().unwrap_or_default();
                    let pushkey = pusher.text("pushkey");
                    if rejected.iter().any(|k| k == pushkey) {
                        tracing::info!(user = %pusher.user, "push gateway rejected a pushkey; removing the pusher");
                        let (u, a, k) = (pusher.user.to_string(), pusher.text("app_id").to_owned(), pushkey.to_owned());
                        if let Err(e) = self.db(move |s| s.delete_pusher(&u, &a, &k)).await {
                            tracing::warn!(error = %e, "removing a rejected pusher failed");
                        }
                        self.pushers_changed();
                    }
                    return;
                }
                Err(why) => {
                    myelin_metrics::metrics().pushes_failed.inc();
                    if started.elapsed() > GIVE_UP_AFTER {
                        tracing::warn!(user = %pusher.user, reason = %why, "giving up a push notification after a day");
                        return;
                    }
                    tracing::info!(user = %pusher.user, reason = %why, retry_in_s = backoff.as_secs(), "push failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Where one user's notification goes: their HTTP pushers and the addresses of their e-mail
/// pushers; `position` is the event's stream position.
struct PushTargets<'a> {
    pushers: &'a [Arc<HttpPusher>],
    addresses: &'a [String],
    position: i64,
}

/// The stored HTTP pushers by user (only `only`'s when given); other kinds and unreadable
/// rows are left out.
fn http_pushers(stored: &[(String, String)], only: Option<&str>) -> HashMap<String, Vec<Arc<HttpPusher>>> {
    let mut pushers: HashMap<String, Vec<Arc<HttpPusher>>> = HashMap::new();
    for (user, json) in stored.iter().filter(|(u, _)| only.is_none_or(|o| o == u)) {
        let (Ok(user_id), Ok(Value::Object(config))) =
            (OwnedUserId::try_from(user.as_str()), serde_json::from_str::<Value>(json))
        else {
            continue;
        };
        if config.get("kind").and_then(Value::as_str) == Some("http") {
            pushers.entry(user.clone()).or_default().push(Arc::new(HttpPusher { user: user_id, config }));
        }
    }
    pushers
}

/// The pusher's `devices` entry: its app, pushkey and `data` without the URL.
fn device_of(pusher: &HttpPusher) -> Value {
    let mut data = pusher.config.get("data").and_then(Value::as_object).cloned().unwrap_or_default();
    data.remove("url");
    json!({
        "app_id": pusher.text("app_id"),
        "pushkey": pusher.text("pushkey"),
        "pushkey_ts": pusher.config.get("pushkey_ts").and_then(Value::as_i64).unwrap_or(0) / 1000,
        "data": data,
    })
}

/// A badge-only notification, as Synapse's `_send_badge` shapes it.
fn badge_body(pusher: &HttpPusher, badge: u64) -> Value {
    json!({"notification": {
        "id": "",
        "type": null,
        "sender": "",
        "counts": {"unread": badge},
        "devices": [device_of(pusher)],
    }})
}

/// The `notify` request body for one pusher.
fn notify_body(
    pusher: &HttpPusher,
    event: &Value,
    tweaks: &Map<String, Value>,
    high: bool,
    badge: u64,
    context: &Map<String, Value>,
) -> Value {
    let mut device = device_of(pusher);
    let prio = if high { "high" } else { "low" };
    let mut notification = json!({
        "event_id": event["event_id"],
        "room_id": event["room_id"],
        "prio": prio,
        "counts": {"unread": badge},
    });
    if !pusher.event_id_only() {
        // Synapse still sends the deprecated `id` beside `event_id`; gateways may read either.
        notification["id"] = event["event_id"].clone();
        if !tweaks.is_empty() {
            device["tweaks"] = Value::Object(tweaks.clone());
        }
        notification["type"] = event["type"].clone();
        notification["sender"] = event["sender"].clone();
        if event["type"] == "m.room.member" && event.get("state_key").is_some() {
            notification["membership"] = event["content"]["membership"].clone();
            notification["user_is_target"] = json!(event["state_key"] == pusher.user.as_str());
        }
        if event["content"].as_object().is_some_and(|c| !c.is_empty()) {
            notification["content"] = event["content"].clone();
        }
        // `room_name` and `sender_display_name`; the e-mail summary's own key stays out.
        for (k, v) in context.iter().filter(|(k, _)| k.as_str() != "explicit_room_name") {
            notification[k] = v.clone();
        }
    }
    notification["devices"] = json!([device]);
    json!({"notification": notification})
}

/// A member's name as notifications show it: the display name, else the user ID.
fn name_of_member(content: &Map<String, Value>, user: &str) -> String {
    match content.get("displayname").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => user.to_owned(),
    }
}

/// Looks up the content of the room's state event `(type, state key)`.
type StateContentOf<'a> = dyn Fn(&str, &str) -> Option<Map<String, Value>> + 'a;

/// The room's own name for notifications: its `m.room.name`, else its canonical alias (the
/// first steps of Synapse's `calculate_room_name`).
fn explicit_room_name(content_of: &StateContentOf) -> Option<String> {
    if let Some(name) =
        content_of("m.room.name", "").and_then(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
        && !name.is_empty()
    {
        return Some(name);
    }
    content_of("m.room.canonical_alias", "")
        .and_then(|c| c.get("alias").and_then(Value::as_str).map(str::to_owned))
        .filter(|alias| alias.starts_with('#') && alias.contains(':'))
}

/// The rest of `calculate_room_name` for notifications (`fallback_to_single_member=False`):
/// a name made of the room's other members, none when only one other member could name it or
/// when `user` is only invited.
fn room_name_from_members(members: &[&crate::events::Pdu], user: &OwnedUserId) -> Option<String> {
    let with_content: Vec<(&crate::events::Pdu, Map<String, Value>)> =
        members.iter().map(|e| (*e, e.content_map())).collect();
    let membership_of = |c: &Map<String, Value>| c.get("membership").and_then(Value::as_str).map(str::to_owned);
    let own = with_content.iter().find(|(e, _)| e.state_key.as_deref() == Some(user.as_str()));
    if own.is_some_and(|(_, c)| membership_of(c).as_deref() == Some("invite")) {
        return None;
    }
    let mut present: Vec<&(&crate::events::Pdu, Map<String, Value>)> =
        with_content.iter().filter(|(_, c)| matches!(membership_of(c).as_deref(), Some("join" | "invite"))).collect();
    present.sort_by_key(|(e, _)| e.origin_server_ts);
    let others: Vec<String> = present
        .iter()
        .filter(|(e, _)| e.state_key.as_deref() != Some(user.as_str()))
        .map(|(e, c)| name_of_member(c, e.state_key.as_deref().unwrap_or_default()))
        .collect();
    match others.len() {
        0 if present.len() == 1 && present[0].0.sender != *user => {
            Some(name_of_member(&present[0].1, present[0].0.state_key.as_deref().unwrap_or_default()))
        }
        0 => Some("Empty Room".to_owned()),
        1 => None,
        2 => Some(format!("{} and {}", others[0], others[1])),
        n => Some(format!("{} and {} others", others[0], n - 1)),
    }
}

/// JSON with every non-ASCII character escaped (`\uXXXX`), as Synapse sends it: some
/// gateways count a body's length in characters, not bytes.
fn ascii_json(value: &Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}
