//! Extractors that own their rejections, so every bad request gets a Matrix error.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use bytes::Bytes;
use myelin_core::{ErrorKind, RequestInfo, Requester};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::AppState;
use crate::error::MatrixError;

/// A JSON body: 400 `M_NOT_JSON` if it is not JSON, 400 `M_BAD_JSON` if it has the wrong
/// shape, 413 `M_TOO_LARGE` over the body limit.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = MatrixError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req.into_body(), state.config.max_upload_size as usize).await?;
        let value = parse_json(if bytes.is_empty() { b"{}" } else { &bytes })?;
        if !value.is_object() {
            return Err(MatrixError::new(ErrorKind::NotJson, "Content must be a JSON object."));
        }
        serde_json::from_value(value)
            .map(JsonBody)
            .map_err(|e| MatrixError::new(ErrorKind::BadJson, format!("Invalid request body: {e}")))
    }
}

/// How deeply a request's JSON may nest. Deeper is 400 `M_BAD_JSON` at any depth (serde's
/// own limit, 128, would otherwise let a body through that fails again, with a 500, once it is
/// wrapped in an event).
pub const MAX_JSON_DEPTH: usize = 100;

/// How many JSON values (counted by their separators) a request body may hold: each costs a
/// parsed `Value` of 32 bytes and more, so a body of small values (`[0,0,0,...]`) would
/// otherwise take many times its own size in memory.
pub const MAX_JSON_VALUES: usize = 1_000_000;

/// Parses a request body as JSON, refusing (before allocating anything) nesting deeper than
/// [`MAX_JSON_DEPTH`] and more than [`MAX_JSON_VALUES`] values with 400 `M_BAD_JSON`; not JSON
/// is 400 `M_NOT_JSON`.
pub fn parse_json(bytes: &[u8]) -> Result<Value, MatrixError> {
    let (mut depth, mut values, mut in_string, mut escaped) = (0usize, 1usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                values += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(MatrixError::new(
                        ErrorKind::BadJson,
                        format!("Content nests deeper than {MAX_JSON_DEPTH} levels"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' => {
                values += 1;
                if values > MAX_JSON_VALUES {
                    return Err(MatrixError::new(
                        ErrorKind::BadJson,
                        format!("Content holds more than {MAX_JSON_VALUES} JSON values"),
                    ));
                }
            }
            _ => {}
        }
    }
    serde_json::from_slice(bytes).map_err(|_| MatrixError::new(ErrorKind::NotJson, "Content not JSON."))
}

/// How much of an oversized body is read and thrown away before answering 413, and for how
/// long. Answering while the client is still sending makes the kernel reset the connection, and
/// the client then sees the reset instead of the 413 (nginx's "lingering close" does the same).
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// A body's time budget: this, plus its length at [`SLOWEST_BODY_RATE`].
const BODY_TIME_BASE: std::time::Duration = std::time::Duration::from_secs(60);

/// The slowest transfer a body's budget allows for, in bytes per second (a poor mobile link).
const SLOWEST_BODY_RATE: u64 = 8 * 1024;

/// The most any body gets, however long it says it is.
const BODY_TIME_CAP: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a body may send nothing at all before it is given up on.
const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a body of `length` bytes may take to arrive.
fn body_time_budget(length: u64) -> std::time::Duration {
    (BODY_TIME_BASE + std::time::Duration::from_secs(length / SLOWEST_BODY_RATE)).min(BODY_TIME_CAP)
}

/// Reads a body of at most `limit` bytes; a longer one is drained, then refused with 413. A
/// body gets time in proportion to its length (`Content-Length`, else `limit`; at most five
/// minutes) and may not pause for more than 30 s; one that takes longer is refused with 408
/// rather than cut and parsed half-read.
pub async fn read_body(body: axum::body::Body, limit: usize) -> Result<Bytes, MatrixError> {
    use axum::body::HttpBody as _;
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut too_large = false;
    let mut seen = 0usize;
    let expected = body.size_hint().exact().unwrap_or(limit as u64).min(limit as u64);
    let mut deadline = tokio::time::Instant::now() + body_time_budget(expected);
    loop {
        let wait = deadline.min(tokio::time::Instant::now() + BODY_IDLE);
        let frame = match tokio::time::timeout_at(wait, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(_))) => return Err(MatrixError::new(ErrorKind::NotJson, "Could not read the request body")),
            Ok(None) => break,
            Err(_) if too_large => break,
            Err(_) => {
                return Err(MatrixError::new(
                    ErrorKind::Module { status: 408, errcode: "M_UNKNOWN".into() },
                    "The request body did not arrive in time",
                ));
            }
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > limit {
                if !too_large {
                    // What is left is only drained, briefly.
                    deadline = deadline.min(tokio::time::Instant::now() + DRAIN_TIME);
                }
                too_large = true;
                buf.clear();
                if seen > DRAIN_LIMIT {
                    break;
                }
            } else {
                buf.extend_from_slice(&data);
            }
        }
    }
    if too_large {
        return Err(MatrixError::new(ErrorKind::TooLarge, "Request body too large"));
    }
    Ok(buf.freeze())
}

