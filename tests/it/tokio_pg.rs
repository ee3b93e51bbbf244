//! Writing entries over tokio-postgres, in an async service's own
//! transaction: the same guarantees as the synchronous drivers.

use std::sync::Arc;

use oplog::{Error, Keyring, NewEntry, Oplog};
use tokio_postgres::NoTls;

use crate::support::{assert_listed_as_sync, assert_rows_match_entries, user, TestDb};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A tokio-postgres client of `db`, its connection driven by the runtime.
async fn connect(db: &TestDb) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn oplog() -> Oplog {
    Oplog::new(oplog::demo::user_catalog(), Keyring::generate())
}

fn create_entry(aggregate: &str, id: &str) -> NewEntry {
    let mut entry = NewEntry::new(aggregate);
    entry.metadata("actor", "alice").create(&user(id)).unwrap();
    entry
}

/// Inserts the demo user `id` in `tx`.
async fn insert_user(tx: &tokio_postgres::Transaction<'_>, id: &str) {
    let u = user(id);
    tx.execute(oplog::demo::INSERT_USER, &u.params())
        .await
        .unwrap();
}

#[test]
fn an_entry_written_in_a_tokio_transaction_commits_with_it_and_reads_back() {
    let db = TestDb::new();
    let log = oplog();
    runtime().block_on(async {
        let mut client = connect(&db).await;
        let tx = client.transaction().await.unwrap();
        insert_user(&tx, "u1").await;
        let first = log
            .write_async(&tx, &create_entry("tenant", "u1"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(first.seq, 1);

        // Rolled back: neither the row nor the entry, and the ticket where
        // it was; the next entry takes the seq the rolled back one had.
        let tx = client.transaction().await.unwrap();
        insert_user(&tx, "u2").await;
        let lost = log
            .write_async(&tx, &create_entry("tenant", "u2"))
            .await
            .unwrap();
        assert_eq!(lost.seq, 2);
        tx.rollback().await.unwrap();

        let tx = client.transaction().await.unwrap();
        insert_user(&tx, "u3").await;
        let third = log
            .write_async(&tx, &create_entry("tenant", "u3"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(third.seq, 2);

        // Read back over the same driver; a limit and a position hold.
        let listed = log
            .list_async(&client, Some("tenant"), 0, None)
            .await
            .unwrap();
        let seqs: Vec<i64> = listed.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2]);
        let after = log.list_async(&client, None, 1, Some(5)).await.unwrap();
        assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
        let first = log
            .list_async(&client, Some("tenant"), 0, Some(1))
            .await
            .unwrap();
        assert_eq!(first.len(), 1);
    });
    let entries = log.list(&mut db.client(), Some("tenant"), 0, None).unwrap();
    let ids: Vec<String> = entries
        .iter()
        .map(|e| e.operations[0].decode::<oplog::demo::User>().unwrap().id)
        .collect();
    assert_eq!(ids, ["u1", "u3"]);
    assert_eq!(entries[0].metadata.get("actor"), Some("alice"));
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM demo_user"), 2);
    assert_eq!(
        db.scalar::<i64>("SELECT version FROM oplog_ticket WHERE name = 'tenant'"),
        2
    );
}

#[test]
fn optimistic_tokio_writes_lose_a_race_with_a_retryable_error() {
    let db = TestDb::new();
    let log = oplog();
    runtime().block_on(async {
        let mut a = connect(&db).await;
        let mut b = connect(&db).await;
        let tx = a.transaction().await.unwrap();
        let ticket = log.ticket_async(&tx, "global").await.unwrap();
        assert_eq!(ticket.version(), 0);

        // Another transaction redeems the ticket first.
        let other = b.transaction().await.unwrap();
        log.write_async(&other, &create_entry("global", "u1"))
            .await
            .unwrap();
        other.commit().await.unwrap();

        let err = log
            .write_with_ticket_async(&tx, &ticket, &create_entry("global", "u2"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::TicketAlreadyRedeemed { .. }) && err.is_retryable(),
            "{err}"
        );
        tx.rollback().await.unwrap();

        let tx = a.transaction().await.unwrap();
        let ticket = log.ticket_async(&tx, "global").await.unwrap();
        let written = log
            .write_with_ticket_async(&tx, &ticket, &create_entry("global", "u2"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(written.seq, 2);
        let err = log
            .ticket_async(&a.transaction().await.unwrap(), "nope")
            .await;
        assert!(matches!(err, Err(Error::TicketNotFound { .. })));
    });
}

/// Eight tasks, each on its own connection, write 200 entries each to one
/// aggregate, each entry with its domain row: seqs are exactly 1..1600, the
/// ticket is at 1600, and every row has its entry.
#[test]
fn eight_tasks_writing_one_aggregate_get_every_seq_once() {
    const TASKS: usize = 8;
    const WRITES: usize = 200;
    let db = TestDb::new();
    let log = Arc::new(oplog());
    let rt = runtime();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let mut client = connect(&db).await;
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for w in 0..WRITES {
                    let id = format!("t{t}-{w}");
                    let tx = client.transaction().await.unwrap();
                    insert_user(&tx, &id).await;
                    log.write_async(&tx, &create_entry("one", &id))
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    let total = i64::try_from(TASKS * WRITES).unwrap();
    crate::support::assert_seqs_exactly(&db, "one", total);
    // Over two pages, read by tokio-postgres, as the synchronous driver
    // reads them.
    let entries = rt.block_on(async {
        let client = connect(&db).await;
        log.list_async(&client, Some("one"), 0, None).await.unwrap()
    });
    assert_listed_as_sync(&db, &log, "one", &entries);
    assert_rows_match_entries(&db, &entries);
}

/// Eight tasks write 200 entries each to one aggregate in the optimistic
/// mode through `RetryPolicy::tokio_postgres`: lost races are retried
/// without blocking the runtime's threads, and every seq is taken once.
#[test]
fn optimistic_writers_retried_by_the_async_policy_get_every_seq_once() {
    const TASKS: usize = 8;
    const WRITES: usize = 200;
    let db = TestDb::new();
    let log = Arc::new(oplog());
    let policy = oplog::RetryPolicy {
        max_attempts: 1_000,
        base_delay: std::time::Duration::from_millis(1),
        max_delay: std::time::Duration::from_millis(20),
    };
    let retried = runtime().block_on(async {
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let mut client = connect(&db).await;
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut retried = 0;
                for w in 0..WRITES {
                    let id = format!("t{t}-{w}");
                    let done = policy
                        .tokio_postgres(&mut client, |tx| {
                            let (log, id) = (log.clone(), id.clone());
                            Box::pin(async move {
                                insert_user(tx, &id).await;
                                let ticket = log.ticket_async(tx, "global").await?;
                                let entry = create_entry("global", &id);
                                log.write_with_ticket_async(tx, &ticket, &entry).await
                            })
                        })
                        .await
                        .unwrap();
                    retried += done.attempts - 1;
                }
                retried
            }));
        }
        let mut retried = 0;
        for task in tasks {
            retried += task.await.unwrap();
        }
        retried
    });
    assert!(
        retried > 0,
        "eight optimistic writers on one ticket never lost a race"
    );
    let total = i64::try_from(TASKS * WRITES).unwrap();
    assert_eq!(
        db.scalar::<i64>("SELECT version FROM oplog_ticket WHERE name = 'global'"),
        total
    );
    assert_eq!(
        db.scalar::<i64>(
            "SELECT count(DISTINCT seq) FROM oplog_entry WHERE aggregate_name = 'global'"
        ),
        total
    );
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM demo_user"), total);
}

/// A future that is dropped at its `polls`-th wait, as a timeout or a
/// `select!` drops it; `None` when it was cancelled.
struct CancelAt<F> {
    inner: std::pin::Pin<Box<F>>,
    polls: usize,
}

impl<F: std::future::Future> std::future::Future for CancelAt<F> {
    type Output = Option<F::Output>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        if self.polls == 0 {
            return std::task::Poll::Ready(None);
        }
        self.polls -= 1;
        match self.inner.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

/// A write future dropped at every point where it waits, its transaction
/// then committed anyway (the worst a caller can do): each entry is in the
/// log whole or not at all, the log verifies clean, and its seqs have no
/// gap. The first write of a database also stores the catalog, so both
/// statements of that path are cut too.
#[test]
fn a_write_cancelled_at_any_wait_leaves_no_half_written_entry() {
    let db = TestDb::new();
    // Two logs with one key: the second has no ticket position cached.
    let key = || Keyring::from_key("k1", [7; 32]).unwrap();
    let logs = [
        Oplog::new(oplog::demo::user_catalog(), key()),
        Oplog::new(oplog::demo::user_catalog(), key()),
    ];
    let mut cancelled = 0;
    runtime().block_on(async {
        let mut client = connect(&db).await;
        for (round, log) in logs.iter().enumerate() {
            for polls in 0.. {
                let id = format!("r{round}-p{polls}");
                let tx = client.transaction().await.unwrap();
                insert_user(&tx, &id).await;
                let entry = create_entry("tenant", &id);
                let write = CancelAt {
                    inner: Box::pin(log.write_async(&tx, &entry)),
                    polls,
                };
                let done = write.await;
                tx.commit().await.unwrap();
                match done {
                    Some(written) => {
                        written.unwrap();
                        break;
                    }
                    None => cancelled += 1,
                }
            }
            // The next log's first write guesses the ticket wrong (its
            // cache is empty) and is cut on its second path too.
        }
    });
    assert!(cancelled >= 2, "the write never waited: {cancelled}");
    let report = oplog::verify(&logs[0], &db.url, &oplog::VerifyOptions::default()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let (count, top): (i64, i64) = {
        let row = db
            .client()
            .query_one(
                "SELECT count(*), coalesce(max(seq), 0) FROM oplog_entry WHERE aggregate_name = 'tenant'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(count, top, "seqs without a gap");
    assert_eq!(
        db.scalar::<i64>("SELECT version FROM oplog_ticket WHERE name = 'tenant'"),
        top
    );
    // Every entry has all its metadata.
    assert_eq!(
        db.scalar::<i64>(
            "SELECT count(*) FROM oplog_entry e WHERE NOT EXISTS \
             (SELECT 1 FROM oplog_metadata m WHERE m.entry_id = e.id)"
        ),
        0
    );
}

/// Whether `client` is in a transaction block: a statement sent alone
/// (one simple query) starts its own transaction, so its start is the
/// transaction's, and only an open block started earlier differs.
async fn in_transaction(client: &tokio_postgres::Client) -> bool {
    let rows = client
        .simple_query("SELECT now() <> statement_timestamp()")
        .await
        .unwrap();
    rows.iter().any(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("t"),
        _ => false,
    })
}

/// A tokio-postgres client of `db` whose connection keeps every notice
/// the server sends (a ROLLBACK outside a transaction draws a warning).
async fn connect_keeping_notices(
    db: &TestDb,
) -> (tokio_postgres::Client, Arc<std::sync::Mutex<Vec<String>>>) {
    let (client, mut connection) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    let notices = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = notices.clone();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notice(n) = message {
                kept.lock().unwrap().push(n.message().to_string());
            }
        }
    });
    (client, notices)
}

/// `write_and_commit_async`: the first write of an aggregate goes the usual
/// way; later ones go with COMMIT, sealed after the remembered position.
/// When another writer moved the ticket meanwhile, the append aborts, the
/// COMMIT behind it rolls back (the domain row of that transaction is not
/// committed), the error is retryable, and the next write goes the usual
/// way again. No transaction is ended twice (no warning from the server).
#[test]
fn an_entry_sent_with_commit_commits_with_its_rows_and_a_stale_position_commits_nothing() {
    let db = TestDb::new();
    let key = || Keyring::from_key("k1", [7; 32]).unwrap();
    let (a_log, b_log) = (
        Oplog::new(oplog::demo::user_catalog(), key()),
        Oplog::new(oplog::demo::user_catalog(), key()),
    );
    let notices = runtime().block_on(async {
        let (mut a, notices) = connect_keeping_notices(&db).await;
        let b = connect(&db).await;
        let mut seqs = Vec::new();
        for id in ["u1", "u2", "u3"] {
            let tx = a.transaction().await.unwrap();
            insert_user(&tx, id).await;
            let written = a_log
                .write_and_commit_async(tx, &create_entry("tenant", id))
                .await
                .unwrap();
            seqs.push(written.seq);
        }
        assert_eq!(seqs, [1, 2, 3]);

        // Another process writes seq 4: a's remembered position is stale.
        let mut b = b;
        let tx = b.transaction().await.unwrap();
        insert_user(&tx, "b4").await;
        b_log
            .write_async(&tx, &create_entry("tenant", "b4"))
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let tx = a.transaction().await.unwrap();
        insert_user(&tx, "lost").await;
        let err = a_log
            .write_and_commit_async(tx, &create_entry("tenant", "lost"))
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert_eq!(err.sqlstate(), Some("40001"), "{err}");
        assert!(err.to_string().contains("at version 4"), "{err}");

        // The connection is usable, outside any transaction, and the next
        // write learns the position.
        let tx = a.transaction().await.unwrap();
        insert_user(&tx, "u5").await;
        let written = a_log
            .write_and_commit_async(tx, &create_entry("tenant", "u5"))
            .await
            .unwrap();
        assert_eq!(written.seq, 5);
        let tx = a.transaction().await.unwrap();
        insert_user(&tx, "u6").await;
        let written = a_log
            .write_and_commit_async(tx, &create_entry("tenant", "u6"))
            .await
            .unwrap();
        assert_eq!(written.seq, 6);
        assert!(!in_transaction(&a).await, "a transaction is still open");
        let notices = notices.lock().unwrap().clone();
        notices
    });
    assert!(notices.is_empty(), "the server warned: {notices:?}");
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM demo_user WHERE id = 'lost'"),
        0,
        "the rolled back transaction's row"
    );
    let entries = a_log
        .list(&mut db.client(), Some("tenant"), 0, None)
        .unwrap();
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_rows_match_entries(&db, &entries);
    let report = oplog::verify(&a_log, &db.url, &oplog::VerifyOptions::default()).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// Eight tasks write 200 entries each to one aggregate, each entry sent
/// with its COMMIT through `RetryPolicy::tokio_postgres_with_entry`: the
/// stale positions contention causes abort and are retried, every seq is
/// taken once, and every row has its entry.
#[test]
fn eight_tasks_committing_with_their_entries_get_every_seq_once() {
    const TASKS: usize = 8;
    const WRITES: usize = 200;
    let db = TestDb::new();
    let log = Arc::new(oplog());
    let policy = oplog::RetryPolicy {
        max_attempts: 1_000,
        base_delay: std::time::Duration::from_millis(1),
        max_delay: std::time::Duration::from_millis(20),
    };
    let rt = runtime();
    let retried = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let mut client = connect(&db).await;
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut retried = 0;
                for w in 0..WRITES {
                    let id = format!("t{t}-{w}");
                    let done = policy
                        .tokio_postgres_with_entry(&mut client, &log, |tx| {
                            let id = id.clone();
                            Box::pin(async move {
                                insert_user(tx, &id).await;
                                Ok::<_, Error>((id.clone(), create_entry("one", &id)))
                            })
                        })
                        .await
                        .unwrap();
                    assert_eq!(done.value.0, id);
                    retried += done.attempts - 1;
                }
                retried
            }));
        }
        let mut retried = 0;
        for task in tasks {
            retried += task.await.unwrap();
        }
        retried
    });
    assert!(retried > 0, "eight writers on one ticket never aborted");
    let total = i64::try_from(TASKS * WRITES).unwrap();
    crate::support::assert_seqs_exactly(&db, "one", total);
    let entries = rt.block_on(async {
        let client = connect(&db).await;
        log.list_async(&client, Some("one"), 0, None).await.unwrap()
    });
    assert_rows_match_entries(&db, &entries);
}

