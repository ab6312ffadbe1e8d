//! The authorization rules and state resolution v2 (and v2.1, room version 12), from
//! ruma-state-res, over our [`Pdu`]s.

use std::collections::{HashMap, HashSet};

use ruma::events::StateEventType;
use ruma::room_version_rules::RoomVersionRules;
use ruma::state_res::{self, StateMap};
use ruma::{EventId, OwnedEventId};

use crate::events::Pdu;

/// Checks a new event against its auth events and the state before it. `events` must hold the
/// event's auth events (and, from room version 12, the room's create event: see
/// [`implied_auth_events`]); `state` maps `(type, state_key)` to event IDs found in `events`.
pub fn check_auth(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    events: &HashMap<OwnedEventId, Pdu>,
    state: &HashMap<(String, String), OwnedEventId>,
) -> Result<(), String> {
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id: &EventId| events.get(id))?;
    // From room version 12 the create event is not among the auth events; it is the one the
    // room ID names.
    let create = implied_auth_events(rules, &pdu.room_id);
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |t: &StateEventType, k: &str| {
        match state.get(&(t.to_string(), k.to_owned())) {
            Some(id) => events.get(id),
            None if *t == StateEventType::RoomCreate && k.is_empty() => create.as_ref().and_then(|id| events.get(id)),
            None => None,
        }
    })
}

/// The events the authorization rules read beyond an event's `auth_events`: from room version
/// 12, the create event, which the room ID names rather than the auth events.
pub fn implied_auth_events(rules: &RoomVersionRules, room_id: &ruma::RoomId) -> Option<OwnedEventId> {
    let hash = room_id.as_str().strip_prefix('!')?;
    rules
        .authorization
        .room_create_event_id_as_room_id
        .then(|| OwnedEventId::try_from(format!("${hash}")).ok())
        .flatten()
}

/// Every event in the auth chains of `ids` (not including `ids` themselves unless reachable).
pub fn auth_chain(
    ids: impl IntoIterator<Item = OwnedEventId>,
    events: &HashMap<OwnedEventId, Pdu>,
) -> HashSet<OwnedEventId> {
    let mut seen = HashSet::new();
    let mut todo: Vec<OwnedEventId> = ids.into_iter().collect();
    while let Some(id) = todo.pop() {
        if let Some(ev) = events.get(&id) {
            for a in &ev.auth_events {
                if seen.insert(a.clone()) {
                    todo.push(a.clone());
                }
            }
        }
    }
    seen
}

/// Resolves forked room state (state resolution v2). `events` must contain every event of the
/// state sets and their auth chains.
pub fn resolve(
    rules: &RoomVersionRules,
    state_sets: &[StateMap<OwnedEventId>],
    events: &HashMap<OwnedEventId, Pdu>,
) -> Result<StateMap<OwnedEventId>, String> {
    let Some(v2) = rules.state_res.v2_rules() else {
        return Ok(resolve_v1(rules, state_sets, events));
    };
    let auth_chains =
        state_sets.iter().map(|set| auth_chain(set.values().cloned(), events).into_iter().collect()).collect();
    state_res::resolve(
        &rules.authorization,
        v2,
        state_sets,
        auth_chains,
        |id: &EventId| events.get(id).cloned(),
        |conflicted| {
            Some(conflicted_state_subgraph(conflicted.values().flatten().cloned(), events).into_iter().collect())
        },
    )
    .map_err(|e| e.to_string())
}

type StateKey = (StateEventType, String);

