//! The Unix stream socket: newline-delimited JSON, one event per line, one reply line per event,
//! in order. `{"ok":true,"id":"...","dedup_key":"..."}` is written only after the event's group
//! commit is on disk; `{"ok":false,"code":"invalid"|"unavailable"|"too_long","error":"..."}` names
//! the field and the rule. A client may pipeline lines without waiting for replies.
//!
//! Bounds, so that no client can hurt another or the daemon: a line longer than
//! `ingest.max_line_bytes` gets a `too_long` reply and the connection is closed; a line must be
//! complete within `line_timeout` of its first byte (else `timeout` and close); a connection idle
//! for `idle_timeout` is closed, and so is one whose replies cannot be written for that long (a
//! client that stopped reading); past `max_connections`, a new connection gets a `busy` reply and
//! is closed. Each connection has its own tasks, so a stalled client delays only itself.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::event::Event;
use crate::ops::shutdown::Shutdown;
use crate::queue::error::StoreError;
use crate::queue::request::{InsertTicket, NewEvent};
use crate::queue::store::Store;

/// How long, and how many bytes, a closing connection reads and discards (lingering close).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: u64 = 16 * 1024 * 1024;

/// Replies waiting to be written per connection before reading pauses (backpressure).
const REPLY_DEPTH: usize = 4096;

/// One reply line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Reply {
    /// Whether the event is durably stored.
    pub ok: bool,
    /// Event id, when stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Dedup key that will be sent, when stored (`null` for change events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    /// `invalid` (fix the event), `unavailable` (could not store: try again), `too_long` (line
    /// over the limit), `timeout` (line not finished in time), `busy` (too many connections),
    /// `full` (queue at its size limit or disk under its reserve: try again later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// One-line reason, naming the field and the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    /// An error reply.
    pub fn error(code: &str, error: impl Into<String>) -> Reply {
        Reply { ok: false, id: None, dedup_key: None, code: Some(code.to_owned()), error: Some(error.into()) }
    }

    fn line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("replies serialize");
        v.push(b'\n');
        v
    }
}

/// Socket settings, from `[ingest]`.
#[derive(Debug, Clone)]
pub struct SocketSettings {
    /// Socket path.
    pub path: PathBuf,
    /// File mode.
    pub mode: u32,
    /// Group for the file, if any.
    pub gid: Option<u32>,
    /// Longest line, in bytes.
    pub max_line_bytes: usize,
    /// Most connections at once.
    pub max_connections: usize,
    /// Close a connection silent (or not reading replies) for this long.
    pub idle_timeout: Duration,
    /// A line must be complete within this long of its first byte.
    pub line_timeout: Duration,
    /// Defaults filled in at intake (reloadable).
    pub reloadable: crate::ops::reload::ReloadableSettings,
}

