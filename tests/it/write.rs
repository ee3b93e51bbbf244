//! The write path against a real PostgreSQL: round trips through both
//! drivers, tickets in both locking modes, rollback, concurrency, and the
//! errors that tampered or foreign data must produce.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use diesel::migration::MigrationSource;
use diesel::{Connection as _, RunQueryDsl as _};
use oplog::demo::{Account, User};
use oplog::{Error, Keyring, LockMode, NewEntry, OpType, Oplog, RetryPolicy, TypeCatalog};

use crate::support::{superuser_exec, user, TestDb};

fn oplog() -> Oplog {
    Oplog::new(oplog::demo::user_catalog(), Keyring::generate())
}

fn insert_user(tx: &mut postgres::Transaction<'_>, u: &User) -> oplog::Result<()> {
    tx.execute(
        "INSERT INTO demo_user (id, tenant_id, account_id, email) VALUES ($1, $2, $3, $4)",
        &[&u.id, &u.tenant_id, &u.account_id, &u.email],
    )?;
    Ok(())
}

fn create_entry(aggregate: &str, u: &User) -> NewEntry {
    let mut entry = NewEntry::new(aggregate);
    entry
        .metadata("actor", "alice")
        .metadata("request-id", "r-1");
    entry.create(u).unwrap();
    entry
}

#[test]
fn round_trip_write_decrypt_decode_twice() {
    let db = TestDb::new();
    let log = oplog();
    let mut client = db.client();
    for (seq, id) in [(1, "u1"), (2, "u2")] {
        let mut tx = client.transaction().unwrap();
        let u = user(id);
        insert_user(&mut tx, &u).unwrap();
        let written = log.write(&mut tx, &create_entry("tenant-1", &u)).unwrap();
        tx.commit().unwrap();
        assert_eq!(written.seq, seq);
    }
    let entries = log.list(&mut client, Some("tenant-1"), 0, None).unwrap();
    assert_eq!(entries.len(), 2);
    for (entry, id) in entries.iter().zip(["u1", "u2"]) {
        assert_eq!(entry.operations.len(), 1);
        assert_eq!(entry.operations[0].op, OpType::Create);
        assert_eq!(entry.operations[0].decode::<User>().unwrap(), user(id));
        assert_eq!(entry.metadata.get("actor"), Some("alice"));
        assert_eq!(entry.key_id, log.wrapper().key_id());
    }
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        db.scalar::<i64>("SELECT version FROM oplog_ticket WHERE name = 'tenant-1'"),
        2
    );
}

