//! Spaces: the room hierarchy (`GET /_matrix/client/v1/rooms/{roomId}/hierarchy`) and its
//! federation half (`GET /_matrix/federation/v1/hierarchy/{roomId}`), as Synapse's room summary
//! handler answers them.
//!
//! From the requested room, rooms are walked depth first through the `m.space.child` state of
//! spaces (children with a non-empty `via` only, ordered by their `order`, then the child event's
//! timestamp, then room ID). A room is listed when the requester may see it: its join rule is
//! `public`, `knock` or `knock_restricted`, its history is world-readable, the requester is
//! joined or invited, or a restricted join rule names a room the requester is in. Rooms this
//! server is not in are asked of the servers in their `via` (the federation endpoint), and
//! listed under the same rules. Pages hold at most 50 rooms; `next_batch` names where the walk
//! stands, kept five minutes as Synapse keeps it (the rooms still to visit, those visited, the
//! summaries other servers already sent), so later pages go on from there instead of walking
//! again; it is tied to the request's room, user, `max_depth` and `suggested_only` (another
//! request's token is refused).

use std::collections::{HashMap, HashSet};

use ruma::RoomId;
use serde_json::{Map, Value, json};

use crate::server::{now_ms, url_encode};
use crate::{Error, Homeserver, Requester, Result};

/// The most rooms in one page (Synapse's `MAX_ROOMS`).
const MAX_ROOMS: usize = 50;
/// The most children of one space the federation endpoint summarises.
const MAX_ROOMS_PER_SPACE: usize = 50;
/// How many of a child's `via` servers are asked about it, one after another.
const VIA_SERVERS_ASKED: usize = 3;

/// What a hierarchy request asks for.
#[derive(Debug, Default, Clone)]
pub struct HierarchyRequest {
    /// `from`: a `next_batch` of an earlier page.
    pub from: Option<String>,
    /// `limit`: rooms per page (at most 50).
    pub limit: Option<usize>,
    /// `max_depth`: how deep below the requested room to go.
    pub max_depth: Option<usize>,
    /// `suggested_only`: only children marked `suggested`.
    pub suggested_only: bool,
}

