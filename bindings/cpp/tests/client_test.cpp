// cmdop.hpp against a real control plane and agent. Reads CMDOP_HOST,
// CMDOP_PORT, CMDOP_API_KEY and CMDOP_TEST_HOSTNAME, as exported by
// tests/harness.sh (bindings/run_tests.sh starts the stack); without them
// every test here is skipped.
#include "cmdop.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sys/stat.h>
#include <mutex>
#include <string>
#include <thread>
#include <stdlib.h>
#include <unistd.h>
#include <vector>

namespace {

using namespace std::chrono_literals;

struct Stack {
  std::string host, machine;
  uint16_t port = 0;

  static const Stack *get() {
    static const Stack *stack = [] () -> const Stack * {
      const char *h = std::getenv("CMDOP_HOST"), *p = std::getenv("CMDOP_PORT"),
                 *m = std::getenv("CMDOP_TEST_HOSTNAME");
      if (!h || !p || !m) return nullptr;
      return new Stack{h, m, static_cast<uint16_t>(std::atoi(p))};
    }();
    return stack;
  }
};

/// A fresh directory under $TMPDIR (or /tmp), removed with its content.
struct TempDir {
  std::string path;
  TempDir() {
    const char *base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/cmdop-cpp-XXXXXX";
    if (::mkdtemp(tmpl.data())) path = tmpl;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path.empty()) std::filesystem::remove_all(path, ignored);
  }
  TempDir(const TempDir &) = delete;
  TempDir &operator=(const TempDir &) = delete;
};

class Live : public ::testing::Test {
 protected:
  void SetUp() override {
    stack_ = Stack::get();
    if (!stack_) GTEST_SKIP() << "set CMDOP_HOST, CMDOP_PORT, CMDOP_TEST_HOSTNAME (bindings/run_tests.sh does)";
  }

  cmdop::Client connected() {
    cmdop::Options o;
    o.timeout = 15s;
    cmdop::Client c = cmdop::Client::local(stack_->host, stack_->port, o);
    c.connect();
    c.set_machine(stack_->machine);
    return c;
  }

  const Stack *stack_ = nullptr;
};

TEST_F(Live, ExecuteReturnsOutputAndExitCode) {
  cmdop::Client c = connected();
  EXPECT_TRUE(c.is_connected());
  cmdop::ExecResult r = c.execute("echo cpp-$((40+2))");
  EXPECT_NE(r.output().find("cpp-42"), std::string_view::npos) << r.output();
  EXPECT_EQ(r.exit_code(), 0);
  EXPECT_FALSE(r.timed_out());

  cmdop::ExecResult failed = c.execute("exit 3");
  EXPECT_EQ(failed.exit_code(), 3);
}

// The README's first snippet, as `cmdop dev` prints its environment: the
// server and key from $CMDOP_SERVER and $CMDOP_API_KEY like the cmdop
// command line (a loopback host:port means plaintext).
TEST_F(Live, RemoteReadsTheEnvironmentLikeTheCli) {
  ASSERT_NE(std::getenv("CMDOP_SERVER"), nullptr) << "bindings/run_tests.sh exports it from cmdop dev";
  auto c = cmdop::Client::remote("");
  c.connect();
  c.set_machine(stack_->machine);
  EXPECT_NE(c.execute("echo from-env").output().find("from-env"), std::string_view::npos);
}

TEST_F(Live, ResultsMoveAndOutliveTheirStatement) {
  cmdop::Client c = connected();
  std::vector<cmdop::ExecResult> results;
  for (int i = 0; i < 3; ++i) results.push_back(c.execute("echo n" + std::to_string(i)));
  for (int i = 0; i < 3; ++i)
    EXPECT_NE(results[i].output().find("n" + std::to_string(i)), std::string_view::npos);
}

