//! Push rules (the spec's defaults plus the user's edits), pushers, unread and highlight counts,
//! and `/notifications`.
//!
//! A user's rules are stored as their `m.push_rules` global account data, as Synapse syncs them,
//! so every edit reaches the user's clients through `/sync`. Rule evaluation is ruma's. HTTP
//! pushers are stored here and called by `push_gateway`.

use crate::cache::BoundedMap;
use ruma::push::{
    Action, AnyPushRuleRef, NewConditionalPushRule, NewPatternedPushRule, NewPushRule, NewSimplePushRule,
    PushConditionRoomCtx, RuleKind, Ruleset,
};
use ruma::serde::Raw;
use std::sync::Arc;

use ruma::{OwnedRoomId, OwnedUserId, UInt};
use serde_json::{Map, Value, json};

use crate::{Error, ErrorKind, Homeserver, Requester, Result};

/// The server's default rules, as Synapse has them: the spec's current ones plus the legacy
/// mention rules it still keeps (`.m.rule.contains_display_name`, `.m.rule.roomnotif`,
/// `.m.rule.contains_user_name`), which clients that do not send `m.mentions` rely on. An event
/// with `m.mentions` skips them (ruma's evaluation does that).
#[allow(deprecated)]
pub(crate) fn server_default_rules(user: &ruma::UserId) -> Ruleset {
    use ruma::push::{
        ConditionalPushRule, ConditionalPushRuleInit, EventMatchConditionData, HighlightTweakValue, PatternedPushRule,
        PatternedPushRuleInit, PushCondition, SenderNotificationPermissionConditionData, SoundTweakValue, Tweak,
    };
    let highlight = Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes));
    let sound = Action::SetTweak(Tweak::Sound(SoundTweakValue::Default));
    let contains_display_name: ConditionalPushRule = ConditionalPushRuleInit {
        actions: vec![Action::Notify, sound.clone(), highlight.clone()],
        default: true,
        enabled: true,
        rule_id: ".m.rule.contains_display_name".to_owned(),
        conditions: vec![PushCondition::ContainsDisplayName],
    }
    .into();
    let roomnotif: ConditionalPushRule = ConditionalPushRuleInit {
        actions: vec![Action::Notify, highlight.clone()],
        default: true,
        enabled: true,
        rule_id: ".m.rule.roomnotif".to_owned(),
        conditions: vec![
            PushCondition::EventMatch(EventMatchConditionData::new("content.body".into(), "@room".into())),
            PushCondition::SenderNotificationPermission(SenderNotificationPermissionConditionData::new(
                ruma::power_levels::NotificationPowerLevelsKey::Room,
            )),
        ],
    }
    .into();
    let contains_user_name: PatternedPushRule = PatternedPushRuleInit {
        actions: vec![Action::Notify, sound, highlight],
        default: true,
        enabled: true,
        rule_id: ".m.rule.contains_user_name".to_owned(),
        pattern: user.localpart().to_owned(),
    }
    .into();
    let mut rules = Ruleset::server_default(user);
    rules.override_ = std::mem::take(&mut rules.override_)
        .into_iter()
        .flat_map(|rule| {
            let legacy = match rule.rule_id.as_str() {
                ".m.rule.is_user_mention" => Some(contains_display_name.clone()),
                ".m.rule.is_room_mention" => Some(roomnotif.clone()),
                _ => None,
            };
            std::iter::once(rule).chain(legacy)
        })
        .collect();
    rules.content.insert(contains_user_name);
    rules
}

/// How far back unread counts look: a room with more unread events than this shows this many.
const MAX_COUNTED: usize = 100;

/// Room rules are named by room ID, but Synapse takes any rule ID (a rule for `#alias:server`
/// simply never matches) and ruma's rule set holds room IDs only: other IDs are kept in it under
/// an encoded room ID, and shown (and stored) as given.
const ENCODED_ROOM_RULE: &str = "!myelin-room-rule-";

/// A room rule's ID as ruma's rule set holds it.
fn encode_room_rule_id(rule_id: &str) -> String {
    if rule_id.starts_with('!') && !rule_id.starts_with(ENCODED_ROOM_RULE) {
        return rule_id.to_owned();
    }
    format!("{ENCODED_ROOM_RULE}{}", hex::encode(rule_id))
}

/// A room rule's ID as clients gave it.
fn decode_room_rule_id(stored: &str) -> String {
    stored
        .strip_prefix(ENCODED_ROOM_RULE)
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| stored.to_owned())
}

