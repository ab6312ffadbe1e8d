//! Joining and leaving over federation, both ways: `make_join`/`send_join` and `make_leave`/`send_leave` for other servers, and joining a room this server is not in.

use super::*;

impl Homeserver {
    /// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`: a join event for `user_id` to
    /// fill in and sign, built on the room's current state.
    pub async fn make_join(&self, origin: &str, room_id: &str, user_id: &str, versions: &[String]) -> Result<Value> {
        self.membership_template(origin, room_id, user_id, "join", Some(versions)).await
    }

    /// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`: the same for a leave (an
    /// invite rejected by a server that is not in the room).
    pub async fn make_leave(&self, origin: &str, room_id: &str, user_id: &str) -> Result<Value> {
        self.membership_template(origin, room_id, user_id, "leave", None).await
    }

    pub(super) async fn membership_template(
        &self,
        origin: &str,
        room_id: &str,
        user_id: &str,
        membership: &str,
        versions: Option<&[String]>,
    ) -> Result<Value> {
        let room_id = OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
        self.check_server_acl(origin, &room_id).await?;
        let user = ruma::OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
        if user.server_name().as_str() != origin {
            return Err(Error::forbidden("The user is not from the server asking"));
        }
        let version = {
            let r = room_id.to_string();
            self.db(move |s| s.get_room(&r)).await?.map(|r| r.room_version)
        }
        .ok_or_else(|| Error::not_found("Unknown room"))?;
        let versions: Vec<&str> = match versions {
            Some([]) => vec!["1"],
            Some(v) => v.iter().map(String::as_str).collect(),
            None => vec![version.as_str()],
        };
        if !versions.contains(&version.as_str()) {
            return Err(Error::new(
                ErrorKind::Module { status: 400, errcode: "M_INCOMPATIBLE_ROOM_VERSION".into() },
                "Your homeserver does not support the features required to join this room",
            )
            .with_fields([("room_version".to_owned(), json!(version))].into_iter().collect()));
        }
        let (rules, state, prev_events, depth) = {
            let guard = self.room_lock(&room_id).await?;
            let Some(cache) = guard.as_ref() else { return Err(Error::not_found("Unknown room")) };
            let basis = cache.basis();
            (basis.rules, basis.state, basis.prev_events, basis.depth)
        };
        if !self.participates_in(&room_id).await? {
            return Err(Error::not_found("This server is not in the room"));
        }
        let content: Map<String, Value> = [("membership".to_owned(), json!(membership))].into_iter().collect();
        let raw = serde_json::value::to_raw_value(&content).map_err(Error::internal)?;
        let auth_types = ruma::state_res::auth_types_for_event(
            &ruma::events::TimelineEventType::RoomMember,
            &user,
            Some(user.as_str()),
            &raw,
            &rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;
        let auth_events: Vec<OwnedEventId> =
            auth_types.iter().filter_map(|(t, k)| state.get(&(t.to_string(), k.clone())).cloned()).collect();
        let ids: Vec<OwnedEventId> = prev_events.iter().chain(&auth_events).cloned().collect();
        let reference_hashes = self.reference_hashes(&rules, ids).await?;
        let ts = now_ms();
        // Checked now, as the resident server would check the signed join: a user who may not
        // join hears it here.
        let trial = sign_event(
            EventDraft {
                room_id: &room_id,
                sender: &user,
                kind: "m.room.member",
                state_key: Some(user.as_str()),
                content: content.clone(),
                prev_events: prev_events.clone(),
                auth_events: auth_events.clone(),
                depth: depth + 1,
                redacts: None,
                origin_server_ts: ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(ts as u64)),
                reference_hashes: reference_hashes.clone(),
            },
            &rules,
            self.server_name(),
            &self.key,
        )?;
        self.authorised_by(&rules, &trial.pdu, &state).await?.map_err(Error::forbidden)?;
        Ok(json!({
            "room_version": version,
            "event": {
                "type": "m.room.member",
                "room_id": room_id,
                "sender": user,
                "state_key": user,
                "content": content,
                "prev_events": event_references(&prev_events, &rules, &reference_hashes),
                "auth_events": event_references(&auth_events, &rules, &reference_hashes),
                "depth": depth + 1,
                "origin": origin,
                "origin_server_ts": ts,
            }
        }))
    }

