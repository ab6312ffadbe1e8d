//! Event relations: `GET /relations` (all three forms, `dir`, `recurse`), `GET /threads`,
//! `GET /timestamp_to_event`, and the bundled aggregations clients read in
//! `unsigned."m.relations"` (`m.replace`: the latest edit by the original sender, `m.thread`:
//! the latest reply, the count and whether the reader took part, `m.reference`: the IDs).
//!
//! Every event returned, related or relating, passes the history-visibility filter of the
//! reader (`visibility`), as on Synapse. Relations are indexed as events are written
//! (`event_relations`, storage).

use std::collections::{HashMap, HashSet};

use myelin_storage::{EventRow, RelationQuery};
use ruma::RoomId;
use serde_json::{Value, json};

use crate::events::client_event_from_str;
use crate::rooms::{parse_room_id, parse_token};
use crate::visibility::Reader;
use crate::{Error, Homeserver, Requester, Result};

/// How deep `recurse=true` follows relations of relations (Synapse's limit).
const RECURSION_DEPTH: usize = 3;

/// The paging of `GET /relations`.
#[derive(Debug, Clone, Default)]
pub struct RelationsPage<'a> {
    /// `from` token.
    pub from: Option<&'a str>,
    /// `to` token.
    pub to: Option<&'a str>,
    /// `dir=f`.
    pub forwards: bool,
    /// `limit`.
    pub limit: usize,
    /// `recurse`.
    pub recurse: bool,
}

impl Homeserver {
    /// A stored event of `room_id` that `user` (as `reader`) may see; 404 otherwise.
    async fn visible_event_row(
        &self,
        user: &str,
        reader: Reader,
        room_id: &RoomId,
        event_id: &str,
    ) -> Result<EventRow> {
        let id = event_id.to_owned();
        let not_found = || Error::not_found("Event not found.");
        let row = self.db(move |s| s.get_event(&id)).await?.ok_or_else(not_found)?;
        let in_room = serde_json::from_str::<Value>(&row.json).is_ok_and(|v| v["room_id"] == room_id.as_str());
        if !in_room {
            return Err(not_found());
        }
        self.visible_events(user, reader, vec![row]).await?.0.pop().ok_or_else(not_found)
    }

