//! Media storage providers (`media_storage_providers`, `backup_media_store_path`): the native
//! `file_system` provider, and synapse-s3-storage-provider 1.7.0 (from PyPI, unchanged) against
//! a local S3 (moto in server mode, in its own venv made by the test command).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::harness::*;
use crate::media::{png, upload};

/// Where a local upload lives under a media store (Synapse's layout).
fn local_content(root: &Path, mxc: &str) -> PathBuf {
    let id = mxc.rsplit('/').next().unwrap();
    root.join("local_content").join(&id[..2]).join(&id[2..4]).join(&id[4..])
}

async fn download(s: &Server, u: &User, mxc: &str) -> (u16, Vec<u8>) {
    let path = mxc.strip_prefix("mxc://").unwrap();
    let resp = reqwest::Client::new()
        .get(s.url(&format!("/_matrix/client/v1/media/download/{path}")))
        .bearer_auth(&u.token)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
}

/// `backup_media_store_path` (Synapse's shorthand for the `file_system` provider): uploads are
/// copied there before the upload is answered, and a file gone from the media store is put back
/// from the copy. A file neither has is 404, not an error.
#[tokio::test]
async fn file_system_provider_keeps_copies_and_restores_from_them() {
    let s = Server::start_with("backup_media_store_path: data/backup\nsynchronous_backup_media_store: true\n").await;
    let u = s.register("alice").await;
    let (st, b) = upload(&s, &u, b"kept twice".to_vec(), "text/plain", None).await;
    assert_eq!(st, 200, "{b}");
    let mxc = b["content_uri"].as_str().unwrap().to_owned();
    let store = s.dir.path().join("data/media");
    let backup = s.dir.path().join("data/backup");
    assert_eq!(std::fs::read(local_content(&backup, &mxc)).unwrap(), b"kept twice");

    std::fs::remove_file(local_content(&store, &mxc)).unwrap();
    assert_eq!(download(&s, &u, &mxc).await, (200, b"kept twice".to_vec()));
    assert_eq!(std::fs::read(local_content(&store, &mxc)).unwrap(), b"kept twice", "put back in the media store");

    // Thumbnails are copied too.
    let (_, b) = upload(&s, &u, png(64, 48), "image/png", None).await;
    let picture = b["content_uri"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned();
    let thumb = format!("/_matrix/client/v1/media/thumbnail/{picture}?width=32&height=32&method=crop");
    let resp = reqwest::Client::new().get(s.url(&thumb)).bearer_auth(&u.token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(files_under(&backup.join("local_thumbnails")).len() == 1, "{:?}", files_under(&backup));

    // Gone from both: 404 M_NOT_FOUND.
    std::fs::remove_file(local_content(&store, &mxc)).unwrap();
    std::fs::remove_file(local_content(&backup, &mxc)).unwrap();
    let path = mxc.strip_prefix("mxc://").unwrap();
    let (st, b) = s.get(&format!("/_matrix/client/v1/media/download/{path}"), Some(&u.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{b}");
}

/// The provider config's mistakes stop start-up with Synapse's paths, and nothing is written.
#[test]
fn storage_provider_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, expected) in [
        ("media_storage_providers: {}\n", "Error in configuration at 'media_storage_providers':\n  expected a list"),
        (
            "media_storage_providers:\n  - store_local: true\n",
            "Error in configuration at 'media_storage_providers.<item 0>.module':\n  expected a string",
        ),
        (
            "media_storage_providers:\n  - module: file_system\n    store_local: often\n    config: {directory: b}\n",
            "Error in configuration at 'media_storage_providers.<item 0>.store_local':\n  expected a boolean",
        ),
        (
            "media_storage_providers:\n  - module: file_system\n",
            "Error in configuration at 'media_storage_providers.<item 0>.config':\n  Failed to parse config for module 'file_system':",
        ),
        (
            "backup_media_store_path: b\nmedia_storage_providers:\n  - module: file_system\n    config: {directory: c}\n",
            "Error in configuration:\n  Cannot use both 'backup_media_store_path' and 'storage_providers'",
        ),
        // synapse-s3-storage-provider's own parse_config: no bucket is a KeyError.
        (
            "media_storage_providers:\n  - module: s3_storage_provider.S3StorageProviderBackend\n    config: {prefix: x}\n",
            "Error in configuration at 'media_storage_providers.<item 0>.config':\n  Failed to parse config for module 's3_storage_provider.S3StorageProviderBackend':\n    'bucket'",
        ),
    ] {
        let path = dir.path().join("homeserver.yaml");
        std::fs::write(&path, base_config(extra)).unwrap();
        let (code, _, stderr) = run_cli(dir.path(), &["-c", path.to_str().unwrap(), "check-config"]);
        assert_eq!(code, 1, "{extra}: {stderr}");
        assert!(stderr.contains(expected), "{extra}: {stderr}");
    }
}

/// moto's S3 on a free loopback port; killed on drop.
struct LocalS3 {
    child: Child,
    url: String,
}

impl LocalS3 {
    async fn start(buckets: &[&str]) -> LocalS3 {
        let moto = Path::new(env!("CARGO_MANIFEST_DIR")).join("s3/.venv/bin/moto_server");
        let port = crate::federating::free_port();
        let child = Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (made by scripts/test.sh in tests/s3/.venv)");
        let s3 = LocalS3 { child, url: format!("http://127.0.0.1:{port}") };
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if client.get(&s3.url).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        for bucket in buckets {
            let made = client.put(format!("{}/{bucket}", s3.url)).send().await.unwrap();
            assert_eq!(made.status(), 200, "{:?}", made.text().await);
        }
        s3
    }

    /// Deletes an object, as S3's clients do (signed; moto refuses anonymous deletes).
    fn delete(&self, bucket: &str, key: &str) {
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/.venv/bin/python");
        let code = format!(
            "import boto3\nboto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='test', \
             aws_secret_access_key='test').delete_object(Bucket='{bucket}', Key='{key}')",
            self.url
        );
        let out = Command::new(python).args(["-c", &code]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    async fn keys(&self, bucket: &str) -> String {
        reqwest::get(format!("{}/{bucket}?list-type=2", self.url)).await.unwrap().text().await.unwrap()
    }

    fn provider(&self, bucket: &str, switches: &str) -> String {
        format!(
            "  - module: s3_storage_provider.S3StorageProviderBackend\n{switches}    config:\n      bucket: {bucket}\n      \
             prefix: myelin/\n      endpoint_url: {}\n      region_name: us-east-1\n      access_key_id: test\n      \
             secret_access_key: test\n",
            self.url
        )
    }
}

impl Drop for LocalS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// synapse-s3-storage-provider as its README configures it: uploads land in the bucket under
/// the prefix before the upload is answered (`store_synchronous`), a provider with
/// `store_local: false` gets none, a file gone from the media store is streamed back from S3,
/// and one S3 does not have either is 404.
#[tokio::test]
async fn s3_storage_provider_stores_uploads_and_fetches_them_back() {
    let s3 = LocalS3::start(&["media", "remote-only"]).await;
    let s = Server::start_with(&format!(
        "media_storage_providers:\n{}{}",
        s3.provider("media", "    store_local: true\n    store_synchronous: true\n"),
        s3.provider("remote-only", "    store_remote: true\n"),
    ))
    .await;
    let u = s.register("alice").await;
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (st, b) = upload(&s, &u, content.clone(), "application/octet-stream", None).await;
    assert_eq!(st, 200, "{b}");
    let mxc = b["content_uri"].as_str().unwrap().to_owned();
    let store = s.dir.path().join("data/media");
    let key = format!("myelin/{}", local_content(Path::new(""), &mxc).display());
    let listed = s3.keys("media").await;
    assert!(listed.contains(&format!("<Key>{key}</Key>")) && listed.contains("<Size>100000</Size>"), "{listed}");
    assert!(!s3.keys("remote-only").await.contains("<Key>"), "store_local: false stores nothing local");

    // The media store loses the file: S3 gives it back, and it is kept again.
    std::fs::remove_file(local_content(&store, &mxc)).unwrap();
    let (st, got) = download(&s, &u, &mxc).await;
    assert!(st == 200 && got == content, "{st}: {} bytes; log: {}", got.len(), s.log_text());
    assert!(std::fs::read(local_content(&store, &mxc)).unwrap() == content, "put back in the media store");

    // Neither has it: 404, and the server carries on.
    let (_, b) = upload(&s, &u, b"short-lived".to_vec(), "text/plain", None).await;
    let gone = b["content_uri"].as_str().unwrap().to_owned();
    std::fs::remove_file(local_content(&store, &gone)).unwrap();
    let gone_key = format!("myelin/{}", local_content(Path::new(""), &gone).display());
    s3.delete("media", &gone_key);
    assert!(!s3.keys("media").await.contains(&gone_key));
    let (st, _) = download(&s, &u, &gone).await;
    assert_eq!(st, 404);
    assert_eq!(download(&s, &u, &mxc).await.0, 200);
}

/// A provider that cannot store: synchronous, the upload fails and nothing of it is kept;
/// in the background, the upload succeeds and the failure is logged (Synapse's "Error storing
/// file").
#[tokio::test]
async fn s3_storage_provider_failures() {
    let s3 = LocalS3::start(&[]).await;
    let s = Server::start_with(&format!(
        "media_storage_providers:\n{}",
        s3.provider("no-such-bucket", "    store_local: true\n    store_synchronous: true\n")
    ))
    .await;
    let u = s.register("alice").await;
    let (st, b) = upload(&s, &u, b"nowhere to go".to_vec(), "text/plain", None).await;
    assert_eq!((st, b["errcode"].as_str()), (500, Some("M_UNKNOWN")), "{b}");
    assert!(files_under(&s.dir.path().join("data/media/local_content")).is_empty(), "nothing kept");
    assert_eq!(s.get("/_matrix/client/versions", None).await.0, 200);

    let s = Server::start_with(&format!(
        "media_storage_providers:\n{}",
        s3.provider("no-such-bucket", "    store_local: true\n")
    ))
    .await;
    let u = s.register("alice").await;
    let (st, b) = upload(&s, &u, b"kept here only".to_vec(), "text/plain", None).await;
    assert_eq!(st, 200, "{b}");
    let mxc = b["content_uri"].as_str().unwrap().to_owned();
    assert_eq!(download(&s, &u, &mxc).await, (200, b"kept here only".to_vec()));
    assert!(s.log_shows("Error storing file").await, "{}", s.log_text());
}
