//! Client-Server API handlers (https://spec.matrix.org/latest/client-server-api/).
//!
//! Each handler extracts, makes one `Homeserver` call and serialises. Served under both
//! `/_matrix/client/v3` and the legacy `/_matrix/client/r0`.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post, put};
use myelin_core::{ErrorKind, LoginRequest, RegisterRequest, SyncRequest};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::MatrixError;
use crate::extract::{Auth, AuthAllowExpired, ClientInfo, JsonBody, OptionalAuth, Path, Query};

type Json = axum::Json<Value>;
type Answer = Result<Json, MatrixError>;

pub(crate) fn router() -> Router<AppState> {
    // Endpoints the spec introduced under v1.
    let v1 = Router::new()
        .route("/rooms/{room_id}/relations/{event_id}", get(relations))
        .route("/rooms/{room_id}/relations/{event_id}/{rel_type}", get(relations))
        .route("/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}", get(relations))
        .route("/rooms/{room_id}/threads", get(threads))
        .route("/rooms/{room_id}/timestamp_to_event", get(timestamp_to_event));
    let api = Router::new()
        .route("/login", get(login_flows).post(login))
        .route("/logout", post(logout))
        .route("/logout/all", post(logout_all))
        .route("/register", post(register))
        .route("/register/available", get(register_available))
        .route("/account/whoami", get(whoami))
        .route("/account/password", post(change_password))
        .route("/account/deactivate", post(deactivate))
        .route("/devices", get(devices))
        .route("/delete_devices", post(delete_devices))
        .route("/user/{user_id}/rooms/{room_id}/tags", get(tags))
        .route("/user/{user_id}/rooms/{room_id}/tags/{tag}", put(put_tag).delete(delete_tag))
        .route("/devices/{device_id}", get(device).put(rename_device).delete(delete_device))
        .route("/capabilities", get(capabilities))
        .route("/profile/{user_id}", get(profile))
        .route("/profile/{user_id}/{field}", get(profile_field).put(set_profile_field))
        .route("/createRoom", post(create_room))
        .route("/join/{room}", post(join))
        .route("/knock/{room}", post(knock))
        .route("/rooms/{room_id}/join", post(join))
        .route("/rooms/{room_id}/upgrade", post(upgrade))
        .route("/rooms/{room_id}/{action}", post(membership))
        .route("/joined_rooms", get(joined_rooms))
        .route("/rooms/{room_id}/send/{event_type}/{txn_id}", put(send))
        .route("/rooms/{room_id}/send/{event_type}", post(send_without_txn))
        .route("/rooms/{room_id}/state", get(state))
        .route("/rooms/{room_id}/state/{event_type}", get(state_event_empty).put(put_state_empty))
        .route("/rooms/{room_id}/state/{event_type}/", get(state_event_empty).put(put_state_empty))
        .route("/rooms/{room_id}/state/{event_type}/{state_key}", get(state_event).put(put_state))
        .route("/rooms/{room_id}/redact/{event_id}/{txn_id}", put(redact))
        .route("/rooms/{room_id}/event/{event_id}", get(event))
        .route("/rooms/{room_id}/messages", get(messages))
        .route("/rooms/{room_id}/context/{event_id}", get(context))
        .route("/rooms/{room_id}/initialSync", get(room_initial_sync))
        .route("/rooms/{room_id}/members", get(members))
        .route("/rooms/{room_id}/joined_members", get(joined_members))
        .route("/sync", get(sync))
        .route("/events", get(events))
        .route("/pushrules/", get(push_rules).put(crate::push::unrecognized))
        .route("/pushrules/global/", get(push_rules_global))
        .route("/directory/room/{alias}", get(get_alias).put(put_alias).delete(delete_alias))
        .route("/rooms/{room_id}/aliases", get(room_aliases))
        .route("/directory/list/room/{room_id}", get(get_visibility).put(put_visibility))
        .route("/publicRooms", get(public_rooms_get).post(public_rooms_post))
        .route("/user_directory/search", post(user_directory_search))
        .route("/user/{user_id}/filter", post(create_filter))
        .route("/user/{user_id}/filter/{filter_id}", get(get_filter))
        .route("/user/{user_id}/account_data/{kind}", get(get_account_data).put(set_account_data))
        .route(
            "/user/{user_id}/rooms/{room_id}/account_data/{kind}",
            get(get_room_account_data).put(set_room_account_data),
        )
        .merge(crate::keys::routes())
        .merge(crate::ephemeral::routes())
        .merge(crate::push::routes())
        .route("/search", post(search))
        .route("/voip/turnServer", get(turn_server))
        .route("/thirdparty/protocols", get(thirdparty_protocols))
        .route("/account/3pid", get(threepids))
        .route("/user/{user_id}/openid/request_token", post(openid_token));
    Router::new()
        .route("/_matrix/client/versions", get(versions))
        .route("/_matrix/client/v1/register/m.login.registration_token/validity", get(token_validity))
        .nest("/_matrix/client/v1", v1)
        .nest("/_matrix/client/v3", api.clone())
        .nest("/_matrix/client/r0", api)
}

