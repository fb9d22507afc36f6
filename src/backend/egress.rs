//! The egress proxy of web-fetching runs: the CLI's WebFetch fetches a URL the model picked
//! from this host (axios, after a domain check against api.anthropic.com), so a run that
//! may fetch gets `HTTPS_PROXY` / `HTTP_PROXY` pointing here ([`super::RunOptions::env`]).
//! The CLI upgrades `http://` to `https://` and tunnels every such connection with
//! `CONNECT host:port`; this proxy resolves the name once, refuses the tunnel when any
//! address it resolves to is not a public unicast address (loopback, private, link-local,
//! CGNAT, multicast, documentation, IPv4-mapped or NAT64 forms of those …) or when the name
//! does not resolve (nothing checked, nothing opened), and otherwise connects to exactly
//! the address it checked (no second lookup a DNS rebinding could change). A refusal is
//! `403` with `x-proxy-error: blocked-by-allowlist`, which the CLI reports to the model as
//! `EGRESS_BLOCKED`. Anything but `CONNECT` is refused with `405`.
//!
//! **Behind the operator's proxy** ([`EgressRoute`]: `web.upstream_proxy`, else
//! `HTTPS_PROXY` / `https_proxy` of ccgate's environment): a tunnel that passed the check
//! is opened with `CONNECT host:port` through that proxy (with the Basic credentials of its
//! URL, never logged), unless ccgate's `NO_PROXY` names the host (then directly, to the
//! checked address). The upstream proxy resolves the name again, so there the address is
//! the proxy's answer, not the one checked (docs/web-tools.md). The runs' API host
//! (`ANTHROPIC_BASE_URL`, or api.anthropic.com) is operator configuration, not a URL the
//! model picked: with an upstream proxy a run sends its API traffic here too, and such a
//! tunnel is not checked and not resolved here; it goes through the upstream proxy by name
//! (directly when `NO_PROXY` names it).
//!
//! Bounded: at most [`MAX_TUNNELS`] tunnels at once (more get `503`), an 8 KiB request
//! head read within 10 s, lookups, connects and the upstream's answer within 10 s each, a
//! tunnel at most 5 minutes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Tunnels open at once.
pub const MAX_TUNNELS: usize = 64;
const HEAD_LIMIT: usize = 8 * 1024;
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
const TUNNEL_LIMIT: Duration = Duration::from_secs(300);

/// What the proxy has done: the metrics' own counters (`ccgate_web_fetch_tunnels_total`,
/// `ccgate_web_fetch_refused_total`), shared.
#[derive(Debug, Default, Clone)]
pub struct EgressStats {
    /// Tunnels opened to a public address.
    pub tunnels: prometheus_client::metrics::counter::Counter,
    /// Tunnels refused: the destination resolved to a non-public address.
    pub refused: prometheus_client::metrics::counter::Counter,
}

/// The operator's HTTP proxy the egress proxy tunnels through (`http://[user:pass@]host:port`).
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamProxy {
    host: String,
    port: u16,
    /// `Proxy-Authorization` value (`Basic …`), from the URL's credentials.
    authorization: Option<String>,
}

/// Never the credentials.
impl std::fmt::Debug for UpstreamProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpstreamProxy({})", self.shown())
    }
}