TEST_F(Live, TimeoutThrowsWithPartialOutput) {
  cmdop::Client c = connected();
  const auto start = std::chrono::steady_clock::now();
  try {
    c.execute("echo before-sleep; sleep 30", 1500ms);
    FAIL() << "the command should have timed out";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::Timeout) << e.what();
    ASSERT_NE(e.partial_result(), nullptr);
    EXPECT_TRUE(e.partial_result()->timed_out());
    EXPECT_NE(e.partial_result()->output().find("before-sleep"), std::string_view::npos);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 15s);
}

TEST_F(Live, StreamingCallbackSeesEveryChunk) {
  cmdop::Client c = connected();
  std::string seen;
  cmdop::ExecResult r =
      c.execute("for i in 1 2 3; do echo line$i; sleep 0.1; done", 10s,
                [&](cmdop::StreamKind, std::string_view data) { seen.append(data); });
  EXPECT_NE(seen.find("line3"), std::string::npos) << seen;
  EXPECT_NE(r.output().find("line1"), std::string_view::npos);
}

TEST_F(Live, CancelFromAnotherThreadKillsTheCommand) {
  cmdop::Client c = connected();
  cmdop::CancelToken token;
  std::thread canceller([&] {
    std::this_thread::sleep_for(500ms);
    token.cancel();
  });
  const auto start = std::chrono::steady_clock::now();
  try {
    c.execute("sleep 30", 20s, [](cmdop::StreamKind, std::string_view) {}, &token);
    ADD_FAILURE() << "the command should have been cancelled";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::Cancelled) << e.what();
  }
  canceller.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
}

TEST_F(Live, ExceptionInChunkCallbackCancelsAndPropagates) {
  cmdop::Client c = connected();
  struct Stop {};
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(c.execute("echo go; sleep 30", 20s, [](cmdop::StreamKind, std::string_view) { throw Stop{}; }),
               Stop);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  // The client is still usable afterwards.
  EXPECT_EQ(c.execute("true").exit_code(), 0);
}

TEST_F(Live, ManyThreadsShareOneClient) {
  cmdop::Client c = connected();
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 3; ++i) {
        const std::string tag = "t" + std::to_string(t) + "i" + std::to_string(i);
        try {
          if (c.execute("echo " + tag).output().find(tag) != std::string_view::npos) ++good;
        } catch (const cmdop::Error &e) {
          ADD_FAILURE() << tag << ": " << e.what();
        }
      }
    });
  }
  for (auto &th : threads) th.join();
  EXPECT_EQ(good.load(), 12);
}

TEST_F(Live, ConnectCallbackFiresOnItsThreadAndIsReleased) {
  auto fired = std::make_shared<std::atomic<int>>(0);
  std::weak_ptr<std::atomic<int>> watch = fired;
  {
    cmdop::Client c = cmdop::Client::local(stack_->host, stack_->port);
    c.on_connect([fired] { ++*fired; });
    std::atomic<int> disconnects{0};
    std::atomic<int> reconnecting{0};
    c.on_disconnect([&disconnects, &reconnecting](std::string_view, bool will_reconnect) {
      if (will_reconnect) ++reconnecting;
      ++disconnects;
    });
    c.connect();
    for (int i = 0; i < 200 && fired->load() == 0; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(fired->load(), 1);
    c.set_machine(stack_->machine);
    c.close();
    for (int i = 0; i < 200 && disconnects.load() == 0; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(disconnects.load(), 1);
    EXPECT_EQ(reconnecting.load(), 0) << "close() is final";
    EXPECT_FALSE(c.is_connected());
    try {
      c.execute("true");
      ADD_FAILURE() << "a closed client cannot execute";
    } catch (const cmdop::Error &e) {
      EXPECT_EQ(e.status(), cmdop::Status::Disconnected) << e.what();
    }
    c.on_disconnect(nullptr);  // `disconnects` dies with this scope
    fired.reset();
  }
  for (int i = 0; i < 200 && !watch.expired(); ++i) std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(watch.expired());
}

TEST_F(Live, WrongKeyIsUnauthenticated) {
  cmdop::Options o;
  o.api_key = "cmdop_wrong_key_for_tests";
  o.timeout = 10s;
  cmdop::Client c = cmdop::Client::local(stack_->host, stack_->port, o);
  try {
    c.connect();
    FAIL() << "a wrong key must be rejected";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::Unauthenticated) << e.what();
    EXPECT_FALSE(e.message().empty());
  }
}

TEST_F(Live, UnknownMachineIsNotFound) {
  cmdop::Client c = connected();
  try {
    c.set_machine("no-such-machine-anywhere");
    FAIL() << "unknown machine accepted";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::NotFound) << e.what();
  }
}

