//! Silences: matchers and a time span during which matching alerts are held, not sent.
//! Two kinds: silences made with `pdrelay silence add` (stored in the queue's database, so they
//! survive a restart) and recurring maintenance windows from the config (`[[maintenance]]`,
//! weekly, in UTC). This module holds the types, their checks and the pure question "is this
//! event silenced now, and until when"; the queue holds the events (see `queue::policy`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::rules::routing::Matcher;

/// Longest comment or author, in characters.
pub const MAX_TEXT_CHARS: usize = 1000;
/// Most matchers in one silence.
pub const MAX_MATCHERS: usize = 32;
/// Longest a silence may last (one year), in ms.
pub const MAX_SPAN_MS: u64 = 366 * 86_400_000;

/// A silence made by an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    /// Its id (a UUID).
    pub id: String,
    /// Field -> value, as in `[[routes]]` `match` (exact, `glob:` or `re:`); all must match.
    pub matchers: BTreeMap<String, String>,
    /// Start, ms since the epoch.
    pub starts_at_ms: u64,
    /// End, ms since the epoch; `silence expire` sets it to the moment of expiry.
    pub ends_at_ms: u64,
    /// Why.
    pub comment: String,
    /// Who made it.
    pub created_by: String,
    /// When, ms since the epoch.
    pub created_at_ms: u64,
}

impl Silence {
    /// Checks a silence as given by a client; one line naming the field and the rule.
    pub fn check(&self) -> Result<Vec<Matcher>, String> {
        if self.matchers.is_empty() {
            return Err("matchers: a silence needs at least one matcher (field=value)".into());
        }
        if self.matchers.len() > MAX_MATCHERS {
            return Err(format!("matchers: at most {MAX_MATCHERS}"));
        }
        if self.ends_at_ms <= self.starts_at_ms || self.ends_at_ms - self.starts_at_ms > MAX_SPAN_MS {
            return Err("end: must be after the start and at most 366 days after it".into());
        }
        if self.comment.chars().count() > MAX_TEXT_CHARS || self.created_by.chars().count() > MAX_TEXT_CHARS {
            return Err(format!("comment, created_by: at most {MAX_TEXT_CHARS} characters"));
        }
        self.matchers
            .iter()
            .map(|(k, v)| Matcher::parse(k, v).map_err(|rule| format!("matchers.{k}: {rule}")))
            .collect()
    }

    /// Active at `now_ms`.
    pub fn active(&self, now_ms: u64) -> bool {
        self.starts_at_ms <= now_ms && now_ms < self.ends_at_ms
    }
}

/// One `[[maintenance]]` window as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceSection {
    /// A name, shown as the hold's reason.
    pub name: String,
    /// As in `[[routes]]`: all must match; at least one.
    #[serde(rename = "match")]
    pub matchers: BTreeMap<String, String>,
    /// Days it starts on: mon, tue, wed, thu, fri, sat, sun.
    pub days: Vec<String>,
    /// Start time of day, UTC, "HH:MM".
    pub start: String,
    /// How long it lasts, e.g. "2h"; 1m to 7d.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

/// A checked maintenance window.
#[derive(Debug, Clone)]
pub struct Window {
    /// Its name.
    pub name: String,
    matchers: Vec<Matcher>,
    /// Bit 0 = Monday ... bit 6 = Sunday.
    days: u8,
    /// Minutes after midnight UTC.
    start_min: u64,
    duration_ms: u64,
}

const DAY_MS: u64 = 86_400_000;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Window {
    /// The end (ms since the epoch) of the occurrence `now_ms` falls in, if any.
    pub fn end_if_active(&self, now_ms: u64) -> Option<u64> {
        let today = now_ms / DAY_MS;
        (0..=7u64)
            .filter_map(|back| today.checked_sub(back))
            // 1970-01-01 was a Thursday (index 3 from Monday).
            .filter(|day| self.days & (1 << ((day + 3) % 7)) != 0)
            .map(|day| day * DAY_MS + self.start_min * 60_000)
            .filter(|&start| start <= now_ms && now_ms < start + self.duration_ms)
            .map(|start| start + self.duration_ms)
            .max()
    }
}

/// Checks `[[maintenance]]`, one line per problem (`maintenance[N].key: rule`).
pub fn check_windows(sections: &[MaintenanceSection], problems: &mut Vec<String>) -> Vec<Window> {
    let mut out = Vec::new();
    for (i, s) in sections.iter().enumerate() {
        let at = format!("maintenance[{}]", i + 1);
        let mut ok = true;
        if s.matchers.is_empty() {
            problems.push(format!("{at}.match: needs at least one matcher (a window for every event pages nobody)"));
            ok = false;
        }
        let (matchers, all_good) = crate::rules::routing::parse_matchers(&at, &s.matchers, problems);
        ok &= all_good;
        let mut days = 0u8;
        for d in &s.days {
            match DAYS.iter().position(|x| x.eq_ignore_ascii_case(d)) {
                Some(n) => days |= 1 << n,
                None => {
                    problems.push(format!("{at}.days: must be mon, tue, wed, thu, fri, sat or sun (got {d:?})"));
                    ok = false;
                }
            }
        }
        if s.days.is_empty() {
            problems.push(format!("{at}.days: must name at least one day"));
            ok = false;
        }
        let start_min =
            match s.start.split_once(':').and_then(|(h, m)| Some((h.parse::<u64>().ok()?, m.parse::<u64>().ok()?))) {
                Some((h, m)) if h < 24 && m < 60 && s.start.len() == 5 => h * 60 + m,
                _ => {
                    problems.push(format!("{at}.start: must be a UTC time of day \"HH:MM\" (got {:?})", s.start));
                    ok = false;
                    0
                }
            };
        if s.duration < Duration::from_secs(60) || s.duration > Duration::from_secs(7 * 86_400) {
            problems.push(format!("{at}.duration: must be between 1m and 7d"));
            ok = false;
        }
        if ok {
            let name = if s.name.is_empty() { format!("maintenance {}", i + 1) } else { s.name.clone() };
            out.push(Window { name, matchers, days, start_min, duration_ms: s.duration.as_millis() as u64 });
        }
    }
    out
}