/// A rule ID as the rule set holds it: encoded for room rules.
fn stored_rule_id(kind: &str, rule_id: &str) -> String {
    if kind == "room" { encode_room_rule_id(rule_id) } else { rule_id.to_owned() }
}

/// Rewrites the `rule_id`s of a rule set's room rules (JSON, `{"override": [...], ...}`).
fn map_room_rule_ids(global: &mut Value, f: fn(&str) -> String) {
    for rule in global.get_mut("room").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(id) = rule.get("rule_id").and_then(Value::as_str) {
            rule["rule_id"] = Value::String(f(id));
        }
    }
}

/// A rule set as JSON with room rule IDs as clients gave them.
fn rules_as_given(rules: &Ruleset) -> Result<Value> {
    let mut global = serde_json::to_value(rules).map_err(Error::internal)?;
    map_room_rule_ids(&mut global, decode_room_rule_id);
    Ok(global)
}

fn rule_kind(kind: &str) -> Result<RuleKind> {
    match kind {
        "override" => Ok(RuleKind::Override),
        "underride" => Ok(RuleKind::Underride),
        "sender" => Ok(RuleKind::Sender),
        "room" => Ok(RuleKind::Room),
        "content" => Ok(RuleKind::Content),
        _ => Err(Error::invalid_param(format!("Unknown push rule kind {kind}"))),
    }
}

fn global_scope(scope: &str) -> Result<()> {
    if scope == "global" { Ok(()) } else { Err(unrecognized()) }
}

/// Synapse's `UnrecognizedRequestError`: 400, not the 404 of an unknown endpoint.
fn unrecognized() -> Error {
    Error::new(ErrorKind::Module { status: 400, errcode: "M_UNRECOGNIZED".into() }, "Unrecognized request")
}

fn unknown_rule() -> Error {
    Error::not_found("Unknown rule")
}

fn parse_actions(v: Option<&Value>) -> Result<Vec<Action>> {
    let v = v.ok_or_else(|| Error::new(ErrorKind::MissingParam, "Missing 'actions'"))?;
    // Synapse's check: the spec's actions (and the legacy `dont_notify` and `coalesce`), or
    // tweaks; anything else is refused rather than kept as an action nobody understands.
    for action in v.as_array().ok_or_else(|| Error::bad_json("No actions found"))? {
        let known = matches!(action.as_str(), Some("notify" | "dont_notify" | "coalesce"))
            || action.get("set_tweak").is_some_and(Value::is_string);
        if !known {
            return Err(Error::bad_json(format!("Unrecognised action {action}")));
        }
    }
    serde_json::from_value(v.clone()).map_err(|e| Error::bad_json(format!("Invalid actions: {e}")))
}

/// A room's unread counts for one user, as of `counted_to`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnreadCount {
    read_at: i64,
    counted_to: i64,
    notify: usize,
    highlight: usize,
}

/// What the rules say about one event for one user.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Verdict {
    pub notify: bool,
    pub highlight: bool,
}

/// One notification waiting for its pusher's gateway.
pub(crate) type PushQueueItem = (Arc<crate::push_gateway::HttpPusher>, Value);

/// The key under which a stored pusher keeps the device whose session set it up.
const PUSHER_DEVICE: &str = "myelin.device_id";

/// The push service's in-memory state (`hs.push`).
pub(crate) struct PushState {
    /// Parsed push rules per user (a cache of their `m.push_rules` account data; dropped when
    /// the user changes a rule).
    pub(crate) rules: std::sync::Mutex<BoundedMap<OwnedUserId, Arc<ruma::push::Ruleset>>>,
    /// Unread counts per (user, room), advanced by each sync (a cache: counted again from the
    /// events when missing).
    pub(crate) unread: std::sync::Mutex<BoundedMap<(String, String), UnreadCount>>,
    /// Every user's pushers as stored, read once and dropped when one changes (a cache: the
    /// push gateway sender looks at it for every event).
    pub(crate) pushers: std::sync::Mutex<Option<crate::push_gateway::StoredPushers>>,
    /// Users whose read receipts may have changed their badge, for the push gateway sender
    /// (set when it starts).
    pub(crate) badge_updates: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<OwnedUserId>>>,
    /// The badge each user's gateways were last sent, so a receipt that changes nothing sends
    /// nothing.
    pub(crate) last_badge: std::sync::Mutex<std::collections::HashMap<OwnedUserId, u64>>,
    /// Each pusher's queue of notifications (`user\napp_id\npushkey`), drained by one task
    /// per pusher.
    pub(crate) queues:
        std::sync::Mutex<std::collections::HashMap<String, tokio::sync::mpsc::UnboundedSender<PushQueueItem>>>,
    /// E-mail notifications waiting for their mail.
    pub(crate) email: crate::email_notifs::EmailNotifState,
}

