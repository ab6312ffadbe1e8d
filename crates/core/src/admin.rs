//! Reports and the first part of Synapse's admin API: users report events, rooms and users; the
//! server's admins read and delete event reports, and look after accounts (admin flag, details,
//! whois, deactivation, password reset, joined rooms). Every admin mutation is logged (target
//! `myelin::audit`) with the admin who made it. Answers and errors are Synapse's.

use myelin_storage::{EventReport, EventReportQuery};
use ruma::{OwnedUserId, RoomId};
use serde_json::{Map, Value, json};

use crate::error::{Error, ErrorKind};
use crate::server::now_ms;
use crate::{Homeserver, Requester, Result};

/// The longest reason a user report may carry (Synapse).
const MAX_REPORT_REASON: usize = 1000;

/// Logs an admin's change, so an operator can tell who did what.
macro_rules! audit {
    ($admin:expr, $action:expr, $target:expr) => {
        tracing::info!(target: "myelin::audit", admin = %$admin.user_id, action = $action, target = %$target, "admin action")
    };
}
pub(crate) use audit;

pub(crate) fn parse_local_user(hs: &Homeserver, user_id: &str, message: &str) -> Result<OwnedUserId> {
    let user =
        OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param(format!("Invalid user ID {user_id}")))?;
    if !hs.is_mine(&user) {
        return Err(Error::new(ErrorKind::BadRequest, message));
    }
    Ok(user)
}

/// A stored rate as the admin API shows it: whole numbers as integers (Synapse stores them so).
fn ratelimit_number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 1e15 { json!(value as i64) } else { json!(value) }
}

/// A report ID from the path: Synapse's message for anything but a non-negative integer.
/// A user report as Synapse's admin API shows it.
fn user_report_json((id, received_ts, target_user_id, user_id, reason): myelin_storage::SubjectReport) -> Value {
    json!({
        "id": id,
        "received_ts": received_ts,
        "target_user_id": target_user_id,
        "user_id": user_id,
        "reason": reason,
    })
}

fn report_id(text: &str) -> Result<i64> {
    text.parse::<i64>().ok().filter(|id| *id >= 0).ok_or_else(|| {
        Error::invalid_param("The report_id parameter must be a string representing a positive integer.")
    })
}

impl Homeserver {
    // --- reports -------------------------------------------------------------------------------

    /// `POST /rooms/{roomId}/report/{eventId}`: only an event the reporter can see.
    pub async fn report_event(
        &self,
        requester: &Requester,
        room_id: &str,
        event_id: &str,
        body: Map<String, Value>,
    ) -> Result<()> {
        let reason = match body.get("reason") {
            None | Some(Value::Null) => None,
            Some(Value::String(r)) => Some(r.clone()),
            Some(_) => return Err(Error::bad_json("Param 'reason' must be a string")),
        };
        if body.get("score").is_some_and(|s| !s.is_i64()) {
            return Err(Error::bad_json("Param 'score' must be an integer"));
        }
        if self.get_room_event(requester, room_id, event_id).await.is_err() {
            return Err(Error::not_found("Unable to report event: it does not exist or you aren't able to see it."));
        }
        let report = EventReport {
            id: 0,
            received_ts: now_ms(),
            room_id: room_id.to_owned(),
            event_id: event_id.to_owned(),
            user_id: requester.user_id.to_string(),
            reason,
            content: Value::Object(body),
        };
        self.db(move |s| s.add_event_report(&report)).await?;
        Ok(())
    }

    /// `POST /rooms/{roomId}/report`: a room this server knows.
    pub async fn report_room(&self, requester: &Requester, room_id: &str, reason: &str) -> Result<()> {
        self.limit_user(&self.limiters.reports, requester.user_id.as_str(), None).await?;
        let room = RoomId::parse(room_id).map_err(|_| Error::not_found("Room does not exist"))?;
        if self.current_state(&room).await?.is_none() {
            return Err(Error::not_found("Room does not exist"));
        }
        let (r, u, reason) = (room_id.to_owned(), requester.user_id.to_string(), reason.to_owned());
        self.db(move |s| s.add_room_report(&r, &u, &reason, now_ms())).await?;
        Ok(())
    }

    /// `POST /users/{userId}/report`: kept only for a local user that exists, but answered the
    /// same either way (Synapse hides which users exist).
    pub async fn report_user(&self, requester: &Requester, target: &str, reason: &str) -> Result<()> {
        self.limit_user(&self.limiters.reports, requester.user_id.as_str(), None).await?;
        if reason.chars().count() > MAX_REPORT_REASON {
            return Err(Error::bad_json("Reason must be less than 1000 characters"));
        }
        let Ok(user) = OwnedUserId::try_from(target) else { return Ok(()) };
        let t = user.to_string();
        if !self.is_mine(&user) || self.db(move |s| s.get_user(&t)).await?.is_none() {
            return Ok(());
        }
        let (t, u, reason) = (user.to_string(), requester.user_id.to_string(), reason.to_owned());
        self.db(move |s| s.add_user_report(&t, &u, &reason, now_ms())).await?;
        Ok(())
    }

    /// `GET /_synapse/admin/v1/event_reports`.
    pub async fn admin_event_reports(&self, requester: &Requester, query: EventReportQuery) -> Result<Value> {
        self.require_admin(requester)?;
        if query.from < 0 {
            return Err(Error::invalid_param("The start parameter must be a positive integer."));
        }
        if query.limit < 0 {
            return Err(Error::invalid_param("The limit parameter must be a positive integer."));
        }
        let (from, limit) = (query.from, query.limit);
        let (reports, total) = self.db(move |s| s.event_reports(&query)).await?;
        let mut out = Vec::new();
        for report in reports {
            out.push(self.report_json(report, false).await?);
        }
        let mut answer = json!({"event_reports": out, "total": total});
        if from.saturating_add(limit) < total {
            answer["next_token"] = json!(from + out.len() as i64);
        }
        Ok(answer)
    }

    /// `GET /_synapse/admin/v1/event_reports/{reportId}`: with the reported event.
    pub async fn admin_event_report(&self, requester: &Requester, id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let id = report_id(id)?;
        match self.db(move |s| s.event_report(id)).await? {
            Some(report) => self.report_json(report, true).await,
            None => Err(Error::not_found("Event report not found")),
        }
    }

    /// `DELETE /_synapse/admin/v1/event_reports/{reportId}`.
    pub async fn admin_delete_event_report(&self, requester: &Requester, id: &str) -> Result<()> {
        self.require_admin(requester)?;
        let id = report_id(id)?;
        if !self.db(move |s| s.delete_event_report(id)).await? {
            return Err(Error::not_found("Event report not found"));
        }
        audit!(requester, "delete event report", id);
        Ok(())
    }

