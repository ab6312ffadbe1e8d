//! Web resources: HTTP handlers a module serves at an exact path on every HTTP listener.
//!
//! Myelin puts nothing around a module resource (no auth, no CORS, no JSON error formatting),
//! as Synapse does: the resource answers the whole request itself.

use std::future::Future;

use bytes::Bytes;
use futures::future::BoxFuture;

/// A request as a module resource sees it: the body is read in full (bounded by
/// `max_upload_size`).
pub type Request = http::Request<Bytes>;
/// A module resource's answer.
pub type Response = http::Response<Bytes>;

/// Something that answers HTTP requests at one path.
///
/// Implemented for any `Fn(Request) -> impl Future<Output = Response>`.
/// Since 0.1.
pub trait WebResource: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: Request) -> BoxFuture<'static, Response>;

    /// Whether requests for paths below this resource's come here too (`false`: only the exact
    /// path). Twisted resources say `true`: as on Synapse, the resource tree then decides (its
    /// children, or a leaf resource's `postpath`).
    ///
    /// Since 0.2.
    fn serves_subpaths(&self) -> bool {
        false
    }
}

impl<F, Fut> WebResource for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    fn handle(&self, request: Request) -> BoxFuture<'static, Response> {
        Box::pin((self)(request))
    }
}

/// The client's address, in the request's extensions (`request.extensions().get()`).
///
/// Since 0.1.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub std::net::SocketAddr);

/// A JSON response with `status`, as module resources commonly return.
pub fn json_response(status: u16, body: &serde_json::Value) -> Response {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap_or_else(|_| http::Response::new(Bytes::new()))
}
