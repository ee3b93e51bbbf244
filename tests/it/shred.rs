//! Crypto-shredding against a real PostgreSQL: entries of several data
//! subjects, a replica that follows, one subject shredded with the
//! application's own deletions; what can still be read, verified and
//! rebuilt afterwards, by whom.

use std::time::Duration;

use oplog::{
    grant, key_usage, verify, Error, FindingKind, Keyring, NewEntry, Oplog, ReplayOptions,
    Replayer, Role, Target, VerifyOptions, VerifyReport, Wrapper,
};
use postgres::Client;

use crate::roles::{denied, refused, TestRole};
use crate::support::{superuser_exec, table_rows, user, TestDb};

fn oplog_with(ring: Keyring) -> Oplog {
    Oplog::new(oplog::demo::user_catalog(), ring)
}

/// Writes, in one transaction, the row of user `id` and the entry creating
/// it for `subject` on `aggregate`, then one that updates its name.
fn write_user(client: &mut Client, log: &Oplog, aggregate: &str, subject: &str, id: &str) {
    let mut u = user(id);
    let mut tx = client.transaction().unwrap();
    tx.execute(oplog::demo::INSERT_USER, &u.params()).unwrap();
    let mut entry = NewEntry::new(aggregate);
    entry.subject(subject).create(&u).unwrap();
    log.write(&mut tx, &entry).unwrap();
    tx.commit().unwrap();
    u.display_name = format!("Renamed {id}");
    let mut tx = client.transaction().unwrap();
    tx.execute(
        "UPDATE demo_user SET display_name = $1 WHERE id = $2",
        &[&u.display_name, &u.id],
    )
    .unwrap();
    let mut entry = NewEntry::new(aggregate);
    entry
        .subject(subject)
        .update(&u, &["display_name"], &[])
        .unwrap();
    log.write(&mut tx, &entry).unwrap();
    tx.commit().unwrap();
}

/// Applies the log to `replica` (as a follower's pass does).
fn replay(log: &Oplog, source: &TestDb, replica: &TestDb) {
    let mut replayer = Replayer::connect(
        log,
        &source.url,
        Target::database(&replica.url),
        ReplayOptions::default(),
    )
    .unwrap();
    replayer.run(&mut |_| {}).unwrap();
}

