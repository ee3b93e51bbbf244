//! Replay against a real PostgreSQL: Boundary's scenarios into suffixed
//! tables and into a separate replica database, exactly-once re-runs, and
//! the errors that stop an aggregate at the right entry.

use oplog::demo::{Account, User};
use oplog::{
    DivergenceKind, Error, Keyring, NewEntry, OpType, Operation, Oplog, ReplayOptions,
    ReplayReport, Replayer, Skip, TableInfo, Target, TypeCatalog,
};

use crate::support::{superuser_exec, table_rows, user, TestDb};

fn oplog() -> Oplog {
    Oplog::new(oplog::demo::user_catalog(), Keyring::generate())
}

/// Writes a user row as a whole (insert or overwrite) on the source.
fn upsert_user(tx: &mut postgres::Transaction<'_>, u: &User) {
    tx.execute(
        "INSERT INTO demo_user (id, tenant_id, account_id, email, display_name, phone, age, active, avatar) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (id) DO UPDATE SET tenant_id = excluded.tenant_id, account_id = excluded.account_id, \
         email = excluded.email, display_name = excluded.display_name, phone = excluded.phone, \
         age = excluded.age, active = excluded.active, avatar = excluded.avatar",
        &u.params(),
    )
    .unwrap();
}

fn delete_user(tx: &mut postgres::Transaction<'_>, id: &str) {
    tx.execute("DELETE FROM demo_user WHERE id = $1", &[&id])
        .unwrap();
}

