//! Who may see which events: the spec's history-visibility rules, as Synapse applies them
//! (`synapse/visibility.py`). Every read path that hands events to a client goes through
//! [`Homeserver::visible_events`] (with the [`Reader`] from [`Homeserver::reader`]), and every
//! path that hands them to another server through [`Homeserver::visible_to_server`].
//!
//! For a client, an event is decided by the room state *after* it: the room's
//! `m.room.history_visibility` then, and the user's membership then.
//! - `world_readable`: everyone sees it, members or not.
//! - `shared`: every member sees it (a user who left sees what came before the leave); a
//!   non-member peeking does not.
//! - `invited`: users joined, or invited, at that point.
//! - `joined`: users joined at that point.
//!
//! A user who left or was banned reads the room up to their leave and no further, whatever the
//! visibility (the spec's "up to the point they left"). A user's own membership events are
//! always theirs to see. Rejected and soft-failed events are never shown.
//!
//! For a server, an event is visible when one of its users could see it (`shared` and
//! `world_readable` events always, `invited`/`joined` ones when a user of that server was
//! invited/joined at that point); otherwise it is sent redacted, so the room's graph stays
//! whole without revealing content.

use std::collections::HashMap;

use myelin_storage::EventRow;
use ruma::RoomId;
use serde_json::Value;

use crate::{Error, Homeserver, Result};

/// `m.room.history_visibility`, ordered from most to least open (Synapse's priority order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum HistoryVisibility {
    WorldReadable,
    Shared,
    Invited,
    Joined,
}

impl HistoryVisibility {
    /// The value of an event's content; missing or unknown values mean `shared`.
    pub(crate) fn from_content(content: &Value) -> Self {
        match content.get("history_visibility").and_then(Value::as_str) {
            Some("world_readable") => HistoryVisibility::WorldReadable,
            Some("invited") => HistoryVisibility::Invited,
            Some("joined") => HistoryVisibility::Joined,
            _ => HistoryVisibility::Shared,
        }
    }
}

/// How a user stands when reading a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reader {
    /// Events after this stream position are hidden: where the user left (or `i64::MAX`).
    pub until: i64,
    /// Not a member at all, reading a `world_readable` room.
    pub peeking: bool,
    /// A server admin reading through the admin API: history visibility does not apply
    /// (Synapse's `use_admin_priviledge`); rejected and soft-failed events stay hidden.
    pub sees_everything: bool,
}

impl Reader {
    /// A member of the room now.
    pub(crate) const MEMBER: Reader = Reader { until: i64::MAX, peeking: false, sees_everything: false };
    /// A server admin through the admin API.
    pub(crate) const ADMIN: Reader = Reader { until: i64::MAX, peeking: false, sees_everything: true };
}

/// The facts about one state group that decide visibility for one user.
#[derive(Debug, Clone)]
struct GroupFacts {
    visibility: HistoryVisibility,
    membership: Option<String>,
}

/// Whether a client may see an event, given the facts of the state after it.
fn client_may_see(facts: &GroupFacts, reader: Reader) -> bool {
    match facts.visibility {
        HistoryVisibility::WorldReadable => true,
        HistoryVisibility::Shared if !reader.peeking => true,
        _ if facts.membership.as_deref() == Some("join") => true,
        HistoryVisibility::Invited => facts.membership.as_deref() == Some("invite"),
        _ => false,
    }
}

/// The fields of a stored event the decision reads.
struct Head {
    kind: String,
    state_key: Option<String>,
    room_id: String,
    sender: String,
}

fn head(json: &str) -> Option<Head> {
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(rename = "type")]
        kind: String,
        state_key: Option<String>,
        #[serde(default)]
        room_id: String,
        #[serde(default)]
        sender: String,
    }
    let raw: Raw = serde_json::from_str(json).ok()?;
    Some(Head { kind: raw.kind, state_key: raw.state_key, room_id: raw.room_id, sender: raw.sender })
}

