//! Drives matrix-rust-sdk against a live homeserver the way Element X does: `SyncService` over
//! simplified sliding sync (discovered from `/versions`), the `RoomListService`'s room list,
//! `Timeline`s with back-pagination, sending, reactions and edits, then end-to-end encryption:
//! an encrypted room, cross-signing and verifying the other user, and a third device of the same
//! user reading an old encrypted message through key backup (recovery).
//!
//! Usage: `myelin-sdk-driver HOMESERVER_URL WORK_DIR` with users `alice` and `bob` registered
//! beforehand with the password `password`. Each step prints `ok: <step>`; the first failure
//! exits non-zero with what was expected and what was seen.

#![recursion_limit = "256"]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use matrix_sdk::encryption::{BackupDownloadStrategy, EncryptionSettings};
use matrix_sdk::room::edit::EditedContent;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::{RoomMessageEventContent, RoomMessageEventContentWithoutRelation};
use matrix_sdk::ruma::{OwnedRoomId, RoomId, UserId};
use matrix_sdk::sliding_sync::VersionBuilder;
use matrix_sdk::{Client, RoomState};
use matrix_sdk_ui::room_list_service::filters::new_filter_non_left;
use matrix_sdk_ui::sync_service::SyncService;
use matrix_sdk_ui::timeline::{RoomExt, Timeline, TimelineItem};

/// How long any one expectation may take to come true.
const PATIENCE: Duration = Duration::from_secs(30);

/// A logged-in device with its sync running.
struct Device {
    client: Client,
    sync: SyncService,
}

impl Device {
    async fn login(homeserver: &str, store: &Path, user: &str) -> Result<Device> {
        let client = Client::builder()
            .homeserver_url(homeserver)
            .sqlite_store(store, None)
            // Fails unless /versions advertises MSC4186.
            .sliding_sync_version_builder(VersionBuilder::DiscoverNative)
            .with_encryption_settings(EncryptionSettings {
                auto_enable_cross_signing: true,
                backup_download_strategy: BackupDownloadStrategy::AfterDecryptionFailure,
                auto_enable_backups: false,
            })
            .build()
            .await
            .context("building the client (is simplified sliding sync advertised?)")?;
        client.matrix_auth().login_username(user, "password").initial_device_display_name("sdk").await?;
        let sync = SyncService::builder(client.clone()).build().await?;
        sync.start().await;
        Ok(Device { client, sync })
    }

    fn user_id(&self) -> &UserId {
        self.client.user_id().expect("logged in")
    }

    /// Waits until the room list (the `all_rooms` list of the room list service) shows `room`.
    async fn see_in_room_list(&self, room: &RoomId) -> Result<()> {
        let list = self.sync.room_list_service().all_rooms().await?;
        let (stream, controller) = list.entries_with_dynamic_adapters(100);
        controller.set_filter(Box::new(new_filter_non_left()));
        let mut stream = Box::pin(stream);
        let mut rooms: Vec<OwnedRoomId> = Vec::new();
        let found = tokio::time::timeout(PATIENCE, async {
            while let Some(diffs) = stream.next().await {
                for diff in diffs {
                    let mut current: imbl_like::Rooms = rooms.clone().into();
                    current.apply(diff);
                    rooms = current.into();
                }
                if rooms.iter().any(|r| r == room) {
                    return true;
                }
            }
            false
        })
        .await;
        match found {
            Ok(true) => Ok(()),
            _ => bail!("{} never saw {room} in the room list; it saw {rooms:?}", self.user_id()),
        }
    }

    async fn timeline(&self, room: &RoomId) -> Result<Timeline> {
        let room = eventually("the room is known", || async { self.client.get_room(room) }).await?;
        Ok(room.timeline().await?)
    }
}

/// Tracks a room list through its diffs (only the room IDs).
mod imbl_like {
    use eyeball_im::VectorDiff;
    use matrix_sdk::ruma::OwnedRoomId;
    use matrix_sdk_ui::room_list_service::RoomListItem;

    pub struct Rooms(Vec<OwnedRoomId>);

    impl From<Vec<OwnedRoomId>> for Rooms {
        fn from(v: Vec<OwnedRoomId>) -> Self {
            Rooms(v)
        }
    }
    impl From<Rooms> for Vec<OwnedRoomId> {
        fn from(r: Rooms) -> Self {
            r.0
        }
    }

