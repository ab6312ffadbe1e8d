//! The MSC4186 request body, checked as Synapse checks it (strict types, `timeline_limit` at
//! most 1000, at most 100 lists with keys of at most 64 bytes, `to_device.since` an integer).
//! Unknown fields and unknown extensions are ignored, as the MSC requires.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result};

/// The most timeline events one room may ask for.
const MAX_TIMELINE_LIMIT: i64 = 1000;
/// The most lists one request may have.
const MAX_LISTS: usize = 100;
/// The longest list key.
const MAX_LIST_KEY: usize = 64;

#[derive(Debug, Deserialize)]
pub(crate) struct Body {
    pub conn_id: Option<String>,
    pub lists: Option<BTreeMap<String, ListConfig>>,
    pub room_subscriptions: Option<BTreeMap<String, RoomParams>>,
    pub extensions: Option<Extensions>,
}

/// What a list or a subscription asks of each of its rooms.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RoomParams {
    pub required_state: Vec<(String, String)>,
    pub timeline_limit: i64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListConfig {
    pub required_state: Vec<(String, String)>,
    pub timeline_limit: i64,
    /// Inclusive index ranges; all rooms when absent.
    pub ranges: Option<Vec<(u64, u64)>>,
    pub slow_get_all_rooms: Option<bool>,
    pub filters: Option<Filters>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Filters {
    pub is_dm: Option<bool>,
    pub spaces: Option<Vec<String>>,
    pub is_encrypted: Option<bool>,
    pub is_invite: Option<bool>,
    /// `null` in the list stands for rooms without a type.
    pub room_types: Option<Vec<Option<String>>>,
    pub not_room_types: Option<Vec<Option<String>>>,
    pub room_name_like: Option<String>,
    pub tags: Option<Vec<String>>,
    pub not_tags: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Extensions {
    pub to_device: Option<ToDevice>,
    pub e2ee: Option<Enabled>,
    pub account_data: Option<PerRoom>,
    pub receipts: Option<PerRoom>,
    pub typing: Option<PerRoom>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ToDevice {
    pub enabled: Option<bool>,
    #[serde(default = "default_to_device_limit")]
    pub limit: i64,
    pub since: Option<String>,
}

fn default_to_device_limit() -> i64 {
    100
}

#[derive(Debug, Deserialize)]
pub(crate) struct Enabled {
    pub enabled: Option<bool>,
}

/// An extension that applies to some of the response's rooms: those of the named lists and
/// subscriptions (`"*"`: all of them, the default).
#[derive(Debug, Deserialize)]
pub(crate) struct PerRoom {
    pub enabled: Option<bool>,
    #[serde(default = "everything")]
    pub lists: Option<Vec<String>>,
    #[serde(default = "everything")]
    pub rooms: Option<Vec<String>>,
}

fn everything() -> Option<Vec<String>> {
    Some(vec!["*".to_owned()])
}

impl Body {
    /// Parses and checks a request body.
    pub(crate) fn parse(body: Value) -> Result<Body> {
        if !body.is_object() {
            return Err(Error::bad_json("The request body must be a JSON object"));
        }
        let body: Body = serde_json::from_value(body).map_err(|e| Error::bad_json(e.to_string()))?;
        if let Some(lists) = &body.lists {
            if lists.len() > MAX_LISTS {
                return Err(Error::bad_json(format!("Max lists: {MAX_LISTS} but saw {}", lists.len())));
            }
            for (key, list) in lists {
                if key.len() > MAX_LIST_KEY {
                    return Err(Error::bad_json(format!("List key longer than {MAX_LIST_KEY} bytes: {key}")));
                }
                check_timeline_limit(list.timeline_limit)?;
            }
        }
        for sub in body.room_subscriptions.iter().flat_map(|s| s.values()) {
            check_timeline_limit(sub.timeline_limit)?;
        }
        if let Some(since) = body.extensions.as_ref().and_then(|e| e.to_device.as_ref()).and_then(|t| t.since.as_ref())
            && since.parse::<i64>().is_err()
        {
            return Err(Error::bad_json("'extensions.to_device.since' is invalid (should look like an int)"));
        }
        Ok(body)
    }

    pub(crate) fn extensions(&self) -> &Extensions {
        static NONE: Extensions =
            Extensions { to_device: None, e2ee: None, account_data: None, receipts: None, typing: None };
        self.extensions.as_ref().unwrap_or(&NONE)
    }
}

fn check_timeline_limit(limit: i64) -> Result<()> {
    if limit > MAX_TIMELINE_LIMIT {
        return Err(Error::bad_json(format!("timeline_limit must be at most {MAX_TIMELINE_LIMIT}")));
    }
    Ok(())
}

/// What the response sends of one room: the union of what its lists and subscription ask.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct RoomConfig {
    pub timeline_limit: usize,
    pub required_state: BTreeSet<(String, String)>,
}

impl RoomConfig {
    pub(crate) fn new(required_state: &[(String, String)], timeline_limit: i64) -> Self {
        RoomConfig {
            timeline_limit: timeline_limit.max(0) as usize,
            required_state: required_state.iter().cloned().collect(),
        }
    }

    /// The superset of two configs (a room in several lists).
    pub(crate) fn merge(&mut self, other: &RoomConfig) {
        self.timeline_limit = self.timeline_limit.max(other.timeline_limit);
        self.required_state.extend(other.required_state.iter().cloned());
    }

    /// Whether the state event `(kind, key)` is asked for, `me` standing for `$ME`. `$LAZY`
    /// members are chosen by the caller (they depend on the timeline).
    pub(crate) fn wants_state(&self, kind: &str, key: &str, me: &str) -> bool {
        // `["*", "*"]` asks for everything (Synapse treats `["*", key]` the same way).
        if self.required_state.iter().any(|(t, _)| t == "*") {
            return true;
        }
        self.required_state.iter().any(|(t, k)| {
            t == kind && (k == "*" || k == key || (k == "$ME" && key == me)) && !(k == "$LAZY" && t == "m.room.member")
        })
    }

    /// Whether members are lazy-loaded (`["m.room.member", "$LAZY"]`).
    pub(crate) fn lazy_members(&self) -> bool {
        self.required_state.iter().any(|(t, k)| t == "m.room.member" && k == "$LAZY")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn strict_types_are_refused() {
        for body in [
            json!([]),
            json!({"lists": {"a": {"required_state": [], "timeline_limit": "1"}}}),
            json!({"lists": {"a": {"required_state": [["m.room.name"]], "timeline_limit": 1}}}),
            json!({"lists": {"a": {"required_state": [], "timeline_limit": 1, "ranges": [[-1, 3]]}}}),
            json!({"lists": {"a": {"required_state": [], "timeline_limit": 1001}}}),
            json!({"lists": {"a": {"timeline_limit": 1}}}),
            json!({"room_subscriptions": {"!r:x": {"required_state": [], "timeline_limit": 1.5}}}),
            json!({"extensions": {"to_device": {"enabled": true, "since": "abc"}}}),
            json!({"lists": {"a".repeat(65): {"required_state": [], "timeline_limit": 1}}}),
        ] {
            let err = Body::parse(body.clone()).unwrap_err();
            assert_eq!(err.errcode(), "M_BAD_JSON", "{body}");
        }
    }

    #[test]
    fn unknown_fields_and_extensions_are_ignored() {
        let body = Body::parse(json!({
            "conn_id": "main",
            "lists": {"all": {"required_state": [["*", "*"]], "timeline_limit": 0, "ranges": [[0, 9]], "x": 1}},
            "extensions": {"io.example.unknown": {"enabled": true}, "typing": {"enabled": true}},
        }))
        .unwrap();
        let typing = body.extensions().typing.as_ref().unwrap();
        assert_eq!(typing.lists, Some(vec!["*".to_owned()]));
        assert_eq!(body.lists.unwrap()["all"].ranges, Some(vec![(0, 9)]));
    }

    #[test]
    fn required_state_matching() {
        let me = "@me:x";
        let config = RoomConfig::new(
            &[
                ("m.room.name".into(), "".into()),
                ("m.room.member".into(), "$ME".into()),
                ("m.room.member".into(), "$LAZY".into()),
                ("m.space.child".into(), "*".into()),
            ],
            1,
        );
        assert!(config.wants_state("m.room.name", "", me));
        assert!(config.wants_state("m.room.member", me, me));
        assert!(!config.wants_state("m.room.member", "@other:x", me));
        assert!(config.wants_state("m.space.child", "!a:x", me));
        assert!(!config.wants_state("m.room.topic", "", me));
        assert!(config.lazy_members());
        let all = RoomConfig::new(&[("*".into(), "*".into())], 1);
        assert!(all.wants_state("m.room.topic", "", me));
    }
}
