//! Running a transaction again when it lost a race.
//!
//! [`RetryPolicy`] runs a caller's closure in a fresh transaction, commits,
//! and on a retryable failure ([`Error::is_retryable`]: a lost ticket race, a
//! serialization failure, a deadlock) rolls back, sleeps with jittered
//! exponential backoff and tries again, up to a bound.

use std::time::Duration;

use diesel::{Connection as _, PgConnection};
use rand::Rng;

use crate::error::{Error, Result};

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

    /// Calls `attempt(n)` for n = 1, 2, ... until it succeeds, fails with a
    /// non-retryable error, or the attempts run out
    /// ([`Error::RetriesExhausted`]).
    pub fn run<T>(&self, mut attempt: impl FnMut(u32) -> Result<T>) -> Result<Retried<T>> {
        let max = self.max_attempts.max(1);
        let mut n = 1;
        loop {
            match attempt(n) {
                Ok(value) => return Ok(Retried { value, attempts: n }),
                Err(e) if e.is_retryable() && n < max => {
                    std::thread::sleep(self.backoff(n));
                    n += 1;
                }
                Err(e) if e.is_retryable() => {
                    return Err(Error::RetriesExhausted {
                        attempts: n,
                        last: Box::new(e),
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `body` in a rust-postgres transaction on `client`, committing on
    /// success; a retryable failure (in `body` or at commit) rolls back and
    /// runs it again.
    ///
    /// ```no_run
    /// use oplog::{demo::User, Keyring, NewEntry, Oplog, RetryPolicy, TypeCatalog};
    ///
    /// let oplog = Oplog::new(TypeCatalog::demo(), Keyring::generate());
    /// let mut client = postgres::Client::connect("host=127.0.0.1 user=postgres", postgres::NoTls)?;
    /// let done = RetryPolicy::default().postgres(&mut client, |tx| {
    ///     tx.execute("INSERT INTO demo_user (id, email) VALUES ($1, $2)", &[&"u1", &"a@example.com"])?;
    ///     let mut entry = NewEntry::new("tenant-1");
    ///     entry.create(&User { id: "u1".into(), email: "a@example.com".into(), ..Default::default() })?;
    ///     oplog.write(tx, &entry)
    /// })?;
    /// println!("seq {} after {} attempts", done.value.seq, done.attempts);
    /// # Ok::<(), oplog::Error>(())
    /// ```
    pub fn postgres<T>(
        &self,
        client: &mut postgres::Client,
        mut body: impl FnMut(&mut postgres::Transaction<'_>) -> Result<T>,
    ) -> Result<Retried<T>> {
        self.run(|_| {
            let mut tx = client.transaction()?;
            let value = body(&mut tx)?;
            tx.commit()?;
            Ok(value)
        })
    }

    /// Runs `body` in a diesel transaction on `conn`, committing on success;
    /// a retryable failure rolls back and runs it again.
    pub fn diesel<T>(
        &self,
        conn: &mut PgConnection,
        mut body: impl FnMut(&mut PgConnection) -> Result<T>,
    ) -> Result<Retried<T>> {
        self.run(|_| conn.transaction(|c| body(c)))
    }
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
                Err(Error::InvalidEntry("x".into()))
            })
            .unwrap_err();
        assert_eq!(calls, 1);
        assert!(matches!(err, Error::InvalidEntry(_)));
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
