//! Synapse's admin API, as far as Myelin implements it: shared-secret registration,
//! registration tokens, event reports, and accounts (admin flag, details, whois, deactivation,
//! password reset, joined rooms).

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::MatrixError;
use crate::extract::{Auth, JsonBody, Path, Query};

type Answer = Result<axum::Json<Value>, MatrixError>;

pub(crate) fn router() -> Router<AppState> {
    use axum::routing::post;
    Router::new()
        .route("/_synapse/admin/v1/register", get(nonce).post(register))
        .route("/_synapse/admin/v1/registration_tokens", get(list_tokens))
        .route("/_synapse/admin/v1/registration_tokens/new", post(new_token))
        .route("/_synapse/admin/v1/registration_tokens/{token}", get(get_token).put(update_token).delete(delete_token))
        .route("/_synapse/admin/v1/server_version", get(server_version))
        .route("/_synapse/admin/v1/users/{user_id}/admin", get(is_admin).put(set_admin))
        .route("/_synapse/admin/v2/users", get(list_users))
        .route("/_synapse/admin/v3/users", get(list_users_v3))
        .route("/_synapse/admin/v1/users/{user_id}/memberships", get(user_memberships))
        .route("/_synapse/admin/v1/join/{room}", post(join_user))
        .route("/_synapse/admin/v1/threepid/{medium}/users/{address}", get(user_by_threepid))
        .route("/_synapse/admin/v1/search_users/{user_id}", get(search_users))
        .route("/_synapse/admin/v2/users/{user_id}", get(user).put(put_user))
        .route("/_synapse/admin/v1/users/{user_id}/shadow_ban", post(shadow_ban).delete(lift_shadow_ban))
        .route("/_synapse/admin/v1/suspend/{user_id}", axum::routing::put(suspend))
        .route(
            "/_synapse/admin/v1/users/{user_id}/override_ratelimit",
            get(ratelimit_override).post(set_ratelimit_override).delete(remove_ratelimit_override),
        )
        .route("/_synapse/admin/v1/users/{user_id}/login", post(login_as))
        .route("/_synapse/admin/v1/rooms", get(list_rooms))
        .route("/_synapse/admin/v1/rooms/{room_id}", get(room).delete(delete_room))
        .route("/_synapse/admin/v2/rooms/{room_id}", axum::routing::delete(delete_room_v2))
        .route("/_synapse/admin/v2/rooms/{room_id}/delete_status", get(room_delete_status))
        .route("/_synapse/admin/v2/rooms/delete_status/{delete_id}", get(delete_status))
        .route("/_synapse/admin/v1/rooms/{room_id}/block", get(room_block_status).put(block_room))
        .route("/_synapse/admin/v1/rooms/{room_id}/members", get(room_members))
        .route("/_synapse/admin/v1/rooms/{room_id}/state", get(room_state))
        .route("/_synapse/admin/v1/auth_providers/{provider}/users/{external_id}", get(user_by_external_id))
        .route("/_synapse/admin/v1/whois/{user_id}", get(whois))
        .route("/_synapse/admin/v1/deactivate/{user_id}", post(deactivate))
        .route("/_synapse/admin/v1/reset_password/{user_id}", post(reset_password))
        .route("/_synapse/admin/v1/users/{user_id}/joined_rooms", get(joined_rooms))
        .route("/_synapse/admin/v1/users/{user_id}/accountdata", get(account_data))
        .route("/_synapse/admin/v1/username_available", get(username_available))
        .route("/_synapse/admin/v1/users/{user_id}/pushers", get(pushers))
        .route("/_synapse/admin/v2/users/{user_id}/devices", get(devices))
        .route(
            "/_synapse/admin/v2/users/{user_id}/devices/{device_id}",
            get(device).put(rename_device).delete(delete_device),
        )
        .route("/_synapse/admin/v2/users/{user_id}/delete_devices", post(delete_devices))
        .route("/_synapse/admin/v1/media/{server}/{media_id}", get(media_info).delete(delete_media))
        .route("/_synapse/admin/v1/media/quarantine/{server}/{media_id}", post(quarantine_media))
        .route("/_synapse/admin/v1/media/unquarantine/{server}/{media_id}", post(unquarantine_media))
        .route("/_synapse/admin/v1/media/protect/{media_id}", post(protect_media))
        .route("/_synapse/admin/v1/media/unprotect/{media_id}", post(unprotect_media))
        .route("/_synapse/admin/v1/media/delete", post(delete_old_media))
        .route("/_synapse/admin/v1/media/{server}/delete", post(delete_old_media_of))
        .route("/_synapse/admin/v1/room/{room_id}/media", get(room_media))
        .route("/_synapse/admin/v1/room/{room_id}/media/quarantine", post(quarantine_room_media))
        .route("/_synapse/admin/v1/quarantine_media/{room_id}", post(quarantine_room_media))
        .route("/_synapse/admin/v1/user/{user_id}/media/quarantine", post(quarantine_user_media))
        .route("/_synapse/admin/v1/user/{user_id}/redact", post(redact_user))
        .route("/_synapse/admin/v1/user/redact_status/{redact_id}", get(redact_status))
        .route("/_synapse/admin/v1/scheduled_tasks", get(scheduled_tasks))
        .route("/_synapse/admin/v1/rooms/{room_id}/messages", get(crate::client::admin_messages))
        .route("/_synapse/admin/v1/rooms/{room_id}/timestamp_to_event", get(crate::client::admin_timestamp_to_event))
        .route("/_synapse/admin/v1/rooms/{room_id}/make_room_admin", post(make_room_admin))
        .route("/_synapse/admin/v1/purge_history/{room_id}", post(purge_history))
        .route("/_synapse/admin/v1/purge_history/{room_id}/{event_id}", post(purge_history_to_event))
        .route("/_synapse/admin/v1/purge_history_status/{purge_id}", get(purge_history_status))
        .route("/_synapse/admin/v1/federation/destinations", get(destinations))
        .route("/_synapse/admin/v1/federation/destinations/{destination}", get(destination))
        .route("/_synapse/admin/v1/federation/destinations/{destination}/rooms", get(destination_rooms))
        .route("/_synapse/admin/v1/federation/destinations/{destination}/reset_connection", post(reset_destination))
        .route("/_synapse/admin/v1/background_updates/enabled", get(background_updates).post(set_background_updates))
        .route("/_synapse/admin/v1/background_updates/status", get(background_updates_status))
        .route("/_synapse/admin/v1/background_updates/start_job", post(start_background_job))
        .route("/_synapse/admin/v1/users/{user_id}/media", get(user_media).delete(delete_user_media))
        .route("/_synapse/admin/v1/send_server_notice", post(send_server_notice))
        .route("/_synapse/admin/v1/send_server_notice/{txn_id}", axum::routing::put(send_server_notice_txn))
        .route("/_synapse/admin/v1/statistics/users/media", get(media_statistics))
        .route("/_synapse/admin/v1/fetch_event/{event_id}", get(fetch_event))
        .route("/_synapse/admin/v1/users/{user_id}/sent_invite_count", get(sent_invite_count))
        .route("/_synapse/admin/v1/users/{user_id}/cumulative_joined_room_count", get(cumulative_joined_room_count))
        .route(
            "/_synapse/admin/v1/rooms/{room_id}/forward_extremities",
            get(forward_extremities).delete(delete_forward_extremities),
        )
        .route(
            "/_synapse/admin/v1/experimental_features/{user_id}",
            get(experimental_features).put(set_experimental_features),
        )
        .route(
            "/_synapse/admin/v1/users/{user_id}/_allow_cross_signing_replacement_without_uia",
            post(allow_master_key_replacement),
        )
        .route("/_synapse/admin/v1/account_validity/validity", post(account_validity))
        .route("/_synapse/admin/v1/rooms/{room_id}/context/{event_id}", get(room_context))
        .route("/_synapse/admin/v1/rooms/{room_id}/hierarchy", get(crate::client::admin_hierarchy))
        .route("/_synapse/admin/v1/statistics/database/rooms", get(largest_rooms))
        .route("/_synapse/admin/v1/purge_media_cache", post(purge_media_cache))
        .route("/_synapse/admin/v1/media/quarantine_changes", get(quarantine_changes))
        .route("/_synapse/admin/v1/event_reports", get(event_reports))
        .route("/_synapse/admin/v1/user_reports", get(user_reports))
        .route("/_synapse/admin/v1/user_reports/{report_id}", get(user_report).delete(delete_user_report))
        .route("/_synapse/admin/v1/event_reports/{report_id}", get(event_report).delete(delete_event_report))
}

