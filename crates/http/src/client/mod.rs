//! Client-Server API handlers (https://spec.matrix.org/latest/client-server-api/).
//!
//! Each handler extracts, makes one `Homeserver` call and serialises. Served under both
//! `/_matrix/client/v3` and the legacy `/_matrix/client/r0`.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post, put};
use myelin_core::{ErrorKind, LoginRequest, RegisterRequest, RoomListScope, SyncRequest};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::MatrixError;
use crate::extract::{Auth, AuthAllowExpired, ClientInfo, JsonBody, OptionalAuth, Path, Query, access_token};

mod account_data;
mod accounts;
mod directory;
mod rooms;
mod sso;
mod threepids;

pub(crate) use rooms::{admin_hierarchy, admin_messages, admin_timestamp_to_event};
mod sync;

type Json = axum::Json<Value>;
type Answer = Result<Json, MatrixError>;

pub(crate) fn router() -> Router<AppState> {
    let api = Router::new()
        .merge(accounts::routes())
        .merge(rooms::routes())
        .merge(sync::routes())
        .merge(account_data::routes())
        .merge(directory::routes())
        .merge(threepids::routes())
        .merge(sso::routes())
        .route("/capabilities", get(capabilities))
        .route("/voip/turnServer", get(turn_server))
        .route("/thirdparty/protocols", get(thirdparty_protocols))
        .route("/rooms/{room_id}/report/{event_id}", post(report_event))
        .route("/rooms/{room_id}/report", post(report_room))
        .route("/users/{user_id}/report", post(report_user))
        .route("/admin/whois/{user_id}", get(crate::admin::whois))
        .route("/thirdparty/protocol/{protocol}", get(thirdparty_protocol))
        .route("/thirdparty/user", get(thirdparty_lookup))
        .route("/thirdparty/user/{protocol}", get(thirdparty_query))
        .route("/thirdparty/location", get(thirdparty_lookup))
        .route("/thirdparty/location/{protocol}", get(thirdparty_query))
        .merge(crate::keys::routes())
        .merge(crate::ephemeral::routes())
        .merge(crate::push::routes());
    Router::new()
        .merge(threepids::page_routes())
        .merge(sso::page_routes())
        .route("/_matrix/client/versions", get(versions))
        .route("/_matrix/client/v1/register/m.login.registration_token/validity", get(accounts::token_validity))
        .route("/_matrix/client/v1/appservice/{appservice_id}/ping", post(appservice_ping))
        .route("/_matrix/client/v1/login/get_token", post(accounts::login_get_token))
        .route("/_matrix/client/unstable/org.matrix.msc3882/login/token", post(accounts::login_get_token))
        .nest("/_matrix/client/v1", rooms::v1_routes())
        .merge(rooms::unstable_hierarchy_routes())
        // Synapse serves its client API under `unstable` too; older clients and sytest use it.
        .nest("/_matrix/client/unstable", api.clone().merge(sync::sliding_sync_routes()))
        .route("/_matrix/client/v1/room_summary/{room}", get(room_summary))
        .route("/_matrix/client/unstable/im.nheko.summary/summary/{room}", get(room_summary))
        .route("/_matrix/client/unstable/im.nheko.summary/rooms/{room}/summary", get(room_summary))
        .nest("/_matrix/client/v3", api.clone())
        .nest("/_matrix/client/r0", api)
}

/// MSC3266 room summary (stable and unstable paths, as Synapse serves them).
async fn room_summary(State(hs): State<AppState>, OptionalAuth(me): OptionalAuth, Path(room): Path<String>) -> Answer {
    Ok(axum::Json(hs.room_summary_for(me.as_ref(), &room).await?))
}

async fn versions() -> Json {
    axum::Json(json!({
        "versions": ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11"],
        "unstable_features": {"org.matrix.simplified_msc3575": true}
    }))
}

