//! Aliases, the room directory, the user directory and search.

use super::*;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/directory/room/{alias}", get(get_alias).put(put_alias).delete(delete_alias))
        .route("/rooms/{room_id}/aliases", get(room_aliases))
        .route("/directory/list/room/{room_id}", get(get_visibility).put(put_visibility))
        .route("/publicRooms", get(public_rooms_get).post(public_rooms_post))
        .route(
            "/directory/list/appservice/{network_id}/{room_id}",
            put(set_appservice_room_list).delete(delete_appservice_room_list),
        )
        .route("/user_directory/search", post(user_directory_search))
        .route("/search", post(search))
}

pub(super) async fn get_alias(State(hs): State<AppState>, Path(alias): Path<String>) -> Answer {
    let (room_id, servers) = hs.resolve_alias(&alias).await?;
    Ok(axum::Json(json!({"room_id": room_id, "servers": servers})))
}

#[derive(Deserialize)]
pub(super) struct AliasBody {
    room_id: String,
}

pub(super) async fn put_alias(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(alias): Path<String>,
    JsonBody(b): JsonBody<AliasBody>,
) -> Answer {
    hs.create_alias(&me, &alias, &b.room_id).await?;
    Ok(axum::Json(json!({})))
}

pub(super) async fn delete_alias(State(hs): State<AppState>, Auth(me): Auth, Path(alias): Path<String>) -> Answer {
    hs.delete_alias(&me, &alias).await?;
    Ok(axum::Json(json!({})))
}

pub(super) async fn room_aliases(State(hs): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(json!({"aliases": hs.room_aliases(&me, &room_id).await?})))
}

pub(super) async fn get_visibility(State(hs): State<AppState>, Path(room_id): Path<String>) -> Answer {
    Ok(axum::Json(json!({"visibility": hs.room_visibility(&room_id).await?})))
}

#[derive(Deserialize)]
pub(super) struct VisibilityBody {
    #[serde(default = "public")]
    visibility: String,
}

pub(super) fn public() -> String {
    "public".into()
}

pub(super) async fn put_visibility(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    JsonBody(b): JsonBody<VisibilityBody>,
) -> Answer {
    hs.set_room_visibility(&me, &room_id, &b.visibility).await?;
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct PublicRoomsQuery {
    limit: Option<String>,
    since: Option<String>,
    include_all_networks: Option<String>,
    third_party_instance_id: Option<String>,
}

/// Which lists: every network's, one appservice network's, or the server's own.
fn room_list_scope<'a>(all: bool, instance: Option<&'a str>) -> RoomListScope<'a> {
    match (all, instance) {
        (true, _) => RoomListScope::AllNetworks,
        (false, Some(instance)) => RoomListScope::Network(instance),
        (false, None) => RoomListScope::Main,
    }
}

pub(super) async fn public_rooms_get(State(hs): State<AppState>, Query(q): Query<PublicRoomsQuery>) -> Answer {
    let limit = q.limit.as_deref().map(|l| rooms::parse_limit(Some(l), 0)).transpose()?;
    let scope =
        room_list_scope(q.include_all_networks.as_deref() == Some("true"), q.third_party_instance_id.as_deref());
    Ok(axum::Json(hs.public_rooms(limit, q.since.as_deref(), None, scope).await?))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct PublicRoomsBody {
    limit: Option<u64>,
    since: Option<String>,
    filter: Option<PublicRoomsFilter>,
    include_all_networks: bool,
    third_party_instance_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct PublicRoomsFilter {
    generic_search_term: Option<String>,
}

pub(super) async fn public_rooms_post(
    State(hs): State<AppState>,
    Auth(_me): Auth,
    JsonBody(b): JsonBody<PublicRoomsBody>,
) -> Answer {
    let term = b.filter.and_then(|f| f.generic_search_term);
    let limit = b.limit.map(|l| l.min(1000) as usize);
    let scope = room_list_scope(b.include_all_networks, b.third_party_instance_id.as_deref());
    Ok(axum::Json(hs.public_rooms(limit, b.since.as_deref(), term.as_deref(), scope).await?))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct AppserviceListBody {
    visibility: Option<String>,
}

/// `PUT /directory/list/appservice/{networkId}/{roomId}` (visibility defaults to public).
pub(super) async fn set_appservice_room_list(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((network, room_id)): Path<(String, String)>,
    JsonBody(b): JsonBody<AppserviceListBody>,
) -> Answer {
    let visibility = b.visibility.unwrap_or_else(|| "public".into());
    hs.set_appservice_room_visibility(&me, &network, &room_id, &visibility).await?;
    Ok(axum::Json(json!({})))
}

/// `DELETE /directory/list/appservice/{networkId}/{roomId}`.
pub(super) async fn delete_appservice_room_list(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((network, room_id)): Path<(String, String)>,
) -> Answer {
    hs.set_appservice_room_visibility(&me, &network, &room_id, "private").await?;
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct UserSearchBody {
    search_term: String,
    #[serde(default = "ten")]
    limit: u64,
}

pub(super) fn ten() -> u64 {
    10
}

pub(super) async fn user_directory_search(
    State(hs): State<AppState>,
    Auth(me): Auth,
    JsonBody(b): JsonBody<UserSearchBody>,
) -> Answer {
    Ok(axum::Json(hs.search_users(&me, &b.search_term, b.limit.min(1000) as usize).await?))
}

#[derive(Deserialize)]
pub(super) struct SearchQuery {
    next_batch: Option<String>,
}

pub(super) async fn search(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<SearchQuery>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    Ok(axum::Json(hs.search(&me, &body, q.next_batch.as_deref()).await?))
}
