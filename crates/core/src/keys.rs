//! End-to-end encryption plumbing: device, one-time and fallback keys, cross-signing keys and
//! signatures, to-device messages, and server-side key backup.
//!
//! The server never sees plaintext: it stores what clients upload, hands it out by the spec's
//! rules, and tells `/sync` what changed. Key JSON is kept as sent; only structure is checked
//! (user and device IDs must be the requester's, key IDs must be `algorithm:id`). Users on other
//! servers are asked over federation (`federation::queries`); a server that fails is reported under `failures`.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use crate::rooms::parse_token;
use crate::{Error, ErrorKind, Homeserver, Requester, Result};

/// The largest to-device message content Myelin accepts, as Synapse's EDU size limit.
pub const MAX_TO_DEVICE_CONTENT: usize = 65_536;

fn bad(message: impl Into<String>) -> Error {
    Error::bad_json(message)
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| bad(format!("{what} must be an object")))
}

/// An optional object field: absent or null is `None`, another type is an error.
fn optional_object<'a>(body: &'a Map<String, Value>, key: &str) -> Result<Option<&'a Map<String, Value>>> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => object(v, key).map(Some),
    }
}

/// `algorithm:key_id` keys of a one-time or fallback key map, as `(algorithm, key_id, json)`.
fn key_rows(keys: &Map<String, Value>, what: &str) -> Result<Vec<(String, String, String)>> {
    keys.iter()
        .map(|(id, key)| {
            let (algorithm, _) = id
                .split_once(':')
                .ok_or_else(|| Error::invalid_param(format!("{what} key ID {id} has no algorithm")))?;
            if !(key.is_string() || key.is_object()) {
                return Err(bad(format!("{what} key {id} must be a string or an object")));
            }
            Ok((algorithm.to_owned(), id.clone(), key.to_string()))
        })
        .collect()
}

