//! The write-rate benchmarks: one writer with and without an entry, many
//! writers on one aggregate in each locking mode against Boundary's
//! statement sequence, and many writers with and without NOTIFY.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, Statement, Transaction};
use serde::Serialize;
use uuid::Uuid;

use crate::codec::crypto::Keyring;
use crate::codec::entry::{NewEntry, FORMAT_VERSION, GENESIS_CHAIN};
use crate::error::{Error, Result};
use crate::source::retry::RetryPolicy;
use crate::source::write::Oplog;
use crate::tooling::demo::User;

use super::codec::seal_entry;
use super::write_async::Mode;
use super::{check_failed, invalid, per, percentile, user, verdict, Scratch, DEFAULT_URL};

/// The smallest commits-per-second ratio of a transaction with an entry to
/// the bare transaction that [`write()`] aims for.
pub const WRITE_TARGET_RATIO: f64 = 0.75;

/// The same ratio aimed for over tokio-postgres.
pub const WRITE_TOKIO_TARGET_RATIO: f64 = 0.80;

/// The same ratio aimed for over sqlx.
pub const WRITE_SQLX_TARGET_RATIO: f64 = 0.70;

/// How many times the pessimistic mode should outrun the baseline in
/// [`contention`].
pub const CONTENTION_TARGET_RATIO: f64 = 5.0;

/// Length of one interleaving slice in [`write()`].
pub(super) const SLICE: Duration = Duration::from_millis(500);

/// What to run and where.
#[derive(Debug, Clone)]
pub struct WriteBenchConfig {
    /// URL of the server, for administrative connections. The scratch
    /// database is created on this server; the database named in the URL is
    /// only used to create and drop it.
    pub url: String,
    /// How long each scenario runs, in seconds.
    pub seconds: f64,
    /// Concurrent writers in [`contention`]; [`write()`] always uses one.
    pub writers: usize,
    /// Size of each user's `avatar`, which sets the size of the domain row
    /// and of the entry.
    pub payload_bytes: usize,
    /// The retry policy of every scenario. Give it enough attempts that no
    /// writer gives up under contention.
    pub retry: RetryPolicy,
}

impl Default for WriteBenchConfig {
    /// [`DEFAULT_URL`], 3 seconds per scenario, 16 writers, a 256-byte
    /// payload and 1000 attempts with the default backoff.
    fn default() -> Self {
        WriteBenchConfig {
            url: DEFAULT_URL.to_string(),
            seconds: 3.0,
            writers: 16,
            payload_bytes: 256,
            retry: RetryPolicy::attempts(1000),
        }
    }
}

impl WriteBenchConfig {
    /// The defaults, with the URL taken from `DATABASE_URL` when it is set.
    pub fn from_env() -> Self {
        WriteBenchConfig {
            url: std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_string()),
            ..WriteBenchConfig::default()
        }
    }

    fn duration(&self) -> Result<Duration> {
        Duration::try_from_secs_f64(self.seconds)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                invalid(format!(
                    "seconds must be a positive number, not {}",
                    self.seconds
                ))
            })
    }

    fn check(&self) -> Result<Duration> {
        if self.writers == 0 {
            return Err(invalid("writers must be at least 1".into()));
        }
        self.duration()
    }
}

/// Checks that every commit counted left exactly one entry and one ticket
/// version behind, so that the rates count useful commits only.
fn check_log(client: &mut Client, aggregate: &str, commits: u64) -> Result<()> {
    let row = client.query_one(
        "SELECT (SELECT version FROM oplog_ticket WHERE name = $1), \
                (SELECT count(*) FROM oplog_entry WHERE aggregate_name = $1)",
        &[&aggregate],
    )?;
    let (version, entries): (i64, i64) = (row.get(0), row.get(1));
    let expected = i64::try_from(commits).unwrap_or(i64::MAX);
    if version != expected || entries != expected {
        return Err(check_failed(format!(
            "aggregate {aggregate:?} counted {commits} commits but has {entries} entries at ticket version {version}"
        )));
    }
    Ok(())
}

/// Commits and retries of one scenario, with their rates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// Short name of the scenario.
    pub mode: &'static str,
    /// Transactions committed.
    pub commits: u64,
    /// Attempts that lost a race (or hit another retryable error) and ran again.
    pub retries: u64,
    /// Length of the measuring window, in seconds; only commits that
    /// finished within it are counted.
    pub seconds: f64,
    /// Commits per second.
    pub rate_per_s: f64,
    /// Retries per commit.
    pub retries_per_commit: f64,
    /// Most attempts one transaction took.
    pub max_attempts: u32,
    /// Median time from a transaction's first attempt to its commit, in
    /// milliseconds, backoff included.
    pub p50_ms: f64,
    /// 99th percentile of the same, in milliseconds: where a writer that
    /// keeps losing races shows.
    pub p99_ms: f64,
}

impl Figures {
    fn new(mode: &'static str, mut tally: Tally) -> Self {
        let seconds = tally.elapsed.as_secs_f64();
        tally.latencies.sort_unstable();
        let ms = |q: usize| percentile(&tally.latencies, q).as_secs_f64() * 1e3;
        Figures {
            mode,
            commits: tally.commits,
            retries: tally.retries,
            seconds,
            rate_per_s: per(tally.commits as f64, seconds),
            retries_per_commit: per(tally.retries as f64, tally.commits as f64),
            max_attempts: tally.max_attempts,
            p50_ms: ms(50),
            p99_ms: ms(99),
        }
    }
}

