//! `myelin import-synapse`: moves a stopped Synapse's data (its SQLite database, media store and
//! signing key) into Myelin's database, so its users, their sessions and its rooms carry on.
//!
//! Read-only on Synapse's side (the database is opened read-only, files are copied). Rows are
//! written through Myelin's storage traits, so either Myelin backend can be the target; push
//! rules and pushers go through the homeserver's own request handlers, as a client's would.
//!
//! Rooms: every event in Synapse's stream order, with its state group translated (Synapse's
//! groups are deltas on a previous group, as Myelin's are), rejections, soft failures and
//! redactions kept (a redacted event is stored pruned, as Myelin stores them); the room's
//! current state is Synapse's. Stream positions are Myelin's own: a client's old sync token
//! starts an initial sync.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use myelin_core::config::{Config, Database};
use myelin_storage::{
    MediaRow, NewEvent, OutlierEvent, ReceiptRow, RegistrationToken, StateChange, StateEntry, Storage, UserRow,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::{Map, Value, json};

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
    database: PathBuf,
    media_store: PathBuf,
    signing_key: PathBuf,
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
        let engine = yaml["database"]["name"].as_str().unwrap_or("sqlite3");
        if engine != "sqlite3" {
            return Err(format!(
                "Synapse's database is `{engine}`: this version of `myelin import-synapse` reads Synapse's SQLite \
                 databases only (see docs/migrating-from-synapse.md)"
            ));
        }
        let database = yaml["database"]["args"]["database"]
            .as_str()
            .ok_or_else(|| format!("{} has no database.args.database", path.display()))?;
        let media_store = text_of("media_store_path").unwrap_or_else(|| "media_store".into());
        let signing_key = text_of("signing_key_path").unwrap_or_else(|| format!("{server_name}.signing.key"));
        Ok(SynapseConfig {
            database: base.join(database),
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
pub fn open_synapse(synapse: &SynapseConfig) -> Result<Connection, String> {
    let db = Connection::open_with_flags(&synapse.database, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("Could not open Synapse's database {}: {e}", synapse.database.display()))?;
    let version: Option<i64> = db
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .optional()
        .map_err(|e| format!("{} is not a Synapse database: {e}", synapse.database.display()))?;
    match version {
        Some(v) if SUPPORTED_SCHEMA.contains(&v) => Ok(db),
        Some(v) => Err(format!(
            "Synapse's database has schema version {v}; this Myelin imports schema versions {} to {} (Synapse releases \
             from late 2024 to 1.163): upgrade Synapse (or Myelin) first",
            SUPPORTED_SCHEMA.start(),
            SUPPORTED_SCHEMA.end()
        )),
        None => Err(format!("{} is not a Synapse database (no schema version)", synapse.database.display())),
    }
}

/// Refuses a target that already holds data (a second run), before anything is written.
pub fn check_target_empty(store: &dyn Storage) -> Result<(), String> {
    let users = store.count_users().map_err(|e| e.to_string())?;
    let stream = store.max_stream_ordering().map_err(|e| e.to_string())?;
    if users > 0 || stream > 0 {
        return Err(format!(
            "Myelin's database already holds data ({users} users): the import only writes into an empty one. Run \
             again with --start-over to empty it first"
        ));
    }
    Ok(())
}

/// Copies Synapse's signing key to Myelin's `signing_key_path` (the old file, if any, is kept
/// beside it as `.before-import`), so the server keeps its key ID and signatures.
pub fn copy_signing_key(synapse: &SynapseConfig, config: &Config) -> Result<(), String> {
    let key = std::fs::read(&synapse.signing_key)
        .map_err(|e| format!("Could not read Synapse's signing key {}: {e}", synapse.signing_key.display()))?;
    let target = &config.signing_key_path;
    if target.exists() {
        let mut backup = target.clone().into_os_string();
        backup.push(".before-import");
        std::fs::rename(target, &backup).map_err(|e| format!("Could not move {} aside: {e}", target.display()))?;
    }
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("Could not create {}: {e}", dir.display()))?;
    }
    std::fs::write(target, &key).map_err(|e| format!("Could not write {}: {e}", target.display()))?;
    std::fs::File::open(target).and_then(|f| f.sync_all()).map_err(|e| e.to_string())?;
    myelin_core::events::SigningKey::load(target).map(|_| ())
}

fn sql(e: rusqlite::Error) -> String {
    format!("reading Synapse's database: {e}")
}

fn store_err(e: myelin_storage::StorageError) -> String {
    format!("writing Myelin's database: {e}")
}

/// Everything stored directly (not through request handlers): accounts, rooms, keys, media.
pub fn import_rows(
    db: &Connection,
    synapse: &SynapseConfig,
    config: &Config,
    store: &dyn Storage,
) -> Result<Summary, String> {
    if synapse.server_name != config.server_name {
        return Err(format!(
            "Synapse's server_name is {} and Myelin's is {}: they must be the same (the server keeps its name)",
            synapse.server_name, config.server_name
        ));
    }
    let mut summary = Summary::default();
    users(db, store, &mut summary)?;
    rooms(db, store, &mut summary)?;
    account_data(db, store, &mut summary)?;
    receipts(db, store, &mut summary)?;
    keys(db, store, &mut summary)?;
    media(db, synapse, config, store, &mut summary)?;
    registration_tokens(db, store, &mut summary)?;
    Ok(summary)
}

fn users(db: &Connection, store: &dyn Storage, summary: &mut Summary) -> Result<(), String> {
    let mut stmt = db
        .prepare(
            "SELECT u.name, u.password_hash, coalesce(u.creation_ts, 0), u.admin, u.is_guest, u.deactivated,
                    coalesce(u.shadow_banned, 0), p.displayname, p.avatar_url
             FROM users u LEFT JOIN profiles p ON p.full_user_id = u.name ORDER BY u.name",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                UserRow {
                    user_id: r.get(0)?,
                    password_hash: r.get::<_, Option<String>>(1)?.filter(|h| !h.is_empty()),
                    // Synapse's creation_ts is in seconds.
                    creation_ts: r.get::<_, i64>(2)? * 1000,
                    is_admin: r.get::<_, i64>(3)? != 0,
                    is_guest: r.get::<_, i64>(4)? != 0,
                    deactivated: r.get::<_, i64>(5)? != 0,
                    shadow_banned: r.get::<_, i64>(6)? != 0,
                },
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<String>>(8)?,
            ))
        })
        .map_err(sql)?;
    let mut n = 0;
    for row in rows {
        let (user, displayname, avatar) = row.map_err(sql)?;
        store.create_user(&user, displayname.as_deref()).map_err(store_err)?;
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
        if avatar.is_some() {
            store
                .set_profile_field(&user.user_id, myelin_storage::ProfileField::AvatarUrl, avatar.as_deref())
                .map_err(store_err)?;
        }
        n += 1;
    }
    summary.count("users (with profiles)", n);

    let mut n = 0;
    let mut stmt = db.prepare("SELECT user_id, device_id, display_name FROM devices WHERE NOT hidden").map_err(sql)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))).map_err(sql)?;
    for row in rows {
        let (user, device, name): (String, String, Option<String>) = row.map_err(sql)?;
        store.upsert_device(&user, &device, name.as_deref()).map_err(store_err)?;
        n += 1;
    }
    summary.count("devices", n);

    // Tokens of a device, not expired; refresh tokens and puppeting tokens have no equivalent.
    let now = now_ms();
    let (mut n, mut skipped) = (0, 0);
    let mut stmt = db
        .prepare("SELECT token, user_id, device_id, valid_until_ms, puppets_user_id FROM access_tokens")
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?, r.get(3)?, r.get(4)?))
        })
        .map_err(sql)?;
    for row in rows {
        let (token, user, device, valid_until, puppets): (_, _, _, Option<i64>, Option<String>) = row.map_err(sql)?;
        match device {
            Some(device) if puppets.is_none() && valid_until.is_none_or(|t| t > now) => {
                store.add_access_token(&token, &user, &device).map_err(store_err)?;
                n += 1;
            }
            _ => skipped += 1,
        }
    }
    summary.count("access tokens", n);
    summary.skip(
        "access tokens",
        skipped,
        "without a device, expired, or an admin's puppeting token (their users log in again)",
    );
    let refresh: i64 = db.query_row("SELECT count(*) FROM refresh_tokens", [], |r| r.get(0)).unwrap_or(0);
    summary.skip(
        "refresh tokens",
        refresh as usize,
        "Myelin does not issue refresh tokens yet: their access tokens work until they expire",
    );
    Ok(())
}

