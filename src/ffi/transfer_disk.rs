//! Files to and from local disk, of any size with bounded memory, and
//! streaming reads into a callback.

use std::ffi::{c_char, c_void};
use std::path::Path;

use super::boundary::{arg_str, as_callback, handle, Failure};
use super::cancel::{cancel_arg, cmdop_cancel_token};
use super::client::cmdop_client;
use super::runtime::block_on;
use super::status::cmdop_status;
use crate::client::TransferOptions;

/// Version of the cmdop_transfer_options layout this header describes.
pub const CMDOP_TRANSFER_OPTIONS_VERSION: u32 = 1;

/// How cmdop_download_file() and cmdop_upload_file() treat their target.
/// Initialise with cmdop_transfer_options_init(&opts,
/// CMDOP_TRANSFER_OPTIONS_VERSION); NULL options mean the defaults.
#[repr(C)]
pub struct cmdop_transfer_options {
    /// CMDOP_TRANSFER_OPTIONS_VERSION (the layout the caller was built with).
    pub version: u32,
    /// Copy the source's permission bits to the target. Otherwise a
    /// replaced target keeps its bits and a new one gets the default.
    pub keep_mode: bool,
    /// Fail instead of replacing an existing target.
    pub no_clobber: bool,
    /// Create missing parent directories of the target.
    pub create_parents: bool,
}

/// Fills `opts` with the defaults of layout `version` (only
/// CMDOP_TRANSFER_OPTIONS_VERSION = 1 exists). Returns OK, or
/// INVALID_ARGUMENT (NULL, unknown version). Thread: any.
#[no_mangle]
pub unsafe extern "C" fn cmdop_transfer_options_init(
    opts: *mut cmdop_transfer_options,
    version: u32,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a writable struct of `version`.
        unsafe { super::versioned::init(opts, version) }
    }
}

impl super::versioned::Versioned for cmdop_transfer_options {
    const NAME: &'static str = "cmdop_transfer_options";
    const INIT: &'static str = "cmdop_transfer_options_init";
    const CURRENT: u32 = CMDOP_TRANSFER_OPTIONS_VERSION;
    /// Only version 1 exists: the current layout.
    fn size_of_version(_version: u32) -> usize {
        size_of::<Self>()
    }
    fn defaults() -> Self {
        cmdop_transfer_options {
            version: CMDOP_TRANSFER_OPTIONS_VERSION,
            keep_mode: false,
            no_clobber: false,
            create_parents: false,
        }
    }
    fn bools() -> &'static [(&'static str, usize)] {
        &[
            (
                "keep_mode",
                std::mem::offset_of!(cmdop_transfer_options, keep_mode),
            ),
            (
                "no_clobber",
                std::mem::offset_of!(cmdop_transfer_options, no_clobber),
            ),
            (
                "create_parents",
                std::mem::offset_of!(cmdop_transfer_options, create_parents),
            ),
        ]
    }
}

/// # Safety
/// `opts` is NULL or points to a readable cmdop_transfer_options.
unsafe fn read_options(opts: *const cmdop_transfer_options) -> Result<TransferOptions, Failure> {
    // SAFETY: NULL or a readable struct whose version field tells its layout.
    let o = unsafe { super::versioned::read(opts) }?;
    Ok(TransferOptions {
        keep_mode: o.keep_mode,
        no_clobber: o.no_clobber,
        create_parents: o.create_parents,
    })
}

/// Reports a transfer's progress: `done` of `total` bytes. Runs on the
/// thread that made the call, before it returns.
pub type cmdop_progress_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, done: u64, total: u64)>;

/// Receives a file's bytes during cmdop_read_file_with_callback(): `len` > 0
/// bytes at `data` (borrowed for the call), in order.
pub type cmdop_read_chunk_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, data: *const u8, len: usize)>;

struct Progress {
    cb: Option<unsafe extern "C" fn(*mut c_void, u64, u64)>,
    user_data: *mut c_void,
}
// SAFETY: the callback runs on the thread that made the call (its future is
// driven by block_on there); Send and Sync are only needed by the types.
unsafe impl Send for Progress {}
// SAFETY: as above; it is never called from two threads.
unsafe impl Sync for Progress {}

impl Progress {
    fn report(&self, done: u64, total: u64) {
        if let Some(cb) = self.cb {
            // SAFETY: the caller's callback with its own user_data.
            as_callback(|| unsafe { cb(self.user_data, done, total) });
        }
    }
}

