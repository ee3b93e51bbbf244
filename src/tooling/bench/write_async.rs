//! One writer over each async driver, with and without an entry
//! ([`Oplog::write_async`] over tokio-postgres, [`Oplog::write_sqlx`] over
//! sqlx): each driver against its own bare transaction, measured on the
//! same server in the same run as the synchronous figures.

use std::time::{Duration, Instant};

use sqlx::Connection as _;
use tokio_postgres::{NoTls, Statement};

use crate::error::{Error, Result};
use crate::source::write::Oplog;
use crate::tooling::demo::User;

use super::user;
use super::write::{insert_params, new_entry, Shared, Tally, INSERT_USER, SLICE};

/// A connection of an async driver that commits the benchmark's
/// transaction: the domain insert, and the entry when `entry` names its
/// aggregate.
trait AsyncWriter {
    async fn transaction(&mut self, oplog: &Oplog, u: &User, entry: Option<&str>) -> Result<()>;
}

/// One tokio-postgres connection with the domain insert prepared.
struct TokioWriter {
    client: tokio_postgres::Client,
    insert_user: Statement,
}

impl AsyncWriter for TokioWriter {
    async fn transaction(&mut self, oplog: &Oplog, u: &User, entry: Option<&str>) -> Result<()> {
        let tx = self.client.transaction().await?;
        tx.execute(&self.insert_user, &insert_params(u)).await?;
        if let Some(aggregate) = entry {
            oplog.write_async(&tx, &new_entry(aggregate, u)?).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// One sqlx connection (sqlx prepares and caches the insert itself).
struct SqlxWriter {
    conn: sqlx::PgConnection,
}

impl AsyncWriter for SqlxWriter {
    async fn transaction(&mut self, oplog: &Oplog, u: &User, entry: Option<&str>) -> Result<()> {
        let mut tx = self.conn.begin().await?;
        sqlx::query(INSERT_USER)
            .bind(&u.id)
            .bind(&u.tenant_id)
            .bind(&u.account_id)
            .bind(&u.email)
            .bind(&u.display_name)
            .bind(&u.avatar)
            .execute(&mut *tx)
            .await?;
        if let Some(aggregate) = entry {
            oplog.write_sqlx(&mut tx, &new_entry(aggregate, u)?).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A runtime of the benchmark's own, one thread.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Benchmark(format!("starting a tokio runtime: {e}")))
}

/// One writer over tokio-postgres: the tallies of the bare transaction and
/// of the same with an entry on `aggregate`, in alternating slices.
pub(super) fn measure_tokio(
    url: &str,
    shared: &Shared,
    aggregate: &str,
    duration: Duration,
) -> Result<(Tally, Tally)> {
    runtime()?.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        let driver = tokio::spawn(connection);
        let insert_user = client.prepare(INSERT_USER).await?;
        let mut writer = TokioWriter {
            client,
            insert_user,
        };
        let tallies = alternate(&mut writer, shared, aggregate, duration).await;
        drop(writer);
        driver.abort();
        tallies
    })
}

/// The same over sqlx.
pub(super) fn measure_sqlx(
    url: &str,
    shared: &Shared,
    aggregate: &str,
    duration: Duration,
) -> Result<(Tally, Tally)> {
    runtime()?.block_on(async {
        let mut writer = SqlxWriter {
            conn: sqlx::PgConnection::connect(url).await?,
        };
        alternate(&mut writer, shared, aggregate, duration).await
    })
}

/// One of each transaction first, out of the figures; then alternating
/// slices of each, `duration` in all for each.
async fn alternate(
    writer: &mut impl AsyncWriter,
    shared: &Shared,
    aggregate: &str,
    duration: Duration,
) -> Result<(Tally, Tally)> {
    let u = user(&shared.avatar);
    writer.transaction(&shared.oplog, &u, None).await?;
    let u = user(&shared.avatar);
    writer
        .transaction(&shared.oplog, &u, Some(aggregate))
        .await?;
    let rounds = u32::try_from(duration.as_nanos() / SLICE.as_nanos())
        .unwrap_or(u32::MAX)
        .max(1);
    let slice = duration / rounds;
    let (mut bare, mut logged) = (Tally::default(), Tally::default());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [None, Some(aggregate)]
        } else {
            [Some(aggregate), None]
        };
        for entry in order {
            let tally = run_for(writer, shared, entry, slice).await?;
            match entry {
                None => bare.add(tally),
                Some(_) => logged.add(tally),
            }
        }
    }
    // The warm-up wrote one entry too.
    logged.uncounted += 1;
    Ok((bare, logged))
}

/// Commits transactions for `duration`: bare, or with an entry on the
/// aggregate given.
async fn run_for(
    writer: &mut impl AsyncWriter,
    shared: &Shared,
    entry: Option<&str>,
    duration: Duration,
) -> Result<Tally> {
    let deadline = Instant::now() + duration;
    let mut tally = Tally {
        elapsed: duration,
        ..Tally::default()
    };
    while Instant::now() < deadline {
        let begun = Instant::now();
        let u = user(&shared.avatar);
        writer.transaction(&shared.oplog, &u, entry).await?;
        let finished = Instant::now();
        if finished <= deadline {
            tally.commits += 1;
            tally.max_attempts = tally.max_attempts.max(1);
            tally.latencies.push(finished - begun);
        } else {
            tally.uncounted += 1;
        }
    }
    Ok(tally)
}