#[test]
fn queue_keeps_fifo_order_across_types_with_updates_and_multivalued_metadata() {
    let db = TestDb::new();
    let log = oplog();
    let mut client = db.client();
    let mut entry = NewEntry::new("tenant-1");
    entry
        .metadata("tag", "a")
        .metadata("actor", "alice")
        .metadata("tag", "b");
    let account = Account {
        id: "a1".into(),
        tenant_id: "t1".into(),
        name: "Acme".into(),
        ..Default::default()
    };
    entry.create(&account).unwrap();
    entry.create(&user("u1")).unwrap();
    entry
        .update(&user("u1"), &["email", "display_name"], &["phone"])
        .unwrap();
    entry.create_items(&[user("u2"), user("u3")]).unwrap();
    entry.delete(&user("u1")).unwrap();
    let mut tx = client.transaction().unwrap();
    log.write(&mut tx, &entry).unwrap();
    tx.commit().unwrap();

    let got = log.list(&mut client, None, 0, None).unwrap().remove(0);
    let ops: Vec<(OpType, &str)> = got
        .operations
        .iter()
        .map(|o| (o.op, o.type_name.as_str()))
        .collect();
    assert_eq!(
        ops,
        [
            (OpType::Create, "demo.v1.Account"),
            (OpType::Create, "demo.v1.User"),
            (OpType::Update, "demo.v1.User"),
            (OpType::CreateItems, "demo.v1.User"),
            (OpType::CreateItems, "demo.v1.User"),
            (OpType::Delete, "demo.v1.User"),
        ]
    );
    assert_eq!(got.operations[0].decode::<Account>().unwrap(), account);
    assert_eq!(got.operations[2].field_mask, ["email", "display_name"]);
    assert_eq!(got.operations[2].null_mask, ["phone"]);
    assert_eq!(got.operations[4].decode::<User>().unwrap().id, "u3");
    assert_eq!(got.metadata.get_all("tag").collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(
        got.metadata.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        ["tag", "actor", "tag"]
    );
}

#[test]
fn missing_aggregate_empty_entry_unknown_type_and_missing_ticket_are_errors() {
    let db = TestDb::new();
    let mut client = db.client();
    let mut tx = client.transaction().unwrap();

    let log = oplog();
    let err = log
        .write(&mut tx, &create_entry("", &user("u1")))
        .unwrap_err();
    assert!(err.to_string().contains("aggregate name \"\""), "{err}");

    let err = log.write(&mut tx, &NewEntry::new("agg")).unwrap_err();
    assert!(err.to_string().contains("has no operation"), "{err}");

    let only_accounts = oplog::demo::catalog_of(&["demo.v1.Account"]);
    let narrow = Oplog::new(only_accounts, Keyring::generate());
    let err = narrow
        .write(&mut tx, &create_entry("agg", &user("u1")))
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownType { type_name } if type_name == "demo.v1.User"),
        "{err}"
    );

    let err = log.ticket(&mut tx, "never-seeded").unwrap_err();
    assert!(
        matches!(&err, Error::TicketNotFound { name } if name == "never-seeded"),
        "{err}"
    );
    assert!(err.to_string().contains("ensure_ticket"), "{err}");
    drop(tx);
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM oplog_entry"), 0);
}

#[test]
fn update_mask_and_null_path_errors() {
    let mut entry = NewEntry::new("agg");
    let err = entry.update(&user("u1"), &[], &[]).unwrap_err();
    assert!(matches!(err, Error::InvalidOperation { .. }), "{err}");
    let err = entry
        .update(&user("u1"), &["phone"], &["phone"])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("both the field mask and the null mask"),
        "{err}"
    );
    assert!(entry.is_empty());
}

#[test]
fn global_ticket_is_seeded_and_seeding_is_idempotent() {
    let db = TestDb::new();
    assert_eq!(
        db.scalar::<i64>("SELECT version FROM oplog_ticket WHERE name = 'global'"),
        0
    );
    let log = oplog();
    let mut client = db.client();
    log.ensure_ticket(&mut client, "accounts").unwrap();
    log.ensure_ticket(&mut client, "accounts").unwrap();
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM oplog_ticket WHERE name = 'accounts'"),
        1
    );

    // Entries of several kinds written to the global aggregate share its one order.
    for u in ["u1", "u2", "u3"] {
        let mut tx = client.transaction().unwrap();
        log.write(&mut tx, &create_entry(oplog::GLOBAL_TICKET, &user(u)))
            .unwrap();
        tx.commit().unwrap();
    }
    assert_eq!(
        db.scalar::<i64>("SELECT version FROM oplog_ticket WHERE name = 'global'"),
        3
    );
}

#[test]
fn optimistic_second_writer_of_the_same_ticket_fails_retryably() {
    let db = TestDb::new();
    let log = oplog();
    let (mut c1, mut c2) = (db.client(), db.client());
    log.ensure_ticket(&mut c1, "agg").unwrap();
    let mut t1 = c1.transaction().unwrap();
    let mut t2 = c2.transaction().unwrap();
    let k1 = log.ticket(&mut t1, "agg").unwrap();
    let k2 = log.ticket(&mut t2, "agg").unwrap();
    assert_eq!(k1, k2);
    log.write_with_ticket(&mut t1, &k1, &create_entry("agg", &user("u1")))
        .unwrap();
    t1.commit().unwrap();
    let err = log
        .write_with_ticket(&mut t2, &k2, &create_entry("agg", &user("u2")))
        .unwrap_err();
    assert!(
        matches!(err, Error::TicketAlreadyRedeemed { version: 0, .. }),
        "{err}"
    );
    assert!(err.is_retryable());
    drop(t2);
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM oplog_entry"), 1);
}