    /// `GET /_synapse/admin/v1/user_reports`: `from`, `limit`, `dir` (newest first by
    /// default), `user_id` (a part of the reporter's ID) and `target_user_id` (of the
    /// reported user's).
    pub async fn admin_user_reports(
        &self,
        requester: &Requester,
        query: EventReportQuery,
        target_user_id: Option<String>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        if query.from < 0 {
            return Err(Error::invalid_param("The start parameter must be a positive integer."));
        }
        if query.limit < 0 {
            return Err(Error::invalid_param("The limit parameter must be a positive integer."));
        }
        let mut reports: Vec<Value> = self
            .db(|s| s.user_reports())
            .await?
            .into_iter()
            .filter(|(_, _, target, reporter, _)| {
                query.user_id.as_ref().is_none_or(|part| reporter.contains(part.as_str()))
                    && target_user_id.as_ref().is_none_or(|part| target.contains(part.as_str()))
            })
            .map(user_report_json)
            .collect();
        if !query.forwards {
            reports.reverse();
        }
        let total = reports.len() as i64;
        let page: Vec<Value> = reports.into_iter().skip(query.from as usize).take(query.limit as usize).collect();
        let mut answer = json!({"total": total});
        if query.from.saturating_add(query.limit) < total {
            answer["next_token"] = json!(query.from + page.len() as i64);
        }
        answer["user_reports"] = json!(page);
        Ok(answer)
    }

    /// `GET /_synapse/admin/v1/user_reports/{reportId}`.
    pub async fn admin_user_report(&self, requester: &Requester, id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let id = report_id(id)?;
        let reports = self.db(|s| s.user_reports()).await?;
        reports
            .into_iter()
            .find(|r| r.0 == id)
            .map(user_report_json)
            .ok_or_else(|| Error::not_found("User report not found"))
    }

    /// `DELETE /_synapse/admin/v1/user_reports/{reportId}`.
    pub async fn admin_delete_user_report(&self, requester: &Requester, id: &str) -> Result<()> {
        self.require_admin(requester)?;
        let id = report_id(id)?;
        if !self.db(move |s| s.delete_user_report(id)).await? {
            return Err(Error::not_found("User report not found"));
        }
        audit!(requester, "delete user report", id);
        Ok(())
    }

    /// A report as Synapse lists it: the event's sender, the room's name and canonical alias,
    /// and (`with_event`) the event itself.
    async fn report_json(&self, report: EventReport, with_event: bool) -> Result<Value> {
        let event_id = report.event_id.clone();
        let event = self
            .db(move |s| s.get_event(&event_id))
            .await?
            .and_then(|row| serde_json::from_str::<Value>(&row.json).ok());
        let (mut name, mut alias) = (Value::Null, Value::Null);
        if let Ok(room) = RoomId::parse(&report.room_id) {
            name = self
                .state_content_of(&room, "m.room.name", "")
                .await?
                .and_then(|c| c.get("name").cloned())
                .unwrap_or_default();
            alias = self
                .state_content_of(&room, "m.room.canonical_alias", "")
                .await?
                .and_then(|c| c.get("alias").cloned())
                .unwrap_or_default();
        }
        let mut out = json!({
            "id": report.id,
            "received_ts": report.received_ts,
            "room_id": report.room_id,
            "name": name,
            "event_id": report.event_id,
            "user_id": report.user_id,
            "reason": report.reason,
            "score": report.content.get("score").cloned().unwrap_or_default(),
            "sender": event.as_ref().and_then(|e| e.get("sender").cloned()).unwrap_or_default(),
            "canonical_alias": alias,
        });
        if with_event {
            out["event_json"] = event.unwrap_or_default();
        }
        Ok(out)
    }

    // --- users ---------------------------------------------------------------------------------

    /// `GET /_synapse/admin/v1/users/{userId}/admin`.
    pub async fn admin_is_admin(&self, requester: &Requester, user_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let user = parse_local_user(self, user_id, "Only local users can be admins of this homeserver")?;
        let u = user.to_string();
        let admin = self.db(move |s| s.get_user(&u)).await?.is_some_and(|u| u.is_admin);
        Ok(json!({"admin": admin}))
    }

    /// `PUT /_synapse/admin/v1/users/{userId}/admin` `{"admin": bool}`.
    pub async fn admin_set_admin(&self, requester: &Requester, user_id: &str, admin: Option<&Value>) -> Result<()> {
        self.require_admin(requester)?;
        let user = parse_local_user(self, user_id, "Only local users can be admins of this homeserver")?;
        let Some(admin) = admin.and_then(Value::as_bool) else {
            return Err(Error::new(ErrorKind::MissingParam, "Missing 'admin' parameter"));
        };
        if user == requester.user_id && !admin {
            return Err(Error::new(ErrorKind::BadRequest, "You may not demote yourself."));
        }
        let u = user.to_string();
        if self.db(move |s| s.get_user(&u)).await?.is_none() {
            return Err(Error::not_found("User not found"));
        }
        self.set_admin(user.as_str(), admin).await?;
        audit!(requester, if admin { "make admin" } else { "remove admin" }, user);
        Ok(())
    }

    /// `GET /_synapse/admin/v2/users/{userId}`: the account as Synapse describes it.
    pub async fn admin_user(&self, requester: &Requester, user_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let user = parse_local_user(self, user_id, "Can only look up local users")?;
        let u = user.to_string();
        let Some(row) = self.db(move |s| s.get_user(&u)).await? else {
            return Err(Error::not_found("User not found"));
        };
        let (displayname, avatar_url) = self.profile_of(user.as_str()).await?;
        let u = user.to_string();
        let devices = self.db(move |s| s.get_devices(&u)).await?;
        let last_seen_ts = devices.iter().filter_map(|d| d.last_seen_ts).max();
        let appservice_id = self.appservice_owning(user.as_str()).map(|r| r.id.clone());
        let erased = self.erased_users().await?.contains(user.as_str());
        let u = user.to_string();
        let external_ids: Vec<Value> = self
            .db(move |s| s.external_ids(&u))
            .await?
            .into_iter()
            .map(|(auth_provider, external_id)| json!({"auth_provider": auth_provider, "external_id": external_id}))
            .collect();
        let u = user.to_string();
        let threepids: Vec<Value> =
            self.db(move |s| s.user_threepids(&u)).await?.iter().map(crate::threepids::threepid_json).collect();
        let u = user.to_string();
        let user_type = self.db(move |s| s.user_type(&u)).await?;
        Ok(json!({
            "name": user,
            "displayname": displayname,
            "avatar_url": avatar_url,
            "threepids": threepids,
            "external_ids": external_ids,
            "admin": row.is_admin,
            "deactivated": row.deactivated,
            "erased": erased,
            "shadow_banned": row.shadow_banned,
            "creation_ts": row.creation_ts / 1000,
            "appservice_id": appservice_id,
            "consent_server_notice_sent": null,
            "consent_version": null,
            "consent_ts": null,
            "user_type": user_type,
            "is_guest": row.is_guest,
            "locked": row.locked,
            "suspended": row.suspended,
            "approved": true,
            "last_seen_ts": last_seen_ts,
        }))
    }