/// A whole state: `(type, state key)` to event ID.
type FullState = BTreeMap<(String, String), String>;

/// A device's keys to upload: identity keys, one-time keys, fallback keys (`(algorithm, key
/// ID, JSON)`).
type DeviceKeys = (Option<String>, Vec<(String, String, String)>, Vec<(String, String, String)>);

/// A pusher: its user and the body of `POST /pushers/set` that makes it again.
pub type Pusher = (String, Map<String, Value>);

/// Synapse's state groups, read as full maps (memoised per group while a room is imported).
struct SynapseStateGroups<'a> {
    db: &'a Connection,
    full: HashMap<i64, Arc<FullState>>,
}

impl SynapseStateGroups<'_> {
    fn prev(&self, group: i64) -> Result<Option<i64>, String> {
        self.db
            .query_row("SELECT prev_state_group FROM state_group_edges WHERE state_group = ?1", [group], |r| r.get(0))
            .optional()
            .map_err(sql)
    }

    /// The whole state of a group: its chain of deltas applied from the oldest.
    fn state(&mut self, group: i64) -> Result<Arc<FullState>, String> {
        if let Some(s) = self.full.get(&group) {
            return Ok(s.clone());
        }
        // Bounded: a room with many groups is read again from its deltas instead.
        if self.full.len() > 256 {
            self.full.clear();
        }
        let mut chain = vec![group];
        let mut base = BTreeMap::new();
        while let Some(prev) = self.prev(*chain.last().unwrap_or(&group))? {
            if let Some(known) = self.full.get(&prev) {
                base = (**known).clone();
                break;
            }
            chain.push(prev);
        }
        let mut stmt = self
            .db
            .prepare_cached("SELECT type, state_key, event_id FROM state_groups_state WHERE state_group = ?1")
            .map_err(sql)?;
        for g in chain.iter().rev() {
            let rows = stmt
                .query_map([g], |r| Ok(((r.get::<_, String>(0)?, r.get::<_, String>(1)?), r.get::<_, String>(2)?)))
                .map_err(sql)?;
            for row in rows {
                let (key, id) = row.map_err(sql)?;
                base.insert(key, id);
            }
            self.full.insert(*g, Arc::new(base.clone()));
        }
        Ok(self.full[&group].clone())
    }
}

