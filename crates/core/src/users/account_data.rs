//! Account data, room tags and filters.

use std::collections::HashSet;
use std::sync::Arc;

use super::*;

/// The global account data naming the users someone ignores.
const IGNORED_USER_LIST: &str = "m.ignored_user_list";

impl Homeserver {
    /// A room's tags (`m.tag` room account data).
    pub async fn room_tags(&self, requester: &Requester, user_id: &str, room_id: &str) -> Result<Value> {
        match self.get_account_data(requester, user_id, Some(room_id), "m.tag").await {
            Ok(v) => Ok(json!({"tags": v.get("tags").cloned().unwrap_or(json!({}))})),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(json!({"tags": {}})),
            Err(e) => Err(e),
        }
    }

    /// Adds (`Some(info)`) or removes (`None`) a room tag.
    pub async fn set_room_tag(
        &self,
        requester: &Requester,
        user_id: &str,
        room_id: &str,
        tag: &str,
        info: Option<Value>,
    ) -> Result<()> {
        if tag.len() > 255 {
            return Err(Error::invalid_param("tag too long"));
        }
        let mut tags =
            self.room_tags(requester, user_id, room_id).await?["tags"].as_object().cloned().unwrap_or_default();
        match info {
            Some(i) => {
                tags.insert(tag.to_owned(), i);
            }
            None => {
                tags.remove(tag);
            }
        }
        // Tags are room account data (`m.tag`), written straight to storage.
        let (u, r, content) = (user_id.to_owned(), room_id.to_owned(), json!({"tags": tags}));
        let pos = self.db(move |s| s.set_account_data(&u, &r, "m.tag", &content)).await?;
        self.advance_stream(pos);
        Ok(())
    }

    /// The users `user` ignores (their `m.ignored_user_list`): their messages are left out of
    /// what `user` is shown and their invites are not shown at all, as Synapse does.
    pub(crate) async fn ignored_users(&self, user: &str) -> Result<Arc<HashSet<String>>> {
        if let Some(known) = self.accounts.ignored.lock().unwrap_or_else(|p| p.into_inner()).get(user) {
            return Ok(known.clone());
        }
        let u = user.to_owned();
        let stored = self.db(move |s| s.get_account_data(&u, "", IGNORED_USER_LIST)).await?;
        let ignored: HashSet<String> = stored
            .as_ref()
            .and_then(|content| content.get("ignored_users"))
            .and_then(Value::as_object)
            .map(|users| users.keys().cloned().collect())
            .unwrap_or_default();
        let ignored = Arc::new(ignored);
        self.accounts.ignored.lock().unwrap_or_else(|p| p.into_inner()).insert(user.to_owned(), ignored.clone());
        Ok(ignored)
    }

    /// Drops the cached ignore list of `user` (they wrote a new one).
    pub(crate) fn forget_ignored_users(&self, user: &str) {
        self.accounts.ignored.lock().unwrap_or_else(|p| p.into_inner()).remove(user);
    }

    /// Global or room account data.
    pub async fn set_account_data(
        &self,
        requester: &Requester,
        user_id: &str,
        room_id: Option<&str>,
        kind: &str,
        content: Value,
    ) -> Result<()> {
        if user_id != requester.user_id.as_str() {
            return Err(Error::forbidden("Cannot add account data for other users."));
        }
        if let Some(r) = room_id {
            ruma::RoomId::parse(r).map_err(|_| Error::invalid_param(format!("Invalid room ID: {r}")))?;
        }
        // As Synapse: these two have their own APIs (405, M_BAD_JSON); m.tag may be set here.
        let own_api = match kind {
            "m.fully_read" => Some("Use /rooms/!roomId:server.name/read_markers"),
            "m.push_rules" => Some("Use /pushrules"),
            _ => None,
        };
        if let Some(instead) = own_api {
            let kind405 = ErrorKind::Module { status: 405, errcode: "M_BAD_JSON".to_owned() };
            return Err(Error::new(kind405, format!("Cannot set {kind} through this API. {instead}")));
        }
        let (u, r, k) = (user_id.to_owned(), room_id.unwrap_or_default().to_owned(), kind.to_owned());
        let written = content.clone();
        let pos = self.db(move |s| s.set_account_data(&u, &r, &k, &written)).await?;
        if kind == IGNORED_USER_LIST && room_id.is_none() {
            self.forget_ignored_users(user_id);
            if self.has_bus() {
                self.publish(format!("ignored {user_id}"));
            }
        }
        self.advance_stream(pos);
        if let Value::Object(content) = &content {
            self.modules.on_account_data_updated(user_id, room_id, kind, content).await;
        }
        Ok(())
    }

    /// One account-data item.
    pub async fn get_account_data(
        &self,
        requester: &Requester,
        user_id: &str,
        room_id: Option<&str>,
        kind: &str,
    ) -> Result<Value> {
        if user_id != requester.user_id.as_str() {
            return Err(Error::forbidden("Cannot get account data for other users."));
        }
        let (u, r, k) = (user_id.to_owned(), room_id.unwrap_or_default().to_owned(), kind.to_owned());
        self.db(move |s| s.get_account_data(&u, &r, &k))
            .await?
            .ok_or_else(|| Error::not_found("Account data not found"))
    }

    /// Stores a sync filter.
    pub async fn create_filter(&self, requester: &Requester, user_id: &str, filter: Value) -> Result<String> {
        if user_id != requester.user_id.as_str() {
            return Err(Error::forbidden("Cannot create filters for other users"));
        }
        validate_filter(&filter).map_err(|why| Error::bad_json(format!("Invalid filter: {why}")))?;
        let u = user_id.to_owned();
        Ok(self.db(move |s| s.create_filter(&u, &filter)).await?.to_string())
    }

