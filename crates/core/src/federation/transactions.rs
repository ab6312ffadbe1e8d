//! Inbound transactions: `PUT /_matrix/federation/v1/send/{txnId}`.
//!
//! One transaction per origin is processed at a time (later ones wait), and at most
//! [`MAX_CONCURRENT_TRANSACTIONS`] from all origins, so a flood of transactions queues instead
//! of multiplying work. A repeated transaction ID of an origin gets the first answer again. Each
//! PDU succeeds or fails alone; the answer says which, as the spec asks.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::OwnedRoomId;
use serde_json::{Map, Value, json};

use super::rooms::Outcome;
use crate::{Error, Homeserver, Result};

/// The spec's limits of one transaction.
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;
/// Transactions processed at once, from all origins.
pub(crate) const MAX_CONCURRENT_TRANSACTIONS: usize = 8;
/// Inbound-transaction bookkeeping.
pub(crate) struct Inbound {
    per_origin: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    all: tokio::sync::Semaphore,
    /// Answers remembered for repeated transaction IDs (a bounded cache).
    answered: std::sync::Mutex<crate::cache::BoundedMap<(String, String), Value>>,
}

impl Inbound {
    pub(crate) fn new(sizes: &crate::cache::CacheSizes) -> Self {
        Inbound {
            per_origin: Default::default(),
            all: tokio::sync::Semaphore::new(MAX_CONCURRENT_TRANSACTIONS),
            answered: std::sync::Mutex::new(crate::cache::BoundedMap::new(
                "federation_transactions",
                sizes.federation_transactions,
            )),
        }
    }
}

impl Homeserver {
    /// Handles a transaction from `origin` (already authenticated).
    #[tracing::instrument(name = "federation_transaction", skip(self, body))]
    pub async fn receive_transaction(&self, origin: &str, txn_id: &str, body: &Value) -> Result<Value> {
        if let Some(claimed) = body.get("origin").and_then(Value::as_str)
            && claimed != origin
        {
            return Err(Error::forbidden("The transaction's origin is not the server that sent it"));
        }
        let pdus = match body.get("pdus") {
            Some(Value::Array(p)) => p.as_slice(),
            None | Some(Value::Null) => &[],
            Some(_) => return Err(Error::bad_json("pdus must be a list")),
        };
        let edus = match body.get("edus") {
            Some(Value::Array(e)) => e.as_slice(),
            None | Some(Value::Null) => &[],
            Some(_) => return Err(Error::bad_json("edus must be a list")),
        };
        if pdus.len() > MAX_PDUS || edus.len() > MAX_EDUS {
            return Err(Error::bad_json(format!("A transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs")));
        }
        let key = (origin.to_owned(), txn_id.to_owned());
        let origin_lock = {
            let mut map = self.federation.inbound.per_origin.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(origin.to_owned()).or_default().clone()
        };
        let _one_per_origin = origin_lock.lock().await;
        if let Some(answer) =
            self.federation.inbound.answered.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned()
        {
            return Ok(answer);
        }
        let _slot = self.federation.inbound.all.acquire().await.map_err(Error::internal)?;

        let m = myelin_metrics::metrics();
        m.federation_transactions_received.inc();
        m.federation_pdus_received.inc_by(pdus.len() as u64);
        m.federation_edus_received.inc_by(edus.len() as u64);
        let mut results = Map::new();
        for pdu in pdus {
            let (id, result) = self.receive_transaction_pdu(origin, pdu).await;
            results.insert(id, result);
        }
        for edu in edus {
            self.receive_edu(origin, edu).await;
        }
        let answer = json!({"pdus": results});
        self.federation.inbound.answered.lock().unwrap_or_else(|p| p.into_inner()).insert(key, answer.clone());
        Ok(answer)
    }