    /// `GET /_synapse/admin/v1/whois/{userId}` and `GET /_matrix/client/v3/admin/whois/{userId}`:
    /// an admin, or the user themselves.
    pub async fn whois(&self, requester: &Requester, user_id: &str) -> Result<Value> {
        let user = parse_local_user(self, user_id, "Can only whois a local user")?;
        if user != requester.user_id && !requester.is_admin {
            return Err(Error::forbidden("You are not a server admin"));
        }
        let u = user.to_string();
        let devices = self.db(move |s| s.get_devices(&u)).await?;
        let mut out = Map::new();
        for device in devices {
            let connection = json!({
                "ip": device.last_seen_ip,
                "last_seen": device.last_seen_ts,
                "user_agent": device.last_seen_user_agent,
            });
            out.insert(device.device_id, json!({"sessions": [{"connections": [connection]}]}));
        }
        Ok(json!({"user_id": user, "devices": out}))
    }

    /// `POST /_synapse/admin/v1/deactivate/{userId}`: as the user's own deactivation (rooms left,
    /// tokens revoked, password removed, erased with `erase`), without their authentication.
    pub async fn admin_deactivate(&self, requester: &Requester, user_id: &str, erase: bool) -> Result<Value> {
        self.require_admin(requester)?;
        let user = self.existing_local_user(user_id, "Can only deactivate local users").await?;
        let target = self.requester_for(&user).await?;
        self.deactivate_account(&target, true, None, erase).await?;
        audit!(requester, "deactivate", user);
        Ok(json!({"id_server_unbind_result": "success"}))
    }

    /// `POST /_synapse/admin/v1/reset_password/{userId}` `{new_password, logout_devices}`.
    pub async fn admin_reset_password(
        &self,
        requester: &Requester,
        user_id: &str,
        new_password: Option<&Value>,
        logout_devices: bool,
    ) -> Result<()> {
        self.require_admin(requester)?;
        let user = parse_local_user(self, user_id, "Can only change local users")?;
        let Some(password) = new_password.and_then(Value::as_str) else {
            return Err(Error::new(ErrorKind::MissingParam, "Missing 'new_password' parameter"));
        };
        self.check_password_policy(password)?;
        let u = user.to_string();
        if self.db(move |s| s.get_user(&u)).await?.is_none() {
            return Err(Error::not_found("User not found"));
        }
        let hash = crate::users::hash_password(password.to_owned()).await?;
        let u = user.to_string();
        self.db(move |s| {
            s.set_password_hash(&u, Some(&hash))?;
            if logout_devices { s.delete_all_devices(&u, None) } else { Ok(()) }
        })
        .await?;
        audit!(requester, "reset password", user);
        Ok(())
    }

    /// `GET /_synapse/admin/v1/users/{userId}/accountdata`: the user's global and per-room
    /// account data, as Synapse answers (push rules, which Myelin keeps as account data and
    /// Synapse apart, are left out as Synapse leaves them).
    pub async fn admin_account_data(&self, requester: &Requester, user_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let user = self.existing_local_user(user_id, "Can only look up local users").await?;
        let u = user.to_string();
        let rows = self.db(move |s| s.account_data_since(&u, 0, s.max_stream_ordering()?)).await?;
        let (mut global, mut rooms) = (Map::new(), Map::new());
        for (room, kind, content) in rows {
            if room.is_empty() {
                if kind != "m.push_rules" {
                    global.insert(kind, content);
                }
            } else if let Some(map) = rooms.entry(room).or_insert_with(|| json!({})).as_object_mut() {
                map.insert(kind, content);
            }
        }
        Ok(json!({"account_data": {"global": global, "rooms": rooms}}))
    }

    /// `GET /_synapse/admin/v1/username_available?username=`: as the client API's check,
    /// without its rate limit.
    pub async fn admin_username_available(&self, requester: &Requester, username: &str) -> Result<Value> {
        self.require_admin(requester)?;
        self.username_available(username).await?;
        Ok(json!({"available": true}))
    }

    /// `GET /_synapse/admin/v1/users/{userId}/joined_rooms`.
    pub async fn admin_joined_rooms(&self, requester: &Requester, user_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let u = user_id.to_owned();
        let rooms = self.db(move |s| s.rooms_for_user(&u, "join")).await?;
        Ok(json!({"total": rooms.len(), "joined_rooms": rooms}))
    }

    /// `GET /_synapse/admin/v1/users/{userId}/memberships`: `{room_id: membership}` for every
    /// room where the user has one.
    pub async fn admin_user_memberships(&self, requester: &Requester, user_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let u = user_id.to_owned();
        let memberships = self.db(move |s| s.user_memberships(&u)).await?;
        let map: Map<String, Value> = memberships.into_iter().map(|m| (m.room_id, json!(m.membership))).collect();
        Ok(json!({ "memberships": map }))
    }

    /// `GET /_synapse/admin/v1/search_users/{userId}?term=`: every account whose ID contains
    /// `term` (any case), in Synapse's shape, but with `password_hash` withheld (`null`):
    /// Myelin hands out no password hashes, which could be cracked offline.
    pub async fn admin_search_users(&self, requester: &Requester, target: &str, term: Option<String>) -> Result<Value> {
        use myelin_storage::UserListQuery;
        self.require_admin(requester)?;
        parse_local_user(self, target, "Can only users a local user")?;
        let Some(term) = term else {
            return Err(Error::new(ErrorKind::MissingParam, "Missing string query parameter 'term'"));
        };
        let query = UserListQuery {
            limit: i64::MAX,
            user_id: Some(term),
            guests: true,
            deactivated: None,
            locked: true,
            forwards: true,
            ..UserListQuery::default()
        };
        let (users, _) = self.db(move |s| s.list_users(&query)).await?;
        let found: Vec<Value> = users
            .into_iter()
            .map(|u| {
                json!({
                    "name": u.user.user_id,
                    "password_hash": null,
                    "is_guest": u.user.is_guest,
                    "admin": u.user.is_admin,
                    "user_type": u.user_type,
                })
            })
            .collect();
        Ok(json!(found))
    }