/// What [`write()`] measured: one writer, with and without an oplog entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WriteReport {
    /// Always `"write"`.
    pub scenario: &'static str,
    /// Commits per second of the transaction with an entry.
    pub rate_per_s: f64,
    /// Commits per second of the bare domain transaction.
    pub baseline_per_s: f64,
    /// `rate_per_s / baseline_per_s`.
    pub ratio: f64,
    /// The ratio aimed for, [`WRITE_TARGET_RATIO`].
    pub target_ratio: f64,
    /// Size of the user's avatar, in bytes.
    pub payload_bytes: usize,
    /// The bare domain transaction.
    pub bare: Figures,
    /// The domain transaction plus one entry, pessimistic mode.
    pub with_entry: Figures,
    /// The same two over tokio-postgres ([`Oplog::write_async`]): commits
    /// per second with an entry over the bare transaction, both through
    /// that driver.
    pub tokio_ratio: f64,
    /// The same with the entry sent with COMMIT
    /// ([`Oplog::write_and_commit_async`]) over the bare transaction.
    pub tokio_commit_ratio: f64,
    /// The ratio aimed for over tokio-postgres with the entry sent with
    /// COMMIT, [`WRITE_TOKIO_TARGET_RATIO`].
    pub tokio_target_ratio: f64,
    /// The bare domain transaction over tokio-postgres.
    pub tokio_bare: Figures,
    /// The domain transaction plus one entry over tokio-postgres.
    pub tokio_with_entry: Figures,
    /// The domain transaction with its entry sent with COMMIT.
    pub tokio_with_commit: Figures,
    /// The same two over sqlx ([`Oplog::write_sqlx`]).
    pub sqlx_ratio: f64,
    /// The ratio aimed for over sqlx, [`WRITE_SQLX_TARGET_RATIO`].
    pub sqlx_target_ratio: f64,
    /// The bare domain transaction over sqlx.
    pub sqlx_bare: Figures,
    /// The domain transaction plus one entry over sqlx.
    pub sqlx_with_entry: Figures,
}

impl WriteReport {
    /// True when the ratio reaches its target.
    pub fn meets_target(&self) -> bool {
        self.ratio >= self.target_ratio
    }

    /// True when the tokio-postgres ratio with the entry sent with COMMIT
    /// reaches its target.
    pub fn tokio_meets_target(&self) -> bool {
        self.tokio_commit_ratio >= self.tokio_target_ratio
    }

    /// True when the sqlx ratio reaches its target.
    pub fn sqlx_meets_target(&self) -> bool {
        self.sqlx_ratio >= self.sqlx_target_ratio
    }
}

/// What [`contention`] measured: many writers on one aggregate, in each mode
/// and with the baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContentionReport {
    /// Always `"contention"`.
    pub scenario: &'static str,
    /// Concurrent writers.
    pub writers: usize,
    /// Commits per second in pessimistic mode.
    pub rate_per_s: f64,
    /// Commits per second of the baseline (Boundary's statement sequence).
    pub baseline_per_s: f64,
    /// `rate_per_s / baseline_per_s`.
    pub ratio: f64,
    /// The ratio aimed for, [`CONTENTION_TARGET_RATIO`].
    pub target_ratio: f64,
    /// Optimistic commits per second over the baseline's.
    pub optimistic_ratio: f64,
    /// Size of the user's avatar, in bytes.
    pub payload_bytes: usize,
    /// [`Oplog::write`].
    pub pessimistic: Figures,
    /// [`Oplog::ticket`] then [`Oplog::write_with_ticket`].
    pub optimistic: Figures,
    /// Boundary's statement sequence.
    pub baseline: Figures,
}

impl ContentionReport {
    /// True when the ratio reaches its target.
    pub fn meets_target(&self) -> bool {
        self.ratio >= self.target_ratio
    }
}

/// Both reports of [`all`], measured against one scratch database.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reports {
    /// The single-writer comparison.
    pub write: WriteReport,
    /// The many-writer comparison.
    pub contention: ContentionReport,
    /// What notifying followers costs.
    pub notify: NotifyReport,
    /// Many writers on their own aggregates, through each driver.
    pub spread: SpreadReport,
}

/// Column headings of the figures tables.
const HEADING: &str = "  scenario                                 commits  commits/s  retries  retries/commit  max attempts  p50 ms  p99 ms";

fn row(f: &mut fmt::Formatter<'_>, label: &str, fig: &Figures) -> fmt::Result {
    writeln!(
        f,
        "  {label:<39} {:>8} {:>10.1} {:>8} {:>15.3} {:>13} {:>7.2} {:>7.2}",
        fig.commits,
        fig.rate_per_s,
        fig.retries,
        fig.retries_per_commit,
        fig.max_attempts,
        fig.p50_ms,
        fig.p99_ms
    )
}

impl fmt::Display for WriteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "write: 1 writer, {:.1} s per scenario, {}-byte payload",
            self.bare.seconds, self.payload_bytes
        )?;
        writeln!(f, "{HEADING}")?;
        row(f, "(a) domain transaction", &self.bare)?;
        row(f, "(b) (a) + oplog entry (Oplog::write)", &self.with_entry)?;
        row(f, "(c) (a) over tokio-postgres", &self.tokio_bare)?;
        row(
            f,
            "(d) (c) + entry (Oplog::write_async)",
            &self.tokio_with_entry,
        )?;
        row(
            f,
            "(d') (c) + entry sent with COMMIT",
            &self.tokio_with_commit,
        )?;
        row(f, "(e) (a) over sqlx", &self.sqlx_bare)?;
        row(
            f,
            "(f) (e) + entry (Oplog::write_sqlx)",
            &self.sqlx_with_entry,
        )?;
        writeln!(
            f,
            "  ratio (b)/(a): {:.2} (target >= {:.2}: {})",
            self.ratio,
            self.target_ratio,
            verdict(self.meets_target())
        )?;
        writeln!(
            f,
            "  ratio (d')/(c): {:.2} (target >= {:.2}: {}); (d)/(c): {:.2}",
            self.tokio_commit_ratio,
            self.tokio_target_ratio,
            verdict(self.tokio_meets_target()),
            self.tokio_ratio
        )?;
        writeln!(
            f,
            "  ratio (f)/(e): {:.2} (target >= {:.2}: {})",
            self.sqlx_ratio,
            self.sqlx_target_ratio,
            verdict(self.sqlx_meets_target())
        )
    }
}

