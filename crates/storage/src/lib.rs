//! Myelin's storage: the traits services persist through, and the embedded SQLite backend.
//!
//! # Layout
//! - [`Storage`]: the whole persistence contract, split by area ([`UserStore`], [`RoomStore`],
//!   [`ClientDataStore`], [`DirectoryStore`], [`MediaStore`], [`RegistrationTokenStore`],
//!   [`KeyStore`], [`EphemeralStore`], [`SearchStore`], [`FederationStore`],
//!   [`TransientStore`], [`AppserviceStore`], [`AdminStore`]) plus [`StorageInfo`] (how a backend is called, and the bus between
//!   the processes sharing it).
//!   Services hold an `Arc<dyn Storage>` and never see SQL.
//! - [`sqlite::SqliteStore`]: the embedded default (WAL, foreign keys, busy timeout), with its
//!   migrations compiled in and applied at open.
//! - [`pg::PostgresStore`]: PostgreSQL, for deployments that outgrow one file (and several
//!   processes sharing one database).
//!
//! # Key decision: synchronous traits
//! The methods are blocking. `core` calls SQLite's inline (each is short; see
//! `Homeserver::db`) and PostgreSQL's on the blocking pool ([`StorageInfo::inline_calls`]).
//! It keeps every write a plain function over one transaction, which is what makes "nothing
//! half-written" easy to guarantee, and one contract for both backends.
//!
//! This crate knows nothing of HTTP, Matrix rules or modules: rows in, rows out.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod pg;
pub mod sqlite;

use serde_json::Value;

/// A storage failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// A uniqueness constraint was hit (the row exists).
    #[error("already exists")]
    Conflict,
    /// The database was written by a newer Myelin.
    #[error(
        "the database schema is version {found}, newer than this Myelin supports ({supported}); \
         upgrade Myelin or restore a backup"
    )]
    SchemaTooNew {
        /// Version found in the database.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// The database is a Synapse database (its `event_json` table is there): Myelin keeps its
    /// own, and imports Synapse's with `myelin import-synapse`.
    #[error(
        "this is a Synapse database (Synapse schema version {found}), which Myelin does not serve directly: \
         point Myelin at a database of its own and import this one into it with `myelin import-synapse \
         --synapse-config <Synapse's homeserver.yaml> -c <Myelin's homeserver.yaml>` \
         (docs/migrating-from-synapse.md)"
    )]
    SynapseDatabase {
        /// Synapse's `schema_version.version`.
        found: i64,
    },
    /// The database's disk (or its quota) is full: nothing was written.
    #[error("the database's disk is full")]
    DiskFull,
    /// Anything else from the backend.
    #[error("database error: {0}")]
    Backend(String),
}

/// Result alias for storage calls.
pub type Result<T> = std::result::Result<T, StorageError>;

/// A local account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// Full user ID.
    pub user_id: String,
    /// argon2 or bcrypt hash; `None` for accounts without a password.
    pub password_hash: Option<String>,
    /// Server admin.
    pub is_admin: bool,
    /// Guest account.
    pub is_guest: bool,
    /// Deactivated account.
    pub deactivated: bool,
    /// Shadow-banned account.
    pub shadow_banned: bool,
    /// Creation time, milliseconds since the epoch.
    pub creation_ts: i64,
    /// Locked by an admin: every request with its tokens is refused (but logout).
    pub locked: bool,
    /// Suspended by an admin: it may read, leave rooms and redact its own events, nothing more.
    pub suspended: bool,
}

/// A third-party identifier on an account (an e-mail address or phone number it proved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreepidRow {
    /// `email` or `msisdn`.
    pub medium: String,
    /// The address, canonical (e-mail addresses in lower case).
    pub address: String,
    /// When its owner proved it, ms.
    pub validated_at: i64,
    /// When it was added to the account, ms.
    pub added_at: i64,
}

/// A validation session: mails with a token were sent to `address`; following one validates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreepidSessionRow {
    /// The session ID (`sid`) the client holds.
    pub session_id: String,
    /// `email`.
    pub medium: String,
    /// The address being validated.
    pub address: String,
    /// The client's secret; with the session ID, it proves the session is the client's.
    pub client_secret: String,
    /// The client's highest `send_attempt` so far.
    pub last_send_attempt: i64,
    /// When a token was followed, ms.
    pub validated_at: Option<i64>,
}

/// A device of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    /// The device ID.
    pub device_id: String,
    /// Display name, if set.
    pub display_name: Option<String>,
    /// Last time a token of this device was used, ms.
    pub last_seen_ts: Option<i64>,
    /// Last IP seen.
    pub last_seen_ip: Option<String>,
    /// Last user agent seen.
    pub last_seen_user_agent: Option<String>,
}

/// An access token to store.
#[derive(Debug, Clone, Copy)]
pub struct NewAccessToken<'a> {
    /// The token.
    pub token: &'a str,
    /// Its user.
    pub user_id: &'a str,
    /// Its device.
    pub device_id: &'a str,
    /// When it expires (ms since the epoch), if it does.
    pub valid_until_ms: Option<i64>,
    /// The refresh token it was issued with, if any.
    pub refresh_token_id: Option<i64>,
}

/// The session behind an access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenRow {
    /// Its user.
    pub user_id: String,
    /// Its device.
    pub device_id: String,
    /// When it expires (ms since the epoch), if it does.
    pub valid_until_ms: Option<i64>,
    /// The refresh token it was issued with, if any.
    pub refresh_token_id: Option<i64>,
    /// Whether it has been used (see [`UserStore::mark_access_token_used`]).
    pub used: bool,
}

/// A refresh token to store.
#[derive(Debug, Clone, Copy)]
pub struct NewRefreshToken<'a> {
    /// The token.
    pub token: &'a str,
    /// Its user.
    pub user_id: &'a str,
    /// Its device.
    pub device_id: &'a str,
    /// When it stops being usable (ms), if it does.
    pub expiry_ts: Option<i64>,
    /// When the whole session ends, however often it is refreshed (ms), if it does.
    pub ultimate_session_expiry_ts: Option<i64>,
}

/// A stored refresh token ([`UserStore::get_refresh_token`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenRow {
    /// Its ID.
    pub id: i64,
    /// Its user.
    pub user_id: String,
    /// Its device.
    pub device_id: String,
    /// When it stops being usable (ms), if it does.
    pub expiry_ts: Option<i64>,
    /// When the whole session ends (ms), if it does.
    pub ultimate_session_expiry_ts: Option<i64>,
    /// Its successor has been put to use (its access token used, or it was refreshed in
    /// turn): this token may not be used again.
    pub superseded: bool,
}

/// When an account expires, as Synapse's legacy `account_validity` table has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountValidity {
    /// The account.
    pub user_id: String,
    /// When it expires (ms).
    pub expiration_ts: i64,
    /// The renewal mail for this period went out (or renewal mails are off for it).
    pub email_sent: bool,
    /// The token of its renewal link, if one was made.
    pub renewal_token: Option<String>,
    /// When that token renewed the account; `None` while unused.
    pub token_used_ts: Option<i64>,
}

