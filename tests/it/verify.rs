//! Verification against a real PostgreSQL: a clean log and replica give no
//! finding, and every kind of tampering a superuser can do is found at the
//! entry (or key) it concerns; then the `verify` and `head` commands.

use std::io::{Read, Write};
use std::process::Output;

use oplog::{
    heads, verify, DifferenceKind, FindingKind, Head, Keyring, OpType, Operation, Oplog, Queue,
    Target, TypeCatalog, VerifyOptions, VerifyReport, Written,
};
use serde_json::Value;

use crate::cli::{failure, oplog_cmd, save_keyring, success, text, TempDir};
use crate::support::{superuser_exec, TestDb};

/// One keyring for every test, so a key file can be written for the CLI.
fn keys() -> String {
    static KEYS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| Keyring::generate().to_json().to_string())
        .clone()
}

fn oplog() -> Oplog {
    Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::from_json(&keys()).unwrap(),
    )
}

/// Creates each user in `demo_user` and records it in `aggregate`'s log,
/// one transaction per user.
fn write_users(db: &TestDb, log: &Oplog, aggregate: &str, ids: &[&str]) -> Vec<Written> {
    crate::support::create_users(&db.url, log, aggregate, ids.iter().map(|id| id.to_string()))
}

fn run(db: &TestDb, options: &VerifyOptions) -> VerifyReport {
    verify(&oplog(), &db.url, options).unwrap()
}

fn check(db: &TestDb) -> VerifyReport {
    run(db, &VerifyOptions::default())
}

type Named = (FindingKind, String, Option<i64>, Option<i64>);

/// Each finding as (kind, aggregate, seq, entry id).
fn named(report: &VerifyReport) -> Vec<Named> {
    report
        .findings
        .iter()
        .map(|f| (f.kind, f.aggregate.clone(), f.seq, f.entry_id))
        .collect()
}

fn at(kind: FindingKind, aggregate: &str, seq: i64, id: Option<i64>) -> Named {
    (kind, aggregate.to_string(), Some(seq), id)
}

#[test]
fn a_clean_log_has_no_finding() {
    let db = TestDb::new();
    let log = oplog();
    write_users(&db, &log, "a", &["u1", "u2", "u3"]);
    write_users(&db, &log, "b", &["u4", "u5"]);
    let report = check(&db);
    assert_eq!(report.findings, []);
    assert!(report.is_clean());
    assert_eq!((report.entries_checked, report.aggregates_checked), (5, 2));
    assert!(report.tables.is_empty(), "no replica, no table compared");

    // Paging: more entries than one page, over several aggregates.
    let many: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    write_users(&db, &log, "c", &many);
    let report = check(&db);
    assert_eq!(report.findings, []);
    assert_eq!(
        (report.entries_checked, report.aggregates_checked),
        (305, 3)
    );
}

#[test]
fn a_flipped_ciphertext_bit_is_a_decryption_finding_at_that_entry() {
    let db = TestDb::new();
    let w = write_users(&db, &oplog(), "agg", &["u1", "u2", "u3"]);
    superuser_exec(
        &db,
        "UPDATE oplog_entry SET data = set_byte(data, length(data) - 5, get_byte(data, length(data) - 5) # 1) WHERE seq = 2",
    );
    let report = check(&db);
    assert_eq!(
        named(&report),
        [at(FindingKind::Decryption, "agg", 2, Some(w[1].id))]
    );
    assert!(!report.is_clean());
    assert!(
        report.findings[0].detail.contains("failed authentication"),
        "{}",
        report.findings[0]
    );
}

#[test]
fn a_deleted_middle_entry_is_one_gap() {
    let db = TestDb::new();
    write_users(&db, &oplog(), "agg", &["u1", "u2", "u3", "u4"]);
    superuser_exec(&db, "DELETE FROM oplog_entry WHERE seq = 2");
    let report = check(&db);
    assert_eq!(named(&report), [at(FindingKind::Gap, "agg", 2, None)]);
    assert!(
        report.findings[0]
            .detail
            .contains("next entry present is seq 3"),
        "{}",
        report.findings[0]
    );
}

#[test]
fn a_deleted_last_entry_is_a_gap_and_with_a_lowered_ticket_an_anchor_mismatch() {
    let db = TestDb::new();
    write_users(&db, &oplog(), "agg", &["u1", "u2", "u3"]);
    write_users(&db, &oplog(), "other", &["u4"]);
    let anchor = heads(&mut db.client(), None).unwrap();
    assert_eq!(
        anchor
            .iter()
            .map(|h| (h.aggregate.as_str(), h.seq))
            .collect::<Vec<_>>(),
        [("agg", 3), ("other", 1)]
    );
    let anchored = VerifyOptions {
        anchor: anchor.clone(),
        ..VerifyOptions::default()
    };
    assert_eq!(run(&db, &anchored).findings, [], "the anchor holds");

    superuser_exec(&db, "DELETE FROM oplog_entry WHERE seq = 3");
    assert_eq!(named(&check(&db)), [at(FindingKind::Gap, "agg", 3, None)]);

    // Lowering the ticket to the new last entry makes the log consistent
    // in itself: only the anchor taken before can tell.
    superuser_exec(
        &db,
        "UPDATE oplog_ticket SET version = 2, chain = (SELECT chain FROM oplog_entry WHERE aggregate_name = 'agg' AND seq = 2) WHERE name = 'agg'",
    );
    assert!(check(&db).is_clean());
    let report = run(&db, &anchored);
    assert_eq!(
        named(&report),
        [at(FindingKind::AnchorMismatch, "agg", 3, None)]
    );
    assert!(
        report.findings[0].detail.contains("now ends at seq 2"),
        "{}",
        report.findings[0]
    );
}

