//! Command-line arguments (clap derive). Parsed here, resolved into validated values by the
//! commands themselves. Below it, only `producers::send` takes a parsed [`SendArgs`] (it is that
//! command), and `event::ApiVersion` derives clap's `ValueEnum` to be `--api`'s value.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::event::ApiVersion;

/// pdrelay: durable PagerDuty Events API forwarder for monitored hosts.
#[derive(Debug, Parser)]
#[command(name = "pdrelay", version, about, propagate_version = true)]
pub struct Cli {
    /// Config file [default: $PDRELAY_CONFIG, else /etc/pdrelay/config.toml].
    // PDRELAY_CONFIG is read in main, not through clap's `env`: clap lists an argument set from
    // the environment in the usage line of every error, as if it were required.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Print what pdagent's tools printed (`Event processed. Incident Key: ...`, pd-queue's
    /// tables); the pd-send, pd-nagios, pd-zabbix, pd-sensu and pd-queue wrappers pass it.
    #[arg(long = "pdagent-output", global = true, hide = true)]
    pub pdagent_output: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service in the foreground (SIGTERM or SIGINT stops it gracefully).
    Daemon,
    /// Enqueue one event; accepts pd-send's flags. Prints the event id and dedup key.
    ///
    /// `send`, `nagios` and `sensu` read their flags as pdagent's Python argparse did: a flag
    /// given twice keeps the last value, an unambiguous abbreviation of a long option works, and
    /// an option's value may start with a dash.
    #[command(args_override_self = true, infer_long_args = true)]
    Send(Box<SendArgs>),
    /// A Nagios/Icinga notification command; accepts pd-nagios's flags.
    #[command(args_override_self = true, infer_long_args = true)]
    Nagios(NagiosArgs),
    /// A Zabbix media-type script: pd-zabbix's arguments, KEY SUBJECT BODY.
    Zabbix(ZabbixArgs),
    /// A Sensu pipe handler: pd-sensu's flags; reads the check result (JSON) on standard input.
    #[command(args_override_self = true, infer_long_args = true)]
    Sensu(SensuArgs),
    /// Import the events left in pdagent's queue directory, renaming each file once it is stored.
    ImportPdagent(ImportPdagentArgs),
    /// Alerts this host has open in PagerDuty (triggered or acknowledged, not resolved); with a
    /// REST API key, also PagerDuty's side of each and where the two disagree.
    Alerts {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Read PagerDuty's side from its REST API now (needs `pagerduty.rest_api_key`).
        #[arg(long)]
        refresh: bool,
        /// Queue the resolve again for every alert resolved here and still open in PagerDuty.
        #[arg(long, conflicts_with = "refresh")]
        resend_resolves: bool,
    },
    /// Check a config file: exit 0, or print every problem and exit 2.
    CheckConfig,
    /// Inspect and repair the queue (daemon running or stopped; root or the daemon's user).
    Queue {
        /// Print JSON instead of tables.
        #[arg(long, global = true)]
        json: bool,
        /// What to do.
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Silences: matching alerts are held while one is active (stored in the queue's database).
    Silence {
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
        /// What to do.
        #[command(subcommand)]
        command: SilenceCommand,
    },
    /// Routing rules (`[[routes]]` in the config).
    Route {
        /// What to do.
        #[command(subcommand)]
        command: RouteCommand,
    },
}

/// `pdrelay silence ...`
#[derive(Debug, Subcommand)]
pub enum SilenceCommand {
    /// Add a silence; prints it with its id.
    #[command(group(clap::ArgGroup::new("until").args(["duration", "end"]).required(true)))]
    Add {
        /// FIELD=VALUE, as in `[[routes]]` match (exact, glob:..., re:...); repeat for more, all
        /// must match. E.g. --match source=glob:db* --match producer=nagios.
        #[arg(long = "match", short = 'm', value_name = "FIELD=VALUE", required = true)]
        matchers: Vec<String>,
        /// How long from the start, e.g. 2h, 30m.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// End time, RFC 3339 (e.g. 2026-12-02T06:00:00Z).
        #[arg(long)]
        end: Option<String>,
        /// Start time, RFC 3339; default now.
        #[arg(long)]
        start: Option<String>,
        /// Why (shown by `silence list`).
        #[arg(long, short = 'c', required = true)]
        comment: String,
        /// Who; default $SUDO_USER or $USER.
        #[arg(long = "by")]
        created_by: Option<String>,
    },
    /// List silences, active, pending and expired.
    List,
    /// End a silence now; alerts it held that are still open are sent.
    Expire {
        /// The silence's id.
        id: String,
    },
}

/// `pdrelay route ...`
#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Show which route an event takes and the event as it would be sent (nothing is sent).
    /// An acknowledge or resolve follows its trigger's route when the daemon knows the trigger;
    /// this shows what the rules alone decide.
    Test {
        /// The event as JSON (any shape pdrelay accepts); `-` or none reads standard input
        /// (at most 1 MiB).
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// The intake the event is taken to come in through (spool, socket, http, send).
        #[arg(long, default_value = "socket")]
        intake: String,
    },
}

/// `pdrelay queue ...`
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Counts by state and routing key, oldest pending age, paused keys, last success and error.
    Status {
        /// Only this routing key's counts and pauses (in full, or its first characters).
        #[arg(long = "routing-key", short = 'k', visible_alias = "service-key")]
        routing_key: Option<String>,
    },
    /// List events, oldest first.
    List {
        /// Only events in this state.
        #[arg(long, value_enum)]
        state: Option<crate::admin::protocol::ListState>,
        /// Only events of this routing key (in full, or its first characters).
        #[arg(long = "routing-key", short = 'k')]
        routing_key: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = crate::admin::protocol::DEFAULT_LIST_LIMIT)]
        limit: usize,
    },
    /// One event in full: the event, its attempts, the last response.
    Show {
        /// Event id.
        id: String,
    },
    /// Put failed events back to pending; or, with --waiting, send waiting events now.
    #[command(group(clap::ArgGroup::new("which").args(["id", "all", "routing_key"])))]
    Retry {
        /// One event, by id.
        #[arg(required_unless_present_any = ["all", "routing_key", "waiting"])]
        id: Option<String>,
        /// Every failed event.
        #[arg(long, short = 'a', visible_alias = "all-keys")]
        all: bool,
        /// Failed events of this routing key (with --waiting: waiting events of it).
        #[arg(long = "routing-key", short = 'k', visible_alias = "service-key")]
        routing_key: Option<String>,
        /// Pending events waiting for a retry time are sent now, without waiting for their
        /// timers; a 429 pause of their routing keys is lifted too. Rate limits still apply.
        #[arg(long, conflicts_with_all = ["id", "all"])]
        waiting: bool,
    },
    /// Rebuild a damaged queue from what can be read (daemon stopped); the damaged one is kept.
    Salvage,
    /// Remove delivered or failed records (pending events are never purged).
    Purge {
        /// Which records.
        #[arg(long, value_enum)]
        state: crate::admin::protocol::PurgeState,
        /// Only those finished at least this long ago, e.g. 7d, 12h.
        #[arg(long = "older-than", value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
    },
}