fn verify_against(log: &Oplog, source: &TestDb, replica: &TestDb) -> VerifyReport {
    verify(
        log,
        &source.url,
        &VerifyOptions {
            against: Some(Target::database(&replica.url)),
            ..VerifyOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn shredding_a_subject_erases_its_payloads_and_rows_everywhere_and_the_log_stays_verifiable() {
    let source = TestDb::new();
    let replica = TestDb::empty();
    let ring = Keyring::generate();
    let ring_json = ring.to_json();
    let log = oplog_with(ring);
    let mut c = source.client();
    // Three subjects, each with users on two tenants; and users of no
    // subject.
    for subject in ["alice", "bob", "carol"] {
        for i in 0..6 {
            let tenant = if i % 2 == 0 { "tenant-1" } else { "tenant-2" };
            write_user(&mut c, &log, tenant, subject, &format!("{subject}-{i}"));
        }
    }
    crate::support::create_users(
        &source.url,
        &log,
        "tenant-1",
        (0..5).map(|i| format!("anon-{i}")),
    );
    replay(&log, &source, &replica);
    assert_eq!(
        table_rows(&replica.url, "demo_user"),
        table_rows(&source.url, "demo_user")
    );
    let bob_data: Vec<Vec<u8>> = c
        .query(
            "SELECT e.data FROM oplog_entry e JOIN oplog_subject_key k ON k.key_id = e.key_id \
             WHERE k.subject = 'bob' AND e.format = 2",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(bob_data.len(), 12);

    // The application erases bob: its own rows, and the log's key, in one
    // transaction.
    let mut tx = c.transaction().unwrap();
    tx.execute("DELETE FROM demo_user WHERE id LIKE 'bob-%'", &[])
        .unwrap();
    let shredded = log
        .shred(&mut tx, "bob", "erasure request 2026-117")
        .unwrap();
    tx.commit().unwrap();
    assert!(!shredded.already);
    assert_eq!(shredded.entries, 12);
    assert_eq!(shredded.rows, 6);
    let mut aggregates: Vec<&str> = shredded
        .tombstones
        .iter()
        .map(|t| t.aggregate.as_str())
        .collect();
    aggregates.sort();
    assert_eq!(aggregates, ["tenant-1", "tenant-2"]);

    // Nobody can read bob's payloads any more: the key is gone from the
    // database, and the keyring never held it.
    let wrapped: Option<Vec<u8>> =
        source.scalar("SELECT wrapped FROM oplog_subject_key WHERE subject = 'bob'");
    assert!(wrapped.is_none());
    let full_ring = Keyring::from_json(&ring_json).unwrap();
    for data in &bob_data {
        assert!(full_ring.decrypt(data, b"").is_err());
    }
    let listed = log.list(&mut c, None, 0, None).unwrap();
    let bob: Vec<_> = listed
        .iter()
        .filter(|e| e.subject.as_deref() == Some("bob"))
        .collect();
    assert_eq!(bob.len(), 12);
    assert!(bob.iter().all(|e| e.shredded && e.operations.is_empty()));
    for e in listed
        .iter()
        .filter(|e| e.subject.as_deref() == Some("alice"))
    {
        assert!(!e.shredded);
        assert!(e.operations[0]
            .decode::<oplog::demo::User>()
            .unwrap()
            .id
            .starts_with("alice-"));
    }
    // The tombstones say who erased what, when and why, and delete only by
    // primary key: none of bob's data is copied into them.
    for t in listed.iter().filter(|e| e.is_tombstone()) {
        assert_eq!(t.metadata.get(oplog::shred::SHRED_SUBJECT), Some("bob"));
        assert_eq!(
            t.metadata.get(oplog::shred::SHRED_REASON),
            Some("erasure request 2026-117")
        );
        assert_eq!(t.metadata.get(oplog::shred::SHRED_BY), Some("postgres"));
        assert_eq!(t.operations.len(), 3);
        for op in &t.operations {
            assert_eq!(op.op, oplog::OpType::Delete);
            let u = op.decode::<oplog::demo::User>().unwrap();
            assert!(u.id.starts_with("bob-"));
            assert!(u.email.is_empty() && u.display_name.is_empty() && u.phone.is_none());
        }
    }

    // The replica that follows applies the tombstones; verify is clean and
    // reports the shredded entries as such.
    replay(&log, &source, &replica);
    assert_eq!(
        table_rows(&replica.url, "demo_user"),
        table_rows(&source.url, "demo_user")
    );
    assert!(!table_rows(&replica.url, "demo_user")
        .iter()
        .any(|r| r.contains("bob-")));
    let report = verify_against(&log, &source, &replica);
    assert!(
        report.is_clean(),
        "{:?} {:?}",
        report.findings,
        report.tables
    );
    assert_eq!(report.shredded.len(), 1);
    let s = &report.shredded[0];
    assert_eq!((s.subject.as_str(), s.entries), ("bob", 12));
    assert_eq!(s.tombstones.len(), 2);
    assert_eq!(s.reason.as_deref(), Some("erasure request 2026-117"));

    // A replica rebuilt from scratch skips the shredded entries, applies
    // the tombstones' deletions of rows it never had, and ends the same.
    let rebuilt = TestDb::empty();
    replay(&log, &source, &rebuilt);
    assert_eq!(
        table_rows(&rebuilt.url, "demo_user"),
        table_rows(&source.url, "demo_user")
    );
    assert!(verify_against(&log, &source, &rebuilt).is_clean());

    // bob cannot be written for again; the others can; a second shred does
    // nothing.
    let mut tx = c.transaction().unwrap();
    let mut entry = NewEntry::new("tenant-1");
    entry.subject("bob").create(&user("bob-9")).unwrap();
    let err = log.write(&mut tx, &entry).unwrap_err();
    assert!(
        matches!(err, Error::SubjectShredded { ref subject } if subject == "bob"),
        "{err}"
    );
    drop(tx);
    write_user(&mut c, &log, "tenant-1", "alice", "alice-9");
    let mut tx = c.transaction().unwrap();
    let again = log.shred(&mut tx, "bob", "again").unwrap();
    assert!(again.already && again.tombstones.is_empty());
    assert_eq!(again.by, "postgres");
    let err = log.shred(&mut tx, "nobody", "no such subject").unwrap_err();
    assert!(matches!(err, Error::UnknownSubject { .. }), "{err}");
    drop(tx);
    let mut tx = c
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .unwrap();
    let err = log
        .shred(&mut tx, "carol", "under one snapshot")
        .unwrap_err();
    assert!(err.to_string().contains("READ COMMITTED"), "{err}");
    drop(tx);

    // Key rotation re-wraps the subjects' keys; once the old keyring key is
    // removed, the subjects' entries still open.
    let mut ring = Keyring::from_json(&ring_json).unwrap();
    let old = ring.key_id().to_string();
    ring.rotate();
    let rotated = oplog_with(Keyring::from_json(&ring.to_json()).unwrap());
    let report = rotated.rewrap(&mut c, 100, |_| {}).unwrap();
    assert_eq!(report.subject_keys_rewrapped, 2);
    let usage = key_usage(&mut c).unwrap();
    assert!(usage.iter().all(|k| k.key_id != old), "{usage:?}");
    assert!(usage
        .iter()
        .any(|k| k.key_id == ring.key_id() && k.subject_keys == 2));
    ring.remove(&old).unwrap();
    let without_old = oplog_with(ring);
    let alice = without_old.list(&mut c, Some("tenant-2"), 0, None).unwrap();
    assert!(alice
        .iter()
        .filter(|e| e.subject.as_deref() == Some("alice"))
        .all(|e| !e.shredded && !e.operations.is_empty()));

    // A changed ciphertext of a shredded entry is still caught, without any
    // key: its digest is over the ciphertext; changing the digest to match
    // is caught by the next entry's chain.
    let first_of_bob = "WHERE id = (SELECT e.id FROM oplog_entry e \
        JOIN oplog_subject_key k ON k.key_id = e.key_id WHERE k.subject = 'bob' ORDER BY e.id LIMIT 1)";
    for (change, found, says) in [
        (
            "data = data || '\\x00'::bytea",
            FindingKind::Corrupt,
            "does not match the ciphertext",
        ),
        (
            "digest = sha256('oplog-sealed-v2'::bytea || data)",
            FindingKind::ChainMismatch,
            "",
        ),
    ] {
        superuser_exec(
            &source,
            &format!("UPDATE oplog_entry SET {change} {first_of_bob}"),
        );
        let report = verify(&without_old, &source.url, &VerifyOptions::default()).unwrap();
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.kind == found && f.detail.contains(says)),
            "{change}: {:?}",
            report.findings
        );
    }
}

#[test]
fn a_key_destroyed_without_a_tombstone_is_a_finding() {
    let source = TestDb::new();
    let log = oplog_with(Keyring::generate());
    let mut c = source.client();
    write_user(&mut c, &log, "tenant-1", "erin", "erin-1");
    superuser_exec(
        &source,
        "UPDATE oplog_subject_key SET wrapped = NULL, wrapping_key_id = NULL, shredded_at = now() \
         WHERE subject = 'erin'",
    );
    let report = verify(&log, &source.url, &VerifyOptions::default()).unwrap();
    assert_eq!(report.shredded.len(), 1);
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::ShreddedWithoutTombstone && f.detail.contains("erin")),
        "{:?}",
        report.findings
    );
}