#[test]
fn concurrent_redemptions_block_then_fail_optimistic_or_proceed_pessimistic() {
    let db = TestDb::new();
    let log = oplog();
    let mut c1 = db.client();
    log.ensure_ticket(&mut c1, "agg").unwrap();
    let mut t1 = c1.transaction().unwrap();
    let k1 = log.ticket(&mut t1, "agg").unwrap();
    log.write_with_ticket(&mut t1, &k1, &create_entry("agg", &user("u1")))
        .unwrap();

    // The optimistic second writer reads the same version (the first has not
    // committed) and blocks on the row lock.
    let (log2, url) = (log.clone(), db.url.clone());
    let optimistic = thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut tx = c.transaction().unwrap();
        let k = log2.ticket(&mut tx, "agg").unwrap();
        let entry = create_entry("agg", &user("u2"));
        log2.write_with_ticket(&mut tx, &k, &entry).map(|w| w.seq)
    });
    // The pessimistic third writer waits for the ticket and then succeeds.
    let (log3, url) = (log.clone(), db.url.clone());
    let pessimistic = thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut tx = c.transaction().unwrap();
        let w = log3.write(&mut tx, &create_entry("agg", &user("u3")))?;
        tx.commit()?;
        Ok::<_, Error>(w.seq)
    });
    thread::sleep(Duration::from_millis(500));
    assert!(
        !optimistic.is_finished() && !pessimistic.is_finished(),
        "writers must wait for the ticket"
    );
    t1.commit().unwrap();

    let err = optimistic.join().unwrap().unwrap_err();
    assert!(matches!(err, Error::TicketAlreadyRedeemed { .. }), "{err}");
    assert_eq!(pessimistic.join().unwrap().unwrap(), 2);
    let seqs: Vec<i64> = db
        .client()
        .query("SELECT seq FROM oplog_entry ORDER BY seq", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seqs, [1, 2]);
}

#[test]
fn rollback_leaves_no_entry_no_metadata_and_an_unchanged_ticket() {
    let db = TestDb::new();
    let log = oplog();
    let mut client = db.client();
    let mut tx = client.transaction().unwrap();
    insert_user(&mut tx, &user("u1")).unwrap();
    let written = log
        .write(&mut tx, &create_entry("agg", &user("u1")))
        .unwrap();
    tx.rollback().unwrap();
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM oplog_entry"), 0);
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM oplog_metadata"), 0);
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM demo_user"), 0);
    assert_eq!(log.committed(&mut client, written.uuid).unwrap(), None);

    // A ticket that existed keeps its version after a rolled-back write.
    log.ensure_ticket(&mut client, "agg").unwrap();
    let mut tx = client.transaction().unwrap();
    log.write(&mut tx, &create_entry("agg", &user("u1")))
        .unwrap();
    drop(tx);
    assert_eq!(
        db.scalar::<i64>("SELECT version FROM oplog_ticket WHERE name = 'agg'"),
        0
    );

    let mut tx = client.transaction().unwrap();
    let written = log
        .write(&mut tx, &create_entry("agg", &user("u1")))
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(written.seq, 1);
    assert_eq!(
        log.committed(&mut client, written.uuid).unwrap(),
        Some(written.id)
    );
}

