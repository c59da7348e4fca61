"""File* calls as the official Python SDK (efd3c33) sends them, checked
against a real control plane and agent.

The SDK's files service sends `session_id=""` unless its own set_machine
was called; the walkthrough selects the machine on the terminal service
(GetSessionByHostname) and then uses files on the same connection. The SDK
reads `result` and never `success`, so every failure has to be a gRPC
error status to reach the caller.
"""

import os
import sys

import grpc

import terminal_pb2 as pb
import terminal_pb2_grpc as rpc

KEY = os.environ["CMDOP_API_KEY"]
SERVER = os.environ["CMDOP_SERVER"]
HOST = os.environ["CMDOP_TEST_HOSTNAME"]
TEST_DIR = os.environ["CMDOP_TEST_DIR"]
HOME = os.path.join(TEST_DIR, "home")
META = [("authorization", f"Bearer {KEY}")]
SDK_TIMEOUT = 30.0  # the SDK's default; FileRead uses 300 s

failed = 0


def check(name, fn):
    global failed
    try:
        detail = fn()
        print(f"ok   {name}" + (f" ({detail})" if detail else ""))
    except Exception as e:  # noqa: BLE001 - report every failure and go on
        failed += 1
        print(f"FAIL {name}: {type(e).__name__}: {e}")


def stub():
    # Its own connection: gRPC Python otherwise shares one connection among
    # all channels to the same target in a process.
    channel = grpc.insecure_channel(SERVER.removeprefix("http://"),
                                    options=[("grpc.use_local_subchannel_pool", 1)])
    return rpc.TerminalStreamingServiceStub(channel)


def expect_error(call, code, text=None):
    try:
        answer = call()
    except grpc.RpcError as e:
        assert e.code() == code, f"got {e.code()} ({e.details()}), want {code}"
        if text:
            assert text in e.details(), f"{text!r} not in {e.details()!r}"
        return f"{e.code().name}: {e.details()}"
    raise AssertionError(f"no error status; the SDK would read {answer!r} as success")


# The SDK's requests, field for field (session_id "" as after terminal.set_machine).
def sdk_list(s, path):
    return s.FileListDirectory(
        pb.FileListDirectoryRpcRequest(session_id="", path=path, page_size=100, include_hidden=False),
        metadata=META, timeout=SDK_TIMEOUT)


def sdk_read(s, path):
    return s.FileRead(pb.FileReadRpcRequest(session_id="", path=path, offset=0, length=0),
                      metadata=META, timeout=300.0)


def sdk_write(s, path, content):
    return s.FileWrite(pb.FileWriteRpcRequest(session_id="", path=path, content=content, create_parents=False),
                       metadata=META, timeout=SDK_TIMEOUT)


def sdk_delete(s, path, recursive=False):
    return s.FileDelete(pb.FileDeleteRpcRequest(session_id="", path=path, recursive=recursive),
                        metadata=META, timeout=SDK_TIMEOUT)


def sdk_copy(s, source, destination):
    return s.FileCopy(pb.FileCopyRpcRequest(session_id="", source_path=source, destination_path=destination),
                      metadata=META, timeout=SDK_TIMEOUT)


def sdk_move(s, source, destination):
    return s.FileMove(pb.FileMoveRpcRequest(session_id="", source_path=source, destination_path=destination),
                      metadata=META, timeout=SDK_TIMEOUT)


def sdk_info(s, path):
    return s.FileGetInfo(pb.FileGetInfoRpcRequest(session_id="", path=path), metadata=META, timeout=SDK_TIMEOUT)


def sdk_mkdir(s, path, create_parents=True):
    return s.FileCreateDirectory(
        pb.FileCreateDirectoryRpcRequest(session_id="", path=path, create_parents=create_parents),
        metadata=META, timeout=SDK_TIMEOUT)


def set_machine(s, hostname):
    r = s.GetSessionByHostname(pb.GetSessionByHostnameRequest(hostname=hostname, partial_match=True),
                               metadata=META, timeout=SDK_TIMEOUT)
    assert r.found, f"set_machine({hostname!r}) failed: {r.error}"
    return r.session_id


