//! Identity servers, as Synapse talks to them on a user's behalf: binding a third-party
//! identifier (an e-mail address the identity server validated) to the user's Matrix ID
//! (`/account/3pid/bind`), and removing bindings (`/account/3pid/unbind`, `/account/3pid/delete`,
//! account deactivation). Where a user bound what is remembered (`threepid_bindings`), so a
//! later unbind without a named identity server knows where to go.
//!
//! Requests go over HTTPS to the server the client names, through the IP-range filter like
//! every outbound request. A bind authenticates with the user's identity-server access token;
//! an unbind is signed by this homeserver (`X-Matrix`, as a federation request addressed to
//! the identity server), which is how the identity server knows the homeserver owns the ID.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{Error, ErrorKind, Homeserver, Requester, Result};

/// How long an identity server has to answer.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(30);

/// Synapse's `valid_id_server_location`: a hostname (or bracketed IPv6 address), an optional
/// port and an optional path; nothing that could change where the URL points.
fn valid_id_server(id_server: &str) -> bool {
    let (authority, path) = match id_server.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (id_server, None),
    };
    let host_ok = |h: &str| {
        if let Some(inner) = h.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return inner.parse::<std::net::Ipv6Addr>().is_ok();
        }
        !h.is_empty() && h.len() <= 255 && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    };
    let port_ok = |p: &str| !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit());
    let (host, port) = match authority.find(']') {
        Some(end) => (&authority[..=end], authority[end + 1..].strip_prefix(':')),
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let rest_ok = authority.len() == host.len() || port.is_some();
    let authority_ok = host_ok(host) && rest_ok && port.is_none_or(port_ok);
    authority_ok
        && path.is_none_or(|p| !p.contains("..") && !p.chars().any(|c| c.is_whitespace() || "?#@\\".contains(c)))
}

/// A required string field of a request body.
fn required<'a>(body: &'a Value, field: &str) -> Result<&'a str> {
    match body.get(field) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(Error::new(ErrorKind::MissingParam, format!("Missing parameter: {field}"))),
        Some(_) => Err(Error::invalid_param(format!("{field} must be a string"))),
    }
}

impl Homeserver {
    /// The HTTP client for identity servers: the IP-range filter, and certificates checked
    /// unless `use_insecure_ssl_client_just_for_testing_do_not_use` says otherwise (as Synapse).
    fn identity_client(&self) -> Result<reqwest::Client> {
        self.config
            .federation
            .ip_filter
            .web_client_builder(self.config.insecure_outbound_tls)
            .and_then(|b| b.timeout(IDENTITY_TIMEOUT).build().map_err(|e| e.to_string()))
            .map_err(Error::internal)
    }

