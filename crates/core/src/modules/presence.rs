//! The presence router and the unsigned-fields callback, with Synapse's semantics
//! (`events/presence_router.py`, `events/utils.py`).

use myelin_module_api::EventView;
use myelin_module_api::presence::*;
use serde_json::{Map, Value};

use super::{ModuleRegistry, dispatch_lists, invoke, invoke_logged};

myelin_module_api::presence_router_callbacks!(dispatch_lists, PresenceRouterLists, PresenceRouterCallbacks);
myelin_module_api::unsigned_callbacks!(dispatch_lists, UnsignedLists, UnsignedCallbacks);

impl ModuleRegistry {
    /// Whether a presence router is loaded.
    pub(crate) fn has_presence_router(&self) -> bool {
        !self.callbacks().presence_router.get_interested_users.is_empty()
    }

    /// `get_users_for_states`: every callback's answer merged; failures are logged and skipped.
    pub(crate) async fn presence_users_for_states(&self, states: &[PresenceState]) -> UsersForStates {
        let mut merged = UsersForStates::new();
        for reg in &self.callbacks().presence_router.get_users_for_states {
            let Some(answer) = invoke_logged(reg, (states.to_vec(),)).await else { continue };
            for (user, states) in answer {
                let entry = merged.entry(user).or_default();
                for state in states {
                    if !entry.contains(&state) {
                        entry.push(state);
                    }
                }
            }
        }
        merged
    }

    /// `get_interested_users`: `None` without a router; the first `All` wins, sets are merged,
    /// failures are logged and skipped.
    pub(crate) async fn presence_interested_users(&self, user_id: &str) -> Option<InterestedUsers> {
        let callbacks = &self.callbacks().presence_router.get_interested_users;
        if callbacks.is_empty() {
            return None;
        }
        let mut users = Vec::new();
        for reg in callbacks {
            match invoke_logged(reg, (user_id.to_owned(),)).await {
                Some(InterestedUsers::All) => return Some(InterestedUsers::All),
                Some(InterestedUsers::Users(more)) => users.extend(more),
                None => {}
            }
        }
        Some(InterestedUsers::Users(users))
    }

    /// `add_field_to_unsigned_callback` for each event: the callbacks' fields merged (later
    /// ones win), added where the event's `unsigned` has no such field. A failing callback
    /// fails the request, as on Synapse.
    pub(crate) async fn add_unsigned_fields(&self, events: &mut [Value]) -> crate::Result<()> {
        let callbacks = &self.callbacks().unsigned.add_field_to_unsigned_callback;
        if callbacks.is_empty() {
            return Ok(());
        }
        for event in events.iter_mut() {
            let Some(map) = event.as_object() else { continue };
            let view = EventView::new(map.clone());
            let mut added = Map::new();
            for reg in callbacks {
                added.extend(invoke(reg, (view.clone(),)).await?);
            }
            if added.is_empty() {
                continue;
            }
            let Some(map) = event.as_object_mut() else { continue };
            let unsigned = map.entry("unsigned").or_insert_with(|| Value::Object(Map::new()));
            if let Some(unsigned) = unsigned.as_object_mut() {
                for (key, value) in added {
                    unsigned.entry(key).or_insert(value);
                }
            }
        }
        Ok(())
    }
}
