//! Identity servers, as Synapse talks to them on a user's behalf: binding a third-party
//! identifier (an e-mail address the identity server validated) to the user's Matrix ID
//! (`/account/3pid/bind`), removing bindings (`/account/3pid/unbind`, `/account/3pid/delete`,
//! account deactivation), and inviting by third-party identifier: an identifier bound to a
//! Matrix ID is invited as that user; an unbound one gets an `m.room.third_party_invite` (the
//! identity server stores the invite and hands out keys), and once it is bound the identity
//! server calls `/_matrix/federation/v1/3pid/onbind`, which turns the stored invite into an
//! `m.room.member` invite carrying the identity server's signature.
//!
//! Where a user bound what is remembered (`threepid_bindings`), so a later unbind without a
//! named identity server knows where to go. Requests go over HTTPS to the server the client
//! names, through the IP-range filter like every outbound request. Binds, lookups and stored
//! invites authenticate with the user's identity-server access token; an unbind is signed by
//! this homeserver (`X-Matrix`, as a federation request addressed to the identity server).

use std::time::Duration;

use ruma::{OwnedRoomId, OwnedUserId, RoomId};
use serde_json::{Map, Value, json};

use crate::rooms::AppendOptions;
use crate::server::url_encode;
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

    /// Sends a request to an identity server (`url` in full): the status and the JSON answer
    /// (`Null` if it was not JSON), or the reason it could not be sent.
    async fn identity_request(
        &self,
        method: reqwest::Method,
        url: &str,
        authorization: Option<&str>,
        body: Option<&Value>,
    ) -> std::result::Result<(u16, Value), String> {
        let client = self.identity_client().map_err(|e| e.message)?;
        let mut request = client.request(method, url);
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.config.federation.ip_filter.send(&client, request).await?;
        let status = response.status().as_u16();
        let answer = response.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, answer))
    }

    /// [`Homeserver::identity_request`] with a JSON body, to `https://{id_server}{path}`.
    async fn post_to_identity_server(
        &self,
        id_server: &str,
        path: &str,
        authorization: &str,
        body: &Value,
    ) -> std::result::Result<(u16, Value), String> {
        let url = format!("https://{id_server}{path}");
        self.identity_request(reqwest::Method::POST, &url, Some(authorization), Some(body)).await
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
                    ErrorKind::Module { status: 502, errcode: "M_UNKNOWN".into() },
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
                ErrorKind::Module { status: 502, errcode: "M_UNKNOWN".into() },
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

/// "Failed to contact identity server" when one fails or is down: Synapse's words, but 502 (a
/// remote server's failure) where Synapse answers 500, which would blame this server.
fn identity_server_failed() -> Error {
    Error::new(ErrorKind::Module { status: 502, errcode: "M_UNKNOWN".into() }, "Failed to contact identity server")
}

/// An identity server's answer that does not make sense (502).
fn bad_identity_answer(what: &str) -> Error {
    Error::new(ErrorKind::Module { status: 502, errcode: "M_UNKNOWN".into() }, what.to_owned())
}

/// A string's SHA-256 in unpadded URL-safe base64: the v2 lookup's hashed form.
fn sha256_url_safe(text: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(text.as_bytes()))
}

