//! Third-party identifiers: validation mails (`requestToken`), the pages their links open, and
//! the account's identifiers (`/account/3pid*`).

use axum::response::{Html, IntoResponse, Response};
use myelin_core::threepids::{SubmitOutcome, SubmitPage, TokenPurpose};

use super::*;

/// Under every client prefix.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/register/email/requestToken", post(register_email_token))
        .route("/account/password/email/requestToken", post(password_email_token))
        .route("/account/3pid/email/requestToken", post(add_email_token))
        .route("/register/msisdn/requestToken", post(register_msisdn_token))
        .route("/account/3pid/msisdn/requestToken", post(add_msisdn_token))
        .route("/account/3pid", get(threepids).post(add_threepid_legacy))
        .route("/account/3pid/add", post(add_threepid))
        .route("/account/3pid/delete", post(delete_threepid))
}

/// The pages validation links open: under `unstable` only, and `/_synapse/client`, as Synapse.
pub(super) fn page_routes() -> Router<AppState> {
    Router::new()
        .route("/_matrix/client/unstable/registration/{medium}/submit_token", get(registration_page))
        .route("/_matrix/client/unstable/add_threepid/email/submit_token", get(add_threepid_page))
        .route("/_matrix/client/unstable/add_threepid/msisdn/submit_token", post(add_msisdn_submit))
        .route(
            "/_synapse/client/password_reset/email/submit_token",
            get(password_reset_confirmation).post(password_reset_page),
        )
        .route("/_synapse/client/unsubscribe", get(unsubscribe).post(unsubscribe))
}

/// The unsubscribe link of a notification mail (a browser's GET, or a mail program's
/// one-click POST): removes the e-mail pusher.
async fn unsubscribe(State(hs): State<AppState>, Query(q): Query<Map<String, Value>>) -> Result<Response, MatrixError> {
    let param = |key: &str| {
        q.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| MatrixError::new(ErrorKind::MissingParam, format!("Missing string query parameter '{key}'")))
    };
    hs.unsubscribe_email(&param("access_token")?, &param("app_id")?, &param("pushkey")?).await?;
    Ok(Html("<html><body>You have been unsubscribed</body></html>").into_response())
}

async fn register_email_token(
    State(hs): State<AppState>,
    ClientInfo(info): ClientInfo,
    JsonBody(body): JsonBody<Value>,
) -> Answer {
    Ok(axum::Json(hs.request_email_token(TokenPurpose::Registration, &body, &info.ip).await?))
}

async fn password_email_token(
    State(hs): State<AppState>,
    ClientInfo(info): ClientInfo,
    JsonBody(body): JsonBody<Value>,
) -> Answer {
    Ok(axum::Json(hs.request_email_token(TokenPurpose::PasswordReset, &body, &info.ip).await?))
}

async fn add_email_token(
    State(hs): State<AppState>,
    ClientInfo(info): ClientInfo,
    JsonBody(body): JsonBody<Value>,
) -> Answer {
    Ok(axum::Json(hs.request_email_token(TokenPurpose::AddThreepid, &body, &info.ip).await?))
}

async fn register_msisdn_token(State(hs): State<AppState>, JsonBody(body): JsonBody<Value>) -> Answer {
    Ok(axum::Json(hs.request_msisdn_token(true, &body)?))
}

async fn add_msisdn_token(State(hs): State<AppState>, JsonBody(body): JsonBody<Value>) -> Answer {
    Ok(axum::Json(hs.request_msisdn_token(false, &body)?))
}

async fn threepids(State(hs): State<AppState>, Auth(me): Auth) -> Answer {
    Ok(axum::Json(hs.threepids(me.user_id.as_str()).await?))
}

#[derive(Deserialize)]
struct AddThreepidBody {
    auth: Option<Value>,
    client_secret: String,
    sid: String,
}

