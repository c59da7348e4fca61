//! Execute on a fleet: one command on every machine a selector and host
//! list choose (cmdop_exec_fleet), its versioned options, and the
//! per-machine results.

use std::ffi::{c_char, c_void, CString};
use std::mem::size_of;
use std::os::raw::c_int;
use std::sync::Arc;

use super::boundary::{arg_str, as_callback, c_string, handle, opt_str, out_ptr, Failure};
use super::cancel::cancel_arg;
use super::client::cmdop_client;
use super::events::cmdop_free_fn;
use super::exec_options::{cmdop_exec_options, core_options};
use super::fleet::{cmdop_machine, wrap_machine};
use super::output::{cmdop_stream_kind, output_sink};
use super::runtime::run_feeding;
use super::status::cmdop_status;
use super::versioned::Versioned;
use crate::client::{
    fleet_feed, Batch, FleetExec, FleetMachine, FleetMsg, MachineResult, NotRun, Outcome, Stream,
};

/// Version of the cmdop_fleet_options layout this header describes.
pub const CMDOP_FLEET_OPTIONS_VERSION: u32 = 1;

/// Receives a chunk of one machine's output: `machine` (borrowed for the
/// duration of the call; the same machine as the result's later),
/// `data` (not NUL-terminated, borrowed) holding `len` > 0 bytes of stream
/// `kind`.
pub type cmdop_fleet_output_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        machine: *const cmdop_machine,
        kind: cmdop_stream_kind,
        data: *const u8,
        len: usize,
    ),
>;

/// Receives one machine's end, `result` borrowed for the duration of the
/// call (the same result is in the list cmdop_exec_fleet() returns).
pub type cmdop_fleet_result_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, result: *const cmdop_fleet_result)>;

/// Which machines cmdop_exec_fleet() runs on, how fast, and where their
/// output and results go. Initialise with cmdop_fleet_options_init(&opts,
/// CMDOP_FLEET_OPTIONS_VERSION) (or CMDOP_FLEET_OPTIONS_INIT), then set
/// fields; strings are borrowed only during the call.
#[repr(C)]
pub struct cmdop_fleet_options {
    /// CMDOP_FLEET_OPTIONS_VERSION (the layout the caller was built with).
    pub version: u32,
    /// Label selector as cmdop_list_machines() takes it; NULL or "" = any.
    pub selector: *const c_char,
    /// Hostnames or globs, comma-separated; NULL or "" = any.
    pub hosts: *const c_char,
    /// Most machines running at once (default 0 = 64; at most 256). A
    /// server that fans out itself also keeps it within the API key's free
    /// exec slots (`cmdop server --max-execs-per-key`).
    pub parallel: u32,
    /// Rolling batches of this many machines: the next batch starts when
    /// the previous one has finished (default 0 = one batch).
    pub batch_size: u32,
    /// Rolling batches of this share (1-100) of the online machines,
    /// rounded up; 0 = unused. Set at most one of the two batch fields.
    pub batch_percent: u32,
    /// Start no further machine once this many have failed (non-zero exit,
    /// signal, timeout, unknown outcome, error); 0 = no limit.
    pub max_failures: u32,
    /// Output of every machine as it arrives (NULL = none); see the
    /// threading note of cmdop_exec_fleet().
    pub on_output: cmdop_fleet_output_fn,
    /// Each machine's end as it comes (NULL = none).
    pub on_result: cmdop_fleet_result_fn,
    /// Passed to both callbacks.
    pub user_data: *mut c_void,
    /// Called once with `user_data` when no callback can run any more,
    /// before cmdop_exec_fleet() returns, on every outcome (a refused
    /// argument included). NULL = none.
    pub free_user_data: cmdop_free_fn,
}

/// Fills `opts` with the defaults of layout `version` (1 =
/// CMDOP_FLEET_OPTIONS_VERSION). Returns OK, or INVALID_ARGUMENT (NULL,
/// unknown version). Thread: any.
#[no_mangle]
pub unsafe extern "C" fn cmdop_fleet_options_init(
    opts: *mut cmdop_fleet_options,
    version: u32,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a writable cmdop_fleet_options of `version`.
        unsafe { super::versioned::init(opts, version) }
    }
}

