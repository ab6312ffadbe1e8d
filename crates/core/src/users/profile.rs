//! Profiles: display names and avatars, who may read them.

use super::*;

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
        let mut out = Map::new();
        if let Some(d) = d {
            out.insert("displayname".into(), json!(d));
        }
        if let Some(a) = a {
            out.insert("avatar_url".into(), json!(a));
        }
        Ok(out)
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
        let (display_name, avatar_url) = self.profile_of(user_id).await?;
        let profile = myelin_module_api::third_party::ProfileInfo { display_name, avatar_url };
        self.modules.on_profile_update(user_id, profile, requester.is_admin, false).await;
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
