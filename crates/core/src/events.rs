//! Room events as federation-grade PDUs: building, hashing, signing, reference-hash IDs, and
//! the [`Pdu`] type the authorization rules and state resolution run on.
//!
//! PDUs are the one thing in `core` that is serialised as a wire contract: their canonical JSON
//! is what gets hashed and signed. The stored JSON carries `event_id` for convenience; it is
//! removed before hashing or verifying, as room versions 3+ require (in versions 1 and 2 the
//! `$id:server` ID is part of the event, and stays).

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use ruma::events::TimelineEventType;
use ruma::room_version_rules::{EventsReferenceFormatVersion, RoomVersionRules};
use ruma::signatures::Ed25519KeyPair;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId,
    RoomId, UserId,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::{Error, Result};

/// The server's ed25519 signing key, in Synapse's key-file format (`ed25519 <version> <seed>`).
pub struct SigningKey {
    /// The key pair ruma signs with.
    pub pair: Ed25519KeyPair,
    /// `ed25519:<version>`.
    pub key_id: String,
    /// The public key, unpadded base64.
    pub public_key_base64: String,
}

/// PKCS#8 v1 prefix for an ed25519 private key; the 32-byte seed follows.
const PKCS8_ED25519_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

impl SigningKey {
    /// Reads a Synapse-format key file.
    pub fn load(path: &Path) -> std::result::Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut parts = text.split_whitespace();
        let (Some("ed25519"), Some(version), Some(seed)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("{}: not an ed25519 signing key file", path.display()));
        };
        let seed = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(seed.trim_end_matches('='))
            .map_err(|e| format!("{}: bad key encoding: {e}", path.display()))?;
        Self::from_seed(version, &seed).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Builds a key from a version and 32-byte seed.
    pub fn from_seed(version: &str, seed: &[u8]) -> std::result::Result<Self, String> {
        if seed.len() != 32 {
            return Err("ed25519 seed must be 32 bytes".into());
        }
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(seed);
        let pair = Ed25519KeyPair::from_der(&der, version.to_owned()).map_err(|e| e.to_string())?;
        let public_key_base64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(pair.public_key());
        Ok(SigningKey { pair, key_id: format!("ed25519:{version}"), public_key_base64 })
    }

    /// Writes a fresh key file (mode 0600), refusing to overwrite.
    pub fn generate(path: &Path) -> std::result::Result<(), String> {
        use rand::{Rng, RngCore};
        let mut seed = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut seed);
        let version: String =
            rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(6).map(char::from).collect();
        let line = format!("ed25519 a_{version} {}\n", base64::engine::general_purpose::STANDARD_NO_PAD.encode(seed));
        Self::write_new(path, line.as_bytes())
    }

    /// Writes a key file (Synapse's format) at `path`, which must not exist: readable by its
    /// owner only, and whole or absent after a crash (an empty key file would stop every
    /// later start). `myelin import-synapse` installs a Synapse's key with it.
    pub fn write_new(path: &Path, contents: &[u8]) -> std::result::Result<(), String> {
        crate::durable::create_new_file(path, contents, 0o600).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The fields of a PDU that Myelin reads, parsed once from its JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "WirePdu")]
pub struct Pdu {
    /// `$` + reference hash (room versions 3+), or the `$id:server` the event carries (1 and 2).
    pub event_id: OwnedEventId,
    /// The room. A room version 12 create event names no room: its room ID is derived from its
    /// event ID (see [`Pdu::names_room`]).
    pub room_id: OwnedRoomId,
    /// The sender.
    pub sender: OwnedUserId,
    /// `type`.
    pub kind: TimelineEventType,
    /// For state events.
    pub state_key: Option<String>,
    /// The content, kept raw for the auth rules' lazy parsing.
    pub content: Box<RawValue>,
    /// Parent events.
    pub prev_events: Vec<OwnedEventId>,
    /// Auth events.
    pub auth_events: Vec<OwnedEventId>,
    /// For redactions (top-level in v10; in content from v11).
    pub redacts: Option<OwnedEventId>,
    /// Timestamp.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// Depth in the graph.
    pub depth: u64,
    /// Whether the JSON has a `room_id` (all events but room version 12's create events).
    pub names_room: bool,
    /// Set when the event failed the authorization rules.
    pub rejected: bool,
}

