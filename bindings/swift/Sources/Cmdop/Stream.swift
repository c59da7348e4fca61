import CCmdop
import Dispatch
import Foundation

/// The user_data of one attachment. The C side holds one retained
/// reference, given up exactly once: after the final (NULL, 0) call, or once
/// cmdop_attachment_close() has returned, whichever comes first. The stream
/// holds its own reference, so the sink outlives every use by the stream.
final class OutputSink {
    let onOutput: (Data) -> Void
    let onEnd: (() -> Void)?
    private let lock = NSLock()
    private var closed = false
    private var cReferenceReleased = false
    /// The delivery thread while it runs a callback, to spot close() from it.
    private var deliveringThread: pthread_t?

    init(onOutput: @escaping (Data) -> Void, onEnd: (() -> Void)?) {
        self.onOutput = onOutput
        self.onEnd = onEnd
    }

    /// Marks the stream closed: no user callback runs after this.
    func markClosed() {
        lock.lock()
        closed = true
        lock.unlock()
    }

    /// Whether the calling thread is inside one of this sink's callbacks.
    var isCallingThreadDelivering: Bool {
        lock.lock()
        defer { lock.unlock() }
        guard let t = deliveringThread else { return false }
        return pthread_equal(t, pthread_self()) != 0
    }

    /// Runs `body` as a delivery unless the stream was closed.
    func deliver(_ body: () -> Void) {
        lock.lock()
        if closed {
            lock.unlock()
            return
        }
        deliveringThread = pthread_self()
        lock.unlock()
        body()
        lock.lock()
        deliveringThread = nil
        lock.unlock()
    }

    /// Gives up the C side's reference, once. Only call it when the library
    /// will not call the trampoline any more.
    func releaseCReference() {
        lock.lock()
        let first = !cReferenceReleased
        cReferenceReleased = true
        lock.unlock()
        if first { Unmanaged.passUnretained(self).release() }
    }
}

/// Receives an attachment's output on the library's delivery thread.
private let outputTrampoline: cmdop_attach_output_fn = { ud, data, len in
    guard let ud = ud else { return }
    let sink = Unmanaged<OutputSink>.fromOpaque(ud).takeUnretainedValue()
    guard let data = data, len > 0 else {
        // The final call: the stream ended and the library calls no more.
        sink.deliver { sink.onEnd?() }
        sink.releaseCReference()
        return
    }
    let chunk = Data(bytes: data, count: len)
    sink.deliver { sink.onOutput(chunk) }
}

/// A live attachment to a session's terminal, made by `Client.attach`
/// (named so as not to clash with Foundation's `Stream`).
///
/// Thread-safe. `close()` (or `deinit`) detaches; the session keeps running.
public final class TerminalStream: @unchecked Sendable {
    private let lock = NSLock()
    private var raw: OpaquePointer?
    private let sink: OutputSink
    /// Keeps the client, and so the attachment, alive.
    private let client: Client

    init(raw: OpaquePointer, sink: OutputSink, client: Client) {
        self.raw = raw
        self.sink = sink
        self.client = client
    }

    deinit { close() }

    /// Types `data` into the session's terminal (send "\n" to run a line).
    /// Throws `.disconnected` once the stream ended or was closed.
    public func write(_ data: Data) throws {
        if data.isEmpty { return }
        try withRaw { s in
            try data.withUnsafeBytes { (buf: UnsafeRawBufferPointer) in
                try check(cmdop_attachment_write(s, buf.bindMemory(to: UInt8.self).baseAddress, buf.count))
            }
        }
    }

    /// Types `text` (UTF-8) into the session's terminal.
    public func write(_ text: String) throws { try write(Data(text.utf8)) }

    /// Resizes the session's terminal, in character cells (both above 0).
    public func resize(cols: UInt16, rows: UInt16) throws {
        try withRaw { s in try check(cmdop_attachment_resize(s, cols, rows)) }
    }

    /// Detaches and frees the stream. After it returns no callback runs any
    /// more (when called from a callback, that one is the last). Idempotent.
    public func close() {
        sink.markClosed()
        lock.lock()
        let s = raw
        raw = nil
        lock.unlock()
        guard let s = s else { return }
        let sink = self.sink
        if sink.isCallingThreadDelivering {
            // Closing from the delivery thread cannot wait for that thread:
            // finish on another one, which waits for the delivery to stop.
            DispatchQueue.global().async {
                _ = cmdop_attachment_close(s)
                sink.releaseCReference()
            }
        } else {
            _ = cmdop_attachment_close(s)
            sink.releaseCReference()
        }
    }

    /// Runs `body` with the C stream, which close() cannot free meanwhile.
    private func withRaw(_ body: (OpaquePointer) throws -> Void) throws {
        lock.lock()
        defer { lock.unlock() }
        guard let s = raw else {
            throw CmdopError(status: .disconnected,
                             message: "the stream was closed; attach again with Client.attach")
        }
        try body(s)
    }
}

extension Client {
    /// Attaches to session `sessionID` (see `activeSession`, `sessions`):
    /// `onOutput` receives the terminal's output as it is printed, in order,
    /// one call at a time on a library thread dedicated to the stream.
    /// `onEnd` runs once if the stream ends by itself (session closed, agent
    /// gone, error, or this client closed). Callbacks may call the
    /// stream's `close()`; blocking calls (`write`, `resize`, Client
    /// methods) throw `.inCallback` there, so hand them to another queue. A
    /// slow callback slows the stream down.
    public func attach(sessionID: String, onOutput: @escaping (Data) -> Void,
                       onEnd: (() -> Void)? = nil) throws -> TerminalStream {
        let sink = OutputSink(onOutput: onOutput, onEnd: onEnd)
        let ud = Unmanaged.passRetained(sink).toOpaque()
        var out: OpaquePointer?
        let st = cmdop_attach(raw, sessionID, outputTrampoline, ud, nil, &out)
        if st != CMDOP_STATUS_OK {
            let error = CmdopError(status: Status(st), message: String(cString: cmdop_last_error_message()))
            sink.releaseCReference() // the library keeps user_data only on success
            throw error
        }
        return TerminalStream(raw: out!, sink: sink, client: self)
    }
}
