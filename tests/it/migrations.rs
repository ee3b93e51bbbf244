//! The schema's upgrade paths: a database migrated by every earlier release
//! ends up as a fresh one; the rust-postgres and diesel runners are current
//! for each other and take turns; a function whose parameters change keeps
//! the previous release's writers writing while the next release's write
//! too; a replica set up before its tables were versioned is upgraded in
//! place.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use diesel::Connection as _;
use diesel_migrations::{FileBasedMigrations, MigrationHarness};
use oplog::{
    grant, verify, FunctionFile, Keyring, Migration, Migrations, NewEntry, Oplog, ReplayOptions,
    Replayer, Role, Target, VerifyOptions, GENESIS_CHAIN,
};
use postgres::types::Type;
use postgres::Client;

use crate::roles::TestRole;
use crate::support::{create_users, user, TestDb};

/// The newest migration from before the function files: every earlier
/// release ran the migrations up to it as they are, each in its own
/// transaction, and recorded them in diesel's table.
const LAST_BEFORE_FUNCTION_FILES: &str = "20261129000005";

/// What an earlier release's `oplog::migrate` did, up to its `n`th
/// migration: the migrations' own SQL and nothing else.
fn migrate_as_earlier_releases_did(db: &TestDb, n: usize) {
    let earlier: Vec<Migration> = oplog::MIGRATIONS.iter().take(n).copied().collect();
    assert!(earlier
        .iter()
        .all(|m| m.version() <= LAST_BEFORE_FUNCTION_FILES));
    let without_function_files = Migrations::new(Vec::leak(earlier), &[]);
    assert_eq!(
        without_function_files.run(&mut db.client()).unwrap().len(),
        n
    );
}

/// How many migrations earlier releases had.
fn earlier_releases_migrations() -> usize {
    oplog::MIGRATIONS
        .iter()
        .filter(|m| m.version() <= LAST_BEFORE_FUNCTION_FILES)
        .count()
}

/// The files in `migrations/` for diesel's harness, as earlier releases
/// embedded them.
fn migration_files() -> FileBasedMigrations {
    FileBasedMigrations::from_path(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap()
}

/// Everything the migrations define in the database's schema whose name is
/// `LIKE pattern`, one line per item, in a stable order: each function's
/// definition (rights and pinned settings included) and privileges; each
/// table, index and sequence with its privileges and row-level security;
/// columns with types, defaults, identity and privileges; constraints,
/// triggers and policies; the rows the migrations seed; the versions
/// recorded.
fn schema(url: &str, pattern: &str) -> Vec<String> {
    const ITEMS: &str = "
        SELECT 'function ' || p.oid::regprocedure::text || ' acl ' || coalesce(p.proacl::text, '(default)')
               || ' comment ' || coalesce(obj_description(p.oid, 'pg_proc'), '') || E'\n' || pg_get_functiondef(p.oid)
          FROM pg_proc p
         WHERE p.pronamespace = current_schema()::regnamespace AND p.proname LIKE $1
        UNION ALL
        SELECT 'relation ' || c.relname || ' kind ' || c.relkind::text || ' rls ' || c.relrowsecurity || '/' || c.relforcerowsecurity
               || ' acl ' || coalesce(c.relacl::text, '(default)') || ' comment ' || coalesce(obj_description(c.oid, 'pg_class'), '')
          FROM pg_class c
         WHERE c.relnamespace = current_schema()::regnamespace AND c.relname LIKE $1
        UNION ALL
        SELECT 'column ' || c.relname || ' #' || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) || ' ' || a.attname
               || ' ' || format_type(a.atttypid, a.atttypmod) || ' not null ' || a.attnotnull
               || ' default ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '') || ' identity ' || a.attidentity::text
               || ' generated ' || a.attgenerated::text || ' acl ' || coalesce(a.attacl::text, '')
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace = current_schema()::regnamespace AND c.relname LIKE $1
           AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT 'constraint ' || c.relname || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid) || ' valid ' || k.convalidated
          FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
         WHERE c.relnamespace = current_schema()::regnamespace AND c.relname LIKE $1
        UNION ALL
        SELECT 'index ' || pg_get_indexdef(i.indexrelid)
          FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
         WHERE c.relnamespace = current_schema()::regnamespace AND c.relname LIKE $1
        UNION ALL
        SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace AND c.relname LIKE $1
        UNION ALL
        SELECT 'policy ' || p.tablename || ' ' || p.policyname || ' ' || p.permissive || ' ' || p.roles::text
               || ' ' || p.cmd || ' using ' || coalesce(p.qual, '') || ' check ' || coalesce(p.with_check, '')
          FROM pg_policies p
         WHERE p.schemaname = current_schema() AND p.tablename LIKE $1
        ORDER BY 1";
    const ROWS: &str = "
        SELECT 'ticket ' || string_agg(name || '@' || version, ', ' ORDER BY name) FROM oplog_ticket
        UNION ALL SELECT 'sources ' || count(*) FROM oplog_source
        UNION ALL SELECT 'retention floor ' || string_agg(min_age::text, ', ') FROM oplog_trim_policy
        UNION ALL SELECT 'migrations ' || string_agg(version, ', ' ORDER BY version) FROM __diesel_schema_migrations";
    let mut c = Client::connect(url, postgres::NoTls).unwrap();
    let mut lines: Vec<String> = c
        .query_typed(ITEMS, &[(&pattern, Type::TEXT)])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let source: bool = c
        .query_one("SELECT to_regclass('oplog_source') IS NOT NULL", &[])
        .unwrap()
        .get(0);
    if source {
        lines.extend(
            c.query(ROWS, &[])
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0)),
        );
    }
    lines
}

