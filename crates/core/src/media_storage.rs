//! Media storage providers (Synapse's `media_storage_providers`, and `backup_media_store_path`):
//! every file the media store keeps is also handed to each provider that wants it, and a file
//! missing from the media store is asked of the providers in config order and put back.
//!
//! Providers see paths relative to `media_store_path` (`local_content/ab/cd/rest`), as Synapse's
//! do. The `file_system` provider is native; any other `module:` name is loaded by the foreign
//! runtime (Python: Synapse's `StorageProvider` interface, so synapse-s3-storage-provider runs
//! unchanged).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::server::random_string;
use crate::{Error, Homeserver, Result};

/// What a provider is told about a file (Synapse's `FileInfo`).
#[derive(Debug, Clone, PartialEq)]
pub struct FileInfo {
    /// The server the file came from; `None` for this server's uploads.
    pub server_name: Option<String>,
    /// The media ID.
    pub file_id: String,
    /// Set for a thumbnail of the file.
    pub thumbnail: Option<ThumbnailInfo>,
}

/// A thumbnail's description (Synapse's `ThumbnailInfo`).
#[derive(Debug, Clone, PartialEq)]
pub struct ThumbnailInfo {
    /// Its width in pixels.
    pub width: u32,
    /// Its height in pixels.
    pub height: u32,
    /// `crop` or `scale`.
    pub method: String,
    /// The thumbnail's content type.
    pub content_type: String,
    /// Its size in bytes.
    pub length: u64,
}

impl FileInfo {
    /// As Synapse's `FileInfo` attributes, for foreign runtimes.
    pub fn to_json(&self) -> Value {
        json!({
            "server_name": self.server_name,
            "file_id": self.file_id,
            "url_cache": false,
            "thumbnail": self.thumbnail.as_ref().map(|t| json!({
                "width": t.width, "height": t.height, "method": t.method, "type": t.content_type, "length": t.length,
            })),
        })
    }
}

/// A storage backend (Synapse's `StorageProvider`). Errors are messages for the log.
pub trait StorageBackend: Send + Sync {
    /// Keeps a copy of the file now at `media_store/path`.
    fn store_file(&self, path: String, info: FileInfo) -> BoxFuture<'static, std::result::Result<(), String>>;
    /// Writes this provider's copy of `path` to `dest` (a new file); `false` if it has none.
    fn fetch(
        &self,
        path: String,
        info: FileInfo,
        dest: PathBuf,
    ) -> BoxFuture<'static, std::result::Result<bool, String>>;
}

/// Synapse's per-provider switches (`store_local`, `store_remote`, `store_synchronous`; all
/// default to false).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProviderSettings {
    /// New local uploads (and their thumbnails) are stored.
    pub store_local: bool,
    /// Files fetched from other servers are stored.
    pub store_remote: bool,
    /// The request waits for the copy (a failure fails it); otherwise copies are made in the
    /// background and failures only logged.
    pub store_synchronous: bool,
}

/// A configured provider.
pub(crate) struct StorageProvider {
    pub(crate) name: String,
    pub(crate) settings: ProviderSettings,
    pub(crate) backend: Arc<dyn StorageBackend>,
}

/// Synapse's built-in provider: copies in another directory (`module: file_system`, or
/// `backup_media_store_path`).
pub(crate) struct FileSystemBackend {
    pub(crate) media_store: PathBuf,
    pub(crate) directory: PathBuf,
}

impl StorageBackend for FileSystemBackend {
    fn store_file(&self, path: String, _info: FileInfo) -> BoxFuture<'static, std::result::Result<(), String>> {
        let (from, to) = (self.media_store.join(&path), self.directory.join(&path));
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                if let Some(dir) = to.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::copy(&from, &to).map(|_| ())
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("copying {path}: {e}"))
        })
    }

    fn fetch(
        &self,
        path: String,
        _info: FileInfo,
        dest: PathBuf,
    ) -> BoxFuture<'static, std::result::Result<bool, String>> {
        let from = self.directory.join(&path);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                if !from.is_file() {
                    return Ok(false);
                }
                std::fs::copy(&from, &dest).map(|_| true)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("copying {path} back: {e}"))
        })
    }
}

/// The native provider's names: Synapse's alias and its class paths.
pub(crate) fn is_file_system(module: &str) -> bool {
    matches!(
        module,
        "file_system"
            | "synapse.rest.media.v1.storage_provider"
            | "synapse.rest.media.v1.storage_provider.FileStorageProviderBackend"
            | "synapse.media.storage_provider.FileStorageProviderBackend"
    )
}

impl Homeserver {
    /// Where `path` (under the media store) is, as providers name it.
    fn provider_path(&self, path: &Path) -> Option<String> {
        path.strip_prefix(&self.config.media_store_path).ok().map(|p| p.to_string_lossy().into_owned())
    }

    /// Hands a file just kept at `path` to each provider that wants it: synchronous ones are
    /// awaited (a failure fails the caller), the others run in the background.
    pub(crate) async fn store_in_providers(&self, path: &Path, info: FileInfo) -> Result<()> {
        let providers = &self.modules.callbacks().storage_providers;
        if providers.is_empty() {
            return Ok(());
        }
        let Some(relative) = self.provider_path(path) else { return Ok(()) };
        for provider in providers.iter() {
            let wanted =
                if info.server_name.is_some() { provider.settings.store_remote } else { provider.settings.store_local };
            if !wanted {
                continue;
            }
            let store = provider.backend.store_file(relative.clone(), info.clone());
            let name = provider.name.clone();
            if provider.settings.store_synchronous {
                store.await.map_err(|e| {
                    tracing::error!(provider = %name, path = %relative, "storage provider failed to store a file: {e}");
                    Error::internal(format!("Storage provider {name} failed to store the file"))
                })?;
            } else {
                let relative = relative.clone();
                tokio::spawn(async move {
                    if let Err(e) = store.await {
                        tracing::error!(provider = %name, path = %relative, "Error storing file: {e}");
                    }
                });
            }
        }
        Ok(())
    }

    /// Puts a file missing from the media store back at `path` from the first provider that has
    /// it; `false` if none has. A provider that fails is logged and the next one asked.
    pub(crate) async fn fetch_from_providers(&self, path: &Path, info: FileInfo) -> Result<bool> {
        let providers = &self.modules.callbacks().storage_providers;
        if providers.is_empty() {
            return Ok(false);
        }
        let Some(relative) = self.provider_path(path) else { return Ok(false) };
        let tmp_dir = self.config.media_store_path.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir).await.map_err(Error::from_io)?;
        for provider in providers.iter() {
            let tmp = tmp_dir.join(random_string(16));
            match provider.backend.fetch(relative.clone(), info.clone(), tmp.clone()).await {
                Ok(true) => {
                    let root = self.config.media_store_path.clone();
                    let (from, to) = (tmp.clone(), path.to_path_buf());
                    let moved = tokio::task::spawn_blocking(move || crate::durable::rename_into(&from, &to, &root))
                        .await
                        .map_err(Error::internal)
                        .and_then(|r| r.map_err(Error::from_io));
                    if moved.is_err() {
                        let _ = tokio::fs::remove_file(&tmp).await;
                    }
                    moved?;
                    tracing::info!(provider = %provider.name, path = %relative, "media file fetched from a storage provider");
                    return Ok(true);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(provider = %provider.name, path = %relative, "storage provider failed to fetch a file: {e}")
                }
            }
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        Ok(false)
    }
}
