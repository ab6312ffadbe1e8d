//! The Server-Server API: this server's keys and version, and the authenticated endpoints
//! other servers call (transactions, joins, events). Mounted on listeners whose resources name
//! `federation` (or `keys`, for the key endpoints alone), as on Synapse.
//!
//! Every endpoint but the key and version ones takes [`Signed`], which checks the request's
//! `X-Matrix` signature (fetching the origin's keys as needed) before the handler runs.

use axum::Router;
use axum::extract::{FromRequest, Request, State};
use axum::routing::{get, post, put};
use serde_json::Value;

use crate::AppState;
use crate::error::MatrixError;
use crate::extract::{JsonBody, Path};
use myelin_core::ErrorKind;

pub(crate) fn routes(resources: &[String]) -> Router<AppState> {
    let has = |name: &str| resources.iter().any(|r| r == name);
    let mut app = Router::new();
    if has("federation") || has("keys") {
        app = app
            .route("/_matrix/key/v2/server", get(server_keys))
            // The deprecated form naming one key, which Synapse still answers (with every key)
            // and older servers and sytest's fake servers still use.
            .route("/_matrix/key/v2/server/{key_id}", get(server_keys))
            .route("/_matrix/key/v2/query", post(query_keys))
            .route("/_matrix/key/v2/query/{server_name}", get(query_server_keys))
            .route("/_matrix/key/v2/query/{server_name}/{key_id}", get(query_server_keys_deprecated));
    }
    if has("federation") {
        app = app
            .route("/_matrix/federation/v1/version", get(version))
            .route("/_matrix/federation/v1/openid/userinfo", get(openid_userinfo))
            .route("/_matrix/federation/v1/3pid/onbind", post(threepid_onbind))
            .route("/_matrix/federation/v1/send/{txn_id}", put(send_transaction))
            .route("/_matrix/federation/v1/make_join/{room_id}/{user_id}", get(make_join))
            .route("/_matrix/federation/v2/send_join/{room_id}/{event_id}", put(send_join))
            .route("/_matrix/federation/v1/make_leave/{room_id}/{user_id}", get(make_leave))
            .route("/_matrix/federation/v2/send_leave/{room_id}/{event_id}", put(send_leave))
            .route("/_matrix/federation/v2/invite/{room_id}/{event_id}", put(invite))
            // The v1 forms, still served by Synapse: the event alone in, `[200, answer]` out.
            .route("/_matrix/federation/v1/send_join/{room_id}/{event_id}", put(send_join_v1))
            .route("/_matrix/federation/v1/send_leave/{room_id}/{event_id}", put(send_leave_v1))
            .route("/_matrix/federation/v1/invite/{room_id}/{event_id}", put(invite_v1))
            .route("/_matrix/federation/v1/event_auth/{room_id}/{event_id}", get(event_auth))
            .route("/_matrix/federation/v1/event/{event_id}", get(event))
            .route("/_matrix/federation/v1/query/profile", get(query_profile))
            .route("/_matrix/federation/v1/query/directory", get(query_directory))
            .route("/_matrix/federation/v1/user/devices/{user_id}", get(user_devices))
            .route("/_matrix/federation/v1/user/keys/query", post(keys_query))
            .route("/_matrix/federation/v1/user/keys/claim", post(keys_claim))
            .route("/_matrix/federation/v1/state_ids/{room_id}", get(state_ids))
            .route("/_matrix/federation/v1/hierarchy/{room_id}", get(hierarchy))
            .route("/_matrix/federation/v1/state/{room_id}", get(state))
            .route("/_matrix/federation/v1/backfill/{room_id}", get(backfill))
            .route("/_matrix/federation/v1/get_missing_events/{room_id}", post(missing_events))
            .route("/_matrix/federation/v1/publicRooms", get(public_rooms).post(public_rooms));
    }
    // As Synapse: a `media` listener serves the federation media endpoints too.
    if has("federation") || has("media") {
        app = app
            .route("/_matrix/federation/v1/media/download/{media_id}", get(media_download))
            .route("/_matrix/federation/v1/media/thumbnail/{media_id}", get(media_thumbnail));
    }
    app
}

