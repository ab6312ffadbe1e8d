//! `myelin import-synapse`: moves a stopped Synapse's data (its database, SQLite or PostgreSQL,
//! its media store and signing key) into Myelin's database, so its users, their sessions and its
//! rooms carry on.
//!
//! Read-only on Synapse's side (the database is opened read-only, files are copied). Rows are
//! written through Myelin's storage traits, so either Myelin backend can be the target; push
//! rules and pushers go through the homeserver's own request handlers, as a client's would.
//!
//! Rooms: every event in the room's topological order (depth, then Synapse's order), with its
//! state group translated (Synapse's groups are deltas on a previous group, as Myelin's are),
//! rejections, soft failures and redactions kept (a redacted event is stored pruned, as Myelin
//! stores them); the room's current state is Synapse's. Stream positions are Myelin's own: a
//! client's old sync token starts an initial sync.
//!
//! Progress is kept in Myelin's database (`claim_target`, `phase`), so an interrupted import is
//! carried on with `--resume`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use myelin_core::Homeserver;
use myelin_core::config::{Config, Database};
use myelin_storage::{MediaRow, NewAccessToken, NewRefreshToken, ReceiptRow, RegistrationToken, Storage, UserRow};
use serde_json::{Map, Value, json};

mod rooms;
mod source;

pub use source::SynapseDb;
use source::{Arg, Row};

/// Synapse's database schema versions this importer reads: 88 (Synapse's releases from late
/// 2024) to 94 (1.163, the newest release, and the one the tests import). The changes in
/// between (Synapse's changelog in `synapse/storage/schema/__init__.py`) touch no column read
/// here.
pub const SUPPORTED_SCHEMA: std::ops::RangeInclusive<i64> = 88..=94;

