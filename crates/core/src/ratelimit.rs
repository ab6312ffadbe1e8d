//! Rate limits with Synapse's keys, defaults and semantics (`rc_*` in `homeserver.yaml`).
//!
//! Each [`Limiter`] is a set of leaky buckets, one per key (a user ID, an address, a room):
//! an action adds a token, tokens leak at `per_second`, and an action that would take the
//! bucket past `burst_count` is refused with 429 `M_LIMIT_EXCEEDED`, `retry_after_ms` and a
//! `Retry-After` header. As on Synapse, a bucket remembers only when it was last empty and how
//! many tokens it took since, so nothing runs periodically; buckets that have leaked dry are
//! dropped now and then as others are written.
//!
//! Exemptions, as Synapse: a user with a row in `ratelimit_override` whose
//! `messages_per_second` is 0 or null is never limited where a requester is known; other
//! values replace `rc_message` for that user. (Application-service users with
//! `rate_limited: false` are exempt too, once application services exist.)
//!
//! The in-memory buckets are the only copy of the counts: with several processes each would
//! count alone (as on Synapse, whose limiters are per worker).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{Map, Value, json};

use crate::config::ConfigError;
use crate::{Error, ErrorKind, Result};

/// One `{per_second, burst_count}` setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens leaked per second (the long-run rate).
    pub per_second: f64,
    /// The most actions allowed at once.
    pub burst_count: f64,
}

const fn rl(per_second: f64, burst_count: f64) -> RateLimit {
    RateLimit { per_second, burst_count }
}

/// `rc_federation`: how many requests a remote server may make (Synapse's
/// `FederationRateLimiter`): within `window_size` ms, requests past `sleep_limit` are delayed
/// by `sleep_delay` ms each, requests past `reject_limit` are refused, and at most
/// `concurrent` run at once per server (the rest queue).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FederationRateLimit {
    /// Milliseconds over which requests are counted.
    pub window_size: u64,
    /// Requests in the window before each further one is delayed.
    pub sleep_limit: u64,
    /// The delay, in milliseconds.
    pub sleep_delay: u64,
    /// Requests in the window before further ones are refused.
    pub reject_limit: u64,
    /// Requests processed at once per server.
    pub concurrent: u64,
}

/// Every `rc_*` setting, with Synapse's defaults for what the config leaves out.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSettings {
    /// `rc_message`: events sent by a user.
    pub message: RateLimit,
    /// `rc_admin_redaction`: redactions by room moderators of others' events (`rc_message`
    /// when absent).
    pub admin_redaction: Option<RateLimit>,
    /// `rc_registration`: registrations per client address.
    pub registration: RateLimit,
    /// `rc_registration_token_validity`: token validity checks per client address.
    pub registration_token_validity: RateLimit,
    /// `rc_login.address`: logins per client address.
    pub login_address: RateLimit,
    /// `rc_login.account`: logins per account.
    pub login_account: RateLimit,
    /// `rc_login.failed_attempts`: failed logins per account.
    pub login_failed_attempts: RateLimit,
    /// `rc_joins.local`: joins by a user to rooms this server is in.
    pub joins_local: RateLimit,
    /// `rc_joins.remote`: joins by a user to rooms this server is not in yet.
    pub joins_remote: RateLimit,
    /// `rc_joins_per_room`: joins to one room, from any user.
    pub joins_per_room: RateLimit,
    /// `rc_3pid_validation`: 3PID validation requests.
    pub three_pid_validation: RateLimit,
    /// `rc_invites.per_room`: invites sent in one room.
    pub invites_per_room: RateLimit,
    /// `rc_invites.per_user`: invites received by one user.
    pub invites_per_user: RateLimit,
    /// `rc_invites.per_issuer`: invites sent by one user.
    pub invites_per_issuer: RateLimit,
    /// `rc_third_party_invite`: 3PID invites.
    pub third_party_invite: RateLimit,
    /// `rc_media_create`: media uploads and `create` calls per user.
    pub media_create: RateLimit,
    /// `rc_reports`: room and user reports per user.
    pub reports: RateLimit,
    /// `rc_presence.per_user`: presence changes per user.
    pub presence_per_user: RateLimit,
    /// `rc_delayed_event_mgmt`: delayed-event management (no delayed events yet).
    pub delayed_event_mgmt: RateLimit,
    /// `rc_room_creation`: rooms created per user.
    pub room_creation: RateLimit,
    /// `rc_key_requests`: cross-user key queries.
    pub key_requests: RateLimit,
    /// `rc_federation`.
    pub federation: FederationRateLimit,
}