    /// POSTs `body` to `https://{id_server}{path}` with `authorization`: the status and the
    /// JSON answer (`Null` if it was not JSON), or the reason it could not be sent.
    async fn post_to_identity_server(
        &self,
        id_server: &str,
        path: &str,
        authorization: &str,
        body: &Value,
    ) -> std::result::Result<(u16, Value), String> {
        let client = self.identity_client().map_err(|e| e.message)?;
        let request =
            client.post(format!("https://{id_server}{path}")).header("Authorization", authorization).json(body);
        let response = self.config.federation.ip_filter.send(&client, request).await?;
        let status = response.status().as_u16();
        let answer = response.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, answer))
    }

    /// `POST /account/3pid/bind`: asks the identity server to bind the identifier it validated
    /// in session `sid` to the requester, and remembers where it is bound.
    pub async fn bind_threepid(&self, me: &Requester, body: &Value) -> Result<Value> {
        let id_server = required(body, "id_server")?;
        let token = required(body, "id_access_token")?;
        let sid = required(body, "sid")?;
        let client_secret = required(body, "client_secret")?;
        if !valid_id_server(id_server) {
            return Err(Error::invalid_param(
                "id_server must be a valid hostname with optional port and path components",
            ));
        }
        let request = json!({"sid": sid, "client_secret": client_secret, "mxid": me.user_id});
        let (status, answer) = self
            .post_to_identity_server(id_server, "/_matrix/identity/v2/3pid/bind", &format!("Bearer {token}"), &request)
            .await
            .map_err(|why| {
                tracing::info!(id_server, reason = %why, "identity server unreachable");
                Error::new(
                    ErrorKind::Module { status: 500, errcode: "M_UNKNOWN".into() },
                    "Failed to contact identity server",
                )
            })?;
        if !(200..300).contains(&status) {
            // The identity server's own error goes back to the client, as Synapse relays it.
            let errcode = answer["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned();
            let message = answer["error"].as_str().unwrap_or("The identity server refused the binding").to_owned();
            return Err(Error::new(ErrorKind::Module { status, errcode }, message));
        }
        let (Some(medium), Some(address)) = (answer["medium"].as_str(), answer["address"].as_str()) else {
            return Err(Error::new(
                ErrorKind::Module { status: 502, errcode: "M_UNKNOWN".into() },
                "The identity server's answer names no medium and address",
            ));
        };
        let (u, m, a, i) = (me.user_id.to_string(), medium.to_owned(), address.to_owned(), id_server.to_owned());
        self.db(move |s| s.add_threepid_binding(&u, &m, &a, &i)).await?;
        tracing::info!(user = %me.user_id, medium, id_server, "third-party identifier bound");
        Ok(json!({}))
    }

    /// Removes `user`'s binding of `(medium, address)` from `id_server`, or from every
    /// identity server it is known to be bound on. `Ok(false)` when there was nowhere to
    /// unbind or a server does not support unbinding (Synapse's "no-support").
    pub(crate) async fn unbind_threepid(
        &self,
        user: &str,
        medium: &str,
        address: &str,
        id_server: Option<&str>,
    ) -> Result<bool> {
        let servers: Vec<String> = match id_server {
            Some(s) => vec![s.to_owned()],
            None => {
                let u = user.to_owned();
                let bindings = self.db(move |s| s.threepid_bindings(&u)).await?;
                bindings.into_iter().filter(|(m, a, _)| m == medium && a == address).map(|(_, _, i)| i).collect()
            }
        };
        if servers.is_empty() {
            return Ok(false);
        }
        let mut all_unbound = true;
        for server in servers {
            all_unbound &= self.unbind_on(user, medium, address, &server).await?;
        }
        Ok(all_unbound)
    }

    /// One identity server's `POST /_matrix/identity/v2/3pid/unbind`, signed by this server.
    async fn unbind_on(&self, user: &str, medium: &str, address: &str, id_server: &str) -> Result<bool> {
        if !valid_id_server(id_server) {
            return Err(Error::invalid_param(
                "id_server must be a valid hostname with optional port and path components",
            ));
        }
        let path = "/_matrix/identity/v2/3pid/unbind";
        let body = json!({"mxid": user, "threepid": {"medium": medium, "address": address}});
        let authorization =
            crate::federation::sign_request(&self.key, self.server_name(), id_server, "POST", path, Some(&body))?;
        let failed = || {
            Error::new(
                ErrorKind::Module { status: 500, errcode: "M_UNKNOWN".into() },
                "Failed to contact identity server",
            )
        };
        let unbound = match self.post_to_identity_server(id_server, path, &authorization, &body).await {
            Ok((status, _)) if (200..300).contains(&status) => true,
            // It does not know the binding, or cannot unbind: nothing more to do there.
            Ok((400 | 404 | 501, _)) => false,
            Ok((status, answer)) => {
                tracing::warn!(id_server, status, %answer, "identity server failed to unbind");
                return Err(failed());
            }
            Err(why) => {
                tracing::warn!(id_server, reason = %why, "identity server unreachable");
                return Err(failed());
            }
        };
        let (u, m, a, i) = (user.to_owned(), medium.to_owned(), address.to_owned(), id_server.to_owned());
        self.db(move |s| s.remove_threepid_binding(&u, &m, &a, &i)).await?;
        tracing::info!(user, medium, id_server, unbound, "third-party identifier unbound");
        Ok(unbound)
    }

    /// `POST /account/3pid/unbind` and `/account/3pid/delete` (Myelin keeps no identifiers on
    /// accounts, so deleting one is unbinding it): `{"id_server_unbind_result": ...}`.
    pub async fn remove_threepid(&self, me: &Requester, body: &Value) -> Result<Value> {
        let medium = required(body, "medium")?;
        let address = required(body, "address")?;
        let id_server = match body.get("id_server") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(Error::invalid_param("id_server must be a string")),
        };
        let unbound = self.unbind_threepid(me.user_id.as_str(), medium, address, id_server).await?;
        Ok(json!({"id_server_unbind_result": if unbound { "success" } else { "no-support" }}))
    }

    /// At deactivation: every identifier the user bound is unbound (from `id_server` if the
    /// client named one). `true` when every identity server did (Synapse's "success").
    pub(crate) async fn unbind_all_threepids(&self, user: &str, id_server: Option<&str>) -> Result<bool> {
        let u = user.to_owned();
        let mut threepids: Vec<(String, String)> =
            self.db(move |s| s.threepid_bindings(&u)).await?.into_iter().map(|(m, a, _)| (m, a)).collect();
        threepids.dedup();
        let mut all_unbound = true;
        for (medium, address) in threepids {
            all_unbound &= self.unbind_threepid(user, &medium, &address, id_server).await?;
        }
        Ok(all_unbound)
    }
}

#[cfg(test)]
mod tests {
    use super::valid_id_server;

    #[test]
    fn identity_server_locations() {
        for ok in ["id.example.org", "localhost:8090", "id.example.org/path", "[::1]:443", "[::1]", "127.0.0.1"] {
            assert!(valid_id_server(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.com@internal",
            "a b",
            "host:",
            "host:port",
            "[::1]x",
            "a:1:2",
            "id.example.org/../x",
            "x.org?y",
            "x.org#y",
        ] {
            assert!(!valid_id_server(bad), "{bad}");
        }
    }
}
