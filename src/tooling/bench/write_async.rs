//! Writers over each async driver, with and without an entry
//! ([`Oplog::write_async`] and [`Oplog::write_and_commit_async`] over
//! tokio-postgres, [`Oplog::write_sqlx`] over sqlx): each driver against
//! its own bare transaction, measured on the same server in the same run as
//! the synchronous figures; one writer, or many on aggregates of their own.

use std::time::{Duration, Instant};

use sqlx::Connection as _;
use tokio_postgres::{NoTls, Statement};

use crate::error::{Error, Result};
use crate::source::write::Oplog;
use crate::tooling::demo::User;

use super::user;
use super::write::{insert_params, new_entry, Shared, Tally, INSERT_USER, SLICE};

/// What a benchmark transaction writes besides the domain row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Nothing.
    Bare,
    /// An entry, then COMMIT.
    Entry,
    /// An entry sent with COMMIT ([`Oplog::write_and_commit_async`]).
    EntryWithCommit,
}

/// A connection of an async driver that commits the benchmark's
/// transaction: the domain insert, and the entry on `aggregate` as `mode`
/// says.
trait AsyncWriter {
    async fn transaction(
        &mut self,
        oplog: &Oplog,
        u: &User,
        aggregate: &str,
        mode: Mode,
    ) -> Result<()>;
}

