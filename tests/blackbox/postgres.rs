//! `database: name: psycopg2`: Synapse's checks of the database, and what a bad setting gets.
//! (The whole black-box suite also runs on PostgreSQL: scripts/test.sh's second pass.)

use std::process::Command;

use crate::harness::*;

/// Creates a database on the test cluster with the given `createdb` options; returns the
/// `database:` section naming it, with `extra_db_keys` under `database:` itself.
fn database(name: &str, createdb_options: &[&str], extra_db_keys: &str) -> String {
    let pg = TestPostgres::get();
    let dbname = pg.create_database(name, createdb_options);
    // psycopg2's `database` key, and the port as a string, as Synapse configs often have them.
    format!(
        "database:\n  name: psycopg2\n{extra_db_keys}  args:\n    host: {}\n    port: '{}'\n    user: {}\n    \
         database: {dbname}\n    cp_min: 1\n    cp_max: 2\n",
        pg.host, pg.port, pg.user
    )
}

/// Runs `check-config`-free start-up: `serve` until it fails or listens; returns (exit code or
/// None if it is serving, stderr).
fn start_and_report(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("homeserver.yaml"), base_config(yaml)).unwrap();
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(dir.path().join("homeserver.yaml"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return (status.code(), stderr);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, String::new());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[tokio::test]
async fn a_database_without_c_collation_is_refused_unless_allowed() {
    let locale = ["-E", "UTF8", "--lc-collate=C.UTF-8", "--lc-ctype=C.UTF-8"];
    let (code, stderr) = start_and_report(&database("locale", &locale, ""));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("Database has incorrect collation of 'C.UTF-8'. Should be 'C'"), "{stderr}");
    assert!(stderr.contains("allow_unsafe_locale"), "{stderr}");

    // Synapse's override, under `database:`.
    let server = Server::start_with(&database("unsafe", &locale, "  allow_unsafe_locale: true\n")).await;
    let alice = server.register("alice").await;
    assert_eq!(server.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await.0, 200);
}

#[tokio::test]
async fn a_database_that_is_not_utf8_is_refused() {
    let (code, stderr) =
        start_and_report(&database("ascii", &["-E", "SQL_ASCII", "--lc-collate=C", "--lc-ctype=C"], ""));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("Database has incorrect encoding: 'SQL_ASCII' instead of 'UTF8'"), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_or_missing_database_fails_start_up_with_the_reason() {
    let (code, stderr) = start_and_report(
        "database: {name: psycopg2, args: {host: 127.0.0.1, port: 1, user: postgres, dbname: x, connect_timeout: 2}}\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("Could not open the database"), "{stderr}");
    let port = TestPostgres::get().port;
    let (code, stderr) = start_and_report(&format!(
        "database: {{name: psycopg2, args: {{host: 127.0.0.1, port: {port}, user: postgres, dbname: no_such_db}}}}\n"
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no_such_db"), "the server's reason is shown: {stderr}");
}

#[tokio::test]
async fn data_survives_a_restart_on_postgresql() {
    let server = Server::start_with(&database("restart", &["-E", "UTF8", "--lc-collate=C", "--lc-ctype=C"], "")).await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, serde_json::json!({"name": "kept"})).await;
    let (status, sent) = server.send_text(&alice, &room, "still here after a restart").await;
    assert_eq!(status, 200);
    let server = Server::start_in(server.stop()).await;
    let (status, event) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{}", sent["event_id"].as_str().unwrap()),
            Some(&alice.token),
        )
        .await;
    assert_eq!((status, event["content"]["body"].as_str()), (200, Some("still here after a restart")));
}

/// A PostgreSQL cluster of its own that takes TCP connections over TLS only
/// (`scripts/test-postgres.sh` with `MYELIN_TEST_PG_TLS`), stopped and deleted on drop.
struct TlsCluster {
    dir: std::path::PathBuf,
    port: String,
}

impl TlsCluster {
    fn start(certs: &std::path::Path) -> TlsCluster {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        // Outside a private temp dir: the server runs as the `postgres` user when we are root.
        let dir = std::env::temp_dir().join(format!("myelin-tls-pg-{}-{nanos}", std::process::id()));
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-postgres.sh");
        let out = Command::new(&script)
            .env("MYELIN_TEST_PG_DIR", &dir)
            .env("MYELIN_TEST_PG_TLS", certs)
            .output()
            .expect("run scripts/test-postgres.sh");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let settings = String::from_utf8(out.stdout).unwrap();
        let port = settings.split_whitespace().find_map(|kv| kv.strip_prefix("port=")).unwrap().to_owned();
        TlsCluster { dir, port }
    }

    /// Runs SQL as the superuser through the cluster's Unix socket (which needs no TLS).
    fn psql(&self, sql: &str) {
        let out = Command::new("psql")
            .args(["-h", self.dir.to_str().unwrap(), "-p", &self.port, "-U", "postgres", "-v", "ON_ERROR_STOP=1"])
            .args(["-c", sql])
            .output()
            .expect("run psql");
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-postgres.sh");
        let _ = Command::new(&script).arg("stop").env("MYELIN_TEST_PG_DIR", &self.dir).output();
        let _ = std::fs::remove_file(self.dir.with_extension("lock"));
    }
}

/// Certificates for the TLS cluster: a CA, the server's (for `localhost` only), a client
/// certificate for the role `certuser`, and an unrelated CA.
fn tls_certificates(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_named = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert, key)
    };
    let (ca, ca_key) = ca_named("Myelin PostgreSQL test CA");
    let (stranger, _) = ca_named("Someone else's CA");
    let leaf = |names: Vec<String>, common_name: &str, file: &str| {
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{file}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    };
    leaf(vec!["localhost".into()], "localhost", "server");
    leaf(vec![], "certuser", "client");
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(dir.join("stranger.crt"), stranger.pem()).unwrap();
}