#[test]
fn swapped_ciphertexts_are_found_at_both_entries() {
    let db = TestDb::new();
    let w = write_users(&db, &oplog(), "agg", &["u1", "u2", "u3"]);
    superuser_exec(
        &db,
        "UPDATE oplog_entry e SET data = o.data FROM oplog_entry o \
         WHERE e.aggregate_name = 'agg' AND o.aggregate_name = 'agg' \
         AND ((e.seq = 1 AND o.seq = 2) OR (e.seq = 2 AND o.seq = 1))",
    );
    assert_eq!(
        named(&check(&db)),
        [
            at(FindingKind::Decryption, "agg", 1, Some(w[0].id)),
            at(FindingKind::Decryption, "agg", 2, Some(w[1].id)),
        ]
    );

    // Swapping the digests with them breaks the chain at both entries as
    // well, and at nothing after them.
    superuser_exec(
        &db,
        "UPDATE oplog_entry e SET digest = o.digest FROM oplog_entry o \
         WHERE e.aggregate_name = 'agg' AND o.aggregate_name = 'agg' \
         AND ((e.seq = 1 AND o.seq = 2) OR (e.seq = 2 AND o.seq = 1))",
    );
    assert_eq!(
        named(&check(&db)),
        [
            at(FindingKind::Decryption, "agg", 1, Some(w[0].id)),
            at(FindingKind::ChainMismatch, "agg", 1, Some(w[0].id)),
            at(FindingKind::Decryption, "agg", 2, Some(w[1].id)),
            at(FindingKind::ChainMismatch, "agg", 2, Some(w[1].id)),
        ]
    );
}

#[test]
fn an_edited_metadata_value_is_found_at_that_entry_only() {
    let db = TestDb::new();
    let w = write_users(&db, &oplog(), "agg", &["u1", "u2", "u3"]);
    superuser_exec(
        &db,
        &format!(
            "UPDATE oplog_metadata SET value = 'mallory' WHERE key = 'actor' AND entry_id = {}",
            w[1].id
        ),
    );
    assert_eq!(
        named(&check(&db)),
        [
            at(FindingKind::Decryption, "agg", 2, Some(w[1].id)),
            at(FindingKind::ChainMismatch, "agg", 2, Some(w[1].id)),
        ]
    );
}

#[test]
fn forged_rows_are_found_where_they_were_inserted() {
    let db = TestDb::new();
    write_users(&db, &oplog(), "agg", &["u1", "u2", "u3"]);
    let forge = |aggregate: &str, seq: i64| -> i64 {
        db.client()
            .query_one(
                "INSERT INTO oplog_entry (entry_uuid, aggregate_name, seq, format, key_id, data, digest, chain, catalog) \
                 SELECT gen_random_uuid(), $1, $2, format, key_id, data, digest, chain, catalog \
                 FROM oplog_entry WHERE aggregate_name = 'agg' AND seq = 3 RETURNING id",
                &[&aggregate, &seq],
            )
            .unwrap()
            .get(0)
    };
    // Past the ticket, copying a real entry's ciphertext and chain.
    let forged = forge("agg", 4);
    let report = check(&db);
    let found = named(&report);
    assert!(
        found
            .iter()
            .all(|f| (&f.1[..], f.2, f.3) == ("agg", Some(4), Some(forged))),
        "{found:?}"
    );
    let kinds: Vec<FindingKind> = found.iter().map(|f| f.0).collect();
    assert_eq!(
        kinds,
        [
            FindingKind::Decryption,
            FindingKind::ChainMismatch,
            FindingKind::BeyondTicket
        ]
    );

    // Moving the ticket along with a chain head of the forger's choice does
    // not help: the ciphertext does not authenticate as the new entry.
    superuser_exec(
        &db,
        &format!("UPDATE oplog_ticket SET version = 4, chain = (SELECT chain FROM oplog_entry WHERE id = {forged}) WHERE name = 'agg'"),
    );
    let kinds: Vec<Named> = named(&check(&db));
    assert_eq!(
        kinds,
        [
            at(FindingKind::Decryption, "agg", 4, Some(forged)),
            at(FindingKind::ChainMismatch, "agg", 4, Some(forged)),
        ]
    );

    // In an aggregate that has no ticket.
    let orphan = forge("ghost", 1);
    let found: Vec<Named> = named(&check(&db))
        .into_iter()
        .filter(|f| f.1 == "ghost")
        .collect();
    assert_eq!(
        found,
        [
            at(FindingKind::Decryption, "ghost", 1, Some(orphan)),
            at(FindingKind::ChainMismatch, "ghost", 1, Some(orphan)),
            at(FindingKind::Orphan, "ghost", 1, Some(orphan)),
        ]
    );
}

#[test]
fn a_ticket_whose_chain_head_was_changed_is_a_ticket_mismatch() {
    let db = TestDb::new();
    let w = write_users(&db, &oplog(), "agg", &["u1", "u2"]);
    superuser_exec(
        &db,
        "UPDATE oplog_ticket SET chain = decode(repeat('ab', 32), 'hex') WHERE name = 'agg'",
    );
    assert_eq!(
        named(&check(&db)),
        [at(FindingKind::TicketMismatch, "agg", 2, Some(w[1].id))]
    );
}

#[test]
fn a_wrong_keyring_is_an_unknown_key_finding_per_entry() {
    let db = TestDb::new();
    let w = write_users(&db, &oplog(), "agg", &["u1", "u2"]);
    let stranger = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    let report = verify(&stranger, &db.url, &VerifyOptions::default()).unwrap();
    assert_eq!(
        named(&report),
        [
            at(FindingKind::UnknownKey, "agg", 1, Some(w[0].id)),
            at(FindingKind::UnknownKey, "agg", 2, Some(w[1].id)),
        ]
    );
}

