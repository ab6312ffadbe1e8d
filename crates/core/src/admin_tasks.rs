//! The admin API's background tasks, Synapse's "scheduled tasks": v2 room deletions
//! (`shutdown_and_purge_room`), redacting a user's events (`redact_all_events`) and purging a
//! room's history (`purge_history`). Each has an
//! ID its status endpoint answers for, and `GET /_synapse/admin/v1/scheduled_tasks` lists them.
//!
//! Also Synapse's background-update endpoints, which mean little here: Myelin's schema changes
//! run as migrations at start-up, and the room statistics and user directory that Synapse
//! rebuilds in background jobs are read from current state, so they never need rebuilding.
//!
//! Statuses are kept in memory by the process that ran the task, a week after it ends (Synapse
//! keeps them in its database), as the only copy: ARCHITECTURE.md's state table.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value, json};

use crate::admin::audit;
use crate::error::ErrorKind;
use crate::server::{Homeserver, Requester, now_ms, random_string};
use crate::{Error, Result};

/// How long an ended task's status is kept.
const STATUS_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;

/// One background task and how it went.
#[derive(Debug, Clone)]
pub(crate) struct AdminTask {
    pub(crate) id: String,
    /// Synapse's action name.
    pub(crate) action: &'static str,
    /// What it acts on: a room ID or a user ID.
    pub(crate) resource_id: String,
    /// `scheduled`, `active`, `complete` or `failed` (Synapse's task statuses).
    pub(crate) status: &'static str,
    /// The result so far, `null` before it starts.
    pub(crate) result: Value,
    pub(crate) error: Option<String>,
    pub(crate) updated_ts: i64,
}

impl AdminTask {
    pub(crate) fn is_running(&self) -> bool {
        matches!(self.status, "scheduled" | "active")
    }
}

/// The process's tasks, and whether background updates are enabled (an admin may switch them
/// off and on, as on Synapse; Myelin has none to pause).
#[derive(Debug)]
pub(crate) struct AdminTasks {
    tasks: Mutex<Vec<AdminTask>>,
    background_updates: AtomicBool,
}

impl Default for AdminTasks {
    fn default() -> Self {
        AdminTasks { tasks: Mutex::default(), background_updates: AtomicBool::new(true) }
    }
}

impl AdminTasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AdminTask>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new `scheduled` task and returns its ID; statuses ended over a week ago go.
    pub(crate) fn schedule(&self, action: &'static str, resource_id: &str) -> String {
        let id = random_string(16);
        let mut tasks = self.lock();
        tasks.retain(|t| t.is_running() || now_ms() - t.updated_ts < STATUS_KEPT_MS);
        tasks.push(AdminTask {
            id: id.clone(),
            action,
            resource_id: resource_id.to_owned(),
            status: "scheduled",
            result: Value::Null,
            error: None,
            updated_ts: now_ms(),
        });
        id
    }

    /// Moves a task on: its status, and its result or error when given.
    pub(crate) fn update(&self, id: &str, status: &'static str, result: Option<Value>, error: Option<String>) {
        if let Some(task) = self.lock().iter_mut().find(|t| t.id == id) {
            task.status = status;
            if let Some(r) = result {
                task.result = r;
            }
            task.error = error;
            task.updated_ts = now_ms();
        }
    }

    /// The tasks `keep` says yes to, oldest first.
    pub(crate) fn matching(&self, keep: impl Fn(&AdminTask) -> bool) -> Vec<AdminTask> {
        self.lock().iter().filter(|t| keep(t)).cloned().collect()
    }
}

/// `GET /_synapse/admin/v1/scheduled_tasks`'s filters.
#[derive(Debug, Default, Clone)]
pub struct TaskFilter {
    /// `action_name` (repeatable): only these actions.
    pub actions: Vec<String>,
    /// `resource_id`: only tasks on this room or user.
    pub resource_id: Option<String>,
    /// `status` or `job_status` (repeatable): only these statuses.
    pub statuses: Vec<String>,
    /// `max_timestamp`: only tasks last updated at or before this (ms).
    pub max_timestamp: Option<i64>,
}

const STATUSES: [&str; 4] = ["scheduled", "active", "complete", "failed"];

