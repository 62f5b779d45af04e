//! Outbound URL safety: webhook and chat URLs come from users, so the relay must not become a
//! way to reach the fleet's own network (server-side request forgery).
//!
//! Two checks, both needed:
//!
//! - [`check_url`] when a destination is configured and before each request: only `http` and
//!   `https`, and a literal host that is not `localhost` (or `*.localhost`) nor an internal IP.
//! - [`SafeResolver`] inside the HTTP client, after DNS: a name that resolves to an internal
//!   address is refused at connection time, so DNS rebinding (a public name that later resolves
//!   to `127.0.0.1`) does not get through.
//!
//! Refused: loopback, private (10/8, 172.16/12, 192.168/16), link-local (169.254/16,
//! fe80::/10), unique-local (fc00::/7), unspecified and "this network" (0/8, `::`), multicast,
//! broadcast and reserved (240/4), CGNAT (100.64/10), the IETF, benchmarking and documentation
//! ranges, deprecated site-local (fec0::/10), and IPv6 forms that embed an IPv4 address
//! (IPv4-mapped, IPv4-compatible, NAT64 64:ff9b::/96, 6to4 2002::/16) whose IPv4 is refused.
//!
//! An [`AllowList`] lets operators open specific networks (`10.0.0.0/8`, `127.0.0.1/32`) or
//! exact host names. Errors name the host, never the whole URL (webhook URLs often carry tokens).

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Why a destination was refused.
#[derive(Debug, thiserror::Error)]
pub enum SsrfError {
    /// The URL does not parse.
    #[error("invalid URL: {0}")]
    InvalidUrl(#[from] url::ParseError),
    /// Only `http` and `https` are allowed.
    #[error("URL scheme {0:?} is not allowed (use http or https)")]
    Scheme(String),
    /// The URL has no host.
    #[error("URL has no host")]
    NoHost,
    /// The host is `localhost` or a name under `.localhost`.
    #[error("host {0:?} is a local name")]
    LocalName(String),
    /// The address is internal.
    #[error("address {ip} is not allowed ({reason})")]
    Blocked {
        /// The refused address.
        ip: IpAddr,
        /// Which range it is in.
        reason: &'static str,
    },
    /// Every address a name resolved to is internal.
    #[error("host {host:?} resolves only to addresses that are not allowed ({first})")]
    AllBlocked {
        /// The name.
        host: String,
        /// The first refused address and why.
        first: Box<SsrfError>,
    },
    /// DNS resolution failed.
    #[error("cannot resolve host {host:?}")]
    Resolve {
        /// The name.
        host: String,
        /// Cause.
        source: std::io::Error,
    },
    /// An allowlist entry is neither a CIDR, an IP address nor a host name.
    #[error("allowlist entry {0:?} is not a CIDR, an IP address or a host name")]
    BadAllowEntry(String),
}

impl SsrfError {
    /// Whether this is a refusal of the destination (as opposed to a malformed URL or a DNS
    /// failure); retrying a refused destination does not help.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Scheme(_) | Self::LocalName(_) | Self::Blocked { .. } | Self::AllBlocked { .. }
        )
    }
}

/// Networks and host names that are allowed even though they would be refused otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<IpNet>,
    hosts: Vec<String>,
}

impl AllowList {
    /// Parses entries: CIDRs (`10.0.0.0/8`, `fd00::/8`), single addresses (`127.0.0.1`, taken
    /// as /32 or /128) or exact host names (compared case-insensitively, trailing dot ignored).
    pub fn new<I, S>(entries: I) -> Result<Self, SsrfError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Self::default();
        for entry in entries {
            let raw = entry.as_ref().trim();
            if let Ok(net) = raw.parse::<IpNet>() {
                list.nets.push(net);
            } else if let Ok(ip) = raw.parse::<IpAddr>() {
                list.nets.push(IpNet::from(ip));
            } else if is_host_name(raw) {
                list.hosts.push(normalize_host(raw));
            } else {
                return Err(SsrfError::BadAllowEntry(raw.to_string()));
            }
        }
        Ok(list)
    }

    /// Whether the list is empty (nothing beyond the public internet is allowed).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty() && self.hosts.is_empty()
    }

    /// Whether `ip` lies in an allowed network.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Whether `host` is an allowed host name.
    pub fn allows_host(&self, host: &str) -> bool {
        self.hosts.contains(&normalize_host(host))
    }
}

fn is_host_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn is_local_name(host: &str) -> bool {
    host == "localhost" || host.ends_with(".localhost")
}

