//! The event writer: one thread that commits the events of concurrent requests together.
//!
//! Each committed transaction costs SQLite a WAL frame for every page it touches (the events
//! table and its indexes, extremities, transaction IDs, the stream position): about eight
//! pages for one message. Events queued while a commit is in progress go into the next one
//! together, so under load those pages are written once for the batch instead of once per
//! event, and no runtime worker waits on the write lock: a request awaits its reply instead.
//! With one event at a time the writer is a thread hand-over more than an inline write.

use std::sync::mpsc;

use myelin_storage::{NewEvent, StateChange, Storage, StorageError};
use tokio::sync::oneshot;

/// Everything [`NewEvent`] borrows, owned, to cross to the writer thread.
pub(crate) struct EventWrite {
    pub event_id: String,
    pub room_id: String,
    pub event_type: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub membership: Option<String>,
    pub json: String,
    pub state: StateChange,
    pub prev_events: Vec<String>,
    pub txn: Option<(String, String, String)>,
    pub redaction: Option<(String, String)>,
    /// Failed the authorization rules (a received event, stored so it is never fetched again).
    pub rejected: bool,
    /// Received and authorised by its own state, but not by the current state.
    pub soft_failed: bool,
    /// The room's whole new current state, when more than the event's own key changes.
    pub current_state: Option<Vec<myelin_storage::StateEntry>>,
    /// Servers to send the event to (outbox rows in the same transaction).
    pub destinations: Vec<String>,
}

impl EventWrite {
    fn as_new_event(&self) -> NewEvent<'_> {
        NewEvent {
            event_id: &self.event_id,
            room_id: &self.room_id,
            event_type: &self.event_type,
            state_key: self.state_key.as_deref(),
            sender: &self.sender,
            membership: self.membership.as_deref(),
            json: &self.json,
            rejected: self.rejected,
            soft_failed: self.soft_failed,
            state: self.state.clone(),
            prev_events: &self.prev_events,
            updates_current_state: !self.rejected && !self.soft_failed,
            txn: self.txn.as_ref().map(|(u, d, t)| (u.as_str(), d.as_str(), t.as_str())),
            redaction: self.redaction.as_ref().map(|(t, j)| (t.as_str(), j.as_str())),
            current_state: self.current_state.as_deref(),
            destinations: &self.destinations,
        }
    }
}

/// `(stream position, state group)` of a committed event.
type Written = myelin_storage::Result<(i64, i64)>;

struct Job {
    write: EventWrite,
    reply: oneshot::Sender<Written>,
}

/// A queued write; await it with [`EventWriter::finish`]. Queue order is commit order.
pub(crate) struct PendingWrite(oneshot::Receiver<Written>);

/// Counts a committed batch in Synapse's event persistence and federation queue metrics.
fn count_persisted(batch: &[Job], results: &[Written], server_name: &str) {
    let m = myelin_metrics::metrics();
    m.writer_batch_size.observe(batch.len() as f64);
    for (job, result) in batch.iter().zip(results) {
        let Ok((position, _)) = result else { continue };
        let write = &job.write;
        m.events_persisted.inc();
        let origin = write.sender.split_once(':').map_or("", |(_, server)| server);
        let (origin_type, origin_entity) =
            if origin == server_name { ("local", "*client*".to_owned()) } else { ("remote", origin.to_owned()) };
        let labels = myelin_metrics::PersistedLabels { r#type: write.event_type.clone(), origin_type, origin_entity };
        m.events_persisted_by_type.get_or_create(&labels).inc();
        m.persisted_position.set(*position);
        if !write.destinations.is_empty() {
            m.federation_pdus_queued.inc();
            m.federation_pdu_destinations.inc_by(write.destinations.len() as u64);
        }
    }
}

/// The most events one transaction commits.
const MAX_BATCH: usize = 64;

/// The handle to the writer thread, which ends when this is dropped.
pub(crate) struct EventWriter {
    jobs: mpsc::Sender<Job>,
}

impl EventWriter {
    /// Starts the writer thread for the homeserver `server_name` (which tells local events
    /// from received ones in the metrics).
    pub(crate) fn start(store: std::sync::Arc<dyn Storage>, server_name: String) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("event-writer".into()).spawn(move || {
            while let Ok(first) = queue.recv() {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH
                    && let Ok(next) = queue.try_recv()
                {
                    batch.push(next);
                }
                let events: Vec<NewEvent<'_>> = batch.iter().map(|j| j.write.as_new_event()).collect();
                let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.persist_events(&events)))
                    .unwrap_or_else(|_| {
                        events.iter().map(|_| Err(StorageError::Backend("event write panicked".into()))).collect()
                    });
                drop(events);
                count_persisted(&batch, &results, &server_name);
                for (job, result) in batch.into_iter().zip(results) {
                    // The request may have gone (client disconnected); the event is written anyway.
                    let _ = job.reply.send(result);
                }
            }
        })?;
        Ok(EventWriter { jobs })
    }

    /// Queues an event behind those already queued.
    pub(crate) fn submit(&self, write: EventWrite) -> PendingWrite {
        let (reply, answer) = oneshot::channel();
        // A send fails only if the thread is gone; the receiver then reports it.
        let _ = self.jobs.send(Job { write, reply });
        PendingWrite(answer)
    }

    /// Waits for a queued event's commit.
    pub(crate) async fn finish(pending: PendingWrite) -> Written {
        pending.0.await.unwrap_or_else(|_| Err(StorageError::Backend("the event writer stopped".into())))
    }
}
