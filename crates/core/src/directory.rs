//! Room aliases, the public room directory and the user directory.
//!
//! Call sites here: `user_may_create_room_alias` (`create_alias`, also reached from
//! createRoom), `user_may_publish_room` (`set_room_visibility`) and `check_username_for_spam`
//! (`search_users`, after the database limit, as Synapse).

use myelin_module_api::spam::UserProfile;
use ruma::{OwnedRoomAliasId, OwnedRoomId, RoomId};
use serde_json::{Map, Value, json};

use crate::{Error, ErrorKind, Homeserver, Requester, Result};

/// Parses a room alias, which must be local for writes.
fn parse_alias(alias: &str) -> Result<OwnedRoomAliasId> {
    let invalid = || Error::invalid_param(format!("Invalid room alias: {alias}"));
    let parsed = OwnedRoomAliasId::try_from(alias).map_err(|_| invalid())?;
    // ruma accepts any localpart; Synapse refuses whitespace, `:` and `#` in it.
    if parsed.alias().chars().any(|c| c.is_whitespace() || c == ':' || c == '#') || alias.len() > 255 {
        return Err(invalid());
    }
    Ok(parsed)
}

fn parse_room(room_id: &str) -> Result<OwnedRoomId> {
    OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param(format!("Invalid room ID: {room_id}")))
}

/// One `room_list_publication_rules` entry.
#[derive(Debug, Clone)]
pub struct PublicationRule {
    /// Glob on the user ID.
    pub user_id: String,
    /// Glob on the room ID.
    pub room_id: String,
    /// Whether a match allows.
    pub allow: bool,
}

/// `*` and `?` globs, as Synapse's publication rules use.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// Which room lists `/publicRooms` reads (Synapse's `include_all_networks` and
/// `third_party_instance_id`).
#[derive(Debug, Clone, Copy)]
pub enum RoomListScope<'a> {
    /// The homeserver's own list (the default).
    Main,
    /// The homeserver's list and every appservice network's.
    AllNetworks,
    /// One appservice network's list, by its `{appservice ID}|{network ID}`.
    Network(&'a str),
}

/// The longest word a user directory search looks for (user IDs are at most 255 bytes).
const MAX_SEARCH_WORD: usize = 1024;

impl Homeserver {
    /// `PUT /directory/room/{alias}`; also createRoom's `room_alias_name`.
    pub async fn create_alias(&self, requester: &Requester, alias: &str, room_id: &str) -> Result<()> {
        let alias = parse_alias(alias)?;
        if alias.server_name().as_str() != self.server_name() {
            return Err(Error::invalid_param("Room alias must be local"));
        }
        let room = parse_room(room_id)?;
        if self.current_state(&room).await?.is_none() {
            return Err(Error::not_found("Room not found"));
        }
        // An appservice may create any alias of its namespace, in any room (Synapse).
        self.check_alias_namespace(requester, alias.as_str())?;
        if requester.app_service.is_none() {
            if self.membership_of(&room, requester.user_id.as_str()).await?.as_deref() != Some("join")
                && !requester.is_admin
            {
                return Err(Error::forbidden("You must be in the room to create an alias for it"));
            }
            // Not skipped for admins (Synapse: only app services skip it).
            self.modules.user_may_create_room_alias(requester.user_id.as_str(), alias.as_str()).await?;
        }
        let (a, r, c) = (alias.to_string(), room.to_string(), requester.user_id.to_string());
        match self.db(move |s| s.create_alias(&a, &r, &c)).await {
            Err(e) if e.kind == ErrorKind::Internal => {
                let a = alias.to_string();
                if self.db(move |s| s.get_alias(&a)).await?.is_some() {
                    return Err(Error::new(
                        ErrorKind::Module { status: 409, errcode: "M_UNKNOWN".into() },
                        format!("Room alias {alias} already exists"),
                    ));
                }
                Err(e)
            }
            other => other,
        }
    }

    /// Checks that a local alias is well-formed and free (createRoom validates before creating).
    pub(crate) async fn check_alias_available(&self, alias: &str) -> Result<()> {
        let alias = parse_alias(alias)?;
        let a = alias.to_string();
        if self.db(move |s| s.get_alias(&a)).await?.is_some() {
            return Err(Error::new(ErrorKind::RoomInUse, "Room alias already taken"));
        }
        Ok(())
    }