async fn versions() -> Json {
    axum::Json(json!({
        "versions": ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11"],
        "unstable_features": {}
    }))
}

async fn login_flows(State(hs): State<AppState>) -> Json {
    let flows: Vec<Value> = hs.login_flows().into_iter().map(|t| json!({"type": t})).collect();
    axum::Json(json!({"flows": flows}))
}

async fn login(
    State(hs): State<AppState>,
    ClientInfo(info): ClientInfo,
    JsonBody(body): JsonBody<LoginRequest>,
) -> Answer {
    let r = hs.login(body, &info).await?;
    Ok(axum::Json(json!({
        "user_id": r.user_id, "access_token": r.access_token, "device_id": r.device_id,
        "home_server": hs.server_name(),
    })))
}

async fn logout(State(hs): State<AppState>, AuthAllowExpired(me): AuthAllowExpired) -> Answer {
    hs.logout(&me).await?;
    Ok(axum::Json(json!({})))
}

async fn logout_all(State(hs): State<AppState>, AuthAllowExpired(me): AuthAllowExpired) -> Answer {
    hs.logout_all(&me).await?;
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize)]
struct RegisterQuery {
    kind: Option<String>,
}

async fn register(
    State(hs): State<AppState>,
    ClientInfo(info): ClientInfo,
    Query(q): Query<RegisterQuery>,
    JsonBody(body): JsonBody<RegisterRequest>,
) -> Answer {
    let r = match q.kind.as_deref() {
        Some("guest") => hs.register_guest(&info).await?,
        None | Some("user") => hs.register(body, &info).await?,
        Some(_) => return Err(MatrixError::new(ErrorKind::InvalidParam, "kind must be 'user' or 'guest'")),
    };
    let mut out = json!({"user_id": r.user_id, "home_server": hs.server_name()});
    if let Some((token, device)) = r.login {
        out["access_token"] = json!(token);
        out["device_id"] = json!(device);
    }
    Ok(axum::Json(out))
}

#[derive(Deserialize)]
struct AvailableQuery {
    username: String,
}

async fn register_available(State(hs): State<AppState>, Query(q): Query<AvailableQuery>) -> Answer {
    hs.username_available(&q.username).await?;
    Ok(axum::Json(json!({"available": true})))
}

async fn whoami(Auth(me): Auth) -> Json {
    axum::Json(json!({"user_id": me.user_id, "device_id": me.device_id, "is_guest": me.is_guest}))
}

#[derive(Deserialize)]
struct PasswordBody {
    new_password: String,
    #[serde(default = "yes")]
    logout_devices: bool,
    auth: Option<Value>,
}

fn yes() -> bool {
    true
}

