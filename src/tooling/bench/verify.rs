//! The verification benchmark: how fast `verify` reads a large log, whether
//! its cost per entry stays flat as the log grows, how it compares with
//! replaying the same log, how replay of many pending aggregates compares
//! with inserting the same rows, and how much memory the command-line tool
//! needs for entries near the size limit.
//!
//! Logs are loaded in bulk as for the replay benchmark (every entry sealed
//! by the library's own code, with its chain), so a log of a million
//! entries takes a minute rather than hours of single transactions.

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;

use super::replay::{baseline, load};
use super::{check_failed, invalid, user, verdict, Scratch};
use crate::codec::crypto::Keyring;
use crate::codec::entry::NewEntry;
use crate::error::{Error, Result};
use crate::replica::replay::{ReplayOptions, Replayer};
use crate::replica::verify::{verify, VerifyOptions};
use crate::replica::Target;
use crate::source::write::Oplog;

/// Largest ratio of verify's cost per entry on the large log to its cost
/// on the small one: linear means 1.
pub const VERIFY_TARGET_COST_RATIO: f64 = 1.3;

/// Smallest ratio of verify's rate to replay's on the same log.
pub const VERIFY_TARGET_RATIO: f64 = 1.0;

/// Smallest ratio of replay's rate with many pending aggregates to the
/// batched-INSERT baseline.
pub const VERIFY_REPLAY_TARGET_RATIO: f64 = 0.5;

/// Largest resident memory of `verify`, `log` and `replay` with entries
/// near the size limit, in MiB.
pub const VERIFY_TARGET_MAX_RSS_MB: f64 = 512.0;

/// What to measure and where.
#[derive(Debug, Clone)]
pub struct VerifyBenchConfig {
    /// URL of the server, for administrative connections; scratch
    /// databases are created on it and dropped afterwards.
    pub url: String,
    /// Entries in the large log.
    pub entries: usize,
    /// Entries in the small log, for the cost per entry as the log grows.
    pub small_entries: usize,
    /// Aggregates each log is spread over, in turn.
    pub aggregates: usize,
    /// Size of each user's `avatar`.
    pub payload_bytes: usize,
    /// Entries near the size limit for the memory measurement (0 skips it).
    pub big_entries: usize,
    /// Bytes of each of those entries (four operations of a quarter each).
    pub big_entry_bytes: usize,
    /// The `oplog` binary, run as a child for the memory measurement.
    pub program: Option<PathBuf>,
}

impl Default for VerifyBenchConfig {
    /// [`super::DEFAULT_URL`]; 1,000,000 and 100,000 entries over 5,000
    /// aggregates with a 64-byte payload; 12 entries of 60 MiB; no program.
    fn default() -> Self {
        VerifyBenchConfig {
            url: super::DEFAULT_URL.to_string(),
            entries: 1_000_000,
            small_entries: 100_000,
            aggregates: 5000,
            payload_bytes: 64,
            big_entries: 12,
            big_entry_bytes: 60 << 20,
            program: None,
        }
    }
}

/// The figures, each with what it is compared with in the same run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyBenchReport {
    /// Always `"verify"`.
    pub scenario: &'static str,
    /// Entries in the large log.
    pub entries: usize,
    /// Aggregates.
    pub aggregates: usize,
    /// Entries verified per second, large log.
    pub rate_per_s: f64,
    /// Entries replayed per second, same log, into an empty replica.
    pub baseline_per_s: f64,
    /// `rate_per_s / baseline_per_s`.
    pub ratio: f64,
    /// [`VERIFY_TARGET_RATIO`].
    pub target_ratio: f64,
    /// Entries in the small log.
    pub small_entries: usize,
    /// Entries verified per second, small log.
    pub small_rate_per_s: f64,
    /// Cost per entry on the large log over cost per entry on the small.
    pub cost_ratio: f64,
    /// [`VERIFY_TARGET_COST_RATIO`].
    pub target_cost_ratio: f64,
    /// Rows inserted per second by multi-row INSERTs of the same rows.
    pub insert_per_s: f64,
    /// Replay's rate over the INSERT baseline.
    pub replay_ratio: f64,
    /// [`VERIFY_REPLAY_TARGET_RATIO`].
    pub target_replay_ratio: f64,
    /// Entries near the size limit in the memory measurement.
    pub big_entries: usize,
    /// Their size, in MiB.
    pub big_entry_mb: f64,
    /// Largest resident memory of `oplog verify`, `log` and `replay` over
    /// them (each one's high-water mark, sampled every 5 ms), in MiB;
    /// `None` when not measured.
    pub max_rss_mb: Option<f64>,
    /// [`VERIFY_TARGET_MAX_RSS_MB`].
    pub target_max_rss_mb: f64,
}

