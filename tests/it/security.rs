//! The claims of SECURITY.md that no other test shows: what a reader of the
//! database sees and does not see, what verification does not cover, and
//! the decoding limits on what the database hands a reader.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use oplog::{heads, verify, Error, FindingKind, Keyring, Limits, NewEntry, Oplog, VerifyOptions};

use crate::support::{scan_problems, superuser_exec, user, TestDb};

fn write(db: &TestDb, log: &Oplog, aggregate: &str, users: &[oplog::demo::User]) {
    let mut client = db.client();
    for u in users {
        let mut tx = client.transaction().unwrap();
        let mut entry = NewEntry::new(aggregate);
        entry.metadata("actor", "alice").create(u).unwrap();
        log.write(&mut tx, &entry).unwrap();
        tx.commit().unwrap();
    }
}

/// Every oplog table of `db`, as text: what a reader with SELECT sees.
fn dump(db: &TestDb) -> String {
    let mut c = db.client();
    let mut all = String::new();
    for table in [
        "oplog_entry",
        "oplog_metadata",
        "oplog_ticket",
        "oplog_catalog",
    ] {
        for row in c
            .query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[])
            .unwrap()
        {
            all.push_str(row.get::<_, &str>(0));
            all.push('\n');
        }
    }
    // The ciphertexts and catalogs as raw bytes too, not only as JSON's hex.
    for row in c
        .query(
            "SELECT data FROM oplog_entry UNION ALL SELECT catalog FROM oplog_catalog",
            &[],
        )
        .unwrap()
    {
        all.push_str(&String::from_utf8_lossy(row.get::<_, &[u8]>(0)));
    }
    all
}

#[test]
fn a_reader_of_the_database_sees_metadata_names_and_sizes_but_not_payloads() {
    let db = TestDb::new();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    let secret = oplog::demo::User {
        email: "secret-address@example.com".into(),
        display_name: "Confidential Name".into(),
        ..user("u1")
    };
    let bigger = oplog::demo::User {
        display_name: "x".repeat(1000),
        ..user("u2")
    };
    write(&db, &log, "tenant-acme", &[secret, bigger]);
    let seen = dump(&db);
    for hidden in ["secret-address", "Confidential Name", "xxxxxxxxxx"] {
        assert!(!seen.contains(hidden), "{hidden} is readable");
    }
    // Metadata, aggregate names, key ids and the type catalog are plaintext.
    for visible in [
        "alice",
        "tenant-acme",
        log.wrapper().key_id(),
        "demo.v1.User",
        "demo_user",
    ] {
        assert!(seen.contains(visible), "{visible} is not visible");
    }
    // Sizes are visible: the ciphertext grows with the payload.
    let sizes: Vec<i32> = db
        .client()
        .query("SELECT length(data) FROM oplog_entry ORDER BY seq", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(sizes[1] > sizes[0] + 900, "{sizes:?}");
}

#[test]
fn identical_payloads_have_different_digests_and_ciphertexts() {
    let db = TestDb::new();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    write(&db, &log, "a", &[user("same"), user("same")]);
    let distinct: i64 =
        db.scalar("SELECT count(DISTINCT digest) + count(DISTINCT data) FROM oplog_entry");
    assert_eq!(distinct, 4, "the salt and the nonce differ per entry");
}

#[test]
fn created_at_is_not_authenticated() {
    let db = TestDb::new();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    write(&db, &log, "a", &[user("u1"), user("u2")]);
    superuser_exec(
        &db,
        "UPDATE oplog_entry SET created_at = created_at - interval '10 years'",
    );
    let report = verify(&log, &db.url, &VerifyOptions::default()).unwrap();
    assert!(report.is_clean(), "{:?}", report.findings);
}

#[test]
fn deleting_a_whole_aggregate_and_its_ticket_is_found_only_against_an_anchor() {
    let db = TestDb::new();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    write(&db, &log, "a", &[user("u1")]);
    write(&db, &log, "b", &[user("u2"), user("u3")]);
    let anchor = heads(&mut db.client(), None).unwrap();
    superuser_exec(
        &db,
        "DELETE FROM oplog_entry WHERE aggregate_name = 'b'; DELETE FROM oplog_ticket WHERE name = 'b'",
    );
    assert!(verify(&log, &db.url, &VerifyOptions::default())
        .unwrap()
        .is_clean());
    let report = verify(
        &log,
        &db.url,
        &VerifyOptions {
            anchor,
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    let found: Vec<(FindingKind, &str)> = report
        .findings
        .iter()
        .map(|f| (f.kind, f.aggregate.as_str()))
        .collect();
    assert_eq!(found, [(FindingKind::AnchorMismatch, "b")]);
}

#[test]
fn an_oversized_stored_catalog_is_refused_without_being_read() {
    let db = TestDb::new();
    let keys = Keyring::generate().to_json().to_string();
    let writer = Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::from_json(&keys).unwrap(),
    );
    write(&db, &writer, "a", &[user("u1")]);
    let stored: i32 = db.scalar("SELECT length(catalog) FROM oplog_catalog");
    // A reader with another catalog of its own must load the stored one,
    // which is over its limit.
    let accounts = oplog::demo::catalog_of(&["demo.v1.Account"]);
    let limits = Limits {
        max_catalog_bytes: 1000,
        ..Limits::default()
    };
    let reader = Oplog::new(accounts, Keyring::from_json(&keys).unwrap()).with_limits(limits);
    let err = reader.list(&mut db.client(), None, 0, None).unwrap_err();
    assert!(
        matches!(&err, Error::StoredCatalog { reason, .. } if reason.contains(&format!("{stored} bytes is over the limit of 1000"))
            && reason.contains("max_catalog_bytes")),
        "{err}"
    );
    let report = verify(&reader, &db.url, &VerifyOptions::default()).unwrap();
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    assert_eq!(report.findings[0].kind, FindingKind::Catalog);
    assert!(report.findings[0].detail.contains("over the limit"));
}

#[test]
fn an_oversized_entry_is_refused_before_decryption() {
    let db = TestDb::new();
    let keys = Keyring::generate().to_json().to_string();
    let writer = Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::from_json(&keys).unwrap(),
    );
    let mut big = user("u1");
    big.avatar = vec![7; 4096];
    write(&db, &writer, "a", &[big]);
    let limits = Limits {
        max_queue_bytes: 1024,
        ..Limits::default()
    };
    let reader = Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::from_json(&keys).unwrap(),
    )
    .with_limits(limits);
    let err = reader.list(&mut db.client(), None, 0, None).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::LimitExceeded {
                what: "entry ciphertext size in bytes",
                limit,
                ..
            } if *limit == limits.max_entry_bytes()
        ),
        "{err}"
    );
}