#[test]
fn diesel_connection_writes_in_its_transaction_and_reads_back() {
    let db = TestDb::new();
    let log = oplog();
    let mut conn = db.diesel();
    let err = log
        .write(&mut conn, &create_entry("agg", &user("u1")))
        .unwrap_err();
    assert!(matches!(err, Error::NotInTransaction), "{err}");

    let written = conn
        .transaction(|c| {
            diesel::sql_query("INSERT INTO demo_user (id, tenant_id, account_id, email) VALUES ('u1', 't', 'a', 'u1@x')")
                .execute(c)?;
            log.write(c, &create_entry("agg", &user("u1")))
        })
        .unwrap();
    assert_eq!(written.seq, 1);

    // A diesel transaction that fails after writing leaves nothing behind.
    let err = conn
        .transaction(|c| -> oplog::Result<()> {
            log.write(c, &create_entry("agg", &user("u2")))?;
            Err(Error::InvalidEntry("caller gives up".into()))
        })
        .unwrap_err();
    assert!(matches!(err, Error::InvalidEntry(_)));

    let entries = log.list(&mut conn, Some("agg"), 0, None).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].operations[0].decode::<User>().unwrap(),
        user("u1")
    );
    assert_eq!(entries[0].metadata.get("request-id"), Some("r-1"));
    // Both drivers read the same rows the same way.
    let via_postgres = log.list(&mut db.client(), Some("agg"), 0, None).unwrap();
    assert_eq!(via_postgres[0].uuid, entries[0].uuid);
    assert_eq!(
        via_postgres[0].created_at_micros,
        entries[0].created_at_micros
    );
}

#[test]
fn list_filters_by_aggregate_after_and_limit() {
    let db = TestDb::new();
    let log = oplog();
    let mut client = db.client();
    for i in 0..5 {
        for agg in ["a", "b"] {
            let mut tx = client.transaction().unwrap();
            log.write(&mut tx, &create_entry(agg, &user(&format!("{agg}{i}"))))
                .unwrap();
            tx.commit().unwrap();
        }
    }
    let seqs = |v: Vec<oplog::Entry>| {
        v.iter()
            .map(|e| (e.aggregate.clone(), e.seq))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        seqs(log.list(&mut client, Some("a"), 2, Some(2)).unwrap()),
        [("a".to_string(), 3), ("a".to_string(), 4)]
    );
    assert_eq!(log.list(&mut client, None, 0, None).unwrap().len(), 10);
    assert_eq!(log.list(&mut client, Some("c"), 0, None).unwrap().len(), 0);
}

#[test]
fn entries_and_metadata_are_immutable() {
    let db = TestDb::new();
    let log = oplog();
    let mut client = db.client();
    let mut tx = client.transaction().unwrap();
    log.write(&mut tx, &create_entry("agg", &user("u1")))
        .unwrap();
    tx.commit().unwrap();
    for sql in [
        "UPDATE oplog_entry SET data = '\\x00'",
        "UPDATE oplog_entry SET seq = 9",
        "UPDATE oplog_entry SET aggregate_name = 'other'",
        "UPDATE oplog_entry SET key_id = 'k'",
        "UPDATE oplog_metadata SET value = 'mallory'",
    ] {
        let err = Error::from(client.execute(sql, &[]).unwrap_err());
        assert!(err.to_string().contains("immutable"), "{sql}: {err}");
    }
}

fn write_two(db: &TestDb, log: &Oplog) {
    let mut client = db.client();
    for u in ["u1", "u2"] {
        let mut tx = client.transaction().unwrap();
        log.write(&mut tx, &create_entry("agg", &user(u))).unwrap();
        tx.commit().unwrap();
    }
}

fn read_error(db: &TestDb, log: &Oplog) -> Error {
    log.list(&mut db.client(), Some("agg"), 0, None)
        .unwrap_err()
}

#[test]
fn tampered_ciphertext_fails_authentication_naming_the_entry() {
    let db = TestDb::new();
    let log = oplog();
    write_two(&db, &log);
    superuser_exec(&db, "UPDATE oplog_entry SET data = overlay(data placing '\\x00' from length(data) - 3 for 1) WHERE seq = 2");
    match read_error(&db, &log) {
        Error::Decryption { entry } => {
            assert_eq!((entry.aggregate.as_str(), entry.seq), ("agg", 2))
        }
        other => panic!("expected a decryption error, got {other}"),
    }
}