/// Runs `domain` and writes `entry` in one source transaction.
fn commit(
    db: &TestDb,
    log: &Oplog,
    entry: &NewEntry,
    domain: impl FnOnce(&mut postgres::Transaction<'_>),
) {
    let mut client = db.client();
    let mut tx = client.transaction().unwrap();
    domain(&mut tx);
    log.write(&mut tx, entry).unwrap();
    tx.commit().unwrap();
}

/// Boundary's replay scenarios, each in its own entry: create, update by
/// field mask, by null paths, by both, create-items, delete, delete-items.
/// The update messages carry only the key and the masked fields, so a
/// replay that wrote whole messages would get the rows wrong.
fn boundary_scenarios(db: &TestDb, log: &Oplog, aggregate: &str) {
    let id = |n: u32| format!("{aggregate}-u{n}");
    let mut u1 = user(&id(1));
    let mut e = NewEntry::new(aggregate);
    e.metadata("actor", "alice").create(&u1).unwrap();
    commit(db, log, &e, |tx| upsert_user(tx, &u1));

    u1.email = format!("new-{}", u1.email);
    let mut e = NewEntry::new(aggregate);
    let msg = User {
        id: id(1),
        email: u1.email.clone(),
        ..Default::default()
    };
    e.update(&msg, &["email"], &[]).unwrap();
    commit(db, log, &e, |tx| upsert_user(tx, &u1));

    u1.phone = None;
    let mut e = NewEntry::new(aggregate);
    e.update(
        &User {
            id: id(1),
            ..Default::default()
        },
        &[],
        &["phone"],
    )
    .unwrap();
    commit(db, log, &e, |tx| upsert_user(tx, &u1));

    u1.display_name = "Both".into();
    u1.age = None;
    let mut e = NewEntry::new(aggregate);
    let msg = User {
        id: id(1),
        display_name: "Both".into(),
        ..Default::default()
    };
    e.update(&msg, &["display_name"], &["age"]).unwrap();
    commit(db, log, &e, |tx| upsert_user(tx, &u1));

    let items = [user(&id(2)), user(&id(3)), user(&id(4))];
    let mut e = NewEntry::new(aggregate);
    e.create_items(&items).unwrap();
    commit(db, log, &e, |tx| {
        items.iter().for_each(|u| upsert_user(tx, u))
    });

    let mut e = NewEntry::new(aggregate);
    e.delete(&User {
        id: id(2),
        ..Default::default()
    })
    .unwrap();
    commit(db, log, &e, |tx| delete_user(tx, &id(2)));

    let gone = [
        User {
            id: id(3),
            ..Default::default()
        },
        User {
            id: id(4),
            ..Default::default()
        },
    ];
    let mut e = NewEntry::new(aggregate);
    e.delete_items(&gone).unwrap();
    commit(db, log, &e, |tx| {
        delete_user(tx, &id(3));
        delete_user(tx, &id(4));
    });

    // Leave a row that went through every kind of change, and another.
    let u5 = user(&id(5));
    let mut e = NewEntry::new(aggregate);
    e.create(&u5).unwrap();
    commit(db, log, &e, |tx| upsert_user(tx, &u5));
}

fn replay(log: &Oplog, db: &TestDb, target: Target) -> ReplayReport {
    replay_with(log, db, target, ReplayOptions::default())
}

fn replay_with(log: &Oplog, db: &TestDb, target: Target, options: ReplayOptions) -> ReplayReport {
    let mut replayer = Replayer::connect(log, &db.url, target, options).unwrap();
    replayer.run(&mut |_| {}).unwrap()
}

#[test]
fn boundary_scenarios_replay_into_suffixed_tables_column_by_column() {
    let db = TestDb::new();
    let log = oplog();
    boundary_scenarios(&db, &log, "tenant-1");
    let report = replay(&log, &db, Target::suffix("_replay"));
    assert!(report.is_complete(), "{:?}", report.stopped);
    assert_eq!(report.entries_applied, 8);
    assert_eq!(report.tables_created, ["demo_user_replay"]);
    let source = table_rows(&db.url, "demo_user");
    assert_eq!(source.len(), 2, "u1 and u5 remain");
    assert_eq!(table_rows(&db.url, "demo_user_replay"), source);
    // The suffixed table was created like the source: primary key, the
    // unique email and the defaults.
    let constraints: i64 = db.scalar(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'demo_user_replay'::regclass AND contype IN ('p', 'u')",
    );
    assert_eq!(constraints, 2);
}

#[test]
fn boundary_scenarios_replay_into_a_separate_database() {
    let db = TestDb::new();
    let replica = TestDb::empty();
    let log = oplog();
    boundary_scenarios(&db, &log, "tenant-1");
    let report = replay(&log, &db, Target::database(&replica.url));
    assert!(report.is_complete(), "{:?}", report.stopped);
    assert_eq!(report.entries_applied, 8);
    assert_eq!(
        table_rows(&replica.url, "demo_user"),
        table_rows(&db.url, "demo_user")
    );
    // The table was re-created from the source's definition: same columns
    // and types, NOT NULL, defaults, primary key and unique constraint.
    let definition = "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || ' ' || attnotnull || ' ' || coalesce(pg_get_expr(adbin, adrelid), ''), ', ' ORDER BY attnum) \
        FROM pg_attribute LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum \
        WHERE attrelid = 'demo_user'::regclass AND attnum > 0 AND NOT attisdropped";
    assert_eq!(
        replica.scalar::<String>(definition),
        db.scalar::<String>(definition)
    );
    let constraints = "SELECT string_agg(pg_get_constraintdef(oid), ', ' ORDER BY contype, conname) FROM pg_constraint WHERE conrelid = 'demo_user'::regclass";
    assert_eq!(
        replica.scalar::<String>(constraints),
        db.scalar::<String>(constraints)
    );
    let checkpoint: i64 =
        replica.scalar("SELECT seq FROM oplog_checkpoint WHERE aggregate_name = 'tenant-1'");
    assert_eq!(checkpoint, 8);
}

#[test]
fn replaying_again_applies_nothing_twice_and_picks_up_new_entries() {
    let db = TestDb::new();
    let replica = TestDb::empty();
    let log = oplog();
    boundary_scenarios(&db, &log, "tenant-1");
    boundary_scenarios(&db, &log, "tenant-2");
    let first = replay_with(
        &log,
        &db,
        Target::database(&replica.url),
        ReplayOptions {
            batch_size: 3,
            ..ReplayOptions::default()
        },
    );
    assert!(first.is_complete(), "{:?}", first.stopped);
    assert_eq!(first.entries_applied, 16);
    assert!(
        first.transactions >= 6,
        "batches of 3: {}",
        first.transactions
    );
    let second = replay(&log, &db, Target::database(&replica.url));
    assert_eq!(second.entries_applied, 0);
    assert!(second.aggregates.is_empty());
    assert_eq!(
        table_rows(&replica.url, "demo_user"),
        table_rows(&db.url, "demo_user")
    );

    // New entries on the source are applied from the checkpoint on.
    let account = Account {
        id: "a1".into(),
        tenant_id: "t1".into(),
        name: "Acme".into(),
        plan: "pro".into(),
        balance_cents: 1200,
        created_at: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_000,
        }),
        closed_reason: None,
    };
    let mut e = NewEntry::new("tenant-1");
    e.create(&account).unwrap();
    commit(&db, &log, &e, |tx| {
        tx.execute(
            "INSERT INTO demo_account (id, tenant_id, name, plan, balance_cents, created_at) VALUES ('a1', 't1', 'Acme', 'pro', 1200, to_timestamp(1700000000.123456))",
            &[],
        )
        .unwrap();
    });
    let third = replay(&log, &db, Target::database(&replica.url));
    assert_eq!(third.entries_applied, 1);
    assert_eq!(third.aggregates.len(), 1);
    assert_eq!(
        (third.aggregates[0].from_seq, third.aggregates[0].to_seq),
        (8, 9)
    );
    assert_eq!(
        table_rows(&replica.url, "demo_account"),
        table_rows(&db.url, "demo_account")
    );
}

