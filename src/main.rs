//! The `pdrelay` binary: parse arguments, set up logging, load the config, call the library, and
//! map every error to an exit code in one place (0 ok, 1 could not store or run, 2 bad usage or
//! invalid input).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pdrelay::admin::protocol::{self, AdminAnswer, AdminError, AdminRequest, RetryTarget};
use pdrelay::admin::{self, render::render};
use pdrelay::cli::{
    Cli, Command, ImportPdagentArgs, NagiosArgs, QueueCommand, RouteCommand, SendArgs, SensuArgs, SilenceCommand,
    ZabbixArgs,
};
use pdrelay::config::{Config, DEFAULT_CONFIG_PATH};
use pdrelay::event::{Event, MAX_REQUEST_BYTES};
use pdrelay::producers::send::{self, Handed, SendError};
use pdrelay::producers::{nagios, pdagent, sensu, zabbix};

/// Exit code of a daemon that refuses a damaged queue.
const EXIT_DAMAGED: u8 = 3;

/// What a command that stores one event prints on success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// `id=<id> dedup_key=<key>`.
    Pdrelay,
    /// pd-send's and pd-nagios's `Event processed. Incident Key: <key>`.
    PdagentKey,
    /// Nothing, as pd-zabbix and pd-sensu.
    Silent,
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if cli.config.is_none() {
        cli.config = std::env::var_os("PDRELAY_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from);
    }
    let explicit = cli.config.is_some();
    let path = cli.config.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let config = match Config::load(&path, explicit || matches!(cli.command, Command::CheckConfig)) {
        Ok(c) => c,
        Err(e) => {
            // Under systemd the daemon's config errors go to the journal at priority 3 (err).
            let lead = if matches!(cli.command, Command::Daemon) && pdrelay::ops::logging::stderr_is_journal() {
                "<3>pdrelay: config: "
            } else {
                "pdrelay: config: "
            };
            eprintln!("{lead}{}", e.to_string().replace('\n', &format!("\n{lead}")));
            if let Some(hint) = e.hint() {
                eprintln!("pdrelay: hint: {hint}");
            }
            return ExitCode::from(2);
        }
    };
    let pdagent_output = cli.pdagent_output;
    let key_output = if pdagent_output { Output::PdagentKey } else { Output::Pdrelay };
    let silent_output = if pdagent_output { Output::Silent } else { Output::Pdrelay };
    match cli.command {
        Command::CheckConfig => {
            for warning in config.host_warnings() {
                eprintln!("pdrelay: warning: {warning}");
            }
            println!("{}: OK", path.display());
            ExitCode::SUCCESS
        }
        Command::Send(args) => run_send(&config, &args, key_output),
        Command::Daemon => run_daemon(config, path, explicit),
        Command::Nagios(args) => run_nagios(&config, &args, key_output),
        Command::Zabbix(args) => run_zabbix(&config, &args, silent_output),
        Command::Sensu(args) => run_sensu(&config, &args, silent_output),
        Command::ImportPdagent(args) => run_import(&config, &args),
        Command::Alerts { json, refresh, resend_resolves } => run_alerts(&config, json, refresh, resend_resolves),
        Command::Queue { json, command } => run_queue(&config, command, json, pdagent_output),
        Command::Route { command: RouteCommand::Test { file, intake } } => run_route_test(&config, file, &intake),
        Command::Silence { json, command } => run_silence(&config, command, json),
    }
}

/// `pdrelay silence add|list|expire`: through the daemon's admin socket, or on the queue
/// directly when the daemon is stopped. Exit 2 for a bad silence.
fn run_silence(config: &Config, command: SilenceCommand, json: bool) -> ExitCode {
    let request = match command {
        SilenceCommand::List => AdminRequest::Silences,
        SilenceCommand::Expire { id } => AdminRequest::SilenceExpire { id },
        SilenceCommand::Add { matchers, duration, end, start, comment, created_by } => {
            match new_silence(matchers, duration, end, start, comment, created_by) {
                Ok(s) => AdminRequest::SilenceAdd(s),
                Err(e) => {
                    eprintln!("pdrelay silence add: {}", pdrelay::text::Escaped(&e));
                    return ExitCode::from(2);
                }
            }
        }
    };
    run_admin(config, request, json, "pdrelay silence", false)
}

