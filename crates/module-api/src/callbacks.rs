//! The one list of the callbacks Myelin calls, per Synapse registration method.
//!
//! Each category is a macro that hands its list (doc, name, argument tuple, result) to another
//! macro: this crate builds the callback structs modules fill in from it (`SpamCheckerCallbacks`,
//! ...), core builds its dispatch lists from it, and the Python host checks the shim's names
//! against [`NAMES`]. Adding a callback starts here.

/// The spam-checker callbacks (Synapse's `register_spam_checker_callbacks`), in the order
/// Synapse documents them. Passes `{ prefix | doc name: (args) => result; ... }` to `$then!`.
#[macro_export]
#[doc(hidden)]
macro_rules! spam_checker_callbacks {
    ($then:ident $(, $($prefix:tt)*)?) => {
        $then! {
            $($($prefix)*)? |
            /// `(event)`: every non-membership event a local user or module sends, and every event
            /// received over federation.
            check_event_for_spam: ($crate::EventView,) => $crate::spam::EventDecision;
            /// `(inviter, invitee, room_id)`.
            user_may_invite: (String, String, String) => $crate::spam::Decision;
            /// `(user_id, room_id, is_invited)`.
            user_may_join_room: (String, String, bool) => $crate::spam::Decision;
            /// `(user_id, room_config)`: the `/createRoom` body.
            user_may_create_room: (String, $crate::spam::RoomConfig) => $crate::spam::Decision;
            /// `(user_id, room_alias)`.
            user_may_create_room_alias: (String, String) => $crate::spam::Decision;
            /// `(user_id, room_id)`.
            user_may_publish_room: (String, String) => $crate::spam::Decision;
            /// `(user_id, room_id, event_type, state_key, content)`.
            user_may_send_state_event: $crate::spam::StateEventArgs => $crate::spam::Decision;
            /// `(profile, requester_id)`: `true` hides the user from directory results.
            check_username_for_spam: ($crate::spam::UserProfile, String) => bool;
            /// `(email_threepid, username, request_info [(user_agent, ip)], auth_provider_id)`.
            check_registration_for_spam: $crate::spam::RegistrationArgs => $crate::spam::RegistrationBehaviour;
            /// `(user_id, device_id, initial_display_name, request_info, auth_provider_id)`.
            check_login_for_spam: $crate::spam::LoginArgs => $crate::spam::Decision;
            /// `(file)`: every stored upload, and every remote file fetched into the cache.
            check_media_file_for_spam: ($crate::spam::MediaFile,) => $crate::spam::Decision;
            /// `(invite event)`: an invite of a local user arriving over federation; when it allows,
            /// `user_may_invite` is asked too.
            federated_user_may_invite: ($crate::EventView,) => $crate::spam::Decision;
            /// `(event)`: every event received over federation; `true` drops it unseen (the sending
            /// server is told nothing).
            should_drop_federated_event: ($crate::EventView,) => bool;
            /// `(inviter, medium, address, room_id)`: an invite of a third-party identifier no
            /// Matrix ID is bound to (a bound one is asked of `user_may_invite`).
            user_may_send_3pid_invite: (String, String, String, String) => $crate::spam::Decision;
        }
    };
}