/// Merges the `signatures` of `from` into those of `into`.
fn merge_signatures(into: &mut Value, from: &Value) {
    let Some(new) = from.get("signatures").and_then(Value::as_object) else { return };
    let sigs = into.as_object_mut().map(|o| o.entry("signatures").or_insert_with(|| json!({})));
    let Some(Value::Object(sigs)) = sigs else { return };
    for (user, by_key) in new {
        let entry = sigs.entry(user.clone()).or_insert_with(|| json!({}));
        if let (Value::Object(entry), Some(by_key)) = (entry, by_key.as_object()) {
            for (k, v) in by_key {
                entry.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Everything but `signatures` and `unsigned`: two uploads of the same key compare equal.
fn without_signatures(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("signatures");
        o.remove("unsigned");
    }
    v
}

/// Synapse's rule for replacing a backed-up session key: a verified key beats an unverified
/// one, then the lower `first_message_index`, then the lower `forwarded_count`.
fn should_replace_backup(current: &Value, new: &Value) -> bool {
    let verified = |v: &Value| v["is_verified"].as_bool().unwrap_or(false);
    if verified(current) != verified(new) {
        return verified(new);
    }
    let index = |v: &Value| v["first_message_index"].as_i64().unwrap_or(i64::MAX);
    if index(current) != index(new) {
        return index(new) < index(current);
    }
    new["forwarded_count"].as_i64().unwrap_or(i64::MAX) < current["forwarded_count"].as_i64().unwrap_or(i64::MAX)
}

/// The end-to-end parts of one `/sync` response.
pub(crate) struct SyncKeys {
    pub to_device: Vec<Value>,
    pub changed: Vec<String>,
    pub left: Vec<String>,
    /// Users who came to share a room with the user in the range (their presence is news too).
    pub newly_shared: Vec<String>,
    pub one_time_key_counts: Value,
    pub unused_fallback_key_types: Vec<String>,
}

impl Homeserver {
    fn local_user(&self, user_id: &str) -> Result<ruma::OwnedUserId> {
        ruma::OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param(format!("Invalid user ID: {user_id}")))
    }

    /// One-time key counts of a device, always with `signed_curve25519` (as Synapse, for
    /// clients that only look for that one).
    pub(crate) async fn key_counts(&self, user: &str, device: &str) -> Result<Value> {
        let (u, d) = (user.to_owned(), device.to_owned());
        let counts = self.db(move |s| s.one_time_key_counts(&u, &d)).await?;
        let mut out: Map<String, Value> = counts.into_iter().map(|(a, n)| (a, json!(n))).collect();
        out.entry("signed_curve25519").or_insert(json!(0));
        Ok(Value::Object(out))
    }

    /// `POST /keys/upload`.
    pub async fn upload_keys(&self, me: &Requester, body: Value) -> Result<Value> {
        // An appservice acting without `?device_id=` has no device to hold keys (Synapse).
        if me.device_id.is_empty() {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "To upload keys, you must pass device_id when authenticating",
            ));
        }
        let body = object(&body, "The request body")?;
        let user = me.user_id.to_string();
        let device_keys = match optional_object(body, "device_keys")? {
            Some(keys) => {
                if keys.get("user_id").and_then(Value::as_str) != Some(user.as_str())
                    || keys.get("device_id").and_then(Value::as_str) != Some(me.device_id.as_str())
                {
                    return Err(Error::invalid_param(
                        "User ID or device ID in device_keys does not match the requester",
                    ));
                }
                for field in ["algorithms", "keys", "signatures"] {
                    let ok = match field {
                        "algorithms" => keys.get(field).is_some_and(Value::is_array),
                        _ => keys.get(field).is_some_and(Value::is_object),
                    };
                    if !ok {
                        return Err(bad(format!("device_keys.{field} is missing or of the wrong type")));
                    }
                }
                Some(Value::Object(keys.clone()).to_string())
            }
            None => None,
        };
        let one_time = match optional_object(body, "one_time_keys")? {
            Some(keys) => key_rows(keys, "one-time")?,
            None => Vec::new(),
        };
        let fallback_map = match optional_object(body, "fallback_keys")? {
            Some(k) => Some(k),
            None => optional_object(body, "org.matrix.msc2732.fallback_keys")?,
        };
        let fallback = match fallback_map {
            Some(keys) => key_rows(keys, "fallback")?,
            None => Vec::new(),
        };
        let (u, d) = (user.clone(), me.device_id.clone());
        let changed = self.db(move |s| s.upload_keys(&u, &d, device_keys.as_deref(), &one_time, &fallback)).await?;
        if let Some(pos) = changed {
            self.advance_stream(pos);
            self.announce_device_change(&user, &me.device_id, pos).await;
        }
        Ok(json!({"one_time_key_counts": self.key_counts(&user, &me.device_id).await?}))
    }

    /// A local user's device keys, each with its display name under `unsigned`.
    pub(crate) async fn user_device_keys(&self, user: &str, only: &HashSet<String>) -> Result<Map<String, Value>> {
        let u = user.to_owned();
        let (keys, devices) = self.db(move |s| Ok((s.device_keys(&u)?, s.get_devices(&u)?))).await?;
        let mut out = Map::new();
        for (device, json) in keys {
            if !only.is_empty() && !only.contains(&device) {
                continue;
            }
            let Ok(mut key) = serde_json::from_str::<Value>(&json) else { continue };
            if let Some(name) = devices.iter().find(|d| d.device_id == device).and_then(|d| d.display_name.clone()) {
                key["unsigned"] = json!({"device_display_name": name});
            } else {
                key["unsigned"] = json!({});
            }
            out.insert(device, key);
        }
        Ok(out)
    }

    /// `POST /keys/query`.
    pub async fn query_keys(&self, me: &Requester, body: Value) -> Result<Value> {
        let body = object(&body, "The request body")?;
        let wanted = object(body.get("device_keys").unwrap_or(&Value::Null), "device_keys")?;
        let mut device_keys = Map::new();
        let (mut master, mut self_signing, mut user_signing) = (Map::new(), Map::new(), Map::new());
        let failures = Map::new();
        let mut remote: std::collections::BTreeMap<String, Map<String, Value>> = Default::default();
        for (user_id, devices) in wanted {
            let user = self.local_user(user_id)?;
            let only: HashSet<String> = match devices {
                Value::Array(ids) => ids.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect(),
                Value::Null => HashSet::new(),
                _ => return Err(bad(format!("device_keys.{user_id} must be a list of device IDs"))),
            };
            if !self.is_mine(&user) {
                remote.entry(user.server_name().to_string()).or_default().insert(user_id.clone(), devices.clone());
                continue;
            }
            device_keys.insert(user_id.clone(), Value::Object(self.user_device_keys(user_id, &only).await?));
            let u = user_id.clone();
            for (kind, json) in self.db(move |s| s.cross_signing_keys(&u)).await? {
                let Ok(key) = serde_json::from_str::<Value>(&json) else { continue };
                match kind.as_str() {
                    "master" => master.insert(user_id.clone(), key),
                    "self_signing" => self_signing.insert(user_id.clone(), key),
                    // Only the owner sees their user-signing key.
                    "user_signing" if user_id == me.user_id.as_str() => user_signing.insert(user_id.clone(), key),
                    _ => None,
                };
            }
        }
        let mut out = json!({
            "device_keys": device_keys,
            "failures": failures,
            "master_keys": master,
            "self_signing_keys": self_signing,
            "user_signing_keys": user_signing,
        });
        let remote = self.answer_from_device_list_cache(remote, &mut out).await;
        if !remote.is_empty() {
            self.remote_keys_query(remote, &mut out).await;
        }
        self.add_own_user_signatures(me.user_id.as_str(), &mut out).await?;
        Ok(out)
    }

    /// The requester's own signatures of the master keys in a `/keys/query` answer (made with
    /// their user-signing key), which only they see.
    async fn add_own_user_signatures(&self, me: &str, out: &mut Value) -> Result<()> {
        let targets: Vec<String> =
            out["master_keys"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        if targets.is_empty() {
            return Ok(());
        }
        let signer = me.to_owned();
        let signatures = self.db(move |s| s.user_signatures(&signer, &targets)).await?;
        for (target, key_id, json) in signatures {
            let key = &mut out["master_keys"][&target];
            let names_key = key["keys"].as_object().is_some_and(|k| k.values().any(|v| v.as_str() == Some(&key_id)));
            if let (true, Ok(stored)) = (names_key, serde_json::from_str::<Value>(&json)) {
                merge_signatures(key, &stored);
            }
        }
        Ok(())
    }

    /// `POST /keys/claim`: one one-time key per requested device, else its fallback key.
    pub async fn claim_keys(&self, body: Value) -> Result<Value> {
        let body = object(&body, "The request body")?;
        let wanted = object(body.get("one_time_keys").unwrap_or(&Value::Null), "one_time_keys")?;
        let mut claimed = Map::new();
        let failures = Map::new();
        let mut remote: std::collections::BTreeMap<String, Map<String, Value>> = Default::default();
        for (user_id, devices) in wanted {
            let user = self.local_user(user_id)?;
            let devices = object(devices, &format!("one_time_keys.{user_id}"))?;
            if !self.is_mine(&user) {
                remote
                    .entry(user.server_name().to_string())
                    .or_default()
                    .insert(user_id.clone(), Value::Object(devices.clone()));
                continue;
            }
            let mut per_device = Map::new();
            for (device, algorithm) in devices {
                let algorithm = algorithm
                    .as_str()
                    .ok_or_else(|| bad(format!("The algorithm for {user_id} {device} must be a string")))?;
                let (u, d, a) = (user_id.clone(), device.clone(), algorithm.to_owned());
                if let Some((key_id, json)) = self.db(move |s| s.claim_key(&u, &d, &a)).await? {
                    let key: Value = serde_json::from_str(&json).unwrap_or(Value::Null);
                    per_device.insert(device.clone(), json!({ key_id: key }));
                }
            }
            if !per_device.is_empty() {
                claimed.insert(user_id.clone(), Value::Object(per_device));
            }
        }
        let mut out = json!({"one_time_keys": claimed, "failures": failures});
        if !remote.is_empty() {
            self.remote_keys_claim(remote, &mut out).await;
        }
        Ok(out)
    }

    /// `device_lists` over `(from, to]` for `me`, as Synapse works them out: `changed` has the
    /// users sharing a room with `me` whose device lists changed, and those who came to share a
    /// room with `me` (they joined one of `me`'s rooms, or `me` joined theirs), whose keys the
    /// client must now fetch; `left` has those who share no room with `me` any more.
    pub(crate) async fn device_list_updates(&self, me: &str, from: i64, to: i64) -> Result<(Vec<String>, Vec<String>)> {
        let (changed, left, _) = self.room_sharing_updates(me, from, to).await?;
        Ok((changed, left))
    }

    /// [`Homeserver::device_list_updates`], and who came to share a room with `me`.
    pub(crate) async fn room_sharing_updates(
        &self,
        me: &str,
        from: i64,
        to: i64,
    ) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
        if from >= to {
            return Ok(Default::default());
        }
        let m = me.to_owned();
        let (changed_keys, private_changes, member_changes, my_rooms) = self
            .db(move |s| {
                Ok((
                    s.device_list_changes(from, to)?,
                    s.private_device_list_changes(&m, from, to)?,
                    s.member_changes_between(from, to)?,
                    s.rooms_for_user(&m, "join")?,
                ))
            })
            .await?;
        let my_rooms: HashSet<String> = my_rooms.into_iter().collect();
        // Only `me`'s own membership changes and those in `me`'s rooms matter; anyone's
        // anywhere else (the usual case on a busy server) costs nothing more.
        let member_changes: Vec<(String, String, String)> =
            member_changes.into_iter().filter(|(room, user, _)| user == me || my_rooms.contains(room)).collect();
        if changed_keys.is_empty() && member_changes.is_empty() {
            return Ok((private_changes, Vec::new(), Vec::new()));
        }
        let u = me.to_owned();
        let sharing: HashSet<String> = self.db(move |s| s.users_sharing_rooms(&u)).await?.into_iter().collect();
        let mut newly: HashSet<String> = HashSet::new();
        let mut left: HashSet<String> = HashSet::new();
        for (room, user, membership) in member_changes {
            let joining = membership == "join";
            if user == me {
                // Everyone in a room `me` joined is new to `me`; everyone in one `me` left may be
                // gone.
                if joining && my_rooms.contains(&room) {
                    newly.extend(self.joined_member_ids(&room).await?.into_iter().filter(|u| u != me));
                } else if !joining && !my_rooms.contains(&room) {
                    let r = room.clone();
                    let members = self.db(move |s| s.room_memberships(&r)).await?;
                    left.extend(members.into_iter().map(|(u, _)| u).filter(|u| u != me && !sharing.contains(u)));
                }
            } else if my_rooms.contains(&room) {
                if joining {
                    newly.insert(user);
                } else if !sharing.contains(&user) {
                    left.insert(user);
                }
            }
        }
        newly.retain(|u| sharing.contains(u));
        left.retain(|u| !sharing.contains(u));
        // What only `me` hears of (their user-signing key, their signatures of others' keys)
        // needs no shared room.
        let mut changed: Vec<String> = changed_keys
            .into_iter()
            .filter(|u| sharing.contains(u))
            .chain(newly.iter().cloned())
            .chain(private_changes)
            .collect();
        changed.sort();
        changed.dedup();
        let (mut left, mut newly): (Vec<String>, Vec<String>) =
            (left.into_iter().collect(), newly.into_iter().collect());
        left.sort();
        newly.sort();
        Ok((changed, left, newly))
    }

    /// `GET /keys/changes?from&to`.
    pub async fn key_changes(&self, me: &Requester, from: &str, to: &str) -> Result<Value> {
        let parse = |t: &str| parse_token(t).ok_or_else(|| Error::invalid_param(format!("Invalid stream token {t}")));
        let (from, to) = (parse(from)?, parse(to)?);
        let (changed, left) = self.device_list_updates(me.user_id.as_str(), from, to).await?;
        Ok(json!({"changed": changed, "left": left}))
    }

    /// `POST /keys/device_signing/upload`. Replacing an existing master key needs the account
    /// password (UIA); the first upload does not (MSC3967, as Synapse).
    pub async fn upload_signing_keys(&self, me: &Requester, body: Value) -> Result<Value> {
        let body = object(&body, "The request body")?;
        let user = me.user_id.to_string();
        let mut keys = Vec::new();
        for (field, usage) in
            [("master_key", "master"), ("self_signing_key", "self_signing"), ("user_signing_key", "user_signing")]
        {
            let Some(key) = optional_object(body, field)? else { continue };
            if key.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
                return Err(Error::invalid_param(format!("{field}.user_id must be your user ID")));
            }
            if !key.get("usage").and_then(Value::as_array).is_some_and(|u| u.iter().any(|x| x == usage)) {
                return Err(Error::invalid_param(format!("{field}.usage must include {usage}")));
            }
            if key.get("keys").and_then(Value::as_object).is_none_or(|k| k.len() != 1) {
                return Err(Error::invalid_param(format!("{field}.keys must hold exactly one key")));
            }
            keys.push((usage.to_owned(), Value::Object(key.clone())));
        }
        let u = user.clone();
        let existing = self.db(move |s| s.cross_signing_keys(&u)).await?;
        let replaces = keys.iter().any(|(kind, key)| {
            existing.iter().any(|(k, json)| {
                k == kind
                    && serde_json::from_str::<Value>(json)
                        .is_ok_and(|old| without_signatures(&old) != without_signatures(key))
            })
        });
        let has_master = existing.iter().any(|(k, _)| k == "master");
        // An admin may have let the user replace it without their password for a while.
        if has_master && replaces && !self.master_key_replaceable_without_uia(me.user_id.as_str()).await? {
            self.uia_password(me, body.get("auth"), "POST /keys/device_signing/upload").await?;
        }
        if !has_master && !keys.iter().any(|(k, _)| k == "master") && !keys.is_empty() {
            return Err(Error::invalid_param("A master key must be uploaded first"));
        }
        if keys.is_empty() {
            return Ok(json!({}));
        }
        let rows: Vec<(String, String)> = keys.into_iter().map(|(k, v)| (k, v.to_string())).collect();
        // The user-signing key is the user's alone: a change of it alone is news to nobody else.
        let public = rows.iter().any(|(kind, _)| kind != "user_signing");
        let u = user.clone();
        let pos = self.db(move |s| s.set_cross_signing_keys(&u, &rows)).await?;
        self.advance_stream(pos);
        if public {
            self.announce_device_change(&user, "", pos).await;
        }
        Ok(json!({}))
    }

    /// `POST /keys/signatures/upload`: signatures of one's own devices and cross-signing keys,
    /// and of other users' master keys; each one that cannot be placed is a failure.
    pub async fn upload_signatures(&self, me: &Requester, body: Value) -> Result<Value> {
        let body = object(&body, "The request body")?;
        let mut failures = Map::new();
        for (user_id, by_key) in body {
            let user = self.local_user(user_id)?;
            let by_key = object(by_key, user_id)?;
            let mut fail = Map::new();
            for (key_id, signed) in by_key {
                if !signed.is_object() {
                    fail.insert(key_id.clone(), json!({"errcode": "M_INVALID_PARAM", "error": "Not an object"}));
                    continue;
                }
                if !self.is_mine(&user) {
                    fail.insert(
                        key_id.clone(),
                        json!({"errcode": "M_UNKNOWN", "error": "Federation is not available"}),
                    );
                    continue;
                }
                match self.place_signature(me, user_id, key_id, signed).await? {
                    Ok(()) => {}
                    Err(e) => {
                        fail.insert(key_id.clone(), e);
                    }
                }
            }
            if !fail.is_empty() {
                failures.insert(user_id.clone(), Value::Object(fail));
            }
        }
        Ok(json!({"failures": failures}))
    }

    /// Merges one uploaded signature set into the key it signs; `Err(failure)` if there is none
    /// it may sign.
    async fn place_signature(
        &self,
        me: &Requester,
        user_id: &str,
        key_id: &str,
        signed: &Value,
    ) -> Result<std::result::Result<(), Value>> {
        let not_found = || json!({"errcode": "M_NOT_FOUND", "error": "No such device or key"});
        let own = user_id == me.user_id.as_str();
        let u = user_id.to_owned();
        let (devices, cross) = self.db(move |s| Ok((s.device_keys(&u)?, s.cross_signing_keys(&u)?))).await?;
        if own && let Some((device, json)) = devices.iter().find(|(d, _)| d == key_id) {
            let mut key: Value = serde_json::from_str(json).unwrap_or(Value::Null);
            if without_signatures(&key) != without_signatures(signed) {
                return Ok(Err(
                    json!({"errcode": "M_INVALID_SIGNATURE", "error": "The signed object differs from the stored key"}),
                ));
            }
            merge_signatures(&mut key, signed);
            let (u, d, j) = (user_id.to_owned(), device.clone(), key.to_string());
            let pos = self.db(move |s| s.set_device_keys(&u, &d, &j)).await?;
            self.advance_stream(pos);
            return Ok(Ok(()));
        }
        // A cross-signing key is named by its public key.
        for (kind, json) in &cross {
            let mut key: Value = serde_json::from_str(json).unwrap_or(Value::Null);
            let matches = key["keys"].as_object().is_some_and(|k| k.values().any(|v| v.as_str() == Some(key_id)));
            if !matches || (!own && kind != "master") {
                continue;
            }
            if !own {
                // Another user's master key, signed with one's user-signing key: kept apart and
                // shown only to the signer (as Synapse), who alone hears of the change.
                if without_signatures(&key) != without_signatures(signed) {
                    return Ok(Err(
                        json!({"errcode": "M_INVALID_SIGNATURE", "error": "The signed object differs from the stored key"}),
                    ));
                }
                let signer = me.user_id.to_string();
                let Some(mine) = signed["signatures"].get(&signer).cloned() else {
                    return Ok(Err(json!({"errcode": "M_MISSING_PARAM", "error": "No signature of yours"})));
                };
                let stored = json!({"signatures": {signer.clone(): mine}}).to_string();
                let (target, key_id) = (user_id.to_owned(), key_id.to_owned());
                let pos = self.db(move |s| s.add_user_signature(&signer, &target, &key_id, &stored)).await?;
                self.advance_stream(pos);
                return Ok(Ok(()));
            }
            merge_signatures(&mut key, signed);
            let (u, rows) = (user_id.to_owned(), vec![(kind.clone(), key.to_string())]);
            let pos = self.db(move |s| s.set_cross_signing_keys(&u, &rows)).await?;
            self.advance_stream(pos);
            return Ok(Ok(()));
        }
        Ok(Err(not_found()))
    }

    /// `PUT /sendToDevice/{type}/{txnId}`. Unknown local devices are skipped, as on Synapse;
    /// `*` means every device of the user.
    pub async fn send_to_device(&self, me: &Requester, event_type: &str, txn_id: &str, body: Value) -> Result<()> {
        let body = object(&body, "The request body")?;
        let messages = object(body.get("messages").unwrap_or(&Value::Null), "messages")?;
        let mut queued = Vec::new();
        let mut remote: std::collections::BTreeMap<String, Map<String, Value>> = Default::default();
        for (user_id, by_device) in messages {
            let user = self.local_user(user_id)?;
            let by_device = object(by_device, &format!("messages.{user_id}"))?;
            if !self.is_mine(&user) {
                remote
                    .entry(user.server_name().to_string())
                    .or_default()
                    .insert(user_id.clone(), Value::Object(by_device.clone()));
                continue;
            }
            let u = user_id.clone();
            let devices: Vec<String> =
                self.db(move |s| s.get_devices(&u)).await?.into_iter().map(|d| d.device_id).collect();
            for (device, content) in by_device {
                let content = object(content, &format!("messages.{user_id}.{device}"))?;
                let event = json!({"type": event_type, "sender": me.user_id, "content": content}).to_string();
                if event.len() > MAX_TO_DEVICE_CONTENT {
                    return Err(Error::new(ErrorKind::TooLarge, "To-device message too large"));
                }
                let targets: Vec<&String> = if device == "*" {
                    devices.iter().collect()
                } else {
                    devices.iter().filter(|d| *d == device).collect()
                };
                for d in targets {
                    queued.push((user_id.clone(), d.clone(), event.clone()));
                }
            }
        }
        let (u, d, t) = (me.user_id.to_string(), me.device_id.clone(), txn_id.to_owned());
        let first_time = self.db(move |s| s.queue_to_device(&u, &d, &t, &queued)).await?;
        if let Some(pos) = first_time {
            self.advance_stream(pos);
        }
        // Sent once per transaction ID, like the local part (a retry queues nothing).
        if first_time.is_some() && !remote.is_empty() {
            let message_id = format!("{}-{txn_id}", me.device_id);
            self.send_remote_to_device(me.user_id.as_str(), event_type, &message_id, remote).await;
        }
        Ok(())
    }

    /// The end-to-end parts of a `/sync` for `me`'s device over `(since, now]`. Messages up to
    /// `since` were delivered by the sync that returned it, so they are deleted now.
    pub(crate) async fn sync_keys(&self, me: &Requester, since: Option<i64>, now: i64) -> Result<SyncKeys> {
        let (u, d) = (me.user_id.to_string(), me.device_id.clone());
        let messages = self
            .db(move |s| {
                if let Some(acked) = since {
                    s.delete_to_device(&u, &d, acked)?;
                }
                s.to_device_messages(&u, &d, now)
            })
            .await?;
        let to_device = messages.into_iter().filter_map(|(_, json)| serde_json::from_str(&json).ok()).collect();
        let (changed, left, newly_shared) = match since {
            Some(from) => self.room_sharing_updates(me.user_id.as_str(), from, now).await?,
            None => Default::default(),
        };
        let (u, d) = (me.user_id.to_string(), me.device_id.clone());
        let unused_fallback_key_types = self.db(move |s| s.unused_fallback_key_types(&u, &d)).await?;
        Ok(SyncKeys {
            to_device,
            changed,
            left,
            newly_shared,
            one_time_key_counts: self.key_counts(me.user_id.as_str(), &me.device_id).await?,
            unused_fallback_key_types,
        })
    }

    // --- key backup ------------------------------------------------------------------------

    fn parse_version(version: &str) -> Result<i64> {
        version.parse().map_err(|_| Error::not_found("Unknown backup version"))
    }

    /// `POST /room_keys/version`.
    pub async fn create_backup_version(&self, me: &Requester, body: Value) -> Result<Value> {
        let body = object(&body, "The request body")?;
        let algorithm =
            body.get("algorithm").and_then(Value::as_str).ok_or_else(|| bad("algorithm must be a string"))?;
        let auth_data = backup_auth_data(body)?;
        let (u, a, d) = (me.user_id.to_string(), algorithm.to_owned(), auth_data.to_string());
        let version = self.db(move |s| s.create_backup_version(&u, &a, &d)).await?;
        Ok(json!({"version": version.to_string()}))
    }

    /// `GET /room_keys/version[/{version}]`.
    pub async fn get_backup_version(&self, me: &Requester, version: Option<&str>) -> Result<Value> {
        let v = version.map(Self::parse_version).transpose()?;
        let u = me.user_id.to_string();
        let found = self.db(move |s| s.backup_version(&u, v)).await?;
        let Some(b) = found else {
            return Err(Error::not_found(if version.is_some() { "Unknown backup version" } else { "No backup found" }));
        };
        let (u, n) = (me.user_id.to_string(), b.version);
        let count = self.db(move |s| s.count_backup_keys(&u, n)).await?;
        Ok(json!({
            "algorithm": b.algorithm,
            "auth_data": serde_json::from_str::<Value>(&b.auth_data).unwrap_or(json!({})),
            "count": count,
            "etag": b.etag.to_string(),
            "version": b.version.to_string(),
        }))
    }

    /// `PUT /room_keys/version/{version}`.
    pub async fn update_backup_version(&self, me: &Requester, version: &str, body: Value) -> Result<()> {
        let body = object(&body, "The request body")?;
        if let Some(v) = body.get("version")
            && v.as_str() != Some(version)
        {
            return Err(Error::invalid_param("The version in the body does not match the one in the path"));
        }
        let algorithm =
            body.get("algorithm").and_then(Value::as_str).ok_or_else(|| bad("algorithm must be a string"))?;
        let auth_data = backup_auth_data(body)?;
        let n = Self::parse_version(version)?;
        let (u, a, d) = (me.user_id.to_string(), algorithm.to_owned(), auth_data.to_string());
        if !self.db(move |s| s.update_backup_version(&u, n, &a, &d)).await? {
            return Err(Error::not_found("Unknown backup version"));
        }
        Ok(())
    }

    /// `DELETE /room_keys/version/{version}`.
    pub async fn delete_backup_version(&self, me: &Requester, version: &str) -> Result<()> {
        let n = Self::parse_version(version)?;
        let u = me.user_id.to_string();
        if !self.db(move |s| s.delete_backup_version(&u, n)).await? {
            return Err(Error::not_found("Unknown backup version"));
        }
        Ok(())
    }

    /// A live backup version of the requester, as a number; 404 if there is none.
    async fn existing_version(&self, me: &Requester, version: &str) -> Result<i64> {
        let n = Self::parse_version(version)?;
        let u = me.user_id.to_string();
        match self.db(move |s| s.backup_version(&u, Some(n))).await? {
            Some(_) => Ok(n),
            None => Err(Error::not_found("Unknown backup version")),
        }
    }

    /// The version keys are written to: it must be the newest live one.
    async fn writable_version(&self, me: &Requester, version: &str) -> Result<i64> {
        let u = me.user_id.to_string();
        let latest = self.db(move |s| s.backup_version(&u, None)).await?;
        let Some(latest) = latest else { return Err(Error::not_found("Unknown backup version")) };
        if version.parse::<i64>().ok() != Some(latest.version) {
            let mut fields = Map::new();
            fields.insert("current_version".into(), json!(latest.version.to_string()));
            return Err(Error::new(
                ErrorKind::Module { status: 403, errcode: "M_WRONG_ROOM_KEYS_VERSION".into() },
                "Wrong backup version.",
            )
            .with_fields(fields));
        }
        Ok(latest.version)
    }

    async fn etag_and_count(&self, me: &Requester, version: i64) -> Result<Value> {
        let u = me.user_id.to_string();
        let (b, count) =
            self.db(move |s| Ok((s.backup_version(&u, Some(version))?, s.count_backup_keys(&u, version)?))).await?;
        Ok(json!({"etag": b.map(|b| b.etag).unwrap_or(0).to_string(), "count": count}))
    }

    /// `PUT /room_keys/keys[/{roomId}[/{sessionId}]]?version=`.
    pub async fn put_room_keys(
        &self,
        me: &Requester,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
        body: Value,
    ) -> Result<Value> {
        let version = self.writable_version(me, version).await?;
        // Normalise the three shapes into (room, session, key data).
        let mut incoming: Vec<(String, String, Value)> = Vec::new();
        let mut sessions_of = |room_id: &str, sessions: &Value| -> Result<()> {
            for (sid, data) in object(sessions, "sessions")? {
                object(data, &format!("sessions.{sid}"))?;
                incoming.push((room_id.to_owned(), sid.clone(), data.clone()));
            }
            Ok(())
        };
        match (room, session) {
            (Some(r), Some(sid)) => {
                object(&body, "The key data")?;
                incoming.push((r.to_owned(), sid.to_owned(), body));
            }
            (Some(r), None) => {
                sessions_of(r, object(&body, "The request body")?.get("sessions").unwrap_or(&Value::Null))?
            }
            _ => {
                let rooms = object(object(&body, "The request body")?.get("rooms").unwrap_or(&Value::Null), "rooms")?;
                for (r, v) in rooms {
                    sessions_of(r, object(v, &format!("rooms.{r}"))?.get("sessions").unwrap_or(&Value::Null))?;
                }
            }
        }
        let u = me.user_id.to_string();
        let existing = self.db(move |s| s.backup_keys(&u, version, None, None)).await?;
        let rows: Vec<(String, String, String)> = incoming
            .into_iter()
            .filter(|(r, sid, new)| {
                existing
                    .iter()
                    .find(|(er, es, _)| er == r && es == sid)
                    .and_then(|(_, _, json)| serde_json::from_str::<Value>(json).ok())
                    .is_none_or(|current| should_replace_backup(&current, new))
            })
            .map(|(r, sid, v)| (r, sid, v.to_string()))
            .collect();
        let u = me.user_id.to_string();
        self.db(move |s| s.put_backup_keys(&u, version, &rows)).await?;
        self.etag_and_count(me, version).await
    }

    /// `GET /room_keys/keys[/{roomId}[/{sessionId}]]?version=`.
    pub async fn get_room_keys(
        &self,
        me: &Requester,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<Value> {
        let n = self.existing_version(me, version).await?;
        let (u, r, sid) = (me.user_id.to_string(), room.map(str::to_owned), session.map(str::to_owned));
        let keys = self.db(move |s| s.backup_keys(&u, n, r.as_deref(), sid.as_deref())).await?;
        let parse = |json: &str| serde_json::from_str::<Value>(json).unwrap_or(Value::Null);
        match (room, session) {
            (Some(_), Some(_)) => {
                keys.first().map(|(_, _, j)| parse(j)).ok_or_else(|| Error::not_found("No room_keys found"))
            }
            (Some(_), None) => {
                let sessions: Map<String, Value> = keys.iter().map(|(_, s, j)| (s.clone(), parse(j))).collect();
                Ok(json!({"sessions": sessions}))
            }
            _ => {
                let mut rooms = Map::new();
                for (r, s, j) in &keys {
                    let entry = rooms.entry(r.clone()).or_insert_with(|| json!({"sessions": {}}));
                    entry["sessions"][s] = parse(j);
                }
                Ok(json!({"rooms": rooms}))
            }
        }
    }

    /// `DELETE /room_keys/keys[/{roomId}[/{sessionId}]]?version=`.
    pub async fn delete_room_keys(
        &self,
        me: &Requester,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<Value> {
        let n = self.existing_version(me, version).await?;
        let (u, r, sid) = (me.user_id.to_string(), room.map(str::to_owned), session.map(str::to_owned));
        self.db(move |s| s.delete_backup_keys(&u, n, r.as_deref(), sid.as_deref())).await?;
        self.etag_and_count(me, n).await
    }
}

/// A backup version's `auth_data`: required, and kept as given. The spec describes an object,
/// but it is opaque to the server and Synapse stores whatever JSON it is sent (clients and
/// sytest send strings).
fn backup_auth_data(body: &Map<String, Value>) -> Result<&Value> {
    match body.get("auth_data") {
        None | Some(Value::Null) => Err(Error::new(ErrorKind::MissingParam, "auth_data is required")),
        Some(data) => Ok(data),
    }
}