#[test]
fn a_missing_or_altered_stored_catalog_is_a_finding_per_entry() {
    let db = TestDb::new();
    let w = write_users(&db, &oplog(), "agg", &["u1", "u2"]);
    // Neither a reader with the writer's catalog compiled in, nor one that
    // already decoded the stored catalog, takes the stored one on trust.
    let reader = Oplog::new(TypeCatalog::new(), Keyring::from_json(&keys()).unwrap());
    assert!(verify(&reader, &db.url, &VerifyOptions::default())
        .unwrap()
        .is_clean());
    let found = |db: &TestDb| {
        let report = verify(&reader, &db.url, &VerifyOptions::default()).unwrap();
        assert_eq!(report, check(db), "the same with the compiled-in catalog");
        report
    };
    superuser_exec(
        &db,
        "ALTER TABLE oplog_catalog DROP CONSTRAINT oplog_catalog_digest_matches; \
         UPDATE oplog_catalog SET catalog = catalog || '\\x00'::bytea",
    );
    let report = found(&db);
    assert_eq!(
        named(&report),
        [
            at(FindingKind::Catalog, "agg", 1, Some(w[0].id)),
            at(FindingKind::Catalog, "agg", 2, Some(w[1].id)),
        ]
    );
    assert!(
        report.findings[0]
            .detail
            .ends_with("(modified in the database)"),
        "{}",
        report.findings[0]
    );
    superuser_exec(&db, "DELETE FROM oplog_catalog");
    let report = found(&db);
    assert_eq!(
        named(&report),
        [
            at(FindingKind::Catalog, "agg", 1, Some(w[0].id)),
            at(FindingKind::Catalog, "agg", 2, Some(w[1].id)),
        ]
    );
    assert!(
        report.findings[0]
            .detail
            .ends_with("is not stored in oplog_catalog; restore it from a backup"),
        "{}",
        report.findings[0]
    );
}

#[test]
fn a_trimmed_log_verifies_from_its_trim_point() {
    let db = TestDb::new();
    let w = write_users(&db, &oplog(), "agg", &["u1", "u2", "u3", "u4"]);
    let anchor = heads(&mut db.client(), None).unwrap();
    let old = Head {
        aggregate: "agg".into(),
        seq: 1,
        chain: oplog_hex(&w[0].chain),
    };
    superuser_exec(
        &db,
        "INSERT INTO oplog_trim_point (aggregate_name, seq, chain) \
         SELECT aggregate_name, seq, chain FROM oplog_entry WHERE aggregate_name = 'agg' AND seq = 2; \
         DELETE FROM oplog_entry WHERE aggregate_name = 'agg' AND seq <= 2",
    );
    let options = VerifyOptions {
        anchor: [anchor, vec![old]].concat(),
        ..VerifyOptions::default()
    };
    let report = run(&db, &options);
    assert_eq!(report.findings, []);
    assert_eq!(report.entries_checked, 2);
    // The anchor whose entry was trimmed cannot be checked, and the report
    // says so without counting it against the log.
    assert!(report.is_clean());
    assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
    assert!(
        report.notes[0].contains("at seq 1 cannot be checked"),
        "{}",
        report.notes[0]
    );

    // A trim point that does not lead to the next entry.
    superuser_exec(
        &db,
        "UPDATE oplog_trim_point SET chain = decode(repeat('00', 32), 'hex')",
    );
    assert_eq!(
        named(&check(&db)),
        [at(FindingKind::ChainMismatch, "agg", 3, Some(w[2].id))]
    );
}

fn oplog_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_aggregate_option_checks_one_aggregate() {
    let db = TestDb::new();
    write_users(&db, &oplog(), "a", &["u1", "u2"]);
    write_users(&db, &oplog(), "b", &["u3"]);
    superuser_exec(
        &db,
        "DELETE FROM oplog_entry WHERE aggregate_name = 'a' AND seq = 1",
    );
    let only = |name: &str| VerifyOptions {
        aggregate: Some(name.into()),
        ..VerifyOptions::default()
    };
    let report = run(&db, &only("b"));
    assert_eq!(report.findings, []);
    assert_eq!((report.entries_checked, report.aggregates_checked), (1, 1));
    assert_eq!(
        named(&run(&db, &only("a"))),
        [at(FindingKind::Gap, "a", 1, None)]
    );
}

/// The table report for `demo_user` in `report`.
fn users_table(report: &VerifyReport) -> &oplog::TableReport {
    report
        .tables
        .iter()
        .find(|t| t.table == "demo_user")
        .unwrap()
}

fn keys_of(report: &VerifyReport) -> Vec<(String, DifferenceKind)> {
    users_table(report)
        .keys
        .iter()
        .map(|k| (k.key.clone(), k.kind))
        .collect()
}

#[test]
fn a_suffixed_replica_is_compared_row_by_row() {
    let db = TestDb::new();
    write_users(&db, &oplog(), "agg", &["u1", "u2", "u3", "u4"]);
    db.client()
        .batch_execute(
            "CREATE TABLE demo_user_r AS SELECT * FROM demo_user; \
             CREATE TABLE demo_account_r AS SELECT * FROM demo_account",
        )
        .unwrap();
    let options = VerifyOptions {
        against: Some(Target::suffix("_r")),
        ..VerifyOptions::default()
    };
    let report = run(&db, &options);
    assert!(report.is_clean(), "{report:?}");
    let tables: Vec<(&str, &str, u64, u64)> = report
        .tables
        .iter()
        .map(|t| {
            (
                t.table.as_str(),
                t.replica_table.as_str(),
                t.source_rows,
                t.replica_rows,
            )
        })
        .collect();
    assert_eq!(
        tables,
        [
            ("demo_account", "demo_account_r", 0, 0),
            ("demo_user", "demo_user_r", 4, 4)
        ]
    );
    assert_eq!(
        users_table(&report).columns,
        [
            "id",
            "tenant_id",
            "account_id",
            "email",
            "display_name",
            "phone",
            "age",
            "active",
            "avatar"
        ]
    );

    // A changed column (even one set to NULL), a deleted row, an extra row.
    db.client()
        .batch_execute(
            "UPDATE demo_user_r SET phone = NULL WHERE id = 'u2'; \
             DELETE FROM demo_user_r WHERE id = 'u3'; \
             INSERT INTO demo_user_r (id, tenant_id, account_id, email) VALUES ('u9', 't', 'a', 'x@example.com')",
        )
        .unwrap();
    let report = run(&db, &options);
    assert!(!report.is_clean());
    assert_eq!(report.findings, [], "the log itself is intact");
    let t = users_table(&report);
    assert_eq!(
        (
            t.source_rows,
            t.replica_rows,
            t.differences,
            t.missing_in_replica,
            t.extra_in_replica,
            t.changed
        ),
        (4, 4, 3, 1, 1, 1)
    );
    assert_eq!(
        keys_of(&report),
        [
            ("u2".to_string(), DifferenceKind::Changed),
            ("u3".to_string(), DifferenceKind::MissingInReplica),
            ("u9".to_string(), DifferenceKind::ExtraInReplica),
        ]
    );

    // The listed keys are bounded; the counts are not.
    let bounded = VerifyOptions {
        max_listed_keys: 1,
        ..options.clone()
    };
    let report = run(&db, &bounded);
    assert_eq!(
        keys_of(&report),
        [("u2".to_string(), DifferenceKind::Changed)]
    );
    assert_eq!(users_table(&report).differences, 3);

    // A missing replica table: every source row is missing.
    db.client().batch_execute("DROP TABLE demo_user_r").unwrap();
    let report = run(&db, &options);
    let t = users_table(&report);
    assert!(!t.replica_exists && t.source_exists);
    assert_eq!((t.missing_in_replica, t.replica_rows), (4, 0));
    assert!(!report.is_clean());
}

