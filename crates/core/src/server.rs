//! The [`Homeserver`]: the one struct holding every service's state, built once at start-up.

use std::sync::Arc;

use myelin_storage::Storage;
use ruma::OwnedUserId;

use crate::events::SigningKey;
use crate::modules::ModuleRegistry;
use crate::{Config, Error, Result};

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Requester {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device the token belongs to.
    pub device_id: String,
    /// The access token used.
    pub access_token: String,
    /// Server admin.
    pub is_admin: bool,
    /// Shadow-banned: writes get fake successes.
    pub shadow_banned: bool,
    /// Suspended by an admin: it may read, leave and redact its own events only.
    pub suspended: bool,
    /// A guest account.
    pub is_guest: bool,
    /// The appservice whose `as_token` the request carried (acting as its sender or as a user
    /// of its namespace).
    pub app_service: Option<Arc<crate::appservice::Registration>>,
    /// `?ts=` on an appservice's request: the `origin_server_ts` of the event it sends (a
    /// bridged message keeps its time).
    pub app_service_ts: Option<i64>,
}

impl Requester {
    /// Made by the server for its own actions ([`Homeserver::requester_for`]: room shutdowns,
    /// server notices), which carry no access token and which Synapse does not rate-limit.
    pub(crate) fn is_internal(&self) -> bool {
        self.access_token.is_empty() && self.app_service.is_none()
    }

    /// 403 `M_USER_SUSPENDED` with Synapse's `message` when the account is suspended.
    pub(crate) fn refuse_if_suspended(&self, message: &str) -> Result<()> {
        if self.suspended {
            return Err(Error::new(
                crate::error::ErrorKind::Module { status: 403, errcode: "M_USER_SUSPENDED".into() },
                message,
            ));
        }
        Ok(())
    }

    /// The `origin_server_ts` an appservice gave its event (`?ts=`), if any.
    pub(crate) fn bridged_ts(&self) -> Option<ruma::MilliSecondsSinceUnixEpoch> {
        self.app_service_ts.and_then(|t| ruma::UInt::new(t as u64)).map(ruma::MilliSecondsSinceUnixEpoch)
    }
}

/// Every service's state. Cheap to share as `Arc<Homeserver>`.
pub struct Homeserver {
    /// The validated config (module configs already consumed).
    pub config: Config,
    /// URL previews answered lately (see `url_preview`).
    pub(crate) url_previews: crate::url_preview::PreviewCache,
    /// The admin API's background tasks and their statuses (see `admin_tasks`).
    pub(crate) admin_tasks: crate::admin_tasks::AdminTasks,
    pub(crate) store: Arc<dyn Storage>,
    pub(crate) key: SigningKey,
    /// The module callback registry and web resources.
    pub modules: ModuleRegistry,
    /// Rooms: caches, send locks, the event writer (see `rooms`).
    pub(crate) rooms: crate::rooms::RoomsState,
    /// `/sync`: the stream watch and cached sections (see `sync`).
    pub(crate) sync: crate::sync::SyncState,
    /// Sliding sync's connections (see `sliding_sync`).
    pub(crate) sliding_sync: crate::sliding_sync::SlidingSyncState,
    /// Accounts: UIA sessions, nonces, OpenID tokens, last seen (see `users`).
    pub(crate) accounts: crate::users::AccountsState,
    /// Typing and presence (see `ephemeral`).
    pub(crate) ephemeral: crate::ephemeral::EphemeralState,
    /// Push rules, unread counts, pushers (see `push`).
    pub(crate) push: crate::push::PushState,
    /// The Server-Server API's client, queues and limits (see `federation`).
    pub(crate) federation: crate::federation::FederationState,
    /// The `rc_*` rate limits' buckets (see `ratelimit`); the only copy of the counts.
    pub(crate) limiters: crate::ratelimit::Limiters,
    /// The bus to the deployment's other processes, if any (see `bus`).
    pub(crate) bus: crate::bus::BusState,
    /// Appservices' HTTP client and senders' wake-ups (see `appservice`).
    pub(crate) appservices: crate::appservice::AppserviceState,
    /// Single sign-on: providers, pages, sessions in progress (see `sso`).
    pub(crate) sso: crate::sso::SsoState,
}

impl Homeserver {
    /// Builds the services over an opened store. Modules are instantiated separately
    /// ([`crate::modules::instantiate`]) once this exists, because their `ModuleApi` calls back
    /// into it.
    pub fn new(config: Config, store: Arc<dyn Storage>, key: SigningKey) -> Result<Arc<Self>> {
        let position = store.max_stream_ordering()?;
        myelin_metrics::init(&config.server_name);
        let writer =
            crate::writer::EventWriter::start(store.clone(), config.server_name.clone()).map_err(Error::internal)?;
        let mut recent_txns = crate::rooms::RecentTxns::default();
        for (user, device, txn, event) in store.recent_txn_ids(crate::rooms::RecentTxns::CAPACITY)?.into_iter().rev() {
            recent_txns.insert((user, device, txn), event);
        }
        let federation = crate::federation::client::FederationClient::new(&config.federation)
            .map_err(|e| Error::internal(format!("federation client: {e}")))?;
        let sso = crate::sso::SsoState::new(&config, &key).map_err(|e| Error::internal(format!("SSO: {e}")))?;
        Ok(Arc::new(Homeserver {
            sso,
            limiters: crate::ratelimit::Limiters::new(&config.rate_limits),
            url_previews: Default::default(),
            admin_tasks: Default::default(),
            bus: Default::default(),
            federation: crate::federation::FederationState {
                client: federation,
                key_fetch_failures: Default::default(),
                backfilled_before: Default::default(),
                outbound: Default::default(),
                inbound: crate::federation::transactions::Inbound::new(&config.cache_sizes),
                limiter: crate::ratelimit::FederationLimiter::new(config.rate_limits.federation),
                live_senders: std::sync::Mutex::new(vec![config.instance.name.clone()]),
            },
            rooms: crate::rooms::RoomsState::new(writer, recent_txns, &config.cache_sizes),
            sync: crate::sync::SyncState::new(position),
            sliding_sync: crate::sliding_sync::SlidingSyncState::new(&config.cache_sizes),
            accounts: crate::users::AccountsState::new(&config.cache_sizes),
            ephemeral: crate::ephemeral::EphemeralState::new(&config.cache_sizes),
            push: crate::push::PushState::new(&config.cache_sizes),
            appservices: crate::appservice::AppserviceState::new(config.insecure_outbound_tls),
            config,
            store,
            key,
            modules: ModuleRegistry::default(),
        }))
    }

