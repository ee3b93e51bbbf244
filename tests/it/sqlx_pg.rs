//! Writing entries over sqlx, in an async service's own sqlx transaction:
//! the same guarantees as the other drivers.

use std::sync::Arc;

use oplog::{Error, Keyring, NewEntry, Oplog, RetryPolicy};
use sqlx::Connection as _;

use crate::support::{assert_listed_as_sync, assert_rows_match_entries, user, TestDb};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
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
async fn insert_user(tx: &mut sqlx::PgConnection, id: &str) -> oplog::Result<()> {
    let u = user(id);
    sqlx::query(
        "INSERT INTO demo_user (id, tenant_id, account_id, email, display_name) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&u.id)
    .bind(&u.tenant_id)
    .bind(&u.account_id)
    .bind(&u.email)
    .bind(&u.display_name)
    .execute(tx)
    .await?;
    Ok(())
}

#[test]
fn an_entry_written_in_a_sqlx_transaction_commits_with_it() {
    let db = TestDb::new();
    let log = oplog();
    runtime().block_on(async {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        insert_user(&mut tx, "u1").await.unwrap();
        let first = log
            .write_sqlx(&mut tx, &create_entry("tenant", "u1"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(first.seq, 1);

        // Rolled back: neither row nor entry; the seq is taken again.
        let mut tx = conn.begin().await.unwrap();
        insert_user(&mut tx, "u2").await.unwrap();
        log.write_sqlx(&mut tx, &create_entry("tenant", "u2"))
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        insert_user(&mut tx, "u3").await.unwrap();
        let third = log
            .write_sqlx(&mut tx, &create_entry("tenant", "u3"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(third.seq, 2);

        // Optimistic: a ticket read before another writer redeemed it loses.
        let mut other = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let ticket = log.ticket_sqlx(&mut tx, "tenant").await.unwrap();
        let mut theirs = other.begin().await.unwrap();
        insert_user(&mut theirs, "u4").await.unwrap();
        log.write_sqlx(&mut theirs, &create_entry("tenant", "u4"))
            .await
            .unwrap();
        theirs.commit().await.unwrap();
        let err = log
            .write_with_ticket_sqlx(&mut tx, &ticket, &create_entry("tenant", "u5"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::TicketAlreadyRedeemed { .. }) && err.is_retryable(),
            "{err}"
        );
        tx.rollback().await.unwrap();
        // A database error comes back as one, and says whether to retry.
        let err = Error::from(
            sqlx::query("SELECT 1/0")
                .execute(&mut conn)
                .await
                .unwrap_err(),
        );
        assert!(
            matches!(err, Error::Sqlx(_)) && !err.is_retryable(),
            "{err}"
        );
    });
    let entries = log.list(&mut db.client(), Some("tenant"), 0, None).unwrap();
    let ids: Vec<String> = entries
        .iter()
        .map(|e| e.operations[0].decode::<oplog::demo::User>().unwrap().id)
        .collect();
    assert_eq!(ids, ["u1", "u3", "u4"]);
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM demo_user"), 3);
}

/// Eight tasks, each with its own connection, write 200 entries each to one
/// aggregate, half of them pessimistic and half optimistic through
/// `RetryPolicy::sqlx`: seqs exactly 1..1600, the ticket at 1600, every
/// row with its entry.
#[test]
fn eight_sqlx_tasks_writing_one_aggregate_get_every_seq_once() {
    const TASKS: usize = 8;
    const WRITES: usize = 200;
    let db = TestDb::new();
    let log = Arc::new(oplog());
    let policy = RetryPolicy {
        max_attempts: 1_000,
        base_delay: std::time::Duration::from_millis(1),
        max_delay: std::time::Duration::from_millis(20),
    };
    // Optimistic writers read the ticket first: it must exist.
    log.ensure_ticket(&mut db.client(), "one").unwrap();
    runtime().block_on(async {
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for w in 0..WRITES {
                    let id = format!("t{t}-{w}");
                    policy
                        .sqlx(&mut conn, |tx| {
                            let (log, id) = (log.clone(), id.clone());
                            Box::pin(async move {
                                insert_user(tx, &id).await?;
                                let entry = create_entry("one", &id);
                                if t % 2 == 0 {
                                    log.write_sqlx(tx, &entry).await
                                } else {
                                    let ticket = log.ticket_sqlx(tx, "one").await?;
                                    log.write_with_ticket_sqlx(tx, &ticket, &entry).await
                                }
                            })
                        })
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    let total = i64::try_from(TASKS * WRITES).unwrap();
    assert_eq!(
        db.scalar::<i64>("SELECT version FROM oplog_ticket WHERE name = 'one'"),
        total
    );
    assert_eq!(
        db.scalar::<i64>(
            "SELECT count(DISTINCT seq) FROM oplog_entry WHERE aggregate_name = 'one' AND seq BETWEEN 1 AND 1600"
        ),
        total
    );
    // Read back over sqlx, over two pages, as the synchronous driver reads
    // them; and with a position and a limit.
    let (entries, limited) = runtime().block_on(async {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let all = log
            .list_sqlx(&mut conn, Some("one"), 0, None)
            .await
            .unwrap();
        let limited = log.list_sqlx(&mut conn, None, 1590, Some(5)).await.unwrap();
        (all, limited)
    });
    assert_listed_as_sync(&db, &log, "one", &entries);
    assert_eq!(
        limited.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1591, 1592, 1593, 1594, 1595]
    );
    assert_rows_match_entries(&db, &entries);
}
