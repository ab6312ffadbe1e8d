//! Transactions to appservices: one task per service with a URL follows the stream and sends
//! `PUT /_matrix/app/v1/transactions/{txnId}` with the events (and, when the service asks,
//! the ephemeral events) it is interested in.
//!
//! Delivery is exactly-once in order, across restarts: a transaction is written to the
//! database (ID, body, the stream position it reaches) before it is sent, and sent again with
//! the same ID and body until the service answers 2xx; only then does the service's position
//! move past it and the next transaction start. A service that fails is retried with backoff
//! (2 s doubling to 5 minutes), and at once when it pings the homeserver. Only the process
//! that runs background tasks sends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use myelin_storage::{AppserviceState, PendingTransaction};
use serde_json::{Value, json};

use super::Registration;
use crate::events::client_event_from_str;
use crate::{Homeserver, Result};

/// Events read per transaction at most (Synapse's limit per transaction).
const EVENTS_PER_TRANSACTION: usize = 100;
/// Stream positions one transaction covers at most. Every event, receipt, typing change,
/// presence update and to-device message takes a position, so this bounds a transaction's
/// ephemeral and to-device parts too (a backlog goes out in several transactions, none too big
/// for the service to take).
const POSITIONS_PER_TRANSACTION: i64 = 500;
const FIRST_RETRY: Duration = Duration::from_secs(2);
const LONGEST_RETRY: Duration = Duration::from_secs(5 * 60);
/// How often a position moved past uninteresting events is written down (a restart re-reads
/// at most this much of the stream).
const ADVANCE_EVERY: Duration = Duration::from_secs(1);

impl Homeserver {
    /// Starts one sender per appservice that has a URL.
    pub fn start_appservice_senders(self: &Arc<Self>) {
        for registration in self.appservices().iter().filter(|r| r.url.is_some()) {
            let wake = Arc::new(tokio::sync::Notify::new());
            self.appservices
                .retry_now
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(registration.id.clone(), wake.clone());
            let (hs, registration) = (self.clone(), registration.clone());
            tokio::spawn(async move { hs.run_appservice_sender(registration, wake).await });
        }
    }

