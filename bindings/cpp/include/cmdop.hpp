// cmdop.hpp: header-only C++17 wrapper over libcmdop's C API (cmdop.h).
//
//   cmdop::Client client = cmdop::Client::local("127.0.0.1", 50051);
//   client.connect();
//   client.set_machine("build-01");
//   cmdop::ExecResult r = client.execute("uname -a");
//   std::cout << r.output();
//
// Conventions
// - Every failing C call becomes a thrown cmdop::Error carrying the status
//   and the library's message (read on the calling thread, right away).
// - Handles are move-only RAII objects (std::unique_ptr with a deleter that
//   calls the matching *_free function); moved-from objects are empty and
//   may only be destroyed or assigned to.
// - Plain data (sessions, file entries, connection facts) is copied into
//   value types, so nothing borrowed outlives its owner.
// - Callbacks are std::function objects owned by the library through the C
//   API's free_user_data finalizers: they stay alive exactly as long as the
//   library may call them. Client callbacks run on a library thread and must
//   not throw (an escaping exception calls std::terminate, as with
//   std::thread); the execute() chunk callback runs on a library thread,
//   one call at a time, and an exception it throws cancels the command and
//   is rethrown by execute(). The exec_fleet() callbacks run on the calling
//   thread, likewise: an exception cancels the fleet and is rethrown.
// - A Client is thread-safe, like the C client: any number of threads may
//   call its member functions at the same time. Destroy it last.
#ifndef CMDOP_HPP
#define CMDOP_HPP

#include <cmdop.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cmdop {

/// Outcome of a libcmdop call; the values are those of `cmdop_status`.
enum class Status : int {
  Ok = CMDOP_STATUS_OK,
  InvalidArgument = CMDOP_STATUS_INVALID_ARGUMENT,
  Unauthenticated = CMDOP_STATUS_UNAUTHENTICATED,
  NotFound = CMDOP_STATUS_NOT_FOUND,
  Ambiguous = CMDOP_STATUS_AMBIGUOUS,
  Timeout = CMDOP_STATUS_TIMEOUT,
  Unavailable = CMDOP_STATUS_UNAVAILABLE,
  Disconnected = CMDOP_STATUS_DISCONNECTED,
  Cancelled = CMDOP_STATUS_CANCELLED,
  Protocol = CMDOP_STATUS_PROTOCOL,
  Internal = CMDOP_STATUS_INTERNAL,
  NotSupported = CMDOP_STATUS_NOT_SUPPORTED,
  InCallback = CMDOP_STATUS_IN_CALLBACK,
  Panic = CMDOP_STATUS_PANIC,
  PermissionDenied = CMDOP_STATUS_PERMISSION_DENIED,
  OperationFailed = CMDOP_STATUS_OPERATION_FAILED,
  /// An execute reached the agent but how it ended is not known (not
  /// confirmed killed); partial_result() holds the output so far.
  OutcomeUnknown = CMDOP_STATUS_OUTCOME_UNKNOWN,
  /// The server refused the call: the API key's scope does not allow the
  /// operation (the message names it).
  NotAllowed = CMDOP_STATUS_NOT_ALLOWED,
};

/// Short static description of a status ("timed out", ...).
inline const char *to_string(Status s) noexcept { return cmdop_status_str(static_cast<int>(s)); }

/// Which stream a chunk of output belongs to.
enum class StreamKind : int { Stdout = CMDOP_STREAM_KIND_STDOUT, Stderr = CMDOP_STREAM_KIND_STDERR };

/// What a directory entry is.
enum class FileType : int {
  Unknown = CMDOP_FILE_TYPE_UNKNOWN,
  File = CMDOP_FILE_TYPE_FILE,
  Directory = CMDOP_FILE_TYPE_DIRECTORY,
  Symlink = CMDOP_FILE_TYPE_SYMLINK,
};

/// Log severities, for set_log_callback().
enum class LogLevel : int {
  Off = CMDOP_LOG_LEVEL_OFF,
  Error = CMDOP_LOG_LEVEL_ERROR,
  Warn = CMDOP_LOG_LEVEL_WARN,
  Info = CMDOP_LOG_LEVEL_INFO,
  Debug = CMDOP_LOG_LEVEL_DEBUG,
};

class ExecResult;

/// A failed libcmdop call: its status and the library's message, which says
/// what happened and what to do next.
class Error : public std::runtime_error {
 public:
  Error(Status status, std::string message)
      : std::runtime_error(std::string(to_string(status)) + ": " + message),
        status_(status),
        message_(std::move(message)) {}

  Status status() const noexcept { return status_; }
  /// The library's message alone (what() also names the status).
  const std::string &message() const noexcept { return message_; }
  /// For a timed-out execute(): what the command printed before it was
  /// killed; for OutcomeUnknown: the output received so far. Null otherwise.
  const std::shared_ptr<const ExecResult> &partial_result() const noexcept { return partial_; }

 private:
  friend class Client;
  Status status_;
  std::string message_;
  std::shared_ptr<const ExecResult> partial_;
};