/// An event reference: an ID (room versions 3+) or an `[ID, hashes]` pair (1 and 2).
#[derive(Deserialize)]
#[serde(untagged)]
enum EventRef {
    Id(OwnedEventId),
    Pair(OwnedEventId, serde::de::IgnoredAny),
}

impl EventRef {
    fn id(self) -> OwnedEventId {
        match self {
            EventRef::Id(id) | EventRef::Pair(id, _) => id,
        }
    }
}

/// A PDU as written, in any room version's format.
#[derive(Deserialize)]
struct WirePdu {
    event_id: OwnedEventId,
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    #[serde(default)]
    state_key: Option<String>,
    content: Box<RawValue>,
    #[serde(default)]
    prev_events: Vec<EventRef>,
    #[serde(default)]
    auth_events: Vec<EventRef>,
    #[serde(default)]
    redacts: Option<OwnedEventId>,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    depth: u64,
}

impl TryFrom<WirePdu> for Pdu {
    type Error = String;

    fn try_from(w: WirePdu) -> std::result::Result<Self, String> {
        let names_room = w.room_id.is_some();
        let room_id = match w.room_id {
            Some(r) => r,
            None if w.kind == TimelineEventType::RoomCreate => room_id_of_create(&w.event_id)?,
            None => return Err("missing field `room_id`".into()),
        };
        Ok(Pdu {
            event_id: w.event_id,
            room_id,
            sender: w.sender,
            kind: w.kind,
            state_key: w.state_key,
            content: w.content,
            prev_events: w.prev_events.into_iter().map(EventRef::id).collect(),
            auth_events: w.auth_events.into_iter().map(EventRef::id).collect(),
            redacts: w.redacts,
            origin_server_ts: w.origin_server_ts,
            depth: w.depth,
            names_room,
            rejected: false,
        })
    }
}

/// The room a room version 12 create event makes: `!` and the event's reference hash.
pub fn room_id_of_create(event_id: &ruma::EventId) -> std::result::Result<OwnedRoomId, String> {
    OwnedRoomId::try_from(format!("!{}", &event_id.as_str()[1..])).map_err(|e| format!("bad room ID: {e}"))
}

impl Pdu {
    /// Parses stored or received JSON.
    pub fn from_json_str(json: &str) -> Result<Pdu> {
        serde_json::from_str(json).map_err(|e| Error::internal(format!("bad stored event: {e}")))
    }

    /// The content as a JSON map.
    pub fn content_map(&self) -> Map<String, Value> {
        serde_json::from_str(self.content.get()).unwrap_or_default()
    }

    /// `content.membership` for member events.
    pub fn membership(&self) -> Option<String> {
        if self.kind != TimelineEventType::RoomMember {
            return None;
        }
        self.content_map().get("membership").and_then(Value::as_str).map(str::to_owned)
    }

    /// The event this one redacts, wherever the room version puts it.
    pub fn redacts_id(&self) -> Option<OwnedEventId> {
        self.redacts.clone().or_else(|| {
            self.content_map().get("redacts").and_then(Value::as_str).and_then(|s| OwnedEventId::try_from(s).ok())
        })
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.names_room.then_some(&*self.room_id)
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}

/// What a new local event is made of before hashing and signing.
pub struct EventDraft<'a> {
    /// Room.
    pub room_id: &'a RoomId,
    /// Sender.
    pub sender: &'a UserId,
    /// Type.
    pub kind: &'a str,
    /// State key, for state events.
    pub state_key: Option<&'a str>,
    /// Content.
    pub content: Map<String, Value>,
    /// Parents (the forward extremities).
    pub prev_events: Vec<OwnedEventId>,
    /// Auth events chosen from the current state.
    pub auth_events: Vec<OwnedEventId>,
    /// Depth: one more than the deepest parent.
    pub depth: u64,
    /// For redactions in room versions that keep `redacts` at the top level.
    pub redacts: Option<&'a str>,
    /// Timestamp.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// Room versions 1 and 2 reference parents and auth events as `[ID, {"sha256": hash}]`:
    /// the reference hashes of those known (see [`event_references`]).
    pub reference_hashes: HashMap<OwnedEventId, String>,
}

