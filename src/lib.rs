//! libcmdop: a client for CMDOP control planes.
//!
//! - [`client`] is the async Rust core (used by the `cmdop` CLI and the C layer).
//! - The C ABI (`include/cmdop.h`) lives in the private `ffi` module; its
//!   exports are the `cmdop_*` symbols of `libcmdop.so` / `libcmdop.a`.

pub mod client;
mod ffi;

pub use client::{Client, ClientOptions, Credentials, Error, Result};
