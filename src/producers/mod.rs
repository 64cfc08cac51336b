//! Producers' own input formats, mapped to [`crate::event::Event`]s: what Nagios, Icinga,
//! Zabbix and Sensu hand over, pdagent's queue files and `pd-*` command lines, and the
//! `pdrelay send` command line. Used by the commands that replace PagerDuty's tools (`pdrelay
//! nagios`, `zabbix`, `sensu`, `send`) and by the spool intake (pagerduty_nagios.pl files).
//!
//! Owns: [`nagios`] (Nagios macros, pagerduty_nagios.pl files), [`zabbix`], [`sensu`],
//! [`pdagent`] (pdagent's queue and `pd-queue`), [`send`] (building an event from flags and
//! handing it to the daemon's socket or a drop file). Does not own: the channels (see `intake`).

pub mod nagios;
pub mod pdagent;
pub mod send;
pub mod sensu;
pub mod zabbix;