async fn server_version() -> axum::Json<Value> {
    axum::Json(json!({"server_version": format!("Myelin {}", env!("CARGO_PKG_VERSION"))}))
}

async fn is_admin(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_is_admin(&me, &user_id).await?))
}

async fn set_admin(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    hs.admin_set_admin(&me, &user_id, body.get("admin")).await?;
    Ok(axum::Json(json!({})))
}

async fn user_memberships(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_user_memberships(&me, &user_id).await?))
}

async fn join_user(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    // `server_name` may repeat.
    let via: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "server_name")
        .map(|(_, v)| v.into_owned())
        .collect();
    Ok(axum::Json(hs.admin_join_user(&me, &room, &via, &body).await?))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SearchQuery {
    term: Option<String>,
}

async fn search_users(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    Query(q): Query<SearchQuery>,
) -> Answer {
    Ok(axum::Json(hs.admin_search_users(&me, &user_id, q.term).await?))
}

async fn user_by_threepid(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((medium, address)): Path<(String, String)>,
) -> Answer {
    Ok(axum::Json(hs.admin_user_by_threepid(&me, &medium, &address).await?))
}

async fn redact_user(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    Ok(axum::Json(hs.admin_redact_user(&me, &user_id, &body).await?))
}

async fn redact_status(State(hs): State<AppState>, Auth(me): Auth, Path(redact_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_redact_status(&me, &redact_id)?))
}