impl Versioned for cmdop_fleet_options {
    const NAME: &'static str = "cmdop_fleet_options";
    const INIT: &'static str = "cmdop_fleet_options_init";
    const CURRENT: u32 = CMDOP_FLEET_OPTIONS_VERSION;
    fn size_of_version(_version: u32) -> usize {
        size_of::<Self>()
    }
    fn defaults() -> Self {
        cmdop_fleet_options {
            version: CMDOP_FLEET_OPTIONS_VERSION,
            selector: std::ptr::null(),
            hosts: std::ptr::null(),
            parallel: 0,
            batch_size: 0,
            batch_percent: 0,
            max_failures: 0,
            on_output: None,
            on_result: None,
            user_data: std::ptr::null_mut(),
            free_user_data: None,
        }
    }
    fn bools() -> &'static [(&'static str, usize)] {
        &[]
    }
}

/// One machine's end in a fleet execute. Opaque; read with the
/// cmdop_fleet_result_* accessors; borrowed from its list (or, in
/// `on_result`, for the duration of the callback).
pub struct cmdop_fleet_result {
    machine: cmdop_machine,
    r: MachineResult,
    status: cmdop_status,
    message: CString,
}

/// Every selected machine's end, sorted by hostname. Opaque; free with
/// cmdop_fleet_result_list_free().
pub struct cmdop_fleet_result_list {
    results: Vec<cmdop_fleet_result>,
}

fn wrap_result(r: MachineResult) -> cmdop_fleet_result {
    let status = match &r.outcome {
        Outcome::Exited(_) | Outcome::Signal(_) => cmdop_status::Ok,
        Outcome::Timeout => cmdop_status::Timeout,
        Outcome::Unknown(_) => cmdop_status::OutcomeUnknown,
        Outcome::Failed(e) => cmdop_status::from_kind(e.kind()),
        Outcome::NotRun(NotRun::Offline | NotRun::Refused(_)) => cmdop_status::Unavailable,
        Outcome::NotRun(NotRun::AfterMaxFailures | NotRun::Cancelled) => cmdop_status::Cancelled,
    };
    let message = match &r.outcome {
        Outcome::NotRun(NotRun::AfterMaxFailures) => {
            "did not run: not started after max_failures machines failed".to_string()
        }
        Outcome::NotRun(NotRun::Cancelled) => {
            "did not run: cancelled (cmdop_exec_options.cancel) before it started".to_string()
        }
        other => other.to_string(),
    };
    cmdop_fleet_result {
        machine: wrap_machine(r.machine.clone()),
        status,
        message: c_string(&message),
        r,
    }
}