#[test]
fn ciphertext_moved_to_another_row_fails_authentication() {
    let db = TestDb::new();
    let log = oplog();
    write_two(&db, &log);
    superuser_exec(&db, "UPDATE oplog_entry SET data = (SELECT data FROM oplog_entry WHERE seq = 2), digest = (SELECT digest FROM oplog_entry WHERE seq = 2) WHERE seq = 1");
    let err = read_error(&db, &log);
    assert!(
        matches!(&err, Error::Decryption { entry } if entry.seq == 1),
        "{err}"
    );
    assert!(err.to_string().contains("failed authentication"), "{err}");
}

#[test]
fn edited_metadata_fails_authentication() {
    let db = TestDb::new();
    let log = oplog();
    write_two(&db, &log);
    superuser_exec(&db, "UPDATE oplog_metadata SET value = 'mallory' WHERE key = 'actor' AND entry_id = (SELECT id FROM oplog_entry WHERE seq = 1)");
    assert!(matches!(read_error(&db, &log), Error::Decryption { entry } if entry.seq == 1));
    // Adding a metadata row is caught the same way.
    superuser_exec(
        &db,
        "UPDATE oplog_metadata SET value = 'alice' WHERE key = 'actor'",
    );
    superuser_exec(&db, "INSERT INTO oplog_metadata (entry_id, ordinal, key, value) SELECT id, 9, 'extra', 'x' FROM oplog_entry WHERE seq = 2");
    assert!(matches!(read_error(&db, &log), Error::Decryption { entry } if entry.seq == 2));
}

#[test]
fn unknown_key_id_and_unknown_type_are_clear_errors() {
    let db = TestDb::new();
    let keys = Keyring::generate().to_json();
    let log = Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::from_json(&keys).unwrap(),
    );
    write_two(&db, &log);
    let stranger = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    let err = read_error(&db, &stranger);
    assert!(
        matches!(&err, Error::UnknownKey { key_id, .. } if key_id == log.wrapper().key_id()),
        "{err}"
    );
    assert!(err.to_string().contains("seq 1"), "{err}");

    // A reader whose own catalog lacks the User type still decodes the
    // entries: each names the catalog stored with it.
    let ring = Keyring::from_json(&keys).unwrap();
    let accounts_only = oplog::demo::catalog_of(&["demo.v1.Account"]);
    let entries = Oplog::new(accounts_only, ring)
        .list(&mut db.client(), Some("agg"), 0, None)
        .unwrap();
    assert_eq!(
        entries[1].operations[0].decode::<User>().unwrap(),
        user("u2")
    );
    assert!(entries[1].catalog.contains("demo.v1.User"));
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM oplog_catalog"),
        1,
        "the catalog is stored once"
    );
}

#[test]
fn a_missing_or_altered_stored_catalog_is_a_clear_error() {
    let db = TestDb::new();
    let keys = Keyring::generate().to_json();
    let log = Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::from_json(&keys).unwrap(),
    );
    write_two(&db, &log);
    let stranger = Oplog::new(TypeCatalog::new(), Keyring::from_json(&keys).unwrap());
    // The trigger keeps catalogs immutable; a superuser can still alter one.
    superuser_exec(
        &db,
        "ALTER TABLE oplog_catalog DROP CONSTRAINT oplog_catalog_digest_matches; \
         UPDATE oplog_catalog SET catalog = catalog || '\\x00'::bytea",
    );
    let err = read_error(&db, &stranger);
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );
    superuser_exec(&db, "DELETE FROM oplog_catalog");
    let err = read_error(&db, &stranger);
    assert!(
        err.to_string().contains("is not stored in oplog_catalog"),
        "{err}"
    );
    assert!(err.to_string().contains("seq 1"), "{err}");
}

#[test]
fn unsupported_format_version_is_refused() {
    let db = TestDb::new();
    let log = oplog();
    write_two(&db, &log);
    superuser_exec(&db, "UPDATE oplog_entry SET format = 7 WHERE seq = 1");
    let err = read_error(&db, &log);
    assert!(err.to_string().contains("format version 7"), "{err}");
}