    /// `GET /directory/room/{alias}`: `(room_id, servers)`.
    pub async fn resolve_alias(&self, alias: &str) -> Result<(String, Vec<String>)> {
        let alias = parse_alias(alias)?;
        if alias.server_name().as_str() != self.server_name() {
            return self.remote_alias(alias.as_str(), alias.server_name().as_str()).await;
        }
        let a = alias.to_string();
        if let Some((room, _)) = self.db(move |s| s.get_alias(&a)).await? {
            return Ok((room, vec![self.server_name().to_owned()]));
        }
        // An appservice whose namespace holds the alias may create it on demand.
        if self.query_appservices_for_alias(alias.as_str()).await {
            let a = alias.to_string();
            if let Some((room, _)) = self.db(move |s| s.get_alias(&a)).await? {
                return Ok((room, vec![self.server_name().to_owned()]));
            }
        }
        Err(Error::not_found(format!("Room alias {alias} not found")))
    }

    /// `DELETE /directory/room/{alias}`: the alias's creator, a server admin, or a user who may
    /// change the room's canonical alias.
    pub async fn delete_alias(&self, requester: &Requester, alias: &str) -> Result<()> {
        let alias = parse_alias(alias)?;
        let a = alias.to_string();
        let Some((room, creator)) = self.db(move |s| s.get_alias(&a)).await? else {
            return Err(Error::not_found(format!("Room alias {alias} not found")));
        };
        // An appservice removes any alias of its namespace, and only that (Synapse's
        // `delete_appservice_association`: the room's canonical alias is left alone).
        if requester.app_service.is_some() {
            self.check_alias_namespace(requester, alias.as_str())?;
            let a = alias.to_string();
            self.db(move |s| s.delete_alias(&a)).await?;
            return Ok(());
        }
        let room_id = parse_room(&room)?;
        let allowed = requester.is_admin
            || creator == requester.user_id.as_str()
            || self.can_send_state(&room_id, requester.user_id.as_str(), "m.room.canonical_alias").await?;
        if !allowed {
            return Err(Error::forbidden("You don't have permission to delete the alias."));
        }
        self.check_alias_namespace(requester, alias.as_str())?;
        let a = alias.to_string();
        self.db(move |s| s.delete_alias(&a)).await?;
        // Keep the canonical alias event truthful, unless the user is shadow-banned.
        if !requester.shadow_banned
            && let Some(mut content) = self.state_content_of(&room_id, "m.room.canonical_alias", "").await?
        {
            let mut changed = false;
            if content.get("alias").and_then(Value::as_str) == Some(alias.as_str()) {
                content.remove("alias");
                changed = true;
            }
            if let Some(Value::Array(alts)) = content.get_mut("alt_aliases") {
                let before = alts.len();
                alts.retain(|a| a.as_str() != Some(alias.as_str()));
                changed |= alts.len() != before;
            }
            if changed {
                let _ = self
                    .append_event(
                        &room_id,
                        &requester.user_id,
                        "m.room.canonical_alias",
                        Some(""),
                        content,
                        Default::default(),
                    )
                    .await;
            }
        }
        Ok(())
    }

    /// `GET /rooms/{roomId}/aliases`: for members, server admins, and anyone when the room is
    /// world-readable (Synapse's rule).
    pub async fn room_aliases(&self, requester: &Requester, room_id: &str) -> Result<Vec<String>> {
        let room = parse_room(room_id)?;
        let member = self.membership_of(&room, requester.user_id.as_str()).await?.as_deref() == Some("join");
        if !member && !requester.is_admin {
            let visibility = self.state_content(&room, "m.room.history_visibility", "").await?;
            let world_readable = visibility.as_ref().and_then(|c| c.get("history_visibility")).and_then(Value::as_str)
                == Some("world_readable");
            if !world_readable {
                return Err(Error::forbidden("You are not in the room"));
            }
        }
        let r = room.to_string();
        self.db(move |s| s.aliases_for_room(&r)).await
    }