namespace detail {

/// Throws Error for a failed status, with this thread's last error message.
inline void check(cmdop_status st) {
  if (st != CMDOP_STATUS_OK) throw Error(static_cast<Status>(st), cmdop_last_error_message());
}

/// NUL-terminated copy of a string_view for the C API.
inline std::string c_str(std::string_view s) { return std::string(s); }

/// A borrowed C string as a std::string (NULL becomes "").
inline std::string copy(const char *s) { return s ? std::string(s) : std::string(); }

inline std::string_view view(const uint8_t *data, size_t len) noexcept {
  return data ? std::string_view(reinterpret_cast<const char *>(data), len) : std::string_view();
}

template <typename T, void (*Free)(T *)>
struct Deleter {
  void operator()(T *p) const noexcept { Free(p); }
};

inline void free_client(cmdop_client *c) { cmdop_client_free(c); }
inline void free_stream(cmdop_attachment *s) { cmdop_attachment_close(s); }

using ClientPtr = std::unique_ptr<cmdop_client, Deleter<cmdop_client, free_client>>;
using ResultPtr = std::unique_ptr<cmdop_exec_result, Deleter<cmdop_exec_result, cmdop_exec_result_free>>;
using TokenPtr = std::unique_ptr<cmdop_cancel_token, Deleter<cmdop_cancel_token, cmdop_cancel_token_free>>;
using StreamPtr = std::unique_ptr<cmdop_attachment, Deleter<cmdop_attachment, free_stream>>;
using InfoPtr =
    std::unique_ptr<cmdop_connection_info, Deleter<cmdop_connection_info, cmdop_connection_info_free>>;
using SessionPtr = std::unique_ptr<cmdop_session, Deleter<cmdop_session, cmdop_session_free>>;
using SessionListPtr =
    std::unique_ptr<cmdop_session_list, Deleter<cmdop_session_list, cmdop_session_list_free>>;
using MachineListPtr =
    std::unique_ptr<cmdop_machine_list, Deleter<cmdop_machine_list, cmdop_machine_list_free>>;
using FleetResultListPtr =
    std::unique_ptr<cmdop_fleet_result_list, Deleter<cmdop_fleet_result_list, cmdop_fleet_result_list_free>>;
using FileListPtr = std::unique_ptr<cmdop_file_list, Deleter<cmdop_file_list, cmdop_file_list_free>>;
using BytesPtr = std::unique_ptr<cmdop_bytes, Deleter<cmdop_bytes, cmdop_bytes_free>>;
using StdinPtr = std::unique_ptr<cmdop_exec_stdin, Deleter<cmdop_exec_stdin, cmdop_exec_stdin_free>>;

/// Finalizer handed to the C API with a heap-allocated callable.
template <typename F>
void delete_callable(void *user_data) noexcept {
  delete static_cast<F *>(user_data);
}

inline uint32_t to_ms(std::chrono::milliseconds d) {
  if (d.count() < 0) throw Error(Status::InvalidArgument, "a timeout cannot be negative");
  if (d.count() > static_cast<std::chrono::milliseconds::rep>(UINT32_MAX))
    throw Error(Status::InvalidArgument, "a timeout cannot exceed 4294967295 ms (about 49 days)");
  return static_cast<uint32_t>(d.count());
}

/// The process-wide log callback's callable: owned by the library, which
/// deletes it (delete_callable) once no log call uses it any more.
using LogFn = std::function<void(LogLevel, std::string_view)>;

inline void log_trampoline(void *user_data, cmdop_log_level level, const char *message) noexcept {
  const LogFn &fn = *static_cast<const LogFn *>(user_data);
  fn(static_cast<LogLevel>(level), message ? std::string_view(message) : std::string_view());
}

}  // namespace detail

/// Version of the loaded library, e.g. "0.1.0".
inline std::string_view version() noexcept { return cmdop_version(); }

/// True when the loaded library implements the ABI this header describes.
inline bool abi_compatible() noexcept { return cmdop_abi_version() == CMDOP_ABI_VERSION; }

/// Install (or, with an empty function or LogLevel::Off, remove) the
/// process-wide log callback. It may run on any thread, concurrently with
/// itself: make it thread-safe and quick, and do not throw.
inline void set_log_callback(LogLevel level, std::function<void(LogLevel, std::string_view)> fn) {
  if (!fn || level == LogLevel::Off) {
    detail::check(cmdop_on_log(CMDOP_LOG_LEVEL_OFF, nullptr, nullptr, nullptr));
    return;
  }
  auto box = std::make_unique<detail::LogFn>(std::move(fn));
  detail::check(cmdop_on_log(static_cast<int>(level), detail::log_trampoline, box.get(),
                             detail::delete_callable<detail::LogFn>));
  box.release();  // owned by the library now
}

/// Whether a client uses TLS (cmdop_tls in cmdop.h).
enum class Tls : int {
  Default = CMDOP_TLS_DEFAULT,  ///< TLS for remote clients, plaintext for local ones
  On = CMDOP_TLS_ON,
  Off = CMDOP_TLS_OFF,  ///< plaintext (tests, private networks)
};

/// Options of a client, remote or local (cmdop_options in cmdop.h). Unset
/// optional fields keep the library's defaults.
struct Options {
  std::string server;   ///< remote only: "host:port" or "https://host:port"; empty = hosted endpoint
  /// Several control planes (replicas of one cluster), "host:port" each:
  /// when not empty, used instead of `server` (remote) or of host and port
  /// (local, which then ignores them). Connecting tries them in a random
  /// order of the client's own (so clients spread over the replicas) and
  /// takes the first that answers; when it is lost the client moves to
  /// another that does (on_disconnect(will_reconnect=true), then
  /// on_connect). A load balancer or DNS name in front of the replicas
  /// needs no list.
  std::vector<std::string> servers;
  /// Connect to `servers` in the list's order (the first that answers)
  /// instead of a random one: for a preferred replica, or servers that
  /// are not one cluster (cmdop_options.servers_in_order).
  bool servers_in_order = false;
  std::string api_key;  ///< local only: empty = $CMDOP_API_KEY if set, else none (remote takes it as an argument)
  Tls tls = Tls::Default;
  std::string ca_pem_path;  ///< empty = system roots
  std::string ca_pem;       ///< PEM bytes; empty = unused
  std::optional<std::chrono::milliseconds> timeout;
  std::optional<uint32_t> max_retries;
  std::optional<std::chrono::milliseconds> retry_delay;
  std::optional<bool> auto_reconnect;
  std::optional<std::chrono::milliseconds> reconnect_delay;
  std::optional<std::chrono::milliseconds> max_reconnect_delay;
  std::optional<uint32_t> max_reconnect_attempts;
  bool debug = false;
  std::optional<bool> auto_refresh;  ///< OAuth clients
};

namespace detail {

/// Fills a C options struct (this header's layout version) from `o`;
/// the strings stay owned by `o`, the server list's pointers by `servers`.
inline void to_c(const Options &o, cmdop_options &c, std::vector<const char *> &servers, bool local) {
  check(cmdop_options_init(&c, CMDOP_OPTIONS_VERSION));
  if (local && !o.server.empty())
    throw Error(Status::InvalidArgument,
                "Options::server is for Client::remote; Client::local takes host and port (or Options::servers)");
  c.server = o.server.empty() ? nullptr : o.server.c_str();
  servers.clear();
  for (const std::string &s : o.servers) servers.push_back(s.c_str());
  c.servers = servers.empty() ? nullptr : servers.data();
  c.server_count = servers.size();
  c.servers_in_order = o.servers_in_order;
  c.tls = static_cast<int>(o.tls);
  c.ca_pem_path = o.ca_pem_path.empty() ? nullptr : o.ca_pem_path.c_str();
  c.ca_pem = o.ca_pem.empty() ? nullptr : reinterpret_cast<const uint8_t *>(o.ca_pem.data());
  c.ca_pem_len = o.ca_pem.size();
  if (o.timeout) c.timeout_ms = to_ms(*o.timeout);
  if (o.max_retries) c.max_retries = *o.max_retries;
  if (o.retry_delay) c.retry_delay_ms = to_ms(*o.retry_delay);
  if (o.auto_reconnect) c.auto_reconnect = *o.auto_reconnect;
  if (o.reconnect_delay) c.reconnect_delay_ms = to_ms(*o.reconnect_delay);
  if (o.max_reconnect_delay) c.max_reconnect_delay_ms = to_ms(*o.max_reconnect_delay);
  if (o.max_reconnect_attempts) c.max_reconnect_attempts = *o.max_reconnect_attempts;
  c.debug = o.debug;
  if (o.auto_refresh) c.auto_refresh = *o.auto_refresh;
}

}  // namespace detail

