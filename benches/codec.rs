//! Micro-benchmarks of the entry codec: encoding and sealing an entry, and
//! opening and decoding it again, with 1 and with 10 operations of about
//! 1 KiB each.
//!
//! Sealing goes through `oplog::bench::seal_entry` and opening through
//! `oplog::bench::open_entry`, the write and read paths' own codec steps
//! without the database: building the queue, a random salt, the SHA-256
//! digest, AES-256-GCM under the entry's associated data and the chain hash;
//! then decryption, the digest check and decoding.
//!
//! Run with `cargo bench --bench codec`; `cargo bench --bench codec -- --test`
//! runs every case once. After criterion's report a short timing loop prints
//! microseconds per KiB of queue, the figure the target (under 3 µs/KiB each
//! way) is stated in.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use oplog::bench::{open_entry, seal_entry, SealedEntry};
use oplog::demo::User;
use oplog::{Keyring, Limits, NewEntry, Operation, TypeCatalog, GENESIS_CHAIN};
use rand::RngCore;

/// Size of each user's avatar, which makes one encoded operation about 1 KiB.
const AVATAR_BYTES: usize = 960;

/// Operation counts measured.
const SIZES: [usize; 2] = [1, 10];

/// The most the codec may spend per KiB of queue, each way.
const TARGET_US_PER_KIB: f64 = 3.0;

/// Everything an entry needs besides the database.
struct Fixture {
    ring: Keyring,
    catalog: TypeCatalog,
    limits: Limits,
    users: Vec<User>,
}

impl Fixture {
    fn new(count: usize) -> Self {
        let users = (0..count)
            .map(|i| {
                let mut avatar = vec![0u8; AVATAR_BYTES];
                rand::rngs::OsRng.fill_bytes(&mut avatar);
                User {
                    id: format!("user-{i:04}"),
                    tenant_id: "tenant-0001".into(),
                    account_id: "account-0001".into(),
                    email: format!("user-{i:04}@example.com"),
                    display_name: format!("User {i}"),
                    phone: Some("+1 555 0100".into()),
                    age: Some(42),
                    active: true,
                    avatar,
                }
            })
            .collect();
        Fixture {
            ring: Keyring::generate(),
            catalog: oplog::demo::user_catalog(),
            limits: Limits::default(),
            users,
        }
    }

    /// Builds the entry: the users encoded into its queue, two metadata pairs.
    fn entry(&self) -> NewEntry {
        let mut entry = NewEntry::new("tenant-0001");
        entry
            .metadata("actor", "alice")
            .metadata("request_id", "0b4c2f8e-5d7a-4f3e-9c1b-2a6d8e0f1a3b");
        entry.create_items(&self.users).expect("demo users encode");
        entry
    }

    /// Encodes and seals an entry.
    fn seal(&self) -> (NewEntry, SealedEntry) {
        let entry = self.entry();
        let sealed = seal_entry(&self.ring, &entry, 7, &GENESIS_CHAIN).expect("sealing succeeds");
        (entry, sealed)
    }

    /// Decrypts, checks the digest and decodes a sealed entry.
    fn open(&self, entry: &NewEntry, sealed: &SealedEntry) -> Vec<Operation> {
        open_entry(&self.ring, &self.catalog, &self.limits, entry, sealed)
            .expect("opening succeeds")
    }

    /// Bytes of the encoded queue: the throughput unit.
    fn queue_bytes(&self) -> usize {
        self.entry().queue().as_bytes().len()
    }
}

fn benches(c: &mut Criterion) {
    for (name, seal) in [("seal", true), ("open", false)] {
        let mut group = c.benchmark_group(format!("entry_{name}"));
        for count in SIZES {
            let fixture = Fixture::new(count);
            let (entry, sealed) = fixture.seal();
            assert_eq!(fixture.open(&entry, &sealed).len(), count);
            assert_ne!(sealed.chain, GENESIS_CHAIN);
            group.throughput(Throughput::Bytes(fixture.queue_bytes() as u64));
            group.bench_with_input(BenchmarkId::new("operations", count), &fixture, |b, f| {
                if seal {
                    b.iter(|| black_box(f.seal()));
                } else {
                    b.iter(|| black_box(f.open(&entry, black_box(&sealed))));
                }
            });
        }
        group.finish();
    }
}

/// Mean time of `op`, run until `budget` is spent (at least `min_runs` times).
fn mean(budget: Duration, min_runs: u32, mut op: impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut runs = 0u32;
    while runs < min_runs || start.elapsed() < budget {
        op();
        runs += 1;
    }
    start.elapsed() / runs
}

/// Prints microseconds per KiB of queue for each case. In test mode the loop
/// is only long enough to show that the figures come out.
fn summary(test_mode: bool) {
    let budget = if test_mode {
        Duration::ZERO
    } else {
        Duration::from_millis(500)
    };
    println!("\nentry codec, microseconds per KiB of queue (target under {TARGET_US_PER_KIB} µs/KiB each way)");
    println!(
        "{:>10} {:>10} {:>12} {:>12}",
        "operations", "bytes", "seal µs/KiB", "open µs/KiB"
    );
    for count in SIZES {
        let fixture = Fixture::new(count);
        let (entry, sealed) = fixture.seal();
        let kib = fixture.queue_bytes() as f64 / 1024.0;
        let seal = mean(budget, 10, || {
            black_box(fixture.seal());
        });
        let open = mean(budget, 10, || {
            black_box(fixture.open(&entry, black_box(&sealed)));
        });
        let per_kib = |d: Duration| d.as_secs_f64() * 1e6 / kib;
        println!(
            "{count:>10} {:>10} {:>12.2} {:>12.2}",
            fixture.queue_bytes(),
            per_kib(seal),
            per_kib(open)
        );
    }
}

fn main() {
    // Criterion treats a run without `--bench` (as from `cargo test --benches`)
    // as test mode too; the summary follows the same rule.
    let args: Vec<String> = std::env::args().collect();
    let test_mode = args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench");
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
    summary(test_mode);
}