/// State resolution v1 (room version 1), which ruma-state-res does not implement, in the order
/// the spec's v1 text and Synapse apply it: keys whose value differs between the sets are
/// conflicted; power levels are resolved first, then join rules, then memberships (each by
/// walking its candidates from the oldest and keeping the last one the rules allow on top of
/// the previous), then the rest (the newest candidate the rules allow). Candidates are ordered
/// by depth, then by the SHA-1 of their event ID.
fn resolve_v1(
    rules: &RoomVersionRules,
    state_sets: &[StateMap<OwnedEventId>],
    events: &HashMap<OwnedEventId, Pdu>,
) -> StateMap<OwnedEventId> {
    let mut unconflicted: StateMap<OwnedEventId> = StateMap::new();
    let mut conflicted: HashMap<StateKey, Vec<OwnedEventId>> = HashMap::new();
    for set in state_sets {
        for (key, id) in set {
            if let Some(candidates) = conflicted.get_mut(key) {
                if !candidates.contains(id) {
                    candidates.push(id.clone());
                }
                continue;
            }
            match unconflicted.get(key) {
                None => {
                    unconflicted.insert(key.clone(), id.clone());
                }
                Some(other) if other != id => {
                    let other = unconflicted.remove(key).expect("present");
                    conflicted.insert(key.clone(), vec![other, id.clone()]);
                }
                Some(_) => {}
            }
        }
    }
    let auth_keys = |pdu: &Pdu| -> Vec<StateKey> {
        state_res::auth_types_for_event(
            &pdu.kind,
            &pdu.sender,
            pdu.state_key.as_deref(),
            &pdu.content,
            &rules.authorization,
        )
        .unwrap_or_default()
    };
    // The auth events the conflicted events are checked against: unconflicted state only.
    let mut auth: HashMap<StateKey, &Pdu> = HashMap::new();
    let mut candidates: Vec<(StateKey, Vec<&Pdu>)> = Vec::new();
    for (key, ids) in conflicted {
        let known: Vec<&Pdu> = ids.iter().filter_map(|id| events.get(id)).collect();
        for pdu in &known {
            for k in auth_keys(pdu) {
                if let Some(e) = unconflicted.get(&k).and_then(|id| events.get(id)) {
                    auth.entry(k).or_insert(e);
                }
            }
        }
        match known.len() {
            0 => {}
            1 => {
                unconflicted.insert(key, known[0].event_id.clone());
            }
            _ => candidates.push((key, known)),
        }
    }
    let allowed = |pdu: &Pdu, auth: &HashMap<StateKey, &Pdu>| {
        state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |t: &StateEventType, k: &str| {
            auth.get(&(t.clone(), k.to_owned())).copied()
        })
        .is_ok()
    };
    let phase = |key: &StateKey| match key.0 {
        StateEventType::RoomPowerLevels => 0,
        StateEventType::RoomJoinRules => 1,
        StateEventType::RoomMember => 2,
        _ => 3,
    };
    candidates.sort_by_key(|(key, _)| phase(key));
    // Each phase's winners join the auth events once the phase is done, not within it.
    let mut resolved_in_phase: Vec<(StateKey, &Pdu)> = Vec::new();
    let mut current_phase = 0;
    for (key, mut pdus) in candidates {
        if phase(&key) != current_phase {
            auth.extend(resolved_in_phase.drain(..));
            current_phase = phase(&key);
        }
        pdus.sort_by_cached_key(|p| (std::cmp::Reverse(p.depth), v1_tiebreak(&p.event_id)));
        let chosen = if phase(&key) < 3 {
            // From the oldest: each next candidate stands if the rules allow it on top of the
            // one before; the first refusal ends the walk.
            let wanted: HashSet<StateKey> = pdus.iter().flat_map(|p| auth_keys(p)).collect();
            let mut local: HashMap<StateKey, &Pdu> =
                auth.iter().filter(|(k, _)| wanted.contains(*k)).map(|(k, v)| (k.clone(), *v)).collect();
            let mut oldest_first = pdus.iter().rev();
            let mut chosen = *oldest_first.next().expect("two or more candidates");
            for &pdu in oldest_first {
                local.insert((chosen.kind.to_string().into(), chosen.state_key.clone().unwrap_or_default()), chosen);
                if !allowed(pdu, &local) {
                    break;
                }
                chosen = pdu;
            }
            resolved_in_phase.push((key.clone(), chosen));
            chosen
        } else {
            // The newest candidate the rules allow, else the oldest.
            pdus.iter().copied().find(|p| allowed(p, &auth)).unwrap_or(pdus[pdus.len() - 1])
        };
        unconflicted.insert(key, chosen.event_id.clone());
    }
    unconflicted
}