fn new_silence(
    matchers: Vec<String>,
    duration: Option<std::time::Duration>,
    end: Option<String>,
    start: Option<String>,
    comment: String,
    created_by: Option<String>,
) -> Result<pdrelay::rules::silence::Silence, String> {
    let now = pdrelay::clock::now_ms();
    let parse = |field: &str, text: &str| {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
            .map_err(|_| format!("--{field}: must be an RFC 3339 time such as 2026-12-02T06:00:00Z (got {text:?})"))
    };
    let starts_at_ms = match &start {
        Some(t) => parse("start", t)?,
        None => now,
    };
    let ends_at_ms = match (&end, duration) {
        (Some(t), _) => parse("end", t)?,
        (None, Some(d)) => starts_at_ms.saturating_add(d.as_millis() as u64),
        (None, None) => return Err("--duration or --end: one is needed".into()),
    };
    let created_by = created_by
        .or_else(|| std::env::var("SUDO_USER").ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    let silence = pdrelay::rules::silence::Silence {
        id: uuid::Uuid::new_v4().to_string(),
        matchers: pdrelay::rules::silence::parse_matcher_args(&matchers)?,
        starts_at_ms,
        ends_at_ms,
        comment,
        created_by,
        created_at_ms: now,
    };
    silence.check()?;
    if ends_at_ms <= now {
        return Err("--end: must be in the future".into());
    }
    Ok(silence)
}

/// `pdrelay route test`: exit 0 with the route and the event, 1 when the event is not valid or
/// cannot be read.
fn run_route_test(config: &Config, file: Option<PathBuf>, intake: &str) -> ExitCode {
    use std::io::Read;
    const MAX_INPUT: u64 = 1 << 20;
    let mut text = Vec::new();
    let read = match file.as_deref().filter(|p| p.as_os_str() != "-") {
        Some(path) => std::fs::File::open(path).and_then(|f| f.take(MAX_INPUT + 1).read_to_end(&mut text)),
        None => std::io::stdin().take(MAX_INPUT + 1).read_to_end(&mut text),
    };
    if let Err(e) = read {
        eprintln!("pdrelay: route test: cannot read the event: {e}");
        return ExitCode::from(1);
    }
    if text.len() as u64 > MAX_INPUT {
        eprintln!("pdrelay: route test: the event must be at most 1 MiB");
        return ExitCode::from(1);
    }
    match Event::from_json(&text, &config.defaults) {
        Ok(event) => {
            print!("{}", pdrelay::rules::routing::explain(&config.router, event, intake, &config.events_url));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pdrelay: route test: {}", pdrelay::text::Escaped(&e.to_string()));
            ExitCode::from(1)
        }
    }
}

fn run_queue(config: &Config, command: QueueCommand, json: bool, pdagent_output: bool) -> ExitCode {
    let pd_queue_retry = pdagent_output && matches!(command, QueueCommand::Retry { .. });
    let request = match command {
        QueueCommand::Salvage => return run_salvage(config, json),
        QueueCommand::Status { routing_key } => {
            return run_status(config, routing_key.as_deref(), json, pdagent_output);
        }
        QueueCommand::List { state, routing_key, limit } => AdminRequest::List { state, routing_key, limit },
        QueueCommand::Show { id } => AdminRequest::Show { id },
        QueueCommand::Retry { id, all, routing_key, waiting } => AdminRequest::Retry {
            target: match (id, all, routing_key) {
                (_, _, key) if waiting => RetryTarget::Waiting(key),
                (Some(id), _, _) => RetryTarget::Id(id),
                (_, _, Some(key)) => RetryTarget::RoutingKey(key),
                _ => RetryTarget::All,
            },
        },
        QueueCommand::Purge { state, older_than } => {
            return run_purge(config, state, older_than, json);
        }
    };
    run_admin(config, request, json, "pdrelay queue", pd_queue_retry)
}

/// `queue purge`: says how many records of that state the queue holds before removing, then
/// how many it removed (`--json`: the count only, as before).
fn run_purge(
    config: &Config,
    state: protocol::PurgeState,
    older_than: Option<std::time::Duration>,
    json: bool,
) -> ExitCode {
    let word = match state {
        protocol::PurgeState::Failed => "failed",
        protocol::PurgeState::Delivered => "delivered",
        protocol::PurgeState::Superseded => "superseded",
    };
    if !json {
        if let Ok(AdminAnswer::Status(report)) = admin::call(config, AdminRequest::Status) {
            let held = match state {
                protocol::PurgeState::Failed => report.total.failed,
                protocol::PurgeState::Delivered => report.total.delivered,
                protocol::PurgeState::Superseded => report.total.superseded,
            };
            let which = match older_than {
                Some(d) => format!("those finished over {} ago", humantime::format_duration(d)),
                None => "all of them".to_owned(),
            };
            println!("the queue holds {held} {word} event(s); removing {which}");
        }
    }
    let request = AdminRequest::Purge { state, older_than_s: older_than.map(|d| d.as_secs()) };
    match admin::call(config, request) {
        Ok(AdminAnswer::Changed(n)) if !json => {
            println!("removed {n} {word} event(s)");
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            println!("{}", serde_json::to_string_pretty(&answer).expect("answers serialize"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pdrelay queue: {e}");
            ExitCode::from(if matches!(e, AdminError::Invalid(_)) { 2 } else { 1 })
        }
    }
}

/// Drop-files waiting in the spool directories (spool file names, and files the daemon claimed
/// but has not stored yet). `None` for an unreadable directory.
fn spool_waiting(config: &Config) -> Vec<(PathBuf, Option<usize>)> {
    config
        .file
        .ingest
        .spool_dirs
        .iter()
        .map(|dir| (dir.clone(), pdrelay::intake::spool_dir::waiting_files(dir)))
        .collect()
}

/// `queue status`, narrowed to one routing key when asked; pd-queue's table with
/// `--pdagent-output`.
fn run_status(config: &Config, routing_key: Option<&str>, json: bool, pdagent_output: bool) -> ExitCode {
    let mut report = match admin::call(config, AdminRequest::Status) {
        Ok(AdminAnswer::Status(report)) => report,
        Ok(other) => {
            eprintln!("pdrelay queue: unexpected answer to status: {other:?}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("pdrelay queue: {e}");
            return ExitCode::from(if matches!(e, AdminError::Invalid(_)) { 2 } else { 1 });
        }
    };
    if let Some(key) = routing_key {
        pdagent::filter_status(&mut report, key);
    }
    if json {
        let answer = AdminAnswer::Status(report);
        println!("{}", serde_json::to_string_pretty(&answer).expect("answers serialize"));
    } else if pdagent_output {
        print!("{}", pdagent::render_pd_queue_status(&report));
    } else {
        print!("{}", render(&AdminAnswer::Status(report)));
        // Drop-files are not in the queue until the daemon reads them: say so when some wait
        // (the daemon may be stopped, or behind).
        for (dir, count) in spool_waiting(config) {
            match count {
                Some(0) => {}
                Some(n) => println!(
                    "\n{n} drop-file(s) waiting in {} (not counted above; the daemon stores them when it runs)",
                    dir.display()
                ),
                None => println!("\n{}: cannot be read by this user; drop-files there are not counted", dir.display()),
            }
        }
        if let Some(key) = routing_key {
            let shown: String = key.chars().take(6).collect();
            println!(
                "\n(counts and pauses of routing key {shown}… only; oldest pending, last success and last error are \
                 the whole queue's)"
            );
        }
    }
    ExitCode::SUCCESS
}

fn run_salvage(config: &Config, json: bool) -> ExitCode {
    if let Err(e) = pdrelay::queue::disk::act_as_queue_owner(&config.queue_path()) {
        eprintln!(
            "pdrelay queue salvage: cannot act as the owner of {} (root salvages as the daemon's user, so the \
             rebuilt queue stays usable by it): {e}",
            config.queue_path().display()
        );
        return ExitCode::from(1);
    }
    match pdrelay::queue::Store::salvage(&config.queue_path()) {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("reports serialize"));
            } else {
                println!("damaged queue moved to {} (kept; delete it when done)", report.moved_to.display());
                println!(
                    "recovered: {} pending, {} failed, {} delivered, {} open-alert entries; {} unreadable",
                    report.pending, report.failed, report.delivered, report.alerts, report.unreadable
                );
                if let Some(acked) = report.acknowledged_commit {
                    let found = report.recovered_commit.unwrap_or(0);
                    if found < acked {
                        println!(
                            "lost: the events of commits #{} to #{acked} were acknowledged but could not be read; \
                             resend what the producers sent just before the damage",
                            found + 1
                        );
                    }
                }
                if let Some(e) = &report.open_error {
                    println!("the damaged copy could not be opened at all: {e}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pdrelay queue salvage: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_admin(config: &Config, request: AdminRequest, json: bool, what: &str, pd_queue_retry: bool) -> ExitCode {
    match admin::call(config, request) {
        Ok(answer) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&answer).expect("answers serialize"));
            } else if let (true, AdminAnswer::Changed(n)) = (pd_queue_retry, &answer) {
                println!("{}", pdagent::pd_queue_retry_line(*n));
            } else {
                print!("{}", render(&answer));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::from(if matches!(e, AdminError::Invalid(_)) { 2 } else { 1 })
        }
    }
}

/// `pdrelay alerts`: with `--refresh`, reads PagerDuty's side from its REST API first (in this
/// process, with the config's key) and stores it through the admin path; with
/// `--resend-resolves`, queues the resolves PagerDuty did not take.
fn run_alerts(config: &Config, json: bool, refresh: bool, resend_resolves: bool) -> ExitCode {
    if resend_resolves {
        return match admin::call(config, AdminRequest::ResendResolves) {
            Ok(AdminAnswer::Changed(n)) => {
                println!("{n} resolve(s) queued again");
                ExitCode::SUCCESS
            }
            Ok(other) => {
                eprintln!("pdrelay alerts: unexpected answer: {other:?}");
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("pdrelay alerts: {e}");
                ExitCode::from(1)
            }
        };
    }
    let mut failed = false;
    if refresh {
        if let Err(e) = refresh_alerts(config) {
            eprintln!("pdrelay alerts: {}", pdrelay::text::escape_controls(&e));
            failed = true;
        }
    }
    let code = run_admin(config, AdminRequest::Alerts, json, "pdrelay alerts", false);
    if failed {
        ExitCode::from(1)
    } else {
        code
    }
}

fn refresh_alerts(config: &Config) -> Result<(), String> {
    let client = pdrelay::sync::reconcile::client(config)?.ok_or_else(|| {
        "--refresh: reconciliation is off: set pagerduty.rest_api_key or pagerduty.rest_api_key_file".to_owned()
    })?;
    let (alerts, views) = match admin::call(config, AdminRequest::Ledger).map_err(|e| e.to_string())? {
        AdminAnswer::Ledger { alerts, views } => (alerts, views),
        other => return Err(format!("unexpected answer: {other:?}")),
    };
    let (targets, _) = pdrelay::sync::reconcile::plan(&alerts, &views);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let (read, error) = runtime.block_on(pdrelay::sync::reconcile::read_views(&client, &targets, &views));
    if !read.is_empty() {
        admin::call(config, AdminRequest::PutViews { views: read }).map_err(|e| e.to_string())?;
    }
    error.map_or(Ok(()), |e| Err(e.to_string()))
}

fn run_send(config: &Config, args: &SendArgs, output: Output) -> ExitCode {
    let result = if args.contexts.is_empty() { send::send(args, config) } else { send_with_contexts(args, config) };
    report_sent(result, args.quiet, "pdrelay send", output)
}

/// `send` with pd-send's `-x/--context` flags, added to the event before it is validated.
fn send_with_contexts(args: &SendArgs, config: &Config) -> Result<send::Sent, SendError> {
    let contexts = args.contexts.iter().map(|c| pdagent::parse_context(c)).collect::<Result<Vec<_>, _>>()?;
    let mut value = send::event_json(args)?;
    pdagent::apply_contexts(&mut value, &contexts)?;
    let event = Event::from_value(value, &config.defaults)?;
    send::hand_over(&event, config)
}

fn run_zabbix(config: &Config, args: &ZabbixArgs, output: Output) -> ExitCode {
    let alert =
        zabbix::Alert { routing_key: args.routing_key.clone(), subject: args.subject.clone(), body: args.body.clone() };
    let result = zabbix::map(&alert, args.api, &config.defaults)
        .map_err(SendError::from)
        .and_then(|event| send::hand_over(&event, config));
    report_sent(result, args.quiet, "pdrelay zabbix", output)
}

fn run_sensu(config: &Config, args: &SensuArgs, output: Output) -> ExitCode {
    use std::io::Read;
    let limit = 2 * MAX_REQUEST_BYTES;
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().lock().take(limit as u64 + 1).read_to_end(&mut input) {
        eprintln!("pdrelay sensu: cannot read standard input: {e}");
        return ExitCode::from(2);
    }
    if input.len() > limit {
        eprintln!("pdrelay sensu: standard input: must be at most {limit} bytes (a Sensu check result as JSON)");
        return ExitCode::from(2);
    }
    let result = match serde_json::from_slice(&input) {
        Ok(value) => {
            sensu::map(value, args.routing_key.as_deref(), args.dedup_key.as_deref(), args.api, &config.defaults)
                .map_err(SendError::from)
                .and_then(|event| send::hand_over(&event, config))
        }
        Err(e) => {
            eprintln!("pdrelay sensu: standard input: must be a Sensu check result as JSON ({e})");
            return ExitCode::from(2);
        }
    };
    report_sent(result, args.quiet, "pdrelay sensu", output)
}

/// `import-pdagent`: exit 0 when every file was imported, 2 when some were not valid events (the
/// rest were imported), 1 when the import stopped because an event could not be stored.
fn run_import(config: &Config, args: &ImportPdagentArgs) -> ExitCode {
    let dir = args.dir.clone().unwrap_or_else(pdagent::default_queue_dir);
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let result = pdagent::import(
        &dir,
        &config.defaults,
        args.dry_run,
        |event| send::hand_over(event, config),
        &mut stdout.lock(),
        &mut stderr.lock(),
    );
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            eprintln!("pdrelay import-pdagent: {}: {e}", dir.display());
            return ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound { 2 } else { 1 });
        }
    };
    if report.spooled {
        let spool = config.file.ingest.spool_dirs.first().map(|d| d.display().to_string()).unwrap_or_default();
        eprintln!(
            "pdrelay import-pdagent: the daemon did not answer; events were written to {spool} and go out once it runs"
        );
    }
    println!(
        "{} {} event(s); {} invalid file(s) left in place; {} skipped; from {}",
        if args.dry_run { "would import" } else { "imported" },
        report.imported,
        report.invalid,
        report.skipped,
        dir.display()
    );
    if let Some(why) = report.stopped {
        eprintln!("pdrelay import-pdagent: stopped: {why}");
        return ExitCode::from(1);
    }
    ExitCode::from(if report.invalid > 0 { 2 } else { 0 })
}

