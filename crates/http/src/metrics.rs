//! Request metrics under Synapse's names, and the `/_synapse/metrics` page.
//!
//! Synapse labels its HTTP metrics with the servlet class that served the request
//! (`RoomSendEventRestServlet`); its Grafana dashboard selects on those names. [`servlet`]
//! maps Myelin's route templates to them; a route with no Synapse counterpart in the table is
//! labelled with its template.

use std::borrow::Cow;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use myelin_metrics::{CountLabels, RequestLabels, ResponseLabels, metrics};

use crate::AppState;

/// Synapse's servlet names for the endpoints its dashboard and alerts look at, by the route's
/// path after the API's version prefix.
const SERVLETS: &[(&str, &str)] = &[
    ("/rooms/{room_id}/send/{event_type}/{txn_id}", "RoomSendEventRestServlet"),
    ("/rooms/{room_id}/send/{event_type}", "RoomSendEventRestServlet"),
    ("/rooms/{room_id}/state/{event_type}/{state_key}", "RoomStateEventRestServlet"),
    ("/rooms/{room_id}/state/{event_type}", "RoomStateEventRestServlet"),
    ("/rooms/{room_id}/state/{event_type}/", "RoomStateEventRestServlet"),
    ("/rooms/{room_id}/state", "RoomStateRestServlet"),
    ("/rooms/{room_id}/messages", "RoomMessageListRestServlet"),
    ("/rooms/{room_id}/members", "RoomMemberListRestServlet"),
    ("/rooms/{room_id}/joined_members", "JoinedRoomMemberListRestServlet"),
    ("/rooms/{room_id}/event/{event_id}", "RoomEventServlet"),
    ("/rooms/{room_id}/context/{event_id}", "RoomEventContextServlet"),
    ("/rooms/{room_id}/redact/{event_id}/{txn_id}", "RoomRedactEventRestServlet"),
    ("/rooms/{room_id}/join", "RoomMembershipRestServlet"),
    ("/rooms/{room_id}/{action}", "RoomMembershipRestServlet"),
    ("/rooms/{room_id}/typing/{user_id}", "RoomTypingRestServlet"),
    ("/rooms/{room_id}/receipt/{receipt_type}/{event_id}", "ReceiptRestServlet"),
    ("/rooms/{room_id}/read_markers", "ReadMarkerRestServlet"),
    ("/rooms/{room_id}/relations/{event_id}", "RelationPaginationServlet"),
    ("/rooms/{room_id}/upgrade", "RoomUpgradeRestServlet"),
    ("/join/{room}", "JoinRoomAliasServlet"),
    ("/createRoom", "RoomCreateRestServlet"),
    ("/sync", "SyncRestServlet"),
    ("/login", "LoginRestServlet"),
    ("/logout", "LogoutRestServlet"),
    ("/register", "RegisterRestServlet"),
    ("/account/whoami", "WhoamiRestServlet"),
    ("/keys/upload", "KeyUploadServlet"),
    ("/keys/query", "KeyQueryServlet"),
    ("/keys/claim", "OneTimeKeyServlet"),
    ("/keys/changes", "KeyChangesServlet"),
    ("/sendToDevice/{event_type}/{txn_id}", "SendToDeviceRestServlet"),
    ("/presence/{user_id}/status", "PresenceStatusRestServlet"),
    ("/profile/{user_id}", "ProfileRestServlet"),
    ("/profile/{user_id}/{field}", "ProfileFieldRestServlet"),
    ("/user/{user_id}/filter", "CreateFilterRestServlet"),
    ("/user/{user_id}/filter/{filter_id}", "GetFilterRestServlet"),
    ("/pushrules/", "PushRuleRestServlet"),
    ("/publicRooms", "PublicRoomListRestServlet"),
    ("/directory/room/{alias}", "ClientDirectoryServer"),
    ("/user_directory/search", "UserDirectorySearchRestServlet"),
    ("/capabilities", "CapabilitiesRestServlet"),
    ("/versions", "VersionsRestServlet"),
    ("/send/{txn_id}", "FederationSendServlet"),
    ("/make_join/{room_id}/{user_id}", "FederationMakeJoinServlet"),
    ("/send_join/{room_id}/{event_id}", "FederationV2SendJoinServlet"),
    ("/invite/{room_id}/{event_id}", "FederationV2InviteServlet"),
    ("/backfill/{room_id}", "FederationBackfillServlet"),
    ("/get_missing_events/{room_id}", "FederationGetMissingEventsServlet"),
    ("/event/{event_id}", "FederationEventServlet"),
    ("/state_ids/{room_id}", "FederationStateIdsServlet"),
    ("/state/{room_id}", "FederationStateV1Servlet"),
    ("/query/profile", "FederationQueryServlet"),
    ("/query/directory", "FederationQueryServlet"),
    ("/user/keys/query", "FederationClientKeysQueryServlet"),
    ("/user/keys/claim", "FederationClientKeysClaimServlet"),
    ("/user/devices/{user_id}", "FederationUserDevicesQueryServlet"),
];