impl fmt::Display for ContentionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "contention: {} writers on one aggregate, {:.1} s per scenario, {}-byte payload",
            self.writers, self.pessimistic.seconds, self.payload_bytes
        )?;
        writeln!(f, "{HEADING}")?;
        row(f, "pessimistic (Oplog::write)", &self.pessimistic)?;
        row(
            f,
            "optimistic (ticket + write_with_ticket)",
            &self.optimistic,
        )?;
        row(f, "(c) baseline: Boundary's statements", &self.baseline)?;
        writeln!(
            f,
            "  ratio pessimistic/(c): {:.1}x (target >= {:.0}x: {}); optimistic/(c): {:.1}x",
            self.ratio,
            self.target_ratio,
            verdict(self.meets_target()),
            self.optimistic_ratio
        )
    }
}

/// Measures one writer's commits per second with and without an oplog
/// entry, in a scratch database.
///
/// The two transactions alternate in half-second slices on the same
/// connection, each getting `cfg.seconds` in all, so that load from other
/// processes on the machine falls on both alike.
pub fn write(cfg: &WriteBenchConfig) -> Result<WriteReport> {
    let duration = cfg.check()?;
    let db = Scratch::create(&cfg.url)?;
    write_on(&db, &Shared::new(cfg), duration)
}

/// Measures `cfg.writers` concurrent writers on one aggregate in a scratch
/// database: pessimistic mode, optimistic mode and the baseline, each for
/// `cfg.seconds`.
pub fn contention(cfg: &WriteBenchConfig) -> Result<ContentionReport> {
    let duration = cfg.check()?;
    let db = Scratch::create(&cfg.url)?;
    contention_on(&db, &Shared::new(cfg), duration)
}

/// Measures what notifying followers costs the write path:
/// `cfg.writers` writers, each on an aggregate of its own (so that their
/// commits could otherwise run side by side), pessimistic mode without and
/// with [`Oplog::with_notify`].
pub fn notify(cfg: &WriteBenchConfig) -> Result<NotifyReport> {
    let duration = cfg.check()?;
    let db = Scratch::create(&cfg.url)?;
    notify_on(&db, &Shared::new(cfg), duration)
}

/// Runs [`write()`], [`contention`], [`notify`] and [`spread`] against one scratch
/// database.
pub fn all(cfg: &WriteBenchConfig) -> Result<Reports> {
    let duration = cfg.check()?;
    let db = Scratch::create(&cfg.url)?;
    let shared = Shared::new(cfg);
    Ok(Reports {
        write: write_on(&db, &shared, duration)?,
        contention: contention_on(&db, &shared, duration)?,
        notify: notify_on(&db, &shared, duration)?,
        spread: spread_on(&db, &shared, duration)?,
    })
}

/// What [`notify`] measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotifyReport {
    /// Always `"notify"`.
    pub scenario: &'static str,
    /// Concurrent writers, each on its own aggregate.
    pub writers: usize,
    /// Commits per second with notifications.
    pub rate_per_s: f64,
    /// Commits per second without.
    pub baseline_per_s: f64,
    /// `rate_per_s / baseline_per_s`.
    pub ratio: f64,
    /// Without notifications.
    pub plain: Figures,
    /// With notifications.
    pub notifying: Figures,
}

impl fmt::Display for NotifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "notify: {} writers, each on its own aggregate, {:.1} s per scenario",
            self.writers, self.plain.seconds
        )?;
        writeln!(f, "{HEADING}")?;
        row(f, "(d) pessimistic (Oplog::write)", &self.plain)?;
        row(f, "(e) (d) + NOTIFY at commit", &self.notifying)?;
        writeln!(f, "  ratio (e)/(d): {:.2}", self.ratio)
    }
}

fn notify_on(db: &Scratch, shared: &Shared, duration: Duration) -> Result<NotifyReport> {
    let run = |scenario: Scenario, prefix: &str| -> Result<Figures> {
        let mut admin = db.connect()?;
        let name = |i: usize| format!("{prefix}-{i}");
        for i in 0..shared.writers {
            shared.oplog.ensure_ticket(&mut admin, &name(i))?;
        }
        let tally = concurrently_on(db, shared, scenario, &name, duration)?;
        check_spread_log(&mut admin, prefix, tally.commits + tally.uncounted)?;
        Ok(Figures::new(scenario.name(), tally))
    };
    let plain = run(Scenario::Pessimistic, "bench-spread")?;
    let notifying = run(Scenario::PessimisticNotify, "bench-notify")?;
    Ok(NotifyReport {
        scenario: "notify",
        writers: shared.writers,
        rate_per_s: notifying.rate_per_s,
        baseline_per_s: plain.rate_per_s,
        ratio: per(notifying.rate_per_s, plain.rate_per_s),
        plain,
        notifying,
    })
}

/// What [`subjects`] measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubjectsReport {
    /// Always `"subjects"`.
    pub scenario: &'static str,
    /// Concurrent writers, each on its own aggregate.
    pub writers: usize,
    /// Data subjects the entries name.
    pub subjects: usize,
    /// Subjects' keys created during the run.
    pub keys_created: i64,
    /// Commits per second with entries under subjects' keys.
    pub rate_per_s: f64,
    /// Commits per second with entries under the keyring.
    pub baseline_per_s: f64,
    /// `rate_per_s / baseline_per_s`.
    pub ratio: f64,
    /// Entries under the keyring.
    pub plain: Figures,
    /// Entries under subjects' keys.
    pub subject: Figures,
}

impl fmt::Display for SubjectsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "subjects: {} writers, each on its own aggregate, entries naming one of {} subjects \
             ({} keys created), {:.1} s per scenario in alternating slices",
            self.writers, self.subjects, self.keys_created, self.plain.seconds
        )?;
        writeln!(f, "{HEADING}")?;
        row(f, "(d) pessimistic (Oplog::write)", &self.plain)?;
        row(f, "(s) (d) naming a data subject", &self.subject)?;
        writeln!(f, "  ratio (s)/(d): {:.2}", self.ratio)
    }
}

