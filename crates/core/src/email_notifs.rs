//! E-mail notifications, as Synapse's `EmailPusher` sends them (`email.enable_notifs`): a
//! user's e-mail pusher (`kind: email`, its `pushkey` an address of their account) collects
//! the events that notify them; once the oldest has waited `notif_delay_before_mail` and is
//! still unread, one mail lists every unread one, room by room, with Synapse's subjects and
//! template variables. Each room is then throttled as Synapse does (10 minutes after its first
//! mail, then a day, reset after 12 quiet hours). The mail carries an unsubscribe link (and
//! `List-Unsubscribe`) that removes the pusher.
//!
//! Pending notifications are written to the database as they are queued (transient records,
//! kept two days) and read back when the notifier starts, so a restart mails what was due
//! rather than forgetting it. The rooms' throttles are kept in memory: after a restart a room
//! may be mailed about once more before its pause.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{Map, Value, json};

use crate::mail::{Mail, Template};
use crate::server::{now_ms, random_string, url_encode};
use crate::{Error, ErrorKind, Homeserver, Result};

/// The app ID of e-mail pushers Myelin makes (Synapse's).
pub(crate) const EMAIL_APP_ID: &str = "m.email";
/// Where a stored e-mail pusher keeps the secret of its unsubscribe link.
pub(crate) const UNSUBSCRIBE_TOKEN: &str = "myelin.unsubscribe_token";
/// Synapse's throttle: the first pause after a room's mail, the longest, its growth, and the
/// quiet time after which it starts again.
const THROTTLE_START_MS: i64 = 10 * 60 * 1000;
const THROTTLE_MAX_MS: i64 = 24 * 60 * 60 * 1000;
const THROTTLE_MULTIPLIER: i64 = 144;
const THROTTLE_RESET_AFTER_MS: i64 = 12 * 60 * 60 * 1000;

/// The transient-record kind of a notification waiting to be mailed; its key is `user address
/// position` (neither an ID nor an address has spaces), its value [`PendingMail::to_json`].
const PENDING_MAIL: &str = "email_notification";
/// How long a pending notification is kept: past this it is no news to mail.
const PENDING_MAIL_LIFETIME_MS: i64 = 2 * 24 * 60 * 60 * 1000;

/// A notification waiting to be mailed.
#[derive(Clone)]
pub(crate) struct PendingMail {
    room: OwnedRoomId,
    event: Value,
    position: i64,
    received_at: i64,
}

impl PendingMail {
    fn key(&self, user: &str, address: &str) -> String {
        format!("{user} {address} {:020}", self.position)
    }

    fn to_json(&self) -> String {
        json!({"room": self.room, "event": self.event, "position": self.position, "received_at": self.received_at})
            .to_string()
    }

    /// A stored record back: `(user, address, notification)`.
    fn from_record(key: &str, value: &str) -> Option<(String, String, PendingMail)> {
        let mut parts = key.split(' ');
        let (user, address) = (parts.next()?.to_owned(), parts.next()?.to_owned());
        let v: Value = serde_json::from_str(value).ok()?;
        let item = PendingMail {
            room: OwnedRoomId::try_from(v["room"].as_str()?).ok()?,
            event: v["event"].clone(),
            position: v["position"].as_i64()?,
            received_at: v["received_at"].as_i64()?,
        };
        Some((user, address, item))
    }
}

/// A room's throttle for one pusher: `(user, address, room)` to when its last mail went and
/// the pause before the next.
type Throttles = HashMap<(String, String, String), (i64, i64)>;

/// The e-mail notifier's state (`hs.push.email`).
#[derive(Default)]
pub(crate) struct EmailNotifState {
    /// Per `(user, address)`: the notifications not mailed yet.
    pending: std::sync::Mutex<HashMap<(String, String), Vec<PendingMail>>>,
    /// Per `(user, address, room)`: when its last mail went and the pause before the next.
    throttle: std::sync::Mutex<Throttles>,
}

