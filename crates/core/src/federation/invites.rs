//! Invites and leaves across servers: `PUT /_matrix/federation/v2/invite` both ways, and
//! rejecting an invite to a room this server is not in (`make_leave`/`send_leave` through the
//! inviting server).
//!
//! An invite of a local user arrives signed by the inviting server; modules are asked
//! (`should_drop_federated_event`, then `federated_user_may_invite` and `user_may_invite`, as
//! Synapse does; `check_event_for_spam` runs too but cannot refuse it), this server signs it,
//! and, for a room it is not in, stores it with the room summary the inviter sent
//! (`unsigned.invite_room_state`) so the invitee's `/sync` shows the invite.

use myelin_module_api::EventView;
use myelin_storage::{RoomRow, StateChange, StateEntry};
use ruma::{CanonicalJsonValue, OwnedRoomId, RoomId};
use serde_json::{Value, json};

use super::remote_keys::{REMOTE_TIMEOUT, Verified};
use super::rooms::{rules_for, wire_pdu};
use crate::events::{EventDraft, Pdu, sign_event, template_references};
use crate::server::url_encode;
use crate::writer::EventWrite;
use crate::{Error, ErrorKind, Homeserver, Requester, Result};

/// A leave's content.
fn leave_content() -> serde_json::Map<String, Value> {
    [("membership".to_owned(), json!("leave"))].into_iter().collect()
}

fn incompatible(version: &str) -> Error {
    Error::new(
        ErrorKind::Module { status: 400, errcode: "M_INCOMPATIBLE_ROOM_VERSION".into() },
        format!("Room version {version} is not supported by this server"),
    )
    .with_fields([("room_version".to_owned(), json!(version))].into_iter().collect())
}

impl Homeserver {
    /// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}` from `origin`.
    pub async fn receive_invite(&self, origin: &str, room_id: &str, event_id: &str, body: &Value) -> Result<Value> {
        let room_id = OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
        self.check_server_acl(origin, &room_id).await?;
        let version = body["room_version"].as_str().ok_or_else(|| Error::bad_json("room_version is required"))?;
        let rules = rules_for(version).ok_or_else(|| incompatible(version))?;
        let (id, mut object) = super::rooms::identify(&body["event"], &rules)?;
        if id.as_str() != event_id {
            return Err(Error::bad_json("The event ID does not match the event"));
        }
        let field = |k: &str| object.get(k).and_then(|v| v.as_str()).map(str::to_owned).unwrap_or_default();
        let (sender, target) = (field("sender"), field("state_key"));
        let membership = object
            .get("content")
            .and_then(|c| c.as_object())
            .and_then(|c| c.get("membership"))
            .and_then(|m| m.as_str());
        if field("type") != "m.room.member" || membership != Some("invite") || field("room_id") != room_id.as_str() {
            return Err(Error::bad_json("Not an invite event for this room"));
        }
        let target_id = ruma::OwnedUserId::try_from(target.as_str()).map_err(|_| Error::bad_json("Invalid invitee"))?;
        if !self.is_mine(&target_id) {
            return Err(Error::bad_json("The invitee is not a user of this server"));
        }
        if sender.split_once(':').map(|(_, s)| s) != Some(origin) {
            return Err(Error::forbidden("The inviter is not from the server sending the invite"));
        }
        if let Verified::Signatures = self.verify_event_signatures(&object, &rules).await? {
            return Err(Error::forbidden("The invite's content hash does not match"));
        }
        let mut view_object = object.clone();
        view_object.insert("event_id".into(), CanonicalJsonValue::String(id.to_string()));
        let view = EventView::new(
            serde_json::to_value(&view_object).ok().and_then(|v| v.as_object().cloned()).unwrap_or_default(),
        );
        if self.modules.should_drop_federated_event(&view).await {
            // Synapse passes the errcode as the message here; its clients see exactly this.
            return Err(Error::new(ErrorKind::Module { status: 403, errcode: "M_UNKNOWN".into() }, "M_FORBIDDEN"));
        }
        self.modules.federated_user_may_invite(&view).await?;
        if self.modules.has_check_event_for_spam() && self.modules.check_event_for_spam(&view).await.is_err() {
            tracing::info!(origin, "an invite was judged spam; invites are not refused for that");
        }
        ruma::signatures::sign_event(self.server_name(), &self.key.pair, &mut object, &rules.redaction)
            .map_err(|e| Error::internal(format!("signing failed: {e}")))?;
        let signed = serde_json::to_value(&object).map_err(Error::internal)?;

        if self.participates_in(&room_id).await? {
            // A room this server is in: the invite is a room event like any other.
            self.receive_pdu(Some(origin), &room_id, &signed, Vec::new()).await?;
        } else {
            let mut stored = view_object.clone();
            stored.insert(
                "signatures".into(),
                object.get("signatures").cloned().unwrap_or(CanonicalJsonValue::Object(Default::default())),
            );
            let mut stored = serde_json::to_value(&stored).map_err(Error::internal)?;
            stored["unsigned"] =
                json!({"invite_room_state": body["invite_room_state"].as_array().cloned().unwrap_or_default()});
            let json = serde_json::to_string(&stored).map_err(Error::internal)?;
            let pdu = Pdu::from_json_str(&json)?;
            self.store_outside_membership(&room_id, version, &pdu, json).await?;
        }
        Ok(json!({"event": signed}))
    }