fn entries(state: &FullState) -> Vec<StateEntry> {
    state
        .iter()
        .map(|((t, k), id)| StateEntry { event_type: t.clone(), state_key: k.clone(), event_id: id.clone() })
        .collect()
}

/// A Synapse event row as the import needs it.
struct SynapseEvent {
    event_id: String,
    room_id: String,
    kind: String,
    state_key: Option<String>,
    sender: String,
    outlier: bool,
    json: String,
    internal_metadata: String,
    state_group: Option<i64>,
    rejected: bool,
}

fn rooms(db: &Connection, store: &dyn Storage, summary: &mut Summary) -> Result<(), String> {
    // Redactions Synapse applies: accepted ones, of an event in the same room.
    let mut redacted_by: HashMap<String, String> = HashMap::new();
    {
        let mut stmt = db
            .prepare(
                "SELECT r.redacts, r.event_id, e.sender, t.sender, rooms.room_version
                 FROM redactions r JOIN events e ON e.event_id = r.event_id
                 JOIN events t ON t.event_id = r.redacts AND t.room_id = e.room_id
                 LEFT JOIN rooms ON rooms.room_id = e.room_id
                 WHERE NOT EXISTS (SELECT 1 FROM rejections x WHERE x.event_id = r.event_id)",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get(4)?,
                ))
            })
            .map_err(sql)?;
        for row in rows {
            let (target, redaction, redactor, author, version): (_, _, _, _, Option<String>) = row.map_err(sql)?;
            // Room versions 3 on check a redaction of another server's user's event when it
            // is applied, as Synapse does: the same server's, or the authorised (v1, v2) only.
            let same_server = redactor.split_once(':').map(|p| p.1) == author.split_once(':').map(|p| p.1);
            if same_server || matches!(version.as_deref(), Some("1" | "2")) {
                redacted_by.insert(target, redaction);
            }
        }
    }

    let mut room_stmt =
        db.prepare("SELECT room_id, room_version, creator, coalesce(is_public, 0) FROM rooms").map_err(sql)?;
    let room_rows: Vec<(String, Option<String>, Option<String>, i64)> = room_stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .map_err(sql)?
        .collect::<Result<_, _>>()
        .map_err(sql)?;
    let (mut rooms_done, mut events_done, mut outliers_done, mut rooms_skipped) = (0, 0, 0, 0);
    for (room_id, version, creator, is_public) in room_rows {
        let create: Option<(String, String)> = db
            .query_row(
                "SELECT j.json, coalesce(e.sender, '') FROM events e JOIN event_json j ON j.event_id = e.event_id
                 WHERE e.room_id = ?1 AND e.type = 'm.room.create' AND e.state_key = ''",
                [&room_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql)?;
        let Some((create_json, create_sender)) = create else {
            rooms_skipped += 1;
            continue;
        };
        let create_json: Value = serde_json::from_str(&create_json).map_err(|e| e.to_string())?;
        let version = version
            .or_else(|| create_json["content"]["room_version"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "1".into());
        let Some(rules) = ruma::RoomVersionId::try_from(version.as_str()).ok().and_then(|v| v.rules()) else {
            rooms_skipped += 1;
            continue;
        };
        store
            .create_room(&myelin_storage::RoomRow {
                room_id: room_id.clone(),
                room_version: version.clone(),
                creator: creator.unwrap_or(create_sender),
                is_public: is_public != 0,
            })
            .map_err(store_err)?;
        let current: Vec<StateEntry> = {
            let mut stmt = db
                .prepare("SELECT type, state_key, event_id FROM current_state_events WHERE room_id = ?1")
                .map_err(sql)?;
            stmt.query_map([&room_id], |r| {
                Ok(StateEntry { event_type: r.get(0)?, state_key: r.get(1)?, event_id: r.get(2)? })
            })
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?
        };
        // The room's last event in the timeline sets its current state to Synapse's (resolved)
        // one.
        let last_in_timeline: Option<String> = db
            .query_row(
                "SELECT e.event_id FROM events e JOIN event_to_state_groups g ON g.event_id = e.event_id
                 WHERE e.room_id = ?1 AND NOT e.outlier ORDER BY e.stream_ordering DESC LIMIT 1",
                [&room_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)?;
        let mut room = RoomImport {
            store,
            groups: SynapseStateGroups { db, full: HashMap::new() },
            mapped: HashMap::new(),
            batch: Vec::new(),
            outliers: Vec::new(),
            current: &current,
            last_in_timeline,
            written: 0,
            outliers_written: 0,
        };
        let mut stmt = db
            .prepare_cached(
                "SELECT e.event_id, e.room_id, e.type, e.state_key, coalesce(e.sender, ''), e.outlier, j.json,
                        j.internal_metadata, g.state_group,
                        EXISTS (SELECT 1 FROM rejections x WHERE x.event_id = e.event_id)
                 FROM events e JOIN event_json j ON j.event_id = e.event_id
                 LEFT JOIN event_to_state_groups g ON g.event_id = e.event_id
                 WHERE e.room_id = ?1 ORDER BY e.stream_ordering",
            )
            .map_err(sql)?;
        let mut rows = stmt.query([&room_id]).map_err(sql)?;
        while let Some(r) = rows.next().map_err(sql)? {
            let ev = SynapseEvent {
                event_id: r.get(0).map_err(sql)?,
                room_id: r.get(1).map_err(sql)?,
                kind: r.get(2).map_err(sql)?,
                state_key: r.get(3).map_err(sql)?,
                sender: r.get(4).map_err(sql)?,
                outlier: r.get::<_, i64>(5).map_err(sql)? != 0,
                json: r.get(6).map_err(sql)?,
                internal_metadata: r.get(7).map_err(sql)?,
                state_group: r.get(8).map_err(sql)?,
                rejected: r.get::<_, i64>(9).map_err(sql)? != 0,
            };
            let json = stored_json(&ev, &redacted_by, db, &rules)?;
            room.add(ev, json)?;
        }
        room.flush()?;
        events_done += room.written;
        outliers_done += room.outliers_written;
        if let Some(rule) = current.iter().find(|e| e.event_type == "m.room.join_rules" && e.state_key.is_empty()) {
            let rule_json: Option<String> = db
                .query_row("SELECT json FROM event_json WHERE event_id = ?1", [&rule.event_id], |r| r.get(0))
                .optional()
                .map_err(sql)?;
            if let Some(join_rule) = rule_json
                .and_then(|j| serde_json::from_str::<Value>(&j).ok())
                .and_then(|v| v["content"]["join_rule"].as_str().map(str::to_owned))
            {
                store.set_room_join_rule(&room_id, &join_rule).map_err(store_err)?;
            }
        }
        if is_public != 0 {
            store.set_room_public(&room_id, true).map_err(store_err)?;
        }
        rooms_done += 1;
    }
    summary.count("rooms", rooms_done);
    summary.count("events", events_done);
    summary.count("outlier events (state and auth of remote rooms)", outliers_done);
    summary.skip("rooms", rooms_skipped, "no create event stored, or a room version Myelin does not know");

    let mut n = 0;
    let mut stmt = db.prepare("SELECT room_alias, room_id, coalesce(creator, '') FROM room_aliases").map_err(sql)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)));
    for row in rows.map_err(sql)? {
        let (alias, room, creator) = row.map_err(sql)?;
        if store.get_room(&room).map_err(store_err)?.is_some() {
            store.create_alias(&alias, &room, &creator).map_err(store_err)?;
            n += 1;
        }
    }
    summary.count("room aliases", n);
    Ok(())
}

