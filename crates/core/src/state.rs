//! The authorization rules and state resolution v2, from ruma-state-res, over our [`Pdu`]s.

use std::collections::{HashMap, HashSet};

use ruma::events::StateEventType;
use ruma::room_version_rules::RoomVersionRules;
use ruma::state_res::{self, StateMap};
use ruma::{EventId, OwnedEventId};

use crate::events::Pdu;

/// Checks a new event against its auth events and the state before it. `events` must hold the
/// event's auth events; `state` maps `(type, state_key)` to event IDs found in `events`.
pub fn check_auth(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    events: &HashMap<OwnedEventId, Pdu>,
    state: &HashMap<(String, String), OwnedEventId>,
) -> Result<(), String> {
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id: &EventId| events.get(id))?;
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |t: &StateEventType, k: &str| {
        state.get(&(t.to_string(), k.to_owned())).and_then(|id| events.get(id))
    })
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
    let auth_chains =
        state_sets.iter().map(|set| auth_chain(set.values().cloned(), events).into_iter().collect()).collect();
    let v2 = rules.state_res.v2_rules().ok_or("room version does not use state resolution v2")?;
    state_res::resolve(
        &rules.authorization,
        v2,
        state_sets,
        auth_chains,
        |id: &EventId| events.get(id).cloned(),
        |_| None,
    )
    .map_err(|e| e.to_string())
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
    fn state_resolution_drops_changes_from_a_banned_user() {
        // Branch A: Alice bans Bob. Branch B: Bob (power 50 from pl2) sets the topic. The ban
        // is a power event and is applied first; Bob's topic then fails auth against the
        // resolved state and is dropped, so the old state (no topic) stands.
        let mut room = Room::new();
        let [create, alice, pl, jr, bob] = base(&mut room);
        let pl2 = room.add(
            "@alice:test",
            "m.room.power_levels",
            Some(""),
            json!({"users": {"@alice:test": 100, "@bob:test": 50}, "state_default": 50, "ban": 50}),
            &[&bob],
            &[&create, &alice, &pl],
            10,
        );
        let ban = room.add(
            "@alice:test",
            "m.room.member",
            Some("@bob:test"),
            json!({"membership": "ban"}),
            &[&pl2],
            &[&create, &pl2, &alice, &bob],
            11,
        );
        let topic = room.add(
            "@bob:test",
            "m.room.topic",
            Some(""),
            json!({"topic": "mine"}),
            &[&pl2],
            &[&create, &pl2, &bob],
            12,
        );
        let a = room.state_of(&[&create, &alice, &pl2, &jr, &ban]);
        let b = room.state_of(&[&create, &alice, &pl2, &jr, &bob, &topic]);
        let resolved = resolve(&room.rules, &[a, b], &room.events).unwrap();
        assert_eq!(resolved[&(StateEventType::RoomMember, "@bob:test".to_owned())], ban);
        assert!(!resolved.contains_key(&(StateEventType::RoomTopic, String::new())));
    }
}