TEST_F(Live, SessionsAndConnectionInfo) {
  cmdop::Client c = connected();
  cmdop::Session s = c.active_session(stack_->machine);
  EXPECT_EQ(s.hostname, stack_->machine);
  EXPECT_FALSE(s.id.empty());
  EXPECT_EQ(s.status, "connected");

  bool listed = false;
  for (const cmdop::Session &each : c.sessions()) listed = listed || each.id == s.id;
  EXPECT_TRUE(listed);

  std::vector<cmdop::Machine> machines = c.machines("cmdop.io/status=online", stack_->machine);
  ASSERT_EQ(machines.size(), 1u);
  EXPECT_EQ(machines[0].hostname, stack_->machine);
  EXPECT_TRUE(machines[0].online);
  EXPECT_EQ(machines[0].id.rfind("mach_", 0), 0u);
  EXPECT_EQ(machines[0].labels.at("cmdop.io/hostname"), stack_->machine);
  try {
    c.machines("env=");
    ADD_FAILURE() << "a bad selector was accepted";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::InvalidArgument) << e.what();
  }

  cmdop::ConnectionInfo info = c.connection_info();
  EXPECT_TRUE(info.connected);
  EXPECT_FALSE(info.tls);
  EXPECT_NE(info.server.find(std::to_string(stack_->port)), std::string::npos) << info.server;
  EXPECT_TRUE(info.has_capability(CMDOP_CAPABILITY_EXEC));
  EXPECT_TRUE(info.has_capability(CMDOP_CAPABILITY_FILES));
  EXPECT_FALSE(info.has_capability("exec"));
}

TEST_F(Live, ServerListSkipsADeadFirstServer) {
  cmdop::Options o;
  o.timeout = 15s;
  // Port 1 on loopback: nothing listens there.
  o.servers = {"127.0.0.1:1", stack_->host + ":" + std::to_string(stack_->port)};
  cmdop::Client c = cmdop::Client::local("", 0, o);
  c.connect();
  cmdop::ConnectionInfo info = c.connection_info();
  EXPECT_EQ(info.server, "http://" + o.servers[1]);
  c.set_machine(stack_->machine);
  cmdop::ExecResult r = c.execute("echo via-the-list");
  EXPECT_NE(r.output().find("via-the-list"), std::string_view::npos) << r.output();
}

TEST_F(Live, FilesRoundTrip) {
  cmdop::Client c = connected();
  // The agent runs on this machine: a local temporary directory is its too.
  TempDir tmp;
  ASSERT_FALSE(tmp.path.empty()) << "mkdtemp failed";
  const std::string &dir = tmp.path;
  const std::string content("binary\0data\n", 12);
  c.write_file(dir + "/a.bin", content);
  EXPECT_EQ(c.read_file(dir + "/a.bin"), content);

  cmdop::FileList list = c.list_files(dir);
  ASSERT_EQ(list.entries.size(), 1u);
  EXPECT_EQ(list.entries[0].name, "a.bin");
  EXPECT_EQ(list.entries[0].type, cmdop::FileType::File);
  EXPECT_EQ(list.entries[0].size, 12);
  EXPECT_TRUE(list.next_page_token.empty());

  try {
    c.read_file(dir + "/missing");
    ADD_FAILURE() << "reading a missing file must fail";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::NotFound) << e.what();
  }
}

