//! [`MatrixError`]: the one place a failure becomes an HTTP response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use myelin_core::{Error, ErrorKind};
use serde_json::{Map, Value, json};

/// A Matrix error response: `{"errcode", "error", ...fields}` with its status.
#[derive(Debug)]
pub struct MatrixError(pub Error);

impl MatrixError {
    /// An error with an explicit kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        MatrixError(Error::new(kind, message))
    }
}

impl From<Error> for MatrixError {
    fn from(e: Error) -> Self {
        MatrixError(e)
    }
}

/// The status for each kind; see [`ErrorKind`]'s variant docs.
pub fn status_of(kind: &ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Forbidden | ErrorKind::Denied(_) | ErrorKind::UserDeactivated => StatusCode::FORBIDDEN,
        ErrorKind::NotFound | ErrorKind::Unrecognized => StatusCode::NOT_FOUND,
        ErrorKind::BadJson
        | ErrorKind::NotJson
        | ErrorKind::InvalidParam
        | ErrorKind::MissingParam
        | ErrorKind::InvalidUsername
        | ErrorKind::UserInUse
        | ErrorKind::RoomInUse
        | ErrorKind::UnsupportedRoomVersion
        | ErrorKind::BadContent
        | ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::MissingToken
        | ErrorKind::UnknownToken
        | ErrorKind::Unauthorized
        | ErrorKind::UserInteractiveAuth => StatusCode::UNAUTHORIZED,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::LimitExceeded | ErrorKind::RegistrationDenied => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Module { status, .. } => StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for MatrixError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = status_of(&e.kind);
        // The one place a server error is logged: here it has its request's span.
        if status.is_server_error() {
            match &e.cause {
                Some(cause) => tracing::error!(errcode = e.errcode(), %cause, "{}", e.message),
                None => tracing::error!(errcode = e.errcode(), "{}", e.message),
            }
        }
        // As Synapse: a rate-limit answer says when to retry in a header too, in whole seconds.
        let retry_after = match (&e.kind, e.fields.get("retry_after_ms").and_then(Value::as_u64)) {
            (ErrorKind::LimitExceeded, Some(ms)) => Some(ms.div_ceil(1000).to_string()),
            _ => None,
        };
        let body = if e.kind == ErrorKind::UserInteractiveAuth {
            // A UIA challenge is the flows object; a failed stage adds errcode and error.
            let mut body = e.fields;
            if body.contains_key("errcode") {
                body.insert("error".into(), json!(e.message));
            }
            body
        } else {
            let mut body = Map::new();
            body.insert("errcode".into(), Value::String(e.errcode().to_owned()));
            body.insert("error".into(), Value::String(e.message));
            // As Synapse's `cs_error`: extra fields are written last and win, `error` included.
            for (k, v) in e.fields {
                body.insert(k, v);
            }
            body
        };
        let mut response = (status, axum::Json(Value::Object(body))).into_response();
        if let Some(seconds) = retry_after.and_then(|s| axum::http::HeaderValue::from_str(&s).ok()) {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds);
        }
        response
    }
}

/// 404 `M_UNRECOGNIZED` for unknown endpoints.
pub async fn unrecognized() -> MatrixError {
    MatrixError::new(ErrorKind::Unrecognized, "Unrecognized request")
}

/// 405 `M_UNRECOGNIZED` for a known path with the wrong method.
pub async fn method_not_allowed() -> Response {
    let mut r = MatrixError::new(ErrorKind::Unrecognized, "Unrecognized request").into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}
