//! The replay benchmark: how fast a log replays into an empty replica
//! database, against inserting the same rows with batched multi-row INSERTs
//! through the same driver, on the same server, in the same run.
//!
//! The source log is loaded quickly rather than written one transaction at
//! a time: each aggregate's first entry goes through [`Oplog::write`] (which
//! stores the catalog and creates the ticket), and the rest are sealed by
//! the same code with the same header and chain, then inserted in bulk. The
//! entries are indistinguishable from written ones, and replay checks every
//! one (seq, chain, authentication) as it would any log.

use std::fmt;
use std::time::{Duration, Instant};

use postgres::types::{ToSql, Type};
use postgres::Client;
use serde::Serialize;

use super::{invalid, user, verdict, Scratch};
use crate::codec::crypto::Keyring;
use crate::codec::entry::{self, NewEntry, FORMAT_VERSION};
use crate::error::Result;
use crate::replica::replay::{ReplayOptions, Replayer};
use crate::replica::Target;
use crate::source::write::Oplog;
use crate::tooling::demo::{self, User};

/// The smallest ratio of replay to baseline rows per second aimed for.
pub const REPLAY_TARGET_RATIO: f64 = 0.5;

/// What to replay and where.
#[derive(Debug, Clone)]
pub struct ReplayBenchConfig {
    /// URL of the server, for administrative connections; scratch
    /// databases are created on it and dropped afterwards.
    pub url: String,
    /// Entries in the log, one CREATE of a user each.
    pub entries: usize,
    /// Aggregates the entries are spread over, round-robin.
    pub aggregates: usize,
    /// Size of each user's `avatar`.
    pub payload_bytes: usize,
    /// Entries per replica transaction, and rows per baseline INSERT.
    pub batch_size: usize,
}

impl Default for ReplayBenchConfig {
    /// [`super::DEFAULT_URL`], 100,000 entries over 8 aggregates, a 64-byte
    /// payload, batches of 1,000.
    fn default() -> Self {
        ReplayBenchConfig {
            url: super::DEFAULT_URL.to_string(),
            entries: 100_000,
            aggregates: 8,
            payload_bytes: 64,
            batch_size: 1000,
        }
    }
}

impl ReplayBenchConfig {
    /// The defaults, with the URL taken from `DATABASE_URL` when it is set.
    pub fn from_env() -> Self {
        ReplayBenchConfig {
            url: std::env::var("DATABASE_URL").unwrap_or_else(|_| super::DEFAULT_URL.to_string()),
            ..ReplayBenchConfig::default()
        }
    }
}

/// Replay against the baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayBenchReport {
    /// Always `"replay"`.
    pub scenario: &'static str,
    /// Entries replayed (and rows inserted by the baseline).
    pub entries: usize,
    /// Aggregates.
    pub aggregates: usize,
    /// Entries per replica transaction and rows per baseline INSERT.
    pub batch_size: usize,
    /// Seconds the replay took.
    pub replay_s: f64,
    /// Seconds the baseline took (the mean of a run before and one after
    /// the replay).
    pub baseline_s: f64,
    /// Entries replayed per second.
    pub rate_per_s: f64,
    /// Rows inserted per second by the baseline.
    pub baseline_per_s: f64,
    /// `rate_per_s / baseline_per_s`.
    pub ratio: f64,
    /// [`REPLAY_TARGET_RATIO`].
    pub target_ratio: f64,
}

impl ReplayBenchReport {
    /// True when the ratio reaches the target.
    pub fn meets_target(&self) -> bool {
        self.ratio >= self.target_ratio
    }
}

impl fmt::Display for ReplayBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "replay: {} single-message entries over {} aggregates into an empty replica, batches of {}",
            self.entries, self.aggregates, self.batch_size
        )?;
        writeln!(
            f,
            "  replay (Replayer::run)                  {:>10.0} entries/s  ({:.2} s)",
            self.rate_per_s, self.replay_s
        )?;
        writeln!(
            f,
            "  baseline: multi-row INSERTs, same rows  {:>10.0} rows/s     ({:.2} s)",
            self.baseline_per_s, self.baseline_s
        )?;
        writeln!(
            f,
            "  ratio: {:.2} (target >= {:.2}: {})",
            self.ratio,
            self.target_ratio,
            verdict(self.meets_target())
        )
    }
}