/// `write_and_commit_async` dropped at every point where it waits, on the
/// usual path (the first write, which also stores the catalog) and on the
/// path with COMMIT: each transaction is committed whole or not at all,
/// the connection stays usable, and the log verifies clean.
#[test]
fn a_write_with_commit_cancelled_at_any_wait_commits_all_or_nothing() {
    let db = TestDb::new();
    let log = oplog();
    let mut cancelled = 0;
    runtime().block_on(async {
        let mut client = connect(&db).await;
        for round in 0..3 {
            for polls in 0.. {
                let id = format!("r{round}-p{polls}");
                let tx = client.transaction().await.unwrap();
                insert_user(&tx, &id).await;
                let entry = create_entry("tenant", &id);
                let write = CancelAt {
                    inner: Box::pin(log.write_and_commit_async(tx, &entry)),
                    polls,
                };
                match write.await {
                    Some(written) => {
                        written.unwrap();
                        break;
                    }
                    None => cancelled += 1,
                }
                // Whatever was cut, the connection answers, outside any
                // transaction.
                assert!(
                    !in_transaction(&client).await,
                    "cut at {polls}: a transaction is still open"
                );
            }
        }
    });
    assert!(cancelled >= 4, "the write never waited: {cancelled}");
    let report = oplog::verify(&log, &db.url, &oplog::VerifyOptions::default()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let entries = log.list(&mut db.client(), Some("tenant"), 0, None).unwrap();
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=i64::try_from(seqs.len()).unwrap()).collect::<Vec<_>>()
    );
    assert!(seqs.len() >= 3);
    assert_rows_match_entries(&db, &entries);
}