impl Homeserver {
    /// How `user` may read `room_id`: as a member, as a former member (up to their leave), or
    /// peeking into a `world_readable` room; 403 otherwise.
    ///
    /// As on Synapse, a banned user may not read the room this way (unless it is world-readable,
    /// when they read it as anyone may); see [`Homeserver::event_reader`] for single events.
    pub(crate) async fn reader(&self, room_id: &RoomId, user: &str) -> Result<Reader> {
        match self.membership_of(room_id, user).await?.as_deref() {
            Some("join") => Ok(Reader::MEMBER),
            Some("leave") => {
                Ok(Reader { until: self.left_at(room_id, user).await?, peeking: false, sees_everything: false })
            }
            _ if self.current_visibility(room_id).await? == HistoryVisibility::WorldReadable => {
                Ok(Reader { until: i64::MAX, peeking: true, sees_everything: false })
            }
            _ => Err(Error::forbidden(format!("User {user} not in room {room_id}, and room previews are disabled"))),
        }
    }

    /// How `user` may fetch single events of `room_id` (`/event`, `/context`): as
    /// [`Homeserver::reader`], except that nobody is refused outright: a banned user sees up to
    /// the ban, and anyone else is judged as a non-member (so an invitee sees what `invited`
    /// visibility shows them), as on Synapse.
    pub(crate) async fn event_reader(&self, room_id: &RoomId, user: &str) -> Result<Reader> {
        match self.membership_of(room_id, user).await?.as_deref() {
            Some("join") => Ok(Reader::MEMBER),
            Some("leave") | Some("ban") => {
                Ok(Reader { until: self.left_at(room_id, user).await?, peeking: false, sees_everything: false })
            }
            _ => Ok(Reader { until: i64::MAX, peeking: true, sees_everything: false }),
        }
    }

    /// The stream position of `user`'s latest membership change in `room_id`.
    async fn left_at(&self, room_id: &RoomId, user: &str) -> Result<i64> {
        let (rid, u) = (room_id.to_string(), user.to_owned());
        Ok(self
            .db(move |s| {
                Ok(s.membership_changes(&u, 0, i64::MAX)?
                    .into_iter()
                    .filter(|(r, _, _)| *r == rid)
                    .map(|(_, _, pos)| pos)
                    .max())
            })
            .await?
            .unwrap_or(0))
    }

    /// The room's history visibility now.
    pub(crate) async fn current_visibility(&self, room_id: &RoomId) -> Result<HistoryVisibility> {
        Ok(self
            .state_content(room_id, "m.room.history_visibility", "")
            .await?
            .map(|c| HistoryVisibility::from_content(&Value::Object(c)))
            .unwrap_or(HistoryVisibility::Shared))
    }

    /// `user`'s membership in a state group (`leave` without one), for MSC4115's
    /// `unsigned.membership`; an event without state (an outlier) is the user's own invite.
    pub(crate) async fn membership_in_group(&self, group: Option<i64>, user: &str) -> Result<String> {
        let Some(group) = group else { return Ok("invite".to_owned()) };
        let content = self.group_state_content(group, "m.room.member", user).await?;
        Ok(content.and_then(|c| c.get("membership")?.as_str().map(str::to_owned)).unwrap_or_else(|| "leave".into()))
    }

    /// The content of the state event a state group holds for `(kind, key)`.
    async fn group_state_content(&self, group: i64, kind: &'static str, key: &str) -> Result<Option<Value>> {
        let key = key.to_owned();
        let Some(id) = self.db(move |s| s.state_group_entry(group, kind, &key)).await? else { return Ok(None) };
        let events = self.load_events(vec![id]).await?;
        Ok(events.values().next().and_then(|pdu| serde_json::from_str(pdu.content.get()).ok()))
    }

    /// A state group's history visibility (cached: state groups never change).
    async fn group_visibility(&self, group: i64) -> Result<HistoryVisibility> {
        if let Some(known) = self.rooms.visibility_cache.lock().unwrap_or_else(|p| p.into_inner()).get(&group).copied()
        {
            return Ok(known);
        }
        let visibility = self
            .group_state_content(group, "m.room.history_visibility", "")
            .await?
            .map(|c| HistoryVisibility::from_content(&c))
            .unwrap_or(HistoryVisibility::Shared);
        self.cache_group_visibility(group, visibility);
        Ok(visibility)
    }

    fn cache_group_visibility(&self, group: i64, visibility: HistoryVisibility) {
        self.rooms.visibility_cache.lock().unwrap_or_else(|p| p.into_inner()).insert(group, visibility);
    }

