//! Scans of the log at scale: the statements that read the log page by page
//! must be index range scans that sort nothing, whatever the size of the
//! log, so that each page costs the same at the billionth entry as at the
//! first.

use serde_json::Value;

use crate::support::{superuser_exec, TestDb};

/// A log of `aggregates * per_aggregate` entries (not valid ones: plans do
/// not look inside), inserted in round-robin order so that entry ids run
/// across aggregates, with metadata, then analysed.
fn large_log(aggregates: i64, per_aggregate: i64) -> TestDb {
    let db = TestDb::new();
    let total = aggregates * per_aggregate;
    superuser_exec(
        &db,
        &format!(
            "INSERT INTO oplog_entry (entry_uuid, aggregate_name, seq, format, key_id, data, digest, chain) \
             SELECT gen_random_uuid(), 'tenant-' || (g % {aggregates}), g / {aggregates} + 1, 1, 'k1', \
                    decode(md5(g::text), 'hex'), sha256(g::text::bytea), sha256(('c' || g)::bytea) \
             FROM generate_series(0, {total} - 1) AS g; \
             INSERT INTO oplog_metadata (entry_id, ordinal, key, value) \
             SELECT id, 0, 'actor', 'alice' FROM oplog_entry; \
             INSERT INTO oplog_ticket (name, version) \
             SELECT 'tenant-' || a, {per_aggregate} FROM generate_series(0, {aggregates} - 1) AS a; \
             ANALYZE"
        ),
    );
    db
}

/// Every node of a plan, depth first.
fn nodes(plan: &Value) -> Vec<&Value> {
    let mut found = vec![plan];
    if let Some(children) = plan["Plans"].as_array() {
        for child in children {
            found.extend(nodes(child));
        }
    }
    found
}

/// The names of the indexes a plan reads.
fn indexes(all: &[&Value]) -> Vec<String> {
    let mut names: Vec<String> = all
        .iter()
        .filter_map(|n| n["Index Name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn pages_of_the_log_are_index_range_scans_without_a_sort() {
    // Aggregates of many pages, the last of them followed by a small one:
    // where the position is near the end of the statistics, a planner that
    // sees it would rather read the rest of the aggregate and sort it, for
    // every page. (An aggregate of a few pages may be read that way: the
    // planner then reads no more than those few pages.)
    let db = large_log(4, 10_000);
    superuser_exec(
        &db,
        "INSERT INTO oplog_entry (entry_uuid, aggregate_name, seq, format, key_id, data, digest, chain) \
         SELECT gen_random_uuid(), 'zz', g, 1, 'k1', '\\x00', sha256(g::text::bytea), sha256(g::text::bytea) \
         FROM generate_series(1, 150) AS g; \
         ANALYZE",
    );
    let mut plans = oplog::explain_entry_scans(&mut db.client(), "tenant-1", None).unwrap();
    // A position in the middle of the last large aggregate.
    plans.extend(oplog::explain_entry_scans(&mut db.client(), "tenant-3", Some(5000)).unwrap());
    assert_eq!(plans.len(), 16, "{plans:?}");
    for (name, plan) in &plans {
        let doc: Value = serde_json::from_str(plan).unwrap();
        let all = nodes(&doc[0]["Plan"]);
        for node in &all {
            let kind = node["Node Type"].as_str().unwrap_or_default();
            assert!(
                !kind.contains("Sort"),
                "{name}: the plan sorts ({kind}): {plan}"
            );
            assert!(
                !(kind == "Seq Scan" && node["Relation Name"] == "oplog_entry"),
                "{name}: the plan reads the whole entry table: {plan}"
            );
        }
        let expected = if name.starts_with("candidates") {
            "oplog_entry_aggregate_name_seq_key"
        } else {
            "oplog_entry_pkey"
        };
        assert!(
            indexes(&all).iter().any(|i| i == expected),
            "{name}: the plan does not read {expected}: {plan}"
        );
    }
}
