//! Appending local events: build, check, persist, announce (the single path of every local event).

use super::*;

impl Homeserver {
    /// Builds, authorises and persists one local event. The one path every local event takes.
    ///
    /// State events and redactions are built, checked and persisted under the room's send lock,
    /// against the current state. Other events (messages) take the lock only to read what they
    /// are built on and, later, to persist: building, signing, module callbacks and auth checks
    /// run outside it, so a slow module (a Python spam checker, an HTTP antispam backend) does
    /// not serialise a busy room. Messages built at the same time share parents, and the next
    /// event merges them, as on Synapse; their state is the state they were built on.
    pub(crate) async fn append_event(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        kind: &str,
        state_key: Option<&str>,
        content: Map<String, Value>,
        options: AppendOptions,
    ) -> Result<Appended> {
        // Third-party rules are asked about a state event or redaction before the room is
        // locked for its write: a module may send events into the room from its callback
        // (synapse-freeze-room does), and those need the lock. The event is then built on the
        // room as it is once locked, as Synapse recomputes an event's context after such a
        // callback. (Messages are checked outside the lock anyway.)
        let is_message = state_key.is_none() && kind != "m.room.redaction";
        let (content, options) = if !is_message && self.modules.has_check_event_allowed() && !options.rules_approved {
            let basis = match self.room_lock(room_id).await?.as_ref() {
                Some(cache) => {
                    if let Some(existing) = self.same_state_event(cache, sender, kind, state_key, &content).await? {
                        return Ok(existing);
                    }
                    cache.basis()
                }
                None => return Err(Error::not_found(format!("Unknown room {room_id}"))),
            };
            if let Some(existing) = self.txn_event(&options).await? {
                return Ok(existing);
            }
            let ask = AppendOptions { spam_check: false, remote_invite: None, ..options.clone() };
            let approved = self.build_checked(room_id, sender, kind, state_key, content, &ask, &basis).await?;
            (approved.pdu.content_map(), AppendOptions { rules_approved: true, ..options })
        } else {
            (content, options)
        };
        let mut guard = self.room_lock(room_id).await?;
        let Some(cache) = guard.as_mut() else {
            return Err(Error::not_found(format!("Unknown room {room_id}")));
        };
        let basis = cache.basis();
        if let (None, Some(group), false) = (state_key, cache.state_group, kind == "m.room.redaction") {
            drop(guard);
            // A retry is answered before anything is built (or any module asked again), from
            // the recent transaction IDs kept in memory (loaded at start-up, so across restarts).
            if let Some(existing) = self.recent_txn_event(&options).await? {
                return Ok(existing);
            }
            let checked = self.build_checked(room_id, sender, kind, None, content, &options, &basis).await?;
            let mut guard = self.room_lock(room_id).await?;
            let Some(cache) = guard.as_mut() else {
                return Err(Error::not_found(format!("Unknown room {room_id}")));
            };
            // A retry with the same transaction ID may be on its way to the writer (then wait
            // for it), or have landed while this one was built. Claimed first, looked up
            // second: a request gives its claim up only after its commit.
            let txn_key = options.txn.clone();
            if let Some(key) = &txn_key
                && !self.rooms.txns_in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone())
            {
                drop(guard);
                return self.wait_for_txn(&options).await;
            }
            let txn_done = || {
                if let Some(key) = &txn_key {
                    self.rooms.txns_in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
                }
            };
            if let Some(existing) = self.recent_txn_event(&options).await.inspect_err(|_| txn_done())? {
                txn_done();
                return Ok(existing);
            }
            let pending = self
                .submit_checked(room_id, sender, kind, None, &checked, StateChange::Same(group), &basis, &options)
                .await
                .inspect_err(|_| txn_done())?;
            // The cache moves on now, so the next message builds on this one while it is being
            // committed (the writer keeps queue order, so parents commit first).
            cache.record(&basis, &checked.pdu.event_id);
            drop(guard);
            let written = self.finish_write(room_id, &checked, pending).await;
            if written.is_ok()
                && let Some(key) = &txn_key
            {
                let mut recent = self.rooms.recent_txns.lock().unwrap_or_else(|p| p.into_inner());
                recent.insert(key.clone(), checked.pdu.event_id.to_string());
            }
            txn_done();
            let (stream, _) = match written {
                Ok(w) => w,
                Err(e) => {
                    // The cache counted the event as an extremity: start again from storage.
                    self.forget_room_cache(room_id);
                    // A retry of a transaction too old for memory conflicts here with its
                    // first event, which is the answer.
                    if txn_key.is_some()
                        && let Ok(Some(existing)) = self.txn_event(&options).await
                    {
                        return Ok(existing);
                    }
                    return Err(e);
                }
            };
            return Ok(self.announce(stream, checked));
        }