/// Events of one room on their way into Myelin: messages are written in batches (one
/// transaction each); an event with a state group not seen before is written alone, since the
/// events after it need the group Myelin gives it.
struct RoomImport<'a> {
    store: &'a dyn Storage,
    groups: SynapseStateGroups<'a>,
    /// Synapse group -> (Myelin group, deltas since its snapshot).
    mapped: HashMap<i64, (i64, i64)>,
    batch: Vec<PendingEvent>,
    outliers: Vec<OutlierEvent>,
    current: &'a [StateEntry],
    last_in_timeline: Option<String>,
    written: usize,
    outliers_written: usize,
}

/// What a [`NewEvent`] borrows, owned until its batch is written.
struct PendingEvent {
    ev: SynapseEvent,
    json: String,
    membership: Option<String>,
    prev_events: Vec<String>,
    soft_failed: bool,
    state: StateChange,
}

/// Events per transaction.
const BATCH: usize = 500;

impl RoomImport<'_> {
    fn add(&mut self, ev: SynapseEvent, json: String) -> Result<(), String> {
        let value: Value = serde_json::from_str(&ev.json).map_err(|e| e.to_string())?;
        let membership = (ev.kind == "m.room.member")
            .then(|| value["content"]["membership"].as_str().map(str::to_owned))
            .flatten();
        let Some(sg) = ev.state_group.filter(|_| !ev.outlier) else {
            self.outliers.push(OutlierEvent {
                event_id: ev.event_id,
                room_id: ev.room_id,
                event_type: ev.kind,
                state_key: ev.state_key,
                sender: ev.sender,
                membership,
                json,
                rejected: ev.rejected,
            });
            if self.outliers.len() >= BATCH {
                self.flush()?;
            }
            return Ok(());
        };
        let prev_events = myelin_core::events::parse_event_references(&value["prev_events"])
            .0
            .into_iter()
            .map(|id| id.to_string())
            .collect();
        let soft_failed = serde_json::from_str::<Value>(&ev.internal_metadata)
            .ok()
            .and_then(|m| m["soft_failed"].as_bool())
            .unwrap_or(false);
        if let Some(&(group, _)) = self.mapped.get(&sg) {
            let state = StateChange::Same(group);
            self.batch.push(PendingEvent { ev, json, membership, prev_events, soft_failed, state });
            if self.batch.len() >= BATCH {
                self.flush()?;
            }
            return Ok(());
        }
        // A new group: its parent's Myelin group must be known, so what is queued goes first.
        self.flush()?;
        let (state, chain) = self.state_change(sg)?;
        self.batch.push(PendingEvent { ev, json, membership, prev_events, soft_failed, state });
        let group = self.flush()?.unwrap_or_default();
        self.mapped.insert(sg, (group, chain));
        Ok(())
    }

    /// The change that makes Synapse's group `sg` in Myelin: a delta on its parent's Myelin
    /// group when that is known and the chain short enough, else a snapshot.
    fn state_change(&mut self, sg: i64) -> Result<(StateChange, i64), String> {
        let full = self.groups.state(sg)?;
        let prev = self.groups.prev(sg)?.and_then(|p| self.mapped.get(&p).map(|m| (p, *m)));
        if let Some((p, (prev_group, chain))) = prev
            && chain + 1 < myelin_storage::sqlite::MAX_STATE_DELTA_CHAIN
        {
            let before = self.groups.state(p)?;
            // A delta only adds or replaces: a key gone needs a snapshot.
            if before.keys().all(|k| full.contains_key(k)) {
                let delta: FullState =
                    full.iter().filter(|(k, id)| before.get(*k) != Some(*id)).map(|(k, id)| (k.clone(), id.clone())).collect();
                return Ok((StateChange::New { prev: Some(prev_group), delta: entries(&delta) }, chain + 1));
            }
        }
        Ok((StateChange::New { prev: None, delta: entries(&full) }, 0))
    }

    /// Writes what is queued; returns the last event's Myelin state group.
    fn flush(&mut self) -> Result<Option<i64>, String> {
        if !self.outliers.is_empty() {
            self.store.persist_outliers(&self.outliers).map_err(store_err)?;
            self.outliers_written += self.outliers.len();
            self.outliers.clear();
        }
        if self.batch.is_empty() {
            return Ok(None);
        }
        let events: Vec<NewEvent<'_>> = self
            .batch
            .iter()
            .map(|p| NewEvent {
                event_id: &p.ev.event_id,
                room_id: &p.ev.room_id,
                event_type: &p.ev.kind,
                state_key: p.ev.state_key.as_deref(),
                sender: &p.ev.sender,
                membership: p.membership.as_deref(),
                json: &p.json,
                rejected: p.ev.rejected,
                soft_failed: p.soft_failed,
                state: p.state.clone(),
                prev_events: &p.prev_events,
                updates_current_state: !p.ev.rejected && !p.soft_failed,
                txn: None,
                redaction: None,
                current_state: (self.last_in_timeline.as_deref() == Some(p.ev.event_id.as_str())).then_some(self.current),
                destinations: &[],
            })
            .collect();
        let mut last = None;
        for result in self.store.persist_events(&events) {
            last = Some(result.map_err(store_err)?.1);
        }
        self.written += events.len();
        drop(events);
        self.batch.clear();
        Ok(last)
    }
}