    impl Rooms {
        pub fn apply(&mut self, diff: VectorDiff<RoomListItem>) {
            let id = |item: &RoomListItem| item.room_id().to_owned();
            let v = &mut self.0;
            match diff {
                VectorDiff::Append { values } => v.extend(values.iter().map(id)),
                VectorDiff::Clear => v.clear(),
                VectorDiff::PushFront { value } => v.insert(0, id(&value)),
                VectorDiff::PushBack { value } => v.push(id(&value)),
                VectorDiff::PopFront => {
                    if !v.is_empty() {
                        v.remove(0);
                    }
                }
                VectorDiff::PopBack => {
                    v.pop();
                }
                VectorDiff::Insert { index, value } => v.insert(index.min(v.len()), id(&value)),
                VectorDiff::Set { index, value } => {
                    if index < v.len() {
                        v[index] = id(&value);
                    }
                }
                VectorDiff::Remove { index } => {
                    if index < v.len() {
                        v.remove(index);
                    }
                }
                VectorDiff::Truncate { length } => v.truncate(length),
                VectorDiff::Reset { values } => *v = values.iter().map(id).collect(),
            }
        }
    }
}

/// Polls `check` until it yields something, for up to [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The text bodies of a timeline's messages, oldest first.
fn bodies(items: &[std::sync::Arc<TimelineItem>]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| i.as_event())
        .filter_map(|e| e.content().as_message().map(|m| m.body().to_owned()))
        .collect()
}

async fn timeline_shows(
    timeline: &Timeline,
    what: &str,
    test: impl Fn(&[std::sync::Arc<TimelineItem>]) -> bool,
) -> Result<()> {
    eventually(what, || async {
        let items: Vec<_> = timeline.items().await.into_iter().collect();
        test(&items).then_some(())
    })
    .await
    .with_context(|| what.to_owned())
}

