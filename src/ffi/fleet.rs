//! The fleet: listing the workspace's machines by label selector and host
//! list, with their labels, facts and presence.

use std::ffi::{c_char, CStr, CString};

use super::boundary::{c_string, handle, opt_str, out_ptr};
use super::client::cmdop_client;
use super::runtime::block_on;
use super::status::cmdop_status;
use crate::client::FleetMachine;

/// One machine of a listing. Opaque; read with the cmdop_machine_*
/// accessors; borrowed from its list.
pub struct cmdop_machine {
    m: FleetMachine,
    id: CString,
    hostname: CString,
    os: CString,
    arch: CString,
    agent_version: CString,
    /// What selectors see, sorted by key.
    labels: Vec<(CString, CString)>,
}

/// Machines of the workspace. Opaque; free with cmdop_machine_list_free().
pub struct cmdop_machine_list {
    machines: Vec<cmdop_machine>,
}

/// A listed machine as C reads it (also the machine of a fleet result).
pub(super) fn wrap_machine(m: FleetMachine) -> cmdop_machine {
    cmdop_machine {
        id: c_string(&m.machine_id),
        hostname: c_string(&m.hostname),
        os: c_string(&m.os),
        arch: c_string(&m.arch),
        agent_version: c_string(&m.agent_version),
        labels: m
            .labels
            .iter()
            .map(|(k, v)| (c_string(k), c_string(v)))
            .collect(),
        m,
    }
}

/// The workspace's machines, online or not, sorted by hostname, that match
/// `selector` (a label selector: `k=v`, `k!=v`, `k in (a,b)`, `k notin
/// (a,b)`, `k`, `!k`, comma = AND; facts are `cmdop.io/…` labels such as
/// `cmdop.io/status=online`; NULL or "" = every machine) and `hosts`
/// (hostnames or globs, comma-separated; NULL or "" = any). Every page is
/// read. Machine ids (`mach_…`) from here work with cmdop_set_machine_id().
///
/// On OK `*out` is the caller's; free with cmdop_machine_list_free().
/// Returns OK (an empty list included); INVALID_ARGUMENT (the message says
/// what is wrong with `selector` or `hosts`); NOT_SUPPORTED (the server
/// cannot list machines: CMDOP_CAPABILITY_MACHINES missing); UNAVAILABLE;
/// DISCONNECTED; UNAUTHENTICATED. Thread: any; blocks; IN_CALLBACK from
/// inside a callback.
#[no_mangle]
pub unsafe extern "C" fn cmdop_list_machines(
    client: *mut cmdop_client,
    selector: *const c_char,
    hosts: *const c_char,
    out: *mut *mut cmdop_machine_list,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: NULL or a NUL-terminated string.
        let selector = unsafe { opt_str(selector, "selector") }?.unwrap_or("");
        // SAFETY: NULL or a NUL-terminated string.
        let hosts = unsafe { opt_str(hosts, "hosts") }?.unwrap_or("");
        let list = block_on("cmdop_list_machines", c.client.list_machines(selector, hosts))??;
        *out = Box::into_raw(Box::new(cmdop_machine_list {
            machines: list.into_iter().map(wrap_machine).collect(),
        }));
        Ok(())
    }
}

/// Number of machines (0 when NULL).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_machine_list_count(list: *const cmdop_machine_list) -> usize {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value 0; unsafe { list.as_ref() }.map_or(0, |l| l.machines.len()))
}

/// Machine `index`, borrowed from `list` (do not free it); NULL when out
/// of range.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_machine_list_get(
    list: *const cmdop_machine_list,
    index: usize,
) -> *const cmdop_machine {
    ffi_boundary!(@value std::ptr::null();
        // SAFETY: NULL (checked) or a live object of this library.
        unsafe { list.as_ref() }.and_then(|l| l.machines.get(index)).map_or(std::ptr::null(), |m| m as *const _)
    )
}

/// Free a machine list (and every machine borrowed from it). NULL is a no-op.
/// Thread: any, once no other call uses the object (it may be one other than the thread that made it).
#[no_mangle]
pub unsafe extern "C" fn cmdop_machine_list_free(list: *mut cmdop_machine_list) {
    ffi_boundary!(@value ();
        if !list.is_null() {
            // SAFETY: created by Box::into_raw above; freed once.
            drop(unsafe { Box::from_raw(list) });
        }
    )
}

/// Reads a field of a borrowed machine; `default` for NULL.
///
/// # Safety
/// `m` is NULL or a machine borrowed from a live list.
unsafe fn field<T>(m: *const cmdop_machine, default: T, f: impl FnOnce(&cmdop_machine) -> T) -> T {
    // SAFETY: NULL (checked) or a live object of this library.
    unsafe { m.as_ref() }.map_or(default, f)
}

/// The machine's stable id (`mach_…`). Borrowed; NULL when `m` is NULL.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_machine_id(m: *const cmdop_machine) -> *const c_char {
    // SAFETY: NULL or a borrowed machine, by the contract.
    ffi_boundary!(@value std::ptr::null(); unsafe { field(m, std::ptr::null(), |m| m.id.as_ptr()) })
}