/// The JSON Myelin stores for a Synapse event: with its `event_id`, without Synapse's
/// bookkeeping in `unsigned`, and pruned if an applied redaction redacts it.
fn stored_json(
    ev: &SynapseEvent,
    redacted_by: &HashMap<String, String>,
    db: &Connection,
    rules: &ruma::room_version_rules::RoomVersionRules,
) -> Result<String, String> {
    let mut value: Map<String, Value> = serde_json::from_str(&ev.json).map_err(|e| e.to_string())?;
    value.insert("event_id".into(), Value::String(ev.event_id.clone()));
    if let Some(Value::Object(unsigned)) = value.get_mut("unsigned") {
        unsigned.remove("age_ts");
        if unsigned.is_empty() {
            value.remove("unsigned");
        }
    }
    let json = serde_json::to_string(&value).map_err(|e| e.to_string())?;
    let Some(redaction) = redacted_by.get(&ev.event_id) else { return Ok(json) };
    let because: Option<String> = db
        .query_row("SELECT json FROM event_json WHERE event_id = ?1", [redaction], |r| r.get(0))
        .optional()
        .map_err(sql)?;
    let because = because.and_then(|j| serde_json::from_str::<Value>(&j).ok()).map(|mut v| {
        v["event_id"] = Value::String(redaction.clone());
        if let Some(u) = v.get_mut("unsigned").and_then(Value::as_object_mut) {
            u.remove("age_ts");
        }
        myelin_core::events::client_event(&v)
    });
    myelin_core::events::redact_json(&json, rules, because.as_ref()).map_err(|e| e.message)
}

