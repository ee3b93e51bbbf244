//! Replay targets: the source database is never its own replica, and
//! replicas set up by several followers at once come up once.

use std::sync::{Arc, Barrier};
use std::thread;

use oplog::{
    verify, Error, FollowOptions, Follower, Keyring, Oplog, ReplayOptions, Replayer, Target,
    VerifyOptions,
};

use crate::cli::{failure, run_against, save_keyring, TempDir};
use crate::support::{create_users, table_rows, TestDb};

fn has_checkpoint_table(db: &TestDb) -> bool {
    db.scalar::<Option<String>>("SELECT to_regclass('oplog_checkpoint')::text")
        .is_some()
}

#[test]
fn the_source_database_is_refused_as_its_own_replica_and_nothing_is_written() {
    let source = TestDb::new();
    let dir = TempDir::new();
    let keys = save_keyring(&Keyring::generate(), &dir.join("keys.json"));
    let log = Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::load(std::path::Path::new(&keys)).unwrap(),
    );
    create_users(
        &source.url,
        &log,
        "t1",
        ["u1".to_string(), "u2".to_string()],
    );
    // The application deletes a row; replaying onto the live tables would
    // bring it back.
    source
        .client()
        .batch_execute("DELETE FROM demo_user WHERE id = 'u1'")
        .unwrap();
    let before = table_rows(&source.url, "demo_user");

    // The same database under another spelling of its address.
    let key_value = format!(
        "host=127.0.0.1 port=5432 user=postgres dbname={}",
        source.name
    );
    for url in [source.url.clone(), key_value] {
        let err = Replayer::connect(
            &log,
            &source.url,
            Target::database(&url),
            ReplayOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("source database itself")),
            "{err}"
        );
        let options = FollowOptions {
            until_caught_up: true,
            ..FollowOptions::default()
        };
        let err = Follower::new(&log, &source.url, Target::database(&url), options)
            .run(&mut |_| {})
            .unwrap_err();
        assert!(matches!(&err, Error::Config(_)), "{err}");
        // Verifying the source against itself would prove nothing.
        let err = verify(
            &log,
            &source.url,
            &VerifyOptions {
                against: Some(Target::database(&url)),
                ..VerifyOptions::default()
            },
        )
        .unwrap_err();
        assert!(matches!(&err, Error::Config(_)), "{err}");
    }
    assert!(!has_checkpoint_table(&source), "nothing may be created");
    assert_eq!(
        source.scalar::<i64>("SELECT count(*) FROM oplog_consumer"),
        0,
        "nor registered"
    );

    for command in ["replay", "follow"] {
        let out = run_against(&source.url, &keys, &[command, "--into", &source.url]);
        failure(&out, &["source database itself"]);
    }
    let out = run_against(&source.url, &keys, &["verify", "--against", &source.url]);
    failure(&out, &["source database itself"]);
    assert!(!has_checkpoint_table(&source));
    assert_eq!(table_rows(&source.url, "demo_user"), before);

    // Suffixed tables in the source database stay a target of their own,
    // whichever way they are named.
    let suffixed = Target::database_with_suffix(&source.url, "_copy");
    let report = Replayer::connect(&log, &source.url, suffixed, ReplayOptions::default())
        .unwrap()
        .run(&mut |_| {})
        .unwrap();
    assert!(report.is_complete(), "{:?}", report.stopped);
    assert_eq!(report.entries_applied, 2);
    assert_eq!(table_rows(&source.url, "demo_user"), before);
    let checked = verify(
        &log,
        &source.url,
        &VerifyOptions {
            against: Some(Target::database_with_suffix(&source.url, "_copy")),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    // The suffixed copy holds both rows; the source lost one since.
    let users = checked
        .tables
        .iter()
        .find(|t| t.table == "demo_user")
        .unwrap();
    assert_eq!(users.replica_table, "demo_user_copy");
    assert_eq!(users.extra_in_replica, 1, "{checked:?}");
}

#[test]
fn followers_started_at_once_on_a_fresh_replica_set_it_up_once() {
    let source = TestDb::new();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(&source.url, &log, "t1", (0..20).map(|i| format!("u{i}")));
    for _ in 0..6 {
        let replica = TestDb::empty();
        let start = Arc::new(Barrier::new(3));
        let followers: Vec<_> = (0..3)
            .map(|_| {
                let (log, source, url, start) = (
                    log.clone(),
                    source.url.clone(),
                    replica.url.clone(),
                    start.clone(),
                );
                thread::spawn(move || {
                    let options = FollowOptions {
                        until_caught_up: true,
                        ..FollowOptions::default()
                    };
                    let mut follower =
                        Follower::new(&log, &source, Target::database(&url), options);
                    start.wait();
                    follower.run(&mut |_| {})
                })
            })
            .collect();
        let applied: u64 = followers
            .into_iter()
            .map(|f| f.join().unwrap().unwrap().entries_applied)
            .sum();
        assert_eq!(applied, 20, "every entry applied once, by one of them");
        assert_eq!(
            table_rows(&replica.url, "demo_user"),
            table_rows(&source.url, "demo_user")
        );
    }
}
