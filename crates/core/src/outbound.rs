//! Outbound HTTP that cannot be aimed at the local network: the one place where every
//! connection this server opens (federation, key fetches, `.well-known`, SRV targets, remote
//! media, push gateways, module HTTP clients and the native HTTP antispam through them) is
//! checked against `ip_range_blacklist` / `ip_range_whitelist`.
//!
//! Two gates, because reqwest has two ways to pick an address:
//! - a hostname is resolved by [`FilteringResolver`], which drops every blocked address it
//!   resolves to (so the address actually connected to is the one checked, after DNS);
//! - an IP literal never reaches the resolver, so [`IpFilter::check_url`] checks the host of
//!   the *parsed* URL before each request and each redirect. The URL parser has already
//!   turned every spelling of an IPv4 address (`127.1`, `0x7f000001`, `2130706433`,
//!   `0177.0.0.1`) into its dotted form, and IPv4-mapped IPv6 addresses are matched as IPv4,
//!   so no spelling slips past.
//!
//! Errors name the blocked address in the log only; clients are told that the remote server
//! could not be reached, whatever the reason, so answers cannot be used to scan ports.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use crate::config::IpRange;

/// Which addresses outbound requests may reach.
#[derive(Debug, Clone, Default)]
pub struct IpFilter {
    /// Never reached (`ip_range_blacklist`, Synapse's private ranges by default).
    pub blocklist: Vec<IpRange>,
    /// Exceptions to the blocklist (`ip_range_whitelist`).
    pub allowlist: Vec<IpRange>,
}

impl IpFilter {
    /// Whether a connection to `ip` is allowed. As on Synapse, an IPv6 address that embeds an
    /// IPv4 one (IPv4-mapped, IPv4-compatible, 6to4) is blocked when either form is.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let any = |ranges: &[IpRange], ip: IpAddr| ranges.iter().any(|r| r.contains(ip));
        let blocked = |ip: IpAddr| any(&self.blocklist, ip) && !any(&self.allowlist, ip);
        !blocked(ip) && !embedded_ipv4(ip).is_some_and(|v4| blocked(IpAddr::V4(v4)))
    }

    /// Fails when the URL's host is an IP address the filter blocks. Hostnames pass here;
    /// [`FilteringResolver`] checks what they resolve to.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        let Some(host) = url.host_str() else { return Err(format!("{url} names no host")) };
        match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) if !self.allows(ip) => Err(format!("{ip} is blocked by ip_range_blacklist")),
            _ => Ok(()),
        }
    }

    /// A reqwest client builder whose every connection goes through this filter: the resolver
    /// and a redirect policy (at most 10 hops) that checks each new URL. Requests must still be
    /// sent through [`IpFilter::send`] so that a literal first URL is checked too.
    pub fn client_builder(&self, host_overrides: HostOverrides) -> reqwest::ClientBuilder {
        let filter = self.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                attempt.error("too many redirects")
            } else if let Err(why) = filter.check_url(attempt.url()) {
                attempt.error(why)
            } else {
                attempt.follow()
            }
        });
        reqwest::Client::builder()
            .dns_resolver(Arc::new(FilteringResolver { filter: self.clone(), host_overrides }))
            .redirect(redirects)
    }

    /// [`IpFilter::client_builder`] for ordinary HTTPS (push gateways, identity servers,
    /// modules' requests): certificates checked against the public roots (reqwest is built
    /// without any of its own), or not at all when `insecure`
    /// (`use_insecure_ssl_client_just_for_testing_do_not_use`).
    pub fn web_client_builder(&self, insecure: bool) -> Result<reqwest::ClientBuilder, String> {
        Ok(self
            .client_builder(Default::default())
            .use_preconfigured_tls(crate::federation::client::web_tls_config(insecure)?))
    }

    /// Sends `request` on `client` (built by [`IpFilter::client_builder`]) once its URL
    /// passes the filter.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, String> {
        let request = request.build().map_err(|e| error_chain(&e))?;
        if let Err(why) = self.check_url(request.url()) {
            tracing::warn!(url = %request.url(), reason = %why, "outbound request refused; add the range to ip_range_whitelist to allow it");
            return Err(why);
        }
        client.execute(request).await.map_err(|e| error_chain(&e))
    }
}

