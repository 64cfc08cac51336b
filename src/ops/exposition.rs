//! Where the metrics go: an opt-in listener (`[metrics] listen`, loopback by default when set)
//! or a file for node_exporter's textfile collector (`[metrics] textfile`), each time with the
//! queue's gauges read from the store (the metrics themselves: `ops::metrics`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::clock::now_ms;
use crate::ops::metrics::{Metrics, QueueGauges};
use crate::ops::shutdown::Shutdown;
use crate::queue::store::Store;

/// The exposition text of `metrics`, with the queue gauges read from `store` now.
pub fn render(metrics: &Metrics, store: &Store) -> String {
    metrics.encode(&queue_gauges(store))
}

/// Reads the queue's gauges from `store` (one pass over the pending index per routing key).
fn queue_gauges(store: &Store) -> QueueGauges {
    let now = now_ms();
    let (failed, delivered) = store.finished_counts();
    let paused = store.pauses().ok().map(|pauses| pauses.iter().filter(|(_, until)| *until > now).count() as u64);
    let oldest = store
        .pending_from(0, 1)
        .ok()
        .and_then(|p| p.first().map(|e| e.seq))
        .and_then(|seq| store.get(seq).ok().flatten())
        .map(|r| now.saturating_sub(r.accepted_at_ms) / 1000);
    let limits = store.rate_limits();
    let mut throttled = Vec::new();
    for (rk, n) in store.pending_by_key() {
        let limit = limits.of(&rk);
        if limit > 0 && n > u64::from(limit) {
            let seconds = crate::config::delivery::drain_seconds(n, limit);
            throttled.push((rk, seconds));
        }
    }
    QueueGauges {
        pending: store.pending_count() as u64,
        failed,
        delivered,
        superseded: store.superseded_count(),
        paused,
        oldest_age_seconds: oldest.unwrap_or(0),
        outage: store.outage_since().is_some(),
        throttled,
    }
}

/// Serves `GET /metrics` on `listener` until shutdown (one small HTTP/1.1 answer per request).
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, store: Store, mut shutdown: Shutdown) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut stream, _) = tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        };
        let (metrics, store) = (metrics.clone(), store.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await else { return };
            let request = String::from_utf8_lossy(&buf[..n]);
            let (status, body, kind) = if request.starts_with("GET /metrics ") || request.starts_with("GET / ") {
                ("200 OK", render(&metrics, &store), "text/plain; version=0.0.4; charset=utf-8")
            } else {
                ("404 Not Found", "GET /metrics\n".to_owned(), "text/plain")
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}

/// Writes the metrics to `path` every `interval` (temp file, then rename: node_exporter never
/// reads half a file) until shutdown.
pub async fn write_textfile(
    path: PathBuf,
    interval: Duration,
    metrics: Arc<Metrics>,
    store: Store,
    mut shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = write_atomically(&path, render(&metrics, &store).as_bytes()) {
            warn!(file = %path.display(), error = %e, "cannot write the metrics file");
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    // node_exporter runs as its own user: the file is readable by all (the temp file is 0600).
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, IntakeDefaults};
    use crate::queue::request::NewEvent;

    #[tokio::test]
    async fn throttled_keys_and_their_backlog_time_are_exported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q")).unwrap();
        let events = (0..250)
            .map(|n| {
                let rk = if n < 240 { "A".repeat(32) } else { "B".repeat(32) };
                let text = format!(
                    r#"{{"routing_key":"{rk}","event_action":"trigger","dedup_key":"d{n}","payload":{{"summary":"s","source":"h","severity":"info"}}}}"#
                );
                NewEvent { id: None, intake: "socket", event: Event::from_json(text.as_bytes(), &IntakeDefaults::default()).unwrap() }
            })
            .collect();
        store.insert(events).await.unwrap();
        store.set_outage(Some(now_ms()));
        let text = render(&Metrics::new(), &store);
        assert!(text.contains("pdrelay_throttled_routing_keys 1\n"), "{text}");
        assert!(text.contains("pdrelay_throttled_backlog_seconds{routing_key=\"AAAAAA…\"} 120\n"), "{text}");
        assert!(!text.contains("BBBBBB"), "a key under its limit is not listed: {text}");
        assert!(text.contains("pdrelay_delivery_outage 1\n"), "{text}");
        store.set_outage(None);
        assert!(render(&Metrics::new(), &store).contains("pdrelay_delivery_outage 0\n"));
        store.close();
    }
}
