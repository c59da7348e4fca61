import CCmdop
import Dispatch
import Foundation

/// The library's version, e.g. "0.1.0".
public var cmdopVersion: String { String(cString: cmdop_version()) }

/// Whether a client uses TLS (cmdop_tls in cmdop.h).
public enum TLSMode: Int32, Sendable {
    case `default` = 0, on = 1, off = 2
}

/// Options of a client; `nil` fields keep the library's defaults.
public struct Options: Sendable {
    /// Remote clients: "host:port" or "https://host:port"; nil = hosted endpoint.
    public var server: String?
    /// Several control planes (replicas of one cluster), "host:port" each.
    /// When not empty, used instead of `server` (remote, which must then
    /// be nil) or of the host and port of `init(host:port:)` (then
    /// ignored). Connecting tries them in a random order of the client's
    /// own (so that clients spread over the replicas) and takes the first
    /// that answers; when the one in use is lost the client moves to
    /// another that does (`onDisconnect` with willReconnect, then
    /// `onConnect`). A load balancer or DNS name in front of the replicas
    /// needs no list: give it as `server`.
    public var servers: [String] = []
    /// Connect to `servers` in the list's order (the first that answers)
    /// instead of a random one: for a preferred replica, or servers that
    /// are not one cluster.
    public var serversInOrder = false
    /// Local clients: the API key; nil = $CMDOP_API_KEY (remote clients
    /// take it as an argument).
    public var apiKey: String?
    /// TLS: `.default` is TLS for remote clients, plaintext for local ones.
    public var tls = TLSMode.default
    public var caPEMPath: String?
    /// Default deadline of each call and of connecting, in milliseconds.
    public var timeoutMs: UInt32?
    public var maxRetries: UInt32?
    public var autoReconnect: Bool?
    public var debug = false
    /// Remote OAuth clients: refresh an expired access token automatically
    /// (nil = the library's default, on); new tokens go to `onTokens`.
    public var autoRefresh: Bool?

    public init() {}
}

/// Facts about a client's connection.
public struct ConnectionInfo: Sendable {
    public let server: String
    public let tls: Bool
    public let connected: Bool
    /// -1 when the round trip failed.
    public let latencyMs: Double
    /// What the server offers (e.g. "files.v1"); empty for official servers.
    public let capabilities: [String]

    public func has(_ capability: String) -> Bool { capabilities.contains(capability) }
}

/// The outcome of a command.
public struct ExecResult: Sendable {
    /// Stdout and stderr in arrival order.
    public let output: Data
    public let stdout: Data
    /// Native exec path only.
    public let stderr: Data
    /// -1 when killed by a signal or timed out.
    public let exitCode: Int32
    public let signal: Int32
    public let timedOut: Bool
    public let native: Bool
    public let truncated: Bool
    public let durationMs: UInt64

    /// Output as UTF-8 text (invalid bytes replaced).
    public var outputString: String { String(decoding: output, as: UTF8.self) }

    /// Copies a C result (which the caller still frees).
    init(_ r: OpaquePointer) {
        func bytes(_ get: (OpaquePointer?, UnsafeMutablePointer<Int>?) -> UnsafePointer<UInt8>?) -> Data {
            var n = 0
            guard let p = get(r, &n), n > 0 else { return Data() }
            return Data(bytes: p, count: n)
        }
        output = bytes(cmdop_exec_result_output)
        stdout = bytes(cmdop_exec_result_stdout)
        stderr = bytes(cmdop_exec_result_stderr)
        exitCode = cmdop_exec_result_exit_code(r)
        signal = cmdop_exec_result_signal(r)
        timedOut = cmdop_exec_result_timed_out(r)
        native = cmdop_exec_result_native(r)
        truncated = cmdop_exec_result_truncated(r)
        durationMs = cmdop_exec_result_duration_ms(r)
    }
}

