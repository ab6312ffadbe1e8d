//! The outbound queue: one task per destination sends what the outbox holds for it as
//! `PUT /_matrix/federation/v1/send/{txnId}` transactions (at most 50 PDUs and 100 EDUs each),
//! in order, deleting rows once the destination accepted them.
//!
//! The outbox is written in the same transaction as the events it names, so nothing queued is
//! lost by a crash; at start-up every destination with rows gets its task. A destination that
//! does not answer is retried with a doubling delay (2 s up to 5 minutes); any request from it
//! ([`Homeserver::wake_destination`]) or new work for it ends the wait, so a restarted server
//! gets its backlog as soon as it talks again. A transaction the destination refuses as a whole
//! with a 4xx (other than 429) would be refused again: its rows are dropped, with a warning.
//! Transaction IDs are derived from the rows they hold, so a retry reuses its ID and the
//! destination can recognise it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;

use super::client::FederationFailure;
use crate::Homeserver;
use crate::server::now_ms;

/// The most PDUs (and, separately, EDUs) in one transaction (the spec's limits).
const MAX_PER_TRANSACTION: usize = 50;
const MAX_EDUS_PER_TRANSACTION: usize = 100;
const FIRST_RETRY: Duration = Duration::from_secs(2);
const LAST_RETRY: Duration = Duration::from_secs(300);
/// How often a federation sender checks which others are alive.
const SENDER_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Per-destination wake-ups; a destination's task exists while its entry does.
#[derive(Default)]
pub(crate) struct Outbound {
    destinations: Mutex<HashMap<String, Arc<Wake>>>,
    server: std::sync::OnceLock<Weak<Homeserver>>,
}

impl Outbound {
    pub(crate) fn server(&self) -> Option<Weak<Homeserver>> {
        self.server.get().cloned()
    }
}

impl Homeserver {
    /// The other servers in a room, which its events and EDUs go to.
    pub(crate) async fn room_destinations(&self, room_id: &ruma::RoomId) -> crate::Result<Vec<String>> {
        let guard = self.room_lock(room_id).await?;
        Ok(guard.as_ref().map(|c| c.destinations()).unwrap_or_default())
    }

    /// Starts sending: a task for every destination with queued rows. Called once the server
    /// is built (the tasks hold a weak reference to it).
    pub fn start_federation_sender(self: &Arc<Self>) {
        let _ = self.federation.outbound.server.set(Arc::downgrade(self));
        let hs = self.clone();
        tokio::spawn(async move {
            let destinations = hs.db(|s| s.outbox_destinations()).await.unwrap_or_default();
            for d in destinations.iter().filter(|d| hs.sends_to(d)) {
                hs.wake_destination(d);
            }
        });
    }

    /// `destination` just talked to us, so it is up: its task sends now, backoff or not.
    pub(crate) fn wake_destination(&self, destination: &str) {
        self.wake(destination, true);
    }

    /// New rows for each destination (once written): their tasks send unless backing off.
    pub(crate) fn wake_destinations(&self, destinations: &[String]) {
        for d in destinations {
            self.wake(d, false);
        }
    }

    /// Whether this process sends to `destination` now (see
    /// [`crate::config::InstanceSettings::sender_for`]).
    pub(crate) fn sends_to(&self, destination: &str) -> bool {
        let live = self.federation.live_senders.lock().unwrap_or_else(|p| p.into_inner());
        self.config.instance.sender_for(destination, &live) == Some(self.config.instance.name.as_str())
    }

