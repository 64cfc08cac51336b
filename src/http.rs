//! The local Events API endpoint: an opt-in HTTP listener (`[http] listen`) that answers the
//! PagerDuty Events API on this host with store-and-forward, so that any tool that already posts
//! to PagerDuty (Alertmanager, Grafana, CI plugins, curl) gets pdrelay's durable queue by changing
//! only its URL.
//!
//! Routes, with PagerDuty's request and response shapes:
//!
//! | request | success |
//! | --- | --- |
//! | `POST /v2/enqueue` (v2 alert event) | 202 `{"status":"success","message":"Event processed","dedup_key":...}` |
//! | `POST /v2/change/enqueue` (v2 change event) | 202 `{"status":"success","message":"Change event processed"}` |
//! | `POST /generic/2010-04-15/create_event.json` (v1) | 200 `{"status":"success","message":"Event processed","incident_key":...}` |
//! | `POST /integration/<key>/enqueue`, `POST /x-ere/<key>` (v2 alert event; the routing key from the path) | as `/v2/enqueue` |
//! | `GET /health` | 200 `{"status":"ok","pending":N,"last_success":...,"last_error":...}` |
//!
//! A success is answered only once the event's group commit is fsynced; the dedup key returned
//! for a trigger without one is the key pdrelay will send, so a later resolve finds it. An event
//! PagerDuty would refuse gets 400 `{"status":"invalid event","message":"Event object is
//! invalid","errors":["<field>: <rule>"]}`, nothing stored; an event of another kind than the
//! endpoint's gets 400 too. A body over 512 KB gets 413; a full queue (or a disk under its reserve)
//! 503 with `Retry-After`. The event id is in the `pdrelay-event-id` response header, for
//! `pdrelay queue show`.
//!
//! Bounds: at most `max_connections` connections (more get a 503 and are closed); headers, and then
//! the body, must each arrive within `request_timeout` (else the connection is closed, or 408); an
//! idle keep-alive connection is closed after `request_timeout` too, and so is one whose client
//! takes nothing of an answer for that long; a connection lasts at most
//! [`CONNECTION_LIFETIME_FACTOR`] request timeouts. Request line and headers at most 64 KB (431).
//! With `tls_cert` and `tls_key` it speaks HTTPS only (rustls, TLS 1.2 and 1.3, HTTP/1.1); with a
//! non-empty `allow`, connections from other addresses are closed at once.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::event::{Event, EventKind, IntakeDefaults, MAX_REQUEST_BYTES};
use crate::intake::Shutdown;
use crate::queue::error::StoreError;
use crate::queue::request::NewEvent;
use crate::queue::store::Store;

/// Name of the file, in `state_dir`, that holds the listener's bound address while it runs.
pub const ADDR_FILE: &str = "http.addr";

/// Largest request head (request line and headers), in bytes; a larger one gets 431.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Past the body limit, how long and how many bytes the rest of the body is read and discarded,
/// so that the client sees the 413 instead of a reset connection.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: u64 = 16 * 1024 * 1024;

/// A connection is served for at most this many `request_timeout`s, then closed after the request
/// in progress (which gets one more `request_timeout` to be answered and taken): a client that
/// reads its answers only just fast enough to keep them flowing still cannot hold a connection.
const CONNECTION_LIFETIME_FACTOR: u32 = 4;

/// Longest wait, at shutdown, for requests in progress to be answered.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `Retry-After` seconds with a 503 for a full queue, and for other storage errors.
const RETRY_AFTER_FULL: u64 = 30;
const RETRY_AFTER_UNAVAILABLE: u64 = 5;

/// One entry of `http.allow`: an address and a prefix length (a single address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowEntry {
    net: IpAddr,
    prefix: u8,
}

