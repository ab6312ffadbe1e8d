//! Profiles: display names and avatars, who may read them.

use super::*;

/// The most bytes a whole profile may take as JSON (Synapse's `MAX_PROFILE_SIZE`).
const MAX_PROFILE_BYTES: usize = 65_536;

/// The longest profile field name, in bytes (Synapse's `MAX_CUSTOM_FIELD_LEN`).
const MAX_FIELD_NAME_BYTES: usize = 255;

/// A user ID of a profile path: 400 `M_INVALID_PARAM` when it is not one.
fn parse_profile_user(user_id: &str) -> Result<OwnedUserId> {
    OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user id"))
}

/// A profile field name as Synapse checks it: not empty, at most 255 bytes, and of the
/// Common Namespaced Identifier Grammar (`[a-z][a-z0-9_.-]*`).
pub fn check_profile_field_name(field: &str) -> Result<()> {
    if field.is_empty() {
        return Err(Error::invalid_param("Field name too short"));
    }
    if field.len() > MAX_FIELD_NAME_BYTES {
        return Err(Error::new(
            ErrorKind::Module { status: 400, errcode: "M_KEY_TOO_LARGE".into() },
            "Field name too long",
        ));
    }
    let mut chars = field.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if !first_ok || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')) {
        return Err(Error::invalid_param("Field name does not follow Common Namespaced Identifier Grammar"));
    }
    Ok(())
}

/// Synapse's refusal of a suspended account's profile changes.
const SUSPENDED_PROFILE: &str = "Updating profile while account is suspended is not allowed.";

impl Homeserver {
    /// `(displayname, avatar_url)` of a local user; both `None` if unknown.
    pub(crate) async fn profile_of(&self, user_id: &str) -> Result<(Option<String>, Option<String>)> {
        let u = user_id.to_owned();
        Ok(self.db(move |s| s.get_profile(&u)).await?.unwrap_or_default())
    }

    /// `GET /profile/{userId}` for `requester` (none when the request carried no token):
    /// `require_auth_for_profile_requests` and `limit_profile_requests_to_users_who_share_rooms`
    /// as on Synapse.
    pub async fn profile_for(&self, requester: Option<&Requester>, user_id: &str) -> Result<Map<String, Value>> {
        let Some(me) = requester else {
            if self.config.require_auth_for_profile_requests {
                return Err(Error::new(ErrorKind::MissingToken, "Missing access token"));
            }
            return self.get_profile(user_id).await;
        };
        if self.config.limit_profile_requests_to_users_who_share_rooms && me.user_id.as_str() != user_id {
            let (m, u) = (me.user_id.to_string(), user_id.to_owned());
            let shared = self
                .db(move |s| {
                    let mine: std::collections::HashSet<String> = s.rooms_for_user(&m, "join")?.into_iter().collect();
                    Ok(s.rooms_for_user(&u, "join")?.into_iter().any(|r| mine.contains(&r)))
                })
                .await?;
            if !shared {
                return Err(Error::forbidden("Profile isn't available"));
            }
        }
        self.get_profile(user_id).await
    }

    /// A user's profile (local or remote), whoever asks.
    pub async fn get_profile(&self, user_id: &str) -> Result<Map<String, Value>> {
        if let Ok(user) = ruma::OwnedUserId::try_from(user_id)
            && !self.is_mine(&user)
        {
            return self.remote_profile(user_id).await;
        }
        let u = user_id.to_owned();
        let exists = self.db(move |s| s.get_user(&u)).await?.is_some_and(|u| !u.deactivated);
        if !exists {
            return Err(Error::not_found("Profile was not found"));
        }
        let (d, a) = self.profile_of(user_id).await?;
        let u = user_id.to_owned();
        // Custom fields first: the display name and avatar are never replaced by one.
        let mut out = self.db(move |s| s.get_custom_profile_fields(&u)).await?;
        if let Some(d) = d {
            out.insert("displayname".into(), json!(d));
        }
        if let Some(a) = a {
            out.insert("avatar_url".into(), json!(a));
        }
        Ok(out)
    }

    /// `PUT /profile/{userId}/{keyName}` with its body: the display name or avatar (a string,
    /// or `null` to unset), or any other field named by the Common Namespaced Identifier
    /// Grammar with any JSON value (extended profiles), as Synapse checks them.
    pub async fn put_profile_field(
        &self,
        requester: &Requester,
        user_id: &str,
        field: &str,
        body: &Map<String, Value>,
    ) -> Result<()> {
        let user = parse_profile_user(user_id)?;
        check_profile_field_name(field)?;
        requester.refuse_if_suspended(SUSPENDED_PROFILE)?;
        let Some(value) = body.get(field) else {
            return Err(Error::new(ErrorKind::MissingParam, format!("Missing key '{field}'")));
        };
        match (field, value) {
            ("displayname" | "avatar_url", Value::String(text)) => {
                self.set_profile_field(requester, user.as_str(), field, Some(text.clone())).await
            }
            ("displayname" | "avatar_url", Value::Null) => {
                self.set_profile_field(requester, user.as_str(), field, None).await
            }
            ("displayname" | "avatar_url", _) => Err(Error::invalid_param(format!("'{field}' must be a string"))),
            _ => self.set_custom_profile_field(requester, &user, field, Some(value)).await,
        }
    }

    /// `DELETE /profile/{userId}/{keyName}`: the display name or avatar unset, a custom field
    /// removed.
    pub async fn delete_profile_field(&self, requester: &Requester, user_id: &str, field: &str) -> Result<()> {
        let user = parse_profile_user(user_id)?;
        check_profile_field_name(field)?;
        requester.refuse_if_suspended(SUSPENDED_PROFILE)?;
        match field {
            "displayname" | "avatar_url" => self.set_profile_field(requester, user.as_str(), field, None).await,
            _ => self.set_custom_profile_field(requester, &user, field, None).await,
        }
    }