async fn capabilities(State(hs): State<AppState>, Auth(_me): Auth) -> Json {
    let available: Map<String, Value> =
        myelin_core::config::SUPPORTED_ROOM_VERSIONS.iter().map(|v| (v.to_string(), json!("stable"))).collect();
    axum::Json(json!({"capabilities": {
        "m.change_password": {"enabled": true},
        "m.room_versions": {"default": hs.config.default_room_version, "available": available},
        "m.set_displayname": {"enabled": true},
        "m.set_avatar_url": {"enabled": true},
        "m.3pid_changes": {"enabled": hs.config.threepids.enable_3pid_changes},
        "m.get_login_token": {"enabled": hs.config.login_via_existing.enabled},
        "m.profile_fields": {"enabled": true},
    }}))
}

/// No TURN server is configured: Synapse answers `{}` then, and clients fall back to STUN.
async fn turn_server(Auth(_me): Auth) -> Json {
    axum::Json(json!({}))
}

/// The third-party protocols the appservices bridge (`{}` without any).
async fn thirdparty_protocols(State(hs): State<AppState>, Auth(_me): Auth) -> Answer {
    Ok(axum::Json(Value::Object(hs.thirdparty_protocols(None).await?)))
}

async fn thirdparty_protocol(State(hs): State<AppState>, Auth(_me): Auth, Path(protocol): Path<String>) -> Answer {
    match hs.thirdparty_protocols(Some(&protocol)).await?.remove(&protocol) {
        Some(info) => Ok(axum::Json(info)),
        None => Err(MatrixError::new(ErrorKind::NotFound, "Unknown protocol")),
    }
}

/// Every value of the query parameters named `keys`, decoded, in order: for parameters that
/// may repeat (`via`), or whose repetition is an error, which typed query parsing cannot tell.
fn query_values(query: Option<&str>, keys: &[&str]) -> Vec<String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| keys.contains(k))
        .map(|(_, v)| myelin_core::federation::percent_decode(v))
        .collect()
}

/// The query's fields, without `access_token` (passed on to the appservices as they are).
fn thirdparty_fields(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k != "access_token")
        .map(|(k, v)| (myelin_core::federation::percent_decode(k), myelin_core::federation::percent_decode(v)))
        .collect()
}

/// `GET /thirdparty/{user|location}/{protocol}`: the appservices' matches.
async fn thirdparty_query(
    State(hs): State<AppState>,
    Auth(_me): Auth,
    uri: axum::http::Uri,
    Path(protocol): Path<String>,
) -> Answer {
    let kind = if uri.path().contains("/thirdparty/user/") { "user" } else { "location" };
    let found = hs.thirdparty_query(kind, Some(&protocol), &thirdparty_fields(uri.query())).await?;
    Ok(axum::Json(json!(found)))
}

/// `GET /thirdparty/{user|location}` without a protocol: as on Synapse, no appservice is asked.
async fn thirdparty_lookup(State(hs): State<AppState>, Auth(_me): Auth, uri: axum::http::Uri) -> Answer {
    let kind = if uri.path().ends_with("/user") { "user" } else { "location" };
    Ok(axum::Json(json!(hs.thirdparty_query(kind, None, &thirdparty_fields(uri.query())).await?)))
}

/// `POST /rooms/{roomId}/report/{eventId}`.
async fn report_event(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    hs.report_event(&me, &room_id, &event_id, body).await?;
    Ok(axum::Json(json!({})))
}

/// A report's required `reason` (Synapse validates the body strictly: 400 `M_BAD_JSON`).
fn report_reason(body: &Map<String, Value>) -> Result<String, MatrixError> {
    match body.get("reason") {
        Some(Value::String(r)) => Ok(r.clone()),
        _ => Err(MatrixError::new(ErrorKind::BadJson, "'reason' must be a string")),
    }
}

/// `POST /rooms/{roomId}/report`.
async fn report_room(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    hs.report_room(&me, &room_id, &report_reason(&body)?).await?;
    Ok(axum::Json(json!({})))
}

/// `POST /users/{userId}/report`.
async fn report_user(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    hs.report_user(&me, &user_id, &report_reason(&body)?).await?;
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PingBody {
    transaction_id: Option<String>,
}

/// `POST /_matrix/client/v1/appservice/{appserviceId}/ping`.
async fn appservice_ping(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PingBody>,
) -> Answer {
    Ok(axum::Json(hs.ping_appservice(&me, &id, body.transaction_id.as_deref()).await?))
}