    /// Retries the service's failing transaction now (its ping got through).
    pub(crate) fn wake_appservice_sender(&self, id: &str) {
        if let Some(wake) = self.appservices.retry_now.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            wake.notify_one();
        }
    }

    async fn run_appservice_sender(self: Arc<Self>, registration: Arc<Registration>, wake: Arc<tokio::sync::Notify>) {
        let id = registration.id.clone();
        let mut stream = self.sync.stream.subscribe();
        // A service seen for the first time gets what happens from now on.
        let start = *stream.borrow_and_update();
        let mut state: AppserviceState = loop {
            let i = id.clone();
            match self.db(move |s| s.appservice_state(&i, start)).await {
                Ok(state) => break state,
                Err(e) => {
                    tracing::warn!(appservice = %id, error = %e, "appservice sender cannot read its position");
                    tokio::time::sleep(FIRST_RETRY).await;
                }
            }
        };
        let mut retry = FIRST_RETRY;
        let mut written_at = Instant::now();
        let mut written_position = state.position;
        loop {
            if let Some(txn) = state.pending.clone() {
                if self.send_transaction(&registration, &txn).await {
                    let i = id.clone();
                    match self.db(move |s| s.complete_appservice_txn(&i, txn.txn_id)).await {
                        Ok(()) => {
                            state =
                                AppserviceState { position: txn.to_position, last_txn_id: txn.txn_id, pending: None };
                            written_position = state.position;
                            retry = FIRST_RETRY;
                        }
                        Err(e) => {
                            tracing::warn!(appservice = %id, error = %e, "appservice transaction not marked as sent");
                            tokio::time::sleep(FIRST_RETRY).await;
                        }
                    }
                } else {
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = wake.notified() => {}
                    }
                    retry = (retry * 2).min(LONGEST_RETRY);
                }
                continue;
            }
            let now = *stream.borrow_and_update();
            if now <= state.position {
                // Idle: write down how far it got, then wait for the stream.
                if written_position < state.position {
                    let (i, p) = (id.clone(), state.position);
                    if self.db(move |s| s.advance_appservice(&i, p)).await.is_ok() {
                        written_position = state.position;
                        written_at = Instant::now();
                    }
                }
                tokio::select! {
                    changed = stream.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(ADVANCE_EVERY), if written_position < state.position => {}
                }
                continue;
            }
            let (reached, body) = match self.build_transaction(&registration, state.position, now).await {
                Ok(built) => built,
                Err(e) => {
                    tracing::warn!(appservice = %id, position = state.position, error = %e, "appservice transaction not built");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(LONGEST_RETRY);
                    continue;
                }
            };
            match body {
                Some(body) => {
                    let txn = PendingTransaction { txn_id: state.last_txn_id + 1, to_position: reached, body };
                    let (i, t) = (id.clone(), txn.clone());
                    match self.db(move |s| s.begin_appservice_txn(&i, &t)).await {
                        Ok(()) => state.pending = Some(txn),
                        Err(e) => {
                            // Another process took over, or the database is away: start again
                            // from what is written.
                            tracing::warn!(appservice = %id, error = %e, "appservice transaction not recorded");
                            tokio::time::sleep(FIRST_RETRY).await;
                            let i = id.clone();
                            if let Ok(fresh) = self.db(move |s| s.appservice_state(&i, start)).await {
                                state = fresh;
                                written_position = state.position;
                            }
                        }
                    }
                }
                None => {
                    state.position = reached;
                    if written_at.elapsed() >= ADVANCE_EVERY {
                        let (i, p) = (id.clone(), reached);
                        if self.db(move |s| s.advance_appservice(&i, p)).await.is_ok() {
                            written_position = reached;
                            written_at = Instant::now();
                        }
                    }
                }
            }
        }
    }

    /// `PUT /_matrix/app/v1/transactions/{txnId}`; true once the service answered 2xx.
    async fn send_transaction(&self, registration: &Registration, txn: &PendingTransaction) -> bool {
        let Some(url) = &registration.url else { return true };
        let sent = self
            .to_appservice(
                self.appservices.http.put(format!("{url}/_matrix/app/v1/transactions/{}", txn.txn_id)),
                registration,
            )
            .header("Content-Type", "application/json")
            .body(txn.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                tracing::debug!(appservice = %registration.id, txn = txn.txn_id, "appservice transaction sent");
                count_sent(registration, &txn.body);
                true
            }
            Ok(response) => {
                tracing::warn!(appservice = %registration.id, txn = txn.txn_id, status = %response.status(), "appservice refused a transaction; will retry");
                false
            }
            Err(e) => {
                tracing::warn!(appservice = %registration.id, txn = txn.txn_id, error = %e, "appservice unreachable; will retry");
                false
            }
        }
    }

    /// The transaction body for `(from, to]` (or the first [`EVENTS_PER_TRANSACTION`] events
    /// of it): how far it reaches, and the body if anything in it interests the service.
    async fn build_transaction(
        &self,
        registration: &Registration,
        from: i64,
        to: i64,
    ) -> Result<(i64, Option<String>)> {
        let to = to.min(from + POSITIONS_PER_TRANSACTION);
        let rows = self.db(move |s| s.events_between(from, to, EVENTS_PER_TRANSACTION)).await?;
        let reached = if rows.len() == EVENTS_PER_TRANSACTION {
            rows.last().map_or(to, |(_, row)| row.stream_ordering)
        } else {
            to
        };
        let mut rooms: HashMap<String, bool> = HashMap::new();
        let mut checked = std::collections::HashSet::new();
        let mut events = Vec::new();
        for (room, row) in rows {
            if row.rejected || row.soft_failed {
                continue;
            }
            let mut event = client_event_from_str(&row.json);
            // Older bridges read the sender from the pre-spec `user_id` key, which Synapse
            // still sends.
            if let Some(sender) = event.get("sender").cloned() {
                event["user_id"] = sender;
            }
            let sender = event["sender"].as_str().unwrap_or_default();
            let member = (event["type"] == "m.room.member").then(|| event["state_key"].as_str()).flatten();
            let interested = registration.is_interested_in_user(sender)
                || member.is_some_and(|m| registration.is_interested_in_user(m))
                || self.appservice_interested_in_room(registration, &room, &mut rooms).await?;
            if interested {
                // A user of the service's namespace that does not exist yet is asked about
                // first, so the bridge can create it (Synapse's `_check_user_exists`).
                for user in [Some(sender), member].into_iter().flatten() {
                    if registration.is_interested_in_user(user) && checked.insert(user.to_owned()) {
                        self.ask_about_unknown_user(registration, user).await?;
                    }
                }
                events.push(event);
            }
        }
        self.complete_unsigned(&mut events).await?;
        let mut ephemeral = Vec::new();
        if registration.wants_ephemeral() {
            for typing in self.typing_changes(from, reached) {
                let room = typing["room_id"].as_str().unwrap_or_default().to_owned();
                if self.appservice_interested_in_room(registration, &room, &mut rooms).await? {
                    ephemeral.push(typing);
                }
            }
            let receipts = self.db(move |s| s.receipts_since(from, reached)).await?;
            let mut by_room: Vec<(String, Value)> = Vec::new();
            for row in receipts {
                // Private receipts are for their owner's clients only.
                if row.receipt_type == "m.read.private"
                    || !self.appservice_interested_in_room(registration, &row.room_id, &mut rooms).await?
                {
                    continue;
                }
                let index = match by_room.iter().position(|(r, _)| *r == row.room_id) {
                    Some(i) => i,
                    None => {
                        let event = json!({"type": "m.receipt", "room_id": row.room_id, "content": {}});
                        by_room.push((row.room_id.clone(), event));
                        by_room.len() - 1
                    }
                };
                let mut receipt = json!({"ts": row.ts});
                if !row.thread_id.is_empty() {
                    receipt["thread_id"] = json!(row.thread_id);
                }
                by_room[index].1["content"][&row.event_id][&row.receipt_type][&row.user_id] = receipt;
            }
            ephemeral.extend(by_room.into_iter().map(|(_, e)| e));
            if self.config.presence_enabled {
                for row in self.db(move |s| s.presence_since(from, reached)).await? {
                    if self.appservice_interested_in_presence(registration, &row.user_id, &mut rooms).await? {
                        let content = Self::presence_content(&row);
                        ephemeral.push(json!({"type": "m.presence", "sender": row.user_id, "content": content}));
                    }
                }
            }
        }
        // MSC2409: its users' to-device messages (behind Synapse's experimental switch).
        let mut to_device = Vec::new();
        if registration.wants_ephemeral() && self.config.msc2409_to_device_messages {
            for (_, user, device, json) in self.db(move |s| s.to_device_between(from, reached)).await? {
                if !registration.is_interested_in_user(&user) {
                    continue;
                }
                let Ok(Value::Object(mut message)) = serde_json::from_str::<Value>(&json) else { continue };
                message.insert("to_user_id".into(), json!(user));
                message.insert("to_device_id".into(), json!(device));
                to_device.push(Value::Object(message));
            }
        }
        // MSC3202: device list changes of users sharing its rooms (also behind a switch).
        let msc3202 = registration.msc3202 && self.config.msc3202_transaction_extensions;
        let mut changed = Vec::new();
        if msc3202 {
            for user in self.db(move |s| s.device_list_changes(from, reached)).await? {
                let u = user.clone();
                let sharing = self.db(move |s| s.users_sharing_rooms(&u)).await?;
                if registration.is_interested_in_user(&user)
                    || sharing.iter().any(|m| registration.is_interested_in_user(m))
                {
                    changed.push(user);
                }
            }
        }
        if events.is_empty() && ephemeral.is_empty() && to_device.is_empty() && changed.is_empty() {
            return Ok((reached, None));
        }
        let mut body = json!({"events": events});
        if registration.receive_ephemeral {
            body["ephemeral"] = json!(ephemeral);
        }
        if registration.unstable_ephemeral {
            body["de.sorunome.msc2409.ephemeral"] = json!(ephemeral);
        }
        if registration.wants_ephemeral() {
            body["de.sorunome.msc2409.to_device"] = json!(to_device);
        }
        if msc3202 {
            self.add_key_counts(registration, &events, &ephemeral, &to_device, &mut body).await?;
            if !changed.is_empty() {
                body["org.matrix.msc3202.device_lists"] = json!({"changed": changed, "left": []});
            }
        }
        Ok((reached, Some(body.to_string())))
    }

    /// MSC3202's one-time key counts and unused fallback key types of the service's users the
    /// transaction concerns (its sender, its users in the rooms of the events and ephemeral
    /// events, the recipients of the to-device messages), as Synapse computes them.
    async fn add_key_counts(
        &self,
        registration: &Registration,
        events: &[Value],
        ephemeral: &[Value],
        to_device: &[Value],
        body: &mut Value,
    ) -> Result<()> {
        let mut users = std::collections::BTreeSet::new();
        users.insert(registration.sender.to_string());
        let rooms: std::collections::BTreeSet<String> =
            events.iter().chain(ephemeral).filter_map(|e| e["room_id"].as_str().map(str::to_owned)).collect();
        for room in rooms {
            users.extend(self.appservice_users_in_room(registration, &room).await?);
        }
        users.extend(to_device.iter().filter_map(|m| m["to_user_id"].as_str().map(str::to_owned)));
        let (mut counts, mut fallbacks) = (serde_json::Map::new(), serde_json::Map::new());
        for user in users {
            let u = user.clone();
            let devices = self.db(move |s| s.get_devices(&u)).await?;
            for device in devices {
                let (u, d) = (user.clone(), device.device_id.clone());
                let (otks, unused) = self
                    .db(move |s| Ok((s.one_time_key_counts(&u, &d)?, s.unused_fallback_key_types(&u, &d)?)))
                    .await?;
                let mut per_algorithm = serde_json::Map::new();
                per_algorithm.insert("signed_curve25519".into(), json!(0));
                for (algorithm, count) in otks {
                    per_algorithm.insert(algorithm, json!(count));
                }
                counts.entry(user.clone()).or_insert_with(|| json!({}))[&device.device_id] =
                    Value::Object(per_algorithm);
                fallbacks.entry(user.clone()).or_insert_with(|| json!({}))[&device.device_id] = json!(unused);
            }
        }
        if !counts.is_empty() {
            body["org.matrix.msc3202.device_one_time_key_counts"] = Value::Object(counts.clone());
            body["org.matrix.msc3202.device_one_time_keys_count"] = Value::Object(counts);
        }
        if !fallbacks.is_empty() {
            body["org.matrix.msc3202.device_unused_fallback_key_types"] = Value::Object(fallbacks);
        }
        Ok(())
    }

    /// Queries the service about one of its local users that is not registered.
    async fn ask_about_unknown_user(&self, registration: &Registration, user: &str) -> Result<()> {
        if user == registration.sender.as_str() || !user.ends_with(&format!(":{}", self.server_name())) {
            return Ok(());
        }
        let u = user.to_owned();
        if self.db(move |s| s.get_user(&u)).await?.is_none() {
            self.query_appservice_for_user(registration, user).await;
        }
        Ok(())
    }

    /// Synapse's `is_interested_in_presence`: the user is the service's, or is joined to a room
    /// the service is interested in.
    async fn appservice_interested_in_presence(
        &self,
        registration: &Registration,
        user: &str,
        known: &mut HashMap<String, bool>,
    ) -> Result<bool> {
        if registration.is_interested_in_user(user) {
            return Ok(true);
        }
        let u = user.to_owned();
        for room in self.db(move |s| s.rooms_for_user(&u, "join")).await? {
            if self.appservice_interested_in_room(registration, &room, known).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Synapse's `is_interested_in_room`: the room ID or one of its local aliases is in the
    /// service's namespaces, or one of its joined local members is the service's (`known`
    /// remembers the answer for the rest of the transaction).
    async fn appservice_interested_in_room(
        &self,
        registration: &Registration,
        room: &str,
        known: &mut HashMap<String, bool>,
    ) -> Result<bool> {
        if let Some(answer) = known.get(room) {
            return Ok(*answer);
        }
        let mut answer = registration.is_room_in_namespace(room);
        if !answer && !registration.aliases.is_empty() {
            let r = room.to_owned();
            let aliases = self.db(move |s| s.aliases_for_room(&r)).await?;
            answer = aliases.iter().any(|a| registration.is_alias_in_namespace(a));
        }
        if !answer {
            answer = !self.appservice_users_in_room(registration, room).await?.is_empty();
        }
        known.insert(room.to_owned(), answer);
        Ok(answer)
    }

    /// The service's users (its sender, its namespace) joined to a room, local ones only (as
    /// Synapse's `get_app_service_users_in_room`).
    async fn appservice_users_in_room(&self, registration: &Registration, room: &str) -> Result<Vec<String>> {
        let suffix = format!(":{}", self.server_name());
        let mut members = self.joined_member_ids(room).await?;
        members.retain(|u| u.ends_with(&suffix) && registration.is_interested_in_user(u));
        Ok(members)
    }
}

/// Counts a delivered transaction and its events in Synapse's appservice metrics.
fn count_sent(registration: &Registration, body: &str) {
    #[derive(serde::Deserialize)]
    struct Events {
        #[serde(default)]
        events: Vec<serde::de::IgnoredAny>,
    }
    let m = myelin_metrics::metrics();
    let service = myelin_metrics::ServiceLabel { service: registration.id.clone() };
    m.appservice_transactions_sent.get_or_create(&service).inc();
    let events = serde_json::from_str::<Events>(body).map_or(0, |e| e.events.len());
    m.appservice_events_sent.get_or_create(&service).inc_by(events as u64);
}
