//! The `unsigned` block of events as clients get them, as Synapse builds it: `age` on every
//! event, and on a state event that replaced another, `replaces_state` with `prev_content` and
//! `prev_sender` (what a client needs to tell a display-name change from a join).
//!
//! `replaces_state` is kept in the stored event (written with it, as Synapse does); the
//! replaced event's content is read when the event is served, so a later redaction of the
//! replaced event shows here too. `transaction_id` (the sender's own echo) is added by the
//! paths that know the requesting device, `membership` (MSC4115) by the paths that read for one
//! user (on `/sync`, worked out from the timeline itself, see [`label_memberships`]), and
//! `m.relations` by the aggregation bundler.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::server::now_ms;
use crate::{Error, Homeserver, Requester, Result};

/// A state event's stored JSON with `unsigned.replaces_state` naming `replaced`, the event that
/// held its state key in the state it was built on (none for the first of its key, or when it
/// is the same event).
pub(crate) fn with_replaced_state(json: String, event_id: &str, replaced: Option<&str>) -> Result<String> {
    let Some(replaced) = replaced.filter(|r| *r != event_id) else { return Ok(json) };
    let mut value: Value = serde_json::from_str(&json).map_err(Error::internal)?;
    let Some(map) = value.as_object_mut() else { return Ok(json) };
    let unsigned = map.entry("unsigned").or_insert_with(|| json!({}));
    if let Some(unsigned) = unsigned.as_object_mut() {
        unsigned.insert("replaces_state".into(), json!(replaced));
    }
    serde_json::to_string(&value).map_err(Error::internal)
}

/// Sets `unsigned.age`: how long ago the event was sent, by its `origin_server_ts` (Synapse
/// counts from when it received the event; for its own events that is the same).
pub(crate) fn stamp_age(events: &mut [Value]) {
    let now = now_ms();
    for event in events {
        let Some(ts) = event.get("origin_server_ts").and_then(Value::as_i64) else { continue };
        let Some(map) = event.as_object_mut() else { continue };
        let unsigned = map.entry("unsigned").or_insert_with(|| json!({}));
        if let Some(unsigned) = unsigned.as_object_mut() {
            unsigned.insert("age".into(), json!((now - ts).max(0)));
        }
    }
}

/// MSC4115 on a run of consecutive events of one room, from the reader's membership after the
/// last of them: walking back, each event gets the membership after it, and the reader's own
/// member events step back to what they replaced (`prev_content`, else `leave`). This is how
/// `/sync` labels its timelines without reading state per event.
pub(crate) fn label_memberships(events: &mut [Value], user: &str, after_last: &str) {
    let mut current = after_last.to_owned();
    for event in events.iter_mut().rev() {
        let own_member_event = event["type"] == "m.room.member" && event["state_key"] == user;
        let before = own_member_event
            .then(|| event["unsigned"]["prev_content"]["membership"].as_str().unwrap_or("leave").to_owned());
        if let Some(map) = event.as_object_mut() {
            let unsigned = map.entry("unsigned").or_insert_with(|| json!({}));
            unsigned["membership"] = json!(current);
        }
        if let Some(before) = before {
            current = before;
        }
    }
}

impl Homeserver {
    /// Timeline events' `unsigned` as Synapse serves them: [`stamp_age`], and `prev_content`
    /// and `prev_sender` from each replaced state event (read in one storage call).
    /// Then the modules' fields (`add_field_to_unsigned_callback`), which never replace these.
    pub(crate) async fn complete_unsigned(&self, events: &mut [Value]) -> Result<()> {
        self.add_prev_content(events).await?;
        self.modules.add_unsigned_fields(events).await
    }

    async fn add_prev_content(&self, events: &mut [Value]) -> Result<()> {
        stamp_age(events);
        let replaced: Vec<String> = events
            .iter()
            .filter(|e| e["unsigned"].get("prev_content").is_none())
            .filter_map(|e| e["unsigned"]["replaces_state"].as_str().map(str::to_owned))
            .collect();
        if replaced.is_empty() {
            return Ok(());
        }
        let previous: HashMap<String, (Value, Value)> = self
            .event_rows(replaced)
            .await?
            .into_iter()
            .filter_map(|row| {
                let v: Value = serde_json::from_str(&row.json).ok()?;
                let id = v.get("event_id")?.as_str()?.to_owned();
                Some((id, (v.get("content").cloned()?, v.get("sender").cloned()?)))
            })
            .collect();
        for event in events {
            let Some((content, sender)) =
                event["unsigned"]["replaces_state"].as_str().and_then(|id| previous.get(id)).cloned()
            else {
                continue;
            };
            if let Some(unsigned) = event["unsigned"].as_object_mut() {
                unsigned.entry("prev_content").or_insert(content);
                unsigned.entry("prev_sender").or_insert(sender);
            }
        }
        Ok(())
    }

