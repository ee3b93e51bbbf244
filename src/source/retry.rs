//! Running a transaction again when it lost a race.
//!
//! [`RetryPolicy`] runs a caller's closure in a fresh transaction, commits,
//! and on a retryable failure (a lost ticket race, a serialization failure,
//! a deadlock) rolls back, sleeps with jittered exponential backoff and
//! tries again, up to a bound. The closure returns the caller's own error
//! type; [`Retryable`] is how the policy tells which of its errors are
//! worth another attempt.

use std::time::Duration;

#[cfg(feature = "diesel")]
use diesel::{Connection as _, PgConnection};
use rand::Rng;

use crate::error::{Error, Result};

/// An error that can say whether running the whole transaction again may
/// succeed, so that [`RetryPolicy`] can run a closure that returns it.
///
/// Implemented for [`Error`] (a lost ticket race, or a database error below
/// it), for the drivers' errors (`postgres::Error` and
/// `diesel::result::Error` with SQLSTATE 40001, serialization failure, or
/// 40P01, deadlock) and for boxed errors (when the error or any of its
/// causes is one of those). A service's own error type implements it by
/// asking the errors it wraps, in one small `impl`:
///
/// ```no_run
/// use oplog::{Keyring, NewEntry, Oplog, Retryable, RetryPolicy, TypeCatalog};
///
/// /// What a transfer can fail with: a rule of the domain, or the oplog
/// /// (the database below it included).
/// #[derive(Debug)]
/// enum TransferError {
///     InsufficientFunds { balance: i64 },
///     Oplog(oplog::Error),
/// }
///
/// impl From<oplog::Error> for TransferError {
///     fn from(e: oplog::Error) -> Self {
///         TransferError::Oplog(e)
///     }
/// }
///
/// impl From<postgres::Error> for TransferError {
///     fn from(e: postgres::Error) -> Self {
///         TransferError::Oplog(e.into())
///     }
/// }
///
/// impl Retryable for TransferError {
///     fn is_retryable(&self) -> bool {
///         match self {
///             TransferError::Oplog(e) => e.is_retryable(),
///             TransferError::InsufficientFunds { .. } => false,
///         }
///     }
/// }
///
/// # #[derive(Clone, PartialEq, prost::Message)]
/// # struct Withdrawal {
/// #     #[prost(string, tag = "1")]
/// #     account: String,
/// #     #[prost(int64, tag = "2")]
/// #     amount: i64,
/// # }
/// # impl prost::Name for Withdrawal {
/// #     const NAME: &'static str = "Withdrawal";
/// #     const PACKAGE: &'static str = "bank.v1";
/// # }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let catalog = TypeCatalog::new();
/// let oplog = Oplog::new(catalog, Keyring::generate());
/// let mut client = postgres::Client::connect("host=127.0.0.1 user=postgres", postgres::NoTls)?;
/// let outcome = RetryPolicy::default().postgres(&mut client, |tx| {
///     let balance: i64 = tx
///         .query_one("SELECT balance FROM account WHERE id = 'a1' FOR UPDATE", &[])?
///         .get(0);
///     if balance < 100 {
///         // Not retried: the transaction rolls back and this is returned.
///         return Err(TransferError::InsufficientFunds { balance });
///     }
///     tx.execute("UPDATE account SET balance = balance - 100 WHERE id = 'a1'", &[])?;
///     let mut entry = NewEntry::new("account-a1");
///     entry.create(&Withdrawal { account: "a1".into(), amount: 100 })?;
///     // A lost ticket race or a serialization failure in here is retried.
///     Ok(oplog.write(tx, &entry)?)
/// });
/// match outcome {
///     Ok(done) => println!("seq {} after {} attempts", done.value.seq, done.attempts),
///     Err(TransferError::InsufficientFunds { balance }) => println!("only {balance} left"),
///     Err(TransferError::Oplog(e)) => return Err(e.into()),
/// }
/// # Ok(()) }
/// ```
pub trait Retryable {
    /// True when running the whole transaction again may succeed.
    fn is_retryable(&self) -> bool;

    /// What [`RetryPolicy`] returns when the attempts ran out, `self` being
    /// the last (retryable) error. By default the last error itself;
    /// [`Error`] wraps it in [`Error::RetriesExhausted`] with the count.
    fn exhausted(self, attempts: u32) -> Self
    where
        Self: Sized,
    {
        let _ = attempts;
        self
    }
}