fn step(name: &str) {
    println!("ok: {name}");
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(homeserver), Some(work)) = (args.get(1), args.get(2)) else {
        bail!("usage: myelin-sdk-driver HOMESERVER_URL WORK_DIR");
    };
    let work = PathBuf::from(work);
    let alice = Device::login(homeserver, &work.join("alice-1"), "alice").await?;
    let bob = Device::login(homeserver, &work.join("bob-1"), "bob").await?;
    step("both log in and sync over simplified sliding sync");

    // A room with history; bob joins and finds it in his room list.
    let mut create = CreateRoom::new();
    create.name = Some("SDK plaza".to_owned());
    create.preset = Some(RoomPreset::PublicChat);
    let plaza = alice.client.create_room(create).await?;
    for n in 0..30 {
        plaza.send(RoomMessageEventContent::text_plain(format!("history {n}"))).await?;
    }
    let plaza_id = plaza.room_id().to_owned();
    bob.client.join_room_by_id(&plaza_id).await?;
    bob.see_in_room_list(&plaza_id).await?;
    alice.see_in_room_list(&plaza_id).await?;
    step("the room lists show the room");

    // Bob's timeline paginates back to the start of the history.
    let bob_plaza = bob.timeline(&plaza_id).await?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let items: Vec<_> = bob_plaza.items().await.into_iter().collect();
        if bodies(&items).iter().any(|b| b == "history 0") {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("back-pagination never reached the first message; saw {:?}", bodies(&items));
        }
        bob_plaza.paginate_backwards(10).await?;
    }
    let items: Vec<_> = bob_plaza.items().await.into_iter().collect();
    let history: Vec<String> = bodies(&items).into_iter().filter(|b| b.starts_with("history")).collect();
    let expected: Vec<String> = (0..30).map(|n| format!("history {n}")).collect();
    if history != expected {
        bail!("the paginated history is not the history sent, in order: {history:?}");
    }
    step("a timeline paginates back through the whole history");

    // Send and receive, react, edit.
    let alice_plaza = alice.timeline(&plaza_id).await?;
    bob_plaza.send(RoomMessageEventContent::text_plain("hello from bob").into()).await?;
    timeline_shows(&alice_plaza, "alice sees bob's message", |items| {
        bodies(items).iter().any(|b| b == "hello from bob")
    })
    .await?;
    let bobs = eventually("bob's message is in alice's timeline", || async {
        alice_plaza.items().await.iter().filter_map(|i| i.as_event()).find_map(|e| {
            (e.content().as_message().is_some_and(|m| m.body() == "hello from bob") && e.event_id().is_some())
                .then(|| e.identifier())
        })
    })
    .await?;
    alice_plaza.toggle_reaction(&bobs, "👍").await?;
    timeline_shows(&bob_plaza, "bob sees alice's reaction", |items| {
        items.iter().filter_map(|i| i.as_event()).any(|e| {
            e.content().as_message().is_some_and(|m| m.body() == "hello from bob")
                && e.content()
                    .reactions()
                    .is_some_and(|r| r.get("👍").is_some_and(|by| by.contains_key(alice.user_id())))
        })
    })
    .await?;
    step("a reaction arrives");
    let own = eventually("bob's own message has its event ID", || async {
        bob_plaza.items().await.iter().filter_map(|i| i.as_event()).find_map(|e| {
            (e.content().as_message().is_some_and(|m| m.body() == "hello from bob") && e.event_id().is_some())
                .then(|| e.identifier())
        })
    })
    .await?;
    bob_plaza
        .edit(&own, EditedContent::RoomMessage(RoomMessageEventContentWithoutRelation::text_plain("hello, edited")))
        .await?;
    timeline_shows(&alice_plaza, "alice sees the edit", |items| {
        items
            .iter()
            .filter_map(|i| i.as_event())
            .any(|e| e.content().as_message().is_some_and(|m| m.body() == "hello, edited" && m.is_edited()))
    })
    .await?;
    step("an edit replaces the message");

    // End-to-end encryption: an encrypted room bob is invited to.
    let mut create = CreateRoom::new();
    create.name = Some("SDK secrets".to_owned());
    create.preset = Some(RoomPreset::PrivateChat);
    create.invite = vec![bob.user_id().to_owned()];
    create.initial_state = vec![
        InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults()).to_raw_any(),
    ];
    let secrets = alice.client.create_room(create).await?;
    let secrets_id = secrets.room_id().to_owned();
    let invited = eventually("bob sees the invite", || async {
        bob.client.get_room(&secrets_id).filter(|r| r.state() == RoomState::Invited)
    })
    .await?;
    invited.join().await?;
    eventually("alice sees bob joined", || async {
        let members = secrets.members(matrix_sdk::RoomMemberships::JOIN).await.ok()?;
        members.iter().any(|m| m.user_id() == bob.user_id()).then_some(())
    })
    .await?;
    let alice_secrets = alice.timeline(&secrets_id).await?;
    alice_secrets.send(RoomMessageEventContent::text_plain("the secret plan").into()).await?;
    let bob_secrets = bob.timeline(&secrets_id).await?;
    timeline_shows(&bob_secrets, "bob decrypts alice's message", |items| {
        bodies(items).iter().any(|b| b == "the secret plan")
    })
    .await?;
    if !secrets.latest_encryption_state().await?.is_encrypted() {
        bail!("the room is not encrypted");
    }
    step("an encrypted message is decrypted by the other user");

    // Cross-signing: both have identities (bootstrapped at login); alice verifies bob.
    let bob_identity = eventually("alice finds bob's cross-signing identity", || async {
        alice.client.encryption().request_user_identity(bob.user_id()).await.ok().flatten()
    })
    .await?;
    bob_identity.verify().await?;
    eventually("bob's identity is verified for alice", || async {
        let identity = alice.client.encryption().get_user_identity(bob.user_id()).await.ok().flatten()?;
        identity.is_verified().then_some(())
    })
    .await?;
    let own_device = alice.client.encryption().get_own_device().await?.context("alice's own device")?;
    if !own_device.is_cross_signed_by_owner() {
        bail!("alice's device is not signed by her self-signing key");
    }
    let bob_device = eventually("bob sees alice's device as cross-signed", || async {
        let device =
            bob.client.encryption().get_device(alice.user_id(), alice.client.device_id()?).await.ok().flatten()?;
        device.is_cross_signed_by_owner().then_some(device)
    })
    .await?;
    drop(bob_device);
    step("cross-signing: identities published, bob verified by alice");

    // Key backup: alice enables recovery; her third device recovers and reads the old message.
    let recovery_key = alice.client.encryption().recovery().enable().await?;
    alice.client.encryption().backups().wait_for_steady_state().await?;
    // Alice's first device goes quiet, so the key can only come from the backup (not forwarded).
    alice.sync.stop().await;
    let alice3 = Device::login(homeserver, &work.join("alice-3"), "alice").await?;
    alice3.client.encryption().recovery().recover(&recovery_key).await?;
    alice3.see_in_room_list(&secrets_id).await?;
    let alice3_secrets = alice3.timeline(&secrets_id).await?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let items: Vec<_> = alice3_secrets.items().await.into_iter().collect();
        if bodies(&items).iter().any(|b| b == "the secret plan") {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the new device never decrypted the old message; saw {:?}", bodies(&items));
        }
        alice3_secrets.paginate_backwards(10).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    step("a new device of alice decrypts the old message through key backup");

    for device in [&bob, &alice3] {
        device.sync.stop().await;
    }
    println!("SDK OK");
    Ok(())
}
