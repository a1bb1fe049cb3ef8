//! The numerical proofs, in one binary (libtorch is linked once): the library's network and
//! maps against PyTorch and pytorch-grad-cam on the seeded reference (parity), on every member
//! of the ResNet family and its checkpoint formats, hostile weight files (family), on a network
//! trained from scratch (trained), and reduced precision against fp32 (precision, reduced).
#![allow(clippy::unwrap_used)] // a test fails on an unexpected error by panicking

#[path = "../common/mod.rs"]
mod common;

mod family;
mod parity;
mod precision;
mod reduced;
mod trained;
