//! Write-rate benchmarks against a PostgreSQL server, shared by
//! `benches/write.rs` and the `oplog bench` command.
//!
//! Every run creates a scratch database `oplog_bench_<random>` beside the
//! configured URL, migrates it, creates the [`demo`] tables, and
//! drops it when the run ends, whether it succeeded or not. Each writer has
//! its own connection. Every scenario inserts the same domain row (a
//! `demo_user`, through a prepared statement) and runs its transactions
//! through the same [`RetryPolicy`](crate::RetryPolicy), so the scenarios differ only in how the
//! oplog entry is written. A rate counts the commits that finish within the
//! scenario's window; after each scenario the log is checked to hold exactly
//! one entry per commit, so every commit counted did useful work.
//!
//! - [`write()`]: one writer. The bare domain transaction against the same
//!   transaction plus one entry written with [`Oplog::write`](crate::Oplog::write): what the log
//!   costs a transaction.
//! - [`contention`]: many writers, all on one aggregate. The pessimistic
//!   mode ([`Oplog::write`](crate::Oplog::write)), the optimistic mode ([`Oplog::ticket`](crate::Oplog::ticket) then
//!   [`Oplog::write_with_ticket`](crate::Oplog::write_with_ticket)) and, as the baseline, Boundary's statement
//!   sequence written out by hand: read the ticket version at the start,
//!   insert the entry and one metadata row per statement, and
//!   compare-and-swap the ticket at the end.
//!
//! ```no_run
//! use oplog::bench::{self, WriteBenchConfig};
//!
//! let cfg = WriteBenchConfig { seconds: 2.0, ..WriteBenchConfig::from_env() };
//! let reports = bench::all(&cfg)?;
//! println!("{}\n{}", reports.write, reports.contention);
//! # Ok::<(), oplog::Error>(())
//! ```

use postgres::Client;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::tooling::demo::{self, User};

mod codec;
mod follow;
mod relay;
mod replay;
mod tree;
mod verify;
mod write;
mod write_async;

pub use codec::{open_entry, seal_entry, SealedEntry};
pub use write::{
    all, contention, notify, spread, subjects, write, ContentionReport, Figures, NotifyReport,
    Reports, SpreadReport, SubjectsReport, WriteBenchConfig, WriteReport, CONTENTION_TARGET_RATIO,
    SPREAD_TARGET_RATIO, WRITE_SQLX_TARGET_RATIO, WRITE_TARGET_RATIO, WRITE_TOKIO_TARGET_RATIO,
};

pub use follow::{
    follow, FollowBenchConfig, FollowBenchReport, Replication, FOLLOW_TARGET_CATCH_UP_RATIO,
    FOLLOW_TARGET_P99_MS,
};
pub use relay::{
    relay, RelayBenchConfig, RelayBenchReport, RELAY_TARGET_P99_MS, RELAY_TARGET_RATE,
};
pub use replay::{replay, ReplayBenchConfig, ReplayBenchReport, REPLAY_TARGET_RATIO};
pub use tree::{tree, TreeBenchConfig, TreeBenchReport};
pub use verify::{
    verify_bench, VerifyBenchConfig, VerifyBenchReport, VERIFY_REPLAY_TARGET_RATIO,
    VERIFY_TARGET_COST_RATIO, VERIFY_TARGET_MAX_RSS_MB, VERIFY_TARGET_RATIO,
};

/// Server URL used when `DATABASE_URL` is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn invalid(context: String) -> Error {
    Error::Config(format!("benchmark: {context}"))
}

fn check_failed(context: String) -> Error {
    Error::Benchmark(context)
}

/// The `q`th percentile (nearest rank) of `sorted`, or zero when it is empty.
fn percentile<T: Copy + Default>(sorted: &[T], q: usize) -> T {
    let rank = (sorted.len() * q).div_ceil(100).saturating_sub(1);
    sorted.get(rank).copied().unwrap_or_default()
}

/// `a / b`, or zero when `b` is zero, so that a scenario that committed
/// nothing reports zero rather than NaN.
fn per(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// A user with fresh unique id and email.
fn user(avatar: &[u8]) -> User {
    let id = Uuid::new_v4().simple().to_string();
    User {
        email: format!("{id}@bench.example"),
        id,
        tenant_id: "tenant-bench".into(),
        account_id: "account-bench".into(),
        display_name: "Bench User".into(),
        active: true,
        avatar: avatar.to_vec(),
        ..User::default()
    }
}

/// A database that exists while the value lives: created, migrated and given
/// the demo tables by [`Scratch::create`], dropped by `Drop`.
struct Scratch {
    admin_url: String,
    name: String,
    url: String,
}

impl Scratch {
    fn create(admin_url: &str) -> Result<Self> {
        let scratch = Scratch::empty(admin_url)?;
        crate::store::migrate::migrate_url(&scratch.url)?;
        scratch.connect()?.batch_execute(demo::SCHEMA)?;
        Ok(scratch)
    }

    /// A new database with nothing in it.
    fn empty(admin_url: &str) -> Result<Self> {
        let mut admin = crate::store::connect::connect(admin_url)?;
        let name = format!("oplog_bench_{}", &Uuid::new_v4().simple().to_string()[..12]);
        admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
        // From here on the database is dropped when `scratch` goes out of
        // scope, so a failure while setting it up leaves nothing behind.
        let scratch = Scratch {
            admin_url: admin_url.to_string(),
            url: with_database(admin_url, &name),
            name,
        };
        Ok(scratch)
    }

    fn connect(&self) -> Result<Client> {
        crate::store::connect::connect(&self.url)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = crate::tooling::cleanup::drop_database(&self.admin_url, &self.name) {
            // Drop cannot return the error, and a leftover database is
            // something the user needs to hear about.
            eprintln!(
                "warning: could not drop benchmark database {}: {e}",
                self.name
            );
        }
    }
}

/// `url` with its database replaced by `db`: the path of a
/// `postgres://` URL, or a `dbname` appended to a `key=value` string. Used to
/// reach a scratch database on the server of a configured URL.
pub fn with_database(url: &str, db: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return format!("{url} dbname={db}");
    };
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    match query {
        Some(query) => format!("{}/{db}?{query}", &base[..authority_end]),
        None => format!("{}/{db}", &base[..authority_end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn with_database_replaces_only_the_database() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(
            with_database("postgresql://u@h/db?sslmode=disable", "x"),
            "postgresql://u@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("host=h user=u", "x"),
            "host=h user=u dbname=x"
        );
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 50), Duration::from_millis(100));
        assert_eq!(percentile(&sorted, 99), Duration::from_millis(198));
        assert_eq!(percentile(&sorted[..1], 99), Duration::from_millis(1));
        assert_eq!(percentile::<Duration>(&[], 50), Duration::ZERO);
    }
}