TEST_F(Live, AttachSeesTerminalOutput) {
  cmdop::Client c = connected();
  const cmdop::Session s = c.active_session(stack_->machine);
  std::mutex mu;
  std::string seen;
  cmdop::Stream stream = c.attach(s.id, [&](std::string_view data) {
    std::lock_guard<std::mutex> lock(mu);
    seen.append(data);
  });
  stream.write("echo attached-$((6*7))\n");
  bool found = false;
  for (int i = 0; i < 500 && !found; ++i) {
    std::this_thread::sleep_for(10ms);
    std::lock_guard<std::mutex> lock(mu);
    found = seen.find("attached-42") != std::string::npos;
  }
  EXPECT_TRUE(found);
  stream.close();  // after this the callback (and `seen`) may go away
}

/// Content of a local file, or "<missing>" when it cannot be opened.
std::string slurp(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "<missing>";
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// `n` bytes of a non-repeating-looking pattern with every byte value.
std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 31 + i / 251) & 0xff);
  return s;
}

TEST_F(Live, ExecuteWithStdinEnvAndWorkingDirectory) {
  cmdop::Client c = connected();
  TempDir tmp;
  ASSERT_FALSE(tmp.path.empty()) << "mkdtemp failed";
  cmdop::ExecOptions o;
  o.stdin_data = std::string("in\0put\n", 7);
  o.env = {"CMDOP_CPP_A=alpha", "CMDOP_CPP_B=b c"};
  o.working_directory = tmp.path;
  o.timeout = 15s;
  std::string seen;
  cmdop::ExecResult r = c.execute("od -An -c; echo \"$CMDOP_CPP_A/$CMDOP_CPP_B\"; pwd; echo err >&2", o,
                                  [&](cmdop::StreamKind, std::string_view d) { seen.append(d); });
  EXPECT_EQ(r.exit_code(), 0);
  const std::string out(r.stdout_data());
  EXPECT_NE(out.find("i   n  \\0   p   u   t  \\n"), std::string::npos) << out;
  EXPECT_NE(out.find("alpha/b c\n"), std::string::npos) << out;
  EXPECT_NE(out.find(std::filesystem::canonical(tmp.path).string() + "\n"), std::string::npos) << out;
  EXPECT_EQ(r.stderr_data(), "err\n");
  EXPECT_NE(seen.find("alpha/b c"), std::string::npos) << seen;

  // discard_output keeps nothing in the result; the callback still sees it.
  o = {};
  o.discard_output = true;
  seen.clear();
  cmdop::ExecResult d = c.execute("echo kept-out", o, [&](cmdop::StreamKind, std::string_view x) { seen.append(x); });
  EXPECT_TRUE(d.output().empty());
  EXPECT_EQ(seen, "kept-out\n");

  o = {};
  o.working_directory = tmp.path + "/missing-dir";
  try {
    c.execute("true", o);
    ADD_FAILURE() << "a missing working directory must fail";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::OperationFailed) << e.what();
  }
}

TEST_F(Live, StreamedStdinWritesARemoteFile) {
  cmdop::Client c = connected();
  TempDir tmp;
  ASSERT_FALSE(tmp.path.empty()) << "mkdtemp failed";
  const std::string path = tmp.path + "/fed.bin";
  const std::string data = pattern(3 * 1024 * 1024 + 7);
  cmdop::ExecStdin in;
  std::exception_ptr writer_error;
  std::thread writer([&] {
    try {
      for (size_t off = 0; off < data.size(); off += 100000)
        in.write(std::string_view(data).substr(off, 100000));
      in.close();
    } catch (...) {
      writer_error = std::current_exception();
    }
  });
  cmdop::ExecOptions o;
  o.timeout = 60s;
  cmdop::ExecResult r = c.execute("cat > '" + path + "'", o, in);
  writer.join();
  ASSERT_FALSE(writer_error) << "the stdin writer failed";
  EXPECT_EQ(r.exit_code(), 0);
  EXPECT_TRUE(slurp(path) == data) << "the remote file differs from what was streamed";
  // One command per stdin.
  EXPECT_THROW(in.write("late"), cmdop::Error);
  try {
    c.execute("cat", o, in);
    ADD_FAILURE() << "a used stdin must be refused";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::InvalidArgument) << e.what();
  }
}

