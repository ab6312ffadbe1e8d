//! The benchmark's load generator for `PUT /send`: `bench/run.py` drives everything else in
//! Python, but at thousands of messages a second an aiohttp client spends more CPU per request
//! than Myelin does, and on a two-core machine that caps what the benchmark can see. This one
//! costs tens of microseconds a request, for either server alike.
//!
//! `myelin-loadgen <base-url> <room-id> <clients> <total> <token>...`: `clients` concurrent
//! senders (client `i` uses token `i % tokens`, as the Python driver does) send `total`
//! messages between them, each waiting for its previous answer; prints
//! `{"sent": N, "seconds": S}`. Exits non-zero on the first failed request.
//!
//! `myelin-loadgen herd <base-url> <room-id> <waiting> <sender-token> <token>...`: the
//! thundering herd. `waiting` long-polling `/sync` requests (request `i` uses token
//! `i % tokens`, each on its own connection, presence off) wait on the room; one message is
//! sent; prints each request's time from the send starting to its answer, in seconds, sorted:
//! `{"wakes": [...]}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("herd") {
        if args.len() < 6 {
            eprintln!("usage: myelin-loadgen herd <base-url> <room-id> <waiting> <sender-token> <token>...");
            std::process::exit(2);
        }
        let waiting: usize = args[3].parse().expect("waiting");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let wakes = runtime.block_on(herd(&args[1], &args[2], waiting, &args[4], &args[5..]));
        println!("{}", serde_json::json!({ "wakes": wakes }));
        return;
    }
    if args.len() < 5 {
        eprintln!("usage: myelin-loadgen <base-url> <room-id> <clients> <total> <token>...");
        std::process::exit(2);
    }
    let (base, room) = (args[0].clone(), args[1].clone());
    let clients: usize = args[2].parse().expect("clients");
    let total: usize = args[3].parse().expect("total");
    let tokens: Vec<String> = args[4..].to_vec();
    // One thread: the load generator should take as little of the machine as it can.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let seconds = runtime.block_on(run(base, room, clients, total, tokens));
    println!("{}", serde_json::json!({"sent": total / clients * clients, "seconds": seconds}));
}

async fn run(base: String, room: String, clients: usize, total: usize, tokens: Vec<String>) -> f64 {
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build().expect("client");
    let per_client = total / clients;
    let txn = Arc::new(AtomicUsize::new(0));
    let run_id = std::process::id();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, txn) = (http.clone(), txn.clone());
        let token = tokens[c % tokens.len()].clone();
        let url = format!("{base}/_matrix/client/v3/rooms/{room}/send/m.room.message");
        tasks.push(tokio::spawn(async move {
            for i in 0..per_client {
                let n = txn.fetch_add(1, Ordering::Relaxed);
                let body = serde_json::json!({"msgtype": "m.text", "body": format!("{c}-{i}")});
                let response = http
                    .put(format!("{url}/lg{run_id}-{n}"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .expect("send");
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                if !status.is_success() {
                    eprintln!("send failed: {status} {text}");
                    std::process::exit(1);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("sender");
    }
    start.elapsed().as_secs_f64()
}

async fn herd(base: &str, room: &str, waiting: usize, sender: &str, tokens: &[String]) -> Vec<f64> {
    let http = reqwest::Client::new();
    let mut since = Vec::new();
    for token in tokens {
        let url = format!("{base}/_matrix/client/v3/sync?timeout=0&set_presence=offline");
        let body: serde_json::Value =
            http.get(url).bearer_auth(token).send().await.expect("sync").json().await.expect("sync body");
        since.push(body["next_batch"].as_str().expect("next_batch").to_owned());
    }
    let sent_at = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut polls = Vec::new();
    for i in 0..waiting {
        let url = format!(
            "{base}/_matrix/client/v3/sync?timeout=60000&set_presence=offline&since={}",
            since[i % tokens.len()]
        );
        let (token, sent_at) = (tokens[i % tokens.len()].clone(), sent_at.clone());
        polls.push(tokio::spawn(async move {
            // A client of its own: a connection of its own, as separate devices have.
            let own = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
            let response = own.get(url).bearer_auth(token).send().await.expect("long-poll");
            let body: serde_json::Value = response.json().await.expect("long-poll body");
            let woken = Instant::now();
            assert!(body["rooms"]["join"].as_object().is_some_and(|j| !j.is_empty()), "woken by something else");
            woken.duration_since(*sent_at.get().expect("answered before the send")).as_secs_f64()
        }));
    }
    // Every request is waiting.
    tokio::time::sleep(std::time::Duration::from_millis(2000 + waiting as u64)).await;
    let _ = sent_at.set(Instant::now());
    let url = format!("{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/herd{}", std::process::id());
    let body = serde_json::json!({"msgtype": "m.text", "body": "herd"});
    let response = http.put(url).bearer_auth(sender).json(&body).send().await.expect("send");
    assert!(response.status().is_success(), "send: {}", response.status());
    let mut wakes = Vec::new();
    for poll in polls {
        wakes.push(poll.await.expect("long-poll"));
    }
    wakes.sort_by(f64::total_cmp);
    wakes
}
