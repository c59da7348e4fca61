import CCmdop

/// Outcome of a libcmdop call (the C `cmdop_status` values, which never
/// change).
public struct Status: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    init(_ c: cmdop_status) { self.rawValue = c.rawValue }

    public static let ok = Status(CMDOP_STATUS_OK)
    public static let invalidArgument = Status(CMDOP_STATUS_INVALID_ARGUMENT)
    public static let unauthenticated = Status(CMDOP_STATUS_UNAUTHENTICATED)
    public static let notFound = Status(CMDOP_STATUS_NOT_FOUND)
    public static let ambiguous = Status(CMDOP_STATUS_AMBIGUOUS)
    public static let timeout = Status(CMDOP_STATUS_TIMEOUT)
    public static let unavailable = Status(CMDOP_STATUS_UNAVAILABLE)
    public static let disconnected = Status(CMDOP_STATUS_DISCONNECTED)
    public static let cancelled = Status(CMDOP_STATUS_CANCELLED)
    public static let `protocol` = Status(CMDOP_STATUS_PROTOCOL)
    public static let `internal` = Status(CMDOP_STATUS_INTERNAL)
    public static let notSupported = Status(CMDOP_STATUS_NOT_SUPPORTED)
    public static let inCallback = Status(CMDOP_STATUS_IN_CALLBACK)
    public static let panic = Status(CMDOP_STATUS_PANIC)
    public static let permissionDenied = Status(CMDOP_STATUS_PERMISSION_DENIED)
    public static let operationFailed = Status(CMDOP_STATUS_OPERATION_FAILED)
    /// An execute reached the agent but how it ended is not known; it was
    /// not confirmed killed. `partialResult` holds the output so far.
    public static let outcomeUnknown = Status(CMDOP_STATUS_OUTCOME_UNKNOWN)
    /// The server refused the call: the API key's scope does not allow the
    /// operation (the message names it).
    public static let notAllowed = Status(CMDOP_STATUS_NOT_ALLOWED)

    /// The library's short description ("timed out", ...).
    public var description: String { String(cString: cmdop_status_str(Int32(bitPattern: rawValue))) }
}

/// A failed libcmdop call: its status and the library's message, which says
/// what happened and what to do next.
public struct CmdopError: Error, CustomStringConvertible {
    public let status: Status
    public let message: String
    /// For a timed-out execute: what the command printed before it was killed.
    public let partialResult: ExecResult?

    public init(status: Status, message: String, partialResult: ExecResult? = nil) {
        self.status = status
        self.message = message
        self.partialResult = partialResult
    }

    public var description: String { "cmdop: \(status): \(message)" }
}

/// Throws a CmdopError for a failed status, with this thread's message. Call
/// it right after the C call, on the same thread (synchronous code stays on
/// its thread).
@inline(__always)
func check(_ st: cmdop_status) throws {
    if st != CMDOP_STATUS_OK {
        throw CmdopError(status: Status(st), message: String(cString: cmdop_last_error_message()))
    }
}