/// Accounts, devices, access tokens and profiles.
pub trait UserStore {
    /// Inserts a user and its profile; [`StorageError::Conflict`] if the ID is taken.
    fn create_user(&self, user: &UserRow, displayname: Option<&str>) -> Result<()>;
    /// Looks a user up by exact ID.
    fn get_user(&self, user_id: &str) -> Result<Option<UserRow>>;
    /// Looks a user up ignoring ASCII case, as Synapse does for login.
    fn find_user_case_insensitive(&self, user_id: &str) -> Result<Option<UserRow>>;
    /// Replaces the password hash.
    fn set_password_hash(&self, user_id: &str, hash: Option<&str>) -> Result<()>;
    /// Sets (or with `None` clears) the account's type (`support`, `bot`, ...).
    fn set_user_type(&self, user_id: &str, user_type: Option<&str>) -> Result<()>;
    /// The account's type; `None` for a regular user or an unknown one.
    fn user_type(&self, user_id: &str) -> Result<Option<String>>;
    /// Writes an account's validity (replacing what it had); [`StorageError::Conflict`] if
    /// another account holds the renewal token.
    fn set_account_validity(&self, validity: &AccountValidity) -> Result<()>;
    /// An account's validity; `None` if it has no expiration date.
    fn account_validity(&self, user_id: &str) -> Result<Option<AccountValidity>>;
    /// The account whose renewal link carries `token`.
    fn account_validity_by_token(&self, token: &str) -> Result<Option<AccountValidity>>;
    /// Accounts expiring at or before `ts` that have not been sent a renewal mail.
    fn accounts_expiring_by(&self, ts: i64) -> Result<Vec<AccountValidity>>;
    /// Forgets an account's validity (it was deactivated).
    fn delete_account_validity(&self, user_id: &str) -> Result<()>;
    /// Active accounts without an expiration date (registered before validity was enabled).
    fn accounts_without_validity(&self) -> Result<Vec<String>>;
    /// Sets one of the boolean account flags: `is_admin`, `deactivated`, `shadow_banned`,
    /// `locked`, `suspended` or `is_guest`.
    fn set_user_flag(&self, user_id: &str, flag: UserFlag, value: bool) -> Result<()>;
    /// Marks a user erased (deactivated with `erase`); marking again changes nothing.
    fn mark_user_erased(&self, user_id: &str) -> Result<()>;
    /// Every erased user.
    fn erased_users(&self) -> Result<Vec<String>>;
    /// Records that `user_id` is `external_id` at `auth_provider`; false (nothing written) if
    /// another account already is.
    fn record_external_id(&self, auth_provider: &str, external_id: &str, user_id: &str) -> Result<bool>;
    /// The stored JSON of every invite `sender` sent (member events with membership `invite`).
    fn invites_sent_by(&self, sender: &str) -> Result<Vec<String>>;
    /// The stored JSON of the accepted events of the given types `sender` sent in a room, newest
    /// first.
    fn events_sent_in_room(&self, room_id: &str, sender: &str, types: &[&str]) -> Result<Vec<String>>;
    /// Forgets one of an account's external IDs.
    fn remove_external_id(&self, auth_provider: &str, external_id: &str, user_id: &str) -> Result<()>;
    /// An account's external IDs, as `(auth_provider, external_id)`, sorted.
    fn external_ids(&self, user_id: &str) -> Result<Vec<(String, String)>>;
    /// The account that is `external_id` at `auth_provider`.
    fn user_by_external_id(&self, auth_provider: &str, external_id: &str) -> Result<Option<String>>;
    /// Records that `user_id` bound `(medium, address)` on identity server `id_server`.
    fn add_threepid_binding(&self, user_id: &str, medium: &str, address: &str, id_server: &str) -> Result<()>;
    /// A user's bindings `(medium, address, id_server)`, in that order.
    fn threepid_bindings(&self, user_id: &str) -> Result<Vec<(String, String, String)>>;
    /// Forgets one binding (it was removed from the identity server).
    fn remove_threepid_binding(&self, user_id: &str, medium: &str, address: &str, id_server: &str) -> Result<()>;
    /// An account's third-party identifiers, by medium then address.
    fn user_threepids(&self, user_id: &str) -> Result<Vec<ThreepidRow>>;
    /// The account that has `(medium, address)`, if any.
    fn user_by_threepid(&self, medium: &str, address: &str) -> Result<Option<String>>;
    /// Adds a third-party identifier to an account, or refreshes its times if the account has
    /// it already; false (nothing written) when another account has it.
    fn add_user_threepid(&self, user_id: &str, threepid: &ThreepidRow) -> Result<bool>;
    /// Removes a third-party identifier from an account; false if the account did not have it.
    fn remove_user_threepid(&self, user_id: &str, medium: &str, address: &str) -> Result<bool>;
    /// A validation session by its ID.
    fn threepid_session(&self, session_id: &str) -> Result<Option<ThreepidSessionRow>>;
    /// The session not yet validated that this client began for `(medium, address)`.
    fn unvalidated_threepid_session(
        &self,
        medium: &str,
        client_secret: &str,
        address: &str,
    ) -> Result<Option<ThreepidSessionRow>>;
    /// Records a send of a validation mail: the session (created, or its `last_send_attempt`
    /// raised) and the token the mail carries, valid until `expires` (ms).
    fn save_threepid_token(
        &self,
        session: &ThreepidSessionRow,
        token: &str,
        next_link: Option<&str>,
        expires: i64,
    ) -> Result<()>;
    /// A token of a session: its expiry (ms) and the page to go to once validated.
    fn threepid_token(&self, session_id: &str, token: &str) -> Result<Option<(i64, Option<String>)>>;
    /// Marks a session validated at `at` (ms); one validated already keeps its first time.
    fn validate_threepid_session(&self, session_id: &str, at: i64) -> Result<()>;
    /// Forgets a session and its tokens (it was used).
    fn delete_threepid_session(&self, session_id: &str) -> Result<()>;
    /// Creates or refreshes a device.
    fn upsert_device(&self, user_id: &str, device_id: &str, display_name: Option<&str>) -> Result<()>;
    /// A user's devices.
    fn get_devices(&self, user_id: &str) -> Result<Vec<DeviceRow>>;
    /// Renames a device; false if it does not exist.
    fn rename_device(&self, user_id: &str, device_id: &str, name: Option<&str>) -> Result<bool>;
    /// Deletes a device and its tokens; false if it did not exist.
    fn delete_device(&self, user_id: &str, device_id: &str) -> Result<bool>;
    /// Stores an access token for a device.
    fn add_access_token(&self, token: &NewAccessToken<'_>) -> Result<()>;
    /// The session an access token belongs to.
    fn get_access_token(&self, token: &str) -> Result<Option<AccessTokenRow>>;
    /// Records that an access token was used, which retires the refresh token it was
    /// refreshed from (Synapse's `mark_access_token_as_used`).
    fn mark_access_token_used(&self, token: &str) -> Result<()>;
    /// Stores a refresh token; returns its ID.
    fn add_refresh_token(&self, token: &NewRefreshToken<'_>) -> Result<i64>;
    /// A refresh token and whether it has been superseded for good.
    fn get_refresh_token(&self, token: &str) -> Result<Option<RefreshTokenRow>>;
    /// Refreshes a session, in one transaction: stores `refresh` and `access` (bound to the new
    /// refresh token whatever `access.refresh_token_id` says), makes the new refresh token
    /// `old_id`'s successor, and deletes, with their access tokens, `old_id`'s earlier successor
    /// (a refresh that was retried) and its predecessors: a session keeps its last two refresh
    /// tokens, so a client whose refresh was interrupted can repeat it.
    fn rotate_refresh_token(
        &self,
        old_id: i64,
        refresh: &NewRefreshToken<'_>,
        access: &NewAccessToken<'_>,
    ) -> Result<()>;
    /// Records use of a device (IP, user agent and time).
    fn touch_device(&self, user_id: &str, device_id: &str, ip: &str, user_agent: &str, ts: i64) -> Result<()>;
    /// Deletes one token.
    fn delete_access_token(&self, token: &str) -> Result<()>;
    /// Deletes all of a user's devices and tokens except `keep_device`.
    fn delete_all_devices(&self, user_id: &str, keep_device: Option<&str>) -> Result<()>;
    /// The user's row of `ratelimit_override`: `(messages_per_second, burst_count)`.
    fn get_ratelimit_override(&self, user_id: &str) -> Result<Option<(Option<f64>, Option<i64>)>>;
    /// Sets (or with `None` removes) the user's row of `ratelimit_override`.
    fn set_ratelimit_override(&self, user_id: &str, value: Option<(Option<f64>, Option<i64>)>) -> Result<()>;
    /// `(displayname, avatar_url)`.
    fn get_profile(&self, user_id: &str) -> Result<Option<(Option<String>, Option<String>)>>;
    /// Sets one profile field (`displayname` or `avatar_url`).
    fn set_profile_field(&self, user_id: &str, field: ProfileField, value: Option<&str>) -> Result<()>;
    /// A user's custom profile fields (extended profiles), as a JSON object; empty without any.
    fn get_custom_profile_fields(&self, user_id: &str) -> Result<serde_json::Map<String, Value>>;
    /// Sets (`Some`) or removes (`None`) one custom profile field, in one transaction, unless the
    /// whole profile (display name, avatar and custom fields, as JSON) would then exceed
    /// `max_bytes`: `Ok(false)` and nothing written.
    fn set_custom_profile_field(
        &self,
        user_id: &str,
        field: &str,
        value: Option<&Value>,
        max_bytes: usize,
    ) -> Result<bool>;
    /// Number of local users.
    fn count_users(&self) -> Result<i64>;
}

/// A profile's custom fields from their stored JSON text (none when absent or not an object).
pub fn profile_fields(stored: Option<&str>) -> serde_json::Map<String, Value> {
    match stored.and_then(|s| serde_json::from_str::<Value>(s).ok()) {
        Some(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

/// A profile's custom fields after setting or removing one, or `None` when the whole profile
/// would exceed `max_bytes` (see [`UserStore::set_custom_profile_field`]); `stored` is the
/// fields' JSON text as stored, if any.
pub fn updated_profile_fields(
    displayname: Option<&str>,
    avatar_url: Option<&str>,
    stored: Option<&str>,
    field: &str,
    value: Option<&Value>,
    max_bytes: usize,
) -> Option<serde_json::Map<String, Value>> {
    let mut fields = profile_fields(stored);
    match value {
        Some(v) => fields.insert(field.to_owned(), v.clone()),
        None => fields.remove(field),
    };
    let mut whole = fields.clone();
    for (key, v) in [("displayname", displayname), ("avatar_url", avatar_url)] {
        if let Some(v) = v {
            whole.insert(key.to_owned(), Value::String(v.to_owned()));
        }
    }
    (serde_json::to_vec(&whole).map_or(usize::MAX, |b| b.len()) <= max_bytes).then_some(fields)
}

/// Boolean flags on an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserFlag {
    /// Server admin.
    Admin,
    /// Deactivated.
    Deactivated,
    /// Shadow-banned.
    ShadowBanned,
    /// Locked.
    Locked,
    /// Suspended.
    Suspended,
    /// A guest account (cleared when a guest registers a full account under its ID).
    Guest,
}

/// Profile fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileField {
    /// `displayname`.
    DisplayName,
    /// `avatar_url`.
    AvatarUrl,
}

/// A stored event.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Position in the global stream (also the sync token unit).
    pub stream_ordering: i64,
    /// The full PDU JSON as persisted (redacted in place once redacted).
    pub json: String,
    /// The state group holding the room state *after* this event.
    pub state_group: Option<i64>,
    /// Failed the authorization rules.
    pub rejected: bool,
    /// Passed auth against its own state but not against current state.
    pub soft_failed: bool,
}

/// A user's current membership in one room ([`RoomStore::user_memberships`]).
#[derive(Debug, Clone)]
pub struct UserMembership {
    /// The room.
    pub room_id: String,
    /// `join`, `invite`, `knock`, `leave` or `ban`.
    pub membership: String,
    /// Who sent the member event (the user themselves for a leave, or who kicked them).
    pub sender: String,
    /// The member event's ID.
    pub event_id: String,
    /// The member event's stream position.
    pub stream_ordering: i64,
}

/// Which relations of an event to read.
#[derive(Debug, Clone)]
pub struct RelationQuery<'a> {
    /// The event related to.
    pub parent: &'a str,
    /// Only this `rel_type`.
    pub rel_type: Option<&'a str>,
    /// Only events of this type.
    pub event_type: Option<&'a str>,
    /// Only after this stream position.
    pub after: i64,
    /// Only before this stream position.
    pub before: i64,
    /// Newest first.
    pub backwards: bool,
    /// At most this many.
    pub limit: usize,
}

/// One relation, for bundled aggregations.
#[derive(Debug, Clone)]
pub struct RelationRow {
    /// The event related to.
    pub parent: String,
    /// `m.replace`, `m.thread` or `m.reference`.
    pub rel_type: String,
    /// The relating event.
    pub event_id: String,
    /// Its sender.
    pub sender: String,
    /// Its position.
    pub stream_ordering: i64,
}

/// One entry of room state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateEntry {
    /// Event type.
    pub event_type: String,
    /// State key.
    pub state_key: String,
    /// The event holding that state.
    pub event_id: String,
}

