//! URL previews (`GET /_matrix/client/v1/media/preview_url`, and the older
//! `/_matrix/media/v3/preview_url`), as Synapse serves them: off unless `url_preview_enabled`;
//! the page is fetched through its own IP filter (`url_preview_ip_range_blacklist`, which the
//! config must give, and `url_preview_ip_range_whitelist`; `0.0.0.0` and `::` always blocked),
//! URLs matching `url_preview_url_blacklist` are refused, at most `max_spider_size` bytes are
//! read. An HTML page gives its OpenGraph tags (`og:*`, with `<title>` and the description
//! meta tag as fallbacks); its `og:image`, or the URL itself when it is an image, is fetched
//! and stored as local media, so the answer names it by an `mxc://` URI with its size and
//! dimensions. oEmbed answers take part (see [`crate::oembed`]). Answers are cached for an
//! hour (or an oEmbed `cache_age`, at most a day).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::outbound::IpFilter;
use crate::server::now_ms;
use crate::{Error, ErrorKind, Homeserver, Requester, Result};

/// How long an answer is kept (Synapse's one hour), unless an oEmbed `cache_age` says
/// otherwise (at most a day).
const CACHE_MS: i64 = 60 * 60 * 1000;
const ONE_DAY_MS: i64 = 24 * 60 * 60 * 1000;
/// Longer tag names and values are left out of answers (Synapse's limits).
const OG_TAG_NAME_MAXLEN: usize = 50;
const OG_TAG_VALUE_MAXLEN: usize = 1000;
/// The most answers kept.
const CACHE_ENTRIES: usize = 1000;
/// How long a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The `url_preview_*` settings.
#[derive(Debug, Clone, Default)]
pub struct UrlPreviewSettings {
    /// `url_preview_enabled`.
    pub enabled: bool,
    /// `url_preview_ip_range_blacklist` and `url_preview_ip_range_whitelist`.
    pub ip_filter: IpFilter,
    /// `url_preview_url_blacklist`: each entry a map of URL parts (`scheme`, `netloc`,
    /// `hostname`, `port`, `path`, `query`, `fragment`, `username`, `password`) to glob
    /// patterns, or regular expressions when they start with `^`; a URL matching every part of
    /// one entry is refused.
    pub url_blocklist: Vec<Vec<(String, String)>>,
    /// `max_spider_size`: the most bytes read of a page or image.
    pub max_spider_size: u64,
    /// `url_preview_accept_language`.
    pub accept_language: Vec<String>,
}

/// Answers kept, by URL: `(when it expires, answer)`.
#[derive(Default)]
pub(crate) struct PreviewCache(Mutex<HashMap<String, (i64, Value)>>);

fn bad_gateway(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Module { status: 502, errcode: "M_UNKNOWN".into() }, message)
}

