//! Queue administration: `pdrelay queue status|list|show|retry|purge`, and the retention sweep.
//!
//! The same [`server::execute`] serves both paths: with the daemon running, the CLI sends one JSON
//! request line over the admin socket (`ingest.admin_socket`, mode 0600; the daemon also checks
//! the caller's uid with SO_PEERCRED: root or its own user only, since a purge is not for every
//! member of the send group) and reads one JSON reply line; with the daemon stopped, the CLI
//! opens the store itself (sled's lock tells which case holds).
//!
//! The parts: [`protocol`] (the wire types, the bottom), [`server`] (the socket and [`server::execute`]),
//! [`retention`] (the sweep), [`render`] (human tables). This file is the CLI's side: [`call`].

pub mod protocol;
pub mod render;
pub mod retention;
pub mod server;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use crate::admin::protocol::{AdminAnswer, AdminError, AdminReply, AdminRequest};
use crate::admin::server::execute;
use crate::config::Config;
use crate::queue::error::StoreError;
use crate::queue::store::Store;

/// Carries out `request` for the CLI: through the running daemon's admin socket, or on the
/// store directly when no daemon runs.
pub fn call(config: &Config, request: AdminRequest) -> Result<AdminAnswer, AdminError> {
    let socket = &config.file.ingest.admin_socket;
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => via_socket(stream, &request),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(AdminError::Denied(format!(
            "permission denied on {}: queue commands are for root and the pdrelay daemon's user",
            socket.display()
        ))),
        Err(_) => direct(
            &config.queue_path(),
            socket,
            request,
            crate::config::delivery::RateLimits::from_section(&config.file.delivery),
        ),
    }
}

fn via_socket(stream: std::os::unix::net::UnixStream, request: &AdminRequest) -> Result<AdminAnswer, AdminError> {
    let io = |e: std::io::Error| AdminError::Failed(format!("admin socket: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(io)?;
    let mut writer = stream.try_clone().map_err(io)?;
    let mut line = serde_json::to_vec(request).expect("admin requests serialize");
    line.push(b'\n');
    // A daemon that refuses the caller answers without reading the request; its reply still
    // counts, so a failed write is not the end.
    let wrote = writer.write_all(&line);
    let mut reply = String::new();
    let read = BufReader::new(stream).read_line(&mut reply);
    if reply.is_empty() {
        wrote.map_err(io)?;
        read.map_err(io)?;
    }
    let reply: AdminReply =
        serde_json::from_str(&reply).map_err(|e| AdminError::Failed(format!("admin socket: unreadable reply: {e}")))?;
    match (reply.ok, reply.answer, reply.error) {
        (true, Some(answer), _) => Ok(answer),
        (_, _, Some(error)) if error.starts_with("permission denied") => Err(AdminError::Denied(error)),
        (_, _, Some(error)) if error.starts_with("id: ") => Err(AdminError::Invalid(error)),
        (_, _, error) => Err(AdminError::Failed(error.unwrap_or_else(|| "admin socket: empty reply".into()))),
    }
}

fn direct(
    queue: &Path,
    socket: &Path,
    request: AdminRequest,
    limits: crate::config::delivery::RateLimits,
) -> Result<AdminAnswer, AdminError> {
    crate::queue::disk::act_as_queue_owner(queue).map_err(|e| {
        AdminError::Failed(format!(
            "cannot act as the owner of {} (root runs queue commands as the daemon's user, so the queue stays usable by it): {e}",
            queue.display()
        ))
    })?;
    let store = Store::open(queue).map_err(|e| match e {
        StoreError::Locked { .. } => AdminError::Failed(format!(
            "a running daemon holds the queue at {} but its admin socket {} does not answer",
            queue.display(),
            socket.display()
        )),
        other => AdminError::Failed(other.to_string()),
    })?;
    store.set_rate_limits(limits);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AdminError::Failed(e.to_string()))?;
    let result = runtime.block_on(execute(&store, request));
    store.close();
    result
}