impl AllowEntry {
    /// Parses `10.0.0.0/8`, `192.0.2.7`, `fd00::/8` or `::1`; `None` if it is none of these.
    ///
    /// An IPv4-mapped IPv6 entry (`::ffff:127.0.0.1`, `::ffff:10.0.0.0/104`) is normalised to the
    /// IPv4 address or block it maps, since clients are matched by their IPv4 address.
    pub fn parse(text: &str) -> Option<AllowEntry> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let net: IpAddr = addr.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse::<u8>().ok()?,
            Some(_) => return None,
            None => max,
        };
        if prefix > max {
            return None;
        }
        match net {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => Some(AllowEntry { net: IpAddr::V4(v4), prefix: prefix - 96 }),
                None => Some(AllowEntry { net, prefix }),
            },
            _ => Some(AllowEntry { net, prefix }),
        }
    }

    /// Why no client of a listener on `listen` (`None`: not known) could ever match this entry,
    /// or `None` if one could: the unspecified or broadcast address, a multicast block, or the
    /// other address family than the listener's. (A listener on loopback can have clients with
    /// any of the host's addresses, bound before they connect, so any unicast block may match.)
    pub fn never_matches(&self, listen: Option<SocketAddr>) -> Option<String> {
        let single = self.prefix == if self.net.is_ipv4() { 32 } else { 128 };
        if single && self.net.is_unspecified() {
            return Some(format!(
                "is the unspecified address, which no client has (for any client, use {}/0)",
                self.net
            ));
        }
        if single && self.net == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
            return Some("is the broadcast address, which no client has".to_owned());
        }
        let multicast = match self.net {
            IpAddr::V4(_) => self.prefix >= 4 && self.net.is_multicast(),
            IpAddr::V6(_) => self.prefix >= 8 && self.net.is_multicast(),
        };
        if multicast {
            return Some("is a multicast block, and no TCP client has such an address".to_owned());
        }
        // A listener on [::] also takes IPv4 clients (as mapped addresses); one on a single IPv6
        // address takes only IPv6 ones, and one on IPv4 only IPv4 ones.
        let listen = listen?.ip();
        let families = match (listen, self.net) {
            (IpAddr::V4(_), IpAddr::V6(_)) => Some(("IPv6", "IPv4")),
            (IpAddr::V6(l), IpAddr::V4(_)) if !l.is_unspecified() && l.to_ipv4_mapped().is_none() => {
                Some(("IPv4", "IPv6"))
            }
            _ => None,
        };
        families.map(|(entry, listener)| {
            format!("is {entry}, but http.listen {listen} is {listener}: only {listener} clients can connect")
        })
    }

    /// Whether `ip` is inside this block (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), 32, self.prefix) == masked(u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), 128, self.prefix) == masked(u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `width`-bit address.
fn masked(addr: u128, width: u32, prefix: u8) -> u128 {
    let prefix = u32::from(prefix).min(width);
    if prefix == 0 {
        0
    } else {
        addr >> (width - prefix)
    }
}

/// The listener's settings, from `[http]`.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Certificate chain and key files (PEM), for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Client addresses allowed; empty allows any.
    pub allow: Vec<AllowEntry>,
    /// Most connections at once.
    pub max_connections: usize,
    /// Bound on headers, then on the body, and on an idle keep-alive connection.
    pub request_timeout: Duration,
    /// Defaults filled in at intake (reloadable).
    pub live: crate::live::LiveConfig,
    /// Where the bound address is written (`state_dir/http.addr`).
    pub addr_file: PathBuf,
}

impl HttpSettings {
    /// The settings of a checked config; `None` when the listener is off.
    pub fn from_config(config: &Config, live: &crate::live::LiveConfig) -> Option<HttpSettings> {
        let http = &config.file.http;
        let tls = (!http.tls_cert.as_os_str().is_empty()).then(|| (http.tls_cert.clone(), http.tls_key.clone()));
        Some(HttpSettings {
            listen: config.http_listen?,
            tls,
            allow: config.http_allow.clone(),
            max_connections: http.max_connections,
            request_timeout: http.request_timeout,
            live: live.clone(),
            addr_file: config.file.state_dir.join(ADDR_FILE),
        })
    }
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound (in use, not on this host, a privileged port).
    #[error("http.listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate or key could not be read or used.
    #[error("http.tls_cert, http.tls_key: {0}")]
    Tls(String),
    /// The bound address could not be written to `state_dir/http.addr`.
    #[error("{path}: {source}")]
    AddrFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A bound listener, ready to [`run`].
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    local: SocketAddr,
}