async fn change_password(State(hs): State<AppState>, Auth(me): Auth, JsonBody(b): JsonBody<PasswordBody>) -> Answer {
    hs.change_password(&me, b.new_password, b.logout_devices, b.auth.as_ref()).await?;
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize)]
struct AuthOnly {
    auth: Option<Value>,
}

async fn deactivate(State(hs): State<AppState>, Auth(me): Auth, JsonBody(b): JsonBody<AuthOnly>) -> Answer {
    hs.deactivate(&me, b.auth.as_ref()).await?;
    Ok(axum::Json(json!({"id_server_unbind_result": "no-support"})))
}

async fn devices(State(hs): State<AppState>, Auth(me): Auth) -> Answer {
    Ok(axum::Json(json!({"devices": hs.devices(&me).await?})))
}

async fn device(State(hs): State<AppState>, Auth(me): Auth, Path(device_id): Path<String>) -> Answer {
    hs.devices(&me)
        .await?
        .into_iter()
        .find(|d| d["device_id"] == json!(device_id))
        .map(axum::Json)
        .ok_or_else(|| MatrixError::new(ErrorKind::NotFound, "Unknown device"))
}

#[derive(Deserialize)]
struct DeviceBody {
    display_name: Option<String>,
}

async fn rename_device(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(device_id): Path<String>,
    JsonBody(b): JsonBody<DeviceBody>,
) -> Answer {
    hs.rename_device(&me, &device_id, b.display_name).await?;
    Ok(axum::Json(json!({})))
}

async fn delete_device(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(device_id): Path<String>,
    JsonBody(b): JsonBody<AuthOnly>,
) -> Answer {
    hs.delete_device(&me, &device_id, b.auth.as_ref()).await?;
    Ok(axum::Json(json!({})))
}

async fn capabilities(State(hs): State<AppState>, Auth(_me): Auth) -> Json {
    let available: Map<String, Value> =
        myelin_core::config::SUPPORTED_ROOM_VERSIONS.iter().map(|v| (v.to_string(), json!("stable"))).collect();
    axum::Json(json!({"capabilities": {
        "m.change_password": {"enabled": true},
        "m.room_versions": {"default": hs.config.default_room_version, "available": available},
        "m.set_displayname": {"enabled": true},
        "m.set_avatar_url": {"enabled": true},
        "m.3pid_changes": {"enabled": false},
    }}))
}

async fn profile(State(hs): State<AppState>, OptionalAuth(me): OptionalAuth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(Value::Object(hs.profile_for(me.as_ref(), &user_id).await?)))
}

async fn profile_field(
    State(hs): State<AppState>,
    OptionalAuth(me): OptionalAuth,
    Path((user_id, field)): Path<(String, String)>,
) -> Answer {
    let p = hs.profile_for(me.as_ref(), &user_id).await?;
    match p.get(&field) {
        Some(v) => Ok(axum::Json(json!({ field: v }))),
        None => Err(MatrixError::new(ErrorKind::NotFound, "Profile field not set")),
    }
}

async fn set_profile_field(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, field)): Path<(String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    let value = match body.get(&field) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(_) => return Err(MatrixError::new(ErrorKind::BadJson, format!("{field} must be a string"))),
    };
    hs.set_profile_field(&me, &user_id, &field, value).await?;
    Ok(axum::Json(json!({})))
}

async fn create_room(
    State(hs): State<AppState>,
    Auth(me): Auth,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    let (room_id, alias) = hs.create_room(&me, body).await?;
    let mut out = json!({"room_id": room_id});
    if let Some(a) = alias {
        out["room_alias"] = json!(a);
    }
    Ok(axum::Json(out))
}

async fn join(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> Answer {
    // `via` (and the older `server_name`) may repeat, which typed query parsing cannot take.
    let via: Vec<String> = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == "via" || *k == "server_name")
        .map(|(_, v)| myelin_core::federation::percent_decode(v))
        .collect();
    let room_id = hs.join_room(&me, &room, &via, content).await?;
    Ok(axum::Json(json!({"room_id": room_id})))
}