/// Checks a URL before use: scheme `http`/`https`, and a literal host that is allowed. Answers
/// the parsed URL, so the request is made with it (not parsed again).
///
/// A host name is only checked for `localhost` here (allowed when the name itself, or a
/// loopback address, is in `allow`); what it resolves to is [`SafeResolver`]'s job.
pub fn check_url(url: &str, allow: &AllowList) -> Result<url::Url, SsrfError> {
    let url = url::Url::parse(url)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SsrfError::Scheme(url.scheme().to_string()));
    }
    match url.host().ok_or(SsrfError::NoHost)? {
        url::Host::Ipv4(ip) => check_ip(IpAddr::V4(ip), allow)?,
        url::Host::Ipv6(ip) => check_ip(IpAddr::V6(ip), allow)?,
        url::Host::Domain(name) => {
            let name = normalize_host(name);
            let loopback_allowed = allow.allows_ip(Ipv4Addr::LOCALHOST.into())
                || allow.allows_ip(Ipv6Addr::LOCALHOST.into());
            if is_local_name(&name) && !allow.allows_host(&name) && !loopback_allowed {
                return Err(SsrfError::LocalName(name));
            }
        }
    }
    Ok(url)
}

/// Checks one address (literal or resolved) against the refused ranges and the allowlist.
pub fn check_ip(ip: IpAddr, allow: &AllowList) -> Result<(), SsrfError> {
    if allow.allows_ip(ip) {
        return Ok(());
    }
    match blocked_reason(ip) {
        Some(reason) => Err(SsrfError::Blocked { ip, reason }),
        None => Ok(()),
    }
}

fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_broadcast() => "broadcast",
        (0, _, _) => "unspecified or this network",
        (127, _, _) => "loopback",
        (10, _, _) => "private",
        (172, 16..=31, _) => "private",
        (192, 168, _) => "private",
        (169, 254, _) => "link-local",
        (100, 64..=127, _) => "carrier-grade NAT",
        (192, 0, 0) => "IETF protocol assignments",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // IPv6 forms carrying an IPv4 address are judged by that address.
    let embedded = match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some((hi, lo)), // IPv4-mapped
        [0, 0, 0, 0, 0, 0, hi, lo] => Some((hi, lo)),      // IPv4-compatible (deprecated)
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some((hi, lo)), // NAT64
        [0x2002, hi, lo, ..] => Some((hi, lo)),            // 6to4
        _ => None,
    };
    if let Some((hi, lo)) = embedded {
        let v4 = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
        return v4_reason(v4);
    }
    Some(match s[0] {
        x if x & 0xffc0 == 0xfe80 => "link-local",
        x if x & 0xffc0 == 0xfec0 => "site-local",
        x if x & 0xfe00 == 0xfc00 => "unique-local",
        x if x & 0xff00 == 0xff00 => "multicast",
        0x2001 if s[1] == 0x0db8 => "documentation",
        _ => return None,
    })
}

/// A DNS resolver that drops internal addresses and refuses a name that resolves only to
/// internal addresses. Names in the allowlist resolve unfiltered.
///
/// The hardened client ([`super::client::hardened`]) connects through it, with no proxy
/// (through a proxy, the proxy resolves names and this resolver is never asked) and following
/// no redirects (a redirect target is a new, unchecked URL). It does not see URLs with a
/// literal IP (the connector connects to those directly): check those with [`check_url`].
#[derive(Debug, Clone, Default)]
pub struct SafeResolver {
    allow: Arc<AllowList>,
}

impl SafeResolver {
    /// A resolver that lets through what `allow` allows, and public addresses.
    pub fn new(allow: AllowList) -> Self {
        Self {
            allow: Arc::new(allow),
        }
    }

    /// Resolves `host` with the system resolver and keeps the allowed addresses (port 0).
    pub async fn resolve_host(&self, host: &str) -> Result<Vec<SocketAddr>, SsrfError> {
        let resolved =
            tokio::net::lookup_host((host, 0))
                .await
                .map_err(|source| SsrfError::Resolve {
                    host: host.to_string(),
                    source,
                })?;
        if self.allow.allows_host(host) {
            return Ok(resolved.collect());
        }
        let mut first_refusal = None;
        let mut kept = Vec::new();
        for addr in resolved {
            match check_ip(addr.ip(), &self.allow) {
                Ok(()) => kept.push(addr),
                Err(e) => {
                    first_refusal.get_or_insert(e);
                }
            }
        }
        match (kept.is_empty(), first_refusal) {
            (false, _) => Ok(kept),
            (true, Some(first)) => Err(SsrfError::AllBlocked {
                host: host.to_string(),
                first: Box::new(first),
            }),
            (true, None) => Err(SsrfError::Resolve {
                host: host.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
            }),
        }
    }
}