#[test]
fn a_shred_waits_for_open_transactions_writing_the_subject_and_refuses_later_ones() {
    let source = TestDb::new();
    let log = std::sync::Arc::new(oplog_with(Keyring::generate()));
    let mut c = source.client();
    write_user(&mut c, &log, "tenant-1", "dave", "dave-1");
    // A transaction writing for dave stays open.
    let mut writer = source.client();
    let mut open = writer.transaction().unwrap();
    open.execute(oplog::demo::INSERT_USER, &user("dave-2").params())
        .unwrap();
    let mut entry = NewEntry::new("tenant-2");
    entry.subject("dave").create(&user("dave-2")).unwrap();
    log.write(&mut open, &entry).unwrap();
    let shredder = {
        let log = log.clone();
        let url = source.url.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(&url, postgres::NoTls).unwrap();
            let mut tx = c.transaction().unwrap();
            tx.execute("DELETE FROM demo_user WHERE id LIKE 'dave-%'", &[])
                .unwrap();
            let report = log.shred(&mut tx, "dave", "account closed").unwrap();
            tx.commit().unwrap();
            report
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !shredder.is_finished(),
        "the shred did not wait for the open writer"
    );
    open.commit().unwrap();
    let report = shredder.join().unwrap();
    // The entry committed meanwhile is shredded too, and its aggregate has
    // a tombstone after it.
    assert_eq!(report.entries, 3);
    let mut aggregates: Vec<String> = report
        .tombstones
        .iter()
        .map(|t| t.aggregate.clone())
        .collect();
    aggregates.sort();
    assert_eq!(aggregates, ["tenant-1", "tenant-2"]);
    let mut tx = c.transaction().unwrap();
    let err = log.write(&mut tx, &entry).unwrap_err();
    assert!(matches!(err, Error::SubjectShredded { .. }), "{err}");
}

