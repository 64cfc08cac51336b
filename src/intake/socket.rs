//! The Unix stream socket: newline-delimited JSON, one event per line, one reply line per event,
//! in order. `{"ok":true,"id":"...","dedup_key":"..."}` is written only after the event's group
//! commit is on disk; `{"ok":false,"code":"invalid"|"unavailable"|"too_long","error":"..."}` names
//! the field and the rule. A client may pipeline lines without waiting for replies.
//!
//! Bounds: a line longer than `ingest.max_line_bytes` gets an error reply and the connection is
//! closed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::Shutdown;
use crate::event::{Event, IntakeDefaults};
use crate::queue::store::{InsertTicket, NewEvent, Store, StoreError};

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
    /// `invalid` (fix the event), `unavailable` (try again later), `too_long` (line over limit).
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

/// Binds the socket at `path`: creates its directory, replaces a stale socket file left by a
/// crash (but not one a live process answers on), and sets `mode`.
pub fn bind(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Serves connections until shutdown, then removes the socket file. Connections in progress get
/// replies for the lines already read.
pub async fn run(
    listener: UnixListener,
    path: PathBuf,
    store: Store,
    defaults: IntakeDefaults,
    max_line_bytes: usize,
    mut shutdown: Shutdown,
) {
    info!(socket = %path.display(), "socket intake started");
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if let Ok(cred) = stream.peer_cred() {
                        debug!(uid = cred.uid(), gid = cred.gid(), pid = ?cred.pid(), "socket connection");
                    }
                    tokio::spawn(serve(stream, store.clone(), defaults.clone(), max_line_bytes, shutdown.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    debug!("socket intake stopped");
}

async fn serve(
    stream: UnixStream,
    store: Store,
    defaults: IntakeDefaults,
    max_line_bytes: usize,
    mut shutdown: Shutdown,
) {
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let (tx, mut rx) = mpsc::channel::<JoinHandle<Reply>>(REPLY_DEPTH);
    let writer = tokio::spawn(async move {
        let mut out = BufWriter::new(write);
        while let Some(handle) = rx.recv().await {
            let reply = handle.await.unwrap_or_else(|e| Reply::error("unavailable", format!("internal error: {e}")));
            if out.write_all(&reply.line()).await.is_err() {
                return;
            }
            if rx.is_empty() && out.flush().await.is_err() {
                return;
            }
        }
        let _ = out.flush().await;
    });
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(max_line_bytes as u64 + 1);
        let read = tokio::select! {
            _ = shutdown.wait() => break,
            read = limited.read_until(b'\n', &mut line) => read,
        };
        match read {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "socket read failed");
                break;
            }
        }
        if line.last() != Some(&b'\n') && line.len() > max_line_bytes {
            let reply = Reply::error(
                "too_long",
                format!("line: must be at most {max_line_bytes} bytes; closing the connection"),
            );
            let _ = tx.send(tokio::spawn(async move { reply })).await;
            break;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let handle = match Event::from_json(&line, &defaults) {
            Ok(event) => {
                // Submitted here, in line order, so that acceptance order is the connection's
                // order; the wait for the commit happens in the spawned task.
                let ticket = store.submit_insert(vec![NewEvent { id: None, intake: "socket", event }]).await;
                tokio::spawn(reply_when_stored(ticket))
            }
            Err(e) => {
                let reply = Reply::error("invalid", e.to_string());
                tokio::spawn(async move { reply })
            }
        };
        if tx.send(handle).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

async fn reply_when_stored(ticket: Result<InsertTicket, StoreError>) -> Reply {
    let accepted = match ticket {
        Ok(ticket) => ticket.wait().await,
        Err(e) => Err(e),
    };
    match accepted.map(|mut a| a.pop()) {
        Ok(Some(a)) => Reply { ok: true, id: Some(a.id), dedup_key: a.dedup_key, code: None, error: None },
        Ok(None) => Reply::error("unavailable", "queue returned no acceptance"),
        Err(e) => Reply::error("unavailable", e.to_string()),
    }
}