    /// Validates a new `m.room.canonical_alias`: every local alias must point at this room.
    pub(crate) async fn check_canonical_alias(&self, room_id: &RoomId, content: &Map<String, Value>) -> Result<()> {
        let mut aliases: Vec<&Value> = content.get("alias").into_iter().collect();
        if let Some(alts) = content.get("alt_aliases") {
            match alts {
                Value::Array(a) => aliases.extend(a.iter()),
                _ => return Err(Error::bad_json("alt_aliases must be a list")),
            }
        }
        for a in aliases {
            let Some(s) = a.as_str() else { return Err(Error::bad_json("aliases must be strings")) };
            // Not an alias at all: 400 M_INVALID_PARAM (Synapse); M_BAD_ALIAS is for a real
            // alias that does not point here.
            let alias =
                OwnedRoomAliasId::try_from(s).map_err(|_| Error::invalid_param(format!("Invalid alias {s}")))?;
            if alias.server_name().as_str() != self.server_name() {
                continue;
            }
            let points_here = self.resolve_alias(s).await.is_ok_and(|(r, _)| r == room_id.as_str());
            if !points_here {
                return Err(Error::new(
                    ErrorKind::Module { status: 400, errcode: "M_BAD_ALIAS".into() },
                    format!("Room alias {s} does not point to the room"),
                ));
            }
        }
        Ok(())
    }