    /// One PDU of a transaction: `(its event ID or a placeholder, {} or {"error": ...})`.
    async fn receive_transaction_pdu(&self, origin: &str, pdu: &Value) -> (String, Value) {
        let room = pdu.get("room_id").and_then(Value::as_str).and_then(|r| OwnedRoomId::try_from(r).ok());
        let Some(room) = room else {
            return (
                format!("invalid:{}", crate::server::random_string(8)),
                json!({"error": "PDU has no valid room_id"}),
            );
        };
        match self.participates_in(&room).await {
            Ok(true) => {}
            Ok(false) => {
                return (format!("unknown:{room}"), json!({"error": format!("This server is not in {room}")}));
            }
            Err(e) => return (format!("unknown:{room}"), json!({"error": e.message})),
        }
        // The answer is keyed by event ID, failures included, whenever the PDU has one.
        let rules = match self.room_lock(&room).await {
            Ok(guard) => guard.as_ref().map(|c| c.rules.clone()),
            Err(e) => return (format!("unknown:{room}"), json!({"error": e.message})),
        };
        let id = match rules.map(|r| super::rooms::identify(pdu, &r)) {
            Some(Ok((id, _))) => id.to_string(),
            Some(Err(e)) => {
                return (format!("invalid:{}", crate::server::random_string(8)), json!({"error": e.message}));
            }
            None => return (format!("unknown:{room}"), json!({"error": format!("Unknown room {room}")})),
        };
        if let Err(e) = self.check_server_acl(origin, &room).await {
            return (id, json!({"error": e.message}));
        }
        match self.receive_pdu(Some(origin), &room, pdu, Vec::new()).await {
            Ok(received) => {
                let answer = match received.outcome {
                    // An event the auth rules reject is kept as rejected (so its children can be
                    // judged) and never served; as on Synapse, the sender's server is not told.
                    // Soft failure (spam included) is not the sender's business either.
                    Outcome::Rejected(why) => {
                        tracing::info!(origin, room = %room, reason = %why, "rejected a PDU");
                        json!({})
                    }
                    Outcome::Accepted | Outcome::SoftFailed | Outcome::Known | Outcome::Dropped => json!({}),
                };
                (received.event_id.to_string(), answer)
            }
            Err(e) => {
                if let Some(cause) = &e.cause {
                    tracing::error!(origin, event_id = %id, %cause, "a received PDU failed");
                }
                (id, json!({"error": e.message}))
            }
        }
    }

    /// One EDU; those this server does not handle, and malformed ones, are ignored.
    async fn receive_edu(&self, origin: &str, edu: &Value) {
        let content = &edu["content"];
        match edu["edu_type"].as_str() {
            Some("m.typing") => {
                let (Some(room), Some(user)) = (content["room_id"].as_str(), content["user_id"].as_str()) else {
                    return;
                };
                if user.split_once(':').map(|(_, s)| s) != Some(origin)
                    || self.check_server_acl_str(origin, room).await.is_err()
                {
                    return;
                }
                let typing = content["typing"].as_bool().unwrap_or(false);
                self.remote_typing(room, user, typing).await;
            }
            Some("m.receipt") => {
                let Some(rooms) = content.as_object() else { return };
                for (room, kinds) in rooms {
                    let Some(read) = kinds["m.read"].as_object() else { continue };
                    if self.check_server_acl_str(origin, room).await.is_err() {
                        continue;
                    }
                    for (user, receipt) in read {
                        if user.split_once(':').map(|(_, s)| s) != Some(origin) {
                            continue;
                        }
                        let Some(event_id) =
                            receipt["event_ids"].as_array().and_then(|a| a.first()).and_then(Value::as_str)
                        else {
                            continue;
                        };
                        let thread = receipt["data"]["thread_id"].as_str().unwrap_or_default().to_owned();
                        self.remote_receipt(room, user, event_id, thread).await;
                    }
                }
            }
            Some("m.device_list_update") => self.receive_device_list_update(origin, content).await,
            Some("m.signing_key_update") => self.receive_signing_key_update(origin, content).await,
            Some("m.direct_to_device") => self.receive_to_device(origin, content).await,
            Some("m.presence") => self.receive_presence(origin, content).await,
            _ => {}
        }
    }
}
