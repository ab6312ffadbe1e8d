//! Shutting rooms down and purging them (Synapse's `RoomShutdownHandler` and `purge_room`), for
//! the admin API's `DELETE /_synapse/admin/v1|v2/rooms/{roomId}` and `ModuleApi.delete_room`,
//! and blocking rooms (`blocked_rooms`: no local user may join, be invited or knock).
//!
//! A shutdown makes every local member (joined, invited or knocking) leave, optionally after
//! creating a new room (`new_room_user_id`) that they are joined to and the room's local aliases
//! move to; a purge then removes every trace of the room from storage and from every process's
//! caches. v2 deletions run in the background as admin tasks (`admin_tasks`), whose status the
//! process that runs them keeps (Synapse keeps it as a scheduled task in the database).

use std::sync::Arc;

use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{Map, Value, json};

use crate::admin::audit;
use crate::admin_tasks::AdminTask;
use crate::server::random_string;
use crate::{Error, ErrorKind, Homeserver, Requester, Result};

/// The name Synapse gives the room users are moved to.
const DEFAULT_ROOM_NAME: &str = "Content Violation Notification";
/// The message Synapse posts there.
const DEFAULT_MESSAGE: &str =
    "Sharing illegal content on this server is not permitted and rooms in violation will be blocked.";

/// A deletion's parameters (Synapse's `ShutdownRoomParams`).
#[derive(Debug, Clone, Default)]
pub struct ShutdownParams {
    /// Who asked: an admin, or `None` for a module.
    pub requester_user_id: Option<String>,
    /// A local user who creates a room the members are moved to.
    pub new_room_user_id: Option<String>,
    /// That room's name.
    pub room_name: Option<String>,
    /// The message posted there.
    pub message: Option<String>,
    /// Block the room from future joins.
    pub block: bool,
    /// Remove the room from storage afterwards.
    pub purge: bool,
    /// Purge even if local users could not be made to leave.
    pub force_purge: bool,
}

impl ShutdownParams {
    /// The admin API's body, checked as Synapse checks it (400 `M_BAD_JSON` for a flag that is
    /// not a boolean).
    pub fn from_body(requester: &Requester, body: &Map<String, Value>) -> Result<Self> {
        let flag = |key: &str, default: bool| match body.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(Error::bad_json(format!("Param '{key}' must be a boolean, if given"))),
        };
        let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
        Ok(ShutdownParams {
            requester_user_id: Some(requester.user_id.to_string()),
            new_room_user_id: text("new_room_user_id"),
            room_name: text("room_name"),
            message: text("message"),
            block: flag("block", false)?,
            purge: flag("purge", true)?,
            force_purge: flag("force_purge", false)?,
        })
    }
}

/// A v2 deletion, as `delete_status` reports it.
fn deletion_json(task: &AdminTask) -> Value {
    let mut out = json!({
        "delete_id": task.id,
        "room_id": task.resource_id,
        "status": task.status,
        "shutdown_room": task.result,
    });
    if let Some(e) = &task.error {
        out["error"] = json!(e);
    }
    out
}

/// Synapse's action name for room deletions.
const DELETION: &str = "shutdown_and_purge_room";

fn legal_room_id(room_id: &str) -> Result<OwnedRoomId> {
    OwnedRoomId::try_from(room_id)
        .map_err(|_| Error::new(ErrorKind::BadRequest, format!("{room_id} is not a legal room ID")))
}

fn empty_result() -> Value {
    json!({"kicked_users": [], "failed_to_kick_users": [], "local_aliases": [], "new_room_id": null})
}

impl Homeserver {
    /// `DELETE /_synapse/admin/v1/rooms/{roomId}`: shuts the room down and (by default) purges
    /// it, answering when done.
    pub async fn admin_delete_room(
        &self,
        requester: &Requester,
        room_id: &str,
        body: &Map<String, Value>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let params = ShutdownParams::from_body(requester, body)?;
        let room = legal_room_id(room_id)?;
        audit!(requester, "delete room", format!("{room} (purge: {}, block: {})", params.purge, params.block));
        let result = self.shutdown_room(&room, &params, None).await?;
        if params.purge {
            match self.purge_room(&room, params.force_purge).await {
                Err(e) if e.kind == ErrorKind::NotFound && params.block => {}
                other => other?,
            }
        }
        Ok(result)
    }

    /// `DELETE /_synapse/admin/v2/rooms/{roomId}`: the same in the background; answers its
    /// `delete_id` at once.
    pub async fn admin_delete_room_v2(
        self: &Arc<Self>,
        requester: &Requester,
        room_id: &str,
        body: &Map<String, Value>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let params = ShutdownParams::from_body(requester, body)?;
        let room = legal_room_id(room_id)?;
        if !self.modules.check_can_shutdown_room(params.requester_user_id.as_deref(), room.as_str()).await {
            return Err(Error::forbidden("Shutdown of this room is forbidden"));
        }
        audit!(requester, "delete room", format!("{room} (purge: {}, block: {})", params.purge, params.block));
        Ok(json!({"delete_id": self.start_room_deletion(room, params)}))
    }