    /// After any profile change: the `on_profile_update` module callbacks (their one call site,
    /// Synapse's `deactivation: false`).
    async fn profile_updated(&self, user_id: &str, by_admin: bool) -> Result<()> {
        let (display_name, avatar_url) = self.profile_of(user_id).await?;
        let profile = myelin_module_api::third_party::ProfileInfo { display_name, avatar_url };
        self.modules.on_profile_update(user_id, profile, by_admin, false).await;
        Ok(())
    }

    /// Sets or removes a custom profile field: the user's own, or anyone's by an admin; a
    /// whole profile over [`MAX_PROFILE_BYTES`] is refused. Custom fields reach neither rooms
    /// nor the user directory (Synapse), but `on_profile_update` modules hear of the change.
    async fn set_custom_profile_field(
        &self,
        requester: &Requester,
        user: &UserId,
        field: &str,
        value: Option<&Value>,
    ) -> Result<()> {
        if !self.is_mine(user) {
            return Err(Error::new(ErrorKind::BadRequest, "User is not hosted on this homeserver"));
        }
        if requester.user_id != *user && !requester.is_admin {
            return Err(Error::forbidden("Cannot set another user's profile"));
        }
        let u = user.to_string();
        if self.db(move |s| s.get_user(&u)).await?.is_none() {
            return Err(Error::not_found("User not found"));
        }
        let (u, f, v) = (user.to_string(), field.to_owned(), value.cloned());
        let written = self.db(move |s| s.set_custom_profile_field(&u, &f, v.as_ref(), MAX_PROFILE_BYTES)).await?;
        if !written {
            return Err(Error::new(
                ErrorKind::Module { status: 400, errcode: "M_PROFILE_TOO_LARGE".into() },
                "Profile too large",
            ));
        }
        self.profile_updated(user.as_str(), requester.is_admin).await
    }

    /// `PUT /profile/{userId}/{field}`: updates the profile and, unless the user is
    /// shadow-banned, the member event of every joined room.
    pub async fn set_profile_field(
        &self,
        requester: &Requester,
        user_id: &str,
        field: &str,
        value: Option<String>,
    ) -> Result<()> {
        if user_id != requester.user_id.as_str() {
            return Err(Error::forbidden("You cannot set another user's profile"));
        }
        requester.refuse_if_suspended(SUSPENDED_PROFILE)?;
        let column = match field {
            "displayname" => ProfileField::DisplayName,
            "avatar_url" => ProfileField::AvatarUrl,
            _ => return Err(Error::new(ErrorKind::Unrecognized, "Unknown profile field")),
        };
        if value.as_ref().is_some_and(|v| v.len() > 256) {
            return Err(Error::bad_json(format!("{field} is too long (max 256)")));
        }
        let (u, v) = (user_id.to_owned(), value.clone());
        self.db(move |s| s.set_profile_field(&u, column, v.as_deref())).await?;
        self.profile_updated(user_id, requester.is_admin).await?;
        if requester.shadow_banned {
            return Ok(());
        }
        let u = user_id.to_owned();
        for room in self.db(move |s| s.rooms_for_user(&u, "join")).await? {
            let Ok(room_id) = ruma::OwnedRoomId::try_from(room) else { continue };
            let (displayname, avatar_url) = self.profile_of(user_id).await?;
            let mut content = Map::new();
            content.insert("membership".into(), json!("join"));
            if let Some(d) = displayname {
                content.insert("displayname".into(), json!(d));
            }
            if let Some(a) = avatar_url {
                content.insert("avatar_url".into(), json!(a));
            }
            let user = requester.user_id.clone();
            // As Synapse: a room that cannot take the update (its rules or a module refuse it)
            // is skipped; the profile is changed and the other rooms still get it.
            if let Err(e) = self
                .append_event(&room_id, &user, "m.room.member", Some(user.as_str()), content, Default::default())
                .await
            {
                tracing::warn!(room = %room_id, error = %e.message, "could not update the profile in a room");
            }
        }
        Ok(())
    }

    /// Looks a local user up for `ModuleApi.get_userinfo_by_id`.
    pub(crate) async fn user_info(&self, user_id: &str) -> Result<Option<myelin_module_api::UserInfo>> {
        let u = user_id.to_owned();
        // The appservice that owns the user exclusively (Synapse records it at registration).
        let appservice_id = self.appservice_owning(user_id).map(|r| r.id.clone());
        Ok(self.db(move |s| s.get_user(&u)).await?.map(|u| myelin_module_api::UserInfo {
            appservice_id,
            user_id: u.user_id,
            is_admin: u.is_admin,
            is_guest: u.is_guest,
            is_deactivated: u.deactivated,
            is_shadow_banned: u.shadow_banned,
            creation_ts: u.creation_ts / 1000,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_follow_the_namespaced_grammar() {
        for good in ["displayname", "m.tz", "org.example.pronouns", "a", "x_y-z.9"] {
            assert!(check_profile_field_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Upper", "9lives", "with space", "m.émoji", "a/b"] {
            assert!(check_profile_field_name(bad).is_err(), "{bad}");
        }
        assert!(check_profile_field_name(&"a".repeat(255)).is_ok());
        let long = check_profile_field_name(&"a".repeat(256)).unwrap_err();
        assert_eq!(long.message, "Field name too long");
    }
}
