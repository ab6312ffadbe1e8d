//! Membership changes: invite, join (restricted joins too), leave, kick, ban, unban, knock.

use super::*;

impl Homeserver {
    /// Changes `target`'s membership as `requester`: invite, join, leave, kick, ban,
    /// unban. `user_may_invite` and `user_may_join_room` are called here, their one call site.
    ///
    /// Rate-limited as a client's request (`rc_joins`, `rc_joins_per_room`, `rc_invites`);
    /// see [`Homeserver::update_membership_unlimited`] for the server's own changes.
    pub async fn update_membership(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        target: &UserId,
        action: &str,
        reason: Option<String>,
        content: Map<String, Value>,
    ) -> Result<Arc<Value>> {
        self.change_membership(requester, room_id, target, action, reason, content, true).await
    }

    /// [`Homeserver::update_membership`] without rate limits, as Synapse for the invites of
    /// `createRoom`, the module API and deactivation.
    pub(crate) async fn update_membership_unlimited(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        target: &UserId,
        action: &str,
        reason: Option<String>,
        content: Map<String, Value>,
    ) -> Result<Arc<Value>> {
        self.change_membership(requester, room_id, target, action, reason, content, false).await
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn change_membership(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        target: &UserId,
        action: &str,
        reason: Option<String>,
        mut content: Map<String, Value>,
        ratelimit: bool,
    ) -> Result<Arc<Value>> {
        let sender = &requester.user_id;
        // Guests may join and leave, nothing more (as on Synapse).
        if requester.is_guest && !["join", "leave"].contains(&action) {
            return Err(guest_forbidden());
        }
        self.refuse_suspended_membership(requester, target, action).await?;
        // Rejecting an invite to a room this server is not in goes through the inviter (a local
        // inviter's room is left here, even once nobody is joined).
        if action == "leave"
            && target == sender
            && !self.participates_in(room_id).await?
            && let Some(server) = self.invite_origin(room_id, target.as_str()).await?
            && server != self.server_name()
        {
            let mut servers = vec![server];
            servers.extend(room_id.server_name().map(|s| s.to_string()));
            self.leave_remote_room(requester, room_id, &servers).await?;
            return Ok(Arc::new(json!({})));
        }
        let current = self.membership_of(room_id, target.as_str()).await?;
        if self.current_state(room_id).await?.is_none() {
            return Err(Error::not_found("No known servers"));
        }
        let membership = match action {
            "unban" => {
                if current.as_deref() != Some("ban") {
                    return Err(Error::forbidden(format!("{target} is not banned")));
                }
                "leave"
            }
            "invite" | "join" | "leave" | "ban" => action,
            // As Synapse: only a member (joined, invited or knocking) can be kicked.
            "kick" => {
                if !matches!(current.as_deref(), Some("join" | "invite" | "knock")) {
                    return Err(Error::forbidden("The target user is not in the room"));
                }
                "leave"
            }
            "knock" => {
                if target != sender {
                    return Err(Error::forbidden("You can only knock for yourself"));
                }
                match current.as_deref() {
                    Some("join") => return Err(Error::forbidden(format!("{target} is already in the room."))),
                    Some("ban") => return Err(Error::forbidden(format!("{target} is banned from the room"))),
                    Some("invite") => return Err(Error::forbidden("You are already invited to this room")),
                    _ => {}
                }
                "knock"
            }
            other => return Err(Error::invalid_param(format!("Unknown membership {other}"))),
        };
        self.refuse_if_blocked(room_id, membership).await?;
        match membership {
            "invite" => {
                if requester.shadow_banned {
                    crate::users::shadow_ban_delay().await;
                    return Ok(Arc::new(json!({})));
                }
                if current.as_deref() == Some("join") {
                    return Err(Error::forbidden(format!("{target} is already in the room.")));
                }
                if current.as_deref() == Some("ban") {
                    return Err(Error::forbidden(format!("{target} is banned from the room")));
                }
                if ratelimit {
                    let user = sender.as_str();
                    self.limit_user(&self.limiters.invites_per_room, user, Some(room_id.as_str())).await?;
                    self.limit_user(&self.limiters.invites_per_user, user, Some(target.as_str())).await?;
                    self.limit_user(&self.limiters.invites_per_issuer, user, None).await?;
                }
                if !requester.is_admin {
                    self.modules.user_may_invite(sender.as_str(), target.as_str(), room_id.as_str()).await?;
                }
            }
            "join" => {
                if requester.is_guest
                    && self
                        .state_content(room_id, "m.room.guest_access", "")
                        .await?
                        .and_then(|c| c.get("guest_access").cloned())
                        != Some(json!("can_join"))
                {
                    return Err(guest_forbidden());
                }
                if current.as_deref() == Some("ban") {
                    return Err(Error::forbidden(format!("{target} is banned from the room")));
                }
                // A restricted room admits members of the rooms its join rule names, vouched
                // for by a local user who may invite.
                if target == sender
                    && !matches!(current.as_deref(), Some("join") | Some("invite"))
                    && let Some(authoriser) = self.restricted_join_authoriser(room_id, target.as_str()).await?
                {
                    content.insert("join_authorised_via_users_server".into(), json!(authoriser));
                }
                // As Synapse: a join that only updates a profile is not limited.
                if ratelimit && current.as_deref() != Some("join") {
                    self.limit_user(&self.limiters.joins_local, sender.as_str(), None).await?;
                    self.peek_user(&self.limiters.joins_per_room, sender.as_str(), Some(room_id.as_str())).await?;
                }
                if !requester.is_admin && current.as_deref() != Some("join") {
                    let is_invited = current.as_deref() == Some("invite");
                    self.modules.user_may_join_room(sender.as_str(), room_id.as_str(), is_invited).await?;
                }
            }
            _ => {}
        }
        if membership == "join" || (membership == "invite" && self.is_mine(target)) {
            let (displayname, avatar_url) = self.profile_of(target.as_str()).await?;
            if let Some(d) = displayname {
                content.entry("displayname").or_insert(json!(d));
            }
            if let Some(a) = avatar_url {
                content.entry("avatar_url").or_insert(json!(a));
            }
        }
        content.insert("membership".into(), json!(membership));
        if let Some(r) = reason {
            content.insert("reason".into(), json!(r));
        }
        // Read before the room's lock is taken (the summary reads the room's state).
        let remote_invite = if membership == "invite" && !self.is_mine(target) {
            Some((target.to_string(), self.stripped_state(room_id.as_str(), target.as_str()).await?))
        } else {
            None
        };
        let options = AppendOptions { remote_invite, ..AppendOptions::default() };
        let appended =
            self.append_event(room_id, sender, "m.room.member", Some(target.as_str()), content, options).await?;
        if membership == "join" {
            self.limiters.joins_per_room.record(room_id.as_str());
            // Joining the successor of a room one was in brings one's tags and `m.direct`
            // entries along, as Synapse's `copy_user_state_on_room_upgrade` (best effort).
            if current.as_deref() != Some("join")
                && let Some(old) = self
                    .state_content(room_id, "m.room.create", "")
                    .await?
                    .and_then(|c| c.get("predecessor")?.get("room_id")?.as_str().map(str::to_owned))
                    .and_then(|r| ruma::OwnedRoomId::try_from(r).ok())
                && self.membership_of(&old, target.as_str()).await?.is_some()
                && let Err(e) = self.carry_account_data_to_upgraded_room(target, &old, room_id).await
            {
                tracing::warn!(room = %room_id, user = %target, error = %e.message, "account data not carried over");
            }
        }
        Ok(Arc::new(serde_json::from_str(&appended.json).map_err(Error::internal)?))
    }

    /// Synapse's suspension rules for membership: a suspended account may make only `leave`
    /// events (leaving, kicking, unbanning); nobody may join a suspended account to a room.
    async fn refuse_suspended_membership(&self, requester: &Requester, target: &UserId, action: &str) -> Result<()> {
        match action {
            "invite" => requester.refuse_if_suspended("Sending invites while account is suspended is not allowed.")?,
            "join" | "knock" => {
                let target_suspended = if target == requester.user_id {
                    requester.suspended
                } else {
                    let t = target.to_string();
                    !requester.is_internal() && self.db(move |s| s.get_user(&t)).await?.is_some_and(|u| u.suspended)
                };
                if target_suspended {
                    let what = if action == "join" { "Joining rooms" } else { "Knocking on rooms" };
                    return Err(Error::new(
                        ErrorKind::Module { status: 403, errcode: "M_USER_SUSPENDED".into() },
                        format!("{what} while account is suspended is not allowed."),
                    ));
                }
            }
            "leave" | "kick" | "unban" => {}
            _ => requester.refuse_if_suspended("Changing membership while account is suspended is not allowed.")?,
        }
        Ok(())
    }

    /// Joins a room by ID or alias. `content` (the request's body: a `reason`, or any other
    /// keys, as Synapse allows) goes into the member event.
    pub async fn join_room(
        &self,
        requester: &Requester,
        room_id: &str,
        via: &[String],
        mut content: Map<String, Value>,
    ) -> Result<OwnedRoomId> {
        requester.refuse_if_suspended("Joining rooms while account is suspended is not allowed.")?;
        // The server decides these.
        for key in ["membership", "join_authorised_via_users_server"] {
            content.remove(key);
        }
        let mut via = via.to_vec();
        let room_id = if room_id.starts_with('#') {
            let (room, servers) = self.resolve_alias(room_id).await?;
            via.extend(servers);
            parse_room_id(&room)?
        } else {
            parse_room_id(room_id)?
        };
        self.refuse_if_blocked(&room_id, "join").await?;
        // A room this server is not in is joined through a server that is: those the client
        // named, then the room ID's own server.
        if !self.participates_in(&room_id).await? {
            let mut servers: Vec<String> = via.to_vec();
            if let Some(inviter) = self.invite_origin(&room_id, requester.user_id.as_str()).await? {
                servers.push(inviter);
            }
            if let Some(server) = room_id.server_name() {
                servers.push(server.to_string());
            }
            servers.retain(|s| s != self.server_name());
            servers.dedup();
            if !servers.is_empty() {
                if requester.is_guest {
                    return Err(guest_forbidden());
                }
                self.limit_user(&self.limiters.joins_remote, requester.user_id.as_str(), None).await?;
                if !requester.is_admin {
                    self.modules.user_may_join_room(requester.user_id.as_str(), room_id.as_str(), false).await?;
                }
                self.join_remote_room(requester, &room_id, &servers).await?;
                return Ok(room_id);
            }
        }
        let user = requester.user_id.clone();
        let reason = content.remove("reason").and_then(|r| r.as_str().map(str::to_owned));
        self.update_membership(requester, &room_id, &user, "join", reason, content).await?;
        Ok(room_id)
    }

    /// For a join to a `restricted` or `knock_restricted` room: the local user who vouches for
    /// it (`join_authorised_via_users_server`), when `user` is joined to one of the rooms the
    /// join rule allows; `None` for other join rules; 403 when the user may not join.
    pub(super) async fn restricted_join_authoriser(&self, room_id: &RoomId, user: &str) -> Result<Option<String>> {
        let Some(rules) = self.state_content(room_id, "m.room.join_rules", "").await? else { return Ok(None) };
        if !matches!(rules.get("join_rule").and_then(Value::as_str), Some("restricted" | "knock_restricted")) {
            return Ok(None);
        }
        let mut allowed = false;
        for entry in rules.get("allow").and_then(Value::as_array).into_iter().flatten() {
            let Some(other) = entry.get("room_id").and_then(Value::as_str) else { continue };
            if entry.get("type").and_then(Value::as_str) != Some("m.room_membership") {
                continue;
            }
            let Ok(other) = OwnedRoomId::try_from(other) else { continue };
            if self.membership_of(&other, user).await?.as_deref() == Some("join") {
                allowed = true;
                break;
            }
        }
        if !allowed {
            return Err(Error::forbidden("You do not belong to any of the required rooms/spaces to join this room."));
        }
        let state = self.current_state(room_id).await?.unwrap_or_default();
        let power = self.power_levels(&state).await?;
        let invite_level = power.int("invite", 0);
        let suffix = format!(":{}", self.server_name());
        let rid = room_id.to_string();
        let members = self.db(move |s| s.room_memberships(&rid)).await?;
        let authoriser = members
            .into_iter()
            .filter(|(member, membership)| membership == "join" && member.ends_with(&suffix))
            .map(|(member, _)| member)
            .find(|member| power.user(member) >= invite_level);
        authoriser.map(Some).ok_or_else(|| Error::forbidden("Unable to find a user which could issue an invite"))
    }

    /// `POST /knock/{roomIdOrAlias}`: asks to join a room whose join rule is `knock` or
    /// `knock_restricted` (rooms this server is in; knocking over federation is not built yet).
    pub async fn knock(&self, requester: &Requester, room: &str, reason: Option<String>) -> Result<OwnedRoomId> {
        requester.refuse_if_suspended("Knocking on rooms while account is suspended is not allowed.")?;
        let room_id = if room.starts_with('#') {
            parse_room_id(&self.resolve_alias(room).await?.0)?
        } else {
            parse_room_id(room)?
        };
        if !self.participates_in(&room_id).await? {
            return Err(Error::new(
                ErrorKind::Module { status: 404, errcode: "M_NOT_FOUND".into() },
                "Knocking on a room this server is not in is not supported yet",
            ));
        }
        let user = requester.user_id.clone();
        self.update_membership(requester, &room_id, &user, "knock", reason, Map::new()).await?;
        Ok(room_id)
    }
}