/// `GET /_synapse/admin/v1/scheduled_tasks`: `action_name` and `status` (or `job_status`) may
/// repeat, so the query is read whole.
async fn scheduled_tasks(
    State(hs): State<AppState>,
    Auth(me): Auth,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Answer {
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
    let all = |name: &str| pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect::<Vec<_>>();
    let mut statuses = all("status");
    if statuses.is_empty() {
        statuses = all("job_status");
    }
    let filter = myelin_core::admin_tasks::TaskFilter {
        actions: all("action_name"),
        resource_id: all("resource_id").pop(),
        statuses,
        max_timestamp: integer(all("max_timestamp").pop(), "max_timestamp")?,
    };
    Ok(axum::Json(hs.admin_scheduled_tasks(&me, filter)?))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DestinationsQuery {
    from: Option<String>,
    limit: Option<String>,
    destination: Option<String>,
    order_by: Option<String>,
    dir: Option<String>,
}

async fn destinations(State(hs): State<AppState>, Auth(me): Auth, Query(q): Query<DestinationsQuery>) -> Answer {
    let params = myelin_core::federation::destinations::DestinationListParams {
        from: integer(q.from, "from")?,
        limit: integer(q.limit, "limit")?,
        destination: q.destination,
        order_by: q.order_by,
        dir: q.dir,
    };
    Ok(axum::Json(hs.admin_list_destinations(&me, params).await?))
}

async fn destination(State(hs): State<AppState>, Auth(me): Auth, Path(destination): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_destination(&me, &destination).await?))
}

async fn destination_rooms(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(destination): Path<String>,
    Query(q): Query<DestinationsQuery>,
) -> Answer {
    let (from, limit) = (integer(q.from, "from")?, integer(q.limit, "limit")?);
    Ok(axum::Json(hs.admin_destination_rooms(&me, &destination, from, limit, q.dir.as_deref()).await?))
}

async fn reset_destination(State(hs): State<AppState>, Auth(me): Auth, Path(destination): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_reset_destination(&me, &destination).await?))
}

async fn make_room_admin(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room): Path<String>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    // `JsonBody` takes an empty body as `{}`, as Synapse's `allow_empty_body`.
    Ok(axum::Json(hs.admin_make_room_admin(&me, &room, &body).await?))
}

async fn purge_history(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    Ok(axum::Json(hs.admin_purge_history(&me, &room_id, None, &body).await?))
}