impl<'a> EventDraft<'a> {
    /// A user's own membership event (`m.room.member`, their ID as state key), stamped now.
    pub fn own_membership(
        room_id: &'a RoomId,
        user: &'a UserId,
        content: Map<String, Value>,
        prev_events: Vec<OwnedEventId>,
        auth_events: Vec<OwnedEventId>,
        depth: u64,
        reference_hashes: HashMap<OwnedEventId, String>,
    ) -> Self {
        EventDraft {
            room_id,
            sender: user,
            kind: "m.room.member",
            state_key: Some(user.as_str()),
            content,
            prev_events,
            auth_events,
            depth,
            redacts: None,
            origin_server_ts: MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(crate::server::now_ms() as u64)),
            reference_hashes,
        }
    }
}

/// The parents, auth events and (room versions 1 and 2) their reference hashes of an event
/// template another server made (`make_join`, `make_leave`).
pub fn template_references(template: &Value) -> (Vec<OwnedEventId>, Vec<OwnedEventId>, HashMap<OwnedEventId, String>) {
    let (prev_events, mut reference_hashes) = parse_event_references(&template["prev_events"]);
    let (auth_events, auth_hashes) = parse_event_references(&template["auth_events"]);
    reference_hashes.extend(auth_hashes);
    (prev_events, auth_events, reference_hashes)
}

/// A list of event references as a room version writes it: IDs (3 on), or `[ID, hashes]`
/// pairs with each event's reference hash where known (1 and 2).
pub fn event_references(
    ids: &[OwnedEventId],
    rules: &RoomVersionRules,
    reference_hashes: &HashMap<OwnedEventId, String>,
) -> Value {
    let pairs = rules.events_reference_format == EventsReferenceFormatVersion::V1;
    Value::Array(
        ids.iter()
            .map(|id| match (pairs, reference_hashes.get(id)) {
                (false, _) => Value::String(id.to_string()),
                (true, Some(hash)) => serde_json::json!([id, {"sha256": hash}]),
                (true, None) => serde_json::json!([id, {}]),
            })
            .collect(),
    )
}

/// The references of a JSON list in either format: `(IDs, reference hashes given)`.
pub fn parse_event_references(list: &Value) -> (Vec<OwnedEventId>, HashMap<OwnedEventId, String>) {
    let mut ids = Vec::new();
    let mut hashes = HashMap::new();
    for item in list.as_array().into_iter().flatten() {
        let (id, hash) = match item {
            Value::String(id) => (id.as_str(), None),
            Value::Array(pair) => match pair.first().and_then(Value::as_str) {
                Some(id) => (id, pair.get(1).and_then(|h| h.get("sha256")).and_then(Value::as_str)),
                None => continue,
            },
            _ => continue,
        };
        let Ok(id) = OwnedEventId::try_from(id) else { continue };
        if let Some(hash) = hash {
            hashes.insert(id.clone(), hash.to_owned());
        }
        ids.push(id);
    }
    (ids, hashes)
}

/// A signed PDU: its ID and its full JSON (including `event_id`).
pub struct SignedEvent {
    /// Parsed fields.
    pub pdu: Pdu,
    /// Canonical JSON text, with `event_id`.
    pub json: String,
    /// The same as an object.
    pub object: CanonicalJsonObject,
}

fn canonical(v: Value) -> Result<CanonicalJsonValue> {
    CanonicalJsonValue::try_from(v).map_err(|e| Error::bad_json(format!("Event is not canonical JSON: {e}")))
}

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;