/// The API prefixes the [`SERVLETS`] paths sit under.
const PREFIXES: &[&str] = &[
    "/_matrix/client/v3",
    "/_matrix/client/r0",
    "/_matrix/client/v1",
    "/_matrix/client/unstable",
    "/_matrix/client",
    "/_matrix/federation/v1",
    "/_matrix/federation/v2",
];

/// Synapse's servlet name for a route template, or the template.
pub(crate) fn servlet(route: &str) -> Cow<'static, str> {
    let named = PREFIXES.iter().filter_map(|p| route.strip_prefix(p)).find_map(|rest| {
        let v1_send_join = route.starts_with("/_matrix/federation/v1/send_join");
        SERVLETS.iter().find(|(path, _)| *path == rest).map(|(_, name)| match *name {
            "FederationV2SendJoinServlet" if v1_send_join => "FederationV1SendJoinServlet",
            other => other,
        })
    });
    match named {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(route.to_owned()),
    }
}

/// Records the matched route template (`/_matrix/client/v3/rooms/{room_id}/send/...`) in the
/// request's span, which names the endpoint without the IDs in the path, and counts the
/// request under its servlet: arrival, in flight, and the answer's status and time, as
/// Synapse's `synapse_http_server_*` metrics do.
pub(crate) async fn record(route: MatchedPath, request: Request, next: Next) -> Response {
    tracing::Span::current().record("route", route.as_str());
    let method = method_name(request.method());
    let servlet = servlet(route.as_str());
    let m = metrics();
    let arrived = RequestLabels { method, servlet: servlet.clone() };
    m.requests_received.get_or_create(&arrived).inc();
    let in_flight = InFlight::new(arrived);
    let started = Instant::now();
    let response = next.run(request).await;
    drop(in_flight);
    let code = response.status().as_u16();
    m.response_count.get_or_create(&CountLabels { method, servlet: servlet.clone(), tag: "" }).inc();
    m.response_time
        .get_or_create(&ResponseLabels { method, servlet, tag: "", code })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Counts a request in flight until dropped, so that a cancelled request (the client went
/// away) leaves the gauge too.
struct InFlight(RequestLabels);

impl InFlight {
    fn new(labels: RequestLabels) -> InFlight {
        metrics().requests_in_flight.get_or_create(&labels).inc();
        InFlight(labels)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics().requests_in_flight.get_or_create(&self.0).dec();
    }
}

fn method_name(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

/// `/_synapse/metrics`: the process's metrics and its modules' callback counters.
pub(crate) async fn page(State(hs): State<AppState>) -> impl IntoResponse {
    let mut text = myelin_metrics::encode();
    text.push_str(&hs.modules.metrics_text());
    text.push_str(myelin_metrics::EOF);
    ([(header::CONTENT_TYPE, myelin_metrics::CONTENT_TYPE)], text)
}

#[cfg(test)]
mod tests {
    use super::servlet;

    #[test]
    fn routes_are_named_as_synapse_names_their_servlets() {
        assert_eq!(
            servlet("/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}"),
            "RoomSendEventRestServlet"
        );
        assert_eq!(servlet("/_matrix/client/r0/sync"), "SyncRestServlet");
        assert_eq!(servlet("/_matrix/federation/v1/send/{txn_id}"), "FederationSendServlet");
        assert_eq!(servlet("/_matrix/federation/v1/send_join/{room_id}/{event_id}"), "FederationV1SendJoinServlet");
        assert_eq!(servlet("/_matrix/federation/v2/send_join/{room_id}/{event_id}"), "FederationV2SendJoinServlet");
        assert_eq!(servlet("/_synapse/admin/v1/rooms/{room_id}"), "/_synapse/admin/v1/rooms/{room_id}");
    }
}
