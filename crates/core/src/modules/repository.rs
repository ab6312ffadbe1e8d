//! Account data and media repository callbacks, with Synapse's semantics
//! (`handlers/account_data.py`, `media_repository_callbacks.py`).

use myelin_module_api::federation::FederationCallbacks;
use myelin_module_api::repository::*;
use serde_json::{Map, Value};

use super::{ModuleRegistry, dispatch_lists, invoke, invoke_logged};
use crate::Result;

myelin_module_api::account_data_callbacks!(dispatch_lists, AccountDataLists, AccountDataCallbacks);
myelin_module_api::media_repository_callbacks!(dispatch_lists, MediaLists, MediaRepositoryCallbacks);
myelin_module_api::ratelimit_callbacks!(dispatch_lists, RatelimitLists, RatelimitCallbacks);
myelin_module_api::federation_callbacks!(dispatch_lists, FederationLists, FederationCallbacks);

impl ModuleRegistry {
    /// Whether a module wants to hear of events delivered over federation (so that the
    /// caller can skip building the delivery).
    pub fn has_on_event_delivered_over_federation(&self) -> bool {
        !self.callbacks().federation.on_event_delivered_over_federation.is_empty()
    }

    /// `on_event_delivered_over_federation`: every callback runs, awaited; errors are logged
    /// (Synapse's). Nothing is called for no events.
    pub async fn on_event_delivered_over_federation(
        &self,
        server_name: &str,
        events: &[Value],
        method: myelin_module_api::federation::DeliveryMethod,
    ) {
        if events.is_empty() || !self.has_on_event_delivered_over_federation() {
            return;
        }
        let delivery = myelin_module_api::federation::FederationDelivery {
            server_name: server_name.to_owned(),
            events: events
                .iter()
                .filter_map(|e| e.as_object().cloned().map(myelin_module_api::EventView::new))
                .collect(),
            method,
        };
        for reg in &self.callbacks().federation.on_event_delivered_over_federation {
            invoke_logged(reg, (delivery.clone(),)).await;
        }
    }

    /// `on_account_data_updated`: every callback runs, awaited; errors are logged.
    pub async fn on_account_data_updated(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        kind: &str,
        content: &Map<String, Value>,
    ) {
        for reg in &self.callbacks().account_data.on_account_data_updated {
            let args = (user_id.to_owned(), room_id.map(str::to_owned), kind.to_owned(), content.clone());
            invoke_logged(reg, args).await;
        }
    }

    /// Whether any module has a ratelimit callback (checked on every limited action).
    pub fn has_ratelimit_callbacks(&self) -> bool {
        !self.callbacks().ratelimit.get_ratelimit_override_for_user.is_empty()
    }

    /// `get_ratelimit_override_for_user`: the first `Some`.
    pub async fn ratelimit_override_for_user(&self, user_id: &str, limiter: &str) -> Result<Option<RatelimitOverride>> {
        for reg in &self.callbacks().ratelimit.get_ratelimit_override_for_user {
            if let Some(found) = invoke(reg, (user_id.to_owned(), limiter.to_owned())).await? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// `get_media_config_for_user`: the first non-empty answer.
    pub async fn media_config_for_user(&self, user_id: &str) -> Result<Option<Map<String, Value>>> {
        for reg in &self.callbacks().media.get_media_config_for_user {
            if let Some(config) = invoke(reg, (user_id.to_owned(),)).await?.filter(|c| !c.is_empty()) {
                return Ok(Some(config));
            }
        }
        Ok(None)
    }

    /// `get_media_upload_limits_for_user`: the first `Some` (errors are 500s, as on Synapse).
    pub async fn media_upload_limits_for_user(&self, user_id: &str) -> Result<Option<Vec<MediaUploadLimit>>> {
        for reg in &self.callbacks().media.get_media_upload_limits_for_user {
            if let Some(mut limits) = invoke(reg, (user_id.to_owned(),)).await? {
                limits.sort_by_key(|l| std::cmp::Reverse(l.time_period_ms));
                return Ok(Some(limits));
            }
        }
        Ok(None)
    }

    /// `on_media_upload_limit_exceeded`: every callback, each with its own copy of the limit;
    /// an error fails the upload (Synapse does not catch it).
    pub async fn on_media_upload_limit_exceeded(
        &self,
        user_id: &str,
        limit: &MediaUploadLimit,
        sent: u64,
        attempted: u64,
    ) -> Result<()> {
        for reg in &self.callbacks().media.on_media_upload_limit_exceeded {
            invoke(reg, (user_id.to_owned(), limit.clone(), sent, attempted)).await?;
        }
        Ok(())
    }

    /// `is_user_allowed_to_upload_media_of_size`: `false` as soon as one callback says so.
    pub async fn may_upload_media_of_size(&self, user_id: &str, size: u64) -> Result<bool> {
        for reg in &self.callbacks().media.is_user_allowed_to_upload_media_of_size {
            if !invoke(reg, (user_id.to_owned(), size)).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
