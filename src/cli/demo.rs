//! `oplog demo`: runs the library's demo and presents it: a progress line on
//! a terminal, then a short summary (or one JSON document).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use oplog::cluster::ClusterOptions;
use oplog::demo::{self, DemoConfig, DemoPhase, DemoProgress, DemoReport};
use oplog::LockMode;

use super::{Context, Failure, Output};

/// What to run, from the command line.
pub struct Request {
    /// Concurrent writers.
    pub writers: usize,
    /// Transactions per writer.
    pub entries: usize,
    /// Aggregates (tenants).
    pub aggregates: usize,
    /// Replica database URL.
    pub into: Option<String>,
    /// Replay and verify after writing.
    pub replay: bool,
    /// Keep what the demo created.
    pub keep: bool,
    /// Optimistic locking.
    pub optimistic: bool,
}

/// Runs the demo and prints its report; fails with [`Failure::Found`] when
/// replay or verification found a problem.
pub fn run(ctx: &Context, out: &mut Output, request: Request) -> Result<(), Failure> {
    let keyring = ctx.optional_keyring()?;
    oplog::cluster::cleanup_on_signals()?;
    let cfg = DemoConfig {
        database_url: ctx.optional_database_url().map(str::to_string),
        cluster: ClusterOptions::from_env(),
        into: request.into,
        writers: request.writers,
        entries: request.entries,
        aggregates: request.aggregates,
        replay: request.replay,
        keep: request.keep,
        keyring,
        lock_mode: if request.optimistic {
            LockMode::Optimistic
        } else {
            LockMode::Pessimistic
        },
        ..DemoConfig::default()
    };
    let mut meter = Meter::new();
    let result = demo::run(cfg, &mut |p| meter.show(p));
    meter.clear();
    let report = result?;
    if out.json() {
        out.json_line(&report)?;
    } else {
        summary(out, &report)?;
    }
    if report.is_clean() {
        return Ok(());
    }
    out.flush()?;
    Err(Failure::Found)
}

/// A progress line on standard error, redrawn in place, only when standard
/// error is a terminal.
struct Meter {
    on: bool,
    last: Option<(DemoPhase, Instant)>,
}

/// How often the line is redrawn within a phase.
const REDRAW: Duration = Duration::from_millis(100);

/// Width of the bar, in characters.
const BAR: usize = 30;

impl Meter {
    fn new() -> Meter {
        Meter {
            on: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn show(&mut self, p: &DemoProgress) {
        if !self.on {
            return;
        }
        if let Some((phase, at)) = self.last {
            if phase == p.phase && at.elapsed() < REDRAW {
                return;
            }
        }
        self.last = Some((p.phase, Instant::now()));
        let line = match p.phase {
            DemoPhase::Starting => "starting a private PostgreSQL cluster...".to_string(),
            DemoPhase::Preparing => "creating the schema...".to_string(),
            DemoPhase::Writing => format!(
                "writing   {} {}/{} entries, {:.0}/s, {} retries",
                bar(p.done, p.total),
                p.done,
                p.total,
                rate(p.done, p.elapsed),
                p.retries
            ),
            DemoPhase::Replaying => format!(
                "replaying {} {}/{} entries, {:.0}/s",
                bar(p.done, p.total),
                p.done,
                p.total,
                rate(p.done, p.elapsed)
            ),
            DemoPhase::Verifying => "verifying the log and the replica...".to_string(),
            DemoPhase::CleaningUp => "cleaning up...".to_string(),
        };
        let _ = write!(std::io::stderr().lock(), "\r\x1b[K{line}");
    }

    fn clear(&mut self) {
        if self.on && self.last.is_some() {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
        }
    }
}

fn bar(done: u64, total: u64) -> String {
    let filled = done
        .min(total)
        .saturating_mul(BAR as u64)
        .checked_div(total)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(BAR - filled))
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn summary(out: &mut Output, r: &DemoReport) -> Result<(), Failure> {
    let server = if r.server.embedded {
        format!("a private PostgreSQL {} cluster", r.server.version)
    } else {
        format!("PostgreSQL {}", r.server.version)
    };
    out.line(format_args!(
        "demo: {} x {} on {} ({} locking), database {} on {server}",
        plural(r.writers, "writer", "writers"),
        plural(r.entries_per_writer, "transaction", "transactions"),
        plural(r.aggregates, "tenant", "tenants"),
        r.lock_mode,
        r.source_database
    ))?;
    out.line(format_args!(
        "wrote     {} entries ({} operations) in {:.2} s: {:.0} entries/s, {} retries",
        r.entries_written, r.operations_written, r.write_s, r.write_rate_per_s, r.retries
    ))?;
    let actions: Vec<String> = r.actions.iter().map(|(a, n)| format!("{a} {n}")).collect();
    out.line(format_args!("          {}", actions.join(", ")))?;
    if let Some(replica) = &r.replica_database {
        out.line(format_args!(
            "replayed  {} entries into {replica} in {:.2} s: {:.0} entries/s",
            r.replayed, r.replay_s, r.replay_rate_per_s
        ))?;
        for stop in &r.replay_stopped {
            out.line(format_args!("          stopped: {stop}"))?;
        }
        let tables: Vec<String> = r
            .tables
            .iter()
            .map(|t| {
                if t.differences == 0 {
                    format!("{} {} rows", t.table, t.source_rows)
                } else {
                    format!(
                        "{} {} rows, replica {} rows, {} differences",
                        t.table, t.source_rows, t.replica_rows, t.differences
                    )
                }
            })
            .collect();
        let verdict = match r.replica_matches {
            Some(true) => "replica matches",
            _ => "REPLICA DOES NOT MATCH",
        };
        out.line(format_args!(
            "verified  {} entries: {} findings; {verdict} ({})",
            r.entries_verified,
            r.verify_findings.unwrap_or(0),
            tables.join(", ")
        ))?;
        for finding in &r.findings {
            out.line(format_args!("          {finding}"))?;
        }
    } else {
        out.line(format_args!("no replay (--no-replay)"))?;
    }
    for db in &r.kept_databases {
        out.line(format_args!("kept database {db}"))?;
    }
    for db in &r.dropped_databases {
        out.line(format_args!("dropped database {db}"))?;
    }
    if let Some(dir) = &r.server.cluster_dir {
        match (&r.server.start_command, &r.server.url) {
            (Some(start), Some(url)) => {
                out.line(format_args!(
                    "kept the cluster (stopped) in {}; start it with: {start}",
                    dir.display()
                ))?;
                out.line(format_args!(
                    "then connect to {}",
                    oplog::bench::with_database(url, &r.source_database)
                ))?;
            }
            _ => out.line(format_args!(
                "removed the private cluster {} (--keep keeps it)",
                dir.display()
            ))?,
        }
    }
    out.line(format_args!("done in {:.2} s", r.elapsed_s))
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}