// Scans of the log by the consumer registry, trimming and rewrapping.

/// A connection whose every statement, including those inside functions,
/// reports its executed plan (auto_explain, as JSON) into the returned
/// list.
fn explaining(url: &str) -> (postgres::Client, Arc<Mutex<Vec<String>>>) {
    let plans = Arc::new(Mutex::new(Vec::new()));
    let sink = plans.clone();
    let mut config: postgres::Config = url.parse().unwrap();
    config.notice_callback(move |notice| sink.lock().unwrap().push(notice.message().to_string()));
    let mut c = config.connect(postgres::NoTls).unwrap();
    c.batch_execute(
        "LOAD 'auto_explain';
         SET auto_explain.log_min_duration = 0;
         SET auto_explain.log_nested_statements = on;
         SET auto_explain.log_format = 'json';
         SET auto_explain.log_level = 'notice'",
    )
    .unwrap();
    (c, plans)
}

#[test]
fn the_registry_trimming_and_rewrapping_read_the_log_in_index_order() {
    let db = TestDb::new();
    let mut ring = Keyring::generate();
    let old = Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::from_json(&ring.to_json()).unwrap(),
    );
    write(&db, &old, "real", &[user("u1"), user("u2"), user("u3")]);
    ring.rotate();
    let new = Oplog::new(oplog::demo::user_catalog(), ring);
    // 50,000 entries of 5,000 aggregates under the active key, written as
    // writers would (seqs of every aggregate interleaved in id order), a
    // day old; they are never decrypted here.
    let mut c = db.client();
    c.execute(
        "INSERT INTO oplog_ticket (name, version) SELECT 'agg' || a, 10 FROM generate_series(1, 5000) a",
        &[],
    )
    .unwrap();
    c.execute(
        "INSERT INTO oplog_entry (entry_uuid, aggregate_name, seq, format, key_id, data, digest, chain, created_at)
         SELECT gen_random_uuid(), 'agg' || a, s, 1, $1, '\\x00', decode(repeat('00', 32), 'hex'),
                decode(repeat('00', 32), 'hex'), now() - interval '1 day'
         FROM generate_series(1, 10) s, generate_series(1, 5000) a ORDER BY s, a",
        &[&new.wrapper().key_id()],
    )
    .unwrap();
    write(&db, &old, "real", &[user("u4"), user("u5"), user("u6")]);
    c.batch_execute(
        "INSERT INTO oplog_consumer (name) VALUES ('r1'), ('r2');
         INSERT INTO oplog_consumer_position (consumer, aggregate_name, seq)
         SELECT 'r1', 'agg' || a, 5 FROM generate_series(1, 2500) a
         UNION ALL SELECT 'r2', 'agg' || a, 7 FROM generate_series(1, 5000) a;
         ANALYZE",
    )
    .unwrap();

    let (mut e, plans) = explaining(&db.url);
    oplog::consumers(&mut e, Duration::from_secs(60)).unwrap();
    oplog::lag(&mut e, "r1").unwrap();
    for dry_run in [true, false] {
        let report = oplog::trim(
            &mut e,
            &oplog::TrimOptions {
                older_than: Duration::from_secs(3600),
                aggregate: Some("agg7".into()),
                batch: 2,
                dry_run,
                ..oplog::TrimOptions::default()
            },
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(report.deleted, 5, "r1 has applied 5 of agg7");
    }
    let report = new.rewrap(&mut e, 1000, |_| {}).unwrap();
    assert_eq!(report.rewrapped, 6);

    let plans = plans.lock().unwrap();
    let mut index_scans = 0;
    let mut problems = Vec::new();
    for notice in plans.iter() {
        let Some(start) = notice.find('{') else {
            continue;
        };
        let plan: serde_json::Value = serde_json::from_str(&notice[start..]).unwrap();
        let query = plan["Query Text"].as_str().unwrap_or("").to_string();
        // Counting the entries under each key is a whole-log aggregate that
        // runs once per rewrap command (before and after), not per page.
        if query.contains("GROUP BY key_id") || query.contains("FROM oplog_entry WHERE key_id <>") {
            continue;
        }
        let mut found = Vec::new();
        scan_problems(&plan["Plan"], &mut found);
        problems.extend(found.into_iter().map(|p| format!("{p} in: {query}")));
        index_scans += notice.matches("\"Index Name\": \"oplog_entry_").count();
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        index_scans > 0,
        "no plan read the entries: {} plans",
        plans.len()
    );
}