    /// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`: accepts a signed leave.
    pub async fn send_leave(&self, origin: &str, room_id: &str, event_id: &str, pdu: &Value) -> Result<Value> {
        self.send_membership(origin, room_id, event_id, pdu, "leave").await?;
        Ok(json!({}))
    }

    /// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`: accepts a signed join and
    /// answers with the room's state before it and the auth chain.
    pub async fn send_join(&self, origin: &str, room_id: &str, event_id: &str, pdu: &Value) -> Result<Value> {
        self.send_membership(origin, room_id, event_id, pdu, "join").await
    }

    pub(super) async fn send_membership(
        &self,
        origin: &str,
        room_id: &str,
        event_id: &str,
        pdu: &Value,
        membership: &str,
    ) -> Result<Value> {
        let room_id = OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
        self.check_server_acl(origin, &room_id).await?;
        let rules = {
            let guard = self.room_lock(&room_id).await?;
            guard.as_ref().map(|c| c.rules.clone()).ok_or_else(|| Error::not_found("Unknown room"))?
        };
        let (id, object) = identify(pdu, &rules)?;
        if id.as_str() != event_id {
            return Err(Error::bad_json("The event ID does not match the event"));
        }
        let field = |k: &str| object.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let sender = field("sender").unwrap_or_default();
        if field("type").as_deref() != Some("m.room.member")
            || field("state_key").as_deref() != Some(sender.as_str())
            || object
                .get("content")
                .and_then(|c| c.as_object())
                .and_then(|c| c.get("membership"))
                .and_then(|m| m.as_str())
                != Some(membership)
        {
            return Err(Error::bad_json(format!("Not a {membership} event")));
        }
        if sender.split_once(':').map(|(_, s)| s) != Some(origin) {
            return Err(Error::forbidden("The joining user is not from the server sending the join"));
        }
        let others: Vec<String> = {
            let guard = self.room_lock(&room_id).await?;
            guard.as_ref().map(|c| c.destinations()).unwrap_or_default().into_iter().filter(|d| d != origin).collect()
        };
        let received = self.receive_pdu(Some(origin), &room_id, pdu, others).await?;
        match &received.outcome {
            Outcome::Accepted | Outcome::Known => {}
            Outcome::Dropped => return Err(Error::forbidden(format!("The {membership} was dropped"))),
            Outcome::SoftFailed => {
                return Err(Error::forbidden(format!("The {membership} is not allowed by the room's current state")));
            }
            Outcome::Rejected(why) => return Err(Error::forbidden(format!("The {membership} is not allowed: {why}"))),
        }
        if membership != "join" {
            return Ok(json!({}));
        }
        let state_before = match received.state_before {
            Some(s) => s,
            None => {
                let pdu = Pdu::from_json_str(&received.json)?;
                Arc::new(self.state_after_events(&rules, &pdu.prev_events).await?.unwrap_or_default())
            }
        };
        let state_ids: Vec<OwnedEventId> = state_before.values().cloned().collect();
        // The auth chain of the state and the join, events of the state included where they
        // are in it (as Synapse sends it; servers check the state against it).
        let mut chain_ids = self.auth_chain_of(state_ids.iter().cloned().chain([id.clone()]).collect()).await?;
        chain_ids.retain(|e| *e != id);
        let delivered: Vec<OwnedEventId> =
            std::iter::once(id.clone()).chain(state_ids.iter().cloned()).chain(chain_ids.iter().cloned()).collect();
        self.notify_delivered_ids(origin, &delivered, myelin_module_api::federation::DeliveryMethod::SendJoin).await;
        let state_json = self.wire_pdus(state_ids).await?;
        let chain_json = self.wire_pdus(chain_ids).await?;
        Ok(json!({
            "origin": self.server_name(),
            "state": state_json,
            "auth_chain": chain_json,
            "event": wire_pdu(&received.json)?,
            "members_omitted": false,
        }))
    }