/// One machine's session as the control plane reports it.
/// One machine of the workspace as `machines(selector:hosts:)` lists it.
public struct Machine: Sendable {
    /// Stable id (mach_…); works with `setMachineID`.
    public let id: String
    public let hostname: String
    public let online: Bool
    /// Unix milliseconds the machine was last heard from (0: never).
    public let lastSeenMs: Int64
    public let os: String
    public let arch: String
    public let cpuCount: UInt32
    public let memoryBytes: UInt64
    public let agentVersion: String
    /// What selectors see: agent labels, admin labels over them, facts as
    /// cmdop.io/… labels.
    public let labels: [String: String]

    /// Copies a machine borrowed from a C list.
    init(_ m: OpaquePointer?) {
        func str(_ p: UnsafePointer<CChar>?) -> String { p.map { String(cString: $0) } ?? "" }
        id = str(cmdop_machine_id(m))
        hostname = str(cmdop_machine_hostname(m))
        online = cmdop_machine_online(m)
        lastSeenMs = cmdop_machine_last_seen_ms(m)
        os = str(cmdop_machine_os(m))
        arch = str(cmdop_machine_arch(m))
        cpuCount = cmdop_machine_cpu_count(m)
        memoryBytes = cmdop_machine_memory_bytes(m)
        agentVersion = str(cmdop_machine_agent_version(m))
        var all: [String: String] = [:]
        for i in 0..<cmdop_machine_label_count(m) {
            all[str(cmdop_machine_label_key(m, i))] = str(cmdop_machine_label_value(m, i))
        }
        labels = all
    }
}

public struct Session: Sendable {
    public let id: String
    /// The machine's stable id ("mach_…", for `setMachineId`); empty when
    /// the server cannot tell.
    public let machineId: String
    public let hostname: String
    /// "connected", "disconnected", "pending", "background", "error"...
    public let status: String
    public let os: String
    public let shell: String
    /// When the session connected, Unix seconds (0 when unknown).
    public let connectedAt: Int64
    /// Seconds since the agent's last heartbeat.
    public let heartbeatAgeSeconds: Int64

    /// Copies a C session (borrowed or owned; the caller frees it if owned).
    init(_ s: OpaquePointer?) {
        func str(_ p: UnsafePointer<CChar>?) -> String { p.map { String(cString: $0) } ?? "" }
        id = str(cmdop_session_id(s))
        machineId = str(cmdop_session_machine_id(s))
        hostname = str(cmdop_session_hostname(s))
        status = str(cmdop_session_status(s))
        os = str(cmdop_session_os(s))
        shell = str(cmdop_session_shell(s))
        connectedAt = cmdop_session_connected_at(s)
        heartbeatAgeSeconds = cmdop_session_heartbeat_age(s)
    }
}

/// What a directory entry is.
public enum FileType: Sendable {
    case unknown, file, directory, symlink

    init(_ t: cmdop_file_type) {
        switch t {
        case CMDOP_FILE_TYPE_FILE: self = .file
        case CMDOP_FILE_TYPE_DIRECTORY: self = .directory
        case CMDOP_FILE_TYPE_SYMLINK: self = .symlink
        default: self = .unknown
        }
    }
}

/// One directory entry.
public struct FileEntry: Sendable {
    public let name: String
    public let path: String
    public let type: FileType
    public let size: Int64
    /// Permission bits, e.g. 0o755.
    public let mode: UInt32
    /// Modification time, Unix seconds (0 when unknown).
    public let mtime: Int64
}

/// One page of a directory listing.
public struct FileList: Sendable {
    /// The directory listed, as the agent resolved it.
    public let path: String
    public let entries: [FileEntry]
    /// Pass to `listFiles(_:pageToken:includeHidden:)` for the next page;
    /// empty on the last page.
    public let nextPageToken: String
}

/// Stops a running execute from any thread; stays cancelled once cancelled.
public final class CancelToken: @unchecked Sendable {
    let raw: OpaquePointer

    public init() {
        guard let t = cmdop_cancel_token_new() else { fatalError("libcmdop: out of memory creating a cancel token") }
        raw = t
    }

    deinit { cmdop_cancel_token_free(raw) }

    public func cancel() { _ = cmdop_cancel_token_cancel(raw) }
}