/// The event action, as pd-send spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ActionArg {
    /// Open or add to an alert.
    Trigger,
    /// Acknowledge the alert.
    Acknowledge,
    /// Resolve the alert.
    Resolve,
}

/// `pdrelay send`: pd-send's flags, plus the v2 ones.
#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// Routing (integration) key: 32 alphanumeric characters [default: pagerduty.default_routing_key].
    #[arg(
        short = 'k',
        long = "service-key",
        visible_alias = "routing-key",
        value_name = "KEY",
        allow_hyphen_values = true
    )]
    pub routing_key: Option<String>,
    /// Event action (pd-send: event type). Not used with --change.
    #[arg(
        short = 't',
        long = "event-type",
        visible_alias = "event-action",
        value_enum,
        value_name = "ACTION",
        allow_hyphen_values = true
    )]
    pub event_action: Option<ActionArg>,
    /// Summary (v1: description); at most 1024 characters, longer is cut.
    #[arg(
        short = 'd',
        long = "description",
        visible_alias = "summary",
        value_name = "TEXT",
        allow_hyphen_values = true
    )]
    pub summary: Option<String>,
    /// Dedup key (v1: incident key); a trigger without one gets one.
    #[arg(
        short = 'i',
        long = "incident-key",
        visible_alias = "dedup-key",
        value_name = "KEY",
        allow_hyphen_values = true
    )]
    pub dedup_key: Option<String>,
    /// Name of the monitoring client.
    #[arg(short = 'c', long, allow_hyphen_values = true)]
    pub client: Option<String>,
    /// URL of the monitoring client.
    #[arg(short = 'u', long = "client-url", value_name = "URL", allow_hyphen_values = true)]
    pub client_url: Option<String>,
    /// A custom detail, KEY=VALUE; repeatable.
    #[arg(short = 'f', long = "field", value_name = "KEY=VALUE", allow_hyphen_values = true)]
    pub fields: Vec<String>,
    /// pd-send's context: link:href=URL[,text=TEXT] or image:src=URL[,href=URL][,alt=TEXT]; repeatable.
    #[arg(short = 'x', long = "context", value_name = "TYPE:KEY=VALUE,...", allow_hyphen_values = true)]
    pub contexts: Vec<String>,
    /// Print nothing on success.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// critical, error, warning or info (other words are mapped) [v2].
    #[arg(long, allow_hyphen_values = true)]
    pub severity: Option<String>,
    /// Affected system [v2; default: this host's name].
    #[arg(long, allow_hyphen_values = true)]
    pub source: Option<String>,
    /// Component of the source [v2].
    #[arg(long, allow_hyphen_values = true)]
    pub component: Option<String>,
    /// Logical group [v2].
    #[arg(long, allow_hyphen_values = true)]
    pub group: Option<String>,
    /// Class of the event [v2].
    #[arg(long, allow_hyphen_values = true)]
    pub class: Option<String>,
    /// When the event happened, ISO 8601 with seconds (2026-11-29T16:55:00Z,
    /// 2015-07-17T08:42:58.315+0000); sent in UTC [v2].
    #[arg(long, allow_hyphen_values = true)]
    pub timestamp: Option<String>,
    /// A link, HREF or HREF=TEXT; repeatable.
    #[arg(long = "link", value_name = "HREF[=TEXT]", allow_hyphen_values = true)]
    pub links: Vec<String>,
    /// An image URL; repeatable.
    #[arg(long = "image", value_name = "SRC", allow_hyphen_values = true)]
    pub images: Vec<String>,
    /// Events API version.
    #[arg(long, value_enum, default_value = "v2")]
    pub api: ApiVersion,
    /// Send a change event (v2) instead of an alert.
    #[arg(long, conflicts_with_all = ["event_action", "dedup_key", "severity", "component", "group", "class"])]
    pub change: bool,
}