/// State resolution v1's tiebreak between events of the same depth: the hex SHA-1 of the ID.
fn v1_tiebreak(event_id: &EventId) -> String {
    use sha1::Digest;
    sha1::Sha1::digest(event_id.as_str().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// State resolution v2.1's (room version 12) conflicted state subgraph: the conflicted events
/// and every event on an auth-chain path between two of them (an ancestor of one conflicted
/// event that has another among its own ancestors).
pub fn conflicted_state_subgraph(
    conflicted: impl IntoIterator<Item = OwnedEventId>,
    events: &HashMap<OwnedEventId, Pdu>,
) -> HashSet<OwnedEventId> {
    let conflicted: HashSet<OwnedEventId> = conflicted.into_iter().collect();
    let ancestors = auth_chain(conflicted.iter().cloned(), events);
    // Whether an event reaches a conflicted event through its auth events, memoised; the
    // walk is iterative (auth chains run to thousands of events).
    let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
    for start in &ancestors {
        let mut stack = vec![(start.clone(), false)];
        while let Some((id, expanded)) = stack.pop() {
            if reaches.contains_key(&id) {
                continue;
            }
            let parents = events.get(&id).map(|e| e.auth_events.as_slice()).unwrap_or_default();
            if !expanded {
                stack.push((id.clone(), true));
                stack.extend(parents.iter().filter(|p| !reaches.contains_key(*p)).map(|p| (p.clone(), false)));
                continue;
            }
            let hit = parents.iter().any(|p| conflicted.contains(p) || reaches.get(p).copied().unwrap_or(false));
            reaches.insert(id, hit);
        }
    }
    let mut subgraph: HashSet<OwnedEventId> =
        ancestors.into_iter().filter(|id| reaches.get(id).copied().unwrap_or(false)).collect();
    subgraph.extend(conflicted);
    subgraph
}

#[cfg(test)]
mod tests {
    //! A small room built by hand, with a fork, checked against the spec's answers.

    use super::*;
    use crate::events::{EventDraft, SigningKey, sign_event};
    use ruma::{MilliSecondsSinceUnixEpoch, OwnedRoomId, OwnedUserId, UInt};
    use serde_json::{Value, json};

    struct Room {
        rules: RoomVersionRules,
        key: SigningKey,
        room_id: OwnedRoomId,
        events: HashMap<OwnedEventId, Pdu>,
        jsons: HashMap<OwnedEventId, String>,
    }

    impl Room {
        fn new() -> Self {
            Room {
                rules: ruma::RoomVersionId::V10.rules().unwrap(),
                key: SigningKey::from_seed("test", &[7u8; 32]).unwrap(),
                room_id: "!room:test".try_into().unwrap(),
                events: HashMap::new(),
                jsons: HashMap::new(),
            }
        }

        /// Adds an event with explicit parents and auth events at timestamp `ts`.
        #[allow(clippy::too_many_arguments)]
        fn add(
            &mut self,
            sender: &str,
            kind: &str,
            state_key: Option<&str>,
            content: Value,
            prev: &[&OwnedEventId],
            auth: &[&OwnedEventId],
            ts: u64,
        ) -> OwnedEventId {
            let sender: OwnedUserId = sender.try_into().unwrap();
            let depth = prev.iter().map(|p| self.events[*p].depth).max().unwrap_or(0) + 1;
            let signed = sign_event(
                EventDraft {
                    room_id: &self.room_id,
                    sender: &sender,
                    kind,
                    state_key,
                    content: content.as_object().unwrap().clone(),
                    prev_events: prev.iter().map(|p| (*p).clone()).collect(),
                    auth_events: auth.iter().map(|p| (*p).clone()).collect(),
                    depth,
                    redacts: None,
                    origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(ts).unwrap()),
                    reference_hashes: HashMap::new(),
                },
                &self.rules,
                "test",
                &self.key,
            )
            .unwrap();
            let id = signed.pdu.event_id.clone();
            self.jsons.insert(id.clone(), signed.json);
            self.events.insert(id.clone(), signed.pdu);
            id
        }

        fn state_of(&self, ids: &[&OwnedEventId]) -> StateMap<OwnedEventId> {
            ids.iter()
                .map(|id| {
                    let ev = &self.events[*id];
                    ((ev.kind.to_string().into(), ev.state_key.clone().unwrap()), (*id).clone())
                })
                .collect()
        }

        fn state_hashmap(&self, ids: &[&OwnedEventId]) -> HashMap<(String, String), OwnedEventId> {
            self.state_of(ids).into_iter().map(|((t, k), v)| ((t.to_string(), k), v)).collect()
        }
    }

    /// create, alice joins, power levels, join rules (public), bob joins.
    fn base(room: &mut Room) -> [OwnedEventId; 5] {
        let create = room.add(
            "@alice:test",
            "m.room.create",
            Some(""),
            json!({"creator": "@alice:test", "room_version": "10"}),
            &[],
            &[],
            1,
        );
        let alice = room.add(
            "@alice:test",
            "m.room.member",
            Some("@alice:test"),
            json!({"membership": "join"}),
            &[&create],
            &[&create],
            2,
        );
        let pl = room.add(
            "@alice:test",
            "m.room.power_levels",
            Some(""),
            json!({"users": {"@alice:test": 100}, "state_default": 50, "events_default": 0}),
            &[&alice],
            &[&create, &alice],
            3,
        );
        let jr = room.add(
            "@alice:test",
            "m.room.join_rules",
            Some(""),
            json!({"join_rule": "public"}),
            &[&pl],
            &[&create, &alice, &pl],
            4,
        );
        let bob = room.add(
            "@bob:test",
            "m.room.member",
            Some("@bob:test"),
            json!({"membership": "join"}),
            &[&jr],
            &[&create, &pl, &jr],
            5,
        );
        [create, alice, pl, jr, bob]
    }

    /// On top of [`base`]: Alice raises Bob to 50 (`pl2`), then the room forks: Alice bans Bob
    /// (`ban`) on one side, Bob sets the topic (`topic`) on the other.
    fn ban_fork(room: &mut Room, [create, alice, pl, bob]: [&OwnedEventId; 4]) -> [OwnedEventId; 3] {
        let pl2 = room.add(
            "@alice:test",
            "m.room.power_levels",
            Some(""),
            json!({"users": {"@alice:test": 100, "@bob:test": 50}, "state_default": 50, "ban": 50}),
            &[bob],
            &[create, alice, pl],
            10,
        );
        let ban = room.add(
            "@alice:test",
            "m.room.member",
            Some("@bob:test"),
            json!({"membership": "ban"}),
            &[&pl2],
            &[create, &pl2, alice, bob],
            11,
        );
        let topic = room.add(
            "@bob:test",
            "m.room.topic",
            Some(""),
            json!({"topic": "mine"}),
            &[&pl2],
            &[create, &pl2, bob],
            12,
        );
        [pl2, ban, topic]
    }

    #[test]
    fn first_events_chain_with_valid_ids_and_signatures() {
        let mut room = Room::new();
        let ids = base(&mut room);
        for (i, id) in ids.iter().enumerate() {
            let json = &room.jsons[id];
            let mut object: ruma::CanonicalJsonObject = serde_json::from_str(json).unwrap();
            object.remove("event_id");
            // The event ID is the reference hash.
            let hash = ruma::signatures::reference_hash(&object, &room.rules).unwrap();
            assert_eq!(id.as_str(), format!("${hash}"));
            // The signature verifies with the server's public key.
            let mut keys = ruma::signatures::PublicKeyMap::new();
            let mut set = ruma::signatures::PublicKeySet::new();
            set.insert(room.key.key_id.clone(), ruma::serde::Base64::parse(&room.key.public_key_base64).unwrap());
            keys.insert("test".into(), set);
            assert_eq!(
                ruma::signatures::verify_event(&keys, &object, &room.rules).unwrap(),
                ruma::signatures::Verified::All
            );
            // Each event's parent is the previous one and depth grows by one.
            let pdu = &room.events[id];
            if i > 0 {
                assert_eq!(pdu.prev_events, vec![ids[i - 1].clone()]);
            }
            assert_eq!(pdu.depth, i as u64 + 1);
        }
    }

    #[test]
    fn a_tampered_event_fails_verification() {
        let mut room = Room::new();
        let [create, ..] = base(&mut room);
        let mut object: ruma::CanonicalJsonObject = serde_json::from_str(&room.jsons[&create]).unwrap();
        object.remove("event_id");
        object.insert("origin_server_ts".into(), ruma::CanonicalJsonValue::Integer(99i64.try_into().unwrap()));
        let mut keys = ruma::signatures::PublicKeyMap::new();
        let mut set = ruma::signatures::PublicKeySet::new();
        set.insert(room.key.key_id.clone(), ruma::serde::Base64::parse(&room.key.public_key_base64).unwrap());
        keys.insert("test".into(), set);
        assert!(ruma::signatures::verify_event(&keys, &object, &room.rules).is_err());
    }

    #[test]
    fn auth_rules_reject_an_unauthorised_state_change() {
        let mut room = Room::new();
        let [create, alice, pl, jr, bob] = base(&mut room);
        let state = room.state_hashmap(&[&create, &alice, &pl, &jr, &bob]);
        // Bob (power 0) may not change the power levels (state_default 50).
        let bad = room.add(
            "@bob:test",
            "m.room.power_levels",
            Some(""),
            json!({"users": {"@alice:test": 100, "@bob:test": 100}}),
            &[&bob],
            &[&create, &pl, &bob],
            6,
        );
        let err = check_auth(&room.rules, &room.events[&bad], &room.events, &state).unwrap_err();
        assert!(!err.is_empty());
        // Alice may set the topic; Bob may send a message.
        let topic = room.add(
            "@alice:test",
            "m.room.topic",
            Some(""),
            json!({"topic": "t"}),
            &[&bob],
            &[&create, &pl, &alice],
            7,
        );
        check_auth(&room.rules, &room.events[&topic], &room.events, &state).unwrap();
        let msg =
            room.add("@bob:test", "m.room.message", None, json!({"body": "hi"}), &[&bob], &[&create, &pl, &bob], 8);
        check_auth(&room.rules, &room.events[&msg], &room.events, &state).unwrap();
        // A user who never joined may not send.
        let eve = room.add("@eve:test", "m.room.message", None, json!({"body": "hi"}), &[&bob], &[&create, &pl], 9);
        assert!(check_auth(&room.rules, &room.events[&eve], &room.events, &state).is_err());
    }

    #[test]
    fn state_resolution_orders_by_mainline_not_timestamp() {
        // Fork after Bob joins. Branch A: Alice raises Bob to 50, then Bob sets the topic.
        // Branch B: Alice sets a topic, later in wall-clock time. The spec's answer: the power
        // change is kept, and Bob's topic wins because its mainline position (the new power
        // levels) comes after Alice's (the old ones), whatever the timestamps say.
        let mut room = Room::new();
        let [create, alice, pl, jr, bob] = base(&mut room);
        let pl2 = room.add(
            "@alice:test",
            "m.room.power_levels",
            Some(""),
            json!({"users": {"@alice:test": 100, "@bob:test": 50}, "state_default": 50, "events_default": 0}),
            &[&bob],
            &[&create, &alice, &pl],
            10,
        );
        let bob_topic = room.add(
            "@bob:test",
            "m.room.topic",
            Some(""),
            json!({"topic": "bob"}),
            &[&pl2],
            &[&create, &pl2, &bob],
            11,
        );
        let alice_topic = room.add(
            "@alice:test",
            "m.room.topic",
            Some(""),
            json!({"topic": "alice"}),
            &[&bob],
            &[&create, &pl, &alice],
            50,
        );

        let a = room.state_of(&[&create, &alice, &pl2, &jr, &bob, &bob_topic]);
        let b = room.state_of(&[&create, &alice, &pl, &jr, &bob, &alice_topic]);
        let resolved = resolve(&room.rules, &[a, b], &room.events).unwrap();
        assert_eq!(resolved[&(StateEventType::RoomPowerLevels, String::new())], pl2);
        assert_eq!(resolved[&(StateEventType::RoomTopic, String::new())], bob_topic);
        assert_eq!(resolved[&(StateEventType::RoomMember, "@bob:test".to_owned())], bob);
    }

    #[test]
    fn a_room_version_12_room_is_named_by_its_create_event_and_its_creator_outranks_everyone() {
        let mut room = Room::new();
        room.rules = ruma::RoomVersionId::V12.rules().unwrap();
        let create = room.add(
            "@alice:test",
            "m.room.create",
            Some(""),
            json!({"room_version": "12", "additional_creators": ["@carol:test"]}),
            &[],
            &[],
            1,
        );
        // The PDU names no room; the room is `!` and the create event's hash.
        let json: Value = serde_json::from_str(&room.jsons[&create]).unwrap();
        assert!(json.get("room_id").is_none(), "{json}");
        let room_id = room.events[&create].room_id.clone();
        assert_eq!(room_id.as_str(), format!("!{}", &create.as_str()[1..]));
        assert!(room_id.server_name().is_none());
        check_auth(&room.rules, &room.events[&create], &room.events, &HashMap::new()).unwrap();
        room.room_id = room_id;
        // Later events do not list the create event among their auth events.
        let alice = room.add(
            "@alice:test",
            "m.room.member",
            Some("@alice:test"),
            json!({"membership": "join"}),
            &[&create],
            &[],
            2,
        );
        let state = room.state_hashmap(&[&create, &alice]);
        check_auth(&room.rules, &room.events[&alice], &room.events, &state).unwrap();
        // A creator may not be listed in the power levels (they have unlimited power) ...
        let listed = room.add(
            "@alice:test",
            "m.room.power_levels",
            Some(""),
            json!({"users": {"@alice:test": 100}}),
            &[&alice],
            &[&alice],
            3,
        );
        let err = check_auth(&room.rules, &room.events[&listed], &room.events, &state).unwrap_err();
        assert!(err.contains("creator"), "{err}");
        // ... nor an additional creator; an ordinary user may.
        let carol = room.add(
            "@alice:test",
            "m.room.power_levels",
            Some(""),
            json!({"users": {"@carol:test": 50}}),
            &[&alice],
            &[&alice],
            4,
        );
        assert!(check_auth(&room.rules, &room.events[&carol], &room.events, &state).is_err());
        let pl = room.add(
            "@alice:test",
            "m.room.power_levels",
            Some(""),
            json!({"users": {"@bob:test": 100}, "events": {"m.room.tombstone": 150}}),
            &[&alice],
            &[&alice],
            5,
        );
        check_auth(&room.rules, &room.events[&pl], &room.events, &state).unwrap();
        // Listing the create event among the auth events is refused from version 12.
        let old_style = room.add(
            "@alice:test",
            "m.room.topic",
            Some(""),
            json!({"topic": "t"}),
            &[&pl],
            &[&create, &alice, &pl],
            6,
        );
        let state = room.state_hashmap(&[&create, &alice, &pl]);
        assert!(check_auth(&room.rules, &room.events[&old_style], &room.events, &state).is_err());
        // The creator (unlimited power) may send what needs 150; Bob at 100 may not.
        let tombstone = room.add(
            "@alice:test",
            "m.room.tombstone",
            Some(""),
            json!({"body": "moved", "replacement_room": "!new"}),
            &[&pl],
            &[&alice, &pl],
            7,
        );
        check_auth(&room.rules, &room.events[&tombstone], &room.events, &state).unwrap();
    }

    #[test]
    fn the_conflicted_state_subgraph_holds_the_events_between_conflicted_events() {
        // Auth edges: alice -> create, pl -> alice, jr -> pl (and the rest). Conflicted {alice,
        // jr}: the subgraph is alice, pl (between them) and jr; not the create event (an
        // ancestor of both that reaches no conflicted event) nor bob (no ancestor of either).
        let mut room = Room::new();
        let [_, alice, pl, jr, bob] = base(&mut room);
        let subgraph = conflicted_state_subgraph([alice.clone(), jr.clone()], &room.events);
        assert!(subgraph.contains(&alice) && subgraph.contains(&jr));
        assert!(subgraph.contains(&pl), "pl's auth events include alice, and jr's include pl");
        assert!(!subgraph.contains(&bob), "bob descends from jr but leads to no conflicted event");
        assert!(!subgraph.contains(&room.events[&alice].auth_events[0]), "the create event leads nowhere");
    }

    #[test]
    fn room_version_1_events_carry_their_ids_and_resolve_by_state_resolution_v1() {
        let mut room = Room::new();
        room.rules = ruma::RoomVersionId::V1.rules().unwrap();
        let [create, alice, pl, jr, bob] = base(&mut room);
        // `$local:server` IDs, signed as part of the event; references are `[ID, hashes]`.
        assert!(create.as_str().ends_with(":test"), "{create}");
        let json: Value = serde_json::from_str(&room.jsons[&bob]).unwrap();
        assert!(json["prev_events"][0].is_array(), "{json}");
        assert_eq!(room.events[&bob].prev_events, vec![jr.clone()]);
        // The same fork as below: Alice bans Bob; Bob sets the topic. Version 1 applies the
        // ban (memberships are checked oldest first) but keeps the topic, which only one side
        // has and so is not conflicted (a weakness version 2 fixed).
        let [pl2, ban, topic] = ban_fork(&mut room, [&create, &alice, &pl, &bob]);
        let a = room.state_of(&[&create, &alice, &pl2, &jr, &ban]);
        let b = room.state_of(&[&create, &alice, &pl2, &jr, &bob, &topic]);
        let resolved = resolve(&room.rules, &[a.clone(), b.clone()], &room.events).unwrap();
        assert_eq!(resolved[&(StateEventType::RoomMember, "@bob:test".to_owned())], ban);
        assert_eq!(resolved[&(StateEventType::RoomTopic, String::new())], topic);
        // Conflicting power levels: the later change stands when its sender may make it on top
        // of the earlier; Bob (50) may not lower Alice, so his change loses.
        let pl_alice = room.add(
            "@alice:test",
            "m.room.power_levels",
            Some(""),
            json!({"users": {"@alice:test": 100}, "state_default": 50}),
            &[&pl2],
            &[&create, &pl2, &alice],
            13,
        );
        let pl_bob = room.add(
            "@bob:test",
            "m.room.power_levels",
            Some(""),
            json!({"users": {"@alice:test": 0, "@bob:test": 50}, "state_default": 50}),
            &[&pl_alice],
            &[&create, &pl_alice, &bob],
            14,
        );
        let a = room.state_of(&[&create, &alice, &pl_alice, &jr, &bob]);
        let b = room.state_of(&[&create, &alice, &pl_bob, &jr, &bob]);
        let resolved = resolve(&room.rules, &[a, b], &room.events).unwrap();
        assert_eq!(resolved[&(StateEventType::RoomPowerLevels, String::new())], pl_alice);
    }

    #[test]
    fn state_resolution_drops_changes_from_a_banned_user() {
        // Branch A: Alice bans Bob. Branch B: Bob (power 50 from pl2) sets the topic. The ban
        // is a power event and is applied first; Bob's topic then fails auth against the
        // resolved state and is dropped, so the old state (no topic) stands.
        let mut room = Room::new();
        let [create, alice, pl, jr, bob] = base(&mut room);
        let [pl2, ban, topic] = ban_fork(&mut room, [&create, &alice, &pl, &bob]);
        let a = room.state_of(&[&create, &alice, &pl2, &jr, &ban]);
        let b = room.state_of(&[&create, &alice, &pl2, &jr, &bob, &topic]);
        let resolved = resolve(&room.rules, &[a, b], &room.events).unwrap();
        assert_eq!(resolved[&(StateEventType::RoomMember, "@bob:test".to_owned())], ban);
        assert!(!resolved.contains_key(&(StateEventType::RoomTopic, String::new())));
    }
}