/// An authenticated server-server request: the origin, the JSON body if any, and the query.
pub(crate) struct Signed {
    origin: String,
    body: Option<Value>,
    query: Option<String>,
    /// The origin's `rc_federation` slot, held until the handler is done.
    _slot: myelin_core::ratelimit::FederationSlot,
}

impl FromRequest<AppState> for Signed {
    type Rejection = MatrixError;

    async fn from_request(request: Request, hs: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let bytes = crate::extract::read_body(body, hs.config.max_upload_size as usize).await?;
        let content = if bytes.is_empty() { None } else { Some(crate::extract::parse_json(&bytes)?) };
        let authorization = parts.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let uri = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or_else(|| parts.uri.path());
        let origin = hs.authenticate_request(authorization, parts.method.as_str(), uri, content.as_ref()).await?;
        tracing::Span::current().record("origin", origin.as_str());
        let slot = hs.admit_federation_request(&origin).await?;
        Ok(Signed { origin, body: content, query: parts.uri.query().map(str::to_owned), _slot: slot })
    }
}

impl Signed {
    fn body(&self) -> Result<&Value, MatrixError> {
        match &self.body {
            Some(b @ Value::Object(_)) => Ok(b),
            _ => Err(MatrixError::new(ErrorKind::NotJson, "Content must be a JSON object.")),
        }
    }

    /// Every value of a query parameter.
    fn query_all(&self, key: &str) -> Vec<String> {
        self.query
            .as_deref()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.replace("%2E", ".").replace("%2e", "."))
            .collect()
    }
}

type Answer = Result<axum::Json<Value>, MatrixError>;

async fn server_keys(State(hs): State<AppState>) -> Answer {
    Ok(axum::Json(hs.server_keys()?))
}

async fn query_keys(State(hs): State<AppState>, JsonBody(body): JsonBody<Value>) -> Answer {
    Ok(axum::Json(hs.query_server_keys(&body).await?))
}

/// The deprecated GET form naming a key: answered as the form without one.
async fn query_server_keys_deprecated(
    hs: State<AppState>,
    Path((server_name, _key_id)): Path<(String, String)>,
) -> Answer {
    query_server_keys(hs, Path(server_name)).await
}

/// The GET form asks for all of one server's keys, valid now.
async fn query_server_keys(State(hs): State<AppState>, Path(server_name): Path<String>) -> Answer {
    let body = serde_json::json!({"server_keys": {server_name: {}}});
    Ok(axum::Json(hs.query_server_keys(&body).await?))
}

async fn version() -> axum::Json<Value> {
    axum::Json(myelin_core::federation::version())
}

/// `POST /_matrix/federation/v1/3pid/onbind`: an identity server's call once a third-party
/// identifier with stored invites is bound. Unsigned, as on Synapse: the invites carry the
/// identity server's signatures, which the room's rules check.
async fn threepid_onbind(State(hs): State<AppState>, JsonBody(body): JsonBody<Value>) -> Answer {
    hs.third_party_identifier_bound(&body).await?;
    Ok(axum::Json(serde_json::json!({})))
}

/// `GET /_matrix/federation/v1/openid/userinfo?access_token=`: who an OpenID token stands for.
/// The token is the credential, so no `X-Matrix` signature is asked for (as the spec says).
async fn openid_userinfo(State(hs): State<AppState>, uri: axum::http::Uri) -> Answer {
    let token = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token="))
        .map(percent_decoded)
        .unwrap_or_default();
    match hs.openid_user(&token).await? {
        Some(user) => Ok(axum::Json(serde_json::json!({"sub": user}))),
        None => {
            Err(MatrixError::from(myelin_core::Error::new(ErrorKind::UnknownToken, "Access Token unknown or expired")))
        }
    }
}

async fn send_transaction(State(hs): State<AppState>, Path(txn_id): Path<String>, request: Signed) -> Answer {
    Ok(axum::Json(hs.receive_transaction(&request.origin, &txn_id, request.body()?).await?))
}

async fn make_join(
    State(hs): State<AppState>,
    Path((room_id, user_id)): Path<(String, String)>,
    request: Signed,
) -> Answer {
    let versions = request.query_all("ver");
    Ok(axum::Json(hs.make_join(&request.origin, &room_id, &user_id, &versions).await?))
}