impl UpstreamProxy {
    /// `http://[user[:password]@]host[:port][/]` (no scheme: `http://`; the port defaults
    /// to 80). The error never repeats the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<UpstreamProxy, String> {
        let url = url.trim();
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "the proxy URL's scheme must be http:// (a `{}` proxy is not supported)",
                    scheme.chars().take(16).collect::<String>()
                ))
            }
            None => url,
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err("the proxy URL must be http://[user:password@]host:port".into());
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = match split_host_port(hostport) {
            Some((h, p)) => (h.to_string(), p),
            None if !hostport.is_empty() && !hostport.contains(':') => (hostport.to_string(), 80),
            None if hostport.starts_with('[') && hostport.ends_with(']') => {
                (hostport[1..hostport.len() - 1].to_string(), 80)
            }
            None => return Err("the proxy URL has no valid host and port".into()),
        };
        let authorization = match userinfo {
            None => None,
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                let (Some(user), Some(pass)) = (percent_decode(user), percent_decode(pass)) else {
                    return Err("the proxy URL's credentials are not valid percent-encoding".into());
                };
                use base64::Engine as _;
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{pass}").as_bytes());
                Some(format!("Basic {token}"))
            }
        };
        Ok(UpstreamProxy {
            host,
            port,
            authorization,
        })
    }

    /// `host:port`, for logs and errors.
    pub fn shown(&self) -> String {
        format!("{}:{}", bracketed(&self.host), self.port)
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// `%XX` decoded (None: a bad escape or not UTF-8).
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// The hosts `NO_PROXY` names (curl's reading): `*` for all; `name` or `.name` for the
/// name and its subdomains; an IP address or a CIDR range for addresses written as such;
/// each optionally with `:port`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy(Vec<String>);

impl NoProxy {
    pub fn parse(list: &str) -> NoProxy {
        NoProxy(
            list.split([',', ' ', '\t', '\n'])
                .map(|e| e.trim().to_ascii_lowercase())
                .filter(|e| !e.is_empty())
                .collect(),
        )
    }

    /// Whether `host:port` is reached without the upstream proxy.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.0.iter().any(|entry| {
            if entry == "*" {
                return true;
            }
            // A bare IPv6 address or range (`::1`, `fd00::/8`) has no port.
            let bare_v6 = !entry.starts_with('[') && entry.matches(':').count() > 1;
            let (name, entry_port) = match split_host_port(entry) {
                Some((h, p)) if !bare_v6 => (h, Some(p)),
                _ => (entry.trim_start_matches('[').trim_end_matches(']'), None),
            };
            if entry_port.is_some_and(|p| p != port) {
                return false;
            }
            if let (Some((net, bits)), Ok(ip)) = (name.split_once('/'), host.parse::<IpAddr>()) {
                return in_cidr(ip, net, bits);
            }
            let name = name.trim_start_matches('*').trim_start_matches('.');
            !name.is_empty()
                && (host == name
                    || host
                        .strip_suffix(name)
                        .is_some_and(|rest| rest.ends_with('.')))
        })
    }
}