/// Loads a log of `cfg.entries` entries into a scratch source, replays it
/// into an empty scratch replica, and inserts the same rows into another
/// empty database with multi-row INSERTs, before and after.
pub fn replay(cfg: &ReplayBenchConfig) -> Result<ReplayBenchReport> {
    if cfg.entries == 0 || cfg.aggregates == 0 || cfg.batch_size == 0 {
        return Err(invalid(
            "entries, aggregates and batch size must be at least 1".into(),
        ));
    }
    let source = Scratch::create(&cfg.url)?;
    let oplog = Oplog::new(crate::tooling::demo::user_catalog(), Keyring::generate());
    let users = load(
        &source,
        &oplog,
        cfg.entries,
        cfg.aggregates,
        cfg.payload_bytes,
    )?;

    let before = baseline(&cfg.url, &users, cfg.batch_size)?;
    let replica = Scratch::empty(&cfg.url)?;
    let started = Instant::now();
    let mut replayer = Replayer::connect(
        &oplog,
        &source.url,
        Target::database(&replica.url),
        ReplayOptions {
            aggregate: None,
            batch_size: cfg.batch_size,
            ..ReplayOptions::default()
        },
    )?;
    let report = replayer.run(&mut |_| {})?;
    let replay_time = started.elapsed();
    let after = baseline(&cfg.url, &users, cfg.batch_size)?;
    if !report.is_complete() || report.entries_applied != cfg.entries as u64 {
        return Err(super::check_failed(format!(
            "replay applied {} of {} entries; stopped: {:?}",
            report.entries_applied, cfg.entries, report.stopped
        )));
    }
    let rows: i64 = replica
        .connect()?
        .query_one("SELECT count(*) FROM demo_user", &[])?
        .get(0);
    if rows != i64::try_from(cfg.entries).unwrap_or(i64::MAX) {
        return Err(super::check_failed(format!(
            "the replica holds {rows} rows, not {}",
            cfg.entries
        )));
    }
    let baseline_time = (before + after) / 2;
    let n = cfg.entries as f64;
    let rate = n / replay_time.as_secs_f64();
    let base = n / baseline_time.as_secs_f64();
    Ok(ReplayBenchReport {
        scenario: "replay",
        entries: cfg.entries,
        aggregates: cfg.aggregates,
        batch_size: cfg.batch_size,
        replay_s: replay_time.as_secs_f64(),
        baseline_s: baseline_time.as_secs_f64(),
        rate_per_s: rate,
        baseline_per_s: base,
        ratio: rate / base,
        target_ratio: REPLAY_TARGET_RATIO,
    })
}

/// Bulk-loads the log: `entries` users created, one entry each, over
/// `aggregates` aggregates in turn; returns the users.
pub(super) fn load(
    source: &Scratch,
    oplog: &Oplog,
    entries: usize,
    aggregates: usize,
    payload_bytes: usize,
) -> Result<Vec<User>> {
    let avatar = vec![0x5a; payload_bytes];
    let users: Vec<User> = (0..entries).map(|_| user(&avatar)).collect();
    let mut client = source.connect()?;
    let aggregates: Vec<String> = (0..aggregates).map(|a| format!("bench-{a:05}")).collect();
    // (seq, chain) of each aggregate's last entry.
    let mut heads: Vec<(i64, Vec<u8>)> = Vec::new();
    for (a, name) in aggregates.iter().enumerate().take(users.len()) {
        let mut tx = client.transaction()?;
        let mut entry = NewEntry::new(name.as_str());
        entry.create(&users[a])?;
        let written = oplog.write(&mut tx, &entry)?;
        tx.commit()?;
        heads.push((written.seq, written.chain.to_vec()));
    }
    let digest = oplog.catalog_digest();
    let key_id = oplog.wrapper().key_id().to_string();
    let mut rows = Bulk::default();
    for (i, u) in users.iter().enumerate().skip(aggregates.len()) {
        let a = i % aggregates.len();
        let mut entry = NewEntry::new(aggregates[a].as_str());
        entry.create(u)?;
        let seq = heads[a].0 + 1;
        let header = entry.header(seq, &key_id, &digest);
        let sealed = entry::seal(oplog.wrapper(), &header, &entry.queue, &heads[a].1)?;
        heads[a] = (seq, sealed.chain.to_vec());
        rows.push(&entry, seq, &key_id, sealed, &digest);
        if rows.len() >= 2000 {
            rows.flush(&mut client)?;
        }
    }
    rows.flush(&mut client)?;
    for (name, (seq, chain)) in aggregates.iter().zip(&heads) {
        client.execute(
            "UPDATE oplog_ticket SET version = $2, chain = $3 WHERE name = $1",
            &[name, seq, chain],
        )?;
    }
    Ok(users)
}