#[test]
fn subject_keys_change_only_through_their_functions_and_only_shredders_shred() {
    let writer = TestRole::new("writer");
    let shredder = TestRole::new("shredder");
    let reader = TestRole::new("reader");
    let db = TestDb::new();
    let mut owner = db.client();
    grant(&mut owner, Role::Writer, &writer.name).unwrap();
    grant(&mut owner, Role::Shredder, &shredder.name).unwrap();
    grant(&mut owner, Role::Reader, &reader.name).unwrap();
    owner
        .batch_execute(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON demo_user TO {w}, {s}",
            w = writer.name,
            s = shredder.name
        ))
        .unwrap();
    let log = oplog_with(Keyring::generate());
    // The writer writes for subjects: it creates their keys.
    let mut w = Client::connect(&writer.url(&db.url), postgres::NoTls).unwrap();
    write_user(&mut w, &log, "tenant-1", "frank", "frank-1");
    write_user(&mut w, &log, "tenant-1", "gina", "gina-1");
    // ... but can change no key, and cannot shred.
    for sql in [
        "UPDATE oplog_subject_key SET wrapped = NULL",
        "DELETE FROM oplog_subject_key",
        "INSERT INTO oplog_subject_key (subject, key_id, wrapped, wrapping_key_id) VALUES ('x', 'sx', '\\x00', 'k')",
        "SELECT * FROM oplog_shred('frank')",
        "SELECT oplog_rewrap_subject_key('frank', 'k', 'k', 'k', '\\x00')",
    ] {
        denied(&mut w, sql);
    }
    // An entry under a subject key that does not exist is refused by the
    // append itself, so no entry can pass for shredded.
    refused(
        &mut w,
        "SELECT * FROM oplog_append(gen_random_uuid(), 'tenant-9', 1, decode(repeat('00', 32), 'hex'), \
         2::smallint, 'sdoesnotexist', '\\x00', decode(repeat('00', 32), 'hex'), \
         decode(repeat('00', 32), 'hex'), '{}', '{}', true, NULL, false)",
        "23000",
    );
    // The reader reads subjects' entries (and cannot shred).
    let mut r = Client::connect(&reader.url(&db.url), postgres::NoTls).unwrap();
    let read = log.list(&mut r, Some("tenant-1"), 0, None).unwrap();
    assert_eq!(read.len(), 4);
    assert!(read
        .iter()
        .all(|e| e.subject.is_some() && !e.operations.is_empty()));
    denied(&mut r, "SELECT * FROM oplog_shred('frank')");
    // The shredder shreds, and still cannot touch keys directly or bring
    // one back.
    let mut s = Client::connect(&shredder.url(&db.url), postgres::NoTls).unwrap();
    let mut tx = s.transaction().unwrap();
    tx.execute("DELETE FROM demo_user WHERE id = 'frank-1'", &[])
        .unwrap();
    let report = log.shred(&mut tx, "frank", "erasure").unwrap();
    tx.commit().unwrap();
    assert_eq!(report.by, shredder.name);
    for sql in [
        "UPDATE oplog_subject_key SET wrapped = '\\x00', wrapping_key_id = 'k', shredded_at = NULL",
        "DELETE FROM oplog_subject_key",
        "UPDATE oplog_entry SET data = '\\x00'",
    ] {
        denied(&mut s, sql);
    }
    // Even the owner's re-wrap never revives a shredded key.
    let revived: bool = owner
        .query_one(
            "SELECT oplog_rewrap_subject_key('frank', key_id, 'k', 'k2', '\\x01') FROM oplog_subject_key WHERE subject = 'frank'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!revived);
    let report = verify(&log, &db.url, &VerifyOptions::default()).unwrap();
    assert!(report.is_clean(), "{:?}", report.findings);
    assert_eq!(
        report.shredded[0].by.as_deref(),
        Some(shredder.name.as_str())
    );
}

