//! The human tables the CLI prints for admin answers (`--json` prints the answers as they are).

use std::time::Duration;

use crate::admin::protocol::{list_state, AdminAnswer, OpenAlert};
use crate::clock::now_ms;
use crate::clock::rfc3339;

/// Renders an answer as the human tables the CLI prints. Producer text (dedup keys, summaries)
/// and PagerDuty's error texts are shown escaped ([`crate::text::Escaped`]).
pub fn render(answer: &AdminAnswer) -> String {
    use crate::text::{escaped, Escaped};
    use std::fmt::Write as _;
    let mut out = String::new();
    match answer {
        AdminAnswer::Silences(silences) => {
            let now = now_ms();
            for s in silences {
                let state = if s.active(now) {
                    "active"
                } else if s.starts_at_ms > now {
                    "pending"
                } else {
                    "expired"
                };
                let matchers: Vec<String> = s.matchers.iter().map(|(k, v)| format!("{k}={}", Escaped(v))).collect();
                let _ = writeln!(
                    out,
                    "{}  {state:<7}  {} .. {}  {}  by {}: {}",
                    s.id,
                    rfc3339(s.starts_at_ms),
                    rfc3339(s.ends_at_ms),
                    matchers.join(","),
                    Escaped(&s.created_by),
                    Escaped(&s.comment)
                );
            }
        }
        AdminAnswer::SilenceExpired { silence, released } => {
            let _ = writeln!(out, "silence {} expired; {released} held events released", silence.id);
        }
        AdminAnswer::Status(s) => {
            let t = &s.total;
            let _ = writeln!(
                out,
                "pending    {}\nwaiting    {}\nfailed     {}\ndelivered  {}",
                t.pending, t.waiting, t.failed, t.delivered
            );
            let age = s.oldest_pending_age_s.map(|a| humantime::format_duration(Duration::from_secs(a)).to_string());
            if t.superseded > 0 {
                let _ = writeln!(out, "superseded {}", t.superseded);
            }
            let _ = writeln!(out, "oldest pending  {}", age.as_deref().unwrap_or("-"));
            if let Some(since) = &s.outage_since {
                let _ = writeln!(out, "delivery        PagerDuty unreachable since {since}; probing, events wait");
            }
            let _ = writeln!(
                out,
                "last success    {}",
                s.last_success.as_ref().map(|(at, id)| format!("{at} ({id})")).as_deref().unwrap_or("-")
            );
            let _ = writeln!(
                out,
                "last error      {}",
                s.last_error.as_ref().map(|(at, e)| format!("{at} {}", Escaped(e))).as_deref().unwrap_or("-")
            );
            if !s.routing_keys.is_empty() {
                let _ = writeln!(
                    out,
                    "\n{:<10} {:>9} {:>9} {:>9} {:>9}",
                    "ROUTING", "PENDING", "WAITING", "FAILED", "DELIVERED"
                );
                for (key, c) in &s.routing_keys {
                    let _ = writeln!(
                        out,
                        "{:<10} {:>9} {:>9} {:>9} {:>9}",
                        key, c.pending, c.waiting, c.failed, c.delivered
                    );
                }
            }
            if !s.paused.is_empty() {
                let _ = writeln!(out, "\nPAUSED     UNTIL");
                for (key, until) in &s.paused {
                    let _ = writeln!(out, "{key:<10} {until}");
                }
            }
            if !s.throttled.is_empty() {
                let _ = writeln!(out, "\n{:<10} {:>9} {:>9}  DRAINS IN", "THROTTLED", "PENDING", "LIMIT/MIN");
                for t in &s.throttled {
                    let eta = humantime::format_duration(Duration::from_secs(t.drains_in_s));
                    let _ = writeln!(out, "{:<10} {:>9} {:>9}  {eta}", t.routing_key, t.pending, t.limit_per_min);
                }
            }
        }
        AdminAnswer::List(rows) => {
            let _ = writeln!(
                out,
                "{:<36} {:<9} {:<6} {:<8} {:<11} {:>3} {:<24} SUMMARY",
                "ID", "STATE", "API", "ROUTING", "ACTION", "TRY", "DEDUP KEY"
            );
            for r in rows {
                let state =
                    serde_json::to_value(r.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
                let dedup: String = r.dedup_key.as_deref().unwrap_or("-").chars().take(24).collect();
                let dedup = escaped(&dedup);
                let _ = writeln!(
                    out,
                    "{:<36} {:<9} {:<6} {:<8} {:<11} {:>3} {:<24} {}",
                    r.id,
                    state,
                    r.kind,
                    r.routing_key,
                    r.action.as_deref().unwrap_or("change"),
                    r.attempts,
                    dedup,
                    Escaped(r.summary.as_deref().unwrap_or(""))
                );
            }
        }
        AdminAnswer::Show(record) => {
            let _ = writeln!(out, "id           {}", record.id);
            // The same word `queue list` and `queue status` use: a pending event whose retry
            // time is ahead is `waiting`.
            let state = serde_json::to_value(list_state(record, now_ms()))
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = writeln!(out, "state        {state}");
            let _ = writeln!(out, "api          {}", record.event.kind().as_str());
            let _ = writeln!(out, "routing key  {}", record.event.routing_key().redacted());
            let _ = writeln!(out, "dedup key    {}", Escaped(record.event.dedup_key().unwrap_or("-")));
            let _ = writeln!(out, "accepted     {} (via {})", rfc3339(record.accepted_at_ms), record.intake);
            let _ = writeln!(out, "attempts     {}", record.attempts);
            if let Some(at) = record.last_attempt_at_ms {
                let _ = writeln!(out, "last attempt {}", rfc3339(at));
            }
            if let Some(at) = record.next_attempt_at_ms {
                let _ = writeln!(out, "next attempt {}", rfc3339(at));
            }
            if let Some(status) = record.last_status {
                let _ = writeln!(out, "last status  {status}");
            }
            if let Some(e) = &record.last_error {
                let _ = writeln!(out, "last error   {}", Escaped(e));
            }
            for e in &record.errors {
                let _ = writeln!(out, "error        {}", Escaped(e));
            }
            let mut body: serde_json::Value = serde_json::from_slice(&record.event.request_body()).unwrap_or_default();
            // Shortened here as in the header (`--json` has the whole record).
            for field in ["routing_key", "service_key"] {
                if let Some(key) = body.get_mut(field) {
                    if let Some(text) = key.as_str() {
                        *key = serde_json::Value::String(crate::event::redact_routing_key(text));
                    }
                }
            }
            let _ = writeln!(
                out,
                "event        {}",
                crate::text::escape_controls(&serde_json::to_string_pretty(&body).unwrap_or_default())
                    .replace('\n', "\n             ")
            );
        }
        AdminAnswer::Changed(n) => {
            let _ = writeln!(out, "{n} event(s) changed");
        }
        AdminAnswer::Alerts(alerts) => {
            let state = |a: &OpenAlert| match a.last_action.as_str() {
                "trigger" => "triggered",
                "acknowledge" => "acknowledged",
                _ => "resolved",
            };
            let theirs = |a: &OpenAlert| match (&a.pagerduty, &a.pagerduty_by) {
                (None, _) => "-".to_owned(),
                (Some(s), Some(by)) if s != "triggered" => format!("{s} by {}", escaped(by)),
                (Some(s), _) => s.clone(),
            };
            // Each column as wide as its widest cell (dedup keys vary: at most 255 characters).
            let width = |header: &str, cell: &dyn Fn(&OpenAlert) -> usize| {
                alerts.iter().map(cell).chain([header.chars().count()]).max().unwrap_or(0)
            };
            let w_key = width("ROUTING", &|a| a.routing_key.chars().count());
            let w_state = width("STATE", &|a| state(a).len());
            let w_at = width("SINCE", &|a| a.at.chars().count());
            let w_dedup = width("DEDUP KEY", &|a| escaped(&a.dedup_key).chars().count());
            let w_theirs = width("IN PAGERDUTY", &|a| theirs(a).chars().count());
            let _ = writeln!(
                out,
                "{:<w_key$} {:<w_state$} {:<w_at$} {:<w_dedup$} {:<w_theirs$} SUMMARY",
                "ROUTING", "STATE", "SINCE", "DEDUP KEY", "IN PAGERDUTY"
            );
            for a in alerts {
                let _ = writeln!(
                    out,
                    "{:<w_key$} {:<w_state$} {:<w_at$} {:<w_dedup$} {:<w_theirs$} {}",
                    a.routing_key,
                    state(a),
                    a.at,
                    escaped(&a.dedup_key),
                    theirs(a),
                    Escaped(a.summary.as_deref().unwrap_or(""))
                );
                if let Some(d) = &a.disagreement {
                    let hint = if d == crate::queue::view::RESOLVED_HERE_OPEN_THERE {
                        ": `pdrelay alerts --resend-resolves` sends the resolve again"
                    } else {
                        ""
                    };
                    let _ = writeln!(out, "         ! {d}{hint}");
                }
            }
        }
        AdminAnswer::Ledger { alerts, views } => {
            let _ = writeln!(out, "{} tracked dedup key(s), {} PagerDuty view(s)", alerts.len(), views.len());
        }
    }
    out
}
