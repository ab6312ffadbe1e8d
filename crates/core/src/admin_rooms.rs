//! The admin API's reads and repairs of one room beyond its details and state (`admin`):
//! its messages and the event at a time as an admin sees them (every event, whatever the
//! history visibility: Synapse's `use_admin_priviledge`), granting a user power through a local
//! room admin (`make_room_admin`), and dropping extra forward extremities.

use ruma::{OwnedRoomId, OwnedUserId, RoomId};
use serde_json::{Map, Value, json};

use crate::admin::audit;
use crate::error::ErrorKind;
use crate::rooms::{MessagesPage, Pagination};
use crate::visibility::Reader;
use crate::{Error, Homeserver, Requester, Result};

impl Homeserver {
    /// A room ID, or an alias resolved (Synapse's `ResolveRoomIdMixin`).
    async fn admin_room_id(&self, room: &str) -> Result<OwnedRoomId> {
        if room.starts_with('#') {
            let (id, _) = self.resolve_alias(room).await?;
            return OwnedRoomId::try_from(id).map_err(Error::internal);
        }
        RoomId::parse(room)
            .map_err(|_| Error::new(ErrorKind::BadRequest, format!("{room} was not legal room ID or room alias")))
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/messages`: `/messages` without the membership and
    /// history-visibility checks.
    pub async fn admin_room_messages(
        &self,
        requester: &Requester,
        room_id: &str,
        page: Pagination<'_>,
    ) -> Result<MessagesPage> {
        self.require_admin(requester)?;
        let room = self.admin_room_id(room_id).await?;
        if self.current_state(&room).await?.is_none() {
            return Err(Error::not_found("Room not found"));
        }
        self.page_events(requester.user_id.as_str(), &room, Reader::ADMIN, page).await
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/timestamp_to_event`: the event nearest `ts`,
    /// whoever may see it.
    pub async fn admin_timestamp_to_event(
        &self,
        requester: &Requester,
        room_id: &str,
        ts: i64,
        forwards: bool,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let room = self.admin_room_id(room_id).await?;
        self.event_at_timestamp(requester, &room, Reader::ADMIN, ts, forwards).await
    }

    /// `POST /_synapse/admin/v1/join/{roomIdOrAlias}` `{"user_id"}`: joins a local user to a
    /// room, the admin inviting them first unless the room is public (Synapse's rules).
    pub async fn admin_join_user(
        &self,
        requester: &Requester,
        room: &str,
        via: &[String],
        body: &Map<String, Value>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let Some(user) = body.get("user_id") else {
            return Err(Error::new(ErrorKind::MissingParam, "Missing params: ['user_id']"));
        };
        let user = user
            .as_str()
            .and_then(|u| OwnedUserId::try_from(u).ok())
            .ok_or_else(|| Error::invalid_param("user_id must be a user ID"))?;
        if user.server_name() != self.server_name() {
            return Err(Error::new(ErrorKind::BadRequest, "This endpoint can only be used with local users"));
        }
        let u = user.to_string();
        if self.db(move |s| s.get_user(&u)).await?.is_none() {
            return Err(Error::not_found("User not found"));
        }
        let room_id = self.admin_room_id(room).await?;
        let join_rule = self.state_content(&room_id, "m.room.join_rules", "").await?;
        let public = join_rule.as_ref().and_then(|c| c.get("join_rule")).and_then(Value::as_str) == Some("public");
        if join_rule.is_some() && !public {
            self.update_membership_unlimited(requester, &room_id, &user, "invite", None, Map::new()).await?;
        }
        let acting = self.requester_for(&user).await?;
        let joined = self.join_room(&acting, room_id.as_str(), via, Map::new()).await?;
        audit!(requester, "join user to room", format!("{user} to {joined}"));
        Ok(json!({"room_id": joined}))
    }

    /// `DELETE /_synapse/admin/v1/rooms/{roomIdOrAlias}/forward_extremities`: keeps only the
    /// newest forward extremity (Synapse's fix for rooms slowed by many of them); `{deleted}`.
    pub async fn admin_delete_forward_extremities(&self, requester: &Requester, room: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let room_id = self.admin_room_id(room).await?;
        // Under the send lock, so no event of this process is being built on the old ones.
        let send_lock = self.room_lock(&room_id).await?;
        let r = room_id.to_string();
        let deleted = self.db(move |s| s.delete_extra_forward_extremities(&r)).await?;
        drop(send_lock);
        let Some(deleted) = deleted else {
            return Err(Error::new(
                ErrorKind::BadRequest,
                format!("No forward extremity event found for room {room_id}"),
            ));
        };
        if deleted > 0 {
            // Every process reloads the room's extremities from storage.
            self.forget_purged_room(&room_id);
            if self.has_bus() {
                self.publish(format!("room_purged {room_id}"));
            }
        }
        audit!(requester, "delete forward extremities", format!("{room_id} ({deleted})"));
        Ok(json!({"deleted": deleted}))
    }

    /// `POST /_synapse/admin/v1/rooms/{roomIdOrAlias}/make_room_admin` `{"user_id"?}`: the
    /// joined local user with the most power (a creator, in rooms where creators outrank
    /// everyone) gives `user_id` (default: the admin) the same power level, then invites them
    /// if they are neither joined nor invited and the room is not public. Synapse's rules and
    /// answers.
    pub async fn admin_make_room_admin(
        &self,
        requester: &Requester,
        room: &str,
        body: &Map<String, Value>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let room_id = self.admin_room_id(room).await?;
        let target = match body.get("user_id") {
            None => requester.user_id.clone(),
            Some(Value::String(u)) => {
                OwnedUserId::try_from(u.as_str()).map_err(|_| Error::invalid_param(format!("Invalid user ID: {u}")))?
            }
            Some(_) => return Err(Error::invalid_param("user_id must be a string")),
        };
        let Some(state) = self.current_state(&room_id).await? else {
            return Err(Error::new(ErrorKind::BadRequest, "Server not in room"));
        };
        let mine = |user: &str| user.split_once(':').is_some_and(|(_, server)| server == self.server_name());
        let power_levels = self.state_content(&room_id, "m.room.power_levels", "").await?;
        let create = match state.get(&("m.room.create".to_owned(), String::new())) {
            Some(id) => self.load_events(vec![id.to_string()]).await?.into_values().next(),
            None => None,
        };
        let creator = create.as_ref().map(|pdu| pdu.sender.to_string());
        let pl = self.power_levels(&state).await?;
        let no_admin = || Error::new(ErrorKind::BadRequest, "No local admin user in room");
        let (admin, mut content) = match power_levels {
            Some(content) => {
                let mut candidates: Vec<String> = content
                    .get("users")
                    .and_then(Value::as_object)
                    .map(|users| users.keys().filter(|u| mine(u)).cloned().collect())
                    .unwrap_or_default();
                candidates.sort_by_key(|u| pl.user(u));
                // Where creators outrank everyone (room version 12), a local creator comes first.
                let creators = create.as_ref().map(crate::rooms::privileged_creators).unwrap_or_default();
                candidates.extend(creators.into_iter().filter(|c| mine(c)));
                let mut admin = None;
                for candidate in candidates.iter().rev() {
                    let rid = room_id.clone();
                    if self.membership_of(&rid, candidate).await?.as_deref() == Some("join") {
                        admin = Some(candidate.clone());
                        break;
                    }
                }
                (admin.ok_or_else(no_admin)?, content)
            }
            None => {
                let creator = creator.filter(|c| mine(c)).ok_or_else(no_admin)?;
                (creator, Map::new())
            }
        };
        let users = content.entry("users").or_insert_with(|| json!({}));
        if !users.is_object() {
            *users = json!({});
        }
        let level = users.get(&admin).cloned().unwrap_or(json!(100));
        users.as_object_mut().map(|u| u.insert(target.to_string(), level));
        let admin_id = OwnedUserId::try_from(admin.as_str()).map_err(Error::internal)?;
        let acting = self.requester_for(&admin_id).await?;
        if let Err(e) = self.send_state(&acting, room_id.as_str(), "m.room.power_levels", "", content).await {
            if e.kind == ErrorKind::Forbidden {
                return Err(Error::new(
                    ErrorKind::BadRequest,
                    "No local admin user in room with power to update power levels.",
                ));
            }
            return Err(e);
        }
        audit!(requester, "make room admin", format!("{target} in {room_id}"));
        let membership = self.membership_of(&room_id, target.as_str()).await?;
        if matches!(membership.as_deref(), Some("join" | "invite")) {
            return Ok(json!({}));
        }
        let join_rule = self.state_content(&room_id, "m.room.join_rules", "").await?;
        if join_rule.as_ref().and_then(|c| c.get("join_rule")).and_then(Value::as_str) == Some("public") {
            return Ok(json!({}));
        }
        self.update_membership_unlimited(&acting, &room_id, &target, "invite", None, Map::new()).await?;
        Ok(json!({}))
    }
}
