//! Least privilege against a real PostgreSQL: a writer appends but cannot
//! rewrite history, a reader follows and verifies and manages only its own
//! consumers, a trimmer trims without any DELETE privilege of its own, and
//! none of them can make a function that runs with the owner's rights do
//! anything else, whatever temporary tables it creates.

use std::time::Duration;

use diesel::Connection as _;
use diesel_migrations::MigrationHarness;
use oplog::{
    grant, register_consumer, remove_consumer, trim, verify, Error, FollowEvent, FollowOptions,
    Follower, Keyring, NewEntry, Oplog, Role, Target, TrimOptions, VerifyOptions,
};

use crate::support::{admin_url, create_users, superuser_exec, user, TestDb};

/// A login role that exists while the value lives. Declare it before the
/// databases it is granted on, so that they are dropped first.
pub(crate) struct TestRole {
    pub(crate) name: String,
}

impl TestRole {
    pub(crate) fn new(kind: &str) -> TestRole {
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
    pub(crate) fn url(&self, url: &str) -> String {
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

pub(crate) fn denied(c: &mut postgres::Client, sql: &str) {
    refused(c, sql, "42501");
}

/// `sql` fails with SQLSTATE `code`.
pub(crate) fn refused(c: &mut postgres::Client, sql: &str, code: &str) {
    let err = Error::from(c.batch_execute(sql).unwrap_err());
    assert_eq!(err.sqlstate(), Some(code), "{sql}: {err}");
}

/// A connection to `db` as `role`.
fn connect_as(role: &TestRole, db: &TestDb) -> postgres::Client {
    postgres::Client::connect(&role.url(&db.url), postgres::NoTls).unwrap()
}

/// Rows changed by `sql`.
fn changed(c: &mut postgres::Client, sql: &str) -> u64 {
    c.execute(sql, &[]).unwrap()
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
    let log = Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::from_json(&keys).unwrap(),
    );
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
        "SELECT oplog_trim('agg', 5, 100, interval '0')",
        "ALTER TABLE oplog_entry DISABLE TRIGGER ALL",
        "DROP TABLE oplog_entry CASCADE",
        "UPDATE oplog_trim_point SET seq = 1",
        "INSERT INTO oplog_trim_point VALUES ('agg', 4, decode(repeat('00', 32), 'hex'))",
    ] {
        denied(&mut c, sql);
    }
    let report = verify(
        &Oplog::new(
            oplog::demo::user_catalog(),
            Keyring::from_json(&keys).unwrap(),
        ),
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
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
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
    denied(&mut c, "SELECT oplog_trim('agg', 8, 100, interval '0')");

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
        oplog::demo::user_catalog(),
        Keyring::from_json(&ring.to_json()).unwrap(),
    );
    create_users(&db.url, &old, "agg", (0..4).map(|i| format!("u{i}")));
    ring.rotate();
    let new = Oplog::new(oplog::demo::user_catalog(), ring);

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

#[test]
fn a_key_administrator_can_destroy_a_payload_but_not_unnoticed() {
    let keys = TestRole::new("keys");
    let db = TestDb::new();
    grant(&mut db.client(), Role::Keys, &keys.name).unwrap();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(&db.url, &log, "agg", (0..3).map(|i| format!("u{i}")));
    // Replacing the ciphertext is what a rewrap does; the database cannot
    // tell a new encryption of the same plaintext from garbage.
    let mut k = connect_as(&keys, &db);
    let replaced: bool = k
        .query_one(
            "SELECT oplog_rewrap(id, key_id, key_id, set_byte(data, 20, get_byte(data, 20) # 255)) \
             FROM oplog_entry WHERE seq = 2",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(replaced);
    let report = verify(&log, &db.url, &VerifyOptions::default()).unwrap();
    let found: Vec<(oplog::FindingKind, Option<i64>)> =
        report.findings.iter().map(|f| (f.kind, f.seq)).collect();
    assert_eq!(found, [(oplog::FindingKind::Decryption, Some(2))]);
}

// Functions that run with the owner's rights, against temporary tables.
//
// Every role may create temporary tables, and PostgreSQL looks for a table
// in pg_temp before any schema unless the search path names pg_temp
// elsewhere. Each test below shadows one table that such a function reads
// or writes with a temporary table of the same name, filled with lies, and
// gives it a trigger that would grant the attacker DELETE, UPDATE and
// TRUNCATE on the entries if it ran with the owner's rights. The real
// tables must decide, and the attacker must gain nothing.

/// In the attacker's session: the trigger function that escalates.
const ESCALATE: &str =
    "CREATE FUNCTION pg_temp.oplog_escalate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT DELETE, UPDATE, TRUNCATE ON public.oplog_entry TO %I', session_user);
    RETURN NULL;
END $$";

/// In the attacker's session: a temporary `table` like the real one,
/// filled by `fill`, whose every change runs the escalating trigger.
fn shadow(c: &mut postgres::Client, table: &str, fill: &str) {
    c.batch_execute(ESCALATE).unwrap();
    c.batch_execute(&format!(
        "CREATE TEMP TABLE {table} (LIKE public.{table} INCLUDING ALL); {fill};
         CREATE TRIGGER escalate BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON pg_temp.{table}
             FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.oplog_escalate()"
    ))
    .unwrap();
}

/// Whether `role` may delete, update or truncate entries.
fn may_rewrite_entries(db: &TestDb, role: &TestRole) -> bool {
    db.scalar(&format!(
        "SELECT has_table_privilege('{}', 'public.oplog_entry', 'DELETE, UPDATE, TRUNCATE')",
        role.name
    ))
}

/// The trim function's call for everything the caller may delete.
const TRIM_ALL: &str = "SELECT o_deleted, o_trim_seq \
    FROM oplog_trim('agg', 9223372036854775807, 1000000, interval '0')";

/// A log of 8 entries on "agg", a consumer that has applied 3 of them, and
/// the owner's retention floor of `floor`; a trimmer that shadows `table`
/// (filled by `fill`) then calls the trim function. Checks that it gained
/// no privilege, that the trim point is the real chain value at its seq,
/// and that the log verifies; returns (deleted, trim point).
fn trim_with_shadow(table: &str, fill: &str, floor: &str) -> (i64, i64) {
    let trimmer = TestRole::new("trimmer");
    let db = TestDb::new();
    let mut owner = db.client();
    grant(&mut owner, Role::Trimmer, &trimmer.name).unwrap();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(&db.url, &log, "agg", (0..8).map(|i| format!("u{i}")));
    owner
        .batch_execute(
            "INSERT INTO oplog_consumer (name) VALUES ('replica'); \
             INSERT INTO oplog_consumer_position (consumer, aggregate_name, seq) VALUES ('replica', 'agg', 3)",
        )
        .unwrap();
    if !floor.is_empty() {
        owner
            .batch_execute(&format!(
                "UPDATE oplog_trim_policy SET min_age = interval '{floor}'"
            ))
            .unwrap();
    }
    let chains: Vec<Vec<u8>> = owner
        .query("SELECT chain FROM oplog_entry ORDER BY seq", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    let mut t = connect_as(&trimmer, &db);
    shadow(&mut t, table, fill);
    let row = t.query_one(TRIM_ALL, &[]).unwrap();
    let (deleted, trimmed): (i64, i64) = (row.get(0), row.get(1));

    assert!(!may_rewrite_entries(&db, &trimmer), "the trimmer escalated");
    let real: Option<(i64, Vec<u8>)> = owner
        .query_opt(
            "SELECT seq, chain FROM oplog_trim_point WHERE aggregate_name = 'agg'",
            &[],
        )
        .unwrap()
        .map(|r| (r.get(0), r.get(1)));
    let left: i64 = db.scalar("SELECT count(*) FROM oplog_entry");
    assert_eq!(left, 8 - deleted, "the function's count is the real one");
    match real {
        Some((seq, chain)) => {
            assert_eq!(seq, trimmed);
            let at = usize::try_from(seq - 1).unwrap();
            assert_eq!(chain, chains[at], "the trim point's chain is the real one");
        }
        None => assert_eq!(trimmed, 0, "trimmed without a real trim point"),
    }
    let report = verify(&log, &db.url, &VerifyOptions::default()).unwrap();
    assert!(report.is_clean(), "{:?}", report.findings);
    (deleted, trimmed)
}

#[test]
fn a_temporary_trim_point_table_cannot_run_sql_as_the_owner() {
    assert_eq!(trim_with_shadow("oplog_trim_point", "", ""), (3, 3));
}

#[test]
fn a_temporary_consumer_table_cannot_hide_a_consumer_from_trimming() {
    assert_eq!(trim_with_shadow("oplog_consumer", "", ""), (3, 3));
}

#[test]
fn a_temporary_position_table_cannot_advance_a_consumer_for_trimming() {
    let fill = "INSERT INTO pg_temp.oplog_consumer_position (consumer, aggregate_name, seq) \
                VALUES ('replica', 'agg', 8)";
    assert_eq!(
        trim_with_shadow("oplog_consumer_position", fill, ""),
        (3, 3)
    );
}

#[test]
fn a_temporary_entry_table_cannot_forge_the_trim_point_or_keep_entries() {
    let fill = "INSERT INTO pg_temp.oplog_entry OVERRIDING SYSTEM VALUE SELECT * FROM public.oplog_entry; \
                UPDATE pg_temp.oplog_entry SET chain = decode(repeat('ab', 32), 'hex')";
    assert_eq!(trim_with_shadow("oplog_entry", fill, ""), (3, 3));
}

#[test]
fn a_temporary_ticket_table_cannot_change_what_is_trimmed() {
    let fill = "INSERT INTO pg_temp.oplog_ticket (name, version) VALUES ('agg', 2)";
    assert_eq!(trim_with_shadow("oplog_ticket", fill, ""), (3, 3));
}

#[test]
fn a_temporary_policy_table_cannot_lower_the_owners_retention_floor() {
    // The entries are seconds old and the owner's floor is an hour; the
    // attacker's copy of the policy says zero.
    let fill = "INSERT INTO pg_temp.oplog_trim_policy DEFAULT VALUES";
    assert_eq!(
        trim_with_shadow("oplog_trim_policy", fill, "1 hour"),
        (0, 0)
    );
}

/// A log of 5 entries on "agg" written by the owner, and a writer role.
fn writer_setup() -> (TestRole, TestDb) {
    let writer = TestRole::new("writer");
    let db = TestDb::new();
    grant(&mut db.client(), Role::Writer, &writer.name).unwrap();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(&db.url, &log, "agg", (0..5).map(|i| format!("u{i}")));
    (writer, db)
}

/// The writer's own call of the append function for seq `seq` of "agg"
/// after the chain value `prev`, with one metadata pair and the catalog
/// `catalog`: (entry id, ticket version, catalog missing).
fn append_directly(
    c: &mut postgres::Client,
    seq: i64,
    prev: &[u8],
    catalog: Option<&[u8]>,
) -> (Option<i64>, Option<i64>, Option<bool>) {
    let row = c
        .query_one(
            "SELECT o_entry_id, o_version, o_missing_catalog FROM oplog_append(
                 gen_random_uuid(), 'agg', $1, $2, 1::smallint, 'k', '\\x00',
                 decode(repeat('00', 32), 'hex'), decode(repeat('01', 32), 'hex'),
                 ARRAY['actor'], ARRAY['mallory'], false, $3, false)",
            &[&seq, &prev, &catalog],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// The real ticket of "agg": (version, chain).
fn real_ticket(db: &TestDb) -> (i64, Vec<u8>) {
    let row = db
        .client()
        .query_one(
            "SELECT version, chain FROM oplog_ticket WHERE name = 'agg'",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn a_temporary_ticket_table_cannot_make_the_append_skip_ahead() {
    let (writer, db) = writer_setup();
    let mut w = connect_as(&writer, &db);
    shadow(
        &mut w,
        "oplog_ticket",
        "INSERT INTO pg_temp.oplog_ticket (name, version) VALUES ('agg', 41)",
    );
    let zero = vec![0u8; 32];
    let (id, version, _) = append_directly(&mut w, 42, &zero, None);
    assert_eq!((id, version), (None, Some(5)), "the real ticket decided");
    assert_eq!(real_ticket(&db).0, 5);
    assert_eq!(db.scalar::<i64>("SELECT max(seq) FROM oplog_entry"), 5);
    assert!(!may_rewrite_entries(&db, &writer));
}

#[test]
fn a_temporary_entry_table_cannot_take_the_appended_entry() {
    let (writer, db) = writer_setup();
    let mut w = connect_as(&writer, &db);
    shadow(&mut w, "oplog_entry", "");
    let (_, prev) = real_ticket(&db);
    let (id, version, _) = append_directly(&mut w, 6, &prev, None);
    assert_eq!(version, Some(6));
    let stored: i64 =
        db.scalar("SELECT id FROM oplog_entry WHERE aggregate_name = 'agg' AND seq = 6");
    assert_eq!(id, Some(stored), "the entry is in the real table");
    let shadowed: i64 = w
        .query_one("SELECT count(*) FROM pg_temp.oplog_entry", &[])
        .unwrap()
        .get(0);
    assert_eq!(shadowed, 0);
    assert!(!may_rewrite_entries(&db, &writer));
}

#[test]
fn a_temporary_metadata_table_cannot_take_the_appended_metadata() {
    let (writer, db) = writer_setup();
    let mut w = connect_as(&writer, &db);
    shadow(&mut w, "oplog_metadata", "");
    let (_, prev) = real_ticket(&db);
    let (id, _, _) = append_directly(&mut w, 6, &prev, None);
    let metadata: String = db.scalar(&format!(
        "SELECT value FROM oplog_metadata WHERE entry_id = {}",
        id.unwrap()
    ));
    assert_eq!(metadata, "mallory");
    assert!(!may_rewrite_entries(&db, &writer));
}

#[test]
fn a_temporary_catalog_table_cannot_stand_in_for_a_stored_catalog() {
    let (writer, db) = writer_setup();
    let mut w = connect_as(&writer, &db);
    shadow(
        &mut w,
        "oplog_catalog",
        "INSERT INTO pg_temp.oplog_catalog (digest, catalog) VALUES (sha256('\\x01'), '\\x01')",
    );
    let (_, prev) = real_ticket(&db);
    let digest: Vec<u8> = db.scalar("SELECT sha256('\\x01')");
    let (id, _, missing) = append_directly(&mut w, 6, &prev, Some(&digest));
    assert_eq!(
        (id, missing),
        (None, Some(true)),
        "the real catalogs decided"
    );
    assert_eq!(real_ticket(&db).0, 5);
    assert!(!may_rewrite_entries(&db, &writer));
}

/// The writer's own call of the append that aborts, for seq `seq` of "agg"
/// after the chain value `prev`.
fn append_or_abort_directly(
    c: &mut postgres::Client,
    seq: i64,
    prev: &[u8],
) -> Result<i64, postgres::Error> {
    c.query_one(
        "SELECT oplog_append_or_abort(
             gen_random_uuid(), 'agg', $1, $2, 1::smallint, 'k', '\\x00',
             decode(repeat('00', 32), 'hex'), decode(repeat('01', 32), 'hex'),
             ARRAY['actor'], ARRAY['mallory'], NULL, false)",
        &[&seq, &prev],
    )
    .map(|row| row.get(0))
}

#[test]
fn the_append_that_aborts_adds_only_the_next_entry_and_only_for_writers() {
    let (writer, db) = writer_setup();
    let mut w = connect_as(&writer, &db);
    let (_, prev) = real_ticket(&db);
    // A skipped seq, a wrong chain and a shadowed ticket table all abort,
    // with the retryable serialization failure, and write nothing.
    let zero = vec![0u8; 32];
    for (seq, chain) in [(7, prev.as_slice()), (6, zero.as_slice())] {
        let err = Error::from(append_or_abort_directly(&mut w, seq, chain).unwrap_err());
        assert_eq!(err.sqlstate(), Some("40001"), "{err}");
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("at version 5"), "{err}");
    }
    shadow(
        &mut w,
        "oplog_ticket",
        "INSERT INTO pg_temp.oplog_ticket (name, version) VALUES ('agg', 41)",
    );
    let err = Error::from(append_or_abort_directly(&mut w, 42, &zero).unwrap_err());
    assert_eq!(err.sqlstate(), Some("40001"), "{err}");
    assert_eq!(real_ticket(&db).0, 5);
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM oplog_entry"), 5);
    // The next entry goes in, with its metadata, through the real tables.
    let id = append_or_abort_directly(&mut w, 6, &prev).unwrap();
    assert_eq!(real_ticket(&db).0, 6);
    let metadata: String = db.scalar(&format!(
        "SELECT value FROM oplog_metadata WHERE entry_id = {id}"
    ));
    assert_eq!(metadata, "mallory");
    assert!(!may_rewrite_entries(&db, &writer));
    // A reader may not append at all.
    let reader = TestRole::new("reader");
    grant(&mut db.client(), Role::Reader, &reader.name).unwrap();
    let mut r = connect_as(&reader, &db);
    let err = Error::from(append_or_abort_directly(&mut r, 7, &prev).unwrap_err());
    assert_eq!(err.sqlstate(), Some("42501"), "{err}");
}

#[test]
fn every_security_definer_function_pins_its_search_path_and_is_not_for_everyone() {
    let db = TestDb::new();
    let rows = db
        .client()
        .query(
            "SELECT p.oid::regprocedure::text, quote_ident(n.nspname), coalesce(p.proconfig, '{}'),
                    p.proacl IS NULL OR EXISTS (
                        SELECT 1 FROM aclexplode(p.proacl) a
                        WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE p.prosecdef ORDER BY 1",
            &[],
        )
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    for expected in ["oplog_append(", "oplog_append_or_abort(", "oplog_trim("] {
        assert!(
            names.iter().any(|n| n.starts_with(expected)),
            "{expected} is not SECURITY DEFINER: {names:?}"
        );
    }
    for row in &rows {
        let (name, schema, config, public): (String, String, Vec<String>, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let paths: Vec<&String> = config
            .iter()
            .filter(|c| c.starts_with("search_path="))
            .collect();
        assert_eq!(
            paths,
            [&format!("search_path={schema}, pg_temp")],
            "{name}: its own schema, then pg_temp last"
        );
        assert!(!public, "{name} is executable by PUBLIC");
    }
    // The functions that run with the caller's rights are pinned as well,
    // so that nothing an oplog function names depends on the caller.
    let unpinned: Vec<String> = db
        .client()
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
             WHERE p.proname LIKE 'oplog\\_%'
               AND NOT coalesce(p.proconfig, '{}') @> ARRAY['search_path=public, pg_temp']",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(unpinned.is_empty(), "{unpinned:?}");
}

#[test]
fn the_functions_are_pinned_to_the_schema_the_migrations_ran_in() {
    let db = TestDb::empty();
    db.client()
        .batch_execute(&format!(
            "CREATE SCHEMA \"Op Log\"; ALTER DATABASE \"{}\" SET search_path = \"Op Log\"",
            db.name
        ))
        .unwrap();
    oplog::migrate_url(&db.url).unwrap();
    let mut c = db.client();
    c.batch_execute(oplog::demo::SCHEMA).unwrap();
    let config: Vec<String> = c
        .query_one(
            "SELECT proconfig FROM pg_proc WHERE oid = '\"Op Log\".oplog_trim(text, bigint, bigint, interval)'::regprocedure",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(config, ["search_path=\"Op Log\", pg_temp"]);
    // Writing and trimming work there, with an empty public schema.
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(&db.url, &log, "agg", (0..3).map(|i| format!("u{i}")));
    let report = trim(
        &mut c,
        &TrimOptions {
            older_than: Duration::ZERO,
            ..TrimOptions::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.deleted, 3);
    assert!(verify(&log, &db.url, &VerifyOptions::default())
        .unwrap()
        .is_clean());
}

// What a writer may write.

#[test]
fn a_writer_adds_only_the_next_entry_with_its_own_metadata_and_only_true_catalogs() {
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
    let log = Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::from_json(&keys).unwrap(),
    );
    // Through rust-postgres: a new aggregate, the first catalog, metadata.
    create_users(
        &writer.url(&db.url),
        &log,
        "agg",
        (0..3).map(|i| format!("u{i}")),
    );
    // Through diesel, and creating a ticket by name.
    let mut d = diesel::PgConnection::establish(&writer.url(&db.url)).unwrap();
    log.ensure_ticket(&mut d, "other").unwrap();
    d.transaction(|c| {
        let mut entry = NewEntry::new("other");
        entry.metadata("actor", "bob").create(&user("d1"))?;
        log.write(c, &entry)
    })
    .unwrap();

    let mut w = connect_as(&writer, &db);
    let first: i64 = db.scalar("SELECT min(id) FROM oplog_entry");
    for sql in [
        // Metadata for an existing entry, which would then never
        // authenticate again.
        format!("INSERT INTO oplog_metadata (entry_id, ordinal, key, value) VALUES ({first}, 7, 'actor', 'mallory')"),
        // An entry of its own making, at any seq.
        "INSERT INTO oplog_entry (entry_uuid, aggregate_name, seq, format, key_id, data, digest, chain) \
         SELECT gen_random_uuid(), 'agg', 1000, 1, 'k', '\\x00', digest, chain FROM oplog_entry LIMIT 1".into(),
        // Moving a ticket, or creating one past version 0.
        "UPDATE oplog_ticket SET version = 1000 WHERE name = 'agg'".into(),
        "UPDATE oplog_ticket SET chain = decode(repeat('00', 32), 'hex')".into(),
        "INSERT INTO oplog_ticket (name, version) VALUES ('poisoned', 1000)".into(),
        // Locking every ticket, which would stop every other writer.
        "SELECT * FROM oplog_ticket FOR UPDATE".into(),
    ] {
        denied(&mut w, &sql);
    }
    // A catalog must be stored under its own digest.
    refused(
        &mut w,
        "INSERT INTO oplog_catalog (digest, catalog) VALUES (sha256('\\x01'), '\\x02')",
        "23514",
    );
    // One that does is stored (and rolled back here, so that verification
    // sees only the catalog the entries use).
    w.batch_execute(
        "BEGIN; INSERT INTO oplog_catalog (digest, catalog) VALUES (sha256('\\x01'), '\\x01'); ROLLBACK",
    )
    .unwrap();

    let report = verify(
        &Oplog::new(
            oplog::demo::user_catalog(),
            Keyring::from_json(&keys).unwrap(),
        ),
        &db.url,
        &VerifyOptions::default(),
    )
    .unwrap();
    assert_eq!(report.entries_checked, 4);
    assert!(report.is_clean(), "{:?}", report.findings);
}

/// What `oplog grant writer` and `oplog grant trimmer` gave before the
/// least-privilege migration.
const OLD_WRITER: &str = "GRANT SELECT, INSERT ON oplog_ticket TO {r};
GRANT UPDATE (version, chain) ON oplog_ticket TO {r};
GRANT SELECT, INSERT ON oplog_entry TO {r};
GRANT SELECT, INSERT ON oplog_metadata TO {r};
GRANT SELECT, INSERT ON oplog_catalog TO {r};
GRANT EXECUTE ON FUNCTION oplog_append(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], boolean, bytea, boolean) TO {r}";
const OLD_READER: &str = "GRANT SELECT ON oplog_ticket, oplog_entry, oplog_metadata, oplog_catalog, oplog_source, oplog_trim_point TO {r};
GRANT SELECT, INSERT, UPDATE ON oplog_consumer, oplog_consumer_position TO {r};
GRANT DELETE ON oplog_consumer, oplog_consumer_position TO {r}";
const OLD_TRIMMER: &str = "GRANT SELECT ON oplog_ticket, oplog_entry, oplog_trim_point, oplog_consumer, oplog_consumer_position TO {r};
GRANT EXECUTE ON FUNCTION oplog_trim_bound(text, interval) TO {r};
GRANT EXECUTE ON FUNCTION oplog_trim(text, bigint, bigint) TO {r}";

/// Runs the migrations before the least-privilege one on an empty database.
fn migrate_before_least_privilege(db: &TestDb) -> diesel::PgConnection {
    let mut d = db.diesel();
    for _ in 0..4 {
        d.run_next_migration(oplog::MIGRATIONS).unwrap();
    }
    d
}

#[test]
fn the_upgrade_takes_direct_writes_from_roles_granted_before_it_and_they_keep_working() {
    let writer = TestRole::new("writer");
    let trimmer = TestRole::new("trimmer");
    let reader = TestRole::new("reader");
    let db = TestDb::empty();
    migrate_before_least_privilege(&db);
    let mut owner = db.client();
    owner.batch_execute(oplog::demo::SCHEMA).unwrap();
    owner
        .batch_execute(&OLD_WRITER.replace("{r}", &writer.name))
        .unwrap();
    owner
        .batch_execute(&OLD_TRIMMER.replace("{r}", &trimmer.name))
        .unwrap();
    owner
        .batch_execute(&OLD_READER.replace("{r}", &reader.name))
        .unwrap();
    owner
        .batch_execute(&format!(
            "GRANT SELECT, INSERT ON demo_user TO {}",
            writer.name
        ))
        .unwrap();
    oplog::migrate_url(&db.url).unwrap();

    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(
        &writer.url(&db.url),
        &log,
        "agg",
        (0..4).map(|i| format!("u{i}")),
    );
    let mut w = connect_as(&writer, &db);
    log.ensure_ticket(&mut w, "fresh").unwrap();
    let first: i64 = db.scalar("SELECT min(id) FROM oplog_entry");
    denied(
        &mut w,
        &format!("INSERT INTO oplog_metadata (entry_id, ordinal, key, value) VALUES ({first}, 7, 'a', 'b')"),
    );
    denied(
        &mut w,
        "UPDATE oplog_ticket SET version = 1000 WHERE name = 'agg'",
    );
    denied(
        &mut w,
        "INSERT INTO oplog_ticket (name, version) VALUES ('poisoned', 1000)",
    );

    // A reader may still see what a trim would do; the trimmer trims.
    let dry = trim(
        &mut connect_as(&reader, &db),
        &TrimOptions {
            older_than: Duration::ZERO,
            dry_run: true,
            ..TrimOptions::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(dry.deleted, 4);
    let mut t = connect_as(&trimmer, &db);
    let report = trim(
        &mut t,
        &TrimOptions {
            older_than: Duration::ZERO,
            ..TrimOptions::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.deleted, 4);
    assert!(verify(&log, &db.url, &VerifyOptions::default())
        .unwrap()
        .is_clean());
}

#[test]
fn reverting_the_upgrade_restores_the_previous_functions_and_grants() {
    let writer = TestRole::new("writer");
    let trimmer = TestRole::new("trimmer");
    let db = TestDb::new();
    let mut owner = db.client();
    grant(&mut owner, Role::Writer, &writer.name).unwrap();
    grant(&mut owner, Role::Trimmer, &trimmer.name).unwrap();
    owner
        .batch_execute(&format!(
            "GRANT SELECT, INSERT ON demo_user TO {}",
            writer.name
        ))
        .unwrap();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(
        &writer.url(&db.url),
        &log,
        "agg",
        (0..2).map(|i| format!("u{i}")),
    );

    // Back past the migrations after it, then the upgrade itself.
    let mut conn = db.diesel();
    while conn
        .revert_last_migration(oplog::MIGRATIONS)
        .unwrap()
        .to_string()
        != "20261129000005"
    {}
    let trim_config: Option<Vec<String>> = db.scalar(
        "SELECT proconfig FROM pg_proc WHERE oid = 'oplog_trim(text, bigint, bigint)'::regprocedure",
    );
    assert_eq!(
        trim_config,
        Some(vec!["search_path=\"$user\", public".to_string()])
    );
    let definer: bool = db.scalar("SELECT prosecdef FROM pg_proc WHERE proname = 'oplog_append'");
    assert!(!definer);
    // The writer appends with its own rights again, the trimmer trims with
    // the three-argument function.
    create_users(
        &writer.url(&db.url),
        &log,
        "agg",
        (2..4).map(|i| format!("u{i}")),
    );
    let row = connect_as(&trimmer, &db)
        .query_one("SELECT o_deleted FROM oplog_trim('agg', 2, 100)", &[])
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);

    oplog::migrate_url(&db.url).unwrap();
    create_users(
        &writer.url(&db.url),
        &log,
        "agg",
        (4..6).map(|i| format!("u{i}")),
    );
    let report = trim(
        &mut connect_as(&trimmer, &db),
        &TrimOptions {
            older_than: Duration::ZERO,
            ..TrimOptions::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.deleted, 4);
    assert!(verify(&log, &db.url, &VerifyOptions::default())
        .unwrap()
        .is_clean());
}

// Consumers belong to the role that registered them.

#[test]
fn a_reader_manages_only_the_consumers_it_registered() {
    let alice = TestRole::new("reader");
    let bob = TestRole::new("reader");
    let trimmer = TestRole::new("trimmer");
    let db = TestDb::new();
    let mut owner = db.client();
    for r in [&alice, &bob] {
        grant(&mut owner, Role::Reader, &r.name).unwrap();
    }
    grant(&mut owner, Role::Trimmer, &trimmer.name).unwrap();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(&db.url, &log, "agg", (0..8).map(|i| format!("u{i}")));

    let mut a = connect_as(&alice, &db);
    register_consumer(&mut a, "lagging", &[("agg".into(), 2)]).unwrap();
    let position = || -> i64 {
        db.scalar("SELECT seq FROM oplog_consumer_position WHERE consumer = 'lagging' AND aggregate_name = 'agg'")
    };

    let mut b = connect_as(&bob, &db);
    // Moving, dropping or adding positions of alice's consumer changes
    // nothing or is refused.
    assert_eq!(
        changed(
            &mut b,
            "UPDATE oplog_consumer_position SET seq = 8 WHERE consumer = 'lagging'"
        ),
        0
    );
    assert_eq!(
        changed(
            &mut b,
            "DELETE FROM oplog_consumer_position WHERE consumer = 'lagging'"
        ),
        0
    );
    denied(&mut b, "INSERT INTO oplog_consumer_position (consumer, aggregate_name, seq) VALUES ('lagging', 'other', 5)");
    // Nor can bob remove the consumer, take over its name or its owner.
    assert_eq!(
        changed(&mut b, "DELETE FROM oplog_consumer WHERE name = 'lagging'"),
        0
    );
    assert!(!remove_consumer(&mut b, "lagging").unwrap());
    assert_eq!(
        changed(
            &mut b,
            &format!("UPDATE oplog_consumer SET owner = '{}'", bob.name)
        ),
        0
    );
    denied(&mut b, "INSERT INTO oplog_consumer (name) VALUES ('lagging') ON CONFLICT (name) DO UPDATE SET seen_at = now()");
    refused(
        &mut b,
        "INSERT INTO oplog_consumer (name) VALUES ('lagging')",
        "23505",
    );
    denied(
        &mut b,
        &format!(
            "INSERT INTO oplog_consumer (name, owner) VALUES ('mine', '{}')",
            alice.name
        ),
    );
    let err = register_consumer(&mut b, "lagging", &[("agg".into(), 8)]).unwrap_err();
    assert_eq!(err.sqlstate(), Some("42501"), "{err}");
    assert_eq!(position(), 2);

    // The command line says why nothing was removed.
    let out = crate::cli::oplog_cmd()
        .args([
            "consumers",
            "remove",
            "lagging",
            "--database-url",
            &bob.url(&db.url),
        ])
        .output()
        .unwrap();
    crate::cli::failure(&out, &["registered by role", &alice.name]);
    // Bob manages his own consumer.
    register_consumer(&mut b, "bobs", &[("agg".into(), 4)]).unwrap();
    assert_eq!(
        changed(
            &mut b,
            "UPDATE oplog_consumer_position SET seq = 5 WHERE consumer = 'bobs'"
        ),
        1
    );
    assert!(remove_consumer(&mut b, "bobs").unwrap());

    // Trimming still honours the lagging consumer.
    let report = trim(
        &mut connect_as(&trimmer, &db),
        &TrimOptions {
            older_than: Duration::ZERO,
            ..TrimOptions::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.deleted, 2);
    let listed = oplog::consumers(&mut b, Duration::from_secs(3600)).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].owner.as_deref()),
        ("lagging", Some(alice.name.as_str()))
    );
    // Alice moves and removes her own; the owner of the tables may too.
    register_consumer(&mut a, "lagging", &[("agg".into(), 6)]).unwrap();
    assert_eq!(position(), 6);
    assert!(remove_consumer(&mut owner, "lagging").unwrap());
}

#[test]
fn consumers_registered_before_owners_were_recorded_are_claimed_by_their_next_registration() {
    let alice = TestRole::new("reader");
    let bob = TestRole::new("reader");
    let db = TestDb::empty();
    migrate_before_least_privilege(&db);
    let mut owner = db.client();
    owner
        .batch_execute(
            "INSERT INTO oplog_consumer (name) VALUES ('old'); \
             INSERT INTO oplog_consumer_position (consumer, aggregate_name, seq) VALUES ('old', 'agg', 3)",
        )
        .unwrap();
    oplog::migrate_url(&db.url).unwrap();
    for r in [&alice, &bob] {
        grant(&mut owner, Role::Reader, &r.name).unwrap();
    }
    let listed = oplog::consumers(&mut owner, Duration::from_secs(3600)).unwrap();
    assert_eq!(listed[0].owner, None);
    register_consumer(&mut connect_as(&alice, &db), "old", &[("agg".into(), 3)]).unwrap();
    let listed = oplog::consumers(&mut owner, Duration::from_secs(3600)).unwrap();
    assert_eq!(listed[0].owner.as_deref(), Some(alice.name.as_str()));
    let mut b = connect_as(&bob, &db);
    assert_eq!(
        changed(&mut b, "UPDATE oplog_consumer_position SET seq = 9"),
        0
    );
}

// Retention.

#[test]
fn the_trim_function_enforces_the_retention_age_and_the_owners_floor() {
    let trimmer = TestRole::new("trimmer");
    let db = TestDb::new();
    let mut owner = db.client();
    grant(&mut owner, Role::Trimmer, &trimmer.name).unwrap();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(&db.url, &log, "agg", (0..8).map(|i| format!("u{i}")));
    let mut t = connect_as(&trimmer, &db);
    let trim_sql = |age: &str| {
        format!(
            "SELECT o_deleted, o_trim_seq FROM oplog_trim('agg', 9223372036854775807, 9223372036854775807, interval '{age}')"
        )
    };
    let call = |t: &mut postgres::Client, age: &str| -> (i64, i64) {
        let row = t.query_one(&trim_sql(age), &[]).unwrap();
        (row.get(0), row.get(1))
    };
    // The entries are seconds old: an hour's age keeps them all.
    assert_eq!(call(&mut t, "1 hour"), (0, 0));
    // The owner's floor of an hour keeps them too, whatever the trimmer
    // asks for, and only the owner may change it.
    owner
        .batch_execute("UPDATE oplog_trim_policy SET min_age = interval '1 hour'")
        .unwrap();
    assert_eq!(call(&mut t, "0"), (0, 0));
    assert_eq!(call(&mut t, "-5 days"), (0, 0));
    denied(
        &mut t,
        "UPDATE oplog_trim_policy SET min_age = interval '0'",
    );
    denied(&mut t, "DELETE FROM oplog_trim_policy");
    let report = trim(
        &mut t,
        &TrimOptions {
            older_than: Duration::ZERO,
            ..TrimOptions::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!((report.deleted, report.min_age_s), (0, 3600.0));
    refused(
        &mut t,
        &trim_sql("0").replace("interval '0'", "NULL"),
        "22004",
    );
    // A transaction that cannot see registrations made while it waited for
    // them may not trim.
    refused(
        &mut t,
        &format!("BEGIN ISOLATION LEVEL REPEATABLE READ; {}", trim_sql("0")),
        "25000",
    );
    t.batch_execute("ROLLBACK").unwrap();
    // Entries 1-3 and 5 are two hours old: only the prefix 1-3 goes.
    superuser_exec(
        &db,
        "UPDATE oplog_entry SET created_at = now() - interval '2 hours' WHERE seq IN (1, 2, 3, 5)",
    );
    assert_eq!(call(&mut t, "0"), (3, 3));
    assert_eq!(db.scalar::<i64>("SELECT min(seq) FROM oplog_entry"), 4);
    assert!(verify(&log, &db.url, &VerifyOptions::default())
        .unwrap()
        .is_clean());
}

// Registering a consumer.

#[test]
fn re_registering_a_consumer_replaces_its_positions_and_trim_honours_them() {
    let db = TestDb::new();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(&db.url, &log, "a", (0..6).map(|i| format!("a{i}")));
    create_users(&db.url, &log, "b", (0..4).map(|i| format!("b{i}")));
    let mut c = db.client();
    let all = TrimOptions {
        older_than: Duration::ZERO,
        ..TrimOptions::default()
    };
    register_consumer(&mut c, "replica", &[("a".into(), 4), ("b".into(), 4)]).unwrap();
    assert_eq!(trim(&mut c, &all, &mut |_, _| {}).unwrap().deleted, 8);
    create_users(&db.url, &log, "a", (6..9).map(|i| format!("a{i}")));
    // The replica is rebuilt from nothing: it has applied nothing, and
    // trimming must keep everything that is left.
    register_consumer(&mut c, "replica", &[]).unwrap();
    let positions: i64 = db.scalar("SELECT count(*) FROM oplog_consumer_position");
    assert_eq!(positions, 0);
    assert_eq!(trim(&mut c, &all, &mut |_, _| {}).unwrap().deleted, 0);
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM oplog_entry"), 5);
}

#[test]
fn a_trim_that_waits_for_a_registration_honours_it() {
    let trimmer = TestRole::new("trimmer");
    let db = TestDb::new();
    let mut owner = db.client();
    grant(&mut owner, Role::Trimmer, &trimmer.name).unwrap();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(&db.url, &log, "agg", (0..8).map(|i| format!("u{i}")));
    register_consumer(&mut owner, "replica", &[("agg".into(), 8)]).unwrap();

    // The replica is rebuilt: its registration is under way (not yet
    // committed) when a trim batch starts.
    let mut registering = db.client();
    let mut tx = registering.transaction().unwrap();
    register_consumer(&mut tx, "replica", &[]).unwrap();
    let mut t = connect_as(&trimmer, &db);
    let pid: i32 = t.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let batch = std::thread::spawn(move || {
        let row = t.query_one(TRIM_ALL, &[]).unwrap();
        row.get::<_, i64>(0)
    });
    let waiting = crate::support::eventually(10, || {
        db.client()
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)",
                &[&pid],
            )
            .unwrap()
            .get(0)
    });
    tx.commit().unwrap();
    let deleted = batch.join().unwrap();
    assert!(waiting, "the trim batch did not wait for the registration");
    assert_eq!(deleted, 0, "the batch went past the new registration");
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM oplog_entry"), 8);
}

#[test]
fn a_follower_of_a_rebuilt_replica_holds_trimming_back_before_its_first_pass() {
    let db = TestDb::new();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(&db.url, &log, "agg", (0..8).map(|i| format!("u{i}")));
    let options = || FollowOptions {
        name: Some("replica".into()),
        until_caught_up: true,
        ..FollowOptions::default()
    };
    let first = TestDb::empty();
    Follower::new(&log, &db.url, Target::database(&first.url), options())
        .run(&mut |_| {})
        .unwrap();
    drop(first);

    // The replica is recreated empty; a trim runs right after its follower
    // registered, before it applied anything.
    let rebuilt = TestDb::empty();
    let mut trimming = db.client();
    let mut deleted = None;
    let report = Follower::new(&log, &db.url, Target::database(&rebuilt.url), options())
        .run(&mut |event| {
            if let FollowEvent::Following { .. } = event {
                let all = TrimOptions {
                    older_than: Duration::ZERO,
                    ..TrimOptions::default()
                };
                deleted = Some(trim(&mut trimming, &all, &mut |_, _| {}).unwrap().deleted);
            }
        })
        .unwrap();
    assert_eq!(deleted, Some(0));
    assert_eq!(report.entries_applied, 8);
    let checked = verify(
        &log,
        &db.url,
        &VerifyOptions {
            against: Some(Target::database(&rebuilt.url)),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(checked.is_clean(), "{:?}", checked.findings);
}

/// The agent role runs `oplog serve` (trim and anchor jobs, the registry
/// and run log) and can no more rewrite the log than a reader or trimmer.
#[test]
fn an_agent_runs_its_jobs_and_cannot_rewrite_the_log() {
    let agent = TestRole::new("agent");
    let db = TestDb::new();
    grant(&mut db.client(), Role::Agent, &agent.name).unwrap();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    // More than a block of 256 leaves: the checkpoint stores a block root.
    create_users(&db.url, &log, "agg", (0..300).map(|i| format!("u{i}")));
    let dir = crate::cli::TempDir::new();
    let signing = dir.join("signing.key");
    oplog::SigningKey::generate("example.com/agent")
        .unwrap()
        .save(&signing)
        .unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\ndatabase_url = \"{}\"\n[agent]\nheartbeat = \"200ms\"\n\
             [[job]]\nname = \"trim\"\nkind = \"trim\"\nevery = \"1s\"\nolder_than = \"30d\"\n\
             [[job]]\nname = \"heads\"\nkind = \"anchor\"\nevery = \"1s\"\ndir = \"{}\"\n\
             [[job]]\nname = \"signed\"\nkind = \"checkpoint\"\nevery = \"1s\"\nsigning_key = \"{}\"\n",
            agent.url(&db.url),
            dir.join("anchors").display(),
            signing.display()
        ),
    )
    .unwrap();
    let mut serve = crate::cli::oplog_cmd()
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let succeeded = |job: &str| {
        db.scalar::<i64>(&format!(
            "SELECT count(*) FROM oplog_job_run WHERE job = '{job}' AND state = 'success'"
        )) >= 1
    };
    let ran = crate::support::eventually(20, || {
        succeeded("trim") && succeeded("heads") && succeeded("signed")
    });
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(
        ran,
        "{:?}",
        db.scalar::<String>(
            "SELECT coalesce(string_agg(detail::text, ' '), '') FROM oplog_job_run"
        )
    );
    let mut c = connect_as(&agent, &db);
    denied(&mut c, "DELETE FROM oplog_entry");
    denied(&mut c, "UPDATE oplog_entry SET data = '\\x00'");
    denied(&mut c, "UPDATE oplog_ticket SET version = version + 1");
    denied(&mut c, "INSERT INTO oplog_ticket (name) VALUES ('x')");
    denied(&mut c, "TRUNCATE oplog_job_run");
    denied(&mut c, "UPDATE oplog_tree_leaf SET chain = sha256(chain)");
    denied(&mut c, "DELETE FROM oplog_tree_head");
    denied(&mut c, "UPDATE oplog_tree_node SET hash = sha256(hash)");
    denied(
        &mut c,
        "ALTER TABLE oplog_job_run DROP CONSTRAINT oplog_job_run_job_expected_at_key",
    );
}