/// Hashes and signs a draft, and derives its reference-hash event ID; 413 `M_TOO_LARGE` for
/// an event over [`MAX_PDU_BYTES`].
pub fn sign_event(
    draft: EventDraft<'_>,
    rules: &RoomVersionRules,
    server_name: &str,
    key: &SigningKey,
) -> Result<SignedEvent> {
    let mut object = CanonicalJsonObject::new();
    let refs = |v: &[OwnedEventId]| event_references(v, rules, &draft.reference_hashes);
    object.insert("auth_events".into(), canonical(refs(&draft.auth_events))?);
    object.insert("prev_events".into(), canonical(refs(&draft.prev_events))?);
    // Room versions 1 and 2: the event is named by its server, and signed with its name.
    let carried_id =
        rules.event_format.require_event_id.then(|| format!("${}:{server_name}", crate::server::random_string(18)));
    if let Some(id) = &carried_id {
        object.insert("event_id".into(), CanonicalJsonValue::String(id.clone()));
    }
    object.insert("content".into(), canonical(Value::Object(draft.content))?);
    object.insert("depth".into(), CanonicalJsonValue::Integer((draft.depth as i64).try_into().unwrap_or_default()));
    object.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(draft.origin_server_ts.0.into()));
    // From room version 12 the create event names no room: the room is named after it.
    if !(draft.kind == "m.room.create" && rules.authorization.room_create_event_id_as_room_id) {
        object.insert("room_id".into(), CanonicalJsonValue::String(draft.room_id.to_string()));
    }
    object.insert("sender".into(), CanonicalJsonValue::String(draft.sender.to_string()));
    object.insert("type".into(), CanonicalJsonValue::String(draft.kind.to_owned()));
    if let Some(k) = draft.state_key {
        object.insert("state_key".into(), CanonicalJsonValue::String(k.to_owned()));
    }
    if let Some(r) = draft.redacts {
        object.insert("redacts".into(), CanonicalJsonValue::String(r.to_owned()));
    }
    let too_large = || Error::new(crate::ErrorKind::TooLarge, "event too large");
    ruma::signatures::hash_and_sign_event(server_name, &key.pair, &mut object, &rules.redaction).map_err(
        |e| match e {
            ruma::signatures::JsonError::PduTooLarge => too_large(),
            e => Error::internal(format!("signing failed: {e}")),
        },
    )?;
    // The spec's limit on a whole PDU, signatures included (Synapse's "event too large").
    if serde_json::to_vec(&object).map_or(0, |b| b.len()) > MAX_PDU_BYTES {
        return Err(too_large());
    }
    if carried_id.is_none() {
        let hash = ruma::signatures::reference_hash(&object, rules)
            .map_err(|e| Error::internal(format!("reference hash failed: {e}")))?;
        object.insert("event_id".into(), CanonicalJsonValue::String(format!("${hash}")));
    }
    let json = serde_json::to_string(&object).map_err(Error::internal)?;
    let pdu = Pdu::from_json_str(&json)?;
    Ok(SignedEvent { pdu, json, object })
}

/// The client-format (`ClientEvent`) JSON of a stored PDU.
pub fn client_event(pdu_json: &Value) -> Value {
    let mut out = Map::new();
    if let Value::Object(o) = pdu_json {
        for key in ["event_id", "type", "sender", "room_id", "origin_server_ts", "content", "state_key", "redacts"] {
            if let Some(v) = o.get(key) {
                out.insert(key.to_owned(), v.clone());
            }
        }
        if let Some(Value::Object(unsigned)) = o.get("unsigned") {
            out.insert("unsigned".into(), Value::Object(unsigned.clone()));
        }
    }
    name_created_room(&mut out);
    Value::Object(out)
}

/// Clients see every event with its room ID, a room version 12 create event too (which, as a
/// PDU, has none: the room is named after it).
fn name_created_room(event: &mut Map<String, Value>) {
    if event.contains_key("room_id") || event.get("type").and_then(Value::as_str) != Some("m.room.create") {
        return;
    }
    if let Some(id) = event.get("event_id").and_then(Value::as_str).and_then(|e| e.strip_prefix('$')) {
        let room_id = format!("!{id}");
        event.insert("room_id".into(), Value::String(room_id));
    }
}

