//! Micro-benchmarks of the entry codec: encoding and sealing an entry, and
//! opening and decoding it again, with 1 and with 10 operations of about
//! 1 KiB each.
//!
//! The sealing and opening functions are private to the crate, so this bench
//! repeats their steps through the public API: a 16-byte random salt, the
//! queue, its SHA-256 digest, AES-256-GCM under associated data of the size a
//! real entry header produces, and the chain hash; opening decrypts, checks
//! the digest and decodes the queue. That is the same work an entry costs on
//! the way in and on the way out, without the database.
//!
//! Run with `cargo bench --bench codec`; `cargo bench --bench codec -- --test`
//! runs every case once. After criterion's report a short timing loop prints
//! microseconds per KiB of queue, the figure the target (under 3 µs/KiB each
//! way) is stated in.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use oplog::demo::User;
use oplog::{
    Keyring, Limits, OpType, Operation, Queue, TypeCatalog, Wrapper, FORMAT_VERSION, GENESIS_CHAIN,
};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Salt length in front of the queue, as in the crate's entry layout.
const SALT_LEN: usize = 16;

/// Size of each user's avatar, which makes one encoded operation about 1 KiB.
const AVATAR_BYTES: usize = 960;

/// Operation counts measured.
const SIZES: [usize; 2] = [1, 10];

/// The most the codec may spend per KiB of queue, each way.
const TARGET_US_PER_KIB: f64 = 3.0;

/// Everything an entry needs besides its operations.
struct Fixture {
    ring: Keyring,
    catalog: TypeCatalog,
    limits: Limits,
    users: Vec<User>,
    uuid: Uuid,
}

/// A sealed entry: what would be stored.
struct Sealed {
    data: Vec<u8>,
    digest: [u8; 32],
    chain: [u8; 32],
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
            catalog: TypeCatalog::demo(),
            limits: Limits::default(),
            users,
            uuid: Uuid::new_v4(),
        }
    }

    /// Associated data laid out like an entry header's: a tag, the format,
    /// aggregate, seq, key id, UUID and two metadata pairs, length-prefixed.
    fn aad(&self) -> Vec<u8> {
        fn put(out: &mut Vec<u8>, bytes: &[u8]) {
            out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        let mut out = b"oplog-aad-v1".to_vec();
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        put(&mut out, b"tenant-0001");
        out.extend_from_slice(&7i64.to_be_bytes());
        put(&mut out, self.ring.key_id().as_bytes());
        out.extend_from_slice(self.uuid.as_bytes());
        out.extend_from_slice(&2u64.to_be_bytes());
        for (k, v) in [
            ("actor", "alice"),
            ("request_id", "0b4c2f8e-5d7a-4f3e-9c1b-2a6d8e0f1a3b"),
        ] {
            put(&mut out, k.as_bytes());
            put(&mut out, v.as_bytes());
        }
        out
    }

    /// Encodes the users into a queue.
    fn queue(&self) -> Queue {
        let mut queue = Queue::new();
        for user in &self.users {
            queue
                .add(user, OpType::Create)
                .expect("a demo user encodes");
        }
        queue
    }

    /// Encodes and seals an entry, step for step as the crate does.
    fn seal(&self) -> Sealed {
        let queue = self.queue();
        let mut plaintext = zeroize::Zeroizing::new(vec![0u8; SALT_LEN]);
        rand::thread_rng().fill_bytes(&mut plaintext[..SALT_LEN]);
        plaintext.extend_from_slice(queue.as_bytes());
        let digest: [u8; 32] = Sha256::digest(plaintext.as_slice()).into();
        let data = self
            .ring
            .encrypt(&plaintext, &self.aad())
            .expect("encryption succeeds");
        let mut chain = Sha256::new();
        chain.update(b"oplog-chain-v1");
        chain.update(GENESIS_CHAIN);
        chain.update(self.aad());
        chain.update(digest);
        Sealed {
            data,
            digest,
            chain: chain.finalize().into(),
        }
    }

    /// Decrypts, checks the digest and decodes a sealed entry.
    fn open(&self, sealed: &Sealed) -> Vec<Operation> {
        let plaintext = zeroize::Zeroizing::new(
            self.ring
                .decrypt(&sealed.data, &self.aad())
                .expect("decryption succeeds"),
        );
        assert!(
            Sha256::digest(plaintext.as_slice()).as_slice() == sealed.digest,
            "digest mismatch"
        );
        Queue::decode(&plaintext[SALT_LEN..], &self.catalog, &self.limits)
            .expect("the queue decodes")
    }

    /// Bytes of the encoded queue: the throughput unit.
    fn queue_bytes(&self) -> usize {
        self.queue().as_bytes().len()
    }
}

fn benches(c: &mut Criterion) {
    for (name, seal) in [("seal", true), ("open", false)] {
        let mut group = c.benchmark_group(format!("entry_{name}"));
        for count in SIZES {
            let fixture = Fixture::new(count);
            let sealed = fixture.seal();
            assert_eq!(fixture.open(&sealed).len(), count);
            assert_ne!(sealed.chain, GENESIS_CHAIN);
            group.throughput(Throughput::Bytes(fixture.queue_bytes() as u64));
            group.bench_with_input(BenchmarkId::new("operations", count), &fixture, |b, f| {
                if seal {
                    b.iter(|| black_box(f.seal()));
                } else {
                    b.iter(|| black_box(f.open(black_box(&sealed))));
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
        let sealed = fixture.seal();
        let kib = fixture.queue_bytes() as f64 / 1024.0;
        let seal = mean(budget, 10, || {
            black_box(fixture.seal());
        });
        let open = mean(budget, 10, || {
            black_box(fixture.open(black_box(&sealed)));
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
