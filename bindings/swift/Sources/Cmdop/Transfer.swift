import CCmdop
import Dispatch
import Foundation

/// How to run a command beyond its text (cmdop_exec_options in cmdop.h).
public struct ExecOptions: Sendable {
    /// Kill the command after this long; 0 = the client's timeout.
    public var timeoutMs: UInt32 = 0
    /// Written to the command's stdin, then closed (native exec only; the
    /// terminal path throws `.notSupported`). nil = no stdin.
    public var stdin: Data?
    /// "NAME=value" entries added to the command's environment.
    public var env: [String] = []
    /// Directory to run in; nil = the agent's default.
    public var workingDirectory: String?
    /// Keep no output in the result (it goes only to `onChunk`).
    public var discardOutput = false

    public init() {}
}

/// How `downloadFile` and `uploadFile` treat their target
/// (cmdop_transfer_options in cmdop.h).
public struct TransferOptions: Sendable {
    /// Copy the source's permission bits to the target.
    public var keepMode = false
    /// Throw `.invalidArgument` instead of replacing an existing target.
    public var noClobber = false
    /// Create missing parent directories of the target.
    public var createParents = false

    public init() {}
}

/// The writing end of a command's stdin for
/// `executeBlocking(_:options:stdin:...)`: another thread writes while the
/// command runs, then closes it. One command per ExecStdin; keep it alive
/// until that call returned.
public final class ExecStdin: @unchecked Sendable {
    let raw: OpaquePointer

    public init() throws {
        var out: OpaquePointer?
        try check(cmdop_exec_stdin_new(&out))
        raw = out!
    }

    deinit { cmdop_exec_stdin_free(raw) }

    /// Write to the command's stdin, blocking while it does not keep up.
    public func write(_ data: Data) throws {
        if data.isEmpty { return }
        try data.withUnsafeBytes { (buf: UnsafeRawBufferPointer) in
            try check(cmdop_exec_stdin_write(raw, buf.bindMemory(to: UInt8.self).baseAddress, buf.count))
        }
    }

    /// Close the command's stdin (it sees EOF).
    public func close() throws { try check(cmdop_exec_stdin_close(raw)) }
}

/// Calls `body` with a C array of C strings for `strings` (NULL when empty).
func withCStringArray<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>?) throws -> R) rethrows -> R {
    if strings.isEmpty { return try body(nil) }
    let owned: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    defer { owned.forEach { free($0) } }
    let borrowed: [UnsafePointer<CChar>?] = owned.map { $0.map { UnsafePointer($0) } }
    return try borrowed.withUnsafeBufferPointer { try body($0.baseAddress) }
}

/// Runs a blocking call on a dispatch queue; cancelling the task cancels
/// `token`, which stops the call.
func runCancellable<T: Sendable>(_ token: CancelToken, _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, Error>) in
            DispatchQueue.global().async {
                do {
                    cont.resume(returning: try body())
                } catch {
                    cont.resume(throwing: error)
                }
            }
        }
    } onCancel: {
        token.cancel()
    }
}

extension Client {
    /// Run a command with stdin bytes, environment and working directory,
    /// blocking the calling thread. With `stdin` (an ExecStdin) the
    /// command's stdin is streamed while it runs; that needs
    /// CMDOP_CAPABILITY_EXEC_STDIN on server and agent. `onChunk` sees the
    /// output on this thread. An option the terminal path cannot honour
    /// throws `.notSupported`; none is silently dropped.
    public func executeBlocking(_ command: String, options: ExecOptions, stdin: ExecStdin? = nil,
                                cancel: CancelToken? = nil, onChunk: ((Data) -> Void)? = nil) throws -> ExecResult {
        var o = cmdop_exec_options()
        try check(cmdop_exec_options_init(&o, UInt32(CMDOP_EXEC_OPTIONS_VERSION)))
        o.timeout_ms = options.timeoutMs
        o.discard_output = options.discardOutput
        let box = onChunk.map { Box($0) }
        var trampoline: cmdop_exec_output_fn? = nil
        if onChunk != nil {
            trampoline = { ud, _, data, len in
                guard let ud = ud, let data = data else { return }
                Unmanaged<Box<(Data) -> Void>>.fromOpaque(ud).takeUnretainedValue().value(Data(bytes: data, count: len))
            }
        }
        // Retained for the library, which releases it through `release`
        // once no callback runs any more (after a cancel, possibly later
        // than the call's return).
        let ud = box.map { Unmanaged.passRetained($0).toOpaque() }
        let release: cmdop_free_fn? = box == nil ? nil : { ud in
            guard let ud = ud else { return }
            Unmanaged<Box<(Data) -> Void>>.fromOpaque(ud).release()
        }
        let input = options.stdin ?? Data()
        var out: OpaquePointer?
        var message = ""
        let st: cmdop_status = withCStringArray(options.env) { env in
            withOptionalCString(options.workingDirectory) { dir in
                input.withUnsafeBytes { (buf: UnsafeRawBufferPointer) -> cmdop_status in
                    o.env = env
                    o.env_count = options.env.count
                    o.working_directory = dir
                    o.stdin_data = buf.bindMemory(to: UInt8.self).baseAddress
                    o.stdin_len = buf.count
                    o.on_output = trampoline
                    o.user_data = ud
                    o.free_user_data = release
                    o.cancel = cancel?.raw
                    o.input = stdin?.raw
                    let st = withExtendedLifetime(box) { cmdop_exec(raw, command, &o, &out) }
                    if st != CMDOP_STATUS_OK { message = String(cString: cmdop_last_error_message()) }
                    return st
                }
            }
        }
        defer { cmdop_exec_result_free(out) }
        let result = out.map(ExecResult.init)
        if st != CMDOP_STATUS_OK {
            throw CmdopError(status: Status(st), message: message, partialResult: result)
        }
        return result!
    }

