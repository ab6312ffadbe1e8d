//! `POST /search` over room messages: matching, ordering, context, pagination, visibility.

use serde_json::{Value, json};

use crate::harness::*;

const V3: &str = "/_matrix/client/v3";

async fn search(s: &Server, user: &User, criteria: Value, next: Option<&str>) -> (u16, Value) {
    let path = match next {
        Some(n) => format!("{V3}/search?next_batch={n}"),
        None => format!("{V3}/search"),
    };
    s.post(&path, Some(&user.token), json!({"search_categories": {"room_events": criteria}})).await
}

fn bodies(r: &Value) -> Vec<String> {
    r["search_categories"]["room_events"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["result"]["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn search_finds_messages_with_rank_recency_context_and_pages() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat", "name": "Kitchen talk"})).await;
    s.join(&bob, &room).await;
    for text in ["the quick brown fox", "lazy dogs sleep", "fox fox fox everywhere", "nothing here", "Foxes are clever"]
    {
        s.send_text(&alice, &room, text).await;
    }
    let private = s.create_room(&alice, json!({})).await;
    s.send_text(&alice, &private, "a secret fox").await;

    let (st, r) = search(&s, &bob, json!({"search_term": "fox", "order_by": "recent"}), None).await;
    assert_eq!(st, 200, "{r}");
    assert_schema("/_matrix/client/v3/search", "post", st, &r);
    // Prefix matching finds "Foxes"; bob is not in the private room.
    assert_eq!(bodies(&r), ["Foxes are clever", "fox fox fox everywhere", "the quick brown fox"]);
    assert_eq!(r["search_categories"]["room_events"]["count"], 3);
    assert_eq!(r["search_categories"]["room_events"]["highlights"], json!(["fox"]));
    // By rank the message saying fox three times comes first.
    let (_, r) = search(&s, &bob, json!({"search_term": "fox"}), None).await;
    assert_eq!(bodies(&r)[0], "fox fox fox everywhere");
    // Every word must match.
    let (_, r) = search(&s, &bob, json!({"search_term": "quick fox"}), None).await;
    assert_eq!(bodies(&r), ["the quick brown fox"]);
    // Room names are searchable through content.name.
    let (_, r) = search(&s, &bob, json!({"search_term": "kitchen", "keys": ["content.name"]}), None).await;
    assert_eq!(r["search_categories"]["room_events"]["results"][0]["result"]["type"], "m.room.name");

    // Pages of one, following next_batch to the end.
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let (_, r) = search(
            &s,
            &bob,
            json!({"search_term": "fox", "order_by": "recent", "filter": {"limit": 1}}),
            next.as_deref(),
        )
        .await;
        seen.extend(bodies(&r));
        match r["search_categories"]["room_events"]["next_batch"].as_str() {
            Some(n) => next = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3);

    // Context around a hit, with profiles.
    let (_, r) = search(
        &s,
        &bob,
        json!({"search_term": "lazy", "event_context": {"before_limit": 1, "after_limit": 1, "include_profile": true}}),
        None,
    )
    .await;
    let ctx = &r["search_categories"]["room_events"]["results"][0]["context"];
    assert_eq!(ctx["events_before"][0]["content"]["body"], "the quick brown fox");
    assert_eq!(ctx["events_after"][0]["content"]["body"], "fox fox fox everywhere");
    assert!(ctx["profile_info"][&alice.user_id].is_object());

    // Alice sees her private room's message; a room filter narrows to it.
    let (_, r) = search(&s, &alice, json!({"search_term": "fox", "filter": {"rooms": [private]}}), None).await;
    assert_eq!(bodies(&r), ["a secret fox"]);
    // A redacted message leaves the index.
    let hit = r["search_categories"]["room_events"]["results"][0]["result"]["event_id"].as_str().unwrap().to_owned();
    let (st, _) = s.put(&format!("{V3}/rooms/{private}/redact/{hit}/r1"), Some(&alice.token), json!({})).await;
    assert_eq!(st, 200);
    let (_, r) = search(&s, &alice, json!({"search_term": "secret"}), None).await;
    assert_eq!(r["search_categories"]["room_events"]["count"], 0);
    // FTS syntax in the term is taken literally, not as a query.
    let (st, _) = search(&s, &alice, json!({"search_term": "fox\" OR \"x* NEAR("}), None).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn bad_search_requests_get_matrix_errors() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let cases = [
        (json!({"search_categories": 3}), "M_BAD_JSON"),
        (json!({"search_categories": {"room_events": {}}}), "M_MISSING_PARAM"),
        (json!({"search_categories": {"room_events": {"search_term": 5}}}), "M_BAD_JSON"),
        (json!({"search_categories": {"room_events": {"search_term": "x", "order_by": "size"}}}), "M_INVALID_PARAM"),
        (
            json!({"search_categories": {"room_events": {"search_term": "x", "keys": ["content.url"]}}}),
            "M_INVALID_PARAM",
        ),
        (json!({"search_categories": {"room_events": {"search_term": "x", "filter": {"limit": "ten"}}}}), "M_BAD_JSON"),
    ];
    for (body, code) in cases {
        let (st, b) = s.post(&format!("{V3}/search"), Some(&alice.token), body.clone()).await;
        assert_eq!((st, b["errcode"].as_str()), (400, Some(code)), "{body}: {b}");
    }
    let (st, b) = s
        .post(
            &format!("{V3}/search?next_batch=zz"),
            Some(&alice.token),
            json!({"search_categories": {"room_events": {"search_term": "x"}}}),
        )
        .await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    assert_eq!(s.post(&format!("{V3}/search"), None, json!({})).await.0, 401);
}
