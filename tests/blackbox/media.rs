//! The media repository, with `check_media_file_for_spam` (cases 50-51).

use serde_json::{Value, json};

use crate::harness::*;

pub async fn upload(s: &Server, u: &User, body: Vec<u8>, content_type: &str, name: Option<&str>) -> (u16, Value) {
    let mut url = s.url("/_matrix/media/v3/upload");
    if let Some(n) = name {
        url.push_str(&format!("?filename={n}"));
    }
    let resp = reqwest::Client::new()
        .post(url)
        .bearer_auth(&u.token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

fn media_path(uri: &str) -> String {
    uri.strip_prefix("mxc://").unwrap().to_owned()
}

/// A small PNG made with a real encoder (python's zlib), 64x48 pixels.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let out = std::process::Command::new("python3")
        .args(["-c", &format!(
            "import zlib,struct,sys\nw,h={width},{height}\nraw=b''.join(b'\\x00'+bytes(v for x in range(w) for v in (x*4%256,y*4%256,128)) for y in range(h))\n\
             def c(t,d): return struct.pack('>I',len(d))+t+d+struct.pack('>I',zlib.crc32(t+d))\n\
             sys.stdout.buffer.write(b'\\x89PNG\\r\\n\\x1a\\n'+c(b'IHDR',struct.pack('>IIBBBBB',w,h,8,2,0,0,0))+c(b'IDAT',zlib.compress(raw))+c(b'IEND',b''))"
        )])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

#[tokio::test]
async fn upload_download_and_headers() {
    let s = Server::start().await;
    let u = s.register("alice").await;
    let (st, b) = upload(&s, &u, b"hello media".to_vec(), "text/plain", Some("greeting.txt")).await;
    assert_eq!(st, 200, "{b}");
    assert_schema("/_matrix/media/v3/upload", "post", 200, &b);
    let path = media_path(b["content_uri"].as_str().unwrap());
    assert!(path.starts_with("test/"));
    for url in [format!("/_matrix/media/v3/download/{path}"), format!("/_matrix/client/v1/media/download/{path}")] {
        let resp = reqwest::Client::new().get(s.url(&url)).bearer_auth(&u.token).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let h = resp.headers().clone();
        assert_eq!(h["content-type"], "text/plain");
        assert_eq!(h["content-disposition"], "inline; filename*=utf-8''greeting.txt");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(h["content-security-policy"].to_str().unwrap().starts_with("sandbox"));
        assert_eq!(resp.bytes().await.unwrap().as_ref(), b"hello media");
    }
    // The authenticated endpoint needs a token.
    assert_eq!(s.get(&format!("/_matrix/client/v1/media/download/{path}"), None).await.0, 401);
    // Unsafe types are attachments, whatever name is given.
    let (_, b) = upload(&s, &u, b"<script>alert(1)</script>".to_vec(), "text/html", None).await;
    let path = media_path(b["content_uri"].as_str().unwrap());
    let resp = reqwest::get(s.url(&format!("/_matrix/media/v3/download/{path}/page.html"))).await.unwrap();
    assert_eq!(resp.headers()["content-disposition"], "attachment; filename*=utf-8''page.html");
    let (st, cfg) = s.get("/_matrix/client/v1/media/config", Some(&u.token)).await;
    assert_eq!((st, cfg), (200, json!({"m.upload.size": 1024 * 1024})));
    assert_eq!(s.post("/_matrix/media/v3/upload", None, json!({})).await.0, 401);
}

#[tokio::test]
async fn bad_media_ids_never_leave_the_store() {
    let s = Server::start().await;
    let u = s.register("alice").await;
    upload(&s, &u, b"x".to_vec(), "text/plain", None).await;
    let long = "a".repeat(300);
    for id in ["..%2F..%2F..%2Fetc%2Fpasswd", "..", "%2E%2E", "a%2Fb", long.as_str(), "abc", "nope-not-there"] {
        let (st, b) = s.get(&format!("/_matrix/media/v3/download/test/{id}"), None).await;
        assert!(st == 404 || st == 400, "{id}: {st} {b}");
        assert_eq!(b["errcode"].as_str().map(|e| e.starts_with("M_")), Some(true), "{id}: {b}");
    }
    let resp = reqwest::get(s.url("/_matrix/media/v3/download/test/../../../../etc/passwd")).await.unwrap();
    assert!(resp.status() == 404 || resp.status() == 400);
    // Another server's file: not fetched when asked not to, and a server that cannot be reached
    // is a 502 (as on Synapse).
    assert_eq!(s.get("/_matrix/media/v3/download/elsewhere.invalid/abcdefgh?allow_remote=false", None).await.0, 404);
    let (st, b) = s.get("/_matrix/media/v3/download/elsewhere.invalid/abcdefgh", None).await;
    assert_eq!((st, b["errcode"].as_str()), (502, Some("M_UNKNOWN")), "{b}");
}

#[tokio::test]
async fn oversized_uploads_get_413_and_store_nothing() {
    let s = Server::start().await;
    let u = s.register("alice").await;
    let (st, b) = upload(&s, &u, vec![7u8; 2 * 1024 * 1024], "application/octet-stream", None).await;
    assert_eq!((st, b["errcode"].as_str()), (413, Some("M_TOO_LARGE")));
    // A chunked upload (no Content-Length) is refused while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..40).map(|_| Ok(vec![1u8; 64 * 1024])).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let resp = reqwest::Client::new()
        .post(s.url("/_matrix/media/v3/upload"))
        .bearer_auth(&u.token)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let media = s.dir.path().join("data/media");
    let stored = files_under(&media);
    assert!(stored.iter().all(|p| !p.starts_with("local_content")), "{stored:?}");
    assert!(files_under(&media.join("tmp")).is_empty(), "temporary files are cleaned up");
}

#[tokio::test]
async fn create_then_upload_to_the_reserved_id() {
    let s = Server::start().await;
    let u = s.register("alice").await;
    let bob = s.register("bob").await;
    let (st, b) = s.post("/_matrix/media/v1/create", Some(&u.token), json!({})).await;
    assert_eq!(st, 200);
    assert!(b["unused_expires_at"].as_i64().is_some());
    let path = media_path(b["content_uri"].as_str().unwrap());
    let (st, b) = s.get(&format!("/_matrix/media/v3/download/{path}"), None).await;
    assert_eq!((st, b["errcode"].as_str()), (504, Some("M_NOT_YET_UPLOADED")));
    let put = |token: String, body: &'static [u8]| {
        let url = s.url(&format!("/_matrix/media/v3/upload/{path}"));
        async move {
            reqwest::Client::new()
                .put(url)
                .bearer_auth(token)
                .header("content-type", "text/plain")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(put(bob.token.clone(), b"bob").await.status(), 403);
    assert_eq!(put(u.token.clone(), b"reserved").await.status(), 200);
    let resp = put(u.token.clone(), b"again").await;
    assert_eq!(resp.status(), 409);
    assert_eq!(resp.json::<Value>().await.unwrap()["errcode"], "M_CANNOT_OVERWRITE_MEDIA");
    let body = reqwest::get(s.url(&format!("/_matrix/media/v3/download/{path}"))).await.unwrap().bytes().await.unwrap();
    assert_eq!(body.as_ref(), b"reserved");
    assert_eq!(put(u.token.clone(), b"x").await.status(), 409);
    let resp = reqwest::Client::new()
        .put(s.url("/_matrix/media/v3/upload/test/unknownmediaid"))
        .bearer_auth(&u.token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn thumbnails_scale_crop_and_are_cached() {
    let s = Server::start().await;
    let u = s.register("alice").await;
    let (_, b) = upload(&s, &u, png(400, 300), "image/png", Some("pic.png")).await;
    let path = media_path(b["content_uri"].as_str().unwrap());
    for (q, expect) in [("width=32&height=32&method=crop", (32, 32)), ("width=300&height=200&method=scale", (320, 240))]
    {
        let resp = reqwest::Client::new()
            .get(s.url(&format!("/_matrix/client/v1/media/thumbnail/{path}?{q}")))
            .bearer_auth(&u.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{q}");
        assert_eq!(resp.headers()["content-type"], "image/png");
        let bytes = resp.bytes().await.unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!((w, h), expect, "{q}");
    }
    let thumbs = files_under(&s.dir.path().join("data/media/local_thumbnails"));
    assert_eq!(thumbs.len(), 2, "{thumbs:?}");
    // Not an image, bad parameters.
    let (_, b) = upload(&s, &u, b"plain".to_vec(), "text/plain", None).await;
    let text = media_path(b["content_uri"].as_str().unwrap());
    assert_eq!(s.get(&format!("/_matrix/media/v3/thumbnail/{text}?width=32&height=32"), None).await.0, 400);
    assert_eq!(s.get(&format!("/_matrix/media/v3/thumbnail/{path}?width=x&height=32"), None).await.0, 400);
    assert_eq!(s.get(&format!("/_matrix/media/v3/thumbnail/{path}?width=32&height=32&method=melt"), None).await.0, 400);
    assert_eq!(s.get(&format!("/_matrix/media/v3/thumbnail/{path}"), None).await.0, 400);
}

#[tokio::test]
async fn case_50_51_check_media_file_for_spam() {
    let cfg = format!(
        "modules:\n  - module: myelin.test.Scripted\n    config: {}\n",
        json!({"label": "m", "callbacks": {"check_media_file_for_spam": {"deny_if": "evil", "then": {"deny": "M_FORBIDDEN"}}}})
    );
    let s = Server::start_with(&cfg).await;
    let u = s.register("alice").await;
    assert_eq!(upload(&s, &u, b"innocent bytes".to_vec(), "text/plain", None).await.0, 200);
    let (st, b) = upload(&s, &u, b"some evil bytes".to_vec(), "text/plain", None).await;
    assert_eq!((st, b), (400, json!({"errcode": "M_UNKNOWN", "error": "Bad content"})));
    let calls = s.calls("m").await;
    assert_eq!(calls[1]["args"][0], "some evil bytes");
    assert_eq!(calls[1]["args"][2], Value::Null, "server_name is None for local media");
    assert_eq!(calls[1]["args"][3], false);
    let stored = files_under(&s.dir.path().join("data/media/local_content"));
    assert_eq!(stored.len(), 1, "only the innocent file is stored");
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_50_mb_upload_and_download_stream_without_growing_memory() {
    let s = Server::start_with("max_upload_size: 60M\n").await;
    let u = s.register("alice").await;
    // Warm up the paths once with a small file, then take the baseline.
    upload(&s, &u, vec![0u8; 1024], "application/octet-stream", None).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let idle = rss_kb(s.pid());
    let chunk = vec![0x5au8; 1024 * 1024];
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..50).map(|_| Ok(chunk.clone())).collect();
    let resp = reqwest::Client::new()
        .post(s.url("/_matrix/media/v3/upload"))
        .bearer_auth(&u.token)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let after_upload = rss_kb(s.pid());
    let uri: Value = resp.json().await.unwrap();
    let path = media_path(uri["content_uri"].as_str().unwrap());
    let mut resp = reqwest::get(s.url(&format!("/_matrix/media/v3/download/{path}"))).await.unwrap();
    let mut total = 0usize;
    let mut peak = after_upload;
    while let Some(c) = resp.chunk().await.unwrap() {
        total += c.len();
        if total % (8 * 1024 * 1024) < c.len() {
            peak = peak.max(rss_kb(s.pid()));
        }
    }
    assert_eq!(total, 50 * 1024 * 1024);
    peak = peak.max(rss_kb(s.pid()));
    assert!(peak < idle + 20 * 1024, "RSS grew from {idle} kB to {peak} kB");
}

/// A web site for previews on loopback: `/page.html` (OpenGraph tags, its image relative),
/// `/pic.png` (64x48), `/plain.html` (a title only), `/huge.html` (64 KiB), and for oEmbed:
/// `/oembed.json` (a photo answer), `/discover.html` (naming it), `/leaky.html` (naming a
/// blocked one). Returns its base URL.
async fn preview_site() -> String {
    use axum::http::header::CONTENT_TYPE;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let oembed = json!({"version": "1.0", "type": "photo", "title": "From oEmbed", "author_name": "Ann",
                        "provider_name": "Test Site", "url": format!("{base}/pic.png"), "cache_age": 60})
    .to_string();
    let discover = r#"<html><head><link rel="alternate" type="application/json+oembed" href="/oembed.json?id=1">
        <meta property="og:description" content="From the page" /></head><body>hi</body></html>"#;
    let leaky = r#"<html><head><title>Leaky</title>
        <link rel="alternate" type="application/json+oembed" href="/secret/oembed.json"></head></html>"#;
    let page = r#"<html><head><title>ignored</title>
        <meta property="og:title" content="A &quot;test&quot; page" />
        <meta property="og:type" content="article" />
        <meta property="og:url" content="https://example.org/page" />
        <meta property="og:image" content="/pic.png" /></head><body>hi</body></html>"#;
    let app = axum::Router::new()
        .route(
            "/page.html",
            axum::routing::get(move || async move { ([(CONTENT_TYPE, "text/html; charset=utf-8")], page) }),
        )
        .route("/pic.png", axum::routing::get(|| async { ([(CONTENT_TYPE, "image/png")], png(64, 48)) }))
        .route(
            "/plain.html",
            axum::routing::get(|| async { ([(CONTENT_TYPE, "text/html")], "<title>Just a title</title>") }),
        )
        .route("/huge.html", axum::routing::get(|| async { ([(CONTENT_TYPE, "text/html")], "x".repeat(64 * 1024)) }))
        .route(
            "/oembed.json",
            axum::routing::get(move || async move { ([(CONTENT_TYPE, "application/json")], oembed) }),
        )
        .route("/discover.html", axum::routing::get(move || async move { ([(CONTENT_TYPE, "text/html")], discover) }))
        .route("/leaky.html", axum::routing::get(move || async move { ([(CONTENT_TYPE, "text/html")], leaky) }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn preview_path(prefix: &str, url: &str) -> String {
    let encoded: String = url
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    format!("{prefix}/preview_url?url={encoded}")
}

#[tokio::test]
async fn url_previews_describe_pages_and_their_images_through_their_own_ip_filter() {
    let site = preview_site().await;
    let s = Server::start_with(
        "url_preview_enabled: true\nurl_preview_ip_range_blacklist: []\nmax_spider_size: 32K\n\
         url_preview_url_blacklist:\n  - path: '/secret*'\n",
    )
    .await;
    let alice = s.register("alice").await;
    let (st, og) =
        s.get(&preview_path("/_matrix/client/v1/media", &format!("{site}/page.html")), Some(&alice.token)).await;
    assert_eq!(st, 200, "{og}");
    assert_eq!(
        (&og["og:title"], &og["og:type"], &og["og:url"]),
        (&json!("A \"test\" page"), &json!("article"), &json!("https://example.org/page"))
    );
    assert_eq!((&og["og:image:width"], &og["og:image:height"]), (&json!(64), &json!(48)), "{og}");
    assert_eq!(og["matrix:image:size"], json!(png(64, 48).len()), "{og}");
    // The image is stored here: its mxc:// URI downloads it.
    let mxc = og["og:image"].as_str().unwrap();
    let media = mxc.strip_prefix("mxc://").unwrap_or_else(|| panic!("an mxc URI: {og}"));
    let (st, _) = s.get(&format!("/_matrix/client/v1/media/download/{media}"), Some(&alice.token)).await;
    assert_eq!(st, 200);
    // The legacy path answers the same; a page without OpenGraph tags gives its title.
    let (st, og) = s.get(&preview_path("/_matrix/media/v3", &format!("{site}/plain.html")), Some(&alice.token)).await;
    assert_eq!((st, &og["og:title"]), (200, &json!("Just a title")), "{og}");

    // Refused: no access token, no URL, not http(s), a blocked URL, a page over
    // max_spider_size, a page that is not there.
    let page = format!("{site}/page.html");
    assert_eq!(s.get(&preview_path("/_matrix/client/v1/media", &page), None).await.0, 401);
    let (st, e) = s.get("/_matrix/client/v1/media/preview_url", Some(&alice.token)).await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{e}");
    let (st, _) = s.get(&preview_path("/_matrix/client/v1/media", "file:///etc/passwd"), Some(&alice.token)).await;
    assert_eq!(st, 400);
    let (st, e) =
        s.get(&preview_path("/_matrix/client/v1/media", &format!("{site}/secret/x")), Some(&alice.token)).await;
    assert_eq!((st, e["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{e}");
    let (st, _) =
        s.get(&preview_path("/_matrix/client/v1/media", &format!("{site}/huge.html")), Some(&alice.token)).await;
    assert_eq!(st, 502);
    let (st, _) =
        s.get(&preview_path("/_matrix/client/v1/media", &format!("{site}/missing")), Some(&alice.token)).await;
    assert_eq!(st, 502);
}

#[tokio::test]
async fn url_previews_use_oembed_providers_and_pages_that_name_their_oembed() {
    let site = preview_site().await;
    let dir = tempfile::tempdir().unwrap();
    let providers = json!([{"provider_name": "Test Site", "provider_url": format!("{site}/"),
        "endpoints": [{"schemes": [format!("{site}/video/*")], "url": format!("{site}/oembed.json")}]}]);
    std::fs::write(dir.path().join("providers.json"), providers.to_string()).unwrap();
    std::fs::write(
        dir.path().join("homeserver.yaml"),
        base_config(
            "url_preview_enabled: true\nurl_preview_ip_range_blacklist: []\n\
             url_preview_url_blacklist:\n  - path: '/secret*'\noembed:\n  additional_providers: [providers.json]\n",
        ),
    )
    .unwrap();
    let s = Server::start_in(dir).await;
    let alice = s.register("alice").await;
    let preview = |url: String| {
        let (s, token) = (&s, alice.token.clone());
        async move { s.get(&preview_path("/_matrix/client/v1/media", &url), Some(&token)).await }
    };
    // A provider's URL is previewed from its oEmbed answer; the photo is stored here.
    let (st, og) = preview(format!("{site}/video/42")).await;
    assert_eq!(st, 200, "{og}");
    assert_eq!((&og["og:title"], &og["og:site_name"]), (&json!("From oEmbed"), &json!("Test Site")), "{og}");
    assert_eq!(og["og:url"], format!("{site}/video/42"));
    assert!(og["og:image"].as_str().is_some_and(|i| i.starts_with("mxc://test/")), "{og}");
    assert_eq!((&og["og:image:width"], &og["og:image:height"]), (&json!(64), &json!(48)));
    // A page naming its oEmbed: both, the page's own tags kept.
    let (st, og) = preview(format!("{site}/discover.html")).await;
    assert_eq!(st, 200, "{og}");
    assert_eq!((&og["og:title"], &og["og:description"]), (&json!("From oEmbed"), &json!("From the page")), "{og}");
    assert!(og["og:image"].as_str().is_some_and(|i| i.starts_with("mxc://")), "{og}");
    // An oEmbed URL the blocklist names is not fetched: the page alone.
    let (st, og) = preview(format!("{site}/leaky.html")).await;
    assert_eq!(st, 200, "{og}");
    assert_eq!(og, json!({"og:title": "Leaky"}));
    // Not a provider's URL: the page as it is.
    let (_, og) = preview(format!("{site}/plain.html")).await;
    assert_eq!(og, json!({"og:title": "Just a title"}));

    // A providers file that is not valid stops start-up.
    for (file, expected) in [
        ("[{\"provider_name\": \"x\"}]", "'provider_url' is a required property"),
        (
            "[{\"provider_name\": \"x\", \"provider_url\": \"u\", \"endpoints\": [{\"schemes\": [\"ftp://a/*\"], \"url\": \"https://e\"}]}]",
            "Unsupported oEmbed scheme (ftp)",
        ),
        ("not json", "not JSON"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.json"), file).unwrap();
        let config = dir.path().join("homeserver.yaml");
        std::fs::write(&config, base_config("oembed:\n  additional_providers: [p.json]\n")).unwrap();
        let (code, _, stderr) = run_cli(dir.path(), &["-c", config.to_str().unwrap(), "check-config"]);
        assert_eq!(code, 1, "{file}: {stderr}");
        assert!(stderr.contains(expected), "{file}: {stderr}");
    }
}

#[tokio::test]
async fn url_previews_are_off_by_default_and_never_reach_blocked_addresses() {
    let site = preview_site().await;
    let off = Server::start().await;
    let alice = off.register("alice").await;
    let (st, e) =
        off.get(&preview_path("/_matrix/client/v1/media", &format!("{site}/page.html")), Some(&alice.token)).await;
    assert_eq!((st, e["errcode"].as_str()), (404, Some("M_UNRECOGNIZED")), "{e}");
    // On with loopback blocked: the site is never fetched.
    let guarded =
        Server::start_with("url_preview_enabled: true\nurl_preview_ip_range_blacklist: ['127.0.0.0/8']\n").await;
    let bob = guarded.register("bob").await;
    let (st, _) =
        guarded.get(&preview_path("/_matrix/client/v1/media", &format!("{site}/page.html")), Some(&bob.token)).await;
    assert_eq!(st, 502);
}
