//! What PagerDuty's REST API last said about the incident behind one tracked dedup key: the
//! other half of the open-alerts ledger (`pdrelay alerts`), written by reconciliation
//! (`reconcile`) and read by ack-back (`ackback`). Stored under key prefix `v` (routing key, 0,
//! dedup key), JSON, beside the `a` entries of dedup-key tracking.

use serde::{Deserialize, Serialize};

/// Disagreement: resolved by pdrelay, still triggered or acknowledged in PagerDuty.
pub const RESOLVED_HERE_OPEN_THERE: &str = "resolved here, still open in PagerDuty";
/// Disagreement: open here, resolved in PagerDuty.
pub const OPEN_HERE_RESOLVED_THERE: &str = "open here, resolved in PagerDuty";
/// Disagreement: triggered here, and PagerDuty has no incident with this key.
pub const OPEN_HERE_NONE_THERE: &str = "open here, no incident with this key in PagerDuty";

/// PagerDuty's view of one dedup key, as last read from its REST API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PagerDutyView {
    /// Routing key, in full (show it redacted).
    pub routing_key: String,
    /// Dedup key (PagerDuty's incident key).
    pub dedup_key: String,
    /// `triggered`, `acknowledged` or `resolved`; `none` when PagerDuty has no incident with
    /// this key.
    pub status: String,
    /// PagerDuty's incident id (such as `PT4KHLK`), when there is an incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_id: Option<String>,
    /// The incident's web page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html_url: Option<String>,
    /// Who acknowledged or resolved it (PagerDuty's user name; producer-like text: escape it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When that happened, as PagerDuty wrote it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<String>,
    /// When pdrelay read this, ms since the epoch.
    pub checked_ms: u64,
    /// The acknowledgement (or resolution) last passed back to Nagios or Icinga, as
    /// `<incident id>@<changed_at>`: ack-back acts once per mark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_back: Option<String>,
}

impl PagerDutyView {
    /// Triggered or acknowledged in PagerDuty.
    pub fn is_open(&self) -> bool {
        matches!(self.status.as_str(), "triggered" | "acknowledged")
    }

    /// How pdrelay's side (open here or not, last action a trigger or not, delivered at
    /// `local_at_ms`) and this view disagree, if they do. A view read before pdrelay's last
    /// delivery for the key says nothing yet.
    pub fn disagreement(&self, open_here: bool, triggered_here: bool, local_at_ms: u64) -> Option<&'static str> {
        if self.checked_ms < local_at_ms {
            return None;
        }
        match (open_here, self.status.as_str()) {
            (false, "triggered" | "acknowledged") => Some(RESOLVED_HERE_OPEN_THERE),
            (true, "resolved") => Some(OPEN_HERE_RESOLVED_THERE),
            (true, "none") if triggered_here => Some(OPEN_HERE_NONE_THERE),
            _ => None,
        }
    }

    /// The mark ack-back records for the current state (`<incident id>@<changed_at>`).
    pub fn mark(&self) -> String {
        format!("{}@{}", self.incident_id.as_deref().unwrap_or(""), self.changed_at.as_deref().unwrap_or(""))
    }
}

/// What to store when `new` is written over `old`: the newer read wins (two passes may overlap:
/// the daemon's and `alerts --refresh`), and an ack-back mark is never lost, so an
/// acknowledgement is passed back once.
pub(super) fn merge_view(old: Option<PagerDutyView>, new: PagerDutyView) -> PagerDutyView {
    match old {
        None => new,
        Some(mut old) if old.checked_ms > new.checked_ms => {
            if new.acked_back.is_some() {
                old.acked_back = new.acked_back;
            }
            old
        }
        Some(old) => PagerDutyView { acked_back: new.acked_back.or(old.acked_back), ..new },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::store::Store;

    #[tokio::test]
    async fn pagerduty_views_survive_a_reopen_newer_reads_win_and_marks_stay() {
        let dir = tempfile::tempdir().unwrap();
        let view = |status: &str, checked_ms: u64, mark: Option<&str>| PagerDutyView {
            routing_key: "R".into(),
            dedup_key: "k".into(),
            status: status.into(),
            incident_id: Some("P1".into()),
            html_url: None,
            by: None,
            changed_at: None,
            checked_ms,
            acked_back: mark.map(str::to_owned),
        };
        let store = Store::open(&dir.path().join("q")).unwrap();
        store.put_pagerduty_views(vec![(view("acknowledged", 20, Some("P1@t")), true)]).await.unwrap();
        // An older read (a pass that began earlier) does not replace it, and a newer read without
        // the mark keeps the mark.
        store.put_pagerduty_views(vec![(view("triggered", 10, None), true)]).await.unwrap();
        assert_eq!(store.pagerduty_views().unwrap(), vec![view("acknowledged", 20, Some("P1@t"))]);
        store.put_pagerduty_views(vec![(view("resolved", 30, None), true)]).await.unwrap();
        store.close();
        drop(store);
        let store = Store::open_when_unlocked(&dir.path().join("q")).unwrap();
        assert_eq!(store.pagerduty_views().unwrap(), vec![view("resolved", 30, Some("P1@t"))]);
        store.put_pagerduty_views(vec![(view("resolved", 30, None), false)]).await.unwrap();
        assert!(store.pagerduty_views().unwrap().is_empty());
        store.close();
    }
}