#[test]
fn shred_on_the_command_line() {
    let ring = Keyring::generate();
    let dir = crate::cli::TempDir::new();
    let keys = crate::cli::save_keyring(&ring, &dir.join("keys.json"));
    let log = oplog_with(ring);
    let db = TestDb::new();
    let mut c = db.client();
    write_user(&mut c, &log, "tenant-1", "hank", "hank-1");
    write_user(&mut c, &log, "tenant-1", "ivy", "ivy-1");
    let out = crate::cli::run_against(
        &db.url,
        &keys,
        &["shred", "hank", "--reason", "GDPR art. 17"],
    );
    let text = crate::cli::success(&out);
    assert!(text.contains("shredded subject hank"), "{text}");
    assert!(text.contains("2 entries can no longer be read"), "{text}");
    let out = crate::cli::run_against(&db.url, &keys, &["verify"]);
    let text = crate::cli::success(&out);
    assert!(text.contains("shredded: subject hank"), "{text}");
    assert!(text.contains("clean"), "{text}");
    let out = crate::cli::run_against(&db.url, &keys, &["log", "--aggregate", "tenant-1"]);
    let text = crate::cli::success(&out);
    assert!(text.contains("subject hank: shredded"), "{text}");
    assert!(text.contains("ivy-1"), "{text}");
    let out = crate::cli::run_against(
        &db.url,
        &keys,
        &["shred", "hank", "--reason", "again", "--json"],
    );
    let json: serde_json::Value = serde_json::from_str(crate::cli::success(&out).trim()).unwrap();
    assert_eq!(json["already_shredded"], true);
    let out = crate::cli::run_against(&db.url, &keys, &["shred", "nobody", "--reason", "x"]);
    crate::cli::failure(&out, &["nobody", "no data key"]);
}