/// Entry rows waiting for one multi-row insert.
#[derive(Default)]
struct Bulk {
    uuids: Vec<String>,
    aggregates: Vec<String>,
    seqs: Vec<i64>,
    key_ids: Vec<String>,
    data: Vec<Vec<u8>>,
    digests: Vec<Vec<u8>>,
    chains: Vec<Vec<u8>>,
    catalogs: Vec<Vec<u8>>,
}

impl Bulk {
    fn len(&self) -> usize {
        self.seqs.len()
    }

    fn push(
        &mut self,
        entry: &NewEntry,
        seq: i64,
        key_id: &str,
        sealed: entry::Sealed,
        catalog: &[u8],
    ) {
        self.uuids.push(entry.uuid.to_string());
        self.aggregates.push(entry.aggregate.clone());
        self.seqs.push(seq);
        self.key_ids.push(key_id.to_string());
        self.data.push(sealed.data);
        self.digests.push(sealed.digest.to_vec());
        self.chains.push(sealed.chain.to_vec());
        self.catalogs.push(catalog.to_vec());
    }

    fn flush(&mut self, client: &mut Client) -> Result<()> {
        if self.seqs.is_empty() {
            return Ok(());
        }
        let params: [(&(dyn ToSql + Sync), Type); 8] = [
            (&self.uuids, Type::TEXT_ARRAY),
            (&self.aggregates, Type::TEXT_ARRAY),
            (&self.seqs, Type::INT8_ARRAY),
            (&self.key_ids, Type::TEXT_ARRAY),
            (&self.data, Type::BYTEA_ARRAY),
            (&self.digests, Type::BYTEA_ARRAY),
            (&self.chains, Type::BYTEA_ARRAY),
            (&self.catalogs, Type::BYTEA_ARRAY),
        ];
        let format = FORMAT_VERSION;
        client.execute_typed(
            &format!(
                "INSERT INTO oplog_entry (entry_uuid, aggregate_name, seq, format, key_id, data, digest, chain, catalog) \
                 SELECT u::uuid, a, s, {format}, k, d, g, c, t \
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bytea[], $6::bytea[], $7::bytea[], $8::bytea[]) \
                 AS x(u, a, s, k, d, g, c, t)"
            ),
            &params,
        )?;
        *self = Bulk::default();
        Ok(())
    }
}

/// Inserts `users` into a fresh database's `demo_user` with multi-row
/// INSERTs of `batch` rows, one transaction each; returns the time taken.
pub(super) fn baseline(url: &str, users: &[User], batch: usize) -> Result<Duration> {
    let db = Scratch::empty(url)?;
    let mut client = db.connect()?;
    client.batch_execute(demo::SCHEMA)?;
    let statement = |n: usize| {
        let rows: Vec<String> = (0..n)
            .map(|r| {
                let p: Vec<String> = (1..=9).map(|c| format!("${}", r * 9 + c)).collect();
                format!("({})", p.join(", "))
            })
            .collect();
        format!(
            "INSERT INTO demo_user ({}) VALUES {}",
            demo::USER_COLUMNS,
            rows.join(", ")
        )
    };
    let full = client.prepare(&statement(batch.min(users.len())))?;
    let started = Instant::now();
    for chunk in users.chunks(batch) {
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(chunk.len() * 9);
        for u in chunk {
            params.extend_from_slice(&u.params());
        }
        let mut tx = client.transaction()?;
        if chunk.len() == batch {
            tx.execute(&full, &params)?;
        } else {
            let last = tx.prepare(&statement(chunk.len()))?;
            tx.execute(&last, &params)?;
        }
        tx.commit()?;
    }
    Ok(started.elapsed())
}
