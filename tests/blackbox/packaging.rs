//! The installable layout (`scripts/package.sh`, which the container image is built from): the
//! entry point generates a config on first start and serves with it; the systemd unit names
//! the installed binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::BIN;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn entrypoint(root: &Path, data: &Path) -> Command {
    let mut cmd = Command::new(root.join("usr/local/bin/myelin-docker-entrypoint"));
    let path = format!("{}:{}", root.join("usr/local/bin").display(), std::env::var("PATH").unwrap_or_default());
    cmd.env("PATH", path)
        .env("MYELIN_DATA", data)
        .env("MYELIN_SERVER_NAME", "packaged.test")
        .env("MYELIN_BIND_ADDRESS", "127.0.0.1")
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYTHONPATH");
    cmd
}

#[tokio::test]
async fn the_packaged_layout_generates_its_config_and_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, data) = (tmp.path().join("root"), tmp.path().join("data"));
    let out = Command::new("sh")
        .arg(repo().join("scripts/package.sh"))
        .arg(&root)
        .env("MYELIN_BINARY", BIN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in
        ["usr/local/bin/myelin", "usr/local/bin/myelin-docker-entrypoint", "usr/lib/systemd/system/myelin.service"]
    {
        assert!(root.join(file).is_file(), "{file} missing");
    }
    // The unit starts the binary where the layout puts it.
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/myelin.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    let program = exec.split_whitespace().next().unwrap();
    assert!(root.join(program.trim_start_matches('/')).is_file(), "{program}");
    assert!(unit.contains("User=myelin") && unit.contains("KillSignal=SIGTERM"), "{unit}");

    // `generate`: the config and signing key, for the server name given, and only once.
    std::fs::create_dir_all(&data).unwrap();
    let out = entrypoint(&root, &data).arg("generate").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = std::fs::read_to_string(data.join("homeserver.yaml")).unwrap();
    assert!(config.contains("server_name: \"packaged.test\"") && config.contains("[\"127.0.0.1\"]"), "{config}");
    assert!(data.join("data/packaged.test.signing.key").is_file());
    std::fs::write(data.join("homeserver.yaml"), config.replace("port: 8008", "port: 0")).unwrap();
    let out = entrypoint(&root, &data).arg("generate").output().unwrap();
    assert!(out.status.success());
    assert!(std::fs::read_to_string(data.join("homeserver.yaml")).unwrap().contains("port: 0"), "not overwritten");

    // Serving (the default): it answers, and SIGTERM stops it cleanly.
    let mut child = entrypoint(&root, &data).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("myelin: listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let base = rx.recv_timeout(Duration::from_secs(30)).expect("the packaged server did not start");
    let health = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let versions: serde_json::Value =
        reqwest::get(format!("{base}/_matrix/client/versions")).await.unwrap().json().await.unwrap();
    assert!(versions["versions"].as_array().is_some_and(|v| !v.is_empty()));
    // The entry point exec'd the server, so the child is the server itself.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
