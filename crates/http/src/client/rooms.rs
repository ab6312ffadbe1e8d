//! Rooms: creation, membership, sending, state, redaction, history, relations and threads.

use super::*;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
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
        .route("/events/{event_id}", get(event_by_id))
        .route("/rooms/{room_id}/messages", get(messages))
        .route("/rooms/{room_id}/context/{event_id}", get(context))
        .route("/rooms/{room_id}/initialSync", get(room_initial_sync))
        .route("/initialSync", get(initial_sync))
        .route("/rooms/{room_id}/members", get(members))
        .route("/rooms/{room_id}/joined_members", get(joined_members))
}

/// Endpoints the spec introduced under v1.
pub(super) fn v1_routes() -> Router<AppState> {
    Router::new()
        .route("/rooms/{room_id}/relations/{event_id}", get(relations))
        .route("/rooms/{room_id}/relations/{event_id}/{rel_type}", get(relations))
        .route("/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}", get(relations))
        .route("/rooms/{room_id}/threads", get(threads))
        .route("/rooms/{room_id}/timestamp_to_event", get(timestamp_to_event))
        .route("/rooms/{room_id}/hierarchy", get(hierarchy))
        .route("/mutual_rooms", get(mutual_rooms))
}

/// `GET /_matrix/client/v1/mutual_rooms?user_id=&from=` (both may be given more than once,
/// which is an error, so the query is read raw).
pub(super) async fn mutual_rooms(
    State(hs): State<AppState>,
    Auth(me): Auth,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Answer {
    let (users, from) = (query_values(query.as_deref(), &["user_id"]), query_values(query.as_deref(), &["from"]));
    Ok(axum::Json(hs.mutual_rooms(&me, &users, &from).await?))
}

/// MSC2946's unstable path of the hierarchy, which Synapse still serves.
pub(super) fn unstable_hierarchy_routes() -> Router<AppState> {
    Router::new().route("/_matrix/client/unstable/org.matrix.msc2946/rooms/{room_id}/hierarchy", get(hierarchy))
}

#[derive(Deserialize)]
pub(crate) struct HierarchyQuery {
    from: Option<String>,
    limit: Option<String>,
    max_depth: Option<String>,
    suggested_only: Option<String>,
}

/// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy` (see `myelin_core::spaces`).
pub(super) async fn hierarchy(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<HierarchyQuery>,
) -> Answer {
    Ok(axum::Json(hs.room_hierarchy(&me, &room_id, hierarchy_request(q)?).await?))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/hierarchy`: the same parameters, every local room shown.
pub(crate) async fn admin_hierarchy(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<HierarchyQuery>,
) -> Answer {
    Ok(axum::Json(hs.admin_room_hierarchy(&me, &room_id, hierarchy_request(q)?).await?))
}

/// A hierarchy request's parameters, checked as Synapse checks them.
fn hierarchy_request(q: HierarchyQuery) -> Result<myelin_core::spaces::HierarchyRequest, MatrixError> {
    let integer = |name: &str, value: Option<&str>| -> Result<Option<i64>, MatrixError> {
        value
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    MatrixError::new(ErrorKind::InvalidParam, format!("Query parameter {name:?} must be an integer"))
                })
            })
            .transpose()
    };
    let limit = integer("limit", q.limit.as_deref())?;
    if limit.is_some_and(|l| l <= 0) {
        return Err(MatrixError::new(ErrorKind::BadJson, "'limit' must be a positive integer"));
    }
    let max_depth = integer("max_depth", q.max_depth.as_deref())?;
    if max_depth.is_some_and(|d| d < 0) {
        return Err(MatrixError::new(ErrorKind::BadJson, "'max_depth' must be a non-negative integer"));
    }
    let suggested_only = match q.suggested_only.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(MatrixError::new(
                ErrorKind::InvalidParam,
                "Boolean query parameter 'suggested_only' must be one of ['true', 'false']",
            ));
        }
    };
    Ok(myelin_core::spaces::HierarchyRequest {
        from: q.from,
        limit: limit.map(|l| l as usize),
        max_depth: max_depth.map(|d| d as usize),
        suggested_only,
    })
}

pub(super) async fn create_room(
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

pub(super) async fn join(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> Answer {
    // `via` (and the older `server_name`) may repeat.
    let via = query_values(query.as_deref(), &["via", "server_name"]);
    let room_id = hs.join_room(&me, &room, &via, content).await?;
    Ok(axum::Json(json!({"room_id": room_id})))
}

#[derive(Deserialize, Default)]
pub(super) struct KnockBody {
    reason: Option<String>,
}

pub(super) async fn knock(
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
pub(super) struct MembershipBody {
    user_id: Option<String>,
    reason: Option<String>,
    // An invite by third-party identifier names these instead of `user_id`.
    id_server: Option<Value>,
    id_access_token: Option<Value>,
    medium: Option<Value>,
    address: Option<Value>,
}

pub(super) async fn membership(
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
        "invite" if body.user_id.is_none() && body.medium.is_some() && body.address.is_some() => {
            let invite = json!({
                "id_server": body.id_server, "id_access_token": body.id_access_token,
                "medium": body.medium, "address": body.address,
            });
            hs.invite_threepid(&me, &room, &invite).await?;
            return Ok(axum::Json(json!({})));
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

pub(super) async fn joined_rooms(State(hs): State<AppState>, Auth(me): Auth) -> Answer {
    Ok(axum::Json(json!({"joined_rooms": hs.joined_rooms(&me).await?})))
}

pub(super) async fn send(
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
pub(super) async fn send_without_txn(
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

pub(super) async fn state(State(hs): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(Value::Array(hs.room_state(&me, &room_id).await?)))
}

/// `?format=event` asks for the whole event rather than its content.
#[derive(Deserialize)]
pub(super) struct StateFormat {
    format: Option<String>,
}

pub(super) async fn state_event(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, kind, key)): Path<(String, String, String)>,
    Query(q): Query<StateFormat>,
) -> Answer {
    let whole = q.format.as_deref() == Some("event");
    Ok(axum::Json(hs.room_state_event(&me, &room_id, &kind, &key, whole).await?))
}

pub(super) async fn state_event_empty(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, kind)): Path<(String, String)>,
    Query(q): Query<StateFormat>,
) -> Answer {
    let whole = q.format.as_deref() == Some("event");
    Ok(axum::Json(hs.room_state_event(&me, &room_id, &kind, "", whole).await?))
}

pub(super) async fn put_state(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, kind, key)): Path<(String, String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> Answer {
    let event_id = hs.send_state(&me, &room_id, &kind, &key, content).await?;
    Ok(axum::Json(json!({"event_id": event_id})))
}

pub(super) async fn put_state_empty(
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
pub(super) struct RedactBody {
    reason: Option<String>,
}

pub(super) async fn redact(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_id, txn_id)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<RedactBody>,
) -> Answer {
    let id = hs.redact(&me, &room_id, &event_id, &txn_id, body.reason).await?;
    Ok(axum::Json(json!({"event_id": id})))
}

pub(super) async fn event(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
) -> Answer {
    Ok(axum::Json(hs.get_room_event(&me, &room_id, &event_id).await?))
}

/// `GET /events/{eventId}` (deprecated).
async fn event_by_id(State(hs): State<AppState>, Auth(me): Auth, Path(event_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.get_event_by_id(&me, &event_id).await?))
}

#[derive(Deserialize)]
pub(crate) struct MessagesQuery {
    filter: Option<String>,
    from: Option<String>,
    to: Option<String>,
    dir: Option<String>,
    limit: Option<String>,
}

pub(super) fn parse_limit(limit: Option<&str>, default: usize) -> Result<usize, MatrixError> {
    match limit {
        None => Ok(default),
        Some(l) => l
            .parse::<u64>()
            .map(|n| n.min(1000) as usize)
            .map_err(|_| MatrixError::new(ErrorKind::InvalidParam, "limit must be a non-negative integer")),
    }
}

/// A `dir` parameter: `f` is forwards, `b` backwards, absent `default_forwards`.
pub(super) fn forwards(dir: Option<&str>, default_forwards: bool) -> Result<bool, MatrixError> {
    match dir {
        None => Ok(default_forwards),
        Some("f") => Ok(true),
        Some("b") => Ok(false),
        Some(_) => Err(MatrixError::new(ErrorKind::InvalidParam, "dir must be 'b' or 'f'")),
    }
}

pub(super) async fn messages(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Answer {
    read_messages(&hs, &me, &room_id, q, false).await
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/messages`: the same page, as an admin sees it.
pub(crate) async fn admin_messages(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Answer {
    read_messages(&hs, &me, &room_id, q, true).await
}

async fn read_messages(
    hs: &AppState,
    me: &myelin_core::Requester,
    room_id: &str,
    q: MessagesQuery,
    as_admin: bool,
) -> Answer {
    let backwards = !forwards(q.dir.as_deref(), false)?;
    let limit = parse_limit(q.limit.as_deref(), 10)?;
    let filter = parse_event_filter(q.filter.as_deref())?;
    let pagination = myelin_core::Pagination {
        from: q.from.as_deref(),
        to: q.to.as_deref(),
        backwards,
        limit,
        filter: filter.as_ref(),
    };
    let page = if as_admin {
        hs.admin_room_messages(me, room_id, pagination).await?
    } else {
        hs.messages(me, room_id, pagination).await?
    };
    let mut out = json!({"chunk": page.chunk, "start": page.start, "state": page.state});
    if let Some(end) = page.end {
        out["end"] = json!(end);
    }
    Ok(axum::Json(out))
}

#[derive(Deserialize)]
pub(super) struct RelationsPath {
    room_id: String,
    event_id: String,
    rel_type: Option<String>,
    event_type: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RelationsQuery {
    from: Option<String>,
    to: Option<String>,
    dir: Option<String>,
    limit: Option<String>,
    recurse: Option<bool>,
}

pub(super) async fn relations(
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
pub(super) struct ThreadsQuery {
    include: Option<String>,
    from: Option<String>,
    limit: Option<String>,
}

pub(super) async fn threads(
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
pub(crate) struct TimestampQuery {
    ts: Option<String>,
    dir: Option<String>,
}

pub(super) async fn timestamp_to_event(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<TimestampQuery>,
) -> Answer {
    event_at_timestamp(&hs, &me, &room_id, q, false).await
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/timestamp_to_event`: whoever may see the event.
pub(crate) async fn admin_timestamp_to_event(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<TimestampQuery>,
) -> Answer {
    event_at_timestamp(&hs, &me, &room_id, q, true).await
}

async fn event_at_timestamp(
    hs: &AppState,
    me: &myelin_core::Requester,
    room_id: &str,
    q: TimestampQuery,
    as_admin: bool,
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
    Ok(axum::Json(if as_admin {
        hs.admin_timestamp_to_event(me, room_id, ts, forwards).await?
    } else {
        hs.timestamp_to_event(me, room_id, ts, forwards).await?
    }))
}

#[derive(Deserialize)]
pub(super) struct InitialSyncQuery {
    limit: Option<String>,
    archived: Option<String>,
}

pub(super) async fn room_initial_sync(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<InitialSyncQuery>,
) -> Answer {
    let limit = parse_limit(q.limit.as_deref(), 10)?;
    Ok(axum::Json(hs.room_initial_sync(&me, &room_id, limit).await?))
}

/// `GET /initialSync` (deprecated; Synapse still serves it).
pub(super) async fn initial_sync(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<InitialSyncQuery>,
) -> Answer {
    let limit = parse_limit(q.limit.as_deref(), 10)?;
    let archived = q.archived.as_deref() == Some("true");
    Ok(axum::Json(hs.initial_sync(&me, limit, archived).await?))
}

#[derive(Deserialize)]
pub(super) struct ContextQuery {
    limit: Option<String>,
    filter: Option<String>,
}

pub(super) async fn context(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
    Query(q): Query<ContextQuery>,
) -> Answer {
    let limit = parse_limit(q.limit.as_deref(), 10)?;
    let filter = parse_event_filter(q.filter.as_deref())?;
    Ok(axum::Json(hs.context(&me, &room_id, &event_id, limit, filter.as_ref()).await?))
}

/// A `RoomEventFilter` given inline as JSON in the query.
fn parse_event_filter(filter: Option<&str>) -> Result<Option<myelin_core::EventFilter>, MatrixError> {
    filter
        .map(|f| {
            serde_json::from_str(f).map_err(|e| MatrixError::new(ErrorKind::BadJson, format!("Invalid filter: {e}")))
        })
        .transpose()
}

#[derive(Deserialize)]
pub(super) struct MembersQuery {
    at: Option<String>,
    membership: Option<String>,
    not_membership: Option<String>,
}

pub(super) async fn members(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<MembersQuery>,
) -> Answer {
    let chunk =
        hs.room_members(&me, &room_id, q.at.as_deref(), q.membership.as_deref(), q.not_membership.as_deref()).await?;
    Ok(axum::Json(json!({"chunk": chunk})))
}

pub(super) async fn joined_members(State(hs): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(json!({"joined": hs.joined_members(&me, &room_id).await?})))
}

#[derive(Deserialize)]
pub(super) struct UpgradeBody {
    new_version: String,
}

pub(super) async fn upgrade(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    JsonBody(b): JsonBody<UpgradeBody>,
) -> Answer {
    Ok(axum::Json(json!({"replacement_room": hs.upgrade_room(&me, &room_id, &b.new_version).await?})))
}