    /// `executeBlocking(_:options:)` on a dispatch queue; cancelling the
    /// task kills the command (the call then throws `.cancelled`).
    public func execute(_ command: String, options: ExecOptions) async throws -> ExecResult {
        let token = CancelToken()
        return try await runCancellable(token) { try self.executeBlocking(command, options: options, cancel: token) }
    }

    /// Download `remotePath` on the selected machine to `localPath`,
    /// atomically, in bounded memory whatever the size. `onProgress` sees
    /// (done, total) bytes on this thread; `cancel` stops it from any
    /// thread (`.cancelled`, the target is left as it was).
    public func downloadFileBlocking(_ remotePath: String, to localPath: String,
                                     options: TransferOptions = TransferOptions(), cancel: CancelToken? = nil,
                                     onProgress: ((UInt64, UInt64) -> Void)? = nil) throws {
        try transfer(download: true, remotePath, localPath, options, cancel, onProgress)
    }

    /// Upload the local file `localPath` to `remotePath` on the selected
    /// machine, atomically; as `downloadFileBlocking`.
    public func uploadFileBlocking(_ localPath: String, to remotePath: String,
                                   options: TransferOptions = TransferOptions(), cancel: CancelToken? = nil,
                                   onProgress: ((UInt64, UInt64) -> Void)? = nil) throws {
        try transfer(download: false, localPath, remotePath, options, cancel, onProgress)
    }

    /// `downloadFileBlocking` on a dispatch queue; cancelling the task
    /// cancels the download.
    public func downloadFile(_ remotePath: String, to localPath: String,
                             options: TransferOptions = TransferOptions()) async throws {
        let token = CancelToken()
        try await runCancellable(token) {
            try self.downloadFileBlocking(remotePath, to: localPath, options: options, cancel: token)
        }
    }

    /// `uploadFileBlocking` on a dispatch queue; cancelling the task
    /// cancels the upload.
    public func uploadFile(_ localPath: String, to remotePath: String,
                           options: TransferOptions = TransferOptions()) async throws {
        let token = CancelToken()
        try await runCancellable(token) {
            try self.uploadFileBlocking(localPath, to: remotePath, options: options, cancel: token)
        }
    }

    /// Stream file `path` on the selected machine into `onChunk` (on this
    /// thread, in order) without holding it in memory; returns the bytes
    /// delivered.
    public func readFileBlocking(_ path: String, cancel: CancelToken? = nil,
                                 onChunk: @escaping (Data) -> Void) throws -> UInt64 {
        let box = Box(onChunk)
        var n: UInt64 = 0
        let st = withExtendedLifetime(box) {
            cmdop_read_file_with_callback(raw, path, { ud, data, len in
                guard let ud = ud, let data = data else { return }
                Unmanaged<Box<(Data) -> Void>>.fromOpaque(ud).takeUnretainedValue().value(Data(bytes: data, count: len))
            }, Unmanaged.passUnretained(box).toOpaque(), cancel?.raw, &n)
        }
        try check(st)
        return n
    }

    private func transfer(download: Bool, _ from: String, _ to: String, _ options: TransferOptions,
                          _ cancel: CancelToken?, _ onProgress: ((UInt64, UInt64) -> Void)?) throws {
        var o = cmdop_transfer_options()
        try check(cmdop_transfer_options_init(&o, UInt32(CMDOP_TRANSFER_OPTIONS_VERSION)))
        o.keep_mode = options.keepMode
        o.no_clobber = options.noClobber
        o.create_parents = options.createParents
        let box = onProgress.map { Box($0) }
        var trampoline: cmdop_progress_fn? = nil
        if onProgress != nil {
            trampoline = { ud, done, total in
                guard let ud = ud else { return }
                Unmanaged<Box<(UInt64, UInt64) -> Void>>.fromOpaque(ud).takeUnretainedValue().value(done, total)
            }
        }
        // Retained for the library, which releases it through `release`
        // once no callback runs any more (after a cancel, possibly later
        // than the call's return).
        let ud = box.map { Unmanaged.passRetained($0).toOpaque() }
        let release: cmdop_free_fn? = box == nil ? nil : { ud in
            guard let ud = ud else { return }
            Unmanaged<Box<(Data) -> Void>>.fromOpaque(ud).release()
        }
        let st = withExtendedLifetime(box) { () -> cmdop_status in
            download ? cmdop_download_file(raw, from, to, &o, trampoline, ud, cancel?.raw)
                     : cmdop_upload_file(raw, from, to, &o, trampoline, ud, cancel?.raw)
        }
        try check(st)
    }
}