/// Measures what naming a data subject costs the write path: `cfg.writers`
/// writers, each on an aggregate of its own, writing entries under the
/// keyring and entries naming one of 4,096 subjects (so encrypted under the
/// subject's key, looked up, or created on first use, in the same
/// transaction), in alternating slices.
pub fn subjects(cfg: &WriteBenchConfig) -> Result<SubjectsReport> {
    let duration = cfg.check()?;
    let db = Scratch::create(&cfg.url)?;
    let shared = Shared::new(cfg);
    let mut admin = db.connect()?;
    let (plain_prefix, subject_prefix) = ("bench-plain", "bench-subject");
    for prefix in [plain_prefix, subject_prefix] {
        for i in 0..shared.writers {
            shared
                .oplog
                .ensure_ticket(&mut admin, &format!("{prefix}-{i}"))?;
        }
    }
    const ROUNDS: u32 = 4;
    let slice = duration / ROUNDS;
    let (mut plain, mut subject) = (Tally::default(), Tally::default());
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 {
            [Scenario::Pessimistic, Scenario::PessimisticSubject]
        } else {
            [Scenario::PessimisticSubject, Scenario::Pessimistic]
        };
        for scenario in order {
            let (prefix, tally) = match scenario {
                Scenario::Pessimistic => (plain_prefix, &mut plain),
                _ => (subject_prefix, &mut subject),
            };
            let name = |i: usize| format!("{prefix}-{i}");
            tally.add(concurrently_on(&db, &shared, scenario, &name, slice)?);
        }
    }
    check_spread_log(&mut admin, plain_prefix, plain.commits + plain.uncounted)?;
    check_spread_log(
        &mut admin,
        subject_prefix,
        subject.commits + subject.uncounted,
    )?;
    let keys_created: i64 = admin
        .query_one("SELECT count(*) FROM oplog_subject_key", &[])?
        .get(0);
    let plain = Figures::new("pessimistic", plain);
    let subject = Figures::new("pessimistic+subject", subject);
    Ok(SubjectsReport {
        scenario: "subjects",
        writers: shared.writers,
        subjects: SUBJECTS,
        keys_created,
        rate_per_s: subject.rate_per_s,
        baseline_per_s: plain.rate_per_s,
        ratio: per(subject.rate_per_s, plain.rate_per_s),
        plain,
        subject,
    })
}

/// Checks that the aggregates `<prefix>-<i>` hold `commits` entries in all.
fn check_spread_log(admin: &mut Client, prefix: &str, commits: u64) -> Result<()> {
    let entries: i64 = admin
        .query_one(
            "SELECT count(*) FROM oplog_entry WHERE aggregate_name LIKE $1 || '-%'",
            &[&prefix],
        )?
        .get(0);
    if entries != i64::try_from(commits).unwrap_or(i64::MAX) {
        return Err(check_failed(format!(
            "{prefix}: counted {commits} commits but found {entries} entries"
        )));
    }
    Ok(())
}

/// The smallest commits-per-second ratio, with an entry to without, that
/// [`spread`] aims for through each driver.
pub const SPREAD_TARGET_RATIO: f64 = 0.6;

/// What [`spread`] measured: many writers, each on an aggregate of its own,
/// with and without an entry, through each driver.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpreadReport {
    /// Always `"spread"`.
    pub scenario: &'static str,
    /// Concurrent writers, each on its own aggregate.
    pub writers: usize,
    /// Commits per second with an entry over rust-postgres.
    pub rate_per_s: f64,
    /// Commits per second of the bare transaction over rust-postgres.
    pub baseline_per_s: f64,
    /// `rate_per_s / baseline_per_s`.
    pub ratio: f64,
    /// The ratio aimed for through each driver, [`SPREAD_TARGET_RATIO`].
    pub target_ratio: f64,
    /// Bare, over rust-postgres (one thread per writer).
    pub bare: Figures,
    /// With an entry ([`Oplog::write`]).
    pub with_entry: Figures,
    /// Bare, over tokio-postgres (one task per writer, one thread).
    pub tokio_bare: Figures,
    /// With an entry ([`Oplog::write_async`]).
    pub tokio_with_entry: Figures,
    /// With the entry sent with COMMIT ([`Oplog::write_and_commit_async`]).
    pub tokio_with_commit: Figures,
    /// `tokio_with_entry` over `tokio_bare`.
    pub tokio_ratio: f64,
    /// `tokio_with_commit` over `tokio_bare`.
    pub tokio_commit_ratio: f64,
    /// Bare, over sqlx (one task per writer, one thread).
    pub sqlx_bare: Figures,
    /// With an entry ([`Oplog::write_sqlx`]).
    pub sqlx_with_entry: Figures,
    /// `sqlx_with_entry` over `sqlx_bare`.
    pub sqlx_ratio: f64,
}

impl SpreadReport {
    /// True when every driver's ratio (tokio-postgres's best) reaches the
    /// target.
    pub fn meets_target(&self) -> bool {
        [
            self.ratio,
            self.tokio_ratio.max(self.tokio_commit_ratio),
            self.sqlx_ratio,
        ]
        .iter()
        .all(|r| *r >= self.target_ratio)
    }
}

impl fmt::Display for SpreadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "spread: {} writers, each on its own aggregate, {:.1} s per scenario",
            self.writers, self.bare.seconds
        )?;
        writeln!(f, "{HEADING}")?;
        row(f, "(a) domain transaction", &self.bare)?;
        row(f, "(b) (a) + entry (Oplog::write)", &self.with_entry)?;
        row(f, "(c) (a) over tokio-postgres", &self.tokio_bare)?;
        row(f, "(d) (c) + entry (write_async)", &self.tokio_with_entry)?;
        row(f, "(d') (c) + entry with COMMIT", &self.tokio_with_commit)?;
        row(f, "(e) (a) over sqlx", &self.sqlx_bare)?;
        row(f, "(f) (e) + entry (write_sqlx)", &self.sqlx_with_entry)?;
        writeln!(
            f,
            "  ratios (b)/(a): {:.2}, (d)/(c): {:.2}, (d')/(c): {:.2}, (f)/(e): {:.2} (target >= {:.2} each: {})",
            self.ratio,
            self.tokio_ratio,
            self.tokio_commit_ratio,
            self.sqlx_ratio,
            self.target_ratio,
            verdict(self.meets_target())
        )
    }
}

