//! The `demo.v1` domain: tenants' accounts, users and invoices, and the
//! runner behind `oplog demo`.
//!
//! [`Account`] and [`User`] are what the examples, the tests and the
//! benchmarks write ([`catalog_of`] registers a choice of types). [`catalog`]
//! adds [`Invoice`] (an enum stored as a
//! PostgreSQL enum, a timestamp that is NULL until set) for `oplog demo`: many
//! concurrent writers doing realistic domain transactions, each with its
//! entry, then a replay into a replica and a verification of both.

include!(concat!(env!("OUT_DIR"), "/demo/demo.v1.rs"));

/// The encoded descriptor set of the `demo.v1` types (with what they
/// import), for [`TypeCatalog::add_file_descriptor_set`](crate::codec::catalog::TypeCatalog::add_file_descriptor_set).
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/demo/descriptors.bin"));

mod run;
mod writer;

pub use run::{
    run, DemoConfig, DemoPhase, DemoProgress, DemoReport, DemoServer, DemoTable,
    DEFAULT_AGGREGATES, DEFAULT_ENTRIES, DEFAULT_WRITERS,
};

/// A catalog of the demo types `names` (fully qualified).
pub fn catalog_of(names: &[&str]) -> crate::codec::catalog::TypeCatalog {
    let mut catalog = crate::codec::catalog::TypeCatalog::new();
    catalog
        .add_file_descriptor_set(DESCRIPTOR_SET)
        .expect("the demo's descriptors are valid");
    for name in names {
        catalog.register(name).expect("the demo's types are valid");
    }
    catalog
}

/// [`Account`] and [`User`]: what the examples, the tests and the
/// benchmarks write.
pub fn user_catalog() -> crate::codec::catalog::TypeCatalog {
    catalog_of(&["demo.v1.Account", "demo.v1.User"])
}

/// The demo catalog of `oplog demo`: [`Account`], [`User`] and [`Invoice`].
pub fn catalog() -> crate::codec::catalog::TypeCatalog {
    catalog_of(&["demo.v1.Account", "demo.v1.User", "demo.v1.Invoice"])
}

/// The columns of `demo_user` that [`User::params`] fills, in its order.
pub const USER_COLUMNS: &str =
    "id, tenant_id, account_id, email, display_name, phone, age, active, avatar";

/// Inserts one user: [`USER_COLUMNS`] with [`User::params`].
pub const INSERT_USER: &str = "INSERT INTO demo_user (id, tenant_id, account_id, email, display_name, phone, age, active, avatar) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

impl User {
    /// Every field as a statement parameter, in the order of
    /// [`USER_COLUMNS`].
    pub fn params(&self) -> [&(dyn postgres::types::ToSql + Sync); 9] {
        [
            &self.id,
            &self.tenant_id,
            &self.account_id,
            &self.email,
            &self.display_name,
            &self.phone,
            &self.age,
            &self.active,
            &self.avatar,
        ]
    }
}

/// SQL that creates the demo tables when they are missing.
pub const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS demo_account (
    id            text PRIMARY KEY,
    tenant_id     text NOT NULL,
    name          text NOT NULL,
    plan          text NOT NULL DEFAULT 'free',
    balance_cents bigint NOT NULL DEFAULT 0,
    created_at    timestamptz,
    closed_reason text
);
CREATE TABLE IF NOT EXISTS demo_user (
    id           text PRIMARY KEY,
    tenant_id    text NOT NULL,
    account_id   text NOT NULL,
    email        text NOT NULL UNIQUE,
    display_name text NOT NULL DEFAULT '',
    phone        text,
    age          integer,
    active       boolean NOT NULL DEFAULT true,
    avatar       bytea
);
DO $$
BEGIN
    CREATE TYPE demo_invoice_status AS ENUM (
        'INVOICE_STATUS_UNSPECIFIED', 'INVOICE_STATUS_OPEN', 'INVOICE_STATUS_PAID', 'INVOICE_STATUS_VOID'
    );
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
CREATE TABLE IF NOT EXISTS demo_invoice (
    id           text PRIMARY KEY,
    tenant_id    text NOT NULL,
    account_id   text NOT NULL,
    amount_cents bigint NOT NULL,
    status       demo_invoice_status NOT NULL DEFAULT 'INVOICE_STATUS_OPEN',
    issued_at    timestamptz NOT NULL,
    paid_at      timestamptz
);
CREATE INDEX IF NOT EXISTS demo_invoice_account ON demo_invoice (account_id);";