/// Asserts that two schemas are the same, naming the first difference.
fn assert_same(got: &[String], want: &[String], what: &str) {
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g, w, "{what}: first difference");
    }
    assert_eq!(got.len(), want.len(), "{what}: {got:#?}\nwanted {want:#?}");
}

/// The source's schema after migrating an empty database with
/// `oplog::migrate_url`, with `role` granted each kind of access.
fn fresh_schema(role: &TestRole) -> Vec<String> {
    let fresh = TestDb::empty();
    oplog::migrate_url(&fresh.url).unwrap();
    grant_all(&fresh, role);
    schema(&fresh.url, "%")
}

fn grant_all(db: &TestDb, role: &TestRole) {
    let mut c = db.client();
    for kind in [Role::Writer, Role::Reader, Role::Trimmer, Role::Keys] {
        grant(&mut c, kind, &role.name).unwrap();
    }
}

fn all_versions() -> Vec<String> {
    oplog::MIGRATIONS
        .iter()
        .map(|m| m.version().to_string())
        .collect()
}

#[test]
fn a_database_migrated_by_any_earlier_release_ends_up_as_a_fresh_one() {
    let role = TestRole::new("any");
    let fresh = fresh_schema(&role);
    assert!(fresh
        .iter()
        .any(|l| l.starts_with("function oplog_append(")));
    for n in 0..=earlier_releases_migrations() {
        let db = TestDb::empty();
        migrate_as_earlier_releases_did(&db, n);
        let applied = oplog::migrate_url(&db.url).unwrap();
        assert_eq!(applied, all_versions()[n..], "after {n} migrations");
        grant_all(&db, &role);
        assert_same(
            &schema(&db.url, "%"),
            &fresh,
            &format!("migrated by a release with {n} migrations"),
        );
    }
}

