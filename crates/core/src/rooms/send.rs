//! Sending messages and state, redactions, and the modules' sends.

use super::*;

/// Synapse's refusal of a suspended account's messages and state (and room creation).
pub(crate) const SUSPENDED_SENDING: &str = "Sending messages while account is suspended is not allowed.";

impl Homeserver {
    /// A suspended account may redact its own events only (an unknown event is left to the
    /// usual checks, as Synapse does).
    async fn refuse_suspended_redaction(&self, requester: &Requester, event_id: &str) -> Result<()> {
        let id = event_id.to_owned();
        let sender = self.db(move |s| s.get_event(&id)).await?.and_then(|row| {
            serde_json::from_str::<Value>(&row.json).ok().and_then(|j| j["sender"].as_str().map(str::to_owned))
        });
        match sender {
            Some(sender) if sender != requester.user_id.as_str() => {
                requester.refuse_if_suspended("You can only redact your own events while account is suspended.")
            }
            _ => Ok(()),
        }
    }

    /// Sends a message-like event (`PUT /send`), idempotent per device and transaction ID.
    pub async fn send_message(
        &self,
        requester: &Requester,
        room_id: &str,
        kind: &str,
        txn_id: &str,
        content: Map<String, Value>,
    ) -> Result<String> {
        let room_id = parse_room_id(room_id)?;
        if requester.suspended {
            match content.get("redacts").and_then(Value::as_str).filter(|_| kind == "m.room.redaction") {
                Some(redacted) => self.refuse_suspended_redaction(requester, redacted).await?,
                None => requester.refuse_if_suspended(SUSPENDED_SENDING)?,
            }
        }
        if requester.shadow_banned {
            crate::users::shadow_ban_delay().await;
            return Ok(format!("${}", random_string(43)));
        }
        if kind == "m.room.member" || kind == "m.room.create" {
            return Err(Error::bad_json(format!("Cannot send {kind} with /send")));
        }
        self.require_joined(&room_id, &requester.user_id).await?;
        if !requester.is_internal() {
            self.limit_message(requester.user_id.as_str(), false).await?;
        }
        let txn = Some((requester.user_id.to_string(), requester.device_id.clone(), txn_id.to_owned()));
        let appended = self
            .append_event(
                &room_id,
                &requester.user_id,
                kind,
                None,
                content,
                AppendOptions {
                    txn,
                    spam_check: true,
                    remote_invite: None,
                    origin_server_ts: requester.bridged_ts(),
                    ..AppendOptions::default()
                },
            )
            .await?;
        Ok(appended.pdu.event_id.to_string())
    }

    /// `PUT /state/{type}/{key}`. Member events go through [`Homeserver::update_membership`].
    pub async fn send_state(
        &self,
        requester: &Requester,
        room_id: &str,
        kind: &str,
        state_key: &str,
        content: Map<String, Value>,
    ) -> Result<String> {
        let room_id = parse_room_id(room_id)?;
        if !requester.is_admin {
            self.modules
                .user_may_send_state_event(requester.user_id.as_str(), room_id.as_str(), kind, state_key, &content)
                .await?;
        }
        if kind == "m.room.member" {
            let target = parse_user_id(state_key)?;
            let membership = content.get("membership").and_then(Value::as_str).unwrap_or_default().to_owned();
            let ev = self.update_membership(requester, &room_id, &target, &membership, None, content).await?;
            return Ok(ev["event_id"].as_str().unwrap_or_default().to_owned());
        }
        if kind == "m.room.create" {
            return Err(Error::forbidden("Cannot change m.room.create"));
        }
        requester.refuse_if_suspended(SUSPENDED_SENDING)?;
        if kind == "m.room.canonical_alias" {
            self.check_canonical_alias(&room_id, &content).await?;
        }
        if requester.shadow_banned {
            crate::users::shadow_ban_delay().await;
            return Ok(format!("${}", random_string(43)));
        }
        self.require_joined(&room_id, &requester.user_id).await?;
        if !requester.is_internal() {
            self.limit_message(requester.user_id.as_str(), false).await?;
        }
        let shuts_out_guests =
            kind == "m.room.guest_access" && content.get("guest_access").and_then(Value::as_str) != Some("can_join");
        let appended = self
            .append_event(
                &room_id,
                &requester.user_id,
                kind,
                Some(state_key),
                content,
                AppendOptions {
                    txn: None,
                    spam_check: true,
                    remote_invite: None,
                    origin_server_ts: requester.bridged_ts(),
                    ..AppendOptions::default()
                },
            )
            .await?;
        if shuts_out_guests {
            self.kick_guests(&room_id).await;
        }
        Ok(appended.pdu.event_id.to_string())
    }

