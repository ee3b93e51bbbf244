//! The claims of SECURITY.md that no other test shows: what a reader of the
//! database sees and does not see, what verification does not cover, and
//! the decoding limits on what the database hands a reader.

use oplog::{
    heads, verify, Error, FindingKind, Keyring, Limits, NewEntry, Oplog, TypeCatalog, VerifyOptions,
};

use crate::support::{superuser_exec, user, TestDb};

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
    let log = Oplog::new(TypeCatalog::demo(), Keyring::generate());
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
    let log = Oplog::new(TypeCatalog::demo(), Keyring::generate());
    write(&db, &log, "a", &[user("same"), user("same")]);
    let distinct: i64 =
        db.scalar("SELECT count(DISTINCT digest) + count(DISTINCT data) FROM oplog_entry");
    assert_eq!(distinct, 4, "the salt and the nonce differ per entry");
}

#[test]
fn created_at_is_not_authenticated() {
    let db = TestDb::new();
    let log = Oplog::new(TypeCatalog::demo(), Keyring::generate());
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
    let log = Oplog::new(TypeCatalog::demo(), Keyring::generate());
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
    let writer = Oplog::new(TypeCatalog::demo(), Keyring::from_json(&keys).unwrap());
    write(&db, &writer, "a", &[user("u1")]);
    let stored: i32 = db.scalar("SELECT length(catalog) FROM oplog_catalog");
    // A reader with another catalog of its own must load the stored one,
    // which is over its limit.
    let mut accounts = TypeCatalog::new();
    accounts.register("demo.v1.Account").unwrap();
    let limits = Limits {
        max_catalog_bytes: 1000,
        ..Limits::default()
    };
    let reader = Oplog::new(accounts, Keyring::from_json(&keys).unwrap()).with_limits(limits);
    let err = reader.list(&mut db.client(), None, 0, None).unwrap_err();
    assert!(
        matches!(&err, Error::Catalog(m) if m.contains(&format!("{stored} bytes is over the limit of 1000"))
            && m.contains("max_catalog_bytes")),
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
    let writer = Oplog::new(TypeCatalog::demo(), Keyring::from_json(&keys).unwrap());
    let mut big = user("u1");
    big.avatar = vec![7; 4096];
    write(&db, &writer, "a", &[big]);
    let limits = Limits {
        max_queue_bytes: 1024,
        ..Limits::default()
    };
    let reader =
        Oplog::new(TypeCatalog::demo(), Keyring::from_json(&keys).unwrap()).with_limits(limits);
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
