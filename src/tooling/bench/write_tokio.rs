//! One writer over tokio-postgres, with and without an entry
//! ([`Oplog::write_async`]): the async driver's own baseline, measured on
//! the same server in the same run as the synchronous figures.

use std::time::{Duration, Instant};

use tokio_postgres::{NoTls, Statement, Transaction};

use crate::error::{Error, Result};
use crate::source::write::Oplog;

use super::user;
use super::write::{insert_params, new_entry, Shared, Tally, INSERT_USER, SLICE};

/// One tokio-postgres connection with the domain insert prepared.
struct AsyncWriter {
    client: tokio_postgres::Client,
    insert_user: Statement,
}

/// Runs `slices` alternating slices of `slice` each of the bare domain
/// transaction and of the same with an entry on `aggregate`, one
/// connection, on a runtime of its own; the tallies of both.
pub(super) fn measure(
    url: &str,
    shared: &Shared,
    aggregate: &str,
    duration: Duration,
) -> Result<(Tally, Tally)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Benchmark(format!("starting a tokio runtime: {e}")))?;
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        let driver = tokio::spawn(connection);
        let insert_user = client.prepare(INSERT_USER).await?;
        let mut writer = AsyncWriter {
            client,
            insert_user,
        };
        // One of each first, out of the figures.
        writer.transaction(shared, None).await?;
        writer.transaction(shared, Some(aggregate)).await?;
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
                let tally = writer.run_for(shared, entry, slice).await?;
                match entry {
                    None => bare.add(tally),
                    Some(_) => logged.add(tally),
                }
            }
        }
        logged.uncounted += 1;
        drop(writer);
        driver.abort();
        Ok((bare, logged))
    })
}

impl AsyncWriter {
    /// Commits transactions for `duration`: bare, or with an entry on the
    /// aggregate given.
    async fn run_for(
        &mut self,
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
            self.transaction(shared, entry).await?;
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

    /// One transaction: the domain insert, and the entry when `entry`
    /// names its aggregate.
    async fn transaction(&mut self, shared: &Shared, entry: Option<&str>) -> Result<()> {
        let tx = self.client.transaction().await?;
        let u = user(&shared.avatar);
        insert(&tx, &self.insert_user, &u).await?;
        if let Some(aggregate) = entry {
            write(&shared.oplog, &tx, &new_entry(aggregate, &u)?).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

async fn insert(
    tx: &Transaction<'_>,
    statement: &Statement,
    u: &crate::tooling::demo::User,
) -> Result<()> {
    tx.execute(statement, &insert_params(u)).await?;
    Ok(())
}

async fn write(
    oplog: &Oplog,
    tx: &Transaction<'_>,
    entry: &crate::codec::entry::NewEntry,
) -> Result<()> {
    oplog.write_async(tx, entry).await.map(|_| ())
}