fn account_data(db: &Connection, store: &dyn Storage, summary: &mut Summary) -> Result<(), String> {
    let mut n = 0;
    let mut stmt = db
        .prepare(
            "SELECT user_id, '', account_data_type, content FROM account_data
             UNION ALL SELECT user_id, room_id, account_data_type, content FROM room_account_data",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
        })
        .map_err(sql)?;
    for row in rows {
        let (user, room, kind, content) = row.map_err(sql)?;
        let Ok(content) = serde_json::from_str::<Value>(&content) else { continue };
        store.set_account_data(&user, &room, &kind, &content).map_err(store_err)?;
        n += 1;
    }
    summary.count("account data", n);

    // Tags are room account data `m.tag` for Myelin.
    let mut tags: BTreeMap<(String, String), Map<String, Value>> = BTreeMap::new();
    let mut stmt = db.prepare("SELECT user_id, room_id, tag, content FROM room_tags").map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
        })
        .map_err(sql)?;
    for row in rows {
        let (user, room, tag, content) = row.map_err(sql)?;
        let content = serde_json::from_str(&content).unwrap_or_else(|_| json!({}));
        tags.entry((user, room)).or_default().insert(tag, content);
    }
    for ((user, room), tags_of_room) in &tags {
        store.set_account_data(user, room, "m.tag", &json!({ "tags": tags_of_room })).map_err(store_err)?;
    }
    summary.count("rooms with tags", tags.len());
    Ok(())
}