    /// `GET /_synapse/admin/v1/threepid/{medium}/users/{address}`: the account that has the
    /// identifier (the address as stored, so as Synapse, not canonicalised here).
    pub async fn admin_user_by_threepid(&self, requester: &Requester, medium: &str, address: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let (m, a) = (medium.to_owned(), address.to_owned());
        match self.db(move |s| s.user_by_threepid(&m, &a)).await? {
            Some(user_id) => Ok(json!({"user_id": user_id})),
            None => Err(Error::not_found("User not found")),
        }
    }
}

/// `GET /_synapse/admin/v2/users`'s parameters, as given.
#[derive(Debug, Clone, Default)]
pub struct UserListParams {
    /// `from` (default 0).
    pub from: Option<i64>,
    /// `limit` (default 100).
    pub limit: Option<i64>,
    /// `name`: a part of the user ID or display name.
    pub name: Option<String>,
    /// `user_id`: a part of the user ID.
    pub user_id: Option<String>,
    /// `guests` (default true).
    pub guests: Option<bool>,
    /// `deactivated`: in v2, whether to include deactivated accounts (default false); in v3,
    /// only those (true) or none of them (false), everyone when absent.
    pub deactivated: Option<bool>,
    /// Whether this is `GET /_synapse/admin/v3/users`.
    pub v3: bool,
    /// `admins`: only admins, or only non-admins.
    pub admins: Option<bool>,
    /// `locked` (default false): include locked accounts.
    pub locked: Option<bool>,
    /// `order_by` (default `name`).
    pub order_by: Option<String>,
    /// `dir`: `f` (default) or `b`.
    pub dir: Option<String>,
    /// `not_user_type` (repeatable): account types left out, `""` for regular accounts.
    pub not_user_types: Vec<String>,
}

/// `GET /_synapse/admin/v1/rooms`'s parameters, as given.
#[derive(Debug, Clone, Default)]
pub struct RoomListParams {
    /// `from` (default 0).
    pub from: Option<i64>,
    /// `limit` (default 100).
    pub limit: Option<i64>,
    /// `order_by` (default `name`).
    pub order_by: Option<String>,
    /// `dir`: `f` (default) or `b`.
    pub dir: Option<String>,
    /// `search_term`: a part of the name, canonical alias or room ID.
    pub search_term: Option<String>,
}

/// `from` (default 0) and `limit` (default 100), refused when negative, as Synapse's admin API.
pub(crate) fn paging(from: Option<i64>, limit: Option<i64>) -> Result<(i64, i64)> {
    let from = from.unwrap_or(0);
    if from < 0 {
        return Err(Error::invalid_param("Query parameter from must be a string representing a positive integer."));
    }
    let limit = limit.unwrap_or(100);
    if limit < 0 {
        return Err(Error::invalid_param("Query parameter limit must be a string representing a positive integer."));
    }
    Ok((from, limit))
}

/// `dir`: `f` (the default) or `b`.
pub(crate) fn forwards(dir: Option<&str>) -> Result<bool> {
    match dir {
        None | Some("f") => Ok(true),
        Some("b") => Ok(false),
        Some(other) => Err(Error::invalid_param(format!("Unknown direction: {other}"))),
    }
}

impl Homeserver {
    /// `GET /_synapse/admin/v2/users`: a page of accounts, filtered and ordered as Synapse's.
    pub async fn admin_list_users(&self, requester: &Requester, params: UserListParams) -> Result<Value> {
        use myelin_storage::{UserListQuery, UserOrder};
        self.require_admin(requester)?;
        let (from, limit) = paging(params.from, params.limit)?;
        let order_by = match params.order_by.as_deref().unwrap_or("name") {
            "name" => UserOrder::Name,
            "displayname" => UserOrder::DisplayName,
            "creation_ts" => UserOrder::CreationTs,
            "admin" => UserOrder::Admin,
            "deactivated" => UserOrder::Deactivated,
            "is_guest" => UserOrder::IsGuest,
            "shadow_banned" => UserOrder::ShadowBanned,
            other => return Err(Error::invalid_param(format!("Unknown value for order_by: {other}"))),
        };
        let query = UserListQuery {
            from,
            limit,
            name: params.name,
            user_id: params.user_id,
            guests: params.guests.unwrap_or(true),
            // v2's `deactivated` includes deactivated accounts; v3's selects them (or, false,
            // leaves them out); absent, v2 leaves them out and v3 lists everyone.
            deactivated: match (params.v3, params.deactivated) {
                (false, Some(true)) => None,
                (false, _) => Some(false),
                (true, selected) => selected,
            },
            admins: params.admins,
            locked: params.locked.unwrap_or(false),
            order_by,
            forwards: forwards(params.dir.as_deref())?,
            not_user_types: params.not_user_types,
        };
        let (users, total) = self.db(move |s| s.list_users(&query)).await?;
        let count = users.len() as i64;
        let erased = self.erased_users().await?;
        let users: Vec<Value> = users
            .into_iter()
            .map(|u| {
                json!({
                    "name": u.user.user_id,
                    "user_type": u.user_type,
                    "is_guest": u.user.is_guest,
                    "admin": u.user.is_admin,
                    "deactivated": u.user.deactivated,
                    "shadow_banned": u.user.shadow_banned,
                    "displayname": u.displayname,
                    "avatar_url": u.avatar_url,
                    "creation_ts": u.user.creation_ts / 1000,
                    "approved": true,
                    "erased": erased.contains(&u.user.user_id),
                    "last_seen_ts": u.last_seen_ts,
                    "locked": u.user.locked,
                    "suspended": u.user.suspended,
                })
            })
            .collect();
        let mut out = json!({"users": users, "total": total});
        if from.saturating_add(count) < total {
            out["next_token"] = json!(from.saturating_add(count).to_string());
        }
        Ok(out)
    }

