// Tests against a real control plane and agent. They read CMDOP_HOST,
// CMDOP_PORT, CMDOP_API_KEY and CMDOP_TEST_HOSTNAME (the repository's
// tests/harness.sh exports them); without them the live tests are skipped.
import Cmdop
import Foundation
import XCTest

final class ClientTests: XCTestCase {
    private func stack() throws -> (host: String, port: UInt16, machine: String) {
        let env = ProcessInfo.processInfo.environment
        guard let host = env["CMDOP_HOST"], let port = env["CMDOP_PORT"].flatMap(UInt16.init),
              let machine = env["CMDOP_TEST_HOSTNAME"] else {
            throw XCTSkip("set CMDOP_HOST, CMDOP_PORT, CMDOP_TEST_HOSTNAME (tests/harness.sh does)")
        }
        return (host, port, machine)
    }

    private func connected() throws -> Client {
        let s = try stack()
        var o = Options()
        o.timeoutMs = 15_000
        let c = try Client(host: s.host, port: s.port, options: o)
        try c.connect()
        try c.setMachine(s.machine)
        return c
    }

    func testVersion() {
        XCTAssertFalse(cmdopVersion.isEmpty)
    }

    func testInvalidArgumentThrows() {
        XCTAssertThrowsError(try Client(host: "", port: 1)) { error in
            let e = error as? CmdopError
            XCTAssertEqual(e?.status, .invalidArgument)
            XCTAssertFalse(e?.message.isEmpty ?? true)
        }
    }

    func testServerListSkipsADeadFirstServer() throws {
        let s = try stack()
        var o = Options()
        o.timeoutMs = 15_000
        // Port 1 on loopback: nothing listens there.
        o.servers = ["127.0.0.1:1", "\(s.host):\(s.port)"]
        let c = try Client(host: "", port: 0, options: o)
        try c.connect()
        XCTAssertEqual(try c.connectionInfo().server, "http://\(s.host):\(s.port)")
        o.servers = ["127.0.0.1:1", ""]
        XCTAssertThrowsError(try Client(host: "", port: 0, options: o)) { error in
            XCTAssertEqual((error as? CmdopError)?.status, .invalidArgument)
        }
    }

    func testExecute() async throws {
        let c = try connected()
        let r = try await c.execute("echo swift-$((40+2))")
        XCTAssertTrue(r.outputString.contains("swift-42"))
        XCTAssertEqual(r.exitCode, 0)
    }

    func testTimeoutCarriesPartialOutput() throws {
        let c = try connected()
        XCTAssertThrowsError(try c.executeBlocking("echo before-sleep; sleep 30", timeoutMs: 1500)) { error in
            let e = error as? CmdopError
            XCTAssertEqual(e?.status, .timeout)
            XCTAssertTrue(e?.partialResult?.outputString.contains("before-sleep") ?? false)
        }
    }

    func testTaskCancellationKillsTheCommand() async throws {
        let c = try connected()
        let task = Task { try await c.execute("sleep 30") }
        try await Task.sleep(nanoseconds: 500_000_000)
        task.cancel()
        do {
            _ = try await task.value
            XCTFail("the command should have been cancelled")
        } catch let e as CmdopError {
            XCTAssertEqual(e.status, .cancelled)
        }
    }

    func testCallbacksAndFiles() throws {
        let s = try stack()
        let c = try Client(host: s.host, port: s.port)
        let connected = expectation(description: "on_connect")
        try c.onConnect { connected.fulfill() }
        try c.connect()
        wait(for: [connected], timeout: 5)
        try c.setMachine(s.machine)
        let path = NSTemporaryDirectory() + "cmdop-swift-\(getpid()).bin"
        try c.writeFile(path, Data("bytes\u{0}here".utf8))
        XCTAssertEqual(try c.readFile(path), Data("bytes\u{0}here".utf8))
        XCTAssertEqual(try c.activeSession(hostname: s.machine).hostname, s.machine)
        try? FileManager.default.removeItem(atPath: path)
    }

    func testSessionsAndListing() throws {
        let s = try stack()
        let c = try connected()
        let active = try c.activeSession(hostname: s.machine)
        XCTAssertTrue(try c.sessions().contains { $0.id == active.id })
        let dir = NSTemporaryDirectory() + "cmdop-swift-list-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try c.writeFile(dir + "/a.txt", Data("abc".utf8))
        let list = try c.listFiles(dir)
        XCTAssertEqual(list.entries.map(\.name), ["a.txt"])
        XCTAssertEqual(list.entries.first?.type, .file)
        XCTAssertEqual(list.entries.first?.size, 3)
        XCTAssertEqual(list.nextPageToken, "")
    }

    func testAttachSeesTerminalOutput() throws {
        let s = try stack()
        let c = try connected()
        let session = try c.activeSession(hostname: s.machine)
        let seen = expectation(description: "attach-42 in the output")
        let lock = NSLock()
        var output = ""
        var fulfilled = false
        let stream = try c.attach(sessionID: session.id, onOutput: { data in
            lock.lock()
            defer { lock.unlock() }
            output += String(decoding: data, as: UTF8.self)
            if !fulfilled && output.contains("attach-42") {
                fulfilled = true
                seen.fulfill()
            }
        })
        try stream.resize(cols: 100, rows: 30)
        try stream.write("echo attach-$((6*7))\n")
        wait(for: [seen], timeout: 15)
        stream.close()
        stream.close() // idempotent
        XCTAssertThrowsError(try stream.write("true\n")) { error in
            XCTAssertEqual((error as? CmdopError)?.status, .disconnected)
        }
    }