/// The write path's refusals and the read path's findings, through both
/// async drivers, as the synchronous suite has them: a bad entry or an
/// unknown type is refused before anything is written; a tampered
/// ciphertext or metadata value, and an unknown key, are errors naming the
/// entry when read back.
#[test]
fn bad_entries_tampering_and_unknown_keys_read_the_same_through_both_async_drivers() {
    use sqlx::Connection as _;
    let db = TestDb::new();
    let log = oplog();
    let narrow = Oplog::new(
        oplog::demo::catalog_of(&["demo.v1.Account"]),
        Keyring::generate(),
    );
    let is_unknown_user =
        |e: &Error| matches!(e, Error::UnknownType { type_name } if type_name == "demo.v1.User");
    runtime().block_on(async {
        let mut client = connect(&db).await;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let tx = client.transaction().await.unwrap();
        let err = log
            .write_async(&tx, &create_entry("", "u1"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("aggregate name \"\""), "{err}");
        let err = log
            .write_async(&tx, &NewEntry::new("agg"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("has no operation"), "{err}");
        let err = narrow
            .write_async(&tx, &create_entry("agg", "u1"))
            .await
            .unwrap_err();
        assert!(is_unknown_user(&err), "{err}");
        let err = narrow
            .write_and_commit_async(tx, &create_entry("agg", "u1"))
            .await
            .unwrap_err();
        assert!(is_unknown_user(&err), "{err}");
        let mut tx = conn.begin().await.unwrap();
        let err = log
            .write_sqlx(&mut tx, &NewEntry::new("agg"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("has no operation"), "{err}");
        let err = narrow
            .write_sqlx(&mut tx, &create_entry("agg", "u1"))
            .await
            .unwrap_err();
        assert!(is_unknown_user(&err), "{err}");
        drop(tx);

        for id in ["u1", "u2"] {
            let tx = client.transaction().await.unwrap();
            log.write_async(&tx, &create_entry("agg", id))
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    });
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM oplog_entry"), 2);

    // Reads back through both drivers, as `log` reads it.
    let read = |log: &Oplog| -> [oplog::Result<Vec<oplog::Entry>>; 2] {
        runtime().block_on(async {
            let client = connect(&db).await;
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            [
                log.list_async(&client, Some("agg"), 0, None).await,
                log.list_sqlx(&mut conn, Some("agg"), 0, None).await,
            ]
        })
    };
    for listed in read(&log) {
        assert_eq!(listed.unwrap().len(), 2);
    }
    let stranger = oplog();
    for listed in read(&stranger) {
        let err = listed.unwrap_err();
        assert!(
            matches!(&err, Error::UnknownKey { key_id, .. } if key_id == log.wrapper().key_id()),
            "{err}"
        );
        assert!(err.to_string().contains("seq 1"), "{err}");
    }
    crate::support::superuser_exec(
        &db,
        "UPDATE oplog_entry SET data = overlay(data placing '\\x00' from length(data) - 3 for 1) WHERE seq = 2",
    );
    for listed in read(&log) {
        let err = listed.unwrap_err();
        assert!(
            matches!(&err, Error::Decryption { entry } if entry.aggregate == "agg" && entry.seq == 2),
            "{err}"
        );
    }
    crate::support::superuser_exec(
        &db,
        "UPDATE oplog_metadata SET value = 'mallory' WHERE key = 'actor' \
         AND entry_id = (SELECT id FROM oplog_entry WHERE seq = 1)",
    );
    for listed in read(&log) {
        let err = listed.unwrap_err();
        assert!(
            matches!(&err, Error::Decryption { entry } if entry.seq == 1),
            "{err}"
        );
    }
}