/// The outcome of a command. Move-only; the views it returns are borrowed
/// from it.
class ExecResult {
 public:
  /// All output in arrival order (stdout and stderr interleaved).
  std::string_view output() const noexcept {
    size_t n = 0;
    const uint8_t *p = cmdop_exec_result_output(r_.get(), &n);
    return detail::view(p, n);
  }
  /// Stdout alone (on the terminal path: all output).
  std::string_view stdout_data() const noexcept {
    size_t n = 0;
    const uint8_t *p = cmdop_exec_result_stdout(r_.get(), &n);
    return detail::view(p, n);
  }
  /// Stderr alone (native path only).
  std::string_view stderr_data() const noexcept {
    size_t n = 0;
    const uint8_t *p = cmdop_exec_result_stderr(r_.get(), &n);
    return detail::view(p, n);
  }
  /// Exit code; -1 when killed by a signal or timed out.
  int exit_code() const noexcept { return cmdop_exec_result_exit_code(r_.get()); }
  /// Signal that ended the command (native path), 0 if none.
  int signal() const noexcept { return cmdop_exec_result_signal(r_.get()); }
  bool timed_out() const noexcept { return cmdop_exec_result_timed_out(r_.get()); }
  /// True when the command ran through native exec, false for the terminal path.
  bool native() const noexcept { return cmdop_exec_result_native(r_.get()); }
  /// True when output beyond the library's per-stream cap was dropped.
  bool truncated() const noexcept { return cmdop_exec_result_truncated(r_.get()); }
  std::chrono::milliseconds duration() const noexcept {
    return std::chrono::milliseconds(cmdop_exec_result_duration_ms(r_.get()));
  }
  /// The C handle, still owned by this object.
  const cmdop_exec_result *raw() const noexcept { return r_.get(); }

 private:
  friend class Client;
  explicit ExecResult(cmdop_exec_result *r) noexcept : r_(r) {}
  detail::ResultPtr r_;
};

/// Stops a running execute() from any thread; stays cancelled once
/// cancelled. Move-only; must outlive the calls using it.
class CancelToken {
 public:
  CancelToken() : t_(cmdop_cancel_token_new()) {
    if (!t_) throw std::bad_alloc();
  }
  /// Cancel every call using this token, now and later.
  void cancel() const noexcept { cmdop_cancel_token_cancel(t_.get()); }
  const cmdop_cancel_token *raw() const noexcept { return t_.get(); }

 private:
  detail::TokenPtr t_;
};

/// One machine of the workspace as cmdop_list_machines() reports it.
struct Machine {
  std::string id;  ///< mach_…; works with Client::set_machine_id()
  std::string hostname;
  bool online = false;
  int64_t last_seen_ms = 0;  ///< Unix milliseconds, 0 when never seen
  std::string os;
  std::string arch;
  uint32_t cpu_count = 0;
  uint64_t memory_bytes = 0;
  std::string agent_version;
  /// What selectors see: agent labels, admin labels over them, facts as
  /// cmdop.io/… labels.
  std::map<std::string, std::string> labels;

  static Machine from(const cmdop_machine *m) {
    Machine out{detail::copy(cmdop_machine_id(m)),
                detail::copy(cmdop_machine_hostname(m)),
                cmdop_machine_online(m),
                cmdop_machine_last_seen_ms(m),
                detail::copy(cmdop_machine_os(m)),
                detail::copy(cmdop_machine_arch(m)),
                cmdop_machine_cpu_count(m),
                cmdop_machine_memory_bytes(m),
                detail::copy(cmdop_machine_agent_version(m)),
                {}};
    for (size_t i = 0, n = cmdop_machine_label_count(m); i < n; ++i)
      out.labels.emplace(detail::copy(cmdop_machine_label_key(m, i)), detail::copy(cmdop_machine_label_value(m, i)));
    return out;
  }
};

/// One session (a machine's terminal) as the control plane reported it.
struct Session {
  std::string id;
  std::string hostname;
  std::string status;  ///< "connected", "disconnected", ...
  std::string os;
  std::string shell;
  int64_t connected_at = 0;   ///< Unix seconds, 0 when unknown
  int64_t heartbeat_age = 0;  ///< seconds since the agent's last heartbeat
  /// The machine's stable id ("mach_…", for set_machine_id); empty when the
  /// server cannot tell.
  std::string machine_id;

  static Session from(const cmdop_session *s) {
    return Session{detail::copy(cmdop_session_id(s)),       detail::copy(cmdop_session_hostname(s)),
                   detail::copy(cmdop_session_status(s)),   detail::copy(cmdop_session_os(s)),
                   detail::copy(cmdop_session_shell(s)),    cmdop_session_connected_at(s),
                   cmdop_session_heartbeat_age(s),          detail::copy(cmdop_session_machine_id(s))};
  }
};

/// One directory entry.
struct FileEntry {
  std::string name;
  std::string path;
  FileType type = FileType::Unknown;
  int64_t size = 0;
  uint32_t mode = 0;   ///< permission bits, e.g. 0755
  int64_t mtime = 0;   ///< Unix seconds, 0 when unknown
};

/// One page of a directory listing.
struct FileList {
  std::string path;             ///< the directory, as the agent resolved it
  std::vector<FileEntry> entries;
  std::string next_page_token;  ///< empty on the last page
};

