//! Server ACLs (`m.room.server_acl`): which servers may take part in a room. Checked on every
//! federation endpoint that names a room, as Synapse does: a server the room's ACL denies is
//! answered `403 M_FORBIDDEN`, and its PDUs and EDUs for the room are refused.

use ruma::RoomId;
use serde_json::{Map, Value};

use crate::{Error, Homeserver, Result};

/// Whether an ACL's content admits `server` (a server name; any port is ignored): IP literals
/// only if `allow_ip_literals` (default true), then no `deny` glob may match and some `allow`
/// glob must (no `allow` list admits nobody). Globs match case-insensitively, `*` any run of
/// characters and `?` one.
pub(crate) fn server_allowed(acl: &Map<String, Value>, server: &str) -> bool {
    let host = host_of(server);
    let allow_ip_literals = acl.get("allow_ip_literals").and_then(Value::as_bool).unwrap_or(true);
    if !allow_ip_literals && (host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok()) {
        return false;
    }
    let globs = |key: &str| -> Vec<&str> {
        acl.get(key).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect()
    };
    if globs("deny").iter().any(|g| glob_matches(g, host)) {
        return false;
    }
    globs("allow").iter().any(|g| glob_matches(g, host))
}

/// The host part of a server name: without a port, keeping an IPv6 literal's brackets.
fn host_of(server: &str) -> &str {
    if server.starts_with('[') {
        return server.find(']').map_or(server, |end| &server[..=end]);
    }
    server.rsplit_once(':').map_or(server, |(host, _)| host)
}

/// A glob match over the whole of `text`, case-insensitive.
fn glob_matches(glob: &str, text: &str) -> bool {
    let glob: Vec<char> = glob.to_lowercase().chars().collect();
    let text: Vec<char> = text.to_lowercase().chars().collect();
    // Iterative wildcard matching with backtracking to the last `*`.
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if g < glob.len() && (glob[g] == '?' || glob[g] == text[t]) {
            g += 1;
            t += 1;
        } else if g < glob.len() && glob[g] == '*' {
            star = Some((g, t));
            g += 1;
        } else if let Some((sg, st)) = star {
            g = sg + 1;
            t = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|c| *c == '*')
}

impl Homeserver {
    /// `403 M_FORBIDDEN` when the room's server ACL denies `origin`; a room without an ACL
    /// (or one this server does not know) admits everyone.
    pub(crate) async fn check_server_acl(&self, origin: &str, room_id: &RoomId) -> Result<()> {
        match self.state_content(room_id, "m.room.server_acl", "").await? {
            Some(acl) if !server_allowed(&acl, origin) => Err(Error::forbidden("Server is banned from room")),
            _ => Ok(()),
        }
    }

    /// [`Homeserver::check_server_acl`] for a room ID as the request spelled it.
    pub(crate) async fn check_server_acl_str(&self, origin: &str, room_id: &str) -> Result<()> {
        match ruma::OwnedRoomId::try_from(room_id) {
            Ok(room) => self.check_server_acl(origin, &room).await,
            Err(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn acl(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn globs_match_whole_names_case_insensitively() {
        assert!(glob_matches("*", "anything.example"));
        assert!(glob_matches("*.evil.com", "a.b.EVIL.com"));
        assert!(!glob_matches("*.evil.com", "evil.com"));
        assert!(glob_matches("ev?l.com", "evil.com"));
        assert!(!glob_matches("ev?l.com", "eviil.com"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
    }

    #[test]
    fn deny_wins_allow_is_needed_and_ip_literals_may_be_refused() {
        let rules = acl(json!({"allow": ["*"], "deny": ["*.evil.com", "evil.com"], "allow_ip_literals": false}));
        assert!(server_allowed(&rules, "good.example:8448"));
        assert!(!server_allowed(&rules, "evil.com:443"));
        assert!(!server_allowed(&rules, "sub.evil.com"));
        assert!(!server_allowed(&rules, "1.2.3.4:8448"));
        assert!(!server_allowed(&rules, "[::1]:8448"));
        assert!(server_allowed(&acl(json!({"allow": ["*"]})), "1.2.3.4"), "IP literals allowed by default");
        assert!(!server_allowed(&acl(json!({})), "good.example"), "no allow list admits nobody");
        assert!(!server_allowed(&acl(json!({"allow": "*"})), "good.example"), "a malformed list admits nobody");
        assert!(server_allowed(&acl(json!({"allow": ["localhost"]})), "localhost:8448"), "the port is ignored");
    }
}