#[test]
fn the_rust_postgres_and_diesel_runners_are_current_for_each_other() {
    let role = TestRole::new("any");
    let fresh = fresh_schema(&role);
    let files = migration_files();

    // rust-postgres first: diesel's harness, over the embedded set or over
    // the files, finds nothing to do.
    let by_postgres = TestDb::empty();
    assert_eq!(
        oplog::migrate_url(&by_postgres.url).unwrap(),
        all_versions()
    );
    let mut conn = by_postgres.diesel();
    assert!(conn
        .pending_migrations(oplog::MIGRATIONS)
        .unwrap()
        .is_empty());
    assert!(conn.pending_migrations(files.clone()).unwrap().is_empty());
    assert!(oplog::migrate(&mut conn).unwrap().is_empty());

    // diesel first: the rust-postgres runner finds nothing to do.
    let by_diesel = TestDb::empty();
    assert_eq!(
        oplog::migrate(&mut by_diesel.diesel()).unwrap(),
        all_versions()
    );
    assert!(oplog::migrate_url(&by_diesel.url).unwrap().is_empty());
    assert!(oplog::migrate_client(&mut by_diesel.client())
        .unwrap()
        .is_empty());

    // diesel's harness over the files, as earlier releases ran them: the
    // runners apply only what came after, and the functions are the same.
    let by_files = TestDb::empty();
    let mut conn = by_files.diesel();
    let earlier = earlier_releases_migrations();
    for _ in 0..earlier {
        conn.run_next_migration(files.clone()).unwrap();
    }
    assert_eq!(
        oplog::migrate(&mut conn).unwrap(),
        all_versions()[earlier..]
    );
    assert!(oplog::migrate_url(&by_files.url).unwrap().is_empty());

    // Half by one, the rest by the other.
    let halves = TestDb::empty();
    let mut conn = halves.diesel();
    for _ in 0..3 {
        conn.run_next_migration(oplog::MIGRATIONS).unwrap();
    }
    assert_eq!(
        oplog::migrate_url(&halves.url).unwrap(),
        all_versions()[3..]
    );

    for db in [&by_postgres, &by_diesel, &by_files, &halves] {
        grant_all(db, &role);
        assert_same(&schema(&db.url, "%"), &fresh, &db.name);
    }
}

#[test]
fn four_migrators_of_both_kinds_apply_each_migration_once() {
    let role = TestRole::new("any");
    let fresh = fresh_schema(&role);
    let db = TestDb::empty();
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (url, barrier) = (db.url.clone(), barrier.clone());
            thread::spawn(move || {
                let mut conn = (i % 2 == 1).then(|| diesel::PgConnection::establish(&url).unwrap());
                barrier.wait();
                match conn.as_mut() {
                    Some(conn) => oplog::migrate(conn),
                    None => oplog::migrate_url(&url),
                }
            })
        })
        .collect();
    let mut applied: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap().unwrap())
        .collect();
    applied.sort();
    assert_eq!(applied, all_versions());
    grant_all(&db, &role);
    assert_same(&schema(&db.url, "%"), &fresh, "four migrators");
}

#[test]
fn a_migration_that_fails_leaves_nothing_of_itself_and_names_itself() {
    let db = TestDb::empty();
    // The third migration adds tables the database already has.
    migrate_as_earlier_releases_did(&db, 2);
    db.client()
        .batch_execute("CREATE TABLE oplog_consumer (name text)")
        .unwrap();
    let e = oplog::migrate_url(&db.url).unwrap_err().to_string();
    assert!(
        e.contains("2026-11-23-000003_follow_and_trim") && e.contains("already exists"),
        "{e}"
    );
    let e = oplog::migrate(&mut db.diesel()).unwrap_err().to_string();
    assert!(
        e.contains("2026-11-23-000003_follow_and_trim") && e.contains("already exists"),
        "{e}"
    );
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM __diesel_schema_migrations"),
        2
    );
    assert!(db.scalar::<bool>("SELECT to_regclass('oplog_consumer_position') IS NULL"));
    // Once the obstacle is gone, the rest applies; the lock was released.
    db.client()
        .batch_execute("DROP TABLE oplog_consumer")
        .unwrap();
    assert_eq!(oplog::migrate_url(&db.url).unwrap(), all_versions()[2..]);
}

// A rolling deploy across a change of oplog_append's parameters.

