//! The `pdrelay` binary: parse arguments, set up logging, load the config, call the library, and
//! map every error to an exit code in one place (0 ok, 1 could not store or run, 2 bad usage or
//! invalid input).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pdrelay::admin::{self, AdminError, AdminRequest, RetryTarget};
use pdrelay::cli::{Cli, Command, NagiosArgs, QueueCommand};
use pdrelay::config::{Config, DEFAULT_CONFIG_PATH};
use pdrelay::intake::nagios;
use pdrelay::send::{self, Handed, SendError};

/// Exit code of a daemon that refuses a damaged queue.
const EXIT_DAMAGED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let explicit = cli.config.is_some();
    let path = cli.config.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let config = match Config::load(&path, explicit || matches!(cli.command, Command::CheckConfig)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pdrelay: config: {}", e.to_string().replace('\n', "\npdrelay: config: "));
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::CheckConfig => {
            println!("{}: OK", path.display());
            ExitCode::SUCCESS
        }
        Command::Send(args) => report_sent(send::send(&args, &config), args.quiet, "pdrelay send"),
        Command::Daemon => run_daemon(config),
        Command::Nagios(args) => run_nagios(&config, &args),
        Command::Alerts { json } => run_admin(&config, AdminRequest::Alerts, json, "pdrelay alerts"),
        Command::Queue { json, command } => run_queue(&config, command, json),
    }
}

fn run_queue(config: &Config, command: QueueCommand, json: bool) -> ExitCode {
    let request = match command {
        QueueCommand::Salvage => return run_salvage(config, json),
        QueueCommand::Status => AdminRequest::Status,
        QueueCommand::List { state, routing_key, limit } => AdminRequest::List { state, routing_key, limit },
        QueueCommand::Show { id } => AdminRequest::Show { id },
        QueueCommand::Retry { id, all, routing_key } => AdminRequest::Retry {
            target: match (id, all, routing_key) {
                (Some(id), _, _) => RetryTarget::Id(id),
                (_, _, Some(key)) => RetryTarget::RoutingKey(key),
                _ => RetryTarget::All,
            },
        },
        QueueCommand::Purge { state, older_than } => {
            AdminRequest::Purge { state, older_than_s: older_than.map(|d| d.as_secs()) }
        }
    };
    run_admin(config, request, json, "pdrelay queue")
}

fn run_salvage(config: &Config, json: bool) -> ExitCode {
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

fn run_admin(config: &Config, request: AdminRequest, json: bool, what: &str) -> ExitCode {
    match admin::call(config, request) {
        Ok(answer) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&answer).expect("answers serialize"));
            } else {
                print!("{}", admin::render(&answer));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::from(if matches!(e, AdminError::Invalid(_)) { 2 } else { 1 })
        }
    }
}

fn run_nagios(config: &Config, args: &NagiosArgs) -> ExitCode {
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
    let mapped = notification.and_then(|n| nagios::map(&n, &config.nagios, &config.defaults));
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
    report_sent(send::hand_over(&event, config), args.quiet, "pdrelay nagios")
}

fn report_sent(result: Result<send::Sent, SendError>, quiet: bool, what: &str) -> ExitCode {
    match result {
        Ok(sent) => {
            if !quiet {
                println!("id={} dedup_key={}", sent.id, sent.dedup_key.as_deref().unwrap_or(""));
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

fn run_daemon(config: Config) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.file.log_level));
    // Under systemd, journald stamps each line itself: no timestamps, no colours there.
    use std::io::IsTerminal;
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("pdrelay").build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pdrelay: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let stop = async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        pdrelay::daemon::run(config, stop, || {}).await
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