impl VerifyBenchReport {
    /// True when every figure reaches its target.
    pub fn meets_targets(&self) -> bool {
        self.ratio >= self.target_ratio
            && self.cost_ratio <= self.target_cost_ratio
            && self.replay_ratio >= self.target_replay_ratio
            && self
                .max_rss_mb
                .is_none_or(|rss| rss < self.target_max_rss_mb)
    }
}

impl fmt::Display for VerifyBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "verify: logs of {} and {} single-message entries over {} aggregates",
            self.entries, self.small_entries, self.aggregates
        )?;
        writeln!(
            f,
            "  verify, {:>9} entries            {:>10.0} entries/s",
            self.entries, self.rate_per_s
        )?;
        writeln!(
            f,
            "  verify, {:>9} entries            {:>10.0} entries/s",
            self.small_entries, self.small_rate_per_s
        )?;
        writeln!(
            f,
            "  replay of the large log             {:>10.0} entries/s",
            self.baseline_per_s
        )?;
        writeln!(
            f,
            "  multi-row INSERTs of the same rows  {:>10.0} rows/s",
            self.insert_per_s
        )?;
        writeln!(
            f,
            "  verify / replay: {:.2} (target >= {:.2}: {})",
            self.ratio,
            self.target_ratio,
            verdict(self.ratio >= self.target_ratio)
        )?;
        writeln!(
            f,
            "  cost per entry, large / small log: {:.2} (target <= {:.2}: {})",
            self.cost_ratio,
            self.target_cost_ratio,
            verdict(self.cost_ratio <= self.target_cost_ratio)
        )?;
        writeln!(
            f,
            "  replay of {} pending aggregates / INSERTs: {:.2} (target >= {:.2}: {})",
            self.aggregates,
            self.replay_ratio,
            self.target_replay_ratio,
            verdict(self.replay_ratio >= self.target_replay_ratio)
        )?;
        match self.max_rss_mb {
            Some(rss) => writeln!(
                f,
                "  max RSS of verify, log and replay over {} entries of {:.0} MiB: {rss:.0} MiB (target < {:.0}: {})",
                self.big_entries,
                self.big_entry_mb,
                self.target_max_rss_mb,
                verdict(rss < self.target_max_rss_mb)
            ),
            None => writeln!(f, "  max RSS: not measured"),
        }
    }
}

/// Runs the measurements on scratch databases.
pub fn verify_bench(cfg: &VerifyBenchConfig) -> Result<VerifyBenchReport> {
    if cfg.entries == 0 || cfg.small_entries == 0 || cfg.aggregates == 0 {
        return Err(invalid(
            "entries, small entries and aggregates must be at least 1".into(),
        ));
    }
    let oplog = Oplog::new(crate::tooling::demo::user_catalog(), Keyring::generate());

    let small = Scratch::create(&cfg.url)?;
    load(
        &small,
        &oplog,
        cfg.small_entries,
        cfg.aggregates,
        cfg.payload_bytes,
    )?;
    let small_s = timed_verify(&oplog, &small.url, cfg.small_entries)?;
    drop(small);

    let large = Scratch::create(&cfg.url)?;
    let users = load(
        &large,
        &oplog,
        cfg.entries,
        cfg.aggregates,
        cfg.payload_bytes,
    )?;
    let large_s = timed_verify(&oplog, &large.url, cfg.entries)?;

    let before = baseline(&cfg.url, &users, 1000)?;
    let replica = Scratch::empty(&cfg.url)?;
    let started = Instant::now();
    let report = Replayer::connect(
        &oplog,
        &large.url,
        Target::database(&replica.url),
        ReplayOptions::default(),
    )?
    .run(&mut |_| {})?;
    let replay_s = started.elapsed().as_secs_f64();
    let after = baseline(&cfg.url, &users, 1000)?;
    if !report.is_complete() || report.entries_applied != cfg.entries as u64 {
        return Err(check_failed(format!(
            "replay applied {} of {} entries; stopped: {:?}",
            report.entries_applied,
            cfg.entries,
            report.stopped.first()
        )));
    }
    drop(replica);
    drop(large);
    let insert_s = ((before + after) / 2).as_secs_f64();

    let max_rss_mb = match (&cfg.program, cfg.big_entries) {
        (Some(program), n) if n > 0 => Some(max_rss(cfg, program)?),
        _ => None,
    };

    let rate = cfg.entries as f64 / large_s;
    let small_rate = cfg.small_entries as f64 / small_s;
    let replay_rate = cfg.entries as f64 / replay_s;
    let insert_rate = cfg.entries as f64 / insert_s;
    Ok(VerifyBenchReport {
        scenario: "verify",
        entries: cfg.entries,
        aggregates: cfg.aggregates,
        rate_per_s: rate,
        baseline_per_s: replay_rate,
        ratio: rate / replay_rate,
        target_ratio: VERIFY_TARGET_RATIO,
        small_entries: cfg.small_entries,
        small_rate_per_s: small_rate,
        cost_ratio: small_rate / rate,
        target_cost_ratio: VERIFY_TARGET_COST_RATIO,
        insert_per_s: insert_rate,
        replay_ratio: replay_rate / insert_rate,
        target_replay_ratio: VERIFY_REPLAY_TARGET_RATIO,
        big_entries: cfg.big_entries,
        big_entry_mb: cfg.big_entry_bytes as f64 / f64::from(1 << 20),
        max_rss_mb,
        target_max_rss_mb: VERIFY_TARGET_MAX_RSS_MB,
    })
}

