//! Log output details the daemon needs under systemd: the `<N>` priority prefix journald reads
//! from a service's stderr, the check that stderr really is the journal, and the default filter
//! that keeps sled's per-write debug lines out of `log_level = "debug"`; and [`init`], which sets
//! the daemon's log output up once.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Changes the level filter of the running daemon's log (SIGHUP with a new `log_level`).
pub type LevelHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// True when stderr is the journal stream systemd connected: `JOURNAL_STREAM` (`DEVICE:INODE`)
/// names the same file as descriptor 2. A variable inherited by a process whose stderr was
/// redirected elsewhere does not count (systemd.exec(5) asks for this check).
pub fn stderr_is_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some_and(|v| stream_names(&v, std::path::Path::new("/proc/self/fd/2")))
}

/// True when `value` (`DEVICE:INODE`, as in `JOURNAL_STREAM`) names the file at `path`.
fn stream_names(value: &std::ffi::OsStr, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    std::fs::metadata(path).is_ok_and(|meta| meta.dev() == dev && meta.ino() == ino)
}

/// The syslog priority journald stores for a tracing level: ERROR 3 (err), WARN 4 (warning),
/// INFO 6 (info), DEBUG and TRACE 7 (debug). INFO is 6, not 5 (notice), so that
/// `journalctl -p notice` shows only what needs a look.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The daemon's filter for a configured `log_level`: the level or directive as written, with
/// sled held at INFO unless the directive names sled itself (sled 0.34 logs about eight
/// `sled::pagecache` lines per stored event at DEBUG). Falls back to `info` when the text is
/// not a valid filter (the config check refuses such text before the daemon starts).
pub fn level_filter(log_level: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_new(log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    if !log_level.contains("sled") {
        filter = filter.add_directive("sled=info".parse().expect("a valid directive"));
    }
    filter
}

/// An event format for a stderr that journald reads: each line starts with `<N>` (the
/// [`priority`] of the event's level), then, when `level_word` is set, the level as a word
/// without padding (`INFO pdrelay::daemon: ...`), then what the inner format writes. Lines carry
/// no leading space, so `journalctl -o cat` and alert rules see the text as written.
#[derive(Debug, Clone)]
pub struct Journald<F> {
    inner: F,
    level_word: bool,
}

impl<F> Journald<F> {
    /// Wraps `inner`, which should write neither the time (journald stamps lines) nor the level
    /// (written here when `level_word` is set).
    pub fn new(inner: F, level_word: bool) -> Self {
        Journald { inner, level_word }
    }
}

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let level = event.metadata().level();
        write!(writer, "<{}>", priority(level))?;
        if self.level_word {
            write!(writer, "{level} ")?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}

/// Sets the daemon's log output up, once: to stderr, with the level of `RUST_LOG` or else
/// `log_level` ([`level_filter`]); JSON lines when `json`. Under systemd (stderr is the journal,
/// [`stderr_is_journal`]) each line starts with its `<N>` priority and has no time stamp, colour
/// or padded level: journald adds its own. Returns the handle that changes the level later.
pub fn init(log_level: &str, json: bool) -> LevelHandle {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level_filter(log_level));
    // The filter sits behind a reload handle, so SIGHUP can change the log level.
    let (filter, filter_handle) = tracing_subscriber::reload::Layer::new(filter);
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Under systemd, journald stamps each line itself and reads its priority from a `<N>` prefix:
    // no timestamps, no colours, no padded level there.
    let journald = stderr_is_journal();
    let ansi = std::io::stderr().is_terminal() && !journald;
    let registry = tracing_subscriber::registry().with(filter);
    if journald {
        let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(std::io::stderr);
        let format = tracing_subscriber::fmt::format().without_time().with_level(false).with_ansi(false);
        if json {
            let inner = tracing_subscriber::fmt::format().json().with_current_span(false);
            registry
                .with(
                    layer
                        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                        .event_format(Journald::new(inner, false)),
                )
                .init();
        } else {
            registry.with(layer.event_format(Journald::new(format, true))).init();
        }
    } else if json {
        registry
            .with(tracing_subscriber::fmt::layer().json().with_current_span(false).with_writer(std::io::stderr))
            .init();
    } else {
        registry.with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)).init();
    }
    filter_handle
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(json: bool, emit: impl FnOnce()) -> Vec<String> {
        use tracing_subscriber::layer::SubscriberExt;
        let buf = Buf::default();
        let out = buf.clone();
        let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || out.clone());
        let dispatch = if json {
            let inner = tracing_subscriber::fmt::format().json().with_current_span(false);
            let layer = layer
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(Journald::new(inner, false));
            tracing::Dispatch::new(tracing_subscriber::registry().with(level_filter("debug")).with(layer))
        } else {
            let inner = tracing_subscriber::fmt::format().without_time().with_level(false).with_ansi(false);
            tracing::Dispatch::new(
                tracing_subscriber::registry()
                    .with(level_filter("debug"))
                    .with(layer.event_format(Journald::new(inner, true))),
            )
        };
        tracing::dispatcher::with_default(&dispatch, emit);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn each_level_gets_its_journal_priority_and_no_leading_space() {
        let got = lines(false, || {
            tracing::error!(target: "pdrelay::t", "e");
            tracing::warn!(target: "pdrelay::t", "w");
            tracing::info!(target: "pdrelay::t", n = 1, "i");
            tracing::debug!(target: "pdrelay::t", "d");
        });
        assert_eq!(
            got,
            ["<3>ERROR pdrelay::t: e", "<4>WARN pdrelay::t: w", "<6>INFO pdrelay::t: i n=1", "<7>DEBUG pdrelay::t: d"]
        );
    }

    #[test]
    fn json_lines_get_the_prefix_before_the_object() {
        let got = lines(true, || tracing::warn!(target: "pdrelay::t", "w"));
        assert_eq!(got.len(), 1);
        let rest = got[0].strip_prefix("<4>").expect("priority prefix");
        let v: serde_json::Value = serde_json::from_str(rest).unwrap();
        assert_eq!(v["level"], "WARN");
    }

    #[test]
    fn sled_debug_lines_are_filtered_unless_asked_for() {
        let got = lines(false, || {
            tracing::debug!(target: "sled::pagecache", "noise");
            tracing::info!(target: "sled::pagecache", "kept");
        });
        assert_eq!(got, ["<6>INFO sled::pagecache: kept"]);
        let f = level_filter("debug,sled=debug").to_string();
        assert!(!f.contains("sled=info"), "{f}");
    }

    #[test]
    fn journal_stream_must_name_the_file() {
        use std::os::unix::fs::MetadataExt;
        let file = tempfile::NamedTempFile::new().unwrap();
        let meta = file.as_file().metadata().unwrap();
        let right = format!("{}:{}", meta.dev(), meta.ino());
        assert!(stream_names(right.as_ref(), file.path()));
        let wrong = format!("{}:{}", meta.dev(), meta.ino() + 1);
        assert!(!stream_names(wrong.as_ref(), file.path()));
        assert!(!stream_names("junk".as_ref(), file.path()));
    }
}