impl Retryable for Error {
    fn is_retryable(&self) -> bool {
        Error::is_retryable(self)
    }

    fn exhausted(self, attempts: u32) -> Self {
        Error::RetriesExhausted {
            attempts,
            last: Box::new(self),
        }
    }
}

impl Retryable for postgres::Error {
    fn is_retryable(&self) -> bool {
        crate::error::postgres_retryable(self)
    }
}

#[cfg(feature = "diesel")]
impl Retryable for diesel::result::Error {
    fn is_retryable(&self) -> bool {
        crate::error::diesel_retryable(self)
    }
}

#[cfg(feature = "sqlx")]
impl Retryable for sqlx::Error {
    fn is_retryable(&self) -> bool {
        crate::error::sqlx_retryable(self)
    }
}

impl Retryable for Box<dyn std::error::Error + Send + Sync> {
    fn is_retryable(&self) -> bool {
        any_cause_retryable(&**self)
    }
}

impl Retryable for Box<dyn std::error::Error> {
    fn is_retryable(&self) -> bool {
        any_cause_retryable(&**self)
    }
}

/// True when `e` or one of its causes is an oplog or driver error that is
/// retryable.
fn any_cause_retryable(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        let retryable = if let Some(e) = c.downcast_ref::<Error>() {
            e.is_retryable()
        } else if let Some(e) = c.downcast_ref::<postgres::Error>() {
            Retryable::is_retryable(e)
        } else {
            diesel_cause_retryable(c) || sqlx_cause_retryable(c)
        };
        if retryable {
            return true;
        }
        cause = c.source();
    }
    false
}

/// True when `e` is a retryable diesel error.
#[cfg(feature = "diesel")]
fn diesel_cause_retryable(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<diesel::result::Error>()
        .is_some_and(Retryable::is_retryable)
}

/// Without the diesel driver, no error is a diesel error.
#[cfg(not(feature = "diesel"))]
fn diesel_cause_retryable(_: &(dyn std::error::Error + 'static)) -> bool {
    false
}

/// True when `e` is a retryable sqlx error.
#[cfg(feature = "sqlx")]
fn sqlx_cause_retryable(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .is_some_and(crate::error::sqlx_retryable)
}

/// Without the sqlx driver, no error is a sqlx error.
#[cfg(not(feature = "sqlx"))]
fn sqlx_cause_retryable(_: &(dyn std::error::Error + 'static)) -> bool {
    false
}

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first; at least 1.
    pub max_attempts: u32,
    /// Backoff ceiling after the first failure; doubles with each failure.
    pub base_delay: Duration,
    /// Largest backoff ceiling.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(250),
        }
    }
}

/// A value produced after `attempts` attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retried<T> {
    /// What the closure returned.
    pub value: T,
    /// Attempts it took, from 1.
    pub attempts: u32,
}

