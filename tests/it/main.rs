//! Integration tests against a real PostgreSQL: each test creates its own
//! database and drops it afterwards. Set DATABASE_URL to point elsewhere than
//! postgres://postgres@127.0.0.1:5432/postgres.

mod cli;
mod demo;
mod faults;
mod follow;
mod keys;
mod layers;
mod migrations;
mod plans;
mod relay;
mod replay;
mod roles;
mod scale;
mod scans;
mod security;
mod serve;
mod shred;
mod sqlx_pg;
mod subscribe;
mod support;
mod targets;
mod tls;
mod tokio_pg;
mod tree;
mod verify;
mod write;