/// Runs `command` on every online machine that `fleet` selects, with the
/// execute options `opts` (NULL = defaults) applied to each machine: its
/// timeout (per machine), environment, working directory, stdin bytes,
/// `discard_output` and `cancel` (stops every running command and starts
/// no more). `opts->on_output` and `opts->input` are refused
/// (INVALID_ARGUMENT): output comes tagged with its machine through
/// `fleet->on_output`, and one stdin stream cannot feed many machines.
/// `opts->free_user_data`, if set, is still called once.
///
/// Every machine ends exactly once, with a status: OK (the command ran;
/// read its exit code or signal), TIMEOUT (killed at its timeout,
/// confirmed), OUTCOME_UNKNOWN (started, end unknown: not sent again), an
/// error status, or, for a machine where it never started
/// (cmdop_fleet_result_ran() false), UNAVAILABLE (offline, or refused
/// before it reached the machine) or CANCELLED (the cancel, or
/// `max_failures` reached). Nothing is retried.
///
/// Callbacks run on the calling thread, one at a time, while this call
/// blocks: a machine's output in order, then its result; machines
/// interleave. A slow callback slows the machines' output down (it is
/// not queued without bound). After a cancel, output not yet delivered is
/// dropped; every machine's result still comes.
///
/// On OK `*out` is the caller's (cmdop_fleet_result_list_free()), holding
/// every selected machine, offline ones included, sorted by hostname;
/// OK whatever the machines' outcomes. Returns INVALID_ARGUMENT (NULL
/// `client`, `command`, `fleet` or `out`, a bad selector or host list,
/// both batch fields set, a refused field of `opts`); NOT_FOUND (nothing
/// matches: cmdop_list_machines() shows what there is); NOT_SUPPORTED (the
/// server lacks CMDOP_CAPABILITY_MACHINES); UNAVAILABLE; DISCONNECTED;
/// UNAUTHENTICATED. Thread: any; blocks; IN_CALLBACK from inside a
/// callback.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_fleet(
    client: *mut cmdop_client,
    command: *const c_char,
    fleet: *const cmdop_fleet_options,
    opts: *const cmdop_exec_options,
    out: *mut *mut cmdop_fleet_result_list,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a readable struct of its version.
        let f = unsafe { super::versioned::read(fleet) };
        // The finaliser runs when `sink` drops: on every path from here.
        let sink = f.as_ref().ok().map(FleetSink::new);
        if fleet.is_null() {
            return Err(Failure::null("fleet"));
        }
        let f = f?;
        // SAFETY: NULL (checked) or a readable struct of its version.
        let o = unsafe { super::versioned::read(opts) }?;
        drop(output_sink(None, o.user_data, o.free_user_data));
        if o.on_output.is_some() {
            return Err(Failure::invalid(
                "opts->on_output is not used by cmdop_exec_fleet: set fleet->on_output, which also names the machine",
            ));
        }
        if !o.input.is_null() {
            return Err(Failure::invalid(
                "opts->input cannot feed several machines: give the bytes in opts->stdin_data",
            ));
        }
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: NULL (checked) or a live handle of this library.
        let client = unsafe { handle(client, "client") }?.client.clone();
        // SAFETY: NULL (checked) or a NUL-terminated string.
        let command = unsafe { arg_str(command, "command") }?.to_owned();
        // SAFETY: the pointers of `o` are as documented on the struct.
        let exec = unsafe { core_options(&o) }?;
        // SAFETY: NULL or a live token of this library.
        let token = unsafe { cancel_arg(o.cancel) };
        // SAFETY: NULL or NUL-terminated strings, per the struct's contract.
        let selector = unsafe { opt_str(f.selector, "fleet->selector") }?.unwrap_or("").to_owned();
        // SAFETY: as above.
        let hosts = unsafe { opt_str(f.hosts, "fleet->hosts") }?.unwrap_or("").to_owned();
        let batch = match (f.batch_size, f.batch_percent) {
            (0, 0) => None,
            (n, 0) => Some(Batch::Machines(n as usize)),
            (0, p) if p <= 100 => Some(Batch::Percent(p as usize)),
            (0, p) => return Err(Failure::invalid(format!(
                "fleet->batch_percent is {p}: give a share from 1 to 100, or 0 for none"
            ))),
            _ => return Err(Failure::invalid(
                "fleet->batch_size and fleet->batch_percent are both set: set one of them",
            )),
        };
        let plan = FleetExec {
            selector,
            hosts,
            parallel: f.parallel as usize,
            batch,
            max_failures: (f.max_failures > 0).then_some(f.max_failures as usize),
        };
        let (events, feed) = fleet_feed();
        let stop = token.clone();
        let mut sink = sink;
        let mut results = Vec::new();
        let ran = run_feeding(
            "cmdop_exec_fleet",
            async move { client.execute_on_fleet(&command, &exec, &plan, events, stop).await },
            feed,
            |msg| match msg {
                FleetMsg::Output { machine, stream, data } => {
                    if !token.is_cancelled() {
                        if let Some(s) = sink.as_mut() {
                            s.output(&machine, stream, &data);
                        }
                    }
                }
                FleetMsg::Finished(r) => {
                    let r = wrap_result(*r);
                    if let Some(s) = sink.as_ref() {
                        s.result(&r);
                    }
                    results.push(r);
                }
            },
        )?;
        drop(sink);
        ran?;
        results.sort_by(|a, b| {
            (a.r.machine.hostname.to_lowercase(), &a.r.machine.machine_id)
                .cmp(&(b.r.machine.hostname.to_lowercase(), &b.r.machine.machine_id))
        });
        *out = Box::into_raw(Box::new(cmdop_fleet_result_list { results }));
        Ok(())
    }
}

