//! File listing, reading and writing on the selected machine.

use std::ffi::{c_char, CString};

use super::boundary::{arg_str, c_string, handle, opt_str, out_ptr, Failure};
use super::client::cmdop_client;
use super::runtime::block_on;
use super::status::cmdop_status;
use crate::client::{FileEntry, FileKind};

/// What a directory entry is.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum cmdop_file_type {
    Unknown = 0,
    File = 1,
    Directory = 2,
    Symlink = 3,
}

/// One directory entry, borrowed from its cmdop_file_list. Opaque; read with
/// the cmdop_file_entry_* accessors.
pub struct cmdop_file_entry {
    entry: FileEntry,
    name: CString,
    path: CString,
}

/// One page of a directory listing. Opaque; free with cmdop_file_list_free().
pub struct cmdop_file_list {
    path: CString,
    next_page_token: CString,
    entries: Vec<cmdop_file_entry>,
}

/// Bytes owned by the library (file contents). Free with cmdop_bytes_free().
pub struct cmdop_bytes {
    data: Vec<u8>,
}

/// List directory `path` on the selected machine: the first page (up to 100
/// entries), hidden files excluded. Same as cmdop_list_files_page(client,
/// path, NULL, false, out).
/// Thread: any; blocks; IN_CALLBACK from inside a callback.
#[no_mangle]
pub unsafe extern "C" fn cmdop_list_files(
    client: *mut cmdop_client,
    path: *const c_char,
    out: *mut *mut cmdop_file_list,
) -> cmdop_status {
    // SAFETY: the caller's arguments, forwarded under the same contract.
    unsafe { cmdop_list_files_page(client, path, std::ptr::null(), false, out) }
}

/// List one page of directory `path`. `page_token`: NULL or "" for the first
/// page, else cmdop_file_list_next_page_token() of the previous page.
///
/// On OK `*out` is the caller's; free with cmdop_file_list_free().
/// Returns OK; NOT_FOUND (no machine selected, no such directory);
/// PERMISSION_DENIED; UNAVAILABLE (also when the connection to the server
/// is lost during the call); DISCONNECTED; INVALID_ARGUMENT;
/// OPERATION_FAILED (for the calls that write: a full disk on the machine,
/// the message then says "no space left on device"). Thread: any; blocks;
/// IN_CALLBACK in callbacks.
#[no_mangle]
pub unsafe extern "C" fn cmdop_list_files_page(
    client: *mut cmdop_client,
    path: *const c_char,
    page_token: *const c_char,
    include_hidden: bool,
    out: *mut *mut cmdop_file_list,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: NULL (checked) or a NUL-terminated string.
        let path = unsafe { arg_str(path, "path") }?;
        // SAFETY: NULL or a NUL-terminated string.
        let token = unsafe { opt_str(page_token, "page_token") }?.filter(|t| !t.is_empty());
        let list = block_on("cmdop_list_files", c.client.list_files(path, token, include_hidden))??;
        *out = Box::into_raw(Box::new(cmdop_file_list {
            path: c_string(&list.path),
            next_page_token: c_string(&list.next_page_token),
            entries: list
                .entries
                .into_iter()
                .map(|e| cmdop_file_entry { name: c_string(&e.name), path: c_string(&e.path), entry: e })
                .collect(),
        }));
        Ok(())
    }
}

/// Number of entries in `list` (0 when NULL).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_file_list_count(list: *const cmdop_file_list) -> usize {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value 0; unsafe { list.as_ref() }.map_or(0, |l| l.entries.len()))
}

/// Entry `index` of `list`, borrowed from it; NULL when out of range or
/// `list` is NULL.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_file_list_get(
    list: *const cmdop_file_list,
    index: usize,
) -> *const cmdop_file_entry {
    ffi_boundary!(@value std::ptr::null();
        // SAFETY: NULL (checked) or a live object of this library.
        unsafe { list.as_ref() }.and_then(|l| l.entries.get(index)).map_or(std::ptr::null(), |e| e as *const _)
    )
}

/// Token for the next page; "" on the last page. Borrowed from `list`.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_file_list_next_page_token(
    list: *const cmdop_file_list,
) -> *const c_char {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value std::ptr::null(); unsafe { list.as_ref() }.map_or(std::ptr::null(), |l| l.next_page_token.as_ptr()))
}

/// The directory listed, as the agent resolved it. Borrowed from `list`.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_file_list_path(list: *const cmdop_file_list) -> *const c_char {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value std::ptr::null(); unsafe { list.as_ref() }.map_or(std::ptr::null(), |l| l.path.as_ptr()))
}

/// Free a listing and its entries. NULL is a no-op.
/// Thread: any, once no other call uses the object (it may be one other than the thread that made it).
#[no_mangle]
pub unsafe extern "C" fn cmdop_file_list_free(list: *mut cmdop_file_list) {
    ffi_boundary!(@value ();
        if !list.is_null() {
            // SAFETY: created by Box::into_raw above; freed once.
            drop(unsafe { Box::from_raw(list) });
        }
    )
}

/// Entry name (no directory part). Borrowed.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_file_entry_name(e: *const cmdop_file_entry) -> *const c_char {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value std::ptr::null(); unsafe { e.as_ref() }.map_or(std::ptr::null(), |e| e.name.as_ptr()))
}

/// Full path of the entry. Borrowed.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_file_entry_path(e: *const cmdop_file_entry) -> *const c_char {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value std::ptr::null(); unsafe { e.as_ref() }.map_or(std::ptr::null(), |e| e.path.as_ptr()))
}