impl Homeserver {
    /// The e-mail pushers' addresses by user, when notification mails are on.
    pub(crate) fn email_pushers(&self, stored: &[(String, String)]) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        if !self.config.email.as_ref().is_some_and(|e| e.enable_notifs) {
            return out;
        }
        for (user, json) in stored {
            let Ok(Value::Object(p)) = serde_json::from_str::<Value>(json) else { continue };
            if p.get("kind").and_then(Value::as_str) == Some("email")
                && let Some(address) = p.get("pushkey").and_then(Value::as_str)
            {
                out.entry(user.clone()).or_default().push(address.to_owned());
            }
        }
        out
    }

    /// Queues a notifying event for each of `user`'s e-mail pushers (written down first, so
    /// that a restart does not lose it).
    pub(crate) async fn queue_email_notification(
        &self,
        user: &OwnedUserId,
        addresses: &[String],
        room: &OwnedRoomId,
        event: &Value,
        position: i64,
    ) -> Result<()> {
        let item = PendingMail { room: room.clone(), event: event.clone(), position, received_at: now_ms() };
        let records: Vec<(String, String)> =
            addresses.iter().map(|address| (item.key(user.as_str(), address), item.to_json())).collect();
        let expires = item.received_at + PENDING_MAIL_LIFETIME_MS;
        self.db(move |s| {
            for (key, value) in &records {
                s.put_transient(PENDING_MAIL, key, value, expires)?;
            }
            Ok(())
        })
        .await?;
        let mut pending = self.push.email.pending.lock().unwrap_or_else(|p| p.into_inner());
        for address in addresses {
            pending.entry((user.to_string(), address.clone())).or_default().push(item.clone());
        }
        Ok(())
    }

    /// Forgets pending notifications once mailed (or read, or failed to mail).
    async fn forget_pending_mails(&self, user: &str, address: &str, items: &[PendingMail]) {
        let keys: Vec<String> = items.iter().map(|i| i.key(user, address)).collect();
        let forgotten = self
            .db(move |s| {
                for key in &keys {
                    s.take_transient(PENDING_MAIL, key, 0)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = forgotten {
            tracing::warn!(user, error = %e, "could not forget mailed notifications");
        }
    }

    /// The notifications still pending from before a restart.
    async fn load_pending_mails(&self) {
        let records = match self.db(|s| s.transient_entries(PENDING_MAIL, now_ms())).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not read pending notification mails");
                return;
            }
        };
        let mut pending = self.push.email.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (key, value) in records {
            if let Some((user, address, item)) = PendingMail::from_record(&key, &value) {
                let items = pending.entry((user, address)).or_default();
                if !items.iter().any(|i| i.position == item.position) {
                    items.push(item);
                }
            }
        }
    }

    /// Starts the task that mails notifications once they are due (with the push sender).
    pub(crate) fn start_email_notifier(self: &Arc<Self>) {
        let Some(settings) = self.config.email.as_ref().filter(|e| e.enable_notifs) else { return };
        let tick = settings.notif_delay_before_mail.clamp(Duration::from_millis(200), Duration::from_secs(5));
        let hs = self.clone();
        tokio::spawn(async move {
            hs.load_pending_mails().await;
            loop {
                tokio::time::sleep(tick).await;
                hs.mail_due_notifications().await;
            }
        });
    }

    /// One pass: every pusher whose oldest notification has waited long enough gets its mail.
    async fn mail_due_notifications(&self) {
        let Some(settings) = self.config.email.as_ref() else { return };
        let delay = settings.notif_delay_before_mail.as_millis() as i64;
        let now = now_ms();
        let due: Vec<((String, String), Vec<PendingMail>)> = {
            let mut pending = self.push.email.pending.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<(String, String)> = pending
                .iter()
                .filter(|(_, items)| items.iter().map(|i| i.received_at).min().is_some_and(|t| t + delay <= now))
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter().filter_map(|k| pending.remove(&k).map(|items| (k, items))).collect()
        };
        for ((user, address), items) in due {
            let all = items.clone();
            if let Err(e) = self.mail_notifications(&user, &address, items, now).await {
                tracing::warn!(user, error = %e, "notification mail not sent");
            }
            // What is held for a throttle went back to the queue (and stays written down).
            let still = self
                .push
                .email
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(user.clone(), address.clone()))
                .cloned()
                .unwrap_or_default();
            let done: Vec<PendingMail> =
                all.into_iter().filter(|i| !still.iter().any(|s| s.position == i.position)).collect();
            self.forget_pending_mails(&user, &address, &done).await;
        }
    }

    /// Mails `user` the notifications of `items` they have still not read, in the rooms whose
    /// throttle allows; the others wait.
    async fn mail_notifications(&self, user: &str, address: &str, items: Vec<PendingMail>, now: i64) -> Result<()> {
        let read = self.unread_starts(user).await?;
        let unread: Vec<PendingMail> =
            items.into_iter().filter(|i| i.position > read.get(i.room.as_str()).copied().unwrap_or(0)).collect();
        let (ready, held): (Vec<PendingMail>, Vec<PendingMail>) = {
            let throttle = self.push.email.throttle.lock().unwrap_or_else(|p| p.into_inner());
            unread.into_iter().partition(|i| {
                let key = (user.to_owned(), address.to_owned(), i.room.to_string());
                throttle.get(&key).is_none_or(|(sent, pause)| sent + pause <= now)
            })
        };
        if !held.is_empty() {
            let mut pending = self.push.email.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.entry((user.to_owned(), address.to_owned())).or_default().extend(held);
        }
        if ready.is_empty() {
            return Ok(());
        }
        let mail = self.notification_mail(user, address, &ready, now).await?;
        let settings = self.config.email.as_ref().ok_or_else(|| Error::internal("no email config"))?;
        crate::mail::send(&settings.smtp, self.config.insecure_outbound_tls, self.server_name(), &mail)
            .await
            .map_err(Error::internal)?;
        tracing::info!(user, rooms = ready.len(), "notification mail sent");
        let mut throttle = self.push.email.throttle.lock().unwrap_or_else(|p| p.into_inner());
        for item in &ready {
            let key = (user.to_owned(), address.to_owned(), item.room.to_string());
            let pause = match throttle.get(&key) {
                Some((sent, pause)) if now - sent <= THROTTLE_RESET_AFTER_MS && *pause > 0 => {
                    (pause * THROTTLE_MULTIPLIER).min(THROTTLE_MAX_MS)
                }
                _ => THROTTLE_START_MS,
            };
            throttle.insert(key, (now, pause));
        }
        Ok(())
    }

    /// The mail: Synapse's template variables (`user_display_name`, `summary_text`, `rooms`
    /// with their `notifs` and `messages`, `unsubscribe_link`, `reason`) and subject.
    async fn notification_mail(&self, user: &str, address: &str, items: &[PendingMail], now: i64) -> Result<Mail> {
        let settings = self.config.email.as_ref().ok_or_else(|| Error::internal("no email config"))?;
        let user_id = OwnedUserId::try_from(user).map_err(Error::internal)?;
        let u = user.to_owned();
        let user_display_name =
            self.db(move |s| Ok(s.get_profile(&u)?.and_then(|p| p.0))).await?.unwrap_or_else(|| user.to_owned());
        // Rooms, the most recently notified first.
        let mut order: Vec<OwnedRoomId> = Vec::new();
        for item in items.iter().rev() {
            if !order.contains(&item.room) {
                order.push(item.room.clone());
            }
        }
        let mut rooms = Vec::new();
        let mut summaries = Vec::new();
        for room in &order {
            let notifs: Vec<&PendingMail> = items.iter().filter(|i| &i.room == room).collect();
            let context = self.notification_context(&notifs[0].event, room, &user_id).await?;
            let title = context.get("room_name").and_then(Value::as_str).unwrap_or(room.as_str()).to_owned();
            let explicit = context.get("explicit_room_name").and_then(Value::as_str).map(str::to_owned);
            let invite = notifs.iter().find(|n| {
                n.event["type"] == "m.room.member"
                    && n.event["state_key"] == user
                    && n.event["content"]["membership"] == "invite"
            });
            let mut notif_vars = Vec::new();
            let mut senders = Vec::new();
            for n in &notifs {
                let sender = n.event["sender"].as_str().unwrap_or_default();
                let sender_context = self.notification_context(&n.event, room, &user_id).await?;
                let sender_name =
                    sender_context.get("sender_display_name").and_then(Value::as_str).unwrap_or(sender).to_owned();
                senders.push(sender_name.clone());
                let event_id = n.event["event_id"].as_str().unwrap_or_default();
                notif_vars.push(json!({
                    "link": format!("{}/#/room/{}/{}", settings.client_base_url, room, event_id),
                    "ts": n.event["origin_server_ts"],
                    "messages": [message_vars(&n.event, &sender_name)],
                }));
            }
            rooms.push(json!({
                "title": title,
                "hash": string_hash(room.as_str()),
                "invite": invite.is_some(),
                "notifs": notif_vars,
                "link": format!("{}/#/room/{}", settings.client_base_url, room),
                "avatar_url": Value::Null,
            }));
            summaries.push((room.clone(), explicit, invite.is_some(), senders));
        }
        let app = settings.app_name.as_str();
        let subject = |key: &str, person: &str, room: &str| {
            settings.subject(key, &[("app", app), ("person", person), ("room", room), ("space", room)])
        };
        let (first_room, first_name, first_invite, first_senders) = &summaries[0];
        let summary_text = if summaries.len() == 1 {
            match (first_invite, first_name, first_senders.len()) {
                (true, None, _) => subject("invite_from_person", &first_senders[0], ""),
                (true, Some(name), _) => subject("invite_from_person_to_room", &first_senders[0], name),
                (false, Some(name), 1) => subject("message_from_person_in_room", &first_senders[0], name),
                (false, None, 1) => subject("message_from_person", &first_senders[0], ""),
                (false, Some(name), _) => subject("messages_in_room", "", name),
                (false, None, _) => from_member_events(&subject, first_senders, first_room.as_str()),
            }
        } else {
            match first_name {
                Some(name) => subject("messages_in_room_and_others", "", name),
                None => from_member_events(&subject, first_senders, first_room.as_str()),
            }
        };
        let token = self.unsubscribe_token(user, address).await?;
        let unsubscribe_link = format!(
            "{}_synapse/client/unsubscribe?access_token={}&app_id={}&pushkey={}",
            self.config.public_baseurl,
            url_encode(&token),
            url_encode(EMAIL_APP_ID),
            url_encode(address)
        );
        let first = items.iter().filter(|i| &i.room == first_room).map(|i| i.received_at).min().unwrap_or(now);
        let mut vars = Map::new();
        vars.insert("app_name".into(), json!(app));
        vars.insert("server_name".into(), json!(self.server_name()));
        vars.insert("user_display_name".into(), json!(user_display_name));
        vars.insert("unsubscribe_link".into(), json!(unsubscribe_link));
        vars.insert("summary_text".into(), json!(summary_text));
        vars.insert("rooms".into(), json!(rooms));
        vars.insert(
            "reason".into(),
            json!({"room_id": first_room, "room_name": first_name, "now": now, "received_at": first,
                   "delay_before_mail_ms": settings.notif_delay_before_mail.as_millis() as i64,
                   "last_sent_ts": Value::Null, "throttle_ms": 0}),
        );
        let render = |which| settings.templates.render(which, &vars).map_err(Error::internal);
        Ok(Mail {
            from: settings.from_header(),
            to: address.to_owned(),
            subject: summary_text.clone(),
            text: render(Template::NotifMailText)?,
            html: render(Template::NotifMailHtml)?,
            headers: vec![
                ("List-Unsubscribe-Post".into(), "List-Unsubscribe=One-Click".into()),
                ("List-Unsubscribe".into(), format!("<{unsubscribe_link}>")),
            ],
        })
    }

    /// `ModuleApi.send_mail`: a module's mail, from `notif_from`, as Synapse sends it.
    pub(crate) async fn module_send_mail(&self, mail: myelin_module_api::OutgoingMail) -> Result<()> {
        let settings = self.config.email.as_ref().ok_or_else(|| {
            Error::new(ErrorKind::BadRequest, "Email is not configured on this server (no email: section)")
        })?;
        let mail = Mail {
            from: settings.from_header(),
            to: mail.recipient,
            subject: mail.subject,
            text: mail.text,
            html: mail.html,
            headers: Vec::new(),
        };
        tracing::info!(to = %mail.to, "sending a module's email");
        crate::mail::send(&settings.smtp, self.config.insecure_outbound_tls, self.server_name(), &mail)
            .await
            .map_err(|why| Error::internal(format!("sending a module's email: {why}")))
    }

    /// The secret of `user`'s e-mail pusher for `address`, which its unsubscribe link carries.
    async fn unsubscribe_token(&self, user: &str, address: &str) -> Result<String> {
        let stored = self.all_pushers().await?;
        let token = stored.iter().filter(|(u, _)| u == user).find_map(|(_, json)| {
            let p: Value = serde_json::from_str(json).ok()?;
            (p["app_id"] == EMAIL_APP_ID && p["pushkey"] == address)
                .then(|| p[UNSUBSCRIBE_TOKEN].as_str().map(str::to_owned))
                .flatten()
        });
        token.ok_or_else(|| Error::internal("an e-mail pusher without its unsubscribe token"))
    }

    /// Makes the e-mail pusher of a new address, when `notif_for_new_users` says so.
    pub(crate) async fn add_email_pusher_if_wanted(&self, user: &str, address: &str) -> Result<()> {
        if !self.config.email.as_ref().is_some_and(|e| e.enable_notifs && e.notif_for_new_users) {
            return Ok(());
        }
        let pusher = json!({
            "kind": "email",
            "app_id": EMAIL_APP_ID,
            "app_display_name": "Email Notifications",
            "device_display_name": address,
            "pushkey": address,
            "lang": Value::Null,
            "data": {},
            "pushkey_ts": now_ms(),
            UNSUBSCRIBE_TOKEN: random_string(32),
        });
        let (u, a, json) = (user.to_owned(), address.to_owned(), pusher.to_string());
        self.db(move |s| s.set_pusher(&u, EMAIL_APP_ID, &a, &json, false)).await?;
        self.pushers_changed();
        Ok(())
    }

    /// `GET`/`POST /_synapse/client/unsubscribe`: the link in a notification mail removes the
    /// e-mail pusher it came from.
    pub async fn unsubscribe_email(&self, token: &str, app_id: &str, pushkey: &str) -> Result<()> {
        let stored = self.all_pushers().await?;
        let owner = stored.iter().find_map(|(user, json)| {
            let p: Value = serde_json::from_str(json).ok()?;
            let matches = p["app_id"] == app_id
                && p["pushkey"] == pushkey
                && p[UNSUBSCRIBE_TOKEN].as_str().is_some_and(|t| !t.is_empty() && t == token);
            matches.then(|| user.clone())
        });
        let Some(user) = owner else {
            return Err(Error::new(ErrorKind::Forbidden, "Invalid unsubscribe link"));
        };
        let (u, a, k) = (user.clone(), app_id.to_owned(), pushkey.to_owned());
        self.db(move |s| s.delete_pusher(&u, &a, &k)).await?;
        self.pushers_changed();
        tracing::info!(user, "unsubscribed from notification mails");
        Ok(())
    }
}

