//! Test support: a fresh database per test, created from DATABASE_URL (or
//! the local server) and dropped afterwards.

use std::sync::atomic::{AtomicU32, Ordering};

use diesel::Connection as _;
use postgres::{Client, NoTls};

/// Server URL for administrative connections.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A database that exists for the lifetime of the value.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// An empty database.
    pub fn empty() -> TestDb {
        let name = format!(
            "oplog_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut admin =
            Client::connect(&admin_url(), NoTls).expect("connect to PostgreSQL (set DATABASE_URL)");
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .unwrap();
        let url = oplog::bench::with_database(&admin_url(), &name);
        TestDb { name, url }
    }

    /// A migrated database with the demo tables.
    pub fn new() -> TestDb {
        let db = TestDb::empty();
        oplog::migrate_url(&db.url).unwrap();
        db.client().batch_execute(oplog::demo::SCHEMA).unwrap();
        db
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.url, NoTls).unwrap()
    }

    pub fn diesel(&self) -> diesel::PgConnection {
        diesel::PgConnection::establish(&self.url).unwrap()
    }

    /// One value from a query without parameters.
    pub fn scalar<T: for<'a> postgres::types::FromSql<'a>>(&self, sql: &str) -> T {
        self.client().query_one(sql, &[]).unwrap().get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&admin_url(), NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// Runs statements with triggers disabled, as a superuser could.
pub fn superuser_exec(db: &TestDb, sql: &str) {
    let mut c = db.client();
    c.batch_execute(&format!("SET session_replication_role = replica; {sql}"))
        .unwrap();
}

/// A demo user with every field set.
pub fn user(id: &str) -> oplog::demo::User {
    oplog::demo::User {
        id: id.into(),
        tenant_id: "t1".into(),
        account_id: "a1".into(),
        email: format!("{id}@example.com"),
        display_name: format!("User {id}"),
        phone: Some("+1 555 0100".into()),
        age: Some(42),
        active: true,
        avatar: vec![1, 2, 3],
    }
}

/// Writes, for each id, a user row and the entry that creates it, each in
/// its own transaction, on aggregate `aggregate`.
pub fn create_users(
    url: &str,
    log: &oplog::Oplog,
    aggregate: &str,
    ids: impl IntoIterator<Item = String>,
) -> Vec<oplog::Written> {
    let mut client = Client::connect(url, NoTls).unwrap();
    let mut written = Vec::new();
    for id in ids {
        let u = user(&id);
        let mut tx = client.transaction().unwrap();
        tx.execute(oplog::demo::INSERT_USER, &u.params()).unwrap();
        let mut entry = oplog::NewEntry::new(aggregate);
        entry.metadata("actor", "alice").create(&u).unwrap();
        written.push(log.write(&mut tx, &entry).unwrap());
        tx.commit().unwrap();
    }
    written
}

/// Every row of `table` as JSON text, in primary key order.
pub fn table_rows(url: &str, table: &str) -> Vec<String> {
    Client::connect(url, NoTls)
        .unwrap()
        .query(
            &format!("SELECT row_to_json(t)::text FROM {table} t ORDER BY id"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Polls `check` every 20 ms until it holds or `secs` pass; says whether it
/// held.
pub fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    check()
}

/// The problems of one plan node and its children: a sequential scan of
/// the entries, or a sort of rows read from them. Returns whether the node
/// passes on rows read from the entries (a subplan's rows are used for one
/// value, not passed on).
pub fn scan_problems(node: &serde_json::Value, problems: &mut Vec<String>) -> bool {
    let kind = node["Node Type"].as_str().unwrap_or("");
    let mut reads_entries = node["Relation Name"] == "oplog_entry";
    if reads_entries && kind == "Seq Scan" {
        problems.push("a sequential scan of oplog_entry".into());
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        let passed_on = scan_problems(child, problems);
        let relation = child["Parent Relationship"].as_str().unwrap_or("");
        reads_entries |= passed_on && relation != "SubPlan" && relation != "InitPlan";
    }
    if reads_entries && kind == "Sort" {
        problems.push("a sort of oplog_entry rows".into());
    }
    reads_entries
}

/// Asserts that the users `entries` create are exactly the rows of
/// `demo_user` in `db`: every domain row has its entry and every entry its
/// row.
pub fn assert_rows_match_entries(db: &TestDb, entries: &[oplog::Entry]) {
    let mut logged: Vec<String> = entries
        .iter()
        .map(|e| e.operations[0].decode::<oplog::demo::User>().unwrap().id)
        .collect();
    let mut rows: Vec<String> = db
        .client()
        .query("SELECT id FROM demo_user", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    logged.sort();
    rows.sort();
    assert_eq!(logged, rows, "every domain row has its entry and no other");
}

/// Asserts that `entries`, listed by an async driver, are those the
/// synchronous driver lists for `aggregate`, in the same order.
pub fn assert_listed_as_sync(
    db: &TestDb,
    log: &oplog::Oplog,
    aggregate: &str,
    entries: &[oplog::Entry],
) {
    let sync: Vec<(i64, uuid::Uuid)> = log
        .list(&mut db.client(), Some(aggregate), 0, None)
        .unwrap()
        .iter()
        .map(|e| (e.seq, e.uuid))
        .collect();
    let listed: Vec<(i64, uuid::Uuid)> = entries.iter().map(|e| (e.seq, e.uuid)).collect();
    assert_eq!(listed, sync);
}

/// Asserts that `aggregate` holds exactly the seqs 1..=`total`, once each,
/// and that its ticket is at `total`.
pub fn assert_seqs_exactly(db: &TestDb, aggregate: &str, total: i64) {
    let seqs: Vec<i64> = db
        .client()
        .query(
            "SELECT seq FROM oplog_entry WHERE aggregate_name = $1 ORDER BY seq",
            &[&aggregate],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    let version: i64 = db
        .client()
        .query_one(
            "SELECT version FROM oplog_ticket WHERE name = $1",
            &[&aggregate],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, total);
}

/// `writers` threads each write `writes` users to the aggregate
/// `<prefix>-<w>`, while the process `command` makes is started and killed
/// with SIGKILL after 50 to 305 ms, again and again until the writers are
/// done. Returns how many times it was killed.
pub fn kill_repeatedly_while_writing(
    db: &TestDb,
    log: &oplog::Oplog,
    (writers, writes): (usize, usize),
    prefix: &str,
    command: impl Fn() -> std::process::Command,
) -> u32 {
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let url = db.url.clone();
                s.spawn(move || {
                    for i in 0..writes {
                        create_users(&url, log, &format!("{prefix}-{w}"), [format!("u{w}-{i}")]);
                    }
                })
            })
            .collect();
        let mut kills = 0;
        while threads.iter().any(|t| !t.is_finished()) {
            let mut child = command()
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let pause = 50 + u64::from(uuid::Uuid::new_v4().as_bytes()[0]);
            std::thread::sleep(std::time::Duration::from_millis(pause));
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
        }
        kills
    })
}
