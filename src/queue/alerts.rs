//! The open-alerts ledger (dedup-key tracking): what this host last told PagerDuty about each
//! dedup key, used to drop repeated triggers and kept until a resolve is old enough to forget.

use std::collections::HashMap;

use super::error::StoreError;
use super::keys::alert_key;
use crate::event::{Event, EventAction};

/// What this host last told PagerDuty about one dedup key (dedup-key tracking).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AlertState {
    /// Routing key, in full (show it redacted).
    pub routing_key: String,
    /// Dedup key.
    pub dedup_key: String,
    /// The last action delivered: trigger, acknowledge or resolve.
    pub last_action: EventAction,
    /// When it was delivered, ms since the epoch.
    pub at_ms: u64,
    /// The summary of the last event that had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Id of the last event delivered for this key.
    pub event_id: String,
}

impl AlertState {
    /// Triggered or acknowledged, not resolved.
    pub fn is_open(&self) -> bool {
        self.last_action != EventAction::Resolve
    }
}

/// The open alert a trigger repeats (same routing key, dedup key and summary, last delivered
/// within `window_ms`), if any.
pub(super) fn repeated_trigger(
    tree: &sled::Tree,
    event: &Event,
    now: u64,
    window_ms: u64,
    alerts: &HashMap<Vec<u8>, AlertState>,
) -> Result<Option<AlertState>, StoreError> {
    let (Some(EventAction::Trigger), Some(dedup)) = (event.action(), event.dedup_key()) else { return Ok(None) };
    let k = alert_key(event.routing_key().as_str(), dedup);
    let state = match alerts.get(&k) {
        Some(s) => Some(s.clone()),
        None => tree.get(&k)?.and_then(|v| serde_json::from_slice::<AlertState>(&v).ok()),
    };
    Ok(state
        .filter(|s| s.is_open() && now.saturating_sub(s.at_ms) < window_ms && s.summary.as_deref() == event.summary()))
}

/// Removes (in `batch`) the tracking of resolved alerts whose resolve was delivered before
/// `before_ms` (ms since the epoch); returns how many.
pub(super) fn forget_resolved(tree: &sled::Tree, before_ms: u64, batch: &mut sled::Batch) -> Result<usize, StoreError> {
    let mut n = 0;
    for item in tree.scan_prefix([b'a']) {
        let (k, v) = item?;
        if let Ok(state) = serde_json::from_slice::<AlertState>(&v) {
            if !state.is_open() && state.at_ms < before_ms {
                batch.remove(k);
                n += 1;
            }
        }
    }
    Ok(n)
}