/// Holds a Swift value for the C side; released by the library's
/// free_user_data finalizer (or, for per-call boxes, by the caller).
final class Box<T> {
    let value: T
    init(_ value: T) { self.value = value }
}

private let releaseBox: cmdop_free_fn = { ud in
    guard let ud = ud else { return }
    Unmanaged<AnyObject>.fromOpaque(ud).release()
}

/// A connection to one control plane with one set of credentials.
///
/// Thread-safe: any number of threads and tasks may use one client. The C
/// client is freed in `deinit`, so keep a reference while calls run.
public final class Client: @unchecked Sendable {
    let raw: OpaquePointer

    private init(raw: OpaquePointer) { self.raw = raw }

    deinit { cmdop_client_free(raw) }

    /// A client for a remote control plane with an API key (nil:
    /// $CMDOP_API_KEY). Does not connect.
    public static func remote(apiKey: String?, options: Options = Options()) throws -> Client {
        var o = cmdop_options()
        try check(cmdop_options_init(&o, UInt32(CMDOP_OPTIONS_VERSION)))
        apply(options, timeout: &o.timeout_ms, retries: &o.max_retries, reconnect: &o.auto_reconnect)
        o.tls = options.tls.rawValue
        o.debug = options.debug
        o.servers_in_order = options.serversInOrder
        var out: OpaquePointer?
        try withOptionalCString(options.server) { server in
            try withOptionalCString(options.caPEMPath) { ca in
                try withOptionalCString(apiKey) { key in
                    try withCStringArray(options.servers) { list, count in
                        o.server = server
                        o.ca_pem_path = ca
                        o.servers = list
                        o.server_count = count
                        try check(cmdop_remote_new(key, &o, &out))
                    }
                }
            }
        }
        return Client(raw: out!)
    }

    /// A client for a remote control plane authenticated with OAuth tokens.
    /// With `options.autoRefresh` (default on) an expired access token is
    /// refreshed and the call retried once; install `onTokens` to store the
    /// new pair. Does not connect.
    public static func remoteOAuth(accessToken: String, refreshToken: String,
                                   options: Options = Options()) throws -> Client {
        var o = cmdop_options()
        try check(cmdop_options_init(&o, UInt32(CMDOP_OPTIONS_VERSION)))
        apply(options, timeout: &o.timeout_ms, retries: &o.max_retries, reconnect: &o.auto_reconnect)
        o.tls = options.tls.rawValue
        o.debug = options.debug
        o.servers_in_order = options.serversInOrder
        if let r = options.autoRefresh { o.auto_refresh = r }
        var out: OpaquePointer?
        try withOptionalCString(options.server) { server in
            try withOptionalCString(options.caPEMPath) { ca in
                try withCStringArray(options.servers) { list, count in
                    o.server = server
                    o.ca_pem_path = ca
                    o.servers = list
                    o.server_count = count
                    try check(cmdop_remote_new_oauth(accessToken, refreshToken, &o, &out))
                }
            }
        }
        return Client(raw: out!)
    }

    /// A client for a control plane at host:port (e.g. `cmdop dev`); with
    /// `options.servers`, for those (host and port are then ignored). Does
    /// not connect.
    public convenience init(host: String, port: UInt16, options: Options = Options()) throws {
        var o = cmdop_options()
        try check(cmdop_options_init(&o, UInt32(CMDOP_OPTIONS_VERSION)))
        Client.apply(options, timeout: &o.timeout_ms, retries: &o.max_retries, reconnect: &o.auto_reconnect)
        o.tls = options.tls.rawValue
        o.debug = options.debug
        o.servers_in_order = options.serversInOrder
        var out: OpaquePointer?
        try withOptionalCString(options.apiKey) { key in
            try withOptionalCString(options.caPEMPath) { ca in
                try withCStringArray(options.servers) { list, count in
                    o.ca_pem_path = ca
                    o.servers = list
                    o.server_count = count
                    try check(cmdop_local_new(host, port, key, &o, &out))
                }
            }
        }
        self.init(raw: out!)
    }

