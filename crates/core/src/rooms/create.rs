//! Creating rooms, and upgrading them to a new room version.

use super::*;

impl Homeserver {
    /// Makes a room: its row and its `m.room.create` event. From room version 12 the room is
    /// named after its create event (`!` and the event's reference hash), so the event is
    /// signed once to learn the name, then appended with the same timestamp: the same hash.
    ///
    /// `named`: the ID to give a room whose version does not derive it from the create event
    /// (an upgrade names the new room in the old one's tombstone first); ignored otherwise.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn found_room(
        &self,
        version: &str,
        rules: &RoomVersionRules,
        creator: &UserId,
        mut content: Map<String, Value>,
        is_public: bool,
        visibility: Option<&str>,
        named: Option<&RoomId>,
    ) -> Result<OwnedRoomId> {
        complete_create_content(&mut content, version, rules, creator);
        // Room version 12 names the room after its create event, whose only entropy is its
        // timestamp: a user making rooms with the same content in the same millisecond would
        // name the same room. So no two create events made here share a millisecond, and a
        // name taken anyway (by a create event from before a restart) is tried again later.
        let mut attempt = 0;
        let (room_id, origin_server_ts) = loop {
            let named = match named {
                Some(id) => id.to_owned(),
                None => OwnedRoomId::try_from(format!("!{}:{}", random_string(18), self.server_name()))
                    .map_err(Error::internal)?,
            };
            let origin_server_ts =
                MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(self.rooms.create_clock.next(now_ms()) as u64));
            let draft = EventDraft {
                room_id: &named,
                sender: creator,
                kind: "m.room.create",
                state_key: Some(""),
                content: content.clone(),
                prev_events: Vec::new(),
                auth_events: Vec::new(),
                depth: 1,
                redacts: None,
                origin_server_ts,
                reference_hashes: HashMap::new(),
            };
            let signed = sign_event(draft, rules, self.server_name(), &self.key)?;
            // Checked before anything is stored: a bad `additional_creators` leaves no empty room.
            crate::state::check_auth(rules, &signed.pdu, &HashMap::new(), &HashMap::new())
                .map_err(|e| Error::bad_json(format!("Invalid creation_content: {e}")))?;
            let room_id = signed.pdu.room_id.clone();
            // createRoom's `visibility`, put to third-party rules once the room's name is known
            // and before anything is stored (Synapse asks at the same point, with no state yet).
            if let Some(visibility) = visibility
                && self.modules.has_check_visibility_can_be_modified()
                && !self.modules.check_visibility_can_be_modified(room_id.as_str(), &Vec::new(), visibility).await
            {
                return Err(Error::forbidden("Room visibility value not allowed."));
            }
            let row = RoomRow {
                room_id: room_id.to_string(),
                room_version: version.to_owned(),
                creator: creator.to_string(),
                is_public,
            };
            let made = self
                .db(move |s| match s.create_room(&row) {
                    Ok(()) => Ok(true),
                    Err(myelin_storage::StorageError::Conflict) => Ok(false),
                    Err(e) => Err(e),
                })
                .await?;
            match (made, attempt) {
                (true, _) => break (room_id, origin_server_ts),
                (false, 0..5) => attempt += 1,
                (false, _) => return Err(Error::internal("could not find a free room ID")),
            }
        };
        let options = AppendOptions { origin_server_ts: Some(origin_server_ts), ..AppendOptions::default() };
        let appended = self.append_event(&room_id, creator, "m.room.create", Some(""), content, options).await?;
        if appended.pdu.room_id != room_id {
            // A third-party rules module rewrote the create event; in room version 12 that
            // would name another room.
            return Err(Error::internal("the room's create event changed while it was made"));
        }
        Ok(room_id)
    }

    /// `POST /createRoom` (and `ModuleApi.create_room`). Returns `(room_id, alias)`.
    pub async fn create_room(
        &self,
        requester: &Requester,
        body: Map<String, Value>,
    ) -> Result<(OwnedRoomId, Option<String>)> {
        if requester.is_guest {
            return Err(guest_forbidden());
        }
        requester.refuse_if_suspended(super::send::SUSPENDED_SENDING)?;
        // As Synapse: `rc_room_creation` and `rc_message` both, neither counted unless both pass.
        let user = requester.user_id.as_str();
        self.peek_user(&self.limiters.room_creation, user, None).await?;
        self.limit_message(user, false).await?;
        self.limit_user(&self.limiters.room_creation, user, None).await?;
        self.create_room_unlimited(requester, body).await
    }

    /// [`Homeserver::create_room`] without rate limits, for the server's own rooms (a room
    /// shutdown's new room, as Synapse's `ratelimit=False`).
    pub(crate) async fn create_room_unlimited(
        &self,
        requester: &Requester,
        body: Map<String, Value>,
    ) -> Result<(OwnedRoomId, Option<String>)> {
        let body = self.modules.on_create_room(requester.user_id.as_str(), body, requester.is_admin).await?;
        let request: CreateRoomRequest = serde_json::from_value(Value::Object(body.clone()))
            .map_err(|e| Error::bad_json(format!("Invalid createRoom body: {e}")))?;
        let version = request.room_version.clone().unwrap_or_else(|| self.config.default_room_version.clone());
        if !crate::config::SUPPORTED_ROOM_VERSIONS.contains(&version.as_str()) {
            return Err(Error::new(
                ErrorKind::UnsupportedRoomVersion,
                "Your homeserver does not support this room version",
            ));
        }
        let rules = ruma::RoomVersionId::try_from(version.as_str())
            .ok()
            .and_then(|v| v.rules())
            .ok_or_else(|| Error::new(ErrorKind::UnsupportedRoomVersion, "Unknown room version"))?;
        let visibility = request.visibility.as_deref().unwrap_or("private");
        if !["public", "private"].contains(&visibility) {
            return Err(Error::invalid_param("visibility must be 'public' or 'private'"));
        }
        let preset = request
            .preset
            .clone()
            .unwrap_or_else(|| if visibility == "public" { "public_chat".into() } else { "private_chat".into() });
        if !["private_chat", "public_chat", "trusted_private_chat"].contains(&preset.as_str()) {
            return Err(Error::invalid_param(format!("Unknown preset {preset}")));
        }
        let mut invitees = Vec::new();
        for i in &request.invite {
            invitees.push(parse_user_id(i)?);
        }
        let alias = match &request.room_alias_name {
            Some(local) => {
                let alias = format!("#{local}:{}", self.server_name());
                self.check_alias_available(&alias).await?;
                self.check_alias_namespace(requester, &alias)?;
                Some(alias)
            }
            None => None,
        };
        if !requester.is_admin {
            self.modules.user_may_create_room(requester.user_id.as_str(), &body).await?;
        }

        let creator = &requester.user_id;
        let mut create_content = request.creation_content.clone().unwrap_or_default();
        // Room version 12: a trusted private chat's invitees are creators too (as in Synapse),
        // rather than users at power 100.
        let invitees_are_creators = rules.authorization.additional_room_creators && preset == "trusted_private_chat";
        if invitees_are_creators && !invitees.is_empty() {
            let mut creators: Vec<String> = create_content
                .get("additional_creators")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            creators.extend(invitees.iter().map(|i| i.to_string()));
            creators.sort();
            creators.dedup();
            create_content.insert("additional_creators".into(), json!(creators));
        }
        let (displayname, avatar_url) = self.profile_of(creator.as_str()).await?;
        let mut join = json!({"membership": "join"});
        if let Some(d) = displayname {
            join["displayname"] = json!(d);
        }
        if let Some(a) = avatar_url {
            join["avatar_url"] = json!(a);
        }
        let mut initial = vec![state_event("m.room.member", creator.as_str(), join)?];

        // From room version 12 creators have unlimited power and may not be listed.
        let creators_privileged = rules.authorization.explicitly_privilege_room_creators;
        let mut users = Map::new();
        if !creators_privileged {
            users.insert(creator.to_string(), json!(100));
        }
        if preset == "trusted_private_chat" && !invitees_are_creators {
            for i in &invitees {
                users.insert(i.to_string(), json!(100));
            }
        }
        let mut power = json!({
            "users": users, "users_default": 0,
            "events": {
                "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
                "m.room.server_acl": 100, "m.room.encryption": 100
            },
            "events_default": 0, "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 50,
            "historical": 100
        });
        if creators_privileged {
            // Above any power a creator can hand out, so only creators may upgrade the room.
            power["events"]["m.room.tombstone"] = json!(150);
        }
        // Synapse's presets: anyone may invite to a private room; only moderators to a public
        // one, where starting a call takes a moderator too.
        if preset == "public_chat" {
            power["events"]["m.call.invite"] = json!(50);
        } else {
            power["invite"] = json!(0);
        }
        if let Some(over) = &request.power_level_content_override {
            for (k, v) in over {
                power[k] = v.clone();
            }
        }
        initial.push(state_event("m.room.power_levels", "", power)?);
        let join_rule = if preset == "public_chat" { "public" } else { "invite" };
        initial.push(state_event("m.room.join_rules", "", json!({"join_rule": join_rule}))?);
        initial.push(state_event("m.room.history_visibility", "", json!({"history_visibility": "shared"}))?);
        if preset != "public_chat" {
            initial.push(state_event("m.room.guest_access", "", json!({"guest_access": "can_join"}))?);
        }
        for ev in &request.initial_state {
            initial.push((ev.kind.clone(), ev.state_key.clone(), ev.content.clone()));
        }
        if let Some(name) = &request.name {
            initial.push(state_event("m.room.name", "", json!({"name": name}))?);
        }
        if let Some(topic) = &request.topic {
            initial.push(state_event("m.room.topic", "", json!({"topic": topic}))?);
        }
        // Every initial event is built and authorised before anything is stored, so a body
        // that would fail part-way (content that is not canonical JSON, an event over 64 KiB,
        // an override that takes the creator's power away) leaves no room behind.
        // (A third-party rules module may rewrite events as they are sent, into something the
        // rehearsal would refuse: with one loaded, the events are only checked as sent.)
        if !self.modules.has_check_event_allowed() {
            self.rehearse_new_room(&version, &rules, creator, &create_content, &initial)?;
        }

        // createRoom's visibility publishes without `user_may_publish_room`, as in Synapse.
        let room_id = self
            .found_room(&version, &rules, creator, create_content, visibility == "public", Some(visibility), None)
            .await?;
        for (kind, state_key, content) in initial {
            self.append_event(&room_id, creator, &kind, Some(&state_key), content, AppendOptions::default()).await?;
        }
        let send = |kind: &'static str, key: Option<String>, content: Value| {
            let room_id = room_id.clone();
            async move {
                let Value::Object(content) = content else { return Err(Error::bad_json("content must be an object")) };
                self.append_event(&room_id, creator, kind, key.as_deref(), content, AppendOptions::default()).await
            }
        };
        // The alias is created after the room exists: a module denial fails the request but
        // leaves the room, as in Synapse.
        if let Some(alias) = &alias {
            self.create_alias(requester, alias, room_id.as_str()).await?;
            send("m.room.canonical_alias", Some(String::new()), json!({"alias": alias})).await?;
        }
        // Invites run after the room exists: a denied invite fails the request but the room
        // stays, as in Synapse. Shadow-banned creators' invites are silently dropped.
        if !requester.shadow_banned {
            for invitee in &invitees {
                let mut extra = Map::new();
                if request.is_direct {
                    extra.insert("is_direct".into(), json!(true));
                }
                self.update_membership_unlimited(requester, &room_id, invitee, "invite", None, extra).await?;
            }
            for invite in &request.invite_3pid {
                self.invite_threepid(requester, &room_id, invite).await?;
            }
        }
        Ok((room_id, alias))
    }

    /// Builds, signs and authorises a new room's create event and then `initial`, in order, each
    /// on the state the ones before it make, in memory only: what createRoom will send.
    fn rehearse_new_room(
        &self,
        version: &str,
        rules: &RoomVersionRules,
        creator: &UserId,
        create_content: &Map<String, Value>,
        initial: &[(String, String, Map<String, Value>)],
    ) -> Result<()> {
        let mut content = create_content.clone();
        complete_create_content(&mut content, version, rules, creator);
        let provisional =
            OwnedRoomId::try_from(format!("!{}:{}", random_string(18), self.server_name())).map_err(Error::internal)?;
        let now = MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(now_ms() as u64));
        let mut state: HashMap<(String, String), OwnedEventId> = HashMap::new();
        let mut events: HashMap<OwnedEventId, Pdu> = HashMap::new();
        let mut hashes: HashMap<OwnedEventId, String> = HashMap::new();
        let mut room_id = provisional.clone();
        let (mut prev, mut depth) = (Vec::new(), 0);
        let create = ("m.room.create".to_owned(), String::new(), content);
        // An `initial_state` create event is settled when sent (the same one is a no-op).
        let initial = initial.iter().filter(|(kind, _, _)| kind != "m.room.create");
        for (i, (kind, state_key, content)) in std::iter::once(&create).chain(initial).enumerate() {
            let auth_events = if i == 0 {
                Vec::new()
            } else {
                let raw = serde_json::value::to_raw_value(content).map_err(Error::internal)?;
                ruma::state_res::auth_types_for_event(
                    &TimelineEventType::from(kind.as_str()),
                    creator,
                    Some(state_key),
                    &raw,
                    &rules.authorization,
                )
                .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?
                .iter()
                .filter_map(|(t, k)| state.get(&(t.to_string(), k.clone())).cloned())
                .collect()
            };
            let draft = EventDraft {
                room_id: &room_id,
                sender: creator,
                kind,
                state_key: Some(state_key),
                content: content.clone(),
                prev_events: prev.clone(),
                auth_events,
                depth: depth + 1,
                redacts: None,
                origin_server_ts: now,
                reference_hashes: hashes.clone(),
            };
            let signed = sign_event(draft, rules, self.server_name(), &self.key)?;
            if i == 0 {
                // From room version 12 the create event names the room.
                room_id = signed.pdu.room_id.clone();
            }
            crate::state::check_auth(rules, &signed.pdu, &events, &state).map_err(|e| {
                if i == 0 { Error::bad_json(format!("Invalid creation_content: {e}")) } else { Error::forbidden(e) }
            })?;
            let id = signed.pdu.event_id.clone();
            if let Ok(hash) = ruma::signatures::reference_hash(&signed.object, rules) {
                hashes.insert(id.clone(), hash);
            }
            state.insert((kind.clone(), state_key.clone()), id.clone());
            events.insert(id.clone(), signed.pdu);
            prev = vec![id];
            depth += 1;
        }
        Ok(())
    }

    /// `POST /rooms/{roomId}/upgrade`: a new room with the old one's state, a tombstone in the
    /// old room, and the old room restricted. `user_may_create_room` runs here with a
    /// synthesised config and no admin exemption, as in Synapse.
    pub async fn upgrade_room(&self, requester: &Requester, room_id: &str, new_version: &str) -> Result<String> {
        let old = parse_room_id(room_id)?;
        if !crate::config::SUPPORTED_ROOM_VERSIONS.contains(&new_version) {
            return Err(Error::new(
                ErrorKind::UnsupportedRoomVersion,
                "Your homeserver does not support this room version",
            ));
        }
        if self.current_state(&old).await?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        if !self.can_send_state(&old, requester.user_id.as_str(), "m.room.tombstone").await? {
            return Err(Error::forbidden("You don't have permission to upgrade the room"));
        }
        if requester.shadow_banned {
            crate::users::shadow_ban_delay().await;
            use rand::Rng;
            let fake: String = (0..18).map(|_| rand::thread_rng().gen_range(b'a'..=b'z') as char).collect();
            return Ok(fake);
        }
        const COPIED: &[&str] = &[
            "m.room.server_acl",
            "m.room.encryption",
            "m.room.name",
            "m.room.avatar",
            "m.room.topic",
            "m.room.guest_access",
            "m.room.history_visibility",
            "m.room.join_rules",
            "m.room.power_levels",
        ];
        let mut copied = Vec::new();
        for kind in COPIED {
            if let Some(content) = self.state_content(&old, kind, "").await? {
                copied.push((kind.to_string(), content));
            }
        }
        // What the old room lacks comes from the private_chat preset, as Synapse builds the new
        // room (so a room without m.room.guest_access gets `can_join`).
        for (kind, key, value) in [
            ("m.room.join_rules", "join_rule", "invite"),
            ("m.room.history_visibility", "history_visibility", "shared"),
            ("m.room.guest_access", "guest_access", "can_join"),
        ] {
            if !copied.iter().any(|(t, _)| t == kind) {
                let mut content = Map::new();
                content.insert(key.into(), json!(value));
                copied.push((kind.to_owned(), content));
            }
        }
        let me = &requester.user_id;
        let rules = ruma::RoomVersionId::try_from(new_version)
            .ok()
            .and_then(|v| v.rules())
            .ok_or_else(|| Error::internal("rules"))?;
        // As Synapse: where the new room's ID is not its create event's, the ID is chosen now,
        // the old room's tombstone names it, and the new room's create event names the
        // tombstone as its predecessor. Room version 12 derives the ID from the create event,
        // so its predecessor names only the old room and the tombstone follows.
        let named = (!rules.authorization.room_create_event_id_as_room_id)
            .then(|| OwnedRoomId::try_from(format!("!{}:{}", random_string(18), self.server_name())))
            .transpose()
            .map_err(Error::internal)?;
        let mut creation_content = json!({"predecessor": {"room_id": old}});
        // The old room's federation setting and type carry over (Synapse copies these two).
        if let Some(old_create) = self.state_content(&old, "m.room.create", "").await? {
            for key in ["m.federate", "type"] {
                if let Some(value) = old_create.get(key) {
                    creation_content[key] = value.clone();
                }
            }
        }
        let r = old.to_string();
        let was_published = self.db(move |s| s.get_room(&r)).await?.is_some_and(|row| row.is_public);
        let initial_state: Vec<Value> =
            copied.iter().map(|(t, c)| json!({"type": t, "state_key": "", "content": c})).collect();
        let config = json!({"creation_content": creation_content, "initial_state": initial_state});
        self.modules.user_may_create_room(requester.user_id.as_str(), config.as_object().expect("object")).await?;
        let old_room = &old;
        let send_tombstone = |replacement: OwnedRoomId| async move {
            let old = old_room;
            let mut tombstone = Map::new();
            tombstone.insert("body".into(), json!("This room has been replaced"));
            tombstone.insert("replacement_room".into(), json!(replacement));
            self.append_event(old, me, "m.room.tombstone", Some(""), tombstone, AppendOptions::default()).await
        };
        if let Some(named) = &named {
            let tombstone = send_tombstone(named.clone()).await?;
            creation_content["predecessor"]["event_id"] = json!(tombstone.pdu.event_id);
        }
        let create = creation_content.as_object().cloned().unwrap_or_default();
        let new = self.found_room(new_version, &rules, me, create, was_published, None, named.as_deref()).await?;
        let (displayname, avatar_url) = self.profile_of(me.as_str()).await?;
        let mut join = Map::new();
        join.insert("membership".into(), json!("join"));
        if let Some(d) = displayname {
            join.insert("displayname".into(), json!(d));
        }
        if let Some(a) = avatar_url {
            join.insert("avatar_url".into(), json!(a));
        }
        self.append_event(&new, me, "m.room.member", Some(me.as_str()), join, AppendOptions::default()).await?;
        // Copy power levels with the upgrader at 100 so the rest can be copied, then restore.
        // Into room version 12, the upgrader is the creator: unlimited power, and not listed.
        let mut original_pl =
            copied.iter().find(|(t, _)| t == "m.room.power_levels").map(|(_, c)| c.clone()).unwrap_or_default();
        // Out of it, the old room's creators (unlimited power there) are listed at 100, where
        // Synapse would leave them at the default level.
        if rules.authorization.explicitly_privilege_room_creators {
            if let Some(Value::Object(users)) = original_pl.get_mut("users") {
                users.remove(me.as_str());
            }
        } else {
            let old_state = self.current_state(&old).await?.unwrap_or_default();
            let old_creators = self.power_levels(&old_state).await?.privileged_creators;
            if !old_creators.is_empty()
                && let Value::Object(users) = original_pl.entry("users").or_insert(json!({}))
            {
                for creator in old_creators {
                    users.entry(creator).or_insert(json!(100));
                }
            }
        }
        // Raised only as far as copying needs (Synapse's rule: the highest of state_default,
        // ban and the event levels), never lowered: an upgrader above 100 keeps their level.
        let mut boosted = original_pl.clone();
        if !rules.authorization.explicitly_privilege_room_creators {
            let level = |key: &str| original_pl.get(key).and_then(as_int);
            let events_max = original_pl
                .get("events")
                .and_then(Value::as_object)
                .map(|e| e.values().filter_map(as_int).max().unwrap_or(0))
                .unwrap_or(0);
            let needed = level("state_default").unwrap_or(50).max(level("ban").unwrap_or(50)).max(events_max).max(100);
            let current = original_pl
                .get("users")
                .and_then(|u| u.get(me.as_str()))
                .and_then(as_int)
                .unwrap_or_else(|| level("users_default").unwrap_or(0));
            let users = boosted.entry("users").or_insert(json!({}));
            if let Value::Object(u) = users
                && current < needed
            {
                u.insert(me.to_string(), json!(needed));
            }
        }
        self.append_event(&new, me, "m.room.power_levels", Some(""), boosted.clone(), AppendOptions::default()).await?;
        for (kind, content) in &copied {
            if kind != "m.room.power_levels" {
                self.append_event(&new, me, kind, Some(""), content.clone(), AppendOptions::default()).await?;
            }
        }
        // Bans carry over, as sent in the old room.
        for (user, membership) in self
            .db({
                let r = old.to_string();
                move |s| s.room_memberships(&r)
            })
            .await?
        {
            if membership != "ban" {
                continue;
            }
            if let Some(content) = self.state_content(&old, "m.room.member", &user).await? {
                self.append_event(&new, me, "m.room.member", Some(&user), content, AppendOptions::default()).await?;
            }
        }
        if boosted != original_pl && !original_pl.is_empty() {
            self.append_event(&new, me, "m.room.power_levels", Some(""), original_pl.clone(), AppendOptions::default())
                .await?;
        }
        self.carry_account_data_to_upgraded_room(me, &old, &new).await?;
        self.move_aliases_to_upgraded_room(me, &old, &new).await?;
        if named.is_none() {
            send_tombstone(new.clone()).await?;
        }
        // Restrict the old room so conversation moves on.
        let old_pl = copied.iter().find(|(t, _)| t == "m.room.power_levels").map(|(_, c)| c.clone());
        let mut restricted = old_pl.unwrap_or_default();
        let users_default = restricted.get("users_default").and_then(as_int).unwrap_or(0);
        let level = json!(50.max(users_default + 1));
        restricted.insert("events_default".into(), level.clone());
        restricted.insert("invite".into(), level);
        let _ =
            self.append_event(&old, me, "m.room.power_levels", Some(""), restricted, AppendOptions::default()).await;
        Ok(new.to_string())
    }
}

