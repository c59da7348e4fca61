// Compile-time and offline properties of cmdop.hpp: ownership semantics and
// error reporting that need no control plane.
#include "cmdop.hpp"

#include <gtest/gtest.h>

#include <thread>
#include <type_traits>

std::string_view cmdop_version_from_second_unit();

namespace {

static_assert(!std::is_copy_constructible_v<cmdop::Client>, "Client is move-only");
static_assert(!std::is_copy_assignable_v<cmdop::Client>, "Client is move-only");
static_assert(std::is_nothrow_move_constructible_v<cmdop::Client>, "Client moves without throwing");
static_assert(std::is_nothrow_move_assignable_v<cmdop::Client>, "Client moves without throwing");
static_assert(!std::is_copy_constructible_v<cmdop::ExecResult>, "ExecResult is move-only");
static_assert(std::is_nothrow_move_constructible_v<cmdop::ExecResult>, "ExecResult moves without throwing");
static_assert(!std::is_copy_constructible_v<cmdop::Stream>, "Stream is move-only");
static_assert(!std::is_copy_constructible_v<cmdop::CancelToken>, "CancelToken is move-only");
static_assert(std::is_base_of_v<std::runtime_error, cmdop::Error>, "Error is a std::runtime_error");
static_assert(std::is_copy_constructible_v<cmdop::Error>, "exceptions must be copyable");

TEST(Header, VersionAndAbi) {
  EXPECT_FALSE(cmdop::version().empty());
  EXPECT_EQ(cmdop::version(), cmdop_version_from_second_unit());
  EXPECT_TRUE(cmdop::abi_compatible());
}

TEST(Header, StatusNames) {
  EXPECT_STREQ(cmdop::to_string(cmdop::Status::Ok), cmdop_status_str(CMDOP_STATUS_OK));
  EXPECT_STRNE(cmdop::to_string(cmdop::Status::Timeout), cmdop::to_string(cmdop::Status::NotFound));
}

TEST(Header, InvalidArgumentsThrowWithStatusAndMessage) {
  try {
    (void)cmdop::Client::local("", 1);
    FAIL() << "an empty host must be rejected";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::InvalidArgument);
    EXPECT_FALSE(e.message().empty());
    EXPECT_NE(std::string(e.what()).find(e.message()), std::string::npos);
    EXPECT_EQ(e.partial_result(), nullptr);
  }
  cmdop::Options o;
  o.timeout = std::chrono::milliseconds(-1);
  EXPECT_THROW((void)cmdop::Client::local("127.0.0.1", 1, o), cmdop::Error);
}

TEST(Header, BadServerListsAreInvalidArguments) {
  cmdop::Options o;
  o.servers = {"127.0.0.1:1", ""};
  try {
    (void)cmdop::Client::local("", 0, o);
    FAIL() << "an empty entry must be refused";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::InvalidArgument);
    EXPECT_NE(e.message().find("servers[1] is empty"), std::string::npos) << e.message();
  }
  o.servers = {"127.0.0.1:1"};
  o.server = "127.0.0.1:2";
  EXPECT_THROW((void)cmdop::Client::remote("key", o), cmdop::Error);
  // A list of one is fine without host and port.
  o.server.clear();
  EXPECT_NO_THROW((void)cmdop::Client::local("", 0, o));
}

TEST(Header, MovedFromClientReportsMisuse) {
  cmdop::Client a = cmdop::Client::local("127.0.0.1", 1);
  cmdop::Client b = std::move(a);
  EXPECT_NE(b.raw(), nullptr);
  try {
    a.connect();  // NOLINT(bugprone-use-after-move): the point of the test
    FAIL() << "a moved-from client must throw";
  } catch (const cmdop::Error &e) {
    EXPECT_EQ(e.status(), cmdop::Status::InvalidArgument);
  }
  EXPECT_FALSE(a.is_connected());
}

TEST(Header, UnreachableServerIsUnavailable) {
  cmdop::Options o;
  o.timeout = std::chrono::milliseconds(1000);
  o.max_retries = 0;
  cmdop::Client c = cmdop::Client::local("127.0.0.1", 1, o);
  try {
    c.connect();
    FAIL() << "nothing listens on port 1";
  } catch (const cmdop::Error &e) {
    EXPECT_TRUE(e.status() == cmdop::Status::Unavailable || e.status() == cmdop::Status::Timeout) << e.what();
  }
  EXPECT_FALSE(c.is_connected());
}

TEST(Header, CallbacksAreFreedWithTheClient) {
  auto alive = std::make_shared<int>(0);
  std::weak_ptr<int> watch = alive;
  {
    cmdop::Client c = cmdop::Client::local("127.0.0.1", 1);
    c.on_connect([alive] { ++*alive; });
    c.on_error([alive](cmdop::Status, std::string_view) {});
    alive.reset();
    EXPECT_FALSE(watch.expired()) << "the client owns its callbacks";
    c.on_error(nullptr);  // replacing frees the old one
  }
  // The finalizers may run on the library's event thread just after the
  // client is freed; give them a moment.
  for (int i = 0; i < 200 && !watch.expired(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(watch.expired()) << "free_user_data must release the std::function";
}

TEST(Header, CancelTokenIsUsable) {
  cmdop::CancelToken t;
  EXPECT_NE(t.raw(), nullptr);
  t.cancel();
  t.cancel();  // idempotent
}

}  // namespace

namespace {

TEST(Header, LogCallbackCanBeInstalledAndRemoved) {
  cmdop::set_log_callback(cmdop::LogLevel::Debug, [](cmdop::LogLevel, std::string_view) {});
  cmdop::Options o;
  o.debug = true;
  (void)cmdop::Client::local("127.0.0.1", 1, o);  // may log; must not crash
  cmdop::set_log_callback(cmdop::LogLevel::Off, nullptr);
}

}  // namespace
