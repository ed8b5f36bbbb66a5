//! The one integration-test binary. Modules by area; `util` has the `TestApp`.
//!
//! PostgreSQL tests run when `TOLLGATE_TEST_POSTGRES_URL` is set (always under CI, where a
//! missing URL fails the run); each test gets a schema of its own.

#![expect(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod audit;
mod billing;
mod cli;
mod config;
mod conformance;
mod console;
mod crash;
mod credit;
mod deferred;
mod docs;
mod grpc;
mod hardening;
mod inference;
mod invoices;
mod keys;
mod management;
mod oidc;
mod ops;
mod pages;
mod payments;
mod ratelimits;
mod responses;
mod retention;
mod search;
mod secret_scanning;
mod smtp;
mod streaming;
mod teams;
mod upstreams;
mod usage;
mod util;