fn run_nagios(config: &Config, args: &NagiosArgs, output: Output) -> ExitCode {
    let macros = if args.fields.is_empty() {
        Ok(nagios::macros_from_env(std::env::vars()))
    } else {
        nagios::macros_from_fields(&args.fields)
    };
    let notification = macros.map(|macros| nagios::Notification {
        routing_key: args.routing_key.clone(),
        notification_type: args.notification_type.clone(),
        object: Some(args.object),
        dedup_key: args.dedup_key.clone(),
        macros,
    });
    let mapped = notification.and_then(|n| nagios::map_api(&n, args.api, &config.nagios, &config.defaults));
    let event = match mapped {
        Ok(nagios::Mapped::Event(event)) => event,
        Ok(nagios::Mapped::Ignored(message)) => {
            println!("pdrelay nagios: {message}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("pdrelay nagios: {e}");
            return ExitCode::from(2);
        }
    };
    report_sent(send::hand_over(&event, config), args.quiet, "pdrelay nagios", output)
}

fn report_sent(result: Result<send::Sent, SendError>, quiet: bool, what: &str, output: Output) -> ExitCode {
    match result {
        Ok(sent) => {
            if !quiet {
                match output {
                    // A change event has no dedup key: only its id.
                    Output::Pdrelay => match sent.dedup_key.as_deref() {
                        Some(key) => println!("id={} dedup_key={key}", sent.id),
                        None => println!("id={}", sent.id),
                    },
                    Output::PdagentKey => println!("{}", pdagent::pd_send_line(sent.dedup_key.as_deref())),
                    Output::Silent => {}
                }
                if let Handed::Spool(p) = &sent.handed {
                    eprintln!("{what}: daemon not reachable; queued as {}", p.display());
                }
            }
            ExitCode::SUCCESS
        }
        Err(e @ SendError::Invalid(_)) => {
            eprintln!("{what}: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_daemon(config: Config, path: PathBuf, explicit: bool) -> ExitCode {
    let filter_handle = pdrelay::ops::logging::init(&config.file.log_level, config.file.log_format == "json");
    let reloadable = pdrelay::ops::reload::ReloadableSettings::new(&config);
    let reload = {
        let (reloadable, old) = (reloadable.clone(), config.file.clone());
        move || pdrelay::ops::reload::reload(&path, explicit, &old, &reloadable, &filter_handle)
    };
    // Idle blocking threads are kept for a minute (tokio's default, 10 s, is shorter than the
    // default spool rescan interval, 30 s): each rescan then reuses the thread the last one used
    // instead of starting one, a few wake-ups fewer for an idle daemon.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pdrelay")
        .thread_keep_alive(std::time::Duration::from_secs(60))
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pdrelay: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        // The handlers are installed now, not when `stop` is first polled (after the socket
        // listens): a SIGTERM in between would otherwise kill the process without a shutdown.
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int) = (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok());
        let stop = async move {
            tokio::select! {
                _ = received(&mut term) => {}
                _ = received(&mut int) => {}
            }
        };
        // systemd (Type=notify): READY=1 once the store is open and the socket listens;
        // WATCHDOG=1 while the loops make progress (WatchdogSec in the unit).
        let watchdog = pdrelay::ops::notify::watchdog_interval();
        // SIGHUP: reload what can change safely; a bad file keeps the running settings.
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    if let Err(e) = reload() {
                        tracing::error!(error = %e, "configuration not reloaded; the running settings stay");
                    }
                }
            });
        }
        let result = pdrelay::daemon::run(
            config,
            reloadable,
            stop,
            pdrelay::ops::notify::ready,
            watchdog,
            pdrelay::ops::notify::alive,
        )
        .await;
        pdrelay::ops::notify::stopping();
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "pdrelay daemon failed");
            // A damaged queue needs an operator: a distinct code that the systemd unit does not
            // restart on (RestartPreventExitStatus=3), rather than a restart loop.
            let damaged = matches!(
                e,
                pdrelay::daemon::DaemonError::Store(pdrelay::queue::StoreError::Damaged { .. })
                    | pdrelay::daemon::DaemonError::Store(pdrelay::queue::StoreError::Corrupt(_))
            );
            ExitCode::from(if damaged { EXIT_DAMAGED } else { 1 })
        }
    }
}

/// Waits for the next delivery of a signal; forever when its handler could not be installed.
async fn received(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