/// `_make_summary_text_from_member_events`: who sent the notifications.
fn from_member_events(subject: &dyn Fn(&str, &str, &str) -> String, senders: &[String], room: &str) -> String {
    let mut distinct: Vec<&String> = Vec::new();
    for s in senders {
        if !distinct.contains(&s) {
            distinct.push(s);
        }
    }
    match distinct.as_slice() {
        [] => subject("messages_in_room", "", room),
        [one] if senders.len() == 1 => subject("message_from_person", one.as_str(), ""),
        [one] => subject("messages_from_person", one.as_str(), ""),
        [first, ..] => subject("messages_from_person_and_others", first.as_str(), ""),
    }
}

/// A message's template variables (Synapse's `_get_message_vars`). The HTML is the plain body
/// escaped: a sender's own HTML never reaches the mail.
fn message_vars(event: &Value, sender_name: &str) -> Value {
    let content = &event["content"];
    let body = content["body"].as_str().unwrap_or_default();
    let escaped = body
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\n', "<br>");
    json!({
        "event_type": event["type"],
        "is_historical": false,
        "id": event["event_id"],
        "ts": event["origin_server_ts"],
        "sender_name": sender_name,
        "sender_avatar_url": Value::Null,
        "sender_hash": string_hash(event["sender"].as_str().unwrap_or_default()),
        "msgtype": content["msgtype"],
        "body_text_plain": body,
        "body_text_html": escaped,
        "format": content["format"],
    })
}

/// Synapse's `string_ordinal_total`: the sum of the characters, which templates use to pick
/// a colour.
fn string_hash(s: &str) -> u64 {
    s.chars().map(|c| c as u64).sum()
}