fn in_cidr(ip: IpAddr, net: &str, bits: &str) -> bool {
    let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Where the egress proxy sends what it lets through.
#[derive(Debug, Clone, Default)]
pub struct EgressRoute {
    /// The operator's proxy (None: connect directly).
    pub upstream: Option<UpstreamProxy>,
    /// ccgate's `NO_PROXY`: hosts reached directly even with an upstream proxy.
    pub no_proxy: NoProxy,
    /// The runs' API hosts (`host:port`, lowercase): tunnels to them are operator
    /// configuration, not checked.
    pub api: Vec<(String, u16)>,
}

impl EgressRoute {
    /// The route from the setting (`web.upstream_proxy`), else ccgate's environment
    /// (`HTTPS_PROXY`, `https_proxy`; `NO_PROXY`, `no_proxy`), and the runs' API base URLs
    /// (api.anthropic.com is always one: the CLI's own domain check goes there).
    pub fn new(
        setting: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        api_bases: &[String],
    ) -> Result<EgressRoute, String> {
        let from_env = || {
            ["HTTPS_PROXY", "https_proxy"]
                .iter()
                .find_map(|k| env(k).filter(|v| !v.trim().is_empty()).map(|v| (*k, v)))
        };
        let upstream = match setting.filter(|s| !s.trim().is_empty()) {
            Some(url) => {
                Some(UpstreamProxy::parse(url).map_err(|e| format!("web.upstream_proxy: {e}"))?)
            }
            None => match from_env() {
                Some((k, url)) => Some(
                    UpstreamProxy::parse(&url)
                        .map_err(|e| format!("{k} (ccgate's environment): {e}"))?,
                ),
                None => None,
            },
        };
        let no_proxy = ["NO_PROXY", "no_proxy"]
            .iter()
            .filter_map(|k| env(k))
            .map(|v| NoProxy::parse(&v).0)
            .fold(NoProxy::default(), |mut all, mut more| {
                all.0.append(&mut more);
                all
            });
        let mut api = vec![("api.anthropic.com".to_string(), 443)];
        for base in api_bases {
            if let Some((h, p)) = super::options::api_host_port(base)
                .as_deref()
                .and_then(split_host_port)
            {
                let target = (h.to_ascii_lowercase(), p);
                if !api.contains(&target) {
                    api.push(target);
                }
            }
        }
        Ok(EgressRoute {
            upstream,
            no_proxy,
            api,
        })
    }

    fn is_api(&self, host: &str, port: u16) -> bool {
        self.api
            .iter()
            .any(|(h, p)| *p == port && h.eq_ignore_ascii_case(host))
    }
}

/// A running egress proxy on `127.0.0.1`; stops when dropped.
pub struct EgressProxy {
    addr: SocketAddr,
    stats: Arc<EgressStats>,
    upstream: bool,
    task: tokio::task::JoinHandle<()>,
}

impl EgressProxy {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub fn start(stats: EgressStats, route: EgressRoute) -> std::io::Result<EgressProxy> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| std::io::Error::other(format!("egress proxy: {e}")))?;
        let stats = Arc::new(stats);
        let upstream = route.upstream.is_some();
        if let Some(u) = &route.upstream {
            tracing::info!(upstream = %u.shown(), "egress proxy: web fetches and the runs' API traffic go through the upstream proxy");
        }
        let task = {
            let _guard = runtime.enter();
            let listener = TcpListener::from_std(std_listener)?;
            runtime.spawn(serve(listener, Arc::clone(&stats), Arc::new(route)))
        };
        Ok(EgressProxy {
            addr,
            stats,
            upstream,
            task,
        })
    }

    /// `http://127.0.0.1:<port>`: the value of a fetching run's proxy variables.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether tunnels go through the operator's proxy (then a run's API traffic comes
    /// here too, to go on through it).
    pub fn has_upstream(&self) -> bool {
        self.upstream
    }

    pub fn stats(&self) -> &Arc<EgressStats> {
        &self.stats
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, stats: Arc<EgressStats>, route: Arc<EgressRoute>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TUNNELS));
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = reply(&mut conn, "503 Service Unavailable", None).await;
            });
            continue;
        };
        let stats = Arc::clone(&stats);
        let route = Arc::clone(&route);
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(TUNNEL_LIMIT, tunnel(conn, &stats, &route)).await;
        });
    }
}

async fn reply(conn: &mut TcpStream, status: &str, header: Option<&str>) -> std::io::Result<()> {
    let extra = header.map(|h| format!("{h}\r\n")).unwrap_or_default();
    let head =
        format!("HTTP/1.1 {status}\r\n{extra}content-length: 0\r\nconnection: close\r\n\r\n");
    conn.write_all(head.as_bytes()).await?;
    conn.shutdown().await
}