    /// Stores a member event of a local user in a room this server is not in (a received
    /// invite, or the leave rejecting it): its membership becomes the user's, nothing else of
    /// the room is known.
    async fn store_outside_membership(&self, room_id: &RoomId, version: &str, pdu: &Pdu, json: String) -> Result<()> {
        let mut guard = self.room_lock(room_id).await?;
        let row = RoomRow {
            room_id: room_id.to_string(),
            room_version: version.to_owned(),
            creator: pdu.sender.to_string(),
            is_public: false,
        };
        let r = room_id.to_string();
        let extremities = self
            .db(move |s| {
                if s.get_room(&row.room_id)?.is_none() {
                    s.create_room(&row)?;
                }
                s.get_forward_extremities(&r)
            })
            .await?;
        let entry = StateEntry {
            event_type: "m.room.member".into(),
            state_key: pdu.state_key.clone().unwrap_or_default(),
            event_id: pdu.event_id.to_string(),
        };
        let rid = room_id.to_string();
        let written = self
            .write_marked(EventWrite {
                event_id: pdu.event_id.to_string(),
                room_id: rid.clone(),
                event_type: "m.room.member".into(),
                state_key: pdu.state_key.clone(),
                sender: pdu.sender.to_string(),
                membership: pdu.membership(),
                json,
                state: StateChange::New { prev: None, delta: vec![entry] },
                prev_events: extremities,
                txn: None,
                redaction: None,
                rejected: false,
                soft_failed: false,
                current_state: None,
                destinations: Vec::new(),
            })
            .await;
        *guard = None;
        drop(guard);
        let (stream, _) = written?;
        self.room_written(&rid, stream);
        self.advance_stream(stream);
        Ok(())
    }

    /// Sends a signed invite of a remote user to their server and returns the event as it
    /// signed it (the same event ID).
    pub(crate) async fn invite_over_federation(
        &self,
        room_id: &RoomId,
        event_json: &str,
        target: &str,
        room_state: &[Value],
    ) -> Result<String> {
        let server =
            target.split_once(':').map(|(_, s)| s.to_owned()).ok_or_else(|| Error::bad_json("Invalid user ID"))?;
        let version = {
            let r = room_id.to_string();
            self.db(move |s| s.get_room(&r)).await?.map(|r| r.room_version).unwrap_or_default()
        };
        let rules = rules_for(&version).ok_or_else(|| incompatible(&version))?;
        let event = wire_pdu(event_json)?;
        let event_id = Pdu::from_json_str(event_json)?.event_id;
        // The v1 form (for servers without v2) is the event alone, the stripped state in its
        // `unsigned`.
        let mut v1_body = event.clone();
        v1_body["unsigned"]["invite_room_state"] = json!(room_state);
        let body = json!({"event": event, "room_version": version, "invite_room_state": room_state});
        let ids = format!("{}/{}", url_encode(room_id.as_str()), url_encode(event_id.as_str()));
        let (v2, v1) = (format!("/_matrix/federation/v2/invite/{ids}"), format!("/_matrix/federation/v1/invite/{ids}"));
        let answer = self
            .federation
            .client
            .put_v2_or_v1(&self.key, self.server_name(), &server, (&v2, &body), (&v1, &v1_body), REMOTE_TIMEOUT)
            .await
            .map_err(|e| e.into_error(&format!("invite via {server}")))?;
        // An answer that is no valid event (not canonical JSON, say) is M_BAD_JSON, as Synapse.
        let (returned_id, object) = super::rooms::identify(&answer["event"], &rules)?;
        if returned_id != event_id {
            return Err(Error::new(
                ErrorKind::Module { status: 502, errcode: "M_UNKNOWN".into() },
                format!("{server} changed the invite event"),
            ));
        }
        let mut object = object;
        object.insert("event_id".into(), CanonicalJsonValue::String(event_id.to_string()));
        serde_json::to_string(&object).map_err(Error::internal)
    }