/// Downloads the file at `remote_path` on the selected machine to
/// `local_path`, atomically: a temp file next to the target, renamed into
/// place when complete, so a failed or cancelled download leaves the target
/// as it was. Any size; memory stays bounded (about 1 MiB in flight).
/// `opts` may be NULL; `on_progress` (may be NULL) follows the bytes on
/// disk; `cancel` (may be NULL) stops it from any thread (CANCELLED).
///
/// Without streaming transfers (CMDOP_CAPABILITY_FILES) it reads with
/// official FileRead calls; keep_mode then returns NOT_SUPPORTED.
/// Returns OK, CANCELLED, NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT
/// (also: no_clobber and the target exists), OPERATION_FAILED (local disk
/// errors; for an upload, a full disk on the machine: "no space left on
/// device"), NOT_SUPPORTED, UNAVAILABLE (also when the connection to the
/// server is lost mid-transfer), TIMEOUT, DISCONNECTED, INVALID_ARGUMENT. Thread: any;
/// blocks; IN_CALLBACK from inside a callback.
#[no_mangle]
pub unsafe extern "C" fn cmdop_download_file(
    client: *mut cmdop_client,
    remote_path: *const c_char,
    local_path: *const c_char,
    opts: *const cmdop_transfer_options,
    on_progress: cmdop_progress_fn,
    user_data: *mut c_void,
    cancel: *const cmdop_cancel_token,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: NULL (checked) or NUL-terminated strings.
        let remote = unsafe { arg_str(remote_path, "remote_path") }?;
        // SAFETY: as above.
        let local = unsafe { arg_str(local_path, "local_path") }?;
        // SAFETY: NULL or a struct as documented.
        let opts = unsafe { read_options(opts) }?;
        // SAFETY: NULL or a live token of this library.
        let token = unsafe { cancel_arg(cancel) };
        let progress = Progress { cb: on_progress, user_data };
        block_on(
            "cmdop_download_file",
            c.client.until_closed(
                "cmdop_download_file",
                c.client.download_to_path(remote, Path::new(local), opts, move |d, t| progress.report(d, t), token),
            ),
        )?
        .map(|_| ())
        .map_err(Failure::from)
    }
}

/// Uploads the local file `local_path` to `remote_path` on the selected
/// machine, atomically (the agent renames its temp file into place after
/// the last byte; a failed or cancelled upload never leaves a partial
/// file at `remote_path`, and the agent deletes its hidden temp file
/// beside it when it sees the call end, moments after this returns).
/// Any size with streaming transfers (CMDOP_CAPABILITY_FILES); without
/// them one official FileWrite (at most CMDOP_MAX_WRITE_BYTES), and
/// keep_mode or no_clobber return NOT_SUPPORTED. Arguments and returns as
/// cmdop_download_file().
/// Thread: any; blocks; IN_CALLBACK from inside a callback.
#[no_mangle]
pub unsafe extern "C" fn cmdop_upload_file(
    client: *mut cmdop_client,
    local_path: *const c_char,
    remote_path: *const c_char,
    opts: *const cmdop_transfer_options,
    on_progress: cmdop_progress_fn,
    user_data: *mut c_void,
    cancel: *const cmdop_cancel_token,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: NULL (checked) or NUL-terminated strings.
        let local = unsafe { arg_str(local_path, "local_path") }?;
        // SAFETY: as above.
        let remote = unsafe { arg_str(remote_path, "remote_path") }?;
        // SAFETY: NULL or a struct as documented.
        let opts = unsafe { read_options(opts) }?;
        // SAFETY: NULL or a live token of this library.
        let token = unsafe { cancel_arg(cancel) };
        let progress = Progress { cb: on_progress, user_data };
        block_on(
            "cmdop_upload_file",
            c.client.until_closed(
                "cmdop_upload_file",
                c.client.upload_from_path(Path::new(local), remote, opts, move |d, t| progress.report(d, t), token),
            ),
        )?
        .map(|_| ())
        .map_err(Failure::from)
    }
}

struct ChunkSink {
    cb: unsafe extern "C" fn(*mut c_void, *const u8, usize),
    user_data: *mut c_void,
}
// SAFETY: the callback runs on the thread that made the call; Send is only
// needed by the type.
unsafe impl Send for ChunkSink {}

impl ChunkSink {
    fn deliver(&self, data: &[u8]) {
        if !data.is_empty() {
            // SAFETY: the caller's callback with its user_data and a live
            // slice of `data.len()` bytes.
            as_callback(|| unsafe { (self.cb)(self.user_data, data.as_ptr(), data.len()) });
        }
    }
}

/// Streams the file at `path` on the selected machine into `on_chunk`
/// (required), chunk by chunk in order, without holding it in memory; no
/// size limit. `*size_out` (may be NULL) gets the bytes delivered.
/// `cancel` (may be NULL) stops it (CANCELLED). Returns as
/// cmdop_download_file().
/// Thread: any; blocks; IN_CALLBACK from inside a callback.
#[no_mangle]
pub unsafe extern "C" fn cmdop_read_file_with_callback(
    client: *mut cmdop_client,
    path: *const c_char,
    on_chunk: cmdop_read_chunk_fn,
    user_data: *mut c_void,
    cancel: *const cmdop_cancel_token,
    size_out: *mut u64,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: NULL (checked) or a NUL-terminated string.
        let path = unsafe { arg_str(path, "path") }?;
        let cb = on_chunk.ok_or_else(|| Failure::new(cmdop_status::InvalidArgument, "on_chunk is NULL; pass a function that takes the bytes"))?;
        let sink = ChunkSink { cb, user_data };
        // SAFETY: NULL or a live token of this library.
        let token = unsafe { cancel_arg(cancel) };
        let on_data = move |data: &[u8]| sink.deliver(data);
        let n = block_on(
            "cmdop_read_file_with_callback",
            c.client.until_closed("cmdop_read_file_with_callback", c.client.read_file_into(path, on_data, token)),
        )??;
        // SAFETY: NULL or a writable u64.
        if let Some(slot) = unsafe { size_out.as_mut() } {
            *slot = n;
        }
        Ok(())
    }
}