/// Reads an HTTP head (up to the blank line, at most [`HEAD_LIMIT`]) within
/// [`STEP_TIMEOUT`]: the head and what came after it.
async fn read_head(conn: &mut TcpStream) -> std::io::Result<(Vec<u8>, usize)> {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(STEP_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() > HEAD_LIMIT {
                return Err(std::io::Error::other("head too large"));
            }
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(())
    })
    .await;
    match read {
        Ok(Ok(())) => {
            let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
            Ok((head, end))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

async fn resolve(host: &str, port: u16) -> Vec<SocketAddr> {
    match tokio::time::timeout(STEP_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(a)) => a.collect(),
        _ => Vec::new(),
    }
}

/// One client connection: its `CONNECT`, checked, then the tunnel.
async fn tunnel(
    mut conn: TcpStream,
    stats: &EgressStats,
    route: &EgressRoute,
) -> std::io::Result<()> {
    let Ok((head, end)) = read_head(&mut conn).await else {
        return reply(&mut conn, "400 Bad Request", None).await;
    };
    let first = String::from_utf8_lossy(&head[..end]);
    let first = first.lines().next().unwrap_or("");
    let mut parts = first.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return reply(&mut conn, "400 Bad Request", None).await;
    };
    if method != "CONNECT" {
        return reply(&mut conn, "405 Method Not Allowed", Some("allow: CONNECT")).await;
    }
    let Some((host, port)) = split_host_port(target) else {
        return reply(&mut conn, "400 Bad Request", None).await;
    };
    let api = route.is_api(host, port);
    let direct = route.upstream.is_none() || route.no_proxy.matches(host, port);
    // The check: every address the name resolves to here must be public. A name that
    // does not resolve here is refused: nothing could be checked (with an upstream proxy
    // it might resolve there, possibly to an address this host must not reach).
    let checked = if api {
        None
    } else {
        let addrs = resolve(host, port).await;
        if addrs.is_empty() {
            return reply(&mut conn, "502 Bad Gateway", None).await;
        }
        if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
            stats.refused.inc();
            tracing::warn!(destination = %target, address = %bad.ip(), "egress proxy: refused a web fetch to a non-public address");
            return reply(
                &mut conn,
                "403 Forbidden",
                Some("x-proxy-error: blocked-by-allowlist"),
            )
            .await;
        }
        Some(addrs[0])
    };
    let opened = match (&route.upstream, direct) {
        (Some(upstream), false) => through(upstream, host, port).await,
        _ => {
            let addr = match checked {
                Some(a) => Some(a),
                None => resolve(host, port).await.first().copied(),
            };
            match addr {
                Some(addr) => tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|s| (s, Vec::new())),
                None => None,
            }
        }
    };
    let Some((mut upstream, early)) = opened else {
        return reply(&mut conn, "502 Bad Gateway", None).await;
    };
    if !api {
        stats.tunnels.inc();
    }
    conn.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await?;
    // Bytes the upstream proxy sent after its answer's head (none, as it must).
    if !early.is_empty() {
        conn.write_all(&early).await?;
    }
    // Bytes the client sent after the head (none when it waits for the 200, as it must).
    if head.len() > end {
        upstream.write_all(&head[end..]).await?;
    }
    tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
    Ok(())
}

/// A tunnel to `host:port` through the operator's proxy (by name: it resolves it again),
/// and what it sent after its `200` (None: unreachable or refused; logged without its
/// credentials).
async fn through(upstream: &UpstreamProxy, host: &str, port: u16) -> Option<(TcpStream, Vec<u8>)> {
    let connect = tokio::time::timeout(
        STEP_TIMEOUT,
        TcpStream::connect((upstream.host.as_str(), upstream.port)),
    )
    .await;
    let Ok(Ok(mut s)) = connect else {
        tracing::warn!(upstream = %upstream.shown(), "egress proxy: cannot reach the upstream proxy");
        return None;
    };
    let target = format!("{}:{port}", bracketed(host));
    let auth = upstream
        .authorization
        .as_deref()
        .map(|a| format!("proxy-authorization: {a}\r\n"))
        .unwrap_or_default();
    let ask = format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n{auth}\r\n");
    if s.write_all(ask.as_bytes()).await.is_err() {
        return None;
    }
    let Ok((head, end)) = read_head(&mut s).await else {
        tracing::warn!(upstream = %upstream.shown(), "egress proxy: no answer from the upstream proxy");
        return None;
    };
    let status = String::from_utf8_lossy(&head[..end])
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    if !status.starts_with('2') || status.len() != 3 {
        tracing::warn!(upstream = %upstream.shown(), destination = %target, status = %status.chars().take(3).collect::<String>(), "egress proxy: the upstream proxy refused a tunnel");
        return None;
    }
    Some((s, head[end..].to_vec()))
}