/// Measures `cfg.writers` writers, each on an aggregate of its own, with
/// and without an entry, over rust-postgres, tokio-postgres (an entry
/// written, and sent with COMMIT) and sqlx, each for `cfg.seconds`, in a
/// scratch database.
pub fn spread(cfg: &WriteBenchConfig) -> Result<SpreadReport> {
    let duration = cfg.check()?;
    let db = Scratch::create(&cfg.url)?;
    spread_on(&db, &Shared::new(cfg), duration)
}

fn spread_on(db: &Scratch, shared: &Shared, duration: Duration) -> Result<SpreadReport> {
    use super::write_async::{spread_sqlx, spread_tokio};
    let mut admin = db.connect()?;
    let mut prepared = |prefix: &str| -> Result<String> {
        for i in 0..shared.writers {
            shared
                .oplog
                .ensure_ticket(&mut admin, &format!("{prefix}-{i}"))?;
        }
        Ok(prefix.to_string())
    };
    let (sync, tokio, commit, sqlx) = (
        prepared("spread-sync")?,
        prepared("spread-tokio")?,
        prepared("spread-commit")?,
        prepared("spread-sqlx")?,
    );
    let named = |prefix: &str| {
        let prefix = prefix.to_string();
        move |i: usize| format!("{prefix}-{i}")
    };
    let figures = |name: &'static str, tally: Tally| Figures::new(name, tally);
    let bare = concurrently_on(db, shared, Scenario::Bare, &named(&sync), duration)?;
    let logged = concurrently_on(db, shared, Scenario::Pessimistic, &named(&sync), duration)?;
    let tokio_bare = spread_tokio(&db.url, shared, &named(&tokio), Mode::Bare, duration)?;
    let tokio_logged = spread_tokio(&db.url, shared, &named(&tokio), Mode::Entry, duration)?;
    let tokio_committed = spread_tokio(
        &db.url,
        shared,
        &named(&commit),
        Mode::EntryWithCommit,
        duration,
    )?;
    let sqlx_bare = spread_sqlx(&db.url, shared, &named(&sqlx), Mode::Bare, duration)?;
    let sqlx_logged = spread_sqlx(&db.url, shared, &named(&sqlx), Mode::Entry, duration)?;
    let mut admin = db.connect()?;
    for (prefix, tally) in [
        (&sync, &logged),
        (&tokio, &tokio_logged),
        (&commit, &tokio_committed),
        (&sqlx, &sqlx_logged),
    ] {
        check_spread_log(&mut admin, prefix, tally.commits + tally.uncounted)?;
    }
    let (bare, with_entry) = (figures("bare", bare), figures("pessimistic", logged));
    let (tokio_bare, tokio_with_entry, tokio_with_commit) = (
        figures("tokio bare", tokio_bare),
        figures("tokio pessimistic", tokio_logged),
        figures("tokio entry with commit", tokio_committed),
    );
    let (sqlx_bare, sqlx_with_entry) = (
        figures("sqlx bare", sqlx_bare),
        figures("sqlx pessimistic", sqlx_logged),
    );
    Ok(SpreadReport {
        scenario: "spread",
        writers: shared.writers,
        rate_per_s: with_entry.rate_per_s,
        baseline_per_s: bare.rate_per_s,
        ratio: per(with_entry.rate_per_s, bare.rate_per_s),
        target_ratio: SPREAD_TARGET_RATIO,
        tokio_ratio: per(tokio_with_entry.rate_per_s, tokio_bare.rate_per_s),
        tokio_commit_ratio: per(tokio_with_commit.rate_per_s, tokio_bare.rate_per_s),
        sqlx_ratio: per(sqlx_with_entry.rate_per_s, sqlx_bare.rate_per_s),
        bare,
        with_entry,
        tokio_bare,
        tokio_with_entry,
        tokio_with_commit,
        sqlx_bare,
        sqlx_with_entry,
    })
}

