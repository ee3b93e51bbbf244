//! Signed checkpoints and proofs, through the command line against a real
//! PostgreSQL: proofs hold for first, middle and last entries and between
//! checkpoints, and fail for every tampering and forgery.

use std::path::{Path, PathBuf};

use oplog::{Keyring, Oplog};

use crate::cli::{failure, oplog_cmd, success, TempDir};
use crate::support::{create_users, superuser_exec, TestDb};

fn run(db: &TestDb, args: &[&str]) -> std::process::Output {
    oplog_cmd()
        .args(["--database-url", &db.url])
        .args(args)
        .output()
        .unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes `text` to `dir/name`.
fn file(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `oplog keys generate-signing` for example.com/app into `key`: what it
/// said.
fn generate_signing(key: &Path) -> String {
    success(
        &oplog_cmd()
            .args([
                "keys",
                "generate-signing",
                "--name",
                "example.com/app",
                "--out",
            ])
            .arg(key)
            .output()
            .unwrap(),
    )
}

/// `oplog verify-proof`: Ok(line) when proven, Err(status) otherwise.
fn verify(proof: &Path, key: &str) -> Result<String, i32> {
    let out = oplog_cmd()
        .args(["verify-proof", path(proof), "--public-key", key])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(out.status.code().unwrap_or(-1))
    }
}

#[test]
fn entries_are_proven_in_signed_checkpoints_and_tampering_and_forgery_are_not() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let keyring = dir.join("keys.json");
    Keyring::generate().save(&keyring).unwrap();
    let log = Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::load(&keyring).unwrap(),
    );
    for (a, n) in [("a", 5), ("b", 3), ("c", 7)] {
        create_users(&db.url, &log, a, (0..n).map(|i| format!("{a}{i}")));
    }
    let key = dir.join("signing.key");
    let said = generate_signing(&key);
    let verifier = said.lines().last().unwrap().to_string();
    let cp1 = dir.join("cp1");
    success(&run(
        &db,
        &[
            "checkpoint",
            "--signing-key",
            path(&key),
            "--out",
            path(&cp1),
        ],
    ));
    create_users(&db.url, &log, "a", (5..9).map(|i| format!("a{i}")));
    create_users(&db.url, &log, "d", (0..2).map(|i| format!("d{i}")));
    let out = run(&db, &["--json", "checkpoint", "--signing-key", path(&key)]);
    let cp2_json: serde_json::Value = serde_json::from_str(success(&out).trim()).unwrap();
    assert_eq!(cp2_json["size"], 21);
    assert_eq!(cp2_json["added"], 6);
    let cp2 = file(&dir, "cp2", cp2_json["note"].as_str().unwrap());

    // First, middle and last entries, in the later and the earlier
    // checkpoint; proofs are O(log n).
    for (entry, cp, size) in [
        ("a:1", &cp2, 21),
        ("b:2", &cp2, 21),
        ("c:7", &cp2, 21),
        ("d:2", &cp2, 21),
        ("a:9", &cp2, 21),
        ("a:1", &cp1, 15),
        ("c:7", &cp1, 15),
    ] {
        let proof = success(&run(&db, &["prove", entry, "--checkpoint", path(cp)]));
        let json: serde_json::Value = serde_json::from_str(proof.trim()).unwrap();
        assert!(json["proof"].as_array().unwrap().len() <= 5, "{json}");
        let p = file(&dir, "proof.json", &proof);
        let line = verify(&p, &verifier).unwrap_or_else(|c| panic!("{entry}: exit {c}"));
        assert!(line.contains(&format!("of size {size}")), "{line}");
    }
    // An entry named by its id is the same leaf as by AGGREGATE:SEQ.
    let id: i64 = db.scalar("SELECT id FROM oplog_entry WHERE aggregate_name = 'c' AND seq = 7");
    let by_id = success(&run(
        &db,
        &["prove", &id.to_string(), "--checkpoint", path(&cp2)],
    ));
    let by_name = success(&run(&db, &["prove", "c:7", "--checkpoint", path(&cp2)]));
    assert_eq!(by_id, by_name);
    failure(
        &run(&db, &["prove", "999999", "--checkpoint", path(&cp2)]),
        &["entry 999999 is not in the log"],
    );
    // An entry after the checkpoint is refused, naming what to do.
    failure(
        &run(&db, &["prove", "a:9", "--checkpoint", path(&cp1)]),
        &["after this checkpoint"],
    );

    // The later checkpoint extends the earlier one.
    let consistency = success(&run(
        &db,
        &["prove", "--from", path(&cp1), "--to", path(&cp2)],
    ));
    let c = file(&dir, "consistency.json", &consistency);
    assert!(verify(&c, &verifier).unwrap().contains("extends"));

    // Tampering with a proof: a hash, the entry's chain, its seq.
    let proof = success(&run(&db, &["prove", "b:2", "--checkpoint", path(&cp2)]));
    let mut json: serde_json::Value = serde_json::from_str(proof.trim()).unwrap();
    let good = json.clone();
    let flip = |s: &str| {
        let mut s = s.to_string();
        let last = if s.ends_with('0') { "1" } else { "0" };
        s.pop();
        s + last
    };
    json["proof"][0] = flip(json["proof"][0].as_str().unwrap()).into();
    assert_eq!(
        verify(&file(&dir, "t1.json", &json.to_string()), &verifier),
        Err(1)
    );
    let mut json = good.clone();
    json["chain"] = flip(json["chain"].as_str().unwrap()).into();
    assert_eq!(
        verify(&file(&dir, "t2.json", &json.to_string()), &verifier),
        Err(1)
    );
    let mut json = good.clone();
    json["seq"] = 3.into();
    assert_eq!(
        verify(&file(&dir, "t3.json", &json.to_string()), &verifier),
        Err(1)
    );
    let mut json: serde_json::Value = serde_json::from_str(&consistency).unwrap();
    json["proof"][0] = flip(json["proof"][0].as_str().unwrap()).into();
    assert_eq!(
        verify(&file(&dir, "t4.json", &json.to_string()), &verifier),
        Err(1)
    );

    // A forged checkpoint: the same size and root, signed by another key
    // of the same name; and a checkpoint of another origin.
    let other = dir.join("other.key");
    generate_signing(&other);
    let text = std::fs::read_to_string(&cp2).unwrap();
    let (body, _) = text.split_once("\n\n").unwrap();
    let head = oplog::TreeHead::parse(&format!("{body}\n")).unwrap();
    let forged = head
        .sign(&oplog::SigningKey::load(&other).unwrap())
        .unwrap();
    let mut json = good.clone();
    json["checkpoint"] = forged.into();
    assert_eq!(
        verify(&file(&dir, "t5.json", &json.to_string()), &verifier),
        Err(1)
    );

    // The log extends both checkpoints.
    let check = |cp: &Path| {
        oplog_cmd()
            .args([
                "--database-url",
                &db.url,
                "--key-file",
                path(&keyring),
                "verify",
            ])
            .args(["--checkpoint", path(cp), "--public-key", &verifier])
            .output()
            .unwrap()
    };
    for cp in [&cp1, &cp2] {
        assert!(success(&check(cp)).contains("the log still extends it"));
    }
    // An entry rewritten after it was checkpointed is named.
    superuser_exec(
        &db,
        "UPDATE oplog_entry SET chain = sha256(chain) WHERE aggregate_name = 'a' AND seq = 2",
    );
    let out = check(&cp1);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("entry a:2 was rewritten after it was checkpointed"));
    superuser_exec(
        &db,
        "UPDATE oplog_entry e SET chain = l.chain FROM oplog_tree_leaf l \
         WHERE e.aggregate_name = 'a' AND e.seq = 2 AND l.aggregate_name = 'a' AND l.seq = 2",
    );
    assert!(success(&check(&cp1)).contains("the log still extends it"));

    // The database's leaves altered after the checkpoint: the proofs built
    // from them fail, and the log no longer extends the checkpoint.
    superuser_exec(
        &db,
        "UPDATE oplog_tree_leaf SET chain = sha256(chain) WHERE aggregate_name = 'c' AND seq = 4",
    );
    let proof = success(&run(&db, &["prove", "c:6", "--checkpoint", path(&cp2)]));
    assert_eq!(verify(&file(&dir, "t6.json", &proof), &verifier), Err(1));
    let out = check(&cp2);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no longer have its signed root"));

    // A checkpoint of another log (another database, the same key) is
    // refused by this one.
    let elsewhere = TestDb::new();
    create_users(&elsewhere.url, &log, "z", (0..4).map(|i| format!("z{i}")));
    let foreign = dir.join("foreign");
    success(&run(
        &elsewhere,
        &[
            "checkpoint",
            "--signing-key",
            path(&key),
            "--out",
            path(&foreign),
        ],
    ));
    failure(
        &run(&db, &["prove", "a:1", "--checkpoint", path(&foreign)]),
        &["not one of this log's"],
    );
}

