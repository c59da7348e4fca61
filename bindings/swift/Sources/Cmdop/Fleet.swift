import CCmdop
import Dispatch
import Foundation

/// Which stream a chunk of output belongs to.
public enum StreamKind: Sendable {
    case stdout, stderr
}

/// One machine's end in `execFleet`/`execFleetBlocking`.
public struct FleetResult: Sendable {
    public let machine: Machine
    /// How it ended: `.ok` when the command ran to its end (read `exitCode`
    /// and `signal`), `.timeout` (killed at its timeout, confirmed),
    /// `.outcomeUnknown` (started, end unknown; not sent again), another
    /// error status, or, when `ran` is false, `.unavailable` (offline, or
    /// refused before it reached the machine) or `.cancelled` (the cancel
    /// token, or `maxFailures` reached).
    public let status: Status
    /// Whether the command was (or, after `.outcomeUnknown`, may have been)
    /// started on the machine.
    public let ran: Bool
    /// The exit code when `status` is `.ok` and no signal ended it; -1 otherwise.
    public let exitCode: Int32
    /// The signal that ended the command, 0 if none.
    public let signal: Int32
    /// What happened in words ("exit 0", "timed out (killed)", ...).
    public let message: String
    /// From the machine's start to its end; 0 when it did not run.
    public let durationMs: UInt64
    /// Output as kept (also what came before a timeout); empty with
    /// `ExecOptions.discardOutput`.
    public let stdout: Data
    public let stderr: Data

    /// Ran to its end with exit code 0.
    public var succeeded: Bool { status == .ok && exitCode == 0 }
    /// Stdout as UTF-8 text (invalid bytes replaced).
    public var stdoutString: String { String(decoding: stdout, as: UTF8.self) }

    /// Copies a result borrowed from a C list or callback.
    init(_ r: OpaquePointer?) {
        func bytes(_ get: (OpaquePointer?, UnsafeMutablePointer<Int>?) -> UnsafePointer<UInt8>?) -> Data {
            var n = 0
            guard let p = get(r, &n), n > 0 else { return Data() }
            return Data(bytes: p, count: n)
        }
        machine = Machine(cmdop_fleet_result_machine(r))
        status = Status(cmdop_fleet_result_status(r))
        ran = cmdop_fleet_result_ran(r)
        exitCode = cmdop_fleet_result_exit_code(r)
        signal = cmdop_fleet_result_signal(r)
        message = cmdop_fleet_result_message(r).map { String(cString: $0) } ?? ""
        durationMs = cmdop_fleet_result_duration_ms(r)
        stdout = bytes(cmdop_fleet_result_stdout)
        stderr = bytes(cmdop_fleet_result_stderr)
    }
}

/// Which machines `execFleet` runs on, how fast, and where their output and
/// results go (cmdop_fleet_options in cmdop.h). Zero means the library's
/// default everywhere.
public struct FleetOptions {
    /// Label selector, as `machines(selector:hosts:)` takes it; nil = any machine.
    public var selector: String?
    /// Hostnames or globs, comma-separated; nil = any.
    public var hosts: String?
    /// Most machines running at once; 0 = 64.
    public var parallel: UInt32 = 0
    /// Rolling batches of this many machines (0 = one batch), or of this
    /// share (1-100) of the online machines: set at most one of the two.
    public var batchSize: UInt32 = 0
    public var batchPercent: UInt32 = 0
    /// Start no further machine once this many have failed (non-zero exit,
    /// signal, timeout, unknown outcome, error); 0 = no limit.
    public var maxFailures: UInt32 = 0
    /// Each chunk of a machine's output as it arrives, in order per machine
    /// (machines interleave).
    public var onOutput: ((Machine, StreamKind, Data) -> Void)?
    /// Each machine's end as it comes (the same result is in the returned list).
    public var onResult: ((FleetResult) -> Void)?

    public init() {}
}

/// The state of one `execFleetBlocking` call: its callbacks run on the
/// calling thread while the call blocks, so the call's own reference keeps
/// it alive (no finaliser is needed). Machines are copied once each for
/// `onOutput`, keyed by id.
final class FleetContext {
    let onOutput: ((Machine, StreamKind, Data) -> Void)?
    let onResult: ((FleetResult) -> Void)?
    var machines: [String: Machine] = [:]

    init(_ fleet: FleetOptions) {
        onOutput = fleet.onOutput
        onResult = fleet.onResult
    }

    func output(_ m: OpaquePointer?, _ kind: cmdop_stream_kind, _ data: UnsafePointer<UInt8>?, _ len: Int) {
        guard let onOutput = onOutput, let data = data else { return }
        let id = cmdop_machine_id(m).map { String(cString: $0) } ?? ""
        let machine: Machine
        if let known = machines[id] {
            machine = known
        } else {
            machine = Machine(m)
            machines[id] = machine
        }
        onOutput(machine, kind == CMDOP_STREAM_KIND_STDERR ? .stderr : .stdout, Data(bytes: data, count: len))
    }