/// `host:port` / `[v6]:port` of a `CONNECT` target.
fn split_host_port(target: &str) -> Option<(&str, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

/// Whether `ip` is a public unicast address a web fetch may reach.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                  // "this network"
        || a == 10                            // private
        || a == 127                           // loopback
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 169 && b == 254)             // link-local
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)     // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)     // documentation
        || (a == 192 && b == 88 && c == 99)   // 6to4 relay anycast
        || (a == 192 && b == 168)             // private
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100)  // documentation
        || (a == 203 && b == 0 && c == 113)   // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return is_public_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || s[0..6] == [0, 0, 0, 0, 0, 0]      // IPv4-compatible (deprecated)
        || (s[0] & 0xfe00) == 0xfc00          // unique local
        || (s[0] & 0xffc0) == 0xfe80          // link-local
        || (s[0] & 0xffc0) == 0xfec0          // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00          // multicast
        || (s[0] == 0x2001 && s[1] == 0)      // Teredo
        || (s[0] == 0x2001 && s[1] == 0xdb8)  // documentation
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0])) // discard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_pass() {
        for bad in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad} passed");
        }
        for good in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(is_public(good.parse().unwrap()), "{good} refused");
        }
    }

    #[test]
    fn connect_targets_split() {
        assert_eq!(
            split_host_port("example.com:443"),
            Some(("example.com", 443))
        );
        assert_eq!(split_host_port("[::1]:8443"), Some(("::1", 8443)));
        assert_eq!(split_host_port("example.com"), None);
        assert_eq!(split_host_port(":443"), None);
    }

    async fn ask(proxy: &EgressProxy, head: &str) -> String {
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        c.write_all(head.as_bytes()).await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_tunnel_to_loopback_is_refused_and_never_connects() {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = target.local_addr().unwrap().port();
        let proxy = EgressProxy::start(EgressStats::default(), EgressRoute::default()).unwrap();
        for host in ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"] {
            let answer = ask(
                &proxy,
                &format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"),
            )
            .await;
            assert!(answer.starts_with("HTTP/1.1 403"), "{host}: {answer}");
            assert!(
                answer.contains("x-proxy-error: blocked-by-allowlist"),
                "{answer}"
            );
        }
        assert_eq!(proxy.stats().refused.get(), 3);
        assert_eq!(proxy.stats().tunnels.get(), 0);
        // No connection reached the target.
        let accepted = tokio::time::timeout(Duration::from_millis(1), target.accept()).await;
        assert!(accepted.is_err(), "the loopback target was reached");
        let answer = ask(
            &proxy,
            &format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    }
}