impl Homeserver {
    /// `GET /_synapse/admin/v1/scheduled_tasks`.
    pub fn admin_scheduled_tasks(&self, requester: &Requester, filter: TaskFilter) -> Result<Value> {
        self.require_admin(requester)?;
        if let Some(bad) = filter.statuses.iter().find(|s| !STATUSES.contains(&s.as_str())) {
            return Err(Error::invalid_param(format!(
                "Query parameter \"status\" must be one of [{}], not {bad:?}",
                STATUSES.map(|s| format!("\"{s}\"")).join(", ")
            )));
        }
        let tasks = self.admin_tasks.matching(|t| {
            (filter.actions.is_empty() || filter.actions.iter().any(|a| a == t.action))
                && filter.resource_id.as_ref().is_none_or(|r| *r == t.resource_id)
                && (filter.statuses.is_empty() || filter.statuses.iter().any(|s| s == t.status))
                && filter.max_timestamp.is_none_or(|max| t.updated_ts <= max)
        });
        let listed: Vec<Value> = tasks
            .iter()
            .map(|t| {
                json!({
                    "id": t.id,
                    "action": t.action,
                    "status": t.status,
                    "timestamp_ms": t.updated_ts,
                    "resource_id": t.resource_id,
                    "result": t.result,
                    "error": t.error,
                })
            })
            .collect();
        Ok(json!({ "scheduled_tasks": listed }))
    }

    /// `GET /_synapse/admin/v1/background_updates/enabled`.
    pub fn admin_background_updates_enabled(&self, requester: &Requester) -> Result<Value> {
        self.require_admin(requester)?;
        Ok(json!({"enabled": self.admin_tasks.background_updates.load(Ordering::Relaxed)}))
    }

    /// `POST /_synapse/admin/v1/background_updates/enabled` `{"enabled": bool}` (default true).
    pub fn admin_set_background_updates(&self, requester: &Requester, body: &Map<String, Value>) -> Result<Value> {
        self.require_admin(requester)?;
        let enabled = match body.get("enabled") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Error::new(ErrorKind::BadRequest, "'enabled' parameter must be a boolean")),
        };
        self.admin_tasks.background_updates.store(enabled, Ordering::Relaxed);
        audit!(
            requester,
            if enabled { "enable background updates" } else { "disable background updates" },
            "the server"
        );
        Ok(json!({"enabled": enabled}))
    }

    /// `GET /_synapse/admin/v1/background_updates/status`: none is ever running.
    pub fn admin_background_updates_status(&self, requester: &Requester) -> Result<Value> {
        self.require_admin(requester)?;
        Ok(json!({
            "enabled": self.admin_tasks.background_updates.load(Ordering::Relaxed),
            "current_updates": {},
        }))
    }

    /// `POST /_synapse/admin/v1/background_updates/start_job` `{"job_name"}`: Synapse's jobs
    /// rebuild room statistics and the user directory, which Myelin reads from current state,
    /// so there is nothing to do and the answer is Synapse's `{}`. Re-signing events with an
    /// old key (`event_resign`) is refused: Myelin does not do it.
    pub fn admin_start_background_job(&self, requester: &Requester, body: &Map<String, Value>) -> Result<Value> {
        self.require_admin(requester)?;
        let Some(job) = body.get("job_name") else {
            return Err(Error::new(ErrorKind::MissingParam, "Missing params: ['job_name']"));
        };
        match job.as_str() {
            Some("populate_stats_process_rooms" | "regenerate_directory") => {
                tracing::info!(job = %job, "background job asked for: Myelin's statistics and directory are always current");
                Ok(json!({}))
            }
            Some("event_resign") => {
                Err(Error::new(ErrorKind::BadRequest, "Myelin does not re-sign events: event_resign is not available"))
            }
            _ => Err(Error::new(ErrorKind::BadRequest, "Invalid job_name")),
        }
    }
}

/// Synapse's action name for redacting a user's events.
const REDACTION: &str = "redact_all_events";

/// The event types Synapse redacts for `POST /_synapse/admin/v1/user/{userId}/redact`.
const REDACTED_TYPES: [&str; 3] = ["m.room.member", "m.room.message", "m.room.encrypted"];

/// A redaction task's parameters.
struct RedactParams {
    rooms: Vec<String>,
    reason: Option<String>,
    limit: usize,
    use_admin: bool,
    before_ts: Option<i64>,
    after_ts: Option<i64>,
}