#[test]
fn the_checkpoint_benchmark_runs_and_reports() {
    let out = oplog_cmd()
        .args(["--json", "--database-url", &crate::support::admin_url()])
        .args([
            "bench",
            "checkpoint",
            "--entries",
            "3000",
            "--aggregates",
            "50",
        ])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(success(&out).trim()).unwrap();
    assert_eq!(report["entries"], 3000);
    assert!(report["ratio"].as_f64().unwrap() > 0.0, "{report}");
    // log2(3000) < 12: O(log n) hashes.
    assert!(report["proof_hashes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h.as_u64().unwrap() <= 12));
}

/// Checkpoints taken at sizes on both sides of the stored blocks' bounds
/// (256 leaves): every tenth entry is proven in every checkpoint that
/// holds it, and every checkpoint extends every earlier one.
#[test]
fn proofs_from_stored_blocks_hold_across_block_bounds_and_checkpoints() {
    let db = TestDb::new();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    let key = oplog::SigningKey::generate("example.com/blocks").unwrap();
    let verifier = key.verifier();
    let mut c = db.client();
    let mut notes = Vec::new();
    let mut written: Vec<(String, i64)> = Vec::new();
    for (round, n) in [100usize, 155, 2, 256, 100].into_iter().enumerate() {
        for a in 0..3 {
            let aggregate = format!("t{a}");
            let ids = (0..n / 3 + usize::from(a < n % 3)).map(|i| format!("r{round}-{a}-{i}"));
            for w in create_users(&db.url, &log, &aggregate, ids) {
                written.push((aggregate.clone(), w.seq));
            }
        }
        notes.push(oplog::tree::checkpoint(&mut c, &key).unwrap().note);
    }
    let sizes: Vec<u64> = notes
        .iter()
        .map(|n| oplog::TreeHead::open(n, &verifier).unwrap().size)
        .collect();
    assert_eq!(sizes, [100, 255, 257, 513, 613]);
    let index = |(a, s): &(String, i64)| u64::try_from(leaf_index(&db, a, *s)).unwrap();
    for (n, note) in notes.iter().enumerate() {
        for entry in written.iter().step_by(10) {
            if index(entry) >= sizes[n] {
                continue;
            }
            let proof = oplog::tree::prove(&mut c, &entry.0, entry.1, note).unwrap();
            proof
                .verify(&verifier)
                .unwrap_or_else(|e| panic!("{entry:?} in {}: {e}", sizes[n]));
        }
        for old in &notes[..n] {
            oplog::tree::prove_consistency(&mut c, old, note)
                .unwrap()
                .verify(&verifier)
                .unwrap();
        }
    }
}

/// The leaf index of `aggregate`'s entry `seq`.
fn leaf_index(db: &TestDb, aggregate: &str, seq: i64) -> i64 {
    db.client()
        .query_one(
            "SELECT idx FROM oplog_tree_leaf WHERE aggregate_name = $1 AND seq = $2",
            &[&aggregate, &seq],
        )
        .unwrap()
        .get(0)
}