impl Listener {
    /// The address actually bound (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Loads the TLS pair (if any), binds the address and writes it to `state_dir/http.addr`.
pub async fn bind(settings: &HttpSettings) -> Result<Listener, HttpError> {
    let tls = match &settings.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key).map_err(HttpError::Tls)?),
        None => None,
    };
    let addr = settings.listen;
    let tcp = TcpListener::bind(addr).await.map_err(|source| HttpError::Bind { addr, source })?;
    let local = tcp.local_addr().map_err(|source| HttpError::Bind { addr, source })?;
    write_addr_file(&settings.addr_file, local)
        .map_err(|source| HttpError::AddrFile { path: settings.addr_file.clone(), source })?;
    Ok(Listener { tcp, tls, local })
}

/// Writes `addr` to `path` whole: a temporary file renamed into place.
fn write_addr_file(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let tmp = path.with_extension("addr.tmp");
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Reads a PEM certificate chain and private key into a TLS acceptor (ring, TLS 1.2 and 1.3,
/// ALPN http/1.1).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key cannot be used together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What every connection shares.
struct Context {
    store: Store,
    live: crate::live::LiveConfig,
    request_timeout: Duration,
}

/// Serves connections until shutdown; then lets requests in progress be answered (for at most a
/// few seconds) and removes `state_dir/http.addr`.
pub async fn run(listener: Listener, settings: HttpSettings, store: Store, mut shutdown: Shutdown) {
    let scheme = if listener.tls.is_some() { "https" } else { "http" };
    info!(listen = %listener.local, scheme, allow = settings.allow.len(), "http listener started");
    let max = settings.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let ctx = Arc::new(Context { store, live: settings.live.clone(), request_timeout: settings.request_timeout });
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if !settings.allow.is_empty() && !settings.allow.iter().any(|a| a.contains(peer.ip())) {
            debug!(%peer, "http connection refused: address not in http.allow");
            continue;
        }
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let (ctx, tls, shutdown) = (ctx.clone(), listener.tls.clone(), shutdown.clone());
                tokio::spawn(async move {
                    connection(stream, peer, tls, ctx, shutdown).await;
                    drop(permit);
                });
            }
            Err(_) => {
                debug!(%peer, "http connection refused: at max_connections");
                if listener.tls.is_none() {
                    tokio::spawn(busy(stream, max));
                }
            }
        }
    }
    let _ = std::fs::remove_file(&settings.addr_file);
    let grace = settings.request_timeout.min(SHUTDOWN_GRACE);
    if tokio::time::timeout(grace, slots.acquire_many(max as u32)).await.is_err() {
        debug!("http requests still in progress at shutdown");
    }
    debug!("http listener stopped");
}

/// Answers a connection past `max_connections` with a 503, without reading its request.
async fn busy(mut stream: TcpStream, max: usize) {
    let body = json!({"status": "unavailable", "message": format!("at most {max} connections at once; try again")})
        .to_string();
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Retry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply.as_bytes())).await;
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    ctx: Arc<Context>,
    shutdown: Shutdown,
) {
    let _ = stream.set_nodelay(true);
    // Under TLS too: the stall that matters is the socket's.
    let stream = WriteDeadline::new(stream, ctx.request_timeout);
    match tls {
        Some(acceptor) => match tokio::time::timeout(ctx.request_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => serve(TokioIo::new(stream), peer, ctx, shutdown).await,
            Ok(Err(e)) => debug!(%peer, error = %e, "https handshake failed"),
            Err(_) => debug!(%peer, "https handshake timed out"),
        },
        None => serve(TokioIo::new(stream), peer, ctx, shutdown).await,
    }
}

async fn serve<I>(io: I, peer: SocketAddr, ctx: Arc<Context>, mut shutdown: Shutdown)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let timeout = ctx.request_timeout;
    let service = service_fn(move |request| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(request, &ctx).await) }
    });
    let mut builder = http1::Builder::new();
    // max_header_size refuses a complete head over the limit with 431, however it arrived;
    // max_buf_size stops reading an unfinished one there (also 431).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_HEADER_BYTES);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let lifetime = tokio::time::sleep(timeout.saturating_mul(CONNECTION_LIFETIME_FACTOR));
    let result = tokio::select! {
        result = conn.as_mut() => Some(result),
        _ = shutdown.wait() => None,
        _ = lifetime => {
            debug!(%peer, "http connection at the end of its lifetime; closing after the request in progress");
            None
        }
    };
    let result = match result {
        Some(result) => result,
        None => {
            // Answer the request in progress, if any, then close; a client that does not take the
            // answer within the timeout is dropped.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(timeout, conn).await {
                Ok(result) => result,
                Err(_) => {
                    debug!(%peer, "http connection dropped: the last answer was not taken in time");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "http connection ended with an error");
    }
}

