//! Integration tests against a real PostgreSQL: each test creates its own
//! database and drops it afterwards. Set DATABASE_URL to point elsewhere than
//! postgres://postgres@127.0.0.1:5432/postgres.

mod cli;
mod faults;
mod keys;
mod replay;
mod security;
mod support;
mod verify;
mod write;
