//! Reading rooms: state, members, single events, `/messages`, `/context`.

use std::collections::HashSet;

use super::*;

impl Homeserver {
    /// The client-format events of a room's current state; the user must be joined.
    pub async fn room_state(&self, requester: &Requester, room_id: &str) -> Result<Vec<Value>> {
        let room_id = parse_room_id(room_id)?;
        let state = self.readable_state(&room_id, requester.user_id.as_str()).await?;
        self.client_events(state.into_values().collect()).await
    }

    /// The stored events of `ids`, in order; unknown ones are left out.
    pub(crate) async fn event_rows(&self, ids: Vec<String>) -> Result<Vec<myelin_storage::EventRow>> {
        self.db(move |s| {
            let mut out = Vec::new();
            for id in ids {
                out.extend(s.get_event(&id)?);
            }
            Ok(out)
        })
        .await
    }

    /// Whether an event of that ID is stored in that room.
    pub(crate) async fn event_exists_in(&self, room_id: &str, event_id: &str) -> Result<bool> {
        let id = event_id.to_owned();
        let row = self.db(move |s| s.get_event(&id)).await?;
        Ok(row.is_some_and(|r| {
            serde_json::from_str::<Value>(&r.json).is_ok_and(|v| v["room_id"].as_str() == Some(room_id))
        }))
    }

    /// The room state `user` may read: the current state for members and peekers of a
    /// world-readable room, the state at their leave for those who left or were banned.
    pub(crate) async fn readable_state(
        &self,
        room_id: &RoomId,
        user: &str,
    ) -> Result<HashMap<(String, String), String>> {
        let reader = self.reader(room_id, user).await?;
        if reader.until == i64::MAX {
            let state = self.current_state(room_id).await?.unwrap_or_default();
            return Ok(state.iter().map(|(k, v)| (k.clone(), v.to_string())).collect());
        }
        let r = room_id.to_string();
        self.db(move |s| {
            Ok(match s.state_group_at(&r, reader.until)? {
                Some(g) => {
                    s.get_state_group(g)?.into_iter().map(|e| ((e.event_type, e.state_key), e.event_id)).collect()
                }
                None => HashMap::new(),
            })
        })
        .await
    }

    /// One state event's content.
    /// `GET /rooms/{roomId}/state/{type}/{key}`: the content, or with `whole_event`
    /// (`?format=event`) the client-format event.
    pub async fn room_state_event(
        &self,
        requester: &Requester,
        room_id: &str,
        kind: &str,
        key: &str,
        whole_event: bool,
    ) -> Result<Value> {
        let room_id = parse_room_id(room_id)?;
        let state = self.readable_state(&room_id, requester.user_id.as_str()).await?;
        let Some(id) = state.get(&(kind.to_owned(), key.to_owned())) else {
            return Err(Error::not_found("Event not found."));
        };
        if whole_event {
            return self
                .client_events(vec![id.to_string()])
                .await?
                .pop()
                .ok_or_else(|| Error::not_found("Event not found."));
        }
        match self.load_events(vec![id.clone()]).await?.values().next() {
            Some(pdu) => Ok(Value::Object(pdu.content_map())),
            None => Err(Error::not_found("Event not found.")),
        }
    }

    /// Client-format events by ID, in the given order, skipping unknown ones.
    pub(crate) async fn client_events(&self, ids: Vec<String>) -> Result<Vec<Value>> {
        self.db(move |s| {
            let mut out = Vec::new();
            for id in ids {
                if let Some(row) = s.get_event(&id)? {
                    out.push(client_event_from_str(&row.json));
                }
            }
            crate::unsigned::stamp_age(&mut out);
            Ok(out)
        })
        .await
    }

    /// `GET /rooms/{roomId}/event/{eventId}`.
    pub async fn get_room_event(&self, requester: &Requester, room_id: &str, event_id: &str) -> Result<Value> {
        let room_id = parse_room_id(room_id)?;
        let id = event_id.to_owned();
        let row = self.db(move |s| s.get_event(&id)).await?;
        let not_found = || Error::not_found("Event not found.");
        let Some(row) = row else { return Err(not_found()) };
        let v: Value = serde_json::from_str(&row.json).map_err(Error::internal)?;
        if v["room_id"] != json!(room_id) {
            return Err(not_found());
        }
        let user = requester.user_id.as_str();
        let reader = self.event_reader(&room_id, user).await?;
        // As filtered: an erased sender's event may come back redacted.
        let Some(row) = self.visible_events(user, reader, vec![row]).await?.0.pop() else {
            return Err(not_found());
        };
        let v: Value = serde_json::from_str(&row.json).map_err(Error::internal)?;
        let mut event = [client_event(&v)];
        self.add_memberships(user, &[row.state_group], &mut event).await?;
        self.bundle_aggregations(user, reader, &mut event).await?;
        self.complete_unsigned(&mut event).await?;
        self.add_transaction_ids(requester, &mut event).await?;
        let [event] = event;
        Ok(event)
    }

