//! Moving a host from PagerDuty's Python agent (pdagent) to pdrelay: importing the events still
//! in pdagent's queue directory, pd-send's `-x/--context` flag, and the output of pd-queue.
//!
//! **Queue import** (`pdrelay import-pdagent [DIR]`). pdagent keeps each queued event as one file,
//! `/var/lib/pdagent/outqueue/pdq/<time>_<service key>.txt` (older versions: `pdq_<time>_<key>.txt`
//! directly in `/var/lib/pdagent/outqueue`): one Events API v1 event as compact JSON with sorted
//! keys, non-ASCII escaped as `\u` sequences, and an `agent` object (agent id, queue time, which
//! tool queued it) that is not part of the Events API and is dropped here. File names sort in
//! queue order, so files are imported in name order, which keeps each key's order.
//!
//! Each file is validated like any other event, handed to the daemon (or, with no daemon, written
//! as a durable drop-file into the spool directory) and only once that is acknowledged renamed to
//! `<name>.imported`: never deleted, and a second run does not import it again. A file that is not
//! a valid event is reported and left as it is; pdagent's delivered (`suc_`), given-up (`err_`)
//! and half-written (`tmp_`) files of the old layout are skipped. When the daemon cannot store an
//! event, the import stops there, so a later event of the same key cannot overtake it; run it
//! again once the cause is fixed. A crash between the hand-over and the rename can send that one
//! event twice (PagerDuty deduplicates a repeated trigger by its incident key).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::admin::protocol::{Counts, StatusReport};
use crate::event::{Event, EventError, IntakeDefaults};
use crate::producers::send::{Handed, SendError, Sent};

/// Where pdagent keeps its queue.
pub const DEFAULT_QUEUE_DIR: &str = "/var/lib/pdagent/outqueue/pdq";
/// Where older pdagent versions kept it (`pdq_*.txt` beside `suc_*` and `err_*` files).
pub const OLD_QUEUE_DIR: &str = "/var/lib/pdagent/outqueue";
/// Appended to the name of an imported file.
pub const IMPORTED_SUFFIX: &str = ".imported";
/// Largest queue file read, in bytes (an event is at most 512 KB; pdagent's own limit is 4 MB).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The default queue directory: pdagent's, or the old layout's when only that one exists.
pub fn default_queue_dir() -> PathBuf {
    let new = Path::new(DEFAULT_QUEUE_DIR);
    if !new.exists() && Path::new(OLD_QUEUE_DIR).is_dir() {
        PathBuf::from(OLD_QUEUE_DIR)
    } else {
        new.to_path_buf()
    }
}

/// The files of a queue directory.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct QueueFiles {
    /// Files to import, in queue (name) order.
    pub events: Vec<PathBuf>,
    /// `.txt` files left alone, with the reason.
    pub skipped: Vec<(PathBuf, &'static str)>,
}

/// Lists the queue files in `dir`: regular `*.txt` files, not hidden, in name order. In the old
/// layout, `suc_*` (delivered), `err_*` (pdagent gave up on them) and `tmp_*` (being written) are
/// skipped.
pub fn queue_files(dir: &Path) -> std::io::Result<QueueFiles> {
    let mut out = QueueFiles::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".txt") || !entry.file_type()?.is_file() {
            continue;
        }
        let reason = if name.starts_with("suc_") {
            Some("delivered by pdagent")
        } else if name.starts_with("err_") {
            Some("pdagent gave up on it (PagerDuty refused it, or too large)")
        } else if name.starts_with("tmp_") {
            Some("being written by pdagent, or left by a crash")
        } else {
            None
        };
        match reason {
            Some(r) => out.skipped.push((entry.path(), r)),
            None => out.events.push(entry.path()),
        }
    }
    out.events.sort();
    out.skipped.sort();
    Ok(out)
}

