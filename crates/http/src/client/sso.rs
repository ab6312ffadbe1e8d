//! Single sign-on (OpenID Connect): the redirect to a provider, its callback, the identity
//! provider and username pickers, and re-authentication by SSO in user-interactive auth.
//! The pages are for browsers, so failures there are pages too (as Synapse's).

use axum::extract::RawQuery;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use myelin_core::sso::WebAnswer;

use super::*;

/// Under the client prefixes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/login/sso/redirect", get(redirect))
        .route("/login/sso/redirect/{idp_id}", get(redirect_to))
        .route("/auth/m.login.sso/fallback/web", get(ui_auth_fallback).post(ui_auth_fallback_post))
}

/// The browser pages under `/_synapse/client`.
pub(super) fn page_routes() -> Router<AppState> {
    Router::new()
        .route("/_synapse/client/pick_idp", get(pick_idp))
        .route("/_synapse/client/oidc/callback", get(callback).post(callback_post))
        .route("/_synapse/client/pick_username/account_details", get(account_details).post(submit_account_details))
        .route("/_synapse/client/pick_username/check", get(username_check))
        .route("/_synapse/client/sso_register", get(register))
}

fn pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn cookies(headers: &HeaderMap) -> Option<String> {
    let all: Vec<&str> = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).collect();
    if all.is_empty() { None } else { Some(all.join("; ")) }
}

/// Synapse serves these resources only when SSO is configured.
fn require_sso(hs: &AppState) -> Result<(), MatrixError> {
    if hs.config.sso.enabled() {
        Ok(())
    } else {
        Err(MatrixError::new(ErrorKind::Unrecognized, "Unrecognized request"))
    }
}

fn web(answer: WebAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = if answer.html.is_empty() {
        status.into_response()
    } else {
        (status, axum::response::Html(answer.html)).into_response()
    };
    let headers = response.headers_mut();
    if let Some(location) = answer.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    for cookie in answer.set_cookies {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, v);
        }
    }
    // The pages carry one-time links: never kept by a cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store, must-revalidate"));
    response
}

async fn redirect(State(hs): State<AppState>, RawQuery(raw): RawQuery) -> Result<Response, MatrixError> {
    let q = pairs(raw.as_deref());
    Ok(web(hs.sso_redirect(None, param(&q, "redirectUrl"), &q).await?))
}

async fn redirect_to(
    State(hs): State<AppState>,
    Path(idp_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, MatrixError> {
    let q = pairs(raw.as_deref());
    Ok(web(hs.sso_redirect(Some(&idp_id), param(&q, "redirectUrl"), &q).await?))
}

async fn pick_idp(State(hs): State<AppState>, RawQuery(raw): RawQuery) -> Result<Response, MatrixError> {
    require_sso(&hs)?;
    let q = pairs(raw.as_deref());
    Ok(web(hs.sso_pick_idp(param(&q, "redirectUrl"), param(&q, "idp"))?))
}

async fn callback(
    State(hs): State<AppState>,
    ClientInfo(info): ClientInfo,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, MatrixError> {
    require_sso(&hs)?;
    let params = pairs(raw.as_deref()).into_iter().collect();
    Ok(web(hs.oidc_callback(&params, session_cookie(&headers).as_deref(), &info).await))
}

/// The callback with `response_mode=form_post`: the parameters come as a form.
async fn callback_post(
    State(hs): State<AppState>,
    ClientInfo(info): ClientInfo,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: axum::body::Bytes,
) -> Result<Response, MatrixError> {
    require_sso(&hs)?;
    let mut params: std::collections::HashMap<String, String> = pairs(raw.as_deref()).into_iter().collect();
    params.extend(form_urlencoded::parse(&body).into_owned());
    Ok(web(hs.oidc_callback(&params, session_cookie(&headers).as_deref(), &info).await))
}

/// The session cookie: either of the two Synapse sets (one without `SameSite`, for browsers
/// that refuse `SameSite=None`).
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    let all = cookies(headers)?;
    ["oidc_session", "oidc_session_no_samesite"].iter().find_map(|name| myelin_core::sso::cookie_value(&all, name))
}

async fn account_details(State(hs): State<AppState>, headers: HeaderMap) -> Result<Response, MatrixError> {
    require_sso(&hs)?;
    Ok(web(hs.sso_account_details_page(cookies(&headers).as_deref())))
}

async fn submit_account_details(
    State(hs): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, MatrixError> {
    require_sso(&hs)?;
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    Ok(web(hs.sso_submit_account_details(cookies(&headers).as_deref(), &form)))
}

async fn username_check(State(hs): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Answer {
    require_sso(&hs)?;
    let q = pairs(raw.as_deref());
    Ok(axum::Json(hs.sso_username_available(cookies(&headers).as_deref(), param(&q, "username")).await?))
}

async fn register(
    State(hs): State<AppState>,
    ClientInfo(info): ClientInfo,
    headers: HeaderMap,
) -> Result<Response, MatrixError> {
    require_sso(&hs)?;
    Ok(web(hs.sso_register(cookies(&headers).as_deref(), &info).await))
}

/// `GET /auth/m.login.sso/fallback/web?session=`: the page sending the user to re-authenticate.
async fn ui_auth_fallback(State(hs): State<AppState>, RawQuery(raw): RawQuery) -> Result<Response, MatrixError> {
    require_sso(&hs)?;
    let q = pairs(raw.as_deref());
    let Some(session) = param(&q, "session") else {
        return Err(MatrixError::new(ErrorKind::MissingParam, "Missing string query parameter 'session'"));
    };
    Ok(web(hs.sso_ui_auth_start(session, param(&q, "idp_id")).await?))
}

/// The SSO stage completes at the provider's callback, never by a form posted here.
async fn ui_auth_fallback_post() -> MatrixError {
    MatrixError::new(ErrorKind::NotFound, "Fallback SSO auth does not support POST requests.")
}
