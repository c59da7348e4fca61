//! The C boundary. Each export converts its arguments, calls the client core
//! on the hidden runtime and maps the outcome; there is no logic here.
//! Conventions: see `include/cmdop.h` (generated from these doc comments).

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]
// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

// Declaration order is the header's order (cbindgen follows it), one
// topic per group (the comments keep rustfmt from sorting them).
#[macro_use]
mod boundary;
mod runtime;
// 1. status and errors
mod errors;
mod status;
// 2. options
mod options;
mod versioned;
// 3. client lifecycle
mod client;
// 4. events
mod events;
// 5. machines
mod machines;
// (the fleet: listing machines by label)
mod fleet;
// 6. execute, then what it takes and gives
mod exec;
// (options, cancel tokens, output callbacks, results)
mod cancel;
mod exec_options;
mod exec_result;
mod output;
// (the same on every machine of a fleet)
mod fleet_exec;
// 7. files
mod files;
mod transfer_disk;
// 8. sessions
mod sessions;
// 9. attach
mod attach;
// 10. version
mod version;
