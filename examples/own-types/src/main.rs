//! A shop that records its orders in an oplog, with protobuf types of its
//! own (`proto/shop/v1/shop.proto`, compiled by `build.rs` with
//! `oplog::build`), then replays the log into a replica database and
//! verifies both.
//!
//! ```text
//! cargo run --manifest-path examples/own-types/Cargo.toml
//! ```
//!
//! It creates two scratch databases on the server of DATABASE_URL (default:
//! the local server, user postgres) and drops them afterwards. Exit status 0
//! when the replica holds what the shop wrote and verification is clean.

use std::error::Error;
use std::time::{Duration, SystemTime};

use oplog::{
    Keyring, NewEntry, Oplog, ReplayOptions, Replayer, Target, TypeCatalog, VerifyOptions,
};
use postgres::{Client, NoTls};

/// The types generated from `proto/shop/v1/shop.proto`.
pub mod shop {
    include!(concat!(env!("OUT_DIR"), "/shop.v1.rs"));
}

use shop::{Order, OrderState};

/// The shop's table; the replica's is created from it by replay.
const SCHEMA: &str = "
CREATE TABLE shop_order (
    id text PRIMARY KEY,
    customer text NOT NULL,
    total_cents bigint NOT NULL,
    state text NOT NULL,
    placed_at timestamptz,
    note text,
    skus text[] NOT NULL
)";

fn main() -> Result<(), Box<dyn Error>> {
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let scratch = Scratch::create(&server)?;
    let outcome = run(&scratch.source, &scratch.replica);
    scratch.drop_all()?;
    outcome
}

fn run(source: &str, replica: &str) -> Result<(), Box<dyn Error>> {
    // The descriptor set the build script wrote, with the (oplog.v1.table)
    // option of each message in it.
    let mut catalog = TypeCatalog::new();
    catalog.add_file_descriptor_set(include_bytes!(concat!(
        env!("OUT_DIR"),
        "/oplog_descriptors.bin"
    )))?;
    catalog.register("shop.v1.Order")?;
    let log = Oplog::new(catalog, Keyring::generate());

    oplog::migrate_url(source)?;
    let mut client = Client::connect(source, NoTls)?;
    client.batch_execute(SCHEMA)?;

    // The order and the entry that records it, in one transaction.
    let placed_at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
    let mut order = Order {
        id: "o-1".into(),
        customer: "ada".into(),
        total_cents: 4200,
        state: OrderState::Placed.into(),
        placed_at: Some(placed_at.into()),
        note: None,
        skus: vec!["book".into(), "pen".into()],
    };
    let mut tx = client.transaction()?;
    tx.execute(
        "INSERT INTO shop_order (id, customer, total_cents, state, placed_at, skus) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &order.id,
            &order.customer,
            &order.total_cents,
            &"ORDER_STATE_PLACED",
            &placed_at,
            &order.skus,
        ],
    )?;
    let mut entry = NewEntry::new("customer-ada");
    entry.metadata("actor", "ada").create(&order)?;
    log.write(&mut tx, &entry)?;
    tx.commit()?;

    // Shipped, with a note: an update of two fields.
    order.state = OrderState::Shipped.into();
    order.note = Some("leave at the door".into());
    let mut tx = client.transaction()?;
    tx.execute(
        "UPDATE shop_order SET state = 'ORDER_STATE_SHIPPED', note = $2 WHERE id = $1",
        &[&order.id, &order.note],
    )?;
    let mut entry = NewEntry::new("customer-ada");
    entry
        .metadata("actor", "warehouse")
        .update(&order, &["state", "note"], &[])?;
    log.write(&mut tx, &entry)?;
    tx.commit()?;

    // Read back, decoded as the shop's own type.
    let entries = log.list(&mut client, Some("customer-ada"), 0, None)?;
    let logged: Order = entries[1].operations[0].decode()?;
    assert_eq!(logged, order);

    // Replay into the replica database, which gets its shop_order table
    // from the source's definition, then prove the two the same.
    let target = Target::database(replica);
    let report = Replayer::connect(&log, source, target.clone(), ReplayOptions::default())?
        .run(&mut |_| {})?;
    if !report.is_complete() {
        return Err(format!("replay stopped: {:?}", report.stopped).into());
    }
    let options = VerifyOptions {
        against: Some(target),
        ..VerifyOptions::default()
    };
    let checked = oplog::verify(&log, source, &options)?;
    if !checked.is_clean() {
        return Err(format!(
            "verify found {:?}, tables {:?}",
            checked.findings, checked.tables
        )
        .into());
    }
    let row = Client::connect(replica, NoTls)?.query_one(
        "SELECT state, note, skus, placed_at FROM shop_order WHERE id = 'o-1'",
        &[],
    )?;
    let (state, note, skus, at): (String, Option<String>, Vec<String>, SystemTime) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(state, "ORDER_STATE_SHIPPED");
    assert_eq!(note.as_deref(), Some("leave at the door"));
    assert_eq!(skus, ["book", "pen"]);
    assert_eq!(at, placed_at);
    println!(
        "own types: wrote {} entries, replayed {}, verified {} entries and {} table: clean",
        entries.len(),
        report.entries_applied,
        checked.entries_checked,
        checked.tables.len()
    );
    Ok(())
}

/// Two databases made for one run, beside the one `server` names.
struct Scratch {
    server: String,
    names: [String; 2],
    source: String,
    replica: String,
}

impl Scratch {
    fn create(server: &str) -> Result<Scratch, Box<dyn Error>> {
        let tag = format!(
            "{}_{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)?
                .as_millis()
        );
        let names = [
            format!("own_types_source_{tag}"),
            format!("own_types_replica_{tag}"),
        ];
        let mut admin = Client::connect(server, NoTls)?;
        for name in &names {
            admin.batch_execute(&format!("CREATE DATABASE \"{name}\""))?;
        }
        Ok(Scratch {
            server: server.to_string(),
            source: with_database(server, &names[0]),
            replica: with_database(server, &names[1]),
            names,
        })
    }

    fn drop_all(&self) -> Result<(), Box<dyn Error>> {
        let mut admin = Client::connect(&self.server, NoTls)?;
        for name in &self.names {
            admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))?;
        }
        Ok(())
    }
}

/// `url` with its database replaced by `db` (URLs of the form
/// `postgres://user@host:port/database`).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    match query {
        "" => format!("{}/{db}", &base[..path]),
        query => format!("{}/{db}?{query}", &base[..path]),
    }
}
