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
//!
//! This file holds the listener: settings, binding, TLS and each connection with its bounds;
//! [`endpoints`] answers each request.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

pub mod endpoints;

use endpoints::{handle, Context};

use crate::config::allow::AllowEntry;
use crate::config::Config;
use crate::ops::shutdown::Shutdown;
use crate::queue::store::Store;

/// Name of the file, in `state_dir`, that holds the listener's bound address while it runs.
pub const ADDR_FILE: &str = "http.addr";

/// Largest request head (request line and headers), in bytes; a larger one gets 431.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A connection is served for at most this many `request_timeout`s, then closed after the request
/// in progress (which gets one more `request_timeout` to be answered and taken): a client that
/// reads its answers only just fast enough to keep them flowing still cannot hold a connection.
const CONNECTION_LIFETIME_FACTOR: u32 = 4;

/// Longest wait, at shutdown, for requests in progress to be answered.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
    pub reloadable: crate::ops::reload::ReloadableSettings,
    /// Where the bound address is written (`state_dir/http.addr`).
    pub addr_file: PathBuf,
}

impl HttpSettings {
    /// The settings of a checked config; `None` when the listener is off.
    pub fn from_config(config: &Config, reloadable: &crate::ops::reload::ReloadableSettings) -> Option<HttpSettings> {
        let http = &config.file.http;
        let tls = (!http.tls_cert.as_os_str().is_empty()).then(|| (http.tls_cert.clone(), http.tls_key.clone()));
        Some(HttpSettings {
            listen: config.http_listen?,
            tls,
            allow: config.http_allow.clone(),
            max_connections: http.max_connections,
            request_timeout: http.request_timeout,
            reloadable: reloadable.clone(),
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

/// Serves connections until shutdown; then lets requests in progress be answered (for at most a
/// few seconds) and removes `state_dir/http.addr`.
pub async fn run(listener: Listener, settings: HttpSettings, store: Store, mut shutdown: Shutdown) {
    let scheme = if listener.tls.is_some() { "https" } else { "http" };
    info!(listen = %listener.local, scheme, allow = settings.allow.len(), "http listener started");
    let max = settings.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let ctx =
        Arc::new(Context { store, reloadable: settings.reloadable.clone(), request_timeout: settings.request_timeout });
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