#[derive(Deserialize, Default)]
struct KnockBody {
    reason: Option<String>,
}

async fn knock(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room): Path<String>,
    JsonBody(body): JsonBody<KnockBody>,
) -> Answer {
    let room_id = hs.knock(&me, &room, body.reason).await?;
    Ok(axum::Json(json!({"room_id": room_id})))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MembershipBody {
    user_id: Option<String>,
    reason: Option<String>,
}

async fn membership(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, action)): Path<(String, String)>,
    JsonBody(body): JsonBody<MembershipBody>,
) -> Answer {
    let room = ruma::OwnedRoomId::try_from(room_id.as_str())
        .map_err(|_| MatrixError::new(ErrorKind::InvalidParam, format!("Invalid room ID: {room_id}")))?;
    let (target, membership) = match action.as_str() {
        "leave" => (me.user_id.to_string(), "leave"),
        "forget" => {
            return match hs.joined_rooms(&me).await?.contains(&room_id) {
                true => Err(MatrixError::new(ErrorKind::BadRequest, "User is in room")),
                false => Ok(axum::Json(json!({}))),
            };
        }
        "invite" | "kick" | "ban" | "unban" => {
            let target =
                body.user_id.clone().ok_or_else(|| MatrixError::new(ErrorKind::MissingParam, "Missing user_id"))?;
            (target, action.as_str())
        }
        _ => return Err(MatrixError::new(ErrorKind::Unrecognized, "Unrecognized request")),
    };
    let target = ruma::OwnedUserId::try_from(target.as_str())
        .map_err(|_| MatrixError::new(ErrorKind::InvalidParam, format!("Invalid user ID: {target}")))?;
    hs.update_membership(&me, &room, &target, membership, body.reason, Map::new()).await?;
    Ok(axum::Json(json!({})))
}

async fn joined_rooms(State(hs): State<AppState>, Auth(me): Auth) -> Answer {
    Ok(axum::Json(json!({"joined_rooms": hs.joined_rooms(&me).await?})))
}

async fn send(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_type, txn_id)): Path<(String, String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> Answer {
    let event_id = hs.send_message(&me, &room_id, &event_type, &txn_id, content).await?;
    Ok(axum::Json(json!({"event_id": event_id})))
}

/// `POST /rooms/{roomId}/send/{eventType}`: the old form without a transaction ID, which
/// Synapse still serves; each request is a new event.
async fn send_without_txn(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_type)): Path<(String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> Answer {
    static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let txn_id = format!("post-{nanos}-{}", SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let event_id = hs.send_message(&me, &room_id, &event_type, &txn_id, content).await?;
    Ok(axum::Json(json!({"event_id": event_id})))
}

async fn state(State(hs): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(Value::Array(hs.room_state(&me, &room_id).await?)))
}

/// `?format=event` asks for the whole event rather than its content.
#[derive(Deserialize)]
struct StateFormat {
    format: Option<String>,
}

async fn state_event(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, kind, key)): Path<(String, String, String)>,
    Query(q): Query<StateFormat>,
) -> Answer {
    let whole = q.format.as_deref() == Some("event");
    Ok(axum::Json(hs.room_state_event(&me, &room_id, &kind, &key, whole).await?))
}

async fn state_event_empty(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, kind)): Path<(String, String)>,
    Query(q): Query<StateFormat>,
) -> Answer {
    let whole = q.format.as_deref() == Some("event");
    Ok(axum::Json(hs.room_state_event(&me, &room_id, &kind, "", whole).await?))
}

