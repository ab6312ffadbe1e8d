//! The federation callback (Synapse's `register_federation_callbacks`, since Synapse 1.158):
//! `on_event_delivered_over_federation(delivery)` after events went to another server, pushed
//! (`/send`, once the server acknowledged them without error) or pulled by it (`/backfill`,
//! `/get_missing_events`, `/event`, `/event_auth`, `/state`, `/send_join`: answered, not
//! acknowledged). Every callback runs; errors are logged.

use crate::EventView;
use crate::callbacks::callback_struct;

/// How events reached another server (Synapse's `FederatedEventDeliveryMethod`; more may
/// come).
///
/// Since 0.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryMethod {
    /// Pushed in a transaction and acknowledged.
    Send,
    /// Pulled with `/backfill`.
    Backfill,
    /// Pulled with `/get_missing_events`.
    GetMissingEvents,
    /// Pulled with `/event`.
    Event,
    /// Pulled with `/event_auth`.
    EventAuth,
    /// Pulled with `/state`.
    State,
    /// Answered to `/send_join` (the join, the state and its auth chain).
    SendJoin,
}

impl DeliveryMethod {
    /// Synapse's value: the endpoint (`/send`, `/backfill`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMethod::Send => "/send",
            DeliveryMethod::Backfill => "/backfill",
            DeliveryMethod::GetMissingEvents => "/get_missing_events",
            DeliveryMethod::Event => "/event",
            DeliveryMethod::EventAuth => "/event_auth",
            DeliveryMethod::State => "/state",
            DeliveryMethod::SendJoin => "/send_join",
        }
    }
}

/// Events delivered to one server (Synapse's `FederationEventDeliveryEvent`). One request's
/// events may come in several deliveries.
///
/// Since 0.3.
#[derive(Debug, Clone)]
pub struct FederationDelivery {
    /// The server they went to.
    pub server_name: String,
    /// The events.
    pub events: Vec<EventView>,
    /// How.
    pub method: DeliveryMethod,
}

crate::federation_callbacks!(
    callback_struct,
    /// The federation callback; may be unset.
    ///
    /// Since 0.3.
    FederationCallbacks
);