impl RetryPolicy {
    /// A policy allowing `max_attempts` attempts, with default delays.
    pub fn attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            ..RetryPolicy::default()
        }
    }

    /// The sleep before attempt `attempt + 1` (full jitter: uniform between
    /// zero and the exponential ceiling).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(
                1u32.checked_shl(attempt.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max_delay);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
    }

    /// Calls `attempt(n)` for n = 1, 2, ... until it succeeds, fails with an
    /// error that is not [retryable](Retryable::is_retryable), which is
    /// returned at once, or the attempts run out, when the last error is
    /// returned as [`Retryable::exhausted`] makes it
    /// ([`Error::RetriesExhausted`] for an [`Error`]).
    pub fn run<T, E: Retryable>(
        &self,
        mut attempt: impl FnMut(u32) -> Result<T, E>,
    ) -> Result<Retried<T>, E> {
        let mut n = 1;
        loop {
            match self.after(n, attempt(n)) {
                Next::Done(outcome) => return outcome,
                Next::Again(pause) => {
                    std::thread::sleep(pause);
                    n += 1;
                }
            }
        }
    }

    /// What follows attempt `n`'s `outcome`: it is the result, or another
    /// attempt comes after a pause.
    fn after<T, E: Retryable>(&self, n: u32, outcome: Result<T, E>) -> Next<T, E> {
        match outcome {
            Ok(value) => Next::Done(Ok(Retried { value, attempts: n })),
            Err(e) if e.is_retryable() && n < self.max_attempts.max(1) => {
                Next::Again(self.backoff(n))
            }
            Err(e) if e.is_retryable() => Next::Done(Err(e.exhausted(n))),
            Err(e) => Next::Done(Err(e)),
        }
    }

    /// [`RetryPolicy::run`] for async code: the same attempts and backoff,
    /// with a pause that does not block the thread (tokio's timer, so the
    /// runtime needs its time driver: `enable_time` or `enable_all`).
    #[cfg(feature = "tokio-postgres")]
    pub async fn run_async<T, E: Retryable, F: std::future::Future<Output = Result<T, E>>>(
        &self,
        mut attempt: impl FnMut(u32) -> F,
    ) -> Result<Retried<T>, E> {
        let mut n = 1;
        loop {
            match self.after(n, attempt(n).await) {
                Next::Done(outcome) => return outcome,
                Next::Again(pause) => {
                    tokio::time::sleep(pause).await;
                    n += 1;
                }
            }
        }
    }

    /// Runs `body` in a tokio-postgres transaction on `client`, committing
    /// on success; a retryable failure (in `body` or at commit) rolls back
    /// and runs it again after a pause that does not block the thread, any
    /// other error rolls back and is returned. `body` returns [`Error`] or
    /// the caller's own error type, as with [`RetryPolicy::postgres`], in a
    /// boxed future that borrows the transaction and owns the rest of what
    /// it uses (clone an [`Oplog`](crate::Oplog), an `Arc`, the entry), so
    /// that the whole call stays `Send` and can run in a spawned task.
    ///
    /// ```no_run
    /// # async fn f(oplog: &oplog::Oplog, client: &mut tokio_postgres::Client, entry: &oplog::NewEntry) -> oplog::Result<()> {
    /// let done = oplog::RetryPolicy::default()
    ///     .tokio_postgres(client, |tx| {
    ///         let (oplog, entry) = (oplog.clone(), entry.clone());
    ///         Box::pin(async move {
    ///             tx.execute("UPDATE account SET balance = balance - 10 WHERE id = 'a1'", &[]).await?;
    ///             oplog.write_async(tx, &entry).await
    ///         })
    ///     })
    ///     .await?;
    /// println!("seq {} after {} attempts", done.value.seq, done.attempts);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tokio-postgres")]
    pub async fn tokio_postgres<T, E, B>(
        &self,
        client: &mut tokio_postgres::Client,
        body: B,
    ) -> Result<Retried<T>, E>
    where
        E: Retryable + From<Error>,
        B: for<'t> FnMut(&'t tokio_postgres::Transaction<'_>) -> AttemptFuture<'t, T, E>,
    {
        self.tokio_attempts(client, body, Commit).await
    }

    /// [`RetryPolicy::tokio_postgres`] for a body that ends with one entry
    /// to write: `body` does the transaction's own work and returns its
    /// value with the entry, which is then written and committed in one
    /// round trip ([`Oplog::write_and_commit_async`]). An attempt that
    /// sealed the entry after a stale ticket position fails retryably with
    /// nothing committed, and the next one writes it the usual way.
    ///
    /// ```no_run
    /// # async fn f(oplog: &oplog::Oplog, client: &mut tokio_postgres::Client, entry: &oplog::NewEntry) -> oplog::Result<()> {
    /// let done = oplog::RetryPolicy::default()
    ///     .tokio_postgres_with_entry(client, oplog, |tx| {
    ///         let entry = entry.clone();
    ///         Box::pin(async move {
    ///             tx.execute("UPDATE account SET balance = balance - 10 WHERE id = 'a1'", &[]).await?;
    ///             Ok::<_, oplog::Error>(((), entry))
    ///         })
    ///     })
    ///     .await?;
    /// println!("seq {} after {} attempts", done.value.1.seq, done.attempts);
    /// # Ok(()) }
    /// ```
    ///
    /// [`Oplog::write_and_commit_async`]: crate::Oplog::write_and_commit_async
    #[cfg(feature = "tokio-postgres")]
    pub async fn tokio_postgres_with_entry<T, E, B>(
        &self,
        client: &mut tokio_postgres::Client,
        oplog: &crate::source::write::Oplog,
        body: B,
    ) -> Result<Retried<(T, crate::source::write::Written)>, E>
    where
        E: Retryable + From<Error>,
        B: for<'t> FnMut(
            &'t tokio_postgres::Transaction<'_>,
        ) -> AttemptFuture<'t, (T, crate::codec::entry::NewEntry), E>,
    {
        self.tokio_attempts(client, body, CommitWithEntry(oplog))
            .await
    }

    /// The attempts of [`RetryPolicy::tokio_postgres`]: `body` in a fresh
    /// transaction, then `finish` ends it (a retryable failure of either
    /// rolls back and runs both again after a pause).
    #[cfg(feature = "tokio-postgres")]
    async fn tokio_attempts<V, T, E, B, F>(
        &self,
        client: &mut tokio_postgres::Client,
        mut body: B,
        mut finish: F,
    ) -> Result<Retried<T>, E>
    where
        E: Retryable + From<Error>,
        B: for<'t> FnMut(&'t tokio_postgres::Transaction<'_>) -> AttemptFuture<'t, V, E>,
        F: Finish<V, T, E>,
    {
        let mut n = 1;
        loop {
            let outcome = async {
                let tx = client
                    .transaction()
                    .await
                    .map_err(|e| E::from(Error::from(e)))?;
                match body(&tx).await {
                    Ok(value) => finish.finish(tx, value).await,
                    Err(e) => {
                        // A failed rollback leaves nothing to undo: the
                        // connection is gone, and the transaction with it.
                        let _ = tx.rollback().await;
                        Err(e)
                    }
                }
            }
            .await;
            match self.after(n, outcome) {
                Next::Done(outcome) => return outcome,
                Next::Again(pause) => {
                    tokio::time::sleep(pause).await;
                    n += 1;
                }
            }
        }
    }

    /// Runs `body` in a rust-postgres transaction on `client`, committing on
    /// success; a retryable failure (in `body` or at commit) rolls back and
    /// runs it again, any other error rolls back and is returned.
    ///
    /// `body` returns [`Error`] or the caller's own error type `E`, which
    /// says which of its values are retryable ([`Retryable`]) and holds
    /// the driver's errors at `BEGIN` and `COMMIT` (`From<oplog::Error>`).
    /// A closure that ends in `Ok(value)` names its error type
    /// (`Ok::<_, oplog::Error>(value)`), as with diesel's `transaction`.
    ///
    /// ```no_run
    /// use oplog::{Keyring, NewEntry, Oplog, RetryPolicy, TypeCatalog};
    /// # #[derive(Clone, PartialEq, prost::Message)]
    /// # struct User {
    /// #     #[prost(string, tag = "1")]
    /// #     id: String,
    /// #     #[prost(string, tag = "2")]
    /// #     email: String,
    /// # }
    /// # impl prost::Name for User {
    /// #     const NAME: &'static str = "User";
    /// #     const PACKAGE: &'static str = "app.v1";
    /// # }
    /// # let catalog = TypeCatalog::new();
    ///
    /// let oplog = Oplog::new(catalog, Keyring::generate());
    /// let mut client = postgres::Client::connect("host=127.0.0.1 user=postgres", postgres::NoTls)?;
    /// let done = RetryPolicy::default().postgres(&mut client, |tx| {
    ///     tx.execute("INSERT INTO app_user (id, email) VALUES ($1, $2)", &[&"u1", &"a@example.com"])?;
    ///     let mut entry = NewEntry::new("tenant-1");
    ///     entry.create(&User { id: "u1".into(), email: "a@example.com".into() })?;
    ///     oplog.write(tx, &entry)
    /// })?;
    /// println!("seq {} after {} attempts", done.value.seq, done.attempts);
    /// # Ok::<(), oplog::Error>(())
    /// ```
    pub fn postgres<T, E>(
        &self,
        client: &mut postgres::Client,
        mut body: impl FnMut(&mut postgres::Transaction<'_>) -> Result<T, E>,
    ) -> Result<Retried<T>, E>
    where
        E: Retryable + From<Error>,
    {
        let driver = |e: postgres::Error| E::from(Error::from(e));
        self.run(|_| {
            let mut tx = client.transaction().map_err(driver)?;
            let value = body(&mut tx)?;
            tx.commit().map_err(driver)?;
            Ok(value)
        })
    }

    /// Runs `body` in a sqlx transaction on `conn` (a `PgConnection`, or
    /// one from a pool: `&mut *pool.acquire().await?`), committing on
    /// success; a retryable failure rolls back and runs it again after a
    /// pause that does not block the thread, any other error rolls back and
    /// is returned. `body` is as with [`RetryPolicy::tokio_postgres`].
    ///
    /// ```no_run
    /// # async fn f(oplog: &oplog::Oplog, conn: &mut sqlx::PgConnection, entry: &oplog::NewEntry) -> oplog::Result<()> {
    /// let done = oplog::RetryPolicy::default()
    ///     .sqlx(conn, |tx| {
    ///         let (oplog, entry) = (oplog.clone(), entry.clone());
    ///         Box::pin(async move {
    ///             sqlx::query("UPDATE account SET balance = balance - 10 WHERE id = 'a1'")
    ///                 .execute(&mut **tx)
    ///                 .await?;
    ///             oplog.write_sqlx(tx, &entry).await
    ///         })
    ///     })
    ///     .await?;
    /// println!("seq {} after {} attempts", done.value.seq, done.attempts);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "sqlx")]
    pub async fn sqlx<T, E, B>(
        &self,
        conn: &mut sqlx::PgConnection,
        mut body: B,
    ) -> Result<Retried<T>, E>
    where
        E: Retryable + From<Error>,
        B: for<'t> FnMut(&'t mut sqlx::Transaction<'_, sqlx::Postgres>) -> AttemptFuture<'t, T, E>,
    {
        use sqlx::Connection as _;
        let driver = |e: sqlx::Error| E::from(Error::from(e));
        let mut n = 1;
        loop {
            let outcome = async {
                let mut tx = conn.begin().await.map_err(driver)?;
                match body(&mut tx).await {
                    Ok(value) => {
                        tx.commit().await.map_err(driver)?;
                        Ok(value)
                    }
                    Err(e) => {
                        // As with tokio-postgres: a failed rollback leaves
                        // nothing to undo.
                        let _ = tx.rollback().await;
                        Err(e)
                    }
                }
            }
            .await;
            match self.after(n, outcome) {
                Next::Done(outcome) => return outcome,
                Next::Again(pause) => {
                    tokio::time::sleep(pause).await;
                    n += 1;
                }
            }
        }
    }

    /// Runs `body` in a diesel transaction on `conn`, committing on success;
    /// a retryable failure rolls back and runs it again, any other error
    /// rolls back and is returned. `body` returns [`Error`] or the caller's
    /// own error type, as with [`RetryPolicy::postgres`].
    #[cfg(feature = "diesel")]
    pub fn diesel<T, E>(
        &self,
        conn: &mut PgConnection,
        mut body: impl FnMut(&mut PgConnection) -> Result<T, E>,
    ) -> Result<Retried<T>, E>
    where
        E: Retryable + From<Error>,
    {
        self.run(|_| {
            conn.transaction(|c| body(c).map_err(Failed::Body))
                .map_err(|e| match e {
                    Failed::Body(e) => e,
                    Failed::Driver(e) => E::from(Error::from(e)),
                })
        })
    }
}