/// The next release's version of `append.sql`: oplog_append takes the
/// channel to notify (`p_channel text`) instead of `p_notify boolean`. The
/// previous signature stays, as a thin wrapper with the same rights, and
/// whoever may run it may run the new one.
const NEXT_APPEND: &str = r#"
CREATE OR REPLACE FUNCTION @schema@.oplog_append(
    p_uuid uuid, p_aggregate text, p_seq bigint, p_prev_chain bytea,
    p_format smallint, p_key_id text, p_data bytea, p_digest bytea,
    p_chain bytea, p_keys text[], p_values text[], p_wait boolean,
    p_catalog bytea, p_channel text,
    OUT o_entry_id bigint, OUT o_version bigint, OUT o_chain bytea,
    OUT o_missing_catalog boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = @schema@, pg_temp AS $body$
BEGIN
    o_missing_catalog := false;
    IF p_catalog IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM @schema@.oplog_catalog c WHERE c.digest = p_catalog) THEN
        o_missing_catalog := true;
        RETURN;
    END IF;
    UPDATE @schema@.oplog_ticket SET version = p_seq, chain = p_chain
     WHERE name = p_aggregate AND version = p_seq - 1 AND chain = p_prev_chain;
    IF FOUND THEN
        INSERT INTO @schema@.oplog_entry (entry_uuid, aggregate_name, seq, format, key_id, data, digest, chain, catalog)
        VALUES (p_uuid, p_aggregate, p_seq, p_format, p_key_id, p_data, p_digest, p_chain, p_catalog)
        RETURNING id INTO o_entry_id;
        INSERT INTO @schema@.oplog_metadata (entry_id, ordinal, key, value)
        SELECT o_entry_id, u.ord - 1, u.k, u.v
          FROM unnest(p_keys, p_values) WITH ORDINALITY AS u(k, v, ord);
        IF p_channel IS NOT NULL THEN
            PERFORM pg_catalog.pg_notify(p_channel, p_aggregate);
        END IF;
        o_version := p_seq;
        o_chain := p_chain;
        RETURN;
    END IF;
    IF p_wait THEN
        SELECT t.version, t.chain INTO o_version, o_chain
          FROM @schema@.oplog_ticket t WHERE t.name = p_aggregate FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO @schema@.oplog_ticket (name) VALUES (p_aggregate) ON CONFLICT DO NOTHING;
            SELECT t.version, t.chain INTO o_version, o_chain
              FROM @schema@.oplog_ticket t WHERE t.name = p_aggregate FOR UPDATE;
        END IF;
    ELSE
        SELECT t.version, t.chain INTO o_version, o_chain
          FROM @schema@.oplog_ticket t WHERE t.name = p_aggregate;
    END IF;
END;
$body$;

CREATE OR REPLACE FUNCTION @schema@.oplog_append(
    p_uuid uuid, p_aggregate text, p_seq bigint, p_prev_chain bytea,
    p_format smallint, p_key_id text, p_data bytea, p_digest bytea,
    p_chain bytea, p_keys text[], p_values text[], p_wait boolean,
    p_catalog bytea, p_notify boolean,
    OUT o_entry_id bigint, OUT o_version bigint, OUT o_chain bytea,
    OUT o_missing_catalog boolean)
LANGUAGE sql SECURITY DEFINER SET search_path = @schema@, pg_temp AS $body$
    SELECT * FROM @schema@.oplog_append(p_uuid, p_aggregate, p_seq, p_prev_chain, p_format,
        p_key_id, p_data, p_digest, p_chain, p_keys, p_values, p_wait, p_catalog,
        CASE WHEN p_notify THEN 'oplog_entry' END)
$body$;

REVOKE EXECUTE ON FUNCTION @schema@.oplog_append(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], boolean, bytea, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @schema@.oplog_append(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], boolean, bytea, boolean) FROM PUBLIC;

DO $grants$
DECLARE
    r text;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee::regrole::text
          FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
         WHERE p.oid = '@schema@.oplog_append(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], boolean, bytea, boolean)'::regprocedure
           AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner AND a.grantee <> 0
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @schema@.oplog_append(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], boolean, bytea, text) TO %s', r);
    END LOOP;
END
$grants$;
"#;

