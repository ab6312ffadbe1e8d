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
struct HttpPusher {
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
        let hs = self.clone();
        let http = match self
            .config
            .federation
            .ip_filter
            .client_builder(Default::default())
            .danger_accept_invalid_certs(self.config.insecure_outbound_tls)
            .timeout(Duration::from_secs(30))
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "push notifications are off: no HTTP client");
                return;
            }
        };
        tokio::spawn(async move {
            let mut stream = hs.sync.stream.subscribe();
            let mut done = *stream.borrow_and_update();
            loop {
                if stream.changed().await.is_err() {
                    return;
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

    /// Every user's pushers, from the cache when it holds them.
    async fn all_pushers(&self) -> Result<StoredPushers> {
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
        let mut pushers: HashMap<String, Vec<Arc<HttpPusher>>> = HashMap::new();
        for (user, json) in stored.iter() {
            let (Ok(user_id), Ok(Value::Object(config))) =
                (OwnedUserId::try_from(user.as_str()), serde_json::from_str::<Value>(json))
            else {
                continue;
            };
            if config.get("kind").and_then(Value::as_str) == Some("http") {
                pushers.entry(user.clone()).or_default().push(Arc::new(HttpPusher { user: user_id, config }));
            }
        }
        if pushers.is_empty() {
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
            let members = self.joined_member_ids(&room).await?;
            let Ok(room_id) = OwnedRoomId::try_from(room.as_str()) else { continue };
            for user in members.iter().filter(|u| **u != sender) {
                let Some(theirs) = pushers.get(user) else { continue };
                if !starts.contains_key(user) {
                    starts.insert(user.clone(), self.unread_starts(user).await?);
                }
                if row.stream_ordering <= starts[user].get(&room).copied().unwrap_or(0) {
                    continue;
                }
                // One user's failure (a storage error reading their rules) costs them this
                // notification, not everyone else theirs.
                if let Err(e) = self.push_to_user(http, theirs, &event, &room_id, members.len()).await {
                    tracing::warn!(user = %user, error = %e, "push notification not evaluated");
                }
            }
        }
        Ok(reached)
    }

    /// Evaluates `user`'s rules for one event and, if it notifies them, sends it to each of
    /// their pushers (in the background, with retries).
    async fn push_to_user(
        self: &Arc<Self>,
        http: &reqwest::Client,
        pushers: &[Arc<HttpPusher>],
        event: &Value,
        room: &OwnedRoomId,
        member_count: usize,
    ) -> Result<()> {
        let user = &pushers[0].user;
        let u = user.to_string();
        let display = self.db(move |s| Ok(s.get_profile(&u)?.and_then(|p| p.0).unwrap_or_default())).await?;
        let rules = self.ruleset(user).await?;
        let actions = Self::actions(&rules, event, user, &display, room, member_count).await;
        if !actions.iter().any(|a| a.should_notify()) {
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
        let context = self.notification_context(event, room).await?;
        for pusher in pushers {
            let body = notify_body(pusher, event, &tweaks, high, badge, &context);
            let (hs, http, pusher) = (self.clone(), http.clone(), pusher.clone());
            tokio::spawn(async move { hs.deliver(&http, &pusher, body).await });
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

    /// The room name and the sender's display name, as a notification shows them.
    async fn notification_context(&self, event: &Value, room: &OwnedRoomId) -> Result<Map<String, Value>> {
        let mut context = Map::new();
        if let Some(name) = self.state_content(room, "m.room.name", "").await?.and_then(|c| c.get("name").cloned())
            && name.as_str().is_some_and(|n| !n.is_empty())
        {
            context.insert("room_name".into(), name);
        }
        let sender = event["sender"].as_str().unwrap_or_default();
        if let Some(name) =
            self.state_content(room, "m.room.member", sender).await?.and_then(|c| c.get("displayname").cloned())
            && name.as_str().is_some_and(|n| !n.is_empty())
        {
            context.insert("sender_display_name".into(), name);
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

    /// Posts one notification, retrying with backoff; removes pushkeys the gateway rejects.
    async fn deliver(&self, http: &reqwest::Client, pusher: &HttpPusher, body: Value) {
        let Some(url) = pusher.url() else { return };
        let started = std::time::Instant::now();
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let request = http.post(url).json(&body);
            let answer = match self.config.federation.ip_filter.send(http, request).await {
                Ok(resp) if resp.status().is_success() => resp.json::<Value>().await.map_err(|e| e.to_string()),
                Ok(resp) => Err(format!("status {}", resp.status())),
                Err(e) => Err(e),
            };
            match answer {
                Ok(answer) => {
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

/// The `notify` request body for one pusher.
fn notify_body(
    pusher: &HttpPusher,
    event: &Value,
    tweaks: &Map<String, Value>,
    high: bool,
    badge: u64,
    context: &Map<String, Value>,
) -> Value {
    let mut data = pusher.config.get("data").and_then(Value::as_object).cloned().unwrap_or_default();
    data.remove("url");
    let mut device = json!({
        "app_id": pusher.text("app_id"),
        "pushkey": pusher.text("pushkey"),
        "pushkey_ts": pusher.config.get("pushkey_ts").and_then(Value::as_i64).unwrap_or(0) / 1000,
        "data": data,
    });
    let prio = if high { "high" } else { "low" };
    let mut notification = json!({
        "event_id": event["event_id"],
        "room_id": event["room_id"],
        "prio": prio,
        "counts": {"unread": badge},
    });
    if !pusher.event_id_only() {
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
        for (k, v) in context {
            notification[k] = v.clone();
        }
    }
    notification["devices"] = json!([device]);
    json!({"notification": notification})
}
