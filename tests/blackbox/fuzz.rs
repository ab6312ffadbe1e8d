//! Every Client-Server operation in the spec, called with generated bodies and parameters:
//! whatever a client sends, the answer is never a 5xx and the server keeps serving.
//!
//! Bodies are built from each operation's request schema (its property names, each given a
//! value of a random type: strings empty and over 64 KiB, integers beyond 2^53, floats, nulls,
//! nested arrays and objects) plus bodies that are not objects or not JSON at all. The seed is
//! printed; `MYELIN_FUZZ_SEED` replays a run, `MYELIN_FUZZ_ROUNDS` makes it longer.

use serde_json::{Map, Value, json};

use crate::harness::*;

/// xorshift64*: deterministic from the seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn value(&mut self, depth: usize) -> Value {
        match self.below(if depth > 3 { 9 } else { 12 }) {
            0 => json!(""),
            1 => json!("x".repeat(self.below(40))),
            2 => json!(self.next() as i64),
            3 => json!(1u64 << 60),
            4 => json!(-1),
            5 => json!(0.5),
            6 => Value::Null,
            7 => json!(self.below(2) == 0),
            8 => json!("@nobody:test"),
            9 => Value::Array((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
            10 => {
                let mut object = Map::new();
                for _ in 0..self.below(4) {
                    object.insert(
                        ["a", "type", "content", "body", "url", "user_id"][self.below(6)].to_owned(),
                        self.value(depth + 1),
                    );
                }
                Value::Object(object)
            }
            _ => json!("y".repeat(70_000)),
        }
    }

    /// A body for an operation whose request schema has `properties` (names only).
    fn body(&mut self, properties: &[String]) -> Vec<u8> {
        match self.below(10) {
            0 => b"not json".to_vec(),
            1 => b"[1,2,3]".to_vec(),
            2 => Vec::new(),
            _ => {
                let mut object = Map::new();
                for name in properties {
                    if self.below(3) > 0 {
                        object.insert(name.clone(), self.value(0));
                    }
                }
                if self.below(4) == 0 {
                    object.insert("unexpected".into(), self.value(0));
                }
                serde_json::to_vec(&Value::Object(object)).unwrap()
            }
        }
    }
}

/// The top-level property names of an operation's JSON request body.
fn request_properties(op: &Value) -> Vec<String> {
    let schema = &op["requestBody"]["content"]["application/json"]["schema"];
    let mut names: Vec<String> =
        schema["properties"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default();
    for alternative in schema["oneOf"].as_array().into_iter().chain(schema["allOf"].as_array()).flatten() {
        names.extend(alternative["properties"].as_object().into_iter().flat_map(|p| p.keys().cloned()));
    }
    names
}

/// Operations that would end the session the rest of the run uses (tried last, on a user of
/// their own).
fn ends_the_session(path: &str) -> bool {
    path.ends_with("/logout") || path.ends_with("/logout/all") || path.ends_with("/account/deactivate")
}

#[tokio::test]
async fn every_client_server_operation_answers_generated_input_without_a_5xx() {
    let seed = std::env::var("MYELIN_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    let rounds: usize = std::env::var("MYELIN_FUZZ_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    eprintln!("fuzz seed {seed} ({rounds} rounds; MYELIN_FUZZ_SEED={seed} replays it)");
    let mut rng = Rng(seed);

    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(server.join(&bob, &room).await.0, 200);
    let (_, sent) = server.send_text(&alice, &room, "fuzz target").await;
    let event = sent["event_id"].as_str().unwrap().to_owned();

    let mut operations: Vec<(String, String, Value)> = Vec::new();
    for (path, methods) in spec()["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            if ["get", "put", "post", "delete"].contains(&method.as_str()) {
                operations.push((path.clone(), method.clone(), op.clone()));
            }
        }
    }
    operations.sort_by_key(|(path, _, _)| ends_the_session(path));
    let http = reqwest::Client::new();
    let mut failures = Vec::new();
    let mut calls = 0;
    for (template, method, op) in &operations {
        let token = if ends_the_session(template) {
            server.register(&format!("u{}", rng.below(1 << 30))).await.token
        } else {
            alice.token.clone()
        };
        let properties = request_properties(op);
        for _ in 0..rounds {
            let mut path = template.clone();
            for (param, value) in [
                ("{userId}", alice.user_id.clone()),
                ("{roomId}", room.clone()),
                ("{roomIdOrAlias}", room.clone()),
                ("{eventId}", event.clone()),
                ("{roomAlias}", "#fuzz:test".to_owned()),
                ("{eventType}", ["m.room.message", "m.room.topic", "m.custom"][rng.below(3)].to_owned()),
                ("{stateKey}", String::new()),
                ("{deviceId}", alice.device_id.clone()),
                ("{serverName}", "test".to_owned()),
            ] {
                // Now and then a value of the wrong kind (not a server name: that would only
                // ask the network about made-up hosts).
                let value = if param != "{serverName}" && rng.below(5) == 0 {
                    format!("bad{}", rng.below(1000))
                } else {
                    value
                };
                path = path.replace(param, &path_segment(&value));
            }
            while let (Some(start), Some(end)) = (path.find('{'), path.find('}')) {
                path.replace_range(start..=end, &format!("f{}", rng.below(1 << 20)));
            }
            let query = ["timeout=0", "limit=-1", "from=garbage", "dir=x", "limit=3"][rng.below(5)];
            // `timeout=0` too: `/events` would otherwise wait 30 s for nothing.
            let url = format!("{}{path}?timeout=0&{query}", server.base);
            let body = rng.body(&properties);
            let request = match method.as_str() {
                "get" => http.get(&url),
                "put" => http.put(&url).body(body.clone()),
                "post" => http.post(&url).body(body.clone()),
                _ => http.delete(&url).body(body.clone()),
            };
            calls += 1;
            let started = std::time::Instant::now();
            let answer = request.bearer_auth(&token).header("content-type", "application/json").send().await;
            if started.elapsed() > std::time::Duration::from_millis(500) {
                eprintln!("slow: {method} {path}?{query} {:?}", started.elapsed());
            }
            match answer {
                // 502 and 504 are a remote server's failure, not the server's own.
                Ok(response)
                    if response.status().is_server_error() && ![502, 504].contains(&response.status().as_u16()) =>
                {
                    let status = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    let shown: String = String::from_utf8_lossy(&body).chars().take(200).collect();
                    failures.push(format!("{} {path}?{query} {shown} -> {status} {text}", method.to_uppercase()));
                }
                Ok(_) => {}
                Err(e) => failures.push(format!("{} {path}: no answer: {e}", method.to_uppercase())),
            }
        }
    }
    assert!(failures.is_empty(), "seed {seed}: {} of {calls} calls failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(server.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await.0, 200);
}