/// What the command imported (rows per kind) and what it left out, and why.
#[derive(Default)]
pub struct Summary {
    /// `(what, how many)`, in import order.
    pub imported: Vec<(&'static str, usize)>,
    /// `(what, how many, why)`.
    pub skipped: Vec<(&'static str, usize, String)>,
}

impl Summary {
    fn count(&mut self, what: &'static str, n: usize) {
        self.imported.push((what, n));
        eprintln!("  {what}: {n}");
    }

    fn skip(&mut self, what: &'static str, n: usize, why: &str) {
        if n > 0 {
            self.skipped.push((what, n, why.to_owned()));
        }
    }
}

/// The parts of Synapse's homeserver.yaml the import reads.
pub struct SynapseConfig {
    server_name: String,
    database: Database,
    media_store: PathBuf,
    signing_key: PathBuf,
    /// The key IDs of `old_signing_keys`.
    old_signing_keys: Vec<String>,
}

impl SynapseConfig {
    /// Reads Synapse's config; relative paths are taken from the config file's directory.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("Could not read {}: {e}", path.display()))?;
        let yaml: Value =
            serde_yaml_ng::from_str(&text).map_err(|e| format!("{} is not valid YAML: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let text_of = |key: &str| yaml.get(key).and_then(Value::as_str).map(str::to_owned);
        let server_name = text_of("server_name").ok_or_else(|| format!("{} has no server_name", path.display()))?;
        // Synapse's `database:` section means what it means to Myelin (Myelin's own parser).
        let database = myelin_core::config::parse_database_section(yaml.get("database"), base)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let media_store = text_of("media_store_path").unwrap_or_else(|| "media_store".into());
        let signing_key = text_of("signing_key_path").unwrap_or_else(|| format!("{server_name}.signing.key"));
        let old_signing_keys = yaml
            .get("old_signing_keys")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        Ok(SynapseConfig {
            old_signing_keys,
            database,
            media_store: base.join(media_store),
            signing_key: base.join(signing_key),
            server_name,
        })
    }
}

/// Empties the target for `--start-over`: Myelin's SQLite database files (a PostgreSQL
/// database is for its admin to drop and create again).
pub fn remove_target(config: &Config) -> Result<(), String> {
    match &config.database {
        Database::Sqlite(options) => {
            for suffix in ["", "-wal", "-shm"] {
                let mut name = options.path.clone().into_os_string();
                name.push(suffix);
                match std::fs::remove_file(&name) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("Could not remove {}: {e}", PathBuf::from(name).display())),
                }
            }
            Ok(())
        }
        Database::Postgres(_) => Err("--start-over cannot empty a PostgreSQL database: drop it, create it again \
                                      empty, and run the import again"
            .into()),
    }
}

/// Opens Synapse's database read-only and checks its schema version.
pub fn open_synapse(synapse: &SynapseConfig) -> Result<SynapseDb, String> {
    let db = match &synapse.database {
        Database::Sqlite(options) => SynapseDb::open_sqlite(&options.path)?,
        Database::Postgres(options) => SynapseDb::open_postgres(options)?,
    };
    let version = db
        .row("SELECT version FROM schema_version", &[])
        .map_err(|e| format!("This is not a Synapse database: {e}"))?
        .and_then(|r| r.opt_int(0));
    match version {
        Some(v) if SUPPORTED_SCHEMA.contains(&v) => Ok(db),
        Some(v) => Err(format!(
            "Synapse's database has schema version {v}; this Myelin imports schema versions {} to {} (Synapse releases \
             from late 2024 to 1.163): upgrade Synapse (or Myelin) first",
            SUPPORTED_SCHEMA.start(),
            SUPPORTED_SCHEMA.end()
        )),
        None => Err("This is not a Synapse database (no schema version)".into()),
    }
}

/// Refuses the mistakes that would lose Synapse's data: Myelin's database or media store being
/// Synapse's own (copying a file onto itself empties it; `--start-over` would delete it).
pub fn check_paths(synapse: &SynapseConfig, config: &Config) -> Result<(), String> {
    let (theirs, ours) = (resolved(&synapse.media_store), resolved(&config.media_store_path));
    if theirs.starts_with(&ours) || ours.starts_with(&theirs) {
        return Err(format!(
            "Myelin's media_store_path ({}) is Synapse's media store, or inside it, or holds it: give Myelin a \
             directory of its own (the files are copied, Synapse's are left as they are)",
            config.media_store_path.display()
        ));
    }
    let same_database = match (&synapse.database, &config.database) {
        (Database::Sqlite(a), Database::Sqlite(b)) => resolved(&a.path) == resolved(&b.path),
        (Database::Postgres(a), Database::Postgres(b)) => (&a.host, a.port, &a.dbname) == (&b.host, b.port, &b.dbname),
        _ => false,
    };
    if same_database {
        return Err(
            "Myelin's database is Synapse's own: give Myelin a database of its own (Synapse's is only read)".into()
        );
    }
    Ok(())
}

/// A path made absolute through its nearest existing ancestor (links resolved), for comparing
/// paths that may not exist yet.
fn resolved(path: &Path) -> PathBuf {
    let mut existing = if path.is_absolute() { path.to_path_buf() } else { Path::new(".").join(path) };
    let mut rest = Vec::new();
    loop {
        if let Ok(found) = existing.canonicalize() {
            return rest.into_iter().rev().fold(found, |p, part| p.join(part));
        }
        match (existing.file_name().map(|n| n.to_owned()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Refuses an import that would find none of Synapse's uploaded files: its media store is not
/// where its config says (relative paths are taken from the config file's directory).
pub fn check_media_store(db: &SynapseDb, synapse: &SynapseConfig) -> Result<(), String> {
    if !synapse.media_store.is_dir() && db.count("local_media_repository") > 0 {
        return Err(format!(
            "Synapse's media store {} is not there (relative paths in Synapse's config are taken from its \
             directory): give media_store_path as an absolute path in a copy of Synapse's config",
            synapse.media_store.display()
        ));
    }
    Ok(())
}

/// The server keeps its name: Myelin's config must give Synapse's.
pub fn check_server_name(synapse: &SynapseConfig, config: &Config) -> Result<(), String> {
    if synapse.server_name != config.server_name {
        return Err(format!(
            "Synapse's server_name is {} and Myelin's is {}: they must be the same (the server keeps its name)",
            synapse.server_name, config.server_name
        ));
    }
    Ok(())
}

/// Where the import keeps its progress in Myelin's database (transient records that never
/// expire): `started`, each phase and room done, `complete`.
const PROGRESS: &str = "import-synapse";

pub(super) fn mark_done(store: &dyn Storage, key: &str) -> Result<(), String> {
    store.put_transient(PROGRESS, key, "done", i64::MAX).map_err(store_err)
}

pub(super) fn is_done(store: &dyn Storage, key: &str) -> Result<bool, String> {
    Ok(store.get_transient(PROGRESS, key, 0).map_err(store_err)?.is_some())
}

/// Checks that the import may write into Myelin's database: an empty one, or (with `resume`)
/// one an interrupted import left. Marks the import started.
pub fn claim_target(store: &dyn Storage, resume: bool) -> Result<(), String> {
    if is_done(store, "complete")? {
        return Err("Myelin's database already holds a finished import: run again with --start-over to empty it \
                    and import again"
            .into());
    }
    if is_done(store, "started")? {
        if !resume {
            return Err("An import into this database was interrupted: run again with --resume to carry it on, or \
                        with --start-over to empty it and begin again"
                .into());
        }
        return Ok(());
    }
    let users = store.count_users().map_err(|e| e.to_string())?;
    let stream = store.max_stream_ordering().map_err(|e| e.to_string())?;
    if users > 0 || stream > 0 {
        return Err(format!(
            "Myelin's database already holds data ({users} users): the import only writes into an empty one. Run \
             again with --start-over to empty it first"
        ));
    }
    mark_done(store, "started")
}

/// Marks the import finished: a later run refuses unless told to start over.
pub fn finish(store: &dyn Storage) -> Result<(), String> {
    mark_done(store, "complete")
}

/// Runs one phase of the import unless a run before this one finished it. A phase an
/// interrupted run began is run again whole: each writes what is already there harmlessly.
fn phase(store: &dyn Storage, name: &str, run: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    let key = format!("phase:{name}");
    if is_done(store, &key)? {
        eprintln!("  {name}: done by an earlier run");
        return Ok(());
    }
    run()?;
    mark_done(store, &key)
}

/// Copies Synapse's signing key to Myelin's `signing_key_path` (the old file, if any, is kept
/// beside it as `.before-import`), so the server keeps its key ID and signatures.
pub fn copy_signing_key(synapse: &SynapseConfig, config: &Config) -> Result<(), String> {
    let key = std::fs::read(&synapse.signing_key)
        .map_err(|e| format!("Could not read Synapse's signing key {}: {e}", synapse.signing_key.display()))?;
    let target = &config.signing_key_path;
    if std::fs::read(target).is_ok_and(|existing| existing == key) {
        return Ok(()); // copied by an earlier, interrupted run
    }
    if target.exists() {
        let mut backup = target.clone().into_os_string();
        backup.push(".before-import");
        std::fs::rename(target, &backup).map_err(|e| format!("Could not move {} aside: {e}", target.display()))?;
    }
    myelin_core::events::SigningKey::write_new(target, &key)?;
    myelin_core::events::SigningKey::load(target)?;
    // Old keys are configuration, not data: the admin copies them over.
    let missing: Vec<&String> =
        synapse.old_signing_keys.iter().filter(|id| !config.federation.old_signing_keys.contains_key(*id)).collect();
    if !missing.is_empty() {
        eprintln!(
            "Note: Synapse's config lists old_signing_keys ({}) that Myelin's does not: copy that section into \
             Myelin's config, so that other servers can still check what was signed with them.",
            missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

pub(super) fn store_err(e: myelin_storage::StorageError) -> String {
    format!("writing Myelin's database: {e}")
}

/// Everything stored directly (not through request handlers): accounts, rooms, keys, media.
pub fn import_rows(
    db: &SynapseDb,
    synapse: &SynapseConfig,
    config: &Config,
    store: &dyn Storage,
) -> Result<Summary, String> {
    let mut summary = Summary::default();
    let s = &mut summary;
    phase(store, "users", || users(db, store, s))?;
    phase(store, "rooms", || rooms::rooms(db, store, s))?;
    phase(store, "account data", || account_data(db, store, s))?;
    phase(store, "receipts", || receipts(db, store, s))?;
    phase(store, "keys", || keys(db, store, s))?;
    phase(store, "media", || media(db, synapse, config, store, s))?;
    phase(store, "registration tokens and filters", || registration_tokens(db, store, s))?;
    phase(store, "event reports", || reports(db, store, s))?;
    Ok(summary)
}

fn users(db: &SynapseDb, store: &dyn Storage, summary: &mut Summary) -> Result<(), String> {
    let rows = db.rows(
        "SELECT u.name, u.password_hash, coalesce(u.creation_ts, 0), u.admin, u.is_guest, u.deactivated,
                coalesce(u.shadow_banned, FALSE), p.displayname, p.avatar_url, CAST(p.fields AS TEXT),
                coalesce(u.locked, FALSE), coalesce(u.suspended, FALSE), u.user_type
         FROM users u LEFT JOIN profiles p ON p.full_user_id = u.name ORDER BY u.name",
        &[],
    )?;
    for r in &rows {
        let user = UserRow {
            user_id: r.text(0),
            password_hash: r.opt_text(1).filter(|h| !h.is_empty()),
            // Synapse's creation_ts is in seconds.
            creation_ts: r.int(2) * 1000,
            is_admin: r.flag(3),
            is_guest: r.flag(4),
            deactivated: r.flag(5),
            shadow_banned: r.flag(6),
            locked: r.flag(10),
            suspended: r.flag(11),
        };
        // A user an interrupted run made is there already.
        if store.get_user(&user.user_id).map_err(store_err)?.is_none() {
            store.create_user(&user, r.opt_text(7).as_deref()).map_err(store_err)?;
        }
        for (flag, on) in [
            (myelin_storage::UserFlag::Admin, user.is_admin),
            (myelin_storage::UserFlag::Guest, user.is_guest),
            (myelin_storage::UserFlag::Deactivated, user.deactivated),
            (myelin_storage::UserFlag::ShadowBanned, user.shadow_banned),
        ] {
            if on {
                store.set_user_flag(&user.user_id, flag, true).map_err(store_err)?;
            }
        }
        if let Some(avatar) = r.opt_text(8) {
            store
                .set_profile_field(&user.user_id, myelin_storage::ProfileField::AvatarUrl, Some(&avatar))
                .map_err(store_err)?;
        }
        if let Some(user_type) = r.opt_text(12) {
            store.set_user_type(&user.user_id, Some(&user_type)).map_err(store_err)?;
        }
        // Custom profile fields (extended profiles), as they were: Synapse checked their size.
        if let Some(Value::Object(fields)) = r.opt_text(9).and_then(|f| serde_json::from_str::<Value>(&f).ok()) {
            for (name, value) in &fields {
                store.set_custom_profile_field(&user.user_id, name, Some(value), usize::MAX).map_err(store_err)?;
            }
        }
    }
    summary.count("users (with profiles)", rows.len());

    // Identities at SSO providers, so SSO logins find their accounts again.
    let external = db.rows("SELECT auth_provider, external_id, user_id FROM user_external_ids", &[])?;
    for r in &external {
        store.record_external_id(&r.text(0), &r.text(1), &r.text(2)).map_err(store_err)?;
    }
    summary.count("external IDs (SSO identities)", external.len());

    // E-mail addresses and phone numbers on accounts, for logins and password resets.
    let threepids = db.rows("SELECT user_id, medium, address, validated_at, added_at FROM user_threepids", &[])?;
    for r in &threepids {
        let row = myelin_storage::ThreepidRow {
            medium: r.text(1),
            address: r.text(2),
            validated_at: r.int(3),
            added_at: r.int(4),
        };
        store.add_user_threepid(&r.text(0), &row).map_err(store_err)?;
    }
    summary.count("third-party identifiers (e-mail addresses, phone numbers)", threepids.len());

    let devices = db.rows(
        "SELECT user_id, device_id, display_name, last_seen, ip, user_agent FROM devices WHERE NOT hidden",
        &[],
    )?;
    for r in &devices {
        let (user, device) = (r.text(0), r.text(1));
        store.upsert_device(&user, &device, r.opt_text(2).as_deref()).map_err(store_err)?;
        if let Some(seen) = r.opt_int(3) {
            store.touch_device(&user, &device, &r.text(4), &r.text(5), seen).map_err(store_err)?;
        }
    }
    summary.count("devices", devices.len());

    // Refresh-token sessions: the latest refresh token of each (the one the client holds
    // once its last refresh went through), keyed by Synapse's ID for the access tokens below.
    let mut refresh_ids: HashMap<i64, i64> = HashMap::new();
    let rows = db.rows(
        "SELECT r.id, r.token, r.user_id, r.device_id, r.expiry_ts, r.ultimate_session_expiry_ts
         FROM refresh_tokens r JOIN devices d ON d.user_id = r.user_id AND d.device_id = r.device_id
         WHERE r.next_token_id IS NULL AND NOT d.hidden",
        &[],
    )?;
    for r in &rows {
        let (token, user, device) = (r.text(1), r.text(2), r.text(3));
        let row = store.get_refresh_token(&token).map_err(store_err)?;
        let id = match row {
            Some(existing) => existing.id,
            None => store
                .add_refresh_token(&NewRefreshToken {
                    token: &token,
                    user_id: &user,
                    device_id: &device,
                    expiry_ts: r.opt_int(4),
                    ultimate_session_expiry_ts: r.opt_int(5),
                })
                .map_err(store_err)?,
        };
        refresh_ids.insert(r.int(0), id);
    }
    summary.count("refresh tokens", rows.len());
    summary.skip(
        "refresh tokens",
        db.count("refresh_tokens").saturating_sub(rows.len()),
        "already replaced by a later refresh, or of a removed device",
    );

    // Access tokens of a device, with their expiry and refresh token. Puppeting tokens have
    // no equivalent, and a token of a replaced refresh token is left behind with it.
    let (mut n, mut skipped) = (0, 0);
    let rows = db.rows(
        "SELECT t.token, t.user_id, t.device_id, t.valid_until_ms, t.puppets_user_id,
                EXISTS (SELECT 1 FROM devices d WHERE d.user_id = t.user_id AND d.device_id = t.device_id AND NOT d.hidden),
                t.refresh_token_id, t.used
         FROM access_tokens t",
        &[],
    )?;
    for r in rows {
        let refresh = r.opt_int(6).map(|id| refresh_ids.get(&id).copied());
        match (r.opt_text(2), refresh) {
            (Some(device), None | Some(Some(_))) if r.opt_text(4).is_none() && r.flag(5) => {
                let token = r.text(0);
                if store.get_access_token(&token).map_err(store_err)?.is_none() {
                    let user = r.text(1);
                    store
                        .add_access_token(&NewAccessToken {
                            token: &token,
                            user_id: &user,
                            device_id: &device,
                            valid_until_ms: r.opt_int(3),
                            refresh_token_id: refresh.flatten(),
                        })
                        .map_err(store_err)?;
                    if r.flag(7) {
                        store.mark_access_token_used(&token).map_err(store_err)?;
                    }
                }
                n += 1;
            }
            _ => skipped += 1,
        }
    }
    summary.count("access tokens", n);
    summary.skip(
        "access tokens",
        skipped,
        "without a device, of a replaced refresh token, or an admin's puppeting token: those users log in again",
    );
    let erased = db.rows("SELECT user_id FROM erased_users", &[])?;
    for r in &erased {
        store.mark_user_erased(&r.text(0)).map_err(store_err)?;
    }
    summary.count("erased users (their messages stay hidden from new readers)", erased.len());
    let overrides = db.rows("SELECT user_id, messages_per_second, burst_count FROM ratelimit_override", &[])?;
    for r in &overrides {
        let value = Some((r.opt_int(1).map(|n| n as f64), r.opt_int(2)));
        store.set_ratelimit_override(&r.text(0), value).map_err(store_err)?;
    }
    summary.count("rate-limit overrides", overrides.len());
    Ok(())
}

fn account_data(db: &SynapseDb, store: &dyn Storage, summary: &mut Summary) -> Result<(), String> {
    let rows = db.rows(
        "SELECT user_id, '', account_data_type, content FROM account_data
         UNION ALL SELECT user_id, room_id, account_data_type, content FROM room_account_data",
        &[],
    )?;
    let mut n = 0;
    for r in rows {
        let Ok(content) = serde_json::from_str::<Value>(&r.text(3)) else { continue };
        store.set_account_data(&r.text(0), &r.text(1), &r.text(2), &content).map_err(store_err)?;
        n += 1;
    }
    summary.count("account data", n);

    // Tags are room account data `m.tag` for Myelin.
    let mut tags: BTreeMap<(String, String), Map<String, Value>> = BTreeMap::new();
    for r in db.rows("SELECT user_id, room_id, tag, content FROM room_tags", &[])? {
        let content = serde_json::from_str(&r.text(3)).unwrap_or_else(|_| json!({}));
        tags.entry((r.text(0), r.text(1))).or_default().insert(r.text(2), content);
    }
    for ((user, room), tags_of_room) in &tags {
        store.set_account_data(user, room, "m.tag", &json!({ "tags": tags_of_room })).map_err(store_err)?;
    }
    summary.count("rooms with tags", tags.len());
    Ok(())
}

fn receipts(db: &SynapseDb, store: &dyn Storage, summary: &mut Summary) -> Result<(), String> {
    let mut n = 0;
    let rows = db.rows(
        "SELECT room_id, receipt_type, user_id, coalesce(thread_id, ''), event_id, data FROM receipts_linearized
         ORDER BY stream_id",
        &[],
    )?;
    for r in rows {
        let room_id = r.text(0);
        if store.get_room(&room_id).map_err(store_err)?.is_none() {
            continue;
        }
        let ts = serde_json::from_str::<Value>(&r.text(5)).ok().and_then(|d| d["ts"].as_i64()).unwrap_or(0);
        let receipt = ReceiptRow {
            room_id,
            receipt_type: r.text(1),
            user_id: r.text(2),
            thread_id: r.text(3),
            event_id: r.text(4),
            ts,
        };
        store.set_receipt(&receipt).map_err(store_err)?;
        n += 1;
    }
    summary.count("read receipts", n);
    Ok(())
}

/// A device's identity keys and unused fallback keys (`(algorithm, key ID, JSON)`); its
/// one-time keys are read when it is written.
type DeviceKeys = (Option<String>, Vec<(String, String, String)>);

fn keys(db: &SynapseDb, store: &dyn Storage, summary: &mut Summary) -> Result<(), String> {
    // Device keys, one-time keys and fallback keys, per device.
    let mut devices: BTreeMap<(String, String), DeviceKeys> = BTreeMap::new();
    for r in db.rows("SELECT user_id, device_id, key_json FROM e2e_device_keys_json", &[])? {
        devices.entry((r.text(0), r.text(1))).or_default().0 = Some(r.text(2));
    }
    // Devices with one-time keys only; their keys are read device by device below.
    for r in db.rows("SELECT DISTINCT user_id, device_id FROM e2e_one_time_keys_json", &[])? {
        devices.entry((r.text(0), r.text(1))).or_default();
    }
    let fallback = db.rows(
        "SELECT user_id, device_id, algorithm, key_id, key_json FROM e2e_fallback_keys_json WHERE NOT used",
        &[],
    )?;
    for r in &fallback {
        devices.entry((r.text(0), r.text(1))).or_default().1.push((r.text(2), r.text(3), r.text(4)));
    }

    // Signatures Synapse keeps apart: of one's own devices (by the self-signing key) and own
    // cross-signing keys (by a device) are merged into the keys, as Myelin keeps them; of
    // another user's master key (by one's user-signing key) are kept apart for the signer.
    let signatures = db.rows(
        "SELECT user_id, key_id, target_user_id, target_device_id, signature FROM e2e_cross_signing_signatures",
        &[],
    )?;
    let mut of_others: BTreeMap<(String, String, String), Map<String, Value>> = BTreeMap::new();
    let mut own_key_signatures: Vec<(String, String, String, String)> = Vec::new();
    let mut signature_count = 0;
    for r in signatures {
        let (signer, key_id, target_user, target, signature) = (r.text(0), r.text(1), r.text(2), r.text(3), r.text(4));
        if signer != target_user {
            of_others.entry((signer, target_user, target)).or_default().insert(key_id, Value::String(signature));
            signature_count += 1;
            continue;
        }
        match devices.get_mut(&(target_user.clone(), target.clone())).and_then(|d| d.0.as_mut()) {
            Some(device_json) => {
                let mut key: Value = serde_json::from_str(device_json).unwrap_or(Value::Null);
                if add_signature(&mut key, &signer, &key_id, signature) {
                    *device_json = key.to_string();
                    signature_count += 1;
                }
            }
            None => own_key_signatures.push((signer, key_id, target, signature)),
        }
    }
    let (mut with_keys, mut one_time) = (0, 0);
    for ((user, device), (device_keys, fallbacks)) in &devices {
        with_keys += device_keys.is_some() as usize;
        let otks: Vec<(String, String, String)> = db
            .rows(
                "SELECT algorithm, key_id, key_json FROM e2e_one_time_keys_json WHERE user_id = $1 AND device_id = $2",
                &[Arg::Text(user), Arg::Text(device)],
            )?
            .into_iter()
            .map(|r| (r.text(0), r.text(1), r.text(2)))
            .collect();
        one_time += otks.len();
        store.upload_keys(user, device, device_keys.as_deref(), &otks, fallbacks).map_err(store_err)?;
    }
    summary.count("devices with identity keys", with_keys);
    summary.count("one-time keys", one_time);
    summary.count("fallback keys", fallback.len());

    // Cross-signing keys: the newest of each type per user.
    let mut cross: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for r in db.rows("SELECT user_id, keytype, keydata FROM e2e_cross_signing_keys ORDER BY stream_id", &[])? {
        let (kind, data) = (r.text(1), r.text(2));
        let list = cross.entry(r.text(0)).or_default();
        list.retain(|(k, _)| *k != kind);
        list.push((kind, data));
    }
    for (signer, key_id, public_key, signature) in own_key_signatures {
        let Some(list) = cross.get_mut(&signer) else { continue };
        for (_, json) in list.iter_mut() {
            let mut key: Value = serde_json::from_str(json).unwrap_or(Value::Null);
            if key["keys"].as_object().is_some_and(|k| k.values().any(|v| v.as_str() == Some(public_key.as_str())))
                && add_signature(&mut key, &signer, &key_id, signature.clone())
            {
                *json = key.to_string();
                signature_count += 1;
            }
        }
    }
    for (user, list) in &cross {
        store.set_cross_signing_keys(user, list).map_err(store_err)?;
    }
    summary.count("users with cross-signing keys", cross.len());
    for ((signer, target_user, public_key), by_key) in &of_others {
        let stored = json!({ "signatures": { signer.clone(): by_key } }).to_string();
        store.add_user_signature(signer, target_user, public_key, &stored).map_err(store_err)?;
    }
    summary.count("cross-signing signatures", signature_count);

    // Key backup: versions in order (deleted ones too, so the numbers stay the same).
    let (mut versions, mut backed_up) = (0, 0);
    let rows = db.rows(
        "SELECT user_id, version, algorithm, auth_data, deleted FROM e2e_room_keys_versions ORDER BY user_id, version",
        &[],
    )?;
    for r in rows {
        let (user, version, algorithm, auth_data) = (r.text(0), r.int(1), r.text(2), r.text(3));
        // Each version is marked once written whole: an earlier run's are not made again, so
        // the numbers stay Synapse's.
        let done_key = format!("backup:{user}:{version}");
        if is_done(store, &done_key)? {
            versions += 1;
            continue;
        }
        let made = if store.backup_version(&user, Some(version)).map_err(store_err)?.is_some() {
            version // made by an earlier, interrupted run
        } else {
            let mut made = store.create_backup_version(&user, &algorithm, &auth_data).map_err(store_err)?;
            // Numbers Synapse skipped (never the case today): created and deleted to catch up.
            while made < version {
                store.delete_backup_version(&user, made).map_err(store_err)?;
                made = store.create_backup_version(&user, &algorithm, &auth_data).map_err(store_err)?;
            }
            made
        };
        if r.flag(4) {
            store.delete_backup_version(&user, made).map_err(store_err)?;
            mark_done(store, &done_key)?;
            continue;
        }
        let keys: Vec<(String, String, String)> = db
            .rows(
                "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data
                 FROM e2e_room_keys WHERE user_id = $1 AND version = CAST($2 AS BIGINT)",
                &[Arg::Text(&user), Arg::Int(version)],
            )?
            .into_iter()
            .map(|k| {
                let session = json!({
                    "first_message_index": k.int(2),
                    "forwarded_count": k.int(3),
                    "is_verified": k.flag(4),
                    "session_data": serde_json::from_str::<Value>(&k.text(5)).unwrap_or(Value::Null),
                });
                (k.text(0), k.text(1), session.to_string())
            })
            .collect();
        backed_up += keys.len();
        store.put_backup_keys(&user, made, &keys).map_err(store_err)?;
        mark_done(store, &done_key)?;
        versions += 1;
    }
    summary.count("key backup versions", versions);
    summary.count("backed-up room keys", backed_up);
    to_device(db, store, summary)
}

/// Adds `signature` by `signer`'s `key_id` to a key's `signatures`; false (nothing changed) if
/// the key or its signatures are not JSON objects (older Synapses did not check uploads).
fn add_signature(key: &mut Value, signer: &str, key_id: &str, signature: String) -> bool {
    let Some(key) = key.as_object_mut() else { return false };
    let Some(by_signer) = key.entry("signatures").or_insert_with(|| json!({})).as_object_mut() else { return false };
    let Some(keys) = by_signer.entry(signer).or_insert_with(|| json!({})).as_object_mut() else { return false };
    keys.insert(key_id.to_owned(), Value::String(signature));
    true
}

/// To-device messages not yet delivered (room keys in flight), queued again for their devices.
fn to_device(db: &SynapseDb, store: &dyn Storage, summary: &mut Summary) -> Result<(), String> {
    let mut queued = Vec::new();
    let mut n = 0;
    // In pages: a device that stopped syncing can have many waiting.
    let mut after = (i64::MIN, String::new(), String::new());
    loop {
        let page = db.rows(
            "SELECT user_id, device_id, message_json, stream_id FROM device_inbox
             WHERE (stream_id, user_id, device_id) > (CAST($1 AS BIGINT), $2, $3)
             ORDER BY stream_id, user_id, device_id LIMIT 1000",
            &[Arg::Int(after.0), Arg::Text(&after.1), Arg::Text(&after.2)],
        )?;
        let Some(last) = page.last() else { break };
        after = (last.int(3), last.text(0), last.text(1));
        for r in &page {
            let Ok(message) = serde_json::from_str::<Value>(&r.text(2)) else { continue };
            // As Myelin queues them: type, sender, content.
            let event = json!({"type": message["type"], "sender": message["sender"], "content": message["content"]});
            queued.push((r.text(0), r.text(1), event.to_string()));
            if queued.len() >= rooms::BATCH {
                n += queued.len();
                store.queue_to_device("", "", &format!("synapse-import-{n}"), &queued).map_err(store_err)?;
                queued.clear();
            }
        }
    }
    if !queued.is_empty() {
        n += queued.len();
        store.queue_to_device("", "", &format!("synapse-import-{n}"), &queued).map_err(store_err)?;
    }
    summary.count("to-device messages not yet delivered", n);
    Ok(())
}

fn media(
    db: &SynapseDb,
    synapse: &SynapseConfig,
    config: &Config,
    store: &dyn Storage,
    summary: &mut Summary,
) -> Result<(), String> {
    let (mut n, mut missing, mut bytes, mut thumbnails) = (0, 0, 0u64, 0);
    let rows = db.rows(
        "SELECT media_id, coalesce(user_id, ''), media_type, upload_name, media_length, coalesce(created_ts, 0)
         FROM local_media_repository WHERE url_cache IS NULL AND quarantined_by IS NULL",
        &[],
    )?;
    let mut seen = HashSet::new();
    for r in rows {
        let row = MediaRow {
            media_id: r.text(0),
            user_id: r.text(1),
            content_type: r.opt_text(2),
            upload_name: r.opt_text(3),
            length: r.opt_int(4),
            created_ts: r.int(5),
            pending: false,
        };
        let id = &row.media_id;
        // Synapse's layout, which Myelin shares.
        if !myelin_core::media::valid_media_id(id) || !seen.insert(id.clone()) {
            missing += 1;
            continue;
        }
        let from = myelin_core::media::local_content_path(&synapse.media_store, id);
        if !from.exists() {
            missing += 1;
            continue;
        }
        bytes += copy_file(&from, &myelin_core::media::local_content_path(&config.media_store_path, id))?;
        store.insert_media(&row).map_err(store_err)?;
        thumbnails += copy_thumbnails(db, synapse, config, store, &row)?;
        n += 1;
    }
    summary.count("uploaded media files", n);
    summary.count("thumbnails (of the standard sizes; others are made when asked for)", thumbnails);
    eprintln!("  ({} MiB copied)", bytes >> 20);
    summary.skip("uploaded media", missing, "its file is missing from Synapse's media store");
    remote_media(db, synapse, config, store, summary)?;
    let quarantined = db
        .row("SELECT count(*) FROM local_media_repository WHERE quarantined_by IS NOT NULL", &[])?
        .map(|r| r.int(0) as usize)
        .unwrap_or(0);
    summary.skip("quarantined media", quarantined, "left behind on purpose");
    Ok(())
}

/// The thumbnails Synapse made of a local image, copied for the standard sizes they serve
/// (Synapse names them by the size they came out, Myelin by the size they were made for);
/// returns how many.
fn copy_thumbnails(
    db: &SynapseDb,
    synapse: &SynapseConfig,
    config: &Config,
    store: &dyn Storage,
    media: &MediaRow,
) -> Result<usize, String> {
    let id = &media.media_id;
    let rows = db.rows(
        "SELECT thumbnail_width, thumbnail_height, thumbnail_type, thumbnail_method
         FROM local_media_repository_thumbnails WHERE media_id = $1",
        &[Arg::Text(id)],
    )?;
    if rows.is_empty() {
        return Ok(0);
    }
    let stored: Vec<myelin_core::media::SynapseThumbnail> =
        rows.iter().map(|r| (r.int(0) as u32, r.int(1) as u32, r.text(2), r.text(3))).collect();
    let source = myelin_core::media::local_content_path(&synapse.media_store, id);
    let mut copied = 0;
    for (width, height, method, index) in
        myelin_core::media::synapse_thumbnails_by_size(&source, media.content_type.as_deref(), &stored)
    {
        let (w, h, content_type, made_by) = &stored[index];
        let (top, sub) = content_type.split_once('/').unwrap_or((content_type, ""));
        let from = synapse
            .media_store
            .join("local_thumbnails")
            .join(&id[..2])
            .join(&id[2..4])
            .join(&id[4..])
            .join(format!("{w}-{h}-{top}-{sub}-{made_by}"));
        if !from.is_file() {
            continue;
        }
        let to = myelin_core::media::local_thumbnail_path(&config.media_store_path, id, width, height, method);
        let length = copy_file(&from, &to)?;
        store.insert_thumbnail(id, width, height, method, content_type, length as i64).map_err(store_err)?;
        copied += 1;
    }
    Ok(copied)
}

/// Copies a file of Synapse's media store into Myelin's (its directories made, its data
/// synced); returns its length.
fn copy_file(from: &Path, to: &Path) -> Result<u64, String> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("Could not create {}: {e}", dir.display()))?;
    }
    let length = std::fs::copy(from, to).map_err(|e| format!("Could not copy {}: {e}", from.display()))?;
    std::fs::File::open(to).and_then(|f| f.sync_all()).map_err(|e| format!("Could not sync {}: {e}", to.display()))?;
    Ok(length)
}

/// Other servers' files Synapse had cached: into Myelin's cache, so they are served without
/// asking their servers again (which may be gone).
fn remote_media(
    db: &SynapseDb,
    synapse: &SynapseConfig,
    config: &Config,
    store: &dyn Storage,
    summary: &mut Summary,
) -> Result<(), String> {
    let rows = db.rows(
        "SELECT media_origin, media_id, media_type, upload_name, media_length, coalesce(created_ts, 0), filesystem_id
         FROM remote_media_cache WHERE quarantined_by IS NULL",
        &[],
    )?;
    let (mut n, mut missing) = (0, 0);
    for r in rows {
        let (origin, media_id, file_id) = (r.text(0), r.text(1), r.text(6));
        let Some((to, meta, key)) =
            myelin_core::media::remote_cache_paths(&config.media_store_path, &origin, &media_id)
        else {
            missing += 1;
            continue;
        };
        // Synapse's layout: remote_content/<server>/<file ID split 2/2/rest> (the server name
        // checked above as a server name, the file ID as a media ID: no path tricks).
        if !myelin_core::media::valid_media_id(&file_id) {
            missing += 1;
            continue;
        }
        let from = synapse
            .media_store
            .join("remote_content")
            .join(&origin)
            .join(&file_id[..2])
            .join(&file_id[2..4])
            .join(&file_id[4..]);
        if !from.is_file() {
            missing += 1;
            continue;
        }
        let length = copy_file(&from, &to)?;
        let (content_type, upload_name) =
            (r.opt_text(2).unwrap_or_else(|| "application/octet-stream".into()), r.opt_text(3));
        let about = json!({"content_type": content_type, "upload_name": upload_name, "length": length});
        std::fs::write(&meta, about.to_string()).map_err(|e| format!("Could not write {}: {e}", meta.display()))?;
        let row = MediaRow {
            media_id: key,
            user_id: origin,
            content_type: Some(content_type),
            upload_name,
            length: Some(length as i64),
            created_ts: r.int(5),
            pending: false,
        };
        store.insert_media(&row).map_err(store_err)?;
        n += 1;
    }
    summary.count("cached remote media files", n);
    summary.skip("cached remote media", missing, "its file is missing, or its name is not one Myelin would fetch");
    Ok(())
}

fn registration_tokens(db: &SynapseDb, store: &dyn Storage, summary: &mut Summary) -> Result<(), String> {
    let rows = db.rows("SELECT token, uses_allowed, pending, completed, expiry_time FROM registration_tokens", &[])?;
    for r in &rows {
        let token = RegistrationToken {
            token: r.text(0),
            uses_allowed: r.opt_int(1),
            // Synapse's pending uses were its own sign-up sessions, which end with it.
            pending: 0,
            completed: r.int(3),
            expiry_time: r.opt_int(4),
        };
        if store.get_registration_token(&token.token).map_err(store_err)?.is_none() {
            store.create_registration_token(&token).map_err(store_err)?;
        }
    }
    summary.count("registration tokens", rows.len());
    // Filters keep their IDs: clients hold on to them and sync with them.
    let filters = db.rows("SELECT full_user_id, filter_id, filter_json FROM user_filters", &[])?;
    let mut n = 0;
    for r in &filters {
        let Some(user) = r.opt_text(0) else { continue };
        let Ok(filter) = serde_json::from_str::<Value>(&r.text(2)) else { continue };
        if store.get_filter(&user, r.int(1)).map_err(store_err)?.is_none() {
            store.import_filter(&user, r.int(1), &filter).map_err(store_err)?;
        }
        n += 1;
    }
    summary.count("sync filters", n);
    summary.skip("sync filters", filters.len() - n, "not JSON, or of an account Synapse had no full ID for");
    Ok(())
}

/// Users' reports of events, for the admin API's event reports (numbered by Myelin).
fn reports(db: &SynapseDb, store: &dyn Storage, summary: &mut Summary) -> Result<(), String> {
    let rows = db.rows(
        "SELECT id, received_ts, room_id, event_id, user_id, reason, content FROM event_reports ORDER BY id",
        &[],
    )?;
    for r in &rows {
        let done_key = format!("report:{}", r.int(0));
        if is_done(store, &done_key)? {
            continue;
        }
        let report = myelin_storage::EventReport {
            id: r.int(0),
            received_ts: r.int(1),
            room_id: r.text(2),
            event_id: r.text(3),
            user_id: r.text(4),
            reason: r.opt_text(5),
            content: r.opt_text(6).and_then(|c| serde_json::from_str(&c).ok()).unwrap_or_else(|| json!({})),
        };
        store.add_event_report(&report).map_err(store_err)?;
        mark_done(store, &done_key)?;
    }
    summary.count("event reports", rows.len());
    Ok(())
}

/// Synapse's push rules of one user: `(rule_id as "global/kind/id", conditions, actions)` in
/// Synapse's order, and `(rule_id, enabled)` overrides.
pub struct PushRules {
    /// The user.
    pub user: String,
    /// Rules the user added, and actions changed on default rules.
    pub rules: Vec<(String, String, String)>,
    /// Enabled flags set by the user.
    pub enabled: Vec<(String, bool)>,
}

/// Every user's push rules (applied through the homeserver by the caller).
pub fn push_rules(db: &SynapseDb) -> Result<Vec<PushRules>, String> {
    let mut by_user: BTreeMap<String, PushRules> = BTreeMap::new();
    fn of(by_user: &mut BTreeMap<String, PushRules>, user: String) -> &mut PushRules {
        by_user.entry(user.clone()).or_insert_with(|| PushRules { user, rules: Vec::new(), enabled: Vec::new() })
    }
    let rows = db.rows(
        "SELECT user_name, rule_id, conditions, actions FROM push_rules
         ORDER BY user_name, priority_class DESC, priority DESC",
        &[],
    )?;
    for r in rows {
        of(&mut by_user, r.text(0)).rules.push((r.text(1), r.text(2), r.text(3)));
    }
    for r in db.rows("SELECT user_name, rule_id, enabled FROM push_rules_enable", &[])? {
        of(&mut by_user, r.text(0)).enabled.push((r.text(1), r.opt_int(2).unwrap_or(1) != 0));
    }
    Ok(by_user.into_values().collect())
}

/// A pusher: its user and device (it goes when the device logs out) and the body of `POST
/// /pushers/set` that makes it again.
pub struct Pusher {
    /// The user.
    pub user: String,
    /// The device whose session set it (empty if Synapse did not record one).
    pub device_id: String,
    /// The body of `POST /pushers/set`.
    pub body: Map<String, Value>,
}

/// Every pusher.
pub fn pushers(db: &SynapseDb) -> Result<Vec<Pusher>, String> {
    let rows = db.rows(
        "SELECT p.user_name, p.kind, p.app_id, p.app_display_name, p.device_display_name, p.pushkey, p.lang, p.data,
                p.profile_tag,
                coalesce(p.device_id, (SELECT t.device_id FROM access_tokens t WHERE t.id = p.access_token), '')
         FROM pushers p WHERE coalesce(p.enabled, TRUE)",
        &[],
    )?;
    Ok(rows.into_iter().map(|r| Pusher { user: r.text(0), device_id: r.text(9), body: pusher_body(&r) }).collect())
}

fn pusher_body(r: &Row) -> Map<String, Value> {
    let mut body = Map::new();
    for (i, key) in [(1, "kind"), (2, "app_id"), (3, "app_display_name"), (4, "device_display_name"), (5, "pushkey")] {
        body.insert(key.into(), Value::String(r.text(i)));
    }
    body.insert("lang".into(), Value::String(r.opt_text(6).unwrap_or_else(|| "en".into())));
    let data = r.opt_text(7).and_then(|d| serde_json::from_str(&d).ok()).unwrap_or_else(|| json!({}));
    body.insert("data".into(), data);
    let tag = r.text(8);
    if !tag.is_empty() {
        body.insert("profile_tag".into(), Value::String(tag));
    }
    body
}

/// Push rules and pushers, set as their users would set them (the handlers check and store
/// them in Myelin's own form).
pub async fn through_handlers(hs: &Homeserver, rules: Vec<PushRules>, pushers: Vec<Pusher>) -> (usize, usize) {
    let requester = async |user: &str| {
        let user = ruma::OwnedUserId::try_from(user).ok()?;
        hs.requester_for(&user).await.ok()
    };
    let (mut rule_count, mut pusher_count) = (0, 0);
    for user_rules in rules {
        let Some(me) = requester(&user_rules.user).await else { continue };
        let mut last_of_kind: std::collections::HashMap<String, String> = Default::default();
        for (rule_id, conditions, actions) in &user_rules.rules {
            let Some((kind, id)) = rule_id.strip_prefix("global/").and_then(|r| r.split_once('/')) else { continue };
            let actions: Value = serde_json::from_str(actions).unwrap_or(Value::Array(vec![]));
            if id.starts_with('.') {
                // A default rule whose actions the user changed.
                let body = json!({ "actions": actions });
                let body = body.as_object().cloned().unwrap_or_default();
                if hs.set_push_rule_attribute(&me, "global", kind, id, "actions", &body).await.is_ok() {
                    rule_count += 1;
                }
                continue;
            }
            let conditions: Value = serde_json::from_str(conditions).unwrap_or(Value::Array(vec![]));
            let mut body = serde_json::Map::new();
            body.insert("actions".into(), actions);
            match kind {
                "content" => {
                    let pattern = conditions.get(0).and_then(|c| c.get("pattern")).cloned().unwrap_or(Value::Null);
                    body.insert("pattern".into(), pattern);
                }
                "override" | "underride" => {
                    body.insert("conditions".into(), conditions);
                }
                _ => {}
            }
            let after = last_of_kind.get(kind).cloned();
            match hs.put_push_rule(&me, "global", kind, id, None, after.as_deref(), &body).await {
                Ok(()) => {
                    last_of_kind.insert(kind.to_owned(), id.to_owned());
                    rule_count += 1;
                }
                Err(e) => eprintln!("  push rule {rule_id} of {} not imported: {}", user_rules.user, e.message),
            }
        }
        for (rule_id, enabled) in &user_rules.enabled {
            let Some((kind, id)) = rule_id.strip_prefix("global/").and_then(|r| r.split_once('/')) else { continue };
            let body = json!({ "enabled": enabled });
            let body = body.as_object().cloned().unwrap_or_default();
            if let Err(e) = hs.set_push_rule_attribute(&me, "global", kind, id, "enabled", &body).await {
                eprintln!("  push rule {rule_id} of {}: enabled flag not imported: {}", user_rules.user, e.message);
            }
        }
    }
    for pusher in pushers {
        let Some(mut me) = requester(&pusher.user).await else { continue };
        me.device_id = pusher.device_id;
        match hs.set_pusher(&me, &pusher.body).await {
            Ok(()) => pusher_count += 1,
            Err(e) => eprintln!("  a pusher of {} not imported: {}", pusher.user, e.message),
        }
    }
    (rule_count, pusher_count)
}