impl Homeserver {
    /// The preview of `url` for `requester` (see the module doc).
    pub async fn preview_url(&self, requester: &Requester, url: &str) -> Result<Value> {
        let settings = &self.config.url_preview;
        if !settings.enabled {
            return Err(Error::new(ErrorKind::Unrecognized, "URL previews are disabled"));
        }
        let parsed = reqwest::Url::parse(url).map_err(|_| Error::invalid_param("Invalid URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::invalid_param("Invalid URL: only http and https are previewed"));
        }
        if settings.url_blocklist.iter().any(|rule| url_matches(&parsed, rule)) {
            return Err(Error::forbidden("URL blocked"));
        }
        if let Some((expires, answer)) = self.url_previews.0.lock().unwrap_or_else(|p| p.into_inner()).get(url)
            && now_ms() < *expires
        {
            return Ok(answer.clone());
        }
        // A URL an oEmbed provider serves is previewed from the provider's answer.
        let oembed_target = crate::oembed::oembed_url(&self.config.oembed, url);
        let fetch_url = match &oembed_target {
            Some(target) => reqwest::Url::parse(target).map_err(|_| bad_gateway("Invalid oEmbed URL"))?,
            None => parsed.clone(),
        };
        let (content_type, body) = self.fetch_for_preview(&fetch_url).await?;
        let mut og = Map::new();
        let mut author_name = None;
        let mut expires_ms = CACHE_MS;
        if content_type.starts_with("image/") {
            self.describe_image(requester, &mut og, &content_type, body, "og:image").await?;
        } else if content_type.starts_with("text/html") || content_type.starts_with("application/xhtml") {
            let html = String::from_utf8_lossy(&body);
            // A page may name its own oEmbed answer; the page's tags win over it.
            if let Some(found) = crate::oembed::autodiscover(&html)
                && let Ok(oembed_url) = parsed.join(&found)
            {
                match self.fetch_unless_blocked(&oembed_url).await {
                    Ok((_, answer)) => {
                        let result = crate::oembed::parse_response(url, &answer);
                        og = result.og;
                        author_name = result.author_name;
                        expires_ms = result.cache_age_ms.unwrap_or(expires_ms);
                    }
                    Err(e) => tracing::warn!(%oembed_url, error = %e, "oEmbed fetch failed during URL preview"),
                }
            }
            og.extend(open_graph(&html));
            self.precache_image(requester, &parsed, &mut og).await?;
        } else if oembed_target.is_some() {
            let result = crate::oembed::parse_response(url, &body);
            og = result.og;
            author_name = result.author_name;
            expires_ms = result.cache_age_ms.unwrap_or(expires_ms);
            self.precache_image(requester, &parsed, &mut og).await?;
        }
        if !og.contains_key("og:title")
            && let Some(author) = author_name
        {
            og.insert("og:title".into(), json!(author));
        }
        // Synapse's bounds on what a page may put in an answer.
        og.retain(|k, v| k.len() <= OG_TAG_NAME_MAXLEN && v.to_string().len() <= OG_TAG_VALUE_MAXLEN);
        let answer = Value::Object(og);
        let mut cache = self.url_previews.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (expires, _)| *expires > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(url.to_owned(), (now + expires_ms.clamp(0, ONE_DAY_MS), answer.clone()));
        Ok(answer)
    }

    /// `og:image` fetched and stored here (it is then named by an mxc:// URI); when it cannot
    /// be had, the preview goes without it.
    async fn precache_image(
        &self,
        requester: &Requester,
        page: &reqwest::Url,
        og: &mut Map<String, Value>,
    ) -> Result<()> {
        let Some(image) = og.remove("og:image").and_then(|v| v.as_str().map(str::to_owned)) else { return Ok(()) };
        let Ok(image_url) = page.join(&image) else { return Ok(()) };
        match self.fetch_unless_blocked(&image_url).await {
            Ok((kind, bytes)) if kind.starts_with("image/") => {
                self.describe_image(requester, og, &kind, bytes, "og:image").await?;
            }
            Ok(_) => {}
            Err(e) => tracing::info!(image = %image_url, error = %e, "a preview's image could not be fetched"),
        }
        Ok(())
    }

    /// [`Self::fetch_for_preview`], refused for URLs `url_preview_url_blacklist` names.
    async fn fetch_unless_blocked(&self, url: &reqwest::Url) -> Result<(String, Vec<u8>)> {
        if self.config.url_preview.url_blocklist.iter().any(|rule| url_matches(url, rule)) {
            return Err(Error::forbidden("URL blocked"));
        }
        self.fetch_for_preview(url).await
    }

    /// A page or image, through the preview IP filter: `(content type, at most
    /// max_spider_size bytes)`. 502 when it cannot be had (refused address, error status,
    /// too large).
    async fn fetch_for_preview(&self, url: &reqwest::Url) -> Result<(String, Vec<u8>)> {
        let settings = &self.config.url_preview;
        let client = settings
            .ip_filter
            .web_client_builder(self.config.insecure_outbound_tls)
            .and_then(|b| b.timeout(FETCH_TIMEOUT).build().map_err(|e| e.to_string()))
            .map_err(Error::internal)?;
        let language =
            if settings.accept_language.is_empty() { "en".to_owned() } else { settings.accept_language.join(", ") };
        let request = client
            .get(url.clone())
            .header("User-Agent", format!("Myelin ({})", self.server_name()))
            .header("Accept-Language", language);
        let mut response = settings.ip_filter.send(&client, request).await.map_err(|why| {
            tracing::info!(%url, reason = %why, "a URL to preview could not be fetched");
            bad_gateway("Failed to download content")
        })?;
        if !response.status().is_success() {
            return Err(bad_gateway(format!("The page answered {}", response.status().as_u16())));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_ascii_lowercase();
        let limit = settings.max_spider_size;
        if response.content_length().is_some_and(|l| l > limit) {
            return Err(bad_gateway("The content is too large to preview"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|_| bad_gateway("Failed to download content"))? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(bad_gateway("The content is too large to preview"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((content_type, body))
    }

    /// Stores an image as local media and describes it under `key` (`og:image` as an mxc://
    /// URI, its type, size and, when it decodes, width and height).
    async fn describe_image(
        &self,
        requester: &Requester,
        og: &mut Map<String, Value>,
        content_type: &str,
        bytes: Vec<u8>,
        key: &str,
    ) -> Result<()> {
        let size = bytes.len();
        let dimensions = image::ImageReader::new(std::io::Cursor::new(&bytes))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok());
        let content_type = content_type.split(';').next().unwrap_or(content_type).trim().to_owned();
        let mut stream = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]);
        let mxc = self.upload_media(requester, None, Some(content_type.clone()), None, &mut stream).await?;
        og.insert(key.to_owned(), json!(mxc));
        og.insert(format!("{key}:type"), json!(content_type));
        og.insert("matrix:image:size".to_owned(), json!(size));
        if let Some((width, height)) = dimensions {
            og.insert(format!("{key}:width"), json!(width));
            og.insert(format!("{key}:height"), json!(height));
        }
        Ok(())
    }
}

/// Whether every part a blocklist entry names matches the URL.
fn url_matches(url: &reqwest::Url, rule: &[(String, String)]) -> bool {
    !rule.is_empty()
        && rule.iter().all(|(part, pattern)| {
            let value = match part.as_str() {
                "scheme" => url.scheme().to_owned(),
                "netloc" => match url.port() {
                    Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
                    None => url.host_str().unwrap_or_default().to_owned(),
                },
                "hostname" => url.host_str().unwrap_or_default().to_owned(),
                "port" => url.port_or_known_default().map(|p| p.to_string()).unwrap_or_default(),
                "path" => url.path().to_owned(),
                "query" => url.query().unwrap_or_default().to_owned(),
                "fragment" => url.fragment().unwrap_or_default().to_owned(),
                "username" => url.username().to_owned(),
                "password" => url.password().unwrap_or_default().to_owned(),
                _ => return false,
            };
            pattern_matches(pattern, &value)
        })
}

/// A glob (`*`, `?`), or a regular expression when it starts with `^` (as Synapse's).
fn pattern_matches(pattern: &str, value: &str) -> bool {
    if pattern.starts_with('^') {
        return regex::Regex::new(pattern).is_ok_and(|r| r.is_match(value));
    }
    let mut regex = String::from("^");
    for c in pattern.chars() {
        match c {
            '*' => regex.push_str(".*"),
            '?' => regex.push('.'),
            c => regex.push_str(&regex::escape(&c.to_string())),
        }
    }
    regex.push('$');
    regex::Regex::new(&regex).is_ok_and(|r| r.is_match(value))
}

/// The OpenGraph tags of a page (`<meta property="og:..." content="...">`), with the page's
/// `<title>` as `og:title` and its description meta tag as `og:description` when it has none.
pub(crate) fn open_graph(html: &str) -> Map<String, Value> {
    let mut og = Map::new();
    let mut description = None;
    let lower = html.to_ascii_lowercase();
    for attributes in tags(html, "meta") {
        let key = attributes.get("property").or_else(|| attributes.get("name")).map(|k| k.to_ascii_lowercase());
        if let (Some(key), Some(content)) = (key, attributes.get("content")) {
            if key.starts_with("og:") {
                og.entry(key).or_insert_with(|| json!(content));
            } else if key == "description" {
                description.get_or_insert_with(|| content.clone());
            }
        }
    }
    if !og.contains_key("og:title")
        && let Some(start) = lower.find("<title")
        && let Some(open_end) = lower[start..].find('>').map(|i| start + i + 1)
        && let Some(close) = lower[open_end..].find("</title").map(|i| open_end + i)
    {
        let title = decode_entities(html[open_end..close].trim());
        if !title.is_empty() {
            og.insert("og:title".into(), json!(title));
        }
    }
    if !og.contains_key("og:description")
        && let Some(d) = description
    {
        og.insert("og:description".into(), json!(d));
    }
    og
}

/// The attributes of every `<name ...>` tag in `html`, in order.
pub(crate) fn tags(html: &str, name: &str) -> Vec<HashMap<String, String>> {
    let lower = html.to_ascii_lowercase();
    let open = format!("<{name}");
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(start) = lower[at..].find(&open).map(|i| at + i) {
        let inside = start + open.len();
        let end = lower[inside..].find('>').map(|i| inside + i).unwrap_or(html.len());
        // `<metadata>` is not `<meta>`: the name must end there.
        if html[inside..].starts_with(|c: char| c.is_whitespace() || c == '>' || c == '/') {
            out.push(attributes(&html[inside..end]));
        }
        at = end.max(inside);
    }
    out
}

/// The text of an HTML fragment (scripts and styles left out), whitespace collapsed, at most
/// 500 characters cut at a word (Synapse's description of embedded HTML); `None` if empty.
pub(crate) fn text_summary(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let mut text = String::new();
    let mut at = 0;
    while at < html.len() {
        let Some(lt) = lower[at..].find('<').map(|i| at + i) else {
            text.push_str(&html[at..]);
            break;
        };
        text.push_str(&html[at..lt]);
        text.push(' ');
        let skip_to = ["script", "style"].iter().find(|t| lower[lt + 1..].starts_with(*t)).and_then(|t| {
            let close = format!("</{t}");
            lower[lt..].find(&close).map(|i| lt + i)
        });
        let from = skip_to.unwrap_or(lt);
        at = lower[from..].find('>').map(|i| from + i + 1).unwrap_or(html.len());
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut summary = decode_entities(&words.join(" "));
    if summary.is_empty() {
        return None;
    }
    if summary.chars().count() > 500 {
        let cut: String = summary.chars().take(500).collect();
        let at_word = cut.rfind(' ').map(|i| &cut[..i]).unwrap_or(&cut);
        summary = format!("{}…", at_word.trim_end());
    }
    Some(summary)
}

/// The attributes of a tag's inside (`name="value"`, `name='value'`, `name=value`), names
/// lowercased, values with their entities decoded.
fn attributes(tag: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let chars: Vec<char> = tag.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == '/') {
            i += 1;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '=' && chars[i] != '/' {
            i += 1;
        }
        let name: String = chars[start..i].iter().collect::<String>().to_ascii_lowercase();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i < chars.len() && chars[i] == '=' {
            i += 1;
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            let value: String = if i < chars.len() && (chars[i] == '"' || chars[i] == '\'') {
                let quote = chars[i];
                let from = i + 1;
                i = from;
                while i < chars.len() && chars[i] != quote {
                    i += 1;
                }
                let v = chars[from..i.min(chars.len())].iter().collect();
                i += 1;
                v
            } else {
                let from = i;
                while i < chars.len() && !chars[i].is_whitespace() {
                    i += 1;
                }
                chars[from..i].iter().collect()
            };
            if !name.is_empty() {
                out.entry(name).or_insert_with(|| decode_entities(&value));
            }
        } else if name.is_empty() {
            i += 1;
        }
    }
    out
}

/// The common HTML entities and numeric references decoded.
pub(crate) fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let Some(semi) = after.find(';').filter(|s| *s <= 10) else {
            out.push('&');
            rest = after;
            continue;
        };
        let name = &after[..semi];
        let decoded = match name {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ => name
                .strip_prefix("#x")
                .or_else(|| name.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| name.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_graph_tags_with_fallbacks_and_entities() {
        let html = r#"<html><head><title>The &amp; Title</title>
            <meta property="og:type" content="article" />
            <meta property='og:url' content='https://example.com/a?b=1&amp;c=2'>
            <META NAME="description" CONTENT="A page">
            <meta property="og:image" content="/img.png"></head></html>"#;
        let og = open_graph(html);
        assert_eq!(og["og:title"], "The & Title");
        assert_eq!(og["og:type"], "article");
        assert_eq!(og["og:url"], "https://example.com/a?b=1&c=2");
        assert_eq!(og["og:description"], "A page");
        assert_eq!(og["og:image"], "/img.png");
        let with_title = open_graph(r#"<meta property="og:title" content="OG wins"><title>not this</title>"#);
        assert_eq!(with_title["og:title"], "OG wins");
        assert!(open_graph("no tags at all").is_empty());
    }

    #[test]
    fn blocklist_entries_match_every_part_they_name() {
        let rule = |parts: &[(&str, &str)]| -> Vec<(String, String)> {
            parts.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
        };
        let url = reqwest::Url::parse("https://docs.example.com:8443/private/x?q=1").unwrap();
        assert!(url_matches(&url, &rule(&[("netloc", "*.example.com:8443")])));
        assert!(url_matches(&url, &rule(&[("scheme", "https"), ("path", "/private/*")])));
        assert!(!url_matches(&url, &rule(&[("scheme", "http"), ("path", "/private/*")])));
        assert!(url_matches(&url, &rule(&[("hostname", "^docs\\.")])));
        assert!(!url_matches(&url, &rule(&[("hostname", "example.com")])));
        assert!(!url_matches(&url, &rule(&[])));
    }
}