TEST_F(Live, UploadAndDownloadKeepBytesAndMode) {
  cmdop::Client c = connected();
  TempDir tmp;
  ASSERT_FALSE(tmp.path.empty()) << "mkdtemp failed";
  const std::string src = tmp.path + "/src.bin", remote = tmp.path + "/deep/er/remote.bin",
                    back = tmp.path + "/back.bin";
  const std::string data = pattern(2 * 1024 * 1024 + 3);
  { std::ofstream(src, std::ios::binary) << data; }
  ASSERT_EQ(::chmod(src.c_str(), 0751), 0);

  cmdop::TransferOptions o;
  o.keep_mode = true;
  o.create_parents = true;
  uint64_t calls = 0, last = 0, total = 0;
  auto progress = [&](uint64_t done, uint64_t t) {
    ++calls;
    EXPECT_GE(done, last);
    last = done;
    total = t;
  };
  c.upload_file(src, remote, o, progress);
  EXPECT_GE(calls, 2u);
  EXPECT_EQ(last, data.size());
  EXPECT_EQ(total, data.size());
  EXPECT_TRUE(slurp(remote) == data) << "upload changed the bytes";
  struct stat st {};
  ASSERT_EQ(::stat(remote.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0751u);

  calls = last = total = 0;
  c.download_file(remote, back, o, progress);
  EXPECT_GE(calls, 1u);
  EXPECT_EQ(last, data.size());
  EXPECT_TRUE(slurp(back) == data) << "download changed the bytes";
  ASSERT_EQ(::stat(back.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0751u);

  std::string streamed;
  EXPECT_EQ(c.read_file(remote, [&](std::string_view d) { streamed.append(d); }), data.size());
  EXPECT_TRUE(streamed == data) << "the streamed read differs";

  cmdop::TransferOptions keep;
  keep.no_clobber = true;
  try {
    c.download_file(remote, back, keep);
    ADD_FAILURE() << "no_clobber must refuse an existing target";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::InvalidArgument) << e.what();
  }
  try {
    c.download_file(tmp.path + "/no-such-file", tmp.path + "/never");
    ADD_FAILURE() << "downloading a missing file must fail";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::NotFound) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(tmp.path + "/never"));
}

TEST_F(Live, CancelledTransfersLeaveNoTarget) {
  cmdop::Client c = connected();
  TempDir tmp;
  ASSERT_FALSE(tmp.path.empty()) << "mkdtemp failed";
  const std::string src = tmp.path + "/big.bin";
  { std::ofstream(src, std::ios::binary) << pattern(8 * 1024 * 1024); }

  // A token cancelled from the progress callback, halfway.
  cmdop::CancelToken token;
  const std::string down = tmp.path + "/down.bin";
  try {
    c.download_file(src, down, {}, [&](uint64_t done, uint64_t total) {
      if (done >= total / 2 && done < total) token.cancel();
    }, &token);
    ADD_FAILURE() << "the download should have been cancelled";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::Cancelled) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(down));

  // An exception thrown by the progress callback cancels the upload and
  // reaches the caller; the remote target is not created.
  struct Stop {};
  const std::string up = tmp.path + "/up.bin";
  EXPECT_THROW(c.upload_file(src, up, {}, [](uint64_t done, uint64_t) {
    if (done > 0) throw Stop{};
  }), Stop);
  EXPECT_FALSE(std::filesystem::exists(up));
  // No temporary file is left behind either (the agent removes its
  // temporary file as the cancellation reaches it: allow it a while).
  std::vector<std::string> names;
  for (int i = 0; i < 200; ++i) {
    names.clear();
    for (const auto &e : std::filesystem::directory_iterator(tmp.path)) names.push_back(e.path().filename());
    if (names.size() == 1) break;
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(names.size(), 1u) << "left behind: " << names.back();
  EXPECT_EQ(names[0], "big.bin");
}