fn receipts(db: &Connection, store: &dyn Storage, summary: &mut Summary) -> Result<(), String> {
    let mut n = 0;
    let mut stmt = db
        .prepare(
            "SELECT room_id, receipt_type, user_id, coalesce(thread_id, ''), event_id, data FROM receipts_linearized
             ORDER BY stream_id",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .map_err(sql)?;
    for row in rows {
        let (room_id, receipt_type, user_id, thread_id, event_id, data) = row.map_err(sql)?;
        if store.get_room(&room_id).map_err(store_err)?.is_none() {
            continue;
        }
        let ts = serde_json::from_str::<Value>(&data).ok().and_then(|d| d["ts"].as_i64()).unwrap_or(0);
        store
            .set_receipt(&ReceiptRow { room_id, receipt_type, user_id, thread_id, event_id, ts })
            .map_err(store_err)?;
        n += 1;
    }
    summary.count("read receipts", n);
    Ok(())
}

fn keys(db: &Connection, store: &dyn Storage, summary: &mut Summary) -> Result<(), String> {
    // Device keys, one-time keys and fallback keys, per device.
    let mut devices: BTreeMap<(String, String), DeviceKeys> = BTreeMap::new();
    let mut stmt = db.prepare("SELECT user_id, device_id, key_json FROM e2e_device_keys_json").map_err(sql)?;
    for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?))).map_err(sql)? {
        let (user, device, json): (String, String, String) = row.map_err(sql)?;
        devices.entry((user, device)).or_default().0 = Some(json);
    }
    let mut stmt = db
        .prepare("SELECT user_id, device_id, algorithm, key_id, key_json FROM e2e_one_time_keys_json")
        .map_err(sql)?;
    let mut one_time = 0;
    for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))).map_err(sql)? {
        let (user, device, algorithm, key_id, json): (String, String, String, String, String) = row.map_err(sql)?;
        devices.entry((user, device)).or_default().1.push((algorithm, key_id, json));
        one_time += 1;
    }
    let mut stmt = db
        .prepare("SELECT user_id, device_id, algorithm, key_id, key_json FROM e2e_fallback_keys_json WHERE NOT used")
        .map_err(sql)?;
    let mut fallback = 0;
    for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))).map_err(sql)? {
        let (user, device, algorithm, key_id, json): (String, String, String, String, String) = row.map_err(sql)?;
        devices.entry((user, device)).or_default().2.push((algorithm, key_id, json));
        fallback += 1;
    }
    let mut with_keys = 0;
    for ((user, device), (device_keys, otks, fallbacks)) in &devices {
        with_keys += device_keys.is_some() as usize;
        store.upload_keys(user, device, device_keys.as_deref(), otks, fallbacks).map_err(store_err)?;
    }
    summary.count("devices with identity keys", with_keys);
    summary.count("one-time keys", one_time);
    summary.count("fallback keys", fallback);

    // Cross-signing keys: the newest of each type per user.
    let mut cross: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut stmt =
        db.prepare("SELECT user_id, keytype, keydata FROM e2e_cross_signing_keys ORDER BY stream_id").map_err(sql)?;
    for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(sql)? {
        let (user, kind, data): (String, String, String) = row.map_err(sql)?;
        let list = cross.entry(user).or_default();
        list.retain(|(k, _)| *k != kind);
        list.push((kind, data));
    }
    for (user, list) in &cross {
        store.set_cross_signing_keys(user, list).map_err(store_err)?;
    }
    summary.count("users with cross-signing keys", cross.len());

    // Key backup: versions in order (deleted ones too, so the numbers stay the same).
    let (mut versions, mut backed_up) = (0, 0);
    let mut stmt = db
        .prepare("SELECT user_id, version, algorithm, auth_data, deleted FROM e2e_room_keys_versions ORDER BY user_id, version")
        .map_err(sql)?;
    let rows: Vec<(String, i64, String, String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .map_err(sql)?
        .collect::<Result<_, _>>()
        .map_err(sql)?;
    for (user, version, algorithm, auth_data, deleted) in rows {
        let mut made = store.create_backup_version(&user, &algorithm, &auth_data).map_err(store_err)?;
        // Numbers Synapse skipped (never the case today): created and deleted to catch up.
        while made < version {
            store.delete_backup_version(&user, made).map_err(store_err)?;
            made = store.create_backup_version(&user, &algorithm, &auth_data).map_err(store_err)?;
        }
        if deleted != 0 {
            store.delete_backup_version(&user, made).map_err(store_err)?;
            continue;
        }
        let mut stmt = db
            .prepare_cached(
                "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data
                 FROM e2e_room_keys WHERE user_id = ?1 AND version = ?2",
            )
            .map_err(sql)?;
        let keys: Vec<(String, String, String)> = stmt
            .query_map(params![user, version], |r| {
                let data: String = r.get(5)?;
                let session = json!({
                    "first_message_index": r.get::<_, i64>(2)?,
                    "forwarded_count": r.get::<_, i64>(3)?,
                    "is_verified": r.get::<_, i64>(4)? != 0,
                    "session_data": serde_json::from_str::<Value>(&data).unwrap_or(Value::Null),
                });
                Ok((r.get(0)?, r.get(1)?, session.to_string()))
            })
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        backed_up += keys.len();
        store.put_backup_keys(&user, made, &keys).map_err(store_err)?;
        versions += 1;
    }
    summary.count("key backup versions", versions);
    summary.count("backed-up room keys", backed_up);
    let signatures: i64 =
        db.query_row("SELECT count(*) FROM e2e_cross_signing_signatures", [], |r| r.get(0)).unwrap_or(0);
    summary.skip(
        "cross-signing signatures of other users' keys",
        signatures as usize,
        "not carried over yet: users verify each other again",
    );
    let inbox: i64 = db.query_row("SELECT count(*) FROM device_inbox", [], |r| r.get(0)).unwrap_or(0);
    summary.skip("to-device messages not yet delivered", inbox as usize, "not carried over yet");
    Ok(())
}

fn media(
    db: &Connection,
    synapse: &SynapseConfig,
    config: &Config,
    store: &dyn Storage,
    summary: &mut Summary,
) -> Result<(), String> {
    let (mut n, mut missing, mut bytes) = (0, 0, 0u64);
    let mut stmt = db
        .prepare(
            "SELECT media_id, coalesce(user_id, ''), media_type, upload_name, media_length, coalesce(created_ts, 0)
             FROM local_media_repository WHERE url_cache IS NULL AND quarantined_by IS NULL",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(MediaRow {
                media_id: r.get(0)?,
                user_id: r.get(1)?,
                content_type: r.get(2)?,
                upload_name: r.get(3)?,
                length: r.get(4)?,
                created_ts: r.get(5)?,
                pending: false,
            })
        })
        .map_err(sql)?;
    let mut seen = HashSet::new();
    for row in rows {
        let row = row.map_err(sql)?;
        let id = &row.media_id;
        // Synapse's layout, which Myelin shares: local_content/ab/cd/rest.
        if id.len() < 5
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            || !seen.insert(id.clone())
        {
            missing += 1;
            continue;
        }
        let relative = Path::new("local_content").join(&id[..2]).join(&id[2..4]).join(&id[4..]);
        let from = synapse.media_store.join(&relative);
        if !from.exists() {
            missing += 1;
            continue;
        }
        let to = config.media_store_path.join(&relative);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("Could not create {}: {e}", dir.display()))?;
        }
        bytes += std::fs::copy(&from, &to).map_err(|e| format!("Could not copy {}: {e}", from.display()))?;
        std::fs::File::open(&to).and_then(|f| f.sync_all()).map_err(|e| e.to_string())?;
        store.insert_media(&row).map_err(store_err)?;
        n += 1;
    }
    summary.count("uploaded media files", n);
    eprintln!("  ({} MiB copied)", bytes >> 20);
    summary.skip("uploaded media", missing, "its file is missing from Synapse's media store");
    let remote: i64 = db.query_row("SELECT count(*) FROM remote_media_cache", [], |r| r.get(0)).unwrap_or(0);
    summary.skip("cached remote media", remote as usize, "fetched again from its server when asked for");
    let quarantined: i64 = db
        .query_row("SELECT count(*) FROM local_media_repository WHERE quarantined_by IS NOT NULL", [], |r| r.get(0))
        .unwrap_or(0);
    summary.skip("quarantined media", quarantined as usize, "left behind on purpose");
    Ok(())
}