async fn purge_history_to_event(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    Ok(axum::Json(hs.admin_purge_history(&me, &room_id, Some(&event_id), &body).await?))
}

async fn purge_history_status(State(hs): State<AppState>, Auth(me): Auth, Path(purge_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_purge_history_status(&me, &purge_id)?))
}

async fn background_updates(State(hs): State<AppState>, Auth(me): Auth) -> Answer {
    Ok(axum::Json(hs.admin_background_updates_enabled(&me)?))
}

async fn set_background_updates(
    State(hs): State<AppState>,
    Auth(me): Auth,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    Ok(axum::Json(hs.admin_set_background_updates(&me, &body)?))
}

async fn background_updates_status(State(hs): State<AppState>, Auth(me): Auth) -> Answer {
    Ok(axum::Json(hs.admin_background_updates_status(&me)?))
}

async fn start_background_job(
    State(hs): State<AppState>,
    Auth(me): Auth,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    Ok(axum::Json(hs.admin_start_background_job(&me, &body)?))
}

/// A boolean query parameter as Synapse parses it (`true` / `false`; anything else is 400).
fn flag(value: Option<String>, name: &str) -> Result<Option<bool>, MatrixError> {
    match value.as_deref() {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(MatrixError::new(
            myelin_core::ErrorKind::InvalidParam,
            format!("Boolean query parameter '{name}' must be one of ['true', 'false']"),
        )),
    }
}

/// An integer query parameter (400 when it is not one).
fn integer(value: Option<String>, name: &str) -> Result<Option<i64>, MatrixError> {
    value
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                MatrixError::new(
                    myelin_core::ErrorKind::InvalidParam,
                    format!("Query parameter '{name}' must be an integer"),
                )
            })
        })
        .transpose()
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct UsersQuery {
    from: Option<String>,
    limit: Option<String>,
    name: Option<String>,
    user_id: Option<String>,
    guests: Option<String>,
    deactivated: Option<String>,
    admins: Option<String>,
    locked: Option<String>,
    order_by: Option<String>,
    dir: Option<String>,
}

async fn list_users(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<UsersQuery>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Answer {
    users_page(&hs, &me, q, not_user_types(raw.as_deref()), false).await
}

async fn list_users_v3(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<UsersQuery>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Answer {
    users_page(&hs, &me, q, not_user_types(raw.as_deref()), true).await
}

/// `not_user_type`, which may be given several times.
fn not_user_types(raw: Option<&str>) -> Vec<String> {
    raw.map(|q| {
        form_urlencoded::parse(q.as_bytes())
            .filter(|(k, _)| k == "not_user_type")
            .map(|(_, v)| v.into_owned())
            .collect()
    })
    .unwrap_or_default()
}

async fn users_page(
    hs: &AppState,
    me: &myelin_core::Requester,
    q: UsersQuery,
    not_user_types: Vec<String>,
    v3: bool,
) -> Answer {
    let params = myelin_core::admin::UserListParams {
        v3,
        from: integer(q.from, "from")?,
        limit: integer(q.limit, "limit")?,
        name: q.name,
        user_id: q.user_id,
        guests: flag(q.guests, "guests")?,
        deactivated: flag(q.deactivated, "deactivated")?,
        admins: flag(q.admins, "admins")?,
        locked: flag(q.locked, "locked")?,
        order_by: q.order_by,
        dir: q.dir,
        not_user_types,
    };
    Ok(axum::Json(hs.admin_list_users(me, params).await?))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RoomsQuery {
    from: Option<String>,
    limit: Option<String>,
    order_by: Option<String>,
    dir: Option<String>,
    search_term: Option<String>,
}

async fn list_rooms(State(hs): State<AppState>, Auth(me): Auth, Query(q): Query<RoomsQuery>) -> Answer {
    let params = myelin_core::admin::RoomListParams {
        from: integer(q.from, "from")?,
        limit: integer(q.limit, "limit")?,
        order_by: q.order_by,
        dir: q.dir,
        search_term: q.search_term,
    };
    Ok(axum::Json(hs.admin_list_rooms(&me, params).await?))
}

async fn room(State(hs): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_room(&me, &room_id).await?))
}

async fn delete_room(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    Ok(axum::Json(hs.admin_delete_room(&me, &room_id, &body).await?))
}

async fn delete_room_v2(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    Ok(axum::Json(hs.admin_delete_room_v2(&me, &room_id, &body).await?))
}

async fn room_delete_status(State(hs): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_room_delete_status(&me, &room_id)?))
}