/// How a new event changes the stored state.
#[derive(Debug, Clone)]
pub enum StateChange {
    /// The event does not change state: it points at the existing group.
    Same(i64),
    /// A new group: `prev` plus the `delta` entries (or a full snapshot when `prev` is `None`).
    New {
        /// The group this delta applies on top of.
        prev: Option<i64>,
        /// The replaced or added entries.
        delta: Vec<StateEntry>,
    },
}

/// Everything written atomically when an event is persisted.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    /// `$...`.
    pub event_id: &'a str,
    /// Room.
    pub room_id: &'a str,
    /// Event type.
    pub event_type: &'a str,
    /// For state events.
    pub state_key: Option<&'a str>,
    /// Sender.
    pub sender: &'a str,
    /// `membership` of a member event, denormalised for membership queries.
    pub membership: Option<&'a str>,
    /// Full PDU JSON.
    pub json: &'a str,
    /// Failed auth.
    pub rejected: bool,
    /// Soft-failed.
    pub soft_failed: bool,
    /// State after the event.
    pub state: StateChange,
    /// The parents this event replaces as forward extremities (it becomes one itself).
    pub prev_events: &'a [String],
    /// Whether the event updates `current_state` (accepted state events).
    pub updates_current_state: bool,
    /// `(user_id, device_id, txn_id)` for idempotent client sends.
    pub txn: Option<(&'a str, &'a str, &'a str)>,
    /// The event this one redacts, if accepted: its stored JSON is replaced by `redacted_json`.
    pub redaction: Option<(&'a str, &'a str)>,
    /// When set, the room's whole current state becomes this (a remote event that merged
    /// forks, or the state a remote join arrives with) instead of the event's own key.
    pub current_state: Option<&'a [StateEntry]>,
    /// Servers the event is to be sent to: each gets an outbox row in the same transaction.
    pub destinations: &'a [String],
}

/// An event stored without a place in the timeline (a remote room's state and auth events,
/// as a join brings them): reachable by ID, never synced or paginated.
#[derive(Debug, Clone)]
pub struct OutlierEvent {
    /// `$...`.
    pub event_id: String,
    /// Room.
    pub room_id: String,
    /// Type.
    pub event_type: String,
    /// For state events.
    pub state_key: Option<String>,
    /// Sender.
    pub sender: String,
    /// `membership` of a member event.
    pub membership: Option<String>,
    /// Full PDU JSON.
    pub json: String,
    /// Failed the authorization rules.
    pub rejected: bool,
}

/// A row of the federation outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Queue order.
    pub id: i64,
    /// `pdu` (the body is an event ID) or `edu` (the body is the EDU's JSON).
    pub kind: String,
    /// See `kind`.
    pub body: String,
}

/// Federation's own records: remote servers' keys, the outbox, outliers.
pub trait FederationStore {
    /// Cached keys of a server: `(key_id, public key, valid_until_ts)`.
    fn server_keys(&self, server_name: &str) -> Result<Vec<(String, String, i64)>>;
    /// Caches keys of a server, replacing those with the same IDs, and the answer they came in
    /// (`(JSON, valid_until_ts)`).
    fn store_server_keys(&self, server_name: &str, keys: &[(String, String, i64)], response: (&str, i64))
    -> Result<()>;
    /// The latest cached key answer of a server: `(JSON, valid_until_ts)`.
    fn server_key_response(&self, server_name: &str) -> Result<Option<(String, i64)>>;
    /// Queues EDUs: `(destination, EDU JSON)`.
    fn queue_edus(&self, edus: &[(String, String)]) -> Result<()>;
    /// The oldest outbox rows for a destination: PDUs and EDUs, at most `limit` of each.
    fn outbox(&self, destination: &str, limit: usize) -> Result<Vec<OutboxRow>>;
    /// Drops the given rows of a destination (sent).
    fn outbox_sent(&self, destination: &str, ids: &[i64]) -> Result<()>;
    /// Destinations with queued rows.
    fn outbox_destinations(&self) -> Result<Vec<String>>;
    /// Stores events outside the timeline (ignoring those already stored).
    fn persist_outliers(&self, events: &[OutlierEvent]) -> Result<()>;
    /// Stores events fetched from before the start of a room's timeline (backfilled), given
    /// newest first: they take the next stream positions down from the lowest (below zero, so
    /// no sync reads them; only backwards pagination does) and one new state group holding
    /// `state`. An event stored as an outlier joins the timeline so; one already in the
    /// timeline is left as it is.
    fn persist_backfilled(&self, room_id: &str, state: &[StateEntry], events: &[OutlierEvent]) -> Result<()>;
    /// Records that a (remote) user's device list changed; returns the stream position.
    fn note_device_list_change(&self, user_id: &str) -> Result<i64>;
}

