//! Least privilege against a real PostgreSQL: a writer appends but cannot
//! rewrite history, a reader follows and verifies, a trimmer trims without
//! any DELETE privilege of its own.

use std::time::Duration;

use oplog::{
    grant, trim, verify, Error, FollowOptions, Follower, Keyring, Oplog, Role, Target, TrimOptions,
    TypeCatalog, VerifyOptions,
};

use crate::support::{admin_url, create_users, TestDb};

/// A login role that exists while the value lives. Declare it before the
/// databases it is granted on, so that they are dropped first.
struct TestRole {
    name: String,
}

impl TestRole {
    fn new(kind: &str) -> TestRole {
        let name = format!(
            "oplog_{kind}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        postgres::Client::connect(&admin_url(), postgres::NoTls)
            .unwrap()
            .batch_execute(&format!("CREATE ROLE {name} LOGIN"))
            .unwrap();
        TestRole { name }
    }

    /// `url` connecting as this role instead of its user.
    fn url(&self, url: &str) -> String {
        let start = url.find("://").map(|i| i + 3).expect("a postgres:// URL");
        let at = url[start..]
            .find('@')
            .map(|i| start + i)
            .expect("a user in the URL");
        format!("{}{}{}", &url[..start], self.name, &url[at..])
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&admin_url(), postgres::NoTls) {
            let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {}", self.name));
        }
    }
}

fn denied(c: &mut postgres::Client, sql: &str) {
    let err = Error::from(c.batch_execute(sql).unwrap_err());
    assert_eq!(err.sqlstate(), Some("42501"), "{sql}: {err}");
}

#[test]
fn a_writer_appends_but_cannot_rewrite_history() {
    let writer = TestRole::new("writer");
    let db = TestDb::new();
    let mut owner = db.client();
    grant(&mut owner, Role::Writer, &writer.name).unwrap();
    owner
        .batch_execute(&format!(
            "GRANT SELECT, INSERT ON demo_user TO {}",
            writer.name
        ))
        .unwrap();
    let keys = Keyring::generate().to_json();
    let log = Oplog::new(TypeCatalog::demo(), Keyring::from_json(&keys).unwrap());
    // The application, as the writer: new aggregates, the first catalog,
    // entries with metadata.
    create_users(
        &writer.url(&db.url),
        &log,
        "agg",
        (0..5).map(|i| format!("u{i}")),
    );
    assert!(log
        .committed(
            &mut postgres::Client::connect(&writer.url(&db.url), postgres::NoTls).unwrap(),
            log_uuid(&db)
        )
        .unwrap()
        .is_some());

    let mut c = postgres::Client::connect(&writer.url(&db.url), postgres::NoTls).unwrap();
    for sql in [
        "UPDATE oplog_entry SET data = '\\x00' WHERE seq = 2",
        "UPDATE oplog_metadata SET value = 'mallory'",
        "DELETE FROM oplog_entry WHERE seq = 5",
        "SET oplog.trimming = 'on'; DELETE FROM oplog_entry WHERE seq = 5",
        "DELETE FROM oplog_metadata",
        "DELETE FROM oplog_catalog",
        "TRUNCATE oplog_entry CASCADE",
        "SELECT oplog_trim('agg', 5, 100)",
        "ALTER TABLE oplog_entry DISABLE TRIGGER ALL",
        "DROP TABLE oplog_entry CASCADE",
        "UPDATE oplog_trim_point SET seq = 1",
        "INSERT INTO oplog_trim_point VALUES ('agg', 4, decode(repeat('00', 32), 'hex'))",
    ] {
        denied(&mut c, sql);
    }
    let report = verify(
        &Oplog::new(TypeCatalog::demo(), Keyring::from_json(&keys).unwrap()),
        &db.url,
        &VerifyOptions::default(),
    )
    .unwrap();
    assert!(report.is_clean(), "{:?}", report.findings);
    assert_eq!(report.entries_checked, 5);
}

fn log_uuid(db: &TestDb) -> uuid::Uuid {
    let text: String = db.scalar("SELECT entry_uuid::text FROM oplog_entry WHERE seq = 3");
    uuid::Uuid::parse_str(&text).unwrap()
}