fn concurrent_writes(mode: LockMode) {
    const THREADS: i64 = 8;
    const WRITES: i64 = 200;
    let db = TestDb::new();
    let log = oplog();
    log.ensure_ticket(&mut db.client(), "hot").unwrap();
    let barrier = Arc::new(Barrier::new(usize::try_from(THREADS).unwrap()));
    let policy = RetryPolicy {
        max_attempts: 10_000,
        base_delay: Duration::from_micros(200),
        max_delay: Duration::from_millis(20),
    };
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (log, url, barrier) = (log.clone(), db.url.clone(), barrier.clone());
            thread::spawn(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                barrier.wait();
                let mut attempts = 0;
                for i in 0..WRITES {
                    let u = user(&format!("t{t}-{i}"));
                    let done = policy
                        .postgres(&mut client, |tx| {
                            let ticket = match mode {
                                LockMode::Optimistic => Some(log.ticket(tx, "hot")?),
                                LockMode::Pessimistic => None,
                            };
                            insert_user(tx, &u)?;
                            let entry = create_entry("hot", &u);
                            match &ticket {
                                Some(k) => log.write_with_ticket(tx, k, &entry),
                                None => log.write(tx, &entry),
                            }
                        })
                        .unwrap();
                    attempts += done.attempts;
                }
                attempts
            })
        })
        .collect();
    let attempts: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let total = THREADS * WRITES;
    assert!(i64::from(attempts) >= total);
    crate::support::assert_seqs_exactly(&db, "hot", total);
    let entries = log.list(&mut db.client(), Some("hot"), 0, None).unwrap();
    assert_eq!(i64::try_from(entries.len()).unwrap(), total);
    crate::support::assert_rows_match_entries(&db, &entries);
    // The chain links every entry to its predecessor.
    let mut prev = oplog::GENESIS_CHAIN.to_vec();
    let chains: Vec<(Vec<u8>,)> = db
        .client()
        .query(
            "SELECT chain FROM oplog_entry WHERE aggregate_name = 'hot' ORDER BY seq",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0),))
        .collect();
    for (chain,) in &chains {
        assert_ne!(chain, &prev);
        prev = chain.clone();
    }
    assert_eq!(
        db.scalar::<Vec<u8>>("SELECT chain FROM oplog_ticket WHERE name = 'hot'"),
        prev
    );
}

#[test]
fn eight_threads_times_200_writes_pessimistic() {
    concurrent_writes(LockMode::Pessimistic);
}

#[test]
fn eight_threads_times_200_writes_optimistic() {
    concurrent_writes(LockMode::Optimistic);
}

#[test]
fn concurrent_migrators_do_not_corrupt_each_other() {
    let db = TestDb::empty();
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (url, barrier) = (db.url.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                oplog::migrate_url(&url).map(|v| v.len())
            })
        })
        .collect();
    let applied: Vec<usize> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    let migrations = MigrationSource::<diesel::pg::Pg>::migrations(&oplog::MIGRATIONS)
        .unwrap()
        .len();
    assert_eq!(applied.iter().sum::<usize>(), migrations);
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM oplog_ticket WHERE name = 'global'"),
        1
    );
}