/// Binds a socket at `path`: creates its directory if missing (mode 0755 whatever the umask:
/// only the daemon's user may add or remove names in it, so nobody else can replace the socket
/// with their own), replaces a stale socket file left by a crash (but not one a live process
/// answers on), and sets `mode` and, if given, the group.
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if std::fs::symlink_metadata(dir).is_err() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; refusing to replace it", path.display()),
            ));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use by another running pdrelay", path.display()),
                ))
            }
            Err(_) => std::fs::remove_file(path)?,
        }
    }
    let listener = UnixListener::bind(path)?;
    if gid.is_some() {
        std::os::unix::fs::chown(path, None, gid)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Serves connections until shutdown, then removes the socket file. Connections in progress get
/// replies for the lines already read.
pub async fn run(listener: UnixListener, settings: SocketSettings, store: Store, mut shutdown: Shutdown) {
    info!(socket = %settings.path.display(), "socket intake started");
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let settings = Arc::new(settings);
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if let Ok(cred) = stream.peer_cred() {
                        debug!(uid = cred.uid(), gid = cred.gid(), pid = ?cred.pid(), "socket connection");
                    }
                    match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let (store, settings, shutdown) = (store.clone(), settings.clone(), shutdown.clone());
                            tokio::spawn(async move {
                                serve(stream, store, &settings, shutdown).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            let max = settings.max_connections;
                            tokio::spawn(async move {
                                let reply = Reply::error("busy", format!("connections: at most {max} at once; try again"));
                                let mut stream = stream;
                                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&reply.line())).await;
                            });
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let _ = std::fs::remove_file(&settings.path);
    debug!("socket intake stopped");
}

/// A reply in the making: known now, or once a commit lands.
enum Pending {
    Now(Reply),
    Stored(Result<InsertTicket, StoreError>),
}

async fn serve(stream: UnixStream, store: Store, settings: &SocketSettings, mut shutdown: Shutdown) {
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let (tx, mut rx) = mpsc::channel::<Pending>(REPLY_DEPTH);
    let idle = settings.idle_timeout;
    let writer = tokio::spawn(async move {
        let mut out = BufWriter::new(write);
        while let Some(pending) = rx.recv().await {
            let reply = match pending {
                Pending::Now(reply) => reply,
                Pending::Stored(ticket) => reply_when_stored(ticket).await,
            };
            // A client that stops reading its replies is closed after the idle timeout.
            let wrote = tokio::time::timeout(idle, async {
                out.write_all(&reply.line()).await?;
                if rx.is_empty() {
                    out.flush().await?;
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(wrote, Ok(Ok(()))) {
                debug!("socket client not reading replies; closing");
                return;
            }
        }
        let _ = tokio::time::timeout(idle, out.flush()).await;
    });
    let max = settings.max_line_bytes;
    let mut line = Vec::new();
    loop {
        line.clear();
        // Wait for the first byte of a line, up to the idle timeout.
        let ready = tokio::select! {
            _ = shutdown.wait() => break,
            ready = tokio::time::timeout(idle, reader.fill_buf()) => ready,
        };
        match ready {
            Err(_) => {
                debug!("socket connection idle; closing");
                break;
            }
            Ok(Err(e)) => {
                debug!(error = %e, "socket read failed");
                break;
            }
            Ok(Ok([])) => break,
            Ok(Ok(_)) => {}
        }
        let mut limited = (&mut reader).take(max as u64 + 1);
        let read = tokio::select! {
            _ = shutdown.wait() => break,
            read = tokio::time::timeout(settings.line_timeout, limited.read_until(b'\n', &mut line)) => read,
        };
        match read {
            Err(_) => {
                let reply = Reply::error(
                    "timeout",
                    format!(
                        "line: must be complete within {:?} of its first byte; closing the connection",
                        settings.line_timeout
                    ),
                );
                let _ = tx.send(Pending::Now(reply)).await;
                break;
            }
            Ok(Err(e)) => {
                debug!(error = %e, "socket read failed");
                break;
            }
            Ok(Ok(_)) => {}
        }
        if line.last() != Some(&b'\n') && line.len() > max {
            let reply = Reply::error("too_long", format!("line: must be at most {max} bytes; closing the connection"));
            let _ = tx.send(Pending::Now(reply)).await;
            break;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let pending = match Event::from_json(&line, &settings.reloadable.get().defaults) {
            // Submitted here, in line order, so that acceptance order is the connection's order;
            // the writer waits for the commit.
            Ok(event) => {
                Pending::Stored(store.submit_insert(vec![NewEvent { id: None, intake: "socket", event }]).await)
            }
            Err(e) => Pending::Now(Reply::error("invalid", e.to_string())),
        };
        if tx.send(pending).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
    // The writer has sent every reply and shut down our side. Read and discard what the client
    // may still be sending for a moment before closing: closing with unread input would reset
    // the connection and could cost the client the replies already sent.
    let _ =
        tokio::time::timeout(LINGER, tokio::io::copy(&mut (&mut reader).take(LINGER_BYTES), &mut tokio::io::sink()))
            .await;
}

async fn reply_when_stored(ticket: Result<InsertTicket, StoreError>) -> Reply {
    let accepted = match ticket {
        Ok(ticket) => ticket.wait().await,
        Err(e) => Err(e),
    };
    match accepted.map(|mut a| a.pop()) {
        Ok(Some(a)) => Reply { ok: true, id: Some(a.id), dedup_key: a.dedup_key, code: None, error: None },
        Ok(None) => Reply::error("unavailable", "queue returned no acceptance"),
        Err(e @ StoreError::Full(_)) => Reply::error("full", e.to_string()),
        Err(e) => Reply::error("unavailable", e.to_string()),
    }
}