/// A stream whose writes fail with `TimedOut` once one has made no progress for `limit`, so that
/// a client that stops reading its answers (pipelining requests meanwhile) cannot hold a
/// connection: once the socket's buffers are full, it is closed `limit` later.
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// Running while a write, flush or shutdown is pending; cleared by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration) -> Self {
        WriteDeadline { inner, limit, stalled: None }
    }

    /// Passes a ready result on (and clears the stall); on pending, starts or checks the clock.
    fn progress<T>(&mut self, cx: &mut TaskContext<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took nothing of the answer for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progress(cx, polled)
    }
}

/// The endpoint a path names.
enum Route {
    /// An event endpoint; for the integration URLs, the routing key the path carries.
    Events(EventKind, Option<PathKey>),
    Health,
}

/// The routing key in an integration URL's path, and which URL it was.
struct PathKey {
    key: String,
    /// `/x-ere/<key>` (PagerDuty's event-rules URL) rather than `/integration/<key>/enqueue`.
    ere: bool,
}

/// The single path segment after `prefix` (and before `suffix`), if the path is that shape.
fn key_segment<'a>(path: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)?.strip_suffix(suffix).filter(|k| !k.is_empty() && !k.contains('/'))
}

fn route(path: &str) -> Option<Route> {
    match path {
        "/v2/enqueue" => Some(Route::Events(EventKind::Alert, None)),
        "/v2/change/enqueue" => Some(Route::Events(EventKind::Change, None)),
        "/generic/2010-04-15/create_event.json" => Some(Route::Events(EventKind::V1, None)),
        "/health" => Some(Route::Health),
        _ => {
            let keyed = |key: &str, ere| Route::Events(EventKind::Alert, Some(PathKey { key: key.to_owned(), ere }));
            if let Some(key) = key_segment(path, "/integration/", "/enqueue") {
                Some(keyed(key, false))
            } else {
                key_segment(path, "/x-ere/", "").map(|key| keyed(key, true))
            }
        }
    }
}

async fn handle(request: Request<Incoming>, ctx: &Context) -> Response<Full<Bytes>> {
    match (route(request.uri().path()), request.method()) {
        (Some(Route::Events(kind, key)), &Method::POST) => enqueue(request, kind, key, ctx).await,
        (Some(Route::Health), &Method::GET | &Method::HEAD) => health(ctx),
        (Some(route), _) => {
            let allow = if matches!(route, Route::Health) { "GET, HEAD" } else { "POST" };
            let mut response = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"status": "error", "message": format!("method not allowed; use {allow}")}),
            );
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            response
        }
        (None, _) => reply(
            StatusCode::NOT_FOUND,
            json!({"status": "error", "message": "not found: POST /v2/enqueue, /v2/change/enqueue, \
                   /generic/2010-04-15/create_event.json, /integration/<key>/enqueue or /x-ere/<key>; GET /health"}),
        ),
    }
}

/// A JSON response.
fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A response after which the connection is closed (the request was not read whole).
fn closing(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// PagerDuty's 400 for an event it would refuse.
fn invalid(errors: Vec<String>) -> Response<Full<Bytes>> {
    reply(
        StatusCode::BAD_REQUEST,
        json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}),
    )
}

fn too_large() -> Response<Full<Bytes>> {
    closing(reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({"status": "invalid event", "message": "Request too large",
               "errors": [format!("event: request body must be at most 512 KB ({MAX_REQUEST_BYTES} bytes)")]}),
    ))
}

