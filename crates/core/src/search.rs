//! `POST /search`: full-text search over the messages, names and topics of the rooms the
//! requester is in, ordered by rank or recency, with context and pagination.
//!
//! The index is SQLite FTS5, filled in batches and brought up to date before each search
//! (storage migration 5). Every word of the search
//! term must match, as a prefix; the batch token is an offset into the result list.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use crate::events::client_event_from_str;
use crate::rooms::Pagination;
use crate::{Error, ErrorKind, Homeserver, Requester, Result};

const SEARCH_KEYS: &[&str] = &["content.body", "content.name", "content.topic"];

fn bad(message: impl Into<String>) -> Error {
    Error::bad_json(message)
}

fn limit_field(obj: &Map<String, Value>, key: &str, default: usize, max: usize) -> Result<usize> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().map(|n| (n as usize).min(max)).ok_or_else(|| bad(format!("{key} must be an integer"))),
    }
}

fn strings(v: Option<&Value>, what: &str) -> Result<Option<Vec<String>>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned).ok_or_else(|| bad(format!("{what} must be a list of strings"))))
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(bad(format!("{what} must be a list of strings"))),
    }
}

impl Homeserver {
    /// `POST /search?next_batch=`.
    pub async fn search(&self, me: &Requester, body: &Map<String, Value>, next_batch: Option<&str>) -> Result<Value> {
        if me.is_guest {
            return Err(crate::rooms::guest_forbidden());
        }
        let categories = match body.get("search_categories") {
            Some(Value::Object(c)) => c,
            _ => return Err(bad("search_categories must be an object")),
        };
        let Some(criteria) = categories.get("room_events") else {
            return Ok(json!({"search_categories": {}}));
        };
        let criteria = criteria.as_object().ok_or_else(|| bad("room_events must be an object"))?;
        let term = match criteria.get("search_term") {
            Some(Value::String(t)) => t,
            None => return Err(Error::new(ErrorKind::MissingParam, "Missing search_term")),
            Some(_) => return Err(bad("search_term must be a string")),
        };
        let keys = strings(criteria.get("keys"), "keys")?
            .unwrap_or_else(|| SEARCH_KEYS.iter().map(|k| k.to_string()).collect());
        if let Some(k) = keys.iter().find(|k| !SEARCH_KEYS.contains(&k.as_str())) {
            return Err(Error::invalid_param(format!("Unknown search key {k}")));
        }
        let newest_first = match criteria.get("order_by").and_then(Value::as_str) {
            None | Some("rank") => false,
            Some("recent") => true,
            Some(other) => return Err(Error::invalid_param(format!("Unknown order_by {other}"))),
        };
        let empty = Map::new();
        let filter = match criteria.get("filter") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(f)) => f,
            Some(_) => return Err(bad("filter must be an object")),
        };
        let limit = limit_field(filter, "limit", 10, 100)?.max(1);
        let only: Option<HashSet<String>> =
            strings(filter.get("rooms"), "filter.rooms")?.map(|r| r.into_iter().collect());
        let not: HashSet<String> =
            strings(filter.get("not_rooms"), "filter.not_rooms")?.unwrap_or_default().into_iter().collect();
        let context = match criteria.get("event_context") {
            None | Some(Value::Null) => None,
            Some(Value::Object(c)) => Some((
                limit_field(c, "before_limit", 5, 100)?,
                limit_field(c, "after_limit", 5, 100)?,
                c.get("include_profile").and_then(Value::as_bool).unwrap_or(false),
            )),
            Some(_) => return Err(bad("event_context must be an object")),
        };
        let offset = match next_batch {
            Some(t) => t.parse::<usize>().map_err(|_| Error::invalid_param("Invalid next_batch"))?,
            None => 0,
        };

        let u = me.user_id.to_string();
        let rooms: Vec<String> = self
            .db(move |s| s.rooms_for_user(&u, "join"))
            .await?
            .into_iter()
            .filter(|r| only.as_ref().is_none_or(|o| o.contains(r)) && !not.contains(r))
            .collect();
        let words: Vec<String> = term.split_whitespace().map(str::to_owned).collect();
        let (w, k) = (words.clone(), keys.clone());
        let (count, hits) = self.db(move |s| s.search_events(&rooms, &w, &k, newest_first, offset, limit)).await?;

        let mut results = Vec::new();
        for hit in &hits {
            let id = hit.event_id.clone();
            let Some(row) = self.db(move |s| s.get_event(&id)).await? else { continue };
            // Only what the history visibility lets this member see (the count stays the
            // index's estimate, as on Synapse).
            let reader = crate::visibility::Reader::MEMBER;
            let Some(row) = self.visible_events(me.user_id.as_str(), reader, vec![row]).await?.0.pop() else {
                continue;
            };
            let mut event = [client_event_from_str(&row.json)];
            self.add_memberships(me.user_id.as_str(), &[row.state_group], &mut event).await?;
            self.complete_unsigned(&mut event).await?;
            let [event] = event;
            let mut result = json!({"rank": hit.rank, "result": event});
            if let Some((before, after, profiles)) = context {
                result["context"] =
                    self.search_context(me, &hit.room_id, row.stream_ordering, before, after, profiles).await?;
            }
            results.push(result);
        }
        let mut room_events = json!({"count": count, "results": results, "highlights": words});
        if offset + hits.len() < count {
            room_events["next_batch"] = json!((offset + hits.len()).to_string());
        }
        Ok(json!({"search_categories": {"room_events": room_events}}))
    }

    async fn search_context(
        &self,
        me: &Requester,
        room: &str,
        position: i64,
        before: usize,
        after: usize,
        profiles: bool,
    ) -> Result<Value> {
        let from = format!("t{position}");
        let page = |backwards, limit| Pagination { from: Some(&from), to: None, backwards, limit, filter: None };
        let (events_before, start) = if before > 0 {
            let p = self.messages(me, room, page(true, before)).await?;
            (p.chunk, p.end.unwrap_or_else(|| from.clone()))
        } else {
            (Vec::new(), from.clone())
        };
        let (events_after, end) = if after > 0 {
            let p = self.messages(me, room, page(false, after)).await?;
            (p.chunk, p.end.unwrap_or_else(|| from.clone()))
        } else {
            (Vec::new(), from.clone())
        };
        let mut context =
            json!({"events_before": events_before, "events_after": events_after, "start": start, "end": end});
        if profiles {
            let senders: HashSet<String> = events_before
                .iter()
                .chain(events_after.iter())
                .filter_map(|e| e["sender"].as_str().map(str::to_owned))
                .collect();
            let mut info = Map::new();
            for sender in senders {
                let (displayname, avatar_url) = self.profile_of(&sender).await?;
                info.insert(sender, json!({"displayname": displayname, "avatar_url": avatar_url}));
            }
            context["profile_info"] = Value::Object(info);
        }
        Ok(context)
    }
}