async fn delete_status(State(hs): State<AppState>, Auth(me): Auth, Path(delete_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_delete_status(&me, &delete_id)?))
}

async fn room_block_status(State(hs): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_room_block_status(&me, &room_id).await?))
}

async fn block_room(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    Ok(axum::Json(hs.admin_block_room(&me, &room_id, &body).await?))
}

async fn user_by_external_id(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((provider, external_id)): Path<(String, String)>,
) -> Answer {
    Ok(axum::Json(hs.admin_user_by_external_id(&me, &provider, &external_id).await?))
}

async fn media_info(State(hs): State<AppState>, Auth(me): Auth, Path((server, id)): Path<(String, String)>) -> Answer {
    Ok(axum::Json(hs.admin_media_info(&me, &server, &id).await?))
}

async fn delete_media(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((server, id)): Path<(String, String)>,
) -> Answer {
    Ok(axum::Json(hs.admin_delete_media(&me, &server, &id).await?))
}

async fn quarantine_media(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((server, id)): Path<(String, String)>,
) -> Answer {
    Ok(axum::Json(hs.admin_quarantine_media(&me, &server, &id, true).await?))
}

async fn unquarantine_media(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((server, id)): Path<(String, String)>,
) -> Answer {
    Ok(axum::Json(hs.admin_quarantine_media(&me, &server, &id, false).await?))
}

async fn protect_media(State(hs): State<AppState>, Auth(me): Auth, Path(id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_protect_media(&me, &id, true).await?))
}

async fn unprotect_media(State(hs): State<AppState>, Auth(me): Auth, Path(id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_protect_media(&me, &id, false).await?))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OldMediaQuery {
    before_ts: Option<String>,
    size_gt: Option<String>,
    keep_profiles: Option<String>,
}

async fn delete_old_media(State(hs): State<AppState>, Auth(me): Auth, Query(q): Query<OldMediaQuery>) -> Answer {
    let keep = flag(q.keep_profiles, "keep_profiles")?.unwrap_or(true);
    let (before, size) = (integer(q.before_ts, "before_ts")?, integer(q.size_gt, "size_gt")?);
    Ok(axum::Json(hs.admin_delete_old_media(&me, None, before, size, keep).await?))
}

async fn delete_old_media_of(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(server): Path<String>,
    Query(q): Query<OldMediaQuery>,
) -> Answer {
    let keep = flag(q.keep_profiles, "keep_profiles")?.unwrap_or(true);
    let (before, size) = (integer(q.before_ts, "before_ts")?, integer(q.size_gt, "size_gt")?);
    Ok(axum::Json(hs.admin_delete_old_media(&me, Some(&server), before, size, keep).await?))
}

async fn room_media(State(hs): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_list_room_media(&me, &room_id).await?))
}

async fn quarantine_room_media(State(hs): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_quarantine_room_media(&me, &room_id).await?))
}

async fn quarantine_user_media(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_quarantine_user_media(&me, &user_id).await?))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct UserMediaQuery {
    from: Option<String>,
    limit: Option<String>,
    order_by: Option<String>,
    dir: Option<String>,
}

impl UserMediaQuery {
    fn params(self) -> Result<myelin_core::media_admin::UserMediaParams, MatrixError> {
        Ok(myelin_core::media_admin::UserMediaParams {
            from: integer(self.from, "from")?,
            limit: integer(self.limit, "limit")?,
            order_by: self.order_by,
            dir: self.dir,
        })
    }
}

async fn user_media(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    Query(q): Query<UserMediaQuery>,
) -> Answer {
    Ok(axum::Json(hs.admin_user_media(&me, &user_id, q.params()?).await?))
}

async fn delete_user_media(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    Query(q): Query<UserMediaQuery>,
) -> Answer {
    Ok(axum::Json(hs.admin_delete_user_media(&me, &user_id, q.params()?).await?))
}