    /// Joins a local user to a room this server is not in, through one of `servers`
    /// (`make_join`, sign, `send_join`, then store the state it answers with).
    pub(crate) async fn join_remote_room(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        servers: &[String],
    ) -> Result<()> {
        let user = &requester.user_id;
        let versions: String =
            crate::config::SUPPORTED_ROOM_VERSIONS.iter().map(|v| format!("ver={v}")).collect::<Vec<_>>().join("&");
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?{versions}",
            crate::server::url_encode(room_id.as_str()),
            crate::server::url_encode(user.as_str())
        );
        let (server, answer) = self.ask_in_turn(servers, &path, "make_join").await?;
        let version = answer["room_version"].as_str().unwrap_or("1").to_owned();
        let rules = rules_for(&version).ok_or_else(|| {
            Error::new(ErrorKind::UnsupportedRoomVersion, format!("Room version {version} is not supported"))
        })?;
        let template = &answer["event"];
        let (prev_events, auth_events, reference_hashes) = crate::events::template_references(template);
        let mut content = template["content"].as_object().cloned().unwrap_or_default();
        content.insert("membership".into(), json!("join"));
        let (displayname, avatar_url) = self.profile_of(user.as_str()).await?;
        if let Some(d) = displayname {
            content.entry("displayname").or_insert(json!(d));
        }
        if let Some(a) = avatar_url {
            content.entry("avatar_url").or_insert(json!(a));
        }
        let depth = template["depth"].as_u64().unwrap_or(1);
        let signed = sign_event(
            EventDraft::own_membership(
                room_id,
                user,
                content,
                prev_events.clone(),
                auth_events,
                depth,
                reference_hashes,
            ),
            &rules,
            self.server_name(),
            &self.key,
        )?;
        let join_id = signed.pdu.event_id.clone();
        let body = wire_pdu(&signed.json)?;
        let ids =
            format!("{}/{}", crate::server::url_encode(room_id.as_str()), crate::server::url_encode(join_id.as_str()));
        let (v2, v1) =
            (format!("/_matrix/federation/v2/send_join/{ids}"), format!("/_matrix/federation/v1/send_join/{ids}"));
        let answer = self
            .federation
            .client
            .put_v2_or_v1(&self.key, self.server_name(), &server, (&v2, &body), (&v1, &body), REMOTE_TIMEOUT)
            .await
            .map_err(|e| e.into_error(&format!("send_join via {server}")))?;

