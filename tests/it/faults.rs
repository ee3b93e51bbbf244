//! Faults on the write path: the writer's backend is terminated
//! (`pg_terminate_backend` from another connection), or its connection is
//! cut (a proxy between it and the server drops both sockets), at each
//! point of a write: before the entry statement, while the statement waits
//! for the ticket's lock, after the statement and before COMMIT, and
//! during COMMIT (while a deferred constraint trigger sleeps).
//!
//! Afterwards the domain row and the entry are both there or both absent;
//! every ticket agrees with its entries (version = max(seq), the chain
//! head is the last entry's chain) and the log verifies clean; the next
//! writer succeeds with the next seq; and `Oplog::committed`, asked on a
//! fresh connection, says whether the entry committed. The one case where
//! it did is the one where the client cannot know: the connection was cut
//! while the server was committing, and the commit went through.
//!
//! The writes go through rust-postgres; one case runs through diesel's
//! `PgConnection::transaction` as well.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use oplog::{verify, Keyring, NewEntry, Oplog, VerifyOptions};
use postgres::config::Host;
use postgres::{Client, NoTls};

use crate::support::{user, TestDb};

/// Where in the write the fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    /// After the domain row, before the entry statement.
    BeforeStatement,
    /// While the entry statement waits for the ticket's lock, held by
    /// another session.
    DuringStatement,
    /// After the entry statement returned, before COMMIT.
    AfterStatement,
    /// During COMMIT, while a deferred constraint trigger sleeps.
    DuringCommit,
}

/// What happens to the writer's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `pg_terminate_backend` from another session.
    Terminate,
    /// The TCP connection is cut between client and server.
    Cut,
}

const AGGREGATE: &str = "agg";

/// A TCP proxy for one connection to the server, whose sockets can be cut.
struct Proxy {
    port: u16,
    sockets: mpsc::Receiver<(TcpStream, TcpStream)>,
}

impl Proxy {
    fn start(server: (String, u16)) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, sockets) = mpsc::channel();
        thread::spawn(move || {
            let (client, _) = listener.accept().unwrap();
            let upstream = TcpStream::connect(server).unwrap();
            tx.send((client.try_clone().unwrap(), upstream.try_clone().unwrap()))
                .unwrap();
            let pipe = |mut from: TcpStream, mut to: TcpStream| {
                thread::spawn(move || {
                    let _ = io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Both);
                })
            };
            pipe(client.try_clone().unwrap(), upstream.try_clone().unwrap());
            pipe(upstream, client);
        });
        Proxy { port, sockets }
    }

    /// Drops the connection in both directions, as a failed network would.
    fn cut(&self) {
        let (client, upstream) = self.sockets.recv_timeout(Duration::from_secs(10)).unwrap();
        // Shutting one side down makes the pipe threads shut the other down
        // too, so the second call may find it done already.
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
    }
}

/// A connection to `db`, directly or through a new proxy.
fn connect(db: &TestDb, fault: Fault) -> (Client, Option<Proxy>) {
    match fault {
        Fault::Terminate => (db.client(), None),
        Fault::Cut => {
            let parsed = postgres::Config::from_str(&db.url).unwrap();
            let host = match parsed.get_hosts().first() {
                Some(Host::Tcp(h)) => h.clone(),
                _ => "127.0.0.1".to_string(),
            };
            let port = parsed.get_ports().first().copied().unwrap_or(5432);
            let proxy = Proxy::start((host, port));
            let mut config = postgres::Config::new();
            config
                .host("127.0.0.1")
                .port(proxy.port)
                .user(parsed.get_user().unwrap_or("postgres"))
                .dbname(parsed.get_dbname().unwrap());
            (config.connect(NoTls).unwrap(), Some(proxy))
        }
    }
}