#[test]
fn every_driver_writes_subject_entries_and_lists_them() {
    use diesel::Connection as _;
    use sqlx::Connection as _;
    let db = TestDb::new();
    let log = oplog_with(Keyring::generate());
    let entry = |id: &str| {
        let mut e = NewEntry::new("tenant-1");
        e.subject("jo").create(&user(id)).unwrap();
        e
    };
    // diesel, in its transaction.
    let mut conn = db.diesel();
    conn.transaction(|c| log.write(c, &entry("d1"))).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // tokio-postgres, and with COMMIT in the same round trip (which
        // writes a subject's entry the usual way).
        let (mut client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let tx = client.transaction().await.unwrap();
        log.write_async(&tx, &entry("t1")).await.unwrap();
        tx.commit().await.unwrap();
        let tx = client.transaction().await.unwrap();
        log.write_and_commit_async(tx, &entry("t2")).await.unwrap();
        let listed = log
            .list_async(&client, Some("tenant-1"), 0, None)
            .await
            .unwrap();
        assert_eq!(listed.len(), 3);
        // sqlx.
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        log.write_sqlx(&mut tx, &entry("s1")).await.unwrap();
        tx.commit().await.unwrap();
        let listed = log
            .list_sqlx(&mut conn, Some("tenant-1"), 0, None)
            .await
            .unwrap();
        assert_eq!(listed.len(), 4);
        assert!(listed
            .iter()
            .all(|e| e.subject.as_deref() == Some("jo") && e.format == 2));
    });
    // One key for the subject, whatever wrote.
    let keys: i64 = db.scalar("SELECT count(*) FROM oplog_subject_key");
    assert_eq!(keys, 1);
    let ids: Vec<String> = log
        .list(&mut db.client(), Some("tenant-1"), 0, None)
        .unwrap()
        .iter()
        .map(|e| e.operations[0].decode::<oplog::demo::User>().unwrap().id)
        .collect();
    assert_eq!(ids, ["d1", "t1", "t2", "s1"]);

    // Each driver shreds in its own transaction: diesel one subject, sqlx
    // another, tokio-postgres jo.
    let for_subject = |subject: &str, id: &str| {
        let mut e = NewEntry::new("tenant-2");
        e.subject(subject).create(&user(id)).unwrap();
        e
    };
    let mut conn = db.diesel();
    conn.transaction(|c| log.write(c, &for_subject("mo", "m1")))
        .unwrap();
    conn.transaction(|c| log.write(c, &for_subject("po", "p1")))
        .unwrap();
    let err = log
        .shred(&mut conn, "mo", "outside a transaction")
        .unwrap_err();
    assert!(matches!(err, Error::NotInTransaction), "{err}");
    let by_diesel = conn.transaction(|c| log.shred(c, "mo", "diesel")).unwrap();
    assert_eq!((by_diesel.entries, by_diesel.tombstones.len()), (1, 1));
    rt.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let by_sqlx = log.shred_sqlx(&mut tx, "po", "sqlx").await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!((by_sqlx.entries, by_sqlx.rows), (1, 1));
        let (mut client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let tx = client.transaction().await.unwrap();
        let by_tokio = log.shred_async(&tx, "jo", "tokio").await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!((by_tokio.entries, by_tokio.rows), (4, 4));
        let tx = client.transaction().await.unwrap();
        let again = log.shred_async(&tx, "jo", "again").await.unwrap();
        assert!(again.already);
        assert_eq!(again.by, by_tokio.by);
    });
    let report = verify(&log, &db.url, &VerifyOptions::default()).unwrap();
    assert!(report.is_clean(), "{:?}", report.findings);
    let subjects: Vec<(&str, u64, usize)> = report
        .shredded
        .iter()
        .map(|s| (s.subject.as_str(), s.entries, s.tombstones.len()))
        .collect();
    assert_eq!(subjects, [("jo", 4, 1), ("mo", 1, 1), ("po", 1, 1)]);
}

#[test]
fn a_running_follower_erases_the_subjects_rows_when_the_shred_commits() {
    use std::sync::atomic::Ordering;
    let source = TestDb::new();
    let replica = TestDb::empty();
    let log = oplog_with(Keyring::generate());
    let mut follower = oplog::Follower::new(
        &log,
        &source.url,
        Target::database(&replica.url),
        oplog::FollowOptions::default(),
    );
    let stop = follower.stop_flag();
    let running = std::thread::spawn(move || follower.run(&mut |_| {}));
    let mut c = source.client();
    for subject in ["kim", "lee"] {
        for i in 0..3 {
            write_user(
                &mut c,
                &log,
                &format!("tenant-{i}"),
                subject,
                &format!("{subject}-{i}"),
            );
        }
    }
    // Every row of the table, none before the follower created it.
    let rows = |db: &TestDb| {
        let exists: bool = db.scalar("SELECT to_regclass('demo_user') IS NOT NULL");
        if exists {
            table_rows(&db.url, "demo_user")
        } else {
            Vec::new()
        }
    };
    assert!(crate::support::eventually(30, || rows(&replica).len() == 6));
    let mut tx = c.transaction().unwrap();
    tx.execute("DELETE FROM demo_user WHERE id LIKE 'kim-%'", &[])
        .unwrap();
    let report = log.shred(&mut tx, "kim", "erasure").unwrap();
    tx.commit().unwrap();
    assert_eq!(report.tombstones.len(), 3);
    assert!(
        crate::support::eventually(30, || rows(&replica) == rows(&source)),
        "{:?}",
        rows(&replica)
    );
    stop.store(true, Ordering::Relaxed);
    running.join().unwrap().unwrap();
    assert_eq!(rows(&replica).len(), 3);
    let report = verify_against(&log, &source, &replica);
    assert!(
        report.is_clean(),
        "{:?} {:?}",
        report.findings,
        report.tables
    );
    assert_eq!(report.shredded[0].entries, 6);
}