/// Reads and discards what is left of a refused body (bounded by size and time).
pub async fn drain(body: axum::body::Body) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
        seen += frame.data_ref().map(|d| d.len()).unwrap_or(0);
        if seen > DRAIN_LIMIT {
            break;
        }
    }
}

/// The caller's user agent and address.
pub struct ClientInfo(pub RequestInfo);

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientInfo(request_info(parts)))
    }
}

fn request_info(parts: &Parts) -> RequestInfo {
    let user_agent =
        parts.headers.get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string()).unwrap_or_default();
    // An appservice's masquerading parameters (read only when the token is an appservice's).
    let query = |name: &str| {
        parts.uri.query().and_then(|q| {
            q.split('&')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| myelin_core::federation::percent_decode(&v.replace('+', " ")))
        })
    };
    RequestInfo {
        user_agent,
        ip,
        as_user_id: query("user_id"),
        as_device_id: query("device_id").or_else(|| query("org.matrix.msc3202.device_id")),
        as_ts: query("ts").and_then(|t| t.parse().ok()),
    }
}

/// The access token from `Authorization: Bearer` or the `access_token` query parameter; both
/// at once is 401 `M_MISSING_TOKEN`, as on Synapse (which of them to believe is ambiguous).
pub fn access_token(parts: &Parts) -> Result<Option<String>, MatrixError> {
    let from_query = parts
        .uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=").map(|t| t.to_owned())));
    if let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if from_query.is_some() {
            return Err(MatrixError::new(
                ErrorKind::MissingToken,
                "Mixing Authorization headers and access_token query parameters.",
            ));
        }
        return Ok(h.strip_prefix("Bearer ").map(|t| t.trim().to_owned()));
    }
    Ok(from_query)
}

/// An authenticated requester (401 `M_MISSING_TOKEN` / `M_UNKNOWN_TOKEN` otherwise). Guests
/// pass only on the endpoints Synapse opens to them ([`GUEST_ROUTES`]); elsewhere they get 403
/// `M_GUEST_ACCESS_FORBIDDEN`.
pub struct Auth(pub Requester);

impl FromRequestParts<AppState> for Auth {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = access_token(parts)?;
        let info = request_info(parts);
        let requester = state.authenticate(token.as_deref(), &info, false).await?;
        record_requester(&requester);
        if requester.is_guest && !guest_may_call(parts) {
            return Err(MatrixError::new(
                ErrorKind::Module { status: 403, errcode: "M_GUEST_ACCESS_FORBIDDEN".into() },
                "Guest access not allowed",
            ));
        }
        Ok(Auth(requester))
    }
}