    /// A room that stops admitting guests sees its local guests leave, as Synapse's
    /// `kick_guest_users` has them do (each leaves by itself; one failing does not stop the rest).
    async fn kick_guests(&self, room_id: &RoomId) {
        let Ok(members) = self.joined_member_ids(room_id.as_str()).await else { return };
        let local = format!(":{}", self.server_name());
        for member in members.into_iter().filter(|m| m.ends_with(&local)) {
            let u = member.clone();
            if !self.db(move |s| s.get_user(&u)).await.ok().flatten().is_some_and(|row| row.is_guest) {
                continue;
            }
            let Ok(user) = OwnedUserId::try_from(member.as_str()) else { continue };
            let Ok(mut requester) = self.requester_for(&user).await else { continue };
            requester.is_guest = true;
            if let Err(e) =
                self.update_membership_unlimited(&requester, room_id, &user, "leave", None, Map::new()).await
            {
                tracing::warn!(room = %room_id, guest = %user, error = %e.message, "guest not removed");
            }
        }
    }

    /// `PUT /redact/{eventId}/{txnId}`.
    pub async fn redact(
        &self,
        requester: &Requester,
        room_id: &str,
        event_id: &str,
        txn_id: &str,
        reason: Option<String>,
    ) -> Result<String> {
        let room_id = parse_room_id(room_id)?;
        OwnedEventId::try_from(event_id).map_err(|_| Error::invalid_param("Invalid event ID"))?;
        if requester.suspended {
            self.refuse_suspended_redaction(requester, event_id).await?;
        }
        if requester.shadow_banned {
            crate::users::shadow_ban_delay().await;
            return Ok(format!("${}", random_string(43)));
        }
        self.require_joined(&room_id, &requester.user_id).await?;
        let others_event = match self.limiters.admin_redaction {
            // Only worth a read when `rc_admin_redaction` gives moderators their own limit.
            Some(_) => {
                self.load_events(vec![event_id.to_owned()]).await?.values().any(|e| e.sender != requester.user_id)
            }
            None => false,
        };
        self.limit_message(requester.user_id.as_str(), others_event).await?;
        let mut content = Map::new();
        content.insert("redacts".into(), json!(event_id));
        if let Some(r) = reason {
            content.insert("reason".into(), json!(r));
        }
        let txn = Some((requester.user_id.to_string(), requester.device_id.clone(), format!("redact:{txn_id}")));
        let appended = self
            .append_event(
                &room_id,
                &requester.user_id,
                "m.room.redaction",
                None,
                content,
                AppendOptions { txn, spam_check: true, remote_invite: None, ..AppendOptions::default() },
            )
            .await?;
        Ok(appended.pdu.event_id.to_string())
    }

    /// Sends an event on a module's behalf (`ModuleApi.create_and_send_event_into_room`): no
    /// shadow-ban or rate limit, but `check_event_for_spam` applies.
    pub(crate) async fn module_send_event(&self, event: Map<String, Value>) -> Result<String> {
        let field = |k: &str| event.get(k).and_then(Value::as_str).map(str::to_owned);
        let kind = field("type").ok_or_else(|| Error::bad_json("event needs a type"))?;
        if kind == "m.room.member" {
            return Err(Error::internal("Tried to send member event through non-member codepath"));
        }
        let room_id = parse_room_id(&field("room_id").ok_or_else(|| Error::bad_json("event needs a room_id"))?)?;
        let sender = parse_user_id(&field("sender").ok_or_else(|| Error::bad_json("event needs a sender"))?)?;
        let content = event.get("content").and_then(Value::as_object).cloned().unwrap_or_default();
        let state_key = field("state_key");
        let appended = self
            .append_event(
                &room_id,
                &sender,
                &kind,
                state_key.as_deref(),
                content,
                AppendOptions { txn: None, spam_check: true, remote_invite: None, ..AppendOptions::default() },
            )
            .await?;
        Ok(appended.json)
    }
}
