//! `/_synapse/metrics`: Synapse's metric names (those its Grafana dashboard's main rows use),
//! labelled as Synapse labels them, counting what really happened.

use serde_json::json;

use crate::harness::*;

/// The value of the sample `name{labels}` (labels exactly as printed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

async fn scrape(s: &Server) -> String {
    let answer = reqwest::get(s.url("/_synapse/metrics")).await.unwrap();
    assert_eq!(answer.status(), 200);
    let content_type = answer.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let text = answer.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "an OpenMetrics page ends with # EOF");
    text
}

/// The dashboard names Myelin serves samples for once a message has been sent and a
/// long-polling sync woken by it.
const DASHBOARD_NAMES: &[&str] = &[
    "synapse_http_server_requests_received_total",
    "synapse_http_server_in_flight_requests_count",
    "synapse_http_server_response_time_seconds_bucket",
    "synapse_http_server_response_time_seconds_sum",
    "synapse_http_server_response_time_seconds_count",
    "synapse_storage_events_persisted_events_total",
    "synapse_storage_events_persisted_events_sep_total",
    "synapse_event_persisted_position",
    "synapse_storage_transaction_time_count_total",
    "synapse_storage_transaction_time_sum_total",
    "synapse_storage_schedule_time_count",
    "synapse_federation_client_sent_transactions_total",
    "synapse_federation_client_sent_pdu_destinations_count_total",
    "synapse_federation_client_sent_edus_total",
    "synapse_federation_server_received_pdus_total",
    "synapse_federation_server_received_edus_total",
    "synapse_notifier_users_woken_by_stream_total",
    "synapse_util_caches_cache",
    "synapse_util_caches_cache_hits",
    "synapse_util_caches_cache_size",
    "synapse_util_caches_cache_evicted_size",
    "synapse_http_httppusher_http_pushes_processed_total",
    "synapse_http_httppusher_http_pushes_failed_total",
    "synapse_build_info",
    "synapse_server_name_info",
    "process_cpu_seconds_total",
    "process_cpu_user_seconds_total",
    "process_cpu_system_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_max_fds",
];

#[tokio::test]
async fn dashboard_names_are_served_and_count_what_happened() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let before = scrape(&s).await;
    let send_series = "synapse_http_server_requests_received_total{server_name=\"test\",method=\"PUT\",servlet=\"RoomSendEventRestServlet\"}";
    let persisted = "synapse_storage_events_persisted_events_total{server_name=\"test\"}";
    let persisted_before = sample(&before, persisted).unwrap();
    assert_eq!(sample(&before, send_series), None, "nothing sent yet");

    // A long-poll woken by a message. The message must arrive while the sync waits, not during
    // its first look, so a round that was not woken (a loaded machine) is tried again.
    let mut since = since;
    let mut sent = 0.0;
    for _ in 0..10 {
        let waiting = {
            let (url, token) =
                (s.url(&format!("/_matrix/client/v3/sync?since={since}&timeout=20000")), alice.token.clone());
            tokio::spawn(async move {
                let answer = reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap();
                answer.json::<serde_json::Value>().await.unwrap()
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(s.send_text(&alice, &room, "hello").await.0, 200);
        sent += 1.0;
        since = waiting.await.unwrap()["next_batch"].as_str().unwrap().to_owned();
        let text = scrape(&s).await;
        if sample(&text, "synapse_notifier_users_woken_by_stream_total{server_name=\"test\",stream=\"events\"}")
            .is_some_and(|n| n >= 1.0)
        {
            break;
        }
    }

    let text = scrape(&s).await;
    for name in DASHBOARD_NAMES {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "no sample of {name} in:\n{text}"
        );
    }
    assert_eq!(sample(&text, send_series), Some(sent), "{text}");
    assert_eq!(sample(&text, persisted), Some(persisted_before + sent), "{text}");
    let by_type = "synapse_storage_events_persisted_events_sep_total{server_name=\"test\",type=\"m.room.message\",origin_type=\"local\",origin_entity=\"*client*\"}";
    assert_eq!(sample(&text, by_type), Some(sent), "{text}");
    assert!(
        sample(
            &text,
            "synapse_http_server_response_time_seconds_count{server_name=\"test\",method=\"PUT\",servlet=\"RoomSendEventRestServlet\",tag=\"\",code=\"200\"}"
        ) == Some(sent),
        "{text}"
    );
    assert!(
        sample(&text, "synapse_notifier_users_woken_by_stream_total{server_name=\"test\",stream=\"events\"}").unwrap()
            >= 1.0
    );
    assert!(sample(&text, "myelin_sync_wakeups_total{outcome=\"new_data\"}").unwrap() >= 1.0, "{text}");
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(text.contains("synapse_build_info{server_name=\"test\","), "{text}");
    // No request is in flight but the scrape itself.
    let in_flight = text
        .lines()
        .filter(|l| l.starts_with("synapse_http_server_in_flight_requests_count{") && !l.contains("/_synapse/metrics"));
    for line in in_flight {
        assert!(line.ends_with(" 0"), "{line}");
    }
    // A refused request is counted under its status.
    assert_eq!(s.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/x"), None, json!({})).await.0, 401);
    let text = scrape(&s).await;
    assert!(
        sample(
            &text,
            "synapse_http_server_response_time_seconds_count{server_name=\"test\",method=\"PUT\",servlet=\"RoomSendEventRestServlet\",tag=\"\",code=\"401\"}"
        ) == Some(1.0),
        "{text}"
    );
}
