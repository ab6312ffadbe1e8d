//! The bus between the processes of one deployment (several Myelin processes on one PostgreSQL
//! database; see docs/deployment.md).
//!
//! What one process changes in the database the others would not see in their memory: the
//! stream position long-polling `/sync` requests wait on, rooms' cached state and extremities,
//! typing notifications (held in memory only), push rules and pushers, and which federation
//! destinations have new rows. Each such change is published as one line through the store's
//! bus (PostgreSQL's `LISTEN`/`NOTIFY`: no protocol of our own); every other process applies
//! it. With SQLite there is one process and no bus, and none of this runs.
//!
//! Messages (space-separated):
//! - `stream <position>`: a commit at that position (wake `/sync`).
//! - `room <room_id> <position>`: an event of the room was written (drop the room's caches).
//! - `typing <room_id> <user_id> <position> <timeout_ms or ->`: typing started or stopped.
//! - `push_rules <user_id>`, `pushers`: cached copies are stale.
//! - `outbox <destination>`: rows queued for a destination (its sender process sends them).

use std::sync::Arc;
use std::time::Duration;

use ruma::{OwnedRoomId, OwnedUserId};
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
        let (outgoing_tx, mut outgoing) = mpsc::unbounded_channel::<String>();
        let _ = self.bus.publisher.set(outgoing_tx);
        let hs = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(message) = incoming.recv().await {
                let Some(hs) = hs.upgrade() else { return };
                hs.apply_bus_message(&message);
            }
        });
        let store = self.store.clone();
        tokio::spawn(async move {
            while let Some(first) = outgoing.recv().await {
                // Everything queued meanwhile goes in the same trip to the blocking pool.
                let mut batch = vec![first];
                while let Ok(next) = outgoing.try_recv() {
                    batch.push(next);
                }
                let store = store.clone();
                let sent = tokio::task::spawn_blocking(move || {
                    for message in batch {
                        if let Err(e) = store.publish(&message) {
                            tracing::warn!(error = %e, %message, "could not publish to the other processes");
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
                self.forget_room(room);
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
            Some("push_rules") => {
                if let Some(user) = parts.next() {
                    self.forget_push_rules(user);
                }
            }
            Some("pushers") => self.pushers_changed_here(),
            Some("outbox") => {
                if let Some(destination) = parts.next() {
                    self.wake_destination_here(destination);
                }
            }
            Some(myelin_storage::BUS_RESYNC) => {
                // Messages may have been lost: forget everything another process may have
                // changed, and catch up with the stream.
                self.forget_all_rooms();
                self.pushers_changed_here();
                self.forget_all_push_rules();
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