    /// One room as the admin API describes it.
    async fn admin_room_info(&self, room_id: &str, joined: i64) -> Result<Option<Value>> {
        let Ok(room) = RoomId::parse(room_id) else { return Ok(None) };
        let r = room_id.to_owned();
        let Some(row) = self.db(move |s| s.get_room(&r)).await? else { return Ok(None) };
        let state_events = self.current_state(&room).await?.map_or(0, |s| s.len());
        let field = |content: Option<Map<String, Value>>, key: &str| {
            content.and_then(|c| c.get(key).cloned()).unwrap_or_default()
        };
        let create = self.state_content_of(&room, "m.room.create", "").await?;
        let r = room_id.to_owned();
        let members = self.db(move |s| s.room_memberships(&r)).await?;
        let suffix = format!(":{}", self.server_name());
        let local = members.iter().filter(|(u, m)| m == "join" && u.ends_with(&suffix)).count();
        Ok(Some(json!({
            "room_id": room_id,
            "name": field(self.state_content_of(&room, "m.room.name", "").await?, "name"),
            "topic": field(self.state_content_of(&room, "m.room.topic", "").await?, "topic"),
            "avatar": field(self.state_content_of(&room, "m.room.avatar", "").await?, "url"),
            "canonical_alias": field(self.state_content_of(&room, "m.room.canonical_alias", "").await?, "alias"),
            "joined_members": joined,
            "joined_local_members": local,
            "version": row.room_version,
            "creator": row.creator,
            "encryption": field(self.state_content_of(&room, "m.room.encryption", "").await?, "algorithm"),
            "federatable": create.as_ref().and_then(|c| c.get("m.federate")).and_then(Value::as_bool).unwrap_or(true),
            "public": row.is_public,
            "join_rules": field(self.state_content_of(&room, "m.room.join_rules", "").await?, "join_rule"),
            "guest_access": field(self.state_content_of(&room, "m.room.guest_access", "").await?, "guest_access"),
            "history_visibility": field(
                self.state_content_of(&room, "m.room.history_visibility", "").await?,
                "history_visibility"
            ),
            "state_events": state_events,
            "room_type": create.as_ref().and_then(|c| c.get("type").cloned()).unwrap_or_default(),
        })))
    }

    /// `GET /_synapse/admin/v1/rooms`: every room this server knows, searched and ordered.
    pub async fn admin_list_rooms(&self, requester: &Requester, params: RoomListParams) -> Result<Value> {
        self.require_admin(requester)?;
        let (from, limit) = paging(params.from, params.limit)?;
        let forwards = forwards(params.dir.as_deref())?;
        let order_by = params.order_by.unwrap_or_else(|| "name".into());
        // Synapse's `alphabetical` and `size` are older names of `name` and `joined_members`.
        let key = match order_by.as_str() {
            "alphabetical" | "name" => "name",
            "size" | "joined_members" => "joined_members",
            k @ ("canonical_alias"
            | "joined_local_members"
            | "version"
            | "creator"
            | "encryption"
            | "federatable"
            | "public"
            | "join_rules"
            | "guest_access"
            | "history_visibility"
            | "state_events") => k,
            other => return Err(Error::invalid_param(format!("Unknown value for order_by: {other}"))),
        };
        let mut rooms = Vec::new();
        for (room_id, joined) in self.db(|s| s.list_rooms()).await? {
            if let Some(info) = self.admin_room_info(&room_id, joined).await? {
                rooms.push(info);
            }
        }
        if let Some(term) = params.search_term.filter(|t| !t.is_empty()).map(|t| t.to_lowercase()) {
            rooms.retain(|r| {
                ["name", "canonical_alias", "room_id"]
                    .iter()
                    .any(|k| r[*k].as_str().is_some_and(|v| v.to_lowercase().contains(&term)))
            });
        }
        // Numbers compare as numbers, text as text; missing values last, room ID to break ties.
        rooms.sort_by(|a, b| {
            let order = match (&a[key], &b[key]) {
                (Value::Number(x), Value::Number(y)) => {
                    x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(std::cmp::Ordering::Equal)
                }
                (Value::Null, Value::Null) => std::cmp::Ordering::Equal,
                (Value::Null, _) => std::cmp::Ordering::Greater,
                (_, Value::Null) => std::cmp::Ordering::Less,
                (x, y) => x.to_string().cmp(&y.to_string()),
            };
            order.then_with(|| a["room_id"].as_str().cmp(&b["room_id"].as_str()))
        });
        // The size order is biggest first unless asked otherwise, as Synapse.
        let descending = if key == "joined_members" && params.dir.is_none() { true } else { !forwards };
        if descending {
            rooms.reverse();
        }
        let total = rooms.len() as i64;
        let page: Vec<Value> = rooms.into_iter().skip(from as usize).take(limit as usize).collect();
        let count = page.len() as i64;
        let mut out = json!({"rooms": page, "offset": from, "total_rooms": total});
        if from.saturating_add(count) < total {
            out["next_batch"] = json!(from.saturating_add(count));
        }
        if from > 0 {
            out["prev_batch"] = json!(from.saturating_sub(limit).max(0));
        }
        Ok(out)
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}`.
    pub async fn admin_room(&self, requester: &Requester, room_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let joined = self.joined_member_ids(room_id).await?.len() as i64;
        let mut info =
            self.admin_room_info(room_id, joined).await?.ok_or_else(|| Error::not_found("Room not found"))?;
        info["forgotten"] = json!(false);
        Ok(info)
    }

    /// `GET /_synapse/admin/v1/fetch_event/{eventId}`: any event this server has, as stored
    /// (redacted ones redacted), whoever may see it.
    pub async fn admin_fetch_event(&self, requester: &Requester, event_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let id = event_id.to_owned();
        let Some(row) = self.db(move |s| s.get_event(&id)).await? else {
            return Err(Error::not_found("Event not found"));
        };
        let event: Value = serde_json::from_str(&row.json).map_err(Error::internal)?;
        Ok(json!({"event": event}))
    }

    /// `GET /_synapse/admin/v1/users/{userId}/sent_invite_count?from_ts=`: invites the user sent
    /// since then.
    pub async fn admin_sent_invite_count(
        &self,
        requester: &Requester,
        user_id: &str,
        from_ts: Option<i64>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let Some(from_ts) = from_ts else {
            return Err(Error::new(ErrorKind::MissingParam, "Missing integer query parameter 'from_ts'"));
        };
        let u = user_id.to_owned();
        let sent = self.db(move |s| s.invites_sent_by(&u)).await?;
        let count = sent
            .iter()
            .filter_map(|json| serde_json::from_str::<Value>(json).ok())
            .filter(|e| e["origin_server_ts"].as_i64().is_some_and(|ts| ts >= from_ts))
            .count();
        Ok(json!({"invite_count": count}))
    }

    /// `GET /_synapse/admin/v1/users/{userId}/cumulative_joined_room_count?from_ts=`: how many
    /// rooms the user joined at or after `from_ts`, whether or not they are still there.
    pub async fn admin_cumulative_joined_room_count(
        &self,
        requester: &Requester,
        user_id: &str,
        from_ts: Option<i64>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let Some(from_ts) = from_ts else {
            return Err(Error::new(ErrorKind::MissingParam, "Missing integer query parameter 'from_ts'"));
        };
        let u = user_id.to_owned();
        let count = self
            .db(move |s| {
                let mut count = 0;
                for membership in s.user_memberships(&u)? {
                    let joins = s.events_sent_in_room(&membership.room_id, &u, &["m.room.member"])?;
                    let joined_since =
                        joins.iter().filter_map(|json| serde_json::from_str::<Value>(json).ok()).any(|e| {
                            e["state_key"] == u.as_str()
                                && e["content"]["membership"] == "join"
                                && e["origin_server_ts"].as_i64().is_some_and(|ts| ts >= from_ts)
                        });
                    count += usize::from(joined_since);
                }
                Ok(count)
            })
            .await?;
        Ok(json!({"cumulative_joined_room_count": count}))
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/forward_extremities`.
    pub async fn admin_forward_extremities(&self, requester: &Requester, room_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let r = room_id.to_owned();
        if self.db(move |s| s.get_room(&r)).await?.is_none() {
            return Err(Error::not_found("Room not found"));
        }
        let r = room_id.to_owned();
        let results = self
            .db(move |s| {
                let mut out = Vec::new();
                for id in s.get_forward_extremities(&r)? {
                    if let Some(row) = s.get_event(&id)? {
                        let event: Value = serde_json::from_str(&row.json).unwrap_or_default();
                        out.push(json!({
                            "event_id": id,
                            "state_group": row.state_group,
                            "depth": event["depth"],
                            "received_ts": event["origin_server_ts"],
                        }));
                    }
                }
                Ok(out)
            })
            .await?;
        Ok(json!({"count": results.len(), "results": results}))
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/members`: the joined members.
    pub async fn admin_room_members(&self, requester: &Requester, room_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let r = room_id.to_owned();
        if self.db(move |s| s.get_room(&r)).await?.is_none() {
            return Err(Error::not_found("Room not found"));
        }
        let members = self.joined_member_ids(room_id).await?;
        Ok(json!({"total": members.len(), "members": members}))
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/state`: the current state, whoever may see it.
    pub async fn admin_room_state(&self, requester: &Requester, room_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let room = RoomId::parse(room_id).map_err(|_| Error::not_found("Room not found"))?;
        let Some(state) = self.current_state(&room).await? else {
            return Err(Error::not_found("Room not found"));
        };
        let events = self.client_events(state.into_values().map(|id| id.to_string()).collect()).await?;
        Ok(json!({"state": events}))
    }
}

impl Homeserver {
    /// A local user that exists, for the admin API's per-user endpoints: 400 with `message` for
    /// another server's user, 404 "User not found" for none.
    async fn existing_local_user(&self, user_id: &str, message: &str) -> Result<OwnedUserId> {
        let user = parse_local_user(self, user_id, message)?;
        let u = user.to_string();
        if self.db(move |s| s.get_user(&u)).await?.is_none() {
            return Err(Error::not_found("User not found"));
        }
        Ok(user)
    }