impl Homeserver {
    /// `POST /_synapse/admin/v1/user/{userId}/redact`: redacts, in the background, the user's
    /// messages, encrypted messages and joins in `rooms` (every room they are joined to or
    /// banned from when empty), at most `limit` (default 1000) per room, between `after_ts`
    /// and `before_ts`. A local user's events are redacted as that user, unless `use_admin`;
    /// a remote user's as the admin. Answers `{redact_id}` at once.
    pub async fn admin_redact_user(
        self: &std::sync::Arc<Self>,
        requester: &Requester,
        user_id: &str,
        body: &Map<String, Value>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let user = ruma::OwnedUserId::try_from(user_id)
            .map_err(|_| Error::invalid_param(format!("Invalid user ID: {user_id}")))?;
        let bad = |what: &str| Error::bad_json(what.to_owned());
        let rooms = match body.get("rooms") {
            Some(Value::Array(rooms)) => rooms
                .iter()
                .map(|r| r.as_str().map(str::to_owned).ok_or_else(|| bad("rooms: a list of room IDs is required")))
                .collect::<Result<Vec<_>>>()?,
            _ => return Err(bad("rooms: a list of room IDs is required")),
        };
        let text = |key: &str| match body.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(&format!("{key}: a string is required"))),
        };
        let int = |key: &str| match body.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| bad(&format!("{key}: an integer is required"))),
        };
        let limit = int("limit")?;
        if limit.is_some_and(|l| l <= 0) {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "If limit is provided it must be a non-negative integer greater than 0.",
            ));
        }
        let use_admin = match body.get("use_admin") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("use_admin: a boolean is required")),
        };
        let mut params = RedactParams {
            rooms,
            reason: text("reason")?,
            limit: limit.map_or(1000, |l| l as usize),
            use_admin,
            before_ts: int("before_ts")?,
            after_ts: int("after_ts")?,
        };
        if params.rooms.is_empty() {
            let u = user.to_string();
            params.rooms = self
                .db(move |s| {
                    let mut rooms = s.rooms_for_user(&u, "join")?;
                    rooms.extend(s.rooms_for_user(&u, "ban")?);
                    Ok(rooms)
                })
                .await?;
        }
        let redact_id = self.admin_tasks.schedule(REDACTION, user.as_str());
        audit!(requester, "redact all events", format!("{user} ({} rooms)", params.rooms.len()));
        let hs = self.clone();
        let (id, admin) = (redact_id.clone(), requester.user_id.clone());
        tokio::spawn(async move {
            hs.admin_tasks.update(&id, "active", None, None);
            match hs.redact_user_events(&user, &admin, &params).await {
                Ok(failed) => hs.admin_tasks.update(&id, "complete", Some(json!({"failed_redactions": failed})), None),
                Err(e) => {
                    tracing::warn!(user = %user, error = %e.message, "redacting a user's events failed");
                    hs.admin_tasks.update(&id, "failed", None, Some(e.message));
                }
            }
        });
        Ok(json!({"redact_id": redact_id}))
    }

    /// The redactions themselves; answers the events that could not be redacted, with why.
    async fn redact_user_events(
        &self,
        user: &ruma::UserId,
        admin: &ruma::UserId,
        params: &RedactParams,
    ) -> Result<Map<String, Value>> {
        let as_user = if params.use_admin || user.server_name() != self.server_name() { admin } else { user };
        let redactor = self.requester_for(as_user).await?;
        let mut failed = Map::new();
        for room in &params.rooms {
            let (r, u) = (room.clone(), user.to_string());
            let events = self.db(move |s| s.events_sent_in_room(&r, &u, &REDACTED_TYPES)).await?;
            let chosen = events
                .iter()
                .filter_map(|json| serde_json::from_str::<Value>(json).ok())
                .filter(|event| {
                    let ts = event["origin_server_ts"].as_i64().unwrap_or(0);
                    params.before_ts.is_none_or(|before| ts < before) && params.after_ts.is_none_or(|after| ts > after)
                })
                .take(params.limit);
            for event in chosen {
                let content = event["content"].as_object();
                let joins = event["type"] == "m.room.member";
                // Joins are redacted, other memberships not; what was redacted already is skipped.
                if joins && event["content"]["membership"] != "join"
                    || !joins && content.is_none_or(|c| c.is_empty())
                    || event["unsigned"].get("redacted_because").is_some()
                {
                    continue;
                }
                let Some(event_id) = event["event_id"].as_str() else { continue };
                let txn = random_string(16);
                if let Err(e) = self.redact(&redactor, room, event_id, &txn, params.reason.clone()).await {
                    failed.insert(event_id.to_owned(), json!(e.message));
                }
            }
        }
        Ok(failed)
    }

    /// `GET /_synapse/admin/v1/user/redact_status/{redactId}`.
    pub fn admin_redact_status(&self, requester: &Requester, redact_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let task = self.admin_tasks.matching(|t| t.action == REDACTION && t.id == redact_id).pop();
        let Some(task) = task else {
            return Err(Error::not_found(format!("redact id '{redact_id}' not found")));
        };
        Ok(match task.status {
            "complete" => json!({"status": "complete", "failed_redactions": task.result["failed_redactions"]}),
            "failed" => json!({
                "status": "failed",
                "error": task.error.unwrap_or_else(|| "Unknown error, please check the logs for more information.".into()),
            }),
            status => json!({"status": status}),
        })
    }
}

