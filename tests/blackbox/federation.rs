//! Federation's foundations: published server keys and the version endpoint.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn server_keys_are_published_signed_by_themselves() {
    let s = Server::start().await;
    let (status, body) = s.get("/_matrix/key/v2/server", None).await;
    assert_eq!(status, 200, "{body}");
    assert_federation_schema("/_matrix/key/v2/server", "get", 200, &body);
    assert_eq!(body["server_name"], "test");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    // Valid long enough for notaries and remote servers to cache (the spec: at least an hour).
    assert!(body["valid_until_ts"].as_i64().unwrap() > now + 3_600_000, "{body}");
    let keys = body["verify_keys"].as_object().unwrap();
    assert_eq!(keys.len(), 1);
    let (key_id, key) = keys.iter().next().unwrap();
    assert!(key_id.starts_with("ed25519:"), "{key_id}");
    // The key on disk is the one published.
    let stored = std::fs::read_to_string(s.dir.path().join("data/test.signing.key")).unwrap();
    assert_eq!(format!("ed25519:{}", stored.split_whitespace().nth(1).unwrap()), *key_id);

    // The signature verifies with the published key, and not once the body is changed.
    let public = ruma::serde::Base64::parse(key["key"].as_str().unwrap()).unwrap();
    let keys: ruma::signatures::PublicKeyMap =
        [("test".to_owned(), [(key_id.clone(), public)].into_iter().collect())].into_iter().collect();
    let object: ruma::CanonicalJsonObject = serde_json::from_value(body.clone()).unwrap();
    ruma::signatures::verify_json(&keys, &object).unwrap();
    let mut tampered = body.clone();
    tampered["valid_until_ts"] = json!(body["valid_until_ts"].as_i64().unwrap() + 1);
    let object: ruma::CanonicalJsonObject = serde_json::from_value(tampered).unwrap();
    assert!(ruma::signatures::verify_json(&keys, &object).is_err());

    // The deprecated form naming a key ID answers the same (older servers and sytest use it),
    // for a key it has or not, as Synapse does.
    for path in [format!("/_matrix/key/v2/server/{key_id}"), "/_matrix/key/v2/server/ed25519:other".to_owned()] {
        let (status, again) = s.get(&path, None).await;
        assert_eq!(status, 200, "{path}: {again}");
        assert_eq!(again["verify_keys"], body["verify_keys"], "{path}");
    }
}

/// Keys the server signed with before (Synapse's `old_signing_keys`) are published as
/// `old_verify_keys`, with when they stopped being used; a malformed one stops the start.
#[tokio::test]
async fn old_signing_keys_are_published_as_old_verify_keys() {
    let old = "l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ";
    let s = Server::start_with(&format!(
        "old_signing_keys:\n  \"ed25519:old\": {{key: \"{old}\", expired_ts: 1500000000000}}\n"
    ))
    .await;
    let (status, body) = s.get("/_matrix/key/v2/server", None).await;
    assert_eq!(status, 200, "{body}");
    assert_federation_schema("/_matrix/key/v2/server", "get", 200, &body);
    assert_eq!(body["old_verify_keys"], json!({"ed25519:old": {"key": old, "expired_ts": 1500000000000i64}}));
    assert_eq!(body["verify_keys"].as_object().unwrap().len(), 1, "the old key is not a current one");
    assert!(body["verify_keys"].get("ed25519:old").is_none());
    // Without any: an empty object, as Synapse.
    let plain = Server::start().await;
    assert_eq!(plain.get("/_matrix/key/v2/server", None).await.1["old_verify_keys"], json!({}));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("homeserver.yaml");
    for bad in [
        "{\"rsa:old\": {key: x, expired_ts: 1}}",
        "{\"ed25519:old\": {key: short, expired_ts: 1}}",
        &format!("{{\"ed25519:old\": {{key: \"{old}\"}}}}"),
    ] {
        std::fs::write(&config, base_config(&format!("old_signing_keys: {bad}\n"))).unwrap();
        let (code, _, err) = run_cli(dir.path(), &["-c", config.to_str().unwrap(), "check-config"]);
        assert_ne!(code, 0, "{bad} was accepted");
        assert!(err.contains("old_signing_keys"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn version_and_which_listeners_serve_federation() {
    let s = Server::start().await;
    let (status, body) = s.get("/_matrix/federation/v1/version", None).await;
    assert_eq!(status, 200, "{body}");
    assert_federation_schema("/_matrix/federation/v1/version", "get", 200, &body);
    assert_eq!(body["server"]["name"], "Myelin");

    // A client-only listener serves neither, as on Synapse.
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config("").replace("names: [client, federation, metrics]", "names: [client]");
    std::fs::write(dir.path().join("homeserver.yaml"), cfg).unwrap();
    let s = Server::start_in(dir).await;
    for path in ["/_matrix/key/v2/server", "/_matrix/federation/v1/version"] {
        let (status, body) = s.get(path, None).await;
        assert_eq!((status, body["errcode"].as_str()), (404, Some("M_UNRECOGNIZED")), "{path}: {body}");
    }
}

#[tokio::test]
async fn key_queries_answer_for_the_keys_this_server_has() {
    let s = Server::start().await;
    let (_, own) = s.get("/_matrix/key/v2/server", None).await;
    let key_id = own["verify_keys"].as_object().unwrap().keys().next().unwrap().clone();

    let (status, body) = s.get("/_matrix/key/v2/query/test", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, deprecated) = s.get(&format!("/_matrix/key/v2/query/test/{key_id}"), None).await;
    assert_eq!(status, 200, "{deprecated}");
    assert_eq!(deprecated["server_keys"][0]["verify_keys"], body["server_keys"][0]["verify_keys"]);
    assert_federation_schema("/_matrix/key/v2/query/{serverName}", "get", 200, &body);
    let keys = body["server_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["server_name"], "test");
    assert_eq!(keys[0]["verify_keys"][&key_id], own["verify_keys"][&key_id]);
    assert!(keys[0]["signatures"]["test"][&key_id].is_string());

    // A server whose keys cannot be fetched (it does not exist) is left out, not an error.
    let (status, body) = s.get("/_matrix/key/v2/query/elsewhere.example", None).await;
    assert_eq!((status, body), (200, json!({"server_keys": []})));
    let query = json!({"server_keys": {
        "test": {key_id.clone(): {"minimum_valid_until_ts": 1}},
        "elsewhere.example": {},
    }});
    let (status, body) = s.post("/_matrix/key/v2/query", None, query).await;
    assert_eq!(status, 200, "{body}");
    assert_federation_schema("/_matrix/key/v2/query", "post", 200, &body);
    assert_eq!(body["server_keys"].as_array().unwrap().len(), 1);
    let (status, body) = s.post("/_matrix/key/v2/query", None, json!({"server_keys": {}})).await;
    assert_eq!((status, body), (200, json!({"server_keys": []})));

    // Malformed queries are the client's mistake.
    for bad in [
        json!({}),
        json!({"server_keys": []}),
        json!({"server_keys": {"test": []}}),
        json!({"server_keys": {"test": {"ed25519:a": {"minimum_valid_until_ts": "soon"}}}}),
    ] {
        let (status, body) = s.post("/_matrix/key/v2/query", None, bad.clone()).await;
        assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{bad}: {body}");
    }
    let (status, body) = s.raw("POST", "/_matrix/key/v2/query", b"{not json".to_vec()).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_NOT_JSON")));
}