#[cfg(feature = "diesel")]
/// What failed in a diesel transaction: the caller's closure, or diesel
/// at `BEGIN`, `COMMIT` or `ROLLBACK` (diesel's `transaction` needs an
/// error type it can build from its own, which the caller's need not be).
enum Failed<E> {
    Body(E),
    Driver(diesel::result::Error),
}

#[cfg(feature = "diesel")]
impl<E> From<diesel::result::Error> for Failed<E> {
    fn from(e: diesel::result::Error) -> Self {
        Failed::Driver(e)
    }
}

/// One attempt of a `RetryPolicy::tokio_postgres` or `RetryPolicy::sqlx`
/// body: a boxed future
/// that may borrow the transaction for `'t`.
#[cfg(any(feature = "tokio-postgres", feature = "sqlx"))]
pub type AttemptFuture<'t, T, E> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send + 't>>;

/// How an attempt of [`RetryPolicy::tokio_postgres`] ends its transaction
/// after the body succeeded.
#[cfg(feature = "tokio-postgres")]
trait Finish<V, T, E> {
    async fn finish(&mut self, tx: tokio_postgres::Transaction<'_>, value: V) -> Result<T, E>;
}

/// COMMIT.
#[cfg(feature = "tokio-postgres")]
struct Commit;

#[cfg(feature = "tokio-postgres")]
impl<T, E: From<Error>> Finish<T, T, E> for Commit {
    async fn finish(&mut self, tx: tokio_postgres::Transaction<'_>, value: T) -> Result<T, E> {
        tx.commit().await.map_err(|e| E::from(Error::from(e)))?;
        Ok(value)
    }
}

/// The entry the body returned, written and committed in one round trip.
#[cfg(feature = "tokio-postgres")]
struct CommitWithEntry<'o>(&'o crate::source::write::Oplog);