/// Reads one pdagent queue file into a validated event (the `agent` object dropped).
pub fn read_queue_file(bytes: &[u8], defaults: &IntakeDefaults) -> Result<Event, EventError> {
    let mut value: Value =
        serde_json::from_slice(bytes).map_err(|e| EventError::new("event", format!("is not valid JSON ({e})")))?;
    match value.as_object_mut() {
        Some(object) => {
            object.remove("agent");
        }
        None => return Err(EventError::new("event", "must be a JSON object")),
    }
    Event::from_value(value, defaults)
}

/// The name an imported file gets.
pub fn imported_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(IMPORTED_SUFFIX);
    path.with_file_name(name)
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// Events handed over and their files renamed (dry run: that would be).
    pub imported: usize,
    /// Files that are not valid events, left in place.
    pub invalid: usize,
    /// Files skipped (old layout's delivered, given-up and temporary files).
    pub skipped: usize,
    /// Why the import stopped early (the event could not be stored, or its file not renamed).
    pub stopped: Option<String>,
    /// Whether some event went to the spool directory because no daemon answered.
    pub spooled: bool,
}

/// Imports every event file in `dir` (see the module docs), handing each event to `hand` (the
/// daemon or the spool: [`crate::producers::send::hand_over`]). Writes one line per file to `out` and one
/// per problem to `err`. Returns an error only when `dir` cannot be listed.
pub fn import(
    dir: &Path,
    defaults: &IntakeDefaults,
    dry_run: bool,
    mut hand: impl FnMut(&Event) -> Result<Sent, SendError>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<ImportReport> {
    let files = queue_files(dir)?;
    let mut report = ImportReport { skipped: files.skipped.len(), ..ImportReport::default() };
    for (path, reason) in &files.skipped {
        let _ = writeln!(out, "{}: skipped: {reason}", path.display());
    }
    for path in &files.events {
        let bytes = match read_limited(path) {
            Ok(b) => b,
            // Gone: a pdagent still running sent it meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = writeln!(err, "{}: gone before it could be read (is pdagent still running?)", path.display());
                continue;
            }
            Err(e) => {
                report.invalid += 1;
                let _ = writeln!(err, "{}: cannot be read: {e}; left in place", path.display());
                continue;
            }
        };
        let event = match read_queue_file(&bytes, defaults) {
            Ok(event) => event,
            Err(e) => {
                report.invalid += 1;
                let _ = writeln!(err, "{}: not a valid event: {e}; left in place", path.display());
                continue;
            }
        };
        let what = format!("{} {}", event.kind().as_str(), event.action().map(|a| a.as_str()).unwrap_or("change"));
        if dry_run {
            report.imported += 1;
            let _ = writeln!(
                out,
                "{}: would import: {what}, routing key {}, dedup key {}",
                path.display(),
                event.routing_key().redacted(),
                event.dedup_key().unwrap_or("-")
            );
            continue;
        }
        let sent = match hand(&event) {
            Ok(sent) => sent,
            Err(SendError::Invalid(e)) => {
                report.invalid += 1;
                let _ = writeln!(err, "{}: refused by the daemon: {e}; left in place", path.display());
                continue;
            }
            Err(e) => {
                report.stopped = Some(format!("{}: {e}; this file and the ones after it are left", path.display()));
                break;
            }
        };
        report.spooled |= matches!(sent.handed, Handed::Spool(_));
        if let Err(e) = rename_durably(path) {
            report.stopped = Some(format!(
                "{}: stored as id={} but not renamed to {}: {e}; rename it by hand so it is not imported twice",
                path.display(),
                sent.id,
                imported_path(path).display()
            ));
            break;
        }
        report.imported += 1;
        let _ = writeln!(
            out,
            "{}: imported: {what}, id={} dedup_key={}",
            path.display(),
            sent.id,
            sent.dedup_key.as_deref().unwrap_or("")
        );
    }
    Ok(report)
}

fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    Ok(bytes)
}