/// The application's fleet callbacks with their `user_data`; the
/// finaliser runs when this drops. Output chunks name their machine
/// through a `cmdop_machine` built once per machine.
struct FleetSink {
    on_output: cmdop_fleet_output_fn,
    on_result: cmdop_fleet_result_fn,
    user_data: *mut c_void,
    free_user_data: cmdop_free_fn,
    machines: std::collections::HashMap<String, Box<cmdop_machine>>,
}

impl FleetSink {
    fn new(f: &cmdop_fleet_options) -> FleetSink {
        FleetSink {
            on_output: f.on_output,
            on_result: f.on_result,
            user_data: f.user_data,
            free_user_data: f.free_user_data,
            machines: std::collections::HashMap::new(),
        }
    }

    fn output(&mut self, machine: &Arc<FleetMachine>, stream: Stream, data: &[u8]) {
        let Some(cb) = self.on_output else { return };
        let m = self
            .machines
            .entry(machine.machine_id.clone())
            .or_insert_with(|| Box::new(wrap_machine(FleetMachine::clone(machine))));
        let kind = match stream {
            Stream::Stdout => cmdop_stream_kind::Stdout,
            Stream::Stderr => cmdop_stream_kind::Stderr,
        };
        let (user_data, m_ptr): (*mut c_void, *const cmdop_machine) = (self.user_data, &**m);
        // SAFETY: the application's callback with its own user_data, on
        // the calling thread; `m_ptr` and `data` outlive the call.
        as_callback(|| unsafe { cb(user_data, m_ptr, kind, data.as_ptr(), data.len()) });
    }

    fn result(&self, r: &cmdop_fleet_result) {
        if let Some(cb) = self.on_result {
            let user_data = self.user_data;
            // SAFETY: the application's callback with its own user_data, on
            // the calling thread; `r` outlives the call.
            as_callback(|| unsafe { cb(user_data, r) });
        }
    }
}

impl Drop for FleetSink {
    fn drop(&mut self) {
        if let Some(free) = self.free_user_data {
            let user_data = self.user_data;
            // SAFETY: the application's finaliser with its own user_data,
            // called once: no callback runs after the sink is dropped.
            as_callback(|| unsafe { free(user_data) });
        }
    }
}

/// Number of results (0 when NULL).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_fleet_result_list_count(
    list: *const cmdop_fleet_result_list,
) -> usize {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value 0; unsafe { list.as_ref() }.map_or(0, |l| l.results.len()))
}

/// Result `index`, borrowed from `list` (do not free it); NULL when out of
/// range.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_fleet_result_list_get(
    list: *const cmdop_fleet_result_list,
    index: usize,
) -> *const cmdop_fleet_result {
    ffi_boundary!(@value std::ptr::null();
        // SAFETY: NULL (checked) or a live object of this library.
        unsafe { list.as_ref() }.and_then(|l| l.results.get(index)).map_or(std::ptr::null(), |r| r as *const _)
    )
}

/// Free a result list (and every result and machine borrowed from it).
/// NULL is a no-op.
/// Thread: any, once no other call uses the object (it may be one other than the thread that made it).
#[no_mangle]
pub unsafe extern "C" fn cmdop_fleet_result_list_free(list: *mut cmdop_fleet_result_list) {
    ffi_boundary!(@value ();
        if !list.is_null() {
            // SAFETY: created by Box::into_raw in cmdop_exec_fleet; freed once.
            drop(unsafe { Box::from_raw(list) });
        }
    )
}

/// Reads a field of a borrowed result; `default` for NULL.
///
/// # Safety
/// `r` is NULL or a result borrowed from a live list or a callback.
unsafe fn field<T>(
    r: *const cmdop_fleet_result,
    default: T,
    f: impl FnOnce(&cmdop_fleet_result) -> T,
) -> T {
    // SAFETY: NULL (checked) or a live object of this library.
    unsafe { r.as_ref() }.map_or(default, f)
}

/// The machine (read with the cmdop_machine_* accessors). Borrowed from
/// `r`; NULL when `r` is NULL.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_fleet_result_machine(
    r: *const cmdop_fleet_result,
) -> *const cmdop_machine {
    // SAFETY: NULL or a borrowed result, by the contract.
    ffi_boundary!(@value std::ptr::null(); unsafe { field(r, std::ptr::null(), |r| &r.machine as *const _) })
}