fn registration_tokens(db: &Connection, store: &dyn Storage, summary: &mut Summary) -> Result<(), String> {
    let mut n = 0;
    let mut stmt = db
        .prepare("SELECT token, uses_allowed, pending, completed, expiry_time FROM registration_tokens")
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(RegistrationToken {
                token: r.get(0)?,
                uses_allowed: r.get(1)?,
                pending: r.get(2)?,
                completed: r.get(3)?,
                expiry_time: r.get(4)?,
            })
        })
        .map_err(sql)?;
    for row in rows {
        store.create_registration_token(&row.map_err(sql)?).map_err(store_err)?;
        n += 1;
    }
    summary.count("registration tokens", n);
    let filters: i64 = db.query_row("SELECT count(*) FROM user_filters", [], |r| r.get(0)).unwrap_or(0);
    summary.skip(
        "sync filters",
        filters as usize,
        "filter IDs cannot be kept: clients create their filters again (matrix-js-sdk checks its stored one first)",
    );
    Ok(())
}

/// Synapse's push rules of one user: `(rule_id as "global/kind/id", priority_class, priority,
/// conditions, actions)`, and `(rule_id, enabled)` overrides.
pub struct PushRules {
    /// The user.
    pub user: String,
    /// Rules the user added, and actions changed on default rules.
    pub rules: Vec<(String, i64, i64, String, String)>,
    /// Enabled flags set by the user.
    pub enabled: Vec<(String, bool)>,
}

/// Every user's push rules (applied through the homeserver by the caller).
pub fn push_rules(db: &Connection) -> Result<Vec<PushRules>, String> {
    let mut by_user: BTreeMap<String, PushRules> = BTreeMap::new();
    let mut stmt = db
        .prepare(
            "SELECT user_name, rule_id, priority_class, priority, conditions, actions FROM push_rules
             ORDER BY user_name, priority_class DESC, priority DESC",
        )
        .map_err(sql)?;
    for row in
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))).map_err(sql)?
    {
        let (user, rule_id, class, priority, conditions, actions): (String, String, i64, i64, String, String) =
            row.map_err(sql)?;
        by_user
            .entry(user.clone())
            .or_insert_with(|| PushRules { user, rules: Vec::new(), enabled: Vec::new() })
            .rules
            .push((rule_id, class, priority, conditions, actions));
    }
    let mut stmt = db.prepare("SELECT user_name, rule_id, enabled FROM push_rules_enable").map_err(sql)?;
    for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, Option<i64>>(2)?))).map_err(sql)? {
        let (user, rule_id, enabled): (String, String, Option<i64>) = row.map_err(sql)?;
        by_user
            .entry(user.clone())
            .or_insert_with(|| PushRules { user, rules: Vec::new(), enabled: Vec::new() })
            .enabled
            .push((rule_id, enabled.unwrap_or(1) != 0));
    }
    Ok(by_user.into_values().collect())
}

/// Every pusher: `(user, body of POST /pushers/set)`.
pub fn pushers(db: &Connection) -> Result<Vec<Pusher>, String> {
    let mut stmt = db
        .prepare(
            "SELECT user_name, kind, app_id, app_display_name, device_display_name, pushkey, lang, data, profile_tag
             FROM pushers WHERE coalesce(enabled, 1)",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            let data: Option<String> = r.get(7)?;
            let mut body = Map::new();
            body.insert("kind".into(), Value::String(r.get(1)?));
            body.insert("app_id".into(), Value::String(r.get(2)?));
            body.insert("app_display_name".into(), Value::String(r.get(3)?));
            body.insert("device_display_name".into(), Value::String(r.get(4)?));
            body.insert("pushkey".into(), Value::String(r.get(5)?));
            body.insert("lang".into(), Value::String(r.get::<_, Option<String>>(6)?.unwrap_or_else(|| "en".into())));
            body.insert("data".into(), data.and_then(|d| serde_json::from_str(&d).ok()).unwrap_or_else(|| json!({})));
            let tag: String = r.get(8)?;
            if !tag.is_empty() {
                body.insert("profile_tag".into(), Value::String(tag));
            }
            Ok((r.get::<_, String>(0)?, body))
        })
        .map_err(sql)?;
    rows.collect::<Result<_, _>>().map_err(sql)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