#[test]
fn a_missing_entry_stops_its_aggregate_at_that_seq_and_others_go_on() {
    let db = TestDb::new();
    let log = oplog();
    boundary_scenarios(&db, &log, "broken");
    boundary_scenarios(&db, &log, "fine");
    superuser_exec(
        &db,
        "DELETE FROM oplog_entry WHERE aggregate_name = 'broken' AND seq = 3",
    );
    let report = replay(&log, &db, Target::suffix("_r"));
    assert_eq!(report.stopped.len(), 1, "{:?}", report.stopped);
    let stopped = &report.stopped[0];
    assert_eq!((stopped.aggregate.as_str(), stopped.seq), ("broken", 3));
    match &stopped.error {
        Error::Gap { missing, found, .. } => assert_eq!((*missing, *found), (3, Some(4))),
        other => panic!("expected a gap, got {other}"),
    }
    assert!(
        stopped.error.to_string().contains("seq 3 is missing"),
        "{}",
        stopped.error
    );
    let cp = |agg: &str| -> i64 {
        db.scalar(&format!(
            "SELECT seq FROM oplog_checkpoint WHERE aggregate_name = '{agg}'"
        ))
    };
    assert_eq!(cp("broken"), 2, "entries before the hole are applied");
    assert_eq!(cp("fine"), 8);
}

#[test]
fn an_update_that_matches_no_row_is_a_divergence_naming_entry_table_and_key() {
    let db = TestDb::new();
    let replica = TestDb::empty();
    let log = oplog();
    let u1 = user("u1");
    let mut e = NewEntry::new("agg");
    e.create(&u1).unwrap();
    commit(&db, &log, &e, |tx| upsert_user(tx, &u1));
    assert!(replay(&log, &db, Target::database(&replica.url)).is_complete());

    // The replica loses the row; the source goes on updating it.
    replica
        .client()
        .execute("DELETE FROM demo_user", &[])
        .unwrap();
    for name in ["first", "second"] {
        let mut changed = u1.clone();
        changed.display_name = name.into();
        let mut e = NewEntry::new("agg");
        e.update(&changed, &["display_name"], &[]).unwrap();
        commit(&db, &log, &e, |tx| upsert_user(tx, &changed));
    }
    let report = replay(&log, &db, Target::database(&replica.url));
    assert_eq!(report.entries_applied, 0);
    let stopped = &report.stopped[0];
    assert_eq!(stopped.seq, 2);
    let text = stopped.error.to_string();
    match &stopped.error {
        Error::Divergence {
            entry,
            kind,
            table,
            key,
        } => {
            assert_eq!((entry.aggregate.as_str(), entry.seq), ("agg", 2));
            assert_eq!(*kind, DivergenceKind::UpdateMatchedNoRow);
            assert_eq!(table, "demo_user");
            assert!(key.contains("id=\"u1\""), "{key}");
        }
        other => panic!("expected a divergence, got {other}"),
    }
    assert!(text.contains("matched no row"), "{text}");
    let checkpoint: i64 = replica.scalar("SELECT seq FROM oplog_checkpoint");
    assert_eq!(checkpoint, 1, "nothing after the divergence is applied");
}

#[test]
fn a_field_without_a_column_is_an_error_naming_type_field_and_column() {
    let db = TestDb::new();
    let replica = TestDb::empty();
    replica
        .client()
        .batch_execute("CREATE TABLE demo_user (id text PRIMARY KEY, email text)")
        .unwrap();
    let log = oplog();
    let u1 = user("u1");
    let mut e = NewEntry::new("agg");
    e.create(&u1).unwrap();
    commit(&db, &log, &e, |tx| upsert_user(tx, &u1));
    let report = replay(&log, &db, Target::database(&replica.url));
    let text = report.stopped[0].error.to_string();
    assert!(text.contains("\"demo.v1.User\""), "{text}");
    assert!(
        text.contains("field \"tenant_id\" has no column \"tenant_id\""),
        "{text}"
    );

    // A column of a type the field cannot be stored in is named as well.
    replica
        .client()
        .batch_execute(
            "DROP TABLE demo_user; CREATE TABLE demo_user (id text PRIMARY KEY, tenant_id text, account_id text, \
             email text, display_name text, phone text, age boolean, active boolean, avatar bytea)",
        )
        .unwrap();
    let report = replay(&log, &db, Target::database(&replica.url));
    let text = report.stopped[0].error.to_string();
    assert!(
        text.contains("field \"age\" (int32) cannot be stored in column \"age\" of type boolean"),
        "{text}"
    );
}

/// A catalog with `kitchen.v1.Sink`, compiled from tests/proto at run time.
fn kitchen_catalog() -> TypeCatalog {
    let mut compiler =
        protox::Compiler::new([concat!(env!("CARGO_MANIFEST_DIR"), "/tests/proto")]).unwrap();
    compiler
        .include_imports(true)
        .open_files(["kitchen.proto"])
        .unwrap();
    let mut catalog = TypeCatalog::new();
    catalog
        .add_file_descriptor_set(&compiler.encode_file_descriptor_set())
        .unwrap();
    catalog
        .register_table("kitchen.v1.Sink", TableInfo::new("kitchen_sink", &["id"]))
        .unwrap();
    catalog
}