impl Default for RateLimitSettings {
    /// Synapse 1.163's defaults.
    fn default() -> Self {
        RateLimitSettings {
            message: rl(0.2, 10.0),
            admin_redaction: None,
            registration: rl(0.17, 3.0),
            registration_token_validity: rl(0.1, 5.0),
            login_address: rl(0.003, 5.0),
            login_account: rl(0.003, 5.0),
            login_failed_attempts: rl(0.17, 3.0),
            joins_local: rl(0.1, 10.0),
            joins_remote: rl(0.01, 10.0),
            joins_per_room: rl(1.0, 10.0),
            three_pid_validation: rl(0.003, 5.0),
            invites_per_room: rl(0.3, 10.0),
            invites_per_user: rl(0.003, 5.0),
            invites_per_issuer: rl(0.3, 10.0),
            third_party_invite: rl(0.0025, 5.0),
            media_create: rl(10.0, 50.0),
            reports: rl(1.0, 5.0),
            presence_per_user: rl(0.1, 1.0),
            delayed_event_mgmt: rl(1.0, 5.0),
            room_creation: rl(0.016, 10.0),
            key_requests: rl(20.0, 100.0),
            federation: FederationRateLimit {
                window_size: 1000,
                sleep_limit: 10,
                sleep_delay: 500,
                reject_limit: 50,
                concurrent: 3,
            },
        }
    }
}

/// The top-level keys [`RateLimitSettings::parse`] reads.
pub(crate) const CONFIG_KEYS: &[&str] = &[
    "rc_message",
    "rc_admin_redaction",
    "rc_registration",
    "rc_registration_token_validity",
    "rc_login",
    "rc_joins",
    "rc_joins_per_room",
    "rc_3pid_validation",
    "rc_invites",
    "rc_third_party_invite",
    "rc_media_create",
    "rc_reports",
    "rc_presence",
    "rc_delayed_event_mgmt",
    "rc_room_creation",
    "rc_key_requests",
    "rc_federation",
];

