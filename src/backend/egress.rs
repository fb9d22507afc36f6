//! The egress proxy of web-fetching runs: the CLI's WebFetch fetches a URL the model picked
//! from this host (axios, after a domain check against api.anthropic.com), so a run that
//! may fetch gets `HTTPS_PROXY` / `HTTP_PROXY` pointing here and only its API host in
//! `NO_PROXY` ([`super::RunOptions::env`]). The CLI upgrades `http://` to `https://` and
//! tunnels every such connection with `CONNECT host:port`; this proxy resolves the name
//! once, refuses the tunnel when any address it resolves to is not a public unicast
//! address (loopback, private, link-local, CGNAT, multicast, documentation, IPv4-mapped
//! or NAT64 forms of those …), and otherwise connects to exactly the address it checked
//! (no second lookup a DNS rebinding could change). A refusal is `403` with
//! `x-proxy-error: blocked-by-allowlist`, which the CLI reports to the model as
//! `EGRESS_BLOCKED`. Anything but `CONNECT` is refused with `405`.
//!
//! Bounded: at most [`MAX_TUNNELS`] tunnels at once (more get `503`), an 8 KiB request
//! head read within 10 s, lookups and connects within 10 s, a tunnel at most 5 minutes.

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

/// A running egress proxy on `127.0.0.1`; stops when dropped.
pub struct EgressProxy {
    addr: SocketAddr,
    stats: Arc<EgressStats>,
    task: tokio::task::JoinHandle<()>,
}

impl EgressProxy {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub fn start(stats: EgressStats) -> std::io::Result<EgressProxy> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| std::io::Error::other(format!("egress proxy: {e}")))?;
        let stats = Arc::new(stats);
        let task = {
            let _guard = runtime.enter();
            let listener = TcpListener::from_std(std_listener)?;
            runtime.spawn(serve(listener, Arc::clone(&stats)))
        };
        Ok(EgressProxy { addr, stats, task })
    }

    /// `http://127.0.0.1:<port>`: the value of a fetching run's proxy variables.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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

async fn serve(listener: TcpListener, stats: Arc<EgressStats>) {
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
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(TUNNEL_LIMIT, tunnel(conn, &stats)).await;
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

/// One client connection: its `CONNECT`, checked, then the tunnel.
async fn tunnel(mut conn: TcpStream, stats: &EgressStats) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(STEP_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() > HEAD_LIMIT {
                return Err(std::io::Error::other("request head too large"));
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
    if !matches!(read, Ok(Ok(()))) {
        return reply(&mut conn, "400 Bad Request", None).await;
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
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
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(STEP_TIMEOUT, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(a)) => a.collect(),
            _ => Vec::new(),
        };
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
    let upstream = match tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addrs[0])).await {
        Ok(Ok(s)) => s,
        _ => return reply(&mut conn, "502 Bad Gateway", None).await,
    };
    stats.tunnels.inc();
    conn.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await?;
    let mut upstream = upstream;
    // Bytes the client sent after the head (none when it waits for the 200, as it must).
    if head.len() > end {
        upstream.write_all(&head[end..]).await?;
    }
    tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
    Ok(())
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
        let proxy = EgressProxy::start(EgressStats::default()).unwrap();
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
