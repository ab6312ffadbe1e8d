//! Server notices (Synapse's `server_notices` and `POST /_synapse/admin/v1/send_server_notice`):
//! admins send a user a message from a system account, in a room the system account made for
//! that user (private, where the user may not speak), tagged `m.server_notice` and reused for
//! every later notice.

use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use crate::admin::audit;
use crate::config::ServerNotices;
use crate::server::{now_ms, random_string};
use crate::{Error, ErrorKind, Homeserver, Requester, Result};

/// The room tag Synapse gives the notices room.
const SERVER_NOTICE_TAG: &str = "m.server_notice";

impl Homeserver {
    /// `POST /_synapse/admin/v1/send_server_notice` and `PUT .../send_server_notice/{txnId}`:
    /// `{user_id, content, type?, state_key?}`; answers the event's ID.
    pub async fn admin_send_server_notice(
        &self,
        requester: &Requester,
        body: &Map<String, Value>,
        txn_id: Option<&str>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let missing: Vec<&str> = ["user_id", "content"].into_iter().filter(|k| !body.contains_key(*k)).collect();
        if !missing.is_empty() {
            return Err(Error::new(ErrorKind::MissingParam, format!("Missing params: {missing:?}")));
        }
        let Some(settings) = self.config.server_notices.clone() else {
            return Err(Error::new(ErrorKind::BadRequest, "Server notices are not enabled on this server"));
        };
        let target = body["user_id"]
            .as_str()
            .and_then(|u| UserId::parse(u).ok())
            .ok_or_else(|| Error::invalid_param("Invalid user_id"))?;
        if !self.is_mine(&target) {
            return Err(Error::new(ErrorKind::BadRequest, "Server notices can only be sent to local users"));
        }
        let t = target.to_string();
        if self.db(move |s| s.get_user(&t)).await?.is_none() {
            return Err(Error::not_found("User not found"));
        }
        let Some(content) = body["content"].as_object().cloned() else {
            return Err(Error::bad_json("content must be an object"));
        };
        let kind = body.get("type").and_then(Value::as_str).unwrap_or("m.room.message").to_owned();
        let state_key = body.get("state_key").and_then(Value::as_str).map(str::to_owned);

        let system = self.server_notices_account(&settings).await?;
        let room = self.notice_room_for(&settings, &system, &target).await?;
        self.invite_to_notice_room(&settings, &system, &target, &room).await?;
        let event_id = match state_key {
            Some(key) => self.send_state(&system, room.as_str(), &kind, &key, content).await?,
            None => {
                let txn = txn_id.map_or_else(|| random_string(16), str::to_owned);
                self.send_message(&system, room.as_str(), &kind, &txn, content).await?
            }
        };
        audit!(requester, "send server notice", target);
        Ok(json!({"event_id": event_id}))
    }

    /// The system account, made on first use (no password: nobody logs in as it), its profile
    /// kept as configured.
    async fn server_notices_account(&self, settings: &ServerNotices) -> Result<Requester> {
        let user = OwnedUserId::try_from(format!("@{}:{}", settings.localpart, self.server_name()))
            .map_err(|_| Error::internal("server_notices.system_mxid_localpart makes no valid user ID"))?;
        let (u, name) = (user.to_string(), settings.display_name.clone());
        self.db(move |s| {
            if s.get_user(&u)?.is_none() {
                let row = myelin_storage::UserRow {
                    user_id: u.clone(),
                    password_hash: None,
                    is_admin: false,
                    is_guest: false,
                    deactivated: false,
                    shadow_banned: false,
                    creation_ts: now_ms(),
                    locked: false,
                    suspended: false,
                };
                s.create_user(&row, name.as_deref())?;
            }
            Ok(())
        })
        .await?;
        let (displayname, avatar_url) = self.profile_of(user.as_str()).await?;
        for (field, wanted, current) in [
            (myelin_storage::ProfileField::DisplayName, &settings.display_name, displayname),
            (myelin_storage::ProfileField::AvatarUrl, &settings.avatar_url, avatar_url),
        ] {
            if let Some(wanted) = wanted
                && current.as_deref() != Some(wanted.as_str())
            {
                let (u, value) = (user.to_string(), wanted.clone());
                self.db(move |s| s.set_profile_field(&u, field, Some(&value))).await?;
            }
        }
        self.requester_for(&user).await
    }

    /// The user's notices room: a room they are invited to or joined where the system account
    /// is joined (Synapse's test), else a new one, tagged for them.
    async fn notice_room_for(
        &self,
        settings: &ServerNotices,
        system: &Requester,
        user: &UserId,
    ) -> Result<OwnedRoomId> {
        let (u, sys) = (user.to_string(), system.user_id.to_string());
        let existing = self
            .db(move |s| {
                let mut rooms = s.rooms_for_user(&u, "join")?;
                rooms.extend(s.rooms_for_user(&u, "invite")?);
                let system_rooms = s.rooms_for_user(&sys, "join")?;
                Ok(rooms.into_iter().find(|r| system_rooms.contains(r)))
            })
            .await?;
        if let Some(room) = existing {
            return OwnedRoomId::try_from(room).map_err(Error::internal);
        }
        let mut config = json!({
            "preset": "private_chat",
            "power_level_content_override": {"users_default": -10},
        });
        if let Some(name) = &settings.room_name {
            config["name"] = json!(name);
        }
        if let Some(topic) = &settings.room_topic {
            config["topic"] = json!(topic);
        }
        if let Some(url) = &settings.room_avatar_url {
            config["initial_state"] = json!([{"type": "m.room.avatar", "state_key": "", "content": {"url": url}}]);
        }
        let Value::Object(config) = config else { unreachable!("a JSON object") };
        let (room, _) = self.create_room_unlimited(system, config).await?;
        let owner = self.requester_for(user).await?;
        self.set_room_tag(&owner, user.as_str(), room.as_str(), SERVER_NOTICE_TAG, Some(json!({}))).await?;
        tracing::info!(room = %room, user = %user, "created a server notices room");
        Ok(room)
    }

    /// Invites the user unless already invited or joined; joins them too with `auto_join`.
    async fn invite_to_notice_room(
        &self,
        settings: &ServerNotices,
        system: &Requester,
        user: &UserId,
        room: &OwnedRoomId,
    ) -> Result<()> {
        if matches!(self.membership_of(room, user.as_str()).await?.as_deref(), Some("join" | "invite")) {
            return Ok(());
        }
        self.update_membership_unlimited(system, room, user, "invite", None, Map::new()).await?;
        if settings.auto_join {
            let owner = self.requester_for(user).await?;
            self.update_membership_unlimited(&owner, room, user, "join", None, Map::new()).await?;
        }
        Ok(())
    }
}