impl RateLimitSettings {
    /// Reads the `rc_*` keys of the config root; absent keys keep Synapse's defaults.
    pub(crate) fn parse(root: &Map<String, Value>) -> Result<Self, ConfigError> {
        let mut s = RateLimitSettings::default();
        let setting = |path: &str, default: RateLimit| -> Result<RateLimit, ConfigError> {
            let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
            let mut value = root.get(&segments[0]);
            for segment in &segments[1..] {
                value = match value {
                    Some(Value::Object(m)) => m.get(segment),
                    None | Some(Value::Null) => None,
                    Some(_) => return Err(ConfigError::at(&segments[..1], "expected a mapping")),
                };
            }
            let map = match value {
                None | Some(Value::Null) => return Ok(default),
                Some(Value::Object(m)) => m,
                Some(_) => return Err(ConfigError::at(&segments, "expected a mapping")),
            };
            let number = |key: &str, default: f64| -> Result<f64, ConfigError> {
                match map.get(key) {
                    None | Some(Value::Null) => Ok(default),
                    Some(Value::Number(n)) => n.as_f64().filter(|v| *v >= 0.0).ok_or_else(|| {
                        let mut p = segments.clone();
                        p.push(key.into());
                        ConfigError::at(&p, "expected a number of at least 0")
                    }),
                    Some(_) => {
                        let mut p = segments.clone();
                        p.push(key.into());
                        Err(ConfigError::at(&p, "expected a number"))
                    }
                }
            };
            Ok(RateLimit {
                per_second: number("per_second", default.per_second)?,
                burst_count: number("burst_count", default.burst_count)?.trunc(),
            })
        };
        s.message = setting("rc_message", s.message)?;
        if root.get("rc_admin_redaction").is_some_and(|v| !v.is_null()) {
            s.admin_redaction = Some(setting("rc_admin_redaction", rl(0.17, 3.0))?);
        }
        s.registration = setting("rc_registration", s.registration)?;
        s.registration_token_validity = setting("rc_registration_token_validity", s.registration_token_validity)?;
        s.login_address = setting("rc_login.address", s.login_address)?;
        s.login_account = setting("rc_login.account", s.login_account)?;
        s.login_failed_attempts = setting("rc_login.failed_attempts", s.login_failed_attempts)?;
        s.joins_local = setting("rc_joins.local", s.joins_local)?;
        s.joins_remote = setting("rc_joins.remote", s.joins_remote)?;
        s.joins_per_room = setting("rc_joins_per_room", s.joins_per_room)?;
        s.three_pid_validation = setting("rc_3pid_validation", s.three_pid_validation)?;
        s.invites_per_room = setting("rc_invites.per_room", s.invites_per_room)?;
        s.invites_per_user = setting("rc_invites.per_user", s.invites_per_user)?;
        s.invites_per_issuer = setting("rc_invites.per_issuer", s.invites_per_issuer)?;
        s.third_party_invite = setting("rc_third_party_invite", s.third_party_invite)?;
        s.media_create = setting("rc_media_create", s.media_create)?;
        s.reports = setting("rc_reports", s.reports)?;
        s.presence_per_user = setting("rc_presence.per_user", s.presence_per_user)?;
        s.delayed_event_mgmt = setting("rc_delayed_event_mgmt", s.delayed_event_mgmt)?;
        s.room_creation = setting("rc_room_creation", s.room_creation)?;
        s.key_requests = setting("rc_key_requests", s.key_requests)?;
        match root.get("rc_federation") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                let field = |key: &str, default: u64| -> Result<u64, ConfigError> {
                    match m.get(key) {
                        None | Some(Value::Null) => Ok(default),
                        Some(v) => v.as_u64().ok_or_else(|| {
                            ConfigError::at(&["rc_federation".into(), key.into()], "expected a non-negative integer")
                        }),
                    }
                };
                let d = s.federation;
                s.federation = FederationRateLimit {
                    window_size: field("window_size", d.window_size)?,
                    sleep_limit: field("sleep_limit", d.sleep_limit)?,
                    sleep_delay: field("sleep_delay", d.sleep_delay)?,
                    reject_limit: field("reject_limit", d.reject_limit)?,
                    concurrent: field("concurrent", d.concurrent)?.max(1),
                };
            }
            Some(_) => return Err(ConfigError::at(&["rc_federation".into()], "expected a mapping")),
        }
        Ok(s)
    }
}

/// A bucket: how many actions were counted since `start`, when it was last empty.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    count: f64,
    start: f64,
}

/// Buckets written between sweeps of the dry ones.
const SWEEP_EVERY: u32 = 1024;

/// One rate limit's buckets, keyed by user, address or room.
pub struct Limiter {
    /// Synapse's name for it (`rc_message`, `rc_joins.local`, ...), as modules' ratelimit
    /// callbacks are told.
    pub name: &'static str,
    limit: RateLimit,
    epoch: Instant,
    state: Mutex<(HashMap<String, Bucket>, u32)>,
}