    /// A stored filter.
    pub async fn get_filter(&self, requester: &Requester, user_id: &str, filter_id: &str) -> Result<Value> {
        if user_id != requester.user_id.as_str() {
            return Err(Error::forbidden("Cannot get filters for other users"));
        }
        let id: i64 = filter_id.parse().map_err(|_| Error::not_found("No such filter"))?;
        let u = user_id.to_owned();
        self.db(move |s| s.get_filter(&u, id)).await?.ok_or_else(|| Error::not_found("No such filter"))
    }

    /// `account_data_manager.get_global`: local users only.
    pub(crate) async fn module_get_global_account_data(&self, user_id: &str, kind: &str) -> Result<Option<Value>> {
        let user = OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
        if !self.is_mine(&user) {
            return Err(Error::invalid_param(format!("{user_id} is not local to this homeserver")));
        }
        let (u, k) = (user_id.to_owned(), kind.to_owned());
        self.db(move |s| s.get_account_data(&u, "", &k)).await
    }

    /// `account_data_manager.put_global`: local, existing users only.
    pub(crate) async fn module_put_global_account_data(
        &self,
        user_id: &str,
        kind: &str,
        content: Map<String, Value>,
    ) -> Result<()> {
        let user = OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
        if !self.is_mine(&user) {
            return Err(Error::invalid_param(format!("{user_id} is not local to this homeserver")));
        }
        let u = user_id.to_owned();
        if self.db(move |s| s.get_user(&u)).await?.is_none() {
            return Err(Error::not_found(format!("User {user_id} does not exist")));
        }
        let (u, k, written) = (user_id.to_owned(), kind.to_owned(), Value::Object(content.clone()));
        let pos = self.db(move |s| s.set_account_data(&u, "", &k, &written)).await?;
        self.advance_stream(pos);
        self.modules.on_account_data_updated(user_id, None, kind, &content).await;
        Ok(())
    }
}

/// Checks a filter's shape as Synapse's schema does: the sections are objects, the lists are
/// lists of strings, room IDs and user IDs are such IDs. Unknown keys are allowed.
pub(super) fn validate_filter(filter: &Value) -> std::result::Result<(), String> {
    fn object<'a>(v: &'a Value, at: &str) -> std::result::Result<&'a Map<String, Value>, String> {
        v.as_object().ok_or_else(|| format!("{at} must be an object"))
    }
    fn list(v: &Map<String, Value>, key: &str, at: &str, check: fn(&str) -> bool) -> std::result::Result<(), String> {
        let Some(value) = v.get(key) else { return Ok(()) };
        let items = value.as_array().ok_or_else(|| format!("{at}.{key} must be a list"))?;
        for item in items {
            match item.as_str() {
                Some(s) if check(s) => {}
                _ => return Err(format!("{at}.{key} holds {item}, which is not valid there")),
            }
        }
        Ok(())
    }
    let any = |_: &str| true;
    let user = |s: &str| ruma::UserId::parse(s).is_ok();
    let room = |s: &str| ruma::RoomId::parse(s).is_ok();
    let event_filter = |v: &Value, at: &str, in_room: bool| -> std::result::Result<(), String> {
        let f = object(v, at)?;
        list(f, "types", at, any)?;
        list(f, "not_types", at, any)?;
        list(f, "senders", at, user)?;
        list(f, "not_senders", at, user)?;
        if in_room {
            list(f, "rooms", at, room)?;
            list(f, "not_rooms", at, room)?;
        }
        if let Some(limit) = f.get("limit")
            && limit.as_u64().is_none()
        {
            return Err(format!("{at}.limit must be a non-negative integer"));
        }
        for flag in ["lazy_load_members", "include_redundant_members", "contains_url", "unread_thread_notifications"] {
            if f.get(flag).is_some_and(|v| !v.is_boolean()) {
                return Err(format!("{at}.{flag} must be a boolean"));
            }
        }
        Ok(())
    };
    let top = object(filter, "the filter")?;
    list(top, "event_fields", "the filter", any)?;
    for section in ["presence", "account_data"] {
        if let Some(v) = top.get(section) {
            event_filter(v, section, false)?;
        }
    }
    if let Some(room_section) = top.get("room") {
        let r = object(room_section, "room")?;
        list(r, "rooms", "room", room)?;
        list(r, "not_rooms", "room", room)?;
        for section in ["timeline", "state", "ephemeral", "account_data"] {
            if let Some(v) = r.get(section) {
                event_filter(v, &format!("room.{section}"), true)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod filter_tests {
    use super::validate_filter;
    use serde_json::json;

    #[test]
    fn filters_of_the_wrong_shape_are_refused() {
        for bad in [
            json!({"room": {"timeline": "not_an_object"}}),
            json!({"presence": "not_an_object"}),
            json!({"room": {"timeline": {"not_rooms": "not_a_list"}}}),
            json!({"room": {"timeline": {"types": [0]}}}),
            json!({"room": {"timeline": {"rooms": ["not_a_room_id"]}}}),
            json!({"room": {"timeline": {"senders": ["not_a_sender_id"]}}}),
            json!({"room": {"rooms": "!a:b"}}),
            json!({"room": {"timeline": {"limit": -1}}}),
            json!({"room": {"state": {"lazy_load_members": "true"}}}),
            json!([]),
        ] {
            assert!(validate_filter(&bad).is_err(), "{bad}");
        }
        for good in [
            json!({}),
            json!({"room": {"timeline": {"limit": 10, "types": ["m.room.message"], "rooms": ["!a:b"]}, "include_leave": true}}),
            json!({"presence": {"senders": ["@a:b"]}, "event_fields": ["content.body"], "unknown": 1}),
        ] {
            assert!(validate_filter(&good).is_ok(), "{good}");
        }
    }
}
