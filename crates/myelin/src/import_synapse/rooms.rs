//! Rooms: every event of every room in its topological order, with its state group translated
//! into Myelin's, rejections, soft failures and redactions kept, and the room's current state
//! set to Synapse's (resolved) one; then aliases.

use std::collections::{BTreeMap, HashMap};

use myelin_storage::{NewEvent, OutlierEvent, StateChange, StateEntry, Storage};
use serde_json::{Map, Value};

use super::source::{Arg, SynapseDb};
use super::{Summary, is_done, mark_done, store_err};

/// A whole state: `(type, state key)` to event ID.
type FullState = BTreeMap<(String, String), String>;

/// Synapse's state groups: a snapshot, or a delta (entries added or replaced) on the group
/// its edge names, as Myelin's are. Read as needed, never all at once: a big room's whole
/// state is read only where Myelin needs a snapshot.
struct SynapseStateGroups<'a> {
    db: &'a SynapseDb,
}

impl SynapseStateGroups<'_> {
    fn prev(&self, group: i64) -> Result<Option<i64>, String> {
        let row = self.db.row(
            "SELECT prev_state_group FROM state_group_edges WHERE state_group = CAST($1 AS BIGINT)",
            &[Arg::Int(group)],
        )?;
        Ok(row.and_then(|r| r.opt_int(0)))
    }

    /// The entries stored for the group itself (the whole state for a snapshot).
    fn own_entries(&self, group: i64) -> Result<Vec<StateEntry>, String> {
        let rows = self.db.rows(
            "SELECT type, state_key, event_id FROM state_groups_state WHERE state_group = CAST($1 AS BIGINT)",
            &[Arg::Int(group)],
        )?;
        Ok(rows
            .into_iter()
            .map(|r| StateEntry { event_type: r.text(0), state_key: r.text(1), event_id: r.text(2) })
            .collect())
    }

    /// The whole state of a group: its chain of deltas applied from the oldest.
    fn full(&self, group: i64) -> Result<FullState, String> {
        let mut chain = vec![group];
        while let Some(prev) = self.prev(*chain.last().unwrap_or(&group))? {
            if chain.contains(&prev) {
                break; // never in a sound database; a loop must not hang the import
            }
            chain.push(prev);
        }
        let mut state = FullState::new();
        for g in chain.iter().rev() {
            for e in self.own_entries(*g)? {
                state.insert((e.event_type, e.state_key), e.event_id);
            }
        }
        Ok(state)
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

/// Events read from Synapse at a time (a room's events are read in pages, never all at once).
const PAGE: i64 = 1000;

pub(super) fn rooms(db: &SynapseDb, store: &dyn Storage, summary: &mut Summary) -> Result<(), String> {
    // Redactions Synapse applies (`events_worker`): accepted ones, of an event in the same
    // room, never of the create event; one whose event Synapse marked `recheck_redaction`
    // (allowed at receipt only pending this check) only by a user of the author's server.
    let mut redacted_by: HashMap<String, String> = HashMap::new();
    let rows = db.rows(
        "SELECT r.redacts, r.event_id, e.sender, t.sender, j.internal_metadata
         FROM redactions r JOIN events e ON e.event_id = r.event_id
         JOIN events t ON t.event_id = r.redacts AND t.room_id = e.room_id AND t.type <> 'm.room.create'
         JOIN event_json j ON j.event_id = r.event_id
         WHERE NOT EXISTS (SELECT 1 FROM rejections x WHERE x.event_id = r.event_id)",
        &[],
    )?;
    for r in rows {
        let (redactor, author) = (r.text(2), r.text(3));
        let recheck = serde_json::from_str::<Value>(&r.text(4))
            .ok()
            .and_then(|m| m["recheck_redaction"].as_bool())
            .unwrap_or(false);
        let same_server = redactor.split_once(':').map(|p| p.1) == author.split_once(':').map(|p| p.1);
        if !recheck || same_server {
            redacted_by.insert(r.text(0), r.text(1));
        }
    }

    // Other servers that had not received a room's latest event when Synapse stopped (Synapse's
    // catch-up state): that event goes into Myelin's outbox for them, as Synapse would have
    // sent it on (the remote fetches what it missed before it).
    let mut catch_up: HashMap<String, Vec<String>> = HashMap::new();
    let rows = db.rows(
        "SELECT dr.destination, e.event_id FROM destination_rooms dr
         JOIN events e ON e.stream_ordering = dr.stream_ordering
         LEFT JOIN destinations d ON d.destination = dr.destination
         WHERE dr.stream_ordering > coalesce(d.last_successful_stream_ordering, 0)",
        &[],
    )?;
    for r in &rows {
        catch_up.entry(r.text(1)).or_default().push(r.text(0));
    }
    summary.count("rooms other servers had not caught up on (sent on)", rows.len());

    // Clients' transaction IDs of recent sends (Synapse keeps a day of them), so that a send
    // retried across the switch gets its first event back instead of making a second.
    // Myelin scopes a transaction ID to its device, Synapse to its device and room: of one
    // reused in several rooms, the latest send keeps it.
    let mut latest: HashMap<(String, String, String), String> = HashMap::new();
    let sql = "SELECT event_id, user_id, device_id, txn_id FROM event_txn_id_device_id ORDER BY inserted_ts";
    for r in db.rows(sql, &[])? {
        latest.insert((r.text(1), r.text(2), r.text(3)), r.text(0));
    }
    let txns: HashMap<String, (String, String, String)> = latest.into_iter().map(|(key, event)| (event, key)).collect();
    summary.count("transaction IDs of recent sends", txns.len());

    let room_rows = db.rows("SELECT room_id, room_version, creator, coalesce(is_public, FALSE) FROM rooms", &[])?;
    let (mut rooms_done, mut events_done, mut outliers_done, mut rooms_skipped, mut invites_done) = (0, 0, 0, 0, 0);
    let (total, terminal) = (room_rows.len(), std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let started = std::time::Instant::now();
    for room_row in room_rows {
        // A progress line on a terminal, rewritten in place.
        if terminal && (rooms_done + rooms_skipped) % 50 == 0 {
            let rate = events_done as f64 / started.elapsed().as_secs_f64().max(0.001);
            eprint!("\r  rooms {}/{total}, events {events_done} ({rate:.0}/s)   ", rooms_done + rooms_skipped);
        }
        let (room_id, version, creator, is_public) =
            (room_row.text(0), room_row.opt_text(1), room_row.opt_text(2), room_row.flag(3));
        let done_key = format!("room:{room_id}");
        if is_done(store, &done_key)? {
            rooms_done += 1; // by an earlier, interrupted run
            continue;
        }
        let create = db.row(
            "SELECT j.json, coalesce(e.sender, '') FROM events e JOIN event_json j ON j.event_id = e.event_id
             WHERE e.room_id = $1 AND e.type = 'm.room.create' AND e.state_key = ''",
            &[Arg::Text(&room_id)],
        )?;
        let Some(create) = create else {
            // A room on another server this server is not in: only its users' pending
            // invites (and knocks), kept with the room's stripped state.
            match outside_memberships(db, store, &room_id, version.as_deref())? {
                0 => rooms_skipped += 1,
                n => {
                    invites_done += n;
                    mark_done(store, &done_key)?;
                }
            }
            continue;
        };
        let create_json: Value = serde_json::from_str(&create.text(0)).map_err(|e| e.to_string())?;
        let version = version
            .or_else(|| create_json["content"]["room_version"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "1".into());
        let Some(rules) = ruma::RoomVersionId::try_from(version.as_str()).ok().and_then(|v| v.rules()) else {
            rooms_skipped += 1;
            continue;
        };
        // A room an interrupted run began is carried on from its first event not stored.
        let resuming = store.get_room(&room_id).map_err(store_err)?.is_some();
        if !resuming {
            store
                .create_room(&myelin_storage::RoomRow {
                    room_id: room_id.clone(),
                    room_version: version.clone(),
                    creator: creator.unwrap_or_else(|| create.text(1)),
                    is_public,
                })
                .map_err(store_err)?;
        }
        let mut current: Vec<StateEntry> = db
            .rows(
                "SELECT type, state_key, event_id FROM current_state_events WHERE room_id = $1",
                &[Arg::Text(&room_id)],
            )?
            .into_iter()
            .map(|r| StateEntry { event_type: r.text(0), state_key: r.text(1), event_id: r.text(2) })
            .collect();
        // The room's last event in the timeline sets its current state to Synapse's (resolved)
        // one.
        let last = db.row(
            "SELECT e.event_id, g.state_group FROM events e JOIN event_to_state_groups g ON g.event_id = e.event_id
             WHERE e.room_id = $1 AND NOT e.outlier
             ORDER BY e.topological_ordering DESC, e.stream_ordering DESC LIMIT 1",
            &[Arg::Text(&room_id)],
        )?;
        let groups = SynapseStateGroups { db };
        // A room the server left has no current state in Synapse (it is deleted on leaving);
        // Myelin keeps the state after the room's last event, as it does for rooms it leaves.
        if current.is_empty()
            && let Some(group) = last.as_ref().and_then(|r| r.opt_int(1))
        {
            current = entries(&groups.full(group)?);
        }
        let last_in_timeline = last.map(|r| r.text(0));
        let mut room = RoomImport {
            store,
            groups,
            mapped: HashMap::new(),
            batch: Vec::new(),
            outliers: Vec::new(),
            current: &current,
            last_in_timeline,
            written: 0,
            outliers_written: 0,
            resuming,
            catch_up: &catch_up,
            txns: &txns,
            redacted_by: &redacted_by,
            rules: &rules,
        };
        // In the room's topological order (depth, then stream position), so that parents come
        // before their children, backfilled history included (Synapse stores a backfilled batch
        // newest first), and in pages.
        let mut after = (i64::MIN, i64::MIN);
        loop {
            let page = db.rows(
                "SELECT e.event_id, e.room_id, e.type, e.state_key, coalesce(e.sender, ''), e.outlier, j.json,
                        j.internal_metadata, g.state_group,
                        EXISTS (SELECT 1 FROM rejections x WHERE x.event_id = e.event_id),
                        e.topological_ordering, e.stream_ordering
                 FROM events e JOIN event_json j ON j.event_id = e.event_id
                 LEFT JOIN event_to_state_groups g ON g.event_id = e.event_id
                 WHERE e.room_id = $1
                   AND (e.topological_ordering, e.stream_ordering) > (CAST($2 AS BIGINT), CAST($3 AS BIGINT))
                 ORDER BY e.topological_ordering, e.stream_ordering LIMIT CAST($4 AS BIGINT)",
                &[Arg::Text(&room_id), Arg::Int(after.0), Arg::Int(after.1), Arg::Int(PAGE)],
            )?;
            let Some(last) = page.last() else { break };
            after = (last.int(10), last.int(11));
            let full_page = page.len() as i64 == PAGE;
            for r in page {
                let ev = SynapseEvent {
                    event_id: r.text(0),
                    room_id: r.text(1),
                    kind: r.text(2),
                    state_key: r.opt_text(3),
                    sender: r.text(4),
                    outlier: r.flag(5),
                    json: r.text(6),
                    internal_metadata: r.text(7),
                    state_group: r.opt_int(8),
                    rejected: r.flag(9),
                };
                room.add(ev)?;
            }
            if !full_page {
                break;
            }
        }
        room.flush()?;
        events_done += room.written;
        outliers_done += room.outliers_written;
        if let Some(rule) = current.iter().find(|e| e.event_type == "m.room.join_rules" && e.state_key.is_empty()) {
            let rule_json = db.row("SELECT json FROM event_json WHERE event_id = $1", &[Arg::Text(&rule.event_id)])?;
            if let Some(join_rule) = rule_json
                .and_then(|r| serde_json::from_str::<Value>(&r.text(0)).ok())
                .and_then(|v| v["content"]["join_rule"].as_str().map(str::to_owned))
            {
                store.set_room_join_rule(&room_id, &join_rule).map_err(store_err)?;
            }
        }
        if is_public {
            store.set_room_public(&room_id, true).map_err(store_err)?;
        }
        mark_done(store, &done_key)?;
        rooms_done += 1;
    }
    if terminal {
        eprint!("\r{:60}\r", "");
    }
    summary.count("rooms", rooms_done);
    summary.count("events", events_done);
    summary.count("outlier events (state and auth of remote rooms)", outliers_done);
    summary.count("pending invites and knocks to other servers' rooms", invites_done);
    summary.skip("rooms", rooms_skipped, "no create event stored, or a room version Myelin does not know");

    let mut n = 0;
    for r in db.rows("SELECT room_alias, room_id, coalesce(creator, '') FROM room_aliases", &[])? {
        if store.get_room(&r.text(1)).map_err(store_err)?.is_some() {
            match store.create_alias(&r.text(0), &r.text(1), &r.text(2)) {
                Ok(()) | Err(myelin_storage::StorageError::Conflict) => n += 1,
                Err(e) => return Err(store_err(e)),
            }
        }
    }
    summary.count("room aliases", n);
    Ok(())
}

/// A room on another server that local users are invited to (or knock on) without this
/// server being in it: each such membership stored as Myelin stores a received invite, an event
/// of its own with the room's stripped state in `unsigned`; returns how many.
fn outside_memberships(
    db: &SynapseDb,
    store: &dyn Storage,
    room_id: &str,
    version: Option<&str>,
) -> Result<usize, String> {
    let rows = db.rows(
        "SELECT m.event_id, m.user_id, m.membership, j.json, coalesce(e.sender, '')
         FROM local_current_membership m JOIN event_json j ON j.event_id = m.event_id
         JOIN events e ON e.event_id = m.event_id
         WHERE m.room_id = $1 AND m.membership IN ('invite', 'knock')",
        &[Arg::Text(room_id)],
    )?;
    let Some(first) = rows.first() else { return Ok(0) };
    let version = version.unwrap_or("1");
    if ruma::RoomVersionId::try_from(version).ok().and_then(|v| v.rules()).is_none() {
        return Ok(0);
    }
    if store.get_room(room_id).map_err(store_err)?.is_none() {
        store
            .create_room(&myelin_storage::RoomRow {
                room_id: room_id.to_owned(),
                room_version: version.to_owned(),
                creator: first.text(4),
                is_public: false,
            })
            .map_err(store_err)?;
    }
    for r in &rows {
        let (event_id, user, membership) = (r.text(0), r.text(1), r.text(2));
        if store.get_event(&event_id).map_err(store_err)?.is_some() {
            continue; // an interrupted run stored it
        }
        let mut value: Value = serde_json::from_str(&r.text(3)).map_err(|e| e.to_string())?;
        value["event_id"] = Value::String(event_id.clone());
        if let Some(unsigned) = value.get_mut("unsigned").and_then(Value::as_object_mut) {
            unsigned.remove("age_ts");
        }
        let json = serde_json::to_string(&value).map_err(|e| e.to_string())?;
        let entry =
            StateEntry { event_type: "m.room.member".into(), state_key: user.clone(), event_id: event_id.clone() };
        let event = NewEvent {
            event_id: &event_id,
            room_id,
            event_type: "m.room.member",
            state_key: Some(&user),
            sender: &r.text(4),
            membership: Some(&membership),
            json: &json,
            rejected: false,
            soft_failed: false,
            state: StateChange::New { prev: None, delta: vec![entry] },
            prev_events: &[],
            updates_current_state: true,
            txn: None,
            redaction: None,
            current_state: None,
            destinations: &[],
        };
        store.persist_event(&event).map_err(store_err)?;
    }
    Ok(rows.len())
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
    /// The room was begun by an interrupted run: events already stored are skipped (they are
    /// a prefix, each batch having committed whole), their groups remembered.
    resuming: bool,
    /// Event ID -> servers it is still to be sent to.
    catch_up: &'a HashMap<String, Vec<String>>,
    /// Event ID -> `(user, device, transaction ID)` it was sent with.
    txns: &'a HashMap<String, (String, String, String)>,
    /// Event ID -> the redaction Synapse applies to it.
    redacted_by: &'a HashMap<String, String>,
    rules: &'a ruma::room_version_rules::RoomVersionRules,
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
pub(super) const BATCH: usize = 500;

impl RoomImport<'_> {
    fn add(&mut self, ev: SynapseEvent) -> Result<(), String> {
        if self.resuming {
            if let Some(stored) = self.store.get_event(&ev.event_id).map_err(store_err)? {
                if let (Some(sg), Some(group)) = (ev.state_group.filter(|_| !ev.outlier), stored.state_group)
                    && !self.mapped.contains_key(&sg)
                {
                    let chain = self.store.state_group_chain_length(group).map_err(store_err)?;
                    self.mapped.insert(sg, (group, chain));
                }
                self.written += 1;
                return Ok(());
            }
            self.resuming = false;
        }
        // Parsed once: what Myelin indexes is read from it, then it becomes the stored JSON.
        let value: Map<String, Value> = serde_json::from_str(&ev.json).map_err(|e| e.to_string())?;
        let membership = (ev.kind == "m.room.member")
            .then(|| value.get("content")?.get("membership")?.as_str().map(str::to_owned))
            .flatten();
        let prev_events: Vec<String> = value
            .get("prev_events")
            .map(|list| myelin_core::events::parse_event_references(list).0)
            .unwrap_or_default()
            .into_iter()
            .map(|id| id.to_string())
            .collect();
        let json = stored_json(&ev, value, self.redacted_by, self.groups.db, self.rules)?;
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

    /// The change that makes Synapse's group `sg` in Myelin: Synapse's own delta on its parent
    /// when the parent is in Myelin already and the chain is short enough, else a snapshot.
    fn state_change(&mut self, sg: i64) -> Result<(StateChange, i64), String> {
        if let Some(p) = self.groups.prev(sg)?
            && let Some(&(prev_group, chain)) = self.mapped.get(&p)
            && chain + 1 < myelin_storage::sqlite::MAX_STATE_DELTA_CHAIN
        {
            let delta = self.groups.own_entries(sg)?;
            return Ok((StateChange::New { prev: Some(prev_group), delta }, chain + 1));
        }
        Ok((StateChange::New { prev: None, delta: entries(&self.groups.full(sg)?) }, 0))
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
                txn: self.txns.get(&p.ev.event_id).map(|(u, d, t)| (u.as_str(), d.as_str(), t.as_str())),
                redaction: None,
                current_state: (self.last_in_timeline.as_deref() == Some(p.ev.event_id.as_str()))
                    .then_some(self.current),
                destinations: self.catch_up.get(&p.ev.event_id).map(Vec::as_slice).unwrap_or_default(),
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
    mut value: Map<String, Value>,
    redacted_by: &HashMap<String, String>,
    db: &SynapseDb,
    rules: &ruma::room_version_rules::RoomVersionRules,
) -> Result<String, String> {
    value.insert("event_id".into(), Value::String(ev.event_id.clone()));
    if let Some(Value::Object(unsigned)) = value.get_mut("unsigned") {
        unsigned.remove("age_ts");
        if unsigned.is_empty() {
            value.remove("unsigned");
        }
    }
    let json = serde_json::to_string(&value).map_err(|e| e.to_string())?;
    let Some(redaction) = redacted_by.get(&ev.event_id) else { return Ok(json) };
    let because = db.row("SELECT json FROM event_json WHERE event_id = $1", &[Arg::Text(redaction)])?;
    let because = because.and_then(|r| serde_json::from_str::<Value>(&r.text(0)).ok()).map(|mut v| {
        v["event_id"] = Value::String(redaction.clone());
        if let Some(u) = v.get_mut("unsigned").and_then(Value::as_object_mut) {
            u.remove("age_ts");
        }
        myelin_core::events::client_event(&v)
    });
    myelin_core::events::redact_json(&json, rules, because.as_ref()).map_err(|e| e.message)
}