async fn send_server_notice(
    State(hs): State<AppState>,
    Auth(me): Auth,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    Ok(axum::Json(hs.admin_send_server_notice(&me, &body, None).await?))
}

async fn send_server_notice_txn(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(txn_id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    Ok(axum::Json(hs.admin_send_server_notice(&me, &body, Some(&txn_id)).await?))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MediaStatisticsQuery {
    from: Option<String>,
    limit: Option<String>,
    from_ts: Option<String>,
    until_ts: Option<String>,
    order_by: Option<String>,
    search_term: Option<String>,
    dir: Option<String>,
}

async fn media_statistics(State(hs): State<AppState>, Auth(me): Auth, Query(q): Query<MediaStatisticsQuery>) -> Answer {
    let params = myelin_core::media_admin::MediaStatisticsParams {
        from: integer(q.from, "from")?,
        limit: integer(q.limit, "limit")?,
        from_ts: integer(q.from_ts, "from_ts")?,
        until_ts: integer(q.until_ts, "until_ts")?,
        order_by: q.order_by,
        search_term: q.search_term,
        dir: q.dir,
    };
    Ok(axum::Json(hs.admin_media_statistics(&me, params).await?))
}

async fn fetch_event(State(hs): State<AppState>, Auth(me): Auth, Path(event_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_fetch_event(&me, &event_id).await?))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct InviteCountQuery {
    from_ts: Option<String>,
}

async fn sent_invite_count(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    Query(q): Query<InviteCountQuery>,
) -> Answer {
    Ok(axum::Json(hs.admin_sent_invite_count(&me, &user_id, integer(q.from_ts, "from_ts")?).await?))
}

async fn cumulative_joined_room_count(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    Query(q): Query<InviteCountQuery>,
) -> Answer {
    Ok(axum::Json(hs.admin_cumulative_joined_room_count(&me, &user_id, integer(q.from_ts, "from_ts")?).await?))
}

async fn delete_forward_extremities(State(hs): State<AppState>, Auth(me): Auth, Path(room): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_delete_forward_extremities(&me, &room).await?))
}

async fn forward_extremities(State(hs): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_forward_extremities(&me, &room_id).await?))
}

async fn room_members(State(hs): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_room_members(&me, &room_id).await?))
}

async fn room_state(State(hs): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_room_state(&me, &room_id).await?))
}

async fn put_user(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Result<(axum::http::StatusCode, axum::Json<Value>), MatrixError> {
    let (created, user) = hs.admin_put_user(&me, &user_id, &body).await?;
    let status = if created { axum::http::StatusCode::CREATED } else { axum::http::StatusCode::OK };
    Ok((status, axum::Json(user)))
}

async fn shadow_ban(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    hs.admin_shadow_ban(&me, &user_id, true).await?;
    Ok(axum::Json(json!({})))
}

async fn suspend(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    Ok(axum::Json(hs.admin_suspend(&me, &user_id, &body).await?))
}

async fn lift_shadow_ban(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    hs.admin_shadow_ban(&me, &user_id, false).await?;
    Ok(axum::Json(json!({})))
}

async fn ratelimit_override(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_ratelimit_override(&me, &user_id).await?))
}

async fn set_ratelimit_override(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Answer {
    Ok(axum::Json(hs.admin_set_ratelimit_override(&me, &user_id, Some(&body)).await?))
}

async fn remove_ratelimit_override(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_set_ratelimit_override(&me, &user_id, None).await?))
}

async fn login_as(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_login_as(&me, &user_id).await?))
}

async fn user(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_user(&me, &user_id).await?))
}

pub(crate) async fn whois(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.whois(&me, &user_id).await?))
}

async fn deactivate(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    body: axum::body::Bytes,
) -> Answer {
    // The body may be empty (Synapse).
    let mut erase = false;
    if !body.is_empty() {
        match crate::extract::parse_json(&body) {
            Ok(Value::Object(b)) if b.get("erase").is_none_or(Value::is_boolean) => {
                erase = b.get("erase").and_then(Value::as_bool).unwrap_or(false);
            }
            Ok(Value::Object(_)) => {
                return Err(MatrixError::new(myelin_core::ErrorKind::InvalidParam, "Param 'erase' must be a boolean"));
            }
            _ => return Err(MatrixError::new(myelin_core::ErrorKind::NotJson, "Content not JSON.")),
        }
    }
    Ok(axum::Json(hs.admin_deactivate(&me, &user_id, erase).await?))
}