#[cfg(feature = "tokio-postgres")]
impl<T, E: From<Error>>
    Finish<(T, crate::codec::entry::NewEntry), (T, crate::source::write::Written), E>
    for CommitWithEntry<'_>
{
    async fn finish(
        &mut self,
        tx: tokio_postgres::Transaction<'_>,
        (value, entry): (T, crate::codec::entry::NewEntry),
    ) -> Result<(T, crate::source::write::Written), E> {
        let written = self.0.write_and_commit_async(tx, &entry).await?;
        Ok((value, written))
    }
}

/// What follows an attempt.
enum Next<T, E> {
    /// The outcome to return.
    Done(Result<Retried<T>, E>),
    /// Another attempt, after this pause.
    Again(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost_race() -> Error {
        Error::TicketAlreadyRedeemed {
            name: "a".into(),
            version: 1,
        }
    }

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_micros(10),
            max_delay: Duration::from_micros(50),
        }
    }

    #[test]
    fn retries_retryable_errors_and_counts_attempts() {
        let got = fast(5)
            .run(|n| if n < 3 { Err(lost_race()) } else { Ok(n * 10) })
            .unwrap();
        assert_eq!(
            got,
            Retried {
                value: 30,
                attempts: 3
            }
        );
    }

    #[test]
    fn gives_up_after_the_bound() {
        let mut calls = 0;
        let err = fast(4)
            .run(|_| -> Result<()> {
                calls += 1;
                Err(lost_race())
            })
            .unwrap_err();
        assert_eq!(calls, 4);
        assert!(
            matches!(err, Error::RetriesExhausted { attempts: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn does_not_retry_other_errors() {
        let mut calls = 0;
        let err = fast(5)
            .run(|_| -> Result<()> {
                calls += 1;
                Err(Error::Config("x".into()))
            })
            .unwrap_err();
        assert_eq!(calls, 1);
        assert!(matches!(err, Error::Config(_)));
    }

    /// A caller's own error: a domain rule, or the oplog.
    #[derive(Debug)]
    enum Domain {
        Rule,
        Oplog(Error),
    }

    impl Retryable for Domain {
        fn is_retryable(&self) -> bool {
            matches!(self, Domain::Oplog(e) if e.is_retryable())
        }
    }

    #[test]
    fn a_callers_error_is_retried_only_when_it_wraps_a_retryable_one() {
        let mut calls = 0;
        let err = fast(5)
            .run(|_| -> Result<(), Domain> {
                calls += 1;
                Err(Domain::Rule)
            })
            .unwrap_err();
        assert_eq!(calls, 1);
        assert!(matches!(err, Domain::Rule));

        let got = fast(5)
            .run(|n| {
                if n < 3 {
                    Err(Domain::Oplog(lost_race()))
                } else {
                    Ok(n)
                }
            })
            .unwrap();
        assert_eq!(got.attempts, 3);

        // Out of attempts, the last error comes back as it was.
        let err = fast(2)
            .run(|_| -> Result<(), Domain> { Err(Domain::Oplog(lost_race())) })
            .unwrap_err();
        assert!(matches!(
            err,
            Domain::Oplog(Error::TicketAlreadyRedeemed { .. })
        ));
    }

    /// An error whose cause is another.
    #[derive(Debug)]
    struct Wrapped(Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transfer failed")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn boxed_errors_are_retryable_when_a_cause_is() {
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(lost_race());
        assert!(boxed.is_retryable());
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(Wrapped(lost_race()));
        assert!(boxed.is_retryable());
        let boxed: Box<dyn std::error::Error> = Box::new(Wrapped(Error::Config("x".into())));
        assert!(!boxed.is_retryable());
        let boxed: Box<dyn std::error::Error> =
            Box::new(std::io::Error::from(std::io::ErrorKind::Other));
        assert!(!boxed.is_retryable());
    }

    #[test]
    fn backoff_is_bounded_by_the_exponential_ceiling() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(8),
        };
        for _ in 0..200 {
            assert!(p.backoff(1) <= Duration::from_millis(1));
            assert!(p.backoff(3) <= Duration::from_millis(4));
            assert!(p.backoff(30) <= Duration::from_millis(8));
        }
    }
}
