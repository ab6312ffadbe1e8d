//! Myelin's core: everything a homeserver is, minus HTTP.
//!
//! # Layout
//! - [`config`]: `homeserver.yaml` with Synapse's keys, validated into [`Config`].
//! - [`events`]: PDUs: hashing, signing, reference-hash IDs ([`events::Pdu`]).
//! - [`state`]: the authorization rules and state resolution v2 (ruma-state-res) over our PDUs.
//! - [`Homeserver`]: the services, split by area: `users` (registration, login, devices,
//!   profiles), `rooms` (the room graph, creation, membership, messages), `sync`.
//! - [`modules`]: loading modules and the one callback registry every runtime registers into;
//!   `modules::spam_checker` owns the dispatch semantics.
//! - [`federation`]: the Server-Server API both ways (keys, request signatures, received
//!   events, joins, invites, the outbound queue, queries, media).
//!
//! # Invariants
//! - `core` knows no HTTP: errors carry an [`ErrorKind`]; only `myelin-http` picks statuses.
//! - Every module callback is invoked here, in one service call site per operation (the list is
//!   in ARCHITECTURE.md), never in an HTTP handler.
//! - Storage is reached only through `myelin_storage::Storage` ([`Homeserver`]'s `db`), whose
//!   calls are short and synchronous, never held across an `.await`.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod admin;
mod admin_features;
mod admin_rooms;
pub mod admin_tasks;
pub mod appservice;
mod bus;
pub mod cache;
pub mod config;
mod directory;
mod durable;
mod email_notifs;
mod ephemeral;
mod error;
pub mod events;
pub mod federation;
mod identity;
mod initial_sync;
mod keys;
pub mod log_config;
pub mod mail;
pub mod media;
pub mod media_admin;
pub mod media_storage;
pub mod modules;
pub mod oembed;
pub mod outbound;
mod push;
mod push_gateway;
pub mod ratelimit;
mod relations;
mod room_deletion;
mod rooms;
mod search;
mod server;
mod server_notices;
mod sliding_sync;
pub mod spaces;
pub mod sso;
pub mod state;
mod sync;
pub mod threepids;
mod unsigned;
pub mod url_preview;
mod users;
mod visibility;
mod writer;

pub use config::Config;
pub use directory::{PublicationRule, RoomListScope};
pub use error::{Error, ErrorKind, Result};
pub use myelin_storage::EventReportQuery;
pub use relations::RelationsPage;
pub use rooms::{CreateRoomRequest, EventFilter, MessagesPage, Pagination};
pub use server::{Homeserver, Requester};
pub use sliding_sync::SlidingSyncRequest;
pub use sync::{SyncRequest, SyncResponse};
pub use users::{
    AccountValiditySettings, LoginRequest, LoginResponse, RegisterRequest, RegisterResponse, Renewal, RequestInfo,
    Session, check_profile_field_name,
};
