//! A connector's way out: `wasi:http/outgoing-handler`, let through only to
//! the hosts and ports its `allow` config lists.
//!
//! The check is on the addresses a name resolves to, and the connection is
//! made to an address that passed it (never resolved twice), so DNS cannot
//! turn an allowed name into a private address. Loopback, private,
//! link-local and other non-global addresses are reached only when an
//! address or range covering them is listed explicitly (`127.0.0.1:8080`,
//! `10.0.0.0/8:443`); a listed name never reaches them. Everything else is
//! refused at the host, logged, and answered to the guest as
//! `HTTP-request-denied` (not listed) or `destination-IP-prohibited`
//! (resolved only to addresses not listed).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use ipnet::IpNet;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::Labels;

/// Longest a connection may take to open (TCP, and TLS when https).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a response may take to start, and to send its next bytes.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// One entry of a connector's `allow` list: `host:port`, where host is a
/// DNS name, an IP address (`[v6]`) or a CIDR range, and port a number or
/// `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Allow {
    host: Host,
    /// `None`: any port.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// Lower case, without a trailing dot.
    Name(String),
    Net(IpNet),
}

/// Where a connector may send requests. Empty: nowhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<Allow>, Private);

/// Whether listed addresses and ranges may open non-global addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Private {
    #[default]
    WhenListed,
    Never,
}

impl FromStr for AllowList {
    type Err = String;

    /// Comma-separated `host:port` entries, as in a connector's config.
    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(parse_entry)
            .collect::<Result<_, _>>()
            .map(|entries| AllowList(entries, Private::WhenListed))
    }
}

fn parse_entry(e: &str) -> Result<Allow, String> {
    let bad = |why: &str| format!("allow entry {e:?}: {why} (expected host:port)");
    let (host, port) = e.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port = match port {
        "*" => None,
        p => Some(p.parse::<u16>().map_err(|_| bad("bad port"))?),
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = if let Ok(ip) = host.parse::<IpAddr>() {
        Host::Net(IpNet::from(ip))
    } else if let Ok(net) = host.parse::<IpNet>() {
        Host::Net(net.trunc())
    } else {
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(bad("not a host name, address or range"));
        }
        Host::Name(name)
    };
    Ok(Allow { host, port })
}

impl AllowList {
    /// The same list, reaching globally routable addresses only, whatever
    /// it lists (the operator turned private egress off).
    pub fn public_only(self) -> Self {
        AllowList(self.0, Private::Never)
    }

    fn port_ok(a: &Allow, port: u16) -> bool {
        a.port.is_none_or(|p| p == port)
    }

    /// Whether a name is listed for this port.
    fn names(&self, name: &str, port: u16) -> bool {
        self.0
            .iter()
            .any(|a| Self::port_ok(a, port) && a.host == Host::Name(name.to_string()))
    }

    /// Whether an address is covered by a listed address or range.
    fn covers(&self, ip: IpAddr, port: u16) -> bool {
        if self.1 == Private::Never && !global(ip) {
            return false;
        }
        self.0.iter().any(|a| match &a.host {
            Host::Net(n) => Self::port_ok(a, port) && n.contains(&canonical(ip)),
            Host::Name(_) => false,
        })
    }

    /// Which of the addresses `host` resolved to may be reached: any that
    /// a listed range covers, and, when `host` is a listed name, the
    /// globally routable ones. `Err` says why none.
    pub fn permitted(
        &self,
        host: &Target,
        resolved: &[IpAddr],
    ) -> Result<Vec<SocketAddr>, Refused> {
        let named = match &host.host {
            TargetHost::Ip(ip) => {
                return if self.covers(*ip, host.port) {
                    Ok(vec![SocketAddr::new(*ip, host.port)])
                } else {
                    Err(Refused::NotListed)
                };
            }
            TargetHost::Name(n) => self.names(n, host.port),
        };
        let ok: Vec<SocketAddr> = resolved
            .iter()
            .filter(|ip| self.covers(**ip, host.port) || (named && global(**ip)))
            .map(|ip| SocketAddr::new(*ip, host.port))
            .collect();
        match (ok.is_empty(), named) {
            (false, _) => Ok(ok),
            (true, true) => Err(Refused::Private(resolved.to_vec())),
            (true, false) => Err(Refused::NotListed),
        }
    }