async fn put_state(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, kind, key)): Path<(String, String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> Answer {
    let event_id = hs.send_state(&me, &room_id, &kind, &key, content).await?;
    Ok(axum::Json(json!({"event_id": event_id})))
}

async fn put_state_empty(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, kind)): Path<(String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> Answer {
    let event_id = hs.send_state(&me, &room_id, &kind, "", content).await?;
    Ok(axum::Json(json!({"event_id": event_id})))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RedactBody {
    reason: Option<String>,
}

async fn redact(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_id, txn_id)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<RedactBody>,
) -> Answer {
    let id = hs.redact(&me, &room_id, &event_id, &txn_id, body.reason).await?;
    Ok(axum::Json(json!({"event_id": id})))
}

async fn event(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
) -> Answer {
    Ok(axum::Json(hs.get_room_event(&me, &room_id, &event_id).await?))
}

#[derive(Deserialize)]
struct MessagesQuery {
    filter: Option<String>,
    from: Option<String>,
    to: Option<String>,
    dir: Option<String>,
    limit: Option<String>,
}

fn parse_limit(limit: Option<&str>, default: usize) -> Result<usize, MatrixError> {
    match limit {
        None => Ok(default),
        Some(l) => l
            .parse::<u64>()
            .map(|n| n.min(1000) as usize)
            .map_err(|_| MatrixError::new(ErrorKind::InvalidParam, "limit must be a non-negative integer")),
    }
}

/// A `dir` parameter: `f` is forwards, `b` backwards, absent `default_forwards`.
fn forwards(dir: Option<&str>, default_forwards: bool) -> Result<bool, MatrixError> {
    match dir {
        None => Ok(default_forwards),
        Some("f") => Ok(true),
        Some("b") => Ok(false),
        Some(_) => Err(MatrixError::new(ErrorKind::InvalidParam, "dir must be 'b' or 'f'")),
    }
}

async fn messages(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Answer {
    let backwards = !forwards(q.dir.as_deref(), false)?;
    let limit = parse_limit(q.limit.as_deref(), 10)?;
    let filter: Option<myelin_core::EventFilter> = match q.filter.as_deref() {
        Some(f) => Some(
            serde_json::from_str(f)
                .map_err(|e| MatrixError::new(ErrorKind::BadJson, format!("Invalid filter: {e}")))?,
        ),
        None => None,
    };
    let pagination = myelin_core::Pagination {
        from: q.from.as_deref(),
        to: q.to.as_deref(),
        backwards,
        limit,
        filter: filter.as_ref(),
    };
    let page = hs.messages(&me, &room_id, pagination).await?;
    let mut out = json!({"chunk": page.chunk, "start": page.start, "state": page.state});
    if let Some(end) = page.end {
        out["end"] = json!(end);
    }
    Ok(axum::Json(out))
}

#[derive(Deserialize)]
struct EventsQuery {
    from: Option<String>,
    timeout: Option<String>,
    room_id: Option<String>,
    limit: Option<String>,
}

async fn events(State(hs): State<AppState>, Auth(me): Auth, Query(q): Query<EventsQuery>) -> Answer {
    // Checked as Synapse does (a non-negative integer), though the answer is never long.
    if let Some(limit) = q.limit.as_deref()
        && limit.parse::<u64>().is_err()
    {
        return Err(MatrixError::new(ErrorKind::InvalidParam, "limit must be a non-negative integer"));
    }
    let timeout = match q.timeout.as_deref() {
        None => 30_000,
        Some(t) => {
            t.parse::<u64>().map_err(|_| MatrixError::new(ErrorKind::InvalidParam, "timeout must be an integer"))?
        }
    };
    let timeout = Duration::from_millis(timeout.min(300_000));
    Ok(axum::Json(hs.event_stream(&me, q.room_id.as_deref(), q.from.as_deref(), timeout).await?))
}

#[derive(Deserialize)]
struct RelationsPath {
    room_id: String,
    event_id: String,
    rel_type: Option<String>,
    event_type: Option<String>,
}

#[derive(Deserialize)]
struct RelationsQuery {
    from: Option<String>,
    to: Option<String>,
    dir: Option<String>,
    limit: Option<String>,
    recurse: Option<bool>,
}

async fn relations(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(p): Path<RelationsPath>,
    Query(q): Query<RelationsQuery>,
) -> Answer {
    let forwards = forwards(q.dir.as_deref(), false)?;
    let page = myelin_core::RelationsPage {
        from: q.from.as_deref(),
        to: q.to.as_deref(),
        forwards,
        limit: parse_limit(q.limit.as_deref(), 5)?,
        recurse: q.recurse.unwrap_or(false),
    };
    let answer =
        hs.relations(&me, &p.room_id, &p.event_id, p.rel_type.as_deref(), p.event_type.as_deref(), page).await?;
    Ok(axum::Json(answer))
}

#[derive(Deserialize)]
struct ThreadsQuery {
    include: Option<String>,
    from: Option<String>,
    limit: Option<String>,
}

async fn threads(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<ThreadsQuery>,
) -> Answer {
    let participated = match q.include.as_deref() {
        Some("all") | None => false,
        Some("participated") => true,
        Some(_) => return Err(MatrixError::new(ErrorKind::InvalidParam, "include must be 'all' or 'participated'")),
    };
    let limit = parse_limit(q.limit.as_deref(), 10)?;
    Ok(axum::Json(hs.threads(&me, &room_id, participated, q.from.as_deref(), limit).await?))
}

#[derive(Deserialize)]
struct TimestampQuery {
    ts: Option<String>,
    dir: Option<String>,
}

async fn timestamp_to_event(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<TimestampQuery>,
) -> Answer {
    let ts =
        q.ts.as_deref()
            .ok_or_else(|| MatrixError::new(ErrorKind::MissingParam, "Missing ts"))?
            .parse::<i64>()
            .map_err(|_| MatrixError::new(ErrorKind::InvalidParam, "ts must be an integer"))?;
    let forwards = match q.dir {
        Some(_) => forwards(q.dir.as_deref(), false)?,
        None => return Err(MatrixError::new(ErrorKind::MissingParam, "Missing dir")),
    };
    Ok(axum::Json(hs.timestamp_to_event(&me, &room_id, ts, forwards).await?))
}

async fn room_initial_sync(State(hs): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.room_initial_sync(&me, &room_id).await?))
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<String>,
}