    /// MSC4115, as Synapse: `unsigned.membership` on each event, `user`'s membership in the
    /// room as of it (the state after it, `groups[i]` for `events[i]`), so a client can tell
    /// "sent before you joined" from a decryption failure. One read per state group: a page's
    /// messages share few.
    pub(crate) async fn add_memberships(&self, user: &str, groups: &[Option<i64>], events: &mut [Value]) -> Result<()> {
        let mut known: HashMap<Option<i64>, String> = HashMap::new();
        for (group, event) in groups.iter().zip(events.iter_mut()) {
            let membership = match known.get(group) {
                Some(m) => m.clone(),
                None => {
                    let m = self.membership_in_group(*group, user).await?;
                    known.insert(*group, m.clone());
                    m
                }
            };
            if let Some(map) = event.as_object_mut() {
                let unsigned = map.entry("unsigned").or_insert_with(|| json!({}));
                unsigned["membership"] = json!(membership);
            }
        }
        Ok(())
    }

    /// Sets `unsigned.transaction_id` on the events the requesting device sent with one (its
    /// own echo, as Synapse gives it to that device only).
    pub(crate) async fn add_transaction_ids(&self, requester: &Requester, events: &mut [Value]) -> Result<()> {
        let sender = requester.user_id.as_str();
        let own: Vec<String> = events
            .iter()
            .filter(|e| e["sender"] == sender)
            .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
            .collect();
        if own.is_empty() {
            return Ok(());
        }
        let txns = self.transaction_ids(requester, own, true).await?;
        for event in events {
            if let Some(txn) = event["event_id"].as_str().and_then(|id| txns.get(id))
                && let Some(map) = event.as_object_mut()
            {
                let unsigned = map.entry("unsigned").or_insert_with(|| json!({}));
                unsigned["transaction_id"] = json!(txn);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_timelines_label_memberships_back_from_the_end() {
        let mut events = vec![
            json!({"type": "m.room.message", "sender": "@b:x"}),
            json!({"type": "m.room.member", "state_key": "@a:x", "content": {"membership": "invite"}}),
            json!({"type": "m.room.message", "sender": "@b:x"}),
            json!({"type": "m.room.member", "state_key": "@a:x", "content": {"membership": "join"},
                   "unsigned": {"prev_content": {"membership": "invite"}}}),
            json!({"type": "m.room.member", "state_key": "@b:x", "content": {"membership": "join"}}),
            json!({"type": "m.room.message", "sender": "@a:x"}),
        ];
        label_memberships(&mut events, "@a:x", "join");
        let labels: Vec<&str> = events.iter().map(|e| e["unsigned"]["membership"].as_str().unwrap()).collect();
        assert_eq!(labels, ["leave", "invite", "invite", "join", "join", "join"]);
    }

    #[test]
    fn replaced_state_is_noted_unless_there_is_none_or_it_is_the_event_itself() {
        let json = r#"{"event_id":"$b","type":"m.room.name","state_key":"","content":{}}"#.to_owned();
        let noted: Value = serde_json::from_str(&with_replaced_state(json.clone(), "$b", Some("$a")).unwrap()).unwrap();
        assert_eq!(noted["unsigned"]["replaces_state"], "$a");
        assert_eq!(with_replaced_state(json.clone(), "$b", None).unwrap(), json);
        assert_eq!(with_replaced_state(json.clone(), "$b", Some("$b")).unwrap(), json);
    }

    #[test]
    fn age_counts_from_the_origin_timestamp_and_is_never_negative() {
        let mut events =
            [json!({"origin_server_ts": now_ms() - 5_000}), json!({"origin_server_ts": now_ms() + 60_000})];
        stamp_age(&mut events);
        assert!(events[0]["unsigned"]["age"].as_i64().unwrap() >= 5_000);
        assert_eq!(events[1]["unsigned"]["age"], 0);
    }
}