    /// Whether `host` could be allowed at all, before resolving it: a name
    /// is either listed or may resolve into a listed range.
    fn may_allow(&self, host: &Target) -> bool {
        match &host.host {
            TargetHost::Ip(ip) => self.covers(*ip, host.port),
            TargetHost::Name(n) => {
                self.names(n, host.port)
                    || self
                        .0
                        .iter()
                        .any(|a| matches!(a.host, Host::Net(_)) && Self::port_ok(a, host.port))
            }
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: TargetHost,
    pub port: u16,
    pub tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHost {
    Name(String),
    Ip(IpAddr),
}

impl Target {
    fn of(uri: &http::Uri) -> Result<Self, HttpError> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HttpError::HttpProtocolError),
        };
        let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = authority.host();
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let host = match bare.parse::<IpAddr>() {
            Ok(ip) => TargetHost::Ip(ip),
            Err(_) => TargetHost::Name(bare.trim_end_matches('.').to_ascii_lowercase()),
        };
        Ok(Target { host, port, tls })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            TargetHost::Name(n) => write!(f, "{n}:{}", self.port),
            TargetHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            TargetHost::Ip(ip) => write!(f, "{ip}:{}", self.port),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Neither the name nor the address is listed.
    NotListed,
    /// A listed name resolved only to addresses no entry covers.
    Private(Vec<IpAddr>),
}

/// An IPv4 address carried in IPv6 (mapped) is judged as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Whether an address is globally routable: not loopback, private, shared
/// (CGNAT), link-local, multicast, documentation, benchmarking, reserved or
/// an IPv6 range that embeds or translates to IPv4.
pub fn global(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // Global unicast is 2000::/3, less documentation (2001:db8::/32),
            // Teredo and other IETF ranges (2001::/23), 6to4 (2002::/16);
            // NAT64 (64:ff9b::/96) and everything else outside 2000::/3 is
            // not global either.
            (s[0] & 0xe000) == 0x2000
                && !(s[0] == 0x2001 && s[1] == 0x0db8)
                && !(s[0] == 0x2001 && s[1] < 0x0200)
                && s[0] != 0x2002
        }
    }
}

/// The `wasi:http` hooks of one instance: its allow-list, and the time its
/// requests spent waiting on the network (not guest CPU; see
/// [`Egress::io_wait`]).
#[derive(Clone, Default)]
pub(crate) struct Egress {
    allow: Arc<AllowList>,
    labels: Labels,
    io_wait_us: Arc<AtomicU64>,
}

impl Egress {
    pub fn new(allow: AllowList, labels: Labels) -> Self {
        Self {
            allow: Arc::new(allow),
            labels,
            io_wait_us: Arc::default(),
        }
    }

    /// Network wait of every request so far (connect to response head).
    pub fn io_wait(&self) -> Duration {
        Duration::from_micros(self.io_wait_us.load(Ordering::Relaxed))
    }

    fn refuse(&self, target: &Target, why: &str) {
        let (tenant, plugin) = (&self.labels.tenant, &self.labels.plugin);
        tracing::warn!(%tenant, %plugin, %target, "connector request refused: {why}");
    }

