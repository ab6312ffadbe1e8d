//! The storage contract: every method of [`Storage`] as `lib.rs` documents it, checked through
//! `&dyn Storage` so that the same cases run against every backend.
//!
//! Each case is a plain `fn(&dyn Storage)` on a fresh, empty store. [`contract!`] turns every
//! case into `sqlite::<case>` (a file-backed [`SqliteStore`] in a temporary directory, as the
//! server opens it) and `pg::<case>` (a fresh PostgreSQL database per test, on the cluster of
//! `scripts/test-postgres.sh` or the one `MYELIN_TEST_PG` names).
//!
//! Where `lib.rs` is not precise, the SQLite backend's behaviour is the reference. Orders the
//! docs leave open are compared sorted; JSON is compared parsed (a backend may store it as
//! `jsonb`).

use std::collections::HashSet;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use myelin_storage::pg::{PgOptions, PostgresStore};
use myelin_storage::sqlite::SqliteStore;
use myelin_storage::*;
use serde_json::{Value, json};

const ALICE: &str = "@alice:test";
const BOB: &str = "@bob:test";
const CAROL: &str = "@carol:test";
const DAVE: &str = "@dave:test";
const ERIN: &str = "@erin:test";
/// The `origin_server_ts` of events that do not set one.
const TS: i64 = 1_700_000_000_000;
const MAX: i64 = i64::MAX;

// ---------------------------------------------------------------------------------------------
// Opening stores
// ---------------------------------------------------------------------------------------------

/// A fresh file-backed SQLite store (the directory must outlive it).
fn open_sqlite() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(&dir.path().join("homeserver.db")).expect("open SQLite store");
    (dir, store)
}

/// `key=value` settings of the test cluster: `MYELIN_TEST_PG`, else what
/// `scripts/test-postgres.sh` prints (it starts the cluster, or reuses the running one).
/// Panics, failing the test, if there is no PostgreSQL to test against.
fn pg_settings() -> String {
    static SETTINGS: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let settings = SETTINGS.get_or_init(|| {
        if let Ok(settings) = std::env::var("MYELIN_TEST_PG") {
            return Ok(settings);
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/test-postgres.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .output()
            .map_err(|e| format!("could not run {script}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || stdout.is_empty() {
            return Err(format!("{script} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(stdout)
    });
    match settings {
        Ok(settings) => settings.clone(),
        Err(e) => panic!(
            "PostgreSQL is not available for the storage contract tests: {e}\n\
             Install PostgreSQL (apt-get install postgresql) so scripts/test-postgres.sh can start a \
             throwaway cluster, or set MYELIN_TEST_PG=\"host=... port=... user=...\""
        ),
    }
}

/// A PostgreSQL store on a database of its own, dropped with it (kept if the test failed, for
/// a look at what it left).
struct PgDb {
    store: Option<PostgresStore>,
    admin: postgres::Config,
    name: String,
}

impl PgDb {
    // Used by the `pg` tests only, which are off until PostgresStore implements Storage.
    fn store(&self) -> &PostgresStore {
        self.store.as_ref().expect("open store")
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        drop(self.store.take());
        if std::thread::panicking() {
            eprintln!("kept PostgreSQL database {} of the failed test", self.name);
            return;
        }
        if let Ok(mut client) = self.admin.connect(postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name));
        }
    }
}

/// A fresh PostgreSQL database with a unique name, and a store opened on it.
// Used by the `pg` tests only, which are off until PostgresStore implements Storage.
fn open_pg() -> PgDb {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let settings = pg_settings();
    let mut options =
        PgOptions::from_settings(&settings).unwrap_or_else(|e| panic!("bad PostgreSQL settings '{settings}': {e}"));
    let mut admin = postgres::Config::new();
    if let Some(host) = &options.host {
        admin.host(host);
    }
    if let Some(port) = options.port {
        admin.port(port);
    }
    match options.user.clone().or_else(|| std::env::var("PGUSER").ok()).or_else(|| std::env::var("USER").ok()) {
        Some(user) => admin.user(&user),
        None => admin.user("postgres"),
    };
    if let Some(password) = &options.password {
        admin.password(password);
    }
    admin.dbname("postgres");
    admin.connect_timeout(std::time::Duration::from_secs(10));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let name = format!("contract_{}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos);
    let mut client = admin
        .connect(postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL ({settings}) to create a test database: {e}"));
    client
        .batch_execute(&format!(
            "CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
        ))
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    drop(client);
    options.dbname = Some(name.clone());
    options.cp_min = 1;
    options.cp_max = 4;
    let mut db = PgDb { store: None, admin, name };
    db.store =
        Some(PostgresStore::open(&options).unwrap_or_else(|e| panic!("cannot open PostgresStore on {}: {e}", db.name)));
    db
}

/// A store whose last owner is a task of an async runtime (as at a server's shutdown) closes
/// its connections without panicking: the synchronous driver must not block inside the
/// runtime (it did, and a SIGTERM then ended a PostgreSQL-backed server with an abort).
#[test]
fn pg_store_drops_cleanly_on_an_async_runtime_thread() {
    let mut db = open_pg();
    let store = db.store.take().expect("open store");
    store.register_instance("drop-test").unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(async move { tokio::spawn(async move { drop(store) }).await }).expect("dropped without a panic");
}

/// Instances are a database's own: a process named `master` of another deployment on the same
/// cluster does not look alive here (pg_locks lists every database's
/// advisory locks; a worker once kept waiting for a dead main process because another test's
/// was alive).
#[test]
fn pg_instances_are_per_database() {
    let (here, elsewhere) = (open_pg(), open_pg());
    let names = ["master".to_owned(), "worker1".to_owned()];
    elsewhere.store().register_instance("master").unwrap();
    assert_eq!(here.store().live_instances(&names).unwrap(), Some(vec![]), "another database's master");
    here.store().register_instance("worker1").unwrap();
    assert_eq!(here.store().live_instances(&names).unwrap(), Some(vec!["worker1".to_owned()]));
    assert_eq!(elsewhere.store().live_instances(&names).unwrap(), Some(vec!["master".to_owned()]));
}

/// Writes that read first (a key upload compares the stored keys) succeed while another
/// connection commits writes of its own, as the checkpointer's search indexing does: with
/// deferred transactions SQLite refused the upgrade to a write at once (SQLITE_BUSY).
#[test]
fn sqlite_read_then_write_transactions_wait_for_another_writer() {
    let (dir, store) = open_sqlite();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let (path, stop) = (dir.path().join("homeserver.db"), stop.clone());
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                conn.execute_batch("BEGIN IMMEDIATE; UPDATE search_position SET position = position; COMMIT;").unwrap();
            }
        })
    };
    for i in 0..300 {
        let keys = json!({"user_id": ALICE, "device_id": "D", "keys": {"curve25519:D": i}}).to_string();
        store.upload_keys(ALICE, "D", Some(&keys), &[], &[]).unwrap_or_else(|e| panic!("upload {i}: {e}"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    other.join().unwrap();
}

/// Every case as `sqlite::<case>` and `pg::<case>`.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        /// The contract against a fresh file-backed SQLite database per test.
        mod sqlite {
            $(
                #[test]
                fn $case() {
                    let (_dir, store) = super::open_sqlite();
                    super::$case(&store);
                }
            )*
        }

        /// The contract against a fresh PostgreSQL database per test.
        mod pg {
            $(
                #[test]
                fn $case() {
                    let db = super::open_pg();
                    super::$case(db.store());
                }
            )*
        }
    };
}

contract! {
    // Users, devices, tokens, profiles
    users_create_get_and_conflict,
    users_case_insensitive_lookup,
    users_password_and_flags,
    threepid_bindings_added_listed_removed,
    account_threepids_one_owner_each,
    threepid_validation_sessions_and_tokens,
    external_ids_one_account_each,
    invites_sent_by_a_user,
    events_a_user_sent_in_a_room,
    erased_users_marked_once,
    profiles_fields,
    devices_upsert_rename_touch,
    access_tokens_lookup_and_delete,
    access_tokens_expiry_and_use,
    ratelimit_overrides_set_replace_and_remove,
    custom_profile_fields_set_remove_and_bound,
    refresh_tokens_rotate_keeping_the_last_two,
    refresh_tokens_go_with_their_device,
    delete_device_removes_its_tokens,
    delete_device_drops_its_keys_and_messages,
    delete_all_devices_keeps_one,
    // Rooms and events
    rooms_create_get_conflict,
    events_read_back_as_persisted,
    event_positions_increase,
    duplicate_event_id_conflicts,
    rejected_and_soft_failed_stay_out_of_timeline,
    room_events_range_direction_limit,
    events_between_all_rooms_oldest_first,
    rooms_with_events_between_only_accepted,
    forward_extremities_follow_prev_events,
    state_groups_deltas_read_back,
    state_group_full_snapshot_stands_alone,
    state_group_entry_walks_chain,
    state_group_chain_length_counts_deltas,
    current_state_follows_flagged_state_events,
    current_state_replaced_wholesale,
    memberships_and_rooms_for_user,
    membership_changes_latest_per_room,
    user_memberships_name_sender_and_position,
    last_event_positions_by_type,
    state_group_at_follows_accepted_events,
    txn_ids_recorded_and_looked_up,
    repeated_txn_id_conflicts,
    persist_events_commits_all_but_the_failing_ones,
    failed_event_writes_no_outbox_row,
    redaction_replaces_json,
    relations_filter_and_order,
    relation_summaries_aggregated_kinds,
    thread_roots_newest_first,
    events_by_timestamp_both_directions,
    // Federation
    outliers_stored_outside_timeline,
    backfilled_events_lie_below_the_timeline,
    server_keys_cached_and_replaced,
    outbox_rows_per_destination,
    outbox_limit_per_kind,
    device_list_changes_by_range,
    remote_device_lists_cached_updated_and_forgotten,
    user_signatures_and_private_changes_reach_only_the_signer,
    // Client data
    account_data_roundtrip,
    account_data_since_range,
    filters_per_user,
    // Directory
    aliases_lifecycle,
    published_rooms_biggest_first,
    appservice_room_lists_per_network,
    user_directory_visibility,
    user_directory_term_matching,
    // Media and registration tokens
    media_reserve_complete_delete,
    media_delete_with_thumbnails,
    thumbnails_by_size_and_method,
    registration_tokens_lifecycle,
    // Keys
    upload_keys_records_identity_key_changes,
    one_time_key_keeps_first_value,
    claimed_one_time_key_not_claimable_twice,
    fallback_key_after_one_time_keys_run_out,
    device_and_cross_signing_keys,
    users_sharing_rooms_joined_or_invited,
    to_device_queue_and_delete,
    to_device_between_reads_every_recipient,
    to_device_txn_idempotent,
    backup_versions_lifecycle,
    backup_keys_and_etags,
    // Ephemeral
    receipts_replace_previous,
    receipts_since_and_room_filter,
    read_positions_use_unthreaded_read_receipts,
    join_positions_track_current_stay,
    presence_stored_and_ranged,
    pushers_append_and_replace,
    stream_positions_strictly_increase,
    // Transient records
    transient_records_expire,
    transient_records_are_taken_once,
    appservice_transactions_are_recorded_before_sending,
    appservice_position_only_moves_forward,
    event_reports_page_filter_and_delete,
    room_and_user_reports_are_kept,
    rooms_blocked_and_unblocked,
    media_quarantined_protected_and_listed,
    purge_room_removes_the_room_and_nothing_else,
    purge_history_keeps_state_extremities_and_local_events,
    extra_forward_extremities_are_dropped_but_the_newest,
    admin_user_list_filters_orders_and_pages,
    user_types_are_kept_and_filter_the_admin_listing,
    account_validity_is_kept_found_by_token_and_listed_when_expiring,
    admin_room_list_counts_members,
    // Search
    search_finds_just_written_events,
    search_skips_redacted_events,
    search_skips_rejected_events,
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn user_row(user_id: &str) -> UserRow {
    UserRow {
        user_id: user_id.into(),
        password_hash: Some("$argon2id$v=19$hash".into()),
        is_admin: false,
        is_guest: false,
        deactivated: false,
        shadow_banned: false,
        creation_ts: TS,
        locked: false,
        suspended: false,
    }
}

fn add_user(s: &dyn Storage, user_id: &str, displayname: Option<&str>) {
    s.create_user(&user_row(user_id), displayname).expect("create_user");
}

fn add_device(s: &dyn Storage, user_id: &str, device_id: &str, token: &str) {
    s.upsert_device(user_id, device_id, None).expect("upsert_device");
    s.add_access_token(&access_token(token, user_id, device_id)).expect("add_access_token");
}

/// A token that never expires, without a refresh token.
fn access_token<'a>(token: &'a str, user_id: &'a str, device_id: &'a str) -> NewAccessToken<'a> {
    NewAccessToken { token, user_id, device_id, valid_until_ms: None, refresh_token_id: None }
}

/// `(user_id, device_id)` of a token's session.
fn session(s: &dyn Storage, token: &str) -> Option<(String, String)> {
    s.get_access_token(token).unwrap().map(|t| (t.user_id, t.device_id))
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn parse(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("stored JSON does not parse ({e}): {json}"))
}

/// The event IDs of rows, in their order.
fn ids(rows: &[EventRow]) -> Vec<String> {
    rows.iter().map(|r| parse(&r.json)["event_id"].as_str().expect("event_id").to_owned()).collect()
}

fn entry(event_type: &str, state_key: &str, event_id: &str) -> StateEntry {
    StateEntry { event_type: event_type.into(), state_key: state_key.into(), event_id: event_id.into() }
}

fn state_set(entries: Vec<StateEntry>) -> HashSet<StateEntry> {
    let n = entries.len();
    let set: HashSet<StateEntry> = entries.into_iter().collect();
    assert_eq!(set.len(), n, "a state entry listed twice");
    set
}

/// An event to persist; [`TestRoom::prepared`] fills in what is left unset.
#[derive(Debug, Clone)]
struct Ev {
    id: String,
    room: String,
    ty: String,
    state_key: Option<String>,
    sender: String,
    membership: Option<String>,
    content: Value,
    ts: i64,
    rejected: bool,
    soft_failed: bool,
    /// `None`: a delta of its own key for a state event, the room's group for a message.
    state: Option<StateChange>,
    /// `None`: the room's head.
    prev: Option<Vec<String>>,
    /// `None`: accepted state events update it.
    updates_current_state: Option<bool>,
    txn: Option<(String, String, String)>,
    redaction: Option<(String, String)>,
    current_state: Option<Vec<StateEntry>>,
    destinations: Vec<String>,
}

impl Ev {
    fn ts(mut self, ts: i64) -> Self {
        self.ts = ts;
        self
    }
    fn rejected(mut self) -> Self {
        self.rejected = true;
        self
    }
    fn soft_failed(mut self) -> Self {
        self.soft_failed = true;
        self
    }
    fn state_change(mut self, change: StateChange) -> Self {
        self.state = Some(change);
        self
    }
    fn prev(mut self, prev: &[&str]) -> Self {
        self.prev = Some(strings(prev));
        self
    }
    fn keep_current_state(mut self) -> Self {
        self.updates_current_state = Some(false);
        self
    }
    fn txn(mut self, user: &str, device: &str, txn: &str) -> Self {
        self.txn = Some((user.into(), device.into(), txn.into()));
        self
    }
    fn redacts(mut self, target: &str, redacted_json: &str) -> Self {
        self.redaction = Some((target.into(), redacted_json.into()));
        self
    }
    fn current_state(mut self, state: Vec<StateEntry>) -> Self {
        self.current_state = Some(state);
        self
    }
    fn destinations(mut self, destinations: &[&str]) -> Self {
        self.destinations = strings(destinations);
        self
    }

    fn entry(&self) -> StateEntry {
        entry(&self.ty, self.state_key.as_deref().expect("a state event"), &self.id)
    }

    fn value(&self) -> Value {
        let mut v = json!({
            "event_id": self.id,
            "room_id": self.room,
            "type": self.ty,
            "sender": self.sender,
            "origin_server_ts": self.ts,
            "content": self.content,
        });
        if let Some(key) = &self.state_key {
            v["state_key"] = json!(key);
        }
        v
    }

    fn json(&self) -> String {
        self.value().to_string()
    }

    fn as_new<'a>(&'a self, json: &'a str) -> NewEvent<'a> {
        NewEvent {
            event_id: &self.id,
            room_id: &self.room,
            event_type: &self.ty,
            state_key: self.state_key.as_deref(),
            sender: &self.sender,
            membership: self.membership.as_deref(),
            json,
            rejected: self.rejected,
            soft_failed: self.soft_failed,
            state: self.state.clone().expect("prepared by TestRoom"),
            prev_events: self.prev.as_deref().unwrap_or(&[]),
            updates_current_state: self.updates_current_state.unwrap_or(false),
            txn: self.txn.as_ref().map(|(u, d, t)| (u.as_str(), d.as_str(), t.as_str())),
            redaction: self.redaction.as_ref().map(|(t, j)| (t.as_str(), j.as_str())),
            current_state: self.current_state.as_deref(),
            destinations: &self.destinations,
        }
    }
}

/// A room being written: its latest accepted state group and head, so events chain up.
struct TestRoom {
    id: String,
    group: Option<i64>,
    head: Vec<String>,
    n: usize,
}

impl TestRoom {
    /// The room row and its create event (a full snapshot).
    fn new(s: &dyn Storage, id: &str) -> TestRoom {
        s.create_room(&RoomRow {
            room_id: id.into(),
            room_version: "10".into(),
            creator: ALICE.into(),
            is_public: false,
        })
        .expect("create_room");
        let mut room = TestRoom { id: id.into(), group: None, head: Vec::new(), n: 0 };
        let create = room.state(&room.create_id(), "m.room.create", "", ALICE, json!({"creator": ALICE}));
        room.send(s, &create);
        room
    }

    fn create_id(&self) -> String {
        format!("$create-{}", self.id)
    }

    fn event(&self, id: &str, ty: &str, sender: &str, content: Value) -> Ev {
        Ev {
            id: id.into(),
            room: self.id.clone(),
            ty: ty.into(),
            state_key: None,
            sender: sender.into(),
            membership: None,
            content,
            ts: TS,
            rejected: false,
            soft_failed: false,
            state: None,
            prev: None,
            updates_current_state: None,
            txn: None,
            redaction: None,
            current_state: None,
            destinations: Vec::new(),
        }
    }

    fn msg(&self, id: &str, sender: &str, body: &str) -> Ev {
        self.event(id, "m.room.message", sender, json!({"msgtype": "m.text", "body": body}))
    }

    /// A message relating to `parent` with `rel_type`.
    fn reply(&self, id: &str, sender: &str, rel_type: &str, parent: &str) -> Ev {
        self.event(
            id,
            "m.room.message",
            sender,
            json!({"msgtype": "m.text", "body": id, "m.relates_to": {"rel_type": rel_type, "event_id": parent}}),
        )
    }

    fn state(&self, id: &str, ty: &str, key: &str, sender: &str, content: Value) -> Ev {
        Ev { state_key: Some(key.into()), ..self.event(id, ty, sender, content) }
    }

    fn member(&self, id: &str, user: &str, membership: &str) -> Ev {
        Ev {
            membership: Some(membership.into()),
            ..self.state(id, "m.room.member", user, user, json!({"membership": membership}))
        }
    }

    /// `ev` as redacted: its content emptied.
    fn redacted(&self, ev: &Ev) -> String {
        Ev { content: json!({}), ..ev.clone() }.json()
    }

    fn prepared(&self, ev: &Ev) -> Ev {
        let mut ev = ev.clone();
        let accepted = !ev.rejected && !ev.soft_failed;
        if ev.state.is_none() {
            ev.state = Some(match (&ev.state_key, self.group) {
                (Some(_), prev) => StateChange::New { prev, delta: vec![ev.entry()] },
                (None, Some(group)) => StateChange::Same(group),
                (None, None) => panic!("an event before the room's create event"),
            });
        }
        if ev.prev.is_none() {
            ev.prev = Some(self.head.clone());
        }
        if ev.updates_current_state.is_none() {
            ev.updates_current_state = Some(ev.state_key.is_some() && accepted);
        }
        ev
    }

    fn try_send(&mut self, s: &dyn Storage, ev: &Ev) -> Result<(i64, i64)> {
        let ev = self.prepared(ev);
        let json = ev.json();
        let written = s.persist_event(&ev.as_new(&json))?;
        if !ev.rejected && !ev.soft_failed {
            self.head = vec![ev.id.clone()];
            self.group = Some(written.1);
        }
        Ok(written)
    }

    /// Persists `ev`; returns `(stream position, state group)`.
    fn send(&mut self, s: &dyn Storage, ev: &Ev) -> (i64, i64) {
        self.try_send(s, ev).unwrap_or_else(|e| panic!("persist_event {}: {e}", ev.id))
    }

    /// Sends a member event with a fresh ID; returns its stream position.
    fn set_membership(&mut self, s: &dyn Storage, user: &str, membership: &str) -> i64 {
        self.n += 1;
        let ev = self.member(&format!("$member-{}-{}", self.n, self.id), user, membership);
        self.send(s, &ev).0
    }

    fn join(&mut self, s: &dyn Storage, user: &str) -> i64 {
        self.set_membership(s, user, "join")
    }
}

// ---------------------------------------------------------------------------------------------
// Users, devices, tokens, profiles
// ---------------------------------------------------------------------------------------------

fn users_create_get_and_conflict(s: &dyn Storage) {
    let alice = UserRow { is_guest: true, creation_ts: TS + 7, ..user_row(ALICE) };
    s.create_user(&alice, Some("Alice")).unwrap();
    assert_eq!(s.get_user(ALICE).unwrap(), Some(alice.clone()));
    assert!(matches!(s.create_user(&user_row(ALICE), None), Err(StorageError::Conflict)), "an existing ID conflicts");
    assert_eq!(s.get_user(ALICE).unwrap(), Some(alice), "a refused create changes nothing");
    assert_eq!(s.get_user(BOB).unwrap(), None);
    assert_eq!(s.count_users().unwrap(), 1);
    add_user(s, BOB, None);
    assert_eq!(s.count_users().unwrap(), 2);
    assert_eq!(s.get_ratelimit_override(ALICE).unwrap(), None, "no override row");
}

fn users_case_insensitive_lookup(s: &dyn Storage) {
    add_user(s, "@Alice:test", None);
    let found = s.find_user_case_insensitive("@aLiCe:TEST").unwrap().map(|u| u.user_id);
    assert_eq!(found.as_deref(), Some("@Alice:test"));
    assert_eq!(s.get_user("@alice:test").unwrap(), None, "get_user is exact");
    assert_eq!(s.find_user_case_insensitive("@alicia:test").unwrap(), None);
}

fn users_password_and_flags(s: &dyn Storage) {
    add_user(s, ALICE, None);
    add_user(s, BOB, None);
    assert!(s.get_user(ALICE).unwrap().is_some());
    s.set_password_hash(ALICE, Some("$new")).unwrap();
    assert_eq!(s.get_user(ALICE).unwrap().unwrap().password_hash.as_deref(), Some("$new"));
    s.set_password_hash(ALICE, None).unwrap();
    assert_eq!(s.get_user(ALICE).unwrap().unwrap().password_hash, None);

    s.set_user_flag(ALICE, UserFlag::Admin, true).unwrap();
    let u = s.get_user(ALICE).unwrap().unwrap();
    assert!(u.is_admin && !u.deactivated && !u.shadow_banned);
    s.set_user_flag(ALICE, UserFlag::Deactivated, true).unwrap();
    s.set_user_flag(ALICE, UserFlag::ShadowBanned, true).unwrap();
    let u = s.get_user(ALICE).unwrap().unwrap();
    assert!(u.is_admin && u.deactivated && u.shadow_banned);
    s.set_user_flag(ALICE, UserFlag::Admin, false).unwrap();
    let u = s.get_user(ALICE).unwrap().unwrap();
    assert!(!u.is_admin && u.deactivated && u.shadow_banned);
    s.set_user_flag(ALICE, UserFlag::Locked, true).unwrap();
    s.set_user_flag(ALICE, UserFlag::Suspended, true).unwrap();
    let u = s.get_user(ALICE).unwrap().unwrap();
    assert!(u.locked && u.suspended);
    s.set_user_flag(ALICE, UserFlag::Locked, false).unwrap();
    let u = s.get_user(ALICE).unwrap().unwrap();
    assert!(!u.locked && u.suspended);
    assert_eq!(s.get_user(BOB).unwrap(), Some(user_row(BOB)), "other users untouched");
}

fn profiles_fields(s: &dyn Storage) {
    add_user(s, ALICE, Some("Alice"));
    add_user(s, BOB, None);
    assert_eq!(s.get_profile(ALICE).unwrap(), Some((Some("Alice".into()), None)));
    assert_eq!(s.get_profile(BOB).unwrap(), Some((None, None)));
    s.set_profile_field(ALICE, ProfileField::AvatarUrl, Some("mxc://test/a")).unwrap();
    assert_eq!(s.get_profile(ALICE).unwrap(), Some((Some("Alice".into()), Some("mxc://test/a".into()))));
    s.set_profile_field(ALICE, ProfileField::DisplayName, None).unwrap();
    assert_eq!(s.get_profile(ALICE).unwrap(), Some((None, Some("mxc://test/a".into()))));
    s.set_profile_field(BOB, ProfileField::DisplayName, Some("Bob")).unwrap();
    assert_eq!(s.get_profile(BOB).unwrap(), Some((Some("Bob".into()), None)));
    assert_eq!(s.get_profile(CAROL).unwrap(), None);
}

fn device(id: &str, name: Option<&str>) -> DeviceRow {
    DeviceRow {
        device_id: id.into(),
        display_name: name.map(Into::into),
        last_seen_ts: None,
        last_seen_ip: None,
        last_seen_user_agent: None,
    }
}

fn devices(s: &dyn Storage, user: &str) -> Vec<DeviceRow> {
    let mut d = s.get_devices(user).unwrap();
    d.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    d
}

fn devices_upsert_rename_touch(s: &dyn Storage) {
    add_user(s, ALICE, None);
    add_user(s, BOB, None);
    s.upsert_device(ALICE, "D1", Some("Phone")).unwrap();
    s.upsert_device(ALICE, "D1", None).unwrap();
    s.upsert_device(ALICE, "D2", None).unwrap();
    assert_eq!(devices(s, ALICE), vec![device("D1", Some("Phone")), device("D2", None)], "a refresh keeps the name");
    s.upsert_device(ALICE, "D2", Some("Tablet")).unwrap();
    assert_eq!(devices(s, ALICE)[1], device("D2", Some("Tablet")));

    assert!(s.rename_device(ALICE, "D2", Some("Laptop")).unwrap());
    assert!(!s.rename_device(ALICE, "D9", Some("Nothing")).unwrap());
    assert!(!s.rename_device(BOB, "D1", Some("Not Bob's")).unwrap());
    assert_eq!(devices(s, ALICE)[1], device("D2", Some("Laptop")));

    s.touch_device(ALICE, "D1", "10.0.0.1", "Agent/1", TS + 5).unwrap();
    let touched = DeviceRow {
        last_seen_ts: Some(TS + 5),
        last_seen_ip: Some("10.0.0.1".into()),
        last_seen_user_agent: Some("Agent/1".into()),
        ..device("D1", Some("Phone"))
    };
    assert_eq!(devices(s, ALICE), vec![touched, device("D2", Some("Laptop"))]);
    assert_eq!(s.get_devices(BOB).unwrap(), vec![]);
}

fn access_tokens_lookup_and_delete(s: &dyn Storage) {
    add_user(s, ALICE, None);
    add_device(s, ALICE, "D1", "tok1");
    s.add_access_token(&access_token("tok2", ALICE, "D1")).unwrap();
    assert_eq!(session(s, "tok1"), Some((ALICE.into(), "D1".into())));
    s.delete_access_token("tok1").unwrap();
    assert_eq!(session(s, "tok1"), None);
    assert_eq!(session(s, "tok2"), Some((ALICE.into(), "D1".into())));
    assert_eq!(session(s, "nope"), None);
}

fn custom_profile_fields_set_remove_and_bound(s: &dyn Storage) {
    add_user(s, ALICE, Some("Alice"));
    assert!(s.get_custom_profile_fields(ALICE).unwrap().is_empty());
    assert!(s.set_custom_profile_field(ALICE, "m.tz", Some(&json!("UTC")), 1000).unwrap());
    assert!(s.set_custom_profile_field(ALICE, "org.x", Some(&json!({"a": [1, 2]})), 1000).unwrap());
    let fields = s.get_custom_profile_fields(ALICE).unwrap();
    assert_eq!(Value::Object(fields), json!({"m.tz": "UTC", "org.x": {"a": [1, 2]}}));
    // The bound counts the whole profile, display name included; over it nothing is written.
    let big = json!("x".repeat(990));
    assert!(!s.set_custom_profile_field(ALICE, "m.big", Some(&big), 1000).unwrap());
    assert_eq!(s.get_custom_profile_fields(ALICE).unwrap().len(), 2);
    assert_eq!(s.get_profile(ALICE).unwrap(), Some((Some("Alice".into()), None)), "the rest of the profile stays");
    assert!(s.set_custom_profile_field(ALICE, "m.tz", None, 1000).unwrap());
    assert_eq!(Value::Object(s.get_custom_profile_fields(ALICE).unwrap()), json!({"org.x": {"a": [1, 2]}}));
    assert!(s.get_custom_profile_fields(BOB).unwrap().is_empty(), "no profile at all");
}

fn ratelimit_overrides_set_replace_and_remove(s: &dyn Storage) {
    add_user(s, ALICE, None);
    assert_eq!(s.get_ratelimit_override(ALICE).unwrap(), None);
    s.set_ratelimit_override(ALICE, Some((Some(2.5), Some(10)))).unwrap();
    assert_eq!(s.get_ratelimit_override(ALICE).unwrap(), Some((Some(2.5), Some(10))));
    s.set_ratelimit_override(ALICE, Some((None, None))).unwrap();
    assert_eq!(s.get_ratelimit_override(ALICE).unwrap(), Some((None, None)), "replaced: exempt");
    s.set_ratelimit_override(ALICE, None).unwrap();
    assert_eq!(s.get_ratelimit_override(ALICE).unwrap(), None);
    s.set_ratelimit_override(BOB, None).unwrap();
}

fn access_tokens_expiry_and_use(s: &dyn Storage) {
    add_user(s, ALICE, None);
    s.upsert_device(ALICE, "D1", None).unwrap();
    let expiring = NewAccessToken { valid_until_ms: Some(TS + 300_000), ..access_token("t1", ALICE, "D1") };
    s.add_access_token(&expiring).unwrap();
    let row = s.get_access_token("t1").unwrap().unwrap();
    assert_eq!((row.valid_until_ms, row.refresh_token_id, row.used), (Some(TS + 300_000), None, false));
    s.mark_access_token_used("t1").unwrap();
    assert!(s.get_access_token("t1").unwrap().unwrap().used, "used, through any cache");
    s.mark_access_token_used("unknown").unwrap();
}

fn refresh_token(token: &str) -> NewRefreshToken<'_> {
    NewRefreshToken { token, user_id: ALICE, device_id: "D1", expiry_ts: None, ultimate_session_expiry_ts: None }
}