/// Facts about a client's connection.
struct ConnectionInfo {
  std::string server;
  std::string server_version;
  std::string workspace;
  bool tls = false;
  bool connected = false;
  double latency_ms = -1;  ///< -1 when the round trip failed
  bool native_exec = false;
  /// What the server offers (CMDOP_CAPABILITY_*); empty for official servers.
  std::vector<std::string> capabilities;
  bool has_capability(std::string_view name) const {
    for (const auto &c : capabilities)
      if (c == name) return true;
    return false;
  }
};

/// A live attachment to a session's terminal; detaches when destroyed.
/// Move-only.
class Stream {
 public:
  /// Type bytes into the terminal.
  void write(std::string_view data) {
    detail::check(cmdop_attachment_write(s_.get(), reinterpret_cast<const uint8_t *>(data.data()), data.size()));
  }
  void resize(uint16_t cols, uint16_t rows) { detail::check(cmdop_attachment_resize(s_.get(), cols, rows)); }
  /// Detach now; after it returns the output callback is not called again.
  void close() noexcept { s_.reset(); }

 private:
  friend class Client;
  using Callback = std::function<void(std::string_view)>;
  // Declared before s_, so the stream is closed before the callback dies.
  std::unique_ptr<Callback> fn_;
  detail::StreamPtr s_;
};

/// How to run a command beyond its text (cmdop_exec_options in cmdop.h).
struct ExecOptions {
  std::chrono::milliseconds timeout{};  ///< zero = the client's timeout
  /// Written to the command's stdin, then closed (native exec only: the
  /// terminal path throws NotSupported). Empty = no stdin.
  std::string stdin_data;
  std::vector<std::string> env;  ///< "NAME=value" entries added to the environment
  std::string working_directory;  ///< empty = the agent's default
  /// Keep no output in the result; it goes only to the chunk callback.
  bool discard_output = false;
};

/// How download_file() and upload_file() treat their target
/// (cmdop_transfer_options in cmdop.h).
struct TransferOptions {
  bool keep_mode = false;       ///< copy the source's permission bits to the target
  bool no_clobber = false;      ///< throw InvalidArgument instead of replacing a target
  bool create_parents = false;  ///< create missing parent directories of the target
};

/// The writing end of a command's stdin for Client::execute(command, opts,
/// stdin, ...). Another thread writes while the command runs, then closes
/// it (the command sees EOF). One command per ExecStdin; move-only; it must
/// outlive the execute() call using it.
class ExecStdin {
 public:
  ExecStdin() {
    cmdop_exec_stdin *raw = nullptr;
    detail::check(cmdop_exec_stdin_new(&raw));
    s_.reset(raw);
  }
  /// Write bytes to the command's stdin, blocking while the command does
  /// not keep up. Throws InvalidArgument after close(), OperationFailed
  /// once the command's call ended.
  void write(std::string_view data) const {
    detail::check(cmdop_exec_stdin_write(raw(), reinterpret_cast<const uint8_t *>(data.data()), data.size()));
  }
  /// Close the command's stdin after what was written (idempotent).
  void close() const { detail::check(cmdop_exec_stdin_close(raw())); }
  cmdop_exec_stdin *raw() const {
    if (!s_) throw Error(Status::InvalidArgument, "this cmdop::ExecStdin was moved from; use the object it moved to");
    return s_.get();
  }

 private:
  detail::StdinPtr s_;
};

/// One machine's end in Client::exec_fleet(): a value copied out of the
/// library's result, so it outlives the call.
struct FleetResult {
  Machine machine;
  /// How it ended: Ok (the command ran to its end: read exit_code and
  /// signal), Timeout (killed at its timeout, confirmed), OutcomeUnknown
  /// (started, end unknown; not sent again), another error status, or, when
  /// `ran` is false, Unavailable (offline, or refused before it reached the
  /// machine) or Cancelled (the cancel token, or max_failures reached).
  Status status = Status::Ok;
  /// Whether the command was (or, after OutcomeUnknown, may have been) started.
  bool ran = false;
  /// The exit code when `status` is Ok and no signal ended it; -1 otherwise.
  int exit_code = -1;
  /// The signal that ended the command, 0 if none.
  int signal = 0;
  /// What happened in words ("exit 0", "timed out (killed)", ...).
  std::string message;
  /// From the machine's start to its end; zero when it did not run.
  std::chrono::milliseconds duration{};
  /// Output as kept: also what came before a timeout; empty with
  /// ExecOptions::discard_output.
  std::string stdout_data;
  std::string stderr_data;

  /// Ran to its end with exit code 0.
  bool succeeded() const noexcept { return status == Status::Ok && exit_code == 0; }

  static FleetResult from(const cmdop_fleet_result *r) {
    size_t out_len = 0, err_len = 0;
    const uint8_t *out = cmdop_fleet_result_stdout(r, &out_len);
    const uint8_t *err = cmdop_fleet_result_stderr(r, &err_len);
    return FleetResult{Machine::from(cmdop_fleet_result_machine(r)),
                       static_cast<Status>(cmdop_fleet_result_status(r)),
                       cmdop_fleet_result_ran(r),
                       cmdop_fleet_result_exit_code(r),
                       cmdop_fleet_result_signal(r),
                       detail::copy(cmdop_fleet_result_message(r)),
                       std::chrono::milliseconds(cmdop_fleet_result_duration_ms(r)),
                       std::string(detail::view(out, out_len)),
                       std::string(detail::view(err, err_len))};
  }
};

/// Which machines Client::exec_fleet() runs on, how fast, and where their
/// output and results go (cmdop_fleet_options in cmdop.h). Zero means the
/// library's default everywhere.
struct FleetOptions {
  /// Label selector, as Client::machines() takes it; empty = any machine.
  std::string selector;
  /// Hostnames or globs, comma-separated; empty = any.
  std::string hosts;
  uint32_t parallel = 0;       ///< most machines running at once; 0 = 64
  uint32_t batch_size = 0;     ///< rolling batches of this many machines; 0 = one batch
  uint32_t batch_percent = 0;  ///< or of this share (1-100) of the online machines; set one of the two
  /// Start no further machine once this many have failed (non-zero exit,
  /// signal, timeout, unknown outcome, error); 0 = no limit.
  uint32_t max_failures = 0;
  /// Each chunk of a machine's output as it arrives, in order per machine
  /// (machines interleave).
  std::function<void(const Machine &, StreamKind, std::string_view)> on_output;
  /// Each machine's end as it comes (the same result is in the returned list).
  std::function<void(const FleetResult &)> on_result;
};

