//! The C boundary. Each export converts its arguments, calls the client core
//! on the hidden runtime and maps the outcome; there is no logic here.
//! Conventions: see `include/cmdop.h` (generated from these doc comments).

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

#[macro_use]
mod boundary;
mod attach;
mod client;
mod events;
mod exec;
mod exec_options;
mod files;
mod options;
mod runtime;
mod sessions;
mod status;
mod transfer_disk;