    /// Follows which federation senders are alive (with other processes on the database):
    /// when one dies, the destinations it owned pass to the live ones, which send their
    /// backlog; when it returns, they pass back. Checked every few seconds.
    pub(crate) fn watch_federation_senders(self: &Arc<Self>) {
        if !self.config.instance.federation_senders.contains(&self.config.instance.name) {
            return;
        }
        let hs = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(server) = hs.upgrade() else { return };
                let names = server.config.instance.federation_senders.clone();
                if let Ok(Some(live)) = server.db(move |s| s.live_instances(&names)).await {
                    let changed = {
                        let mut current = server.federation.live_senders.lock().unwrap_or_else(|p| p.into_inner());
                        let changed = *current != live;
                        if changed {
                            tracing::info!(?live, "federation senders changed");
                        }
                        *current = live;
                        changed
                    };
                    if changed {
                        let destinations = server.db(|s| s.outbox_destinations()).await.unwrap_or_default();
                        for d in destinations.iter().filter(|d| server.sends_to(d)) {
                            server.wake_destination(d);
                        }
                    }
                }
                drop(server);
                tokio::time::sleep(SENDER_WATCH_INTERVAL).await;
            }
        });
    }

    /// Wakes a destination's sender on this process, if it is the one that sends there (a
    /// message from another process that queued rows for it).
    pub(crate) fn wake_destination_here(&self, destination: &str) {
        if self.sends_to(destination) {
            self.wake(destination, false);
        }
    }

    fn wake(&self, destination: &str, is_up: bool) {
        // Each destination has one sending process (`federation_sender_instances`); the others
        // tell it about the rows they queued. (That the destination talked to this process is
        // not passed on: it would cost a notification per inbound request, and the owner's
        // backoff ends on its own schedule or when the destination talks to it.)
        if !self.sends_to(destination) {
            if !is_up {
                self.publish(format!("outbox {destination}"));
            }
            return;
        }
        let Some(server) = self.federation.outbound.server.get().cloned() else { return };
        let mut map = self.federation.outbound.destinations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(wake) = map.get(destination) {
            if is_up {
                wake.is_up.store(true, std::sync::atomic::Ordering::Release);
            }
            wake.notify.notify_one();
            return;
        }
        let wake = Arc::new(Wake::default());
        map.insert(destination.to_owned(), wake.clone());
        let destination = destination.to_owned();
        let span = tracing::info_span!("destination", %destination);
        tokio::spawn(tracing::Instrument::instrument(send_loop(server, destination, wake), span));
    }

    /// The delivery state of every destination this process has a sending task for.
    pub(crate) fn destination_timings(&self) -> Vec<(String, RetryTimings)> {
        let map = self.federation.outbound.destinations.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(d, wake)| (d.clone(), wake.timings().clone())).collect()
    }

    /// Ends a destination's backoff and sends to it now (the admin API's `reset_connection`);
    /// false when it is not backing off here.
    pub(crate) fn reset_destination(&self, destination: &str) -> bool {
        let map = self.federation.outbound.destinations.lock().unwrap_or_else(|p| p.into_inner());
        let Some(wake) = map.get(destination) else { return false };
        {
            let mut timings = wake.timings();
            if timings.retry_last_ts == 0 {
                return false;
            }
            timings.failure_ts = None;
            timings.retry_last_ts = 0;
            timings.retry_interval = 0;
        }
        wake.is_up.store(true, std::sync::atomic::Ordering::Release);
        wake.notify.notify_one();
        true
    }

    /// Queues EDUs for destinations and wakes them.
    pub(crate) async fn queue_edu(&self, destinations: Vec<String>, edu: Value) {
        if destinations.is_empty() {
            return;
        }
        let text = edu.to_string();
        let rows: Vec<(String, String)> = destinations.iter().map(|d| (d.clone(), text.clone())).collect();
        if let Err(e) = self.db(move |s| s.queue_edus(&rows)).await {
            tracing::warn!(error = %e, "could not queue an EDU");
            return;
        }
        self.wake_destinations(&destinations);
    }
}

/// How a destination's task is woken: new work (sent at once unless the destination is
/// backing off) or the destination talking to us (which ends any backoff).
#[derive(Default)]
struct Wake {
    notify: Notify,
    is_up: std::sync::atomic::AtomicBool,
    timings: Mutex<RetryTimings>,
}

/// A destination's delivery state, as Synapse's `destinations` table has it (the admin API's
/// federation destinations). Kept by the process that sends there, in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RetryTimings {
    /// When the current run of failures began (ms); `None` while the destination answers.
    pub(crate) failure_ts: Option<i64>,
    /// When the last failed attempt was (ms), 0 when none is pending.
    pub(crate) retry_last_ts: i64,
    /// How long until the next attempt (ms), 0 when none is pending.
    pub(crate) retry_interval: i64,
    /// The stream position of the newest event the destination accepted.
    pub(crate) last_successful_stream_ordering: Option<i64>,
}