/// File, directory or symlink.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_file_entry_type(e: *const cmdop_file_entry) -> cmdop_file_type {
    ffi_boundary!(@value cmdop_file_type::Unknown;
        // SAFETY: NULL (checked) or a live object of this library.
        match unsafe { e.as_ref() }.map(|e| e.entry.kind) {
            Some(FileKind::File) => cmdop_file_type::File,
            Some(FileKind::Directory) => cmdop_file_type::Directory,
            Some(FileKind::Symlink) => cmdop_file_type::Symlink,
            _ => cmdop_file_type::Unknown,
        }
    )
}

/// Size in bytes.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_file_entry_size(e: *const cmdop_file_entry) -> i64 {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value 0; unsafe { e.as_ref() }.map_or(0, |e| e.entry.size))
}

/// Permission bits, e.g. 0755.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_file_entry_mode(e: *const cmdop_file_entry) -> u32 {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value 0; unsafe { e.as_ref() }.map_or(0, |e| e.entry.mode))
}

/// Modification time, Unix seconds (0 when unknown).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_file_entry_mtime(e: *const cmdop_file_entry) -> i64 {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value 0; unsafe { e.as_ref() }.map_or(0, |e| e.entry.mtime))
}

/// Largest file cmdop_read_file() returns (512 MiB).
pub const CMDOP_MAX_READ_BYTES: usize = 512 * 1024 * 1024;
/// Largest `len` cmdop_write_file() accepts when the server lacks streaming
/// transfers (one official FileWrite message: 32 MiB - 64 KiB).
pub const CMDOP_MAX_WRITE_BYTES: usize = 32 * 1024 * 1024 - 64 * 1024;
// The header's numbers are the core's.
const _: () = assert!(CMDOP_MAX_READ_BYTES == crate::client::MAX_READ_BYTES);
const _: () = assert!(CMDOP_MAX_WRITE_BYTES == crate::client::MAX_WRITE_BYTES);

/// Read the whole file `path` on the selected machine, at most
/// CMDOP_MAX_READ_BYTES (larger files are CMDOP_STATUS_INVALID_ARGUMENT). When the server offers
/// streaming transfers (capability "files.v1", see
/// cmdop_connection_info) the file arrives as one flow of 1 MiB chunks;
/// otherwise through repeated official FileRead calls. The call timeout
/// bounds each silence, not the whole transfer.
///
/// On OK `*out` is the caller's; free with cmdop_bytes_free().
/// Returns as cmdop_list_files_page(). Thread: any; blocks.
#[no_mangle]
pub unsafe extern "C" fn cmdop_read_file(
    client: *mut cmdop_client,
    path: *const c_char,
    out: *mut *mut cmdop_bytes,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: NULL (checked) or a NUL-terminated string.
        let path = unsafe { arg_str(path, "path") }?;
        let data = block_on("cmdop_read_file", c.client.until_closed("cmdop_read_file", c.client.read_file(path)))??;
        *out = Box::into_raw(Box::new(cmdop_bytes { data }));
        Ok(())
    }
}

/// Create or replace file `path` on the selected machine with `len` bytes
/// at `data` (`data` may be NULL only when `len` is 0). The file is
/// written atomically by the agent: a temp file next to it is renamed into
/// place after the last byte, so a failed or interrupted write leaves the
/// old file (or none), never a partial one.
///
/// Limits: when the server offers streaming transfers (capability
/// "files.v1", see cmdop_connection_info) `len` may be up to 64 GiB; the
/// data goes up in 1 MiB chunks with a few MiB in flight, and the call
/// timeout bounds each stall, not the whole transfer. Otherwise one official
/// FileWrite carries at most CMDOP_MAX_WRITE_BYTES (the protocol's message limit)
/// and a larger `len` is CMDOP_STATUS_INVALID_ARGUMENT before anything is
/// sent.
///
/// Ownership: `data` stays the caller's and is borrowed only until this
/// returns; it must stay readable and unchanged until then. With streaming
/// transfers the library reads it in place, a chunk at a time, so the
/// call adds a few MiB of memory whatever `len` (never a second copy of
/// the buffer); the official FileWrite sends one copy of it.
///
/// Returns as cmdop_list_files_page(). Thread: any; blocks.
#[no_mangle]
pub unsafe extern "C" fn cmdop_write_file(
    client: *mut cmdop_client,
    path: *const c_char,
    data: *const u8,
    len: usize,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: NULL (checked) or a NUL-terminated string.
        let path = unsafe { arg_str(path, "path") }?;
        let bytes: &[u8] = if len == 0 {
            &[]
        } else if data.is_null() {
            return Err(Failure::null("data"));
        } else {
            // SAFETY: the caller promises `len` readable bytes.
            unsafe { std::slice::from_raw_parts(data, len) }
        };
        block_on("cmdop_write_file", c.client.until_closed("cmdop_write_file", c.client.write_file(path, bytes)))??;
        Ok(())
    }
}

/// The bytes (not NUL-terminated; NULL only when `b` is NULL). Borrowed.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_bytes_data(b: *const cmdop_bytes) -> *const u8 {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value std::ptr::null(); unsafe { b.as_ref() }.map_or(std::ptr::null(), |b| b.data.as_ptr()))
}

/// Number of bytes (0 when `b` is NULL).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_bytes_len(b: *const cmdop_bytes) -> usize {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value 0; unsafe { b.as_ref() }.map_or(0, |b| b.data.len()))
}

/// Free bytes. NULL is a no-op.
/// Thread: any, once no other call uses the object (it may be one other than the thread that made it).
#[no_mangle]
pub unsafe extern "C" fn cmdop_bytes_free(b: *mut cmdop_bytes) {
    ffi_boundary!(@value ();
        if !b.is_null() {
            // SAFETY: created by Box::into_raw above; freed once.
            drop(unsafe { Box::from_raw(b) });
        }
    )
}