    func result(_ r: OpaquePointer?) {
        onResult?(FleetResult(r))
    }
}

/// Carries a value the caller vouches for into a `@Sendable` closure.
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
}

extension Client {
    /// Run `command` on every online machine `fleet` selects (its selector
    /// and host list; the machine of `setMachine` plays no part), blocking
    /// the calling thread, with `options` applied to each machine: its
    /// timeout is per machine; stdin bytes, `env`, `workingDirectory` and
    /// `discardOutput` apply to every machine. Returns every selected
    /// machine's end, offline ones included, sorted by hostname, whatever
    /// their outcomes: check each result's `status` and `exitCode`.
    ///
    /// `fleet.onOutput` and `fleet.onResult` run on this thread, one at a
    /// time, while the call blocks; they must not call blocking methods of
    /// a Client (those throw `.inCallback`). `cancel` stops the fleet from
    /// any thread (running commands killed, no more started); the call
    /// still returns every machine's result, those it stopped `.cancelled`.
    ///
    /// Throws `.notFound` when nothing matches (`machines(selector:hosts:)`
    /// shows what there is), `.invalidArgument` for a bad selector or host
    /// list or both batch fields set, `.notSupported` when the server cannot
    /// list machines.
    public func execFleetBlocking(_ command: String, fleet: FleetOptions, options: ExecOptions = ExecOptions(),
                                  cancel: CancelToken? = nil) throws -> [FleetResult] {
        var o = cmdop_exec_options()
        try check(cmdop_exec_options_init(&o, UInt32(CMDOP_EXEC_OPTIONS_VERSION)))
        o.timeout_ms = options.timeoutMs
        o.discard_output = options.discardOutput
        o.cancel = cancel?.raw
        var f = cmdop_fleet_options()
        try check(cmdop_fleet_options_init(&f, UInt32(CMDOP_FLEET_OPTIONS_VERSION)))
        f.parallel = fleet.parallel
        f.batch_size = fleet.batchSize
        f.batch_percent = fleet.batchPercent
        f.max_failures = fleet.maxFailures
        let ctx = FleetContext(fleet)
        if fleet.onOutput != nil {
            f.on_output = { ud, m, kind, data, len in
                guard let ud = ud else { return }
                Unmanaged<FleetContext>.fromOpaque(ud).takeUnretainedValue().output(m, kind, data, len)
            }
        }
        if fleet.onResult != nil {
            f.on_result = { ud, r in
                guard let ud = ud else { return }
                Unmanaged<FleetContext>.fromOpaque(ud).takeUnretainedValue().result(r)
            }
        }
        // Unretained: every callback has returned when the call does, and
        // `withExtendedLifetime` below keeps `ctx` alive until then.
        f.user_data = Unmanaged.passUnretained(ctx).toOpaque()
        let input = options.stdin ?? Data()
        var out: OpaquePointer?
        var message = ""
        let st: cmdop_status = withCStringArray(options.env) { env in
            withOptionalCString(options.workingDirectory) { dir in
                withOptionalCString(fleet.selector) { selector in
                    withOptionalCString(fleet.hosts) { hosts in
                        input.withUnsafeBytes { (buf: UnsafeRawBufferPointer) -> cmdop_status in
                            o.env = env
                            o.env_count = options.env.count
                            o.working_directory = dir
                            o.stdin_data = buf.bindMemory(to: UInt8.self).baseAddress
                            o.stdin_len = buf.count
                            f.selector = selector
                            f.hosts = hosts
                            let st = withExtendedLifetime(ctx) { cmdop_exec_fleet(raw, command, &f, &o, &out) }
                            if st != CMDOP_STATUS_OK { message = String(cString: cmdop_last_error_message()) }
                            return st
                        }
                    }
                }
            }
        }
        defer { cmdop_fleet_result_list_free(out) }
        if st != CMDOP_STATUS_OK {
            throw CmdopError(status: Status(st), message: message)
        }
        return (0..<cmdop_fleet_result_list_count(out)).map { FleetResult(cmdop_fleet_result_list_get(out, $0)) }
    }

    /// `execFleetBlocking` on a dispatch queue, whose thread then runs the
    /// callbacks; cancelling the task stops the fleet (the machines it
    /// stopped end `.cancelled`, and the results are returned).
    public func execFleet(_ command: String, fleet: FleetOptions,
                          options: ExecOptions = ExecOptions()) async throws -> [FleetResult] {
        let token = CancelToken()
        let call = UncheckedSendable(value: fleet)
        return try await runCancellable(token) {
            try self.execFleetBlocking(command, fleet: call.value, options: options, cancel: token)
        }
    }
}