fn unavailable(message: String, retry_after: u64) -> Response<Full<Bytes>> {
    let mut response = reply(StatusCode::SERVICE_UNAVAILABLE, json!({"status": "unavailable", "message": message}));
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

/// How reading a body ended.
enum Body {
    Whole(Vec<u8>),
    TooLarge,
    TimedOut,
    Broken(String),
}

/// Reads the body, at most [`MAX_REQUEST_BYTES`], within `timeout`. Past the limit, the rest is
/// read and discarded for a moment (see [`LINGER`]) unless the client waits for `100-continue`.
async fn read_body(request: Request<Incoming>, timeout: Duration) -> Body {
    let limit = MAX_REQUEST_BYTES as u64;
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let expects_continue =
        request.headers().get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if declared.is_some_and(|n| n > limit) && (expects_continue || declared.is_some_and(|n| n > LINGER_BYTES)) {
        // Never polling the body keeps hyper from sending 100 Continue: nothing more is sent.
        return Body::TooLarge;
    }
    let mut body = request.into_body();
    let mut deadline = Instant::now() + timeout;
    let mut data = Vec::new();
    let mut total = 0u64;
    let mut over = false;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) if over => return Body::TooLarge,
            Err(_) => return Body::TimedOut,
            Ok(None) => break,
            Ok(Some(Err(e))) if over => {
                debug!(error = %e, "http body ended while discarding");
                return Body::TooLarge;
            }
            Ok(Some(Err(e))) => return Body::Broken(e.to_string()),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(chunk) = frame.into_data() else { continue };
        total += chunk.len() as u64;
        if over {
            if total > LINGER_BYTES {
                return Body::TooLarge;
            }
        } else if total > limit {
            over = true;
            data = Vec::new();
            deadline = deadline.min(Instant::now() + LINGER);
        } else {
            data.extend_from_slice(&chunk);
        }
    }
    if over {
        Body::TooLarge
    } else {
        Body::Whole(data)
    }
}

/// Why an event of kind `got` is refused at the endpoint of kind `want`, as `field: rule`.
fn wrong_endpoint(want: EventKind, got: EventKind) -> String {
    let (field, rule) = match (want, got) {
        (EventKind::Alert, EventKind::V1) => (
            "event",
            "is an Events API v1 event (event_type, service_key or incident_key); /v2/enqueue takes v2 alert \
             events (routing_key, event_action, dedup_key); post v1 events to /generic/2010-04-15/create_event.json",
        ),
        (EventKind::Alert, _) => {
            ("event_action", "is required: trigger, acknowledge or resolve (post change events to /v2/change/enqueue)")
        }
        (EventKind::Change, EventKind::Alert) => {
            ("event_action", "must not be present in a change event (post alert events to /v2/enqueue)")
        }
        (EventKind::Change, _) => (
            "event",
            "is an Events API v1 event (event_type, service_key or incident_key); /v2/change/enqueue takes v2 \
             change events (routing_key, payload); post v1 events to /generic/2010-04-15/create_event.json",
        ),
        (EventKind::V1, _) => (
            "event_type",
            "is required: trigger, acknowledge or resolve (post v2 events to /v2/enqueue or /v2/change/enqueue)",
        ),
    };
    format!("{field}: {rule}")
}

/// Validates an event posted to the endpoint of `kind`: a JSON object of that kind that
/// PagerDuty would accept, normalized as every intake does.
pub fn parse_for(body: &[u8], kind: EventKind, defaults: &IntakeDefaults) -> Result<Event, String> {
    parse_keyed(body, kind, None, defaults)
}

/// [`parse_for`] for an integration URL (`/integration/<key>/enqueue`, `/x-ere/<key>`): the
/// path's key is the routing key (an event that names another one is refused), and `/x-ere/`
/// takes only Events API v2 alert events: pdrelay cannot run PagerDuty's event rules on other
/// JSON.
fn parse_keyed(
    body: &[u8],
    kind: EventKind,
    path_key: Option<&PathKey>,
    defaults: &IntakeDefaults,
) -> Result<Event, String> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| format!("event: is not valid JSON ({e})"))?;
    if let Some(PathKey { key, ere }) = path_key {
        if *ere && crate::event::shape_of(&value).ok().flatten() != Some(EventKind::Alert) {
            return Err("event: /x-ere/<key> takes Events API v2 alert events here (routing_key, event_action, \
                        payload): pdrelay cannot apply PagerDuty's event rules to other JSON"
                .to_owned());
        }
        if let Some(object) = value.as_object_mut() {
            match object.get("routing_key") {
                None | Some(Value::Null) => {
                    object.insert("routing_key".to_owned(), Value::String(key.clone()));
                }
                Some(Value::String(given)) if given == key || given.is_empty() => {
                    object.insert("routing_key".to_owned(), Value::String(key.clone()));
                }
                Some(_) => return Err("routing_key: must be the integration key in the URL, or left out".to_owned()),
            }
        }
    }
    if let Some(shape) = crate::event::shape_of(&value).map_err(|e| e.to_string())? {
        if shape != kind {
            return Err(wrong_endpoint(kind, shape));
        }
    }
    let event = Event::from_value(value, defaults).map_err(|e| e.to_string())?;
    if event.kind() != kind {
        return Err(wrong_endpoint(kind, event.kind()));
    }
    Ok(event)
}