// exec_fleet on the stack's one machine, chosen by the host list: output
// and results reach the callbacks on this thread, tagged with the machine.
TEST_F(Live, ExecFleetRunsOnTheHostListWithCallbacks) {
  cmdop::Client c = connected();
  const std::thread::id caller = std::this_thread::get_id();
  std::map<std::string, std::string> out, err;  // by hostname
  std::vector<cmdop::FleetResult> ended;
  int wrong_thread = 0;
  cmdop::FleetOptions f;
  f.hosts = stack_->machine;
  f.on_output = [&](const cmdop::Machine &m, cmdop::StreamKind kind, std::string_view data) {
    if (std::this_thread::get_id() != caller) ++wrong_thread;
    (kind == cmdop::StreamKind::Stderr ? err : out)[m.hostname].append(data);
  };
  f.on_result = [&](const cmdop::FleetResult &r) {
    if (std::this_thread::get_id() != caller) ++wrong_thread;
    ended.push_back(r);
  };
  cmdop::ExecOptions o;
  o.env = {"CMDOP_CPP_FLEET=fleet-$((6*7))"};
  o.timeout = 15s;
  std::vector<cmdop::FleetResult> rs =
      c.exec_fleet("echo \"$CMDOP_CPP_FLEET\" $((40+2)); echo on-err >&2", f, o);
  ASSERT_EQ(rs.size(), 1u);
  const cmdop::FleetResult &r = rs[0];
  EXPECT_EQ(r.machine.hostname, stack_->machine);
  EXPECT_EQ(r.machine.id.rfind("mach_", 0), 0u) << r.machine.id;
  EXPECT_TRUE(r.machine.online);
  EXPECT_EQ(r.status, cmdop::Status::Ok) << r.message;
  EXPECT_TRUE(r.ran);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.signal, 0);
  EXPECT_TRUE(r.succeeded());
  EXPECT_EQ(r.message, "exit 0");
  // The environment's value is not expanded again, the command's $((…)) is.
  EXPECT_EQ(r.stdout_data, "fleet-$((6*7)) 42\n");
  EXPECT_EQ(r.stderr_data, "on-err\n");
  EXPECT_LT(r.duration, 15s);

  EXPECT_EQ(wrong_thread, 0);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[stack_->machine], "fleet-$((6*7)) 42\n");
  EXPECT_EQ(err[stack_->machine], "on-err\n");
  ASSERT_EQ(ended.size(), 1u) << "on_result runs once per machine";
  EXPECT_EQ(ended[0].machine.hostname, stack_->machine);
  EXPECT_EQ(ended[0].stdout_data, r.stdout_data);

  // A non-zero exit is a result, not an exception.
  ended.clear();
  rs = c.exec_fleet("echo partial; exit 7", f);
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].status, cmdop::Status::Ok);
  EXPECT_TRUE(rs[0].ran);
  EXPECT_EQ(rs[0].exit_code, 7);
  EXPECT_FALSE(rs[0].succeeded());
  EXPECT_EQ(rs[0].stdout_data, "partial\n");
  EXPECT_EQ(ended.size(), 1u);

  // A selector over facts picks the same machine; discard_output keeps
  // nothing, the callback still sees it.
  cmdop::FleetOptions g;
  g.selector = "cmdop.io/hostname=" + stack_->machine;
  std::string seen;
  g.on_output = [&](const cmdop::Machine &, cmdop::StreamKind, std::string_view d) { seen.append(d); };
  o = {};
  o.discard_output = true;
  rs = c.exec_fleet("echo only-in-callback", g, o);
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].machine.hostname, stack_->machine);
  EXPECT_TRUE(rs[0].stdout_data.empty());
  EXPECT_EQ(seen, "only-in-callback\n");
}