/// A connection to one control plane with one set of credentials.
/// Move-only and thread-safe.
class Client {
 public:
  /// Client for a remote control plane authenticated with an API key;
  /// an empty key reads $CMDOP_API_KEY. Does not connect.
  static Client remote(std::string_view api_key, const Options &opts = {}) {
    cmdop_options c;
    std::vector<const char *> servers;
    detail::to_c(opts, c, servers, false);
    const std::string key(api_key);
    cmdop_client *out = nullptr;
    detail::check(cmdop_remote_new(key.empty() ? nullptr : key.c_str(), &c, &out));
    return Client(out);
  }

  /// Client for a remote control plane authenticated with OAuth tokens;
  /// refreshed tokens go to on_tokens(). Does not connect.
  static Client remote_oauth(std::string_view access_token, std::string_view refresh_token,
                             const Options &opts = {}) {
    cmdop_options c;
    std::vector<const char *> servers;
    detail::to_c(opts, c, servers, false);
    cmdop_client *out = nullptr;
    detail::check(cmdop_remote_new_oauth(detail::c_str(access_token).c_str(),
                                         detail::c_str(refresh_token).c_str(), &c, &out));
    return Client(out);
  }

  /// Client for a control plane at host:port (plaintext unless opts.tls
  /// is Tls::On); with opts.servers, for those (host and port are ignored:
  /// pass "" and 0). Does not connect.
  static Client local(std::string_view host, uint16_t port, const Options &opts = {}) {
    cmdop_options c;
    std::vector<const char *> servers;
    detail::to_c(opts, c, servers, true);
    cmdop_client *out = nullptr;
    detail::check(cmdop_local_new(detail::c_str(host).c_str(), port,
                                  opts.api_key.empty() ? nullptr : opts.api_key.c_str(), &c, &out));
    return Client(out);
  }

  /// Connect (a no-op when connected; reconnects a closed client).
  void connect() { detail::check(cmdop_connect(get())); }
  /// Close the connection; later calls throw Disconnected until connect().
  void close() { detail::check(cmdop_close(get())); }
  bool is_connected() const noexcept { return cmdop_is_connected(c_.get()); }

  /// Select the machine later calls act on, by hostname.
  void set_machine(std::string_view hostname) {
    detail::check(cmdop_set_machine(get(), detail::c_str(hostname).c_str()));
  }
  /// Select the machine by its stable id ("mach_…").
  void set_machine_id(std::string_view machine_id) {
    detail::check(cmdop_set_machine_id(get(), detail::c_str(machine_id).c_str()));
  }

  /// Describe the connection, measuring the latency now.
  ConnectionInfo connection_info() {
    cmdop_connection_info *raw = nullptr;
    detail::check(cmdop_get_connection_info(get(), &raw));
    detail::InfoPtr info(raw);
    ConnectionInfo out{detail::copy(cmdop_connection_info_server(raw)),
                       detail::copy(cmdop_connection_info_server_version(raw)),
                       detail::copy(cmdop_connection_info_workspace(raw)),
                       cmdop_connection_info_tls(raw),
                       cmdop_connection_info_connected(raw),
                       cmdop_connection_info_latency_ms(raw),
                       cmdop_connection_info_native_exec(raw),
                       {}};
    for (size_t i = 0, n = cmdop_connection_info_capability_count(raw); i < n; i++)
      out.capabilities.push_back(detail::copy(cmdop_connection_info_capability_get(raw, i)));
    return out;
  }

  /// Run a shell command on the selected machine and wait for it. A zero
  /// timeout means the client's. On timeout throws Error{Timeout} whose
  /// partial_result() holds the output printed before the kill.
  ExecResult execute(std::string_view command, std::chrono::milliseconds timeout = {}) {
    const std::string cmd(command);
    cmdop_exec_options c = CMDOP_EXEC_OPTIONS_INIT;
    c.timeout_ms = detail::to_ms(timeout);
    cmdop_exec_result *out = nullptr;
    const cmdop_status st = cmdop_exec(get(), cmd.c_str(), &c, &out);
    return finish(st, out);
  }

  using ChunkCallback = std::function<void(StreamKind, std::string_view)>;

  /// Like execute(), handing each chunk of output to `on_chunk` as it
  /// arrives, in order, one call at a time, on a library thread. `cancel`
  /// (optional) stops and kills the command from any thread; execute() then
  /// throws Error{Cancelled} at once, and a call of `on_chunk` that had
  /// already started may still finish afterwards (the wrapper keeps its own
  /// copy of `on_chunk` alive until then). If `on_chunk`
  /// throws, the command is cancelled and the exception rethrown here.
  ExecResult execute(std::string_view command, std::chrono::milliseconds timeout, const ChunkCallback &on_chunk,
                     const CancelToken *cancel = nullptr) {
    ExecOptions opts;
    opts.timeout = timeout;
    return execute_opts(command, opts, nullptr, on_chunk, cancel);
  }

  /// Run a command with options: stdin bytes, environment, working
  /// directory, timeout. `on_chunk` and `cancel` as in execute() above. On
  /// the terminal path an option that cannot be honoured throws
  /// NotSupported; none is silently dropped.
  ExecResult execute(std::string_view command, const ExecOptions &opts, const ChunkCallback &on_chunk = {},
                     const CancelToken *cancel = nullptr) {
    return execute_opts(command, opts, nullptr, on_chunk, cancel);
  }

  /// Like execute(command, opts, ...), with the command's stdin streamed
  /// from `input` while it runs: another thread calls input.write() and
  /// input.close(). opts.stdin_data, if any, is written first. Needs
  /// streamed stdin on server and agent (CMDOP_CAPABILITY_EXEC_STDIN),
  /// else throws NotSupported.
  ExecResult execute(std::string_view command, const ExecOptions &opts, const ExecStdin &input,
                     const ChunkCallback &on_chunk = {}, const CancelToken *cancel = nullptr) {
    return execute_opts(command, opts, input.raw(), on_chunk, cancel);
  }

  /// The most recently active connected session, of a machine whose
  /// hostname matches (empty = any machine). Throws NotFound when none.
  Session active_session(std::string_view hostname = {}) {
    const std::string h(hostname);
    cmdop_session *raw = nullptr;
    detail::check(cmdop_get_active_session(get(), h.empty() ? nullptr : h.c_str(), &raw));
    detail::SessionPtr s(raw);
    return Session::from(raw);
  }