    /// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`.
    pub async fn relations(
        &self,
        requester: &Requester,
        room_id: &str,
        event_id: &str,
        rel_type: Option<&str>,
        event_type: Option<&str>,
        page: RelationsPage<'_>,
    ) -> Result<Value> {
        let room_id = parse_room_id(room_id)?;
        let user = requester.user_id.as_str();
        // As Synapse: the room must be readable (403 otherwise, banned users included), and a
        // parent the user may not see is a 403 too.
        let reader = self.reader(&room_id, user).await?;
        match self.visible_event_row(user, reader, &room_id, event_id).await {
            Err(e)
                if e.kind == crate::ErrorKind::NotFound && self.event_exists_in(room_id.as_str(), event_id).await? =>
            {
                return Err(Error::forbidden("You don't have permission to access that event."));
            }
            other => other?,
        };
        let parse = |t: &str| parse_token(t).ok_or_else(|| Error::invalid_param(format!("Invalid token {t}")));
        let (from, to) = (page.from.map(parse).transpose()?, page.to.map(parse).transpose()?);
        // The window, exclusive at both ends: `from` is where the previous page stopped.
        let (after, before) = if page.forwards {
            (from.unwrap_or(0), to.unwrap_or(i64::MAX))
        } else {
            (to.unwrap_or(0), from.unwrap_or(i64::MAX))
        };
        let limit = page.limit.clamp(1, 100);
        let depth = if page.recurse { RECURSION_DEPTH } else { 1 };
        let mut rows = Vec::new();
        let mut parents = vec![event_id.to_owned()];
        let mut seen: HashSet<String> = HashSet::new();
        for _ in 0..depth {
            let mut next = Vec::new();
            for parent in &parents {
                let (parent, rel_type, event_type) =
                    (parent.clone(), rel_type.map(str::to_owned), event_type.map(str::to_owned));
                let (backwards, recurse) = (!page.forwards, page.recurse);
                let found = self
                    .db(move |s| {
                        s.relations(&RelationQuery {
                            parent: &parent,
                            rel_type: rel_type.as_deref(),
                            event_type: event_type.as_deref(),
                            after,
                            before,
                            backwards,
                            // With recursion the page is cut after merging the levels.
                            limit: if recurse { 1000 } else { limit + 1 },
                        })
                    })
                    .await?;
                for row in found {
                    let id = serde_json::from_str::<Value>(&row.json)
                        .ok()
                        .and_then(|v| v["event_id"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    if seen.insert(id.clone()) {
                        next.push(id);
                        rows.push(row);
                    }
                }
            }
            parents = next;
        }
        rows.sort_by_key(|r| r.stream_ordering);
        if !page.forwards {
            rows.reverse();
        }
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_batch = if more { rows.last().map(|r| format!("t{}", r.stream_ordering)) } else { None };
        let chunk = self.client_events_for(user, reader, rows).await?;
        let mut out = json!({"chunk": chunk});
        if let Some(next) = next_batch {
            out["next_batch"] = json!(next);
        }
        if let Some(prev) = page.from {
            out["prev_batch"] = json!(prev);
        }
        if page.recurse {
            out["recursion_depth"] = json!(RECURSION_DEPTH);
        }
        Ok(out)
    }

    /// `GET /_matrix/client/v1/rooms/{roomId}/threads`: thread roots, the most recently active
    /// first; `include=participated` keeps threads the user started or replied to.
    pub async fn threads(
        &self,
        requester: &Requester,
        room_id: &str,
        participated: bool,
        from: Option<&str>,
        limit: usize,
    ) -> Result<Value> {
        let room_id = parse_room_id(room_id)?;
        let user = requester.user_id.as_str();
        let reader = self.reader(&room_id, user).await?;
        let before = match from {
            Some(t) => parse_token(t).ok_or_else(|| Error::invalid_param(format!("Invalid token {t}")))?,
            None => i64::MAX,
        };
        let limit = limit.clamp(1, 100);
        let (rid, participant) = (room_id.to_string(), participated.then(|| user.to_owned()));
        let roots = self.db(move |s| s.thread_roots(&rid, participant.as_deref(), before, limit)).await?;
        let next_batch = (roots.len() == limit).then(|| roots.last().map(|(_, pos)| format!("t{pos}"))).flatten();
        let rows = self.event_rows(roots.into_iter().map(|(id, _)| id).collect()).await?;
        let chunk = self.client_events_for(user, reader, rows).await?;
        let mut out = json!({"chunk": chunk});
        if let Some(next) = next_batch {
            out["next_batch"] = json!(next);
        }
        Ok(out)
    }

    /// The events of `rows` that `user` may see, in client format with their bundled
    /// aggregations: what `/relations` and `/threads` answer.
    async fn client_events_for(&self, user: &str, reader: Reader, rows: Vec<EventRow>) -> Result<Vec<Value>> {
        let (rows, _) = self.visible_events(user, reader, rows).await?;
        let mut events: Vec<Value> = rows.iter().map(|r| client_event_from_str(&r.json)).collect();
        let groups: Vec<Option<i64>> = rows.iter().map(|r| r.state_group).collect();
        self.add_memberships(user, &groups, &mut events).await?;
        self.bundle_aggregations(user, reader, &mut events).await?;
        self.complete_unsigned(&mut events).await?;
        Ok(events)
    }

    /// Adds `unsigned."m.relations"` to the events that have edits, thread replies or
    /// references the reader may see.
    pub(crate) async fn bundle_aggregations(&self, user: &str, reader: Reader, events: &mut [Value]) -> Result<()> {
        let parents: Vec<String> = events.iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned)).collect();
        if parents.is_empty() {
            return Ok(());
        }
        let relations = self.db(move |s| s.relation_summaries(&parents)).await?;
        if relations.is_empty() {
            return Ok(());
        }
        // The relating events, filtered for the reader.
        let rows = self.event_rows(relations.iter().map(|r| r.event_id.clone()).collect()).await?;
        let (rows, _) = self.visible_events(user, reader, rows).await?;
        let visible: HashMap<String, Value> = rows
            .iter()
            .map(|r| client_event_from_str(&r.json))
            .filter_map(|e| Some((e["event_id"].as_str()?.to_owned(), e)))
            .collect();
        let mut by_parent: HashMap<&str, Vec<&myelin_storage::RelationRow>> = HashMap::new();
        for r in relations.iter().filter(|r| visible.contains_key(&r.event_id)) {
            by_parent.entry(r.parent.as_str()).or_default().push(r);
        }
        for event in events.iter_mut() {
            let Some(related) = event["event_id"].as_str().and_then(|id| by_parent.get(id)) else { continue };
            let sender = event["sender"].as_str().unwrap_or_default().to_owned();
            let mut bundle = serde_json::Map::new();
            // The latest edit by the original sender (others' edits are not applied).
            if let Some(edit) = related.iter().rev().find(|r| r.rel_type == "m.replace" && r.sender == sender) {
                bundle.insert("m.replace".into(), visible[&edit.event_id].clone());
            }
            let replies: Vec<_> = related.iter().filter(|r| r.rel_type == "m.thread").collect();
            if let Some(latest) = replies.last() {
                let participated = sender == user || replies.iter().any(|r| r.sender == user);
                bundle.insert(
                    "m.thread".into(),
                    json!({
                        "latest_event": visible[&latest.event_id],
                        "count": replies.len(),
                        "current_user_participated": participated,
                    }),
                );
            }
            let references: Vec<Value> = related
                .iter()
                .filter(|r| r.rel_type == "m.reference")
                .map(|r| json!({"event_id": r.event_id}))
                .collect();
            if !references.is_empty() {
                bundle.insert("m.reference".into(), json!({"chunk": references}));
            }
            if !bundle.is_empty() {
                if !event["unsigned"].is_object() {
                    event["unsigned"] = json!({});
                }
                event["unsigned"]["m.relations"] = Value::Object(bundle);
            }
        }
        Ok(())
    }