impl Limiter {
    /// A limiter named `name` with `limit` as its default setting.
    pub fn new(name: &'static str, limit: RateLimit) -> Self {
        Limiter { name, limit, epoch: Instant::now(), state: Mutex::new((HashMap::new(), 0)) }
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// Counts one action for `key`, or refuses it (nothing counted) with 429.
    pub fn check(&self, key: &str) -> Result<()> {
        self.check_with(key, self.limit, true)
    }

    /// Whether one more action for `key` would pass, without counting it.
    pub fn peek(&self, key: &str) -> Result<()> {
        self.check_with(key, self.limit, false)
    }

    /// As [`Limiter::check`] with another setting (a per-user override); `update: false`
    /// only asks.
    pub fn check_with(&self, key: &str, limit: RateLimit, update: bool) -> Result<()> {
        let now = self.now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (buckets, writes) = &mut *state;
        let Bucket { mut count, mut start } = buckets.get(key).copied().unwrap_or(Bucket { count: 0.0, start: now });
        let performed = count - (now - start) * limit.per_second;
        if performed < 0.0 {
            count = 0.0;
            start = now;
        }
        let allowed = performed.max(0.0) <= limit.burst_count - 1.0;
        if allowed {
            count += 1.0;
        }
        if allowed && update {
            buckets.insert(key.to_owned(), Bucket { count, start });
            *writes += 1;
            if *writes >= SWEEP_EVERY {
                *writes = 0;
                buckets.retain(|_, b| b.count - (now - b.start) * limit.per_second > 0.0);
            }
        }
        drop(state);
        if allowed {
            return Ok(());
        }
        // When the bucket will have room for one more.
        let retry_after = if limit.per_second > 0.0 {
            (start + (count - limit.burst_count + 1.0) / limit.per_second - now).max(0.0)
        } else {
            // Never leaks: Synapse answers -1 for "no idea"; a minute is more useful.
            60.0
        };
        Err(limit_exceeded((retry_after * 1000.0) as u64))
    }

    /// Counts an action that happened whatever the limit (a failed login).
    pub fn record(&self, key: &str) {
        let _ = self.check_with(key, RateLimit { per_second: self.limit.per_second, burst_count: f64::MAX }, true);
    }
}

/// 429 `M_LIMIT_EXCEEDED` with `retry_after_ms` (http adds `Retry-After`).
pub fn limit_exceeded(retry_after_ms: u64) -> Error {
    let mut fields = Map::new();
    fields.insert("retry_after_ms".into(), json!(retry_after_ms));
    Error::new(ErrorKind::LimitExceeded, "Too Many Requests").with_fields(fields)
}

/// A per-user override from `ratelimit_override`: `None` means never limited.
pub type Override = Option<RateLimit>;

/// Every limiter the server applies, built from the config.
pub struct Limiters {
    /// `rc_message`.
    pub message: Limiter,
    /// `rc_admin_redaction`, when configured.
    pub admin_redaction: Option<Limiter>,
    /// `rc_registration`, per address.
    pub registration: Limiter,
    /// `rc_registration_token_validity`, per address.
    pub registration_token_validity: Limiter,
    /// `rc_login.address`.
    pub login_address: Limiter,
    /// `rc_login.account`.
    pub login_account: Limiter,
    /// `rc_login.failed_attempts`.
    pub login_failed_attempts: Limiter,
    /// `rc_joins.local`.
    pub joins_local: Limiter,
    /// `rc_joins.remote`.
    pub joins_remote: Limiter,
    /// `rc_joins_per_room`.
    pub joins_per_room: Limiter,
    /// `rc_3pid_validation`: `requestToken` calls, per client address and per address mailed.
    pub three_pid_validation: Limiter,
    /// `rc_invites.per_room`.
    pub invites_per_room: Limiter,
    /// `rc_invites.per_user`.
    pub invites_per_user: Limiter,
    /// `rc_invites.per_issuer`.
    pub invites_per_issuer: Limiter,
    /// `rc_third_party_invite`: 3PID invites, per inviter.
    pub third_party_invite: Limiter,
    /// `rc_media_create`.
    pub media_create: Limiter,
    /// `rc_reports`.
    pub reports: Limiter,
    /// `rc_presence.per_user`.
    pub presence_per_user: Limiter,
    /// `rc_room_creation`.
    pub room_creation: Limiter,
    /// `POST /login/get_token`, per user: once a minute, fixed as on Synapse.
    pub login_token_request: Limiter,
    /// Per-user overrides read so far (a cache of `ratelimit_override`).
    overrides: Mutex<HashMap<String, Option<Override>>>,
}

impl Limiters {
    /// The limiters for `settings`.
    pub fn new(settings: &RateLimitSettings) -> Self {
        Limiters {
            message: Limiter::new("rc_message", settings.message),
            admin_redaction: settings.admin_redaction.map(|l| Limiter::new("rc_admin_redaction", l)),
            registration: Limiter::new("rc_registration", settings.registration),
            registration_token_validity: Limiter::new(
                "rc_registration_token_validity",
                settings.registration_token_validity,
            ),
            login_address: Limiter::new("rc_login.address", settings.login_address),
            login_account: Limiter::new("rc_login.account", settings.login_account),
            login_failed_attempts: Limiter::new("rc_login.failed_attempts", settings.login_failed_attempts),
            joins_local: Limiter::new("rc_joins.local", settings.joins_local),
            joins_remote: Limiter::new("rc_joins.remote", settings.joins_remote),
            joins_per_room: Limiter::new("rc_joins_per_room", settings.joins_per_room),
            three_pid_validation: Limiter::new("rc_3pid_validation", settings.three_pid_validation),
            invites_per_room: Limiter::new("rc_invites.per_room", settings.invites_per_room),
            invites_per_user: Limiter::new("rc_invites.per_user", settings.invites_per_user),
            invites_per_issuer: Limiter::new("rc_invites.per_issuer", settings.invites_per_issuer),
            third_party_invite: Limiter::new("rc_third_party_invite", settings.third_party_invite),
            media_create: Limiter::new("rc_media_create", settings.media_create),
            reports: Limiter::new("rc_reports", settings.reports),
            presence_per_user: Limiter::new("rc_presence.per_user", settings.presence_per_user),
            room_creation: Limiter::new("rc_room_creation", settings.room_creation),
            login_token_request: Limiter::new("<login token request>", rl(1.0 / 60.0, 1.0)),
            overrides: Mutex::new(HashMap::new()),
        }
    }