    func testExecuteWithOptionsAndStreamedStdin() throws {
        let c = try connected()
        let dir = NSTemporaryDirectory() + "cmdop-swift-exec-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = ExecOptions()
        o.stdin = Data("from-stdin".utf8)
        o.env = ["CMDOP_SWIFT_A=alpha"]
        o.workingDirectory = dir
        let r = try c.executeBlocking("cat; echo \" $CMDOP_SWIFT_A\"; pwd", options: o)
        XCTAssertTrue(r.outputString.contains("from-stdin alpha"))
        XCTAssertTrue(r.outputString.contains("cmdop-swift-exec-"))

        let input = try ExecStdin()
        let payload = Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        let writer = Thread {
            try? input.write(payload)
            try? input.close()
        }
        writer.start()
        _ = try c.executeBlocking("cat > '\(dir)/fed.bin'", options: ExecOptions(), stdin: input)
        XCTAssertEqual(FileManager.default.contents(atPath: dir + "/fed.bin"), payload)
    }

    func testExecFleetOnTheHostList() throws {
        let s = try stack()
        let c = try connected()
        var out: [String: Data] = [:] // by hostname
        var ended: [FleetResult] = []
        var fleet = FleetOptions()
        fleet.hosts = s.machine
        fleet.onOutput = { machine, kind, data in
            if kind == .stdout { out[machine.hostname, default: Data()].append(data) }
        }
        fleet.onResult = { ended.append($0) }
        var o = ExecOptions()
        o.env = ["CMDOP_SWIFT_FLEET=fleet-x"]
        let results = try c.execFleetBlocking("echo \"$CMDOP_SWIFT_FLEET\" $((40+2))", fleet: fleet, options: o)
        XCTAssertEqual(results.count, 1)
        XCTAssertEqual(results.first?.machine.hostname, s.machine)
        XCTAssertEqual(results.first?.status, .ok)
        XCTAssertEqual(results.first?.exitCode, 0)
        XCTAssertEqual(results.first?.stdoutString, "fleet-x 42\n")
        XCTAssertEqual(out[s.machine], Data("fleet-x 42\n".utf8))
        XCTAssertEqual(ended.map(\.machine.hostname), [s.machine])

        let failed = try c.execFleetBlocking("exit 7", fleet: fleet)
        XCTAssertEqual(failed.first?.exitCode, 7)
        XCTAssertEqual(failed.first?.succeeded, false)

        var short = ExecOptions()
        short.timeoutMs = 700
        let timedOut = try c.execFleetBlocking("echo started; sleep 30", fleet: fleet, options: short)
        XCTAssertEqual(timedOut.first?.status, .timeout)
        XCTAssertEqual(timedOut.first?.stdoutString, "started\n")

        var nothing = FleetOptions()
        nothing.selector = "no-such-label=anywhere"
        XCTAssertThrowsError(try c.execFleetBlocking("true", fleet: nothing)) { error in
            XCTAssertEqual((error as? CmdopError)?.status, .notFound)
        }
        nothing.selector = nil
        nothing.hosts = "no-such-host-anywhere"
        XCTAssertThrowsError(try c.execFleetBlocking("true", fleet: nothing)) { error in
            XCTAssertEqual((error as? CmdopError)?.status, .notFound)
        }
    }

    func testUploadDownloadKeepBytesAndMode() throws {
        let c = try connected()
        let dir = NSTemporaryDirectory() + "cmdop-swift-xfer-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = Data((0..<2_000_003).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        FileManager.default.createFile(atPath: dir + "/src.bin", contents: data,
                                       attributes: [.posixPermissions: 0o751])
        var o = TransferOptions()
        o.keepMode = true
        o.createParents = true
        var last: UInt64 = 0
        try c.uploadFileBlocking(dir + "/src.bin", to: dir + "/deep/remote.bin", options: o) { done, _ in last = done }
        XCTAssertEqual(last, UInt64(data.count))
        try c.downloadFileBlocking(dir + "/deep/remote.bin", to: dir + "/back.bin", options: o)
        XCTAssertEqual(FileManager.default.contents(atPath: dir + "/back.bin"), data)
        let mode = try FileManager.default.attributesOfItem(atPath: dir + "/back.bin")[.posixPermissions] as? Int
        XCTAssertEqual(mode, 0o751)
        var streamed = Data()
        XCTAssertEqual(try c.readFileBlocking(dir + "/back.bin") { streamed.append($0) }, UInt64(data.count))
        XCTAssertEqual(streamed, data)

        let token = CancelToken()
        XCTAssertThrowsError(try c.downloadFileBlocking(dir + "/src.bin", to: dir + "/never.bin", cancel: token) {
            done, total in if done >= total / 2 && done < total { token.cancel() }
        }) { error in
            XCTAssertEqual((error as? CmdopError)?.status, .cancelled)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/never.bin"))
    }

    func testOAuthNeedsBothTokens() {
        XCTAssertThrowsError(try Client.remoteOAuth(accessToken: "", refreshToken: "r")) { error in
            XCTAssertEqual((error as? CmdopError)?.status, .unauthenticated)
        }
        XCTAssertNoThrow(try Client.remoteOAuth(accessToken: "a", refreshToken: "r").onTokens { _, _ in })
    }
}
