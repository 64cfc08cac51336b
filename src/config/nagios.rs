//! The checked `[nagios]` settings: what each Nagios notification type does (`$NOTIFICATIONTYPE$`:
//! PROBLEM, RECOVERY, ACKNOWLEDGEMENT, FLAPPINGSTART, ...) and the severity of each state
//! (`$SERVICESTATE$` / `$HOSTSTATE$`), with pd-nagios's defaults. Used by `producers::nagios` to
//! map a notification, and reloaded by SIGHUP.

use std::collections::BTreeMap;

use crate::event::{EventAction, Severity};

/// What a notification type does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeAction {
    /// Send with this event action.
    Send(EventAction),
    /// Do nothing (exit 0 with a message).
    Ignore,
}

impl TypeAction {
    /// Parses `trigger`, `acknowledge`, `resolve` or `ignore`.
    pub fn parse(value: &str) -> Option<TypeAction> {
        match value {
            "ignore" => Some(TypeAction::Ignore),
            other => EventAction::parse(other, "").ok().map(TypeAction::Send),
        }
    }
}

/// The `[nagios]` settings, checked.
#[derive(Debug, Clone)]
pub struct NagiosSettings {
    /// Notification type (upper case) -> what to do.
    pub notification_types: BTreeMap<String, TypeAction>,
    /// State (upper case) -> severity.
    pub severity: BTreeMap<String, Severity>,
    /// Resolve on FLAPPINGSTOP / FLAPPINGEND when the state is OK or UP (Nagios may end flapping
    /// there without ever sending RECOVERY, which would leave the incident open).
    pub resolve_on_flapping_stop: bool,
}

/// Default notification-type table.
pub fn default_notification_types() -> BTreeMap<String, TypeAction> {
    let mut m = BTreeMap::new();
    m.insert("PROBLEM".to_owned(), TypeAction::Send(EventAction::Trigger));
    m.insert("ACKNOWLEDGEMENT".to_owned(), TypeAction::Send(EventAction::Acknowledge));
    m.insert("RECOVERY".to_owned(), TypeAction::Send(EventAction::Resolve));
    for t in [
        "FLAPPINGSTART",
        "FLAPPINGSTOP",
        "FLAPPINGEND",
        "FLAPPINGDISABLED",
        "DOWNTIMESTART",
        "DOWNTIMEEND",
        "DOWNTIMECANCELLED",
        "DOWNTIMEREMOVED",
        "CUSTOM",
    ] {
        m.insert(t.to_owned(), TypeAction::Ignore);
    }
    m
}

/// Default state-to-severity table.
pub fn default_severity() -> BTreeMap<String, Severity> {
    [
        ("CRITICAL", Severity::Critical),
        ("DOWN", Severity::Critical),
        ("UNREACHABLE", Severity::Critical),
        ("WARNING", Severity::Warning),
        ("UNKNOWN", Severity::Error),
        ("OK", Severity::Info),
        ("UP", Severity::Info),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl Default for NagiosSettings {
    fn default() -> Self {
        NagiosSettings {
            notification_types: default_notification_types(),
            severity: default_severity(),
            resolve_on_flapping_stop: false,
        }
    }
}