    private static func apply(_ o: Options, timeout: inout UInt32, retries: inout UInt32, reconnect: inout Bool) {
        if let t = o.timeoutMs { timeout = t }
        if let r = o.maxRetries { retries = r }
        if let a = o.autoReconnect { reconnect = a }
    }

    /// Connect (blocks up to the client's timeout).
    public func connect() throws { try check(cmdop_connect(raw)) }

    /// Close the connection; calls fail with `.disconnected` until connect().
    public func close() throws { try check(cmdop_close(raw)) }

    public var isConnected: Bool { cmdop_is_connected(raw) }

    /// Describe the connection (one round trip now for the latency),
    /// including what the server offers.
    public func connectionInfo() throws -> ConnectionInfo {
        var out: OpaquePointer?
        try check(cmdop_get_connection_info(raw, &out))
        defer { cmdop_connection_info_free(out) }
        var caps: [String] = []
        for i in 0..<cmdop_connection_info_capability_count(out) {
            if let c = cmdop_connection_info_capability_get(out, i) { caps.append(String(cString: c)) }
        }
        return ConnectionInfo(server: String(cString: cmdop_connection_info_server(out)),
                              tls: cmdop_connection_info_tls(out),
                              connected: cmdop_connection_info_connected(out),
                              latencyMs: cmdop_connection_info_latency_ms(out),
                              capabilities: caps)
    }

    /// Select the machine later calls act on, by hostname.
    public func setMachine(_ hostname: String) throws { try check(cmdop_set_machine(raw, hostname)) }

    /// Select the machine later calls act on, by its stable id ("mach_…",
    /// from `Session.machineId` or `Machine.id`).
    public func setMachineId(_ machineId: String) throws { try check(cmdop_set_machine_id(raw, machineId)) }

    /// Run a shell command on the selected machine, blocking the calling
    /// thread. `timeoutMs` 0 = the client's timeout. `onChunk` (optional)
    /// sees the output as it arrives, on this thread. On timeout throws a
    /// CmdopError whose `partialResult` holds the output printed before.
    public func executeBlocking(_ command: String, timeoutMs: UInt32 = 0, cancel: CancelToken? = nil,
                                onChunk: ((Data) -> Void)? = nil) throws -> ExecResult {
        var out: OpaquePointer?
        let st: cmdop_status
        let message: String
        var o = cmdop_exec_options()
        try check(cmdop_exec_options_init(&o, UInt32(CMDOP_EXEC_OPTIONS_VERSION)))
        o.timeout_ms = timeoutMs
        o.cancel = cancel?.raw
        if let onChunk = onChunk {
            let box = Box(onChunk)
            o.on_output = { ud, _, data, len in
                guard let ud = ud, let data = data else { return }
                Unmanaged<Box<(Data) -> Void>>.fromOpaque(ud).takeUnretainedValue().value(Data(bytes: data, count: len))
            }
            o.user_data = Unmanaged.passRetained(box).toOpaque()
            o.free_user_data = { ud in
                // The library's finaliser: no callback runs any more.
                guard let ud = ud else { return }
                Unmanaged<Box<(Data) -> Void>>.fromOpaque(ud).release()
            }
            st = withExtendedLifetime(box) { cmdop_exec(raw, command, &o, &out) }
        } else {
            st = cmdop_exec(raw, command, &o, &out)
        }
        message = st == CMDOP_STATUS_OK ? "" : String(cString: cmdop_last_error_message())
        defer { cmdop_exec_result_free(out) }
        let result = out.map(ExecResult.init)
        if st != CMDOP_STATUS_OK {
            throw CmdopError(status: Status(st), message: message, partialResult: result)
        }
        return result!
    }