/// A room's summary row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRow {
    /// Room ID.
    pub room_id: String,
    /// Room version.
    pub room_version: String,
    /// Creator.
    pub creator: String,
    /// Published in the room directory.
    pub is_public: bool,
}

/// Rooms, events, state groups and memberships.
pub trait RoomStore {
    /// Creates the room row.
    fn create_room(&self, room: &RoomRow) -> Result<()>;
    /// A room by ID.
    fn get_room(&self, room_id: &str) -> Result<Option<RoomRow>>;
    /// Persists an event with its state change, extremities, txn ID and redaction in one
    /// transaction; returns `(stream_ordering, state_group)`.
    fn persist_event(&self, event: &NewEvent<'_>) -> Result<(i64, i64)>;
    /// Several events in one commit, in order; each succeeds or fails alone, as
    /// [`RoomStore::persist_event`] would.
    fn persist_events(&self, events: &[NewEvent<'_>]) -> Vec<Result<(i64, i64)>> {
        events.iter().map(|e| self.persist_event(e)).collect()
    }
    /// An event by ID.
    fn get_event(&self, event_id: &str) -> Result<Option<EventRow>>;
    /// The full state of a state group.
    fn get_state_group(&self, group: i64) -> Result<Vec<StateEntry>>;
    /// Events relating to `query.parent`, in stream order, between two positions (exclusive).
    fn relations(&self, query: &RelationQuery<'_>) -> Result<Vec<EventRow>>;
    /// The edits, thread replies and references of each parent, oldest first (the bundled
    /// aggregations of `unsigned."m.relations"`).
    fn relation_summaries(&self, parents: &[String]) -> Result<Vec<RelationRow>>;
    /// The room's events sent at or after `ts` (`forwards`, oldest first) or at or before it
    /// (newest first), by `origin_server_ts`.
    fn events_by_timestamp(&self, room_id: &str, ts: i64, forwards: bool, limit: usize) -> Result<Vec<EventRow>>;
    /// The roots of the room's threads whose latest reply is before `before`, newest first,
    /// with that reply's position; with `participant`, only threads they started or replied to.
    fn thread_roots(
        &self,
        room_id: &str,
        participant: Option<&str>,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(String, i64)>>;
    /// The event ID a state group holds for `(event_type, state_key)`, if any (one indexed
    /// lookup per group of the chain, instead of reading the whole state).
    fn state_group_entry(&self, group: i64, event_type: &str, state_key: &str) -> Result<Option<String>>;
    /// How many deltas lie between a group and its last full snapshot.
    fn state_group_chain_length(&self, group: i64) -> Result<i64>;
    /// The room's current state.
    fn get_current_state(&self, room_id: &str) -> Result<Vec<StateEntry>>;
    /// The room's forward extremities.
    fn get_forward_extremities(&self, room_id: &str) -> Result<Vec<String>>;
    /// `(event ID, transaction ID)` of those of `event_ids` that `device_id` of `user_id` sent
    /// with a transaction ID.
    fn txn_ids_of_events(&self, user_id: &str, device_id: &str, event_ids: &[String]) -> Result<Vec<(String, String)>>;
    /// The event stored for a client transaction ID.
    fn get_txn_event(&self, user_id: &str, device_id: &str, txn_id: &str) -> Result<Option<String>>;
    /// The newest `limit` client transaction IDs, newest first, as `(user, device, txn, event)`.
    fn recent_txn_ids(&self, limit: usize) -> Result<Vec<(String, String, String, String)>>;
    /// Rooms where `user_id`'s current membership is `membership`.
    fn rooms_for_user(&self, user_id: &str, membership: &str) -> Result<Vec<String>>;
    /// Every `(room, server)` where a user of that server is joined now (a user's server is
    /// what follows the first `:` of their ID), ordered by server, then room.
    fn joined_servers_by_room(&self) -> Result<Vec<(String, String)>>;
    /// Current `(user_id, membership)` of every member event in the room.
    fn room_memberships(&self, room_id: &str) -> Result<Vec<(String, String)>>;
    /// Accepted, not soft-failed timeline events (not outliers) of a room with
    /// `from < stream <= to` (backfilled events are below zero), newest first if `backwards`,
    /// at most `limit`.
    fn room_events(&self, room_id: &str, from: i64, to: i64, backwards: bool, limit: usize) -> Result<Vec<EventRow>>;
    /// Accepted, not soft-failed events of every room with `from < stream <= to`, oldest first,
    /// at most `limit`: `(room ID, event)`.
    fn events_between(&self, from: i64, to: i64, limit: usize) -> Result<Vec<(String, EventRow)>>;
    /// The events of a room's current state, in one query.
    fn current_state_events(&self, room_id: &str) -> Result<Vec<EventRow>>;
    /// Rooms (among `rooms`) with accepted events in `(from, to]`.
    fn rooms_with_events_between(&self, rooms: &[String], from: i64, to: i64) -> Result<Vec<String>>;
    /// The latest stream position.
    fn max_stream_ordering(&self) -> Result<i64>;
    /// The stream position of an event.
    fn stream_of_event(&self, event_id: &str) -> Result<Option<i64>>;
    /// The state group after the room's last accepted event at or before `stream`.
    fn state_group_at(&self, room_id: &str, stream: i64) -> Result<Option<i64>>;
    /// Latest member events per user in `(from, to]` concerning `user_id` (their own membership
    /// changes), as `(room_id, membership, stream)`.
    fn membership_changes(&self, user_id: &str, from: i64, to: i64) -> Result<Vec<(String, String, i64)>>;
    /// Every accepted membership change in `(from, to]`, in any room, as `(room_id, user_id,
    /// membership)` in stream order.
    fn member_changes_between(&self, from: i64, to: i64) -> Result<Vec<(String, String, String)>>;
    /// `user_id`'s membership in a room as of stream position `at` (their latest accepted
    /// member event there at or before it), if they had one.
    fn membership_at(&self, user_id: &str, room_id: &str, at: i64) -> Result<Option<String>>;
    /// `user_id`'s current membership in every room where they have one, with its member
    /// event's sender and stream position (0 when that event is not stored with one).
    fn user_memberships(&self, user_id: &str) -> Result<Vec<UserMembership>>;
    /// The stream position of each room's newest accepted event at or before `to` whose type
    /// is one of `types` (of any type when `types` is empty); rooms without one are left out.
    fn last_event_positions(&self, rooms: &[String], types: &[&str], to: i64) -> Result<Vec<(String, i64)>>;
}

/// Account data, filters and the other per-user client data.
pub trait ClientDataStore {
    /// Sets account data (`room_id` empty for global); returns its stream position.
    fn set_account_data(&self, user_id: &str, room_id: &str, data_type: &str, content: &Value) -> Result<i64>;
    /// One account-data item.
    fn get_account_data(&self, user_id: &str, room_id: &str, data_type: &str) -> Result<Option<Value>>;
    /// Account data changed in `(from, to]`: `(room_id, type, content)`.
    fn account_data_since(&self, user_id: &str, from: i64, to: i64) -> Result<Vec<(String, String, Value)>>;
    /// Stores a filter; returns its ID (the user's next, from 0, as Synapse numbers them).
    fn create_filter(&self, user_id: &str, filter: &Value) -> Result<i64>;
    /// Stores a filter under a given ID (an imported one); [`StorageError::Conflict`] if the
    /// user has that ID already.
    fn import_filter(&self, user_id: &str, filter_id: i64, filter: &Value) -> Result<()>;
    /// A stored filter.
    fn get_filter(&self, user_id: &str, filter_id: i64) -> Result<Option<Value>>;
}

/// A user-directory hit: `(user_id, displayname, avatar_url)`.
pub type DirectoryUser = (String, Option<String>, Option<String>);

/// Room aliases and the room and user directories.
pub trait DirectoryStore {
    /// Maps an alias to a room; [`StorageError::Conflict`] if the alias exists.
    fn create_alias(&self, alias: &str, room_id: &str, creator: &str) -> Result<()>;
    /// `(room_id, creator)` of an alias.
    fn get_alias(&self, alias: &str) -> Result<Option<(String, String)>>;
    /// Removes an alias; false if it did not exist.
    fn delete_alias(&self, alias: &str) -> Result<bool>;
    /// A room's local aliases.
    fn aliases_for_room(&self, room_id: &str) -> Result<Vec<String>>;
    /// Points every alias of `from` at `to` (a room upgrade), keeping their creators.
    fn move_aliases(&self, from: &str, to: &str) -> Result<()>;
    /// Publishes a room in (or removes it from) the room directory.
    fn set_room_public(&self, room_id: &str, public: bool) -> Result<()>;
    /// Records a room's current join rule.
    fn set_room_join_rule(&self, room_id: &str, join_rule: &str) -> Result<()>;
    /// Published rooms with their joined-member counts, biggest first.
    fn published_rooms(&self) -> Result<Vec<(String, i64)>>;
    /// Lists (or unlists) a room in an appservice's room list of one third-party network.
    fn set_appservice_room_listed(&self, as_id: &str, network_id: &str, room_id: &str, listed: bool) -> Result<()>;
    /// Rooms in appservices' room lists with their joined-member counts, biggest first: those of
    /// one `(appservice, network)`, or of every network when `None`.
    fn appservice_listed_rooms(&self, network: Option<(&str, &str)>) -> Result<Vec<(String, i64)>>;
    /// Users visible to `searcher` matching every term (a prefix of the user ID's localpart
    /// or of a word of the display name), at most `limit`: `(user_id, displayname, avatar_url)`.
    fn search_user_directory(
        &self,
        searcher: &str,
        terms: &[String],
        search_all_users: bool,
        limit: usize,
    ) -> Result<Vec<DirectoryUser>>;
}

/// A stored (or reserved) media item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRow {
    /// The media ID (generated by Myelin, never taken from a client).
    pub media_id: String,
    /// Uploader.
    pub user_id: String,
    /// Declared content type.
    pub content_type: Option<String>,
    /// The `filename` given at upload.
    pub upload_name: Option<String>,
    /// Size in bytes, once uploaded.
    pub length: Option<i64>,
    /// Creation time, ms.
    pub created_ts: i64,
    /// Reserved by `/create` and not uploaded yet.
    pub pending: bool,
}

/// A media item to quarantine or release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineTarget {
    /// Its key in the media index: the media ID, or the key of another server's cached file.
    pub key: String,
    /// For the change log: the server it came from (`None` for this one) and its media ID there.
    pub origin: Option<String>,
    /// Its media ID on its origin.
    pub media_id: String,
}

/// One entry of the quarantine change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineChange {
    /// Its position in the log.
    pub stream_id: i64,
    /// The file's server (`None` for this one).
    pub origin: Option<String>,
    /// The file's media ID.
    pub media_id: String,
    /// Quarantined (or released).
    pub quarantined: bool,
}

/// An admin's view of a media item: who quarantined it, and whether it is protected from that.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaModeration {
    /// The admin who quarantined it; quarantined media is served to nobody.
    pub quarantined_by: Option<String>,
    /// Protected from quarantine (Synapse's `safe_from_quarantine`).
    pub safe_from_quarantine: bool,
}

