package cmdop_test

// Tests against a real control plane and agent. They read CMDOP_HOST,
// CMDOP_PORT, CMDOP_API_KEY and CMDOP_TEST_HOSTNAME, as exported by the
// repository's tests/harness.sh (bindings/run_tests.sh starts the stack);
// without them the live tests are skipped.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cmdop "github.com/libcmdop/cmdop-go"
)

type stack struct {
	host    string
	port    uint16
	machine string
}

func liveStack(t *testing.T) stack {
	t.Helper()
	host, port, machine := os.Getenv("CMDOP_HOST"), os.Getenv("CMDOP_PORT"), os.Getenv("CMDOP_TEST_HOSTNAME")
	if host == "" || port == "" || machine == "" {
		t.Skip("set CMDOP_HOST, CMDOP_PORT, CMDOP_TEST_HOSTNAME (bindings/run_tests.sh does)")
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		t.Fatalf("CMDOP_PORT=%q: %v", port, err)
	}
	return stack{host, uint16(p), machine}
}

// connected returns a client connected to the stack with its machine
// selected, closed when the test ends.
func connected(t *testing.T) *cmdop.Client {
	t.Helper()
	s := liveStack(t)
	c, err := cmdop.NewLocal(s.host, s.port, &cmdop.Options{Timeout: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Connect(); err != nil {
		t.Fatal(err)
	}
	if err := c.SetMachine(s.machine); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestVersion(t *testing.T) {
	if cmdop.Version() == "" {
		t.Fatal("empty version")
	}
	if !cmdop.ABICompatible() {
		t.Fatal("the loaded libcmdop does not match cmdop.h")
	}
}

func TestInvalidArgumentsAreTypedErrors(t *testing.T) {
	_, err := cmdop.NewLocal("", 1, nil)
	if !errors.Is(err, cmdop.ErrInvalidArgument) || errors.Is(err, cmdop.ErrTimeout) {
		t.Fatalf("want only ErrInvalidArgument, got %v", err)
	}
	var e *cmdop.Error
	if !errors.As(err, &e) || e.Message == "" || e.Status != cmdop.StatusInvalidArgument {
		t.Fatalf("want an *Error with a message, got %#v", err)
	}
	if _, err := cmdop.NewLocal("host\x00name", 1, nil); !errors.Is(err, cmdop.ErrInvalidArgument) {
		t.Fatalf("a NUL byte must be rejected, got %v", err)
	}
	if _, err := cmdop.NewLocal("127.0.0.1", 1, &cmdop.Options{Timeout: -time.Second}); !errors.Is(err, cmdop.ErrInvalidArgument) {
		t.Fatalf("a negative timeout must be rejected, got %v", err)
	}
	_, err = cmdop.NewLocal("", 0, &cmdop.Options{Servers: []string{"127.0.0.1:1", ""}})
	if !errors.As(err, &e) || e.Status != cmdop.StatusInvalidArgument || !strings.Contains(e.Message, "servers[1] is empty") {
		t.Fatalf("an empty server entry must be rejected naming it, got %v", err)
	}
	if _, err := cmdop.NewRemote("k", &cmdop.Options{Server: "a:1", Servers: []string{"b:2"}}); !errors.Is(err, cmdop.ErrInvalidArgument) {
		t.Fatalf("Server and Servers together must be rejected, got %v", err)
	}
}

func TestServerListSkipsADeadFirstServer(t *testing.T) {
	s := liveStack(t)
	live := fmt.Sprintf("%s:%d", s.host, s.port)
	// Port 1 on loopback: nothing listens there.
	c, err := cmdop.NewLocal("", 0, &cmdop.Options{Timeout: 15 * time.Second, Servers: []string{"127.0.0.1:1", live}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Connect(); err != nil {
		t.Fatal(err)
	}
	info, err := c.ConnectionInfo()
	if err != nil {
		t.Fatal(err)
	}
	if info.Server != "http://"+live {
		t.Fatalf("in use: %q, want the second server %q", info.Server, live)
	}
	if err := c.SetMachine(s.machine); err != nil {
		t.Fatal(err)
	}
	res, err := c.Execute(context.Background(), "echo via-the-list")
	if err != nil || !strings.Contains(string(res.Output), "via-the-list") {
		t.Fatalf("execute through the list: %v %+v", err, res)
	}
}

func TestClosedClient(t *testing.T) {
	c, err := cmdop.NewLocal("127.0.0.1", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.OnConnect(func() {}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	c.Close() // idempotent
	_, err = c.Execute(context.Background(), "true")
	if !errors.Is(err, cmdop.ErrClosed) || !errors.Is(err, cmdop.ErrDisconnected) {
		t.Fatalf("want ErrClosed and ErrDisconnected, got %v", err)
	}
	if c.IsConnected() {
		t.Fatal("a closed client is not connected")
	}
}

func TestExecute(t *testing.T) {
	c := connected(t)
	res, err := c.Execute(context.Background(), "echo go-$((40+2))")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(res.Output, []byte("go-42")) || res.ExitCode != 0 || res.TimedOut {
		t.Fatalf("unexpected result %+v (output %q)", res, res.Output)
	}
	res, err = c.Execute(context.Background(), "exit 3")
	if err != nil || res.ExitCode != 3 {
		t.Fatalf("want exit code 3 and no error, got %+v, %v", res, err)
	}
}

// The README's first snippet, as `cmdop dev` prints its environment: no
// options at all, the server and key from $CMDOP_SERVER and $CMDOP_API_KEY
// like the cmdop command line (a loopback host:port means plaintext).
func TestNewRemoteReadsTheEnvironmentLikeTheCLI(t *testing.T) {
	s := liveStack(t)
	if os.Getenv("CMDOP_SERVER") == "" || os.Getenv("CMDOP_API_KEY") == "" {
		t.Fatal("bindings/run_tests.sh exports CMDOP_SERVER and CMDOP_API_KEY from cmdop dev")
	}
	c, err := cmdop.NewRemote("", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Connect(); err != nil {
		t.Fatal(err)
	}
	if err := c.SetMachine(s.machine); err != nil {
		t.Fatal(err)
	}
	res, err := c.Execute(context.Background(), "echo from-env")
	if err != nil || !bytes.Contains(res.Output, []byte("from-env")) {
		t.Fatalf("want from-env, got %+v, %v", res, err)
	}
}

func TestExecuteHonoursDeadline(t *testing.T) {
	c := connected(t)
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := c.Execute(ctx, "echo before-sleep; sleep 30")
	if !errors.Is(err, cmdop.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want ErrTimeout wrapping DeadlineExceeded, got %v", err)
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Fatalf("the deadline was not honoured: %v", elapsed)
	}
	if res == nil || !bytes.Contains(res.Output, []byte("before-sleep")) {
		t.Fatalf("want the partial output, got %+v", res)
	}
}

// processRunning reports whether a process on this machine (where the test
// agent runs) has exactly this command line.
func processRunning(t *testing.T, cmdline string) bool {
	t.Helper()
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range dirs {
		b, err := os.ReadFile(f)
		if err == nil && strings.TrimRight(strings.ReplaceAll(string(b), "\x00", " "), " ") == cmdline {
			return true
		}
	}
	return false
}

func TestCancelKillsTheRemoteCommand(t *testing.T) {
	c := connected(t)
	marker := fmt.Sprintf("sleep 3%d.25", os.Getpid()%10)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		deadline := time.Now().Add(10 * time.Second)
		for !processRunning(t, marker) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
	}()
	start := time.Now()
	_, err := c.Execute(ctx, "exec "+marker)
	if !errors.Is(err, cmdop.ErrCancelled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("want ErrCancelled wrapping context.Canceled, got %v", err)
	}
	if elapsed := time.Since(start); elapsed > 15*time.Second {
		t.Fatalf("cancellation took %v", elapsed)
	}
	for i := 0; processRunning(t, marker); i++ {
		if i > 250 {
			t.Fatalf("%q still runs 5 s after the cancellation", marker)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// An already cancelled context does not start anything.
	if _, err := c.Execute(ctx, "true"); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
}

func TestExecuteStream(t *testing.T) {
	c := connected(t)
	var seen bytes.Buffer
	res, err := c.ExecuteStream(context.Background(), "for i in 1 2 3; do echo line$i; sleep 0.1; done",
		func(kind cmdop.StreamKind, data []byte) { seen.Write(data) })
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(seen.String(), "line3") || !bytes.Contains(res.Output, []byte("line1")) {
		t.Fatalf("chunks %q, output %q", seen.String(), res.Output)
	}
}

func TestPanicInChunkCallbackResumesInCaller(t *testing.T) {
	c := connected(t)
	start := time.Now()
	func() {
		defer func() {
			if p := recover(); p != "stop" {
				t.Fatalf("want the callback's panic, got %v", p)
			}
		}()
		c.ExecuteStream(context.Background(), "echo go; sleep 30", func(cmdop.StreamKind, []byte) { panic("stop") })
	}()
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Fatalf("the command was not stopped: %v", elapsed)
	}
	if res, err := c.Execute(context.Background(), "true"); err != nil || res.ExitCode != 0 {
		t.Fatalf("client unusable after a callback panic: %+v %v", res, err)
	}
}

func TestManyGoroutines(t *testing.T) {
	c := connected(t)
	var wg sync.WaitGroup
	errs := make(chan error, 24)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 3; i++ {
				tag := fmt.Sprintf("g%di%d", g, i)
				res, err := c.Execute(context.Background(), "echo "+tag)
				if err != nil {
					errs <- err
				} else if !bytes.Contains(res.Output, []byte(tag)) {
					errs <- fmt.Errorf("%s: output %q", tag, res.Output)
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestCallbacks(t *testing.T) {
	s := liveStack(t)
	c, err := cmdop.NewLocal(s.host, s.port, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	connects := make(chan struct{}, 4)
	disconnects := make(chan bool, 4) // willReconnect of each call
	if err := c.OnConnect(func() { connects <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	if err := c.OnDisconnect(func(reason string, willReconnect bool) {
		if reason == "" {
			t.Error("OnDisconnect without a reason")
		}
		disconnects <- willReconnect
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-connects:
	case <-time.After(5 * time.Second):
		t.Fatal("OnConnect did not fire")
	}
	if err := c.Disconnect(); err != nil {
		t.Fatal(err)
	}
	select {
	case willReconnect := <-disconnects:
		if willReconnect {
			t.Fatal("Disconnect is final, yet OnDisconnect says the library will reconnect")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnDisconnect did not fire")
	}
	if err := c.SetMachine(s.machine); !errors.Is(err, cmdop.ErrDisconnected) {
		t.Fatalf("want ErrDisconnected after Disconnect, got %v", err)
	}
	if err := c.OnConnect(nil); err != nil { // removing frees the handle
		t.Fatal(err)
	}
	if err := c.Connect(); err != nil {
		t.Fatal(err)
	}
}

func TestAuthAndMachineErrors(t *testing.T) {
	s := liveStack(t)
	bad, err := cmdop.NewLocal(s.host, s.port, &cmdop.Options{APIKey: "cmdop_wrong_key_for_tests"})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if err := bad.Connect(); !errors.Is(err, cmdop.ErrUnauthenticated) {
		t.Fatalf("want ErrUnauthenticated, got %v", err)
	}
	c := connected(t)
	if err := c.SetMachine("no-such-machine-anywhere"); !errors.Is(err, cmdop.ErrNotFound) {
		t.Fatalf("want ErrNotFound, got %v", err)
	}
}

func TestSessionsAndInfo(t *testing.T) {
	s := liveStack(t)
	c := connected(t)
	sess, err := c.ActiveSession(s.machine)
	if err != nil {
		t.Fatal(err)
	}
	if sess.Hostname != s.machine || sess.ID == "" || sess.Status != "connected" ||
		!strings.HasPrefix(sess.MachineID, "mach_") {
		t.Fatalf("unexpected session %+v", sess)
	}
	if err := c.SetMachineID(sess.MachineID); err != nil {
		t.Fatalf("SetMachineID(%q) from the session: %v", sess.MachineID, err)
	}
	all, err := c.Sessions()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, each := range all {
		found = found || (each.ID == sess.ID && each.MachineID == sess.MachineID)
	}
	if !found {
		t.Fatalf("session %s missing from %+v", sess.ID, all)
	}
	machines, err := c.Machines("cmdop.io/status=online", s.machine)
	if err != nil {
		t.Fatal(err)
	}
	if len(machines) != 1 || machines[0].Hostname != s.machine || !machines[0].Online ||
		!strings.HasPrefix(machines[0].ID, "mach_") || machines[0].Labels["cmdop.io/hostname"] != s.machine {
		t.Fatalf("machines matching %s: %+v", s.machine, machines)
	}
	if _, err := c.Machines("env=", ""); !errors.Is(err, cmdop.ErrInvalidArgument) {
		t.Fatalf("a bad selector: %v", err)
	}
	info, err := c.ConnectionInfo()
	if err != nil {
		t.Fatal(err)
	}
	if !info.Connected || info.TLS || !strings.Contains(info.Server, strconv.Itoa(int(s.port))) {
		t.Fatalf("unexpected info %+v", info)
	}
	if !info.HasCapability("exec.v1") || !info.HasCapability("files.v1") || info.HasCapability("exec") {
		t.Fatalf("capabilities of cmdop dev: %v", info.Capabilities)
	}
}

func TestFiles(t *testing.T) {
	c := connected(t)
	dir := t.TempDir() // the agent runs on this machine
	content := []byte("binary\x00data\n")
	if err := c.WriteFile(dir+"/a.bin", content); err != nil {
		t.Fatal(err)
	}
	got, err := c.ReadFile(dir + "/a.bin")
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("read back %q, %v", got, err)
	}
	list, err := c.ListFiles(dir, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Entries) != 1 || list.Entries[0].Name != "a.bin" || list.Entries[0].Size != int64(len(content)) ||
		list.Entries[0].Type != cmdop.FileTypeFile {
		t.Fatalf("unexpected listing %+v", list)
	}
	if _, err := c.ReadFile(dir + "/missing"); !errors.Is(err, cmdop.ErrNotFound) {
		t.Fatalf("want ErrNotFound, got %v", err)
	}
}

// A Client dropped without Close is freed by the garbage collector, and the
// library then releases the callbacks it held (their cgo handles).
func TestUnclosedClientIsCollected(t *testing.T) {
	released := make(chan struct{})
	func() {
		c, err := cmdop.NewLocal("127.0.0.1", 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		captured := new([64]byte)
		runtime.AddCleanup(captured, func(ch chan struct{}) { close(ch) }, released)
		if err := c.OnConnect(func() { _ = captured[0] }); err != nil {
			t.Fatal(err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		runtime.GC()
		select {
		case <-released:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatal("the client's callback was never released: the cleanup safety net did not run")
}

func TestCloseCancelsRunningExecute(t *testing.T) {
	c := connected(t)
	done := make(chan error, 1)
	go func() {
		_, err := c.Execute(context.Background(), "sleep 30")
		done <- err
	}()
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, cmdop.ErrDisconnected) || !errors.Is(err, cmdop.ErrClosed) {
			t.Fatalf("want ErrDisconnected wrapping ErrClosed, got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not cancel the running Execute")
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Fatalf("Close took %v", elapsed)
	}
	if _, err := c.Execute(context.Background(), "true"); !errors.Is(err, cmdop.ErrClosed) {
		t.Fatalf("want ErrClosed, got %v", err)
	}
}

// attachTo attaches to the test machine's session, collecting the output.
func attachTo(t *testing.T, c *cmdop.Client) (*cmdop.Stream, *syncBuffer) {
	t.Helper()
	sess, err := c.ActiveSession(liveStack(t).machine)
	if err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	stream, err := c.Attach(sess.ID, out.Write)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stream.Close() })
	return stream, out
}

// syncBuffer collects output written from another goroutine.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
}

func (b *syncBuffer) Contains(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Contains(b.buf.String(), s)
}

func TestAttach(t *testing.T) {
	c := connected(t)
	stream, out := attachTo(t, c)
	if err := stream.Resize(100, 30); err != nil {
		t.Fatal(err)
	}
	if err := stream.Write([]byte("echo attach-$((6*7))\n")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for !out.Contains("attach-42") {
		if time.Now().After(deadline) {
			t.Fatal("attach-42 never appeared in the attached terminal's output")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := stream.Close(); err != nil {
		t.Fatal(err)
	}
	if err := stream.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	select {
	case <-stream.Done():
	default:
		t.Fatal("Done is not closed after Close")
	}
	if err := stream.Write([]byte("true\n")); !errors.Is(err, cmdop.ErrDisconnected) {
		t.Fatalf("want ErrDisconnected after Close, got %v", err)
	}
	// The client stays usable.
	if res, err := c.Execute(context.Background(), "true"); err != nil || res.ExitCode != 0 {
		t.Fatalf("client unusable after closing a stream: %+v %v", res, err)
	}
}

func TestAttachErrors(t *testing.T) {
	c := connected(t)
	if _, err := c.Attach("sess_no_such_session", func([]byte) {}); err == nil {
		t.Fatal("attaching to an unknown session must fail")
	}
	if _, err := c.Attach("x", nil); !errors.Is(err, cmdop.ErrInvalidArgument) {
		t.Fatalf("want ErrInvalidArgument for a nil callback, got %v", err)
	}
}

func TestCloseFromOutputCallback(t *testing.T) {
	c := connected(t)
	sess, err := c.ActiveSession(liveStack(t).machine)
	if err != nil {
		t.Fatal(err)
	}
	var stream *cmdop.Stream
	ready := make(chan struct{})
	stream, err = c.Attach(sess.ID, func([]byte) {
		<-ready
		stream.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	close(ready)
	if err := stream.Write([]byte("echo from-callback\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-stream.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("Close from the output callback did not end the stream")
	}
}

func TestClientCloseEndsStream(t *testing.T) {
	c := connected(t)
	stream, _ := attachTo(t, c)
	c.Close()
	select {
	case <-stream.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("closing the client did not end the stream")
	}
	if err := stream.Write([]byte("true\n")); !errors.Is(err, cmdop.ErrDisconnected) {
		t.Fatalf("want ErrDisconnected once the client is closed, got %v", err)
	}
	if err := stream.Close(); err != nil {
		t.Fatal(err)
	}
}