/// `POST /account/3pid/add`: UIA with the password, then the validated session's address.
async fn add_threepid(State(hs): State<AppState>, Auth(me): Auth, JsonBody(body): JsonBody<AddThreepidBody>) -> Answer {
    hs.add_threepid_with_auth(&me, body.auth.as_ref(), &body.client_secret, &body.sid).await?;
    Ok(axum::Json(json!({})))
}

/// The deprecated `POST /account/3pid` (`three_pid_creds`), without UIA, as Synapse still serves it.
async fn add_threepid_legacy(State(hs): State<AppState>, Auth(me): Auth, JsonBody(body): JsonBody<Value>) -> Answer {
    let Some(creds) = body.get("threePidCreds").or_else(|| body.get("three_pid_creds")).filter(|c| !c.is_null()) else {
        return Err(MatrixError::new(ErrorKind::MissingParam, "Missing param three_pid_creds"));
    };
    let (Some(secret), Some(sid)) = (creds["client_secret"].as_str(), creds["sid"].as_str()) else {
        return Err(MatrixError::new(ErrorKind::MissingParam, "Missing params: ['client_secret', 'sid']"));
    };
    hs.add_threepid_from_session(me.user_id.as_str(), secret, sid).await?;
    Ok(axum::Json(json!({})))
}

async fn delete_threepid(State(hs): State<AppState>, Auth(me): Auth, JsonBody(body): JsonBody<Value>) -> Answer {
    Ok(axum::Json(hs.delete_threepid(me.user_id.as_str(), &body).await?))
}

/// A validation link's outcome as an HTTP answer.
fn page(outcome: SubmitOutcome) -> Response {
    match outcome {
        // 302, as Synapse answers.
        SubmitOutcome::Redirect(to) => match axum::http::HeaderValue::from_str(&to) {
            Ok(location) => (axum::http::StatusCode::FOUND, [(axum::http::header::LOCATION, location)]).into_response(),
            // A next_link no header can carry (control characters): the address is validated
            // all the same; there is just nowhere to send the browser.
            Err(_) => (axum::http::StatusCode::OK, Html("Your e-mail address is confirmed.")).into_response(),
        },
        SubmitOutcome::Page(status, html) => {
            let status = axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
            (status, Html(html)).into_response()
        }
    }
}

async fn registration_page(
    State(hs): State<AppState>,
    Path(medium): Path<String>,
    Query(q): Query<Map<String, Value>>,
) -> Result<Response, MatrixError> {
    if medium != "email" {
        return Err(MatrixError::new(ErrorKind::BadRequest, "This medium is currently not supported for registration"));
    }
    Ok(page(hs.submit_email_token(SubmitPage::Registration, &q).await?))
}

async fn add_threepid_page(
    State(hs): State<AppState>,
    Query(q): Query<Map<String, Value>>,
) -> Result<Response, MatrixError> {
    Ok(page(hs.submit_email_token(SubmitPage::AddThreepid, &q).await?))
}

async fn add_msisdn_submit() -> Answer {
    Err(MatrixError::new(
        ErrorKind::BadRequest,
        "This homeserver is not validating phone numbers. Use an identity server instead.",
    ))
}

/// The password reset link first shows a page whose button posts the same parameters back.
async fn password_reset_confirmation(
    State(hs): State<AppState>,
    Query(q): Query<Map<String, Value>>,
) -> Result<Response, MatrixError> {
    Ok(Html(hs.password_reset_confirmation(&q)?).into_response())
}

/// The confirmation page's form: its parameters in the body (or the query string).
async fn password_reset_page(
    State(hs): State<AppState>,
    Query(mut q): Query<Map<String, Value>>,
    body: bytes::Bytes,
) -> Result<Response, MatrixError> {
    for (key, value) in form_urlencoded::parse(&body) {
        q.insert(key.into_owned(), json!(value.into_owned()));
    }
    Ok(page(hs.submit_email_token(SubmitPage::PasswordReset, &q).await?))
}