/// Renames `path` to its `.imported` name and fsyncs the directory, so that a power cut does not
/// bring back a file whose event is already stored.
fn rename_durably(path: &Path) -> std::io::Result<()> {
    let target = imported_path(path);
    if target.exists() {
        return Err(std::io::Error::other(format!("{} already exists", target.display())));
    }
    std::fs::rename(path, &target)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// One pd-send `-x/--context`: `link:href=URL[,text=TEXT]` or `image:src=URL[,href=URL][,alt=TEXT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Context {
    /// A link.
    Link {
        /// URL.
        href: String,
        /// Text shown.
        text: Option<String>,
    },
    /// An image.
    Image {
        /// Image URL.
        src: String,
        /// Link opened on click.
        href: Option<String>,
        /// Alternative text.
        alt: Option<String>,
    },
}

/// Parses a pd-send context, `TYPE:KEY=VALUE[,KEY=VALUE...]`, as pd-send did (split at the
/// first `:`, then at each `,`, then at each first `=`).
pub fn parse_context(text: &str) -> Result<Context, EventError> {
    let bad = |rule: String| EventError::new("--context", rule);
    let (kind, params) = text.split_once(':').ok_or_else(|| {
        bad(format!("must be link:href=URL[,text=TEXT] or image:src=URL[,href=URL][,alt=TEXT] (got {text:?})"))
    })?;
    let mut map = std::collections::BTreeMap::new();
    for pair in params.split(',') {
        let (k, v) = pair.split_once('=').ok_or_else(|| bad(format!("{pair:?} must be KEY=VALUE")))?;
        map.insert(k.trim().to_owned(), v.to_owned());
    }
    let mut take = |k: &str| map.remove(k).filter(|v| !v.is_empty());
    let context = match kind.trim() {
        "link" => Context::Link {
            href: take("href").ok_or_else(|| bad("link: href=URL is required".into()))?,
            text: take("text"),
        },
        "image" => Context::Image {
            src: take("src").ok_or_else(|| bad("image: src=URL is required".into()))?,
            href: take("href"),
            alt: take("alt"),
        },
        other => return Err(bad(format!("type must be link or image (got {other:?})"))),
    };
    if let Some(extra) = map.keys().next() {
        return Err(bad(format!("{extra:?} is not a {} parameter", kind.trim())));
    }
    Ok(context)
}

/// Adds contexts to an event built by `send` (before validation): v1 `contexts[]`, v2 `links[]`
/// and `images[]`; a change event takes links only.
pub fn apply_contexts(event: &mut Value, contexts: &[Context]) -> Result<(), EventError> {
    let Some(obj) = event.as_object_mut() else { return Ok(()) };
    let v1 = obj.contains_key("event_type");
    let change = !v1 && !obj.contains_key("event_action");
    for context in contexts {
        let (field, item) = match (context, v1) {
            (Context::Link { href, text }, true) => {
                ("contexts", opt(json!({"type": "link", "href": href}), "text", text))
            }
            (Context::Image { src, href, alt }, true) => {
                ("contexts", opt(opt(json!({"type": "image", "src": src}), "href", href), "alt", alt))
            }
            (Context::Link { href, text }, false) => ("links", opt(json!({"href": href}), "text", text)),
            (Context::Image { .. }, false) if change => {
                return Err(EventError::new("--context", "a change event takes links only, not images"))
            }
            (Context::Image { src, href, alt }, false) => {
                ("images", opt(opt(json!({"src": src}), "href", href), "alt", alt))
            }
        };
        match obj.entry(field).or_insert_with(|| Value::Array(Vec::new())) {
            Value::Array(items) => items.push(item),
            _ => return Err(EventError::new(field, "must be an array")),
        }
    }
    Ok(())
}

fn opt(mut v: Value, key: &str, value: &Option<String>) -> Value {
    if let Some(value) = value {
        v[key] = json!(value);
    }
    v
}

/// Whether a status row's routing key (redacted: its first characters and `…`) matches `key`
/// (in full, or its first characters).
fn key_matches(row: &str, key: &str) -> bool {
    let row = row.trim_end_matches('…');
    let key = key.trim().trim_end_matches('…');
    key.starts_with(row) || row.starts_with(key)
}