#[test]
fn a_reader_follows_and_verifies_and_a_trimmer_trims_without_delete() {
    let reader = TestRole::new("reader");
    let trimmer = TestRole::new("trimmer");
    let db = TestDb::new();
    let replica = TestDb::empty();
    let mut owner = db.client();
    grant(&mut owner, Role::Reader, &reader.name).unwrap();
    grant(&mut owner, Role::Trimmer, &trimmer.name).unwrap();
    owner
        .batch_execute(&format!(
            "GRANT SELECT ON demo_user, demo_account TO {}",
            reader.name
        ))
        .unwrap();
    let log = Oplog::new(TypeCatalog::demo(), Keyring::generate());
    create_users(&db.url, &log, "agg", (0..8).map(|i| format!("u{i}")));

    let source_as_reader = reader.url(&db.url);
    let report = Follower::new(
        &log,
        &source_as_reader,
        Target::database(&replica.url),
        FollowOptions {
            name: Some("replica".into()),
            until_caught_up: true,
            ..FollowOptions::default()
        },
    )
    .run(&mut |_| {})
    .unwrap();
    assert_eq!(report.entries_applied, 8);
    let checked = verify(
        &log,
        &source_as_reader,
        &VerifyOptions {
            against: Some(Target::database(&replica.url)),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(checked.is_clean(), "{:?}", checked.findings);
    let mut c = postgres::Client::connect(&source_as_reader, postgres::NoTls).unwrap();
    denied(&mut c, "INSERT INTO oplog_ticket (name) VALUES ('x')");
    denied(&mut c, "DELETE FROM oplog_entry");
    denied(&mut c, "SELECT oplog_trim('agg', 8, 100)");

    let mut t = postgres::Client::connect(&trimmer.url(&db.url), postgres::NoTls).unwrap();
    denied(&mut t, "DELETE FROM oplog_entry WHERE seq = 1");
    let trimmed = trim(
        &mut t,
        &TrimOptions {
            older_than: Duration::ZERO,
            ..TrimOptions::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(
        trimmed.deleted, 8,
        "the replica's consumer has applied all 8"
    );
    assert!(verify(&log, &source_as_reader, &VerifyOptions::default())
        .unwrap()
        .is_clean());
}

#[test]
fn a_key_administrator_rewraps_what_a_writer_cannot() {
    let keys = TestRole::new("keys");
    let writer = TestRole::new("writer");
    let db = TestDb::new();
    let mut owner = db.client();
    grant(&mut owner, Role::Keys, &keys.name).unwrap();
    grant(&mut owner, Role::Writer, &writer.name).unwrap();
    let mut ring = Keyring::generate();
    let old = Oplog::new(
        TypeCatalog::demo(),
        Keyring::from_json(&ring.to_json()).unwrap(),
    );
    create_users(&db.url, &old, "agg", (0..4).map(|i| format!("u{i}")));
    ring.rotate();
    let new = Oplog::new(TypeCatalog::demo(), ring);

    // The writer has no UPDATE at all: oplog_rewrap is refused to it.
    let mut w = postgres::Client::connect(&writer.url(&db.url), postgres::NoTls).unwrap();
    denied(&mut w, "SELECT oplog_rewrap(1, 'x', 'y', '\\x00')");

    let mut k = postgres::Client::connect(&keys.url(&db.url), postgres::NoTls).unwrap();
    let report = new.rewrap(&mut k, 2, |_| {}).unwrap();
    assert_eq!(report.rewrapped, 4);
    let under_new: i64 = db.scalar(&format!(
        "SELECT count(*) FROM oplog_entry WHERE key_id = '{}'",
        new.wrapper().key_id()
    ));
    assert_eq!(under_new, 4);
    // The key administrator may not change anything else.
    denied(&mut k, "UPDATE oplog_entry SET seq = 9");
    denied(&mut k, "DELETE FROM oplog_entry");
    assert!(verify(&new, &db.url, &VerifyOptions::default())
        .unwrap()
        .is_clean());
}