fn refresh_tokens_rotate_keeping_the_last_two(s: &dyn Storage) {
    add_user(s, ALICE, None);
    s.upsert_device(ALICE, "D1", None).unwrap();
    let first =
        NewRefreshToken { expiry_ts: Some(TS + 10), ultimate_session_expiry_ts: Some(TS + 99), ..refresh_token("r1") };
    let r1 = s.add_refresh_token(&first).unwrap();
    s.add_access_token(&NewAccessToken { refresh_token_id: Some(r1), ..access_token("a1", ALICE, "D1") }).unwrap();
    let row = s.get_refresh_token("r1").unwrap().unwrap();
    assert_eq!(
        row,
        RefreshTokenRow {
            id: r1,
            user_id: ALICE.into(),
            device_id: "D1".into(),
            expiry_ts: Some(TS + 10),
            ultimate_session_expiry_ts: Some(TS + 99),
            superseded: false
        }
    );
    assert_eq!(s.get_refresh_token("nope").unwrap(), None);

    // Refreshed: r1 stays usable until its successor is put to use.
    s.rotate_refresh_token(r1, &refresh_token("r2"), &access_token("a2", ALICE, "D1")).unwrap();
    let r2 = s.get_refresh_token("r2").unwrap().unwrap();
    assert_eq!(s.get_access_token("a2").unwrap().unwrap().refresh_token_id, Some(r2.id));
    assert!(!s.get_refresh_token("r1").unwrap().unwrap().superseded);
    // A retried refresh replaces the first attempt's tokens.
    s.rotate_refresh_token(r1, &refresh_token("r2b"), &access_token("a2b", ALICE, "D1")).unwrap();
    assert_eq!(s.get_refresh_token("r2").unwrap(), None, "the first attempt's refresh token is gone");
    assert_eq!(session(s, "a2"), None, "and its access token");
    assert_eq!(session(s, "a1"), Some((ALICE.into(), "D1".into())), "the old access token lives until it expires");
    s.mark_access_token_used("a2b").unwrap();
    assert!(s.get_refresh_token("r1").unwrap().unwrap().superseded, "its successor's token was used");

    // Refreshing again drops r1 and its access token: a session keeps its last two.
    let r2b = s.get_refresh_token("r2b").unwrap().unwrap().id;
    s.rotate_refresh_token(r2b, &refresh_token("r3"), &access_token("a3", ALICE, "D1")).unwrap();
    assert_eq!(s.get_refresh_token("r1").unwrap(), None);
    assert_eq!(session(s, "a1"), None);
    assert!(s.get_refresh_token("r2b").unwrap().is_some());
    assert_eq!(session(s, "a2b"), Some((ALICE.into(), "D1".into())));
    // r2b's successor r3 has not been used, nor refreshed.
    assert!(!s.get_refresh_token("r2b").unwrap().unwrap().superseded);
    let r3 = s.get_refresh_token("r3").unwrap().unwrap().id;
    s.rotate_refresh_token(r3, &refresh_token("r4"), &access_token("a4", ALICE, "D1")).unwrap();
    assert!(s.get_refresh_token("r2b").unwrap().is_none(), "r3's predecessor went when r3 was refreshed");
    assert!(s.get_refresh_token("r3").unwrap().is_some());
}

fn refresh_tokens_go_with_their_device(s: &dyn Storage) {
    add_user(s, ALICE, None);
    s.upsert_device(ALICE, "D1", None).unwrap();
    s.upsert_device(ALICE, "D2", None).unwrap();
    let r1 = s.add_refresh_token(&refresh_token("r1")).unwrap();
    s.add_access_token(&NewAccessToken { refresh_token_id: Some(r1), ..access_token("a1", ALICE, "D1") }).unwrap();
    s.add_refresh_token(&NewRefreshToken { device_id: "D2", ..refresh_token("r2") }).unwrap();
    assert!(s.delete_device(ALICE, "D1").unwrap());
    assert_eq!(s.get_refresh_token("r1").unwrap(), None);
    assert!(s.get_refresh_token("r2").unwrap().is_some());
    s.delete_all_devices(ALICE, None).unwrap();
    assert_eq!(s.get_refresh_token("r2").unwrap(), None);
}

fn delete_device_removes_its_tokens(s: &dyn Storage) {
    add_user(s, ALICE, None);
    add_device(s, ALICE, "D1", "t1");
    add_device(s, ALICE, "D2", "t2");
    assert!(s.get_access_token("t1").unwrap().is_some());
    assert!(s.delete_device(ALICE, "D1").unwrap());
    assert_eq!(session(s, "t1"), None, "a deleted device's token is gone");
    assert_eq!(session(s, "t2"), Some((ALICE.into(), "D2".into())));
    assert_eq!(devices(s, ALICE), vec![device("D2", None)]);
    assert!(!s.delete_device(ALICE, "D1").unwrap(), "already deleted");
}