    /// This server as an `Arc`, once serving (for work that outlives a request).
    pub(crate) fn arc(&self) -> Option<Arc<Homeserver>> {
        self.federation.outbound.server().and_then(|w| w.upgrade())
    }

    /// The server name.
    pub fn server_name(&self) -> &str {
        &self.config.server_name
    }

    /// Runs a storage call.
    ///
    /// SQLite's calls run here, on the calling worker thread: they are short (a commit's WAL
    /// fsync costs about a tenth of a millisecond on a local disk, and checkpoints run on the
    /// store's own thread), and a hop
    /// to the blocking pool costs two thread wake-ups, which on this kind of machine cost more
    /// than the queries; `/send` makes several. A backend that waits on the network
    /// (PostgreSQL: [`myelin_storage::StorageInfo::inline_calls`] is false) runs on the blocking
    /// pool instead, so a slow query never stalls a runtime worker. A panicking storage call
    /// becomes a 500 either way.
    pub(crate) async fn db<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&dyn Storage) -> myelin_storage::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let desc = storage_call_name::<F>();
        if self.store.inline_calls() {
            let store = self.store.as_ref();
            let started = std::time::Instant::now();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(store)));
            count_storage_call(desc, started);
            return result.map_err(|_| Error::internal("storage call panicked"))?.map_err(Error::from);
        }
        let store = self.store.clone();
        let scheduled = std::time::Instant::now();
        tokio::task::spawn_blocking(move || {
            myelin_metrics::metrics().db_schedule_time.observe(scheduled.elapsed().as_secs_f64());
            let started = std::time::Instant::now();
            let result = f(store.as_ref());
            count_storage_call(desc, started);
            result
        })
        .await
        .map_err(|_| Error::internal("storage call panicked"))?
        .map_err(Error::from)
    }

    /// Announces a new stream position to long-polling syncs, here and in the deployment's
    /// other processes.
    pub(crate) fn advance_stream(&self, position: i64) {
        if self.advance_local_stream(position) && self.has_bus() {
            self.publish(format!("stream {position}"));
        }
    }

    /// Announces a stream position to this process's long-polling syncs; false if it was not
    /// new here.
    pub(crate) fn advance_local_stream(&self, position: i64) -> bool {
        self.sync.stream.send_if_modified(|current| {
            if position > *current {
                *current = position;
                true
            } else {
                false
            }
        })
    }

    /// Starts shutting down: long-polling requests are answered now with what they have.
    pub fn begin_shutdown(&self) {
        self.sync.stopping.send_replace(true);
    }

    /// The last step of a clean stop, after the last request: the store tidies up (SQLite
    /// truncates its WAL).
    pub async fn close_storage(&self) -> Result<()> {
        self.db(|s| s.shutdown()).await
    }

    /// The public signing key, as `(key_id, base64)`.
    pub fn verify_key(&self) -> (&str, &str) {
        (&self.key.key_id, &self.key.public_key_base64)
    }

    /// Whether a user ID belongs to this server.
    pub fn is_mine(&self, user_id: &ruma::UserId) -> bool {
        user_id.server_name().as_str() == self.server_name()
    }
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

/// A random token of `len` alphanumeric characters.
pub(crate) fn random_string(len: usize) -> String {
    use rand::Rng;
    rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(len).map(char::from).collect()
}

/// Percent-encodes a path segment (everything but unreserved characters).
pub(crate) fn url_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The name a storage call is counted under (Synapse's `desc` label): the function that made
/// it, from the closure's type name (`myelin_core::rooms::send::{{closure}}` gives
/// `rooms::send`; the metrics print it without `<impl ...>` segments). No allocation: the name is a slice of a static string.
fn storage_call_name<F>() -> &'static str {
    let name = std::any::type_name::<F>();
    let name = name.split_once("::{{closure}}").map_or(name, |(head, _)| head);
    name.strip_prefix("myelin_core::").unwrap_or(name)
}

/// Counts one storage call and its time in Synapse's transaction metrics.
fn count_storage_call(desc: &'static str, started: std::time::Instant) {
    let m = myelin_metrics::metrics();
    let labels = myelin_metrics::DescLabel { desc: myelin_metrics::CallSite(desc) };
    m.db_transactions.get_or_create(&labels).inc();
    m.db_transaction_seconds.get_or_create(&labels).inc_by(started.elapsed().as_secs_f64());
}