impl PushState {
    pub(crate) fn new(sizes: &crate::cache::CacheSizes) -> Self {
        PushState {
            rules: std::sync::Mutex::new(BoundedMap::new("push_rules", sizes.push_rules)),
            unread: std::sync::Mutex::new(BoundedMap::new("unread_counts", sizes.unread_counts)),
            pushers: Default::default(),
            badge_updates: Default::default(),
            last_badge: Default::default(),
            queues: Default::default(),
            email: Default::default(),
        }
    }
}

impl Homeserver {
    /// The user's rule set: their stored edits over the spec's defaults (cached; every sync
    /// needs it).
    pub(crate) async fn ruleset(&self, user: &OwnedUserId) -> Result<Arc<Ruleset>> {
        if let Some(rules) = self.push.rules.lock().unwrap_or_else(|p| p.into_inner()).get(user).cloned() {
            return Ok(rules);
        }
        let rules = Arc::new(self.load_ruleset(user).await?);
        self.push.rules.lock().unwrap_or_else(|p| p.into_inner()).insert(user.clone(), rules.clone());
        Ok(rules)
    }

    async fn load_ruleset(&self, user: &OwnedUserId) -> Result<Ruleset> {
        let u = user.to_string();
        let stored = self.db(move |s| s.get_account_data(&u, "", "m.push_rules")).await?;
        let mut rules = stored
            .and_then(|v| {
                let mut global = v["global"].clone();
                map_room_rule_ids(&mut global, encode_room_rule_id);
                serde_json::from_value::<Ruleset>(global).ok()
            })
            .unwrap_or_else(|| server_default_rules(user));
        // Defaults added in newer spec versions appear for users with older stored rule sets.
        rules.update_with_server_default(server_default_rules(user));
        Ok(rules)
    }

    async fn save_ruleset(&self, user: &OwnedUserId, rules: &Ruleset) -> Result<()> {
        let content = json!({"global": rules_as_given(rules)?});
        let u = user.to_string();
        let pos = self.db(move |s| s.set_account_data(&u, "", "m.push_rules", &content)).await?;
        self.push.rules.lock().unwrap_or_else(|p| p.into_inner()).insert(user.clone(), Arc::new(rules.clone()));
        // Counts made under the old rules start again.
        self.push.unread.lock().unwrap_or_else(|p| p.into_inner()).retain(|(u, _), _| u != user.as_str());
        if self.has_bus() {
            self.publish(format!("push_rules {user}"));
        }
        self.advance_stream(pos);
        Ok(())
    }

    /// Another process changed the user's rules.
    pub(crate) fn forget_push_rules(&self, user: &str) {
        self.push.rules.lock().unwrap_or_else(|p| p.into_inner()).retain(|u, _| u.as_str() != user);
        self.push.unread.lock().unwrap_or_else(|p| p.into_inner()).retain(|(u, _), _| u != user);
    }