const KITCHEN_SCHEMA: &str = "
CREATE TYPE mood AS ENUM ('MOOD_UNSPECIFIED', 'MOOD_HAPPY', 'MOOD_GRUMPY');
CREATE TABLE kitchen_sink (
    id text PRIMARY KEY, d float8, f float4, i32 int4, i64 int8, u32 int8, u64 numeric,
    s64 int8, fx32 int8, flag bool NOT NULL DEFAULT false, raw bytea, mood_number int2,
    mood_name text, mood_enum mood, maybe text, at timestamptz, took interval, count int8,
    note text, tags text[], scores int8[], nested jsonb, attrs jsonb, uid uuid UNIQUE,
    amount numeric(12, 2)
);";

/// A `kitchen.v1.Sink` message with the given fields set.
fn sink(catalog: &TypeCatalog, fields: Vec<(&str, prost_reflect::Value)>) -> Vec<u8> {
    use prost::Message as _;
    let desc = catalog.get("kitchen.v1.Sink").unwrap().descriptor().clone();
    let mut msg = prost_reflect::DynamicMessage::new(desc);
    for (name, value) in fields {
        msg.set_field_by_name(name, value);
    }
    msg.encode_to_vec()
}

fn sub(
    catalog: &TypeCatalog,
    type_name: &str,
    fields: Vec<(&str, prost_reflect::Value)>,
) -> prost_reflect::Value {
    let desc = catalog.pool().get_message_by_name(type_name).unwrap();
    let mut msg = prost_reflect::DynamicMessage::new(desc);
    for (name, value) in fields {
        msg.set_field_by_name(name, value);
    }
    prost_reflect::Value::Message(msg)
}

#[test]
fn every_field_kind_replays_into_its_column_type() {
    use prost_reflect::{MapKey, Value as V};
    let db = TestDb::new();
    db.client().batch_execute(KITCHEN_SCHEMA).unwrap();
    let catalog = kitchen_catalog();
    let full = sink(
        &catalog,
        vec![
            ("id", V::String("s1".into())),
            ("d", V::F64(f64::NAN)),
            ("f", V::F32(1.5)),
            ("i32", V::I32(-7)),
            ("i64", V::I64(9_007_199_254_740_993)),
            ("u32", V::U32(u32::MAX)),
            ("u64", V::U64(u64::MAX)),
            ("s64", V::I64(-42)),
            ("fx32", V::U32(7)),
            ("flag", V::Bool(true)),
            ("raw", V::Bytes(vec![0, 255].into())),
            ("mood_number", V::EnumNumber(2)),
            ("mood_name", V::EnumNumber(2)),
            ("mood_enum", V::EnumNumber(1)),
            (
                "maybe",
                V::String("it's \"quoted\"\ttab\nline\\slash \\N ✓".into()),
            ),
            (
                "at",
                sub(
                    &catalog,
                    "google.protobuf.Timestamp",
                    vec![
                        ("seconds", V::I64(1_709_210_096)),
                        ("nanos", V::I32(789_012_000)),
                    ],
                ),
            ),
            (
                "took",
                sub(
                    &catalog,
                    "google.protobuf.Duration",
                    vec![("seconds", V::I64(90)), ("nanos", V::I32(500_000_000))],
                ),
            ),
            (
                "count",
                sub(
                    &catalog,
                    "google.protobuf.Int64Value",
                    vec![("value", V::I64(12))],
                ),
            ),
            (
                "note",
                sub(
                    &catalog,
                    "google.protobuf.StringValue",
                    vec![("value", V::String("note".into()))],
                ),
            ),
            (
                "tags",
                V::List(
                    [
                        "a",
                        "b,c",
                        "NULL",
                        "{x}",
                        "q\"uote",
                        "back\\slash",
                        "tab\tnew\nline",
                        "",
                    ]
                    .into_iter()
                    .map(|t| V::String(t.into()))
                    .collect(),
                ),
            ),
            ("scores", V::List(vec![V::I64(1), V::I64(2), V::I64(3)])),
            (
                "nested",
                sub(
                    &catalog,
                    "kitchen.v1.Nested",
                    vec![("label", V::String("x".into())), ("weight", V::I32(3))],
                ),
            ),
            (
                "attrs",
                V::Map(
                    [(MapKey::String("k".into()), V::I32(1))]
                        .into_iter()
                        .collect(),
                ),
            ),
            (
                "uid",
                V::String("f47ac10b-58cc-4372-a567-0e02b2c3d479".into()),
            ),
            ("amount", V::F64(12.25)),
        ],
    );
    // Nothing set but the key and the uuid: unset optional, wrapper and
    // message fields are NULL, the others their proto3 defaults.
    let empty = sink(
        &catalog,
        vec![
            ("id", V::String("s2".into())),
            (
                "uid",
                V::String("00000000-0000-0000-0000-000000000002".into()),
            ),
        ],
    );
    db.client()
        .batch_execute(
            "INSERT INTO kitchen_sink VALUES ('s1', 'NaN', 1.5, -7, 9007199254740993, 4294967295, 18446744073709551615, \
             -42, 7, true, '\\x00ff', 2, 'MOOD_GRUMPY', 'MOOD_HAPPY', E'it\\'s \"quoted\"\\ttab\\nline\\\\slash \\\\N ✓', '2024-02-29T12:34:56.789012Z', \
             interval '90.5 seconds', 12, 'note', ARRAY['a', 'b,c', 'NULL', '{x}', 'q\"uote', E'back\\\\slash', E'tab\\tnew\\nline', ''], ARRAY[1, 2, 3], '{\"label\": \"x\", \"weight\": 3}', \
             '{\"k\": 1}', 'f47ac10b-58cc-4372-a567-0e02b2c3d479', 12.25);
             INSERT INTO kitchen_sink VALUES ('s2', 0, 0, 0, 0, 0, 0, 0, 0, false, '', 0, 'MOOD_UNSPECIFIED', \
             'MOOD_UNSPECIFIED', NULL, NULL, NULL, NULL, NULL, '{}', '{}', NULL, '{}', \
             '00000000-0000-0000-0000-000000000002', 0);",
        )
        .unwrap();
    let log = Oplog::new(catalog, Keyring::generate());
    let mut e = NewEntry::new("kitchen");
    for value in [full, empty] {
        e.push(Operation {
            type_name: "kitchen.v1.Sink".into(),
            value,
            op: OpType::CreateItems,
            field_mask: vec![],
            null_mask: vec![],
        })
        .unwrap();
    }
    commit(&db, &log, &e, |_| {});

    // Into a separate database: the enum type is created there too.
    let replica = TestDb::empty();
    let report = replay(&log, &db, Target::database(&replica.url));
    assert!(report.is_complete(), "{:?}", report.stopped);
    let source = table_rows(&db.url, "kitchen_sink");
    assert!(source[0].contains("\"d\":\"NaN\""), "{}", source[0]);
    assert_eq!(table_rows(&replica.url, "kitchen_sink"), source);
    // And into suffixed tables of the source.
    let report = replay(&log, &db, Target::suffix("_copy"));
    assert!(report.is_complete(), "{:?}", report.stopped);
    assert_eq!(table_rows(&db.url, "kitchen_sink_copy"), source);
}