TEST_F(Live, ExecFleetTimeoutIsAPerMachineStatus) {
  cmdop::Client c = connected();
  cmdop::FleetOptions f;
  f.hosts = stack_->machine;
  cmdop::ExecOptions o;
  o.timeout = 700ms;
  const auto start = std::chrono::steady_clock::now();
  std::vector<cmdop::FleetResult> rs = c.exec_fleet("echo started; sleep 30", f, o);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 15s);
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].status, cmdop::Status::Timeout) << rs[0].message;
  EXPECT_TRUE(rs[0].ran);
  EXPECT_EQ(rs[0].exit_code, -1);
  EXPECT_EQ(rs[0].stdout_data, "started\n");
  EXPECT_GE(rs[0].duration, 500ms);
}

TEST_F(Live, ExecFleetRefusalsAreErrors) {
  cmdop::Client c = connected();
  cmdop::FleetOptions f;
  int results = 0;
  f.on_result = [&](const cmdop::FleetResult &) { ++results; };
  f.selector = "no-such-label=anywhere";
  try {
    c.exec_fleet("true", f);
    ADD_FAILURE() << "a selector matching nothing must throw";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::NotFound) << e.what();
    EXPECT_NE(e.message().find("no machine matches"), std::string::npos) << e.message();
  }
  f.selector.clear();
  f.hosts = "no-such-host-anywhere,no-such-*-either";
  try {
    c.exec_fleet("true", f);
    ADD_FAILURE() << "a host list matching nothing must throw";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::NotFound) << e.what();
  }
  f.hosts.clear();
  f.selector = "env=";
  try {
    c.exec_fleet("true", f);
    ADD_FAILURE() << "a bad selector must throw";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::InvalidArgument) << e.what();
  }
  f.selector.clear();
  f.hosts = stack_->machine;
  f.batch_size = 1;
  f.batch_percent = 50;
  try {
    c.exec_fleet("true", f);
    ADD_FAILURE() << "both batch fields must throw";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::InvalidArgument) << e.what();
  }
  EXPECT_EQ(results, 0);
}

TEST_F(Live, ExceptionInFleetCallbackCancelsAndPropagates) {
  cmdop::Client c = connected();
  struct Stop {};
  cmdop::FleetOptions f;
  f.hosts = stack_->machine;
  int after = 0, results = 0;
  f.on_output = [&](const cmdop::Machine &, cmdop::StreamKind, std::string_view) {
    ++after;
    throw Stop{};
  };
  f.on_result = [&](const cmdop::FleetResult &) { ++results; };
  cmdop::ExecOptions o;
  o.timeout = 30s;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(c.exec_fleet("echo go; sleep 0.2; echo more; sleep 30", f, o), Stop);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  EXPECT_EQ(after, 1) << "no callback runs after one threw";
  EXPECT_EQ(results, 0);

  // A cancel token from another thread stops the fleet; the call still
  // returns the machine's result, cancelled while it ran.
  cmdop::CancelToken token;
  cmdop::FleetOptions g;
  g.hosts = stack_->machine;
  std::thread canceller([&] {
    std::this_thread::sleep_for(500ms);
    token.cancel();
  });
  std::vector<cmdop::FleetResult> rs = c.exec_fleet("sleep 30", g, o, &token);
  canceller.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].status, cmdop::Status::Cancelled) << rs[0].message;
  EXPECT_TRUE(rs[0].ran);
  // The client is still usable afterwards.
  EXPECT_EQ(c.execute("true").exit_code(), 0);
}

}  // namespace