impl Wake {
    fn timings(&self) -> std::sync::MutexGuard<'_, RetryTimings> {
        self.timings.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Attempt {
    /// Sent (or dropped), reaching this stream position when it held events; more may be
    /// waiting.
    Progress(Option<i64>),
    /// Nothing to send.
    Idle,
    /// The destination did not take it.
    Failed,
}

async fn send_loop(server: Weak<Homeserver>, destination: String, wake: Arc<Wake>) {
    use std::sync::atomic::Ordering;
    let mut delay = FIRST_RETRY;
    loop {
        let Some(hs) = server.upgrade() else { return };
        if !hs.sends_to(&destination) {
            // Another process owns it now (a sender came back): this task ends, and new work
            // wakes that process instead.
            hs.federation.outbound.destinations.lock().unwrap_or_else(|p| p.into_inner()).remove(&destination);
            return;
        }
        wake.is_up.store(false, Ordering::Release);
        let attempt = send_one(&hs, &destination).await;
        drop(hs);
        match attempt {
            Attempt::Progress(reached) => {
                delay = FIRST_RETRY;
                let mut timings = wake.timings();
                timings.failure_ts = None;
                timings.retry_last_ts = 0;
                timings.retry_interval = 0;
                if reached.is_some() {
                    timings.last_successful_stream_ordering = reached.max(timings.last_successful_stream_ordering);
                }
            }
            Attempt::Idle => {
                delay = FIRST_RETRY;
                let _ = tokio::time::timeout(Duration::from_secs(60), wake.notify.notified()).await;
            }
            Attempt::Failed => {
                {
                    let mut timings = wake.timings();
                    let now = now_ms();
                    timings.failure_ts.get_or_insert(now);
                    timings.retry_last_ts = now;
                    timings.retry_interval = delay.as_millis() as i64;
                }
                // New work waits out the backoff; the destination talking to us ends it.
                let until = tokio::time::Instant::now() + delay;
                delay = (delay * 2).min(LAST_RETRY);
                while tokio::time::timeout_at(until, wake.notify.notified()).await.is_ok() {
                    if wake.is_up.load(Ordering::Acquire) {
                        delay = FIRST_RETRY;
                        break;
                    }
                }
            }
        }
    }
}

async fn send_one(hs: &Homeserver, destination: &str) -> Attempt {
    let dest = destination.to_owned();
    let rows = match hs.db(move |s| s.outbox(&dest, MAX_EDUS_PER_TRANSACTION)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "outbox read failed");
            return Attempt::Failed;
        }
    };
    if rows.is_empty() {
        return Attempt::Idle;
    }
    let (mut pdu_rows, mut edu_rows): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.kind == "pdu");
    pdu_rows.truncate(MAX_PER_TRANSACTION);
    edu_rows.truncate(MAX_EDUS_PER_TRANSACTION);
    let event_ids: Vec<String> = pdu_rows.iter().map(|r| r.body.clone()).collect();
    let jsons = match hs
        .db(move |s| {
            let mut out = Vec::new();
            for id in event_ids {
                out.push(s.get_event(&id)?.map(|r| (r.stream_ordering, r.json)));
            }
            Ok(out)
        })
        .await
    {
        Ok(j) => j,
        Err(_) => return Attempt::Failed,
    };
    let mut reached = jsons.iter().flatten().map(|(position, _)| *position).max();
    let pdus: Vec<Value> = jsons.iter().flatten().filter_map(|(_, j)| super::rooms::wire_pdu(j).ok()).collect();
    let edus: Vec<Value> = edu_rows.iter().filter_map(|r| serde_json::from_str(&r.body).ok()).collect();
    let mut ids: Vec<i64> = pdu_rows.iter().chain(edu_rows.iter()).map(|r| r.id).collect();
    ids.sort_unstable();
    let txn_id = format!("{}-{}-{}", ids.first().copied().unwrap_or(0), ids.last().copied().unwrap_or(0), ids.len());
    let body = json!({
        "origin": hs.server_name(),
        "origin_server_ts": now_ms(),
        "pdus": pdus,
        "edus": edus,
    });
    let path = format!("/_matrix/federation/v1/send/{txn_id}");
    let result = hs
        .federation
        .client
        .request(&hs.key, hs.server_name(), destination, "PUT", &path, Some(&body), Duration::from_secs(60))
        .await;
    match result {
        Ok(answer) => {
            count_sent(&body);
            if let Some(errors) = answer["pdus"].as_object() {
                for (id, r) in errors {
                    if let Some(e) = r.get("error") {
                        tracing::info!(event_id = %id, error = %e, "the destination did not accept an event");
                    }
                }
            }
            // Modules hear of the events the destination acknowledged: echoed back without an
            // error (as Synapse counts them).
            if hs.modules.has_on_event_delivered_over_federation() {
                // `jsons` holds one entry per PDU row (whose body is the event ID), in order.
                let acked =
                    |id: &str| answer["pdus"].get(id).is_some_and(|r| r.is_object() && r.get("error").is_none());
                let acknowledged: Vec<String> = pdu_rows
                    .iter()
                    .zip(&jsons)
                    .filter(|(row, _)| acked(&row.body))
                    .filter_map(|(_, stored)| stored.as_ref().map(|(_, json)| json.clone()))
                    .collect();
                let method = myelin_module_api::federation::DeliveryMethod::Send;
                hs.notify_delivered(destination, &acknowledged, method).await;
            }
        }
        Err(FederationFailure::Refused(e)) if (400..500).contains(&e.status) && e.status != 429 => {
            tracing::warn!(txn_id, status = e.status, body = %e.body, "the destination refused a transaction; dropping it");
            reached = None;
        }
        Err(e) => {
            tracing::info!(error = %e.into_error("transaction"), "sending a transaction failed");
            return Attempt::Failed;
        }
    }
    let dest = destination.to_owned();
    match hs.db(move |s| s.outbox_sent(&dest, &ids)).await {
        Ok(()) => Attempt::Progress(reached),
        Err(_) => Attempt::Failed,
    }
}

/// Counts a delivered transaction and its EDUs in Synapse's federation sender metrics.
fn count_sent(body: &Value) {
    let m = myelin_metrics::metrics();
    m.federation_transactions_sent.inc();
    for edu in body["edus"].as_array().into_iter().flatten() {
        m.federation_edus_sent.inc();
        let kind = edu["edu_type"].as_str().unwrap_or("").to_owned();
        m.federation_edus_sent_by_type.get_or_create(&myelin_metrics::TypeName { r#type: kind }).inc();
    }
}