async fn send_join(
    State(hs): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    request: Signed,
) -> Answer {
    Ok(axum::Json(hs.send_join(&request.origin, &room_id, &event_id, request.body()?).await?))
}

/// The v1 APIs' answer: `[200, answer]` (a historical quirk the spec keeps).
fn v1_answer(answer: Value) -> Answer {
    Ok(axum::Json(serde_json::json!([200, answer])))
}

async fn send_join_v1(
    State(hs): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    request: Signed,
) -> Answer {
    v1_answer(hs.send_join(&request.origin, &room_id, &event_id, request.body()?).await?)
}

async fn send_leave_v1(
    State(hs): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    request: Signed,
) -> Answer {
    v1_answer(hs.send_leave(&request.origin, &room_id, &event_id, request.body()?).await?)
}

/// v1 invites carry no room version: as Synapse, version 1 is assumed (versions 1 and 2 differ
/// only in state resolution, which an invite does not use); the stripped state is in the
/// event's `unsigned`.
async fn invite_v1(
    State(hs): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    request: Signed,
) -> Answer {
    let event = request.body()?;
    let body = serde_json::json!({
        "event": event,
        "room_version": "1",
        "invite_room_state": event["unsigned"]["invite_room_state"].as_array().cloned().unwrap_or_default(),
    });
    v1_answer(hs.receive_invite(&request.origin, &room_id, &event_id, &body).await?)
}

async fn event_auth(
    State(hs): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    request: Signed,
) -> Answer {
    Ok(axum::Json(hs.federation_event_auth(&request.origin, &room_id, &event_id).await?))
}

async fn event(State(hs): State<AppState>, Path(event_id): Path<String>, request: Signed) -> Answer {
    Ok(axum::Json(hs.federation_event(&request.origin, &event_id).await?))
}

async fn make_leave(
    State(hs): State<AppState>,
    Path((room_id, user_id)): Path<(String, String)>,
    request: Signed,
) -> Answer {
    Ok(axum::Json(hs.make_leave(&request.origin, &room_id, &user_id).await?))
}

async fn send_leave(
    State(hs): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    request: Signed,
) -> Answer {
    Ok(axum::Json(hs.send_leave(&request.origin, &room_id, &event_id, request.body()?).await?))
}

async fn invite(
    State(hs): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    request: Signed,
) -> Answer {
    Ok(axum::Json(hs.receive_invite(&request.origin, &room_id, &event_id, request.body()?).await?))
}

async fn query_profile(State(hs): State<AppState>, request: Signed) -> Answer {
    Ok(axum::Json(hs.federation_profile(request.query.as_deref().unwrap_or_default()).await?))
}

async fn query_directory(State(hs): State<AppState>, request: Signed) -> Answer {
    Ok(axum::Json(hs.federation_directory(request.query.as_deref().unwrap_or_default()).await?))
}

async fn user_devices(State(hs): State<AppState>, Path(user_id): Path<String>, _request: Signed) -> Answer {
    Ok(axum::Json(hs.federation_user_devices(&user_id).await?))
}

async fn keys_query(State(hs): State<AppState>, request: Signed) -> Answer {
    Ok(axum::Json(hs.federation_keys_query(request.body()?).await?))
}

async fn keys_claim(State(hs): State<AppState>, request: Signed) -> Answer {
    Ok(axum::Json(hs.federation_keys_claim(request.body()?).await?))
}

async fn media_download(
    State(hs): State<AppState>,
    Path(media_id): Path<String>,
    _request: Signed,
) -> Result<axum::response::Response, MatrixError> {
    multipart(hs.federation_media(&media_id).await?).await
}