fn write_on(db: &Scratch, shared: &Shared, duration: Duration) -> Result<WriteReport> {
    const AGGREGATE: &str = "bench-write";
    let mut writer = Writer::connect(&db.url, shared)?;
    shared.oplog.ensure_ticket(&mut writer.client, AGGREGATE)?;
    // One transaction of each kind first, so that the server's first-use
    // costs (catalog lookups, relation extension) stay out of the figures.
    writer.transaction(Scenario::Bare, AGGREGATE)?;
    writer.transaction(Scenario::Pessimistic, AGGREGATE)?;

    let rounds = u32::try_from(duration.as_nanos() / SLICE.as_nanos())
        .unwrap_or(u32::MAX)
        .max(1);
    let slice = duration / rounds;
    let (mut bare, mut logged) = (Tally::default(), Tally::default());
    for round in 0..rounds {
        // Alternating which goes first cancels a drift within a round.
        let order = if round % 2 == 0 {
            [Scenario::Bare, Scenario::Pessimistic]
        } else {
            [Scenario::Pessimistic, Scenario::Bare]
        };
        for scenario in order {
            let tally = writer.run_for(scenario, AGGREGATE, slice, &AtomicBool::new(false))?;
            match scenario {
                Scenario::Bare => bare.add(tally),
                _ => logged.add(tally),
            }
        }
    }
    // The warm-up wrote one entry too.
    logged.uncounted += 1;
    check_log(
        &mut writer.client,
        AGGREGATE,
        logged.commits + logged.uncounted,
    )?;
    let bare = Figures::new("bare", bare);
    let with_entry = Figures::new("pessimistic", logged);
    let [tokio_bare, tokio_logged, tokio_committed]: [Tally; 3] =
        super::write_async::measure_tokio(
            &db.url,
            shared,
            "bench-write-tokio",
            &[Mode::Bare, Mode::Entry, Mode::EntryWithCommit],
            duration,
        )?
        .try_into()
        .map_err(|_| check_failed("three tallies expected".into()))?;
    check_log(
        &mut writer.client,
        "bench-write-tokio",
        tokio_logged.commits
            + tokio_logged.uncounted
            + tokio_committed.commits
            + tokio_committed.uncounted,
    )?;
    let tokio_bare = Figures::new("tokio bare", tokio_bare);
    let tokio_with_entry = Figures::new("tokio pessimistic", tokio_logged);
    let tokio_with_commit = Figures::new("tokio entry with commit", tokio_committed);
    let [sqlx_bare, sqlx_logged]: [Tally; 2] = super::write_async::measure_sqlx(
        &db.url,
        shared,
        "bench-write-sqlx",
        &[Mode::Bare, Mode::Entry],
        duration,
    )?
    .try_into()
    .map_err(|_| check_failed("two tallies expected".into()))?;
    check_log(
        &mut writer.client,
        "bench-write-sqlx",
        sqlx_logged.commits + sqlx_logged.uncounted,
    )?;
    let sqlx_bare = Figures::new("sqlx bare", sqlx_bare);
    let sqlx_with_entry = Figures::new("sqlx pessimistic", sqlx_logged);
    Ok(WriteReport {
        sqlx_ratio: per(sqlx_with_entry.rate_per_s, sqlx_bare.rate_per_s),
        sqlx_target_ratio: WRITE_SQLX_TARGET_RATIO,
        sqlx_bare,
        sqlx_with_entry,
        tokio_ratio: per(tokio_with_entry.rate_per_s, tokio_bare.rate_per_s),
        tokio_commit_ratio: per(tokio_with_commit.rate_per_s, tokio_bare.rate_per_s),
        tokio_target_ratio: WRITE_TOKIO_TARGET_RATIO,
        tokio_bare,
        tokio_with_entry,
        tokio_with_commit,
        scenario: "write",
        rate_per_s: with_entry.rate_per_s,
        baseline_per_s: bare.rate_per_s,
        ratio: per(with_entry.rate_per_s, bare.rate_per_s),
        target_ratio: WRITE_TARGET_RATIO,
        payload_bytes: shared.avatar.len(),
        bare,
        with_entry,
    })
}

fn contention_on(db: &Scratch, shared: &Shared, duration: Duration) -> Result<ContentionReport> {
    let run = |scenario: Scenario, aggregate: &str| -> Result<Figures> {
        let mut admin = db.connect()?;
        shared.oplog.ensure_ticket(&mut admin, aggregate)?;
        let tally = concurrently(db, shared, scenario, aggregate, duration)?;
        check_log(&mut admin, aggregate, tally.commits + tally.uncounted)?;
        Ok(Figures::new(scenario.name(), tally))
    };
    // Each scenario has its own aggregate so that the baseline's unchained
    // entries never precede an entry written by the oplog.
    let pessimistic = run(Scenario::Pessimistic, "bench-pessimistic")?;
    let optimistic = run(Scenario::Optimistic, "bench-optimistic")?;
    let baseline = run(Scenario::Boundary, "bench-baseline")?;
    Ok(ContentionReport {
        scenario: "contention",
        writers: shared.writers,
        rate_per_s: pessimistic.rate_per_s,
        baseline_per_s: baseline.rate_per_s,
        ratio: per(pessimistic.rate_per_s, baseline.rate_per_s),
        target_ratio: CONTENTION_TARGET_RATIO,
        optimistic_ratio: per(optimistic.rate_per_s, baseline.rate_per_s),
        payload_bytes: shared.avatar.len(),
        pessimistic,
        optimistic,
        baseline,
    })
}

/// Runs `scenario` on `shared.writers` threads, each with its own
/// connection, for `duration` from the moment all are connected.
fn concurrently(
    db: &Scratch,
    shared: &Shared,
    scenario: Scenario,
    aggregate: &str,
    duration: Duration,
) -> Result<Tally> {
    concurrently_on(db, shared, scenario, &|_| aggregate.to_string(), duration)
}

/// As [`concurrently`], writer `i` writing to aggregate `aggregate(i)`.
fn concurrently_on(
    db: &Scratch,
    shared: &Shared,
    scenario: Scenario,
    aggregate_of: &(dyn Fn(usize) -> String + Sync),
    duration: Duration,
) -> Result<Tally> {
    let barrier = &Barrier::new(shared.writers + 1);
    // A failing writer stops the others at their next transaction, so that
    // an error ends the run instead of waiting out the duration.
    let stop = &AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..shared.writers)
            .map(|i| {
                let aggregate = aggregate_of(i);
                s.spawn(move || {
                    let aggregate = aggregate.as_str();
                    // One transaction before the start, so that each new
                    // server process has its caches filled and plans made
                    // before the clock runs.
                    let writer = Writer::connect(&db.url, shared).and_then(|mut w| {
                        w.transaction(scenario, aggregate)?;
                        Ok(w)
                    });
                    // Every thread reaches the barrier, even one that could
                    // not connect, so that no other thread waits forever.
                    barrier.wait();
                    let result = writer.and_then(|mut w| {
                        let mut tally = w.run_for(scenario, aggregate, duration, stop)?;
                        tally.uncounted += 1;
                        Ok(tally)
                    });
                    if result.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    result
                })
            })
            .collect();
        barrier.wait();
        let mut total = Tally::default();
        let mut failure = None;
        for handle in handles {
            match handle.join() {
                Ok(Ok(tally)) => total.add(tally),
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        // The writers ran side by side, so the scenario lasted one duration,
        // not the sum of theirs.
        total.elapsed = duration;
        match failure {
            Some(e) => Err(e),
            None => Ok(total),
        }
    })
}