    /// Remembers the history visibility of a state group just written, from the room state it
    /// holds (best effort: a failure only leaves it to be read later).
    pub(crate) async fn remember_group_visibility(
        &self,
        group: i64,
        state: &HashMap<(String, String), ruma::OwnedEventId>,
    ) {
        let visibility = match state.get(&("m.room.history_visibility".to_owned(), String::new())) {
            None => HistoryVisibility::Shared,
            Some(id) => match self.load_events(vec![id.to_string()]).await {
                Ok(events) => events
                    .values()
                    .next()
                    .and_then(|pdu| serde_json::from_str::<Value>(pdu.content.get()).ok())
                    .map(|c| HistoryVisibility::from_content(&c))
                    .unwrap_or(HistoryVisibility::Shared),
                Err(_) => return,
            },
        };
        self.cache_group_visibility(group, visibility);
    }

    /// The visibility and `user`'s membership in a state group; the membership is read only
    /// when the visibility leaves the decision to it.
    async fn group_facts(&self, group: i64, user: &str, reader: Reader) -> Result<GroupFacts> {
        let visibility = self.group_visibility(group).await?;
        let decided = visibility == HistoryVisibility::WorldReadable
            || (visibility == HistoryVisibility::Shared && !reader.peeking);
        let membership = if decided {
            None
        } else {
            self.group_state_content(group, "m.room.member", user)
                .await?
                .and_then(|c| c.get("membership")?.as_str().map(str::to_owned))
        };
        Ok(GroupFacts { visibility, membership })
    }

    /// For an `m.room.history_visibility` event: the facts to judge it by when the visibility
    /// before it was more open than the one it sets (`None` otherwise).
    async fn facts_before_visibility_change(
        &self,
        room_id: &str,
        row: &EventRow,
        group: i64,
        user: &str,
        after: &GroupFacts,
    ) -> Result<Option<GroupFacts>> {
        let (r, before) = (room_id.to_owned(), row.stream_ordering - 1);
        let Some(previous_group) = self.db(move |s| s.state_group_at(&r, before)).await? else { return Ok(None) };
        let previous = self.group_visibility(previous_group).await?;
        if previous >= after.visibility {
            return Ok(None);
        }
        let membership = match &after.membership {
            Some(known) => Some(known.clone()),
            None => self
                .group_state_content(group, "m.room.member", user)
                .await?
                .and_then(|c| c.get("membership")?.as_str().map(str::to_owned)),
        };
        Ok(Some(GroupFacts { visibility: previous, membership }))
    }