/// `pdrelay nagios`: pd-nagios's flags.
#[derive(Debug, Clone, Args)]
pub struct NagiosArgs {
    /// Routing (integration) key [default: pagerduty.default_routing_key].
    #[arg(
        short = 'k',
        long = "service-key",
        visible_alias = "routing-key",
        value_name = "KEY",
        allow_hyphen_values = true
    )]
    pub routing_key: Option<String>,
    /// $NOTIFICATIONTYPE$: PROBLEM, ACKNOWLEDGEMENT, RECOVERY, FLAPPINGSTART, ...
    #[arg(short = 't', long = "notification-type", value_name = "NOTIFICATIONTYPE", allow_hyphen_values = true)]
    pub notification_type: String,
    /// What the notification is about.
    #[arg(
        short = 'n',
        long = "notification-object",
        value_enum,
        value_name = "host|service",
        allow_hyphen_values = true
    )]
    pub object: crate::producers::nagios::NagiosObject,
    /// Dedup (incident) key to use instead of pd-nagios's.
    #[arg(
        short = 'i',
        long = "incident-key",
        visible_alias = "dedup-key",
        value_name = "KEY",
        allow_hyphen_values = true
    )]
    pub dedup_key: Option<String>,
    /// A macro, MACRO=VALUE (e.g. -f HOSTNAME=$HOSTNAME$); repeatable. With none, the NAGIOS_*
    /// and ICINGA_* environment macros are read.
    #[arg(short = 'f', long = "field", value_name = "MACRO=VALUE", allow_hyphen_values = true)]
    pub fields: Vec<String>,
    /// Events API version: v1 sends the event pd-nagios queued (its description and details).
    #[arg(long, value_enum, default_value = "v2")]
    pub api: ApiVersion,
    /// Print nothing on success.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// `pdrelay zabbix`: pd-zabbix's three arguments.
#[derive(Debug, Clone, Args)]
pub struct ZabbixArgs {
    /// Routing (integration) key, {ALERT.SENDTO}; empty: pagerduty.default_routing_key.
    #[arg(value_name = "KEY")]
    pub routing_key: String,
    /// {ALERT.SUBJECT}: trigger, acknowledge or resolve (anything else: the body's status decides).
    #[arg(value_name = "SUBJECT", allow_hyphen_values = true)]
    pub subject: String,
    /// {ALERT.MESSAGE}: name:value lines (name, id, status, hostname, ip, value, event_id, severity,
    /// url, incident_key).
    #[arg(value_name = "BODY", allow_hyphen_values = true)]
    pub body: String,
    /// Events API version.
    #[arg(long, value_enum, default_value = "v2")]
    pub api: ApiVersion,
    /// Print nothing on success.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// `pdrelay sensu`: pd-sensu's flags.
#[derive(Debug, Clone, Args)]
pub struct SensuArgs {
    /// Routing (integration) key [default: pagerduty.default_routing_key].
    #[arg(short = 'k', long = "integration-key", visible_aliases = ["routing-key", "service-key"], value_name = "KEY", allow_hyphen_values = true)]
    pub routing_key: Option<String>,
    /// Dedup (incident) key to use instead of `<client name>/<check name>`.
    #[arg(
        short = 'i',
        long = "incident-key",
        visible_alias = "dedup-key",
        value_name = "KEY",
        allow_hyphen_values = true
    )]
    pub dedup_key: Option<String>,
    /// Events API version.
    #[arg(long, value_enum, default_value = "v2")]
    pub api: ApiVersion,
    /// Print nothing on success.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// `pdrelay import-pdagent`.
#[derive(Debug, Clone, Args)]
pub struct ImportPdagentArgs {
    /// pdagent's queue directory [default: /var/lib/pdagent/outqueue/pdq, or
    /// /var/lib/pdagent/outqueue for pdagent versions that kept pdq_*.txt files there].
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Check and list what would be imported; store and rename nothing.
    #[arg(long = "dry-run", short = 'n')]
    pub dry_run: bool,
}