/// A stored silence, its matchers compiled.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The silence.
    pub silence: Silence,
    matchers: Vec<Matcher>,
}

/// Every silence and window that acceptance consults.
#[derive(Debug, Clone, Default)]
pub struct Silences {
    /// Stored silences (expired ones are dropped when loaded).
    pub stored: Vec<Compiled>,
    /// `[[maintenance]]`, checked.
    pub windows: Vec<Window>,
}

impl Silences {
    /// Replaces the stored silences, keeping those that still end after `now_ms`.
    pub fn set_stored(&mut self, silences: Vec<Silence>, now_ms: u64) {
        self.stored = silences
            .into_iter()
            .filter(|s| s.ends_at_ms > now_ms)
            .filter_map(|s| s.check().ok().map(|matchers| Compiled { silence: s, matchers }))
            .collect();
    }

    /// The silence or window holding `event` (come in through `intake`) at `now_ms`: its name
    /// (`silence ID` or `maintenance NAME`) and its end, the latest if several match.
    pub fn holding(&self, event: &Event, intake: &str, now_ms: u64) -> Option<(String, u64)> {
        let stored = self
            .stored
            .iter()
            .filter(|c| c.silence.active(now_ms) && crate::rules::routing::all_match(&c.matchers, event, intake))
            .map(|c| (format!("silence {}", c.silence.id), c.silence.ends_at_ms));
        let windows = self
            .windows
            .iter()
            .filter(|w| crate::rules::routing::all_match(&w.matchers, event, intake))
            .filter_map(|w| w.end_if_active(now_ms).map(|end| (format!("maintenance {}", w.name), end)));
        stored.chain(windows).max_by_key(|(_, end)| *end)
    }
}

/// Parses `FIELD=VALUE` arguments (as `silence add --match` gives them).
pub fn parse_matcher_args(args: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for a in args {
        let (k, v) = a.split_once('=').ok_or_else(|| format!("--match {a:?}: must be FIELD=VALUE"))?;
        Matcher::parse(k, v).map_err(|rule| format!("--match {k}: {rule}"))?;
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &[&str], start: &str, duration: u64) -> Vec<Window> {
        let mut problems = Vec::new();
        let s = MaintenanceSection {
            name: "w".into(),
            matchers: [("source".to_owned(), "db1".to_owned())].into(),
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.into(),
            duration: Duration::from_secs(duration),
        };
        let w = check_windows(&[s], &mut problems);
        assert!(problems.is_empty() || w.is_empty(), "{problems:?}");
        w
    }

    #[test]
    fn a_weekly_window_is_active_within_its_occurrence_also_across_midnight() {
        // 2026-12-05 is a Saturday; 2026-12-05T23:00Z = 1796511600000 ms.
        let sat_23h = 1_796_511_600_000;
        let w = &window(&["sat"], "22:30", 7200)[0];
        assert_eq!(w.end_if_active(sat_23h), Some(sat_23h + 90 * 60_000));
        assert_eq!(w.end_if_active(sat_23h + 80 * 60_000), Some(sat_23h + 90 * 60_000), "Sunday 00:20");
        assert_eq!(w.end_if_active(sat_23h + 90 * 60_000), None);
        assert_eq!(w.end_if_active(sat_23h - 31 * 60_000), None);
        assert_eq!(window(&["sun"], "22:30", 7200)[0].end_if_active(sat_23h), None);
    }

    #[test]
    fn windows_and_silences_are_checked_one_line_each() {
        let mut problems = Vec::new();
        let s = MaintenanceSection { days: vec!["funday".into()], start: "25:00".into(), ..Default::default() };
        assert!(check_windows(&[s], &mut problems).is_empty());
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[1].starts_with("maintenance[1].days: must be mon"), "{problems:?}");
        let silence = Silence {
            id: "x".into(),
            matchers: BTreeMap::new(),
            starts_at_ms: 5,
            ends_at_ms: 1,
            comment: String::new(),
            created_by: String::new(),
            created_at_ms: 0,
        };
        assert!(silence.check().unwrap_err().starts_with("matchers:"));
        assert!(parse_matcher_args(&["source".into()]).unwrap_err().contains("FIELD=VALUE"));
    }
}