/// What every writer shares.
pub(super) struct Shared {
    pub(super) oplog: Oplog,
    /// The same oplog, notifying followers at every commit.
    notifying: Oplog,
    pub(super) avatar: Vec<u8>,
    retry: RetryPolicy,
    pub(super) writers: usize,
}

impl Shared {
    fn new(cfg: &WriteBenchConfig) -> Self {
        let oplog = Oplog::new(crate::tooling::demo::user_catalog(), Keyring::generate());
        Shared {
            notifying: oplog.clone().with_notify(true),
            oplog,
            // A repeating pattern rather than zeros, so that nothing along
            // the way gets to store the payload as a run of one byte.
            avatar: (0..=250u8).cycle().take(cfg.payload_bytes).collect(),
            retry: cfg.retry,
            writers: cfg.writers,
        }
    }
}

/// Commits and retries counted by a writer.
#[derive(Debug, Clone, Default)]
pub(super) struct Tally {
    /// Commits that finished within the measuring window.
    pub(super) commits: u64,
    /// Retries of those commits.
    pub(super) retries: u64,
    /// Commits outside the measuring window (warm-up, or finished after the
    /// window closed): not counted in the rates, but present in the log.
    pub(super) uncounted: u64,
    /// Length of the measuring window.
    pub(super) elapsed: Duration,
    /// Most attempts one counted commit took.
    pub(super) max_attempts: u32,
    /// Time from first attempt to commit of each counted commit.
    pub(super) latencies: Vec<Duration>,
}

impl Tally {
    pub(super) fn add(&mut self, other: Tally) {
        self.commits += other.commits;
        self.retries += other.retries;
        self.uncounted += other.uncounted;
        self.max_attempts = self.max_attempts.max(other.max_attempts);
        self.latencies.extend(other.latencies);
        self.elapsed += other.elapsed;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// The domain insert alone.
    Bare,
    /// The domain insert and [`Oplog::write`].
    Pessimistic,
    /// [`Oplog::ticket`], the domain insert and [`Oplog::write_with_ticket`].
    Optimistic,
    /// Boundary's statements, by hand.
    Boundary,
    /// As `Pessimistic`, with an oplog that notifies followers at commit.
    PessimisticNotify,
    /// As `Pessimistic`, the entry naming a data subject (one of
    /// [`SUBJECTS`]), so that it is encrypted under the subject's key.
    PessimisticSubject,
}

/// How many data subjects the subject scenario's entries name: the first
/// entry of each creates its key.
const SUBJECTS: usize = 4096;

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Bare => "bare",
            Scenario::Pessimistic => "pessimistic",
            Scenario::Optimistic => "optimistic",
            Scenario::Boundary => "baseline",
            Scenario::PessimisticNotify => "pessimistic+notify",
            Scenario::PessimisticSubject => "pessimistic+subject",
        }
    }
}

/// The domain insert, prepared once per connection like an application's
/// statement cache would.
/// The parameters of [`INSERT_USER`] for `u`.
pub(super) fn insert_params(u: &User) -> [&(dyn postgres::types::ToSql + Sync); 6] {
    [
        &u.id,
        &u.tenant_id,
        &u.account_id,
        &u.email,
        &u.display_name,
        &u.avatar,
    ]
}

pub(super) const INSERT_USER: &str = "\
INSERT INTO demo_user (id, tenant_id, account_id, email, display_name, avatar)
VALUES ($1, $2, $3, $4, $5, $6)";

/// Boundary reads the ticket's version without a lock at the start of the
/// transaction...
const BOUNDARY_READ_TICKET: &str = "SELECT version FROM oplog_ticket WHERE name = $1";

/// ...inserts the entry...
const BOUNDARY_INSERT_ENTRY: &str = "\
INSERT INTO oplog_entry (entry_uuid, aggregate_name, seq, format, key_id, data, digest, chain)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING id";

/// ...then each metadata row with a statement of its own...
const BOUNDARY_INSERT_METADATA: &str =
    "INSERT INTO oplog_metadata (entry_id, ordinal, key, value) VALUES ($1, $2, $3, $4)";

/// ...and finally compares and swaps the ticket's version.
const BOUNDARY_UPDATE_TICKET: &str =
    "UPDATE oplog_ticket SET version = version + 1 WHERE name = $1 AND version = $2";

/// The baseline's prepared statements.
struct BoundaryStatements {
    read_ticket: Statement,
    insert_entry: Statement,
    insert_metadata: Statement,
    update_ticket: Statement,
}

/// One writer: a connection with its prepared statements.
struct Writer<'a> {
    client: Client,
    insert_user: Statement,
    boundary: BoundaryStatements,
    shared: &'a Shared,
}

impl<'a> Writer<'a> {
    fn connect(url: &str, shared: &'a Shared) -> Result<Self> {
        let mut client = crate::store::connect::connect(url)?;
        let insert_user = client.prepare(INSERT_USER)?;
        let boundary = BoundaryStatements {
            read_ticket: client.prepare(BOUNDARY_READ_TICKET)?,
            insert_entry: client.prepare(BOUNDARY_INSERT_ENTRY)?,
            insert_metadata: client.prepare(BOUNDARY_INSERT_METADATA)?,
            update_ticket: client.prepare(BOUNDARY_UPDATE_TICKET)?,
        };
        Ok(Writer {
            client,
            insert_user,
            boundary,
            shared,
        })
    }