/// Synapse's action name for purging a room's history.
const PURGE_HISTORY: &str = "purge_history";

impl Homeserver {
    /// `POST /_synapse/admin/v1/purge_history/{roomId}[/{eventId}]`: deletes, in the
    /// background, the room's message-like events before an event (`purge_up_to_event_id`, or
    /// the path's) or before the last event sent before `purge_up_to_ts`; state events and the
    /// room's newest events stay, and this server's own events too unless
    /// `delete_local_events`. Answers `{purge_id}` at once.
    pub async fn admin_purge_history(
        self: &std::sync::Arc<Self>,
        requester: &Requester,
        room_id: &str,
        event_id: Option<&str>,
        body: &Map<String, Value>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let room = ruma::OwnedRoomId::try_from(room_id)
            .map_err(|_| Error::invalid_param(format!("{room_id} is not a legal room ID")))?;
        // Synapse takes any truthy value.
        let delete_local = match body.get("delete_local_events") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Number(n)) => n.as_f64() != Some(0.0),
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::Bool(true)) => true,
        };
        let event_id = event_id
            .map(str::to_owned)
            .or_else(|| body.get("purge_up_to_event_id").and_then(Value::as_str).map(str::to_owned));
        let cut = if let Some(event_id) = event_id {
            let id = event_id.clone();
            let row = self.db(move |s| s.get_event(&id)).await?.ok_or_else(|| Error::not_found("Event not found"))?;
            let in_room = serde_json::from_str::<Value>(&row.json).ok().is_some_and(|e| e["room_id"] == room.as_str());
            if !in_room {
                return Err(Error::new(ErrorKind::BadRequest, "Event is for wrong room."));
            }
            row.stream_ordering
        } else if let Some(ts) = body.get("purge_up_to_ts") {
            let Some(ts) = ts.as_i64().filter(|_| ts.is_i64() || ts.is_u64()) else {
                return Err(Error::bad_json("purge_up_to_ts must be an int"));
            };
            let r = room.to_string();
            let before = self.db(move |s| s.events_by_timestamp(&r, ts, false, 1)).await?;
            match before.first() {
                Some(row) => row.stream_ordering,
                None => return Err(Error::not_found("there is no event to be purged")),
            }
        } else {
            return Err(Error::bad_json("must specify purge_up_to_event_id or purge_up_to_ts"));
        };
        let purge_id = self.admin_tasks.schedule(PURGE_HISTORY, room.as_str());
        audit!(requester, "purge history", format!("{room} before position {cut} (local events too: {delete_local})"));
        let hs = self.clone();
        let id = purge_id.clone();
        tokio::spawn(async move {
            hs.admin_tasks.update(&id, "active", None, None);
            match hs.purge_history(&room, cut, delete_local).await {
                Ok(deleted) => hs.admin_tasks.update(&id, "complete", Some(json!({"deleted": deleted})), None),
                Err(e) => {
                    tracing::warn!(room = %room, error = %e.message, "purging history failed");
                    hs.admin_tasks.update(&id, "failed", None, Some(e.message));
                }
            }
        });
        Ok(json!({"purge_id": purge_id}))
    }

    /// The purge itself, under the room's send lock; every process then forgets what it kept
    /// of the room's events.
    async fn purge_history(&self, room: &ruma::RoomId, before: i64, delete_local: bool) -> Result<u64> {
        let send_lock = self.room_lock(room).await?;
        let (r, server) = (room.to_string(), self.server_name().to_owned());
        let deleted = self.db(move |s| s.purge_history(&r, before, delete_local, &server)).await?;
        drop(send_lock);
        self.forget_purged_room(room);
        if self.has_bus() {
            self.publish(format!("room_purged {room}"));
        }
        tracing::info!(room = %room, deleted, "history purged");
        Ok(deleted)
    }

    /// `GET /_synapse/admin/v1/purge_history_status/{purgeId}`: `active` until it ends, then
    /// `complete` or `failed` (with `error`).
    pub fn admin_purge_history_status(&self, requester: &Requester, purge_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let task = self.admin_tasks.matching(|t| t.action == PURGE_HISTORY && t.id == purge_id).pop();
        let Some(task) = task else {
            return Err(Error::not_found(format!("purge id '{purge_id}' not found")));
        };
        let mut out = json!({"status": if task.is_running() { "active" } else { task.status }});
        if let Some(error) = task.error {
            out["error"] = json!(error);
        }
        Ok(out)
    }
}