/// Narrows a status report to one routing key: its rows, its pauses, and totals recomputed from
/// them. Rows are per redacted key (first 6 characters), so keys sharing those are counted
/// together. The oldest-pending age and the last success and error stay those of the whole queue.
pub fn filter_status(report: &mut StatusReport, key: &str) {
    report.routing_keys.retain(|(row, _)| key_matches(row, key));
    report.paused.retain(|(row, _)| key_matches(row, key));
    report.throttled.retain(|t| key_matches(&t.routing_key, key));
    let mut total = Counts::default();
    for (_, c) in &report.routing_keys {
        total.pending += c.pending;
        total.waiting += c.waiting;
        total.failed += c.failed;
        total.delivered += c.delivered;
        total.superseded += c.superseded;
    }
    report.total = total;
}

/// `queue status` as pd-queue printed it: `Service Key`, `Pending` (pending and waiting),
/// `Success` (delivered and still kept), `In Error` (failed), columns of 35, 10, 10 and 10; or
/// `Nothing to report.` Service keys are shown as pdrelay shows them, first 6 characters.
pub fn render_pd_queue_status(report: &StatusReport) -> String {
    use std::fmt::Write as _;
    if report.routing_keys.is_empty() {
        return "Nothing to report.\n".to_owned();
    }
    let mut out = String::new();
    let _ = writeln!(out, "{:<35}{:>10}{:>10}{:>10}", "Service Key", "Pending", "Success", "In Error");
    let _ = writeln!(out, "{}", "=".repeat(65));
    for (key, c) in &report.routing_keys {
        let _ = writeln!(out, "{:<35}{:>10}{:>10}{:>10}", key, c.pending + c.waiting, c.delivered, c.failed);
    }
    out
}

/// What pd-send and pd-nagios printed for a queued event.
pub fn pd_send_line(dedup_key: Option<&str>) -> String {
    format!("Event processed. Incident Key: {}", dedup_key.unwrap_or(""))
}