    /// `ModuleApi.delete_room`: a background shutdown and purge, as Synapse's (no new room, no
    /// block). A deletion of the room already under way is not started twice.
    pub(crate) fn module_delete_room(self: &Arc<Self>, room_id: &str) -> Result<()> {
        let room = legal_room_id(room_id)?;
        let busy = self.admin_tasks.matching(|t| t.action == DELETION && t.resource_id == room_id && t.is_running());
        if busy.is_empty() {
            self.start_room_deletion(room, ShutdownParams { purge: true, ..Default::default() });
        }
        Ok(())
    }

    /// Runs a shutdown (and purge) in the background, its status kept under a new delete ID.
    fn start_room_deletion(self: &Arc<Self>, room: OwnedRoomId, params: ShutdownParams) -> String {
        let delete_id = self.admin_tasks.schedule(DELETION, room.as_str());
        let hs = self.clone();
        let id = delete_id.clone();
        tokio::spawn(async move {
            hs.admin_tasks.update(&id, "active", Some(empty_result()), None);
            let outcome = async {
                let result = hs.shutdown_room(&room, &params, Some(&id)).await?;
                if params.purge {
                    match hs.purge_room(&room, params.force_purge).await {
                        Err(e) if e.kind == ErrorKind::NotFound => {}
                        other => other?,
                    }
                }
                Ok::<Value, Error>(result)
            }
            .await;
            match outcome {
                Ok(result) => hs.admin_tasks.update(&id, "complete", Some(result), None),
                Err(e) => {
                    tracing::warn!(room = %room, error = %e.message, "room deletion failed");
                    hs.admin_tasks.update(&id, "failed", None, Some(e.message));
                }
            }
        });
        delete_id
    }

    /// `GET /_synapse/admin/v2/rooms/{roomId}/delete_status`.
    pub fn admin_room_delete_status(&self, requester: &Requester, room_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        legal_room_id(room_id)?;
        let results: Vec<Value> = self
            .admin_tasks
            .matching(|t| t.action == DELETION && t.resource_id == room_id)
            .iter()
            .map(deletion_json)
            .collect();
        if results.is_empty() {
            return Err(Error::not_found(format!("No delete task for room_id '{room_id}' found")));
        }
        Ok(json!({"results": results}))
    }

