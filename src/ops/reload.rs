//! Settings that SIGHUP changes while the daemon runs: the intake defaults (default routing key,
//! source, severity), the Nagios mapping tables and the retry bounds ([`SettingsSnapshot`]), and
//! the log level unless `RUST_LOG` is set ([`reload`]; `main` catches the signal). Everything else (paths, sockets, listeners, the Events API URL, concurrency, queue
//! bounds, routes, maintenance windows, flap damping, heartbeats) needs a restart; a reload that
//! changes those says so in the log and keeps the old values.

use std::sync::{Arc, RwLock};

use crate::config::nagios::NagiosSettings;
use crate::config::sections::{ConfigFile, RetrySection};
use crate::config::Config;
use crate::event::IntakeDefaults;

/// One consistent set of reloadable settings.
#[derive(Debug)]
pub struct SettingsSnapshot {
    /// Filled in at intake.
    pub defaults: IntakeDefaults,
    /// Nagios and pagerduty_nagios.pl mapping.
    pub nagios: NagiosSettings,
    /// Retry timing.
    pub retry: RetrySection,
}

/// A handle on the current reloadable settings ([`SettingsSnapshot`]); cheap to clone, read per event.
#[derive(Clone, Debug)]
pub struct ReloadableSettings(Arc<RwLock<Arc<SettingsSnapshot>>>);

impl ReloadableSettings {
    /// From a checked config.
    pub fn new(config: &Config) -> ReloadableSettings {
        ReloadableSettings(Arc::new(RwLock::new(Arc::new(SettingsSnapshot::from(config)))))
    }

    /// The current settings (a snapshot: later reloads do not change it).
    pub fn get(&self) -> Arc<SettingsSnapshot> {
        self.0.read().expect("reloadable settings lock").clone()
    }

    /// Takes the reloadable settings of `config`.
    pub fn replace(&self, config: &Config) {
        *self.0.write().expect("reloadable settings lock") = Arc::new(SettingsSnapshot::from(config));
    }
}

impl From<&Config> for SettingsSnapshot {
    fn from(config: &Config) -> SettingsSnapshot {
        SettingsSnapshot {
            defaults: config.defaults.clone(),
            nagios: config.nagios.clone(),
            retry: config.file.retry.clone(),
        }
    }
}

/// The settings that differ between `old` and `new` but only take effect after a restart.
pub fn restart_needed(old: &ConfigFile, new: &ConfigFile) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let differs = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    if old.state_dir != new.state_dir {
        keys.push("state_dir");
    }
    if differs(&old.ingest, &new.ingest) {
        keys.push("[ingest]");
    }
    if differs(&old.queue, &new.queue) {
        keys.push("[queue]");
    }
    if differs(&old.http, &new.http) {
        keys.push("[http]");
    }
    if differs(&old.metrics, &new.metrics) {
        keys.push("[metrics]");
    }
    if differs(&old.delivery, &new.delivery) {
        keys.push("[delivery]");
    }
    if differs(&old.retention, &new.retention) {
        keys.push("[retention]");
    }
    if differs(&old.routes, &new.routes)
        || differs(&old.flap_damping, &new.flap_damping)
        || differs(&old.maintenance, &new.maintenance)
    {
        keys.push("[[routes]], [flap_damping], [[maintenance]]");
    }
    if differs(&old.heartbeat, &new.heartbeat) || differs(&old.expected_senders, &new.expected_senders) {
        keys.push("[heartbeat], [[expected_senders]]");
    }
    let (a, b) = (&old.pagerduty, &new.pagerduty);
    if a.events_url != b.events_url
        || a.concurrency != b.concurrency
        || a.connect_timeout != b.connect_timeout
        || a.request_timeout != b.request_timeout
        || a.proxy != b.proxy
        || a.ca_bundle != b.ca_bundle
        || a.local_address != b.local_address
    {
        keys.push("[pagerduty] (except default_routing_key)");
    }
    // Compared by value, not by their Debug form: the REST key and the Icinga 2 password are
    // secrets, which Debug does not show.
    if a.rest_api_key != b.rest_api_key
        || a.rest_api_key_file != b.rest_api_key_file
        || a.rest_api_url != b.rest_api_url
        || a.rest_service_ids != b.rest_service_ids
        || a.reconcile_interval != b.reconcile_interval
        || old.ackback != new.ackback
    {
        keys.push("pagerduty.rest_*, reconcile_interval, [ackback]");
    }
    if old.shutdown_timeout != new.shutdown_timeout || old.log_format != new.log_format {
        keys.push("shutdown_timeout, log_format");
    }
    if old.mapping.drop_repeated_triggers != new.mapping.drop_repeated_triggers {
        keys.push("mapping.drop_repeated_triggers");
    }
    keys
}

/// Reads the configuration at `path` again and applies what SIGHUP may change: the log level
/// (unless `RUST_LOG` is set) and the [`ReloadableSettings`]. A key whose change needs a restart
/// is named in a warning and keeps its running value. `old` is the file the daemon started with.
///
/// Errors: the one-line reason the file was not taken (the running settings stay).
pub fn reload(
    path: &std::path::Path,
    explicit: bool,
    old: &ConfigFile,
    reloadable: &ReloadableSettings,
    level: &crate::ops::logging::LevelHandle,
) -> Result<(), String> {
    let new = Config::load(path, explicit).map_err(|e| e.to_string().replace('\n', "; "))?;
    let restart = restart_needed(old, &new.file);
    if std::env::var_os("RUST_LOG").is_none() {
        level.reload(crate::ops::logging::level_filter(&new.file.log_level)).map_err(|e| e.to_string())?;
    }
    reloadable.replace(&new);
    if restart.is_empty() {
        tracing::info!("configuration reloaded");
    } else {
        tracing::warn!(needs_restart = ?restart, "configuration reloaded; these changes take effect only after a restart");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_that_need_a_restart_are_named_secrets_included() {
        let old = ConfigFile::default();
        let mut new = old.clone();
        new.pagerduty.default_routing_key = "R0000000000000000000000000000001".into();
        assert!(restart_needed(&old, &new).is_empty(), "the default routing key is reloaded");
        new.pagerduty.rest_api_key = crate::config::sections::Secret("other".into());
        assert_eq!(restart_needed(&old, &new), vec!["pagerduty.rest_*, reconcile_interval, [ackback]"]);
        let mut new = old.clone();
        new.ackback.icinga2_password = crate::config::sections::Secret("other".into());
        assert_eq!(restart_needed(&old, &new), vec!["pagerduty.rest_*, reconcile_interval, [ackback]"]);
    }
}
