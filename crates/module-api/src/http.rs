//! Outbound HTTP for modules (Synapse's `ModuleApi.http_client`): pooled connections, a request
//! timeout, no proxy and no IP blocklist, as in Synapse. Plain `http://` only for now.

use serde_json::Value;

/// A failed outbound request.
///
/// Since 0.1.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpError {
    /// The server answered with a non-2xx status (Synapse's `HttpResponseException`).
    Status {
        /// HTTP status.
        code: u16,
        /// The response body.
        body: Vec<u8>,
    },
    /// The request could not be made or timed out.
    Transport(String),
    /// The answer was not the JSON expected.
    Json(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Status { code, .. } => write!(f, "HTTP {code}"),
            HttpError::Transport(e) => write!(f, "request failed: {e}"),
            HttpError::Json(e) => write!(f, "bad JSON: {e}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// An outbound request.
///
/// Since 0.1.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Absolute URL.
    pub url: String,
    /// Header name/value pairs.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// An answer.
///
/// Since 0.1.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// The module's HTTP client, from [`crate::ModuleApi::http_client`].
///
/// Since 0.1.
#[derive(Clone)]
pub struct HttpClient {
    pub(crate) api: crate::ModuleApi,
}

impl HttpClient {
    /// Sends a request and returns the answer, whatever its status.
    pub async fn request(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        self.api.host.http_request(request).await
    }

    async fn json(&self, request: HttpRequest) -> Result<Value, HttpError> {
        let r = self.request(request).await?;
        if !(200..300).contains(&r.status) {
            return Err(HttpError::Status { code: r.status, body: r.body });
        }
        serde_json::from_slice(&r.body).map_err(|e| HttpError::Json(e.to_string()))
    }

    /// `GET url`, parsing a JSON answer; non-2xx is [`HttpError::Status`].
    pub async fn get_json(&self, url: &str, headers: &[(&str, &str)]) -> Result<Value, HttpError> {
        self.json(HttpRequest {
            method: "GET".into(),
            url: url.into(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: Vec::new(),
        })
        .await
    }

    /// `POST url` with a JSON body, parsing a JSON answer.
    pub async fn post_json_get_json(
        &self,
        url: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<Value, HttpError> {
        let mut h: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        h.push(("Content-Type".into(), "application/json".into()));
        self.json(HttpRequest {
            method: "POST".into(),
            url: url.into(),
            headers: h,
            body: body.to_string().into_bytes(),
        })
        .await
    }
}