    /// `GET /_synapse/admin/v2/rooms/delete_status/{deleteId}`.
    pub fn admin_delete_status(&self, requester: &Requester, delete_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        self.admin_tasks
            .matching(|t| t.action == DELETION && t.id == delete_id)
            .first()
            .map(deletion_json)
            .ok_or_else(|| Error::not_found(format!("delete id '{delete_id}' not found")))
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/block`.
    pub async fn admin_room_block_status(&self, requester: &Requester, room_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        legal_room_id(room_id)?;
        let r = room_id.to_owned();
        Ok(match self.db(move |s| s.room_blocked_by(&r)).await? {
            Some(user) => json!({"block": true, "user_id": user}),
            None => json!({"block": false}),
        })
    }

    /// `PUT /_synapse/admin/v1/rooms/{roomId}/block` `{block}`.
    pub async fn admin_block_room(
        &self,
        requester: &Requester,
        room_id: &str,
        body: &Map<String, Value>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        legal_room_id(room_id)?;
        let block = match body.get("block") {
            None => return Err(Error::new(ErrorKind::MissingParam, "Missing params: ['block']")),
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Error::bad_json("Param 'block' must be a boolean.")),
        };
        let (r, admin) = (room_id.to_owned(), requester.user_id.to_string());
        if block {
            self.db(move |s| s.block_room(&r, &admin)).await?;
        } else {
            self.db(move |s| s.unblock_room(&r).map(drop)).await?;
        }
        audit!(requester, if block { "block room" } else { "unblock room" }, room_id);
        Ok(json!({"block": block}))
    }

    /// Refuses joining, inviting and knocking into a blocked room (Synapse's check in
    /// `update_membership`; leaving, kicks and bans go on).
    pub(crate) async fn refuse_if_blocked(&self, room_id: &RoomId, membership: &str) -> Result<()> {
        if matches!(membership, "leave" | "ban") {
            return Ok(());
        }
        let r = room_id.to_string();
        if self.db(move |s| s.room_blocked_by(&r)).await?.is_some() {
            return Err(Error::forbidden("This room has been blocked on this server"));
        }
        Ok(())
    }

    /// Synapse's `shutdown_room`: blocks (if asked), makes a new room (if asked), makes every
    /// local member leave (joining the new room those who were joined), and moves the aliases.
    async fn shutdown_room(&self, room: &RoomId, params: &ShutdownParams, delete_id: Option<&str>) -> Result<Value> {
        if !self.modules.check_can_shutdown_room(params.requester_user_id.as_deref(), room.as_str()).await {
            return Err(Error::forbidden("Shutdown of this room is forbidden"));
        }
        let mut result = empty_result();
        if params.block {
            let Some(admin) = params.requester_user_id.clone() else {
                return Err(Error::internal("shutdown_room: block=True not allowed when requester_user_id is None."));
            };
            let r = room.to_string();
            self.db(move |s| s.block_room(&r, &admin)).await?;
        }
        let r = room.to_string();
        if self.db(move |s| s.get_room(&r)).await?.is_none() {
            return Ok(result);
        }
        let mut new_room = None;
        if let Some(creator) = &params.new_room_user_id {
            let creator = UserId::parse(creator.as_str())
                .ok()
                .filter(|u| self.is_mine(u))
                .ok_or_else(|| Error::new(ErrorKind::BadRequest, format!("User must be our own: {creator}")))?;
            let creator = self.requester_for(&creator).await?;
            let body = json!({
                "preset": "public_chat",
                "name": params.room_name.as_deref().unwrap_or(DEFAULT_ROOM_NAME),
                "power_level_content_override": {"users_default": -10},
            });
            let Value::Object(body) = body else { unreachable!("a JSON object") };
            let (id, _) = self.create_room_unlimited(&creator, body).await?;
            result["new_room_id"] = json!(id);
            new_room = Some((id, creator));
            if let Some(d) = delete_id {
                self.admin_tasks.update(d, "active", Some(result.clone()), None);
            }
        }
        let r = room.to_string();
        let members = self.db(move |s| s.room_memberships(&r)).await?;
        for (user, membership) in members {
            if !matches!(membership.as_str(), "join" | "invite" | "knock") {
                continue;
            }
            let Ok(user_id) = UserId::parse(user.as_str()) else { continue };
            if !self.is_mine(&user_id) {
                continue;
            }
            let moved = async {
                let target = self.requester_for(&user_id).await?;
                self.update_membership_unlimited(&target, room, &user_id, "leave", None, Map::new()).await?;
                if let Some((new_room, _)) = &new_room
                    && membership == "join"
                {
                    self.update_membership_unlimited(&target, new_room, &user_id, "join", None, Map::new()).await?;
                }
                Ok::<(), Error>(())
            }
            .await;
            let list = match moved {
                Ok(()) => "kicked_users",
                Err(e) => {
                    tracing::warn!(room = %room, user = %user, error = %e.message, "Failed to leave old room and join new room");
                    "failed_to_kick_users"
                }
            };
            if let Some(users) = result[list].as_array_mut() {
                users.push(json!(user));
            }
            if let Some(d) = delete_id {
                self.admin_tasks.update(d, "active", Some(result.clone()), None);
            }
        }
        if let Some((new_room, creator)) = &new_room {
            let content = json!({"body": params.message.as_deref().unwrap_or(DEFAULT_MESSAGE), "msgtype": "m.text"});
            let Value::Object(content) = content else { unreachable!("a JSON object") };
            self.send_message(creator, new_room.as_str(), "m.room.message", &random_string(16), content).await?;
            let r = room.to_string();
            result["local_aliases"] = json!(self.db(move |s| s.aliases_for_room(&r)).await?);
            let (from, to) = (room.to_string(), new_room.to_string());
            self.db(move |s| s.move_aliases(&from, &to)).await?;
        }
        Ok(result)
    }

    /// Synapse's `purge_room`: removes the room from storage (400 "Users are still joined to
    /// this room" while local users are, unless forced), then from this and every other
    /// process's caches.
    async fn purge_room(&self, room: &RoomId, force: bool) -> Result<()> {
        let r = room.to_string();
        let members = self.db(move |s| s.room_memberships(&r)).await?;
        let local_joined =
            members.iter().any(|(u, m)| m == "join" && UserId::parse(u.as_str()).is_ok_and(|u| self.is_mine(&u)));
        if local_joined && !force {
            return Err(Error::new(ErrorKind::BadRequest, "Users are still joined to this room"));
        }
        // The room's send lock is held across the purge, so no event of this process lands in
        // it half-way.
        let send_lock = self.room_lock(room).await?;
        let r = room.to_string();
        if !self.db(move |s| s.purge_room(&r)).await? {
            return Err(Error::not_found(format!("Unknown room id {room}")));
        }
        drop(send_lock);
        self.forget_purged_room(room);
        if self.has_bus() {
            self.publish(format!("room_purged {room}"));
        }
        tracing::info!(room = %room, "purge complete");
        Ok(())
    }

    /// Drops what this process remembers of a purged room.
    pub(crate) fn forget_purged_room(&self, room: &RoomId) {
        self.forget_room_cache(room);
        self.rooms.state_events.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.sync.cache.forget_all();
    }
}