/// The fields of a stored PDU that clients see; the rest (`auth_events`, `prev_events`,
/// `hashes`, `signatures`, `depth`) is skipped while parsing, never built.
#[derive(serde::Deserialize)]
struct ClientFields {
    event_id: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<Value>,
    sender: Option<Value>,
    room_id: Option<Value>,
    origin_server_ts: Option<Value>,
    content: Option<Value>,
    state_key: Option<Value>,
    redacts: Option<Value>,
    unsigned: Option<Value>,
}

/// [`client_event`] straight from stored JSON text: the same result without building the
/// whole PDU first (sync and pagination turn many stored events into client events).
pub fn client_event_from_str(json: &str) -> Value {
    let Ok(f) = serde_json::from_str::<ClientFields>(json) else { return Value::Object(Map::new()) };
    let mut out = Map::new();
    let fields = [
        ("event_id", f.event_id),
        ("type", f.kind),
        ("sender", f.sender),
        ("room_id", f.room_id),
        ("origin_server_ts", f.origin_server_ts),
        ("content", f.content),
        ("state_key", f.state_key),
        ("redacts", f.redacts),
    ];
    for (key, value) in fields {
        if let Some(v) = value {
            out.insert(key.to_owned(), v);
        }
    }
    if let Some(u @ Value::Object(_)) = f.unsigned {
        out.insert("unsigned".into(), u);
    }
    name_created_room(&mut out);
    Value::Object(out)
}

/// Redacts a PDU's JSON per the room version's rules, keeping `event_id`.
pub fn redact_json(json: &str, rules: &RoomVersionRules, because: Option<&Value>) -> Result<String> {
    let value: Value = serde_json::from_str(json).map_err(Error::internal)?;
    let Value::Object(mut map) = value else { return Err(Error::internal("event is not an object")) };
    let event_id = map.remove("event_id");
    let object = ruma::canonical_json::try_from_json_map(map).map_err(Error::internal)?;
    let mut redacted = ruma::canonical_json::redact(object, &rules.redaction, None).map_err(Error::internal)?;
    if let Some(Value::String(id)) = event_id {
        redacted.insert("event_id".into(), CanonicalJsonValue::String(id));
    }
    let mut value = serde_json::to_value(&redacted).map_err(Error::internal)?;
    if let (Some(because), Value::Object(m)) = (because, &mut value) {
        // `redacted_by` beside `redacted_because`, as Synapse serves them.
        m.insert(
            "unsigned".into(),
            serde_json::json!({ "redacted_because": because, "redacted_by": because["event_id"] }),
        );
    }
    serde_json::to_string(&value).map_err(Error::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_events_from_text_match_client_events_from_values() {
        let pdu = serde_json::json!({
            "auth_events": ["$a", "$b"], "prev_events": ["$p"], "depth": 4,
            "hashes": {"sha256": "h"}, "signatures": {"x": {"ed25519:a": "s"}},
            "event_id": "$e", "type": "m.room.member", "sender": "@a:x", "room_id": "!r:x",
            "origin_server_ts": 5, "content": {"membership": "join"}, "state_key": "@a:x",
            "unsigned": {"age": 1},
        });
        assert_eq!(client_event_from_str(&pdu.to_string()), client_event(&pdu));
        let message = serde_json::json!({"event_id": "$m", "type": "m.room.message", "content": {}, "depth": 1});
        assert_eq!(client_event_from_str(&message.to_string()), client_event(&message));
        assert_eq!(client_event_from_str("not json"), serde_json::json!({}));
    }

    #[test]
    fn signing_key_round_trips_through_synapse_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        SigningKey::generate(&path).unwrap();
        let a = SigningKey::load(&path).unwrap();
        let b = SigningKey::load(&path).unwrap();
        assert_eq!(a.public_key_base64, b.public_key_base64);
        assert!(a.key_id.starts_with("ed25519:a_"));
        assert!(SigningKey::generate(&path).is_err(), "must not overwrite a key");
    }
}