/// Who asks: a local user, another server, or a server admin (who sees every room this server
/// is in, and none it is not).
#[derive(Clone, Copy)]
enum Asker<'a> {
    User(&'a str),
    Server(&'a str),
    Admin,
}

/// A room of the walk: its summary and its children's stripped `m.space.child` events.
struct Entry {
    summary: Map<String, Value>,
    children: Vec<Value>,
}

impl Entry {
    fn json(&self) -> Value {
        let mut out = self.summary.clone();
        out.insert("children_state".into(), Value::Array(self.children.clone()));
        Value::Object(out)
    }
}

fn pagination_error() -> Error {
    Error::invalid_param("Unknown pagination token")
}

/// The `TransientStore` kind of walks between pages.
const WALK_SESSION: &str = "hierarchy_walk";
/// How long a walk waits for its next page (Synapse's five minutes).
const WALK_SESSION_MS: i64 = 5 * 60 * 1000;

/// Where a walk stands between pages.
#[derive(serde::Serialize, serde::Deserialize)]
struct WalkState {
    /// The request it belongs to (user, room, `max_depth`, `suggested_only`).
    fingerprint: String,
    /// Rooms still to visit, the next last: `(room, via, depth)`.
    stack: Vec<(String, Vec<String>, usize)>,
    processed: HashSet<String>,
    /// Summaries of remote rooms a parent's server already sent.
    remote: HashMap<String, Map<String, Value>>,
}

impl Homeserver {
    /// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy` (see the module doc).
    pub async fn room_hierarchy(
        &self,
        requester: &Requester,
        room_id: &str,
        request: HierarchyRequest,
    ) -> Result<Value> {
        self.hierarchy_walk(requester, Asker::User(requester.user_id.as_str()), room_id, request).await
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/hierarchy`: the same walk, every room this
    /// server is in shown whatever its join rules, and nothing asked of other servers (Synapse's
    /// `omit_remote_room_hierarchy` and `admin_skip_room_visibility_check`).
    pub async fn admin_room_hierarchy(
        &self,
        requester: &Requester,
        room_id: &str,
        request: HierarchyRequest,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        self.hierarchy_walk(requester, Asker::Admin, room_id, request).await
    }

    async fn hierarchy_walk(
        &self,
        requester: &Requester,
        asker: Asker<'_>,
        room_id: &str,
        request: HierarchyRequest,
    ) -> Result<Value> {
        let user = requester.user_id.as_str();
        let root = RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
        let not_visible =
            || Error::forbidden(format!("User {user} not in room {room_id}, and room previews are disabled"));
        if !self.participates_in(&root).await? || !self.room_accessible(&root, asker).await? {
            return Err(not_visible());
        }
        let limit = request.limit.unwrap_or(MAX_ROOMS).clamp(1, MAX_ROOMS);
        // The token names how many rooms earlier pages listed, for this very request.
        let fingerprint = {
            use sha2::Digest;
            let text = format!("{user}\n{room_id}\n{:?}\n{}", request.max_depth, request.suggested_only);
            let digest = sha2::Sha256::digest(text.as_bytes());
            digest[..6].iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let state = match &request.from {
            None => WalkState {
                fingerprint: fingerprint.clone(),
                stack: vec![(room_id.to_owned(), Vec::new(), 0)],
                processed: HashSet::new(),
                remote: HashMap::new(),
            },
            Some(token) => {
                let key = token.clone();
                let stored = self.db(move |s| s.get_transient(WALK_SESSION, &key, now_ms())).await?;
                let state: WalkState =
                    stored.and_then(|v| serde_json::from_str(&v).ok()).ok_or_else(pagination_error)?;
                if state.fingerprint != fingerprint {
                    return Err(pagination_error());
                }
                state
            }
        };
        // Depth first, the next room to look at last on the stack.
        let WalkState { mut stack, mut processed, remote: mut remote_summaries, .. } = state;
        let mut rooms = Vec::new();
        while let Some((room, via, depth)) = stack.pop() {
            if rooms.len() >= limit {
                stack.push((room, via, depth));
                break;
            }
            if !processed.insert(room.clone()) {
                continue;
            }
            let Ok(rid) = RoomId::parse(&room) else { continue };
            let mut inaccessible = HashSet::new();
            let entry = if self.participates_in(&rid).await? {
                match self.room_accessible(&rid, asker).await? {
                    true => Some(self.hierarchy_entry(&rid, request.suggested_only, true).await?),
                    false => None,
                }
            } else if matches!(asker, Asker::Admin) {
                None
            } else {
                let expand = request.max_depth.is_none_or(|m| depth < m);
                let known = remote_summaries.remove(&room);
                let is_space = known.as_ref().is_some_and(|s| s.get("room_type") == Some(&json!("m.space")));
                let entry = match known {
                    Some(summary) if !is_space || !expand => Some(Entry { summary, children: Vec::new() }),
                    _ => match self.remote_hierarchy(&rid, &via, request.suggested_only).await {
                        Some((entry, children, refused)) => {
                            remote_summaries.extend(children);
                            inaccessible = refused;
                            Some(entry)
                        }
                        None => None,
                    },
                };
                match entry {
                    Some(e) if self.remote_room_visible(user, &rid, &e.summary).await? => Some(e),
                    _ => None,
                }
            };
            let Some(entry) = entry else { continue };
            if request.max_depth.is_none_or(|m| depth < m) {
                for child in entry.children.iter().rev() {
                    let (Some(id), Some(via)) = (child["state_key"].as_str(), child["content"]["via"].as_array())
                    else {
                        continue;
                    };
                    if inaccessible.contains(id) {
                        continue;
                    }
                    let via = via.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect();
                    stack.push((id.to_owned(), via, depth + 1));
                }
            }
            rooms.push(entry.json());
        }
        let mut out = json!({"rooms": rooms});
        if !stack.is_empty() {
            let token = crate::server::random_string(16);
            let state = WalkState { fingerprint, stack, processed, remote: remote_summaries };
            let (key, value) = (token.clone(), serde_json::to_string(&state).map_err(Error::internal)?);
            self.db(move |s| s.put_transient(WALK_SESSION, &key, &value, now_ms() + WALK_SESSION_MS)).await?;
            out["next_batch"] = json!(token);
        }
        Ok(out)
    }

    /// `GET /_matrix/federation/v1/hierarchy/{roomId}`: the room and its children's summaries
    /// (not theirs), for a server one of whose users may see it; children it may not see are
    /// listed as inaccessible.
    pub async fn federation_hierarchy(&self, origin: &str, room_id: &str, suggested_only: bool) -> Result<Value> {
        let unknown = || Error::not_found(format!("Unknown room: {room_id}"));
        let root = RoomId::parse(room_id).map_err(|_| unknown())?;
        self.check_server_acl(origin, &root).await?;
        if !self.participates_in(&root).await? || !self.room_accessible(&root, Asker::Server(origin)).await? {
            return Err(unknown());
        }
        let entry = self.hierarchy_entry(&root, suggested_only, true).await?;
        let mut children = Vec::new();
        let mut inaccessible = Vec::new();
        for child in entry.children.iter().take(MAX_ROOMS_PER_SPACE) {
            let Some(Ok(child_id)) = child["state_key"].as_str().map(RoomId::parse) else { continue };
            if !self.participates_in(&child_id).await? {
                continue;
            }
            if self.room_accessible(&child_id, Asker::Server(origin)).await? {
                children.push(Value::Object(self.hierarchy_entry(&child_id, suggested_only, false).await?.summary));
            } else {
                inaccessible.push(json!(child_id));
            }
        }
        Ok(json!({"room": entry.json(), "children": children, "inaccessible_children": inaccessible}))
    }

    /// Whether `asker` may see the room's summary (see the module doc; for a server: one of its
    /// users is joined or invited, or may join by a restricted rule's room it is in).
    async fn room_accessible(&self, room: &RoomId, asker: Asker<'_>) -> Result<bool> {
        if matches!(asker, Asker::Admin) {
            return Ok(true);
        }
        let content = |kind: &'static str| self.state_content_of(room, kind, "");
        let join_rules = content("m.room.join_rules").await?.unwrap_or_default();
        let join_rule = join_rules.get("join_rule").and_then(Value::as_str).unwrap_or("invite");
        if matches!(join_rule, "public" | "knock" | "knock_restricted") {
            return Ok(true);
        }
        let history = content("m.room.history_visibility").await?.unwrap_or_default();
        if history.get("history_visibility").and_then(Value::as_str) == Some("world_readable") {
            return Ok(true);
        }
        let allowed_rooms: Vec<String> = if matches!(join_rule, "restricted" | "knock_restricted") {
            join_rules
                .get("allow")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|a| a["type"] == "m.room_membership")
                .filter_map(|a| a["room_id"].as_str().map(str::to_owned))
                .collect()
        } else {
            Vec::new()
        };
        match asker {
            Asker::User(user) => {
                if matches!(self.membership_of(room, user).await?.as_deref(), Some("join" | "invite")) {
                    return Ok(true);
                }
                for allowed in allowed_rooms {
                    if let Ok(allowed) = RoomId::parse(&allowed)
                        && self.membership_of(&allowed, user).await?.as_deref() == Some("join")
                    {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Asker::Admin => Ok(true),
            Asker::Server(server) => {
                let in_room = |room: &RoomId| {
                    let room = room.to_string();
                    async move {
                        let members = self.db(move |s| s.room_memberships(&room)).await?;
                        Ok::<_, Error>(members.iter().any(|(user, membership)| {
                            matches!(membership.as_str(), "join" | "invite")
                                && user.split_once(':').is_some_and(|(_, s)| s == server)
                        }))
                    }
                };
                if in_room(room).await? {
                    return Ok(true);
                }
                for allowed in allowed_rooms {
                    if let Ok(allowed) = RoomId::parse(&allowed)
                        && in_room(&allowed).await?
                    {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }

    /// A local room's summary as the hierarchy lists it and, for a space when `children`, its
    /// children's stripped `m.space.child` events in order.
    async fn hierarchy_entry(&self, room: &RoomId, suggested_only: bool, children: bool) -> Result<Entry> {
        let joined = self.joined_member_ids(room.as_str()).await?.len() as i64;
        let Value::Object(mut summary) = self.room_summary(room.as_str(), joined).await? else {
            return Err(Error::internal("a room summary is not an object"));
        };
        let create = self.state_content_of(room, "m.room.create", "").await?.unwrap_or_default();
        summary.insert("room_version".into(), json!(create.get("room_version").and_then(Value::as_str).unwrap_or("1")));
        if let Some(algorithm) = self
            .state_content_of(room, "m.room.encryption", "")
            .await?
            .and_then(|c| c.get("algorithm").and_then(Value::as_str).map(str::to_owned))
        {
            summary.insert("encryption".into(), json!(algorithm));
        }
        let is_space = summary.get("room_type") == Some(&json!("m.space"));
        if !children || !is_space {
            return Ok(Entry { summary, children: Vec::new() });
        }
        let r = room.to_string();
        let rows = self.db(move |s| s.current_state_events(&r)).await?;
        let mut events: Vec<Value> = rows
            .iter()
            .filter_map(|row| serde_json::from_str::<Value>(&row.json).ok())
            .filter(|e| e["type"] == "m.space.child")
            .filter(|e| e["content"]["via"].as_array().is_some_and(|v| !v.is_empty()))
            .filter(|e| !suggested_only || e["content"]["suggested"] == true)
            .map(|e| {
                json!({
                    "type": e["type"], "state_key": e["state_key"], "content": e["content"],
                    "sender": e["sender"], "origin_server_ts": e["origin_server_ts"],
                })
            })
            .collect();
        events.sort_by_key(|e| {
            let order = e["content"]["order"]
                .as_str()
                .filter(|o| o.len() <= 50 && o.chars().all(|c| ('\x20'..='\x7e').contains(&c)))
                .map(str::to_owned);
            (
                order.is_none(),
                order,
                e["origin_server_ts"].as_i64().unwrap_or(0),
                e["state_key"].as_str().unwrap_or_default().to_owned(),
            )
        });
        Ok(Entry { summary, children: events })
    }

    /// A room this server is not in, from the first of `via` that answers the federation
    /// endpoint: `(its entry, its children's summaries by ID, children it may not see)`.
    async fn remote_hierarchy(
        &self,
        room: &RoomId,
        via: &[String],
        suggested_only: bool,
    ) -> Option<(Entry, HashMap<String, Map<String, Value>>, HashSet<String>)> {
        let path =
            format!("/_matrix/federation/v1/hierarchy/{}?suggested_only={suggested_only}", url_encode(room.as_str()));
        // `via` is whatever the space's members wrote: a few servers at most are asked.
        let via: Vec<String> = via.iter().take(VIA_SERVERS_ASKED).cloned().collect();
        let (_, answer) = match self.ask_in_turn(&via, &path, "hierarchy").await {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(room = %room, error = %e, "could not summarise a remote room");
                return None;
            }
        };
        let Value::Object(mut summary) = answer["room"].clone() else { return None };
        if summary.get("room_id").and_then(Value::as_str) != Some(room.as_str()) {
            return None;
        }
        let children = match summary.remove("children_state") {
            Some(Value::Array(c)) => {
                c.into_iter().filter(|e| e["type"] == "m.space.child" && e["state_key"].is_string()).collect()
            }
            _ => Vec::new(),
        };
        let summaries = answer["children"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| Some((c["room_id"].as_str()?.to_owned(), c.as_object()?.clone())))
            .collect();
        let refused = answer["inaccessible_children"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        Some((Entry { summary, children }, summaries, refused))
    }

    /// Whether `user` may see a room another server summarised: open to join or knock,
    /// world-readable, or the user is joined or invited (as far as this server knows).
    async fn remote_room_visible(&self, user: &str, room: &RoomId, summary: &Map<String, Value>) -> Result<bool> {
        let join_rule = summary.get("join_rule").and_then(Value::as_str).unwrap_or("public");
        if matches!(join_rule, "public" | "knock" | "knock_restricted")
            || summary.get("world_readable") == Some(&json!(true))
        {
            return Ok(true);
        }
        Ok(matches!(self.membership_of(room, user).await?.as_deref(), Some("join" | "invite")))
    }
}