/// The media repository's index (the bytes live in files).
pub trait MediaStore {
    /// A media item's moderation state; `None` for unknown media.
    fn media_moderation(&self, media_id: &str) -> Result<Option<MediaModeration>>;
    /// Quarantines (`by` an admin) or releases (`None`) media; protected items are never
    /// quarantined. Each item that changed is added to the change log. Returns how many changed.
    fn quarantine_media(&self, media: &[QuarantineTarget], by: Option<&str>) -> Result<u64>;
    /// The quarantine changes after `from` (oldest first, at most `limit`), and the newest
    /// change's position (0 for none).
    fn quarantine_changes(&self, from: i64, limit: usize) -> Result<(Vec<QuarantineChange>, i64)>;
    /// Protects media from quarantine, or lifts that; false for unknown media.
    fn protect_media(&self, media_id: &str, protected: bool) -> Result<bool>;
    /// Every uploaded (not pending) media item of a local user with its moderation state,
    /// oldest first.
    fn media_of_user(&self, user_id: &str) -> Result<Vec<(MediaRow, MediaModeration)>>;
    /// Local uploads made before `before_ts` and larger than `size_gt` bytes, neither
    /// quarantined nor protected (what Synapse's old-media deletion may delete).
    fn local_media_before(&self, before_ts: i64, size_gt: i64) -> Result<Vec<MediaRow>>;
    /// Every avatar URL in users' profiles.
    fn profile_avatar_urls(&self) -> Result<Vec<String>>;
    /// Per local uploader: `(user_id, uploads, bytes)` of uploads made in `[from_ts, until_ts]`.
    fn media_usage(&self, from_ts: i64, until_ts: i64) -> Result<Vec<(String, i64, i64)>>;
    /// How many bytes a user uploaded after `since_ts` (Synapse's `get_media_uploaded_size_for_user`).
    fn media_uploaded_since(&self, user_id: &str, since_ts: i64) -> Result<i64>;
    /// Inserts or completes a media row.
    fn insert_media(&self, media: &MediaRow) -> Result<()>;
    /// A media row.
    fn get_media(&self, media_id: &str) -> Result<Option<MediaRow>>;
    /// Removes a media row and its thumbnails.
    fn delete_media(&self, media_id: &str) -> Result<()>;
    /// `(content_type, length)` of a cached thumbnail.
    fn get_thumbnail(&self, media_id: &str, width: u32, height: u32, method: &str) -> Result<Option<(String, i64)>>;
    /// Records a generated thumbnail.
    fn insert_thumbnail(
        &self,
        media_id: &str,
        width: u32,
        height: u32,
        method: &str,
        content_type: &str,
        length: i64,
    ) -> Result<()>;
}

/// A registration token (`m.login.registration_token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationToken {
    /// The token.
    pub token: String,
    /// How many registrations it allows; `None` is unlimited.
    pub uses_allowed: Option<i64>,
    /// Registrations in progress with it.
    pub pending: i64,
    /// Registrations completed with it.
    pub completed: i64,
    /// Expiry, ms since the epoch; `None` never expires.
    pub expiry_time: Option<i64>,
}

/// Registration tokens.
pub trait RegistrationTokenStore {
    /// Creates a token; [`StorageError::Conflict`] if it exists.
    fn create_registration_token(&self, token: &RegistrationToken) -> Result<()>;
    /// One token.
    fn get_registration_token(&self, token: &str) -> Result<Option<RegistrationToken>>;
    /// All tokens.
    fn list_registration_tokens(&self) -> Result<Vec<RegistrationToken>>;
    /// Counts a completed registration.
    fn use_registration_token(&self, token: &str) -> Result<()>;
    /// Replaces a token's limits; false if there is no such token.
    fn set_registration_token_limits(
        &self,
        token: &str,
        uses_allowed: Option<i64>,
        expiry_time: Option<i64>,
    ) -> Result<bool>;
    /// Deletes a token; false if there was none.
    fn delete_registration_token(&self, token: &str) -> Result<bool>;
}