/// The third-party rules callbacks (Synapse's `register_third_party_rules_callbacks`).
#[macro_export]
#[doc(hidden)]
macro_rules! third_party_rules_callbacks {
    ($then:ident $(, $($prefix:tt)*)?) => {
        $then! {
            $($($prefix)*)? |
            /// `(event, state)`.
            check_event_allowed: ($crate::EventView, $crate::third_party::StateEvents) => $crate::third_party::EventAllowed;
            /// `(user_id, config, is_requester_admin)`: `Some(config)` replaces the request body.
            on_create_room: $crate::third_party::CreateRoomArgs => Option<$crate::spam::RoomConfig>;
            /// `(event, state)`.
            on_new_event: ($crate::EventView, $crate::third_party::StateEvents) => ();
            /// `(medium, address, state)`: `false` refuses inviting that third-party identifier to
            /// the room (errors count as no objection).
            check_threepid_can_be_invited: (String, String, $crate::third_party::StateEvents) => bool;
            /// `(room_id, state, new_visibility)`: `false` refuses publishing the room to the room
            /// directory, or creating it with that `visibility`.
            check_visibility_can_be_modified: (String, $crate::third_party::StateEvents, String) => bool;
            /// `(user_id, new_profile, by_admin, deactivation)`: after a local user's display name
            /// or avatar changed.
            on_profile_update: (String, $crate::third_party::ProfileInfo, bool, bool) => ();
            /// `(user_id, by_admin)`: `false` refuses the deactivation (403).
            check_can_deactivate_user: (String, bool) => bool;
            /// `(user_id, deactivated, by_admin)`: after a local user was deactivated.
            on_user_deactivation_status_changed: (String, bool, bool) => ();
            /// `(requester_user_id, room_id)`: `false` refuses shutting the room down (403); the
            /// requester is `None` when a module asked (`ModuleApi.delete_room`).
            check_can_shutdown_room: (Option<String>, String) => bool;
            /// `(user_id, medium, address)`: after a third-party identifier was added to a local
            /// account (registration, `/account/3pid/add`, the admin API). Since 0.3.
            on_add_user_third_party_identifier: (String, String, String) => ();
            /// `(user_id, medium, address)`: after a third-party identifier was removed from a
            /// local account (`/account/3pid/delete`, deactivation, the admin API). Since 0.3.
            on_remove_user_third_party_identifier: (String, String, String) => ();
            /// `(user_id, medium, address)`: Synapse's deprecated name for
            /// `on_add_user_third_party_identifier`, called right after it. Since 0.3.
            on_threepid_bind: (String, String, String) => ();
        }
    };
}

/// The account validity callbacks (Synapse's `register_account_validity_callbacks`).
#[macro_export]
#[doc(hidden)]
macro_rules! account_validity_callbacks {
    ($then:ident $(, $($prefix:tt)*)?) => {
        $then! {
            $($($prefix)*)? |
            /// `(user_id)`: `Some(true)` if the account has expired, `None` if this module does not know.
            is_user_expired: (String,) => Option<bool>;
            /// `(user_id)`: a new account exists.
            on_user_registration: (String,) => ();
            /// `(user_id, auth_provider_type, auth_provider_id)`: after a successful login.
            on_user_login: (String, Option<String>, Option<String>) => ();
            /// `(user_id)`: sends the account's renewal mail instead of the built-in account
            /// validity (`POST /account_validity/send_mail`). One module at most. Since 0.3.
            on_legacy_send_mail: (String,) => ();
            /// `(renewal_token)`: renews the account a renewal link names instead of the
            /// built-in account validity; answers `(token_valid, token_stale, expiration_ts)`.
            /// One module at most. Since 0.3.
            on_legacy_renew: (String,) => (bool, bool, i64);
            /// `(body)`: the admin API's `POST /_synapse/admin/v1/account_validity/validity`
            /// instead of the built-in account validity; answers the new expiration date. One
            /// module at most. Since 0.3.
            on_legacy_admin_request: ($crate::spam::RoomConfig,) => i64;
        }
    };
}

/// The federation callback (Synapse's `register_federation_callbacks`).
#[macro_export]
#[doc(hidden)]
macro_rules! federation_callbacks {
    ($then:ident $(, $($prefix:tt)*)?) => {
        $then! {
            $($($prefix)*)? |
            /// `(delivery)`: events went to another server (see `federation`). Since 0.3.
            on_event_delivered_over_federation: ($crate::federation::FederationDelivery,) => ();
        }
    };
}

/// The account data callback (Synapse's `register_account_data_callbacks`).
#[macro_export]
#[doc(hidden)]
macro_rules! account_data_callbacks {
    ($then:ident $(, $($prefix:tt)*)?) => {
        $then! {
            $($($prefix)*)? |
            /// `(user_id, room_id, account_data_type, content)`: after a user's account data
            /// changed (`room_id` is `None` for global account data).
            on_account_data_updated: (String, Option<String>, String, $crate::spam::RoomConfig) => ();
        }
    };
}