#[cfg(test)]
mod upstream_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// A fake operator's proxy: counts connections, keeps each request head, answers
    /// `status`, and with a 2xx echoes the tunnel's bytes.
    struct FakeUpstream {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
        heads: Arc<Mutex<Vec<String>>>,
    }

    async fn fake_upstream(status: &'static str) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c, h) = (Arc::clone(&connections), Arc::clone(&heads));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let h = Arc::clone(&h);
                tokio::spawn(async move {
                    let Ok((head, end)) = read_head(&mut s).await else {
                        return;
                    };
                    h.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head[..end]).into_owned());
                    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    let _ = s.write_all(answer.as_bytes()).await;
                    if status.starts_with('2') {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                });
            }
        });
        FakeUpstream {
            addr,
            connections,
            heads,
        }
    }

    fn route_via(upstream: &FakeUpstream, userinfo: &str) -> EgressRoute {
        EgressRoute {
            upstream: Some(
                UpstreamProxy::parse(&format!("http://{userinfo}{}", upstream.addr)).unwrap(),
            ),
            ..EgressRoute::default()
        }
    }

    /// Sends a `CONNECT`, returns the answer's head and the open stream.
    async fn connect(proxy: &EgressProxy, target: &str) -> (String, TcpStream) {
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        c.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (head, end) = read_head(&mut c).await.unwrap();
        (String::from_utf8_lossy(&head[..end]).into_owned(), c)
    }

    #[tokio::test]
    async fn a_public_target_tunnels_through_the_upstream_proxy_with_its_credentials() {
        let up = fake_upstream("200 Connection established").await;
        let proxy =
            EgressProxy::start(EgressStats::default(), route_via(&up, "ops:p%40ss@")).unwrap();
        assert!(proxy.has_upstream());
        // A public address (no lookup needed): checked here, opened by the upstream.
        let (answer, mut c) = connect(&proxy, "1.1.1.1:443").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        c.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        c.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        let heads = up.heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 1);
        assert!(
            heads[0].starts_with("CONNECT 1.1.1.1:443 HTTP/1.1\r\n"),
            "{heads:?}"
        );
        // Basic base64("ops:p@ss").
        assert!(
            heads[0].contains("proxy-authorization: Basic b3BzOnBAc3M=\r\n"),
            "{heads:?}"
        );
        assert_eq!(proxy.stats().tunnels.get(), 1);
        // IPv6 targets keep their brackets.
        let (answer, _c) = connect(&proxy, "[2606:4700::1111]:443").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(up.heads.lock().unwrap()[1].starts_with("CONNECT [2606:4700::1111]:443 "));
    }

    #[tokio::test]
    async fn a_private_target_is_refused_before_the_upstream_proxy_is_reached() {
        let up = fake_upstream("200 Connection established").await;
        let proxy = EgressProxy::start(EgressStats::default(), route_via(&up, "")).unwrap();
        let targets = [
            "127.0.0.1:8080",
            "localhost:8080",
            "10.1.2.3:443",
            "192.168.0.1:443",
            "169.254.169.254:80",
            "[::1]:443",
            "[fd00::1]:443",
            "[::ffff:10.0.0.1]:443",
        ];
        for target in targets {
            let (answer, _) = connect(&proxy, target).await;
            assert!(answer.starts_with("HTTP/1.1 403"), "{target}: {answer}");
            assert!(answer.contains("x-proxy-error: blocked-by-allowlist"));
        }
        // A name that does not resolve here cannot be checked: refused, never forwarded
        // for the upstream proxy to resolve.
        let (answer, _) = connect(&proxy, "no-such-host.invalid:443").await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
        assert_eq!(up.connections.load(Ordering::SeqCst), 0);
        assert_eq!(proxy.stats().refused.get(), targets.len() as u64);
        assert_eq!(proxy.stats().tunnels.get(), 0);
    }

    #[tokio::test]
    async fn the_api_host_goes_through_the_upstream_by_name_unless_no_proxy_names_it() {
        let up = fake_upstream("200 Connection established").await;
        let mut route = route_via(&up, "");
        route.api = vec![("api.example.invalid".into(), 443), ("127.0.0.1".into(), 1)];
        let proxy = EgressProxy::start(EgressStats::default(), route).unwrap();
        // Not resolved here (it would not resolve): the operator's proxy resolves it.
        let (answer, _c) = connect(&proxy, "API.example.invalid:443").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(up.heads.lock().unwrap()[0].starts_with("CONNECT API.example.invalid:443 "));
        // Only that host and port: another port is a fetch, checked.
        let (answer, _) = connect(&proxy, "api.example.invalid:444").await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
        // Not counted as a fetch tunnel.
        assert_eq!(proxy.stats().tunnels.get(), 0);

        // With NO_PROXY naming the API host, it is reached directly.
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = api.local_addr().unwrap().port();
        let mut route = route_via(&up, "");
        route.api = vec![("127.0.0.1".into(), port)];
        route.no_proxy = NoProxy::parse("localhost, 127.0.0.0/8");
        let proxy = EgressProxy::start(EgressStats::default(), route).unwrap();
        let (answer, _c) = connect(&proxy, &format!("127.0.0.1:{port}")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tokio::time::timeout(Duration::from_secs(30), api.accept())
            .await
            .expect("the API host was not reached directly")
            .unwrap();
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_upstream_refusal_is_a_502() {
        let up = fake_upstream("407 Proxy Authentication Required").await;
        let proxy = EgressProxy::start(EgressStats::default(), route_via(&up, "a:b@")).unwrap();
        let (answer, _) = connect(&proxy, "1.1.1.1:443").await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
        assert_eq!(proxy.stats().tunnels.get(), 0);
    }

    #[test]
    fn upstream_urls_parse_without_repeating_credentials() {
        let p = UpstreamProxy::parse("http://user:s%3Acret@proxy.corp:3128/").unwrap();
        assert_eq!(p.shown(), "proxy.corp:3128");
        assert_eq!(
            p.authorization.as_deref(),
            Some("Basic dXNlcjpzOmNyZXQ=") // user:s:cret
        );
        assert!(!format!("{p:?}").contains("cret"));
        let p = UpstreamProxy::parse("proxy.corp:8080").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.authorization),
            ("proxy.corp", 8080, None)
        );
        assert_eq!(UpstreamProxy::parse("http://proxy").unwrap().port, 80);
        assert_eq!(
            UpstreamProxy::parse("http://[::1]:3128").unwrap().shown(),
            "[::1]:3128"
        );
        for bad in [
            "https://u:secret@proxy:443",
            "socks5://proxy:1080",
            "http://u:secret@proxy:3128/path",
            "http://u:secret@proxy:notaport",
            "http://u:%zz@proxy:1",
            "",
        ] {
            let e = UpstreamProxy::parse(bad).unwrap_err();
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn no_proxy_reads_as_curl_does() {
        let n = NoProxy::parse(".corp.example, internal.test:8443 10.0.0.0/8,[::1], localhost");
        assert!(n.matches("wiki.corp.example", 443));
        assert!(n.matches("corp.example", 443));
        assert!(!n.matches("notcorp.example", 443));
        assert!(n.matches("internal.test", 8443));
        assert!(!n.matches("internal.test", 443));
        assert!(n.matches("a.internal.test", 8443));
        assert!(n.matches("10.2.3.4", 80));
        assert!(!n.matches("11.2.3.4", 80));
        assert!(n.matches("::1", 443));
        assert!(n.matches("LOCALHOST", 1));
        assert!(!n.matches("example.com", 443));
        let v6 = NoProxy::parse("::1 fd00::/8 [2001:db8::1]:443");
        assert!(v6.matches("::1", 8080) && v6.matches("fd12::1", 1));
        assert!(v6.matches("2001:db8::1", 443) && !v6.matches("2001:db8::1", 80));
        assert!(NoProxy::parse("*").matches("anything", 1));
        assert!(!NoProxy::parse("").matches("anything", 1));
    }

    #[test]
    fn the_route_comes_from_the_setting_else_the_environment() {
        let env = |k: &str| match k {
            "https_proxy" => Some("http://envproxy:3128".to_string()),
            "NO_PROXY" => Some("internal.test".to_string()),
            _ => None,
        };
        let r = EgressRoute::new(None, &env, &["https://llm.corp:8443/v1".into()]).unwrap();
        assert_eq!(r.upstream.as_ref().unwrap().shown(), "envproxy:3128");
        assert!(r.no_proxy.matches("internal.test", 443));
        assert!(r.is_api("api.anthropic.com", 443) && r.is_api("LLM.corp", 8443));
        let r = EgressRoute::new(Some("http://cfg:1"), &env, &[]).unwrap();
        assert_eq!(r.upstream.unwrap().shown(), "cfg:1");
        let none = |_: &str| None;
        assert!(EgressRoute::new(None, &none, &[])
            .unwrap()
            .upstream
            .is_none());
        let e = EgressRoute::new(Some("https://u:pw@x:1"), &none, &[]).unwrap_err();
        assert!(
            e.starts_with("web.upstream_proxy:") && !e.contains("pw"),
            "{e}"
        );
        let bad_env = |k: &str| (k == "HTTPS_PROXY").then(|| "socks5://x:1".to_string());
        let e = EgressRoute::new(None, &bad_env, &[]).unwrap_err();
        assert!(e.starts_with("HTTPS_PROXY"), "{e}");
    }
}