/// The statement the next release appends with.
const NEXT_STATEMENT: &str =
    "SELECT o_entry_id, o_version, o_chain, o_missing_catalog FROM oplog_append(\
$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// The next release: this one's migrations plus one that says what changed,
/// and this one's function files with `append.sql` replaced.
fn next_release() -> Migrations {
    let mut migrations: Vec<Migration> = oplog::MIGRATIONS.iter().copied().collect();
    migrations.push(Migration::new(
        "20991231000001",
        "2099-12-31-000001_append_channel",
        "-- oplog_append takes the channel to notify instead of a flag; the previous signature calls it.",
        None,
    ));
    let functions: Vec<FunctionFile> = oplog::MIGRATIONS
        .functions()
        .iter()
        .map(|f| match f.name() {
            "append.sql" => FunctionFile::new("append.sql", NEXT_APPEND),
            _ => *f,
        })
        .collect();
    assert!(functions.iter().any(|f| f.sql() == NEXT_APPEND));
    Migrations::new(Vec::leak(migrations), Vec::leak(functions))
}

/// One write of the next release's writer: the entry `log` seals (by
/// writing it in a transaction that is rolled back, which is how the test
/// gets a sealed entry without the next release's code), appended through
/// the new signature. Retries while another writer moved the ticket
/// between sealing and appending.
fn write_as_next_release(c: &mut Client, log: &Oplog, entry: &NewEntry) {
    loop {
        let mut tx = c.transaction().unwrap();
        let written = log.write(&mut tx, entry).unwrap();
        let row = tx
            .query_one(
                "SELECT e.entry_uuid, e.aggregate_name, e.seq, e.format, e.key_id, e.data, e.digest, e.chain, e.catalog, \
                        (SELECT p.chain FROM oplog_entry p WHERE p.aggregate_name = e.aggregate_name AND p.seq = e.seq - 1), \
                        (SELECT array_agg(m.key ORDER BY m.ordinal) FROM oplog_metadata m WHERE m.entry_id = e.id), \
                        (SELECT array_agg(m.value ORDER BY m.ordinal) FROM oplog_metadata m WHERE m.entry_id = e.id) \
                   FROM oplog_entry e WHERE e.id = $1",
                &[&written.id],
            )
            .unwrap();
        tx.rollback().unwrap();
        let uuid: uuid::Uuid = row.get(0);
        let seq: i64 = row.get(2);
        let prev: Vec<u8> = row.get::<_, Option<Vec<u8>>>(9).unwrap_or_else(|| {
            assert_eq!(seq, 1, "the entry before seq {seq} is missing");
            GENESIS_CHAIN.to_vec()
        });
        let channel: Option<&str> = None;
        let appended = c
            .query_typed_one(
                NEXT_STATEMENT,
                &[
                    (&uuid, Type::UUID),
                    (&row.get::<_, String>(1), Type::TEXT),
                    (&seq, Type::INT8),
                    (&prev, Type::BYTEA),
                    (&row.get::<_, i16>(3), Type::INT2),
                    (&row.get::<_, String>(4), Type::TEXT),
                    (&row.get::<_, Vec<u8>>(5), Type::BYTEA),
                    (&row.get::<_, Vec<u8>>(6), Type::BYTEA),
                    (&row.get::<_, Vec<u8>>(7), Type::BYTEA),
                    (&row.get::<_, Vec<String>>(10), Type::TEXT_ARRAY),
                    (&row.get::<_, Vec<String>>(11), Type::TEXT_ARRAY),
                    (&false, Type::BOOL),
                    (&row.get::<_, Option<Vec<u8>>>(8), Type::BYTEA),
                    (&channel, Type::TEXT),
                ],
            )
            .unwrap();
        assert!(!appended.get::<_, bool>(3), "the catalog is stored");
        if appended.get::<_, Option<i64>>(0).is_some() {
            return;
        }
    }
}

fn entry(who: &str, n: usize) -> NewEntry {
    let mut entry = NewEntry::new("agg");
    entry
        .metadata("writer", who)
        .create(&user(&format!("{who}{n}")))
        .unwrap();
    entry
}