/// The resolver of the hardened client's connector ([`super::client`]): the host's allowed
/// addresses (port 0: the connector puts the URL's).
impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for SafeResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = SsrfError;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, SsrfError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), SsrfError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.resolve_host(name.as_str()).await?.into_iter()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> AllowList {
        AllowList::default()
    }

    fn refused(ip: &str) -> bool {
        check_ip(ip.parse().unwrap(), &none()).is_err()
    }

    #[test]
    fn internal_ipv4_ranges_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "239.255.255.255",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "203.0.113.7",
        ] {
            assert!(refused(ip), "{ip} was allowed");
        }
    }

    #[test]
    fn public_ipv4_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "93.184.216.34",
        ] {
            assert!(!refused(ip), "{ip} was refused");
        }
    }

    #[test]
    fn internal_ipv6_ranges_and_embedded_ipv4_are_refused() {
        for ip in [
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "fec0::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
        ] {
            assert!(refused(ip), "{ip} was allowed");
        }
        for ip in [
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert!(!refused(ip), "{ip} was refused");
        }
    }

    #[test]
    fn the_allowlist_opens_cidrs_single_addresses_and_host_names() {
        let allow =
            AllowList::new(["127.0.0.1/32", "10.0.0.0/8", "fd00::1", "Hooks.Internal."]).unwrap();
        assert!(check_ip("127.0.0.1".parse().unwrap(), &allow).is_ok());
        assert!(check_ip("127.0.0.2".parse().unwrap(), &allow).is_err());
        assert!(check_ip("10.200.0.1".parse().unwrap(), &allow).is_ok());
        assert!(check_ip("fd00::1".parse().unwrap(), &allow).is_ok());
        assert!(check_ip("fd00::2".parse().unwrap(), &allow).is_err());
        assert!(allow.allows_host("hooks.internal"));
        assert!(!allow.allows_host("other.internal"));
        assert!(!allow.is_empty() && none().is_empty());
    }

    #[test]
    fn a_malformed_allowlist_entry_is_refused() {
        for bad in ["10.0.0.0/33", "http://x", "", "a b"] {
            let err = AllowList::new([bad]).unwrap_err();
            assert!(matches!(err, SsrfError::BadAllowEntry(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn only_http_and_https_urls_pass() {
        assert!(check_url("https://example.com/hook", &none()).is_ok());
        assert!(check_url("http://example.com:8080/hook", &none()).is_ok());
        for url in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "gopher://example.com/",
        ] {
            let err = check_url(url, &none()).unwrap_err();
            assert!(matches!(err, SsrfError::Scheme(_)), "{url}: {err}");
        }
        assert!(matches!(
            check_url("not a url", &none()),
            Err(SsrfError::InvalidUrl(_))
        ));
    }

    #[test]
    fn literal_internal_hosts_in_urls_are_refused_in_every_spelling() {
        for url in [
            "http://127.0.0.1/",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://017700000001/",
            "http://169.254.169.254/latest/meta-data/",
            "http://localhost:3000/",
            "http://LOCALHOST./",
            "http://api.localhost/",
            "http://0.0.0.0/",
        ] {
            let err = check_url(url, &none()).unwrap_err();
            assert!(err.is_refusal(), "{url}: {err}");
        }
    }

    #[test]
    fn localhost_is_allowed_by_name_or_by_a_loopback_entry() {
        let by_cidr = AllowList::new(["127.0.0.1/32"]).unwrap();
        assert!(check_url("http://localhost:3000/", &by_cidr).is_ok());
        assert!(check_url("http://127.0.0.1:3000/", &by_cidr).is_ok());
        let by_name = AllowList::new(["localhost"]).unwrap();
        assert!(check_url("http://localhost/", &by_name).is_ok());
    }

    #[test]
    fn errors_name_the_host_but_never_the_path_or_query() {
        let url = "http://localhost/api/webhooks/123/SECRET-TOKEN?key=SECRET";
        let err = check_url(url, &none()).unwrap_err().to_string();
        assert!(
            err.contains("localhost") && !err.contains("SECRET"),
            "{err}"
        );
        let err = check_url("ftp://x/SECRET", &none())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[tokio::test]
    async fn resolving_localhost_is_refused_without_an_allowlist() {
        let err = SafeResolver::default()
            .resolve_host("localhost")
            .await
            .unwrap_err();
        assert!(matches!(err, SsrfError::AllBlocked { .. }), "{err}");
        assert!(err.is_refusal());
    }

    #[tokio::test]
    async fn resolving_localhost_keeps_only_the_allowed_loopback_address() {
        let resolver = SafeResolver::new(AllowList::new(["127.0.0.1/32"]).unwrap());
        let addrs = resolver.resolve_host("localhost").await.unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip() == IpAddr::from(Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );
    }

    #[tokio::test]
    async fn an_allowed_host_name_resolves_unfiltered() {
        let resolver = SafeResolver::new(AllowList::new(["localhost"]).unwrap());
        let addrs = resolver.resolve_host("localhost").await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