impl Homeserver {
    /// The old room's local aliases point at the new room, and its canonical alias (and local
    /// alternative aliases) move there too, as Synapse's `_move_aliases_to_new_room`.
    async fn move_aliases_to_upgraded_room(&self, user: &UserId, old: &RoomId, new: &RoomId) -> Result<()> {
        let (from, to) = (old.to_string(), new.to_string());
        self.db(move |s| s.move_aliases(&from, &to)).await?;
        let Some(canonical) = self.state_content(old, "m.room.canonical_alias", "").await? else { return Ok(()) };
        let local = |alias: &Value| alias.as_str().is_some_and(|a| a.ends_with(&format!(":{}", self.server_name())));
        let (mut kept, mut moved) = (canonical.clone(), Map::new());
        if let Some(alias) = canonical.get("alias").filter(|a| local(a)) {
            moved.insert("alias".into(), alias.clone());
            kept.remove("alias");
        }
        if let Some(Value::Array(alt)) = canonical.get("alt_aliases") {
            let (local_alt, remote_alt): (Vec<Value>, Vec<Value>) = alt.iter().cloned().partition(|a| local(a));
            if !local_alt.is_empty() {
                moved.insert("alt_aliases".into(), Value::Array(local_alt));
                match remote_alt.is_empty() {
                    true => kept.remove("alt_aliases"),
                    false => kept.insert("alt_aliases".into(), Value::Array(remote_alt)),
                };
            }
        }
        if moved.is_empty() {
            return Ok(());
        }
        // The old room is restricted by now: a failure there leaves the new room's alias in place.
        if let Err(e) =
            self.append_event(old, user, "m.room.canonical_alias", Some(""), kept, AppendOptions::default()).await
        {
            tracing::info!(room = %old, error = %e.message, "canonical alias left in the upgraded room");
        }
        self.append_event(new, user, "m.room.canonical_alias", Some(""), moved, AppendOptions::default()).await?;
        Ok(())
    }