async fn enqueue(
    request: Request<Incoming>,
    kind: EventKind,
    path_key: Option<PathKey>,
    ctx: &Context,
) -> Response<Full<Bytes>> {
    let body = match read_body(request, ctx.request_timeout).await {
        Body::Whole(body) => body,
        Body::TooLarge => return too_large(),
        Body::TimedOut => {
            return closing(reply(
                StatusCode::REQUEST_TIMEOUT,
                json!({"status": "timeout", "message": format!("request body not received within {:?}", ctx.request_timeout)}),
            ))
        }
        Body::Broken(e) => {
            return closing(reply(
                StatusCode::BAD_REQUEST,
                json!({"status": "invalid event", "message": "unreadable request body", "errors": [e]}),
            ))
        }
    };
    let event = match parse_keyed(&body, kind, path_key.as_ref(), &ctx.live.get().defaults) {
        Ok(event) => event,
        Err(error) => {
            debug!(endpoint = kind.endpoint_path(), %error, "http event refused");
            return invalid(vec![error]);
        }
    };
    let accepted = ctx.store.insert(vec![NewEvent { id: None, intake: "http", event }]).await;
    let accepted = match accepted.map(|mut a| a.pop()) {
        Ok(Some(a)) => a,
        Ok(None) => return unavailable("queue returned no acceptance".to_owned(), RETRY_AFTER_UNAVAILABLE),
        Err(e @ StoreError::Full(_)) => return unavailable(e.to_string(), RETRY_AFTER_FULL),
        Err(e) => {
            warn!(error = %e, "http event could not be stored");
            return unavailable(e.to_string(), RETRY_AFTER_UNAVAILABLE);
        }
    };
    debug!(id = %accepted.id, endpoint = kind.endpoint_path(), "http event stored");
    let dedup_key = accepted.dedup_key.unwrap_or_default();
    let mut response = match kind {
        EventKind::Alert => reply(
            StatusCode::ACCEPTED,
            json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key}),
        ),
        EventKind::Change => {
            reply(StatusCode::ACCEPTED, json!({"status": "success", "message": "Change event processed"}))
        }
        EventKind::V1 => {
            reply(StatusCode::OK, json!({"status": "success", "message": "Event processed", "incident_key": dedup_key}))
        }
    };
    if let Ok(id) = HeaderValue::from_str(&accepted.id) {
        response.headers_mut().insert("pdrelay-event-id", id);
    }
    response
}