/// How the machine ended (see cmdop_exec_fleet()); INVALID_ARGUMENT when
/// `r` is NULL.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_fleet_result_status(r: *const cmdop_fleet_result) -> cmdop_status {
    // SAFETY: NULL or a borrowed result, by the contract.
    ffi_boundary!(@value cmdop_status::InvalidArgument; unsafe { field(r, cmdop_status::InvalidArgument, |r| r.status) })
}

/// Whether the command was (or, after OUTCOME_UNKNOWN, may have been)
/// started on the machine; false when NULL.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_fleet_result_ran(r: *const cmdop_fleet_result) -> bool {
    // SAFETY: NULL or a borrowed result, by the contract.
    ffi_boundary!(@value false; unsafe { field(r, false, |r| r.r.outcome.ran()) })
}

/// The command's exit code when its status is OK and no signal killed
/// it; -1 otherwise (and when NULL).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_fleet_result_exit_code(r: *const cmdop_fleet_result) -> c_int {
    // SAFETY: NULL or a borrowed result, by the contract.
    ffi_boundary!(@value -1; unsafe { field(r, -1, |r| match r.r.outcome { Outcome::Exited(c) => c, _ => -1 }) })
}

/// The signal that killed the command; 0 when none (and when NULL).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_fleet_result_signal(r: *const cmdop_fleet_result) -> c_int {
    // SAFETY: NULL or a borrowed result, by the contract.
    ffi_boundary!(@value 0; unsafe { field(r, 0, |r| match r.r.outcome { Outcome::Signal(s) => s, _ => 0 }) })
}

/// What happened in words ("exit 0", "timed out (killed)", "did not run:
/// offline", the error's message …). Borrowed from `r`; NULL when `r` is
/// NULL.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_fleet_result_message(r: *const cmdop_fleet_result) -> *const c_char {
    // SAFETY: NULL or a borrowed result, by the contract.
    ffi_boundary!(@value std::ptr::null(); unsafe { field(r, std::ptr::null(), |r| r.message.as_ptr()) })
}

/// Milliseconds from the machine's start to its end; 0 when it did not
/// run (and when NULL).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_fleet_result_duration_ms(r: *const cmdop_fleet_result) -> u64 {
    // SAFETY: NULL or a borrowed result, by the contract.
    ffi_boundary!(@value 0; unsafe { field(r, 0, |r| u64::try_from(r.r.duration.as_millis()).unwrap_or(u64::MAX)) })
}

/// The machine's standard output as kept (also the part before a timeout
/// or a lost link; nothing with `discard_output`): `*len` bytes, not
/// NUL-terminated, borrowed from `r`. NULL with `*len` 0 when `r` is NULL
/// (`len` may be NULL).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_fleet_result_stdout(
    r: *const cmdop_fleet_result,
    len: *mut usize,
) -> *const u8 {
    // SAFETY: NULL or a borrowed result and a writable `len`, by the contract.
    ffi_boundary!(@value std::ptr::null(); unsafe { bytes(r, len, |r| &r.r.stdout) })
}

/// The machine's standard error, as cmdop_fleet_result_stdout().
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_fleet_result_stderr(
    r: *const cmdop_fleet_result,
    len: *mut usize,
) -> *const u8 {
    // SAFETY: NULL or a borrowed result and a writable `len`, by the contract.
    ffi_boundary!(@value std::ptr::null(); unsafe { bytes(r, len, |r| &r.r.stderr) })
}

/// # Safety
/// `r` is NULL or a borrowed result; `len` is NULL or writable.
unsafe fn bytes(
    r: *const cmdop_fleet_result,
    len: *mut usize,
    pick: impl FnOnce(&cmdop_fleet_result) -> &Vec<u8>,
) -> *const u8 {
    // SAFETY: NULL (checked) or a live object of this library.
    let (ptr, n) = match unsafe { r.as_ref() } {
        Some(r) => {
            let b = pick(r);
            (b.as_ptr(), b.len())
        }
        None => (std::ptr::null(), 0),
    };
    if !len.is_null() {
        // SAFETY: non-NULL and writable, by the contract.
        unsafe { *len = n };
    }
    ptr
}