    /// [`Homeserver::forget_push_rules`] for everyone.
    pub(crate) fn forget_all_push_rules(&self) {
        self.push.rules.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.push.unread.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// `GET /pushrules/`.
    pub async fn push_rules(&self, me: &Requester) -> Result<Value> {
        let rules = self.ruleset(&me.user_id).await?;
        Ok(json!({"global": rules_as_given(&rules)?}))
    }

    /// `GET /pushrules/global/{kind}/{ruleId}`.
    pub async fn push_rule(&self, me: &Requester, scope: &str, kind: &str, rule_id: &str) -> Result<Value> {
        global_scope(scope)?;
        let rules = self.ruleset(&me.user_id).await?;
        let rule = rules.get(rule_kind(kind)?, stored_rule_id(kind, rule_id)).ok_or_else(unknown_rule)?;
        let mut rule = match rule {
            AnyPushRuleRef::Override(r) | AnyPushRuleRef::Underride(r) => serde_json::to_value(r),
            AnyPushRuleRef::Content(r) => serde_json::to_value(r),
            AnyPushRuleRef::Room(r) => serde_json::to_value(r),
            AnyPushRuleRef::Sender(r) => serde_json::to_value(r),
            #[allow(unreachable_patterns)]
            _ => return Err(unknown_rule()),
        }
        .map_err(Error::internal)?;
        rule["rule_id"] = json!(rule_id);
        Ok(rule)
    }

    /// `PUT /pushrules/global/{kind}/{ruleId}?before&after`.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_push_rule(
        &self,
        me: &Requester,
        scope: &str,
        kind: &str,
        rule_id: &str,
        before: Option<&str>,
        after: Option<&str>,
        body: &Map<String, Value>,
    ) -> Result<()> {
        global_scope(scope)?;
        let actions = parse_actions(body.get("actions"))?;
        // As Synapse: override and underride rules must say their conditions (an empty list
        // matches everything, and has to be asked for).
        let conditions = || -> Result<Vec<_>> {
            let v = body
                .get("conditions")
                .cloned()
                .ok_or_else(|| Error::new(ErrorKind::MissingParam, "Missing 'conditions'"))?;
            serde_json::from_value(v).map_err(|e| Error::bad_json(format!("Invalid conditions: {e}")))
        };
        let rule = match rule_kind(kind)? {
            RuleKind::Override => {
                NewPushRule::Override(NewConditionalPushRule::new(rule_id.into(), conditions()?, actions))
            }
            RuleKind::Underride => {
                NewPushRule::Underride(NewConditionalPushRule::new(rule_id.into(), conditions()?, actions))
            }
            RuleKind::Content => {
                let pattern = body
                    .get("pattern")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::new(ErrorKind::MissingParam, "Content rules need a 'pattern'"))?;
                NewPushRule::Content(NewPatternedPushRule::new(rule_id.into(), pattern.into(), actions))
            }
            RuleKind::Room => {
                let room = OwnedRoomId::try_from(encode_room_rule_id(rule_id))
                    .map_err(|_| Error::invalid_param("Invalid room rule ID"))?;
                NewPushRule::Room(NewSimplePushRule::new(room, actions))
            }
            RuleKind::Sender => {
                let user = OwnedUserId::try_from(rule_id)
                    .map_err(|_| Error::invalid_param("A sender rule's ID must be a user ID"))?;
                NewPushRule::Sender(NewSimplePushRule::new(user, actions))
            }
            _ => return Err(Error::invalid_param(format!("Unknown push rule kind {kind}"))),
        };
        let (after, before) = (after.map(|r| stored_rule_id(kind, r)), before.map(|r| stored_rule_id(kind, r)));
        let mut rules = self.ruleset(&me.user_id).await?.as_ref().clone();
        rules.insert(rule, after.as_deref(), before.as_deref()).map_err(|e| match e {
            // A `before` or `after` rule that does not exist.
            ruma::push::InsertPushRuleError::UnknownRuleId => Error::not_found(e.to_string()),
            other => Error::invalid_param(other.to_string()),
        })?;
        self.save_ruleset(&me.user_id, &rules).await
    }

    /// `DELETE /pushrules/global/{kind}/{ruleId}`; server-default rules cannot be deleted.
    pub async fn delete_push_rule(&self, me: &Requester, scope: &str, kind: &str, rule_id: &str) -> Result<()> {
        global_scope(scope)?;
        let mut rules = self.ruleset(&me.user_id).await?.as_ref().clone();
        rules.remove(rule_kind(kind)?, stored_rule_id(kind, rule_id)).map_err(|e| match e {
            ruma::push::RemovePushRuleError::NotFound => unknown_rule(),
            other => Error::invalid_param(other.to_string()),
        })?;
        self.save_ruleset(&me.user_id, &rules).await
    }

    /// `GET /pushrules/global/{kind}/{ruleId}/{attribute}` (`enabled` or `actions`).
    pub async fn push_rule_attribute(
        &self,
        me: &Requester,
        scope: &str,
        kind: &str,
        rule_id: &str,
        attribute: &str,
    ) -> Result<Value> {
        let rule = self.push_rule(me, scope, kind, rule_id).await?;
        match attribute {
            "enabled" => Ok(json!({"enabled": rule["enabled"]})),
            "actions" => Ok(json!({"actions": rule["actions"]})),
            _ => Err(unrecognized()),
        }
    }

    /// `PUT /pushrules/global/{kind}/{ruleId}/{attribute}`.
    pub async fn set_push_rule_attribute(
        &self,
        me: &Requester,
        scope: &str,
        kind: &str,
        rule_id: &str,
        attribute: &str,
        body: &Map<String, Value>,
    ) -> Result<()> {
        self.set_rule_attribute(&me.user_id, scope, kind, rule_id, attribute, body).await
    }

    /// `ModuleApi.set_push_rule_action`: a local user's rule gets new actions (an unknown rule
    /// is 404, invalid actions 400).
    pub(crate) async fn module_set_push_rule_actions(
        &self,
        user_id: &str,
        kind: &str,
        rule_id: &str,
        actions: Value,
    ) -> Result<()> {
        let user = OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
        if !self.is_mine(&user) {
            return Err(Error::invalid_param(format!("{user_id} is not local to this homeserver")));
        }
        let mut body = Map::new();
        body.insert("actions".into(), actions);
        self.set_rule_attribute(&user, "global", kind, rule_id, "actions", &body).await
    }

    async fn set_rule_attribute(
        &self,
        user: &OwnedUserId,
        scope: &str,
        kind: &str,
        rule_id: &str,
        attribute: &str,
        body: &Map<String, Value>,
    ) -> Result<()> {
        global_scope(scope)?;
        let rule_id = &stored_rule_id(kind, rule_id);
        let kind = rule_kind(kind)?;
        let mut rules = self.ruleset(user).await?.as_ref().clone();
        match attribute {
            "enabled" => {
                let enabled = body
                    .get("enabled")
                    .and_then(Value::as_bool)
                    .ok_or_else(|| Error::bad_json("'enabled' must be a boolean"))?;
                rules.set_enabled(kind, rule_id, enabled).map_err(|_| unknown_rule())?;
            }
            "actions" => {
                let actions = parse_actions(body.get("actions"))?;
                rules.set_actions(kind, rule_id, actions).map_err(|_| unknown_rule())?;
            }
            _ => return Err(unrecognized()),
        }
        self.save_ruleset(user, &rules).await
    }

    // --- pushers -------------------------------------------------------------------------------

    /// `GET /pushers`.
    pub async fn pushers(&self, me: &Requester) -> Result<Value> {
        let u = me.user_id.to_string();
        let rows = self.db(move |s| s.pushers(&u)).await?;
        let pushers: Vec<Value> = rows
            .iter()
            .filter_map(|j| serde_json::from_str::<Value>(j).ok())
            .map(|mut p| {
                // Kept for the gateway and for logouts, not part of the listing.
                if let Value::Object(m) = &mut p {
                    m.remove("pushkey_ts");
                    m.remove(PUSHER_DEVICE);
                    m.remove(crate::email_notifs::UNSUBSCRIBE_TOKEN);
                }
                p
            })
            .collect();
        Ok(json!({"pushers": pushers}))
    }

    /// Removes the pushers that sessions of `user` set up, when those sessions end: those of
    /// `devices` (logout, device deletion), or of every device but `keep` (a password change
    /// that logs out the other devices, `/logout/all` with `keep` None). As Synapse ties a
    /// pusher to the access token that made it. Pushers from before Myelin kept their device
    /// stay.
    pub(crate) async fn remove_pushers_of_sessions(
        &self,
        user: &str,
        devices: Option<Vec<String>>,
        keep: Option<&str>,
    ) -> Result<()> {
        let (u, keep) = (user.to_owned(), keep.map(str::to_owned));
        let removed = self
            .db(move |s| {
                let mut removed = false;
                for json in s.pushers(&u)? {
                    let Ok(Value::Object(p)) = serde_json::from_str::<Value>(&json) else { continue };
                    let Some(device) = p.get(PUSHER_DEVICE).and_then(Value::as_str) else { continue };
                    let ends = match &devices {
                        Some(ended) => ended.iter().any(|d| d == device),
                        None => keep.as_deref() != Some(device),
                    };
                    if ends {
                        let text = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                        s.delete_pusher(&u, &text("app_id"), &text("pushkey"))?;
                        removed = true;
                    }
                }
                Ok(removed)
            })
            .await?;
        if removed {
            self.pushers_changed();
        }
        Ok(())
    }

    /// `POST /pushers/set`: `kind: null` deletes; `http` pushers need `data.url`.
    pub async fn set_pusher(&self, me: &Requester, body: &Map<String, Value>) -> Result<()> {
        let text = |k: &str| -> Result<String> {
            body.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| Error::new(ErrorKind::MissingParam, format!("Missing string '{k}'")))
        };
        let (app_id, pushkey) = (text("app_id")?, text("pushkey")?);
        let u = me.user_id.to_string();
        match body.get("kind") {
            Some(Value::Null) => {
                self.db(move |s| s.delete_pusher(&u, &app_id, &pushkey)).await?;
                self.pushers_changed();
                return Ok(());
            }
            Some(Value::String(k)) if k == "http" => {
                let url = body.get("data").and_then(|d| d.get("url")).and_then(Value::as_str).ok_or_else(|| {
                    Error::new(ErrorKind::MissingParam, "'url' is required in data for an http pusher")
                })?;
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(Error::invalid_param("'url' must be an http(s) URL"));
                }
                // As Synapse: the spec's gateway path, nothing else.
                let path = reqwest::Url::parse(url).map(|u| u.path().to_owned()).unwrap_or_default();
                if path != "/_matrix/push/v1/notify" {
                    return Err(Error::invalid_param("'url' must have a path of '/_matrix/push/v1/notify'"));
                }
            }
            // An e-mail pusher mails one of the user's own addresses.
            Some(Value::String(k)) if k == "email" => {
                if self.user_by_threepid("email", &pushkey).await?.as_deref() != Some(me.user_id.as_str()) {
                    return Err(Error::new(
                        ErrorKind::Module { status: 400, errcode: "M_THREEPID_NOT_FOUND".into() },
                        "Email not found",
                    ));
                }
            }
            Some(Value::String(k)) => return Err(Error::invalid_param(format!("Unsupported pusher kind {k}"))),
            _ => return Err(Error::new(ErrorKind::MissingParam, "Missing 'kind'")),
        }
        for k in ["app_display_name", "device_display_name", "lang"] {
            text(k)?;
        }
        let append = body.get("append").and_then(Value::as_bool).unwrap_or(false);
        let mut pusher = body.clone();
        pusher.remove("append");
        pusher.insert("pushkey_ts".into(), json!(crate::server::now_ms()));
        pusher.insert(PUSHER_DEVICE.into(), json!(me.device_id));
        if pusher.get("kind").and_then(Value::as_str) == Some("email") {
            pusher.insert(crate::email_notifs::UNSUBSCRIBE_TOKEN.into(), json!(crate::server::random_string(32)));
        }
        let json = Value::Object(pusher).to_string();
        self.db(move |s| s.set_pusher(&u, &app_id, &pushkey, &json, append)).await?;
        self.pushers_changed();
        Ok(())
    }

    // --- counts and notifications -------------------------------------------------------------

    /// Evaluates `rules` for one client-format event in a room of `member_count`.
    async fn verdict(
        rules: &Ruleset,
        event: &Value,
        user: &OwnedUserId,
        display_name: &str,
        room: &OwnedRoomId,
        member_count: usize,
    ) -> Verdict {
        let Ok(raw) = Raw::<Value>::from_json_string(event.to_string()) else { return Verdict::default() };
        let ctx = PushConditionRoomCtx::new(
            room.clone(),
            UInt::new_saturating(member_count as u64),
            user.clone(),
            display_name.to_owned(),
        );
        let mut verdict = Verdict::default();
        for action in rules.get_actions(&raw, &ctx).await {
            if action.should_notify() {
                verdict.notify = true;
            }
            if action.is_highlight() {
                verdict.highlight = true;
            }
        }
        verdict
    }

    /// Events of `room` in `(from, now]` by others, newest first (at most [`MAX_COUNTED`]),
    /// with their stream positions and the rules' verdicts.
    async fn verdicts_between(
        &self,
        me: &OwnedUserId,
        rules: &Ruleset,
        room: &str,
        from: i64,
        now: i64,
    ) -> Result<Vec<(i64, Value, Verdict)>> {
        if from >= now {
            return Ok(Vec::new());
        }
        let rows = self.newest_room_events(room, from, now, MAX_COUNTED).await?;
        let events: Vec<(i64, Value)> = rows
            .iter()
            .map(|row| (row.stream_ordering, crate::events::client_event_from_str(&row.json)))
            .filter(|(_, e)| e["sender"].as_str() != Some(me.as_str()))
            .collect();
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (members, _) = self.member_counts(room, now).await?;
        let u = me.to_string();
        let display = self.db(move |s| Ok(s.get_profile(&u)?.and_then(|p| p.0).unwrap_or_default())).await?;
        let room_id = OwnedRoomId::try_from(room).map_err(Error::internal)?;
        let mut out = Vec::new();
        for (position, event) in events {
            let verdict = Self::verdict(rules, &event, me, &display, &room_id, members).await;
            out.push((position, event, verdict));
        }
        Ok(out)
    }

    /// `unread_notifications` of a joined room in `/sync`: the notifying events after the
    /// user's read receipt. Counts are kept per (user, room) and only new events are evaluated
    /// on the next sync; a new receipt or a rule change starts the count again.
    ///
    /// `read_at` is the user's read position in the room (an initial sync reads them all at
    /// once). A count already taken past the room's last change needs no storage read at all.
    pub(crate) async fn unread_counts(
        &self,
        me: &OwnedUserId,
        rules: &Ruleset,
        room: &str,
        now: i64,
        read_at: i64,
    ) -> Result<Value> {
        let key = (me.to_string(), room.to_owned());
        let cached = self.push.unread.lock().unwrap_or_else(|p| p.into_inner()).get(&key).copied();
        let mut count = match cached {
            Some(c) if c.read_at == read_at && c.counted_to <= now => c,
            _ => UnreadCount { read_at, counted_to: read_at, notify: 0, highlight: 0 },
        };
        if self.sync.cache.changed_at(room) > count.counted_to {
            for (_, _, v) in self.verdicts_between(me, rules, room, count.counted_to, now).await? {
                count.notify += usize::from(v.notify);
                count.highlight += usize::from(v.notify && v.highlight);
            }
        }
        count.counted_to = count.counted_to.max(now);
        self.push.unread.lock().unwrap_or_else(|p| p.into_inner()).insert(key, count);
        Ok(
            json!({"notification_count": count.notify.min(MAX_COUNTED), "highlight_count": count.highlight.min(MAX_COUNTED)}),
        )
    }

    /// `GET /notifications`: recent events that notified the user, newest first. `from` is a
    /// timestamp token from a previous page.
    pub async fn notifications(
        &self,
        me: &Requester,
        from: Option<&str>,
        limit: usize,
        only_highlight: bool,
    ) -> Result<Value> {
        let before = match from {
            Some(t) => Some(t.parse::<i64>().map_err(|_| Error::invalid_param("Invalid from token"))?),
            None => None,
        };
        let rules = self.ruleset(&me.user_id).await?;
        let u = me.user_id.to_string();
        let (rooms, now) = self.db(move |s| Ok((s.rooms_for_user(&u, "join")?, s.max_stream_ordering()?))).await?;
        let mut found: Vec<Value> = Vec::new();
        for room in rooms {
            let (r, u) = (room.clone(), me.user_id.to_string());
            let read_at = self.db(move |s| s.read_position(&r, &u)).await?;
            for (position, event, verdict) in self.verdicts_between(&me.user_id, &rules, &room, 0, now).await? {
                let ts = event["origin_server_ts"].as_i64().unwrap_or(0);
                if before.is_some_and(|b| ts >= b) || !verdict.notify || (only_highlight && !verdict.highlight) {
                    continue;
                }
                let mut actions = vec![json!("notify")];
                if verdict.highlight {
                    actions.push(json!({"set_tweak": "highlight"}));
                }
                let read = position <= read_at;
                // `profile_tag` is always present (sytest checks) and a string (the spec's
                // schema); Myelin has no tags, so it is empty.
                found.push(json!({"actions": actions, "event": event, "profile_tag": "", "read": read, "room_id": room, "ts": ts}));
            }
        }
        found.sort_by_key(|n| std::cmp::Reverse(n["ts"].as_i64().unwrap_or(0)));
        let more = found.len() > limit;
        found.truncate(limit);
        let mut events: Vec<Value> = found.iter_mut().map(|n| n["event"].take()).collect();
        self.complete_unsigned(&mut events).await?;
        for (notification, event) in found.iter_mut().zip(events) {
            notification["event"] = event;
        }
        let mut body = json!({"notifications": found});
        if more && let Some(last) = body["notifications"].as_array().and_then(|a| a.last()) {
            body["next_token"] = json!(last["ts"].as_i64().unwrap_or(0).to_string());
        }
        Ok(body)
    }
}
