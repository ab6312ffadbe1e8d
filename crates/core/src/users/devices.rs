//! Devices: listing, renaming, deleting, and announcing device-list changes.

use super::*;

impl Homeserver {
    /// `ModuleApi.get_user_ip_and_agents`: `(ip, user_agent, last_seen)` of each of a local
    /// user's devices seen since `since_ts` (ms); nothing for other users.
    pub(crate) async fn module_user_ips(
        &self,
        user_id: &str,
        since_ts: i64,
    ) -> Result<Vec<myelin_module_api::UserIpAndAgent>> {
        let Ok(user) = OwnedUserId::try_from(user_id) else { return Ok(Vec::new()) };
        if !self.is_mine(&user) {
            return Ok(Vec::new());
        }
        let u = user_id.to_owned();
        let devices = self.db(move |s| s.get_devices(&u)).await?;
        Ok(devices
            .into_iter()
            .filter_map(|d| {
                Some(myelin_module_api::UserIpAndAgent {
                    ip: d.last_seen_ip?,
                    user_agent: d.last_seen_user_agent.unwrap_or_default(),
                    last_seen: d.last_seen_ts?,
                })
            })
            .filter(|seen| seen.last_seen >= since_ts)
            .collect())
    }

    /// `GET /devices`.
    pub async fn devices(&self, requester: &Requester) -> Result<Vec<Value>> {
        let u = requester.user_id.to_string();
        let rows = self.db(move |s| s.get_devices(&u)).await?;
        Ok(rows
            .into_iter()
            .map(|d| {
                // Unknown fields are `null`, as Synapse sends them (some clients, e.g.
                // matrix-nio, require the keys).
                json!({
                    "user_id": requester.user_id.as_str(),
                    "device_id": d.device_id,
                    "display_name": d.display_name,
                    "last_seen_ts": d.last_seen_ts,
                    "last_seen_ip": d.last_seen_ip,
                })
            })
            .collect())
    }

    /// `PUT /devices/{id}`.
    pub async fn rename_device(&self, requester: &Requester, device_id: &str, name: Option<String>) -> Result<()> {
        let (u, d) = (requester.user_id.to_string(), device_id.to_owned());
        if self.db(move |s| s.rename_device(&u, &d, name.as_deref())).await? {
            self.device_list_changed(requester.user_id.as_str(), device_id).await;
            Ok(())
        } else {
            Err(Error::not_found("Unknown device"))
        }
    }

    /// `DELETE /devices/{id}` (UIA with the password).
    pub async fn delete_device(&self, requester: &Requester, device_id: &str, auth: Option<&Value>) -> Result<()> {
        let (u, d) = (requester.user_id.to_string(), device_id.to_owned());
        let exists = self.db(move |s| Ok(s.get_devices(&u)?.iter().any(|x| x.device_id == d))).await?;
        if !exists {
            return Err(Error::not_found("Unknown device"));
        }
        self.uia_password(requester, auth, &format!("DELETE /devices/{device_id}")).await?;
        let (u, d) = (requester.user_id.to_string(), device_id.to_owned());
        self.db(move |s| s.delete_device(&u, &d).map(|_| ())).await?;
        self.device_list_changed(requester.user_id.as_str(), device_id).await;
        Ok(())
    }

    /// A device was added, renamed or deleted: the user's device list changed, for the user's
    /// other devices and everyone sharing a room with them (`device_lists.changed`), and for
    /// the servers sharing a room (`m.device_list_update`). Best effort: the change itself has
    /// happened, and a client learns of it at the latest when it next queries the keys.
    pub(crate) async fn device_list_changed(&self, user: &str, device: &str) {
        let u = user.to_owned();
        match self.db(move |s| s.note_device_list_change(&u)).await {
            Ok(pos) => {
                self.advance_stream(pos);
                self.announce_device_change(user, device, pos).await;
            }
            Err(e) => tracing::warn!(%user, error = %e, "a device list change was not recorded"),
        }
    }

    /// `POST /delete_devices` (UIA with the password); unknown IDs are ignored.
    pub async fn delete_devices(
        &self,
        requester: &Requester,
        devices: Vec<String>,
        auth: Option<&Value>,
    ) -> Result<()> {
        self.uia_password(requester, auth, "POST /delete_devices").await?;
        self.remove_devices(&requester.user_id, devices).await
    }

    /// Deletes devices of `user` (their tokens with them), announcing the change; unknown IDs
    /// are ignored.
    pub(crate) async fn remove_devices(&self, user: &UserId, devices: Vec<String>) -> Result<()> {
        let u = user.to_string();
        let deleted = self
            .db(move |s| {
                let mut deleted = Vec::new();
                for d in devices {
                    if s.delete_device(&u, &d)? {
                        deleted.push(d);
                    }
                }
                Ok(deleted)
            })
            .await?;
        self.remove_pushers_of_sessions(user.as_str(), Some(deleted.clone()), None).await?;
        for device in deleted {
            self.device_list_changed(user.as_str(), &device).await;
        }
        Ok(())
    }
}
