//! The plans of the statements that replay, follow and verify run on the
//! source, read from PostgreSQL itself: `auto_explain` reports each
//! executed plan as a notice, and the driver logs notices, which this test
//! binary collects. No statement may scan the entry table sequentially or
//! sort its rows: each must follow the `(aggregate_name, seq)` index a
//! bounded page at a time, or the cost of a pass grows with the log.

use std::sync::{Mutex, OnceLock};

use oplog::{
    verify, FollowOptions, Follower, Keyring, NewEntry, Oplog, ReplayOptions, Replayer, Target,
    VerifyOptions,
};

use crate::support::{scan_problems, user, TestDb};

/// Notices that carry a plan, from every connection of this process.
fn plans() -> &'static Mutex<Vec<String>> {
    static PLANS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    PLANS.get_or_init(|| Mutex::new(Vec::new()))
}

struct PlanLogger;

impl log::Log for PlanLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        let text = record.args().to_string();
        if text.contains("\"Plan\"") {
            if let Ok(mut plans) = plans().lock() {
                plans.push(text);
            }
        }
    }

    fn flush(&self) {}
}

static LOGGER: PlanLogger = PlanLogger;

#[test]
fn replay_follow_and_verify_read_the_log_in_index_order() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    let source = TestDb::new();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    // 300 aggregates of 40 entries, their seqs interleaved in id order as
    // concurrent writers leave them.
    let mut client = source.client();
    for round in 0..40 {
        let mut tx = client.transaction().unwrap();
        for a in 0..300 {
            let u = user(&format!("u{a}-{round}"));
            tx.execute(oplog::demo::INSERT_USER, &u.params()).unwrap();
            let mut entry = NewEntry::new(format!("tenant-{a:03}"));
            entry.create(&u).unwrap();
            log.write(&mut tx, &entry).unwrap();
        }
        tx.commit().unwrap();
    }
    client
        .batch_execute(&format!(
            "ANALYZE;
             ALTER DATABASE \"{db}\" SET session_preload_libraries = 'auto_explain';
             ALTER DATABASE \"{db}\" SET auto_explain.log_min_duration = 0;
             ALTER DATABASE \"{db}\" SET auto_explain.log_nested_statements = on;
             ALTER DATABASE \"{db}\" SET auto_explain.log_format = 'json';
             ALTER DATABASE \"{db}\" SET auto_explain.log_level = 'notice'",
            db = source.name
        ))
        .unwrap();

    let replica = TestDb::empty();
    let small = ReplayOptions {
        batch_size: 200,
        ..ReplayOptions::default()
    };
    let report = Replayer::connect(&log, &source.url, Target::database(&replica.url), small)
        .unwrap()
        .run(&mut |_| {})
        .unwrap();
    assert!(report.is_complete(), "{:?}", report.stopped.first());
    let followed = TestDb::empty();
    let options = FollowOptions {
        until_caught_up: true,
        batch_size: 200,
        ..FollowOptions::default()
    };
    Follower::new(&log, &source.url, Target::database(&followed.url), options)
        .run(&mut |_| {})
        .unwrap();
    let checked = verify(&log, &source.url, &VerifyOptions::default()).unwrap();
    assert!(checked.is_clean());

    let plans = plans().lock().unwrap();
    let mut problems = Vec::new();
    let mut entry_scans = 0;
    for notice in plans.iter() {
        let Some(start) = notice.find('{') else {
            continue;
        };
        let Ok(plan) = serde_json::from_str::<serde_json::Value>(&notice[start..]) else {
            continue;
        };
        let query = plan["Query Text"].as_str().unwrap_or("").to_string();
        let mut found = Vec::new();
        scan_problems(&plan["Plan"], &mut found);
        problems.extend(found.into_iter().map(|p| format!("{p} in: {query}")));
        entry_scans += notice.matches("\"Relation Name\": \"oplog_entry\"").count();
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        entry_scans > 100,
        "the plans were collected: {entry_scans} entry scans"
    );
}