/// Verifies the log at `url`, which must be clean and hold `entries`
/// entries; returns the seconds it took.
fn timed_verify(oplog: &Oplog, url: &str, entries: usize) -> Result<f64> {
    let started = Instant::now();
    let report = verify(oplog, url, &VerifyOptions::default())?;
    let took = started.elapsed().as_secs_f64();
    if !report.is_clean() || report.entries_checked != entries as u64 {
        return Err(check_failed(format!(
            "verify checked {} of {entries} entries, {} findings (first: {:?})",
            report.entries_checked,
            report.findings.len(),
            report.findings.first()
        )));
    }
    Ok(took)
}

/// Writes `cfg.big_entries` entries of `cfg.big_entry_bytes` through the
/// library, then runs `oplog verify`, `oplog log` and `oplog replay` over
/// them as child processes; returns the largest resident memory any of
/// them reached, in MiB.
fn max_rss(cfg: &VerifyBenchConfig, program: &PathBuf) -> Result<f64> {
    let source = Scratch::create(&cfg.url)?;
    let keys = std::env::temp_dir().join(format!(
        "oplog-bench-keys-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    let ring = Keyring::generate();
    ring.save(&keys)?;
    let result = (|| {
        let oplog = Oplog::new(crate::tooling::demo::user_catalog(), Keyring::load(&keys)?);
        let mut client = source.connect()?;
        let quarter = cfg.big_entry_bytes / 4;
        for n in 0..cfg.big_entries {
            let mut tx = client.transaction()?;
            let mut entry = NewEntry::new(format!("big-{}", n % 3));
            for _ in 0..4 {
                let mut u = user(&[]);
                u.avatar = vec![u8::try_from(n % 251).unwrap_or(0); quarter];
                tx.execute(crate::tooling::demo::INSERT_USER, &u.params())?;
                entry.create(&u)?;
            }
            oplog.write(&mut tx, &entry)?;
            tx.commit()?;
        }
        let replica = Scratch::empty(&cfg.url)?;
        let keys = keys.to_string_lossy().to_string();
        let mut peak_kib = 0;
        for args in [
            vec!["verify"],
            vec!["log"],
            vec!["replay", "--into", replica.url.as_str()],
        ] {
            let mut child = Command::new(program)
                .args(["--database-url", &source.url, "--key-file", &keys])
                .args(&args)
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| Error::Io {
                    context: format!("cannot run {}", program.display()),
                    source: e,
                })?;
            let (status, peak) = peak_rss_kib(&mut child)?;
            if !status.success() {
                return Err(check_failed(format!(
                    "`oplog {}` over the large entries exited with {status}",
                    args.join(" ")
                )));
            }
            peak_kib = peak_kib.max(peak);
        }
        Ok(peak_kib as f64 / 1024.0)
    })();
    let _ = std::fs::remove_file(&keys);
    result
}

/// Waits for `child` and returns how it ended and the most resident memory
/// it reached, in KiB: its own high-water mark (`VmHWM` in
/// `/proc/<pid>/status`), read every few milliseconds while it runs. (The
/// children's figure from `getrusage` would not do: a child started from
/// this process, which holds large logs, is charged this process's memory
/// until it execs.)
fn peak_rss_kib(child: &mut std::process::Child) -> Result<(std::process::ExitStatus, u64)> {
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            if let Some(kib) = hwm {
                peak = peak.max(kib);
            }
        }
        let waited = child.try_wait().map_err(|e| Error::Io {
            context: "cannot wait for a benchmark child".into(),
            source: e,
        })?;
        if let Some(status) = waited {
            return Ok((status, peak));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