async fn context(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
    Query(q): Query<LimitQuery>,
) -> Answer {
    let limit = parse_limit(q.limit.as_deref(), 10)?;
    Ok(axum::Json(hs.context(&me, &room_id, &event_id, limit).await?))
}

#[derive(Deserialize)]
struct MembersQuery {
    at: Option<String>,
    membership: Option<String>,
    not_membership: Option<String>,
}

async fn members(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<MembersQuery>,
) -> Answer {
    let chunk =
        hs.room_members(&me, &room_id, q.at.as_deref(), q.membership.as_deref(), q.not_membership.as_deref()).await?;
    Ok(axum::Json(json!({"chunk": chunk})))
}

async fn joined_members(State(hs): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(json!({"joined": hs.joined_members(&me, &room_id).await?})))
}

#[derive(Deserialize)]
struct SyncQuery {
    since: Option<String>,
    timeout: Option<String>,
    full_state: Option<String>,
    filter: Option<String>,
    set_presence: Option<String>,
}

async fn sync(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<SyncQuery>,
) -> Result<axum::response::Response, MatrixError> {
    let timeout = match q.timeout.as_deref() {
        None => 0,
        Some(t) => {
            t.parse::<u64>().map_err(|_| MatrixError::new(ErrorKind::InvalidParam, "timeout must be an integer"))?
        }
    };
    let request = SyncRequest {
        since: q.since,
        // Bounded so a client cannot park a request for hours.
        timeout: Duration::from_millis(timeout.min(300_000)),
        full_state: q.full_state.as_deref() == Some("true"),
        filter: q.filter,
        set_presence: q.set_presence,
    };
    let body = hs.sync(&me, request).await?.to_json();
    Ok(axum::response::IntoResponse::into_response(([(axum::http::header::CONTENT_TYPE, "application/json")], body)))
}