async fn reset_password(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    let logout = body.get("logout_devices").and_then(Value::as_bool).unwrap_or(true);
    hs.admin_reset_password(&me, &user_id, body.get("new_password"), logout).await?;
    Ok(axum::Json(json!({})))
}

async fn pushers(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_pushers(&me, &user_id).await?))
}

async fn devices(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_devices(&me, &user_id).await?))
}

async fn device(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, device_id)): Path<(String, String)>,
) -> Answer {
    Ok(axum::Json(hs.admin_device(&me, &user_id, &device_id).await?))
}

async fn rename_device(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, device_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    let name = match body.get("display_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) => Some(n.clone()),
        Some(_) => return Err(MatrixError::new(myelin_core::ErrorKind::BadJson, "display_name must be a string")),
    };
    hs.admin_rename_device(&me, &user_id, &device_id, name).await?;
    Ok(axum::Json(json!({})))
}

async fn delete_device(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, device_id)): Path<(String, String)>,
) -> Answer {
    hs.admin_delete_devices(&me, &user_id, vec![device_id]).await?;
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize)]
struct DeleteDevicesBody {
    devices: Vec<String>,
}

async fn delete_devices(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<DeleteDevicesBody>,
) -> Answer {
    hs.admin_delete_devices(&me, &user_id, body.devices).await?;
    Ok(axum::Json(json!({})))
}

async fn account_data(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_account_data(&me, &user_id).await?))
}

#[derive(Deserialize)]
struct UsernameQuery {
    username: String,
}

async fn username_available(State(hs): State<AppState>, Auth(me): Auth, Query(q): Query<UsernameQuery>) -> Answer {
    Ok(axum::Json(hs.admin_username_available(&me, &q.username).await?))
}

async fn joined_rooms(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_joined_rooms(&me, &user_id).await?))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReportsQuery {
    from: Option<i64>,
    limit: Option<i64>,
    dir: Option<String>,
    user_id: Option<String>,
    room_id: Option<String>,
    target_user_id: Option<String>,
}

impl ReportsQuery {
    /// The paging and filters, newest first unless `dir=f`.
    fn query(&self) -> Result<myelin_core::EventReportQuery, MatrixError> {
        let forwards = match self.dir.as_deref() {
            None | Some("b") => false,
            Some("f") => true,
            Some(_) => return Err(MatrixError::new(myelin_core::ErrorKind::InvalidParam, "Unknown direction")),
        };
        Ok(myelin_core::EventReportQuery {
            from: self.from.unwrap_or(0),
            limit: self.limit.unwrap_or(100),
            forwards,
            user_id: self.user_id.clone(),
            room_id: self.room_id.clone(),
        })
    }
}

async fn event_reports(State(hs): State<AppState>, Auth(me): Auth, Query(q): Query<ReportsQuery>) -> Answer {
    Ok(axum::Json(hs.admin_event_reports(&me, q.query()?).await?))
}

async fn user_reports(State(hs): State<AppState>, Auth(me): Auth, Query(q): Query<ReportsQuery>) -> Answer {
    let query = q.query()?;
    Ok(axum::Json(hs.admin_user_reports(&me, query, q.target_user_id).await?))
}

async fn user_report(State(hs): State<AppState>, Auth(me): Auth, Path(id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_user_report(&me, &id).await?))
}

async fn delete_user_report(State(hs): State<AppState>, Auth(me): Auth, Path(id): Path<String>) -> Answer {
    hs.admin_delete_user_report(&me, &id).await?;
    Ok(axum::Json(json!({})))
}

async fn event_report(State(hs): State<AppState>, Auth(me): Auth, Path(id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_event_report(&me, &id).await?))
}