    /// `GET /_synapse/admin/v2/users/{userId}/devices`.
    pub async fn admin_devices(&self, requester: &Requester, user_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let user = self.existing_local_user(user_id, "Can only look up local users").await?;
        let u = user.to_string();
        let devices: Vec<Value> =
            self.db(move |s| s.get_devices(&u)).await?.into_iter().map(|d| admin_device(&user, d)).collect();
        Ok(json!({"total": devices.len(), "devices": devices}))
    }

    /// `GET /_synapse/admin/v2/users/{userId}/devices/{deviceId}`.
    pub async fn admin_device(&self, requester: &Requester, user_id: &str, device_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let user = self.existing_local_user(user_id, "Can only look up local users").await?;
        let u = user.to_string();
        let device = self.db(move |s| s.get_devices(&u)).await?.into_iter().find(|d| d.device_id == device_id);
        device.map(|d| admin_device(&user, d)).ok_or_else(|| Error::not_found("Device not found"))
    }

    /// `PUT /_synapse/admin/v2/users/{userId}/devices/{deviceId}` `{"display_name"}`.
    pub async fn admin_rename_device(
        &self,
        requester: &Requester,
        user_id: &str,
        device_id: &str,
        display_name: Option<String>,
    ) -> Result<()> {
        self.require_admin(requester)?;
        let user = self.existing_local_user(user_id, "Can only look up local users").await?;
        let target = self.requester_for(&user).await?;
        self.rename_device(&target, device_id, display_name).await?;
        audit!(requester, "rename device", format!("{user} {device_id}"));
        Ok(())
    }

    /// `DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}` and `POST
    /// .../delete_devices` `{"devices": [...]}`: no user-interactive auth; unknown IDs ignored.
    pub async fn admin_delete_devices(&self, requester: &Requester, user_id: &str, devices: Vec<String>) -> Result<()> {
        self.require_admin(requester)?;
        let user = self.existing_local_user(user_id, "Can only look up local users").await?;
        audit!(requester, "delete devices", format!("{user} {devices:?}"));
        self.remove_devices(&user, devices).await
    }