/// A key of a backup version (`room_keys/version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupVersion {
    /// The version number (sent as a string).
    pub version: i64,
    /// `m.megolm_backup.v1.curve25519-aes-sha2` and the like.
    pub algorithm: String,
    /// The `auth_data` object, as JSON text.
    pub auth_data: String,
    /// Bumped on every change to the version's keys.
    pub etag: i64,
}

/// A device of another server's user, as cached (see [`RemoteDeviceList`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDevice {
    /// The device's ID on its server.
    pub device_id: String,
    /// The device's identity key JSON as its server sent it, if it has keys.
    pub keys: Option<String>,
    /// The name its owner gave it, if its server shares names.
    pub display_name: Option<String>,
}

/// Another server's user's device list, cached while they share a room with a local user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemoteDeviceList {
    /// The remote server's stream ID for the list: an update naming it as `prev_id` applies
    /// on top of it; one naming anything else means updates were missed.
    pub stream_id: i64,
    /// The user's devices, by device ID.
    pub devices: Vec<RemoteDevice>,
    /// `(key_type, json)` of the user's cross-signing keys (`master`, `self_signing`).
    pub cross_signing: Vec<(String, String)>,
}

/// End-to-end encryption plumbing: device and one-time keys, cross-signing keys, device-list
/// changes, to-device messages, and server-side key backup. Key JSON is stored as clients sent
/// it (with signatures merged in); Matrix rules live in `core`.
pub trait KeyStore {
    /// Stores a device's identity keys (if given), one-time keys `(algorithm, key_id, json)`
    /// (an existing key ID keeps its first value, as Synapse) and fallback keys (replacing the
    /// algorithm's previous one). Records a device-list change when the identity keys changed
    /// and returns its stream position.
    fn upload_keys(
        &self,
        user_id: &str,
        device_id: &str,
        device_keys: Option<&str>,
        one_time_keys: &[(String, String, String)],
        fallback_keys: &[(String, String, String)],
    ) -> Result<Option<i64>>;
    /// Unclaimed one-time keys of a device, per algorithm.
    fn one_time_key_counts(&self, user_id: &str, device_id: &str) -> Result<Vec<(String, i64)>>;
    /// Algorithms with a fallback key that has not been claimed.
    fn unused_fallback_key_types(&self, user_id: &str, device_id: &str) -> Result<Vec<String>>;
    /// `(device_id, key JSON)` of a user's devices that uploaded identity keys.
    fn device_keys(&self, user_id: &str) -> Result<Vec<(String, String)>>;
    /// Replaces a device's identity key JSON (signatures added); records a device-list change.
    fn set_device_keys(&self, user_id: &str, device_id: &str, json: &str) -> Result<i64>;
    /// Takes one one-time key of `algorithm`, else the fallback key (marked used, kept):
    /// `(key_id, json)`.
    fn claim_key(&self, user_id: &str, device_id: &str, algorithm: &str) -> Result<Option<(String, String)>>;
    /// `(key_type, json)` of a user's cross-signing keys.
    fn cross_signing_keys(&self, user_id: &str) -> Result<Vec<(String, String)>>;
    /// Stores cross-signing keys `(key_type, json)`; records a device-list change, one only
    /// the user hears of when only the user-signing key changed (others never see that key).
    fn set_cross_signing_keys(&self, user_id: &str, keys: &[(String, String)]) -> Result<i64>;
    /// Stores `signer`'s signatures (`{"signatures": ...}` JSON) of `target_user_id`'s key
    /// `target_key_id`, replacing earlier ones; records a change only `signer` hears of.
    fn add_user_signature(&self, signer: &str, target_user_id: &str, target_key_id: &str, json: &str) -> Result<i64>;
    /// `(target_user_id, target_key_id, json)` of `signer`'s signatures of those users' keys.
    fn user_signatures(&self, signer: &str, target_user_ids: &[String]) -> Result<Vec<(String, String, String)>>;
    /// Users whose device lists changed in `(from, to]` in ways only `viewer` hears of.
    fn private_device_list_changes(&self, viewer: &str, from: i64, to: i64) -> Result<Vec<String>>;
    /// Users whose device lists changed in `(from, to]`.
    fn device_list_changes(&self, from: i64, to: i64) -> Result<Vec<String>>;
    /// The position of `user_id`'s latest device-list change before `before`, if any.
    fn device_list_change_before(&self, user_id: &str, before: i64) -> Result<Option<i64>>;
    /// Users in a joined room with `user_id` (joined or invited there), `user_id` included.
    fn users_sharing_rooms(&self, user_id: &str) -> Result<Vec<String>>;
    /// A remote user's cached device list, if there is one.
    fn remote_device_list(&self, user_id: &str) -> Result<Option<RemoteDeviceList>>;
    /// Replaces (or first caches) a remote user's device list; records a device-list change
    /// so local users sharing a room with them query the keys again.
    fn replace_remote_device_list(&self, user_id: &str, list: &RemoteDeviceList) -> Result<i64>;
    /// Applies one device's update (`deleted`, or new keys and name) to a cached list and
    /// moves it to `stream_id`; records a device-list change. `None` if no list is cached.
    fn update_remote_device(
        &self,
        user_id: &str,
        device: &RemoteDevice,
        deleted: bool,
        stream_id: i64,
    ) -> Result<Option<i64>>;
    /// Replaces the given cross-signing keys `(key_type, json)` of a cached list; records a
    /// device-list change. `None` if no list is cached.
    fn update_remote_cross_signing(&self, user_id: &str, keys: &[(String, String)]) -> Result<Option<i64>>;
    /// Drops the cached device lists of `room_id`'s members (any membership) who no longer
    /// share a joined room with a local user: their server stops telling this one of changes.
    /// Returns whose lists went.
    fn forget_unshared_remote_device_lists(&self, room_id: &str) -> Result<Vec<String>>;
    /// Queues to-device messages `(user, device, json)` sent under a transaction ID; `None`
    /// (nothing queued) if that transaction was seen before.
    fn queue_to_device(
        &self,
        sender: &str,
        sender_device: &str,
        txn_id: &str,
        messages: &[(String, String, String)],
    ) -> Result<Option<i64>>;
    /// A device's pending messages up to `to`: `(position, json)`, oldest first.
    fn to_device_messages(&self, user_id: &str, device_id: &str, to: i64) -> Result<Vec<(i64, String)>>;
    /// Every device's messages queued in `(from, to]`, oldest first: `(position, user, device,
    /// json)` (for appservices, which receive their users' messages in transactions).
    fn to_device_between(&self, from: i64, to: i64) -> Result<Vec<(i64, String, String, String)>>;
    /// Deletes a device's messages up to and including `upto` (they were delivered).
    fn delete_to_device(&self, user_id: &str, device_id: &str, upto: i64) -> Result<()>;
    /// A new backup version; returns its number.
    fn create_backup_version(&self, user_id: &str, algorithm: &str, auth_data: &str) -> Result<i64>;
    /// A live backup version, or the newest one when `version` is `None`.
    fn backup_version(&self, user_id: &str, version: Option<i64>) -> Result<Option<BackupVersion>>;
    /// Replaces a live version's algorithm and auth data; false if there is none.
    fn update_backup_version(&self, user_id: &str, version: i64, algorithm: &str, auth_data: &str) -> Result<bool>;
    /// Deletes a version and its keys; false if there was none.
    fn delete_backup_version(&self, user_id: &str, version: i64) -> Result<bool>;
    /// `(room_id, session_id, json)` of a version's keys, optionally of one room or session.
    fn backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Vec<(String, String, String)>>;
    /// Stores keys `(room_id, session_id, json)` (replacing) and bumps the etag.
    fn put_backup_keys(&self, user_id: &str, version: i64, keys: &[(String, String, String)]) -> Result<()>;
    /// Deletes a version's keys, optionally of one room or session, and bumps the etag.
    fn delete_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<()>;
    /// The number of keys in a version.
    fn count_backup_keys(&self, user_id: &str, version: i64) -> Result<i64>;
}

