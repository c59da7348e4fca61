//! Machine selection.

use std::ffi::c_char;

use super::boundary::{arg_str, handle};
use super::client::cmdop_client;
use super::runtime::block_on;
use super::status::cmdop_status;

/// Select the machine later calls act on, by hostname: an exact match, or a
/// unique case-insensitive substring among connected machines. Switching
/// machines at any time is fine.
///
/// Returns OK; NOT_FOUND (no such machine); AMBIGUOUS (several match; the
/// message lists them); UNAVAILABLE; DISCONNECTED; INVALID_ARGUMENT.
/// Thread: any; blocks; IN_CALLBACK from inside a callback.
#[no_mangle]
pub unsafe extern "C" fn cmdop_set_machine(
    client: *mut cmdop_client,
    hostname: *const c_char,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: NULL (checked) or a NUL-terminated string.
        let hostname = unsafe { arg_str(hostname, "hostname") }?;
        block_on("cmdop_set_machine", c.client.set_machine(hostname))??;
        Ok(())
    }
}

/// Select the machine by its stable id ("mach_…"), which survives agent
/// reconnections and hostname changes.
///
/// Returns as cmdop_set_machine(), plus NOT_SUPPORTED when the server lacks
/// the libcmdop extension (select by hostname then).
/// Thread: any; blocks; IN_CALLBACK from inside a callback.
#[no_mangle]
pub unsafe extern "C" fn cmdop_set_machine_id(
    client: *mut cmdop_client,
    machine_id: *const c_char,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: NULL (checked) or a NUL-terminated string.
        let id = unsafe { arg_str(machine_id, "machine_id") }?;
        block_on("cmdop_set_machine_id", c.client.set_machine_id(id))??;
        Ok(())
    }
}