    /// `GET /_synapse/admin/v1/users/{userId}/pushers`.
    pub async fn admin_pushers(&self, requester: &Requester, user_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let user = self.existing_local_user(user_id, "Can only look up local users").await?;
        let target = self.requester_for(&user).await?;
        let mut out = self.pushers(&target).await?;
        out["total"] = json!(out["pushers"].as_array().map_or(0, Vec::len));
        Ok(out)
    }
}

/// A device as the admin API shows it (with its owner and last user agent).
fn admin_device(user: &OwnedUserId, d: myelin_storage::DeviceRow) -> Value {
    json!({
        "device_id": d.device_id,
        "display_name": d.display_name,
        "last_seen_ip": d.last_seen_ip,
        "last_seen_ts": d.last_seen_ts,
        "last_seen_user_agent": d.last_seen_user_agent,
        "user_id": user,
    })
}

impl Homeserver {
    /// `PUT /_synapse/admin/v2/users/{userId}`: creates the account (201) or changes it (200):
    /// `password` (with `logout_devices`, default true), `displayname`, `avatar_url`, `admin`,
    /// `deactivated` (reactivating needs a password). Answers the account as
    /// [`Self::admin_user`] does; the first value is whether it was created.
    pub async fn admin_put_user(
        &self,
        requester: &Requester,
        user_id: &str,
        body: &Map<String, Value>,
    ) -> Result<(bool, Value)> {
        self.require_admin(requester)?;
        let user = parse_local_user(self, user_id, "This endpoint can only be used with local users")?;
        let text = |key: &str, max: usize| -> Result<Option<String>> {
            match body.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
                Some(Value::String(_)) => Err(Error::invalid_param(format!("'{key}' is too long"))),
                Some(_) => Err(Error::invalid_param(format!("'{key}' must be a string"))),
            }
        };
        let flag = |key: &str| -> Result<Option<bool>> {
            match body.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(_) => Err(Error::invalid_param(format!("'{key}' parameter is not of type boolean"))),
            }
        };
        let external_ids = match body.get("external_ids") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|item| match (item["auth_provider"].as_str(), item["external_id"].as_str()) {
                        (Some(provider), Some(id)) => Ok((provider.to_owned(), id.to_owned())),
                        _ => {
                            Err(Error::new(ErrorKind::MissingParam, "Missing params: ['auth_provider', 'external_id']"))
                        }
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            Some(_) => return Err(Error::invalid_param("'external_ids' parameter is not of type list")),
        };
        let threepids = match body.get("threepids") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|item| match (item["medium"].as_str(), item["address"].as_str()) {
                        (Some(medium), Some(address)) => Ok((medium.to_owned(), address.to_owned())),
                        _ => Err(Error::new(ErrorKind::MissingParam, "Missing params: ['medium', 'address']")),
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            Some(_) => return Err(Error::invalid_param("'threepids' parameter is not of type list")),
        };
        let password = text("password", 512)?;
        let displayname = text("displayname", 256)?;
        let avatar_url = text("avatar_url", 1000)?;
        let (admin, deactivated, logout) =
            (flag("admin")?, flag("deactivated")?, flag("logout_devices")?.unwrap_or(true));
        let locked = flag("locked")?;
        let user_type = self.config.user_types.check(body.get("user_type"))?;
        if deactivated == Some(true) && locked == Some(true) {
            return Err(Error::new(ErrorKind::BadRequest, "An user can't be deactivated and locked"));
        }
        if user == requester.user_id && admin == Some(false) {
            return Err(Error::new(ErrorKind::BadRequest, "You may not demote yourself."));
        }
        let u = user.to_string();
        let existing = self.db(move |s| s.get_user(&u)).await?;
        let created = existing.is_none();
        match existing {
            None => {
                let info = crate::users::RequestInfo::default();
                self.create_account(
                    Some(user.localpart().to_owned()),
                    password.clone(),
                    admin.unwrap_or(false),
                    &info,
                    None,
                )
                .await?;
                audit!(requester, "create user", user);
                if let Some(t) = user_type.clone() {
                    let u = user.to_string();
                    self.db(move |s| s.set_user_type(&u, Some(&t))).await?;
                }
            }
            Some(row) => {
                if let Some(password) = &password {
                    self.check_password_policy(password)?;
                    let hash = crate::users::hash_password(password.clone()).await?;
                    let u = user.to_string();
                    self.db(move |s| {
                        s.set_password_hash(&u, Some(&hash))?;
                        if logout { s.delete_all_devices(&u, None) } else { Ok(()) }
                    })
                    .await?;
                    audit!(requester, "set password", user);
                }
                // As Synapse: a `user_type` key sets the type, null clearing it.
                if body.contains_key("user_type") {
                    let (u, t) = (user.to_string(), user_type.clone());
                    self.db(move |s| s.set_user_type(&u, t.as_deref())).await?;
                    audit!(requester, "set user type", user);
                }
                if let Some(admin) = admin.filter(|a| *a != row.is_admin) {
                    self.set_admin(user.as_str(), admin).await?;
                    audit!(requester, if admin { "make admin" } else { "remove admin" }, user);
                }
                match deactivated {
                    Some(true) if !row.deactivated => {
                        let target = self.requester_for(&user).await?;
                        self.deactivate_account(&target, true, None, false).await?;
                        audit!(requester, "deactivate", user);
                    }
                    Some(false) if row.deactivated => {
                        if password.is_none() && self.config.password.enabled {
                            return Err(Error::new(
                                ErrorKind::BadRequest,
                                "Must provide a password to re-activate an account.",
                            ));
                        }
                        let u = user.to_string();
                        self.db(move |s| s.set_user_flag(&u, myelin_storage::UserFlag::Deactivated, false)).await?;
                        self.modules.on_user_deactivation_status_changed(user.as_str(), false, true).await;
                        audit!(requester, "reactivate", user);
                    }
                    _ => {}
                }
            }
        }
        if let Some(locked) = locked {
            let u = user.to_string();
            let was = self.db(move |s| s.get_user(&u)).await?.is_some_and(|row| row.locked);
            if locked != was {
                let u = user.to_string();
                self.db(move |s| s.set_user_flag(&u, myelin_storage::UserFlag::Locked, locked)).await?;
                audit!(requester, if locked { "lock" } else { "unlock" }, user);
            }
        }
        if let Some(ids) = external_ids {
            self.replace_external_ids(user.as_str(), ids).await?;
            audit!(requester, "set external IDs", user);
        }
        if let Some(threepids) = threepids {
            self.replace_threepids(user.as_str(), threepids, created).await?;
            audit!(requester, "set threepids", user);
        }
        for (field, value) in [
            (myelin_storage::ProfileField::DisplayName, displayname),
            (myelin_storage::ProfileField::AvatarUrl, avatar_url),
        ] {
            if let Some(value) = value {
                let u = user.to_string();
                self.db(move |s| s.set_profile_field(&u, field, Some(&value))).await?;
            }
        }
        Ok((created, self.admin_user(requester, user.as_str()).await?))
    }

    /// An account's third-party identifiers become exactly `wanted` (Synapse's admin PUT):
    /// the others are unbound and removed; new ones are added, taken from another account
    /// that had one, as Synapse's upsert does. A new account only gains its list.
    async fn replace_threepids(&self, user_id: &str, wanted: Vec<(String, String)>, created: bool) -> Result<()> {
        let u = user_id.to_owned();
        let current: Vec<(String, String)> =
            self.db(move |s| s.user_threepids(&u)).await?.into_iter().map(|t| (t.medium, t.address)).collect();
        if !created {
            for (medium, address) in current.iter().filter(|t| !wanted.contains(t)) {
                self.unbind_threepid(user_id, medium, address, None).await?;
                self.delete_local_threepid(user_id, medium, address).await?;
            }
        }
        let now = crate::server::now_ms();
        for (medium, address) in wanted.iter().filter(|t| !current.contains(t)) {
            if let Some(owner) = self.user_by_threepid(medium, address).await?.filter(|o| o != user_id) {
                self.delete_local_threepid(&owner, medium, address).await?;
            }
            let threepid = crate::threepids::ValidatedThreepid {
                medium: medium.clone(),
                address: address.clone(),
                validated_at: now,
            };
            self.add_threepid(user_id, &threepid).await?;
            // A new account gets its notification mails, as at registration.
            if created && medium == "email" {
                self.add_email_pusher_if_wanted(user_id, address).await?;
            }
        }
        Ok(())
    }

    /// An account's external IDs become exactly `ids` (409 "External id is already in use."
    /// if another account has one of them; then nothing changes).
    async fn replace_external_ids(&self, user_id: &str, ids: Vec<(String, String)>) -> Result<()> {
        let u = user_id.to_owned();
        self.db(move |s| {
            for (provider, id) in &ids {
                if s.user_by_external_id(provider, id)?.is_some_and(|owner| owner != u) {
                    return Ok(Err(Error::new(
                        ErrorKind::Module { status: 409, errcode: "M_UNKNOWN".into() },
                        "External id is already in use.",
                    )));
                }
            }
            for (provider, id) in s.external_ids(&u)? {
                if !ids.contains(&(provider.clone(), id.clone())) {
                    s.remove_external_id(&provider, &id, &u)?;
                }
            }
            for (provider, id) in &ids {
                s.record_external_id(provider, id, &u)?;
            }
            Ok(Ok(()))
        })
        .await?
    }

    /// `GET /_synapse/admin/v1/auth_providers/{provider}/users/{externalId}`.
    pub async fn admin_user_by_external_id(
        &self,
        requester: &Requester,
        provider: &str,
        external_id: &str,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let (p, e) = (provider.to_owned(), external_id.to_owned());
        match self.db(move |s| s.user_by_external_id(&p, &e)).await? {
            Some(user) => Ok(json!({"user_id": user})),
            None => Err(Error::not_found("User not found")),
        }
    }

    /// `ModuleApi.record_user_external_id`: 409 if another account has that external ID.
    pub(crate) async fn module_record_external_id(
        &self,
        provider: &str,
        external_id: &str,
        user_id: &str,
    ) -> Result<()> {
        let (p, e, u) = (provider.to_owned(), external_id.to_owned(), user_id.to_owned());
        if !self.db(move |s| s.record_external_id(&p, &e, &u)).await? {
            return Err(Error::new(
                ErrorKind::Module { status: 409, errcode: "M_UNKNOWN".into() },
                "External id is already in use.",
            ));
        }
        Ok(())
    }

    /// `GET /_synapse/admin/v1/users/{userId}/override_ratelimit`: `{}` without an override,
    /// `null`s shown as 0 (both exempt the user), as Synapse.
    pub async fn admin_ratelimit_override(&self, requester: &Requester, user_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let user = self.existing_local_user(user_id, "Can only look up local users").await?;
        let u = user.to_string();
        Ok(match self.db(move |s| s.get_ratelimit_override(&u)).await? {
            Some((per_second, burst)) => json!({
                "messages_per_second": per_second.map_or(json!(0), ratelimit_number),
                "burst_count": burst.unwrap_or(0),
            }),
            None => json!({}),
        })
    }

    /// `POST /_synapse/admin/v1/users/{userId}/override_ratelimit`: non-negative integers
    /// (missing ones are 0; 0 messages per second exempts the user from every rate limit);
    /// `DELETE` (`body: None`) removes the override.
    pub async fn admin_set_ratelimit_override(
        &self,
        requester: &Requester,
        user_id: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let user = self.existing_local_user(user_id, "Only local users can be ratelimited").await?;
        let u = user.to_string();
        let Some(body) = body else {
            self.db(move |s| s.set_ratelimit_override(&u, None)).await?;
            self.ratelimit_overrides_changed();
            audit!(requester, "remove rate-limit override", user);
            return Ok(json!({}));
        };
        let field = |key: &str| -> Result<i64> {
            match body.get(key) {
                None => Ok(0),
                Some(Value::Number(n)) if n.as_i64().is_some_and(|v| v >= 0) => Ok(n.as_i64().unwrap_or(0)),
                Some(other) => {
                    let shown = match other {
                        Value::String(text) => format!("'{text}'"),
                        other => other.to_string(),
                    };
                    Err(Error::invalid_param(format!("{shown} parameter must be a positive int")))
                }
            }
        };
        let (per_second, burst) = (field("messages_per_second")?, field("burst_count")?);
        self.db(move |s| s.set_ratelimit_override(&u, Some((Some(per_second as f64), Some(burst))))).await?;
        self.ratelimit_overrides_changed();
        audit!(requester, "override rate limits", user);
        Ok(json!({"messages_per_second": per_second, "burst_count": burst}))
    }

    /// After an override is written: this process's cached ones go, and the other processes'.
    fn ratelimit_overrides_changed(&self) {
        self.limiters.forget_overrides();
        self.publish("ratelimit_overrides".to_owned());
    }

    /// `POST`/`DELETE /_synapse/admin/v1/users/{userId}/shadow_ban`.
    pub async fn admin_shadow_ban(&self, requester: &Requester, user_id: &str, on: bool) -> Result<()> {
        self.require_admin(requester)?;
        let user = self.existing_local_user(user_id, "Only local users can be shadow-banned").await?;
        let u = user.to_string();
        self.db(move |s| s.set_user_flag(&u, myelin_storage::UserFlag::ShadowBanned, on)).await?;
        audit!(requester, if on { "shadow-ban" } else { "lift shadow-ban" }, user);
        Ok(())
    }

    /// `PUT /_synapse/admin/v1/suspend/{userId}` `{"suspend": bool}`: a suspended account may
    /// still read, leave rooms and redact its own events; everything else that writes is 403
    /// `M_USER_SUSPENDED` (Synapse's MSC3823 rules).
    pub async fn admin_suspend(
        &self,
        requester: &Requester,
        user_id: &str,
        body: &Map<String, Value>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let user = parse_local_user(self, user_id, "Can only suspend local users")?;
        let u = user.to_string();
        if self.db(move |s| s.get_user(&u)).await?.is_none() {
            return Err(Error::not_found("User not found"));
        }
        let Some(suspend) = body.get("suspend").and_then(Value::as_bool) else {
            return Err(Error::bad_json("suspend: a boolean is required"));
        };
        let u = user.to_string();
        self.db(move |s| s.set_user_flag(&u, myelin_storage::UserFlag::Suspended, suspend)).await?;
        audit!(requester, if suspend { "suspend" } else { "lift suspension" }, user);
        Ok(json!({ format!("user_{user}_suspended"): suspend }))
    }

    /// `POST /_synapse/admin/v1/users/{userId}/login`: an access token for another user, on a
    /// new device (for support work); never for oneself.
    pub async fn admin_login_as(&self, requester: &Requester, user_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let user = self.existing_local_user(user_id, "Can only look up local users").await?;
        if user == requester.user_id {
            return Err(Error::new(ErrorKind::BadRequest, "Cannot use admin API to login as self"));
        }
        let device = crate::users::NewDevice {
            display_name: Some("Admin login".into()),
            life: crate::users::TokenLife::Unlimited,
            ..Default::default()
        };
        let session = self.new_session(&user, device).await?;
        audit!(requester, "login as user", user);
        Ok(json!({"access_token": session.access_token}))
    }
}