    async fn send(
        self,
        mut req: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(http::Response<WasiBody>, SendDone), HttpError> {
        let target = Target::of(req.uri())?;
        if !self.allow.may_allow(&target) {
            self.refuse(&target, "not in the allow list");
            return Err(HttpError::HttpRequestDenied);
        }
        let started = Instant::now();
        let resolved: Vec<IpAddr> = match &target.host {
            TargetHost::Ip(ip) => vec![*ip],
            TargetHost::Name(n) => {
                let look = tokio::net::lookup_host((n.as_str(), target.port));
                match tokio::time::timeout(CONNECT_TIMEOUT, look).await {
                    Err(_) => return Err(HttpError::DnsTimeout),
                    Ok(Err(_)) => return Err(HttpError::DestinationNotFound),
                    Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
                }
            }
        };
        let addrs = match self.allow.permitted(&target, &resolved) {
            Ok(a) => a,
            Err(Refused::NotListed) => {
                self.refuse(&target, "not in the allow list");
                return Err(HttpError::HttpRequestDenied);
            }
            Err(Refused::Private(ips)) => {
                self.refuse(
                    &target,
                    &format!("resolves to {ips:?}, which no allow entry lists"),
                );
                return Err(HttpError::DestinationIpProhibited);
            }
        };
        let connect = options
            .and_then(|o| o.connect_timeout)
            .map_or(CONNECT_TIMEOUT, |t| t.min(CONNECT_TIMEOUT));
        let first_byte = options
            .and_then(|o| o.first_byte_timeout)
            .map_or(RESPONSE_TIMEOUT, |t| t.min(RESPONSE_TIMEOUT));
        let stream = tokio::time::timeout(connect, connect_any(&addrs))
            .await
            .map_err(|_| HttpError::ConnectionTimeout)?
            .map_err(HttpError::Connect)?;
        let _ = stream.set_nodelay(true);
        // Only the path goes on the wire (the request is not for a proxy).
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        *req.uri_mut() = http::Uri::try_from(path).map_err(|_| HttpError::HttpRequestUriInvalid)?;
        let (mut sender, conn) = if target.tls {
            let name = match &target.host {
                TargetHost::Name(n) => rustls::pki_types::ServerName::try_from(n.clone())
                    .map_err(|_| HttpError::HttpRequestUriInvalid)?,
                TargetHost::Ip(ip) => rustls::pki_types::ServerName::IpAddress((*ip).into()),
            };
            let tls = tokio::time::timeout(connect, tls().connect(name, stream))
                .await
                .map_err(|_| HttpError::ConnectionTimeout)?
                .map_err(|_| HttpError::TlsProtocolError)?;
            handshake(Box::new(tls)).await?
        } else {
            handshake(Box::new(stream)).await?
        };
        let conn = tokio::spawn(conn);
        let res = tokio::time::timeout(first_byte, sender.send_request(req)).await;
        self.io_wait_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let res = res
            .map_err(|_| HttpError::ConnectionReadTimeout)?
            .map_err(HttpError::from)?;
        let res = res.map(|body| body.map_err(HttpError::from).boxed_unsync());
        Ok((res, SendDone(conn)))
    }
}

/// The connection task, awaited for its outcome once the body is read.
struct SendDone(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl std::future::Future for SendDone {
    type Output = Result<(), HttpError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(HttpError::from(e)),
            Err(_) => Err(HttpError::ConnectionTerminated),
        })
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

type Conn = hyper::client::conn::http1::Connection<TokioIo<Box<dyn Io>>, WasiBody>;

async fn handshake(
    io: Box<dyn Io>,
) -> Result<(hyper::client::conn::http1::SendRequest<WasiBody>, Conn), HttpError> {
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        hyper::client::conn::http1::handshake(TokioIo::new(io)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)?
    .map_err(HttpError::from)
}

/// The first of `addrs` that accepts a connection.
async fn connect_any(addrs: &[SocketAddr]) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = std::io::Error::other("no address");
    for a in addrs {
        match tokio::net::TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A TLS client trusting the system's roots, made once.
fn tls() -> tokio_rustls::TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|e| panic!("rustls' own defaults are consistent: {e}"));
        Arc::new(config)
    });
    tokio_rustls::TlsConnector::from(config.clone())
}