fn delete_device_drops_its_keys_and_messages(s: &dyn Storage) {
    add_user(s, ALICE, None);
    add_device(s, ALICE, "D1", "t1");
    add_device(s, ALICE, "D2", "t2");
    let otk = |id: &str| vec![("signed_curve25519".to_string(), id.to_string(), json!({"key": id}).to_string())];
    s.upload_keys(ALICE, "D1", Some(r#"{"device_id":"D1"}"#), &otk("A1"), &otk("F1")).unwrap();
    s.upload_keys(ALICE, "D2", Some(r#"{"device_id":"D2"}"#), &otk("A2"), &otk("F2")).unwrap();
    s.queue_to_device(BOB, "BD", "t1", &[(ALICE.into(), "D1".into(), "{}".into())]).unwrap();
    let before = s.max_stream_ordering().unwrap();

    assert!(s.delete_device(ALICE, "D1").unwrap());
    let keys: Vec<_> = s.device_keys(ALICE).unwrap().into_iter().map(|(d, j)| (d, parse(&j))).collect();
    assert_eq!(keys, vec![("D2".to_string(), json!({"device_id": "D2"}))]);
    assert!(s.one_time_key_counts(ALICE, "D1").unwrap().iter().all(|(_, n)| *n == 0));
    assert_eq!(s.unused_fallback_key_types(ALICE, "D1").unwrap(), Vec::<String>::new());
    assert_eq!(s.claim_key(ALICE, "D1", "signed_curve25519").unwrap(), None);
    assert_eq!(s.to_device_messages(ALICE, "D1", MAX).unwrap(), vec![]);
    let after = s.max_stream_ordering().unwrap();
    assert!(after > before, "deleting a device with keys is a device-list change");
    assert_eq!(s.device_list_changes(before, after).unwrap(), vec![ALICE.to_string()]);
    assert_eq!(s.claim_key(ALICE, "D2", "signed_curve25519").unwrap().map(|k| k.0).as_deref(), Some("A2"));
}

fn delete_all_devices_keeps_one(s: &dyn Storage) {
    add_user(s, ALICE, None);
    add_user(s, BOB, None);
    for (d, t) in [("D1", "t1"), ("D2", "t2"), ("D3", "t3")] {
        add_device(s, ALICE, d, t);
        s.upload_keys(ALICE, d, Some(&json!({"device_id": d}).to_string()), &[], &[]).unwrap();
    }
    add_device(s, BOB, "B1", "tb");
    s.delete_all_devices(ALICE, Some("D2")).unwrap();
    assert_eq!(devices(s, ALICE), vec![device("D2", None)]);
    assert_eq!(session(s, "t1"), None);
    assert_eq!(session(s, "t3"), None);
    assert_eq!(session(s, "t2"), Some((ALICE.into(), "D2".into())));
    assert_eq!(s.device_keys(ALICE).unwrap().into_iter().map(|k| k.0).collect::<Vec<_>>(), vec!["D2"]);
    s.delete_all_devices(ALICE, None).unwrap();
    assert_eq!(devices(s, ALICE), vec![]);
    assert_eq!(session(s, "t2"), None);
    assert_eq!(session(s, "tb"), Some((BOB.into(), "B1".into())), "other users keep theirs");
}

// ---------------------------------------------------------------------------------------------
// Rooms and events
// ---------------------------------------------------------------------------------------------

fn rooms_create_get_conflict(s: &dyn Storage) {
    let row = RoomRow { room_id: "!r:test".into(), room_version: "11".into(), creator: ALICE.into(), is_public: true };
    s.create_room(&row).unwrap();
    assert_eq!(s.get_room("!r:test").unwrap(), Some(row.clone()));
    let again = RoomRow { creator: BOB.into(), ..row.clone() };
    assert!(matches!(s.create_room(&again), Err(StorageError::Conflict)), "a taken room ID conflicts");
    assert_eq!(s.get_room("!r:test").unwrap(), Some(row));
    assert_eq!(s.get_room("!none:test").unwrap(), None);
}

fn events_read_back_as_persisted(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    let ev = r.msg("$m1", ALICE, "hello");
    let (pos, group) = r.send(s, &ev);
    let row = s.get_event("$m1").unwrap().expect("stored");
    assert_eq!(row.stream_ordering, pos);
    assert_eq!(parse(&row.json), ev.value());
    assert_eq!(row.state_group, Some(group));
    assert!(!row.rejected && !row.soft_failed);
    assert_eq!(s.stream_of_event("$m1").unwrap(), Some(pos));
    assert_eq!(s.max_stream_ordering().unwrap(), pos);
    assert!(s.get_event("$nope").unwrap().is_none());
    assert_eq!(s.stream_of_event("$nope").unwrap(), None);
}

fn event_positions_increase(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    let start = s.max_stream_ordering().unwrap();
    assert!(start > 0, "the create event has a position");
    let mut last = start;
    for i in 0..5 {
        let (pos, _) = r.send(s, &r.msg(&format!("$m{i}"), ALICE, "x"));
        assert!(pos > last, "positions strictly increase: {pos} after {last}");
        last = pos;
    }
    let rows = s.room_events("!r:test", start, MAX, false, 10).unwrap();
    assert_eq!(ids(&rows), strings(&["$m0", "$m1", "$m2", "$m3", "$m4"]));
}

fn duplicate_event_id_conflicts(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    let first = r.msg("$m1", ALICE, "first");
    r.send(s, &first);
    let again = r.msg("$m1", ALICE, "second").destinations(&["remote.test"]);
    assert!(matches!(r.try_send(s, &again), Err(StorageError::Conflict)), "an event is stored once");
    assert_eq!(parse(&s.get_event("$m1").unwrap().unwrap().json), first.value());
    assert_eq!(ids(&s.room_events("!r:test", 0, MAX, false, 10).unwrap()), strings(&["$create-!r:test", "$m1"]));
    assert_eq!(s.outbox("remote.test", 10).unwrap(), vec![], "nothing of the refused event is written");
}

fn rejected_and_soft_failed_stay_out_of_timeline(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    let start = s.max_stream_ordering().unwrap();
    r.send(s, &r.msg("$ok1", ALICE, "one"));
    r.send(s, &r.msg("$rej", ALICE, "rejected").rejected());
    r.send(s, &r.msg("$soft", ALICE, "soft-failed").soft_failed());
    assert_eq!(s.get_forward_extremities("!r:test").unwrap(), strings(&["$ok1"]), "only accepted events extend");
    r.send(s, &r.msg("$ok2", ALICE, "two"));

    let end = s.max_stream_ordering().unwrap();
    assert_eq!(ids(&s.room_events("!r:test", start, end, false, 10).unwrap()), strings(&["$ok1", "$ok2"]));
    assert_eq!(ids(&s.room_events("!r:test", start, end, true, 10).unwrap()), strings(&["$ok2", "$ok1"]));
    let between: Vec<_> = s.events_between(start, end, 10).unwrap().into_iter().map(|(_, e)| e).collect();
    assert_eq!(ids(&between), strings(&["$ok1", "$ok2"]));
    let rej = s.get_event("$rej").unwrap().expect("rejected events are stored");
    assert!(rej.rejected && !rej.soft_failed);
    let soft = s.get_event("$soft").unwrap().expect("soft-failed events are stored");
    assert!(soft.soft_failed && !soft.rejected);
    assert_eq!(s.get_forward_extremities("!r:test").unwrap(), strings(&["$ok2"]));
}

fn room_events_range_direction_limit(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    let mut other = TestRoom::new(s, "!other:test");
    let start = s.max_stream_ordering().unwrap();
    let mut p = Vec::new();
    for i in 1..=5 {
        p.push(r.send(s, &r.msg(&format!("$e{i}"), ALICE, "x")).0);
        if i == 2 {
            other.send(s, &other.msg("$x", ALICE, "elsewhere"));
        }
    }
    let room = "!r:test";
    assert_eq!(
        ids(&s.room_events(room, start, MAX, false, 10).unwrap()),
        strings(&["$e1", "$e2", "$e3", "$e4", "$e5"])
    );
    assert_eq!(ids(&s.room_events(room, start, MAX, false, 2).unwrap()), strings(&["$e1", "$e2"]));
    assert_eq!(ids(&s.room_events(room, start, MAX, true, 2).unwrap()), strings(&["$e5", "$e4"]));
    assert_eq!(ids(&s.room_events(room, p[0], p[2], false, 10).unwrap()), strings(&["$e2", "$e3"]), "(from, to]");
    assert_eq!(ids(&s.room_events(room, p[0], p[2], true, 10).unwrap()), strings(&["$e3", "$e2"]));
    assert_eq!(ids(&s.room_events(room, p[4], MAX, false, 10).unwrap()), Vec::<String>::new());
}

fn events_between_all_rooms_oldest_first(s: &dyn Storage) {
    let mut a = TestRoom::new(s, "!a:test");
    let mut b = TestRoom::new(s, "!b:test");
    let start = s.max_stream_ordering().unwrap();
    let (pa1, _) = a.send(s, &a.msg("$a1", ALICE, "x"));
    let (pb1, _) = b.send(s, &b.msg("$b1", ALICE, "x"));
    a.send(s, &a.msg("$a2", ALICE, "x"));
    let got = |from, to, limit| -> Vec<(String, String)> {
        s.events_between(from, to, limit).unwrap().into_iter().map(|(room, e)| (room, ids(&[e]).remove(0))).collect()
    };
    let pair = |r: &str, e: &str| (r.to_string(), e.to_string());
    assert_eq!(got(start, MAX, 10), vec![pair("!a:test", "$a1"), pair("!b:test", "$b1"), pair("!a:test", "$a2")]);
    assert_eq!(got(start, MAX, 2), vec![pair("!a:test", "$a1"), pair("!b:test", "$b1")]);
    assert_eq!(got(pa1, pb1, 10), vec![pair("!b:test", "$b1")]);
}

fn rooms_with_events_between_only_accepted(s: &dyn Storage) {
    let mut r1 = TestRoom::new(s, "!r1:test");
    let mut r2 = TestRoom::new(s, "!r2:test");
    let mut r3 = TestRoom::new(s, "!r3:test");
    let rooms = strings(&["!r1:test", "!r2:test", "!r3:test"]);
    let start = s.max_stream_ordering().unwrap();
    r1.send(s, &r1.msg("$a", ALICE, "x"));
    r2.send(s, &r2.msg("$b", ALICE, "x").rejected());
    let mid = s.max_stream_ordering().unwrap();
    assert_eq!(sorted(s.rooms_with_events_between(&rooms, start, mid).unwrap()), strings(&["!r1:test"]));
    r3.send(s, &r3.msg("$c", ALICE, "x"));
    let end = s.max_stream_ordering().unwrap();
    assert_eq!(sorted(s.rooms_with_events_between(&rooms, start, end).unwrap()), strings(&["!r1:test", "!r3:test"]));
    assert_eq!(s.rooms_with_events_between(&rooms, mid, end).unwrap(), strings(&["!r3:test"]));
    assert_eq!(
        s.rooms_with_events_between(&strings(&["!r2:test"]), start, end).unwrap(),
        Vec::<String>::new(),
        "only rooms asked about"
    );
}

fn forward_extremities_follow_prev_events(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    let room = "!r:test";
    assert_eq!(s.get_forward_extremities(room).unwrap(), vec![r.create_id()]);
    r.send(s, &r.msg("$a", ALICE, "x"));
    assert_eq!(s.get_forward_extremities(room).unwrap(), strings(&["$a"]));
    r.send(s, &r.msg("$b", BOB, "fork").prev(&[]));
    assert_eq!(sorted(s.get_forward_extremities(room).unwrap()), strings(&["$a", "$b"]));
    r.send(s, &r.msg("$c", ALICE, "merge").prev(&["$a", "$b"]));
    assert_eq!(s.get_forward_extremities(room).unwrap(), strings(&["$c"]));
    assert_eq!(s.get_forward_extremities("!other:test").unwrap(), Vec::<String>::new());
}

/// A room with a chain of groups: `[create snapshot, +alice, +name One, name Two]`.
fn room_with_state_chain(s: &dyn Storage) -> (TestRoom, Vec<i64>) {
    let mut r = TestRoom::new(s, "!r:test");
    let g0 = r.group.unwrap();
    let (_, g1) = r.send(s, &r.member("$alice", ALICE, "join"));
    let (_, g2) = r.send(s, &r.state("$name1", "m.room.name", "", ALICE, json!({"name": "One"})));
    let (_, g3) = r.send(s, &r.state("$name2", "m.room.name", "", ALICE, json!({"name": "Two"})));
    (r, vec![g0, g1, g2, g3])
}

fn state_groups_deltas_read_back(s: &dyn Storage) {
    let (mut r, g) = room_with_state_chain(s);
    let create = r.create_id();
    assert_eq!(HashSet::from([g[0], g[1], g[2], g[3]]).len(), 4, "each delta is a new group");
    assert_eq!(state_set(s.get_state_group(g[0]).unwrap()), HashSet::from([entry("m.room.create", "", &create)]));
    assert_eq!(
        state_set(s.get_state_group(g[2]).unwrap()),
        HashSet::from([
            entry("m.room.create", "", &create),
            entry("m.room.member", ALICE, "$alice"),
            entry("m.room.name", "", "$name1"),
        ])
    );
    assert_eq!(
        state_set(s.get_state_group(g[3]).unwrap()),
        HashSet::from([
            entry("m.room.create", "", &create),
            entry("m.room.member", ALICE, "$alice"),
            entry("m.room.name", "", "$name2"),
        ]),
        "a delta's entry replaces the same key"
    );
    // A message keeps the group.
    let (_, same) = r.send(s, &r.msg("$m", ALICE, "x"));
    assert_eq!(same, g[3], "StateChange::Same returns that group");
    assert_eq!(s.get_event("$m").unwrap().unwrap().state_group, Some(g[3]));
}

fn state_group_full_snapshot_stands_alone(s: &dyn Storage) {
    let (mut r, _) = room_with_state_chain(s);
    let snapshot = vec![entry("m.room.create", "", &r.create_id()), entry("m.room.member", BOB, "$bob")];
    let (_, g) = r
        .send(s, &r.member("$bob", BOB, "join").state_change(StateChange::New { prev: None, delta: snapshot.clone() }));
    assert_eq!(state_set(s.get_state_group(g).unwrap()), state_set(snapshot), "a snapshot holds only its entries");
    assert_eq!(s.state_group_entry(g, "m.room.name", "").unwrap(), None);
    assert_eq!(s.state_group_chain_length(g).unwrap(), 0);
}

fn state_group_entry_walks_chain(s: &dyn Storage) {
    let (r, g) = room_with_state_chain(s);
    assert_eq!(s.state_group_entry(g[3], "m.room.name", "").unwrap().as_deref(), Some("$name2"));
    assert_eq!(s.state_group_entry(g[2], "m.room.name", "").unwrap().as_deref(), Some("$name1"));
    assert_eq!(s.state_group_entry(g[3], "m.room.create", "").unwrap(), Some(r.create_id()), "from the snapshot");
    assert_eq!(s.state_group_entry(g[3], "m.room.member", ALICE).unwrap().as_deref(), Some("$alice"));
    assert_eq!(s.state_group_entry(g[3], "m.room.member", BOB).unwrap(), None);
    assert_eq!(s.state_group_entry(g[3], "m.room.topic", "").unwrap(), None);
    assert_eq!(s.state_group_entry(g[0], "m.room.name", "").unwrap(), None, "not in an older group");
}

fn state_group_chain_length_counts_deltas(s: &dyn Storage) {
    let (mut r, g) = room_with_state_chain(s);
    let lengths: Vec<i64> = g.iter().map(|g| s.state_group_chain_length(*g).unwrap()).collect();
    assert_eq!(lengths, vec![0, 1, 2, 3]);
    let snapshot = s.get_state_group(g[3]).unwrap();
    let (_, full) =
        r.send(s, &r.msg("$m", ALICE, "x").state_change(StateChange::New { prev: None, delta: snapshot.clone() }));
    assert_eq!(s.state_group_chain_length(full).unwrap(), 0);
    assert_eq!(state_set(s.get_state_group(full).unwrap()), state_set(snapshot));
    let (_, next) = r.send(s, &r.state("$topic", "m.room.topic", "", ALICE, json!({"topic": "t"})));
    assert_eq!(s.state_group_chain_length(next).unwrap(), 1);
}

fn current_state_follows_flagged_state_events(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    let room = "!r:test";
    let create = r.create_id();
    r.join(s, ALICE);
    let alice_join = r.head[0].clone();
    r.send(s, &r.state("$name1", "m.room.name", "", ALICE, json!({"name": "One"})));
    r.send(s, &r.state("$name2", "m.room.name", "", ALICE, json!({"name": "Two"})));
    r.send(s, &r.msg("$m", ALICE, "not state"));
    r.send(s, &r.state("$name3", "m.room.name", "", ALICE, json!({"name": "Three"})).keep_current_state());
    r.send(s, &r.state("$name4", "m.room.name", "", ALICE, json!({"name": "Four"})).rejected());
    let expected = HashSet::from([
        entry("m.room.create", "", &create),
        entry("m.room.member", ALICE, &alice_join),
        entry("m.room.name", "", "$name2"),
    ]);
    assert_eq!(state_set(s.get_current_state(room).unwrap()), expected);
    let rows = s.current_state_events(room).unwrap();
    assert_eq!(sorted(ids(&rows)), sorted(vec![create, alice_join, "$name2".into()]));
    assert!(rows.iter().any(|e| parse(&e.json)["content"]["name"] == "Two"));
    assert_eq!(s.get_current_state("!other:test").unwrap(), vec![]);
}

fn current_state_replaced_wholesale(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    let room = "!r:test";
    let create = r.create_id();
    r.send(s, &r.member("$alice-join", ALICE, "join"));
    r.send(s, &r.state("$name", "m.room.name", "", ALICE, json!({"name": "One"})));
    // Alice's leave arrives as an outlier; the topic in the timeline without touching current state.
    let leave = r.member("$alice-leave", ALICE, "leave");
    s.persist_outliers(&[OutlierEvent {
        event_id: leave.id.clone(),
        room_id: room.into(),
        event_type: leave.ty.clone(),
        state_key: leave.state_key.clone(),
        sender: ALICE.into(),
        membership: Some("leave".into()),
        json: leave.json(),
        rejected: false,
    }])
    .unwrap();
    r.send(s, &r.state("$topic", "m.room.topic", "", ALICE, json!({"topic": "t"})).keep_current_state());
    let new_state = vec![
        entry("m.room.create", "", &create),
        entry("m.room.member", ALICE, "$alice-leave"),
        entry("m.room.member", BOB, "$bob-join"),
        entry("m.room.topic", "", "$topic"),
    ];
    r.send(s, &r.member("$bob-join", BOB, "join").current_state(new_state.clone()));
    assert_eq!(state_set(s.get_current_state(room).unwrap()), state_set(new_state), "the name is gone");
    assert_eq!(
        sorted(s.room_memberships(room).unwrap()),
        vec![(ALICE.to_string(), "leave".to_string()), (BOB.to_string(), "join".to_string())],
        "memberships come from the events the new state names"
    );
    assert_eq!(s.rooms_for_user(BOB, "join").unwrap(), strings(&[room]));
    assert_eq!(s.rooms_for_user(ALICE, "join").unwrap(), Vec::<String>::new());
    assert_eq!(s.rooms_for_user(ALICE, "leave").unwrap(), strings(&[room]));
}

fn memberships_and_rooms_for_user(s: &dyn Storage) {
    let mut r1 = TestRoom::new(s, "!r1:test");
    let mut r2 = TestRoom::new(s, "!r2:test");
    r1.join(s, ALICE);
    r1.set_membership(s, BOB, "invite");
    r1.join(s, CAROL);
    r1.set_membership(s, CAROL, "leave");
    r2.join(s, BOB);
    r2.join(s, ALICE);
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(
        sorted(s.room_memberships("!r1:test").unwrap()),
        pairs(&[(ALICE, "join"), (BOB, "invite"), (CAROL, "leave")])
    );
    assert_eq!(s.rooms_for_user(BOB, "join").unwrap(), strings(&["!r2:test"]));
    assert_eq!(s.rooms_for_user(BOB, "invite").unwrap(), strings(&["!r1:test"]));
    assert_eq!(s.rooms_for_user(CAROL, "leave").unwrap(), strings(&["!r1:test"]));
    assert_eq!(s.rooms_for_user(CAROL, "join").unwrap(), Vec::<String>::new());
    assert_eq!(sorted(s.rooms_for_user(ALICE, "join").unwrap()), strings(&["!r1:test", "!r2:test"]));
    // Servers by room: joined members only (Bob's invite and Carol's leave do not count).
    let mut r3 = TestRoom::new(s, "!r3:test");
    r3.join(s, ALICE);
    r3.join(s, "@dan:remote.example:8448");
    r3.join(s, "@erin:remote.example:8448");
    r3.set_membership(s, "@fay:gone.example", "leave");
    assert_eq!(
        s.joined_servers_by_room().unwrap(),
        pairs(
            &[("!r3:test", "remote.example:8448"), ("!r1:test", "test"), ("!r2:test", "test"), ("!r3:test", "test"),]
        )
    );
}

fn membership_changes_latest_per_room(s: &dyn Storage) {
    let mut r1 = TestRoom::new(s, "!r1:test");
    let mut r2 = TestRoom::new(s, "!r2:test");
    let start = s.max_stream_ordering().unwrap();
    r1.join(s, BOB);
    let p2 = r1.join(s, BOB); // a profile change
    let p3 = r2.join(s, BOB);
    let p4 = r2.set_membership(s, BOB, "leave");
    r1.join(s, ALICE);
    let t = |r: &str, m: &str, p: i64| (r.to_string(), m.to_string(), p);
    assert_eq!(
        sorted(s.membership_changes(BOB, start, MAX).unwrap()),
        vec![t("!r1:test", "join", p2), t("!r2:test", "leave", p4)]
    );
    assert_eq!(s.membership_changes(BOB, p2, p3).unwrap(), vec![t("!r2:test", "join", p3)]);
    let end = s.max_stream_ordering().unwrap();
    r1.send(s, &r1.member("$ban", BOB, "ban").rejected());
    assert_eq!(s.membership_changes(BOB, end, MAX).unwrap(), vec![], "rejected member events are not changes");
    assert_eq!(s.membership_changes(CAROL, start, MAX).unwrap(), vec![]);
    // Every room's changes in a range, in order; rejected ones left out.
    let t3 = |r: &str, u: &str, m: &str| (r.to_string(), u.to_string(), m.to_string());
    assert_eq!(
        s.member_changes_between(start, p4).unwrap(),
        vec![
            t3("!r1:test", BOB, "join"),
            t3("!r1:test", BOB, "join"),
            t3("!r2:test", BOB, "join"),
            t3("!r2:test", BOB, "leave")
        ]
    );
    assert_eq!(s.member_changes_between(end, MAX).unwrap(), vec![], "rejected member events are not changes");
    // The membership as of a position: the latest accepted member event up to it.
    let at = |r: &str, p: i64| s.membership_at(BOB, r, p).unwrap();
    assert_eq!((at("!r1:test", start), at("!r1:test", p2)), (None, Some("join".to_owned())));
    assert_eq!((at("!r2:test", p3), at("!r2:test", p4)), (Some("join".to_owned()), Some("leave".to_owned())));
    assert_eq!(at("!r1:test", MAX), Some("join".to_owned()), "the rejected ban does not count");
}

fn user_memberships_name_sender_and_position(s: &dyn Storage) {
    let mut r1 = TestRoom::new(s, "!r1:test");
    let mut r2 = TestRoom::new(s, "!r2:test");
    let p1 = r1.join(s, BOB);
    let p2 = r2.set_membership(s, BOB, "invite");
    r1.join(s, ALICE);
    let mut got: Vec<(String, String, String, i64)> = s
        .user_memberships(BOB)
        .unwrap()
        .into_iter()
        .map(|m| {
            assert!(m.event_id.starts_with("$member-"), "{}", m.event_id);
            (m.room_id, m.membership, m.sender, m.stream_ordering)
        })
        .collect();
    got.sort();
    let t = |r: &str, m: &str, p: i64| (r.to_string(), m.to_string(), BOB.to_string(), p);
    assert_eq!(got, vec![t("!r1:test", "join", p1), t("!r2:test", "invite", p2)]);
    assert!(s.user_memberships(CAROL).unwrap().is_empty());
}

fn last_event_positions_by_type(s: &dyn Storage) {
    let mut r1 = TestRoom::new(s, "!r1:test");
    let mut r2 = TestRoom::new(s, "!r2:test");
    let (m1, _) = r1.send(s, &r1.msg("$m1", ALICE, "x"));
    let (n1, _) = r1.send(s, &r1.state("$n1", "m.room.name", "", ALICE, json!({"name": "One"})));
    let (m2, _) = r2.send(s, &r2.msg("$m2", ALICE, "y"));
    let (rejected, _) = r2.send(s, &r2.msg("$m3", ALICE, "z").rejected());
    let rooms = strings(&["!r1:test", "!r2:test", "!none:test"]);
    let any = sorted(s.last_event_positions(&rooms, &[], MAX).unwrap());
    assert_eq!(any, vec![("!r1:test".to_string(), n1), ("!r2:test".to_string(), m2)], "not the rejected {rejected}");
    let messages = sorted(s.last_event_positions(&rooms, &["m.room.message", "m.sticker"], MAX).unwrap());
    assert_eq!(messages, vec![("!r1:test".to_string(), m1), ("!r2:test".to_string(), m2)]);
    let before = s.last_event_positions(&rooms, &["m.room.message"], m1).unwrap();
    assert_eq!(before, vec![("!r1:test".to_string(), m1)], "nothing after `to`");
    assert!(s.last_event_positions(&[], &[], MAX).unwrap().is_empty());
}

fn state_group_at_follows_accepted_events(s: &dyn Storage) {
    let mut other = TestRoom::new(s, "!other:test");
    other.send(s, &other.msg("$o", ALICE, "x"));
    let mut r = TestRoom::new(s, "!r:test");
    let room = "!r:test";
    let p0 = s.stream_of_event(&r.create_id()).unwrap().unwrap();
    let g0 = r.group.unwrap();
    let (p1, g1) = r.send(s, &r.state("$n1", "m.room.name", "", ALICE, json!({"name": "One"})));
    let (p2, _) = r.send(s, &r.msg("$m", ALICE, "x"));
    let (p3, g_rej) = r.send(s, &r.state("$n2", "m.room.name", "", ALICE, json!({"name": "Two"})).rejected());
    assert_ne!(g_rej, g1);
    assert_eq!(s.state_group_at(room, p0 - 1).unwrap(), None, "before the room's first event");
    assert_eq!(s.state_group_at(room, p0).unwrap(), Some(g0));
    assert_eq!(s.state_group_at(room, p1).unwrap(), Some(g1));
    assert_eq!(s.state_group_at(room, p2).unwrap(), Some(g1));
    assert_eq!(s.state_group_at(room, p3).unwrap(), Some(g1), "a rejected event does not count");
    other.send(s, &other.msg("$o2", ALICE, "x"));
    assert_eq!(s.state_group_at(room, MAX).unwrap(), Some(g1), "other rooms do not count");
}

fn txn_ids_recorded_and_looked_up(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    r.send(s, &r.msg("$a", ALICE, "x").txn(ALICE, "D1", "t1"));
    r.send(s, &r.msg("$b", ALICE, "x").txn(ALICE, "D1", "t2"));
    r.send(s, &r.msg("$c", ALICE, "x"));
    r.send(s, &r.msg("$d", ALICE, "x").txn(ALICE, "D2", "t1"));
    assert_eq!(s.get_txn_event(ALICE, "D1", "t1").unwrap().as_deref(), Some("$a"));
    assert_eq!(s.get_txn_event(ALICE, "D2", "t1").unwrap().as_deref(), Some("$d"));
    assert_eq!(s.get_txn_event(ALICE, "D1", "t3").unwrap(), None);
    assert_eq!(s.get_txn_event(BOB, "D1", "t1").unwrap(), None);
    let events = strings(&["$a", "$b", "$c", "$d", "$nope"]);
    assert_eq!(
        sorted(s.txn_ids_of_events(ALICE, "D1", &events).unwrap()),
        vec![("$a".to_string(), "t1".to_string()), ("$b".to_string(), "t2".to_string())]
    );
    assert_eq!(s.txn_ids_of_events(BOB, "D1", &events).unwrap(), vec![]);
    let q = |u: &str, d: &str, t: &str, e: &str| (u.to_string(), d.to_string(), t.to_string(), e.to_string());
    assert_eq!(s.recent_txn_ids(2).unwrap(), vec![q(ALICE, "D2", "t1", "$d"), q(ALICE, "D1", "t2", "$b")]);
    assert_eq!(s.recent_txn_ids(10).unwrap().len(), 3);
}

fn repeated_txn_id_conflicts(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    r.send(s, &r.msg("$a", ALICE, "x").txn(ALICE, "D1", "t1"));
    let again = r.msg("$b", ALICE, "y").txn(ALICE, "D1", "t1");
    assert!(matches!(r.try_send(s, &again), Err(StorageError::Conflict)), "a transaction ID is used once");
    assert!(s.get_event("$b").unwrap().is_none(), "the refused event is not stored");
    assert_eq!(s.get_txn_event(ALICE, "D1", "t1").unwrap().as_deref(), Some("$a"));
    assert_eq!(s.get_forward_extremities("!r:test").unwrap(), strings(&["$a"]));
    r.send(s, &r.msg("$c", ALICE, "z").txn(ALICE, "D2", "t1"));
}

fn persist_events_commits_all_but_the_failing_ones(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    r.send(s, &r.msg("$a", ALICE, "x").txn(ALICE, "D1", "t1"));
    let batch: Vec<Ev> = [
        r.msg("$b", ALICE, "x"),
        r.msg("$c", ALICE, "x").txn(ALICE, "D1", "t1"),
        r.msg("$d", ALICE, "x").txn(ALICE, "D1", "t2"),
        r.msg("$e", ALICE, "x").txn(ALICE, "D1", "t2"),
        r.msg("$f", ALICE, "x").destinations(&["remote.test"]),
    ]
    .iter()
    .map(|e| r.prepared(e))
    .collect();
    let jsons: Vec<String> = batch.iter().map(Ev::json).collect();
    let events: Vec<NewEvent<'_>> = batch.iter().zip(&jsons).map(|(e, j)| e.as_new(j)).collect();
    let results = s.persist_events(&events);
    assert_eq!(results.len(), 5);
    assert!(matches!(results[1], Err(StorageError::Conflict)), "repeated txn ID: {:?}", results[1]);
    assert!(matches!(results[3], Err(StorageError::Conflict)), "txn ID repeated in the batch: {:?}", results[3]);
    let ok: Vec<i64> = [0, 2, 4].iter().map(|i| results[*i].as_ref().expect("committed").0).collect();
    assert!(ok[0] < ok[1] && ok[1] < ok[2], "in order: {ok:?}");
    assert!(s.get_event("$c").unwrap().is_none());
    assert!(s.get_event("$e").unwrap().is_none());
    assert_eq!(s.get_txn_event(ALICE, "D1", "t2").unwrap().as_deref(), Some("$d"));
    let timeline = s.room_events("!r:test", 0, MAX, false, 10).unwrap();
    assert_eq!(ids(&timeline), strings(&["$create-!r:test", "$a", "$b", "$d", "$f"]));
    let outbox: Vec<_> = s.outbox("remote.test", 10).unwrap().into_iter().map(|o| o.body).collect();
    assert_eq!(outbox, strings(&["$f"]));
}

fn failed_event_writes_no_outbox_row(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    r.send(s, &r.msg("$a", ALICE, "x").txn(ALICE, "D1", "t1").destinations(&["one.test"]));
    let refused = r.msg("$b", ALICE, "x").txn(ALICE, "D1", "t1").destinations(&["one.test", "two.test"]);
    assert!(r.try_send(s, &refused).is_err());
    let bodies: Vec<_> = s.outbox("one.test", 10).unwrap().into_iter().map(|o| (o.kind, o.body)).collect();
    assert_eq!(bodies, vec![("pdu".to_string(), "$a".to_string())]);
    assert_eq!(s.outbox("two.test", 10).unwrap(), vec![]);
    assert_eq!(s.outbox_destinations().unwrap(), strings(&["one.test"]));
}

fn redaction_replaces_json(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    let secret = r.msg("$m", BOB, "secret");
    let (pos, _) = r.send(s, &secret);
    let redacted = r.redacted(&secret);
    let redaction = r.event("$red", "m.room.redaction", ALICE, json!({"redacts": "$m"})).redacts("$m", &redacted);
    r.send(s, &redaction);
    let row = s.get_event("$m").unwrap().unwrap();
    assert_eq!(parse(&row.json), parse(&redacted));
    assert!(!row.json.contains("secret"));
    assert_eq!(row.stream_ordering, pos, "the event keeps its place");
    assert_eq!(parse(&s.get_event("$red").unwrap().unwrap().json), redaction.value());
    let timeline = s.room_events("!r:test", 0, MAX, false, 10).unwrap();
    assert_eq!(parse(&timeline[1].json), parse(&redacted), "the timeline serves the redacted JSON");
}

fn relations_filter_and_order(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    r.send(s, &r.msg("$p", ALICE, "parent"));
    r.send(s, &r.msg("$q", ALICE, "other parent"));
    r.send(s, &r.reply("$edit", ALICE, "m.replace", "$p"));
    let (p_t1, _) = r.send(s, &r.reply("$t1", BOB, "m.thread", "$p"));
    let react = json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$p", "key": "👍"}});
    r.send(s, &r.event("$react", "m.reaction", CAROL, react));
    r.send(s, &r.reply("$rej", BOB, "m.thread", "$p").rejected());
    r.send(s, &r.reply("$elsewhere", BOB, "m.thread", "$q"));
    let (p_t2, _) = r.send(s, &r.reply("$t2", CAROL, "m.thread", "$p"));
    let q = |rel_type, event_type, after, before, backwards, limit| RelationQuery {
        parent: "$p",
        rel_type,
        event_type,
        after,
        before,
        backwards,
        limit,
    };
    let get = |query: RelationQuery<'_>| ids(&s.relations(&query).unwrap());
    assert_eq!(get(q(None, None, 0, MAX, false, 10)), strings(&["$edit", "$t1", "$react", "$t2"]));
    assert_eq!(get(q(Some("m.thread"), None, 0, MAX, false, 10)), strings(&["$t1", "$t2"]));
    assert_eq!(get(q(None, Some("m.reaction"), 0, MAX, false, 10)), strings(&["$react"]));
    assert_eq!(get(q(Some("m.thread"), Some("m.reaction"), 0, MAX, false, 10)), Vec::<String>::new());
    assert_eq!(get(q(None, None, 0, MAX, true, 2)), strings(&["$t2", "$react"]));
    assert_eq!(get(q(None, None, p_t1, p_t2, false, 10)), strings(&["$react"]), "both bounds exclusive");
    assert_eq!(get(RelationQuery { parent: "$none", ..q(None, None, 0, MAX, false, 10) }), Vec::<String>::new());
}

fn relation_summaries_aggregated_kinds(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    r.send(s, &r.msg("$p", ALICE, "parent"));
    r.send(s, &r.msg("$q", ALICE, "parent 2"));
    let (p_edit, _) = r.send(s, &r.reply("$edit", ALICE, "m.replace", "$p"));
    let react = json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$p", "key": "x"}});
    r.send(s, &r.event("$react", "m.reaction", BOB, react));
    let (p_ref, _) = r.send(s, &r.reply("$ref", CAROL, "m.reference", "$p"));
    let (p_qt, _) = r.send(s, &r.reply("$qt", BOB, "m.thread", "$q"));
    let (p_pt, _) = r.send(s, &r.reply("$pt", BOB, "m.thread", "$p"));
    let rows = |parents: &[&str]| -> Vec<(String, String, String, String, i64)> {
        s.relation_summaries(&strings(parents))
            .unwrap()
            .into_iter()
            .map(|r| (r.parent, r.rel_type, r.event_id, r.sender, r.stream_ordering))
            .collect()
    };
    let row = |p: &str, t: &str, e: &str, u: &str, pos| (p.into(), t.into(), e.into(), u.into(), pos);
    assert_eq!(
        rows(&["$p", "$q"]),
        vec![
            row("$p", "m.replace", "$edit", ALICE, p_edit),
            row("$p", "m.reference", "$ref", CAROL, p_ref),
            row("$q", "m.thread", "$qt", BOB, p_qt),
            row("$p", "m.thread", "$pt", BOB, p_pt),
        ],
        "edits, references and threads, oldest first; no annotations"
    );
    assert_eq!(rows(&["$q"]), vec![row("$q", "m.thread", "$qt", BOB, p_qt)]);
    assert_eq!(rows(&[]), vec![]);
}

fn thread_roots_newest_first(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    let mut other = TestRoom::new(s, "!other:test");
    r.send(s, &r.msg("$root1", ALICE, "root one"));
    r.send(s, &r.msg("$root2", CAROL, "root two"));
    other.send(s, &other.msg("$root3", BOB, "elsewhere"));
    r.send(s, &r.reply("$r1a", BOB, "m.thread", "$root1"));
    let (p2, _) = r.send(s, &r.reply("$r2a", CAROL, "m.thread", "$root2"));
    let (p3, _) = r.send(s, &r.reply("$r1b", BOB, "m.thread", "$root1"));
    other.send(s, &other.reply("$r3a", BOB, "m.thread", "$root3"));
    r.send(s, &r.reply("$edit", ALICE, "m.replace", "$root2"));
    let room = "!r:test";
    let t = |id: &str, p: i64| (id.to_string(), p);
    assert_eq!(s.thread_roots(room, None, MAX, 10).unwrap(), vec![t("$root1", p3), t("$root2", p2)]);
    assert_eq!(s.thread_roots(room, None, MAX, 1).unwrap(), vec![t("$root1", p3)]);
    assert_eq!(s.thread_roots(room, None, p3, 10).unwrap(), vec![t("$root2", p2)], "latest reply before `before`");
    assert_eq!(s.thread_roots(room, Some(BOB), MAX, 10).unwrap(), vec![t("$root1", p3)], "replied");
    assert_eq!(s.thread_roots(room, Some(ALICE), MAX, 10).unwrap(), vec![t("$root1", p3)], "started it");
    assert_eq!(s.thread_roots(room, Some(CAROL), MAX, 10).unwrap(), vec![t("$root2", p2)]);
    assert_eq!(s.thread_roots(room, Some(DAVE), MAX, 10).unwrap(), vec![]);
}

fn events_by_timestamp_both_directions(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    let mut other = TestRoom::new(s, "!other:test");
    r.send(s, &r.msg("$m1", ALICE, "x").ts(TS + 1000));
    r.send(s, &r.msg("$m2", ALICE, "x").ts(TS + 2000));
    r.send(s, &r.msg("$rej", ALICE, "x").ts(TS + 2500).rejected());
    other.send(s, &other.msg("$o", ALICE, "x").ts(TS + 2600));
    r.send(s, &r.msg("$m3", ALICE, "x").ts(TS + 3000));
    let outlier = r.msg("$outlier", BOB, "x").ts(TS + 2700);
    s.persist_outliers(&[OutlierEvent {
        event_id: outlier.id.clone(),
        room_id: "!r:test".into(),
        event_type: outlier.ty.clone(),
        state_key: None,
        sender: BOB.into(),
        membership: None,
        json: outlier.json(),
        rejected: false,
    }])
    .unwrap();
    let get = |ts, forwards, limit| ids(&s.events_by_timestamp("!r:test", ts, forwards, limit).unwrap());
    assert_eq!(get(TS + 2000, true, 10), strings(&["$m2", "$m3"]), "at or after, oldest first");
    assert_eq!(get(TS + 2000, false, 2), strings(&["$m2", "$m1"]), "at or before, newest first");
    assert_eq!(get(TS + 2001, true, 10), strings(&["$m3"]));
    assert_eq!(get(TS + 1500, true, 1), strings(&["$m2"]));
    assert_eq!(get(TS + 4000, true, 10), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// Federation
// ---------------------------------------------------------------------------------------------

fn outlier(r: &TestRoom, ev: Ev) -> OutlierEvent {
    OutlierEvent {
        event_id: ev.id.clone(),
        room_id: r.id.clone(),
        event_type: ev.ty.clone(),
        state_key: ev.state_key.clone(),
        sender: ev.sender.clone(),
        membership: ev.membership.clone(),
        json: ev.json(),
        rejected: ev.rejected,
    }
}

fn outliers_stored_outside_timeline(s: &dyn Storage) {
    let r = TestRoom::new(s, "!r:test");
    let start = s.max_stream_ordering().unwrap();
    let bob = r.member("$o-bob", BOB, "join");
    let msg = r.msg("$o-msg", BOB, "from the past");
    s.persist_outliers(&[outlier(&r, bob.clone()), outlier(&r, msg.clone())]).unwrap();
    let row = s.get_event("$o-bob").unwrap().expect("reachable by ID");
    assert_eq!(parse(&row.json), bob.value());
    assert_eq!(row.state_group, None);
    assert!(!row.rejected);
    assert!(s.get_event("$o-msg").unwrap().is_some());

    assert_eq!(ids(&s.room_events("!r:test", 0, MAX, false, 10).unwrap()), vec![r.create_id()]);
    assert_eq!(s.events_between(0, MAX, 10).unwrap().len(), 1, "only the create event");
    assert_eq!(s.rooms_with_events_between(&strings(&["!r:test"]), start, MAX).unwrap(), Vec::<String>::new());
    assert_eq!(s.membership_changes(BOB, 0, MAX).unwrap(), vec![]);
    assert_eq!(s.get_current_state("!r:test").unwrap().len(), 1, "outliers are not current state");

    // Stored again (with other JSON): ignored.
    let changed = r.msg("$o-msg", BOB, "changed");
    s.persist_outliers(&[outlier(&r, changed)]).unwrap();
    assert_eq!(parse(&s.get_event("$o-msg").unwrap().unwrap().json), msg.value());
    let rejected = Ev { rejected: true, ..r.msg("$o-rej", BOB, "bad") };
    s.persist_outliers(&[outlier(&r, rejected)]).unwrap();
    assert!(s.get_event("$o-rej").unwrap().unwrap().rejected);
}

fn backfilled_events_lie_below_the_timeline(s: &dyn Storage) {
    let r = TestRoom::new(s, "!bf:test");
    let start = s.max_stream_ordering().unwrap();
    // One event already an outlier (it came with a join's state), one already in the timeline.
    let old_member = r.member("$bf-member", BOB, "join");
    s.persist_outliers(&[outlier(&r, old_member.clone())]).unwrap();
    let (older, newer) = (r.msg("$bf-older", BOB, "older"), r.msg("$bf-newer", BOB, "newer"));
    let state = vec![entry("m.room.create", "", &r.create_id()), entry("m.room.member", BOB, "$bf-member")];
    // Newest first.
    let create_again = r.msg(&r.create_id(), ALICE, "ignored: already in the timeline");
    let given = [outlier(&r, newer), outlier(&r, old_member), outlier(&r, older), outlier(&r, create_again)];
    s.persist_backfilled("!bf:test", &state, &given).unwrap();

    // Backwards from the top, below zero included: the timeline, then the backfilled events
    // newest first; the create event stays where it was.
    let rows = s.room_events("!bf:test", i64::MIN, MAX, true, 10).unwrap();
    assert_eq!(
        ids(&rows),
        vec![r.create_id(), "$bf-newer".to_owned(), "$bf-member".to_owned(), "$bf-older".to_owned()]
    );
    let backfilled = s.get_event("$bf-older").unwrap().unwrap();
    assert!(backfilled.stream_ordering < 0);
    let group = backfilled.state_group.expect("a state group");
    assert_eq!(state_set(s.get_state_group(group).unwrap()), state_set(state));
    assert_eq!(s.get_event("$bf-member").unwrap().unwrap().state_group, Some(group), "the outlier joined the timeline");
    // No sync reads them: nothing new above zero, not current state.
    assert_eq!(s.events_between(start, MAX, 10).unwrap().len(), 0);
    assert_eq!(s.get_current_state("!bf:test").unwrap().len(), 1);
}

fn server_keys_cached_and_replaced(s: &dyn Storage) {
    let key = |id: &str, k: &str, ts: i64| (id.to_string(), k.to_string(), ts);
    s.store_server_keys(
        "remote.test",
        &[key("ed25519:a", "KA", 100), key("ed25519:b", "KB", 200)],
        (r#"{"v":1}"#, 200),
    )
    .unwrap();
    assert_eq!(
        sorted(s.server_keys("remote.test").unwrap()),
        vec![key("ed25519:a", "KA", 100), key("ed25519:b", "KB", 200)]
    );
    s.store_server_keys("remote.test", &[key("ed25519:a", "KA2", 300)], (r#"{"v":2}"#, 300)).unwrap();
    assert_eq!(
        sorted(s.server_keys("remote.test").unwrap()),
        vec![key("ed25519:a", "KA2", 300), key("ed25519:b", "KB", 200)],
        "same ID replaced, others kept"
    );
    let (response, valid_until) = s.server_key_response("remote.test").unwrap().expect("cached answer");
    assert_eq!((parse(&response), valid_until), (json!({"v": 2}), 300));
    assert_eq!(s.server_keys("other.test").unwrap(), vec![]);
    assert_eq!(s.server_key_response("other.test").unwrap(), None);
}

fn outbox_rows_per_destination(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    assert_eq!(s.outbox_destinations().unwrap(), Vec::<String>::new());
    r.send(s, &r.msg("$e", ALICE, "x").destinations(&["a.test", "b.test"]));
    let edu = json!({"edu_type": "m.typing", "content": {}}).to_string();
    s.queue_edus(&[("a.test".into(), edu.clone()), ("c.test".into(), edu.clone())]).unwrap();
    assert_eq!(sorted(s.outbox_destinations().unwrap()), strings(&["a.test", "b.test", "c.test"]));

    let a = s.outbox("a.test", 10).unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!((a[0].kind.as_str(), a[0].body.as_str()), ("pdu", "$e"));
    assert_eq!((a[1].kind.as_str(), parse(&a[1].body)), ("edu", parse(&edu)));
    assert!(a[0].id < a[1].id, "queue order");
    let b = s.outbox("b.test", 10).unwrap();
    assert_eq!(b.iter().map(|o| (o.kind.as_str(), o.body.as_str())).collect::<Vec<_>>(), vec![("pdu", "$e")]);

    s.outbox_sent("b.test", &[a[0].id]).unwrap();
    assert_eq!(s.outbox("a.test", 10).unwrap(), a, "another destination's rows are not touched");
    s.outbox_sent("a.test", &[a[0].id]).unwrap();
    assert_eq!(s.outbox("a.test", 10).unwrap(), vec![a[1].clone()]);
    s.outbox_sent("b.test", &b.iter().map(|o| o.id).collect::<Vec<_>>()).unwrap();
    assert_eq!(s.outbox("b.test", 10).unwrap(), vec![]);
    assert_eq!(sorted(s.outbox_destinations().unwrap()), strings(&["a.test", "c.test"]));
}

fn outbox_limit_per_kind(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    for i in 1..=3 {
        r.send(s, &r.msg(&format!("$p{i}"), ALICE, "x").destinations(&["a.test"]));
        s.queue_edus(&[("a.test".into(), json!({"edu_type": "m.test", "content": {"n": i}}).to_string())]).unwrap();
    }
    let rows = s.outbox("a.test", 2).unwrap();
    let kinds: Vec<_> = rows.iter().map(|o| o.kind.as_str()).collect();
    assert_eq!(kinds, vec!["pdu", "edu", "pdu", "edu"], "at most 2 of each, in queue order");
    assert_eq!(rows[0].body, "$p1");
    assert_eq!(rows[2].body, "$p2");
    assert_eq!(parse(&rows[3].body)["content"]["n"], 2);
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
}

fn device_list_changes_by_range(s: &dyn Storage) {
    let start = s.max_stream_ordering().unwrap();
    let a = s.note_device_list_change(ALICE).unwrap();
    let b = s.note_device_list_change(BOB).unwrap();
    let c = s.note_device_list_change(ALICE).unwrap();
    assert!(start < a && a < b && b < c);
    assert_eq!(s.max_stream_ordering().unwrap(), c);
    assert_eq!(sorted(s.device_list_changes(start, c).unwrap()), strings(&[ALICE, BOB]), "each user once");
    assert_eq!(s.device_list_changes(a, b).unwrap(), strings(&[BOB]));
    assert_eq!(s.device_list_changes(b, c).unwrap(), strings(&[ALICE]));
    assert_eq!(s.device_list_changes(c, MAX).unwrap(), Vec::<String>::new());
    // Each user's change before a position: their own only.
    assert_eq!(s.device_list_change_before(ALICE, c).unwrap(), Some(a));
    assert_eq!(s.device_list_change_before(ALICE, a).unwrap(), None);
    assert_eq!(s.device_list_change_before(BOB, c).unwrap(), Some(b));
    assert_eq!(s.device_list_change_before(BOB, b).unwrap(), None);
    assert_eq!(s.device_list_change_before("@nobody:test", MAX).unwrap(), None);
}

fn user_signatures_and_private_changes_reach_only_the_signer(s: &dyn Storage) {
    let start = s.max_stream_ordering().unwrap();
    // Only the user-signing key: a change only its owner hears of.
    let p1 = s.set_cross_signing_keys(ALICE, &[("user_signing".into(), "{}".into())]).unwrap();
    assert_eq!(s.device_list_changes(start, p1).unwrap(), Vec::<String>::new(), "nobody else hears of it");
    assert_eq!(s.private_device_list_changes(ALICE, start, p1).unwrap(), strings(&[ALICE]));
    assert_eq!(s.private_device_list_changes(BOB, start, p1).unwrap(), Vec::<String>::new());
    // With the master key, everyone sharing a room does.
    let p2 = s
        .set_cross_signing_keys(ALICE, &[("master".into(), "{}".into()), ("user_signing".into(), "{}".into())])
        .unwrap();
    assert_eq!(s.device_list_changes(p1, p2).unwrap(), strings(&[ALICE]));
    // Alice's signature of Bob's master key: kept for Alice, replaced by a new one.
    let p3 = s.add_user_signature(ALICE, BOB, "bobkey", r#"{"n":1}"#).unwrap();
    let p4 = s.add_user_signature(ALICE, BOB, "bobkey", r#"{"n":2}"#).unwrap();
    s.add_user_signature(CAROL, BOB, "bobkey", r#"{"n":3}"#).unwrap();
    assert!(p2 < p3 && p3 < p4);
    assert_eq!(s.device_list_changes(p2, p4).unwrap(), Vec::<String>::new());
    assert_eq!(s.private_device_list_changes(ALICE, p2, p4).unwrap(), strings(&[BOB]));
    assert_eq!(s.private_device_list_changes(BOB, p2, p4).unwrap(), Vec::<String>::new());
    let t = |u: &str, k: &str, j: &str| (u.to_owned(), k.to_owned(), j.to_owned());
    assert_eq!(s.user_signatures(ALICE, &strings(&[BOB, DAVE])).unwrap(), vec![t(BOB, "bobkey", r#"{"n":2}"#)]);
    assert_eq!(s.user_signatures(BOB, &strings(&[ALICE, BOB])).unwrap(), vec![]);
}

fn remote_device_lists_cached_updated_and_forgotten(s: &dyn Storage) {
    const REMOTE: &str = "@rita:remote.test";
    const OTHER: &str = "@otto:remote.test";
    let device = |id: &str, keys: Option<&str>, name: Option<&str>| RemoteDevice {
        device_id: id.into(),
        keys: keys.map(Into::into),
        display_name: name.map(Into::into),
    };
    assert_eq!(s.remote_device_list(REMOTE).unwrap(), None);
    // Nothing cached: updates do nothing and say so.
    assert_eq!(s.update_remote_device(REMOTE, &device("D1", None, None), false, 2).unwrap(), None);
    assert_eq!(s.update_remote_cross_signing(REMOTE, &[("master".into(), "{}".into())]).unwrap(), None);
    assert_eq!(s.remote_device_list(REMOTE).unwrap(), None);

    let start = s.max_stream_ordering().unwrap();
    let list = RemoteDeviceList {
        stream_id: 7,
        devices: vec![device("D1", Some(r#"{"k":1}"#), Some("Phone")), device("D2", None, None)],
        cross_signing: vec![("master".into(), r#"{"m":1}"#.into())],
    };
    let p1 = s.replace_remote_device_list(REMOTE, &list).unwrap();
    assert!(p1 > start);
    assert_eq!(s.device_list_changes(start, p1).unwrap(), strings(&[REMOTE]), "local users hear of it");
    assert_eq!(s.remote_device_list(REMOTE).unwrap(), Some(list.clone()));

    // One device renamed with new keys, one deleted, the stream moves on.
    let p2 = s.update_remote_device(REMOTE, &device("D1", Some(r#"{"k":2}"#), Some("Tablet")), false, 8).unwrap();
    let p3 = s.update_remote_device(REMOTE, &device("D2", None, None), true, 9).unwrap();
    let p4 = s.update_remote_cross_signing(REMOTE, &[("self_signing".into(), r#"{"s":1}"#.into())]).unwrap();
    assert!(p1 < p2.unwrap() && p2 < p3 && p3 < p4);
    let got = s.remote_device_list(REMOTE).unwrap().unwrap();
    assert_eq!(got.stream_id, 9);
    assert_eq!(got.devices, vec![device("D1", Some(r#"{"k":2}"#), Some("Tablet"))]);
    assert_eq!(
        got.cross_signing,
        vec![("master".into(), r#"{"m":1}"#.into()), ("self_signing".into(), r#"{"s":1}"#.into())]
    );

    // A resync replaces the whole list.
    let fresh = RemoteDeviceList { stream_id: 3, devices: vec![device("D3", None, None)], cross_signing: vec![] };
    s.replace_remote_device_list(REMOTE, &fresh).unwrap();
    assert_eq!(s.remote_device_list(REMOTE).unwrap(), Some(fresh.clone()));
    s.replace_remote_device_list(OTHER, &fresh).unwrap();

    // Forgotten once no local user shares a joined room with them (an invite does not count).
    add_user(s, ALICE, None);
    let mut r1 = TestRoom::new(s, "!r1:test");
    let mut r2 = TestRoom::new(s, "!r2:test");
    r1.join(s, ALICE);
    r1.join(s, REMOTE);
    r1.join(s, OTHER);
    r2.join(s, ALICE);
    r2.join(s, OTHER);
    assert_eq!(s.forget_unshared_remote_device_lists("!r1:test").unwrap(), Vec::<String>::new());
    r1.set_membership(s, ALICE, "leave");
    assert_eq!(s.forget_unshared_remote_device_lists("!r2:test").unwrap(), Vec::<String>::new(), "not in r2");
    assert_eq!(s.forget_unshared_remote_device_lists("!r1:test").unwrap(), strings(&[REMOTE]), "OTHER still shares r2");
    assert_eq!(s.remote_device_list(REMOTE).unwrap(), None);
    assert_eq!(s.update_remote_device(REMOTE, &device("D3", None, None), false, 4).unwrap(), None);
    assert!(s.remote_device_list(OTHER).unwrap().is_some());
    r2.set_membership(s, ALICE, "invite");
    assert_eq!(s.forget_unshared_remote_device_lists("!r2:test").unwrap(), strings(&[OTHER]));
}

fn erased_users_marked_once(s: &dyn Storage) {
    assert_eq!(s.erased_users().unwrap(), Vec::<String>::new());
    s.mark_user_erased(BOB).unwrap();
    s.mark_user_erased(ALICE).unwrap();
    s.mark_user_erased(BOB).unwrap();
    assert_eq!(s.erased_users().unwrap(), strings(&[ALICE, BOB]));
}

fn threepid_bindings_added_listed_removed(s: &dyn Storage) {
    assert_eq!(s.threepid_bindings(ALICE).unwrap(), vec![]);
    s.add_threepid_binding(ALICE, "email", "a@example.com", "is2.test").unwrap();
    s.add_threepid_binding(ALICE, "email", "a@example.com", "is1.test").unwrap();
    s.add_threepid_binding(ALICE, "email", "a@example.com", "is1.test").unwrap();
    s.add_threepid_binding(ALICE, "msisdn", "4412345", "is1.test").unwrap();
    s.add_threepid_binding(BOB, "email", "b@example.com", "is1.test").unwrap();
    let t = |m: &str, a: &str, i: &str| (m.to_owned(), a.to_owned(), i.to_owned());
    assert_eq!(
        s.threepid_bindings(ALICE).unwrap(),
        vec![
            t("email", "a@example.com", "is1.test"),
            t("email", "a@example.com", "is2.test"),
            t("msisdn", "4412345", "is1.test")
        ],
        "once each, ordered"
    );
    s.remove_threepid_binding(ALICE, "email", "a@example.com", "is1.test").unwrap();
    s.remove_threepid_binding(ALICE, "email", "nobody@example.com", "is1.test").unwrap();
    assert_eq!(
        s.threepid_bindings(ALICE).unwrap(),
        vec![t("email", "a@example.com", "is2.test"), t("msisdn", "4412345", "is1.test")]
    );
    assert_eq!(s.threepid_bindings(BOB).unwrap(), vec![t("email", "b@example.com", "is1.test")], "others' untouched");
}

fn account_threepids_one_owner_each(s: &dyn Storage) {
    let t = |m: &str, a: &str, at: i64| ThreepidRow {
        medium: m.into(),
        address: a.into(),
        validated_at: at,
        added_at: at + 1,
    };
    assert_eq!(s.user_threepids(ALICE).unwrap(), vec![]);
    assert_eq!(s.user_by_threepid("email", "a@example.com").unwrap(), None);
    assert!(s.add_user_threepid(ALICE, &t("msisdn", "4412345", 5)).unwrap());
    assert!(s.add_user_threepid(ALICE, &t("email", "a@example.com", 10)).unwrap());
    assert!(s.add_user_threepid(ALICE, &t("email", "a@example.com", 20)).unwrap(), "the owner refreshes it");
    assert!(!s.add_user_threepid(BOB, &t("email", "a@example.com", 30)).unwrap(), "another account's address");
    assert_eq!(s.user_threepids(ALICE).unwrap(), vec![t("email", "a@example.com", 20), t("msisdn", "4412345", 5)]);
    assert_eq!(s.user_threepids(BOB).unwrap(), vec![]);
    assert_eq!(s.user_by_threepid("email", "a@example.com").unwrap().as_deref(), Some(ALICE));
    assert_eq!(s.user_by_threepid("msisdn", "a@example.com").unwrap(), None, "per medium");
    assert!(!s.remove_user_threepid(BOB, "email", "a@example.com").unwrap(), "only its owner removes it");
    assert!(s.remove_user_threepid(ALICE, "email", "a@example.com").unwrap());
    assert!(!s.remove_user_threepid(ALICE, "email", "a@example.com").unwrap());
    assert!(s.add_user_threepid(BOB, &t("email", "a@example.com", 40)).unwrap(), "free again");
    assert_eq!(s.user_by_threepid("email", "a@example.com").unwrap().as_deref(), Some(BOB));
}

fn threepid_validation_sessions_and_tokens(s: &dyn Storage) {
    let session = |sid: &str, secret: &str, attempt: i64| ThreepidSessionRow {
        session_id: sid.into(),
        medium: "email".into(),
        address: "a@example.com".into(),
        client_secret: secret.into(),
        last_send_attempt: attempt,
        validated_at: None,
    };
    assert_eq!(s.threepid_session("sid1").unwrap(), None);
    assert_eq!(s.unvalidated_threepid_session("email", "secret", "a@example.com").unwrap(), None);
    s.save_threepid_token(&session("sid1", "secret", 1), "tok1", Some("https://app.test/next?sid=sid1"), 1000).unwrap();
    s.save_threepid_token(&session("sid1", "secret", 2), "tok2", None, 2000).unwrap();
    s.save_threepid_token(&session("sid2", "other", 1), "tok3", None, 3000).unwrap();
    assert_eq!(s.threepid_session("sid1").unwrap(), Some(session("sid1", "secret", 2)), "the last attempt kept");
    assert_eq!(
        s.unvalidated_threepid_session("email", "secret", "a@example.com").unwrap(),
        Some(session("sid1", "secret", 2))
    );
    assert_eq!(s.unvalidated_threepid_session("email", "secret", "b@example.com").unwrap(), None);
    assert_eq!(s.threepid_token("sid1", "tok1").unwrap(), Some((1000, Some("https://app.test/next?sid=sid1".into()))));
    assert_eq!(s.threepid_token("sid1", "tok2").unwrap(), Some((2000, None)));
    assert_eq!(s.threepid_token("sid1", "tok3").unwrap(), None, "another session's token");
    s.validate_threepid_session("sid1", 500).unwrap();
    s.validate_threepid_session("sid1", 900).unwrap();
    assert_eq!(s.threepid_session("sid1").unwrap().unwrap().validated_at, Some(500), "the first validation counts");
    assert_eq!(s.unvalidated_threepid_session("email", "secret", "a@example.com").unwrap(), None);
    s.delete_threepid_session("sid1").unwrap();
    assert_eq!(s.threepid_session("sid1").unwrap(), None);
    assert_eq!(s.threepid_token("sid1", "tok1").unwrap(), None, "its tokens go with it");
    assert_eq!(s.threepid_token("sid2", "tok3").unwrap(), Some((3000, None)), "others' untouched");
}

// ---------------------------------------------------------------------------------------------
// Client data
// ---------------------------------------------------------------------------------------------

fn account_data_roundtrip(s: &dyn Storage) {
    s.set_account_data(ALICE, "", "m.push_rules", &json!({"a": 1})).unwrap();
    s.set_account_data(ALICE, "!r:test", "m.tag", &json!({"tags": {"u.work": {}}})).unwrap();
    assert_eq!(s.get_account_data(ALICE, "", "m.push_rules").unwrap(), Some(json!({"a": 1})));
    assert_eq!(s.get_account_data(ALICE, "!r:test", "m.tag").unwrap(), Some(json!({"tags": {"u.work": {}}})));
    assert_eq!(s.get_account_data(ALICE, "!r:test", "m.push_rules").unwrap(), None, "room data is separate");
    assert_eq!(s.get_account_data(ALICE, "", "m.tag").unwrap(), None);
    assert_eq!(s.get_account_data(BOB, "", "m.push_rules").unwrap(), None);
    s.set_account_data(ALICE, "", "m.push_rules", &json!({"a": 2})).unwrap();
    assert_eq!(s.get_account_data(ALICE, "", "m.push_rules").unwrap(), Some(json!({"a": 2})));
}

fn account_data_since_range(s: &dyn Storage) {
    let p1 = s.set_account_data(ALICE, "", "a", &json!({"v": 1})).unwrap();
    let p2 = s.set_account_data(ALICE, "!r:test", "b", &json!({"v": 1})).unwrap();
    let p3 = s.set_account_data(BOB, "", "a", &json!({"bob": true})).unwrap();
    let p4 = s.set_account_data(ALICE, "", "a", &json!({"v": 2})).unwrap();
    assert!(p1 < p2 && p2 < p3 && p3 < p4);
    let item = |r: &str, t: &str, v: Value| (r.to_string(), t.to_string(), v);
    let since = |from, to| {
        let mut v = s.account_data_since(ALICE, from, to).unwrap();
        v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        v
    };
    assert_eq!(since(0, p4), vec![item("", "a", json!({"v": 2})), item("!r:test", "b", json!({"v": 1}))]);
    assert_eq!(since(p2, p4), vec![item("", "a", json!({"v": 2}))]);
    assert_eq!(since(0, p2), vec![item("!r:test", "b", json!({"v": 1}))], "a's old position is gone");
    assert_eq!(since(p4, MAX), vec![]);
}

fn filters_per_user(s: &dyn Storage) {
    let f1 = json!({"room": {"timeline": {"limit": 10}}});
    let f2 = json!({"presence": {"types": []}});
    let id1 = s.create_filter(ALICE, &f1).unwrap();
    let id2 = s.create_filter(ALICE, &f2).unwrap();
    assert_ne!(id1, id2);
    assert_eq!(s.get_filter(ALICE, id1).unwrap(), Some(f1.clone()));
    assert_eq!(s.get_filter(ALICE, id2).unwrap(), Some(f2.clone()));
    assert_eq!(s.get_filter(BOB, id1).unwrap(), None, "another user's filter");
    assert_eq!(s.get_filter(ALICE, id1.max(id2) + 100).unwrap(), None);
    // Numbered per user from 0, as Synapse does; an imported filter keeps its number.
    assert_eq!((id1, id2), (0, 1));
    assert_eq!(s.create_filter(BOB, &f2).unwrap(), 0, "bob's first");
    s.import_filter(BOB, 7, &f1).unwrap();
    assert_eq!(s.get_filter(BOB, 7).unwrap(), Some(f1.clone()));
    assert!(matches!(s.import_filter(BOB, 7, &f2), Err(StorageError::Conflict)), "an ID taken");
    assert_eq!(s.create_filter(BOB, &f1).unwrap(), 8, "after the highest");
}

// ---------------------------------------------------------------------------------------------
// Directory
// ---------------------------------------------------------------------------------------------

fn aliases_lifecycle(s: &dyn Storage) {
    TestRoom::new(s, "!r1:test");
    TestRoom::new(s, "!r2:test");
    s.create_alias("#a:test", "!r1:test", ALICE).unwrap();
    s.create_alias("#b:test", "!r1:test", BOB).unwrap();
    s.create_alias("#c:test", "!r2:test", ALICE).unwrap();
    assert!(matches!(s.create_alias("#a:test", "!r2:test", BOB), Err(StorageError::Conflict)));
    assert_eq!(s.get_alias("#a:test").unwrap(), Some(("!r1:test".into(), ALICE.into())));
    assert_eq!(s.get_alias("#b:test").unwrap(), Some(("!r1:test".into(), BOB.into())));
    assert_eq!(sorted(s.aliases_for_room("!r1:test").unwrap()), strings(&["#a:test", "#b:test"]));
    assert!(s.delete_alias("#a:test").unwrap());
    assert!(!s.delete_alias("#a:test").unwrap());
    assert_eq!(s.get_alias("#a:test").unwrap(), None);
    assert_eq!(s.aliases_for_room("!r1:test").unwrap(), strings(&["#b:test"]));
    assert_eq!(s.aliases_for_room("!r3:test").unwrap(), Vec::<String>::new());
    // An upgrade moves a room's aliases, creators kept; other rooms' stay.
    TestRoom::new(s, "!r3:test");
    s.move_aliases("!r1:test", "!r3:test").unwrap();
    assert_eq!(s.aliases_for_room("!r1:test").unwrap(), Vec::<String>::new());
    assert_eq!(s.get_alias("#b:test").unwrap(), Some(("!r3:test".into(), BOB.into())));
    assert_eq!(s.aliases_for_room("!r2:test").unwrap(), strings(&["#c:test"]));
}

fn published_rooms_biggest_first(s: &dyn Storage) {
    let mut r1 = TestRoom::new(s, "!r1:test");
    let mut r2 = TestRoom::new(s, "!r2:test");
    let mut r3 = TestRoom::new(s, "!r3:test");
    r1.join(s, ALICE);
    r2.join(s, ALICE);
    r2.join(s, BOB);
    r2.set_membership(s, CAROL, "invite");
    r2.join(s, DAVE);
    r2.set_membership(s, DAVE, "leave");
    for u in [ALICE, BOB, CAROL] {
        r3.join(s, u);
    }
    s.set_room_public("!r1:test", true).unwrap();
    s.set_room_public("!r2:test", true).unwrap();
    let room = |r: &str, n: i64| (r.to_string(), n);
    assert_eq!(s.published_rooms().unwrap(), vec![room("!r2:test", 2), room("!r1:test", 1)]);
    assert!(s.get_room("!r2:test").unwrap().unwrap().is_public);
    s.set_room_public("!r2:test", false).unwrap();
    s.set_room_public("!r3:test", true).unwrap();
    assert_eq!(s.published_rooms().unwrap(), vec![room("!r3:test", 3), room("!r1:test", 1)]);
    assert!(!s.get_room("!r2:test").unwrap().unwrap().is_public);
}

fn appservice_room_lists_per_network(s: &dyn Storage) {
    let mut r1 = TestRoom::new(s, "!r1:test");
    let mut r2 = TestRoom::new(s, "!r2:test");
    r1.join(s, ALICE);
    r2.join(s, ALICE);
    r2.join(s, BOB);
    let room = |r: &str, n: i64| (r.to_string(), n);
    s.set_appservice_room_listed("irc", "libera", "!r1:test", true).unwrap();
    s.set_appservice_room_listed("irc", "libera", "!r1:test", true).unwrap();
    s.set_appservice_room_listed("irc", "oftc", "!r2:test", true).unwrap();
    s.set_appservice_room_listed("slack", "libera", "!r2:test", true).unwrap();
    assert_eq!(s.appservice_listed_rooms(Some(("irc", "libera"))).unwrap(), vec![room("!r1:test", 1)]);
    assert_eq!(s.appservice_listed_rooms(Some(("slack", "libera"))).unwrap(), vec![room("!r2:test", 2)]);
    assert_eq!(
        s.appservice_listed_rooms(None).unwrap(),
        vec![room("!r2:test", 2), room("!r1:test", 1)],
        "every network, each room once, biggest first"
    );
    assert_eq!(s.published_rooms().unwrap(), vec![], "not the main list");
    s.set_appservice_room_listed("irc", "libera", "!r1:test", false).unwrap();
    assert_eq!(s.appservice_listed_rooms(Some(("irc", "libera"))).unwrap(), vec![]);
    s.set_appservice_room_listed("irc", "nowhere", "!r1:test", false).unwrap();
}

fn directory_ids(hits: Vec<DirectoryUser>) -> Vec<String> {
    sorted(hits.into_iter().map(|h| h.0).collect())
}

fn user_directory_visibility(s: &dyn Storage) {
    add_user(s, ALICE, Some("Alice"));
    add_user(s, BOB, Some("Bob"));
    add_user(s, CAROL, Some("Carol"));
    add_user(s, DAVE, Some("Dave"));
    add_user(s, ERIN, Some("Erin"));
    let mut shared = TestRoom::new(s, "!shared:test");
    shared.join(s, ALICE);
    shared.join(s, BOB);
    shared.set_membership(s, CAROL, "invite");
    shared.join(s, ERIN);
    s.set_user_flag(ERIN, UserFlag::Deactivated, true).unwrap();
    let mut public = TestRoom::new(s, "!public:test");
    public.join(s, DAVE);
    s.set_room_join_rule("!public:test", "public").unwrap();

    let find =
        |term: &str, all: bool| directory_ids(s.search_user_directory(ALICE, &strings(&[term]), all, 10).unwrap());
    assert_eq!(find("bob", false), strings(&[BOB]), "shares a room");
    assert_eq!(find("carol", false), Vec::<String>::new(), "only invited");
    assert_eq!(find("dave", false), strings(&[DAVE]), "in a public room");
    assert_eq!(find("erin", false), Vec::<String>::new(), "deactivated");
    assert_eq!(find("carol", true), strings(&[CAROL]), "search_all_users");
    assert_eq!(find("erin", true), Vec::<String>::new(), "deactivated, even searching all");
    let hit = s.search_user_directory(ALICE, &strings(&["bob"]), false, 10).unwrap();
    assert_eq!(hit, vec![(BOB.to_string(), Some("Bob".to_string()), None)]);
    s.set_room_join_rule("!public:test", "invite").unwrap();
    assert_eq!(find("dave", false), Vec::<String>::new(), "no longer public");
    // The searcher finds themselves only in a public room, not through a room they share.
    assert_eq!(find("alice", false), Vec::<String>::new(), "the searcher, in a private room only");
    // A world-readable history makes a room public too.
    let readable =
        public.state("$hv", "m.room.history_visibility", "", DAVE, json!({"history_visibility": "world_readable"}));
    public.send(s, &readable);
    assert_eq!(find("dave", false), strings(&[DAVE]), "in a world-readable room");
}

fn user_directory_term_matching(s: &dyn Storage) {
    add_user(s, "@bob:test", Some("Robert Smith"));
    add_user(s, "@bobby:test", None);
    add_user(s, "@alice:test", Some("Alice"));
    add_user(s, "@under_score:test", Some("100% Real"));
    s.set_profile_field("@alice:test", ProfileField::AvatarUrl, Some("mxc://test/a")).unwrap();
    let find = |terms: &[&str]| directory_ids(s.search_user_directory(ALICE, &strings(terms), true, 10).unwrap());
    assert_eq!(find(&["bo"]), strings(&["@bob:test", "@bobby:test"]), "localpart prefix");
    assert_eq!(find(&["ROB"]), strings(&["@bob:test"]), "display name prefix, any case");
    assert_eq!(find(&["smi"]), strings(&["@bob:test"]), "a later word of the display name");
    assert_eq!(find(&["ob"]), Vec::<String>::new(), "not an infix");
    assert_eq!(find(&["bob", "smith"]), strings(&["@bob:test"]), "every term");
    assert_eq!(find(&["bob", "jones"]), Vec::<String>::new());
    assert_eq!(find(&["test"]), Vec::<String>::new(), "not the server name");
    assert_eq!(find(&["under_"]), strings(&["@under_score:test"]));
    assert_eq!(find(&["u_d"]), Vec::<String>::new(), "_ is literal");
    assert_eq!(find(&["100%"]), strings(&["@under_score:test"]));
    assert_eq!(find(&["%"]), Vec::<String>::new(), "% is literal");
    assert_eq!(s.search_user_directory(ALICE, &strings(&["bo"]), true, 1).unwrap().len(), 1, "limit");
    let alice = s.search_user_directory(BOB, &strings(&["ali"]), true, 10).unwrap();
    assert_eq!(alice, vec![(ALICE.to_string(), Some("Alice".to_string()), Some("mxc://test/a".to_string()))]);
}

// ---------------------------------------------------------------------------------------------
// Media and registration tokens
// ---------------------------------------------------------------------------------------------

fn pending_media(id: &str) -> MediaRow {
    MediaRow {
        media_id: id.into(),
        user_id: ALICE.into(),
        content_type: None,
        upload_name: None,
        length: None,
        created_ts: TS,
        pending: true,
    }
}

fn media_reserve_complete_delete(s: &dyn Storage) {
    let pending = pending_media("abc");
    s.insert_media(&pending).unwrap();
    assert_eq!(s.get_media("abc").unwrap(), Some(pending.clone()));
    let done = MediaRow {
        content_type: Some("image/png".into()),
        upload_name: Some("cat.png".into()),
        length: Some(42),
        pending: false,
        ..pending
    };
    s.insert_media(&done).unwrap();
    assert_eq!(s.get_media("abc").unwrap(), Some(done), "the upload completes the reservation");
    s.insert_media(&pending_media("def")).unwrap();
    assert_eq!(s.get_media("nope").unwrap(), None);
    s.delete_media("abc").unwrap();
    assert_eq!(s.get_media("abc").unwrap(), None);
    assert!(s.get_media("def").unwrap().is_some());
}

fn media_delete_with_thumbnails(s: &dyn Storage) {
    s.insert_media(&MediaRow { pending: false, length: Some(10), ..pending_media("abc") }).unwrap();
    s.insert_thumbnail("abc", 32, 32, "crop", "image/png", 100).unwrap();
    s.delete_media("abc").expect("a media item with thumbnails can be removed");
    assert_eq!(s.get_media("abc").unwrap(), None);
}

fn thumbnails_by_size_and_method(s: &dyn Storage) {
    s.insert_media(&MediaRow { pending: false, length: Some(10), ..pending_media("abc") }).unwrap();
    s.insert_thumbnail("abc", 32, 32, "crop", "image/png", 100).unwrap();
    s.insert_thumbnail("abc", 96, 96, "scale", "image/jpeg", 300).unwrap();
    assert_eq!(s.get_thumbnail("abc", 32, 32, "crop").unwrap(), Some(("image/png".into(), 100)));
    assert_eq!(s.get_thumbnail("abc", 96, 96, "scale").unwrap(), Some(("image/jpeg".into(), 300)));
    assert_eq!(s.get_thumbnail("abc", 32, 32, "scale").unwrap(), None);
    assert_eq!(s.get_thumbnail("abc", 32, 96, "crop").unwrap(), None);
    assert_eq!(s.get_thumbnail("other", 32, 32, "crop").unwrap(), None);
    s.insert_thumbnail("abc", 32, 32, "crop", "image/webp", 120).unwrap();
    assert_eq!(s.get_thumbnail("abc", 32, 32, "crop").unwrap(), Some(("image/webp".into(), 120)), "replaced");
}

fn registration_tokens_lifecycle(s: &dyn Storage) {
    let limited = RegistrationToken {
        token: "abc".into(),
        uses_allowed: Some(2),
        pending: 0,
        completed: 0,
        expiry_time: Some(TS),
    };
    let open =
        RegistrationToken { token: "xyz".into(), uses_allowed: None, pending: 0, completed: 0, expiry_time: None };
    s.create_registration_token(&open).unwrap();
    s.create_registration_token(&limited).unwrap();
    assert!(matches!(s.create_registration_token(&limited), Err(StorageError::Conflict)));
    assert_eq!(s.get_registration_token("abc").unwrap(), Some(limited.clone()));
    assert_eq!(s.get_registration_token("nope").unwrap(), None);
    let mut all = s.list_registration_tokens().unwrap();
    all.sort_by(|a, b| a.token.cmp(&b.token));
    assert_eq!(all, vec![limited.clone(), open.clone()]);
    s.use_registration_token("abc").unwrap();
    s.use_registration_token("abc").unwrap();
    assert_eq!(s.get_registration_token("abc").unwrap(), Some(RegistrationToken { completed: 2, ..limited.clone() }));
    assert_eq!(s.get_registration_token("xyz").unwrap(), Some(open));
    // Limits replaced (uses kept), then deleted.
    assert!(s.set_registration_token_limits("abc", None, Some(TS + 5)).unwrap());
    let changed = s.get_registration_token("abc").unwrap().unwrap();
    assert_eq!((changed.uses_allowed, changed.expiry_time, changed.completed), (None, Some(TS + 5), 2));
    assert!(!s.set_registration_token_limits("nope", None, None).unwrap());
    assert!(s.delete_registration_token("abc").unwrap());
    assert!(!s.delete_registration_token("abc").unwrap());
    assert_eq!(s.get_registration_token("abc").unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

const OTK: &str = "signed_curve25519";

fn keys(list: &[(&str, &str)]) -> Vec<(String, String, String)> {
    list.iter().map(|(alg, id)| (alg.to_string(), id.to_string(), json!({"key": id}).to_string())).collect()
}

fn otk_count(s: &dyn Storage, user: &str, device: &str, algorithm: &str) -> i64 {
    s.one_time_key_counts(user, device).unwrap().into_iter().filter(|(a, _)| a == algorithm).map(|(_, n)| n).sum()
}

/// `(key_id, parsed JSON)` of a claim.
fn claim(s: &dyn Storage, user: &str, device: &str, algorithm: &str) -> Option<(String, Value)> {
    s.claim_key(user, device, algorithm).unwrap().map(|(id, j)| (id, parse(&j)))
}

fn upload_keys_records_identity_key_changes(s: &dyn Storage) {
    let start = s.max_stream_ordering().unwrap();
    let dk1 = json!({"device_id": "D1", "keys": {"ed25519:D1": "k1"}}).to_string();
    let dk2 = json!({"device_id": "D1", "keys": {"ed25519:D1": "k2"}}).to_string();
    let p1 = s.upload_keys(ALICE, "D1", Some(&dk1), &[], &[]).unwrap().expect("new identity keys");
    assert!(p1 > start);
    assert_eq!(s.upload_keys(ALICE, "D1", Some(&dk1), &keys(&[(OTK, "A")]), &[]).unwrap(), None, "unchanged");
    assert_eq!(s.upload_keys(ALICE, "D1", None, &keys(&[(OTK, "B")]), &[]).unwrap(), None);
    let p2 = s.upload_keys(ALICE, "D1", Some(&dk2), &[], &[]).unwrap().expect("changed identity keys");
    assert!(p2 > p1);
    let stored: Vec<_> = s.device_keys(ALICE).unwrap().into_iter().map(|(d, j)| (d, parse(&j))).collect();
    assert_eq!(stored, vec![("D1".to_string(), parse(&dk2))]);
    assert_eq!(s.device_list_changes(start, p2).unwrap(), strings(&[ALICE]));
    assert_eq!(s.device_list_changes(p1, p2 - 1).unwrap(), Vec::<String>::new(), "no change between");
    assert_eq!(otk_count(s, ALICE, "D1", OTK), 2);
    assert_eq!(s.device_keys(BOB).unwrap(), vec![]);
}

fn one_time_key_keeps_first_value(s: &dyn Storage) {
    let first = vec![(OTK.to_string(), "K1".to_string(), json!({"key": "first"}).to_string())];
    let second = vec![(OTK.to_string(), "K1".to_string(), json!({"key": "second"}).to_string())];
    s.upload_keys(ALICE, "D1", None, &first, &[]).unwrap();
    s.upload_keys(ALICE, "D1", None, &second, &keys(&[("curve25519", "C1")])).unwrap();
    s.upload_keys(ALICE, "D1", None, &keys(&[("curve25519", "C2")]), &[]).unwrap();
    let mut counts = s.one_time_key_counts(ALICE, "D1").unwrap();
    counts.retain(|(_, n)| *n > 0);
    assert_eq!(sorted(counts), vec![("curve25519".to_string(), 1), (OTK.to_string(), 1)]);
    assert_eq!(claim(s, ALICE, "D1", OTK), Some(("K1".into(), json!({"key": "first"}))));
}

fn claimed_one_time_key_not_claimable_twice(s: &dyn Storage) {
    s.upload_keys(ALICE, "D1", None, &keys(&[(OTK, "K1"), (OTK, "K2")]), &[]).unwrap();
    s.upload_keys(ALICE, "D2", None, &keys(&[(OTK, "K9")]), &[]).unwrap();
    assert_eq!(otk_count(s, ALICE, "D1", OTK), 2);
    let a = claim(s, ALICE, "D1", OTK).expect("a key");
    assert_eq!(otk_count(s, ALICE, "D1", OTK), 1);
    let b = claim(s, ALICE, "D1", OTK).expect("another key");
    assert_ne!(a.0, b.0, "a claimed key is not handed out twice");
    assert_eq!(sorted(vec![a.clone(), b.clone()].into_iter().map(|k| k.0).collect()), strings(&["K1", "K2"]));
    assert_eq!(a.1, json!({"key": a.0}));
    assert_eq!(claim(s, ALICE, "D1", OTK), None, "none left, no fallback");
    assert_eq!(otk_count(s, ALICE, "D1", OTK), 0);
    assert_eq!(claim(s, ALICE, "D1", "curve25519"), None);
    assert_eq!(otk_count(s, ALICE, "D2", OTK), 1, "other devices keep theirs");
}

fn fallback_key_after_one_time_keys_run_out(s: &dyn Storage) {
    s.upload_keys(ALICE, "D1", None, &keys(&[(OTK, "K1")]), &keys(&[(OTK, "F1")])).unwrap();
    assert_eq!(s.unused_fallback_key_types(ALICE, "D1").unwrap(), strings(&[OTK]));
    assert_eq!(claim(s, ALICE, "D1", OTK), Some(("K1".into(), json!({"key": "K1"}))), "one-time keys first");
    assert_eq!(s.unused_fallback_key_types(ALICE, "D1").unwrap(), strings(&[OTK]));
    assert_eq!(claim(s, ALICE, "D1", OTK), Some(("F1".into(), json!({"key": "F1"}))));
    assert_eq!(s.unused_fallback_key_types(ALICE, "D1").unwrap(), Vec::<String>::new(), "marked used");
    assert_eq!(claim(s, ALICE, "D1", OTK), Some(("F1".into(), json!({"key": "F1"}))), "kept");
    s.upload_keys(ALICE, "D1", None, &[], &keys(&[(OTK, "F2")])).unwrap();
    assert_eq!(s.unused_fallback_key_types(ALICE, "D1").unwrap(), strings(&[OTK]), "a new fallback key");
    assert_eq!(claim(s, ALICE, "D1", OTK), Some(("F2".into(), json!({"key": "F2"}))), "replaces the old one");
    assert_eq!(s.unused_fallback_key_types(ALICE, "D2").unwrap(), Vec::<String>::new());
}

fn device_and_cross_signing_keys(s: &dyn Storage) {
    let p1 = s.upload_keys(ALICE, "D1", Some(r#"{"device_id":"D1"}"#), &[], &[]).unwrap().unwrap();
    let signed = json!({"device_id": "D1", "signatures": {ALICE: {"ed25519:master": "sig"}}}).to_string();
    let p2 = s.set_device_keys(ALICE, "D1", &signed).unwrap();
    assert!(p2 > p1);
    let stored: Vec<_> = s.device_keys(ALICE).unwrap().into_iter().map(|(d, j)| (d, parse(&j))).collect();
    assert_eq!(stored, vec![("D1".to_string(), parse(&signed))]);
    let ck = |t: &str, v: i64| (t.to_string(), json!({"usage": [t], "v": v}).to_string());
    let p3 = s.set_cross_signing_keys(ALICE, &[ck("master", 1), ck("self_signing", 1)]).unwrap();
    assert!(p3 > p2);
    let p4 = s.set_cross_signing_keys(ALICE, &[ck("master", 2)]).unwrap();
    assert!(p4 > p3);
    let mut stored: Vec<_> = s.cross_signing_keys(ALICE).unwrap().into_iter().map(|(t, j)| (t, parse(&j))).collect();
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        stored,
        vec![
            ("master".to_string(), json!({"usage": ["master"], "v": 2})),
            ("self_signing".to_string(), json!({"usage": ["self_signing"], "v": 1})),
        ]
    );
    assert_eq!(s.device_list_changes(p3, p4).unwrap(), strings(&[ALICE]));
    assert_eq!(s.device_list_changes(p1, p2).unwrap(), strings(&[ALICE]));
    assert_eq!(s.cross_signing_keys(BOB).unwrap(), vec![]);
}

fn users_sharing_rooms_joined_or_invited(s: &dyn Storage) {
    let mut r1 = TestRoom::new(s, "!r1:test");
    let mut r2 = TestRoom::new(s, "!r2:test");
    let mut r3 = TestRoom::new(s, "!r3:test");
    r1.join(s, ALICE);
    r1.join(s, BOB);
    r1.set_membership(s, CAROL, "invite");
    r1.join(s, DAVE);
    r1.set_membership(s, DAVE, "leave");
    r2.join(s, ERIN);
    r3.set_membership(s, ALICE, "invite");
    r3.join(s, "@frank:test");
    assert_eq!(sorted(s.users_sharing_rooms(ALICE).unwrap()), strings(&[ALICE, BOB, CAROL]));
    assert_eq!(sorted(s.users_sharing_rooms(BOB).unwrap()), strings(&[ALICE, BOB, CAROL]));
    assert_eq!(s.users_sharing_rooms("@loner:test").unwrap(), strings(&["@loner:test"]));
}

fn to_device_queue_and_delete(s: &dyn Storage) {
    let msg = |n: i64| json!({"type": "m.test", "content": {"n": n}}).to_string();
    let p1 = s
        .queue_to_device(ALICE, "A1", "t1", &[(BOB.into(), "B1".into(), msg(1)), (BOB.into(), "B2".into(), msg(2))])
        .unwrap()
        .expect("queued");
    let p2 = s.queue_to_device(ALICE, "A1", "t2", &[(BOB.into(), "B1".into(), msg(3))]).unwrap().expect("queued");
    assert!(p2 > p1);
    let get = |device: &str, to: i64| -> Vec<(i64, Value)> {
        s.to_device_messages(BOB, device, to).unwrap().into_iter().map(|(p, j)| (p, parse(&j))).collect()
    };
    assert_eq!(get("B1", p2), vec![(p1, parse(&msg(1))), (p2, parse(&msg(3)))]);
    assert_eq!(get("B1", p1), vec![(p1, parse(&msg(1)))], "up to `to`");
    s.delete_to_device(BOB, "B1", p1).unwrap();
    assert_eq!(get("B1", MAX), vec![(p2, parse(&msg(3)))]);
    assert_eq!(get("B2", MAX), vec![(p1, parse(&msg(2)))], "other devices keep theirs");
    s.delete_to_device(BOB, "B1", p2).unwrap();
    assert_eq!(get("B1", MAX), vec![]);
}

fn to_device_between_reads_every_recipient(s: &dyn Storage) {
    let msg = |n: i64| json!({"type": "m.test", "content": {"n": n}}).to_string();
    let p1 = s.queue_to_device(ALICE, "A1", "t1", &[(BOB.into(), "B1".into(), msg(1))]).unwrap().unwrap();
    let p2 = s
        .queue_to_device(ALICE, "A1", "t2", &[(CAROL.into(), "C1".into(), msg(2)), (BOB.into(), "B2".into(), msg(3))])
        .unwrap()
        .unwrap();
    let read = |from: i64, to: i64| -> Vec<(i64, String, String, Value)> {
        s.to_device_between(from, to).unwrap().into_iter().map(|(p, u, d, j)| (p, u, d, parse(&j))).collect()
    };
    assert_eq!(
        read(0, MAX),
        vec![
            (p1, BOB.into(), "B1".into(), parse(&msg(1))),
            (p2, CAROL.into(), "C1".into(), parse(&msg(2))),
            (p2, BOB.into(), "B2".into(), parse(&msg(3))),
        ],
        "in order, a position's messages as queued"
    );
    assert_eq!(read(p1, p2).len(), 2, "after `from`, up to `to`");
    assert_eq!(read(0, p1).len(), 1);
    assert_eq!(read(p2, MAX), vec![]);
}

fn to_device_txn_idempotent(s: &dyn Storage) {
    let m = vec![(BOB.to_string(), "B1".to_string(), json!({"type": "m.test"}).to_string())];
    let p = s.queue_to_device(ALICE, "A1", "t1", &m).unwrap();
    assert!(p.is_some());
    assert_eq!(s.queue_to_device(ALICE, "A1", "t1", &m).unwrap(), None, "the transaction was seen");
    assert_eq!(s.to_device_messages(BOB, "B1", MAX).unwrap().len(), 1, "nothing queued twice");
    assert!(s.queue_to_device(ALICE, "A2", "t1", &m).unwrap().is_some(), "another device's transaction");
    assert!(s.queue_to_device(CAROL, "A1", "t1", &m).unwrap().is_some(), "another user's transaction");
    assert_eq!(s.to_device_messages(BOB, "B1", MAX).unwrap().len(), 3);
}

fn backup_versions_lifecycle(s: &dyn Storage) {
    const ALG: &str = "m.megolm_backup.v1.curve25519-aes-sha2";
    let v1 = s.create_backup_version(ALICE, ALG, r#"{"public_key":"a"}"#).unwrap();
    let v2 = s.create_backup_version(ALICE, ALG, r#"{"public_key":"b"}"#).unwrap();
    assert!(v2 > v1);
    let newest = s.backup_version(ALICE, None).unwrap().expect("a version");
    assert_eq!((newest.version, newest.algorithm.as_str()), (v2, ALG));
    assert_eq!(parse(&newest.auth_data), json!({"public_key": "b"}));
    assert_eq!(s.backup_version(BOB, None).unwrap(), None);

    assert!(s.update_backup_version(ALICE, v1, "other.alg", r#"{"public_key":"c"}"#).unwrap());
    let v = s.backup_version(ALICE, Some(v1)).unwrap().unwrap();
    assert_eq!((v.algorithm.as_str(), parse(&v.auth_data)), ("other.alg", json!({"public_key": "c"})));
    assert!(!s.update_backup_version(ALICE, v2 + 10, ALG, "{}").unwrap());
    assert!(!s.update_backup_version(BOB, v1, ALG, "{}").unwrap());

    assert!(s.delete_backup_version(ALICE, v2).unwrap());
    assert!(!s.delete_backup_version(ALICE, v2).unwrap());
    assert_eq!(s.backup_version(ALICE, Some(v2)).unwrap(), None);
    assert!(!s.update_backup_version(ALICE, v2, ALG, "{}").unwrap(), "a deleted version is not live");
    assert_eq!(s.backup_version(ALICE, None).unwrap().map(|v| v.version), Some(v1));
    let v3 = s.create_backup_version(ALICE, ALG, "{}").unwrap();
    assert!(v3 > v2, "version numbers are not reused");
}

fn backup_keys_and_etags(s: &dyn Storage) {
    let v = s.create_backup_version(ALICE, "alg", "{}").unwrap();
    let etag = || s.backup_version(ALICE, Some(v)).unwrap().unwrap().etag;
    let k = |room: &str, session: &str, n: i64| (room.to_string(), session.to_string(), json!({"n": n}).to_string());
    let e0 = etag();
    s.put_backup_keys(ALICE, v, &[k("!r1", "s1", 1), k("!r1", "s2", 2), k("!r2", "s3", 3)]).unwrap();
    let e1 = etag();
    assert!(e1 > e0, "etag bumped by a put");
    assert_eq!(s.count_backup_keys(ALICE, v).unwrap(), 3);
    let get = |room: Option<&str>, session: Option<&str>| -> Vec<(String, String, Value)> {
        sorted(s.backup_keys(ALICE, v, room, session).unwrap())
            .into_iter()
            .map(|(r, ss, j)| (r, ss, parse(&j)))
            .collect()
    };
    let parsed = |(r, ss, j): (String, String, String)| (r, ss, parse(&j));
    assert_eq!(get(None, None).len(), 3);
    assert_eq!(get(Some("!r1"), None), vec![parsed(k("!r1", "s1", 1)), parsed(k("!r1", "s2", 2))]);
    assert_eq!(get(Some("!r1"), Some("s2")), vec![parsed(k("!r1", "s2", 2))]);
    s.put_backup_keys(ALICE, v, &[k("!r1", "s1", 10)]).unwrap();
    let e2 = etag();
    assert!(e2 > e1);
    assert_eq!(get(Some("!r1"), Some("s1")), vec![parsed(k("!r1", "s1", 10))], "replaced");
    assert_eq!(s.count_backup_keys(ALICE, v).unwrap(), 3);

    let other = s.create_backup_version(ALICE, "alg", "{}").unwrap();
    s.put_backup_keys(ALICE, other, &[k("!r9", "s9", 9)]).unwrap();
    assert_eq!(s.count_backup_keys(ALICE, v).unwrap(), 3, "versions are separate");

    s.delete_backup_keys(ALICE, v, Some("!r1"), Some("s1")).unwrap();
    let e3 = etag();
    assert!(e3 > e2, "etag bumped by a delete");
    assert_eq!(s.count_backup_keys(ALICE, v).unwrap(), 2);
    s.delete_backup_keys(ALICE, v, Some("!r2"), None).unwrap();
    assert_eq!(get(None, None), vec![parsed(k("!r1", "s2", 2))]);
    s.delete_backup_keys(ALICE, v, None, None).unwrap();
    assert_eq!(s.count_backup_keys(ALICE, v).unwrap(), 0);
    assert_eq!(s.count_backup_keys(ALICE, other).unwrap(), 1);
    assert!(s.delete_backup_version(ALICE, other).unwrap());
    assert_eq!(s.count_backup_keys(ALICE, other).unwrap(), 0, "a deleted version's keys go");
}

// ---------------------------------------------------------------------------------------------
// Ephemeral
// ---------------------------------------------------------------------------------------------

fn receipt(room: &str, receipt_type: &str, user: &str, thread: &str, event: &str, ts: i64) -> ReceiptRow {
    ReceiptRow {
        room_id: room.into(),
        receipt_type: receipt_type.into(),
        user_id: user.into(),
        thread_id: thread.into(),
        event_id: event.into(),
        ts,
    }
}

fn sorted_receipts(mut v: Vec<ReceiptRow>) -> Vec<ReceiptRow> {
    v.sort_by(|a, b| {
        (&a.room_id, &a.receipt_type, &a.user_id, &a.thread_id).cmp(&(
            &b.room_id,
            &b.receipt_type,
            &b.user_id,
            &b.thread_id,
        ))
    });
    v
}

fn receipts_replace_previous(s: &dyn Storage) {
    let room = "!r:test";
    let rooms = strings(&[room]);
    let p1 = s.set_receipt(&receipt(room, "m.read", ALICE, "", "$e1", TS)).unwrap();
    let r2 = receipt(room, "m.read", ALICE, "", "$e2", TS + 1);
    let p2 = s.set_receipt(&r2).unwrap();
    assert!(p2 > p1);
    assert_eq!(s.receipts_between(&rooms, 0, p2).unwrap(), vec![r2.clone()], "the previous receipt is replaced");
    let threaded = receipt(room, "m.read", ALICE, "$root", "$e1", TS + 2);
    let private = receipt(room, "m.read.private", ALICE, "", "$e1", TS + 3);
    let bob = receipt(room, "m.read", BOB, "", "$e1", TS + 4);
    let p3 = s.set_receipt(&threaded).unwrap();
    s.set_receipt(&private).unwrap();
    s.set_receipt(&bob).unwrap();
    assert_eq!(
        sorted_receipts(s.receipts_between(&rooms, 0, MAX).unwrap()),
        sorted_receipts(vec![r2.clone(), threaded.clone(), private.clone(), bob.clone()]),
        "one per (type, user, thread)"
    );
    assert_eq!(
        sorted_receipts(s.receipts_between(&rooms, p2, MAX).unwrap()),
        sorted_receipts(vec![threaded, private, bob])
    );
    let moved = receipt(room, "m.read", ALICE, "", "$e3", TS + 5);
    let p6 = s.set_receipt(&moved).unwrap();
    assert_eq!(s.receipts_between(&rooms, p3, p6).unwrap().len(), 3);
    assert_eq!(s.receipts_between(&rooms, p1, p2).unwrap(), vec![], "its old position is gone");
}

fn receipts_since_and_room_filter(s: &dyn Storage) {
    let a = receipt("!a:test", "m.read", ALICE, "", "$a", TS);
    let b = receipt("!b:test", "m.read", ALICE, "", "$b", TS);
    let c = receipt("!c:test", "m.read", BOB, "", "$c", TS);
    let p1 = s.set_receipt(&a).unwrap();
    let p2 = s.set_receipt(&b).unwrap();
    let p3 = s.set_receipt(&c).unwrap();
    assert_eq!(s.receipts_between(&strings(&["!a:test"]), 0, MAX).unwrap(), vec![a.clone()]);
    assert_eq!(
        sorted_receipts(s.receipts_between(&strings(&["!a:test", "!c:test"]), 0, MAX).unwrap()),
        vec![a.clone(), c.clone()]
    );
    assert_eq!(s.receipts_between(&[], 0, MAX).unwrap(), vec![]);
    assert_eq!(sorted_receipts(s.receipts_since(0, p3).unwrap()), vec![a, b.clone(), c.clone()]);
    assert_eq!(sorted_receipts(s.receipts_since(p1, p3).unwrap()), vec![b.clone(), c]);
    assert_eq!(s.receipts_since(p1, p2).unwrap(), vec![b]);
    assert_eq!(s.receipts_since(p3, MAX).unwrap(), vec![]);
}

fn read_positions_use_unthreaded_read_receipts(s: &dyn Storage) {
    let mut r1 = TestRoom::new(s, "!r1:test");
    let mut r2 = TestRoom::new(s, "!r2:test");
    let (p1, _) = r1.send(s, &r1.msg("$e1", BOB, "x"));
    let (p2, _) = r1.send(s, &r1.msg("$e2", BOB, "x"));
    let (p3, _) = r1.send(s, &r1.msg("$e3", BOB, "x"));
    let (q1, _) = r2.send(s, &r2.msg("$f1", BOB, "x"));
    let r = "!r1:test";
    assert_eq!(s.read_position(r, ALICE).unwrap(), 0, "no receipt");
    s.set_receipt(&receipt(r, "m.read", ALICE, "", "$e1", TS)).unwrap();
    assert_eq!(s.read_position(r, ALICE).unwrap(), p1);
    s.set_receipt(&receipt(r, "m.read.private", ALICE, "", "$e2", TS)).unwrap();
    assert_eq!(s.read_position(r, ALICE).unwrap(), p2, "the newer of m.read and m.read.private");
    s.set_receipt(&receipt(r, "m.read", ALICE, "$e1", "$e3", TS)).unwrap();
    assert_eq!(s.read_position(r, ALICE).unwrap(), p2, "a threaded receipt does not count");
    s.set_receipt(&receipt(r, "m.fully_read", ALICE, "", "$e3", TS)).unwrap();
    assert_eq!(s.read_position(r, ALICE).unwrap(), p2, "only read receipts count");
    s.set_receipt(&receipt(r, "m.read", ALICE, "main", "$e3", TS)).unwrap();
    assert_eq!(s.read_position(r, ALICE).unwrap(), p3, "the main thread counts");
    s.set_receipt(&receipt("!r2:test", "m.read", ALICE, "", "$f1", TS)).unwrap();
    assert_eq!(
        sorted(s.read_positions(ALICE).unwrap()),
        vec![("!r1:test".to_string(), p3), ("!r2:test".to_string(), q1)]
    );
    assert_eq!(s.read_position(r, BOB).unwrap(), 0);
    assert_eq!(s.read_positions(BOB).unwrap(), vec![]);
    // One type's unthreaded receipt.
    assert_eq!(s.receipt_position(r, ALICE, "m.read").unwrap(), Some(p1), "the unthreaded m.read");
    assert_eq!(s.receipt_position(r, ALICE, "m.read.private").unwrap(), Some(p2));
    assert_eq!(s.receipt_position(r, BOB, "m.read").unwrap(), None);
}

fn join_positions_track_current_stay(s: &dyn Storage) {
    let mut r1 = TestRoom::new(s, "!r1:test");
    let mut r2 = TestRoom::new(s, "!r2:test");
    let mut r3 = TestRoom::new(s, "!r3:test");
    let mut r4 = TestRoom::new(s, "!r4:test");
    let p1 = r1.join(s, ALICE);
    r1.join(s, ALICE); // a profile change
    r2.join(s, ALICE);
    r2.set_membership(s, ALICE, "leave");
    let q3 = r2.join(s, ALICE);
    r3.join(s, ALICE);
    r3.set_membership(s, ALICE, "leave");
    r4.set_membership(s, ALICE, "invite");
    r1.join(s, BOB);
    assert_eq!(
        sorted(s.join_positions(ALICE).unwrap()),
        vec![("!r1:test".to_string(), p1), ("!r2:test".to_string(), q3)]
    );
    assert_eq!(s.join_positions(CAROL).unwrap(), vec![]);
}

fn presence(user: &str, state: &str, msg: Option<&str>, ts: i64) -> PresenceRow {
    PresenceRow { user_id: user.into(), state: state.into(), status_msg: msg.map(Into::into), last_active_ts: ts }
}

fn sorted_presence(mut v: Vec<PresenceRow>) -> Vec<PresenceRow> {
    v.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    v
}

fn presence_stored_and_ranged(s: &dyn Storage) {
    let p1 = s.set_presence(&presence(ALICE, "online", Some("hi"), TS)).unwrap();
    let bob = presence(BOB, "unavailable", None, TS + 1);
    let p2 = s.set_presence(&bob).unwrap();
    let alice = presence(ALICE, "offline", None, TS + 5);
    let p3 = s.set_presence(&alice).unwrap();
    assert!(p1 < p2 && p2 < p3);
    assert_eq!(s.get_presence(ALICE).unwrap(), Some(alice.clone()), "replaced");
    assert_eq!(s.get_presence(CAROL).unwrap(), None);
    assert_eq!(sorted_presence(s.presence_since(0, p3).unwrap()), vec![alice.clone(), bob.clone()], "each user once");
    assert_eq!(s.presence_since(p2, p3).unwrap(), vec![alice.clone()]);
    assert_eq!(s.presence_since(p1, p2).unwrap(), vec![bob.clone()]);
    assert_eq!(s.presence_since(p3, MAX).unwrap(), vec![]);
    assert_eq!(s.presence_between(&strings(&[ALICE]), 0, MAX).unwrap(), vec![alice.clone()]);
    assert_eq!(s.presence_between(&strings(&[ALICE, CAROL]), p1, p2).unwrap(), vec![]);
    assert_eq!(sorted_presence(s.presence_between(&strings(&[BOB, ALICE]), 0, p3).unwrap()), vec![alice, bob]);
}

fn pushers_append_and_replace(s: &dyn Storage) {
    let pusher =
        |user: &str, key: &str, n: i64| json!({"app_id": "app", "pushkey": key, "user": user, "n": n}).to_string();
    let parsed = |v: Vec<String>| v.iter().map(|j| parse(j)).collect::<Vec<_>>();
    s.set_pusher(ALICE, "app", "key1", &pusher(ALICE, "key1", 1), false).unwrap();
    s.set_pusher(ALICE, "app", "key1", &pusher(ALICE, "key1", 2), false).unwrap();
    assert_eq!(parsed(s.pushers(ALICE).unwrap()), vec![parse(&pusher(ALICE, "key1", 2))], "replaced");
    s.set_pusher(BOB, "app", "key1", &pusher(BOB, "key1", 1), true).unwrap();
    assert_eq!(s.pushers(ALICE).unwrap().len(), 1, "append keeps other users' pusher");
    let mut all: Vec<_> = s.all_pushers().unwrap().into_iter().map(|(u, j)| (u, parse(&j))).collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        all,
        vec![(ALICE.to_string(), parse(&pusher(ALICE, "key1", 2))), (BOB.to_string(), parse(&pusher(BOB, "key1", 1)))]
    );
    s.set_pusher(CAROL, "app", "key1", &pusher(CAROL, "key1", 1), false).unwrap();
    assert_eq!(s.pushers(ALICE).unwrap(), Vec::<String>::new(), "without append the pushkey moves");
    assert_eq!(s.pushers(BOB).unwrap(), Vec::<String>::new());
    let all: Vec<_> = s.all_pushers().unwrap().into_iter().map(|(u, j)| (u, parse(&j))).collect();
    assert_eq!(all, vec![(CAROL.to_string(), parse(&pusher(CAROL, "key1", 1)))]);
    s.set_pusher(CAROL, "app", "key2", &pusher(CAROL, "key2", 1), false).unwrap();
    assert_eq!(s.pushers(CAROL).unwrap().len(), 2);
    s.delete_pusher(CAROL, "app", "key2").unwrap();
    assert_eq!(parsed(s.pushers(CAROL).unwrap()), vec![parse(&pusher(CAROL, "key1", 1))]);
    s.delete_pusher(CAROL, "app", "nope").unwrap();
    s.delete_pusher(ALICE, "app", "key1").unwrap();
    assert_eq!(s.pushers(CAROL).unwrap().len(), 1, "deleting another user's pushkey does nothing");
}

fn stream_positions_strictly_increase(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    let start = s.max_stream_ordering().unwrap();
    let to_device = vec![(BOB.to_string(), "B1".to_string(), "{}".to_string())];
    let positions = [
        ("event", r.send(s, &r.msg("$m1", ALICE, "x")).0),
        ("account data", s.set_account_data(ALICE, "", "t", &json!({})).unwrap()),
        ("receipt", s.set_receipt(&receipt("!r:test", "m.read", ALICE, "", "$m1", TS)).unwrap()),
        ("presence", s.set_presence(&presence(ALICE, "online", None, TS)).unwrap()),
        ("to-device", s.queue_to_device(ALICE, "A1", "t1", &to_device).unwrap().unwrap()),
        ("device keys", s.upload_keys(ALICE, "A1", Some("{}"), &[], &[]).unwrap().unwrap()),
        ("signed device keys", s.set_device_keys(ALICE, "A1", r#"{"signed":true}"#).unwrap()),
        ("cross-signing", s.set_cross_signing_keys(ALICE, &[("master".into(), "{}".into())]).unwrap()),
        ("remote device list", s.note_device_list_change(BOB).unwrap()),
        ("typing", s.allocate_stream_position().unwrap()),
        ("event again", r.send(s, &r.msg("$m2", ALICE, "x")).0),
        ("account data again", s.set_account_data(ALICE, "", "t", &json!({"v": 2})).unwrap()),
    ];
    let mut last = ("start", start);
    for p in positions {
        assert!(p.1 > last.1, "{} at {} is not after {} at {}", p.0, p.1, last.0, last.1);
        last = p;
    }
    assert_eq!(s.max_stream_ordering().unwrap(), last.1, "max_stream_ordering is the latest of any stream");
}

// ---------------------------------------------------------------------------------------------
// Search
// ---------------------------------------------------------------------------------------------

fn search(
    s: &dyn Storage,
    rooms: &[&str],
    words: &[&str],
    keys: &[&str],
    newest_first: bool,
    offset: usize,
    limit: usize,
) -> (usize, Vec<String>) {
    let (count, hits) =
        s.search_events(&strings(rooms), &strings(words), &strings(keys), newest_first, offset, limit).unwrap();
    if !newest_first {
        assert!(hits.windows(2).all(|w| w[0].rank >= w[1].rank), "best rank first: {hits:?}");
    }
    for hit in &hits {
        assert!(rooms.contains(&hit.room_id.as_str()), "{hit:?} is in a room searched");
    }
    (count, hits.into_iter().map(|h| h.event_id).collect())
}

fn search_finds_just_written_events(s: &dyn Storage) {
    let mut r1 = TestRoom::new(s, "!r1:test");
    let mut r2 = TestRoom::new(s, "!r2:test");
    r1.send(s, &r1.msg("$e1", ALICE, "the quick brown fox"));
    r1.send(s, &r1.msg("$e2", BOB, "quick thinking"));
    r1.send(s, &r1.msg("$e3", ALICE, "a lazy dog"));
    r2.send(s, &r2.msg("$e4", ALICE, "quick fox"));
    r1.send(s, &r1.state("$name", "m.room.name", "", ALICE, json!({"name": "Quick Room"})));
    r1.send(s, &r1.state("$topic", "m.room.topic", "", ALICE, json!({"topic": "foxes only"})));
    let body = ["content.body"];
    assert_eq!(search(s, &["!r1:test"], &["quick"], &body, true, 0, 10), (2, strings(&["$e2", "$e1"])));
    assert_eq!(search(s, &["!r1:test"], &["qui"], &body, true, 0, 10), (2, strings(&["$e2", "$e1"])), "prefix");
    assert_eq!(search(s, &["!r1:test"], &["QUICK", "fox"], &body, true, 0, 10), (1, strings(&["$e1"])), "all words");
    assert_eq!(search(s, &["!r1:test", "!r2:test"], &["fox"], &body, true, 0, 10), (2, strings(&["$e4", "$e1"])));
    assert_eq!(search(s, &["!r1:test"], &["quick"], &["content.name"], true, 0, 10), (1, strings(&["$name"])));
    assert_eq!(search(s, &["!r1:test"], &["fox"], &["content.topic"], true, 0, 10), (1, strings(&["$topic"])));
    let (n, hits) = search(s, &["!r1:test"], &["quick"], &["content.body", "content.name"], false, 0, 10);
    assert_eq!((n, sorted(hits)), (3, strings(&["$e1", "$e2", "$name"])));
    assert_eq!(search(s, &["!r1:test"], &["quick"], &body, true, 1, 1), (2, strings(&["$e1"])), "count is the total");
    assert_eq!(search(s, &["!r1:test"], &["cat"], &body, true, 0, 10), (0, vec![]));
    assert_eq!(search(s, &["!r3:test"], &["quick"], &body, true, 0, 10), (0, vec![]));
}

fn search_skips_redacted_events(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    let body = ["content.body"];
    let first = r.msg("$m1", BOB, "secret plans");
    r.send(s, &first);
    assert_eq!(search(s, &["!r:test"], &["secret"], &body, true, 0, 10), (1, strings(&["$m1"])));
    let red1 = r.event("$red1", "m.room.redaction", BOB, json!({"redacts": "$m1"})).redacts("$m1", &r.redacted(&first));
    r.send(s, &red1);
    assert_eq!(search(s, &["!r:test"], &["secret"], &body, true, 0, 10), (0, vec![]), "redacted after indexing");
    let second = r.msg("$m2", BOB, "hidden treasure");
    r.send(s, &second);
    let red2 =
        r.event("$red2", "m.room.redaction", BOB, json!({"redacts": "$m2"})).redacts("$m2", &r.redacted(&second));
    r.send(s, &red2);
    assert_eq!(search(s, &["!r:test"], &["treasure"], &body, true, 0, 10), (0, vec![]), "redacted before indexing");
    r.send(s, &r.msg("$m3", BOB, "secret treasure"));
    assert_eq!(search(s, &["!r:test"], &["secret"], &body, true, 0, 10), (1, strings(&["$m3"])));
}

fn search_skips_rejected_events(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    r.send(s, &r.msg("$bad", BOB, "forbidden words").rejected());
    r.send(s, &r.msg("$good", BOB, "allowed words"));
    let body = ["content.body"];
    assert_eq!(search(s, &["!r:test"], &["words"], &body, true, 0, 10), (1, strings(&["$good"])));
    assert_eq!(search(s, &["!r:test"], &["forbidden"], &body, true, 0, 10), (0, vec![]));
}

fn transient_records_expire(s: &dyn Storage) {
    s.put_transient("uia_session", "a", "{}", 1_000).unwrap();
    assert_eq!(s.get_transient("uia_session", "a", 999).unwrap().as_deref(), Some("{}"));
    assert_eq!(s.get_transient("uia_session", "a", 1_000).unwrap().as_deref(), Some("{}"), "valid up to its expiry");
    assert_eq!(s.get_transient("uia_session", "a", 1_001).unwrap(), None, "gone after it");
    assert_eq!(s.get_transient("openid_token", "a", 0).unwrap(), None, "kinds are separate");
    // Replacing extends it; an expired record is dropped when anything is stored.
    s.put_transient("uia_session", "a", "{\"completed\":[]}", i64::MAX).unwrap();
    assert_eq!(s.get_transient("uia_session", "a", 5_000).unwrap().as_deref(), Some("{\"completed\":[]}"));
    assert_eq!(s.take_transient("uia_session", "missing", 0).unwrap(), None);
    // Listing a kind: its live records by key, no other kind's.
    let far = i64::MAX - 1;
    s.put_transient("pending_mail", "b", "2", far).unwrap();
    s.put_transient("pending_mail", "a", "1", far).unwrap();
    s.put_transient("pending_mail", "c", "3", far - 10).unwrap();
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
    assert_eq!(s.transient_entries("pending_mail", 0).unwrap(), pairs(&[("a", "1"), ("b", "2"), ("c", "3")]));
    assert_eq!(s.transient_entries("pending_mail", far - 5).unwrap(), pairs(&[("a", "1"), ("b", "2")]));
    assert_eq!(s.take_transient("pending_mail", "a", 0).unwrap().as_deref(), Some("1"));
    assert_eq!(s.transient_entries("pending_mail", 0).unwrap(), pairs(&[("b", "2"), ("c", "3")]));
    assert!(s.transient_entries("nothing", 0).unwrap().is_empty());
}

fn transient_records_are_taken_once(s: &dyn Storage) {
    s.put_transient("registration_nonce", "n", "", i64::MAX).unwrap();
    assert_eq!(s.take_transient("registration_nonce", "n", 0).unwrap().as_deref(), Some(""));
    assert_eq!(s.take_transient("registration_nonce", "n", 0).unwrap(), None, "single use");
    assert_eq!(s.get_transient("registration_nonce", "n", 0).unwrap(), None);
    // An expired record cannot be taken either (and is gone afterwards).
    s.put_transient("registration_nonce", "old", "", 10).unwrap();
    assert_eq!(s.take_transient("registration_nonce", "old", 11).unwrap(), None);
}

fn appservice_transactions_are_recorded_before_sending(s: &dyn Storage) {
    let fresh = s.appservice_state("irc", 40).unwrap();
    assert_eq!(fresh, AppserviceState { position: 40, last_txn_id: 0, pending: None }, "starts where it is told");
    assert_eq!(s.appservice_state("irc", 99).unwrap().position, 40, "the start applies only once");
    let txn = PendingTransaction { txn_id: 1, to_position: 45, body: "{\"events\":[]}".into() };
    // Only the transaction after the last acknowledged one, and one at a time.
    let skipping = PendingTransaction { txn_id: 2, ..txn.clone() };
    assert!(matches!(s.begin_appservice_txn("irc", &skipping), Err(StorageError::Conflict)));
    s.begin_appservice_txn("irc", &txn).unwrap();
    assert!(matches!(s.begin_appservice_txn("irc", &txn), Err(StorageError::Conflict)), "one pending");
    let state = s.appservice_state("irc", 0).unwrap();
    assert_eq!(state.pending.as_ref(), Some(&txn), "kept for a resend after a restart");
    assert_eq!(state.position, 40, "not delivered yet");
    // Another service is separate.
    assert_eq!(s.appservice_state("telegram", 7).unwrap().pending, None);
    s.complete_appservice_txn("irc", 5).unwrap();
    assert!(s.appservice_state("irc", 0).unwrap().pending.is_some(), "acknowledging another ID does nothing");
    s.complete_appservice_txn("irc", 1).unwrap();
    assert_eq!(s.appservice_state("irc", 0).unwrap(), AppserviceState { position: 45, last_txn_id: 1, pending: None });
    s.complete_appservice_txn("irc", 1).unwrap();
    assert_eq!(s.appservice_state("irc", 0).unwrap().position, 45, "a second acknowledgement changes nothing");
    let next = PendingTransaction { txn_id: 2, to_position: 50, body: "{}".into() };
    s.begin_appservice_txn("irc", &next).unwrap();
}

fn appservice_position_only_moves_forward(s: &dyn Storage) {
    s.appservice_state("bot", 10).unwrap();
    s.advance_appservice("bot", 20).unwrap();
    s.advance_appservice("bot", 15).unwrap();
    assert_eq!(s.appservice_state("bot", 0).unwrap().position, 20, "never back");
    let txn = PendingTransaction { txn_id: 1, to_position: 30, body: "{}".into() };
    s.begin_appservice_txn("bot", &txn).unwrap();
    s.advance_appservice("bot", 40).unwrap();
    assert_eq!(s.appservice_state("bot", 0).unwrap().position, 20, "not past a pending transaction");
    // A transaction must reach past the position.
    s.complete_appservice_txn("bot", 1).unwrap();
    let stale = PendingTransaction { txn_id: 2, to_position: 30, body: "{}".into() };
    assert!(matches!(s.begin_appservice_txn("bot", &stale), Err(StorageError::Conflict)));
}

fn event_reports_page_filter_and_delete(s: &dyn Storage) {
    let report = |n: i64, room: &str, user: &str| EventReport {
        id: 0,
        received_ts: TS + n,
        room_id: room.into(),
        event_id: format!("$e{n}"),
        user_id: user.into(),
        reason: (n != 2).then(|| format!("reason {n}")),
        content: json!({"reason": format!("reason {n}"), "score": -n}),
    };
    let ids: Vec<i64> = [report(1, "!a:test", ALICE), report(2, "!b:test", BOB), report(3, "!a:test", BOB)]
        .iter()
        .map(|r| s.add_event_report(r).unwrap())
        .collect();
    assert!(ids[0] < ids[1] && ids[1] < ids[2], "IDs in arrival order");
    let query = |from, limit, forwards, user: Option<&str>, room: Option<&str>| EventReportQuery {
        from,
        limit,
        forwards,
        user_id: user.map(str::to_owned),
        room_id: room.map(str::to_owned),
    };
    let events =
        |(rows, total): (Vec<EventReport>, i64)| (rows.into_iter().map(|r| r.event_id).collect::<Vec<_>>(), total);
    assert_eq!(
        events(s.event_reports(&query(0, 10, false, None, None)).unwrap()),
        (strings(&["$e3", "$e2", "$e1"]), 3)
    );
    assert_eq!(events(s.event_reports(&query(1, 1, true, None, None)).unwrap()), (strings(&["$e2"]), 3), "a page");
    assert_eq!(events(s.event_reports(&query(0, 10, true, Some("bob"), None)).unwrap()), (strings(&["$e2", "$e3"]), 2));
    assert_eq!(events(s.event_reports(&query(0, 10, true, None, Some("!a"))).unwrap()), (strings(&["$e1", "$e3"]), 2));
    let one = s.event_report(ids[1]).unwrap().unwrap();
    assert_eq!((one.reason, one.content["score"].clone(), one.received_ts), (None, json!(-2), TS + 2));
    assert!(s.delete_event_report(ids[1]).unwrap());
    assert!(!s.delete_event_report(ids[1]).unwrap(), "gone");
    assert_eq!(s.event_report(ids[1]).unwrap(), None);
    assert_eq!(s.event_reports(&query(0, 10, true, None, None)).unwrap().1, 2);
}

fn room_and_user_reports_are_kept(s: &dyn Storage) {
    let r = s.add_room_report("!a:test", ALICE, "spam room", TS).unwrap();
    let u = s.add_user_report(BOB, ALICE, "spammer", TS + 1).unwrap();
    assert_eq!(s.room_reports().unwrap(), vec![(r, TS, "!a:test".into(), ALICE.into(), "spam room".into())]);
    assert_eq!(s.user_reports().unwrap(), vec![(u, TS + 1, BOB.into(), ALICE.into(), "spammer".into())]);
    assert!(s.delete_user_report(u).unwrap());
    assert!(!s.delete_user_report(u).unwrap(), "gone");
    assert!(s.user_reports().unwrap().is_empty());
    assert_eq!(s.room_reports().unwrap().len(), 1, "room reports untouched");
}

fn admin_user_list_filters_orders_and_pages(s: &dyn Storage) {
    let make = |id: &str, name: Option<&str>, ts: i64, admin: bool, guest: bool, gone: bool| {
        let row = UserRow { creation_ts: ts, is_admin: admin, is_guest: guest, deactivated: gone, ..user_row(id) };
        s.create_user(&row, name).unwrap();
    };
    make(ALICE, Some("Alice Liddell"), TS + 3, true, false, false);
    make(BOB, Some("Bob"), TS + 1, false, false, false);
    make(CAROL, None, TS + 2, false, true, false);
    make(DAVE, Some("Dave"), TS + 4, false, false, true);
    let list = |f: &dyn Fn(&mut UserListQuery)| {
        let mut q = UserListQuery {
            limit: 100,
            guests: true,
            forwards: true,
            deactivated: Some(false),
            ..UserListQuery::default()
        };
        f(&mut q);
        let (users, total) = s.list_users(&q).unwrap();
        (users.into_iter().map(|u| u.user.user_id).collect::<Vec<_>>(), total)
    };
    assert_eq!(list(&|_| {}), (strings(&[ALICE, BOB, CAROL]), 3), "deactivated left out by default");
    assert_eq!(list(&|q| q.deactivated = None).1, 4);
    assert_eq!(list(&|q| q.deactivated = Some(true)).1, 1, "only the deactivated");
    assert_eq!(list(&|q| q.guests = false), (strings(&[ALICE, BOB]), 2));
    assert_eq!(list(&|q| q.admins = Some(true)), (strings(&[ALICE]), 1));
    assert_eq!(list(&|q| q.admins = Some(false)).1, 2);
    assert_eq!(list(&|q| q.name = Some("LIDDELL".into())), (strings(&[ALICE]), 1), "display name, any case");
    assert_eq!(list(&|q| q.name = Some("car".into())), (strings(&[CAROL]), 1), "or user ID");
    assert_eq!(list(&|q| q.user_id = Some("Liddell".into())).1, 0, "user_id looks at the ID only");
    assert_eq!(list(&|q| q.order_by = UserOrder::CreationTs), (strings(&[BOB, CAROL, ALICE]), 3));
    assert_eq!(
        list(&|q| {
            q.order_by = UserOrder::CreationTs;
            q.forwards = false;
        }),
        (strings(&[ALICE, CAROL, BOB]), 3)
    );
    assert_eq!(list(&|q| q.order_by = UserOrder::DisplayName).0, strings(&[ALICE, BOB, CAROL]), "no name last");
    assert_eq!(
        list(&|q| {
            q.from = 1;
            q.limit = 1;
        }),
        (strings(&[BOB]), 3),
        "a page, with the whole count"
    );
    s.set_user_flag(CAROL, UserFlag::Locked, true).unwrap();
    assert_eq!(list(&|_| {}), (strings(&[ALICE, BOB]), 2), "locked left out by default");
    assert_eq!(list(&|q| q.locked = true), (strings(&[ALICE, BOB, CAROL]), 3));
    s.upsert_device(BOB, "B1", None).unwrap();
    s.touch_device(BOB, "B1", "127.0.0.1", "ua", TS + 50).unwrap();
    let (users, _) =
        s.list_users(&UserListQuery { limit: 10, guests: true, forwards: true, ..UserListQuery::default() }).unwrap();
    let bob = users.iter().find(|u| u.user.user_id == BOB).unwrap();
    assert_eq!((bob.displayname.as_deref(), bob.last_seen_ts), (Some("Bob"), Some(TS + 50)));
}

fn user_types_are_kept_and_filter_the_admin_listing(s: &dyn Storage) {
    for id in [ALICE, BOB, CAROL] {
        s.create_user(&user_row(id), None).unwrap();
    }
    assert_eq!(s.user_type(ALICE).unwrap(), None, "a regular account has none");
    s.set_user_type(BOB, Some("bot")).unwrap();
    s.set_user_type(CAROL, Some("support")).unwrap();
    assert_eq!(s.user_type(BOB).unwrap().as_deref(), Some("bot"));
    assert_eq!(s.user_type("@nobody:test").unwrap(), None);
    let list = |not: &[&str]| {
        let q = UserListQuery {
            limit: 10,
            guests: true,
            forwards: true,
            not_user_types: not.iter().map(|t| t.to_string()).collect(),
            ..UserListQuery::default()
        };
        let (users, total) = s.list_users(&q).unwrap();
        assert_eq!(users.len() as i64, total);
        users.into_iter().map(|u| (u.user.user_id, u.user_type)).collect::<Vec<_>>()
    };
    assert_eq!(
        list(&[]),
        vec![(ALICE.into(), None), (BOB.into(), Some("bot".into())), (CAROL.into(), Some("support".into()))]
    );
    let ids = |not: &[&str]| list(not).into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(ids(&["bot"]), strings(&[ALICE, CAROL]), "regular accounts stay");
    assert_eq!(ids(&[""]), strings(&[BOB, CAROL]), "only regular accounts go");
    assert_eq!(ids(&["", "support"]), strings(&[BOB]));
    s.set_user_type(BOB, None).unwrap();
    assert_eq!(ids(&["bot"]), strings(&[ALICE, BOB, CAROL]), "cleared");
}

fn admin_room_list_counts_members(s: &dyn Storage) {
    let mut r1 = TestRoom::new(s, "!r1:test");
    let mut r2 = TestRoom::new(s, "!r2:test");
    r1.join(s, ALICE);
    r2.join(s, ALICE);
    r2.join(s, BOB);
    assert_eq!(s.list_rooms().unwrap(), vec![("!r1:test".to_string(), 1), ("!r2:test".to_string(), 2)]);
    // The largest by the bytes of their events: r2 holds more events than r1.
    let largest = s.largest_rooms(10).unwrap();
    assert_eq!(largest.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(), vec!["!r2:test", "!r1:test"]);
    assert!(largest[0].1 > largest[1].1 && largest[1].1 > 0, "{largest:?}");
    assert_eq!(s.largest_rooms(1).unwrap().len(), 1);
}

fn rooms_blocked_and_unblocked(s: &dyn Storage) {
    assert_eq!(s.room_blocked_by("!r:test").unwrap(), None);
    s.block_room("!r:test", ALICE).unwrap();
    s.block_room("!r:test", "@bob:test").unwrap();
    assert_eq!(s.room_blocked_by("!r:test").unwrap().as_deref(), Some(ALICE), "the first admin stays");
    assert!(s.unblock_room("!r:test").unwrap());
    assert!(!s.unblock_room("!r:test").unwrap());
    assert_eq!(s.room_blocked_by("!r:test").unwrap(), None);
}

fn purge_history_keeps_state_extremities_and_local_events(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    r.send(s, &r.member("$alice", ALICE, "join"));
    r.send(s, &r.msg("$remote", "@bob:remote.example", "from afar"));
    r.send(s, &r.msg("$local", ALICE, "from here"));
    r.send(s, &r.state("$topic", "m.room.topic", "", ALICE, json!({"topic": "t"})));
    let (cut, _) = r.send(s, &r.msg("$late", "@bob:remote.example", "after the cut"));
    let (_, _) = r.send(s, &r.msg("$last", "@bob:remote.example", "the extremity"));
    let left = |s: &dyn Storage| -> Vec<String> {
        let rows = s.room_events("!r:test", i64::MIN, i64::MAX, false, 100).unwrap();
        rows.iter().map(|row| parse(&row.json)["event_id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(s.purge_history("!r:test", cut, false, "test").unwrap(), 1, "only the remote message before the cut");
    assert!(s.get_event("$remote").unwrap().is_none());
    assert!(left(s).contains(&"$local".to_owned()) && left(s).contains(&"$topic".to_owned()));
    assert!(left(s).contains(&"$late".to_owned()), "after the cut");
    assert_eq!(
        s.purge_history("!r:test", i64::MAX, true, "test").unwrap(),
        2,
        "local and later messages, not the extremity"
    );
    let rest = left(s);
    assert!(rest.contains(&"$alice".to_owned()) && rest.contains(&"$topic".to_owned()), "state stays: {rest:?}");
    assert!(rest.contains(&"$last".to_owned()), "the forward extremity stays: {rest:?}");
    assert!(!rest.contains(&"$local".to_owned()) && !rest.contains(&"$late".to_owned()), "{rest:?}");
    assert_eq!(s.purge_history("!unknown:test", i64::MAX, true, "test").unwrap(), 0);
}

fn extra_forward_extremities_are_dropped_but_the_newest(s: &dyn Storage) {
    assert_eq!(s.delete_extra_forward_extremities("!r:test").unwrap(), None, "no such room");
    let mut r = TestRoom::new(s, "!r:test");
    r.send(s, &r.msg("$a", ALICE, "a"));
    // Two forks on top of `$a`: three extremities' worth of history, two extremities.
    r.send(s, &Ev { prev: Some(vec!["$a".into()]), ..r.msg("$b", ALICE, "b") });
    r.send(s, &Ev { prev: Some(vec!["$a".into()]), ..r.msg("$c", ALICE, "c") });
    assert_eq!(s.get_forward_extremities("!r:test").unwrap().len(), 2);
    assert_eq!(s.delete_extra_forward_extremities("!r:test").unwrap(), Some(1));
    assert_eq!(s.get_forward_extremities("!r:test").unwrap(), vec!["$c".to_owned()], "the newest stays");
    assert_eq!(s.delete_extra_forward_extremities("!r:test").unwrap(), Some(0));
}

fn purge_room_removes_the_room_and_nothing_else(s: &dyn Storage) {
    add_user(s, ALICE, None);
    let (mut gone, _) = room_with_state_chain(s);
    gone.send(s, &gone.msg("$gone-msg", ALICE, "bye").txn(ALICE, "DEV", "t1"));
    let mut kept = TestRoom::new(s, "!kept:test");
    kept.send(s, &kept.member("$kept-alice", ALICE, "join"));
    kept.send(s, &kept.msg("$kept-msg", ALICE, "stay"));
    for room in ["!r:test", "!kept:test"] {
        s.create_alias(&format!("#{}", &room[1..]), room, ALICE).unwrap();
        s.set_account_data(ALICE, room, "m.tag", &json!({"tags": {}})).unwrap();
    }
    s.set_receipt(&ReceiptRow {
        room_id: "!r:test".into(),
        receipt_type: "m.read".into(),
        user_id: ALICE.into(),
        thread_id: String::new(),
        event_id: "$gone-msg".into(),
        ts: 1,
    })
    .unwrap();
    s.block_room("!r:test", ALICE).unwrap();

    assert!(s.purge_room("!r:test").unwrap());
    assert!(s.get_room("!r:test").unwrap().is_none());
    assert!(s.get_event("$gone-msg").unwrap().is_none());
    assert!(s.get_event("$name2").unwrap().is_none());
    assert!(s.get_current_state("!r:test").unwrap().is_empty());
    assert_eq!(s.aliases_for_room("!r:test").unwrap(), Vec::<String>::new());
    assert_eq!(s.room_blocked_by("!r:test").unwrap().as_deref(), Some(ALICE), "the block outlives the purge");
    // The other room is whole.
    assert!(s.get_room("!kept:test").unwrap().is_some());
    assert!(s.get_event("$kept-msg").unwrap().is_some());
    assert_eq!(s.get_current_state("!kept:test").unwrap().len(), 2);
    assert_eq!(s.aliases_for_room("!kept:test").unwrap(), vec!["#kept:test".to_owned()]);
    // Purging again, or an unknown room, is false.
    assert!(!s.purge_room("!r:test").unwrap());
    assert!(!s.purge_room("!never:test").unwrap());
    // The room can be made again (IDs are free once purged).
    let again = TestRoom::new(s, "!r:test");
    assert!(s.get_event(&again.create_id()).unwrap().is_some());
}

fn external_ids_one_account_each(s: &dyn Storage) {
    add_user(s, ALICE, None);
    add_user(s, "@bob:test", None);
    assert!(s.record_external_id("oidc", "a-1", ALICE).unwrap());
    assert!(s.record_external_id("oidc", "a-1", ALICE).unwrap(), "again: still hers");
    assert!(s.record_external_id("github", "77", ALICE).unwrap());
    assert!(!s.record_external_id("oidc", "a-1", "@bob:test").unwrap(), "taken by another account");
    assert_eq!(
        s.external_ids(ALICE).unwrap(),
        vec![("github".to_owned(), "77".to_owned()), ("oidc".to_owned(), "a-1".to_owned())]
    );
    assert_eq!(s.user_by_external_id("oidc", "a-1").unwrap().as_deref(), Some(ALICE));
    assert_eq!(s.user_by_external_id("oidc", "nobody").unwrap(), None);
    s.remove_external_id("oidc", "a-1", "@bob:test").unwrap();
    assert_eq!(s.user_by_external_id("oidc", "a-1").unwrap().as_deref(), Some(ALICE), "only the owner's row goes");
    s.remove_external_id("oidc", "a-1", ALICE).unwrap();
    assert_eq!(s.external_ids(ALICE).unwrap(), vec![("github".to_owned(), "77".to_owned())]);
    assert!(s.external_ids("@bob:test").unwrap().is_empty());
}

fn media_quarantined_protected_and_listed(s: &dyn Storage) {
    add_user(s, ALICE, None);
    let upload = |id: &str, user: &str, ts: i64, length: i64| MediaRow {
        media_id: id.into(),
        user_id: user.into(),
        content_type: Some("text/plain".into()),
        upload_name: None,
        length: Some(length),
        created_ts: ts,
        pending: false,
    };
    s.insert_media(&upload("old", ALICE, 10, 100)).unwrap();
    s.insert_media(&upload("new", ALICE, 20, 5)).unwrap();
    s.insert_media(&upload("safe", ALICE, 15, 100)).unwrap();
    s.insert_media(&upload("remote.example/xyz", "remote.example", 5, 100)).unwrap();
    s.insert_media(&pending_media("reserved")).unwrap();
    assert_eq!(s.media_moderation("old").unwrap(), Some(MediaModeration::default()));
    assert_eq!(s.media_moderation("none").unwrap(), None);
    assert!(s.protect_media("safe", true).unwrap());
    assert!(!s.protect_media("none", true).unwrap());
    let local = |id: &str| QuarantineTarget { key: id.into(), origin: None, media_id: id.into() };
    let remote = QuarantineTarget {
        key: "remote.example/xyz".into(),
        origin: Some("remote.example".into()),
        media_id: "xyz".into(),
    };
    let all = vec![local("old"), local("safe"), remote.clone()];
    assert_eq!(s.quarantine_changes(0, 100).unwrap(), (vec![], 0));
    assert_eq!(s.quarantine_media(&all, Some("@root:test")).unwrap(), 2, "the protected one is skipped");
    assert_eq!(s.quarantine_media(&all, Some("@root:test")).unwrap(), 2, "counted again, logged once");
    assert_eq!(s.media_moderation("old").unwrap().unwrap().quarantined_by.as_deref(), Some("@root:test"));
    assert_eq!(
        s.media_moderation("safe").unwrap(),
        Some(MediaModeration { quarantined_by: None, safe_from_quarantine: true })
    );
    let ids = |rows: Vec<MediaRow>| rows.into_iter().map(|m| m.media_id).collect::<Vec<_>>();
    let mine = s.media_of_user(ALICE).unwrap();
    assert_eq!(
        mine.iter().map(|(m, _)| m.media_id.as_str()).collect::<Vec<_>>(),
        vec!["old", "safe", "new"],
        "oldest first, no pending"
    );
    assert_eq!(mine[0].1.quarantined_by.as_deref(), Some("@root:test"));
    assert!(mine[1].1.safe_from_quarantine);
    // Old local media that may be deleted: neither quarantined nor protected, nor remote.
    assert_eq!(ids(s.local_media_before(30, 0).unwrap()), vec!["new"]);
    assert_eq!(ids(s.local_media_before(30, 10).unwrap()), Vec::<String>::new(), "size_gt");
    assert_eq!(s.quarantine_media(&[local("old")], None).unwrap(), 1);
    assert_eq!(s.quarantine_media(&[local("new")], None).unwrap(), 1, "released though never quarantined");
    let change = |id: i64, origin: Option<&str>, media: &str, q: bool| QuarantineChange {
        stream_id: id,
        origin: origin.map(str::to_owned),
        media_id: media.into(),
        quarantined: q,
    };
    let (changes, max) = s.quarantine_changes(0, 100).unwrap();
    assert_eq!(max, changes.last().unwrap().stream_id);
    let positions: Vec<i64> = changes.iter().map(|c| c.stream_id).collect();
    assert_eq!(
        changes,
        vec![
            change(positions[0], None, "old", true),
            change(positions[1], Some("remote.example"), "xyz", true),
            change(positions[2], None, "old", false)
        ],
        "in order, only what changed"
    );
    assert!(positions[0] < positions[1] && positions[1] < positions[2]);
    assert_eq!(s.quarantine_changes(positions[0], 1).unwrap().0, vec![changes[1].clone()], "after from, at most limit");
    assert_eq!(ids(s.local_media_before(30, 0).unwrap()), vec!["old", "new"]);
    assert_eq!(ids(s.local_media_before(15, 0).unwrap()), vec!["old"], "before_ts");
    s.set_profile_field(ALICE, ProfileField::AvatarUrl, Some("mxc://test/old")).unwrap();
    assert_eq!(s.profile_avatar_urls().unwrap(), vec!["mxc://test/old".to_owned()]);
    assert_eq!(s.media_uploaded_since(ALICE, 0).unwrap(), 205, "every upload of hers");
    assert_eq!(s.media_uploaded_since(ALICE, 15).unwrap(), 5, "after the time given");
    assert_eq!(s.media_uploaded_since("@nobody:test", 0).unwrap(), 0);
    // Per uploader, local only, in the time range.
    assert_eq!(s.media_usage(0, i64::MAX).unwrap(), vec![(ALICE.to_owned(), 3, 205)]);
    assert_eq!(s.media_usage(15, 20).unwrap(), vec![(ALICE.to_owned(), 2, 105)]);
    assert!(s.media_usage(21, 30).unwrap().is_empty());
}

fn events_a_user_sent_in_a_room(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    let mut other = TestRoom::new(s, "!other:test");
    r.send(s, &r.member("$alice", ALICE, "join"));
    r.send(s, &r.msg("$m1", ALICE, "one"));
    r.send(s, &r.msg("$b1", "@bob:test", "bob's"));
    r.send(s, &r.state("$topic", "m.room.topic", "", ALICE, json!({"topic": "t"})));
    r.send(s, &r.msg("$m2", ALICE, "two"));
    other.send(s, &other.msg("$o1", ALICE, "elsewhere"));
    let ids = |jsons: Vec<String>| -> Vec<String> {
        jsons.iter().map(|j| parse(j)["event_id"].as_str().unwrap().to_owned()).collect()
    };
    let sent = s.events_sent_in_room("!r:test", ALICE, &["m.room.message", "m.room.member"]).unwrap();
    assert_eq!(ids(sent), ["$m2", "$m1", "$alice"], "newest first, only the types asked for, only this room");
    assert!(s.events_sent_in_room("!r:test", "@carol:test", &["m.room.message"]).unwrap().is_empty());
    assert!(s.events_sent_in_room("!r:test", ALICE, &[]).unwrap().is_empty());
}

fn invites_sent_by_a_user(s: &dyn Storage) {
    let mut r = TestRoom::new(s, "!r:test");
    r.send(s, &r.member("$alice", ALICE, "join"));
    let invite = Ev {
        membership: Some("invite".into()),
        ..r.state("$inv", "m.room.member", "@bob:test", ALICE, json!({"membership": "invite"}))
    };
    r.send(s, &invite);
    r.send(s, &r.msg("$m", ALICE, "not an invite"));
    let sent = s.invites_sent_by(ALICE).unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(parse(&sent[0])["event_id"], "$inv");
    assert!(s.invites_sent_by("@bob:test").unwrap().is_empty());
}

fn account_validity_is_kept_found_by_token_and_listed_when_expiring(s: &dyn Storage) {
    for id in [ALICE, BOB, CAROL] {
        s.create_user(&user_row(id), None).unwrap();
    }
    assert_eq!(s.account_validity(ALICE).unwrap(), None);
    assert_eq!(s.accounts_without_validity().unwrap(), strings(&[ALICE, BOB, CAROL]));
    let validity = |user: &str, expiration_ts: i64, token: Option<&str>| AccountValidity {
        user_id: user.into(),
        expiration_ts,
        email_sent: false,
        renewal_token: token.map(str::to_owned),
        token_used_ts: None,
    };
    s.set_account_validity(&validity(ALICE, TS + 100, None)).unwrap();
    s.set_account_validity(&validity(BOB, TS + 300, Some("bobs-token"))).unwrap();
    assert_eq!(s.account_validity(ALICE).unwrap(), Some(validity(ALICE, TS + 100, None)));
    assert_eq!(s.accounts_without_validity().unwrap(), strings(&[CAROL]));
    s.set_user_flag(CAROL, UserFlag::Deactivated, true).unwrap();
    assert!(s.accounts_without_validity().unwrap().is_empty(), "deactivated accounts get no expiration date");

    assert_eq!(s.account_validity_by_token("bobs-token").unwrap().map(|v| v.user_id), Some(BOB.to_owned()));
    assert_eq!(s.account_validity_by_token("nobody's").unwrap(), None);
    assert!(
        matches!(s.set_account_validity(&validity(ALICE, TS, Some("bobs-token"))), Err(StorageError::Conflict)),
        "a token names one account"
    );

    // Expiring by a time: in expiration order, without those already mailed.
    let expiring = |ts| s.accounts_expiring_by(ts).unwrap().into_iter().map(|v| v.user_id).collect::<Vec<_>>();
    assert_eq!(expiring(TS + 99), Vec::<String>::new());
    assert_eq!(expiring(TS + 100), strings(&[ALICE]));
    assert_eq!(expiring(TS + 1000), strings(&[ALICE, BOB]));
    let used = AccountValidity {
        email_sent: true,
        token_used_ts: Some(TS + 5),
        ..validity(BOB, TS + 900, Some("bobs-token"))
    };
    s.set_account_validity(&used).unwrap();
    assert_eq!(s.account_validity(BOB).unwrap(), Some(used));
    assert_eq!(expiring(TS + 1000), strings(&[ALICE]));

    s.delete_account_validity(ALICE).unwrap();
    assert_eq!(s.account_validity(ALICE).unwrap(), None);
    s.delete_account_validity(ALICE).unwrap();
}
