//! Writes the man pages and shell completions generated from the CLI definition
//! (`pdrelay::cli::Cli`) into the directory given as the only argument:
//!
//! - `pdrelay.1`, the main page, with EXIT STATUS, ENVIRONMENT, FILES and SEE ALSO sections, and
//!   `pdrelay-<command>.1` for each command (`pdrelay-queue-status.1` for nested ones);
//! - `pdrelay.bash`, `_pdrelay` (zsh) and `pdrelay.fish`.
//!
//! `packaging/build.sh` runs it before building the .deb and the .rpm, whose assets point at these
//! files: `cargo run --release --example gen_docs -- "$CARGO_TARGET_DIR/release/pdrelay-gen"`.
//! Nothing here is checked in: the pages follow the code.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// The NAME line (`pdrelay \- ...`) and the DESCRIPTION of the main page.
const ABOUT: &str = "durable PagerDuty Events API forwarder for monitored hosts";
const LONG_ABOUT: &str = "\
pdrelay takes alerts from local producers (spool directories, a Unix socket, pdrelay send, \
Nagios, Icinga, Zabbix and Sensu notification commands) and delivers them to the PagerDuty Events \
API (v2 alerts, v2 change events, v1), durably and in order. An event is acknowledged to its \
producer only once it is fsynced to the queue; retryable answers are retried with backoff until \
delivered, and per routing key and dedup key the order is kept.

pdrelay daemon is the service (the pdrelay systemd unit runs it as the pdrelay user); the other \
commands hand events to it over its socket, or as a drop-file into the spool directory when it \
does not answer, or inspect and repair its queue.";

/// Sections of the main page after clap's, in roff. Lines are escaped by hand: `\-` for a
/// hyphen-minus in options and paths, `\e` for a backslash, nothing starts with `.` or `'`.
const EXTRA_SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
.B 0
The event was accepted and durably stored (or the command succeeded).
.TP
.B 1
The event could not be stored (no daemon answered and the spool directory is not writable, the
disk is full, ...), or the command failed.
.TP
.B 2
Bad usage, an invalid event or an invalid configuration: nothing was stored; a one\-line reason
naming the field and the rule is printed on standard error.
.TP
.B 3
.B pdrelay daemon
only: the queue is damaged; run
.B pdrelay queue salvage
(the systemd unit does not restart on this exit status).
.SH ENVIRONMENT
.TP
.B PDRELAY_CONFIG
The configuration file, as
.BR \-\-config .
.TP
.B RUST_LOG
A log filter that overrides
.B log_level
in the configuration.
.TP
.B NAGIOS_*, ICINGA_*
Notification macros read by
.B pdrelay nagios
when no
.B \-f
is given.
.SH FILES
.TP
.I /etc/pdrelay/config.toml
The configuration (TOML). Every key, its default and its meaning are in the file the package
installs; unknown keys are an error. Check it with
.BR "pdrelay check\-config" .
.TP
.I /var/lib/pdrelay/
.BR state_dir :
the queue (sled database), retry state and dedup\-key tracking. Queued events survive restarts
and upgrades here.
.TP
.I /var/spool/pdrelay/
The spool directory: producers in the
.B pdrelay
group write
.IR NAME .json,
.IR NAME .ndjson
or
.RI pd_ NAME .txt
files there (write a name starting with "." or ending in ".tmp", then rename it into place).
Unreadable files are moved to
.I rejected/
with a
.I .reason
file.
.TP
.I /run/pdrelay/pdrelay.sock
The intake socket (newline\-delimited JSON), writable by the
.B pdrelay
group.
.TP
.I /run/pdrelay/admin.sock
The admin socket used by
.BR "pdrelay queue" ;
root and the daemon's user only.
.TP
.I /usr/share/pdrelay/
Nagios 4 and Icinga 2 configuration to copy.
.SH "SEE ALSO"
.BR systemctl (1),
.BR journalctl (1),
and
.BR pdrelay\-send (1)
and the other command pages. The pdagent\-compatible wrappers
.BR pd\-send ,
.BR pd\-nagios ,
.BR pd\-zabbix ,
.B pd\-sensu
and
.B pd\-queue
run these commands. The README (/usr/share/doc/pdrelay/) describes the input formats, the Nagios mapping and the
delivery guarantees.
"#;

fn main() {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gen_docs DIR   (writes pdrelay.1, pdrelay-*.1 and completions into DIR)");
        std::process::exit(2);
    };
    if let Err(e) = generate(&dir) {
        eprintln!("gen_docs: {}: {e}", dir.display());
        std::process::exit(1);
    }
}

fn generate(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = pdrelay::cli::Cli::command().about(ABOUT).long_about(LONG_ABOUT).disable_help_subcommand(true);
    cmd.build();

    // The main page: clap's sections, then ours.
    let mut page = Vec::new();
    let man = man(cmd.clone());
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    page.write_all(EXTRA_SECTIONS.as_bytes())?;
    man.render_version_section(&mut page)?;
    std::fs::write(dir.join("pdrelay.1"), synopsis_values(page))?;

    // One page per command, as `git` has: `man pdrelay-send`.
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        subcommand_pages(sub, dir)?;
    }

    // Completions: `--severity` offers its four values (not file names); the wrappers' internal
    // `--pdagent-output` is not offered (clap_complete lists hidden global flags).
    let severities = ["critical", "error", "warning", "info"];
    let mut comp = pdrelay::cli::Cli::command()
        .mut_subcommand("send", |s| s.mut_arg("severity", |a| a.value_parser(severities)))
        .disable_help_subcommand(true);
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut comp, "pdrelay", dir)?;
        let text = std::fs::read_to_string(&path)?;
        let text = match shell {
            Shell::Bash => text.replace(" --pdagent-output", ""),
            _ => text.lines().filter(|l| !l.contains("pdagent-output")).map(|l| format!("{l}\n")).collect(),
        };
        std::fs::write(&path, text)?;
    }
    Ok(())
}

/// clap_mangen writes an optional flag that takes a value as `[--config]` in the synopsis: the
/// value is put back (`[--config PATH]`).
fn synopsis_values(page: Vec<u8>) -> Vec<u8> {
    String::from_utf8_lossy(&page).replace("[\\fB\\-\\-config\\fR]", "[\\fB\\-\\-config\\fR \\fIPATH\\fR]").into_bytes()
}

fn subcommand_pages(cmd: &clap::Command, dir: &Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        subcommand_pages(sub, dir)?;
    }
    let man = man(cmd.clone());
    let mut page = Vec::new();
    man.render(&mut page)?;
    page.write_all(b".SH \"SEE ALSO\"\n.BR pdrelay (1)\n")?;
    std::fs::write(dir.join(man.get_filename()), synopsis_values(page))
}

fn man(cmd: clap::Command) -> clap_mangen::Man {
    // No date: the page is the same for the same code (reproducible); the version names it.
    clap_mangen::Man::new(cmd).manual("pdrelay manual")
}