    /// `GET /directory/list/room/{roomId}`.
    pub async fn room_visibility(&self, room_id: &str) -> Result<&'static str> {
        let room = parse_room(room_id)?;
        let r = room.to_string();
        match self.db(move |s| s.get_room(&r)).await? {
            Some(row) => Ok(if row.is_public { "public" } else { "private" }),
            None => Err(Error::not_found("Unknown room")),
        }
    }

    /// `PUT /directory/list/room/{roomId}`: `user_may_publish_room` runs first, for both
    /// visibilities, as in Synapse.
    pub async fn set_room_visibility(&self, requester: &Requester, room_id: &str, visibility: &str) -> Result<()> {
        let room = parse_room(room_id)?;
        self.modules.user_may_publish_room(requester.user_id.as_str(), room.as_str()).await?;
        let public = match visibility {
            "public" => true,
            "private" => false,
            _ => return Err(Error::invalid_param("visibility must be 'public' or 'private'")),
        };
        if self.current_state(&room).await?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        if !requester.is_admin {
            if !self.can_send_state(&room, requester.user_id.as_str(), "m.room.canonical_alias").await? {
                return Err(Error::forbidden("You don't have permission to change the room list"));
            }
            if public && !self.publication_allowed(requester.user_id.as_str(), room.as_str()) {
                return Err(Error::forbidden("Not allowed to publish room"));
            }
        }
        // As Synapse: asked only when publishing, admins included.
        if public && self.modules.has_check_visibility_can_be_modified() {
            let state = self.module_room_state(room.as_str()).await?;
            if !self.modules.check_visibility_can_be_modified(room.as_str(), &state, "public").await {
                return Err(Error::forbidden("Not allowed to publish room"));
            }
        }
        let r = room.to_string();
        self.db(move |s| s.set_room_public(&r, public)).await
    }

    /// Publishes or unpublishes without any check (`ModuleApi.public_room_list_manager`).
    pub(crate) async fn publish_room_unchecked(&self, room_id: &str, public: bool) -> Result<()> {
        let room = parse_room(room_id)?;
        if self.current_state(&room).await?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        let r = room.to_string();
        self.db(move |s| s.set_room_public(&r, public)).await
    }

    fn publication_allowed(&self, user_id: &str, room_id: &str) -> bool {
        let rules = &self.config.room_list_publication_rules;
        if rules.is_empty() {
            return true;
        }
        rules
            .iter()
            .find(|r| glob_match(&r.user_id, user_id) && glob_match(&r.room_id, room_id))
            .is_some_and(|r| r.allow)
    }

    /// `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}` (MSC3266, and its unstable
    /// `im.nheko.summary` paths): what someone may know of a room before joining it, if they may
    /// know it at all (a public, knockable or world-readable room, or one they are in or invited
    /// to); any other room is 404, as an unknown one is. Only rooms this server is in.
    pub async fn room_summary_for(&self, requester: Option<&Requester>, room: &str) -> Result<Value> {
        let hidden = || Error::not_found("Room not found or is not accessible");
        let room_id = if room.starts_with('#') {
            self.resolve_alias(room).await.map_err(|_| hidden())?.0
        } else {
            room.to_owned()
        };
        let rid = parse_room(&room_id).map_err(|_| hidden())?;
        let Some(state) = self.current_state_shared(&rid).await? else { return Err(hidden()) };
        let membership = match requester {
            Some(r) => self.membership_of(&rid, r.user_id.as_str()).await?,
            None => None,
        };
        let content = |kind: &'static str| {
            let key = (kind.to_owned(), String::new());
            let id = state.get(&key).map(|id| id.to_string());
            async move {
                match id {
                    Some(id) => Ok::<_, Error>(
                        self.load_events(vec![id]).await?.values().next().map(|p| p.content_map()).unwrap_or_default(),
                    ),
                    None => Ok(Map::new()),
                }
            }
        };
        let join_rule = content("m.room.join_rules").await?.get("join_rule").and_then(Value::as_str).map(str::to_owned);
        let world_readable =
            content("m.room.history_visibility").await?.get("history_visibility").and_then(Value::as_str)
                == Some("world_readable");
        let open = matches!(join_rule.as_deref(), Some("public" | "knock" | "knock_restricted"));
        let member = matches!(membership.as_deref(), Some("join" | "invite"));
        if !open && !world_readable && !member {
            return Err(hidden());
        }
        let joined = self.joined_member_ids(&room_id).await?.len() as i64;
        let mut out = self.room_summary(&room_id, joined).await?;
        let version =
            content("m.room.create").await?.get("room_version").and_then(Value::as_str).unwrap_or("1").to_owned();
        out["room_version"] = json!(version);
        if let Some(algorithm) = content("m.room.encryption").await?.get("algorithm").and_then(Value::as_str) {
            out["encryption"] = json!(algorithm);
        }
        if requester.is_some() {
            out["membership"] = json!(membership.unwrap_or_else(|| "leave".to_owned()));
        }
        Ok(out)
    }

    /// The summary of one room for `/publicRooms`.
    pub(crate) async fn room_summary(&self, room_id: &str, joined: i64) -> Result<Value> {
        let room = parse_room(room_id)?;
        let text = |c: Option<Map<String, Value>>, k: &str| c.and_then(|c| c.get(k).cloned()).filter(|v| v.is_string());
        let name = text(self.state_content_of(&room, "m.room.name", "").await?, "name");
        let topic = text(self.state_content_of(&room, "m.room.topic", "").await?, "topic");
        let avatar = text(self.state_content_of(&room, "m.room.avatar", "").await?, "url");
        let alias = text(self.state_content_of(&room, "m.room.canonical_alias", "").await?, "alias");
        let join_rule = text(self.state_content_of(&room, "m.room.join_rules", "").await?, "join_rule");
        let history = text(self.state_content_of(&room, "m.room.history_visibility", "").await?, "history_visibility");
        let guest = text(self.state_content_of(&room, "m.room.guest_access", "").await?, "guest_access");
        let room_type = self.state_content_of(&room, "m.room.create", "").await?.and_then(|c| c.get("type").cloned());
        let mut out = json!({
            "room_id": room_id,
            "num_joined_members": joined,
            "world_readable": history.as_ref().and_then(Value::as_str) == Some("world_readable"),
            "guest_can_join": guest.as_ref().and_then(Value::as_str) == Some("can_join"),
            "join_rule": join_rule.unwrap_or(json!("invite")),
        });
        for (k, v) in [
            ("name", name),
            ("topic", topic),
            ("avatar_url", avatar),
            ("canonical_alias", alias),
            ("room_type", room_type),
        ] {
            if let Some(v) = v {
                out[k] = v;
            }
        }
        Ok(out)
    }

    /// `PUT`/`DELETE /directory/list/appservice/{networkId}/{roomId}`: an appservice lists a
    /// room under one of its third-party networks (`public`), or unlists it.
    pub async fn set_appservice_room_visibility(
        &self,
        requester: &Requester,
        network_id: &str,
        room_id: &str,
        visibility: &str,
    ) -> Result<()> {
        let Some(registration) = &requester.app_service else {
            return Err(Error::forbidden("Only appservices can edit the appservice published room list"));
        };
        let room = parse_room(room_id)?;
        let (id, network, room) = (registration.id.clone(), network_id.to_owned(), room.to_string());
        let listed = visibility == "public";
        self.db(move |s| s.set_appservice_room_listed(&id, &network, &room, listed)).await
    }

    /// `GET`/`POST /publicRooms`: offset-paginated (`o<N>` tokens), filtered by a search term,
    /// from the main list, or appservices' network lists (`scope`).
    pub async fn public_rooms(
        &self,
        limit: Option<usize>,
        since: Option<&str>,
        term: Option<&str>,
        scope: RoomListScope<'_>,
    ) -> Result<Value> {
        let offset = match since {
            Some(t) => t
                .strip_prefix('o')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| Error::invalid_param("Invalid since token"))?,
            None => 0,
        };
        let rooms = match scope {
            RoomListScope::Main => self.db(|s| s.published_rooms()).await?,
            RoomListScope::AllNetworks => {
                let mut rooms = self.db(|s| s.published_rooms()).await?;
                let more = self.db(|s| s.appservice_listed_rooms(None)).await?;
                for room in more {
                    if !rooms.iter().any(|(r, _)| *r == room.0) {
                        rooms.push(room);
                    }
                }
                rooms.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                rooms
            }
            RoomListScope::Network(instance) => {
                // Synapse's third-party instance IDs: `{appservice ID}|{network ID}`.
                let Some((id, network)) = instance.split_once('|') else {
                    return Err(Error::new(ErrorKind::BadRequest, format!("Invalid ID '{instance}'")));
                };
                let (id, network) = (id.to_owned(), network.to_owned());
                self.db(move |s| s.appservice_listed_rooms(Some((&id, &network)))).await?
            }
        };
        let total = rooms.len();
        let mut summaries = Vec::new();
        for (room, joined) in rooms {
            summaries.push(self.room_summary(&room, joined).await?);
        }
        if let Some(term) = term.map(str::to_lowercase).filter(|t| !t.is_empty()) {
            summaries.retain(|s| {
                ["name", "topic", "canonical_alias"]
                    .iter()
                    .any(|k| s[*k].as_str().is_some_and(|v| v.to_lowercase().contains(&term)))
            });
        }
        let limit = limit.unwrap_or(usize::MAX).min(1000);
        let page: Vec<Value> = summaries.iter().skip(offset).take(limit).cloned().collect();
        let mut out = json!({"chunk": page, "total_room_count_estimate": total});
        if offset + page.len() < summaries.len() {
            out["next_batch"] = json!(format!("o{}", offset + page.len()));
        }
        if offset > 0 {
            out["prev_batch"] = json!(format!("o{}", offset.saturating_sub(limit)));
        }
        Ok(out)
    }

    /// `POST /user_directory/search`.
    pub async fn search_users(&self, requester: &Requester, term: &str, limit: usize) -> Result<Value> {
        let terms: Vec<String> = term.split_whitespace().map(|t| t.trim_start_matches('@').to_owned()).collect();
        // No user ID or display name is this long (SQLite would refuse the pattern, a 500): a
        // word over it matches nobody.
        if terms.iter().any(|t| t.len() > MAX_SEARCH_WORD) {
            return Ok(json!({"limited": false, "results": []}));
        }
        let limit = limit.clamp(1, 1000);
        let (searcher, all) = (requester.user_id.to_string(), self.config.search_all_users);
        let mut rows = if terms.is_empty() {
            Vec::new()
        } else {
            self.db(move |s| s.search_user_directory(&searcher, &terms, all, limit + 1)).await?
        };
        let limited = rows.len() > limit;
        rows.truncate(limit);
        // As Synapse: filtering happens after the limit, and `limited` is not recomputed.
        let mut results = Vec::new();
        for (user_id, display_name, avatar_url) in rows {
            let profile = UserProfile {
                user_id: user_id.clone(),
                display_name: display_name.clone(),
                avatar_url: avatar_url.clone(),
            };
            if self.modules.check_username_for_spam(profile, requester.user_id.as_str()).await? {
                continue;
            }
            let mut r = json!({"user_id": user_id});
            if let Some(d) = display_name {
                r["display_name"] = json!(d);
            }
            if let Some(a) = avatar_url {
                r["avatar_url"] = json!(a);
            }
            results.push(r);
        }
        Ok(json!({"results": results, "limited": limited}))
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*", "@a:b"));
        assert!(glob_match("@admin*:test", "@admin2:test"));
        assert!(!glob_match("@admin*:test", "@bob:test"));
        assert!(glob_match("!?oom:t", "!room:t"));
    }
}