    /// The events of `rows` that `user`, reading as `reader`, may see, in order; and whether
    /// the answer is the same for every member of the room now (every event's visibility was
    /// `shared` or `world_readable`), which lets `/sync` share one cached copy.
    pub(crate) async fn visible_events(
        &self,
        user: &str,
        reader: Reader,
        rows: Vec<EventRow>,
    ) -> Result<(Vec<EventRow>, bool)> {
        if reader.sees_everything {
            return Ok((rows.into_iter().filter(|r| !r.rejected && !r.soft_failed).collect(), false));
        }
        let mut facts: HashMap<i64, GroupFacts> = HashMap::new();
        let ignored = self.ignored_users(user).await?;
        let erased = self.erased_users().await?;
        let mut rules = HashMap::new();
        // Leaving out what this user ignores makes the answer theirs alone.
        let mut same_for_members = ignored.is_empty();
        let mut kept = Vec::with_capacity(rows.len());
        for row in rows {
            if row.rejected || row.soft_failed {
                same_for_members = false;
                continue;
            }
            let Some(head) = head(&row.json) else { continue };
            if head.state_key.is_none() && ignored.contains(&head.sender) {
                continue;
            }
            let own_membership = head.kind == "m.room.member" && head.state_key.as_deref() == Some(user);
            let Some(group) = row.state_group else {
                // An outlier: only the user's own membership (an invite from another server).
                if own_membership {
                    kept.push(row);
                }
                same_for_members = false;
                continue;
            };
            let group_facts = match facts.entry(group) {
                std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(self.group_facts(group, user, reader).await?)
                }
            };
            same_for_members &= group_facts.visibility <= HistoryVisibility::Shared;
            // A change of history visibility is judged by the more open of the visibilities
            // before and after it (Synapse): members who could see the room's history see it
            // being closed.
            let change_facts = if head.kind == "m.room.history_visibility" && head.state_key.as_deref() == Some("") {
                self.facts_before_visibility_change(&head.room_id, &row, group, user, group_facts).await?
            } else {
                None
            };
            let facts = change_facts.as_ref().unwrap_or(group_facts);
            // After their leave a user sees only what anyone may.
            let after_leave =
                row.stream_ordering > reader.until && facts.visibility != HistoryVisibility::WorldReadable;
            if !after_leave && (own_membership || client_may_see(facts, reader)) {
                // An erased user's events are whole only for those in the room when they were
                // sent (Synapse); anyone else sees them redacted.
                let mut row = row;
                if erased.contains(&head.sender) {
                    // Whole for some members and redacted for others: not an answer to share.
                    same_for_members = false;
                    // (The membership is read only when the visibility did not decide alone.)
                    let was_member = match &facts.membership {
                        Some(membership) => membership == "join",
                        None => self
                            .group_state_content(group, "m.room.member", user)
                            .await?
                            .is_some_and(|c| c.get("membership").and_then(Value::as_str) == Some("join")),
                    };
                    if !was_member {
                        row.json = self.redacted_row(&mut rules, &head.room_id, &row.json).await?;
                    }
                }
                kept.push(row);
            }
        }
        Ok((kept, same_for_members))
    }

    /// [`Homeserver::visible_events`] for a `/sync` timeline of `room`: as Synapse's, state
    /// events that are part of the room's current state stay even when sent while the user
    /// could not see the room (a join while they were away, in a room whose history is for
    /// members), since the client shows that state and its timeline says how it came to be.
    pub(crate) async fn visible_timeline_events(
        &self,
        user: &str,
        reader: Reader,
        room: &str,
        rows: Vec<EventRow>,
    ) -> Result<(Vec<EventRow>, bool)> {
        #[derive(serde::Deserialize)]
        struct StateHead {
            event_id: Option<String>,
            #[serde(rename = "type")]
            kind: String,
            state_key: Option<String>,
        }
        let candidates: Vec<(i64, String, (String, String))> = rows
            .iter()
            .filter(|r| !r.rejected && !r.soft_failed && r.stream_ordering <= reader.until)
            .filter_map(|r| {
                let h: StateHead = serde_json::from_str(&r.json).ok()?;
                Some((r.stream_ordering, h.event_id?, (h.kind, h.state_key?)))
            })
            .collect();
        if candidates.is_empty() {
            return self.visible_events(user, reader, rows).await;
        }
        let room_id = RoomId::parse(room).map_err(|_| Error::invalid_param("Invalid room ID"))?;
        let current = self.current_state(&room_id).await?.unwrap_or_default();
        let always: std::collections::HashSet<i64> = candidates
            .into_iter()
            .filter(|(_, id, key)| current.get(key).is_some_and(|c| c.as_str() == id))
            .map(|(position, _, _)| position)
            .collect();
        let all = if always.is_empty() { Vec::new() } else { rows.clone() };
        let (kept, same_for_members) = self.visible_events(user, reader, rows).await?;
        if always.is_empty() {
            return Ok((kept, same_for_members));
        }
        // In order; the kept rows as filtered (an erased sender's may have been redacted).
        let shown_count = kept.len();
        let mut shown: HashMap<i64, EventRow> = kept.into_iter().map(|r| (r.stream_ordering, r)).collect();
        let merged: Vec<EventRow> = all
            .into_iter()
            .filter_map(|r| match shown.remove(&r.stream_ordering) {
                Some(kept) => Some(kept),
                None => always.contains(&r.stream_ordering).then_some(r),
            })
            .collect();
        let added = merged.len() > shown_count;
        Ok((merged, same_for_members && !added))
    }

    /// The events of `rows` as `server` may have them: whole when one of its users could see
    /// them, redacted otherwise (Synapse's `filter_events_for_server`). Rejected events are
    /// left out.
    pub(crate) async fn visible_to_server(&self, server: &str, rows: Vec<EventRow>) -> Result<Vec<String>> {
        let mut decided: HashMap<i64, bool> = HashMap::new();
        let mut rules: HashMap<String, ruma::room_version_rules::RoomVersionRules> = HashMap::new();
        let erased = self.erased_users().await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            if row.rejected {
                continue;
            }
            let visible = match row.state_group {
                None => true,
                Some(group) => match decided.get(&group) {
                    Some(v) => *v,
                    None => {
                        let v = self.server_may_see(group, server).await?;
                        decided.insert(group, v);
                        v
                    }
                },
            };
            // Other servers get an erased user's events redacted, as from Synapse.
            let head = head(&row.json);
            let sender_erased = head.as_ref().is_some_and(|h| erased.contains(&h.sender));
            if visible && !sender_erased {
                out.push(row.json);
            } else {
                let room_id = head.map(|h| h.room_id).unwrap_or_default();
                out.push(self.redacted_row(&mut rules, &room_id, &row.json).await?);
            }
        }
        Ok(out)
    }

    /// An event's JSON redacted by its room version's rules (looked up once per room).
    async fn redacted_row(
        &self,
        rules: &mut HashMap<String, ruma::room_version_rules::RoomVersionRules>,
        room_id: &str,
        json: &str,
    ) -> Result<String> {
        // Room version 12's create event names no room: its room is named after it.
        let derived;
        let room_id = if room_id.is_empty() {
            let event_id = serde_json::from_str::<Value>(json)
                .ok()
                .and_then(|v| v["event_id"].as_str().map(str::to_owned))
                .unwrap_or_default();
            derived = format!("!{}", event_id.trim_start_matches('$'));
            derived.as_str()
        } else {
            room_id
        };
        let room_rules = match rules.get(room_id) {
            Some(r) => r.clone(),
            None => {
                let id = room_id.to_owned();
                let room = self.db(move |s| s.get_room(&id)).await?;
                let r = room
                    .and_then(|r| crate::federation::rooms::rules_for(&r.room_version))
                    .ok_or_else(|| Error::internal(format!("no room version for {room_id}")))?;
                rules.insert(room_id.to_owned(), r.clone());
                r
            }
        };
        crate::events::redact_json(json, &room_rules, None)
    }

    async fn server_may_see(&self, group: i64, server: &str) -> Result<bool> {
        let state = self.db(move |s| s.get_state_group(group)).await?;
        let suffix = format!(":{server}");
        let mut ids = Vec::new();
        let mut visibility_id = None;
        for entry in &state {
            if entry.event_type == "m.room.history_visibility" && entry.state_key.is_empty() {
                visibility_id = Some(entry.event_id.clone());
            } else if entry.event_type == "m.room.member" && entry.state_key.ends_with(&suffix) {
                ids.push(entry.event_id.clone());
            }
        }
        ids.extend(visibility_id.clone());
        let events = self.load_events(ids).await?;
        let content = |id: &str| -> Option<Value> {
            let id = ruma::OwnedEventId::try_from(id).ok()?;
            serde_json::from_str(events.get(&id)?.content.get()).ok()
        };
        let visibility = visibility_id
            .as_deref()
            .and_then(content)
            .map(|c| HistoryVisibility::from_content(&c))
            .unwrap_or(HistoryVisibility::Shared);
        if visibility <= HistoryVisibility::Shared {
            return Ok(true);
        }
        let memberships: Vec<String> = state
            .iter()
            .filter(|e| e.event_type == "m.room.member" && e.state_key.ends_with(&suffix))
            .filter_map(|e| content(&e.event_id)?.get("membership")?.as_str().map(str::to_owned))
            .collect();
        Ok(memberships.iter().any(|m| m == "join")
            || (visibility == HistoryVisibility::Invited && memberships.iter().any(|m| m == "invite")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(visibility: HistoryVisibility, membership: Option<&str>) -> GroupFacts {
        GroupFacts { visibility, membership: membership.map(str::to_owned) }
    }

    #[test]
    fn the_spec_table() {
        use HistoryVisibility::*;
        let member = Reader::MEMBER;
        let peeker = Reader { until: i64::MAX, peeking: true, sees_everything: false };
        // (visibility, membership after the event, reader) -> visible
        let cases = [
            (WorldReadable, None, peeker, true),
            (Shared, None, member, true),
            (Shared, None, peeker, false),
            (Shared, Some("leave"), member, true),
            (Invited, Some("invite"), member, true),
            (Invited, None, member, false),
            (Invited, Some("join"), member, true),
            (Joined, Some("invite"), member, false),
            (Joined, Some("join"), member, true),
            (Joined, None, member, false),
            (Joined, Some("leave"), member, false),
        ];
        for (visibility, membership, reader, expected) in cases {
            assert_eq!(
                client_may_see(&facts(visibility, membership), reader),
                expected,
                "{visibility:?} {membership:?} {reader:?}"
            );
        }
    }

    #[test]
    fn unknown_values_are_shared() {
        assert_eq!(
            HistoryVisibility::from_content(&serde_json::json!({"history_visibility": "x"})),
            HistoryVisibility::Shared
        );
        assert_eq!(HistoryVisibility::from_content(&serde_json::json!({})), HistoryVisibility::Shared);
    }
}