    /// Commits `scenario` transactions until `duration` has passed or `stop`
    /// is set.
    fn run_for(
        &mut self,
        scenario: Scenario,
        aggregate: &str,
        duration: Duration,
        stop: &AtomicBool,
    ) -> Result<Tally> {
        let deadline = Instant::now() + duration;
        let mut tally = Tally {
            elapsed: duration,
            ..Tally::default()
        };
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            let begun = Instant::now();
            let attempts = self.transaction(scenario, aggregate)?;
            let finished = Instant::now();
            // Only commits within the window count, so that a transaction
            // still retrying when the window closes (backing off for up to
            // the policy's largest delay) neither adds a commit nor
            // stretches the time the rate is taken over.
            if finished <= deadline {
                tally.commits += 1;
                tally.retries += u64::from(attempts.saturating_sub(1));
                tally.max_attempts = tally.max_attempts.max(attempts);
                tally.latencies.push(finished - begun);
            } else {
                tally.uncounted += 1;
            }
        }
        Ok(tally)
    }

    /// Commits one `scenario` transaction, retrying it by the shared policy;
    /// returns the attempts it took.
    fn transaction(&mut self, scenario: Scenario, aggregate: &str) -> Result<u32> {
        let Writer {
            client,
            insert_user,
            boundary,
            shared,
        } = self;
        let oplog = &shared.oplog;
        let done = shared.retry.postgres(client, |tx| {
            match scenario {
                Scenario::Bare => {
                    insert(tx, insert_user, &user(&shared.avatar))?;
                }
                Scenario::Pessimistic => {
                    let user = user(&shared.avatar);
                    insert(tx, insert_user, &user)?;
                    oplog.write(tx, &new_entry(aggregate, &user)?)?;
                }
                Scenario::PessimisticNotify => {
                    let user = user(&shared.avatar);
                    insert(tx, insert_user, &user)?;
                    shared.notifying.write(tx, &new_entry(aggregate, &user)?)?;
                }
                Scenario::PessimisticSubject => {
                    let user = user(&shared.avatar);
                    insert(tx, insert_user, &user)?;
                    let mut entry = new_entry(aggregate, &user)?;
                    entry.subject(format!("subject-{}", rand::random::<usize>() % SUBJECTS));
                    oplog.write(tx, &entry)?;
                }
                Scenario::Optimistic => {
                    let ticket = oplog.ticket(tx, aggregate)?;
                    let user = user(&shared.avatar);
                    insert(tx, insert_user, &user)?;
                    oplog.write_with_ticket(tx, &ticket, &new_entry(aggregate, &user)?)?;
                }
                Scenario::Boundary => boundary_transaction(
                    tx,
                    insert_user,
                    boundary,
                    oplog,
                    aggregate,
                    &shared.avatar,
                )?,
            }
            Ok::<_, Error>(())
        })?;
        Ok(done.attempts)
    }
}

fn insert(tx: &mut Transaction<'_>, statement: &Statement, u: &User) -> Result<()> {
    tx.execute(statement, &insert_params(u))?;
    Ok(())
}

/// The entry every scenario writes: a CREATE of the user, with an actor and
/// a request id.
pub(super) fn new_entry(aggregate: &str, user: &User) -> Result<NewEntry> {
    let mut entry = NewEntry::new(aggregate);
    entry
        .metadata("actor", "bench")
        .metadata("request_id", Uuid::new_v4().to_string())
        .create(user)?;
    Ok(entry)
}

/// The baseline transaction: Boundary's statements in Boundary's order.
///
/// The entry is sealed exactly as the oplog seals it, so the baseline does the
/// same cryptographic work and stores a payload of the same size; only its
/// chain value starts from the genesis value every time, since Boundary keeps
/// no chain and the baseline does not read one.
///
/// Boundary's entry table has no per-aggregate sequence, so there a lost race
/// shows only when the ticket's compare-and-swap updates no row. Here the
/// entry carries `seq = version + 1` under `UNIQUE (aggregate_name, seq)`,
/// so a loser usually learns of it one statement earlier, as a unique
/// violation after waiting for the winner; both are the same lost race and
/// both are retried.
fn boundary_transaction(
    tx: &mut Transaction<'_>,
    insert_user: &Statement,
    s: &BoundaryStatements,
    oplog: &Oplog,
    aggregate: &str,
    avatar: &[u8],
) -> Result<()> {
    let version: i64 = tx.query_one(&s.read_ticket, &[&aggregate])?.get(0);
    let lost = || Error::TicketAlreadyRedeemed {
        name: aggregate.to_string(),
        version,
    };
    let user = user(avatar);
    insert(tx, insert_user, &user)?;

    let entry = new_entry(aggregate, &user)?;
    let seq = version + 1;
    let sealed = seal_entry(oplog.wrapper(), &entry, seq, &GENESIS_CHAIN)?;
    let inserted = tx.query_one(
        &s.insert_entry,
        &[
            &entry.uuid,
            &aggregate,
            &seq,
            &FORMAT_VERSION,
            &sealed.key_id,
            &sealed.data,
            &&sealed.digest[..],
            &&sealed.chain[..],
        ],
    );
    let id: i64 = match inserted {
        Ok(row) => row.get(0),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => return Err(lost()),
        Err(e) => return Err(e.into()),
    };
    for (ordinal, (key, value)) in (0i32..).zip(entry.metadata.iter()) {
        tx.execute(&s.insert_metadata, &[&id, &ordinal, &key, &value])?;
    }
    if tx.execute(&s.update_ticket, &[&aggregate, &version])? == 0 {
        return Err(lost());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonsense_configurations_are_refused() {
        let bad = [
            WriteBenchConfig {
                seconds: 0.0,
                ..WriteBenchConfig::default()
            },
            WriteBenchConfig {
                seconds: f64::NAN,
                ..WriteBenchConfig::default()
            },
            WriteBenchConfig {
                seconds: -1.0,
                ..WriteBenchConfig::default()
            },
            WriteBenchConfig {
                writers: 0,
                ..WriteBenchConfig::default()
            },
        ];
        for cfg in bad {
            let err = cfg.check().unwrap_err();
            assert!(
                matches!(&err, Error::Config(m) if m.starts_with("benchmark: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn rates_of_an_empty_run_are_zero() {
        let fig = Figures::new("bare", Tally::default());
        assert_eq!((fig.rate_per_s, fig.retries_per_commit), (0.0, 0.0));
    }
}