/// A descriptor set with one message whose field name is hostile, built by
/// hand as an attacker could (protoc would refuse the name).
fn hostile_descriptor(field: &str) -> Vec<u8> {
    use prost::Message as _;
    use prost_types::field_descriptor_proto::{Label, Type as T};
    let f = |name: &str, number: i32| prost_types::FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(T::String as i32),
        json_name: Some(format!("f{number}")),
        ..Default::default()
    };
    prost_types::FileDescriptorSet {
        file: vec![prost_types::FileDescriptorProto {
            name: Some("evil.proto".into()),
            package: Some("evil.v1".into()),
            syntax: Some("proto3".into()),
            message_type: vec![prost_types::DescriptorProto {
                name: Some("Row".into()),
                field: vec![f("id", 1), f(field, 2)],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[test]
fn hostile_table_and_column_names_cannot_inject_sql() {
    const EVIL: &str = "x\"; DROP TABLE victim; --";
    // Hostile table names never enter a catalog.
    let mut catalog = oplog::demo::catalog_of(&[]);
    for table in [EVIL, "demo user", "demo_user;", "a.b.c"] {
        let err = catalog
            .register_table("demo.v1.Account", TableInfo::new(table, &["id"]))
            .unwrap_err();
        assert!(
            err.to_string().contains("not a valid identifier")
                || err.to_string().contains("schema qualifier"),
            "{table}: {err}"
        );
    }
    // A hostile field (column) name is only ever a quoted identifier: the
    // replay either finds that exact column or names it in an error.
    let db = TestDb::new();
    let mut catalog = TypeCatalog::new();
    // prost-reflect accepts the name; only quoting stands between it and SQL.
    catalog
        .add_file_descriptor_set(&hostile_descriptor(EVIL))
        .unwrap();
    catalog
        .register_table("evil.v1.Row", TableInfo::new("evil_row", &["id"]))
        .unwrap();
    db.client()
        .batch_execute(&format!(
            "CREATE TABLE victim (id int); CREATE TABLE evil_row (id text PRIMARY KEY, {} text);",
            oplog_quote(EVIL)
        ))
        .unwrap();
    let desc = catalog.get("evil.v1.Row").unwrap().descriptor().clone();
    let mut msg = prost_reflect::DynamicMessage::new(desc);
    msg.set_field_by_name("id", prost_reflect::Value::String("r1".into()));
    msg.set_field_by_name(EVIL, prost_reflect::Value::String("payload".into()));
    let log = Oplog::new(catalog, Keyring::generate());
    let mut e = NewEntry::new("evil");
    e.push(Operation {
        type_name: "evil.v1.Row".into(),
        value: prost::Message::encode_to_vec(&msg),
        op: OpType::Create,
        field_mask: vec![],
        null_mask: vec![],
    })
    .unwrap();
    commit(&db, &log, &e, |_| {});
    let report = replay(&log, &db, Target::suffix("_r"));
    assert!(report.is_complete(), "{:?}", report.stopped);
    let value: String = db.scalar(&format!("SELECT {} FROM evil_row_r", oplog_quote(EVIL)));
    assert_eq!(value, "payload");
    let victim: i64 = db.scalar("SELECT count(*) FROM victim");
    assert_eq!(victim, 0, "the victim table still exists");
}

fn oplog_quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[test]
fn a_replayed_replica_verifies_clean_until_it_falls_behind_or_is_altered() {
    use oplog::{verify, FindingKind, VerifyOptions};
    let db = TestDb::new();
    let replica = TestDb::empty();
    let log = oplog();
    boundary_scenarios(&db, &log, "tenant-1");
    boundary_scenarios(&db, &log, "tenant-2");
    assert!(replay(&log, &db, Target::database(&replica.url)).is_complete());
    let options = VerifyOptions {
        against: Some(Target::database(&replica.url)),
        ..VerifyOptions::default()
    };
    let report = verify(&log, &db.url, &options).unwrap();
    assert!(report.is_clean(), "{:?}", report.findings);
    assert_eq!(report.entries_checked, 16);
    let users = report
        .tables
        .iter()
        .find(|t| t.table == "demo_user")
        .unwrap();
    assert_eq!(
        (users.source_rows, users.replica_rows, users.differences),
        (4, 4, 0)
    );

    // A new entry on the source: the replica is behind until replayed.
    let u9 = user("u9");
    let mut e = NewEntry::new("tenant-1");
    e.create(&u9).unwrap();
    commit(&db, &log, &e, |tx| upsert_user(tx, &u9));
    let report = verify(&log, &db.url, &options).unwrap();
    let kinds: Vec<FindingKind> = report.findings.iter().map(|f| f.kind).collect();
    assert!(
        kinds.contains(&FindingKind::ReplicaBehind),
        "{:?}",
        report.findings
    );
    assert!(replay(&log, &db, Target::database(&replica.url)).is_complete());
    assert!(verify(&log, &db.url, &options).unwrap().is_clean());

    // Someone edits the replica: the row is named.
    replica
        .client()
        .execute(
            "UPDATE demo_user SET display_name = 'edited' WHERE id = 'u9'",
            &[],
        )
        .unwrap();
    let report = verify(&log, &db.url, &options).unwrap();
    let users = report
        .tables
        .iter()
        .find(|t| t.table == "demo_user")
        .unwrap();
    assert_eq!(users.changed, 1);
    assert!(users.keys[0].key.contains("u9"), "{:?}", users.keys);
}

/// The checkpoint of `aggregate` on `replica`, 0 when none.
fn checkpoint_of(replica: &TestDb, aggregate: &str) -> i64 {
    replica
        .client()
        .query_opt(
            "SELECT seq FROM oplog_checkpoint WHERE aggregate_name = $1",
            &[&aggregate],
        )
        .unwrap()
        .map_or(0, |r| r.get(0))
}

fn skipping(skips: &[(&str, i64)]) -> ReplayOptions {
    ReplayOptions {
        skip: skips
            .iter()
            .map(|(a, s)| Skip::parse(&format!("{a}:{s}"), "row lost on the replica").unwrap())
            .collect(),
        ..ReplayOptions::default()
    }
}

#[test]
fn an_entry_that_cannot_apply_is_passed_over_only_where_its_aggregate_stopped_and_recorded() {
    let db = TestDb::new();
    let replica = TestDb::empty();
    let log = oplog();
    let target = || Target::database(&replica.url);
    // "stuck" gets a row, then an update of a row the replica will not
    // have, then another row; "other" just goes on.
    let u1 = user("u1");
    let mut e = NewEntry::new("stuck");
    e.create(&u1).unwrap();
    commit(&db, &log, &e, |tx| upsert_user(tx, &u1));
    assert!(replay(&log, &db, target()).is_complete());
    replica
        .client()
        .execute("DELETE FROM demo_user WHERE id = 'u1'", &[])
        .unwrap();
    let mut changed = u1.clone();
    changed.display_name = "renamed".into();
    let mut e = NewEntry::new("stuck");
    e.update(&changed, &["display_name"], &[]).unwrap();
    commit(&db, &log, &e, |tx| upsert_user(tx, &changed));
    let u3 = user("u3");
    let mut e = NewEntry::new("stuck");
    e.create(&u3).unwrap();
    commit(&db, &log, &e, |tx| upsert_user(tx, &u3));
    let u4 = user("u4");
    let mut e = NewEntry::new("other");
    e.create(&u4).unwrap();
    commit(&db, &log, &e, |tx| upsert_user(tx, &u4));

    // Without a recorded stop there, a skip is refused and nothing moves.
    for (skip, why) in [
        (("stuck", 2), "has not stopped at it"),
        (("other", 1), "has not stopped at it"),
    ] {
        let err = Replayer::connect(&log, &db.url, target(), skipping(&[skip]))
            .unwrap()
            .run(&mut |_| {})
            .unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
    assert_eq!(checkpoint_of(&replica, "stuck"), 1);
    assert_eq!(
        checkpoint_of(&replica, "other"),
        0,
        "refused before applying"
    );

    let first = replay(&log, &db, target());
    assert_eq!(first.stopped.len(), 1);
    assert_eq!(
        (first.stopped[0].aggregate.as_str(), first.stopped[0].seq),
        ("stuck", 2)
    );
    assert_eq!(checkpoint_of(&replica, "other"), 1);

    // Only the entry the aggregate stopped at.
    let err = Replayer::connect(&log, &db.url, target(), skipping(&[("stuck", 3)]))
        .unwrap()
        .run(&mut |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("stopped at seq 2"), "{err}");
    assert_eq!(checkpoint_of(&replica, "stuck"), 1);
    assert!(Skip::parse("stuck:2", " ").is_err(), "a reason is required");
    assert!(Skip::parse("stuck", "why").is_err());
    assert!(Skip::parse("stuck:0", "why").is_err());
    assert_eq!(Skip::parse("a:b:7", "why").unwrap().aggregate, "a:b");

    let report = Replayer::connect(&log, &db.url, target(), skipping(&[("stuck", 2)]))
        .unwrap()
        .run(&mut |_| {})
        .unwrap();
    assert!(report.is_complete(), "{:?}", report.stopped);
    assert_eq!(report.entries_applied, 1, "seq 3 applied after the skip");
    assert_eq!(report.skipped.len(), 1);
    let skipped = &report.skipped[0];
    assert_eq!((skipped.aggregate.as_str(), skipped.seq), ("stuck", 2));
    assert_eq!(skipped.reason, "row lost on the replica");
    assert!(
        skipped.error.contains("matched no row"),
        "{}",
        skipped.error
    );
    assert_eq!(checkpoint_of(&replica, "stuck"), 3);
    let recorded: (i64, String, i64) = {
        let row = replica
            .client()
            .query_one("SELECT seq, reason, entry_id FROM oplog_skipped", &[])
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(
        (recorded.0, recorded.1.as_str()),
        (2, "row lost on the replica")
    );
    assert_eq!(recorded.2, skipped.entry_id);
    assert_eq!(
        replica.scalar::<i64>("SELECT count(*) FROM oplog_stopped"),
        0,
        "the stop is resolved"
    );
    // The checkpoint chain is the skipped entry's, so seq 3 followed it.
    let chains_agree: bool = {
        let chain: Vec<u8> =
            replica.scalar("SELECT chain FROM oplog_checkpoint WHERE aggregate_name = 'stuck'");
        db.client()
            .query_one(
                "SELECT chain = $1 FROM oplog_entry WHERE aggregate_name = 'stuck' AND seq = 3",
                &[&chain],
            )
            .unwrap()
            .get(0)
    };
    assert!(chains_agree);

    // Asked again (a follower restarted with the same flags): nothing to do.
    let again = Replayer::connect(&log, &db.url, target(), skipping(&[("stuck", 2)]))
        .unwrap()
        .run(&mut |_| {})
        .unwrap();
    assert!(again.is_complete() && again.skipped.is_empty() && again.unused_skips.is_empty());
}

#[test]
fn a_skip_is_not_used_when_the_entry_applies_after_all() {
    let db = TestDb::new();
    let replica = TestDb::empty();
    let log = oplog();
    let u1 = user("u1");
    let mut e = NewEntry::new("agg");
    e.create(&u1).unwrap();
    commit(&db, &log, &e, |tx| upsert_user(tx, &u1));
    assert!(replay(&log, &db, Target::database(&replica.url)).is_complete());
    replica
        .client()
        .execute("DELETE FROM demo_user", &[])
        .unwrap();
    let mut changed = u1.clone();
    changed.display_name = "renamed".into();
    let mut e = NewEntry::new("agg");
    e.update(&changed, &["display_name"], &[]).unwrap();
    commit(&db, &log, &e, |tx| upsert_user(tx, &changed));
    assert_eq!(
        replay(&log, &db, Target::database(&replica.url))
            .stopped
            .len(),
        1
    );

    // The operator restores the row instead; the skip is not needed.
    let mut client = replica.client();
    let mut tx = client.transaction().unwrap();
    upsert_user(&mut tx, &u1);
    tx.commit().unwrap();
    let report = Replayer::connect(
        &log,
        &db.url,
        Target::database(&replica.url),
        skipping(&[("agg", 2)]),
    )
    .unwrap()
    .run(&mut |_| {})
    .unwrap();
    assert!(report.is_complete(), "{:?}", report.stopped);
    assert_eq!(report.entries_applied, 1);
    assert!(report.skipped.is_empty());
    assert_eq!(report.unused_skips.len(), 1);
    assert_eq!(
        replica.scalar::<i64>("SELECT count(*) FROM oplog_skipped"),
        0
    );
    assert_eq!(
        replica.scalar::<i64>("SELECT count(*) FROM oplog_stopped"),
        0
    );
}

#[test]
fn sub_microsecond_timestamps_replay_exactly_as_the_driver_stored_them() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let db = TestDb::new();
    let replica = TestDb::empty();
    let log = oplog();
    let times = [
        UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
        UNIX_EPOCH + Duration::new(1_700_000_000, 999_999_999),
        // Before PostgreSQL's epoch (2000-01-01), where truncation toward
        // it moves the other way.
        UNIX_EPOCH + Duration::new(946_684_799, 999_999_500),
        UNIX_EPOCH + Duration::new(100, 1_500),
        SystemTime::now(),
    ];
    let mut client = db.client();
    for (i, at) in times.iter().enumerate() {
        let account = Account {
            id: format!("a{i}"),
            tenant_id: "t".into(),
            name: "n".into(),
            plan: "free".into(),
            created_at: Some(prost_types::Timestamp::from(*at)),
            ..Default::default()
        };
        let mut tx = client.transaction().unwrap();
        tx.execute(
            "INSERT INTO demo_account (id, tenant_id, name, plan, created_at) VALUES ($1, 't', 'n', 'free', $2)",
            &[&account.id, at],
        )
        .unwrap();
        let mut e = NewEntry::new("t");
        e.create(&account).unwrap();
        log.write(&mut tx, &e).unwrap();
        tx.commit().unwrap();
    }
    // And through an UPDATE, which takes the other path into the table.
    let later = UNIX_EPOCH + Duration::new(1_800_000_000, 987_654_321);
    let mut tx = client.transaction().unwrap();
    tx.execute(
        "UPDATE demo_account SET created_at = $1 WHERE id = 'a0'",
        &[&later],
    )
    .unwrap();
    let mut e = NewEntry::new("t");
    e.update(
        &Account {
            id: "a0".into(),
            created_at: Some(prost_types::Timestamp::from(later)),
            ..Default::default()
        },
        &["created_at"],
        &[],
    )
    .unwrap();
    log.write(&mut tx, &e).unwrap();
    tx.commit().unwrap();

    let report = replay(&log, &db, Target::database(&replica.url));
    assert!(report.is_complete(), "{:?}", report.stopped);
    let times = |url: &str| -> Vec<String> {
        postgres::Client::connect(url, postgres::NoTls)
            .unwrap()
            .query(
                "SELECT id || ' ' || to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') \
                 FROM demo_account ORDER BY id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(times(&replica.url), times(&db.url));
}

#[test]
fn the_command_line_names_the_stopped_entry_and_skips_it_when_asked_with_a_reason() {
    use crate::cli::{failure, run_against, save_keyring, success, TempDir};
    let db = TestDb::new();
    let replica = TestDb::empty();
    let dir = TempDir::new();
    let keys = save_keyring(&Keyring::generate(), &dir.join("keys.json"));
    let log = Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::load(std::path::Path::new(&keys)).unwrap(),
    );
    let u1 = user("u1");
    let mut e = NewEntry::new("stuck");
    e.create(&u1).unwrap();
    commit(&db, &log, &e, |tx| upsert_user(tx, &u1));
    success(&run_against(
        &db.url,
        &keys,
        &["replay", "--into", &replica.url],
    ));
    replica
        .client()
        .execute("DELETE FROM demo_user", &[])
        .unwrap();
    let mut changed = u1.clone();
    changed.display_name = "renamed".into();
    let mut e = NewEntry::new("stuck");
    e.update(&changed, &["display_name"], &[]).unwrap();
    commit(&db, &log, &e, |tx| upsert_user(tx, &changed));

    let out = run_against(&db.url, &keys, &["replay", "--into", &replica.url]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("--skip stuck:2"), "{stderr}");

    let wrong = run_against(
        &db.url,
        &keys,
        &[
            "replay",
            "--into",
            &replica.url,
            "--skip",
            "stuck:3",
            "--reason",
            "typo",
        ],
    );
    failure(&wrong, &["refusing to skip entry stuck:3"]);

    let out = run_against(
        &db.url,
        &keys,
        &[
            "follow",
            "--into",
            &replica.url,
            "--until-caught-up",
            "--skip",
            "stuck:2",
            "--reason",
            "row deleted on the replica by hand",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reason: String = replica.scalar("SELECT reason FROM oplog_skipped");
    assert_eq!(reason, "row deleted on the replica by hand");
    let out = success(&run_against(
        &db.url,
        &keys,
        &[
            "replay",
            "--into",
            &replica.url,
            "--skip",
            "stuck:2",
            "--reason",
            "again",
        ],
    ));
    assert!(out.contains("applied 0 entries"), "{out}");
}
