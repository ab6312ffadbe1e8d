//! Myelin's HTTP layer: axum routers for the Client-Server API, module web resources, and the
//! mapping of core errors to Matrix responses.
//!
//! # Layout
//! - [`router`]: the whole app for one listener (built apart from serving, so tests can call
//!   it in-process); [`serve`] runs it with graceful shutdown.
//! - `client`: Client-Server API handlers, thin: extract, call one `Homeserver` method,
//!   serialise.
//! - `federation`: Server-Server API handlers, behind the `X-Matrix`-checking `Signed`
//!   extractor; [`serve_tls`] serves a listener over rustls.
//! - [`error::MatrixError`]: the only place statuses are chosen.
//! - `extract`: extractors that turn every rejection into a Matrix error.
//!
//! # Invariants
//! - No SQL and no storage dependency: handlers talk to `myelin_core::Homeserver` only.
//! - No module callback is invoked here; module *web resources* are dispatched here, before
//!   routing, exactly as registered (no auth, CORS or error formatting around them).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod admin;
mod client;
mod ephemeral;
pub mod error;
mod extract;
mod federation;
mod keys;
mod media;
mod metrics;
mod push;
mod serve;

pub use serve::{Connections, serve, serve_tls};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use myelin_core::Homeserver;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};
use tracing::Instrument;

/// Handler state: the services.
pub type AppState = Arc<Homeserver>;

/// The app for one listener: only the resources it names (Synapse's rules: `client` brings
/// the Client-Server API, the admin API and `.well-known`; `/_matrix/media` is served on
/// `client`, `federation` and `media` listeners; `federation` and `keys` are in
/// [`federation::routes`]; module web resources and `/health` are on every HTTP listener).
/// A listener naming only `metrics` (as a `type: metrics` listener does) serves nothing else.
pub fn router(hs: AppState, listener: &myelin_core::config::Listener) -> Router {
    let resources = &listener.resources;
    let has = |name: &str| resources.iter().any(|r| r == name);
    if resources.len() == 1 && has("metrics") {
        return Router::new()
            .route("/_synapse/metrics", axum::routing::get(metrics::page))
            .route("/metrics", axum::routing::get(metrics::page))
            .fallback(error::unrecognized)
            .with_state(hs);
    }
    let limit = hs.config.max_upload_size as usize;
    let mut app = Router::new()
        .merge(media::router(has("client") || has("federation") || has("media"), has("client") || has("media")))
        .merge(federation::routes(resources))
        .route("/health", axum::routing::get(|| async { "OK" }));
    if has("client") {
        app = app
            .merge(client::router())
            .merge(admin::router())
            .route("/.well-known/matrix/client", axum::routing::get(well_known_client))
            .route("/.well-known/matrix/server", axum::routing::get(well_known_server));
    }
    if has("metrics") {
        app = app.route("/_synapse/metrics", axum::routing::get(metrics::page));
    }
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods(AllowMethods::list([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS]))
        .allow_headers(AllowHeaders::list([
            header::HeaderName::from_static("x-requested-with"),
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
        ]));
    let mut app = app
        .route_layer(middleware::from_fn(metrics::record))
        .fallback(error::unrecognized)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn_with_state(hs.clone(), read_whole_body))
        .layer(DefaultBodyLimit::max(limit))
        .layer(cors)
        .layer(middleware::from_fn_with_state(hs.clone(), module_resources))
        .layer(middleware::from_fn(catch_panic))
        .layer(middleware::from_fn(request_log));
    if listener.x_forwarded {
        app = app.layer(middleware::from_fn(forwarded_client_address));
    }
    app.with_state(hs)
}