    /// `GET /events/{eventId}` (deprecated, still served by Synapse): the event by its ID
    /// alone, under the same rules as [`Self::get_room_event`].
    pub async fn get_event_by_id(&self, requester: &Requester, event_id: &str) -> Result<Value> {
        let id = event_id.to_owned();
        let room = self
            .db(move |s| s.get_event(&id))
            .await?
            .and_then(|row| serde_json::from_str::<Value>(&row.json).ok())
            .and_then(|v| v["room_id"].as_str().map(str::to_owned))
            .ok_or_else(|| Error::not_found("Event not found."))?;
        self.get_room_event(requester, &room, event_id).await
    }

    /// `GET /joined_rooms`.
    pub async fn joined_rooms(&self, requester: &Requester) -> Result<Vec<String>> {
        let user = requester.user_id.to_string();
        self.db(move |s| s.rooms_for_user(&user, "join")).await
    }

    /// `GET /_matrix/client/v1/mutual_rooms?user_id=`: the rooms both the requester and
    /// `user_ids` (one, given once) are joined to, sorted, a hundred at a time, as Synapse
    /// answers (the `from` token is the last room ID sent, URL-safe base64).
    pub async fn mutual_rooms(&self, requester: &Requester, user_ids: &[String], from: &[String]) -> Result<Value> {
        use base64::Engine;
        const BATCH: usize = 100;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let after = match from {
            [] => None,
            [token] if token.is_empty() => None,
            [token] => Some(
                b64.decode(token)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| Error::invalid_param("Malformed from token"))?,
            ),
            _ => return Err(Error::invalid_param("Duplicate from query parameter")),
        };
        let other = match user_ids {
            [] => return Err(Error::new(ErrorKind::MissingParam, "Missing string query parameter 'user_id'")),
            [one] => one,
            _ => return Err(Error::invalid_param("Duplicate user_id query parameter")),
        };
        if ruma::UserId::parse(other.as_str()).is_err() {
            return Err(Error::invalid_param("Invalid user_id query parameter"));
        }
        if other == requester.user_id.as_str() {
            return Err(Error::invalid_param("You cannot request a list of shared rooms with yourself"));
        }
        let (me, them) = (requester.user_id.to_string(), other.clone());
        let (mine, theirs) =
            self.db(move |s| Ok((s.rooms_for_user(&me, "join")?, s.rooms_for_user(&them, "join")?))).await?;
        let theirs: std::collections::HashSet<String> = theirs.into_iter().collect();
        let mut rooms: Vec<String> = mine.into_iter().filter(|r| theirs.contains(r)).collect();
        rooms.sort();
        let count = rooms.len();
        if let Some(after) = after {
            rooms.retain(|r| *r > after);
        }
        if rooms.len() <= BATCH {
            return Ok(json!({"joined": rooms, "count": count}));
        }
        rooms.truncate(BATCH);
        let mut next = b64.encode(rooms[BATCH - 1].as_bytes());
        next.truncate(255);
        Ok(json!({"joined": rooms, "count": count, "next_batch": next}))
    }

    /// `GET /members`: member events, filtered by membership.
    pub async fn room_members(
        &self,
        requester: &Requester,
        room_id: &str,
        at: Option<&str>,
        membership: Option<&str>,
        not_membership: Option<&str>,
    ) -> Result<Vec<Value>> {
        let room_id = parse_room_id(room_id)?;
        // Only for those who may read the room; a former member no later than their leave.
        let reader = self.reader(&room_id, requester.user_id.as_str()).await?;
        let ids: Vec<String> = match at {
            // Members as of a sync or pagination token: the state after the last event before it.
            Some(token) => {
                let pos = parse_token(token).ok_or_else(|| Error::invalid_param(format!("Invalid token {token}")))?;
                let pos = if token.starts_with('t') { pos - 1 } else { pos };
                let pos = pos.min(reader.until);
                let r = room_id.to_string();
                self.db(move |s| {
                    Ok(match s.state_group_at(&r, pos)? {
                        Some(g) => s
                            .get_state_group(g)?
                            .into_iter()
                            .filter(|e| e.event_type == "m.room.member")
                            .map(|e| e.event_id)
                            .collect(),
                        None => Vec::new(),
                    })
                })
                .await?
            }
            // Members now, or as at the leave of one who left.
            None => {
                let state = self.readable_state(&room_id, requester.user_id.as_str()).await?;
                state.into_iter().filter(|((t, _), _)| t == "m.room.member").map(|(_, e)| e).collect()
            }
        };
        let events = self.client_events(ids).await?;
        Ok(events
            .into_iter()
            .filter(|e| {
                let m = e["content"]["membership"].as_str();
                membership.is_none_or(|want| m == Some(want)) && not_membership.is_none_or(|not| m != Some(not))
            })
            .collect())
    }

    /// `GET /joined_members`: `user_id -> {display_name, avatar_url}`.
    pub async fn joined_members(&self, requester: &Requester, room_id: &str) -> Result<Map<String, Value>> {
        let members = self.room_members(requester, room_id, None, Some("join"), None).await?;
        Ok(members
            .into_iter()
            .map(|e| {
                let key = e["state_key"].as_str().unwrap_or_default().to_owned();
                let mut member = Map::new();
                for (field, source) in [("display_name", "displayname"), ("avatar_url", "avatar_url")] {
                    if let Some(v) = e["content"].get(source).filter(|v| v.is_string()) {
                        member.insert(field.to_owned(), v.clone());
                    }
                }
                (key, Value::Object(member))
            })
            .collect())
    }

    /// `GET /messages`.
    pub async fn messages(&self, requester: &Requester, room_id: &str, page: Pagination<'_>) -> Result<MessagesPage> {
        let room_id = parse_room_id(room_id)?;
        // A user who left sees history up to their leave; a non-member may peek into a
        // world-readable room; each event is then filtered by its history visibility.
        let reader = self.reader(&room_id, requester.user_id.as_str()).await?;
        let mut page = self.page_events(requester.user_id.as_str(), &room_id, reader, page).await?;
        self.add_transaction_ids(requester, &mut page.chunk).await?;
        Ok(page)
    }

    /// A page of the room's events as `reader` may see them.
    pub(crate) async fn page_events(
        &self,
        user: &str,
        room_id: &RoomId,
        reader: crate::visibility::Reader,
        page: Pagination<'_>,
    ) -> Result<MessagesPage> {
        let Pagination { from, to, backwards, limit, filter } = page;
        let max = *self.sync.stream.borrow();
        // Backwards pagination of one who left starts at their leave (as on Synapse); later
        // events are otherwise left to the visibility filter, which shows them only when
        // world-readable.
        let visible_until = reader.until.min(max);
        let parse = |t: &str| parse_page_token(t).ok_or_else(|| Error::invalid_param(format!("Invalid token {t}")));
        // A `t<N>` token names an event already returned (exclusive); a sync token `s<N>` means
        // "everything up to N was delivered", so paginating backwards from it includes N.
        let from_pos = match from {
            Some(t) if t.starts_with('s') && backwards => parse(t)? + 1,
            Some(t) => parse(t)?,
            None if backwards => max + 1,
            None => 0,
        };
        let to_pos = to.map(parse).transpose()?;
        let limit = limit.clamp(1, 1000);
        let rid = room_id.to_string();
        let rows = if backwards {
            // Backfilled history lies below zero.
            let lower = to_pos.unwrap_or(i64::MIN);
            let upper = (from_pos - 1).min(visible_until);
            let read =
                |rid: String| move |s: &dyn myelin_storage::Storage| s.room_events(&rid, lower, upper, true, limit);
            let rows = self.db(read(rid.clone())).await?;
            // At the start of what this server has of a room it joined over federation: the
            // history before comes from a server in the room.
            if rows.len() < limit && to_pos.is_none() && self.backfill(room_id, limit).await.unwrap_or(false) {
                self.db(read(rid.clone())).await?
            } else {
                rows
            }
        } else {
            let upper = to_pos.unwrap_or(i64::MAX).min(max);
            self.db(move |s| s.room_events(&rid, from_pos, upper, false, limit)).await?
        };
        // As Synapse: `end` whenever the page read any event (a page at the room's edge says so
        // by coming back empty next time), none when there was nothing left to read.
        let end = rows.last().map(|r| format!("t{}", r.stream_ordering));
        // The filters apply to the page read, so a filtered page may hold fewer than `limit`
        // events while `end` still points further; the spec allows that.
        let (rows, _) = self.visible_events(user, reader, rows).await?;
        let mut chunk: Vec<Value> = Vec::with_capacity(rows.len());
        let mut groups = Vec::with_capacity(rows.len());
        // The state at the page's first event answers lazy loading (as Synapse).
        let mut first_group = None;
        for row in &rows {
            let event = client_event_from_str(&row.json);
            if filter.is_none_or(|f| f.matches(&event)) {
                first_group.get_or_insert(row.state_group);
                chunk.push(event);
                groups.push(row.state_group);
            }
        }
        self.add_memberships(user, &groups, &mut chunk).await?;
        let state = match (filter.is_some_and(|f| f.lazy_load_members), first_group) {
            (true, Some(group)) => {
                let senders = chunk.iter().filter_map(|e| e["sender"].as_str().map(str::to_owned)).collect();
                self.members_at(group, senders).await?
            }
            _ => Vec::new(),
        };
        self.bundle_aggregations(user, reader, &mut chunk).await?;
        self.complete_unsigned(&mut chunk).await?;
        Ok(MessagesPage { chunk, start: from.map(str::to_owned).unwrap_or_else(|| format!("t{from_pos}")), end, state })
    }

    /// The membership events of `users` in a state group (lazy-loaded members), as client
    /// events; none for an event without state (an outlier).
    pub(crate) async fn members_at(&self, group: Option<i64>, users: HashSet<String>) -> Result<Vec<Value>> {
        let Some(group) = group else { return Ok(Vec::new()) };
        let ids = self
            .db(move |s| {
                let mut ids = Vec::new();
                for user in users {
                    if let Some(id) = s.state_group_entry(group, "m.room.member", &user)? {
                        ids.push(id);
                    }
                }
                Ok(ids)
            })
            .await?;
        self.client_events(ids).await
    }

    /// `GET /context/{eventId}`.
    pub async fn context(
        &self,
        requester: &Requester,
        room_id: &str,
        event_id: &str,
        limit: usize,
        filter: Option<&EventFilter>,
    ) -> Result<Value> {
        // An event the user may not see is a 403 here (a 404 through `/event`), as on Synapse.
        let event = match self.get_room_event(requester, room_id, event_id).await {
            Err(e) if e.kind == ErrorKind::NotFound && self.event_exists_in(room_id, event_id).await? => {
                return Err(Error::forbidden("You don't have permission to access that event."));
            }
            other => other?,
        };
        let id = event_id.to_owned();
        let pos =
            self.db(move |s| s.stream_of_event(&id)).await?.ok_or_else(|| Error::not_found("Event not found."))?;
        // Split as Synapse does: the smaller half before (none for a limit of 1 or 0).
        let limit = limit.min(100);
        let (before_limit, after_limit) = (limit / 2, limit - limit / 2);
        let rid = parse_room_id(room_id)?;
        let user = requester.user_id.as_str();
        let reader = self.event_reader(&rid, user).await?;
        let from = format!("t{pos}");
        // The filter applies to the events around, not to the event asked for (Synapse).
        let page = |backwards, limit| Pagination { from: Some(&from), to: None, backwards, limit, filter };
        // Nothing asked for on a side: its token continues from the event itself.
        let empty =
            || MessagesPage { chunk: Vec::new(), start: from.clone(), end: Some(from.clone()), state: Vec::new() };
        let mut before = match before_limit {
            0 => empty(),
            n => self.page_events(user, &rid, reader, page(true, n)).await?,
        };
        let mut after = match after_limit {
            0 => empty(),
            n => self.page_events(user, &rid, reader, page(false, n)).await?,
        };
        self.add_transaction_ids(requester, &mut before.chunk).await?;
        self.add_transaction_ids(requester, &mut after.chunk).await?;
        // The state the user may read (none for those who may not read the room as a whole);
        // with lazy loading, the memberships of the senders of every event returned, as of
        // the event asked for.
        let state = if filter.is_some_and(|f| f.lazy_load_members) {
            let senders: HashSet<String> = [&event]
                .into_iter()
                .chain(&before.chunk)
                .chain(&after.chunk)
                .filter_map(|e| e["sender"].as_str().map(str::to_owned))
                .collect();
            let id = event_id.to_owned();
            let group = self.db(move |s| s.get_event(&id)).await?.and_then(|row| row.state_group);
            self.members_at(group, senders).await?
        } else {
            self.room_state(requester, room_id).await.unwrap_or_default()
        };
        Ok(json!({
            "event": event,
            "events_before": before.chunk,
            "events_after": after.chunk,
            "start": before.end.unwrap_or_else(|| format!("t{pos}")),
            "end": after.end.unwrap_or_else(|| format!("t{}", *self.sync.stream.borrow())),
            "state": state,
        }))
    }

    /// `ModuleApi.get_room_state`: the current state events, no membership check.
    pub(crate) async fn module_room_state(&self, room_id: &str) -> Result<Vec<EventView>> {
        let room_id = parse_room_id(room_id)?;
        let state = self.current_state(&room_id).await?.ok_or_else(|| Error::not_found("Unknown room"))?;
        self.state_views(&state).await
    }
}