#[test]
fn the_previous_releases_writers_and_the_next_ones_interleave_across_a_change_of_parameters() {
    let writer = TestRole::new("writer");
    let db = TestDb::new();
    let mut owner = db.client();
    grant(&mut owner, Role::Writer, &writer.name).unwrap();
    let keys = Keyring::generate().to_json();
    let new_log = || {
        Oplog::new(
            oplog::demo::user_catalog(),
            Keyring::from_json(&keys).unwrap(),
        )
    };
    let (previous, next) = (Arc::new(new_log()), new_log());
    let writer_url = writer.url(&db.url);

    // This release's writer keeps writing while the next release migrates.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let background = {
        let (log, stop, written, url) = (
            previous.clone(),
            stop.clone(),
            written.clone(),
            writer_url.clone(),
        );
        thread::spawn(move || {
            let mut c = Client::connect(&url, postgres::NoTls).unwrap();
            while !stop.load(Ordering::SeqCst) {
                let mut tx = c.transaction().unwrap();
                let n = written.load(Ordering::SeqCst);
                log.write(&mut tx, &entry("previous", n)).unwrap();
                tx.commit().unwrap();
                written.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let wait_for = |n: usize| {
        assert!(crate::support::eventually(30, || written
            .load(Ordering::SeqCst)
            >= n))
    };
    wait_for(5);
    let next_release = next_release();
    assert_eq!(
        next_release.run(&mut owner).unwrap(),
        ["20991231000001"],
        "only the next release's migration is pending"
    );
    let after_upgrade = written.load(Ordering::SeqCst);
    wait_for(after_upgrade + 5);
    stop.store(true, Ordering::SeqCst);
    background.join().unwrap();

    // Then turn about, on the same aggregate, as the same role.
    let mut c = Client::connect(&writer_url, postgres::NoTls).unwrap();
    for n in 0..4 {
        let mut tx = c.transaction().unwrap();
        previous
            .write(&mut tx, &entry("previous", 1000 + n))
            .unwrap();
        tx.commit().unwrap();
        write_as_next_release(&mut c, &next, &entry("next", n));
    }

    // A binary of this release that migrates again (a restarted pod) finds
    // nothing to do and leaves the next release's definitions alone.
    assert!(oplog::migrate_url(&db.url).unwrap().is_empty());
    let wrapper: String = db.scalar(
        "SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang \
         WHERE p.oid = 'oplog_append(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], boolean, bytea, boolean)'::regprocedure",
    );
    assert_eq!(wrapper, "sql");

    // One gap-free, chained log, in which both kinds of writer took turns.
    let writers: Vec<String> = owner
        .query(
            "SELECT m.value FROM oplog_entry e JOIN oplog_metadata m ON m.entry_id = e.id AND m.key = 'writer' \
             WHERE e.aggregate_name = 'agg' ORDER BY e.seq",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let total = written.load(Ordering::SeqCst) + 8;
    assert_eq!(writers.len(), total);
    assert_eq!(
        db.scalar::<i64>(
            "SELECT max(seq) - min(seq) + 1 FROM oplog_entry WHERE aggregate_name = 'agg'"
        ),
        i64::try_from(total).unwrap()
    );
    assert_eq!(
        writers[total - 8..],
        ["previous", "next", "previous", "next", "previous", "next", "previous", "next"]
    );
    let report = verify(&new_log(), &db.url, &VerifyOptions::default()).unwrap();
    assert!(report.is_clean(), "{:?}", report.findings);
    assert_eq!(report.entries_checked, u64::try_from(total).unwrap());
}

// The replica's own tables.

/// The replica's tables as releases before versioned replica migrations
/// created them, whenever a replay or follow started.
const PREVIOUS_REPLICA_DDL: &str = "\
CREATE TABLE IF NOT EXISTS oplog_checkpoint (
    source           text NOT NULL,
    aggregate_name   text NOT NULL,
    seq              bigint NOT NULL CHECK (seq > 0),
    chain            bytea NOT NULL CHECK (length(chain) = 32),
    entry_id         bigint NOT NULL,
    entry_created_at timestamptz NOT NULL,
    applied_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, aggregate_name)
);
CREATE TABLE IF NOT EXISTS oplog_skipped (
    source         text NOT NULL,
    aggregate_name text NOT NULL,
    seq            bigint NOT NULL CHECK (seq > 0),
    entry_id       bigint NOT NULL,
    chain          bytea NOT NULL CHECK (length(chain) = 32),
    reason         text NOT NULL CHECK (length(reason) > 0),
    error          text NOT NULL,
    skipped_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, aggregate_name, seq)
);
CREATE TABLE IF NOT EXISTS oplog_stopped (
    source         text NOT NULL,
    aggregate_name text NOT NULL,
    seq            bigint NOT NULL CHECK (seq > 0),
    error          text NOT NULL,
    stopped_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, aggregate_name)
)";

