//! Retention: the `[retention]` sweep that removes old delivered, failed and superseded records
//! and expires pending events past `max_pending_age`, run by the daemon every `sweep_interval`.

use tracing::{error, info, warn};

use crate::clock::now_ms;
use crate::config::sections::RetentionSection;
use crate::ops::shutdown::Shutdown;
use crate::queue::error::StoreError;
use crate::queue::record::State;
use crate::queue::store::Store;

/// Sequence numbers of the records in `state` finished (last attempted, or accepted) at or
/// before `cutoff_ms` (ms since the epoch); unreadable records are skipped.
pub(super) fn finished_before(store: &Store, state: State, cutoff_ms: u64) -> Vec<u64> {
    store
        .records()
        .filter_map(Result::ok)
        .filter(|r| r.state == state && r.last_attempt_at_ms.unwrap_or(r.accepted_at_ms) <= cutoff_ms)
        .map(|r| r.seq)
        .collect()
}

/// Applies `[retention]` once: removes delivered and failed records past their keep time, and
/// moves pending events past `max_pending_age` (when set) to failed with the reason "expired".
/// Returns (removed, expired).
pub async fn sweep(store: &Store, retention: &RetentionSection) -> Result<(usize, usize), StoreError> {
    let now = now_ms();
    let s = store.clone();
    let r = retention.clone();
    let (remove, expire) = tokio::task::spawn_blocking(move || {
        let mut remove = finished_before(&s, State::Delivered, now.saturating_sub(r.delivered.as_millis() as u64));
        remove.extend(finished_before(&s, State::Failed, now.saturating_sub(r.failed.as_millis() as u64)));
        let delivered_cutoff = now.saturating_sub(r.delivered.as_millis() as u64);
        remove.extend(finished_before(&s, State::Superseded, delivered_cutoff));
        let expire: Vec<u64> = if r.max_pending_age.is_zero() {
            Vec::new()
        } else {
            let cutoff = now.saturating_sub(r.max_pending_age.as_millis() as u64);
            s.records()
                .filter_map(Result::ok)
                .filter(|x| x.state == State::Pending && x.accepted_at_ms <= cutoff)
                .map(|x| x.seq)
                .collect()
        };
        (remove, expire)
    })
    .await
    .map_err(|e| StoreError::Io(e.to_string()))?;
    let removed = if remove.is_empty() { 0 } else { store.remove_finished(remove).await? };
    store.forget_resolved(now.saturating_sub(retention.delivered.as_millis() as u64)).await?;
    let expired = if expire.is_empty() { 0 } else { store.expire(expire).await? };
    Ok((removed, expired))
}

/// Runs [`sweep`] at start and every `sweep_interval` until shutdown.
pub async fn run_retention(store: Store, retention: RetentionSection, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(retention.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        match sweep(&store, &retention).await {
            Ok((removed, expired)) => {
                if expired > 0 {
                    error!(expired, max_pending_age = ?retention.max_pending_age, "events expired undelivered; see `pdrelay queue list --state failed`");
                }
                if removed > 0 {
                    info!(removed, "old delivered and failed records removed");
                }
            }
            Err(e) => warn!(error = %e, "retention sweep failed; will try again"),
        }
    }
}