/// Copies `table`'s rows from one database to the other.
fn copy_rows(from: &TestDb, to: &TestDb, table: &str) {
    let mut data = Vec::new();
    from.client()
        .copy_out(&format!("COPY {table} TO STDOUT"))
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    let mut client = to.client();
    let mut writer = client.copy_in(&format!("COPY {table} FROM STDIN")).unwrap();
    writer.write_all(&data).unwrap();
    writer.finish().unwrap();
}

#[test]
fn a_replica_database_is_compared_row_by_row() {
    let db = TestDb::new();
    write_users(&db, &oplog(), "agg", &["u1", "u2", "u3"]);
    db.client()
        .batch_execute(
            "INSERT INTO demo_account (id, tenant_id, name, created_at, balance_cents) \
             VALUES ('a1', 't1', 'Acme', '2024-01-01 12:00:00.123456+00', 1500)",
        )
        .unwrap();
    let replica = TestDb::new();
    copy_rows(&db, &replica, "demo_user");
    copy_rows(&db, &replica, "demo_account");
    // Sessions on the replica's server default to a time zone far from the
    // source's: equal timestamps must still compare equal.
    replica
        .client()
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET TimeZone = 'Pacific/Kiritimati'",
            replica.name
        ))
        .unwrap();
    let options = VerifyOptions {
        against: Some(Target::database(&replica.url)),
        ..VerifyOptions::default()
    };
    let report = run(&db, &options);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(users_table(&report).replica_rows, 3);

    replica
        .client()
        .batch_execute(
            "UPDATE demo_user SET email = 'changed@example.com' WHERE id = 'u1'; \
             DELETE FROM demo_user WHERE id = 'u2'",
        )
        .unwrap();
    let report = run(&db, &options);
    assert_eq!(
        keys_of(&report),
        [
            ("u1".to_string(), DifferenceKind::Changed),
            ("u2".to_string(), DifferenceKind::MissingInReplica),
        ]
    );
    assert!(!report.is_clean());
}

#[test]
fn checkpoints_behind_ahead_or_on_another_chain_are_findings() {
    let db = TestDb::new();
    let log = oplog();
    let a = write_users(&db, &log, "a", &["u1", "u2", "u3"]);
    let b = write_users(&db, &log, "b", &["u4", "u5"]);
    let c = write_users(&db, &log, "c", &["u6"]);
    let d = write_users(&db, &log, "d", &["u7"]);
    let replica = TestDb::new();
    copy_rows(&db, &replica, "demo_user");
    let options = VerifyOptions {
        against: Some(Target::database(&replica.url)),
        ..VerifyOptions::default()
    };
    // Without a checkpoint table, checkpoints are not compared.
    assert!(run(&db, &options).is_clean());

    // Connecting a replayer creates the replica's checkpoint table; its key
    // is the one verify must look under.
    let source = oplog::Replayer::connect(
        &log,
        &db.url,
        Target::database(&replica.url),
        oplog::ReplayOptions::default(),
    )
    .unwrap()
    .checkpoint_key()
    .to_string();
    let mut client = replica.client();
    let put = |client: &mut postgres::Client, aggregate: &str, seq: i64, chain: &[u8]| {
        client
            .execute(
                "INSERT INTO oplog_checkpoint (source, aggregate_name, seq, chain, entry_id, entry_created_at) \
                 VALUES ($1, $2, $3, $4, 0, now())",
                &[&source, &aggregate, &seq, &chain],
            )
            .unwrap();
    };
    put(&mut client, "a", 2, &a[1].chain);
    put(&mut client, "b", 2, &[7; 32]);
    put(&mut client, "c", 5, &c[0].chain);
    put(&mut client, "e", 1, &[7; 32]);
    assert_eq!(
        named(&run(&db, &options)),
        [
            at(FindingKind::ReplicaBehind, "a", 3, Some(a[2].id)),
            at(FindingKind::CheckpointMismatch, "b", 2, Some(b[1].id)),
            at(FindingKind::ReplicaAhead, "c", 5, None),
            at(FindingKind::ReplicaBehind, "d", 1, Some(d[0].id)),
            at(FindingKind::ReplicaAhead, "e", 1, None),
        ]
    );
    // Another replica's checkpoints (another key) are not this one's.
    let suffixed = VerifyOptions {
        against: Some(Target::database_with_suffix(&replica.url, "_x")),
        ..VerifyOptions::default()
    };
    let found = named(&run(&db, &suffixed));
    assert!(
        found.iter().all(|f| f.0 == FindingKind::ReplicaBehind),
        "{found:?}"
    );
}

#[test]
fn an_unmigrated_database_is_an_error_not_a_finding() {
    let db = TestDb::empty();
    let err = verify(&oplog(), &db.url, &VerifyOptions::default()).unwrap_err();
    assert_eq!(err.sqlstate(), Some("42P01"), "{err}");
}

// The binary.

/// A database with two aggregates' entries, the key file that wrote them,
/// and a directory for anchor files.
struct Cli {
    db: TestDb,
    dir: TempDir,
    keys: String,
    written: Vec<Written>,
}

