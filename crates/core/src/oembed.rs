//! oEmbed (<https://oembed.com/>) for URL previews, as Synapse does it: URLs matching a
//! provider's schemes are previewed from the provider's oEmbed answer instead of the page; an
//! HTML page may name its oEmbed answer itself (`<link rel="alternate"
//! type="application/json+oembed">`, autodiscovery), which then fills what the page's own
//! OpenGraph tags leave out. Providers: Synapse's two built-in ones unless
//! `oembed.disable_default_providers`, and those in `oembed.additional_providers` (files in the
//! oembed.com `providers.json` format).

use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::config::ConfigError;

/// One provider endpoint: the URLs it serves and where to ask.
#[derive(Debug, Clone)]
pub struct OembedEndpoint {
    api_endpoint: String,
    patterns: Vec<regex::Regex>,
}

/// The providers Synapse ships (its `res/providers.json`).
const DEFAULT_PROVIDERS: &str = r#"[
  {"provider_name": "X", "provider_url": "https://x.com/",
   "endpoints": [{"schemes": ["https://x.com/*", "https://x.com/*/status/*", "https://*.x.com/*/status/*"],
                  "url": "https://publish.x.com/oembed"}]},
  {"provider_name": "YouTube Shorts", "provider_url": "http://www.youtube.com/",
   "endpoints": [{"schemes": ["https://youtube.com/shorts/*", "https://*.youtube.com/shorts/*"],
                  "url": "https://www.youtube.com/oembed"}]}
]"#;

/// Reads `oembed:`.
pub(crate) fn parse(
    root: &Map<String, Value>,
    resolve: &dyn Fn(String) -> PathBuf,
) -> Result<Vec<OembedEndpoint>, ConfigError> {
    let section = match root.get("oembed") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(ConfigError::at(&["oembed".into()], "expected a mapping")),
    };
    let mut endpoints = Vec::new();
    if !section.get("disable_default_providers").and_then(Value::as_bool).unwrap_or(false) {
        let providers: Value =
            serde_json::from_str(DEFAULT_PROVIDERS).map_err(|e| ConfigError::at(&[], e.to_string()))?;
        endpoints.extend(parse_providers(&providers, &["oembed".into()])?);
    }
    match section.get("additional_providers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(files)) => {
            for (i, file) in files.iter().enumerate() {
                let at = vec!["oembed".to_owned(), "additional_providers".to_owned(), format!("<item {i}>")];
                let Some(file) = file.as_str() else { return Err(ConfigError::at(&at, "expected a file path")) };
                let text = std::fs::read_to_string(resolve(file.to_owned()))
                    .map_err(|e| ConfigError::at(&at, format!("Error accessing file '{file}': {e}")))?;
                let providers: Value =
                    serde_json::from_str(&text).map_err(|e| ConfigError::at(&at, format!("{file}: not JSON: {e}")))?;
                endpoints.extend(parse_providers(&providers, &at)?);
            }
        }
        Some(_) => return Err(ConfigError::at(&["oembed".into(), "additional_providers".into()], "expected a list")),
    }
    Ok(endpoints)
}

fn parse_providers(providers: &Value, at: &[String]) -> Result<Vec<OembedEndpoint>, ConfigError> {
    let invalid = |what: &str| ConfigError::at(at, format!("invalid oEmbed providers: {what}"));
    let mut out = Vec::new();
    for provider in providers.as_array().ok_or_else(|| invalid("expected a list of providers"))? {
        for key in ["provider_name", "provider_url"] {
            if !provider.get(key).is_some_and(Value::is_string) {
                return Err(invalid(&format!("'{key}' is a required property")));
            }
        }
        let endpoints = provider
            .get("endpoints")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("'endpoints' is a required property"))?;
        for endpoint in endpoints {
            let url =
                endpoint.get("url").and_then(Value::as_str).ok_or_else(|| invalid("'url' is a required property"))?;
            let schemes = endpoint
                .get("schemes")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid("'schemes' is a required property"))?;
            let scheme_of = |u: &str| u.split_once("://").map(|(s, _)| s.to_owned()).unwrap_or_default();
            if !matches!(scheme_of(url).as_str(), "http" | "https") {
                return Err(ConfigError::at(
                    at,
                    format!("Unsupported oEmbed scheme ({}) for endpoint {url}", scheme_of(url)),
                ));
            }
            // Synapse skips endpoints that cannot answer JSON.
            let formats = endpoint.get("formats").and_then(Value::as_array);
            if formats.is_some_and(|f| !f.iter().any(|v| v == "json")) || url.ends_with(".xml") {
                tracing::info!(url, "ignoring an oEmbed endpoint that does not answer JSON");
                continue;
            }
            let mut patterns = Vec::new();
            for glob in schemes {
                let glob = glob.as_str().ok_or_else(|| invalid("schemes must be strings"))?;
                patterns.push(glob_to_pattern(glob).map_err(|e| ConfigError::at(at, e))?);
            }
            out.push(OembedEndpoint { api_endpoint: url.to_owned(), patterns });
        }
    }
    Ok(out)
}