/// One tokio-postgres connection with the domain insert prepared; the task
/// driving the connection ends with it.
struct TokioWriter {
    client: tokio_postgres::Client,
    insert_user: Statement,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for TokioWriter {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl TokioWriter {
    async fn connect(url: &str) -> Result<Self> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let insert_user = client.prepare(INSERT_USER).await?;
        Ok(TokioWriter {
            client,
            insert_user,
            driver,
        })
    }
}

impl SqlxWriter {
    async fn connect(url: &str) -> Result<Self> {
        Ok(SqlxWriter {
            conn: sqlx::PgConnection::connect(url).await?,
        })
    }
}

impl AsyncWriter for TokioWriter {
    async fn transaction(
        &mut self,
        oplog: &Oplog,
        u: &User,
        aggregate: &str,
        mode: Mode,
    ) -> Result<()> {
        let tx = self.client.transaction().await?;
        tx.execute(&self.insert_user, &insert_params(u)).await?;
        match mode {
            Mode::Bare => tx.commit().await?,
            Mode::Entry => {
                oplog.write_async(&tx, &new_entry(aggregate, u)?).await?;
                tx.commit().await?;
            }
            Mode::EntryWithCommit => {
                oplog
                    .write_and_commit_async(tx, &new_entry(aggregate, u)?)
                    .await?;
            }
        }
        Ok(())
    }
}

/// One sqlx connection (sqlx prepares and caches the insert itself).
struct SqlxWriter {
    conn: sqlx::PgConnection,
}

impl AsyncWriter for SqlxWriter {
    /// sqlx sends one statement at a time: an entry sent with COMMIT is
    /// written, then committed.
    async fn transaction(
        &mut self,
        oplog: &Oplog,
        u: &User,
        aggregate: &str,
        mode: Mode,
    ) -> Result<()> {
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
        if mode != Mode::Bare {
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

/// One writer over tokio-postgres: the tallies of each of `modes` on
/// `aggregate`, in alternating slices.
pub(super) fn measure_tokio(
    url: &str,
    shared: &Shared,
    aggregate: &str,
    modes: &[Mode],
    duration: Duration,
) -> Result<Vec<Tally>> {
    runtime()?.block_on(async {
        let mut writer = TokioWriter::connect(url).await?;
        alternate(&mut writer, shared, aggregate, modes, duration).await
    })
}

/// The same over sqlx.
pub(super) fn measure_sqlx(
    url: &str,
    shared: &Shared,
    aggregate: &str,
    modes: &[Mode],
    duration: Duration,
) -> Result<Vec<Tally>> {
    runtime()?.block_on(async {
        let mut writer = SqlxWriter::connect(url).await?;
        alternate(&mut writer, shared, aggregate, modes, duration).await
    })
}

/// `shared.writers` tokio-postgres writers at once, writer `i` on
/// aggregate `aggregate(i)` (its own), all in `mode`, for `duration`: their
/// tallies added up. One thread drives them all, as the bare baseline's.
pub(super) fn spread_tokio(
    url: &str,
    shared: &Shared,
    aggregate: &(dyn Fn(usize) -> String + Sync),
    mode: Mode,
    duration: Duration,
) -> Result<Tally> {
    spread_over(
        || TokioWriter::connect(url),
        shared,
        aggregate,
        mode,
        duration,
    )
}

/// The same over sqlx.
pub(super) fn spread_sqlx(
    url: &str,
    shared: &Shared,
    aggregate: &(dyn Fn(usize) -> String + Sync),
    mode: Mode,
    duration: Duration,
) -> Result<Tally> {
    spread_over(
        || SqlxWriter::connect(url),
        shared,
        aggregate,
        mode,
        duration,
    )
}

/// [`spread`] over the writers `connect` opens, on a runtime of its own.
fn spread_over<W: AsyncWriter, C: std::future::Future<Output = Result<W>>>(
    connect: impl Fn() -> C,
    shared: &Shared,
    aggregate: &(dyn Fn(usize) -> String + Sync),
    mode: Mode,
    duration: Duration,
) -> Result<Tally> {
    runtime()?.block_on(async {
        let mut writers = Vec::new();
        for _ in 0..shared.writers {
            writers.push(connect().await?);
        }
        spread(writers, shared, aggregate, mode, duration).await
    })
}

/// Each writer runs one transaction (out of the figures), then all run
/// for `duration` at once, driven by one task.
async fn spread<W: AsyncWriter>(
    mut writers: Vec<W>,
    shared: &Shared,
    aggregate: &(dyn Fn(usize) -> String + Sync),
    mode: Mode,
    duration: Duration,
) -> Result<Tally> {
    let names: Vec<String> = (0..writers.len()).map(aggregate).collect();
    let mut warm = 0;
    for (writer, name) in writers.iter_mut().zip(&names) {
        writer
            .transaction(&shared.oplog, &user(&shared.avatar), name, mode)
            .await?;
        warm += 1;
    }
    let runs: Vec<_> = writers
        .iter_mut()
        .zip(&names)
        .map(|(w, name)| Box::pin(run_for(w, shared, name, mode, duration)))
        .collect();
    let mut total = Tally::default();
    for tally in join_all(runs).await {
        total.add(tally?);
    }
    total.elapsed = duration;
    if mode != Mode::Bare {
        total.uncounted += warm;
    }
    Ok(total)
}

/// Polls every future until all are done, in one task; their outputs in
/// order.
async fn join_all<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match std::pin::Pin::new(&mut *future).poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// One of each transaction first, out of the figures; then alternating
/// slices of each mode (in turn, the order rotating every round),
/// `duration` in all for each.
async fn alternate(
    writer: &mut impl AsyncWriter,
    shared: &Shared,
    aggregate: &str,
    modes: &[Mode],
    duration: Duration,
) -> Result<Vec<Tally>> {
    let mut tallies = vec![Tally::default(); modes.len()];
    for (mode, tally) in modes.iter().zip(tallies.iter_mut()) {
        let u = user(&shared.avatar);
        writer
            .transaction(&shared.oplog, &u, aggregate, *mode)
            .await?;
        if *mode != Mode::Bare {
            tally.uncounted += 1;
        }
    }
    let rounds = u32::try_from(duration.as_nanos() / SLICE.as_nanos())
        .unwrap_or(u32::MAX)
        .max(1);
    let slice = duration / rounds;
    for round in 0..rounds as usize {
        for k in 0..modes.len() {
            let i = (round + k) % modes.len();
            let tally = run_for(writer, shared, aggregate, modes[i], slice).await?;
            tallies[i].add(tally);
        }
    }
    Ok(tallies)
}

/// Commits transactions of `mode` on `aggregate` for `duration`.
async fn run_for(
    writer: &mut impl AsyncWriter,
    shared: &Shared,
    aggregate: &str,
    mode: Mode,
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
        writer
            .transaction(&shared.oplog, &u, aggregate, mode)
            .await?;
        let finished = Instant::now();
        if finished <= deadline {
            tally.commits += 1;
            tally.max_attempts = tally.max_attempts.max(1);
            tally.latencies.push(finished - begun);
        } else if mode != Mode::Bare {
            tally.uncounted += 1;
        }
    }
    Ok(tally)
}