    /// The cached override of `user_id`, if it was read already.
    pub(crate) fn cached_override(&self, user_id: &str) -> Option<Option<Override>> {
        self.overrides.lock().unwrap_or_else(|p| p.into_inner()).get(user_id).copied()
    }

    /// Remembers `user_id`'s override (`None`: the user has none).
    pub(crate) fn remember_override(&self, user_id: &str, value: Option<Override>) {
        self.overrides.lock().unwrap_or_else(|p| p.into_inner()).insert(user_id.to_owned(), value);
    }

    /// Forgets every cached override (after one is written).
    pub fn forget_overrides(&self) {
        self.overrides.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl crate::Homeserver {
    /// `user_id`'s row of `ratelimit_override` (cached until the admin API writes one):
    /// `None` when there is none, `Some(None)` when the user is never limited.
    async fn ratelimit_override(&self, user_id: &str) -> Result<Option<Override>> {
        // Users of an appservice registered with `rate_limited: false` are never limited.
        if self.exempt_from_rate_limits(user_id) {
            return Ok(Some(None));
        }
        if let Some(known) = self.limiters.cached_override(user_id) {
            return Ok(known);
        }
        let uid = user_id.to_owned();
        let row = self.db(move |s| s.get_ratelimit_override(&uid)).await?;
        let value = row.map(|(per_second, burst)| match per_second {
            None => None,
            Some(0.0) => None,
            Some(p) => Some(RateLimit { per_second: p, burst_count: burst.unwrap_or(0) as f64 }),
        });
        self.limiters.remember_override(user_id, value);
        Ok(value)
    }

    /// Counts one action of `user_id` on `limiter`, keyed by `key` (the user when `None`),
    /// unless an override exempts the user.
    pub(crate) async fn limit_user(&self, limiter: &Limiter, user_id: &str, key: Option<&str>) -> Result<()> {
        if let Some(None) = self.ratelimit_override(user_id).await? {
            return Ok(());
        }
        match self.module_limit(limiter, user_id).await? {
            Some(None) => Ok(()),
            Some(Some(limit)) => limiter.check_with(key.unwrap_or(user_id), limit, true),
            None => limiter.check(key.unwrap_or(user_id)),
        }
    }

    /// A module's setting for `user_id` on `limiter` (`get_ratelimit_override_for_user`):
    /// `Some(None)` when it lifts the limit (a rate of 0), `None` when no module has one.
    async fn module_limit(&self, limiter: &Limiter, user_id: &str) -> Result<Option<Option<RateLimit>>> {
        if !self.modules.has_ratelimit_callbacks() {
            return Ok(None);
        }
        Ok(self.modules.ratelimit_override_for_user(user_id, limiter.name).await?.map(|o| {
            (o.per_second != 0.0).then_some(RateLimit { per_second: o.per_second, burst_count: o.burst_count as f64 })
        }))
    }

    /// As [`Self::limit_user`] without counting: whether the action would pass.
    pub(crate) async fn peek_user(&self, limiter: &Limiter, user_id: &str, key: Option<&str>) -> Result<()> {
        if let Some(None) = self.ratelimit_override(user_id).await? {
            return Ok(());
        }
        match self.module_limit(limiter, user_id).await? {
            Some(None) => Ok(()),
            Some(Some(limit)) => limiter.check_with(key.unwrap_or(user_id), limit, false),
            None => limiter.peek(key.unwrap_or(user_id)),
        }
    }

    /// `rc_message` for an event a user sends (or `rc_admin_redaction`, when configured, for a
    /// moderator redacting someone else's event); an override's values replace `rc_message`.
    pub(crate) async fn limit_message(&self, user_id: &str, admin_redaction: bool) -> Result<()> {
        let limit = match self.ratelimit_override(user_id).await? {
            Some(None) => return Ok(()),
            Some(Some(custom)) => custom,
            None => match self.module_limit(&self.limiters.message, user_id).await? {
                Some(None) => return Ok(()),
                Some(Some(custom)) => custom,
                None => self.config.rate_limits.message,
            },
        };
        match (&self.limiters.admin_redaction, admin_redaction) {
            (Some(limiter), true) => limiter.check(user_id),
            _ => self.limiters.message.check_with(user_id, limit, true),
        }
    }

    /// Admits a federation request from `origin` (`rc_federation`); the slot is held while it
    /// is processed.
    pub async fn admit_federation_request(&self, origin: &str) -> Result<FederationSlot> {
        self.federation.limiter.admit(origin).await
    }
}

/// `rc_federation` per origin server: the requests of its window and its concurrency slots.
struct Origin {
    recent: Mutex<std::collections::VecDeque<Instant>>,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Synapse's `FederationRateLimiter`: delays, refuses and queues requests per origin server.
pub struct FederationLimiter {
    settings: FederationRateLimit,
    origins: Mutex<HashMap<String, std::sync::Arc<Origin>>>,
}

/// Held while a federation request is processed: one of the origin's concurrent slots.
pub struct FederationSlot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl FederationLimiter {
    /// A limiter with `settings`.
    pub fn new(settings: FederationRateLimit) -> Self {
        FederationLimiter { settings, origins: Mutex::new(HashMap::new()) }
    }

    /// Admits one request from `origin`: refused past `reject_limit` in the window, delayed
    /// past `sleep_limit`, then queued until one of its `concurrent` slots is free.
    pub async fn admit(&self, origin: &str) -> Result<FederationSlot> {
        let s = self.settings;
        let window = std::time::Duration::from_millis(s.window_size);
        let state = {
            let mut origins = self.origins.lock().unwrap_or_else(|p| p.into_inner());
            if origins.len() > 10_000 {
                // Forget servers with nothing in flight and nothing in their window.
                origins.retain(|_, o| {
                    o.slots.available_permits() < s.concurrent as usize
                        || o.recent
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .back()
                            .is_some_and(|t| t.elapsed() < window)
                });
            }
            origins
                .entry(origin.to_owned())
                .or_insert_with(|| {
                    std::sync::Arc::new(Origin {
                        recent: Mutex::new(Default::default()),
                        slots: std::sync::Arc::new(tokio::sync::Semaphore::new(s.concurrent as usize)),
                    })
                })
                .clone()
        };
        let in_window = {
            let mut recent = state.recent.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            while recent.front().is_some_and(|t| now.duration_since(*t) >= window) {
                recent.pop_front();
            }
            recent.push_back(now);
            recent.len() as u64
        };
        if in_window > s.reject_limit {
            return Err(limit_exceeded(s.window_size));
        }
        if in_window > s.sleep_limit {
            tokio::time::sleep(std::time::Duration::from_millis(s.sleep_delay)).await;
        }
        let permit = state.slots.clone().acquire_owned().await.map_err(Error::internal)?;
        Ok(FederationSlot(permit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_next_is_refused_with_a_retry_time() {
        let limiter = Limiter::new("test", rl(0.2, 10.0));
        for _ in 0..10 {
            limiter.check("@a:x").unwrap();
        }
        let e = limiter.check("@a:x").unwrap_err();
        assert_eq!(e.kind, ErrorKind::LimitExceeded);
        let retry = e.fields["retry_after_ms"].as_u64().unwrap();
        assert!((4000..=5000).contains(&retry), "one token leaks in 5 s: {retry}");
        limiter.check("@b:x").expect("buckets are per key");
    }

    #[test]
    fn peeking_counts_nothing_and_record_counts_past_the_limit() {
        let limiter = Limiter::new("test", rl(0.001, 3.0));
        for _ in 0..5 {
            limiter.peek("k").unwrap();
        }
        for _ in 0..4 {
            limiter.record("k");
        }
        assert!(limiter.peek("k").is_err());
    }

    #[test]
    fn tokens_leak_at_the_configured_rate() {
        let limiter = Limiter::new("test", rl(1000.0, 1.0));
        limiter.check("k").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        limiter.check("k").expect("a millisecond leaks one token");
    }

    #[test]
    fn config_keys_override_synapse_defaults_one_field_at_a_time() {
        let root: Map<String, Value> = serde_json::from_value(json!({
            "rc_message": {"per_second": 1.5},
            "rc_login": {"failed_attempts": {"burst_count": 7}},
            "rc_federation": {"reject_limit": 5},
        }))
        .unwrap();
        let s = RateLimitSettings::parse(&root).unwrap();
        assert_eq!(s.message, rl(1.5, 10.0));
        assert_eq!(s.login_failed_attempts, rl(0.17, 7.0));
        assert_eq!(s.login_account, rl(0.003, 5.0));
        assert_eq!(s.federation.reject_limit, 5);
        assert_eq!(s.federation.concurrent, 3);
        let bad: Map<String, Value> =
            serde_json::from_value(json!({"rc_joins": {"local": {"per_second": "x"}}})).unwrap();
        let e = RateLimitSettings::parse(&bad).unwrap_err();
        assert_eq!(e.path, vec!["rc_joins", "local", "per_second"]);
    }
}