async fn create_filter(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    JsonBody(filter): JsonBody<Map<String, Value>>,
) -> Answer {
    let id = hs.create_filter(&me, &user_id, Value::Object(filter)).await?;
    Ok(axum::Json(json!({"filter_id": id})))
}

async fn get_filter(State(hs): State<AppState>, Auth(me): Auth, Path((user_id, id)): Path<(String, String)>) -> Answer {
    Ok(axum::Json(hs.get_filter(&me, &user_id, &id).await?))
}

async fn get_account_data(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, kind)): Path<(String, String)>,
) -> Answer {
    Ok(axum::Json(hs.get_account_data(&me, &user_id, None, &kind).await?))
}

async fn set_account_data(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, kind)): Path<(String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> Answer {
    hs.set_account_data(&me, &user_id, None, &kind, Value::Object(content)).await?;
    Ok(axum::Json(json!({})))
}

async fn get_room_account_data(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, room_id, kind)): Path<(String, String, String)>,
) -> Answer {
    Ok(axum::Json(hs.get_account_data(&me, &user_id, Some(&room_id), &kind).await?))
}

async fn set_room_account_data(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, room_id, kind)): Path<(String, String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> Answer {
    hs.set_account_data(&me, &user_id, Some(&room_id), &kind, Value::Object(content)).await?;
    Ok(axum::Json(json!({})))
}

async fn get_alias(State(hs): State<AppState>, Path(alias): Path<String>) -> Answer {
    let (room_id, servers) = hs.resolve_alias(&alias).await?;
    Ok(axum::Json(json!({"room_id": room_id, "servers": servers})))
}

#[derive(Deserialize)]
struct AliasBody {
    room_id: String,
}

async fn put_alias(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(alias): Path<String>,
    JsonBody(b): JsonBody<AliasBody>,
) -> Answer {
    hs.create_alias(&me, &alias, &b.room_id).await?;
    Ok(axum::Json(json!({})))
}

async fn delete_alias(State(hs): State<AppState>, Auth(me): Auth, Path(alias): Path<String>) -> Answer {
    hs.delete_alias(&me, &alias).await?;
    Ok(axum::Json(json!({})))
}

async fn room_aliases(State(hs): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(json!({"aliases": hs.room_aliases(&me, &room_id).await?})))
}

async fn get_visibility(State(hs): State<AppState>, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(json!({"visibility": hs.room_visibility(&room_id).await?})))
}

#[derive(Deserialize)]
struct VisibilityBody {
    #[serde(default = "public")]
    visibility: String,
}

fn public() -> String {
    "public".into()
}

async fn put_visibility(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    JsonBody(b): JsonBody<VisibilityBody>,
) -> Answer {
    hs.set_room_visibility(&me, &room_id, &b.visibility).await?;
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize)]
struct PublicRoomsQuery {
    limit: Option<String>,
    since: Option<String>,
}