impl Cli {
    fn new() -> Cli {
        let db = TestDb::new();
        let dir = TempDir::new();
        let keys = save_keyring(
            &Keyring::from_json(&keys()).unwrap(),
            &dir.join("keys.json"),
        );
        let mut written = write_users(&db, &oplog(), "tenant-a", &["u1", "u2", "u3"]);
        written.extend(write_users(&db, &oplog(), "tenant b", &["u4"]));
        Cli {
            db,
            dir,
            keys,
            written,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        crate::cli::run_against(&self.db.url, &self.keys, args)
    }

    /// `oplog verify --json <args>`: the exit status and the document.
    fn verify_json(&self, args: &[&str]) -> (Option<i32>, Value) {
        let out = self.run(&[&["verify", "--json"][..], args].concat());
        assert_eq!(text(&out.stderr), "");
        let stdout = text(&out.stdout);
        assert_eq!(stdout.lines().count(), 1, "one document: {stdout}");
        (out.status.code(), serde_json::from_str(&stdout).unwrap())
    }
}

fn keys_of_object(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    keys
}

#[test]
fn verify_exits_0_when_clean_and_1_with_findings_in_text_and_json() {
    let cli = Cli::new();
    let out = success(&cli.run(&["verify"]));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["checked 4 entries in 2 aggregates", "clean"]
    );
    let (code, doc) = cli.verify_json(&[]);
    assert_eq!(code, Some(0));
    assert_eq!(
        keys_of_object(&doc),
        [
            "aggregates_checked",
            "entries_checked",
            "findings",
            "notes",
            "shredded",
            "tables"
        ]
    );
    assert_eq!(doc["entries_checked"], 4);
    assert_eq!(doc["shredded"], Value::Array(vec![]));
    assert_eq!(doc["findings"], Value::Array(vec![]));
    assert_eq!(doc["notes"], Value::Array(vec![]));

    let tampered = cli.written[1].id;
    superuser_exec(
        &cli.db,
        &format!("UPDATE oplog_entry SET data = set_byte(data, length(data) - 5, get_byte(data, length(data) - 5) # 1) WHERE id = {tampered}"),
    );
    let (code, doc) = cli.verify_json(&[]);
    assert_eq!(code, Some(1));
    let findings = doc["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{doc}");
    assert_eq!(
        keys_of_object(&findings[0]),
        ["aggregate", "detail", "entry_id", "kind", "seq"]
    );
    assert_eq!(findings[0]["kind"], "decryption");
    assert_eq!(findings[0]["aggregate"], "tenant-a");
    assert_eq!(findings[0]["seq"], 2);
    assert_eq!(findings[0]["entry_id"], tampered);

    let out = cli.run(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[1].starts_with(&format!(
            "decryption: aggregate tenant-a seq 2 entry {tampered}: "
        )),
        "{stdout}"
    );
    assert_eq!(lines[2], "not clean: 1 finding, 0 tables with differences");

    // --aggregate leaves the tampered aggregate out.
    let (code, doc) = cli.verify_json(&["--aggregate", "tenant b"]);
    assert_eq!((code, &doc["entries_checked"]), (Some(0), &Value::from(1)));
}