/// `GET /health`: 200 with the queue depth and the last delivery and error while the queue can be
/// read; 503 otherwise.
fn health(ctx: &Context) -> Response<Full<Bytes>> {
    let stamp = |s: Option<(u64, String)>, what: &str| match s {
        Some((at, text)) => json!({"at": crate::admin::rfc3339(at), what: text}),
        None => Value::Null,
    };
    match ctx.store.last_events() {
        Ok((success, error)) => {
            let failing = match (&success, &error) {
                (Some((ok_at, _)), Some((err_at, _))) => err_at > ok_at,
                (None, Some(_)) => true,
                _ => false,
            };
            reply(
                StatusCode::OK,
                json!({
                    "status": "ok",
                    "pending": ctx.store.pending_count(),
                    "delivery_failing": failing,
                    "last_success": stamp(success, "id"),
                    "last_error": stamp(error, "error"),
                }),
            )
        }
        Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, json!({"status": "error", "message": e.to_string()})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_entries_parse_and_match() {
        let net = AllowEntry::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()), "IPv4-mapped IPv6 counts as IPv4");
        let one = AllowEntry::parse("192.0.2.7").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6 = AllowEntry::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let any = AllowEntry::parse("0.0.0.0/0").unwrap();
        assert!(any.contains("203.0.113.5".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "web1", "10.0.0.0/", "10.0.0.0/+8", "", "10.0.0/8"] {
            assert_eq!(AllowEntry::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn ipv4_mapped_entries_are_normalised_to_ipv4() {
        for (mapped, plain) in [
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:0.0.0.0/96", "0.0.0.0/0"),
        ] {
            assert_eq!(AllowEntry::parse(mapped), AllowEntry::parse(plain), "{mapped}");
        }
        let one = AllowEntry::parse("::ffff:127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(one.contains("::ffff:127.0.0.1".parse().unwrap()));
        // Below /96 the block holds more than mapped addresses: left as IPv6.
        assert!(AllowEntry::parse("::ffff:0:0/95").unwrap().net.is_ipv6());
    }

    #[test]
    fn entries_that_can_never_match_are_named() {
        let v4: SocketAddr = "192.0.2.1:8765".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:8765".parse().unwrap();
        let any6: SocketAddr = "[::]:8765".parse().unwrap();
        let lo4: SocketAddr = "127.0.0.1:8765".parse().unwrap();
        let lo6: SocketAddr = "[::1]:8765".parse().unwrap();
        let never = |entry: &str, listen: Option<SocketAddr>| AllowEntry::parse(entry).unwrap().never_matches(listen);
        for (entry, listen, why) in [
            ("0.0.0.0", None, "unspecified"),
            ("::", None, "unspecified"),
            ("255.255.255.255", None, "broadcast"),
            ("224.0.0.0/4", None, "multicast"),
            ("239.1.2.3", None, "multicast"),
            ("ff02::1", None, "multicast"),
            ("fd00::/8", Some(v4), "is IPv6"),
            ("::1", Some(lo4), "is IPv6"),
            ("10.0.0.0/8", Some(v6), "is IPv4"),
            ("127.0.0.1", Some(lo6), "is IPv4"),
        ] {
            let got = never(entry, listen).unwrap_or_else(|| panic!("{entry} on {listen:?} can never match"));
            assert!(got.contains(why), "{entry}: {got}");
        }
        for (entry, listen) in [
            ("0.0.0.0/0", Some(v4)),
            ("::/0", Some(v6)),
            ("10.0.0.0/8", Some(any6)),
            ("fd00::/8", Some(any6)),
            ("127.0.0.1", Some(lo4)),
            ("127.0.0.0/8", Some(lo4)),
            ("0.0.0.0/0", Some(lo4)),
            ("::ffff:127.0.0.1", Some(lo4)),
            ("::1", Some(lo6)),
            ("10.0.0.0/8", Some(lo4)),
            ("fd00::/8", Some(lo6)),
            ("10.0.0.0/8", None),
            ("223.255.255.255", None),
        ] {
            assert_eq!(never(entry, listen), None, "{entry} on {listen:?}");
        }
    }

    #[test]
    fn an_event_must_match_its_endpoint() {
        let d = IntakeDefaults::default();
        let rk = "R0UT1NGKEY0000000000000000000000";
        let alert = json!({"routing_key": rk, "event_action": "trigger", "payload": {"summary": "s", "source": "h", "severity": "info"}}).to_string();
        let change = json!({"routing_key": rk, "payload": {"summary": "deployed", "source": "ci"}}).to_string();
        let v1 = json!({"service_key": rk, "event_type": "trigger", "description": "d"}).to_string();
        assert_eq!(parse_for(alert.as_bytes(), EventKind::Alert, &d).unwrap().kind(), EventKind::Alert);
        assert_eq!(parse_for(change.as_bytes(), EventKind::Change, &d).unwrap().kind(), EventKind::Change);
        assert_eq!(parse_for(v1.as_bytes(), EventKind::V1, &d).unwrap().kind(), EventKind::V1);
        for (body, kind, field) in [
            (&alert, EventKind::Change, "event_action: "),
            (&alert, EventKind::V1, "event_type: "),
            (&change, EventKind::Alert, "event_action: "),
            (&change, EventKind::V1, "event_type: "),
            (&v1, EventKind::Alert, "event: "),
            (&v1, EventKind::Change, "event: "),
        ] {
            let err = parse_for(body.as_bytes(), kind, &d).unwrap_err();
            assert!(err.starts_with(field), "{kind:?}: {err}");
        }
        assert!(parse_for(b"{nope", EventKind::Alert, &d).unwrap_err().starts_with("event: is not valid JSON"));
    }
}