    /// Rejects an invite to a room this server is not in, through `servers` (the inviter's
    /// first): `make_leave`, sign, `send_leave`, then the leave is stored as the membership.
    /// When no server will take it (refused, failing, unreachable), the invite is rejected
    /// here alone, as Synapse does: a leave built on the invite, signed by this server.
    pub(crate) async fn leave_remote_room(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        servers: &[String],
    ) -> Result<()> {
        match self.leave_through(requester, room_id, servers).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::info!(room = %room_id, error = %e, "the invite could not be rejected remotely; rejected locally");
                self.reject_invite_locally(requester, room_id).await
            }
        }
    }

    /// The leave of a local user invited to a room this server is not in, made here: its
    /// parent and only auth event the invite, stored as the user's membership.
    async fn reject_invite_locally(&self, requester: &Requester, room_id: &RoomId) -> Result<()> {
        let user = &requester.user_id;
        let (r, u) = (room_id.to_string(), user.to_string());
        let (invite, version) = self
            .db(move |s| {
                let state = s.get_current_state(&r)?;
                let invite = match state.into_iter().find(|e| e.event_type == "m.room.member" && e.state_key == u) {
                    Some(e) => s.get_event(&e.event_id)?,
                    None => None,
                };
                Ok((invite, s.get_room(&r)?.map(|r| r.room_version)))
            })
            .await?;
        let invite = invite.ok_or_else(|| Error::not_found("No invite to reject"))?;
        let invite = Pdu::from_json_str(&invite.json)?;
        if invite.membership().as_deref() != Some("invite") {
            return Err(Error::forbidden("No invite to reject"));
        }
        let version = version.unwrap_or_else(|| "1".to_owned());
        let rules = rules_for(&version).ok_or_else(|| incompatible(&version))?;
        let reference_hashes = self.reference_hashes(&rules, vec![invite.event_id.clone()]).await?;
        let signed = sign_event(
            EventDraft::own_membership(
                room_id,
                user,
                leave_content(),
                vec![invite.event_id.clone()],
                vec![invite.event_id.clone()],
                invite.depth + 1,
                reference_hashes,
            ),
            &rules,
            self.server_name(),
            &self.key,
        )?;
        self.store_outside_membership(room_id, &version, &signed.pdu, signed.json.clone()).await
    }

    async fn leave_through(&self, requester: &Requester, room_id: &RoomId, servers: &[String]) -> Result<()> {
        let user = &requester.user_id;
        let path =
            format!("/_matrix/federation/v1/make_leave/{}/{}", url_encode(room_id.as_str()), url_encode(user.as_str()));
        let (server, answer) = self.ask_in_turn(servers, &path, "make_leave").await?;
        let version = answer["room_version"].as_str().unwrap_or("1").to_owned();
        let rules = rules_for(&version).ok_or_else(|| incompatible(&version))?;
        let template = &answer["event"];
        let (prev_events, auth_events, reference_hashes) = template_references(template);
        let depth = template["depth"].as_u64().unwrap_or(1);
        let signed = sign_event(
            EventDraft::own_membership(
                room_id,
                user,
                leave_content(),
                prev_events,
                auth_events,
                depth,
                reference_hashes,
            ),
            &rules,
            self.server_name(),
            &self.key,
        )?;
        let ids = format!("{}/{}", url_encode(room_id.as_str()), url_encode(signed.pdu.event_id.as_str()));
        let (v2, v1) =
            (format!("/_matrix/federation/v2/send_leave/{ids}"), format!("/_matrix/federation/v1/send_leave/{ids}"));
        let body = wire_pdu(&signed.json)?;
        self.federation
            .client
            .put_v2_or_v1(&self.key, self.server_name(), &server, (&v2, &body), (&v1, &body), REMOTE_TIMEOUT)
            .await
            .map_err(|e| e.into_error(&format!("send_leave via {server}")))?;
        self.store_outside_membership(room_id, &version, &signed.pdu, signed.json.clone()).await
    }

    /// The pending invite of a local user to a room this server is not in: the inviter's
    /// server, if there is one.
    pub(crate) async fn invite_origin(&self, room_id: &RoomId, user: &str) -> Result<Option<String>> {
        let (r, u) = (room_id.to_string(), user.to_owned());
        let row = self
            .db(move |s| {
                let state = s.get_current_state(&r)?;
                match state.into_iter().find(|e| e.event_type == "m.room.member" && e.state_key == u) {
                    Some(e) => s.get_event(&e.event_id),
                    None => Ok(None),
                }
            })
            .await?;
        let Some(row) = row else { return Ok(None) };
        let pdu = Pdu::from_json_str(&row.json)?;
        Ok((pdu.membership().as_deref() == Some("invite")).then(|| pdu.sender.server_name().to_string()))
    }
}