#[test]
fn pessimistic_writers_with_stale_ticket_positions_recover() {
    let db = TestDb::new();
    let keys = Keyring::generate().to_json();
    let a = Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::from_json(&keys).unwrap(),
    );
    let b = Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::from_json(&keys).unwrap(),
    );
    let mut client = db.client();
    let mut seqs = Vec::new();
    // Each writer remembers only its own last position, so every other
    // write starts from a stale guess.
    for (i, log) in [&a, &b, &a, &a, &b].into_iter().enumerate() {
        let mut tx = client.transaction().unwrap();
        seqs.push(
            log.write(&mut tx, &create_entry("agg", &user(&format!("u{i}"))))
                .unwrap()
                .seq,
        );
        tx.commit().unwrap();
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    // A rolled-back write leaves the writer's guess ahead of the ticket.
    let mut tx = client.transaction().unwrap();
    a.write(&mut tx, &create_entry("agg", &user("gone")))
        .unwrap();
    drop(tx);
    let mut tx = client.transaction().unwrap();
    assert_eq!(
        a.write(&mut tx, &create_entry("agg", &user("u6")))
            .unwrap()
            .seq,
        6
    );
    tx.commit().unwrap();
    let entries = a.list(&mut client, Some("agg"), 0, None).unwrap();
    assert_eq!(entries.len(), 6);
    // The chain runs unbroken through entries written from either guess.
    let chains: Vec<Vec<u8>> = db
        .client()
        .query("SELECT chain FROM oplog_entry ORDER BY seq", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(chains.len(), 6);
    assert_eq!(
        db.scalar::<Vec<u8>>("SELECT chain FROM oplog_ticket WHERE name = 'agg'"),
        chains[5]
    );
}

#[test]
fn entries_that_could_never_be_replayed_are_refused_at_write_time() {
    let db = TestDb::new();
    let log = oplog();
    let mut client = db.client();
    let u = user("u1");
    // A typo in a field mask, in a null path, and a nested path: replay
    // maps top-level fields onto columns, so none of them could apply.
    for (fields, nulls, path) in [
        (&["emial"][..], &[][..], "emial"),
        (&[][..], &["phnoe"][..], "phnoe"),
        (&["avatar.size"][..], &[][..], "avatar.size"),
    ] {
        let mut entry = NewEntry::new("tenant-1");
        entry.create(&u).unwrap();
        entry.update(&u, fields, nulls).unwrap();
        let mut tx = client.transaction().unwrap();
        let err = log.write(&mut tx, &entry).unwrap_err();
        match &err {
            Error::InvalidOperation {
                index, type_name, ..
            } => {
                assert_eq!(*index, 1, "{err}");
                assert_eq!(type_name, "demo.v1.User");
            }
            other => panic!("expected an invalid operation, got {other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(path) && text.contains("demo.v1.User"),
            "{text}"
        );
    }

    // A type registered without a table.
    let mut catalog = oplog::demo::user_catalog();
    catalog.register("oplog.v1.AnyOperation").unwrap();
    let tableless = Oplog::new(catalog, Keyring::generate());
    let mut entry = NewEntry::new("tenant-1");
    entry.create(&u).unwrap();
    entry
        .create(&oplog::proto::AnyOperation::default())
        .unwrap();
    let mut tx = client.transaction().unwrap();
    let err = tableless.write(&mut tx, &entry).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("oplog.v1.AnyOperation") && text.contains("has no table"),
        "{text}"
    );
    assert!(
        matches!(err, Error::InvalidOperation { index: 1, .. }),
        "{err}"
    );
    drop(tx);
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM oplog_entry"), 0);

    // A correct mask still writes.
    let mut entry = NewEntry::new("tenant-1");
    entry.update(&u, &["email"], &["phone"]).unwrap();
    let mut tx = client.transaction().unwrap();
    log.write(&mut tx, &entry).unwrap();
    tx.commit().unwrap();
}

/// A service's own error: a rule of its domain, or the oplog below it.
#[derive(Debug)]
enum SignupError {
    EmailTaken(String),
    Oplog(Error),
}

impl From<Error> for SignupError {
    fn from(e: Error) -> Self {
        SignupError::Oplog(e)
    }
}

impl oplog::Retryable for SignupError {
    fn is_retryable(&self) -> bool {
        matches!(self, SignupError::Oplog(e) if e.is_retryable())
    }
}

#[test]
fn a_retried_transaction_returns_the_callers_own_error_at_once() {
    let db = TestDb::new();
    let log = oplog();
    let mut client = db.client();
    let mut calls = 0;
    let outcome = RetryPolicy::attempts(5).postgres(&mut client, |tx| {
        calls += 1;
        insert_user(tx, &user("u1"))?;
        log.write(tx, &create_entry("tenant-1", &user("u1")))?;
        // The domain rule fails after the writes: nothing of them stays.
        Err::<(), _>(SignupError::EmailTaken(user("u1").email))
    });
    match outcome {
        Err(SignupError::EmailTaken(email)) => assert_eq!(email, user("u1").email),
        other => panic!("expected the domain error, got {other:?}"),
    }
    assert_eq!(calls, 1, "a domain error is not retried");
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM oplog_entry"), 0);
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM demo_user"), 0);
}

#[test]
fn a_lost_ticket_race_wrapped_in_the_callers_error_is_retried() {
    let db = TestDb::new();
    let log = oplog();
    log.ensure_ticket(&mut db.client(), "hot").unwrap();
    let mut client = db.client();
    let mut other = db.client();
    let done = RetryPolicy::attempts(5)
        .postgres(&mut client, |tx| {
            let ticket = log.ticket(tx, "hot")?;
            if ticket.version() == 0 {
                // Another writer redeems the ticket between this
                // transaction's read and its write, once.
                let mut rival = other.transaction().map_err(Error::from)?;
                log.write(&mut rival, &create_entry("hot", &user("rival")))?;
                rival.commit().map_err(Error::from)?;
            }
            let u = user("u1");
            insert_user(tx, &u)?;
            let written = log.write_with_ticket(tx, &ticket, &create_entry("hot", &u))?;
            Ok::<_, SignupError>(written.seq)
        })
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(done.attempts, 2);
    assert_eq!(done.value, 2);
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM demo_user"), 1);

    // When every attempt loses, the caller's error comes back as it was last
    // returned, still retryable.
    let mut attempts = 0;
    let err = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_micros(10),
        max_delay: Duration::from_micros(50),
    }
    .postgres(&mut client, |tx| {
        attempts += 1;
        let ticket = log.ticket(tx, "hot")?;
        let mut rival = other.transaction().map_err(Error::from)?;
        log.write(
            &mut rival,
            &create_entry("hot", &user(&format!("r{attempts}"))),
        )?;
        rival.commit().map_err(Error::from)?;
        log.write_with_ticket(tx, &ticket, &create_entry("hot", &user("never")))?;
        Ok::<_, SignupError>(())
    })
    .unwrap_err();
    assert_eq!(attempts, 3);
    assert!(
        matches!(
            &err,
            SignupError::Oplog(Error::TicketAlreadyRedeemed { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn arguments_out_of_range_are_configuration_errors() {
    let db = TestDb::new();
    let log = oplog();
    let mut client = db.client();
    log.ensure_ticket(&mut client, "a").unwrap();

    let options = oplog::TrimOptions {
        batch: 0,
        ..oplog::TrimOptions::default()
    };
    let err = oplog::trim(&mut client, &options, &mut |_, _| {}).unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("trim batch")),
        "{err}"
    );

    let err = "admin".parse::<oplog::Role>().unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("\"admin\"")),
        "{err}"
    );

    let err = oplog::register_consumer(&mut client, &"c".repeat(257), &[]).unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("consumer name")),
        "{err}"
    );

    // A ticket read for one aggregate cannot order another's entry.
    let mut tx = client.transaction().unwrap();
    let ticket = log.ticket(&mut tx, "a").unwrap();
    let err = log
        .write_with_ticket(&mut tx, &ticket, &create_entry("b", &user("u1")))
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("does not order")),
        "{err}"
    );
}

#[test]
fn a_ticket_at_the_largest_version_is_exhausted() {
    let db = TestDb::new();
    let log = oplog();
    log.ensure_ticket(&mut db.client(), "full").unwrap();
    superuser_exec(
        &db,
        "UPDATE oplog_ticket SET version = 9223372036854775807 WHERE name = 'full'",
    );
    let mut client = db.client();
    let mut tx = client.transaction().unwrap();
    let err = log
        .write(&mut tx, &create_entry("full", &user("u1")))
        .unwrap_err();
    assert!(
        matches!(&err, Error::TicketExhausted { name } if name == "full"),
        "{err}"
    );
    assert!(!err.is_retryable());
}
