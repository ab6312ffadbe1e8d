//! The [`Homeserver`]: the one struct holding every service's state, built once at start-up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use myelin_storage::Storage;
use ruma::{OwnedRoomId, OwnedUserId};
use tokio::sync::watch;

use crate::events::SigningKey;
use crate::modules::ModuleRegistry;
use crate::rooms::RoomCache;
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
    /// A guest account.
    pub is_guest: bool,
}

/// Every service's state. Cheap to share as `Arc<Homeserver>`.
pub struct Homeserver {
    /// The validated config (module configs already consumed).
    pub config: Config,
    /// Requests to other servers.
    pub(crate) federation: crate::federation::client::FederationClient,
    /// Servers whose keys could not be fetched, and when (see `federation::remote_keys`).
    pub(crate) key_fetch_failures: Mutex<HashMap<String, i64>>,
    /// The outbound queue's per-destination tasks (see `federation::sender`).
    pub(crate) outbound: crate::federation::sender::Outbound,
    /// Inbound transactions in progress and answered (see `federation::transactions`).
    pub(crate) inbound: crate::federation::transactions::Inbound,
    pub(crate) store: Arc<dyn Storage>,
    pub(crate) key: SigningKey,
    /// The module callback registry and web resources.
    pub modules: ModuleRegistry,
    /// Per-room caches of current state, extremities and depth. The inner async mutex is also
    /// the room's send lock: state events hold it across build, auth and persist; messages
    /// only to read their parents and to persist (see `rooms::append_event`). The outer std
    /// mutex is only held to look the entry up, never across an await.
    pub(crate) rooms: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<Option<RoomCache>>>>>,
    /// The latest stream position, watched by long-polling `/sync` requests. Written after each
    /// commit that advances the stream; every waiter wakes and checks whether it has news.
    pub(crate) stream: watch::Sender<i64>,
    /// UIA sessions in progress: session ID -> completed stage types and request info.
    pub(crate) uia_sessions: Mutex<HashMap<String, crate::users::UiaSession>>,
    /// Shared-secret registration nonces -> issue time (ms); single use, one minute.
    pub(crate) registration_nonces: Mutex<HashMap<String, i64>>,
    /// When each `(user, device)`'s last-seen row was last written, and from which IP; held
    /// only to decide whether to write again.
    pub(crate) last_seen: Mutex<HashMap<(String, String), (i64, String)>>,
    /// Who is typing where (in memory only; see `ephemeral`).
    pub(crate) typing: Mutex<HashMap<OwnedRoomId, crate::ephemeral::RoomTyping>>,
    /// OpenID tokens -> (user, expiry ms), in memory: they last an hour.
    pub(crate) openid_tokens: Mutex<HashMap<String, (String, i64)>>,
    /// Parsed push rules per user (see `push`).
    pub(crate) push_rules: Mutex<HashMap<OwnedUserId, Arc<ruma::push::Ruleset>>>,
    /// Unread counts per (user, room), advanced by each sync.
    pub(crate) unread: Mutex<HashMap<(String, String), crate::push::UnreadCount>>,
    /// The presence state and time this process last wrote for each user (see `ephemeral`).
    pub(crate) presence_written: Mutex<HashMap<String, (String, i64)>>,
    /// Parsed state events by ID (see `rooms::load_events`). Stored events do not change,
    /// except a redaction's target, which the redaction removes from here.
    pub(crate) state_events: Mutex<HashMap<ruma::OwnedEventId, crate::events::Pdu>>,
    /// Commits events, batching concurrent ones (see `writer`).
    pub(crate) writer: crate::writer::EventWriter,
    /// `(user, device, txn ID)` of messages queued for writing and not yet committed, so that a
    /// retry arriving meanwhile waits for the first instead of writing a second event.
    pub(crate) txns_in_flight: Mutex<std::collections::HashSet<(String, String, String)>>,
    /// The newest messages' transaction IDs (see `rooms::RecentTxns`).
    pub(crate) recent_txns: Mutex<crate::rooms::RecentTxns>,
    /// When rooms last changed, and cached initial-sync room sections (see `sync`).
    pub(crate) sync_cache: crate::sync::SyncCache,
    /// The `rc_*` rate limits' buckets (see `ratelimit`); the only copy of the counts.
    pub(crate) limiters: crate::ratelimit::Limiters,
    /// The history visibility of state groups read so far (a cache: groups never change).
    pub(crate) visibility_cache: Mutex<HashMap<i64, crate::visibility::HistoryVisibility>>,
    /// Set once the server begins to shut down: long-polls answer at once.
    pub(crate) stopping: watch::Sender<bool>,
    /// `rc_federation`, per origin server.
    pub(crate) federation_limiter: crate::ratelimit::FederationLimiter,
    /// Every user's pushers as stored, read once and dropped when one changes (a cache: the
    /// push gateway sender looks at it for every event).
    pub(crate) pushers: Mutex<Option<crate::push_gateway::StoredPushers>>,
}