impl Homeserver {
    /// `POST /rooms/{roomId}/invite` naming a third-party identifier (`id_server`,
    /// `id_access_token`, `medium`, `address`): the Matrix ID it is bound to is invited, else
    /// an invite is stored with the identity server and announced in the room.
    pub async fn invite_threepid(&self, requester: &Requester, room_id: &RoomId, body: &Value) -> Result<()> {
        let id_server = required(body, "id_server")?;
        let token = required(body, "id_access_token")?;
        let medium = required(body, "medium")?;
        let address = required(body, "address")?;
        if !valid_id_server(id_server) {
            return Err(Error::invalid_param(
                "id_server must be a valid hostname with optional port and path components",
            ));
        }
        if requester.is_guest {
            return Err(crate::rooms::guest_forbidden());
        }
        if requester.shadow_banned {
            crate::users::shadow_ban_delay().await;
            return Ok(());
        }
        // Before anything leaves for the identity server: only members may invite.
        if self.membership_of(room_id, requester.user_id.as_str()).await?.as_deref() != Some("join") {
            return Err(Error::forbidden(format!("{} is not in the room", requester.user_id)));
        }
        self.limit_user(&self.limiters.third_party_invite, requester.user_id.as_str(), None).await?;
        if self.modules.has_check_threepid_can_be_invited() {
            let state = self.current_state(room_id).await?.unwrap_or_default();
            let views = self.state_views(&state).await?;
            if !self.modules.check_threepid_can_be_invited(medium, address, &views).await {
                return Err(Error::forbidden("Cannot invite this 3PID"));
            }
        }
        // As Synapse: a lookup that fails counts as no binding (the store-invite call that
        // follows then says what the identity server thinks).
        let bound = match self.lookup_threepid(id_server, token, medium, address).await {
            Ok(bound) => bound,
            Err(e) => {
                tracing::info!(id_server, error = %e, "a 3PID lookup failed; inviting the identifier itself");
                None
            }
        };
        match bound {
            Some(mxid) => {
                let invitee = OwnedUserId::try_from(mxid.as_str())
                    .map_err(|_| bad_identity_answer("The identity server answered an invalid user ID"))?;
                self.update_membership(requester, room_id, &invitee, "invite", None, Map::new()).await?;
            }
            None => {
                self.modules
                    .user_may_send_3pid_invite(requester.user_id.as_str(), medium, address, room_id.as_str())
                    .await?;
                self.store_threepid_invite(requester, room_id, id_server, token, medium, address).await?
            }
        }
        Ok(())
    }