/// What pd-queue retry printed.
pub fn pd_queue_retry_line(count: usize) -> String {
    format!("{count} event(s) set up for retry.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Severity;

    const KEY: &str = "R0000000000000000000000000000003";

    fn defaults() -> IntakeDefaults {
        IntakeDefaults { routing_key: None, source: "h".into(), severity: Severity::Error }
    }

    /// pdagent's test_30_encoding.pdq1.txt, with a real key.
    fn encoding_file() -> String {
        r#"{"agent":{"agent_id":"SOME_ID","queued_at":"SOME_TIME","queued_by":"pd-send"},"description":"\u00e9","details":{},"event_type":"acknowledge","incident_key":"server.fire","service_key":"DUMMY_SERVICE_KEY"}"#
            .replace("DUMMY_SERVICE_KEY", KEY)
    }

    fn trigger_file(n: u32) -> String {
        format!(
            r#"{{"agent":{{"agent_id":"a","queued_at":"t","queued_by":"pd-send"}},"description":"disk {n}","details":{{"n":"{n}"}},"event_type":"trigger","incident_key":"k{n}","service_key":"{KEY}"}}"#
        )
    }

    fn sent(n: &mut u32, event: &Event) -> Result<Sent, SendError> {
        *n += 1;
        Ok(Sent { id: format!("id{n}"), dedup_key: event.dedup_key().map(str::to_owned), handed: Handed::Daemon })
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn queue_files_are_read_with_the_agent_object_dropped_and_escapes_decoded() {
        let Event::V1(e) = read_queue_file(encoding_file().as_bytes(), &defaults()).unwrap() else { panic!("v1") };
        assert_eq!(e.description.as_deref(), Some("é"));
        let body: Value = serde_json::from_slice(&Event::V1(e).request_body()).unwrap();
        assert!(body.get("agent").is_none());
        assert_eq!(body["incident_key"], "server.fire");
        for (bad, field) in [("", "event"), ("[]", "event"), ("{\"event_type\":\"explode\"}", "service_key")] {
            assert_eq!(read_queue_file(bad.as_bytes(), &defaults()).unwrap_err().field, field, "{bad}");
        }
        // A lone surrogate escape is not text.
        let lone = encoding_file().replace("\\u00e9", "\\ud800");
        assert!(read_queue_file(lone.as_bytes(), &defaults()).is_err());
    }

    #[test]
    fn import_hands_over_in_name_order_and_renames_only_after() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("1700000000000002_k.txt"), trigger_file(2)).unwrap();
        std::fs::write(d.join("1700000000000001_k.txt"), trigger_file(1)).unwrap();
        std::fs::write(d.join("1700000000000003_k.txt"), encoding_file()).unwrap();
        std::fs::write(d.join("1700000000000004_k.txt"), "{not json").unwrap();
        std::fs::write(d.join(".hidden.txt"), trigger_file(9)).unwrap();
        std::fs::write(d.join("dequeue.lock"), "").unwrap();
        let mut seen = Vec::new();
        let mut n = 0;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let report = import(
            d,
            &defaults(),
            false,
            |e| {
                seen.push(e.dedup_key().unwrap().to_owned());
                sent(&mut n, e)
            },
            &mut out,
            &mut err,
        )
        .unwrap();
        assert_eq!(seen, ["k1", "k2", "server.fire"]);
        assert_eq!(report, ImportReport { imported: 3, invalid: 1, ..ImportReport::default() });
        assert_eq!(
            names(d),
            [
                ".hidden.txt",
                "1700000000000001_k.txt.imported",
                "1700000000000002_k.txt.imported",
                "1700000000000003_k.txt.imported",
                "1700000000000004_k.txt",
                "dequeue.lock"
            ]
        );
        let err = String::from_utf8(err).unwrap();
        assert!(err.contains("1700000000000004_k.txt: not a valid event: event: is not valid JSON"), "{err}");
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 3);
        // A second run finds nothing more to import.
        let report = import(d, &defaults(), false, |e| sent(&mut n, e), &mut Vec::new(), &mut Vec::new()).unwrap();
        assert_eq!(report, ImportReport { imported: 0, invalid: 1, ..ImportReport::default() });
    }

    #[test]
    fn a_store_failure_stops_the_import_and_leaves_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for i in 1..=3 {
            std::fs::write(d.join(format!("{i}_k.txt")), trigger_file(i)).unwrap();
        }
        let mut calls = 0;
        let report = import(
            d,
            &defaults(),
            false,
            |e| {
                calls += 1;
                if calls == 2 {
                    Err(SendError::Store("disk full".into()))
                } else {
                    sent(&mut 0, e)
                }
            },
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(calls, 2);
        assert_eq!(report.imported, 1);
        assert!(report.stopped.unwrap().contains("disk full"));
        assert_eq!(names(d), ["1_k.txt.imported", "2_k.txt", "3_k.txt"]);
    }

    #[test]
    fn dry_run_changes_nothing_and_old_layout_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("pdq_1_k.txt"), trigger_file(1)).unwrap();
        std::fs::write(d.join("suc_0_k.txt"), trigger_file(0)).unwrap();
        std::fs::write(d.join("err_0_k.txt"), trigger_file(0)).unwrap();
        std::fs::write(d.join("tmp_2_k.txt"), "{").unwrap();
        let before = names(d);
        let mut out = Vec::new();
        let report = import(d, &defaults(), true, |_| panic!("dry run"), &mut out, &mut Vec::new()).unwrap();
        assert_eq!(report, ImportReport { imported: 1, skipped: 3, ..ImportReport::default() });
        assert_eq!(names(d), before);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("pdq_1_k.txt: would import: v1 trigger, routing key R00000…, dedup key k1"), "{out}");
        assert!(import(&d.join("missing"), &defaults(), true, |_| panic!(), &mut Vec::new(), &mut Vec::new()).is_err());
    }

    #[test]
    fn pd_send_contexts() {
        let cases = [
            ("link:href=https://a/b?c=d", Context::Link { href: "https://a/b?c=d".into(), text: None }),
            (
                "link:href=https://a,text=Runbook",
                Context::Link { href: "https://a".into(), text: Some("Runbook".into()) },
            ),
            (
                "image:src=https://i/x.png,href=https://h,alt=graph",
                Context::Image {
                    src: "https://i/x.png".into(),
                    href: Some("https://h".into()),
                    alt: Some("graph".into()),
                },
            ),
            ("image:src=https://i/x.png", Context::Image { src: "https://i/x.png".into(), href: None, alt: None }),
        ];
        for (text, want) in cases {
            assert_eq!(parse_context(text).unwrap(), want, "{text}");
        }
        for bad in ["link", "link:text=x", "image:href=x", "video:src=x", "link:href=x,size=2", "link:href"] {
            assert_eq!(parse_context(bad).unwrap_err().field, "--context", "{bad}");
        }
        let contexts =
            [parse_context("link:href=https://a,text=T").unwrap(), parse_context("image:src=https://i").unwrap()];
        let mut v1 = json!({"event_type": "trigger", "contexts": [{"type": "link", "href": "https://first"}]});
        apply_contexts(&mut v1, &contexts).unwrap();
        assert_eq!(
            v1["contexts"],
            json!([{"type": "link", "href": "https://first"}, {"type": "link", "href": "https://a", "text": "T"},
                   {"type": "image", "src": "https://i"}])
        );
        let mut v2 = json!({"event_action": "trigger"});
        apply_contexts(&mut v2, &contexts).unwrap();
        assert_eq!(v2["links"], json!([{"href": "https://a", "text": "T"}]));
        assert_eq!(v2["images"], json!([{"src": "https://i"}]));
        let mut change = json!({"payload": {"summary": "s"}});
        assert_eq!(apply_contexts(&mut change, &contexts).unwrap_err().field, "--context");
    }

    fn report() -> StatusReport {
        let c = |pending, waiting, failed, delivered| Counts { pending, waiting, failed, delivered, superseded: 0 };
        StatusReport {
            total: c(3, 1, 1, 7),
            routing_keys: vec![("R00000…".into(), c(1, 1, 0, 5)), ("Xabcde…".into(), c(2, 0, 1, 2))],
            oldest_pending_age_s: Some(3),
            paused: vec![("Xabcde…".into(), "2026-01-01T00:00:00Z".into())],
            last_success: None,
            last_error: None,
            throttled: vec![],
            outage_since: None,
        }
    }

    #[test]
    fn status_filter_and_pd_queue_table() {
        let mut r = report();
        filter_status(&mut r, "Xabcdef0000000000000000000000000");
        assert_eq!(r.routing_keys.len(), 1);
        assert_eq!(r.total, Counts { pending: 2, waiting: 0, failed: 1, delivered: 2, superseded: 0 });
        assert_eq!(r.paused.len(), 1);
        for (key, rows) in [("R0", 1), ("R00000…", 1), ("", 2), ("Q", 0), ("R00001", 0), ("R000001", 1)] {
            let mut r = report();
            filter_status(&mut r, key);
            assert_eq!(r.routing_keys.len(), rows, "{key:?}");
        }
        let table = render_pd_queue_status(&report());
        let want = "Service Key                           Pending   Success  In Error\n\
                    =================================================================\n\
                    R00000…                                     2         5         0\n\
                    Xabcde…                                     2         2         1\n";
        assert_eq!(table, want);
        let mut none = report();
        filter_status(&mut none, "Q");
        assert_eq!(render_pd_queue_status(&none), "Nothing to report.\n");
        assert_eq!(pd_queue_retry_line(2), "2 event(s) set up for retry.");
        assert_eq!(pd_send_line(Some("k")), "Event processed. Incident Key: k");
    }
}