fn replay(log: &Oplog, source: &TestDb, replica: &TestDb) -> oplog::ReplayReport {
    let report = Replayer::connect(
        log,
        &source.url,
        Target::database(&replica.url),
        ReplayOptions::default(),
    )
    .unwrap()
    .run(&mut |_| {})
    .unwrap();
    assert!(report.is_complete(), "{:?}", report.stopped);
    report
}

#[test]
fn a_replica_set_up_before_its_tables_were_versioned_is_upgraded_in_place() {
    let source = TestDb::new();
    let replica = TestDb::empty();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(&source.url, &log, "agg", (0..3).map(|i| format!("u{i}")));
    assert_eq!(replay(&log, &source, &replica).entries_applied, 3);
    let versions = "SELECT string_agg(version, ',' ORDER BY version) FROM oplog_replica_migrations";
    assert_eq!(
        replica.scalar::<Option<String>>(versions).as_deref(),
        Some("20261129000001")
    );

    // Take it back to what the previous release left: the same tables,
    // without the record of versions.
    replica
        .client()
        .batch_execute("DROP TABLE oplog_replica_migrations")
        .unwrap();
    let previous = TestDb::empty();
    previous
        .client()
        .batch_execute(PREVIOUS_REPLICA_DDL)
        .unwrap();
    assert_same(
        &schema(&replica.url, "oplog%"),
        &schema(&previous.url, "oplog%"),
        "a replica set up by the previous release",
    );

    // The next replay adopts the tables, with their checkpoints: it applies
    // only what is new.
    create_users(&source.url, &log, "agg", (3..5).map(|i| format!("u{i}")));
    assert_eq!(replay(&log, &source, &replica).entries_applied, 2);
    assert_eq!(
        replica.scalar::<Option<String>>(versions).as_deref(),
        Some("20261129000001")
    );
    assert_eq!(
        replica.scalar::<i64>("SELECT seq FROM oplog_checkpoint WHERE aggregate_name = 'agg'"),
        5
    );
    let report = verify(
        &log,
        &source.url,
        &VerifyOptions {
            against: Some(Target::database(&replica.url)),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(report.is_clean(), "{:?}", report.findings);
}

#[test]
fn a_current_replica_is_only_read_so_its_role_needs_no_create_privilege() {
    let applier = TestRole::new("replica");
    let source = TestDb::new();
    let replica = TestDb::empty();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(&source.url, &log, "agg", (0..2).map(|i| format!("u{i}")));
    replay(&log, &source, &replica);
    // A role that may change the replica's rows but create nothing.
    replica
        .client()
        .batch_execute(&format!(
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {0}",
            applier.name
        ))
        .unwrap();
    create_users(&source.url, &log, "agg", (2..4).map(|i| format!("u{i}")));
    let report = Replayer::connect(
        &log,
        &source.url,
        Target::database(applier.url(&replica.url)),
        ReplayOptions::default(),
    )
    .unwrap()
    .run(&mut |_| {})
    .unwrap();
    assert_eq!(report.entries_applied, 2);
    assert_eq!(replica.scalar::<i64>("SELECT count(*) FROM demo_user"), 4);
}