async fn delete_event_report(State(hs): State<AppState>, Auth(me): Auth, Path(id): Path<String>) -> Answer {
    hs.admin_delete_event_report(&me, &id).await?;
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NewToken {
    token: Option<String>,
    length: Option<i64>,
    uses_allowed: Option<i64>,
    expiry_time: Option<i64>,
}

async fn new_token(
    State(hs): State<AppState>,
    Auth(me): Auth,
    JsonBody(b): JsonBody<NewToken>,
) -> Result<axum::Json<Value>, MatrixError> {
    Ok(axum::Json(hs.create_registration_token(&me, b.token, b.length, b.uses_allowed, b.expiry_time).await?))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TokensQuery {
    valid: Option<String>,
}

async fn list_tokens(State(hs): State<AppState>, Auth(me): Auth, Query(q): Query<TokensQuery>) -> Answer {
    Ok(axum::Json(hs.list_registration_tokens(&me, flag(q.valid, "valid")?).await?))
}

async fn get_token(State(hs): State<AppState>, Auth(me): Auth, Path(token): Path<String>) -> Answer {
    Ok(axum::Json(hs.registration_token(&me, &token).await?))
}

async fn update_token(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(token): Path<String>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Answer {
    Ok(axum::Json(hs.update_registration_token(&me, &token, &body).await?))
}

async fn delete_token(State(hs): State<AppState>, Auth(me): Auth, Path(token): Path<String>) -> Answer {
    hs.delete_registration_token(&me, &token).await?;
    Ok(axum::Json(json!({})))
}

async fn nonce(State(hs): State<AppState>) -> Result<axum::Json<Value>, MatrixError> {
    Ok(axum::Json(json!({"nonce": hs.registration_nonce().await?})))
}

#[derive(Deserialize)]
struct SharedSecretBody {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
    mac: String,
    displayname: Option<String>,
    user_type: Option<Value>,
}

async fn register(
    State(hs): State<AppState>,
    JsonBody(b): JsonBody<SharedSecretBody>,
) -> Result<axum::Json<Value>, MatrixError> {
    let r = hs
        .register_with_shared_secret(
            &b.nonce,
            &b.username,
            &b.password,
            b.admin,
            &b.mac,
            b.displayname,
            b.user_type.as_ref(),
        )
        .await?;
    let mut out = r.login.map(|session| session.fields()).unwrap_or_default();
    out.insert("user_id".into(), json!(r.user_id));
    out.insert("home_server".into(), json!(hs.server_name()));
    Ok(axum::Json(Value::Object(out)))
}

async fn experimental_features(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.admin_experimental_features(&me, &user_id).await?))
}

async fn set_experimental_features(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Answer {
    hs.admin_set_experimental_features(&me, &user_id, &body).await?;
    Ok(axum::Json(json!({})))
}

async fn allow_master_key_replacement(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
) -> Answer {
    Ok(axum::Json(hs.admin_allow_master_key_replacement(&me, &user_id).await?))
}

async fn account_validity(State(hs): State<AppState>, Auth(me): Auth, JsonBody(body): JsonBody<Value>) -> Answer {
    Ok(axum::Json(hs.admin_account_validity(&me, &body).await?))
}

#[derive(Deserialize)]
struct ContextQuery {
    limit: Option<String>,
}

async fn room_context(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
    Query(q): Query<ContextQuery>,
) -> Answer {
    let limit = integer(q.limit, "limit")?.unwrap_or(10).max(0) as usize;
    Ok(axum::Json(hs.admin_room_context(&me, &room_id, &event_id, limit).await?))
}

async fn largest_rooms(State(hs): State<AppState>, Auth(me): Auth) -> Answer {
    Ok(axum::Json(hs.admin_largest_rooms(&me).await?))
}

#[derive(Deserialize)]
struct PurgeCacheQuery {
    before_ts: Option<String>,
}

async fn purge_media_cache(State(hs): State<AppState>, Auth(me): Auth, Query(q): Query<PurgeCacheQuery>) -> Answer {
    Ok(axum::Json(hs.admin_purge_media_cache(&me, integer(q.before_ts, "before_ts")?).await?))
}

#[derive(Deserialize)]
struct QuarantineChangesQuery {
    from: Option<String>,
}

async fn quarantine_changes(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<QuarantineChangesQuery>,
) -> Answer {
    Ok(axum::Json(hs.admin_quarantine_changes(&me, integer(q.from, "from")?).await?))
}