/// Polls pg_stat_activity until `pid`'s backend waits on `wait_event`
/// (or, for `None`, is gone).
fn wait_for_backend(db: &TestDb, pid: i32, wait_event: Option<&str>) {
    let mut c = db.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row = c
            .query_opt(
                "SELECT coalesce(wait_event, '') FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap();
        let reached = match (wait_event, row) {
            (None, None) => true,
            (Some(event), Some(r)) => r.get::<_, String>(0) == event,
            _ => false,
        };
        if reached {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backend {pid} never reached {wait_event:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

fn insert_user(tx: &mut postgres::Transaction<'_>, id: &str) -> Result<(), postgres::Error> {
    tx.execute(
        "INSERT INTO demo_user (id, tenant_id, account_id, email) VALUES ($1, 't1', 'a1', $2)",
        &[&id, &format!("{id}@example.com")],
    )
    .map(|_| ())
}

fn entry_for(id: &str) -> NewEntry {
    let mut entry = NewEntry::new(AGGREGATE);
    entry.metadata("actor", "faulty").create(&user(id)).unwrap();
    entry
}

/// Writes the user `id` and its entry, committed.
fn write_ok(log: &Oplog, client: &mut Client, id: &str) -> i64 {
    let mut tx = client.transaction().unwrap();
    insert_user(&mut tx, id).unwrap();
    let written = log.write(&mut tx, &entry_for(id)).unwrap();
    tx.commit().unwrap();
    written.seq
}

/// Every ticket agrees with its entries and the log verifies clean.
fn assert_consistent(db: &TestDb, log: &Oplog) {
    let mut c = db.client();
    let rows = c
        .query(
            "SELECT t.name, t.version, t.chain, \
                    (SELECT max(seq) FROM oplog_entry e WHERE e.aggregate_name = t.name), \
                    (SELECT chain FROM oplog_entry e WHERE e.aggregate_name = t.name ORDER BY seq DESC LIMIT 1) \
             FROM oplog_ticket t WHERE t.version > 0",
            &[],
        )
        .unwrap();
    for r in rows {
        let name: String = r.get(0);
        let version: i64 = r.get(1);
        let chain: Vec<u8> = r.get(2);
        assert_eq!(Some(version), r.get::<_, Option<i64>>(3), "ticket {name}");
        assert_eq!(Some(chain), r.get::<_, Option<Vec<u8>>>(4), "ticket {name}");
    }
    let report = verify(log, &db.url, &VerifyOptions::default()).unwrap();
    assert!(report.is_clean(), "{:?}", report.findings);
}

/// Runs one write with `fault` at `point` and checks everything after it.
/// Returns whether the entry committed.
fn fault_write(point: Point, fault: Fault) -> bool {
    let db = TestDb::new();
    db.client()
        .batch_execute(
            "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.id LIKE 'slow-%' THEN
                     PERFORM pg_sleep(split_part(NEW.id, '-', 2)::float8);
                 END IF;
                 RETURN NULL;
             END $$;
             CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON demo_user
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();",
        )
        .unwrap();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    let mut admin = db.client();
    // A history, written by this process, so its ticket cache holds a
    // position the failed write may leave stale.
    write_ok(&log, &mut admin, "h1");
    write_ok(&log, &mut admin, "h2");

    // The user id says how long COMMIT sleeps: long enough to be killed
    // in, or (with a cut connection) short, since the server goes on and
    // commits.
    let id = match (point, fault) {
        (Point::DuringCommit, Fault::Terminate) => "slow-60-t".to_string(),
        (Point::DuringCommit, Fault::Cut) => "slow-1.5-c".to_string(),
        _ => format!("victim-{point:?}-{fault:?}"),
    };
    let entry = entry_for(&id);
    let uuid = entry.uuid();
    let (mut client, proxy) = connect(&db, fault);
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);

    // Another session holds the ticket's lock, so the entry statement waits.
    let mut blocker = db.client();
    let mut blocker_tx = blocker.transaction().unwrap();
    if point == Point::DuringStatement {
        blocker_tx
            .execute(
                "SELECT 1 FROM oplog_ticket WHERE name = $1 FOR UPDATE",
                &[&AGGREGATE],
            )
            .unwrap();
    }

    let (at_point, go) = (mpsc::channel::<()>(), mpsc::channel::<()>());
    let (reached, resume) = (at_point.0, go.1);
    let victim = {
        let log = log.clone();
        let id = id.clone();
        thread::spawn(move || -> Result<(), String> {
            let mut tx = client.transaction().map_err(|e| e.to_string())?;
            insert_user(&mut tx, &id).map_err(|e| e.to_string())?;
            if point == Point::BeforeStatement {
                reached.send(()).unwrap();
                resume.recv().unwrap();
            }
            log.write(&mut tx, &entry).map_err(|e| e.to_string())?;
            if point == Point::AfterStatement {
                reached.send(()).unwrap();
                resume.recv().unwrap();
            }
            tx.commit().map_err(|e| e.to_string())
        })
    };
    match point {
        Point::BeforeStatement | Point::AfterStatement => at_point.1.recv().unwrap(),
        Point::DuringStatement => wait_for_backend(&db, pid, Some("transactionid")),
        Point::DuringCommit => wait_for_backend(&db, pid, Some("PgSleep")),
    }
    match fault {
        Fault::Terminate => {
            let done: bool = admin
                .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                .unwrap()
                .get(0);
            assert!(done);
        }
        Fault::Cut => proxy.as_ref().unwrap().cut(),
    }
    let _ = go.0.send(());
    let outcome = victim.join().unwrap();
    assert!(
        outcome.is_err(),
        "{point:?}/{fault:?}: the client sees its write fail"
    );
    blocker_tx.rollback().unwrap();
    // The server is done with the writer's session (and its locks).
    wait_for_backend(&db, pid, None);

    // Both or neither; and `committed` on a fresh connection knows which.
    let mut fresh = db.client();
    let committed = log.committed(&mut fresh, uuid).unwrap();
    let rows: i64 = fresh
        .query_one("SELECT count(*) FROM demo_user WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(
        rows,
        i64::from(committed.is_some()),
        "{point:?}/{fault:?}: the domain row and the entry are both there or both absent"
    );
    if let Some(entry_id) = committed {
        let seq: i64 = fresh
            .query_one("SELECT seq FROM oplog_entry WHERE id = $1", &[&entry_id])
            .unwrap()
            .get(0);
        assert_eq!(seq, 3);
    }
    assert_consistent(&db, &log);

    // The next writer, through the same oplog and its possibly stale
    // ticket cache, gets the next seq.
    let expected = if committed.is_some() { 4 } else { 3 };
    assert_eq!(write_ok(&log, &mut fresh, "next"), expected);
    assert_consistent(&db, &log);
    committed.is_some()
}

#[test]
fn terminated_before_the_entry_statement_leaves_neither_row_nor_entry() {
    assert!(!fault_write(Point::BeforeStatement, Fault::Terminate));
}

#[test]
fn terminated_while_the_entry_statement_waits_for_the_ticket_leaves_neither() {
    assert!(!fault_write(Point::DuringStatement, Fault::Terminate));
}

#[test]
fn terminated_after_the_entry_statement_before_commit_leaves_neither() {
    assert!(!fault_write(Point::AfterStatement, Fault::Terminate));
}

#[test]
fn terminated_during_commit_leaves_neither() {
    assert!(!fault_write(Point::DuringCommit, Fault::Terminate));
}

#[test]
fn connection_cut_before_the_entry_statement_leaves_neither() {
    assert!(!fault_write(Point::BeforeStatement, Fault::Cut));
}

#[test]
fn connection_cut_while_the_entry_statement_waits_for_the_ticket_leaves_neither() {
    assert!(!fault_write(Point::DuringStatement, Fault::Cut));
}

#[test]
fn connection_cut_after_the_entry_statement_before_commit_leaves_neither() {
    assert!(!fault_write(Point::AfterStatement, Fault::Cut));
}

#[test]
fn connection_cut_during_commit_commits_both_and_committed_says_so() {
    assert!(fault_write(Point::DuringCommit, Fault::Cut));
}

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

#[test]
fn diesel_writer_terminated_after_the_entry_statement_leaves_neither() {
    use diesel::{Connection as _, RunQueryDsl as _};
    let db = TestDb::new();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    let mut admin = db.client();
    write_ok(&log, &mut admin, "h1");
    let entry = entry_for("diesel-victim");
    let uuid = entry.uuid();
    let mut conn = db.diesel();
    let pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Pid>(&mut conn)
        .unwrap()
        .pid;
    let (reached, at_point) = mpsc::channel::<()>();
    let (go, resume) = mpsc::channel::<()>();
    let victim = {
        let log = log.clone();
        thread::spawn(move || {
            conn.transaction::<_, oplog::Error, _>(|conn| {
                diesel::sql_query(
                    "INSERT INTO demo_user (id, tenant_id, account_id, email) \
                     VALUES ('diesel-victim', 't1', 'a1', 'd@example.com')",
                )
                .execute(conn)?;
                log.write(conn, &entry)?;
                reached.send(()).unwrap();
                resume.recv().unwrap();
                Ok(())
            })
        })
    };
    at_point.recv().unwrap();
    let done: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap()
        .get(0);
    assert!(done);
    go.send(()).unwrap();
    assert!(victim.join().unwrap().is_err(), "the commit fails");
    wait_for_backend(&db, pid, None);

    let mut fresh = db.client();
    assert_eq!(log.committed(&mut fresh, uuid).unwrap(), None);
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM demo_user WHERE id = 'diesel-victim'"),
        0
    );
    assert_consistent(&db, &log);
    assert_eq!(write_ok(&log, &mut fresh, "next"), 2);
    assert_consistent(&db, &log);
}