def main():
    fresh = stub()
    check("no machine selected: FileListDirectory is FAILED_PRECONDITION",
          lambda: expect_error(lambda: sdk_list(fresh, TEST_DIR), grpc.StatusCode.FAILED_PRECONDITION,
                               "pick a machine first with set_machine"))
    check("no machine selected: FileRead and FileWrite fail too", lambda: [
        expect_error(lambda: sdk_read(fresh, f"{TEST_DIR}/hello.txt"), grpc.StatusCode.FAILED_PRECONDITION),
        expect_error(lambda: sdk_write(fresh, f"{TEST_DIR}/nope.txt", b"x"), grpc.StatusCode.FAILED_PRECONDITION),
    ] and None)
    assert not os.path.exists(f"{TEST_DIR}/nope.txt")

    s = stub()
    check("terminal.set_machine (GetSessionByHostname)", lambda: set_machine(s, HOST))

    def listing():
        r = sdk_list(s, TEST_DIR)
        names = sorted(e.name for e in r.result.entries)
        assert "hello.txt" in names and "sub" in names, names
        return ", ".join(names)
    check("files.list after set_machine lists the directory", listing)

    def read():
        r = sdk_read(s, f"{TEST_DIR}/hello.txt")
        assert r.result.content == b"hello from interop\n", r.result.content
    check("files.read after set_machine returns the content", read)

    def write():
        sdk_write(s, f"{TEST_DIR}/written.txt", b"written by the walkthrough\n")
        with open(f"{TEST_DIR}/written.txt", "rb") as f:
            assert f.read() == b"written by the walkthrough\n"
    check("files.write after set_machine writes the file", write)

    missing = f"{TEST_DIR}/does-not-exist"
    NF = grpc.StatusCode.NOT_FOUND
    check("list of a missing directory is NOT_FOUND", lambda: expect_error(lambda: sdk_list(s, missing), NF))
    check("read of a missing file is NOT_FOUND", lambda: expect_error(lambda: sdk_read(s, missing), NF))
    check("write into a missing directory is an error",
          lambda: expect_error(lambda: sdk_write(s, f"{missing}/x.txt", b"x"), NF))
    check("delete of a missing file is NOT_FOUND", lambda: expect_error(lambda: sdk_delete(s, missing), NF))
    check("copy of a missing file is NOT_FOUND",
          lambda: expect_error(lambda: sdk_copy(s, missing, f"{TEST_DIR}/copy"), NF))
    check("move of a missing file is NOT_FOUND",
          lambda: expect_error(lambda: sdk_move(s, missing, f"{TEST_DIR}/moved"), NF))
    check("info of a missing file is NOT_FOUND", lambda: expect_error(lambda: sdk_info(s, missing), NF))
    check("mkdir over a file is an error",
          lambda: expect_error(lambda: sdk_mkdir(s, f"{TEST_DIR}/hello.txt", create_parents=False),
                               grpc.StatusCode.ALREADY_EXISTS))
    check("read of a directory is an error",
          lambda: expect_error(lambda: sdk_read(s, f"{TEST_DIR}/sub"), grpc.StatusCode.FAILED_PRECONDITION))

    def empty_path_delete():
        detail = expect_error(lambda: sdk_delete(s, "", recursive=True), grpc.StatusCode.INVALID_ARGUMENT)
        assert os.path.exists(f"{HOME}/keep.txt"), "the agent's home was deleted"
        return detail
    check("delete with an empty path is INVALID_ARGUMENT and deletes nothing", empty_path_delete)

    def home_delete():
        detail = expect_error(lambda: sdk_delete(s, "~", recursive=True), grpc.StatusCode.PERMISSION_DENIED)
        assert os.path.exists(f"{HOME}/keep.txt"), "the agent's home was deleted"
        return detail
    check("delete of the home directory is refused", home_delete)

    def other_connection():
        return expect_error(lambda: sdk_list(stub(), TEST_DIR), grpc.StatusCode.FAILED_PRECONDITION)
    check("another connection's set_machine does not count", other_connection)

    print(f"\n{'all passed' if failed == 0 else f'{failed} failed'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