/// libpq's `sslmode`s against a cluster that refuses unencrypted connections: each mode
/// connects or is refused as psycopg2 would be, the server's certificate is checked as far as
/// the mode says, and a client certificate logs in a role with `cert` authentication.
#[tokio::test]
async fn tls_to_postgresql_follows_libpqs_sslmodes() {
    let certs = tempfile::tempdir().unwrap();
    tls_certificates(certs.path());
    let cluster = TlsCluster::start(certs.path());
    cluster.psql("CREATE ROLE certuser LOGIN");
    cluster.psql("CREATE DATABASE myelin");
    cluster.psql("CREATE DATABASE mine OWNER certuser");
    let cert = |name: &str| certs.path().join(name).display().to_string();
    let section = |host: &str, user: &str, db: &str, tls: &str| {
        format!(
            "database:\n  name: psycopg2\n  args:\n    host: {host}\n    port: {}\n    user: {user}\n    \
             dbname: {db}\n    cp_min: 1\n    cp_max: 2\n{tls}",
            cluster.port
        )
    };
    let args = |pairs: &[(&str, String)]| pairs.iter().map(|(k, v)| format!("    {k}: '{v}'\n")).collect::<String>();

    // Checked all the way: the chain and the name.
    let full = args(&[("sslmode", "verify-full".into()), ("sslrootcert", cert("ca.crt"))]);
    let server = Server::start_with(&section("localhost", "postgres", "myelin", &full)).await;
    let alice = server.register("alice").await;
    assert_eq!(server.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await.0, 200);
    drop(server);

    // Without TLS the cluster says no, and start-up says why.
    let (code, stderr) =
        start_and_report(&section("localhost", "postgres", "myelin", &args(&[("sslmode", "disable".into())])));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no encryption"), "{stderr}");

    // The certificate names localhost, not 127.0.0.1: verify-full refuses, verify-ca (and
    // require with a root certificate, as libpq) only check the chain.
    let (code, stderr) = start_and_report(&section("127.0.0.1", "postgres", "myelin", &full));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    for mode in ["verify-ca", "require"] {
        let tls = args(&[("sslmode", mode.into()), ("sslrootcert", cert("ca.crt"))]);
        let server = Server::start_with(&section("127.0.0.1", "postgres", "myelin", &tls)).await;
        assert_eq!(server.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await.0, 200, "{mode}");
    }

    // A certificate from another CA: refused by the checking modes, taken by the others.
    let stranger = |mode: &str| args(&[("sslmode", mode.into()), ("sslrootcert", cert("stranger.crt"))]);
    for mode in ["verify-ca", "verify-full", "require"] {
        let (code, stderr) = start_and_report(&section("localhost", "postgres", "myelin", &stranger(mode)));
        assert_eq!(code, Some(1), "{mode}: {stderr}");
        assert!(stderr.to_lowercase().contains("certificate"), "{mode}: {stderr}");
    }
    for tls in [args(&[("sslmode", "require".into())]), args(&[("sslmode", "prefer".into())]), String::new()] {
        let server = Server::start_with(&section("localhost", "postgres", "myelin", &tls)).await;
        assert_eq!(server.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await.0, 200, "{tls}");
    }

    // `cert` authentication: the role logs in with its client certificate, and not without.
    let client = |with_cert: bool| {
        let mut pairs = vec![("sslmode", "verify-full".to_owned()), ("sslrootcert", cert("ca.crt"))];
        if with_cert {
            pairs.extend([("sslcert", cert("client.crt")), ("sslkey", cert("client.key"))]);
        }
        section("localhost", "certuser", "mine", &args(&pairs))
    };
    let (code, stderr) = start_and_report(&client(false));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    let server = Server::start_with(&client(true)).await;
    let bob = server.register("bob").await;
    assert_eq!(server.get("/_matrix/client/v3/account/whoami", Some(&bob.token)).await.0, 200);
    drop(server);

    // Settings that cannot work stop start-up, naming the key or the file.
    let bad = [
        (args(&[("sslmode", "verify_full".into())]), "invalid sslmode value"),
        (args(&[("sslmode", "verify-full".into()), ("sslrootcert", cert("nothing.crt"))]), "nothing.crt"),
        (args(&[("sslmode", "require".into()), ("sslcert", cert("client.crt"))]), "sslkey"),
        (args(&[("sslmode", "require".into()), ("sslcert", cert("client.crt")), ("sslkey", cert("ca.crt"))]), "sslkey"),
    ];
    for (tls, expected) in bad {
        let (code, stderr) = start_and_report(&section("localhost", "certuser", "mine", &tls));
        assert_eq!(code, Some(1), "{tls}: {stderr}");
        assert!(stderr.contains(expected), "{tls}: {stderr}");
    }
}