#[test]
fn head_json_is_the_anchor_file_verify_reads() {
    let cli = Cli::new();
    // Heads need no key.
    let out = oplog_cmd()
        .args(["head", "--json", "--database-url", &cli.db.url])
        .output()
        .unwrap();
    let heads = success(&out);
    let lines: Vec<Value> = heads
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{heads}");
    assert_eq!(keys_of_object(&lines[0]), ["aggregate", "chain", "seq"]);
    assert_eq!(
        (&lines[0]["aggregate"], &lines[0]["seq"]),
        (&Value::from("tenant b"), &Value::from(1))
    );
    assert_eq!(lines[1]["seq"], 3);
    assert_eq!(lines[1]["chain"], oplog_hex(&cli.written[2].chain));

    let text_heads = success(
        &oplog_cmd()
            .args([
                "head",
                "--aggregate",
                "tenant-a",
                "--database-url",
                &cli.db.url,
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(
        text_heads,
        format!(
            "tenant-a seq 3 chain {}\n",
            oplog_hex(&cli.written[2].chain)
        )
    );

    let anchor = cli.dir.join("anchor.jsonl");
    std::fs::write(&anchor, &heads).unwrap();
    let anchor = anchor.to_str().unwrap();
    let (code, _) = cli.verify_json(&["--anchor", anchor]);
    assert_eq!(code, Some(0));

    superuser_exec(
        &cli.db,
        "DELETE FROM oplog_entry WHERE aggregate_name = 'tenant-a' AND seq = 3; \
         UPDATE oplog_ticket SET version = 2, chain = (SELECT chain FROM oplog_entry WHERE aggregate_name = 'tenant-a' AND seq = 2) WHERE name = 'tenant-a'",
    );
    let (code, _) = cli.verify_json(&[]);
    assert_eq!(code, Some(0), "consistent in itself");
    let (code, doc) = cli.verify_json(&["--anchor", anchor]);
    assert_eq!(code, Some(1));
    let f = &doc["findings"][0];
    assert_eq!(
        (&f["kind"], &f["aggregate"], &f["seq"], &f["entry_id"]),
        (
            &Value::from("anchor_mismatch"),
            &Value::from("tenant-a"),
            &Value::from(3),
            &Value::Null
        )
    );
}

#[test]
fn verify_against_a_suffixed_replica_reports_its_tables() {
    let cli = Cli::new();
    cli.db
        .client()
        .batch_execute("CREATE TABLE demo_user_r AS SELECT * FROM demo_user")
        .unwrap();
    let (code, doc) = cli.verify_json(&["--suffix", "_r"]);
    assert_eq!(code, Some(0), "{doc}");
    cli.db
        .client()
        .batch_execute("DELETE FROM demo_user_r WHERE id = 'u2'")
        .unwrap();
    let (code, doc) = cli.verify_json(&["--suffix", "_r"]);
    assert_eq!(code, Some(1));
    let users = doc["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "demo_user")
        .unwrap();
    assert_eq!(users["replica_table"], "demo_user_r");
    assert_eq!(
        (
            &users["source_rows"],
            &users["replica_rows"],
            &users["differences"]
        ),
        (&Value::from(4), &Value::from(3), &Value::from(1))
    );
    assert_eq!(
        users["keys"],
        serde_json::json!([{"key": "u2", "kind": "missing_in_replica"}])
    );

    let out = cli.run(&["verify", "--suffix", "_r"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "table demo_user -> demo_user_r: 4 source rows, 3 replica rows, 1 difference (1 missing in replica, 0 extra in replica, 0 changed)\n  missing_in_replica u2\n"
        ),
        "{stdout}"
    );
}

#[test]
fn verify_errors_exit_2_with_one_line() {
    let cli = Cli::new();
    let out = oplog_cmd()
        .args(["verify", "--database-url", &cli.db.url])
        .output()
        .unwrap();
    failure(&out, &["no key file"]);

    let bad = cli.dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"aggregate\":\"a\",\"seq\":1,\"chain\":\"zz\"}\n").unwrap();
    failure(
        &cli.run(&["verify", "--anchor", bad.to_str().unwrap()]),
        &["line 1", "64 hexadecimal digits"],
    );
    failure(
        &cli.run(&["verify", "--anchor", cli.dir.join("none").to_str().unwrap()]),
        &["cannot read anchor file"],
    );
    failure(
        &cli.run(&["verify", "--suffix", "_r; DROP TABLE x"]),
        &["suffix"],
    );

    let empty = TestDb::empty();
    let out = oplog_cmd()
        .args([
            "verify",
            "--database-url",
            &empty.url,
            "--key-file",
            &cli.keys,
        ])
        .output()
        .unwrap();
    failure(&out, &["oplog migrate"]);
    let out = oplog_cmd()
        .args(["head", "--database-url", &empty.url])
        .output()
        .unwrap();
    failure(&out, &["oplog migrate"]);
}

// Trim points, anchors and what the log no longer holds.

#[test]
fn newest_entries_deleted_behind_a_trim_point_written_from_the_ticket_are_found() {
    let db = TestDb::new();
    let w = write_users(&db, &oplog(), "agg", &["u1", "u2", "u3"]);
    let early = heads(&mut db.client(), Some("agg")).unwrap();
    write_users(&db, &oplog(), "agg", &["u4", "u5"]);
    write_users(&db, &oplog(), "other", &["u6"]);
    let anchored = VerifyOptions {
        anchor: [early, heads(&mut db.client(), None).unwrap()].concat(),
        ..VerifyOptions::default()
    };
    assert!(run(&db, &anchored).is_clean());

    // The newest entries deleted, and a trim point written at the ticket
    // with the ticket's chain, as if everything up to it had been trimmed:
    // the ticket, the trim point and the newest anchor all agree.
    superuser_exec(
        &db,
        "DELETE FROM oplog_entry WHERE aggregate_name = 'agg' AND seq > 3; \
         INSERT INTO oplog_trim_point (aggregate_name, seq, chain) \
         SELECT name, version, chain FROM oplog_ticket WHERE name = 'agg'",
    );
    let report = run(&db, &anchored);
    assert_eq!(
        named(&report),
        [
            at(FindingKind::BelowTrimPoint, "agg", 1, Some(w[0].id)),
            at(FindingKind::BelowTrimPoint, "agg", 2, Some(w[1].id)),
            at(FindingKind::BelowTrimPoint, "agg", 3, Some(w[2].id)),
        ]
    );
    assert!(
        report.findings[0]
            .detail
            .contains("seqs up to 5 were trimmed, but this entry is still in the log"),
        "{}",
        report.findings[0]
    );
    // The early anchor is matched against its entry, which is still there.
    assert_eq!(report.notes, Vec::<String>::new());

    // With the rest deleted too, the log is what trimming everything would
    // leave: the early anchor lies below the trim point with nothing left to
    // check it against, which the report says.
    superuser_exec(&db, "DELETE FROM oplog_entry WHERE aggregate_name = 'agg'");
    let report = run(&db, &anchored);
    assert_eq!(report.findings, []);
    assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
    assert!(
        report.notes[0].contains("\"agg\" at seq 3 cannot be checked")
            && report.notes[0].contains("trim point is at seq 5"),
        "{}",
        report.notes[0]
    );
}

#[test]
fn verify_with_an_anchor_reports_entries_below_a_forged_trim_point() {
    let cli = Cli::new();
    let mut heads = success(&cli.run(&["head", "--json"]));
    // And an older anchor, taken after the first entry.
    let first = Head {
        aggregate: "tenant-a".into(),
        seq: 1,
        chain: oplog_hex(&cli.written[0].chain),
    };
    heads.push_str(&serde_json::to_string(&first).unwrap());
    let anchor = cli.dir.join("anchor.jsonl");
    std::fs::write(&anchor, heads).unwrap();
    let anchor = anchor.to_str().unwrap();
    superuser_exec(
        &cli.db,
        "DELETE FROM oplog_entry WHERE aggregate_name = 'tenant-a' AND seq = 3; \
         INSERT INTO oplog_trim_point (aggregate_name, seq, chain) \
         SELECT name, version, chain FROM oplog_ticket WHERE name = 'tenant-a'",
    );
    let (code, doc) = cli.verify_json(&["--anchor", anchor]);
    assert_eq!(code, Some(1), "{doc}");
    let found: Vec<(&str, i64)> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["kind"].as_str().unwrap(), f["seq"].as_i64().unwrap()))
        .collect();
    assert_eq!(found, [("below_trim_point", 1), ("below_trim_point", 2)]);

    // With everything deleted, the log is what trimming all of it leaves;
    // the older anchor has nothing left to be checked against, and the
    // report says so.
    superuser_exec(
        &cli.db,
        "DELETE FROM oplog_entry WHERE aggregate_name = 'tenant-a'",
    );
    let out = cli.run(&["verify", "--anchor", anchor]);
    let stdout = success(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[1].starts_with(
            "note: the anchor of aggregate \"tenant-a\" at seq 1 cannot be checked: its entry \
             was trimmed and the trim point is at seq 3"
        ),
        "{stdout}"
    );
    assert_eq!(lines[2], "clean");
}

// Entries replay can never apply.

/// `put_len` and `put_bytes` of the entry format: a big-endian u64 length,
/// then the bytes.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Seals `queue` as entry `seq` of `aggregate` (without metadata), chained
/// to `prev` and naming the stored catalog `catalog`, the way the write
/// path seals (associated data and chain as ARCHITECTURE.md describes
/// them), and appends it through `oplog_append`: the entry a writer with
/// its own build of the library, one that does not check a queue against
/// its catalog, could write. Returns its id and chain value.
fn append_sealed(
    db: &TestDb,
    keys: &Keyring,
    aggregate: &str,
    seq: i64,
    prev: &[u8],
    catalog: &[u8],
    queue: &Queue,
) -> (i64, Vec<u8>) {
    use oplog::Wrapper;
    use sha2::{Digest, Sha256};
    let uuid = uuid::Uuid::new_v4();
    let format: i16 = 1;
    let mut plaintext = uuid::Uuid::new_v4().as_bytes().to_vec();
    plaintext.extend_from_slice(queue.as_bytes());
    let digest = Sha256::digest(&plaintext).to_vec();
    let no_metadata = 0u64.to_be_bytes();
    let mut aad = b"oplog-aad-v1".to_vec();
    aad.extend_from_slice(&format.to_be_bytes());
    put_bytes(&mut aad, aggregate.as_bytes());
    aad.extend_from_slice(&seq.to_be_bytes());
    put_bytes(&mut aad, keys.key_id().as_bytes());
    aad.extend_from_slice(uuid.as_bytes());
    aad.extend_from_slice(&no_metadata);
    put_bytes(&mut aad, catalog);
    let data = keys.encrypt(&plaintext, &aad).unwrap();
    let mut fields = Vec::new();
    put_bytes(&mut fields, aggregate.as_bytes());
    fields.extend_from_slice(&seq.to_be_bytes());
    fields.extend_from_slice(&format.to_be_bytes());
    fields.extend_from_slice(uuid.as_bytes());
    fields.extend_from_slice(&no_metadata);
    put_bytes(&mut fields, catalog);
    let mut chain = Sha256::new();
    chain.update(b"oplog-chain-v1");
    chain.update(prev);
    chain.update(&fields);
    chain.update(&digest);
    let chain = chain.finalize().to_vec();
    let none: Vec<String> = Vec::new();
    let id: Option<i64> = db
        .client()
        .query_one(
            "SELECT o_entry_id FROM oplog_append($1::text::uuid, $2, $3, $4, $5, $6, $7, $8, $9, \
             $10, $11, true, $12, false)",
            &[
                &uuid.to_string(),
                &aggregate,
                &seq,
                &prev,
                &format,
                &keys.key_id(),
                &data,
                &digest,
                &chain,
                &none,
                &none,
                &catalog,
            ],
        )
        .unwrap()
        .get(0);
    (id.expect("the entry was appended"), chain)
}

#[test]
fn entries_replay_can_never_apply_are_unreplayable_findings() {
    let db = TestDb::new();
    let ring = Keyring::from_json(&keys()).unwrap();
    let mut catalog = oplog::demo::user_catalog();
    catalog.register("google.protobuf.Timestamp").unwrap();
    let log = Oplog::new(catalog, Keyring::from_json(&keys()).unwrap());
    // A first entry written as usual stores the catalog.
    let first = write_users(&db, &log, "agg", &["u1"]).remove(0);
    let user = crate::support::user("u1");
    let update = |mask: &[&str], nulls: &[&str]| {
        let mut queue = Queue::new();
        queue.add_update(&user, mask, nulls).unwrap();
        queue
    };
    let mut tableless = Queue::new();
    tableless
        .push(Operation {
            type_name: "google.protobuf.Timestamp".into(),
            value: Vec::new(),
            op: OpType::Create,
            field_mask: Vec::new(),
            null_mask: Vec::new(),
        })
        .unwrap();
    let queues = [
        update(&["emial"], &[]),
        update(&["email"], &["avatar.size"]),
        tableless,
        update(&["email"], &["phone"]),
    ];
    let mut prev = first.chain.to_vec();
    let mut ids = Vec::new();
    for (seq, queue) in (2..).zip(&queues) {
        let (id, chain) =
            append_sealed(&db, &ring, "agg", seq, &prev, &log.catalog_digest(), queue);
        ids.push(id);
        prev = chain;
    }
    let report = check(&db);
    assert_eq!(
        named(&report),
        [
            at(FindingKind::Unreplayable, "agg", 2, Some(ids[0])),
            at(FindingKind::Unreplayable, "agg", 3, Some(ids[1])),
            at(FindingKind::Unreplayable, "agg", 4, Some(ids[2])),
        ]
    );
    let details: Vec<&str> = report.findings.iter().map(|f| f.detail.as_str()).collect();
    assert!(
        details[0].contains(r#"(demo.v1.User): mask path "emial" is not a field of the message"#),
        "{}",
        details[0]
    );
    assert!(
        details[1].contains(r#"(demo.v1.User): mask path "avatar.size" is nested"#),
        "{}",
        details[1]
    );
    assert!(
        details[2].contains("(google.protobuf.Timestamp): the type has no table"),
        "{}",
        details[2]
    );
}

// A replica's own records.

#[test]
fn every_entry_a_replica_skipped_is_a_finding() {
    let db = TestDb::new();
    let log = oplog();
    let w = write_users(&db, &log, "agg", &["u1", "u2", "u3"]);
    let replica = TestDb::new();
    copy_rows(&db, &replica, "demo_user");
    // Connecting a replayer creates the replica's tables of checkpoints
    // and skipped entries.
    let key = oplog::Replayer::connect(
        &log,
        &db.url,
        Target::database(&replica.url),
        oplog::ReplayOptions::default(),
    )
    .unwrap()
    .checkpoint_key()
    .to_string();
    replica
        .client()
        .execute(
            "INSERT INTO oplog_checkpoint (source, aggregate_name, seq, chain, entry_id, entry_created_at) \
             VALUES ($1, 'agg', 3, $2, $3, now())",
            &[&key, &w[2].chain.to_vec(), &w[2].id],
        )
        .unwrap();
    let options = VerifyOptions {
        against: Some(Target::database(&replica.url)),
        ..VerifyOptions::default()
    };
    assert!(run(&db, &options).is_clean());

    replica
        .client()
        .execute(
            "INSERT INTO oplog_skipped (source, aggregate_name, seq, entry_id, chain, reason, error) \
             VALUES ($1, 'agg', 2, $2, $3, 'replayed by hand', 'mask path \"emial\" is not a field')",
            &[&key, &w[1].id, &w[1].chain.to_vec()],
        )
        .unwrap();
    let report = run(&db, &options);
    assert_eq!(
        named(&report),
        [at(FindingKind::SkippedEntry, "agg", 2, Some(w[1].id))]
    );
    assert!(!report.is_clean());
    let detail = &report.findings[0].detail;
    assert!(
        detail.contains("replayed by hand") && detail.contains(r#"mask path "emial""#),
        "{detail}"
    );
}

// Catalogs.

#[test]
fn only_the_catalogs_entries_name_decide_what_is_compared() {
    // The application's entries map users only, and the application has a
    // table of its own named like the demo's accounts, which a catalog
    // stored by another writer maps.
    let db = TestDb::new();
    let users = oplog::demo::catalog_of(&["demo.v1.User"]);
    let app = Oplog::new(users, Keyring::from_json(&keys()).unwrap());
    write_users(&db, &app, "agg", &["u1", "u2"]);
    db.client()
        .batch_execute(
            "INSERT INTO demo_account (id, tenant_id, name, created_at, balance_cents) \
             VALUES ('a1', 't1', 'Acme', '2024-01-01 12:00:00+00', 1500)",
        )
        .unwrap();
    let replica = TestDb::new();
    copy_rows(&db, &replica, "demo_user");
    let options = VerifyOptions {
        against: Some(Target::database(&replica.url)),
        ..VerifyOptions::default()
    };
    let tables = |report: &VerifyReport| -> Vec<String> {
        report.tables.iter().map(|t| t.table.clone()).collect()
    };
    let report = run(&db, &options);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(tables(&report), ["demo_user"]);
    assert_eq!(report.notes, Vec::<String>::new());

    // A catalog stored without an entry that names it, as a writer may
    // store one: copied from a database where an entry was written with it.
    let other = TestDb::new();
    write_users(&other, &oplog(), "x", &["u9"]);
    let row = other
        .client()
        .query_one("SELECT digest, catalog FROM oplog_catalog", &[])
        .unwrap();
    let (digest, bytes): (Vec<u8>, Vec<u8>) = (row.get(0), row.get(1));
    db.client()
        .execute(
            "INSERT INTO oplog_catalog (digest, catalog) VALUES ($1, $2)",
            &[&digest, &bytes],
        )
        .unwrap();
    let report = run(&db, &options);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(tables(&report), ["demo_user"]);
    assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
    assert!(
        report.notes[0].starts_with("1 stored type catalog is named by no entry")
            && report.notes[0].contains(&oplog_hex(&digest)),
        "{}",
        report.notes[0]
    );
}

// Entries near the size limit.

/// A wrapper that does not encrypt, so that entries of tens of megabytes
/// take no time in unoptimised builds: the blob is a hash of the associated
/// data, then the plaintext. It authenticates the associated data only (the
/// entry's digest covers the plaintext).
struct Clear;

fn clear_tag(aad: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(aad).to_vec()
}

impl oplog::Wrapper for Clear {
    fn key_id(&self) -> &str {
        "clear"
    }

    fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> oplog::Result<Vec<u8>> {
        let mut blob = clear_tag(aad);
        blob.extend_from_slice(plaintext);
        Ok(blob)
    }

    fn decrypt(&self, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, oplog::CryptoError> {
        match blob.split_at_checked(32) {
            Some((tag, plaintext)) if tag == clear_tag(aad) => Ok(plaintext.to_vec()),
            Some(_) => Err(oplog::CryptoError::Authentication),
            None => Err(oplog::CryptoError::Malformed("shorter than its tag")),
        }
    }
}

#[test]
fn entries_near_the_size_limit_are_verified_and_listed() {
    let db = TestDb::new();
    let log = Oplog::new(oplog::demo::user_catalog(), Clear);
    let limits = oplog::Limits::default();
    // Four users whose avatars fill a frame each: a queue just under the
    // limit.
    let avatar = limits.max_queue_bytes / 4 - 4096;
    assert!(avatar + 4096 <= limits.max_frame_bytes);
    let mut client = db.client();
    let mut write = |aggregate: &str, users: usize, avatar: usize| {
        let mut entry = oplog::NewEntry::new(aggregate);
        for i in 0..users {
            let mut user = crate::support::user(&format!("u{i}"));
            user.avatar = vec![7; avatar];
            entry.create(&user).unwrap();
        }
        assert!(entry.queue().as_bytes().len() <= limits.max_queue_bytes);
        let mut tx = client.transaction().unwrap();
        log.write(&mut tx, &entry).unwrap();
        tx.commit().unwrap();
    };
    write("a", 1, 3);
    write("big", 1, 3);
    write("big", 4, avatar);
    write("big", 1, 3);
    write("big", 4, avatar);
    write("big", 1, 3);

    let report = verify(&log, &db.url, &VerifyOptions::default()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.entries_checked, 6);

    let mut client = db.client();
    let listed: Vec<(String, i64, usize, usize)> = log
        .entries(&mut client, None, 0)
        .map(|entry| {
            let entry = entry.unwrap();
            let user: oplog::demo::User = entry.operations[0].decode().unwrap();
            (
                entry.aggregate,
                entry.seq,
                entry.operations.len(),
                user.avatar.len(),
            )
        })
        .collect();
    let big = |seq, users, size| ("big".to_string(), seq, users, size);
    assert_eq!(
        listed,
        [
            ("a".to_string(), 1, 1, 3),
            big(1, 1, 3),
            big(2, 4, avatar),
            big(3, 1, 3),
            big(4, 4, avatar),
            big(5, 1, 3),
        ]
    );
}
