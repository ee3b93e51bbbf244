//! The `demo.v1` domain: tenants' accounts and users. Used by `oplog demo`,
//! the examples, the tests and the benchmarks; register it with
//! [`TypeCatalog::demo`](crate::TypeCatalog::demo).

include!(concat!(env!("OUT_DIR"), "/demo.v1.rs"));

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
);";
