//! The media repository's endpoints: `/_matrix/media/v3/...` (legacy, unauthenticated downloads)
//! and `/_matrix/client/v1/media/...` (authenticated).

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures::StreamExt;
use myelin_core::media::StoredMedia;
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::error::MatrixError;
use crate::extract::{Auth, OptionalAuth, Path, Query, drain};

/// `/_matrix/media/*` when `legacy`, `/_matrix/client/v1/media/*` when `authenticated`.
pub(crate) fn router(legacy_paths: bool, authenticated_paths: bool) -> Router<AppState> {
    let legacy = Router::new()
        .route("/upload", post(upload))
        .route("/upload/{server}/{media_id}", put(upload_reserved))
        .route("/download/{server}/{media_id}", get(download))
        .route("/download/{server}/{media_id}/{file_name}", get(download_named))
        .route("/thumbnail/{server}/{media_id}", get(thumbnail))
        .route("/config", get(config))
        .route("/preview_url", get(preview_url));
    let authenticated = Router::new()
        .route("/download/{server}/{media_id}", get(download_auth))
        .route("/download/{server}/{media_id}/{file_name}", get(download_named_auth))
        .route("/thumbnail/{server}/{media_id}", get(thumbnail_auth))
        .route("/config", get(config_auth))
        .route("/preview_url", get(preview_url));
    let mut app = Router::new();
    if legacy_paths {
        app = app
            .nest("/_matrix/media/v3", legacy.clone())
            .nest("/_matrix/media/r0", legacy)
            .route("/_matrix/media/v1/create", post(create));
    }
    if authenticated_paths {
        app = app
            .nest("/_matrix/client/v1/media", authenticated)
            .route(myelin_core::media::UPLOAD_LIMIT_PAGE, get(upload_limit_page));
    }
    app
}

/// The page `M_USER_LIMIT_EXCEEDED`'s `info_uri` points to when the quota names none.
async fn upload_limit_page() -> axum::response::Html<&'static str> {
    axum::response::Html(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Media upload limit exceeded</title></head>\
         <body><h1>Media upload limit exceeded</h1><p>You have uploaded as much media as this server allows for now. \
         Try again later, or ask the server's administrator.</p></body></html>",
    )
}

/// Types a browser may show inline; everything else is an attachment (Synapse's list).
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

#[derive(Deserialize)]
struct UploadQuery {
    filename: Option<String>,
}

async fn upload_body(
    hs: &AppState,
    me: &myelin_core::Requester,
    reserved: Option<(&str, &str)>,
    headers: &HeaderMap,
    filename: Option<String>,
    request: Request,
) -> Result<String, MatrixError> {
    let limit = hs.config.max_upload_size;
    if let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        drain(request.into_body()).await;
        return Err(MatrixError::new(myelin_core::ErrorKind::TooLarge, "Upload request body is too large"));
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut stream = request.into_body().into_data_stream().map(|r| r.map_err(std::io::Error::other));
    let result = hs.upload_media(me, reserved, content_type, filename.filter(|f| !f.is_empty()), &mut stream).await;
    if result.is_err() {
        // Read what the client is still sending so it receives the error, not a reset.
        let rest = Body::from_stream(stream);
        drain(rest).await;
    }
    Ok(result?)
}

async fn upload(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    request: Request,
) -> Result<axum::Json<serde_json::Value>, MatrixError> {
    let uri = upload_body(&hs, &me, None, &headers, q.filename, request).await?;
    Ok(axum::Json(json!({"content_uri": uri})))
}

async fn upload_reserved(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((server, media_id)): Path<(String, String)>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    request: Request,
) -> Result<axum::Json<serde_json::Value>, MatrixError> {
    upload_body(&hs, &me, Some((&server, &media_id)), &headers, q.filename, request).await?;
    Ok(axum::Json(json!({})))
}

async fn create(State(hs): State<AppState>, Auth(me): Auth) -> Result<axum::Json<serde_json::Value>, MatrixError> {
    let (uri, expires) = hs.create_media(&me).await?;
    Ok(axum::Json(json!({"content_uri": uri, "unused_expires_at": expires})))
}

/// RFC 6266 / 5987 `Content-Disposition`, inline only for safe types.
fn disposition(content_type: &str, name: Option<&str>) -> String {
    let base = content_type.split(';').next().unwrap_or_default().trim().to_lowercase();
    let kind = if INLINE_TYPES.contains(&base.as_str()) { "inline" } else { "attachment" };
    match name {
        Some(n) => {
            let encoded: String = n
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("{kind}; filename*=utf-8''{encoded}")
        }
        None => kind.to_owned(),
    }
}