/// The IPv4 address inside an IPv4-compatible (`::a.b.c.d`), IPv4-mapped (`::ffff:a.b.c.d`)
/// or 6to4 (`2002:aabb:ccdd::/48`) IPv6 address.
fn embedded_ipv4(ip: IpAddr) -> Option<std::net::Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    if s[0] == 0x2002 {
        let [a, b] = s[1].to_be_bytes();
        let [c, d] = s[2].to_be_bytes();
        return Some(std::net::Ipv4Addr::new(a, b, c, d));
    }
    // `::` and `::1` are themselves, not IPv4-compatible forms of 0.0.0.0 and 0.0.0.1.
    if v6.is_unspecified() || v6.is_loopback() {
        return None;
    }
    v6.to_ipv4()
}

/// Hostnames to resolve as another name (a server name whose SRV record points elsewhere).
pub type HostOverrides = Arc<Mutex<HashMap<String, String>>>;

/// Resolves hostnames for reqwest, keeping only the addresses the filter allows.
struct FilteringResolver {
    filter: IpFilter,
    host_overrides: HostOverrides,
}

impl reqwest::dns::Resolve for FilteringResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let filter = self.filter.clone();
        let target = self.host_overrides.lock().unwrap_or_else(|p| p.into_inner()).get(name.as_str()).cloned();
        Box::pin(async move {
            let host = target.unwrap_or_else(|| name.as_str().to_owned());
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found.into_iter().filter(|a| filter.allows(a.ip())).collect();
            if kept.is_empty() {
                tracing::warn!(host, "outbound request refused: every address is blocked by ip_range_blacklist");
                return Err(format!("{host} resolves only to blocked addresses").into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An error with its sources, for logs.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_filter() -> IpFilter {
        IpFilter {
            blocklist: crate::config::DEFAULT_IP_RANGE_BLOCKLIST.iter().filter_map(|r| IpRange::parse(r)).collect(),
            allowlist: vec![],
        }
    }

    #[test]
    fn every_spelling_of_loopback_is_blocked() {
        let filter = default_filter();
        for host in [
            "127.0.0.1",
            "127.1",
            "0x7f000001",
            "2130706433",
            "0177.0.0.1",
            "0x7f.0.0.1",
            "127.000.000.001",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
            "[0:0:0:0:0:ffff:127.0.0.1]",
            "10.1",
            "0",
            "[::]",
            "169.254.169.254",
            "[::127.0.0.1]",
            "[2002:7f00:1::1]",
            "[2002:a00:1::]",
        ] {
            let url = reqwest::Url::parse(&format!("https://{host}:8448/x")).unwrap();
            assert!(filter.check_url(&url).is_err(), "{host} ({url}) must be blocked");
        }
        let public = reqwest::Url::parse("https://1.1.1.1/x").unwrap();
        assert!(filter.check_url(&public).is_ok());
        let name = reqwest::Url::parse("https://example.org/x").unwrap();
        assert!(filter.check_url(&name).is_ok(), "hostnames are checked by the resolver");
    }

    #[test]
    fn private_ranges_are_blocked_public_ones_not() {
        let filter = default_filter();
        for blocked in ["127.0.0.1", "10.1.1.1", "192.168.0.5", "::1", "fd00::1", "169.254.1.1", "::"] {
            assert!(!filter.allows(blocked.parse().unwrap()), "{blocked}");
        }
        for open in ["8.8.8.8", "2a00:1450::1", "2002:808:808::1"] {
            assert!(filter.allows(open.parse().unwrap()), "{open}");
        }
    }

    #[test]
    fn the_allowlist_wins() {
        let mut filter = default_filter();
        filter.allowlist.push(IpRange::parse("127.0.0.0/8").unwrap());
        assert!(filter.check_url(&reqwest::Url::parse("https://127.1/").unwrap()).is_ok());
        assert!(filter.check_url(&reqwest::Url::parse("https://10.0.0.1/").unwrap()).is_err());
    }
}
