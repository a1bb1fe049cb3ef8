//! In-process tests of the HTTP layer: `http::app` around a small deterministic backend
//! ([`toy::Toy`]), driven with `tower::ServiceExt::oneshot`. No libtorch model, no weights, no
//! network beyond loopback; together the tests take a second or two.
//!
//! These are the fast net beside the end-to-end tests (tests/e2e/server/), which run the real
//! binary with the real model over real HTTP.

#![allow(clippy::unwrap_used)] // a test fails on an unexpected error by panicking

#[path = "../common/mod.rs"]
mod common;

mod answers;
mod faults;
mod fetch_budget;
mod ops;
mod options;
mod parsing;
mod problems;
mod protocols;
mod support;
mod toy;
mod url_form;