        // Every event of the answer: hashed, verified, authorised in depth order. Hashing and
        // signature checks (most of the work for a big room) run on every core.
        let items: Vec<(Value, bool)> = [(&answer["state"], true), (&answer["auth_chain"], false)]
            .into_iter()
            .flat_map(|(list, is_state)| {
                list.as_array().cloned().unwrap_or_default().into_iter().map(move |v| (v, is_state))
            })
            .collect();
        let verified = self.verify_remote_events(&rules, room_id, items, "a send_join answer").await?;
        let mut events: HashMap<OwnedEventId, (Pdu, String)> = HashMap::new();
        let mut state_ids = Vec::new();
        for (id, pdu, json, is_state) in verified {
            if is_state {
                state_ids.push(id.clone());
            }
            events.insert(id, (pdu, json));
        }
        let pdus: HashMap<OwnedEventId, Pdu> = events.iter().map(|(id, (p, _))| (id.clone(), p.clone())).collect();
        // Each checked against its own auth events, oldest first; stored as outliers below.
        let outliers = self.check_fetched(&rules, room_id, events).await?;
        let rejected: HashSet<&str> = outliers.iter().filter(|o| o.rejected).map(|o| o.event_id.as_str()).collect();
        let mut state: StateMap = StateMap::new();
        for id in &state_ids {
            if rejected.contains(id.as_str()) {
                continue;
            }
            let pdu = &pdus[id];
            if let Some(key) = &pdu.state_key {
                state.insert((pdu.kind.to_string(), key.clone()), id.clone());
            }
        }
        let create =
            state.get(&("m.room.create".to_owned(), String::new())).and_then(|id| pdus.get(id)).ok_or_else(|| {
                Error::new(
                    ErrorKind::Module { status: 502, errcode: "M_UNKNOWN".into() },
                    "The resident server sent no valid room state",
                )
            })?;
        let creator = create.sender.to_string();
        // Our own join, against the state it was built on.
        let mut with_join = pdus.clone();
        with_join.insert(join_id.clone(), signed.pdu.clone());
        let relevant: StateMap = {
            let types = ruma::state_res::auth_types_for_event(
                &signed.pdu.kind,
                &signed.pdu.sender,
                signed.pdu.state_key.as_deref(),
                &signed.pdu.content,
                &rules.authorization,
            )
            .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;
            types
                .into_iter()
                .filter_map(|(t, k)| {
                    let key = (t.to_string(), k);
                    state.get(&key).map(|id| (key, id.clone()))
                })
                .collect()
        };
        crate::state::check_auth(&rules, &signed.pdu, &with_join, &relevant)
            .map_err(|e| Error::forbidden(format!("The room's state does not allow this join: {e}")))?;

        let member_key = ("m.room.member".to_owned(), user.to_string());
        let join_json = crate::unsigned::with_replaced_state(
            signed.json.clone(),
            join_id.as_str(),
            state.get(&member_key).map(|e| e.as_str()),
        )?;
        state.insert(member_key, join_id.clone());
        let entries: Vec<StateEntry> = state
            .iter()
            .map(|((t, k), e)| StateEntry { event_type: t.clone(), state_key: k.clone(), event_id: e.to_string() })
            .collect();

        let mut guard = self.room_lock(room_id).await?;
        let room_row =
            RoomRow { room_id: room_id.to_string(), room_version: version.clone(), creator, is_public: false };
        self.db(move |s| {
            if s.get_room(&room_row.room_id)?.is_none() {
                s.create_room(&room_row)?;
            }
            s.persist_outliers(&outliers)
        })
        .await?;
        let rid = room_id.to_string();
        let written = self
            .write_marked(EventWrite {
                event_id: join_id.to_string(),
                room_id: rid.clone(),
                event_type: "m.room.member".into(),
                state_key: Some(user.to_string()),
                sender: user.to_string(),
                membership: Some("join".into()),
                json: join_json,
                state: StateChange::New { prev: None, delta: entries.clone() },
                prev_events: prev_events.iter().map(|e| e.to_string()).collect(),
                txn: None,
                redaction: None,
                rejected: false,
                soft_failed: false,
                current_state: Some(entries),
                destinations: Vec::new(),
            })
            .await;
        // The room is read again from storage by whoever needs it next.
        *guard = None;
        drop(guard);
        let (stream, _) = written?;
        self.room_written(&rid, stream);
        self.advance_stream(stream);
        Ok(())
    }

    /// A signed GET to each of `servers` in turn (this one skipped) until one answers:
    /// `(server, answer)`, else the last failure.
    pub(crate) async fn ask_in_turn(&self, servers: &[String], path: &str, what: &str) -> Result<(String, Value)> {
        let mut last_error = Error::not_found("No known servers to ask");
        for server in servers.iter().filter(|s| s.as_str() != self.server_name()) {
            match self
                .federation
                .client
                .request(&self.key, self.server_name(), server, "GET", path, None, REMOTE_TIMEOUT)
                .await
            {
                Ok(answer) => return Ok((server.clone(), answer)),
                Err(e) => last_error = e.into_error(&format!("{what} via {server}")),
            }
        }
        Err(last_error)
    }
}