async fn send_file(media: StoredMedia, name_override: Option<String>) -> Result<Response, MatrixError> {
    let file = tokio::fs::File::open(&media.path)
        .await
        .map_err(|_| MatrixError::new(myelin_core::ErrorKind::NotFound, "Not found"))?;
    let name = name_override.or(media.upload_name);
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)).into_response();
    let h = response.headers_mut();
    let header_value =
        |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, header_value(&media.content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(media.length));
    if let Ok(v) = HeaderValue::from_str(&disposition(&media.content_type, name.as_deref())) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("cross-origin"));
    *response.status_mut() = StatusCode::OK;
    Ok(response)
}

#[derive(Deserialize)]
struct DownloadQuery {
    allow_remote: Option<String>,
}

/// The legacy endpoints' `allow_remote=false`: another server's file is not fetched.
fn remote_allowed(hs: &AppState, server: &str, q: &DownloadQuery) -> Result<(), MatrixError> {
    if server != hs.server_name() && q.allow_remote.as_deref() == Some("false") {
        return Err(MatrixError::new(myelin_core::ErrorKind::NotFound, "Not found"));
    }
    Ok(())
}

async fn download(
    State(hs): State<AppState>,
    Path((server, media_id)): Path<(String, String)>,
    Query(q): Query<DownloadQuery>,
) -> Result<Response, MatrixError> {
    remote_allowed(&hs, &server, &q)?;
    send_file(hs.media(&server, &media_id).await?, None).await
}

async fn download_named(
    State(hs): State<AppState>,
    Path((server, media_id, name)): Path<(String, String, String)>,
    Query(q): Query<DownloadQuery>,
) -> Result<Response, MatrixError> {
    remote_allowed(&hs, &server, &q)?;
    send_file(hs.media(&server, &media_id).await?, Some(name)).await
}

async fn download_auth(
    State(hs): State<AppState>,
    Auth(_me): Auth,
    Path((server, media_id)): Path<(String, String)>,
) -> Result<Response, MatrixError> {
    send_file(hs.media(&server, &media_id).await?, None).await
}

async fn download_named_auth(
    State(hs): State<AppState>,
    Auth(_me): Auth,
    Path((server, media_id, name)): Path<(String, String, String)>,
) -> Result<Response, MatrixError> {
    send_file(hs.media(&server, &media_id).await?, Some(name)).await
}

#[derive(Deserialize)]
struct ThumbnailQuery {
    width: Option<String>,
    height: Option<String>,
    method: Option<String>,
}

async fn thumbnail_of(hs: &AppState, server: &str, media_id: &str, q: ThumbnailQuery) -> Result<Response, MatrixError> {
    let dim = |v: Option<String>| -> Result<u32, MatrixError> {
        v.ok_or_else(|| MatrixError::new(myelin_core::ErrorKind::MissingParam, "width and height are required"))?
            .parse::<u32>()
            .map_err(|_| MatrixError::new(myelin_core::ErrorKind::InvalidParam, "width and height must be integers"))
    };
    let (w, h) = (dim(q.width)?, dim(q.height)?);
    let method = q.method.unwrap_or_else(|| "scale".into());
    send_file(hs.thumbnail(server, media_id, w, h, &method).await?, None).await
}

async fn thumbnail(
    State(hs): State<AppState>,
    Path((server, media_id)): Path<(String, String)>,
    Query(q): Query<ThumbnailQuery>,
) -> Result<Response, MatrixError> {
    thumbnail_of(&hs, &server, &media_id, q).await
}

async fn thumbnail_auth(
    State(hs): State<AppState>,
    Auth(_me): Auth,
    Path((server, media_id)): Path<(String, String)>,
    Query(q): Query<ThumbnailQuery>,
) -> Result<Response, MatrixError> {
    thumbnail_of(&hs, &server, &media_id, q).await
}

async fn config(
    State(hs): State<AppState>,
    OptionalAuth(me): OptionalAuth,
) -> Result<axum::Json<serde_json::Value>, MatrixError> {
    Ok(axum::Json(hs.media_config(me.as_ref()).await?))
}

#[derive(Deserialize)]
struct PreviewQuery {
    url: Option<String>,
}

/// `GET .../preview_url?url=`: the preview of a page (see `myelin_core::url_preview`).
async fn preview_url(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<PreviewQuery>,
) -> Result<axum::Json<serde_json::Value>, MatrixError> {
    let url = q.url.ok_or_else(|| MatrixError::new(myelin_core::ErrorKind::MissingParam, "Missing url"))?;
    Ok(axum::Json(hs.preview_url(&me, &url).await?))
}

async fn config_auth(State(hs): State<AppState>, Auth(me): Auth) -> Result<axum::Json<serde_json::Value>, MatrixError> {
    Ok(axum::Json(hs.media_config(Some(&me)).await?))
}