async fn public_rooms_get(State(hs): State<AppState>, Query(q): Query<PublicRoomsQuery>) -> Answer {
    let limit = q.limit.as_deref().map(|l| parse_limit(Some(l), 0)).transpose()?;
    Ok(axum::Json(hs.public_rooms(limit, q.since.as_deref(), None).await?))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PublicRoomsBody {
    limit: Option<u64>,
    since: Option<String>,
    filter: Option<PublicRoomsFilter>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PublicRoomsFilter {
    generic_search_term: Option<String>,
}

async fn public_rooms_post(
    State(hs): State<AppState>,
    Auth(_me): Auth,
    JsonBody(b): JsonBody<PublicRoomsBody>,
) -> Answer {
    let term = b.filter.and_then(|f| f.generic_search_term);
    let limit = b.limit.map(|l| l.min(1000) as usize);
    Ok(axum::Json(hs.public_rooms(limit, b.since.as_deref(), term.as_deref()).await?))
}

#[derive(Deserialize)]
struct UserSearchBody {
    search_term: String,
    #[serde(default = "ten")]
    limit: u64,
}

fn ten() -> u64 {
    10
}

async fn user_directory_search(
    State(hs): State<AppState>,
    Auth(me): Auth,
    JsonBody(b): JsonBody<UserSearchBody>,
) -> Answer {
    Ok(axum::Json(hs.search_users(&me, &b.search_term, b.limit.min(1000) as usize).await?))
}

async fn push_rules(State(hs): State<AppState>, Auth(me): Auth) -> Answer {
    Ok(axum::Json(hs.push_rules(&me).await?))
}

async fn push_rules_global(State(hs): State<AppState>, Auth(me): Auth) -> Answer {
    Ok(axum::Json(hs.push_rules(&me).await?["global"].clone()))
}

#[derive(Deserialize)]
struct UpgradeBody {
    new_version: String,
}

async fn upgrade(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    JsonBody(b): JsonBody<UpgradeBody>,
) -> Answer {
    Ok(axum::Json(json!({"replacement_room": hs.upgrade_room(&me, &room_id, &b.new_version).await?})))
}

#[derive(Deserialize)]
struct DeleteDevicesBody {
    devices: Vec<String>,
    auth: Option<Value>,
}

async fn delete_devices(
    State(hs): State<AppState>,
    Auth(me): Auth,
    JsonBody(b): JsonBody<DeleteDevicesBody>,
) -> Answer {
    hs.delete_devices(&me, b.devices, b.auth.as_ref()).await?;
    Ok(axum::Json(json!({})))
}

async fn tags(State(hs): State<AppState>, Auth(me): Auth, Path((user_id, room_id)): Path<(String, String)>) -> Answer {
    Ok(axum::Json(hs.room_tags(&me, &user_id, &room_id).await?))
}

async fn put_tag(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
    JsonBody(info): JsonBody<Map<String, Value>>,
) -> Answer {
    if info.get("order").is_some_and(|o| !o.is_number()) {
        return Err(MatrixError::new(ErrorKind::BadJson, "order must be a number"));
    }
    hs.set_room_tag(&me, &user_id, &room_id, &tag, Some(Value::Object(info))).await?;
    Ok(axum::Json(json!({})))
}

async fn delete_tag(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
) -> Answer {
    hs.set_room_tag(&me, &user_id, &room_id, &tag, None).await?;
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize)]
struct TokenQuery {
    token: String,
}

async fn token_validity(
    State(hs): State<AppState>,
    ClientInfo(info): ClientInfo,
    Query(q): Query<TokenQuery>,
) -> Answer {
    Ok(axum::Json(json!({"valid": hs.check_registration_token_validity(&q.token, &info).await?})))
}

/// No TURN server is configured: Synapse answers `{}` then, and clients fall back to STUN.
async fn turn_server(Auth(_me): Auth) -> Json {
    axum::Json(json!({}))
}

/// No application services bridge third-party networks here.
async fn thirdparty_protocols(Auth(_me): Auth) -> Json {
    axum::Json(json!({}))
}

/// Myelin binds no third-party identifiers (email, phone) to accounts.
async fn threepids(Auth(_me): Auth) -> Json {
    axum::Json(json!({"threepids": []}))
}

async fn openid_token(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.openid_token(&me, &user_id)?))
}

#[derive(Deserialize)]
struct SearchQuery {
    next_batch: Option<String>,
}

async fn search(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<SearchQuery>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    Ok(axum::Json(hs.search(&me, &body, q.next_batch.as_deref()).await?))
}