async fn media_thumbnail(
    State(hs): State<AppState>,
    Path(media_id): Path<String>,
    request: Signed,
) -> Result<axum::response::Response, MatrixError> {
    let param = |k: &str| request.query_all(k).into_iter().next();
    let dim = |k: &str| -> Result<u32, MatrixError> {
        param(k)
            .ok_or_else(|| MatrixError::new(ErrorKind::MissingParam, "width and height are required"))?
            .parse::<u32>()
            .map_err(|_| MatrixError::new(ErrorKind::InvalidParam, "width and height must be integers"))
    };
    let (w, h) = (dim("width")?, dim("height")?);
    let method = param("method").unwrap_or_else(|| "scale".into());
    let server = hs.server_name().to_owned();
    multipart(hs.thumbnail(&server, &media_id, w, h, &method).await?).await
}

/// The federation media answer: `multipart/mixed` with the (empty) metadata object first and
/// the file second, streamed from disk.
async fn multipart(media: myelin_core::media::StoredMedia) -> Result<axum::response::Response, MatrixError> {
    use futures::StreamExt;
    let file =
        tokio::fs::File::open(&media.path).await.map_err(|_| MatrixError::new(ErrorKind::NotFound, "Not found"))?;
    let boundary: String = format!("myelin{:016x}", rand_u64());
    let head = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\nContent-Type: {}\r\n\r\n",
        media.content_type
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(head))])
        .chain(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024))
        .chain(futures::stream::iter([Ok(bytes::Bytes::from(tail))]));
    let mut response = axum::response::IntoResponse::into_response(axum::body::Body::from_stream(body));
    if let Ok(v) = http::HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    Ok(response)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0),
    );
    h.finish()
}

impl Signed {
    fn required(&self, key: &str) -> Result<String, MatrixError> {
        self.query_all(key)
            .into_iter()
            .next()
            .map(|v| percent_decoded(&v))
            .ok_or_else(|| MatrixError::new(ErrorKind::MissingParam, format!("Missing {key}")))
    }
}

use myelin_core::federation::percent_decode as percent_decoded;

async fn state_ids(State(hs): State<AppState>, Path(room_id): Path<String>, request: Signed) -> Answer {
    let event = request.required("event_id")?;
    Ok(axum::Json(hs.federation_state_ids(&request.origin, &room_id, &event).await?))
}

/// `GET /_matrix/federation/v1/hierarchy/{roomId}?suggested_only=`.
async fn hierarchy(State(hs): State<AppState>, Path(room_id): Path<String>, request: Signed) -> Answer {
    let suggested_only = request.query_all("suggested_only").first().is_some_and(|v| v == "true");
    Ok(axum::Json(hs.federation_hierarchy(&request.origin, &room_id, suggested_only).await?))
}

async fn state(State(hs): State<AppState>, Path(room_id): Path<String>, request: Signed) -> Answer {
    let event = request.required("event_id")?;
    Ok(axum::Json(hs.federation_state(&request.origin, &room_id, &event).await?))
}

async fn backfill(State(hs): State<AppState>, Path(room_id): Path<String>, request: Signed) -> Answer {
    let from: Vec<String> = request.query_all("v").iter().map(|v| percent_decoded(v)).collect();
    if from.is_empty() {
        return Err(MatrixError::new(ErrorKind::MissingParam, "Missing v"));
    }
    let limit = request
        .required("limit")?
        .parse::<usize>()
        .map_err(|_| MatrixError::new(ErrorKind::InvalidParam, "limit must be an integer"))?;
    Ok(axum::Json(hs.federation_backfill(&request.origin, &room_id, &from, limit).await?))
}

async fn missing_events(State(hs): State<AppState>, Path(room_id): Path<String>, request: Signed) -> Answer {
    Ok(axum::Json(hs.federation_missing_events(&request.origin, &room_id, request.body()?).await?))
}

async fn public_rooms(State(hs): State<AppState>, request: Signed) -> Answer {
    let (limit, since, term) = match &request.body {
        Some(body) => (
            body["limit"].as_u64().map(|l| l as usize),
            body["since"].as_str().map(str::to_owned),
            body["filter"]["generic_search_term"].as_str().map(str::to_owned),
        ),
        None => (
            request.query_all("limit").first().and_then(|l| l.parse().ok()),
            request.query_all("since").first().map(|s| percent_decoded(s)),
            None,
        ),
    };
    Ok(axum::Json(hs.federation_public_rooms(limit, since.as_deref(), term.as_deref()).await?))
}