    /// Run a shell command on the selected machine. The blocking C call runs
    /// on a dispatch queue, not on the cooperative pool; cancelling the task
    /// kills the command (the call then throws `.cancelled`).
    public func execute(_ command: String, timeoutMs: UInt32 = 0) async throws -> ExecResult {
        let token = CancelToken()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (cont: CheckedContinuation<ExecResult, Error>) in
                DispatchQueue.global().async {
                    do {
                        cont.resume(returning: try self.executeBlocking(command, timeoutMs: timeoutMs, cancel: token))
                    } catch {
                        cont.resume(throwing: error)
                    }
                }
            }
        } onCancel: {
            token.cancel()
        }
    }

    /// The most recently active connected session of a machine whose
    /// hostname matches (nil: any machine).
    public func activeSession(hostname: String? = nil) throws -> Session {
        var out: OpaquePointer?
        try withOptionalCString(hostname) { h in try check(cmdop_get_active_session(raw, h, &out)) }
        defer { cmdop_session_free(out) }
        return Session(out)
    }

    /// Every session of the workspace, connected ones first, newest activity
    /// first (empty when there is none).
    public func sessions() throws -> [Session] {
        var out: OpaquePointer?
        try check(cmdop_list_sessions(raw, &out))
        defer { cmdop_session_list_free(out) }
        return (0..<cmdop_session_list_count(out)).map { Session(cmdop_session_list_get(out, $0)) }
    }

    /// The workspace's machines, online or not, sorted by hostname, matching
    /// `selector` (a label selector such as "env=prod,role in (web,api)";
    /// nil = all) and `hosts` (hostnames or globs, comma-separated; nil =
    /// any). A bad selector throws `.invalidArgument` saying what is wrong.
    public func machines(selector: String? = nil, hosts: String? = nil) throws -> [Machine] {
        var out: OpaquePointer?
        try withOptionalCString(selector) { sel in
            try withOptionalCString(hosts) { h in try check(cmdop_list_machines(raw, sel, h, &out)) }
        }
        defer { cmdop_machine_list_free(out) }
        return (0..<cmdop_machine_list_count(out)).map { Machine(cmdop_machine_list_get(out, $0)) }
    }

    /// One page (up to 100 entries) of directory `path` on the selected
    /// machine. `pageToken`: nil for the first page, else the previous
    /// page's `nextPageToken`.
    public func listFiles(_ path: String, pageToken: String? = nil, includeHidden: Bool = false) throws -> FileList {
        var out: OpaquePointer?
        try withOptionalCString(pageToken) { token in
            try check(cmdop_list_files_page(raw, path, token, includeHidden, &out))
        }
        defer { cmdop_file_list_free(out) }
        func str(_ p: UnsafePointer<CChar>?) -> String { p.map { String(cString: $0) } ?? "" }
        let entries: [FileEntry] = (0..<cmdop_file_list_count(out)).map { i in
            let e = cmdop_file_list_get(out, i)
            return FileEntry(name: str(cmdop_file_entry_name(e)), path: str(cmdop_file_entry_path(e)),
                             type: FileType(cmdop_file_entry_type(e)), size: cmdop_file_entry_size(e),
                             mode: cmdop_file_entry_mode(e), mtime: cmdop_file_entry_mtime(e))
        }
        return FileList(path: str(cmdop_file_list_path(out)), entries: entries,
                        nextPageToken: str(cmdop_file_list_next_page_token(out)))
    }

    /// The whole content of file `path` on the selected machine.
    public func readFile(_ path: String) throws -> Data {
        var out: OpaquePointer?
        try check(cmdop_read_file(raw, path, &out))
        defer { cmdop_bytes_free(out) }
        guard let p = cmdop_bytes_data(out) else { return Data() }
        return Data(bytes: p, count: cmdop_bytes_len(out))
    }

    /// Create or replace file `path` on the selected machine.
    public func writeFile(_ path: String, _ data: Data) throws {
        try data.withUnsafeBytes { (buf: UnsafeRawBufferPointer) in
            try check(cmdop_write_file(raw, path, buf.bindMemory(to: UInt8.self).baseAddress, buf.count))
        }
    }

    /// Called on the client's event thread when it connects or reconnects
    /// (nil removes it). Keep it short; do not call blocking methods in it.
    public func onConnect(_ fn: (() -> Void)?) throws {
        guard let fn = fn else { return try check(cmdop_on_connect(raw, nil, nil, nil)) }
        let ud = Unmanaged.passRetained(Box(fn) as AnyObject).toOpaque()
        let st = cmdop_on_connect(raw, { ud in
            guard let ud = ud else { return }
            (Unmanaged<AnyObject>.fromOpaque(ud).takeUnretainedValue() as! Box<() -> Void>).value()
        }, ud, releaseBox)
        if st != CMDOP_STATUS_OK { Unmanaged<AnyObject>.fromOpaque(ud).release() }
        try check(st)
    }

    /// Called when the connection is gone, with the reason and whether the
    /// library keeps trying by itself (false: final; `connect()` to try
    /// again). nil removes it.
    public func onDisconnect(_ fn: ((_ reason: String, _ willReconnect: Bool) -> Void)?) throws {
        guard let fn = fn else { return try check(cmdop_on_disconnect(raw, nil, nil, nil)) }
        let ud = Unmanaged.passRetained(Box(fn) as AnyObject).toOpaque()
        let st = cmdop_on_disconnect(raw, { ud, reason, willReconnect in
            guard let ud = ud else { return }
            let fn = (Unmanaged<AnyObject>.fromOpaque(ud).takeUnretainedValue() as! Box<(String, Bool) -> Void>).value
            fn(reason.map { String(cString: $0) } ?? "", willReconnect)
        }, ud, releaseBox)
        if st != CMDOP_STATUS_OK { Unmanaged<AnyObject>.fromOpaque(ud).release() }
        try check(st)
    }

    /// Receives the new OAuth tokens after an automatic refresh, to store
    /// them (nil removes it). Same rules as `onConnect`.
    public func onTokens(_ fn: ((_ accessToken: String, _ refreshToken: String) -> Void)?) throws {
        guard let fn = fn else { return try check(cmdop_on_token_refresh(raw, nil, nil, nil)) }
        let ud = Unmanaged.passRetained(Box(fn) as AnyObject).toOpaque()
        let st = cmdop_on_token_refresh(raw, { ud, access, refresh in
            guard let ud = ud else { return }
            let fn = (Unmanaged<AnyObject>.fromOpaque(ud).takeUnretainedValue() as! Box<(String, String) -> Void>).value
            fn(access.map { String(cString: $0) } ?? "", refresh.map { String(cString: $0) } ?? "")
        }, ud, releaseBox)
        if st != CMDOP_STATUS_OK { Unmanaged<AnyObject>.fromOpaque(ud).release() }
        try check(st)
    }

    /// Called for every failed call and background failure (nil removes it).
    public func onError(_ fn: ((CmdopError) -> Void)?) throws {
        guard let fn = fn else { return try check(cmdop_on_error(raw, nil, nil, nil)) }
        let ud = Unmanaged.passRetained(Box(fn) as AnyObject).toOpaque()
        let st = cmdop_on_error(raw, { ud, status, message in
            guard let ud = ud else { return }
            let fn = (Unmanaged<AnyObject>.fromOpaque(ud).takeUnretainedValue() as! Box<(CmdopError) -> Void>).value
            fn(CmdopError(status: Status(status), message: message.map { String(cString: $0) } ?? ""))
        }, ud, releaseBox)
        if st != CMDOP_STATUS_OK { Unmanaged<AnyObject>.fromOpaque(ud).release() }
        try check(st)
    }
}

/// Calls `body` with a C string for `s`, or NULL for nil.
/// Calls `body` with a C array of C copies of `strings` and its count
/// (nil and 0 when empty); the copies live until `body` returns.
func withCStringArray<R>(_ strings: [String],
                         _ body: (UnsafePointer<UnsafePointer<CChar>?>?, Int) throws -> R) rethrows -> R {
    if strings.isEmpty { return try body(nil, 0) }
    let copies: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    defer { copies.forEach { free($0) } }
    let entries: [UnsafePointer<CChar>?] = copies.map { $0.map { UnsafePointer($0) } }
    return try entries.withUnsafeBufferPointer { try body($0.baseAddress, strings.count) }
}

func withOptionalCString<R>(_ s: String?, _ body: (UnsafePointer<CChar>?) throws -> R) rethrows -> R {
    guard let s = s else { return try body(nil) }
    return try s.withCString { try body($0) }
}
