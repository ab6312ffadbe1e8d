//! The bus between the processes of one deployment (several Myelin processes on one PostgreSQL
//! database; see docs/deployment.md).
//!
//! What one process changes in the database the others would not see in their memory: the
//! stream position long-polling `/sync` requests wait on, rooms' cached state and extremities,
//! parsed state events that a redaction rewrote,
//! typing notifications (held in memory only), push rules and pushers, and which federation
//! destinations have new rows. Each such change is published as one line through the store's
//! bus (PostgreSQL's `LISTEN`/`NOTIFY`: no protocol of our own); every other process applies
//! it. With SQLite there is one process and no bus, and none of this runs.
//!
//! Messages (space-separated):
//! - `stream <position>`: a commit at that position (wake `/sync`).
//! - `room <room_id> <position>`: a state event of the room was written (drop the room's caches);
//!   `room <room_id> <position> <event_id> <depth> <prev,prev>`: a message (move the cached
//!   extremities on).
//! - `typing <room_id> <user_id> <position> <timeout_ms or ->`: typing started or stopped.
//! - `redacted <event_id>`: a redaction rewrote that event (drop its parsed copy).
//! - `push_rules <user_id>`, `pushers`: cached copies are stale.
//! - `outbox <destination>`: rows queued for a destination (its sender process sends them).

use std::sync::Arc;
use std::time::Duration;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use tokio::sync::mpsc;

use crate::server::Homeserver;

/// This process's end of the bus: messages to publish go through one task, in order.
#[derive(Default)]
pub(crate) struct BusState {
    publisher: std::sync::OnceLock<mpsc::UnboundedSender<String>>,
}

impl Homeserver {
    /// Joins the bus when the store has one (PostgreSQL): other processes' messages are applied
    /// here, and this process's changes are published to them.
    pub async fn start_bus(self: &Arc<Self>) -> crate::Result<()> {
        let (incoming_tx, mut incoming) = mpsc::unbounded_channel::<String>();
        let deliver = Box::new(move |message| {
            let _ = incoming_tx.send(message);
        });
        let has_bus = self.db(move |s| s.subscribe(deliver)).await?;
        if !has_bus {
            return Ok(());
        }
        let name = self.config.instance.name.clone();
        self.db(move |s| s.register_instance(&name)).await?;
        self.watch_federation_senders();
        let (outgoing_tx, mut outgoing) = mpsc::unbounded_channel::<String>();
        let _ = self.bus.publisher.set(outgoing_tx);
        let hs = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(message) = incoming.recv().await {
                let Some(hs) = hs.upgrade() else { return };
                hs.apply_bus_payload(&message);
            }
        });
        let store = self.store.clone();
        tokio::spawn(async move {
            while let Some(first) = outgoing.recv().await {
                // Everything queued meanwhile goes out together: one NOTIFY for the batch, and
                // of its stream positions only the newest (a busy process publishes one or two
                // notifications per commit of its event writer, not two per message).
                let mut batch = vec![first];
                while let Ok(next) = outgoing.try_recv() {
                    batch.push(next);
                }
                let payloads = bus_payloads(batch);
                let store = store.clone();
                let sent = tokio::task::spawn_blocking(move || {
                    for payload in payloads {
                        if let Err(e) = store.publish(&payload) {
                            tracing::warn!(error = %e, "could not publish to the other processes");
                        }
                    }
                })
                .await;
                if sent.is_err() {
                    tracing::warn!("publishing to the other processes panicked");
                }
            }
        });
        tracing::info!(instance = %self.config.instance.name, "joined the bus of this deployment's processes");
        Ok(())
    }

    /// Sends a message to the other processes (nothing without a bus).
    pub(crate) fn publish(&self, message: String) {
        if let Some(publisher) = self.bus.publisher.get() {
            let _ = publisher.send(message);
        }
    }

    /// Whether other processes may share the database.
    pub(crate) fn has_bus(&self) -> bool {
        self.bus.publisher.get().is_some()
    }

    /// Applies a notification from another process: one message per line.
    fn apply_bus_payload(self: &Arc<Self>, payload: &str) {
        for message in payload.lines() {
            self.apply_bus_message(message);
        }
    }

    fn apply_bus_message(self: &Arc<Self>, message: &str) {
        let mut parts = message.split(' ');
        let position = |p: Option<&str>| p.and_then(|p| p.parse::<i64>().ok());
        match parts.next() {
            Some("stream") => {
                if let Some(pos) = position(parts.next()) {
                    self.advance_local_stream(pos);
                }
            }
            Some("room") => {
                let (Some(room), Some(pos)) = (parts.next(), position(parts.next())) else { return };
                let Ok(room) = OwnedRoomId::try_from(room) else { return };
                self.sync.cache.written_elsewhere(room.as_str(), pos);
                match (parts.next(), parts.next().and_then(|d| d.parse::<u64>().ok()), parts.next()) {
                    (Some(event_id), Some(depth), Some(prevs)) => {
                        self.message_written_elsewhere(room, event_id, depth, prevs)
                    }
                    _ => self.forget_room_cache(&room),
                }
                self.advance_local_stream(pos);
            }
            Some("typing") => {
                let (Some(room), Some(user), Some(pos), Some(timeout)) =
                    (parts.next(), parts.next(), position(parts.next()), parts.next())
                else {
                    return;
                };
                let (Ok(room), Ok(user)) = (OwnedRoomId::try_from(room), OwnedUserId::try_from(user)) else { return };
                let timeout = timeout.parse::<u64>().ok().map(Duration::from_millis);
                self.typing_elsewhere(room, user.as_str(), pos, timeout);
                self.advance_local_stream(pos);
            }
            Some("redacted") => {
                if let Some(Ok(event_id)) = parts.next().map(OwnedEventId::try_from) {
                    self.forget_state_event(&event_id);
                }
            }
            Some("push_rules") => {
                if let Some(user) = parts.next() {
                    self.forget_push_rules(user);
                }
            }
            Some("room_purged") => {
                if let Some(Ok(room)) = parts.next().map(ruma::OwnedRoomId::try_from) {
                    self.forget_purged_room(&room);
                }
            }
            Some("pushers") => self.pushers_changed_here(),
            Some("ratelimit_overrides") => self.limiters.forget_overrides(),
            Some("erased") => {
                if let Some(user) = parts.next() {
                    self.note_erased(user);
                }
            }
            Some("ignored") => {
                if let Some(user) = parts.next() {
                    self.forget_ignored_users(user);
                }
            }
            Some("outbox") => {
                if let Some(destination) = parts.next() {
                    self.wake_destination_here(destination);
                }
            }
            Some(myelin_storage::BUS_RESYNC) => {
                // Messages may have been lost: forget everything another process may have
                // changed, and catch up with the stream.
                self.forget_all_room_caches();
                self.rooms.state_events.lock().unwrap_or_else(|p| p.into_inner()).clear();
                self.sync.cache.forget_all();
                self.pushers_changed_here();
                self.forget_all_push_rules();
                self.limiters.forget_overrides();
                self.accounts.ignored.lock().unwrap_or_else(|p| p.into_inner()).clear();
                let hs = self.clone();
                tokio::spawn(async move {
                    if let Ok(pos) = hs.db(|s| s.max_stream_ordering()).await {
                        hs.advance_local_stream(pos);
                    }
                });
            }
            _ => tracing::debug!(%message, "unknown message on the bus"),
        }
    }
}

