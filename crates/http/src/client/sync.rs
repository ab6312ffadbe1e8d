//! `/sync` and the legacy `/events`.

use super::*;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/sync", get(sync)).route("/events", get(events))
}

/// Simplified sliding sync (MSC4186), under its unstable prefix.
pub(super) fn sliding_sync_routes() -> Router<AppState> {
    Router::new().route("/org.matrix.simplified_msc3575/sync", post(sliding_sync))
}

#[derive(Deserialize)]
pub(super) struct SlidingSyncQuery {
    pos: Option<String>,
    timeout: Option<String>,
}

pub(super) async fn sliding_sync(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<SlidingSyncQuery>,
    JsonBody(body): JsonBody<Value>,
) -> Answer {
    let timeout = match q.timeout.as_deref() {
        None => 0,
        Some(t) => {
            t.parse::<u64>().map_err(|_| MatrixError::new(ErrorKind::InvalidParam, "timeout must be an integer"))?
        }
    };
    let request = myelin_core::SlidingSyncRequest {
        pos: q.pos,
        // Bounded so a client cannot park a request for hours.
        timeout: Duration::from_millis(timeout.min(300_000)),
        body,
    };
    Ok(axum::Json(hs.sliding_sync(&me, request).await?))
}

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    from: Option<String>,
    timeout: Option<String>,
    room_id: Option<String>,
    limit: Option<String>,
}

pub(super) async fn events(State(hs): State<AppState>, Auth(me): Auth, Query(q): Query<EventsQuery>) -> Answer {
    // Checked as Synapse does (a non-negative integer), though the answer is never long.
    if let Some(limit) = q.limit.as_deref()
        && limit.parse::<u64>().is_err()
    {
        return Err(MatrixError::new(ErrorKind::InvalidParam, "limit must be a non-negative integer"));
    }
    let timeout = match q.timeout.as_deref() {
        None => 30_000,
        Some(t) => {
            t.parse::<u64>().map_err(|_| MatrixError::new(ErrorKind::InvalidParam, "timeout must be an integer"))?
        }
    };
    let timeout = Duration::from_millis(timeout.min(300_000));
    Ok(axum::Json(hs.event_stream(&me, q.room_id.as_deref(), q.from.as_deref(), timeout).await?))
}

#[derive(Deserialize)]
pub(super) struct SyncQuery {
    since: Option<String>,
    timeout: Option<String>,
    full_state: Option<String>,
    filter: Option<String>,
    set_presence: Option<String>,
}

pub(super) async fn sync(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<SyncQuery>,
) -> Result<axum::response::Response, MatrixError> {
    let timeout = match q.timeout.as_deref() {
        None => 0,
        Some(t) => {
            t.parse::<u64>().map_err(|_| MatrixError::new(ErrorKind::InvalidParam, "timeout must be an integer"))?
        }
    };
    let request = SyncRequest {
        since: q.since,
        // Bounded so a client cannot park a request for hours.
        timeout: Duration::from_millis(timeout.min(300_000)),
        full_state: q.full_state.as_deref() == Some("true"),
        filter: q.filter,
        set_presence: q.set_presence,
    };
    let body = hs.sync(&me, request).await?.to_json();
    Ok(axum::response::IntoResponse::into_response(([(axum::http::header::CONTENT_TYPE, "application/json")], body)))
}
