//! The end-to-end tests, in one binary (libtorch is linked once): the real `gradcam-serve`
//! binary over real HTTP with the real model (the server's contract, faults, limits, memory,
//! keys, the URL form, nginx in front, the playground in Chromium), the command line and
//! dataset runs, the runtime image and the Kubernetes manifests, the Prometheus rules and the
//! Grafana dashboard, the device kit on the CPU, and the source tree's layout. Each module is
//! one subject; tests/common holds what they share.
#![allow(clippy::unwrap_used)] // a test fails on an unexpected error by panicking

#[path = "../common/mod.rs"]
mod common;

mod browser;
mod cli;
mod container;
mod contract;
mod dataset;
mod device_kit;
mod documented_errors;
mod faults;
mod fetch;
mod grpc;
mod images;
mod k8s;
mod layout;
mod memory;
mod nginx;
mod observability;
mod protocols;
mod runtime;
mod server;
mod traces;