/// The media repository callbacks (Synapse's `register_media_repository_callbacks`).
#[macro_export]
#[doc(hidden)]
macro_rules! media_repository_callbacks {
    ($then:ident $(, $($prefix:tt)*)?) => {
        $then! {
            $($($prefix)*)? |
            /// `(user_id)`: the `/media/config` answer for this user; the first non-empty one
            /// wins, `None` leaves the server's.
            get_media_config_for_user: (String,) => Option<$crate::spam::RoomConfig>;
            /// `(user_id, size)`: `false` refuses an upload of `size` bytes (413 `M_TOO_LARGE`).
            is_user_allowed_to_upload_media_of_size: (String, u64) => bool;
            /// `(user_id)`: the user's upload quotas instead of the server's `media_upload_limits`;
            /// the first `Some` wins (`Some(vec![])` means none).
            get_media_upload_limits_for_user: (String,) => Option<Vec<$crate::repository::MediaUploadLimit>>;
            /// `(user_id, limit, sent_bytes, attempted_bytes)`: an upload went over a quota and
            /// is refused.
            on_media_upload_limit_exceeded: (String, $crate::repository::MediaUploadLimit, u64, u64) => ();
        }
    };
}

/// The ratelimit callback (Synapse's `register_ratelimit_callbacks`).
#[macro_export]
#[doc(hidden)]
macro_rules! ratelimit_callbacks {
    ($then:ident $(, $($prefix:tt)*)?) => {
        $then! {
            $($($prefix)*)? |
            /// `(user_id, limiter_name)`: a setting for this user on this limiter (`rc_message`,
            /// `rc_joins.local`, ...) instead of the server's; the first `Some` wins.
            get_ratelimit_override_for_user: (String, String) => Option<$crate::repository::RatelimitOverride>;
        }
    };
}

/// The presence router callbacks (Synapse's `register_presence_router_callbacks`).
#[macro_export]
#[doc(hidden)]
macro_rules! presence_router_callbacks {
    ($then:ident $(, $($prefix:tt)*)?) => {
        $then! {
            $($($prefix)*)? |
            /// `(states)`: who else gets these presence updates of local users.
            get_users_for_states: (Vec<$crate::presence::PresenceState>,) => $crate::presence::UsersForStates;
            /// `(user_id)`: whose presence this local user gets besides the users they share a room with.
            get_interested_users: (String,) => $crate::presence::InterestedUsers;
        }
    };
}

/// The unsigned-fields callback (Synapse's
/// `register_add_extra_fields_to_unsigned_client_event_callbacks`).
#[macro_export]
#[doc(hidden)]
macro_rules! unsigned_callbacks {
    ($then:ident $(, $($prefix:tt)*)?) => {
        $then! {
            $($($prefix)*)? |
            /// `(event)`: fields added to the event's `unsigned` when clients are served it.
            add_field_to_unsigned_callback: ($crate::EventView,) => $crate::presence::UnsignedFields;
        }
    };
}

macro_rules! names {
    (| $($(#[$doc:meta])* $name:ident: $args:ty => $ret:ty;)*) => {
        &[$(stringify!($name)),*]
    };
}

/// The callbacks Myelin calls, by Synapse's registration method (`register_<method>_callbacks`).
/// A module registering any other callback Synapse knows is warned that Myelin does not call it.
pub const NAMES: &[(&str, &[&str])] = &[
    ("spam_checker", spam_checker_callbacks!(names)),
    ("third_party_rules", third_party_rules_callbacks!(names)),
    ("account_validity", account_validity_callbacks!(names)),
    (
        "password_auth_provider",
        &[
            "auth_checkers",
            "check_3pid_auth",
            "on_logged_out",
            "get_username_for_registration",
            "get_displayname_for_registration",
            "is_3pid_allowed",
        ],
    ),
    ("account_data", account_data_callbacks!(names)),
    ("media_repository", media_repository_callbacks!(names)),
    ("ratelimit", ratelimit_callbacks!(names)),
    ("presence_router", presence_router_callbacks!(names)),
    ("add_extra_fields_to_unsigned_client_event", unsigned_callbacks!(names)),
    ("federation", federation_callbacks!(names)),
];

/// The callbacks Myelin calls for one registration method (empty for an unknown one).
pub fn names(method: &str) -> &'static [&'static str] {
    NAMES.iter().find(|(m, _)| *m == method).map_or(&[], |(_, names)| names)
}

/// Declares a struct of optional callbacks from a category's list:
/// `category!(callback_struct, #[doc] StructName)`.
macro_rules! callback_struct {
    ($(#[$meta:meta])* $struct:ident | $($(#[$doc:meta])* $name:ident: $args:ty => $ret:ty;)*) => {
        $(#[$meta])*
        #[derive(Default, Clone)]
        pub struct $struct {
            $($(#[$doc])* pub $name: Option<$crate::spam::Callback<$args, $ret>>,)*
        }
    };
}
pub(crate) use callback_struct;