/// A stored receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRow {
    /// Room.
    pub room_id: String,
    /// `m.read`, `m.read.private`, ...
    pub receipt_type: String,
    /// Reader.
    pub user_id: String,
    /// `""` for an unthreaded receipt.
    pub thread_id: String,
    /// The event read up to.
    pub event_id: String,
    /// When, ms.
    pub ts: i64,
}

/// A user's stored presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRow {
    /// The user.
    pub user_id: String,
    /// `online`, `unavailable` or `offline`.
    pub state: String,
    /// Status message.
    pub status_msg: Option<String>,
    /// Last activity, ms.
    pub last_active_ts: i64,
}

/// Receipts, presence and pushers.
pub trait EphemeralStore {
    /// Stores a receipt (replacing the user's previous one of that type and thread); returns
    /// its stream position.
    fn set_receipt(&self, receipt: &ReceiptRow) -> Result<i64>;
    /// Receipts in `rooms` set in `(from, to]` (`from` 0: all current ones).
    fn receipts_between(&self, rooms: &[String], from: i64, to: i64) -> Result<Vec<ReceiptRow>>;
    /// Receipts of any room set in `(from, to]` (for incremental syncs: the range is small).
    fn receipts_since(&self, from: i64, to: i64) -> Result<Vec<ReceiptRow>>;
    /// The stream position of the newest event `user_id` has an unthreaded (or main-thread)
    /// `m.read` or `m.read.private` receipt on in `room_id`; 0 if none.
    fn read_position(&self, room_id: &str, user_id: &str) -> Result<i64>;
    /// The stream position of the event `user_id`'s unthreaded receipt of `receipt_type` in
    /// `room_id` points at, if they have one.
    fn receipt_position(&self, room_id: &str, user_id: &str, receipt_type: &str) -> Result<Option<i64>>;
    /// [`EphemeralStore::read_position`] of every room `user_id` has such a receipt in, at once.
    fn read_positions(&self, user_id: &str) -> Result<Vec<(String, i64)>>;
    /// For each room `user_id` is joined to, the stream position of the join that began the
    /// current stay (later joins that only change the profile do not count).
    fn join_positions(&self, user_id: &str) -> Result<Vec<(String, i64)>>;
    /// Stores a user's presence; returns its stream position.
    fn set_presence(&self, presence: &PresenceRow) -> Result<i64>;
    /// One user's presence.
    fn get_presence(&self, user_id: &str) -> Result<Option<PresenceRow>>;
    /// Presence of anyone changed in `(from, to]`.
    fn presence_since(&self, from: i64, to: i64) -> Result<Vec<PresenceRow>>;
    /// Presence of `users` changed in `(from, to]`.
    fn presence_between(&self, users: &[String], from: i64, to: i64) -> Result<Vec<PresenceRow>>;
    /// A user's pushers (JSON objects as `/pushers` lists them).
    fn pushers(&self, user_id: &str) -> Result<Vec<String>>;
    /// Every user's pushers: `(user ID, pusher JSON)`.
    fn all_pushers(&self) -> Result<Vec<(String, String)>>;
    /// Adds or replaces the pusher `(app_id, pushkey)` of a user; with `append` false, the same
    /// `(app_id, pushkey)` of other users is removed, as the spec says.
    fn set_pusher(&self, user_id: &str, app_id: &str, pushkey: &str, json: &str, append: bool) -> Result<()>;
    /// Removes a pusher.
    fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> Result<()>;
    /// A new stream position with nothing stored at it (typing notifications live in memory
    /// but need a position to wake `/sync`).
    fn allocate_stream_position(&self) -> Result<i64>;
}

/// One full-text search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    /// The matching event.
    pub event_id: String,
    /// Its room.
    pub room_id: String,
    /// Higher is better (the negated bm25 score).
    pub rank: f64,
}

/// Full-text search over message bodies, room names and topics.
pub trait SearchStore {
    /// Events in `rooms` whose `keys` (`content.body`, `content.name`, `content.topic`) match
    /// every word of `words` (prefixes allowed), best rank first or newest first; returns the
    /// total count and the page `[offset, offset + limit)`.
    fn search_events(
        &self,
        rooms: &[String],
        words: &[String],
        keys: &[String],
        newest_first: bool,
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<SearchHit>)>;
}

/// Short-lived records every process of a deployment must see: UIA sessions, shared-secret
/// registration nonces, OpenID tokens. Each is a `(kind, key)` with a text value and an expiry.
pub trait TransientStore {
    /// Stores `value` under `(kind, key)` until `expires_ts` (ms), replacing any earlier one;
    /// expired records of every kind are dropped on the way.
    fn put_transient(&self, kind: &str, key: &str, value: &str, expires_ts: i64) -> Result<()>;
    /// The value under `(kind, key)`, unless it expired before `now` (ms).
    fn get_transient(&self, kind: &str, key: &str, now: i64) -> Result<Option<String>>;
    /// Removes the record and returns its value if it had not expired (single use: of two
    /// callers taking the same record, one gets it).
    fn take_transient(&self, kind: &str, key: &str, now: i64) -> Result<Option<String>>;
    /// Every `(key, value)` of `kind` that has not expired before `now`, ordered by key.
    fn transient_entries(&self, kind: &str, now: i64) -> Result<Vec<(String, String)>>;
}

/// A user's report of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventReport {
    /// Its number, in the order reports arrive.
    pub id: i64,
    /// When it arrived, ms.
    pub received_ts: i64,
    /// The room of the event.
    pub room_id: String,
    /// The event reported.
    pub event_id: String,
    /// Who reported it.
    pub user_id: String,
    /// The reason given, if any.
    pub reason: Option<String>,
    /// The request body as sent (`reason`, `score`, ...).
    pub content: Value,
}

/// Which event reports to list (Synapse's admin API filters).
#[derive(Debug, Clone, Default)]
pub struct EventReportQuery {
    /// Skip this many.
    pub from: i64,
    /// At most this many.
    pub limit: i64,
    /// Oldest first (`dir=f`); newest first otherwise.
    pub forwards: bool,
    /// Reporters whose ID contains this.
    pub user_id: Option<String>,
    /// Rooms whose ID contains this.
    pub room_id: Option<String>,
}

/// A room or user report: `(id, received_ts, room or reported user, reporter, reason)`.
pub type SubjectReport = (i64, i64, String, String, String);

/// How the admin API orders accounts (Synapse's `order_by`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UserOrder {
    /// By user ID (the default).
    #[default]
    Name,
    /// By display name.
    DisplayName,
    /// By creation time.
    CreationTs,
    /// Admins last (first backwards).
    Admin,
    /// Deactivated last.
    Deactivated,
    /// Guests last.
    IsGuest,
    /// Shadow-banned last.
    ShadowBanned,
}

/// Which accounts the admin API lists (Synapse's `GET /_synapse/admin/v2/users` filters).
#[derive(Debug, Clone, Default)]
pub struct UserListQuery {
    /// Skip this many.
    pub from: i64,
    /// At most this many.
    pub limit: i64,
    /// Users whose user ID or display name contains this (any case).
    pub name: Option<String>,
    /// Users whose user ID contains this (any case).
    pub user_id: Option<String>,
    /// Include guests.
    pub guests: bool,
    /// Only deactivated accounts (`Some(true)`), only active ones (`Some(false)`), or both.
    pub deactivated: Option<bool>,
    /// Only admins (`Some(true)`) or only non-admins (`Some(false)`).
    pub admins: Option<bool>,
    /// Include locked accounts.
    pub locked: bool,
    /// The order.
    pub order_by: UserOrder,
    /// Ascending (`dir=f`, the default) or descending.
    pub forwards: bool,
    /// Leave out accounts of these types; `""` stands for regular accounts (no type), as in
    /// Synapse's `not_user_type`.
    pub not_user_types: Vec<String>,
}

/// One account as the admin API lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedUser {
    /// The account.
    pub user: UserRow,
    /// Its display name.
    pub displayname: Option<String>,
    /// Its avatar.
    pub avatar_url: Option<String>,
    /// The newest last-seen time of its devices, ms.
    pub last_seen_ts: Option<i64>,
    /// Its type, if any.
    pub user_type: Option<String>,
}