    /// A user's own state for an upgraded room moves to its successor, as Synapse does: its
    /// tags, and `m.direct` lists naming the old room name the new one too (for the upgrader at
    /// the upgrade, for other members when they join; tags already there are kept).
    pub(super) async fn carry_account_data_to_upgraded_room(
        &self,
        user: &UserId,
        old: &RoomId,
        new: &RoomId,
    ) -> Result<()> {
        let (u, o, n) = (user.to_string(), old.to_string(), new.to_string());
        let (old_tags, new_tags) =
            self.db(move |s| Ok((s.get_account_data(&u, &o, "m.tag")?, s.get_account_data(&u, &n, "m.tag")?))).await?;
        if let (Some(tags), None) = (old_tags, new_tags) {
            let (u, n) = (user.to_string(), new.to_string());
            let position = self.db(move |s| s.set_account_data(&u, &n, "m.tag", &tags)).await?;
            self.advance_stream(position);
        }
        let u = user.to_string();
        let Some(Value::Object(mut direct)) = self.db(move |s| s.get_account_data(&u, "", "m.direct")).await? else {
            return Ok(());
        };
        let mut changed = false;
        for rooms in direct.values_mut() {
            if let Value::Array(rooms) = rooms
                && rooms.iter().any(|r| r == old.as_str())
                && !rooms.iter().any(|r| r == new.as_str())
            {
                rooms.push(json!(new));
                changed = true;
            }
        }
        if changed {
            let (u, content) = (user.to_string(), Value::Object(direct));
            let position = self.db(move |s| s.set_account_data(&u, "", "m.direct", &content)).await?;
            self.advance_stream(position);
        }
        Ok(())
    }
}

/// What the server adds to a create event's content: the creator (before room version 11)
/// and the room version.
fn complete_create_content(
    content: &mut Map<String, Value>,
    version: &str,
    rules: &RoomVersionRules,
    creator: &UserId,
) {
    if !rules.authorization.use_room_create_sender {
        content.insert("creator".into(), json!(creator));
    }
    content.insert("room_version".into(), json!(version));
}

/// A state event createRoom sends: (type, state key, content).
fn state_event(kind: &str, state_key: &str, content: Value) -> Result<(String, String, Map<String, Value>)> {
    let Value::Object(content) = content else { return Err(Error::bad_json("content must be an object")) };
    Ok((kind.to_owned(), state_key.to_owned(), content))
}