    /// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`: the event the reader may
    /// see closest to `ts`, at or after it (`dir=f`) or at or before it (`dir=b`).
    pub async fn timestamp_to_event(
        &self,
        requester: &Requester,
        room_id: &str,
        ts: i64,
        forwards: bool,
    ) -> Result<Value> {
        let room_id = parse_room_id(room_id)?;
        let reader = self.reader(&room_id, requester.user_id.as_str()).await?;
        self.event_at_timestamp(requester, &room_id, reader, ts, forwards).await
    }

    /// The event nearest `ts` in a direction that `reader` may see.
    pub(crate) async fn event_at_timestamp(
        &self,
        requester: &Requester,
        room_id: &ruma::RoomId,
        reader: crate::visibility::Reader,
        ts: i64,
        forwards: bool,
    ) -> Result<Value> {
        let user = requester.user_id.as_str();
        let rid = room_id.to_string();
        let candidates = self.db(move |s| s.events_by_timestamp(&rid, ts, forwards, 50)).await?;
        let (rows, _) = self.visible_events(user, reader, candidates).await?;
        let Some(row) = rows.first() else {
            return Err(Error::not_found(format!(
                "Unable to find event from {ts} in direction {}",
                if forwards { "f" } else { "b" }
            )));
        };
        let event: Value = serde_json::from_str(&row.json).map_err(Error::internal)?;
        Ok(json!({"event_id": event["event_id"], "origin_server_ts": event["origin_server_ts"]}))
    }
}