/// The Client-Server endpoints a guest may call, as `(method, route after the version
/// prefix)`: Synapse's `allow_guest=True` servlets. Room membership is further limited to
/// joining and leaving (in core).
const GUEST_ROUTES: &[(&str, &str)] = &[
    ("GET", "/account/whoami"),
    ("GET", "/capabilities"),
    ("GET", "/devices"),
    ("GET", "/devices/{device_id}"),
    ("PUT", "/devices/{device_id}"),
    ("POST", "/keys/upload"),
    ("POST", "/keys/query"),
    ("POST", "/keys/claim"),
    ("POST", "/keys/signatures/upload"),
    ("GET", "/keys/changes"),
    ("GET", "/profile/{user_id}"),
    ("GET", "/profile/{user_id}/{field}"),
    ("GET", "/rooms/{room_id}/relations/{event_id}"),
    ("GET", "/rooms/{room_id}/relations/{event_id}/{rel_type}"),
    ("GET", "/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}"),
    ("GET", "/rooms/{room_id}/state/{event_type}"),
    ("GET", "/rooms/{room_id}/state/{event_type}/"),
    ("GET", "/rooms/{room_id}/state/{event_type}/{state_key}"),
    ("PUT", "/rooms/{room_id}/state/{event_type}"),
    ("PUT", "/rooms/{room_id}/state/{event_type}/"),
    ("PUT", "/rooms/{room_id}/state/{event_type}/{state_key}"),
    ("PUT", "/rooms/{room_id}/send/{event_type}/{txn_id}"),
    ("POST", "/join/{room}"),
    ("POST", "/rooms/{room_id}/join"),
    ("POST", "/rooms/{room_id}/{action}"),
    ("GET", "/publicRooms"),
    ("POST", "/publicRooms"),
    ("GET", "/rooms/{room_id}/members"),
    ("GET", "/rooms/{room_id}/messages"),
    ("GET", "/rooms/{room_id}/state"),
    ("GET", "/rooms/{room_id}/initialSync"),
    ("GET", "/rooms/{room_id}/event/{event_id}"),
    ("GET", "/rooms/{room_id}/context/{event_id}"),
    ("GET", "/joined_rooms"),
    ("PUT", "/sendToDevice/{event_type}/{txn_id}"),
    ("GET", "/sync"),
    ("GET", "/events"),
    ("GET", "/thirdparty/protocols"),
    ("GET", "/download/{server}/{media_id}"),
    ("GET", "/download/{server}/{media_id}/{file_name}"),
    ("GET", "/thumbnail/{server}/{media_id}"),
];

/// Whether this request's route is open to guests.
fn guest_may_call(parts: &Parts) -> bool {
    let Some(route) = parts.extensions.get::<axum::extract::MatchedPath>() else { return false };
    let route = route.as_str();
    let Some(rest) = ["/_matrix/client/v3", "/_matrix/client/r0", "/_matrix/client/v1/media", "/_matrix/client/v1"]
        .iter()
        .find_map(|prefix| route.strip_prefix(prefix))
    else {
        return false;
    };
    // A guest may set (or unset) their display name and nothing else of their profile (Synapse).
    if (parts.method == http::Method::PUT || parts.method == http::Method::DELETE)
        && rest == "/profile/{user_id}/{field}"
    {
        return parts.uri.path().ends_with("/displayname");
    }
    GUEST_ROUTES.iter().any(|(method, path)| *method == parts.method.as_str() && *path == rest)
}

/// The requester when the request carries a token (which must then be valid), else `None`.
pub struct OptionalAuth(pub Option<Requester>);

impl FromRequestParts<AppState> for OptionalAuth {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match access_token(parts)? {
            None => Ok(OptionalAuth(None)),
            Some(_) => Auth::from_request_parts(parts, state).await.map(|Auth(r)| OptionalAuth(Some(r))),
        }
    }
}

/// Like [`Auth`], but an expired account still passes (for logout, as in Synapse).
pub struct AuthAllowExpired(pub Requester);

impl FromRequestParts<AppState> for AuthAllowExpired {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = access_token(parts)?;
        let info = request_info(parts);
        let requester = state.authenticate(token.as_deref(), &info, true).await?;
        record_requester(&requester);
        Ok(AuthAllowExpired(requester))
    }
}

/// Names the requester in the request's span.
fn record_requester(requester: &Requester) {
    let span = tracing::Span::current();
    span.record("user", requester.user_id.as_str());
    span.record("device", requester.device_id.as_str());
}

/// Query parameters, with malformed ones as 400 `M_INVALID_PARAM`.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state).await.map(|q| Query(q.0)).map_err(|e| {
            MatrixError::new(ErrorKind::InvalidParam, format!("Invalid query parameter: {}", e.body_text()))
        })
    }
}

/// Path parameters, with malformed ones as 400 `M_INVALID_PARAM`.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| MatrixError::new(ErrorKind::InvalidParam, format!("Invalid path: {}", e.body_text())))
    }
}