/// Synapse's reading of a scheme glob: `http`/`https` only; in the host, `*` is one label's
/// characters; elsewhere any run of characters.
fn glob_to_pattern(glob: &str) -> Result<regex::Regex, String> {
    let (scheme, rest) = glob.split_once("://").unwrap_or(("", glob));
    if !matches!(scheme, "http" | "https") {
        return Err(format!("Unsupported oEmbed scheme ({scheme}) for pattern: {glob}"));
    }
    let (host, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let glob_part = |part: &str, star: &str| regex::escape(part).replace(r"\*", star);
    let pattern = format!("^{scheme}://{}{}$", glob_part(host, "[a-zA-Z0-9_-]+"), glob_part(tail, ".+"));
    regex::Regex::new(&pattern).map_err(|e| e.to_string())
}

/// The oEmbed URL to fetch instead of `url`, when a provider serves it.
pub(crate) fn oembed_url(endpoints: &[OembedEndpoint], url: &str) -> Option<String> {
    let endpoint = endpoints.iter().find(|e| e.patterns.iter().any(|p| p.is_match(url)))?;
    let query =
        form_urlencoded::Serializer::new(String::new()).append_pair("url", url).append_pair("format", "json").finish();
    Some(format!("{}?{query}", endpoint.api_endpoint.replace("{format}", "json")))
}

/// The oEmbed URL an HTML page names for itself, if any.
pub(crate) fn autodiscover(html: &str) -> Option<String> {
    crate::url_preview::tags(html, "link").into_iter().find_map(|attributes| {
        let rel = attributes.get("rel")?.to_ascii_lowercase();
        let kind = attributes.get("type")?.to_ascii_lowercase();
        let href = attributes.get("href")?.trim();
        (matches!(rel.as_str(), "alternate" | "alternative") && kind == "application/json+oembed" && !href.is_empty())
            .then(|| href.to_owned())
    })
}

/// What an oEmbed answer says, as OpenGraph.
#[derive(Debug, Default)]
pub(crate) struct OembedResult {
    pub(crate) og: Map<String, Value>,
    pub(crate) author_name: Option<String>,
    pub(crate) cache_age_ms: Option<i64>,
}

/// Synapse's `parse_oembed_response`: version 1.0 answers only; `url` is the URL previewed.
pub(crate) fn parse_response(url: &str, body: &[u8]) -> OembedResult {
    let Ok(Value::Object(oembed)) = serde_json::from_slice::<Value>(body) else { return OembedResult::default() };
    match oembed.get("version") {
        None => {}
        Some(Value::String(v)) if v == "1.0" => {}
        Some(Value::Number(n)) if n.as_f64() == Some(1.0) => {}
        Some(_) => return OembedResult::default(),
    }
    let cache_age_ms = match oembed.get("cache_age") {
        Some(Value::Number(n)) => n.as_f64().map(|s| s as i64 * 1000),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok().map(|s| s * 1000),
        _ => None,
    };
    let string = |key: &str| oembed.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    let mut og = Map::new();
    og.insert("og:url".into(), json!(url));
    if let Some(title) = string("title") {
        og.insert("og:title".into(), json!(crate::url_preview::decode_entities(title)));
    }
    if let Some(site) = string("provider_name") {
        og.insert("og:site_name".into(), json!(site));
    }
    if let Some(thumbnail) = string("thumbnail_url") {
        og.insert("og:image".into(), json!(thumbnail));
    }
    match oembed.get("type").and_then(Value::as_str) {
        Some("rich") => {
            if let Some(html) = string("html") {
                describe_html(&mut og, html);
            }
        }
        Some("photo") => {
            if let Some(photo) = string("url") {
                og.insert("og:image".into(), json!(photo));
            }
        }
        Some("video") => {
            og.insert("og:type".into(), json!("video.other"));
            if let Some(html) = string("html") {
                describe_html(&mut og, html);
            }
            for size in ["width", "height"] {
                if let Some(v) = oembed.get(size).and_then(Value::as_i64) {
                    og.insert(format!("og:video:{size}"), json!(v));
                }
            }
        }
        Some("link") => {
            og.insert("og:type".into(), json!("website"));
        }
        other => tracing::warn!(kind = ?other, "unknown oEmbed type"),
    }
    let author_name = oembed.get("author_name").and_then(Value::as_str).map(str::to_owned);
    OembedResult { og, author_name, cache_age_ms }
}

/// Synapse's `calc_description_and_urls`: the embedded HTML's first image (when there is no
/// image yet), its video or embed, and its text as the description.
fn describe_html(og: &mut Map<String, Value>, html: &str) {
    let first_src = |tag: &str| {
        crate::url_preview::tags(html, tag)
            .into_iter()
            .find_map(|a| a.get("src").filter(|s| !s.trim().is_empty()).cloned())
    };
    if !og.contains_key("og:image")
        && let Some(image) = first_src("img")
    {
        og.insert("og:image".into(), json!(image));
    }
    if let Some(video) = first_src("video").or_else(|| first_src("embed")) {
        og.insert("og:video".into(), json!(video));
    }
    if let Some(description) = crate::url_preview::text_summary(html) {
        og.insert("og:description".into(), json!(description));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_synapse_reads_them() {
        let p = glob_to_pattern("https://*.x.com/*/status/*").unwrap();
        assert!(p.is_match("https://mobile.x.com/jack/status/20"));
        assert!(!p.is_match("https://evil.com/.x.com/a/status/b"));
        assert!(!p.is_match("https://a.b.x.com/jack/status/20"), "one label only");
        assert!(!p.is_match("http://mobile.x.com/jack/status/20"));
        assert!(glob_to_pattern("ftp://x/*").is_err());
    }

    #[test]
    fn provider_urls_are_rewritten_to_their_oembed_endpoint() {
        let endpoints = parse(&Map::new(), &|p| PathBuf::from(p)).unwrap();
        assert_eq!(
            oembed_url(&endpoints, "https://youtube.com/shorts/abc").as_deref(),
            Some("https://www.youtube.com/oembed?url=https%3A%2F%2Fyoutube.com%2Fshorts%2Fabc&format=json")
        );
        assert_eq!(oembed_url(&endpoints, "https://example.org/"), None);
        let mut root = Map::new();
        root.insert("oembed".into(), json!({"disable_default_providers": true}));
        assert!(parse(&root, &|p| PathBuf::from(p)).unwrap().is_empty());
    }

    #[test]
    fn answers_become_open_graph() {
        let rich = br#"{"version": "1.0", "type": "rich", "title": "A &amp; B", "author_name": "Ann",
            "provider_name": "Site", "cache_age": "60",
            "html": "<blockquote><p>Hello <b>world</b></p><img src='https://i/x.png'><video src='https://v/x.mp4'></video></blockquote>"}"#;
        let r = parse_response("https://site/post", rich);
        assert_eq!(r.og["og:title"], "A & B");
        assert_eq!(r.og["og:site_name"], "Site");
        assert_eq!(r.og["og:image"], "https://i/x.png");
        assert_eq!(r.og["og:video"], "https://v/x.mp4");
        assert_eq!(r.og["og:description"], "Hello world");
        assert_eq!(r.og["og:url"], "https://site/post");
        assert_eq!((r.author_name.as_deref(), r.cache_age_ms), (Some("Ann"), Some(60_000)));
        let photo =
            parse_response("u", br#"{"type": "photo", "url": "https://p/1.jpg", "thumbnail_url": "https://t"}"#);
        assert_eq!(photo.og["og:image"], "https://p/1.jpg");
        let video =
            parse_response("u", br#"{"type": "video", "width": 640, "height": 360, "html": "<iframe></iframe>"}"#);
        assert_eq!((&video.og["og:type"], &video.og["og:video:width"]), (&json!("video.other"), &json!(640)));
        assert!(parse_response("u", br#"{"version": "2.0", "type": "link"}"#).og.is_empty());
        assert!(parse_response("u", b"not json").og.is_empty());
    }

    #[test]
    fn pages_name_their_oembed() {
        let html = r#"<head><link rel="stylesheet" href="a.css"><link rel="alternate" type="application/json+oembed" href="https://s/oembed?u=1"></head>"#;
        assert_eq!(autodiscover(html).as_deref(), Some("https://s/oembed?u=1"));
        assert_eq!(autodiscover("<link rel=alternate type=text/xml+oembed href=x>"), None);
    }
}