        if let Some(existing) = self.txn_event(&options).await? {
            return Ok(existing);
        }
        if let Some(existing) = self.same_state_event(cache, sender, kind, state_key, &content).await? {
            return Ok(existing);
        }
        let mut checked = self.build_checked(room_id, sender, kind, state_key, content, &options, &basis).await?;
        if let Some((target, room_state)) = &options.remote_invite {
            checked.json = self.invite_over_federation(room_id, &checked.json, target, room_state).await?;
        }
        let state_change = match state_key {
            Some(key) => {
                let entry = StateEntry {
                    event_type: kind.to_owned(),
                    state_key: key.to_owned(),
                    event_id: checked.pdu.event_id.to_string(),
                };
                match cache.state_group {
                    Some(prev) if cache.chain_len < myelin_storage::sqlite::MAX_STATE_DELTA_CHAIN => {
                        StateChange::New { prev: Some(prev), delta: vec![entry] }
                    }
                    _ => {
                        let mut full = state_entries(&cache.state, |t, k| !(t == kind && k == key));
                        full.push(entry);
                        StateChange::New { prev: None, delta: full }
                    }
                }
            }
            None => match cache.state_group {
                Some(g) => StateChange::Same(g),
                None => StateChange::New { prev: None, delta: state_entries(&cache.state, |_, _| true) },
            },
        };
        let is_snapshot = matches!(&state_change, StateChange::New { prev: None, .. });
        let pending =
            self.submit_checked(room_id, sender, kind, state_key, &checked, state_change, &basis, &options).await?;
        let (stream, group) = self.finish_write(room_id, &checked, pending).await?;
        if let Some(key) = state_key {
            Arc::make_mut(&mut cache.state).insert((kind.to_owned(), key.to_owned()), checked.pdu.event_id.clone());
            cache.chain_len = if is_snapshot { 0 } else { cache.chain_len + 1 };
            if kind == "m.room.member" {
                cache.track_member(key, checked.pdu.membership().as_deref(), self.server_name());
            }
        }
        cache.state_group = Some(group);
        cache.record(&basis, &checked.pdu.event_id);
        if state_key.is_some() {
            // Known now, so that reading the new group's visibility later costs nothing.
            self.remember_group_visibility(group, &cache.state).await;
        }
        drop(guard);
        Ok(self.announce(stream, checked))
    }

    /// As Synapse: a state event the sender already set, with the same content, is not sent
    /// again (setting a topic twice, joining twice); the current one is the answer.
    async fn same_state_event(
        &self,
        cache: &RoomCache,
        sender: &UserId,
        kind: &str,
        state_key: Option<&str>,
        content: &Map<String, Value>,
    ) -> Result<Option<Appended>> {
        let Some(key) = state_key else { return Ok(None) };
        let Some(current) = cache.state.get(&(kind.to_owned(), key.to_owned())).cloned() else { return Ok(None) };
        match self.load_events(vec![current.to_string()]).await?.remove(&current) {
            Some(existing) if existing.sender == *sender && existing.content_map() == *content => {
                let id = current.to_string();
                self.db(move |s| s.get_event(&id)).await?.map(appended).transpose()
            }
            _ => Ok(None),
        }
    }

    /// For a request whose transaction ID another request is writing: that request's event,
    /// once written.
    pub(super) async fn wait_for_txn(&self, options: &AppendOptions) -> Result<Appended> {
        for _ in 0..1000 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            if let Some(existing) = self.txn_event(options).await? {
                return Ok(existing);
            }
        }
        Err(Error::internal("a request with the same transaction ID did not finish"))
    }

    /// [`Homeserver::txn_event`] from the transaction IDs kept in memory (the newest
    /// [`RecentTxns::CAPACITY`] messages'). A client retries within moments; one retrying an
    /// older transaction than that gets a new event.
    pub(super) async fn recent_txn_event(&self, options: &AppendOptions) -> Result<Option<Appended>> {
        let Some(key) = &options.txn else { return Ok(None) };
        let Some(id) = self.rooms.recent_txns.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned() else {
            return Ok(None);
        };
        self.db(move |s| s.get_event(&id)).await?.map(appended).transpose()
    }

    /// The event an earlier request with the same transaction ID created, if any.
    pub(super) async fn txn_event(&self, options: &AppendOptions) -> Result<Option<Appended>> {
        let Some((user, device, txn)) = &options.txn else { return Ok(None) };
        let (u, d, t) = (user.clone(), device.clone(), txn.clone());
        let row = self
            .db(move |s| match s.get_txn_event(&u, &d, &t)? {
                Some(id) => s.get_event(&id),
                None => Ok(None),
            })
            .await?;
        row.map(appended).transpose()
    }

    /// Builds and signs an event on `basis`, runs the module callbacks that may change or refuse
    /// it and the authorization rules. Nothing is written.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn build_checked(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        kind: &str,
        state_key: Option<&str>,
        content: Map<String, Value>,
        options: &AppendOptions,
        basis: &Basis,
    ) -> Result<Checked> {
        let timeline_type = TimelineEventType::from(kind);
        let raw_content = serde_json::value::to_raw_value(&content).map_err(Error::internal)?;
        let auth_types = ruma::state_res::auth_types_for_event(
            &timeline_type,
            sender,
            state_key,
            &raw_content,
            &basis.rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;
        let auth_ids: Vec<OwnedEventId> =
            auth_types.iter().filter_map(|(t, k)| basis.state.get(&(t.to_string(), k.clone())).cloned()).collect();
        let redacts = if timeline_type == TimelineEventType::RoomRedaction {
            content.get("redacts").and_then(Value::as_str).map(str::to_owned)
        } else {
            None
        };
        let mut to_load: Vec<String> = auth_ids.iter().map(|e| e.to_string()).collect();
        to_load.extend(crate::state::implied_auth_events(&basis.rules, room_id).map(|e| e.to_string()));
        if let Some(target) = &redacts {
            to_load.push(target.clone());
        }
        let loaded = self.load_events(to_load).await?;

        let references = basis.prev_events.iter().chain(&auth_ids).cloned().collect();
        let reference_hashes = self.reference_hashes(&basis.rules, references).await?;
        let origin_server_ts = options
            .origin_server_ts
            .unwrap_or_else(|| MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(now_ms() as u64)));
        let draft = |content: Map<String, Value>| EventDraft {
            room_id,
            sender,
            kind,
            state_key,
            content,
            prev_events: basis.prev_events.clone(),
            auth_events: auth_ids.clone(),
            depth: basis.depth + 1,
            // v11 moved `redacts` into content; v10 needs it at the top level too.
            redacts: if basis.rules.redaction.keep_room_redaction_redacts { None } else { redacts.as_deref() },
            origin_server_ts,
            reference_hashes: reference_hashes.clone(),
        };
        let mut signed = sign_event(draft(content), &basis.rules, self.server_name(), &self.key)?;
        // Third-party rules see every local event, membership included, before the spam check;
        // a module may replace the content, and the event is then built again.
        let state_views = if self.modules.has_check_event_allowed() || self.modules.has_on_new_event() {
            self.state_views(&basis.state).await?
        } else {
            Vec::new()
        };
        if self.modules.has_check_event_allowed() && !options.rules_approved {
            let view = EventView::new(serde_json::from_str(&signed.json).map_err(Error::internal)?);
            if let Some(content) = self.modules.check_event_allowed(&view, &state_views).await? {
                signed = sign_event(draft(content), &basis.rules, self.server_name(), &self.key)?;
            }
        }
        let pdu = signed.pdu;

        crate::state::check_auth(&basis.rules, &pdu, &loaded, &basis.state).map_err(Error::forbidden)?;

        // Redacting someone else's event needs the redact power level.
        let mut redaction = None;
        if let Some(target) = &redacts {
            let target_id =
                OwnedEventId::try_from(target.as_str()).map_err(|_| Error::bad_json("Invalid event ID in redacts"))?;
            if let Some(original) = loaded.get(&target_id) {
                if original.room_id != *room_id {
                    return Err(Error::new(
                        ErrorKind::Module { status: 400, errcode: "M_UNKNOWN".into() },
                        "Cannot redact event from a different room",
                    ));
                }
                if original.sender != *sender {
                    let pl = self.power_levels(&basis.state).await?;
                    if pl.user(sender.as_str()) < pl.int("redact", 50) {
                        return Err(Error::forbidden("You don't have permission to redact events"));
                    }
                }
                let because = client_event(&serde_json::from_str(&signed.json).map_err(Error::internal)?);
                let original_json = self
                    .db({
                        let t = target.clone();
                        move |s| s.get_event(&t)
                    })
                    .await?
                    .map(|r| r.json)
                    .unwrap_or_default();
                redaction = Some((target.clone(), redact_json(&original_json, &basis.rules, Some(&because))?));
            }
        }

        if options.spam_check {
            let view = EventView::new(serde_json::from_str(&signed.json).map_err(Error::internal)?);
            self.modules.check_event_for_spam(&view).await?;
        }
        let replaced = state_key.and_then(|k| basis.state.get(&(kind.to_owned(), k.to_owned())));
        let json =
            crate::unsigned::with_replaced_state(signed.json, pdu.event_id.as_str(), replaced.map(|e| e.as_str()))?;
        Ok(Checked { pdu, json, redaction, state_views, destinations: basis.destinations.clone() })
    }

    /// Queues a checked event's write (with its state change, the forward extremities it
    /// replaces, its parents, and its transaction ID, all in one transaction) on the event
    /// writer; [`Homeserver::finish_write`] waits for it. Writes commit in the order queued, so
    /// an event queued under the room's lock commits after its parents.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn submit_checked(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        kind: &str,
        state_key: Option<&str>,
        checked: &Checked,
        state: StateChange,
        basis: &Basis,
        options: &AppendOptions,
    ) -> Result<PendingWrite> {
        let rid = room_id.to_string();
        if kind == "m.room.join_rules"
            && let Some(rule) = checked.pdu.content_map().get("join_rule").and_then(Value::as_str).map(str::to_owned)
        {
            let r = rid.clone();
            self.db(move |s| s.set_room_join_rule(&r, &rule)).await?;
        }
        // Marked before the commit so that no sync trusts a cached section of this room
        // once the stream can cover the event.
        self.sync.cache.writing(&rid);
        Ok(self.rooms.writer.submit(EventWrite {
            event_id: checked.pdu.event_id.to_string(),
            room_id: rid,
            event_type: kind.to_owned(),
            state_key: state_key.map(str::to_owned),
            sender: sender.to_string(),
            membership: checked.pdu.membership(),
            json: checked.json.clone(),
            state,
            prev_events: basis.prev_events.iter().map(|e| e.to_string()).collect(),
            txn: options.txn.clone(),
            redaction: checked.redaction.clone(),
            rejected: false,
            soft_failed: false,
            current_state: None,
            destinations: checked.destinations.clone(),
        }))
    }

    /// Waits for a write [`Homeserver::submit_checked`] queued. Returns `(stream position,
    /// state group)`.
    pub(super) async fn finish_write(
        &self,
        room_id: &RoomId,
        checked: &Checked,
        pending: PendingWrite,
    ) -> Result<(i64, i64)> {
        let written = match EventWriter::finish(pending).await {
            // The same event is already stored: messages built at the same moment on the same
            // parents with the same content and sender are one event (the same reference hash),
            // as they would be on Synapse. The first one's position stands for both.
            Err(myelin_storage::StorageError::Conflict) => {
                let id = checked.pdu.event_id.to_string();
                match self.db(move |s| s.get_event(&id)).await? {
                    Some(row) => Ok((row.stream_ordering, row.state_group.unwrap_or_default())),
                    None => Err(Error::from(myelin_storage::StorageError::Conflict)),
                }
            }
            other => other.map_err(Error::from),
        };
        let position = written.as_ref().ok().map(|(stream, _)| *stream);
        self.sync.cache.written(room_id.as_str(), position, *self.sync.stream.borrow());
        if let Some(position) = position {
            self.message_written(room_id.as_str(), position, &checked.pdu);
        }
        if written.is_ok() {
            if let Some((target, _)) = &checked.redaction
                && let Ok(target) = OwnedEventId::try_from(target.as_str())
            {
                // Its stored JSON was just rewritten, here and for every process.
                self.forget_state_event(&target);
                if self.has_bus() {
                    self.publish(format!("redacted {target}"));
                }
            }
            if checked.pdu.state_key.is_some() {
                self.remember_state_event(&checked.pdu);
            }
            if crate::federation::rooms::ends_sharing(checked.pdu.membership().as_deref()) {
                self.forget_unshared_device_lists(room_id.as_str()).await;
            }
            self.wake_destinations(&checked.destinations);
        }
        written
    }

    /// After a persist: wakes `/sync` and runs `on_new_event` in the background.
    pub(super) fn announce(&self, stream: i64, checked: Checked) -> Appended {
        self.advance_stream(stream);
        if self.modules.has_on_new_event()
            && let Ok(object) = serde_json::from_str(&checked.json)
        {
            self.modules.spawn_on_new_event(EventView::new(object), checked.state_views);
        }
        Appended { pdu: checked.pdu, json: checked.json }
    }
}