/// Reports of events, rooms and users that users file for the server's admins, and the
/// listings only the admin API needs.
pub trait AdminStore {
    /// A page of accounts, and how many match in all.
    fn list_users(&self, query: &UserListQuery) -> Result<(Vec<ListedUser>, i64)>;
    /// Every room this server knows, with its joined-member count.
    fn list_rooms(&self) -> Result<Vec<(String, i64)>>;
    /// The `limit` rooms whose events take the most bytes, with that size, largest first.
    fn largest_rooms(&self, limit: usize) -> Result<Vec<(String, i64)>>;
    /// Files an event report; returns its ID.
    fn add_event_report(&self, report: &EventReport) -> Result<i64>;
    /// Files a room report; returns its ID.
    fn add_room_report(&self, room_id: &str, user_id: &str, reason: &str, received_ts: i64) -> Result<i64>;
    /// Files a report of a (local) user; returns its ID.
    fn add_user_report(&self, target_user_id: &str, user_id: &str, reason: &str, received_ts: i64) -> Result<i64>;
    /// A page of event reports in arrival order (`query.forwards`) or the reverse, and how many
    /// match in all.
    fn event_reports(&self, query: &EventReportQuery) -> Result<(Vec<EventReport>, i64)>;
    /// One event report.
    fn event_report(&self, id: i64) -> Result<Option<EventReport>>;
    /// Deletes an event report; false if there was none.
    fn delete_event_report(&self, id: i64) -> Result<bool>;
    /// `(id, received_ts, room_id, user_id, reason)` of every room report, oldest first.
    fn room_reports(&self) -> Result<Vec<SubjectReport>>;
    /// `(id, received_ts, target_user_id, user_id, reason)` of every user report, oldest first.
    fn user_reports(&self) -> Result<Vec<SubjectReport>>;
    /// Deletes a user report; false if there was none.
    fn delete_user_report(&self, id: i64) -> Result<bool>;
    /// Blocks a room (Synapse's `blocked_rooms`), remembering the admin; blocking again keeps
    /// the first admin.
    fn block_room(&self, room_id: &str, user_id: &str) -> Result<()>;
    /// Unblocks a room; false if it was not blocked.
    fn unblock_room(&self, room_id: &str) -> Result<bool>;
    /// The admin who blocked the room, if it is blocked.
    fn room_blocked_by(&self, room_id: &str) -> Result<Option<String>>;
    /// Removes every trace of a room, in one transaction: its events, state, extremities,
    /// aliases, receipts, search entries, relations, room account data, key backups, transaction
    /// IDs and appservice directory entries, and the room itself (Synapse's `purge_room`).
    /// Reports and the block stay. False if the room was unknown.
    fn purge_room(&self, room_id: &str) -> Result<bool>;
    /// Deletes a room's history before stream position `before` (Synapse's purge history):
    /// message-like events only (state events stay), never a forward extremity, and only
    /// other servers' events unless `delete_local` (`local_server` names this one); with their
    /// search entries, relations and transaction IDs. Answers how many events went.
    fn purge_history(&self, room_id: &str, before: i64, delete_local: bool, local_server: &str) -> Result<u64>;
    /// Keeps only the newest (by stream position) of a room's forward extremities; answers how
    /// many others were dropped, `None` when the room has none.
    fn delete_extra_forward_extremities(&self, room_id: &str) -> Result<Option<u64>>;
}

/// The tables [`AdminStore::purge_room`] clears by `room_id`, children before parents (the
/// foreign keys point at `events`, `state_groups` and `rooms`).
pub const PURGED_ROOM_TABLES: &[&str] = &[
    "event_search",
    "event_relations",
    "receipts",
    "room_aliases",
    "appservice_room_list",
    "room_keys",
    "account_data",
    "forward_extremities",
    "current_state",
];

/// Where an application service's transaction delivery stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppserviceState {
    /// Every event and receipt up to this stream position has been delivered (or was of no
    /// interest to it).
    pub position: i64,
    /// The ID of the last transaction it acknowledged (0 before the first).
    pub last_txn_id: i64,
    /// A transaction written but not yet acknowledged: it is sent again, with the same ID and
    /// body, until it is.
    pub pending: Option<PendingTransaction>,
}

/// A transaction to an application service awaiting its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTransaction {
    /// Its ID (the `{txnId}` of `PUT /_matrix/app/v1/transactions/{txnId}`).
    pub txn_id: i64,
    /// The stream position its content reaches; `position` moves there once it is acknowledged.
    pub to_position: i64,
    /// The body, as sent.
    pub body: String,
}

/// Application services' delivery positions and the transaction each has in flight.
pub trait AppserviceStore {
    /// The service's state; a service never seen starts at `start_position` (the stream's
    /// position when it was first registered: it gets what happens from then on).
    fn appservice_state(&self, as_id: &str, start_position: i64) -> Result<AppserviceState>;
    /// Records a transaction before it is sent: `txn_id` must be the one after the last
    /// acknowledged and there must be no other pending ([`StorageError::Conflict`] otherwise).
    fn begin_appservice_txn(&self, as_id: &str, txn: &PendingTransaction) -> Result<()>;
    /// The service acknowledged `txn_id`: its position moves to the transaction's end and the
    /// body is dropped. Acknowledging a transaction that is not pending does nothing.
    fn complete_appservice_txn(&self, as_id: &str, txn_id: i64) -> Result<()>;
    /// Moves the position forward past events the service has no interest in (never back,
    /// and not while a transaction is pending).
    fn advance_appservice(&self, as_id: &str, position: i64) -> Result<()>;
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

/// How a backend wants to be called.
pub trait StorageInfo {
    /// Whether calls are cheap enough to make on an async runtime worker (an embedded database
    /// that never waits on the network); false sends every call to a blocking thread.
    fn inline_calls(&self) -> bool {
        true
    }

    /// Sends `message` to every other process sharing this database (PostgreSQL's `NOTIFY`);
    /// nothing for a backend only one process uses. Messages arrive in the order published.
    fn publish(&self, _message: &str) -> Result<()> {
        Ok(())
    }

    /// Hands every message other processes publish to `deliver`, from a thread of the store's
    /// own (after a lost connection, [`BUS_RESYNC`] first: messages may have been missed).
    /// False when the backend has no bus (one process only).
    fn subscribe(&self, _deliver: Box<dyn Fn(String) + Send + 'static>) -> Result<bool> {
        Ok(false)
    }

    /// A clean stop: whatever the backend should leave tidy (SQLite moves the whole WAL into
    /// the database file and truncates it). Called once, after the last request.
    fn shutdown(&self) -> Result<()> {
        Ok(())
    }

    /// Marks this process as the live instance `name` for as long as it runs (a lock the
    /// database drops when the process's connection ends); an error if a live process already
    /// has that name. Nothing for a one-process backend.
    fn register_instance(&self, _name: &str) -> Result<()> {
        Ok(())
    }

    /// Which of `names` are live instances now (see [`StorageInfo::register_instance`]);
    /// `None` for a one-process backend.
    fn live_instances(&self, _names: &[String]) -> Result<Option<Vec<String>>> {
        Ok(None)
    }
}

/// What [`StorageInfo::subscribe`] delivers when messages may have been lost: a subscriber
/// should forget what other processes may have changed.
pub const BUS_RESYNC: &str = "resync";

/// The whole storage contract a backend implements.
pub trait Storage:
    StorageInfo
    + UserStore
    + RoomStore
    + ClientDataStore
    + DirectoryStore
    + MediaStore
    + RegistrationTokenStore
    + KeyStore
    + EphemeralStore
    + SearchStore
    + FederationStore
    + TransientStore
    + AppserviceStore
    + AdminStore
    + Send
    + Sync
    + 'static
{
}

impl<T> Storage for T where
    T: StorageInfo
        + UserStore
        + RoomStore
        + ClientDataStore
        + DirectoryStore
        + MediaStore
        + RegistrationTokenStore
        + KeyStore
        + EphemeralStore
        + SearchStore
        + FederationStore
        + TransientStore
        + AppserviceStore
        + AdminStore
        + Send
        + Sync
        + 'static
{
}