/// The machine's hostname. Borrowed; NULL when `m` is NULL.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_machine_hostname(m: *const cmdop_machine) -> *const c_char {
    // SAFETY: NULL or a borrowed machine, by the contract.
    ffi_boundary!(@value std::ptr::null(); unsafe { field(m, std::ptr::null(), |m| m.hostname.as_ptr()) })
}

/// True while the machine's agent is connected (to any replica).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_machine_online(m: *const cmdop_machine) -> bool {
    // SAFETY: NULL or a borrowed machine, by the contract.
    ffi_boundary!(@value false; unsafe { field(m, false, |m| m.m.online()) })
}

/// When the machine was last heard from, Unix milliseconds (0: never).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_machine_last_seen_ms(m: *const cmdop_machine) -> i64 {
    // SAFETY: NULL or a borrowed machine, by the contract.
    ffi_boundary!(@value 0; unsafe { field(m, 0, |m| m.m.last_seen_unix_ms) })
}

/// Operating system ("linux", …; "" when unknown). Borrowed.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_machine_os(m: *const cmdop_machine) -> *const c_char {
    // SAFETY: NULL or a borrowed machine, by the contract.
    ffi_boundary!(@value std::ptr::null(); unsafe { field(m, std::ptr::null(), |m| m.os.as_ptr()) })
}

/// CPU architecture ("x86_64", …; "" when unknown). Borrowed.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_machine_arch(m: *const cmdop_machine) -> *const c_char {
    // SAFETY: NULL or a borrowed machine, by the contract.
    ffi_boundary!(@value std::ptr::null(); unsafe { field(m, std::ptr::null(), |m| m.arch.as_ptr()) })
}

/// The agent's version ("" when unknown). Borrowed.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_machine_agent_version(m: *const cmdop_machine) -> *const c_char {
    // SAFETY: NULL or a borrowed machine, by the contract.
    ffi_boundary!(@value std::ptr::null(); unsafe { field(m, std::ptr::null(), |m| m.agent_version.as_ptr()) })
}

/// Number of CPUs the agent reported (0 when unknown).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_machine_cpu_count(m: *const cmdop_machine) -> u32 {
    // SAFETY: NULL or a borrowed machine, by the contract.
    ffi_boundary!(@value 0; unsafe { field(m, 0, |m| m.m.cpu_count) })
}

/// Memory the agent reported, in bytes (0 when unknown).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_machine_memory_bytes(m: *const cmdop_machine) -> u64 {
    // SAFETY: NULL or a borrowed machine, by the contract.
    ffi_boundary!(@value 0; unsafe { field(m, 0, |m| m.m.memory_bytes) })
}

/// Number of labels selectors see on the machine: agent labels, admin
/// labels over them, and facts as `cmdop.io/…` labels.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_machine_label_count(m: *const cmdop_machine) -> usize {
    // SAFETY: NULL or a borrowed machine, by the contract.
    ffi_boundary!(@value 0; unsafe { field(m, 0, |m| m.labels.len()) })
}

/// Key of label `index` (sorted by key); NULL when out of range. Borrowed.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_machine_label_key(
    m: *const cmdop_machine,
    index: usize,
) -> *const c_char {
    // SAFETY: NULL or a borrowed machine, by the contract.
    ffi_boundary!(@value std::ptr::null(); unsafe {
        field(m, std::ptr::null(), |m| m.labels.get(index).map_or(std::ptr::null(), |(k, _)| k.as_ptr()))
    })
}

/// Value of label `index`; NULL when out of range. Borrowed.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_machine_label_value(
    m: *const cmdop_machine,
    index: usize,
) -> *const c_char {
    // SAFETY: NULL or a borrowed machine, by the contract.
    ffi_boundary!(@value std::ptr::null(); unsafe {
        field(m, std::ptr::null(), |m| m.labels.get(index).map_or(std::ptr::null(), |(_, v)| v.as_ptr()))
    })
}

/// Value of the label `key` (e.g. "env", "cmdop.io/arch"); NULL when the
/// machine has no such label or `key` is NULL or not UTF-8. Borrowed.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_machine_label(
    m: *const cmdop_machine,
    key: *const c_char,
) -> *const c_char {
    ffi_boundary!(@value std::ptr::null();
        if key.is_null() {
            return std::ptr::null();
        }
        // SAFETY: non-NULL, a NUL-terminated string by the contract.
        let key = unsafe { CStr::from_ptr(key) };
        // SAFETY: NULL or a borrowed machine, by the contract.
        unsafe {
            field(m, std::ptr::null(), |m| {
                m.labels
                    .binary_search_by(|(k, _)| k.as_c_str().cmp(key))
                    .map_or(std::ptr::null(), |i| m.labels[i].1.as_ptr())
            })
        }
    )
}