impl Homeserver {
    /// Builds the services over an opened store. Modules are instantiated separately
    /// ([`crate::modules::instantiate`]) once this exists, because their `ModuleApi` calls back
    /// into it.
    pub fn new(config: Config, store: Arc<dyn Storage>, key: SigningKey) -> Result<Arc<Self>> {
        let position = store.max_stream_ordering()?;
        let writer = crate::writer::EventWriter::start(store.clone()).map_err(Error::internal)?;
        let mut recent_txns = crate::rooms::RecentTxns::default();
        for (user, device, txn, event) in store.recent_txn_ids(crate::rooms::RecentTxns::CAPACITY)?.into_iter().rev() {
            recent_txns.insert((user, device, txn), event);
        }
        let federation = crate::federation::client::FederationClient::new(&config.federation)
            .map_err(|e| Error::internal(format!("federation client: {e}")))?;
        Ok(Arc::new(Homeserver {
            limiters: crate::ratelimit::Limiters::new(&config.rate_limits),
            stopping: watch::Sender::new(false),
            visibility_cache: Mutex::new(HashMap::new()),
            pushers: Mutex::new(None),
            federation_limiter: crate::ratelimit::FederationLimiter::new(config.rate_limits.federation),
            federation,
            key_fetch_failures: Mutex::new(HashMap::new()),
            outbound: Default::default(),
            inbound: Default::default(),
            config,
            store,
            key,
            modules: ModuleRegistry::default(),
            rooms: Mutex::new(HashMap::new()),
            stream: watch::Sender::new(position),
            uia_sessions: Mutex::new(HashMap::new()),
            registration_nonces: Mutex::new(HashMap::new()),
            last_seen: Mutex::new(HashMap::new()),
            typing: Mutex::new(HashMap::new()),
            openid_tokens: Mutex::new(HashMap::new()),
            push_rules: Mutex::new(HashMap::new()),
            unread: Mutex::new(HashMap::new()),
            presence_written: Mutex::new(HashMap::new()),
            state_events: Mutex::new(HashMap::new()),
            writer,
            txns_in_flight: Mutex::new(std::collections::HashSet::new()),
            recent_txns: Mutex::new(recent_txns),
            sync_cache: crate::sync::SyncCache::new(position),
        }))
    }

    /// This server as an `Arc`, once serving (for work that outlives a request).
    pub(crate) fn arc(&self) -> Option<Arc<Homeserver>> {
        self.outbound.server().and_then(|w| w.upgrade())
    }

    /// The server name.
    pub fn server_name(&self) -> &str {
        &self.config.server_name
    }

    /// Runs a storage call here, on the calling worker thread.
    ///
    /// Storage calls are short: SQLite in WAL mode does not fsync on commit and checkpoints run
    /// on the store's own thread. A hop to the blocking pool costs two thread wake-ups, which on
    /// this kind of machine cost more than the queries, and `/send` makes several. Work that can
    /// take long (hashing, thumbnails) still goes to the blocking pool. A panicking storage call
    /// becomes a 500, as it did on the pool.
    pub(crate) async fn db<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&dyn Storage) -> myelin_storage::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.store.as_ref();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(store)))
            .map_err(|_| Error::internal("storage call panicked"))?
            .map_err(Error::from)
    }

    /// Announces a new stream position to long-polling syncs.
    pub(crate) fn advance_stream(&self, position: i64) {
        self.stream.send_if_modified(|current| {
            if position > *current {
                *current = position;
                true
            } else {
                false
            }
        });
    }

    /// Starts shutting down: long-polling requests are answered now with what they have.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
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