    /// The Matrix ID `(medium, address)` is bound to on `id_server`, by the v2 lookup (hashed
    /// with the server's pepper when it offers `sha256`, as Synapse prefers).
    async fn lookup_threepid(
        &self,
        id_server: &str,
        token: &str,
        medium: &str,
        address: &str,
    ) -> Result<Option<String>> {
        let bearer = format!("Bearer {token}");
        let url = format!("https://{id_server}/_matrix/identity/v2/hash_details?access_token={}", url_encode(token));
        let (status, details) =
            self.identity_request(reqwest::Method::GET, &url, Some(&bearer), None).await.map_err(|why| {
                tracing::info!(id_server, reason = %why, "identity server unreachable");
                identity_server_failed()
            })?;
        if status != 200 {
            tracing::info!(id_server, status, %details, "identity server refused hash_details");
            return Err(identity_server_failed());
        }
        let algorithms: Vec<&str> =
            details["algorithms"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let Some(pepper) = details["lookup_pepper"].as_str().filter(|p| !p.is_empty()) else {
            return Err(bad_identity_answer("Invalid hash details received from identity server"));
        };
        let (algorithm, lookup) = if algorithms.contains(&"sha256") {
            ("sha256", sha256_url_safe(&format!("{address} {medium} {pepper}")))
        } else if algorithms.contains(&"none") {
            ("none", format!("{address} {medium}"))
        } else {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "Provided identity server does not support any v2 lookup algorithms that this homeserver supports.",
            ));
        };
        let request = json!({"addresses": [lookup], "algorithm": algorithm, "pepper": pepper});
        let (status, found) = self
            .post_to_identity_server(id_server, "/_matrix/identity/v2/lookup", &bearer, &request)
            .await
            .map_err(|_| identity_server_failed())?;
        if status != 200 {
            tracing::info!(id_server, status, %found, "identity server refused a lookup");
            return Err(identity_server_failed());
        }
        Ok(found["mappings"][&lookup].as_str().map(str::to_owned))
    }

    /// Stores an invite for an unbound identifier with the identity server (which e-mails the
    /// invitee) and sends the room its `m.room.third_party_invite`, whose state key is the
    /// token the identity server will sign when the identifier is bound.
    async fn store_threepid_invite(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        id_server: &str,
        token: &str,
        medium: &str,
        address: &str,
    ) -> Result<()> {
        let text = |content: Option<Map<String, Value>>, key: &str| {
            content.and_then(|c| c.get(key).and_then(Value::as_str).map(str::to_owned)).unwrap_or_default()
        };
        let member = self.state_content(room_id, "m.room.member", requester.user_id.as_str()).await?;
        let inviter_name = Some(text(member.clone(), "displayname"))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| requester.user_id.to_string());
        let mut request = json!({
            "medium": medium,
            "address": address,
            "room_id": room_id,
            "room_alias": text(self.state_content(room_id, "m.room.canonical_alias", "").await?, "alias"),
            "room_avatar_url": text(self.state_content(room_id, "m.room.avatar", "").await?, "url"),
            "room_join_rules": text(self.state_content(room_id, "m.room.join_rules", "").await?, "join_rule"),
            "room_name": text(self.state_content(room_id, "m.room.name", "").await?, "name"),
            "sender": requester.user_id,
            "sender_display_name": inviter_name,
            "sender_avatar_url": text(member, "avatar_url"),
        });
        if let Some(kind) = self.state_content(room_id, "m.room.create", "").await?.and_then(|c| c.get("type").cloned())
        {
            request["room_type"] = kind;
        }
        let (status, stored) = self
            .post_to_identity_server(
                id_server,
                "/_matrix/identity/v2/store-invite",
                &format!("Bearer {token}"),
                &request,
            )
            .await
            .map_err(|_| identity_server_failed())?;
        if !(200..300).contains(&status) {
            let errcode = stored["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned();
            let message = stored["error"].as_str().unwrap_or("The identity server refused the invite").to_owned();
            return Err(Error::new(ErrorKind::Module { status, errcode }, message));
        }
        let (Some(invite_token), Some(display_name)) = (stored["token"].as_str(), stored["display_name"].as_str())
        else {
            return Err(bad_identity_answer("The identity server's stored invite has no token or display name"));
        };
        let key_validity_url = format!("https://{id_server}/_matrix/identity/v2/pubkey/isvalid");
        let mut public_keys: Vec<Value> = stored["public_keys"].as_array().cloned().unwrap_or_default();
        let fallback = match stored["public_key"].as_str() {
            Some(key) => json!({"public_key": key, "key_validity_url": key_validity_url}),
            None => {
                public_keys.first().cloned().ok_or_else(|| bad_identity_answer("The identity server gave no keys"))?
            }
        };
        if public_keys.is_empty() {
            public_keys.push(fallback.clone());
        }
        let mut content = Map::new();
        content.insert("display_name".into(), json!(display_name));
        content.insert("public_keys".into(), json!(public_keys));
        // For clients and servers that only know the single-key form.
        content.insert("key_validity_url".into(), fallback["key_validity_url"].clone());
        content.insert("public_key".into(), fallback["public_key"].clone());
        // As Synapse: not limited as a message (`rc_third_party_invite` applied already), but
        // spam-checked like any event.
        let options = AppendOptions { spam_check: true, ..AppendOptions::default() };
        self.append_event(
            room_id,
            &requester.user_id,
            "m.room.third_party_invite",
            Some(invite_token),
            content,
            options,
        )
        .await?;
        Ok(())
    }

    /// `POST /_matrix/federation/v1/3pid/onbind`: an identity server says an identifier was
    /// bound, with the invites it stored for it, each signed. Every invite is tried; the last
    /// failure is the answer.
    pub async fn third_party_identifier_bound(&self, body: &Value) -> Result<()> {
        let mut last_failure = None;
        for invite in body["invites"].as_array().into_iter().flatten() {
            if let Err(e) = self.exchange_third_party_invite(invite).await {
                tracing::info!(invite = %invite, error = %e.message, "third-party invite not exchanged");
                last_failure = Some(e);
            }
        }
        last_failure.map_or(Ok(()), Err)
    }

    /// One bound invite becomes the invitee's `m.room.member` invite, sent as the user who
    /// made the third-party invite (even if they left since): the room's authorization rules
    /// check the identity server's signature against the keys in `m.room.third_party_invite`,
    /// and the key that signed is checked with the identity server as not revoked.
    async fn exchange_third_party_invite(&self, invite: &Value) -> Result<()> {
        let signed = invite.get("signed").filter(|s| s["token"].is_string()).ok_or_else(|| {
            Error::new(ErrorKind::BadRequest, "Rejecting received notification of third-party invite without signed")
        })?;
        let token = signed["token"].as_str().unwrap_or_default();
        let field = |name: &str| invite[name].as_str().ok_or_else(|| Error::bad_json(format!("Invite without {name}")));
        let sender = OwnedUserId::try_from(field("sender")?).map_err(|_| Error::invalid_param("Invalid sender"))?;
        let invitee = field("mxid")?;
        OwnedUserId::try_from(invitee).map_err(|_| Error::invalid_param("Invalid mxid"))?;
        let room_id = OwnedRoomId::try_from(field("room_id")?).map_err(|_| Error::invalid_param("Invalid room ID"))?;
        // A room this server is not in would be asked over federation
        // (`exchange_third_party_invite`), which Myelin does not do yet.
        if !self.is_mine(&sender) || !self.participates_in(&room_id).await? {
            return Err(Error::forbidden("This server cannot send invites for that room"));
        }
        let stored = self
            .state_content(&room_id, "m.room.third_party_invite", token)
            .await?
            .ok_or_else(|| Error::forbidden("Could not find invite"))?;
        self.check_third_party_signature(signed, &stored).await?;
        let mut content = Map::new();
        content.insert("membership".into(), json!("invite"));
        content
            .insert("third_party_invite".into(), json!({"display_name": stored.get("display_name"), "signed": signed}));
        self.append_event(&room_id, &sender, "m.room.member", Some(invitee), content, AppendOptions::default()).await?;
        Ok(())
    }

    /// A signature of `signed` that one of the stored invite's public keys verifies, and that
    /// key still valid at its `key_validity_url` (Synapse's revocation check): else 403, or
    /// 502 when the identity server cannot say.
    async fn check_third_party_signature(&self, signed: &Value, stored: &Map<String, Value>) -> Result<()> {
        let mut keys: Vec<(String, String)> = stored
            .get("public_keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|k| Some((k["public_key"].as_str()?.to_owned(), k["key_validity_url"].as_str()?.to_owned())))
            .collect();
        if let (Some(key), Some(url)) =
            (stored.get("public_key").and_then(Value::as_str), stored.get("key_validity_url").and_then(Value::as_str))
        {
            keys.push((key.to_owned(), url.to_owned()));
        }
        let signatures = signed["signatures"].as_object().cloned().unwrap_or_default();
        for (public_key, validity_url) in keys {
            let Ok(parsed) = ruma::serde::Base64::parse(&public_key) else { continue };
            for (entity, by_key) in &signatures {
                for (key_name, signature) in by_key.as_object().into_iter().flatten() {
                    if !key_name.starts_with("ed25519:") {
                        continue;
                    }
                    // This one signature, checked alone against this one key.
                    let mut one = signed.clone();
                    one["signatures"] = json!({entity: {key_name: signature}});
                    let Ok(object) = serde_json::from_value::<ruma::CanonicalJsonObject>(one) else { continue };
                    let public: ruma::signatures::PublicKeyMap =
                        [(entity.clone(), [(key_name.clone(), parsed.clone())].into_iter().collect())]
                            .into_iter()
                            .collect();
                    if ruma::signatures::verify_json(&public, &object).is_ok() {
                        return self.check_key_not_revoked(&public_key, &validity_url).await;
                    }
                }
            }
        }
        Err(Error::forbidden("No signature of the third-party invite matches its keys"))
    }

    /// `GET {key_validity_url}?public_key=`: `{"valid": true}` or the invite is refused.
    async fn check_key_not_revoked(&self, public_key: &str, validity_url: &str) -> Result<()> {
        let cannot_check = || {
            Error::new(
                ErrorKind::Module { status: 502, errcode: "M_UNKNOWN".into() },
                "Third party certificate could not be checked",
            )
        };
        if !validity_url.starts_with("https://") {
            return Err(cannot_check());
        }
        let separator = if validity_url.contains('?') { '&' } else { '?' };
        let url = format!("{validity_url}{separator}public_key={}", url_encode(public_key));
        let (status, answer) =
            self.identity_request(reqwest::Method::GET, &url, None, None).await.map_err(|_| cannot_check())?;
        if status != 200 {
            return Err(cannot_check());
        }
        match answer["valid"].as_bool() {
            Some(true) => Ok(()),
            _ => Err(Error::forbidden("Third party certificate was invalid")),
        }
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
