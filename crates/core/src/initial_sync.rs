//! The snapshot APIs the spec deprecated and clients, bots and sytest still call: `GET
//! /initialSync` (every room of the user at once) and `GET /rooms/{roomId}/initialSync`, shaped
//! as Synapse's `InitialSyncHandler` answers them: each room's latest events the user may see,
//! the state they may read (as of their leave for a room they left), their membership and the
//! room's directory visibility; room account data and tags; presence and read receipts. Events
//! carry the old `user_id` (the sender) beside `sender`, as Synapse's v1 format does.

use serde_json::{Value, json};

use crate::rooms::{Pagination, parse_room_id};
use crate::{Homeserver, Requester, Result};

/// The v1 event format: `user_id` is the sender.
fn v1_event(mut event: Value) -> Value {
    if let Some(sender) = event.get("sender").cloned() {
        event["user_id"] = sender;
    }
    event
}

impl Homeserver {
    /// `GET /initialSync?limit=&archived=`: the user's joined and invited rooms (and, with
    /// `archived`, those they left), global account data, presence and receipts.
    pub async fn initial_sync(&self, requester: &Requester, limit: usize, archived: bool) -> Result<Value> {
        let user = requester.user_id.to_string();
        // A client taking a snapshot is active (as one that syncs): its own presence says so.
        self.presence_from_sync(requester, "online").await?;
        let now = *self.sync.stream.borrow();
        let u = user.clone();
        let (joined, invited, left, account_data) = self
            .db(move |s| {
                Ok((
                    s.rooms_for_user(&u, "join")?,
                    s.rooms_for_user(&u, "invite")?,
                    if archived { s.rooms_for_user(&u, "leave")? } else { Vec::new() },
                    s.account_data_since(&u, 0, now)?,
                ))
            })
            .await?;
        let (global_account_data, mut room_account_data) = crate::sync::split_account_data(account_data);

        let mut rooms = Vec::new();
        for room in &invited {
            let mut entry = json!({
                "room_id": room, "membership": "invite", "visibility": self.room_visibility(room).await?,
            });
            let rid = parse_room_id(room)?;
            let state = self.current_state(&rid).await?.unwrap_or_default();
            let own = state.get(&("m.room.member".to_owned(), user.clone())).map(|id| id.to_string());
            if let Some(id) = own
                && let Some(invite) = self.client_events(vec![id]).await?.pop()
            {
                entry["inviter"] = invite["sender"].clone();
                entry["invite"] = v1_event(invite);
            }
            rooms.push(entry);
        }
        for (room, membership) in joined.iter().map(|r| (r, "join")).chain(left.iter().map(|r| (r, "leave"))) {
            let mut entry = self.room_snapshot(requester, room, limit).await?;
            entry["membership"] = json!(membership);
            entry["visibility"] = json!(self.room_visibility(room).await?);
            entry["account_data"] = json!(room_account_data.remove(room).unwrap_or_default());
            rooms.push(entry);
        }

        let mut presence: Vec<Value> = self
            .presence_events(&user, None, now)
            .await?
            .into_iter()
            .filter(|p| p["content"]["presence"] != "offline")
            .map(with_presence_user_id)
            .collect();
        // The user's own, even in no room with anyone.
        if !presence.iter().any(|p| p["sender"] == user.as_str()) {
            presence.extend(self.presence_of(std::slice::from_ref(&user)).await?);
        }
        let receipts: Vec<Value> = self
            .receipt_events(&user, &joined, 0, now)
            .await?
            .into_iter()
            .map(|(room, mut event)| {
                event["room_id"] = json!(room);
                event
            })
            .collect();
        Ok(json!({
            "rooms": rooms,
            "presence": presence,
            "account_data": global_account_data,
            "receipts": receipts,
            "end": format!("s{now}"),
        }))
    }

    /// `GET /rooms/{roomId}/initialSync?limit=`: one room's snapshot for a member, a former
    /// member (as of their leave: no presence or receipts then) or anyone reading a
    /// world-readable room.
    pub async fn room_initial_sync(&self, requester: &Requester, room_id: &str, limit: usize) -> Result<Value> {
        let rid = parse_room_id(room_id)?;
        let user = requester.user_id.as_str();
        let membership = self.membership_of(&rid, user).await?;
        let mut out = self.room_snapshot(requester, room_id, limit).await?;
        let now = *self.sync.stream.borrow();
        let (presence, receipts) = if membership.as_deref() == Some("join") {
            let members = self.joined_member_ids(room_id).await?;
            let presence = self.presence_of(&members).await?;
            let receipts = self.receipt_events(user, &[room_id.to_owned()], 0, now).await?;
            (presence, receipts.into_values().collect())
        } else {
            (Vec::new(), Vec::new())
        };
        out["presence"] = json!(presence);
        out["receipts"] = json!(receipts);
        let (u, r) = (user.to_owned(), room_id.to_owned());
        let account_data: Vec<Value> = self
            .db(move |s| s.account_data_since(&u, 0, now))
            .await?
            .into_iter()
            .filter(|(room, _, _)| *room == r)
            .map(|(_, kind, content)| json!({"type": kind, "content": content}))
            .collect();
        out["account_data"] = json!(account_data);
        out["visibility"] = json!(self.room_visibility(room_id).await?);
        if let Some(m) = membership {
            out["membership"] = json!(m);
        }
        Ok(out)
    }

    /// A room's latest `limit` events the user may see (oldest first) and the state they may
    /// read.
    async fn room_snapshot(&self, requester: &Requester, room_id: &str, limit: usize) -> Result<Value> {
        let rid = parse_room_id(room_id)?;
        let user = requester.user_id.as_str();
        let reader = self.reader(&rid, user).await?;
        let now = format!("s{}", *self.sync.stream.borrow());
        let (chunk, start) = if limit == 0 {
            (Vec::new(), now.clone())
        } else {
            let page = Pagination { from: None, to: None, backwards: true, limit, filter: None };
            let messages = self.page_events(user, &rid, reader, page).await?;
            let mut chunk: Vec<Value> = messages.chunk.into_iter().map(v1_event).collect();
            chunk.reverse();
            (chunk, messages.end.unwrap_or_else(|| "t0".to_owned()))
        };
        let state: Vec<Value> = self.room_state(requester, room_id).await?.into_iter().map(v1_event).collect();
        Ok(json!({
            "room_id": rid,
            "messages": {"chunk": chunk, "start": start, "end": now},
            "state": state,
        }))
    }

    /// The presence of `users` as the v1 APIs give it (see [`with_presence_user_id`]).
    async fn presence_of(&self, users: &[String]) -> Result<Vec<Value>> {
        Ok(self.presence_states(users).await?.into_iter().map(with_presence_user_id).collect())
    }
}

/// Synapse's presence content names its user (`content.user_id`).
fn with_presence_user_id(mut event: Value) -> Value {
    let user = event["sender"].clone();
    if let Some(content) = event.get_mut("content").and_then(Value::as_object_mut) {
        content.insert("user_id".into(), user);
    }
    event
}