/// Reads every request body (but uploads, which are streamed) before routing, bounded by
/// `max_upload_size`. A handler that does not need its body would otherwise leave it unread,
/// and hyper then closes the kept-alive connection after answering whenever the body had not
/// fully arrived: the client's next request on it fails.
async fn read_whole_body(State(hs): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let streamed = path.starts_with("/_matrix/media/") && path.contains("/upload");
    if streamed {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    match extract::read_body(body, hs.config.max_upload_size as usize).await {
        Ok(bytes) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(e) => e.into_response(),
    }
}

/// On `x_forwarded: true` listeners: the client's address is the first in `X-Forwarded-For`
/// (set by the reverse proxy in front), so that rate limits and logs see the real client.
async fn forwarded_client_address(mut request: Request, next: Next) -> Response {
    let forwarded = request
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|first| first.trim().parse::<std::net::IpAddr>().ok());
    if let Some(ip) = forwarded {
        let port = request.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map_or(0, |c| c.0.port());
        request.extensions_mut().insert(axum::extract::ConnectInfo(SocketAddr::new(ip, port)));
    }
    next.run(request).await
}

async fn well_known_client(State(hs): State<AppState>) -> impl IntoResponse {
    axum::Json(serde_json::json!({"m.homeserver": {"base_url": hs.config.public_baseurl}}))
}

async fn well_known_server(State(hs): State<AppState>) -> impl IntoResponse {
    axum::Json(serde_json::json!({"m.server": format!("{}:443", hs.server_name())}))
}

/// Serves module web resources registered for exactly this path, before any routing.
async fn module_resources(State(hs): State<AppState>, request: Request, next: Next) -> Response {
    let Some(resource) = hs.modules.web_resource(request.uri().path()) else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let bytes = match extract::read_body(body, hs.config.max_upload_size as usize).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let client = parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
    let mut request = http::Request::from_parts(parts, bytes);
    if let Some(addr) = client {
        request.extensions_mut().insert(myelin_module_api::web::ClientAddress(addr));
    }
    // A panicking resource must not take the connection down with it.
    let call = std::panic::AssertUnwindSafe(resource.handle(request));
    match futures::FutureExt::catch_unwind(call).await {
        Ok(response) => response.map(Body::from),
        Err(_) => error::MatrixError(myelin_core::Error::internal("a module web resource panicked")).into_response(),
    }
}

/// A handler that panics answers 500 `M_UNKNOWN` (and is logged); the connection and the
/// server carry on. Without this, hyper drops the connection with no answer at all.
async fn catch_panic(request: Request, next: Next) -> Response {
    match futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(next.run(request))).await {
        Ok(response) => response,
        Err(_) => error::MatrixError(myelin_core::Error::internal("the request's handler panicked")).into_response(),
    }
}

/// Each request runs in a `request` span (ID, method, path, then the route template, user and
/// device, or the origin server, once known), echoes its ID in `X-Request-Id`, and ends with one log line (status,
/// duration). The path is logged, never the query, which may hold a token.
async fn request_log(request: Request, next: Next) -> Response {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let started = Instant::now();
    // Synapse's request names: method and a per-process counter.
    let id = format!("{}-{}", request.method(), NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        route = tracing::field::Empty,
        user = tracing::field::Empty,
        device = tracing::field::Empty,
        origin = tracing::field::Empty,
    );
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.in_scope(|| {
        // An access-log line an admin reads at a glance; the span carries the same as fields.
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if response.status().is_server_error() {
            tracing::warn!(status, ms, "{method} {path} {status} {ms:.1}ms");
        } else {
            tracing::info!(status, ms, "{method} {path} {status} {ms:.1}ms");
        }
    });
    let headers = response.headers_mut();
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-cache"));
    if let Ok(id) = HeaderValue::from_str(&id) {
        headers.insert(header::HeaderName::from_static("x-request-id"), id);
    }
    response
}

/// The TLS configuration a listener with `tls: true` serves: the PEM chain and key of
/// `tls_certificate_path` and `tls_private_key_path`.
pub fn tls_acceptor(certificate: &std::path::Path, key: &std::path::Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("{}: {e}", certificate.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate found", certificate.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("{}: {e}", certificate.display()))?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}