  /// Every session of the workspace, connected ones first.
  std::vector<Session> sessions() {
    cmdop_session_list *raw = nullptr;
    detail::check(cmdop_list_sessions(get(), &raw));
    detail::SessionListPtr list(raw);
    std::vector<Session> out;
    const size_t n = cmdop_session_list_count(raw);
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) out.push_back(Session::from(cmdop_session_list_get(raw, i)));
    return out;
  }

  /// The workspace's machines, online or not, sorted by hostname, matching
  /// `selector` (a label selector such as "env=prod,role in (web,api)";
  /// empty = all) and `hosts` (hostnames or globs, comma-separated; empty =
  /// any). A bad selector throws InvalidArgument saying what is wrong.
  std::vector<Machine> machines(std::string_view selector = {}, std::string_view hosts = {}) {
    const std::string sel(selector), h(hosts);
    cmdop_machine_list *raw = nullptr;
    detail::check(cmdop_list_machines(get(), sel.c_str(), h.c_str(), &raw));
    detail::MachineListPtr list(raw);
    std::vector<Machine> out;
    const size_t n = cmdop_machine_list_count(raw);
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) out.push_back(Machine::from(cmdop_machine_list_get(raw, i)));
    return out;
  }

  /// Run `command` on every online machine `fleet` selects (its selector
  /// and host list; the selected machine of set_machine() plays no part),
  /// with `opts` applied to each machine: its timeout is per machine, its
  /// environment, working directory, stdin bytes and discard_output apply
  /// to every machine. Returns every selected machine's end, offline ones
  /// included, sorted by hostname, whatever their outcomes: check each
  /// FleetResult's status and exit_code.
  ///
  /// fleet.on_output and fleet.on_result run on this thread, one at a time,
  /// while the call blocks; they must not call blocking members of a
  /// Client (those throw InCallback). A slow callback slows the machines'
  /// output down. If a callback throws, the fleet is cancelled (running
  /// commands killed, no more started), no callback runs after it, and the
  /// exception is rethrown here. `cancel` (optional) does the same from any
  /// thread; the call then still returns every machine's result, those it
  /// stopped with status Cancelled.
  ///
  /// Throws NotFound when nothing matches (machines() shows what there
  /// is), InvalidArgument for a bad selector or host list or both batch
  /// fields set, NotSupported when the server cannot list machines.
  std::vector<FleetResult> exec_fleet(std::string_view command, const FleetOptions &fleet, const ExecOptions &opts = {},
                                      const CancelToken *cancel = nullptr) {
    const std::string cmd(command);
    cmdop_exec_options c;
    std::vector<const char *> env;
    to_c(opts, c, env);
    std::optional<CancelToken> own;
    FleetContext ctx{&fleet, cancel ? cancel : &own.emplace(), {}, nullptr};
    c.cancel = ctx.cancel->raw();
    cmdop_fleet_options f;
    detail::check(cmdop_fleet_options_init(&f, CMDOP_FLEET_OPTIONS_VERSION));
    f.selector = fleet.selector.empty() ? nullptr : fleet.selector.c_str();
    f.hosts = fleet.hosts.empty() ? nullptr : fleet.hosts.c_str();
    f.parallel = fleet.parallel;
    f.batch_size = fleet.batch_size;
    f.batch_percent = fleet.batch_percent;
    f.max_failures = fleet.max_failures;
    f.on_output = fleet.on_output ? fleet_output_trampoline : nullptr;
    f.on_result = fleet.on_result ? fleet_result_trampoline : nullptr;
    f.user_data = &ctx;
    cmdop_fleet_result_list *raw = nullptr;
    const cmdop_status st = cmdop_exec_fleet(get(), cmd.c_str(), &f, &c, &raw);
    detail::FleetResultListPtr list(raw);
    if (ctx.error) std::rethrow_exception(ctx.error);
    detail::check(st);
    std::vector<FleetResult> out;
    const size_t n = cmdop_fleet_result_list_count(raw);
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) out.push_back(FleetResult::from(cmdop_fleet_result_list_get(raw, i)));
    return out;
  }

  /// One page of directory `path` on the selected machine.
  FileList list_files(std::string_view path, std::string_view page_token = {}, bool include_hidden = false) {
    const std::string p(path), tok(page_token);
    cmdop_file_list *raw = nullptr;
    detail::check(cmdop_list_files_page(get(), p.c_str(), tok.c_str(), include_hidden, &raw));
    detail::FileListPtr list(raw);
    FileList out{detail::copy(cmdop_file_list_path(raw)), {}, detail::copy(cmdop_file_list_next_page_token(raw))};
    const size_t n = cmdop_file_list_count(raw);
    out.entries.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      const cmdop_file_entry *e = cmdop_file_list_get(raw, i);
      out.entries.push_back(FileEntry{detail::copy(cmdop_file_entry_name(e)), detail::copy(cmdop_file_entry_path(e)),
                                      static_cast<FileType>(cmdop_file_entry_type(e)), cmdop_file_entry_size(e),
                                      cmdop_file_entry_mode(e), cmdop_file_entry_mtime(e)});
    }
    return out;
  }

  /// The whole content of file `path` on the selected machine.
  std::string read_file(std::string_view path) {
    cmdop_bytes *raw = nullptr;
    detail::check(cmdop_read_file(get(), detail::c_str(path).c_str(), &raw));
    detail::BytesPtr b(raw);
    return std::string(detail::view(cmdop_bytes_data(raw), cmdop_bytes_len(raw)));
  }

  /// Create or replace file `path` on the selected machine.
  void write_file(std::string_view path, std::string_view data) {
    detail::check(cmdop_write_file(get(), detail::c_str(path).c_str(),
                                   reinterpret_cast<const uint8_t *>(data.data()), data.size()));
  }

  /// Progress of a transfer: `done` of `total` bytes, on the calling thread.
  using ProgressCallback = std::function<void(uint64_t done, uint64_t total)>;

  /// Download `remote_path` on the selected machine to `local_path`,
  /// atomically (a failed or cancelled download leaves the target as it
  /// was), in bounded memory whatever the size. `on_progress` runs on this
  /// thread; if it throws, the download is cancelled and the exception
  /// rethrown here. `cancel` stops it from any thread (Error{Cancelled}).
  void download_file(std::string_view remote_path, std::string_view local_path, const TransferOptions &opts = {},
                     const ProgressCallback &on_progress = {}, const CancelToken *cancel = nullptr) {
    transfer(true, remote_path, local_path, opts, on_progress, cancel);
  }

  /// Upload the local file `local_path` to `remote_path` on the selected
  /// machine, atomically; as download_file().
  void upload_file(std::string_view local_path, std::string_view remote_path, const TransferOptions &opts = {},
                   const ProgressCallback &on_progress = {}, const CancelToken *cancel = nullptr) {
    transfer(false, local_path, remote_path, opts, on_progress, cancel);
  }

  /// Stream file `path` on the selected machine into `on_chunk` (on this
  /// thread, in order), without holding it in memory; returns the bytes
  /// delivered. If `on_chunk` throws, the read is cancelled and the
  /// exception rethrown here.
  uint64_t read_file(std::string_view path, const std::function<void(std::string_view)> &on_chunk,
                     const CancelToken *cancel = nullptr) {
    if (!on_chunk) throw Error(Status::InvalidArgument, "read_file() with a callback needs a non-empty callback");
    std::optional<CancelToken> own;
    if (!cancel) cancel = &own.emplace();
    ReadContext ctx{&on_chunk, cancel, nullptr};
    uint64_t n = 0;
    const cmdop_status st =
        cmdop_read_file_with_callback(get(), detail::c_str(path).c_str(), read_trampoline, &ctx, cancel->raw(), &n);
    if (ctx.error) std::rethrow_exception(ctx.error);
    detail::check(st);
    return n;
  }

  /// Attach to a session's terminal: `on_output` receives its output on a
  /// library thread until the Stream is closed; an empty view (once, last)
  /// says the stream ended. It must not throw.
  Stream attach(std::string_view session_id, std::function<void(std::string_view)> on_output) {
    if (!on_output) throw Error(Status::InvalidArgument, "attach() needs an output callback");
    Stream s;
    s.fn_ = std::make_unique<Stream::Callback>(std::move(on_output));
    cmdop_attachment *raw = nullptr;
    detail::check(cmdop_attach(get(), detail::c_str(session_id).c_str(), output_trampoline, s.fn_.get(), nullptr, &raw));
    s.s_.reset(raw);
    return s;
  }

  /// Called (on the client's event thread) when the client connects or
  /// reconnects. An empty function removes the callback.
  void on_connect(std::function<void()> fn) {
    using F = std::function<void()>;
    install<F>(cmdop_on_connect, std::move(fn), [](void *ud) noexcept { (*static_cast<F *>(ud))(); });
  }
  /// Called when the connection is gone, with the reason; `will_reconnect`
  /// is true while the library keeps trying by itself, false when this is
  /// final (close(), reconnection off or given up: connect() to try again).
  void on_disconnect(std::function<void(std::string_view reason, bool will_reconnect)> fn) {
    using F = std::function<void(std::string_view, bool)>;
    install<F>(cmdop_on_disconnect, std::move(fn), [](void *ud, const char *reason, bool will_reconnect) noexcept {
      (*static_cast<F *>(ud))(reason ? reason : "", will_reconnect);
    });
  }
  /// Called for every failed call and background failure.
  void on_error(std::function<void(Status, std::string_view message)> fn) {
    using F = std::function<void(Status, std::string_view)>;
    install<F>(cmdop_on_error, std::move(fn), [](void *ud, cmdop_status st, const char *msg) noexcept {
      (*static_cast<F *>(ud))(static_cast<Status>(st), msg ? msg : "");
    });
  }
  /// OAuth clients: receives the new (access, refresh) pair after a refresh.
  void on_tokens(std::function<void(std::string_view access, std::string_view refresh)> fn) {
    using F = std::function<void(std::string_view, std::string_view)>;
    install<F>(cmdop_on_token_refresh, std::move(fn), [](void *ud, const char *a, const char *r) noexcept {
      (*static_cast<F *>(ud))(a ? a : "", r ? r : "");
    });
  }

  /// The C handle, still owned by this object (for calls this header lacks).
  cmdop_client *raw() const noexcept { return c_.get(); }

 private:
  explicit Client(cmdop_client *c) noexcept : c_(c) {}

  cmdop_client *get() const {
    if (!c_) throw Error(Status::InvalidArgument, "this cmdop::Client was moved from; use the object it moved to");
    return c_.get();
  }

  /// Hands a heap copy of `fn` to the C API, which frees it through
  /// delete_callable once it will not call it any more.
  template <typename F, typename Setter, typename Trampoline>
  void install(Setter setter, F fn, Trampoline trampoline) {
    if (!fn) {
      detail::check(setter(get(), nullptr, nullptr, nullptr));
      return;
    }
    auto box = std::make_unique<F>(std::move(fn));
    detail::check(setter(get(), trampoline, box.get(), detail::delete_callable<F>));
    box.release();  // owned by the library now
  }

  // The state of one execute's output callback. The library runs callbacks
  // on its own thread and, after a cancel, may still be finishing one when
  // the call has returned: so the state (a copy of the callback, and the
  // call's own token when the caller gave none) lives on the heap, shared
  // with the library, which drops its share through chunk_free once no
  // callback runs any more.
  struct ChunkContext {
    ChunkCallback fn;
    std::optional<CancelToken> own;
    const CancelToken *cancel = nullptr;
    std::mutex mu;
    std::exception_ptr error;

    std::exception_ptr take_error() {
      std::lock_guard<std::mutex> lock(mu);
      return error;
    }
  };
  using ChunkShare = std::shared_ptr<ChunkContext>;

  static ChunkShare chunk_context(const ChunkCallback &on_chunk, const CancelToken *cancel) {
    auto ctx = std::make_shared<ChunkContext>();
    ctx->fn = on_chunk;
    ctx->cancel = cancel ? cancel : &ctx->own.emplace();
    return ctx;
  }

  // The library's share of `ctx`, as user_data (NULL when there is no callback).
  static void *chunk_share(const ChunkShare &ctx) { return ctx->fn ? new ChunkShare(ctx) : nullptr; }

  static void chunk_free(void *ud) noexcept { delete static_cast<ChunkShare *>(ud); }

  static void chunk_trampoline(void *ud, cmdop_stream_kind kind, const uint8_t *data, size_t len) noexcept {
    ChunkContext &ctx = **static_cast<ChunkShare *>(ud);
    if (ctx.take_error()) return;
    try {
      ctx.fn(static_cast<StreamKind>(kind), detail::view(data, len));
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(ctx.mu);
        if (!ctx.error) ctx.error = std::current_exception();
      }
      ctx.cancel->cancel();
    }
  }

  // Fills `c` (this header's layout version, no callbacks) from `opts`;
  // the strings stay owned by `opts`, the environment's pointers by `env`.
  static void to_c(const ExecOptions &opts, cmdop_exec_options &c, std::vector<const char *> &env) {
    detail::check(cmdop_exec_options_init(&c, CMDOP_EXEC_OPTIONS_VERSION));
    c.timeout_ms = detail::to_ms(opts.timeout);
    c.stdin_data = opts.stdin_data.empty() ? nullptr : reinterpret_cast<const uint8_t *>(opts.stdin_data.data());
    c.stdin_len = opts.stdin_data.size();
    env.clear();
    env.reserve(opts.env.size());
    for (const std::string &e : opts.env) env.push_back(e.c_str());
    c.env = env.empty() ? nullptr : env.data();
    c.env_count = env.size();
    c.working_directory = opts.working_directory.empty() ? nullptr : opts.working_directory.c_str();
    c.discard_output = opts.discard_output;
  }

  // The state of one exec_fleet() call. Its callbacks run on the calling
  // thread while the call blocks, so it lives on that call's stack; the
  // first exception a callback throws is kept here (no callback runs after
  // it) and rethrown once the call returned. Machines are copied once each
  // for on_output, keyed by id.
  struct FleetContext {
    const FleetOptions *fleet;
    const CancelToken *cancel;
    std::map<std::string, Machine> machines;
    std::exception_ptr error;

    template <typename F>
    void run(F &&f) noexcept {
      if (error) return;
      try {
        f();
      } catch (...) {
        error = std::current_exception();
        cancel->cancel();
      }
    }
  };

  static void fleet_output_trampoline(void *ud, const cmdop_machine *m, cmdop_stream_kind kind, const uint8_t *data,
                                      size_t len) noexcept {
    auto *ctx = static_cast<FleetContext *>(ud);
    ctx->run([&] {
      const std::string id = detail::copy(cmdop_machine_id(m));
      auto it = ctx->machines.find(id);
      if (it == ctx->machines.end()) it = ctx->machines.emplace(id, Machine::from(m)).first;
      ctx->fleet->on_output(it->second, static_cast<StreamKind>(kind), detail::view(data, len));
    });
  }

  static void fleet_result_trampoline(void *ud, const cmdop_fleet_result *r) noexcept {
    auto *ctx = static_cast<FleetContext *>(ud);
    ctx->run([&] { ctx->fleet->on_result(FleetResult::from(r)); });
  }

  // Every execute of this class ends here: one cmdop_exec() call.
  ExecResult execute_opts(std::string_view command, const ExecOptions &opts, cmdop_exec_stdin *input,
                          const ChunkCallback &on_chunk, const CancelToken *cancel) {
    const std::string cmd(command);
    cmdop_exec_options c;
    std::vector<const char *> env;
    to_c(opts, c, env);
    const ChunkShare ctx = chunk_context(on_chunk, cancel);
    c.user_data = chunk_share(ctx);
    c.on_output = c.user_data ? chunk_trampoline : nullptr;
    c.free_user_data = c.user_data ? chunk_free : nullptr;
    c.cancel = ctx->cancel->raw();
    c.input = input;
    cmdop_exec_result *out = nullptr;
    const cmdop_status st = cmdop_exec(get(), cmd.c_str(), &c, &out);
    if (const std::exception_ptr error = ctx->take_error()) {
      cmdop_exec_result_free(out);
      std::rethrow_exception(error);
    }
    return finish(st, out);
  }

  struct ProgressContext {
    const ProgressCallback *fn;
    const CancelToken *cancel;
    std::exception_ptr error;
  };

  static void progress_trampoline(void *ud, uint64_t done, uint64_t total) noexcept {
    auto *ctx = static_cast<ProgressContext *>(ud);
    if (ctx->error) return;
    try {
      (*ctx->fn)(done, total);
    } catch (...) {
      ctx->error = std::current_exception();
      ctx->cancel->cancel();
    }
  }

  void transfer(bool download, std::string_view from, std::string_view to, const TransferOptions &opts,
                const ProgressCallback &on_progress, const CancelToken *cancel) {
    const std::string a(from), b(to);
    cmdop_transfer_options c;
    detail::check(cmdop_transfer_options_init(&c, CMDOP_TRANSFER_OPTIONS_VERSION));
    c.keep_mode = opts.keep_mode;
    c.no_clobber = opts.no_clobber;
    c.create_parents = opts.create_parents;
    std::optional<CancelToken> own;
    if (!cancel) cancel = &own.emplace();
    ProgressContext ctx{&on_progress, cancel, nullptr};
    cmdop_progress_fn fn = on_progress ? progress_trampoline : nullptr;
    const cmdop_status st = download
                                ? cmdop_download_file(get(), a.c_str(), b.c_str(), &c, fn, &ctx, cancel->raw())
                                : cmdop_upload_file(get(), a.c_str(), b.c_str(), &c, fn, &ctx, cancel->raw());
    if (ctx.error) std::rethrow_exception(ctx.error);
    detail::check(st);
  }

  struct ReadContext {
    const std::function<void(std::string_view)> *fn;
    const CancelToken *cancel;
    std::exception_ptr error;
  };

  static void read_trampoline(void *ud, const uint8_t *data, size_t len) noexcept {
    auto *ctx = static_cast<ReadContext *>(ud);
    if (ctx->error) return;
    try {
      (*ctx->fn)(detail::view(data, len));
    } catch (...) {
      ctx->error = std::current_exception();
      ctx->cancel->cancel();
    }
  }

  static void output_trampoline(void *ud, const uint8_t *data, size_t len) noexcept {
    (*static_cast<Stream::Callback *>(ud))(detail::view(data, len));
  }

  /// Turns an execute status and result into a return value or an Error.
  static ExecResult finish(cmdop_status st, cmdop_exec_result *out) {
    ExecResult result(out);
    if (st == CMDOP_STATUS_OK) return result;
    Error e(static_cast<Status>(st), cmdop_last_error_message());
    if (out) e.partial_ = std::make_shared<const ExecResult>(std::move(result));
    throw e;
  }

  detail::ClientPtr c_;
};

}  // namespace cmdop

#endif  // CMDOP_HPP