impl WasiHttpHooks for Egress {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
                    ),
                    HttpError,
                >,
            > + Send,
    > {
        drop(fut);
        let me = self.clone();
        Box::new(async move {
            let (res, done) = me.send(request, options).await?;
            Ok((
                res,
                Box::new(done) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str) -> Target {
        Target::of(&s.parse().expect("uri")).expect("target")
    }

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|i| i.parse().expect("ip")).collect()
    }

    #[test]
    fn entries_parse_and_bad_ones_say_why() {
        let a: AllowList = "hooks.example.com:443, 127.0.0.1:8080,[::1]:*,10.0.0.0/8:80"
            .parse()
            .expect("parses");
        assert_eq!(a.0.len(), 4);
        for bad in [
            "hooks.example.com",
            "a b:80",
            "x:99999",
            ":80",
            "10.0.0.0/33:80",
        ] {
            let e = bad.parse::<AllowList>().expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
        assert_eq!("".parse::<AllowList>(), Ok(AllowList::default()));
    }

    #[test]
    fn a_listed_name_reaches_public_addresses_only() {
        let a: AllowList = "hooks.example.com:443".parse().expect("parses");
        let t = target("https://Hooks.Example.com./in");
        assert_eq!(
            a.permitted(&t, &ips(&["93.184.216.34", "10.1.2.3"])),
            Ok(vec!["93.184.216.34:443".parse().expect("addr")])
        );
        // DNS pointing the name inside: refused, whatever the name.
        for inside in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert_eq!(
                a.permitted(&t, &ips(&[inside])),
                Err(Refused::Private(ips(&[inside]))),
                "{inside}"
            );
        }
        // Another port or name is not listed.
        assert!(!a.may_allow(&target("http://hooks.example.com/")));
        assert!(!a.may_allow(&target("https://evil.example.com/")));
    }

    #[test]
    fn private_addresses_only_when_listed() {
        let a: AllowList = "127.0.0.1:8080,10.0.0.0/8:*".parse().expect("parses");
        assert!(a.permitted(&target("http://127.0.0.1:8080/"), &[]).is_ok());
        assert_eq!(
            a.permitted(&target("http://127.0.0.1:8081/"), &[]),
            Err(Refused::NotListed)
        );
        assert!(a.permitted(&target("http://10.9.8.7:1/"), &[]).is_ok());
        assert_eq!(
            a.permitted(&target("http://192.168.0.1/"), &[]),
            Err(Refused::NotListed)
        );
        // An unlisted name may still resolve into a listed range...
        let t = target("http://db.internal:5000/");
        assert!(a.may_allow(&t));
        assert!(a.permitted(&t, &ips(&["10.1.1.1"])).is_ok());
        // ...but never to anything else.
        assert_eq!(
            a.permitted(&t, &ips(&["93.184.216.34"])),
            Err(Refused::NotListed)
        );
        // A mapped IPv4 address is judged as IPv4.
        assert!(a
            .permitted(&target("http://[::ffff:10.0.0.1]:80/"), &[])
            .is_ok());
    }

    #[test]
    fn with_private_egress_off_listed_private_addresses_are_refused() {
        let a: AllowList = "127.0.0.1:8080,169.254.169.254:80,0.0.0.0/0:443,hooks.example.com:443"
            .parse::<AllowList>()
            .expect("parses")
            .public_only();
        for url in ["http://127.0.0.1:8080/", "http://169.254.169.254/"] {
            assert_eq!(
                a.permitted(&target(url), &[]),
                Err(Refused::NotListed),
                "{url}"
            );
        }
        // A range covering everything opens only the global part of it.
        assert!(a.permitted(&target("https://1.1.1.1/"), &[]).is_ok());
        assert_eq!(
            a.permitted(&target("https://10.0.0.1/"), &[]),
            Err(Refused::NotListed)
        );
        // A listed name resolving to a private address is refused as before.
        let t = target("https://hooks.example.com/");
        assert!(a.permitted(&t, &ips(&["93.184.216.34"])).is_ok());
        assert_eq!(
            a.permitted(&t, &ips(&["10.0.0.1"])),
            Err(Refused::Private(ips(&["10.0.0.1"])))
        );
    }

    #[test]
    fn nothing_listed_allows_nothing() {
        let a = AllowList::default();
        assert!(!a.may_allow(&target("https://example.com/")));
        assert!(!a.may_allow(&target("http://127.0.0.1/")));
    }

    #[test]
    fn global_addresses() {
        for ip in ["93.184.216.34", "2606:2800:220:1::1", "1.1.1.1"] {
            assert!(global(ip.parse().expect("ip")), "{ip}");
        }
        for ip in [
            "198.18.0.1",
            "240.0.0.1",
            "192.0.2.1",
            "2001:db8::1",
            "2002::1",
            "ff02::1",
        ] {
            assert!(!global(ip.parse().expect("ip")), "{ip}");
        }
    }
}