/// Most bytes in one notification (PostgreSQL refuses payloads of 8000 bytes or more).
const MAX_PAYLOAD: usize = 7_000;

/// A batch of messages as notification payloads: lines joined up to [`MAX_PAYLOAD`], with the
/// batch's `stream` messages replaced by the newest one (last, after the room and typing
/// messages whose positions it covers).
fn bus_payloads(batch: Vec<String>) -> Vec<String> {
    let mut newest_stream: Option<i64> = None;
    let mut payloads: Vec<String> = Vec::new();
    let mut push = |message: String| match payloads.last_mut() {
        Some(last) if last.len() + 1 + message.len() <= MAX_PAYLOAD => {
            last.push('\n');
            last.push_str(&message);
        }
        _ => payloads.push(message),
    };
    for message in batch {
        if let Some(pos) = message.strip_prefix("stream ").and_then(|p| p.parse::<i64>().ok()) {
            newest_stream = newest_stream.max(Some(pos));
        } else {
            push(message);
        }
    }
    if let Some(pos) = newest_stream {
        push(format!("stream {pos}"));
    }
    payloads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_becomes_few_payloads_with_the_newest_stream_position_last() {
        let batch = ["stream 5", "room !a:x 5", "stream 7", "typing !a:x @u:x 6 100", "stream 6"];
        let payloads = bus_payloads(batch.iter().map(|m| m.to_string()).collect());
        assert_eq!(payloads, vec!["room !a:x 5\ntyping !a:x @u:x 6 100\nstream 7".to_owned()]);
    }

    #[test]
    fn payloads_stay_under_postgresqls_limit() {
        let batch: Vec<String> = (0..1000).map(|i| format!("room !{i:0>40}:example.org {i}")).collect();
        let payloads = bus_payloads(batch.clone());
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let lines: Vec<&str> = payloads.iter().flat_map(|p| p.lines()).collect();
        assert_eq!(lines, batch.iter().map(String::as_str).collect::<Vec<_>>(), "nothing lost, order kept");
    }
}
