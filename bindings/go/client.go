package cmdop

/*
#include "cmdopgo.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Version is the version of the loaded libcmdop, e.g. "1.0.0".
func Version() string { return C.GoString(C.cmdop_version()) }

// ABICompatible reports whether the loaded libcmdop implements the ABI the
// header this package was built with describes.
func ABICompatible() bool { return C.cmdop_abi_version() == C.CMDOP_ABI_VERSION }

// Options configure a Client. The zero value means the library's defaults
// everywhere; fields marked (remote) or (local) apply only to clients made
// by NewRemote or NewLocal.
type Options struct {
	// Server is "host:port" or "https://host:port"; empty means the hosted
	// endpoint. (remote; NewLocal takes host and port)
	Server string
	// Servers lists several control planes (replicas of one cluster),
	// "host:port" each. When not empty it is used instead of Server
	// (remote, which then must be empty) or of NewLocal's host and port
	// (which are then ignored). Connect tries them in a random order of
	// the client's own (so that clients spread over the replicas) and takes
	// the first that answers; when the one in use is lost the client moves
	// to another that does (OnDisconnect with willReconnect, then
	// OnConnect), and ConnectionInfo().Server names it. A load balancer or
	// DNS name in front of the replicas needs no list: give it as Server.
	Servers []string
	// ServersInOrder makes Connect try Servers in the list's order (the
	// first that answers) instead of a random one: for a preferred
	// replica, or servers that are not one cluster.
	ServersInOrder bool
	// APIKey authenticates; empty means $CMDOP_API_KEY if set. (local;
	// NewRemote takes the key as an argument)
	APIKey string
	// TLS: TLSDefault (TLS for remote clients, plaintext for local ones),
	// TLSOn or TLSOff.
	TLS TLSMode
	// CAPEMPath is a PEM file of CA certificates to trust instead of the
	// system roots; CAPEM holds such PEM bytes directly.
	CAPEMPath string
	CAPEM     []byte
	// Timeout is the default deadline of each call and of connecting
	// (0: 30 s). Execute also honours its context's deadline.
	Timeout time.Duration
	// MaxRetries is the number of extra attempts of calls safe to repeat
	// (0: 3; negative: none). RetryDelay is the pause between them (0: 500 ms).
	MaxRetries int
	RetryDelay time.Duration
	// DisableAutoReconnect stops the client from reconnecting in the
	// background when the connection drops.
	DisableAutoReconnect bool
	// ReconnectDelay (0: 1 s) doubles per attempt up to MaxReconnectDelay
	// (0: 30 s); MaxReconnectAttempts (0: 10; negative: never give up).
	ReconnectDelay       time.Duration
	MaxReconnectDelay    time.Duration
	MaxReconnectAttempts int
	// Debug emits debug-level log messages.
	Debug bool
	// DisableAutoRefresh keeps OAuth clients from refreshing an expired
	// access token. (remote)
	DisableAutoRefresh bool
}

// TLSMode says whether a client uses TLS (cmdop_tls in cmdop.h).
type TLSMode int

const (
	// TLSDefault is TLS for NewRemote*, plaintext for NewLocal.
	TLSDefault TLSMode = C.CMDOP_TLS_DEFAULT
	// TLSOn always uses TLS.
	TLSOn TLSMode = C.CMDOP_TLS_ON
	// TLSOff uses plaintext (tests, private networks).
	TLSOff TLSMode = C.CMDOP_TLS_OFF
)

// Client is a connection to one control plane with one set of
// credentials. It is safe for use by many goroutines at once. Call Close
// when done; an unreachable Client is also freed by the garbage collector,
// but only as a safety net.
type Client struct {
	h       *clientHandle
	cleanup runtime.Cleanup
}

// clientHandle owns the C client. Calls hold mu for reading; freeing takes
// it for writing, so the C client is never freed under a running call.
// Calls in flight need no registry: cmdop_close ends them (DISCONNECTED).
type clientHandle struct {
	mu  sync.RWMutex
	ptr *C.cmdop_client
	// closing is set by Close, so that a call it ended wraps ErrClosed.
	closing atomic.Bool
}

func (h *clientHandle) free() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ptr != nil {
		C.cmdop_client_free(h.ptr)
		h.ptr = nil
	}
}

func newClient(ptr *C.cmdop_client) *Client {
	c := &Client{h: &clientHandle{ptr: ptr}}
	c.cleanup = runtime.AddCleanup(c, func(h *clientHandle) { h.free() }, c.h)
	return c
}

// use runs fn with the C client while holding it alive.
func (c *Client) use(fn func(p *C.cmdop_client) error) error {
	c.h.mu.RLock()
	defer c.h.mu.RUnlock()
	if c.h.ptr == nil {
		return errClosed
	}
	return fn(c.h.ptr)
}

// NewRemote creates a client for a remote control plane authenticated with
// an API key (empty: $CMDOP_API_KEY). opts may be nil. It does not
// connect: install callbacks, then call Connect.
func NewRemote(apiKey string, opts *Options) (*Client, error) {
	var o C.cmdop_options
	var pins cStrings
	defer pins.free()
	if err := fillOptions(opts, &o, &pins, false); err != nil {
		return nil, err
	}
	var key *C.char
	if apiKey != "" {
		var err error
		if key, err = pins.add("the API key", apiKey); err != nil {
			return nil, err
		}
	}
	var out *C.cmdop_client
	var msg *C.char
	st := C.cmdopgo_remote_new(key, &o, &out, &msg)
	if err := check(st, msg); err != nil {
		return nil, err
	}
	return newClient(out), nil
}

// NewRemoteOAuth creates a client authenticated with OAuth tokens; with
// automatic refresh (the default) new tokens go to the OnTokens callback.
func NewRemoteOAuth(accessToken, refreshToken string, opts *Options) (*Client, error) {
	var o C.cmdop_options
	var pins cStrings
	defer pins.free()
	if err := fillOptions(opts, &o, &pins, false); err != nil {
		return nil, err
	}
	access, err := pins.add("the access token", accessToken)
	if err != nil {
		return nil, err
	}
	refresh, err := pins.add("the refresh token", refreshToken)
	if err != nil {
		return nil, err
	}
	var out *C.cmdop_client
	var msg *C.char
	st := C.cmdopgo_remote_new_oauth(access, refresh, &o, &out, &msg)
	if err := check(st, msg); err != nil {
		return nil, err
	}
	return newClient(out), nil
}

// NewLocal creates a client for a control plane at host:port (plaintext
// unless opts.TLS), e.g. one started by `cmdop dev`. opts may be nil. It
// does not connect.
func NewLocal(host string, port uint16, opts *Options) (*Client, error) {
	var o C.cmdop_options
	var pins cStrings
	defer pins.free()
	if err := fillOptions(opts, &o, &pins, true); err != nil {
		return nil, err
	}
	var key *C.char
	if opts != nil && opts.APIKey != "" {
		var err error
		if key, err = pins.add("the API key", opts.APIKey); err != nil {
			return nil, err
		}
	}
	h, err := pins.add("the host", host)
	if err != nil {
		return nil, err
	}
	var out *C.cmdop_client
	var msg *C.char
	st := C.cmdopgo_local_new(h, C.uint16_t(port), key, &o, &out, &msg)
	if err := check(st, msg); err != nil {
		return nil, err
	}
	return newClient(out), nil
}

// Connect opens the connection and checks the credentials. It does nothing
// on a connected client and reconnects a closed one; it blocks up to the
// client's timeout.
func (c *Client) Connect() error {
	return c.use(func(p *C.cmdop_client) error {
		var msg *C.char
		return check(C.cmdopgo_connect(p, &msg), msg)
	})
}

// Disconnect closes the connection; later calls fail with ErrDisconnected
// until Connect. Unlike Close it keeps the client usable.
func (c *Client) Disconnect() error {
	return c.use(func(p *C.cmdop_client) error {
		var msg *C.char
		return check(C.cmdopgo_close(p, &msg), msg)
	})
}

// Close disconnects and frees the client. Calls running on other
// goroutines end promptly: the library's cmdop_close stops them (a running
// command is killed; the call fails with an ErrDisconnected error that
// also wraps ErrClosed); Close waits for them to return, and ends the
// client's Streams.
// Later calls fail with ErrClosed. Close is idempotent; do not call it from
// a callback of the same client.
func (c *Client) Close() error {
	c.h.closing.Store(true)
	c.h.mu.RLock()
	if c.h.ptr != nil {
		C.cmdop_close(c.h.ptr) // wakes calls waiting on the connection
	}
	c.h.mu.RUnlock()
	c.cleanup.Stop()
	c.h.free()
	return nil
}

// IsConnected reports whether the client is connected now.
func (c *Client) IsConnected() bool {
	connected := false
	_ = c.use(func(p *C.cmdop_client) error {
		connected = bool(C.cmdop_is_connected(p))
		return nil
	})
	return connected
}

// SetMachine selects the machine later calls act on, by hostname: an exact
// match or a unique case-insensitive substring.
func (c *Client) SetMachine(hostname string) error { return c.setMachine("the hostname", hostname, 0) }

// SetMachineID selects the machine by its stable id ("mach_…").
func (c *Client) SetMachineID(machineID string) error {
	return c.setMachine("the machine id", machineID, 1)
}

func (c *Client) setMachine(what, name string, byID C.int) error {
	s, err := cString(what, name)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(s))
	return c.use(func(p *C.cmdop_client) error {
		var msg *C.char
		return check(C.cmdopgo_set_machine(p, s, byID, &msg), msg)
	})
}

// StreamKind says which stream a chunk of output belongs to.
type StreamKind int

const (
	Stdout StreamKind = C.CMDOP_STREAM_KIND_STDOUT
	// Stderr is seen only on the native exec path; a terminal merges it
	// into Stdout.
	Stderr StreamKind = C.CMDOP_STREAM_KIND_STDERR
)

// Result is the outcome of a command.
type Result struct {
	Output    []byte // stdout and stderr in arrival order
	Stdout    []byte // on the terminal path: all output
	Stderr    []byte // native path only
	ExitCode  int    // -1 when killed by a signal or timed out
	Signal    int    // signal that ended the command (native path), 0 if none
	TimedOut  bool
	Native    bool // ran through native exec rather than a terminal
	Truncated bool // output beyond the library's cap was dropped
	Duration  time.Duration
}

// deadlineGrace is how long ExecuteStream lets the library's own timeout
// end a command after the context's deadline before cancelling it. The
// library's timeout keeps the partial output (a cancellation has none), and
// killing the command can take a while on a loaded machine: be generous.
const deadlineGrace = 5 * time.Second

// Execute runs a shell command on the selected machine and waits for it.
// The context's deadline bounds the command (else the client's timeout
// does); cancelling the context kills the command. A non-zero exit code is
// not an error: check Result.ExitCode. After a timeout both a Result (the
// output printed before the kill) and an ErrTimeout error are returned.
func (c *Client) Execute(ctx context.Context, command string) (*Result, error) {
	return c.ExecuteStream(ctx, command, nil)
}

// ExecuteStream is Execute, also handing each chunk of output to onChunk
// (may be nil) as it arrives, on the library's delivery thread (one call
// at a time, in order). If onChunk panics, the command is killed and the
// panic resumes in ExecuteStream. After ctx ends, a call of onChunk that
// had already started may still be running when ExecuteStream returns.
func (c *Client) ExecuteStream(ctx context.Context, command string, onChunk func(StreamKind, []byte)) (*Result, error) {
	return c.executeCall(ctx, command, onChunk, func(p *C.cmdop_client, cmd *C.char, timeoutMs C.uint32_t,
		h C.uintptr_t, tok *C.cmdop_cancel_token, out **C.cmdop_exec_result, msg **C.char) C.cmdop_status {
		return C.cmdopgo_exec(p, cmd, nil, timeoutMs, nil, h, tok, out, msg)
	})
}

// execCall is one C execute function: it runs cmd with a timeout (0: the
// client's), the chunk trampoline's handle h (0: none) and cancel token tok.
type execCall func(p *C.cmdop_client, cmd *C.char, timeoutMs C.uint32_t, h C.uintptr_t,
	tok *C.cmdop_cancel_token, out **C.cmdop_exec_result, msg **C.char) C.cmdop_status

// executeCall runs call with the context mapped onto the library's timeout
// and a cancel token, and onChunk (may be nil) behind the chunk trampoline.
func (c *Client) executeCall(ctx context.Context, command string, onChunk func(StreamKind, []byte), call execCall) (*Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, contextError(ctx, StatusCancelled, "")
	}
	timeoutMs := C.uint32_t(0) // the client's timeout
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, contextError(ctx, StatusTimeout, "")
		}
		ms := (left + time.Millisecond - 1) / time.Millisecond
		timeoutMs = C.uint32_t(min(int64(ms), math.MaxUint32))
	}
	cmd, err := cString("the command", command)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(cmd))

	tok := C.cmdop_cancel_token_new()
	if tok == nil {
		return nil, &Error{Status: StatusInternal, Message: "out of memory creating a cancel token"}
	}
	// Cancellation kills the command at once. A passed deadline is the
	// library's own timeout (timeoutMs above), which keeps the partial
	// output; the token only backs it up should the library be late.
	finished := make(chan struct{})
	cancelled := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(cancelled)
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			select {
			case <-finished:
				return
			case <-time.After(deadlineGrace):
			}
		}
		C.cmdop_cancel_token_cancel(tok)
	})
	defer func() {
		close(finished)
		if !stop() {
			<-cancelled // the AfterFunc ran: let it finish before freeing tok
		}
		C.cmdop_cancel_token_free(tok)
	}()

	var sink *chunkSink
	var handle C.uintptr_t
	if onChunk != nil {
		sink = &chunkSink{fn: onChunk, cancel: func() { C.cmdop_cancel_token_cancel(tok) }}
		// Forgotten by the library's finaliser (cmdopgoForgetExecSink).
		handle = C.uintptr_t(registerExecSink(sink))
	}

	var out *C.cmdop_exec_result
	var st C.cmdop_status
	var msg *C.char
	if err := c.use(func(p *C.cmdop_client) error {
		st = call(p, cmd, timeoutMs, handle, tok, &out, &msg)
		return nil
	}); err != nil {
		return nil, err
	}
	result := takeResult(out)
	text := takeMessage(msg)
	if sink != nil {
		if p := sink.takePanic(); p != nil {
			panic(p)
		}
	}
	if st == C.CMDOP_STATUS_OK {
		return result, nil
	}
	status := Status(st)
	if (status == StatusCancelled || status == StatusTimeout) && ctx.Err() != nil {
		return result, contextError(ctx, status, text)
	}
	if status == StatusDisconnected && c.h.closing.Load() {
		return result, &Error{Status: status, Message: "Close was called while the command ran; it was killed",
			cause: ErrClosed}
	}
	return result, &Error{Status: status, Message: text}
}

// contextError describes a call ended by its context: a passed deadline is
// a timeout, a cancellation is a cancellation, and both wrap ctx.Err().
func contextError(ctx context.Context, status Status, text string) error {
	cause := context.Cause(ctx)
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		status = StatusTimeout
	} else if status == StatusTimeout {
		status = StatusCancelled
	}
	if text == "" {
		text = "the context ended the call: " + cause.Error()
	}
	return &Error{Status: status, Message: text, cause: cause}
}

// takeResult copies a C result into Go memory and frees it (nil for nil).
func takeResult(r *C.cmdop_exec_result) *Result {
	if r == nil {
		return nil
	}
	defer C.cmdop_exec_result_free(r)
	var n C.size_t
	out := &Result{}
	out.Output = goBytes(C.cmdop_exec_result_output(r, &n), n)
	out.Stdout = goBytes(C.cmdop_exec_result_stdout(r, &n), n)
	out.Stderr = goBytes(C.cmdop_exec_result_stderr(r, &n), n)
	out.ExitCode = int(C.cmdop_exec_result_exit_code(r))
	out.Signal = int(C.cmdop_exec_result_signal(r))
	out.TimedOut = bool(C.cmdop_exec_result_timed_out(r))
	out.Native = bool(C.cmdop_exec_result_native(r))
	out.Truncated = bool(C.cmdop_exec_result_truncated(r))
	out.Duration = time.Duration(C.cmdop_exec_result_duration_ms(r)) * time.Millisecond
	return out
}

// OnConnect sets (nil: removes) the function called when the client
// connects or reconnects. Callbacks run on a library thread, one at a
// time and in order; they must return quickly, must not panic, and must
// not call blocking Client methods (those fail with ErrInCallback).
func (c *Client) OnConnect(fn func()) error { return c.setCallback(C.CMDOPGO_ON_CONNECT, fn) }

// OnDisconnect sets (nil: removes) the function called when the connection
// is gone, with the reason; willReconnect is true while the library keeps
// trying by itself, false when this is final (Disconnect, Close,
// reconnection off or given up: call Connect to try again). See OnConnect
// for the rules.
func (c *Client) OnDisconnect(fn func(reason string, willReconnect bool)) error {
	return c.setCallback(C.CMDOPGO_ON_DISCONNECT, fn)
}

// OnError sets (nil: removes) the function called for every failed call
// and background failure; see OnConnect for the rules.
func (c *Client) OnError(fn func(err error)) error { return c.setCallback(C.CMDOPGO_ON_ERROR, fn) }

// OnTokens sets (nil: removes) the function receiving refreshed OAuth
// tokens; see OnConnect for the rules.
func (c *Client) OnTokens(fn func(accessToken, refreshToken string)) error {
	return c.setCallback(C.CMDOPGO_ON_TOKENS, fn)
}

func (c *Client) setCallback(which C.int, fn any) error {
	isNil := false
	switch f := fn.(type) {
	case func():
		isNil = f == nil
	case func(string, bool):
		isNil = f == nil
	case func(error):
		isNil = f == nil
	case func(string, string):
		isNil = f == nil
	}
	return c.use(func(p *C.cmdop_client) error {
		var msg *C.char
		if isNil {
			return check(C.cmdopgo_set_callback(p, which, 0, &msg), msg)
		}
		// The library owns the handle from here on and deletes it through
		// cmdopgoFreeHandle once the callback is replaced or the client freed.
		h := cgo.NewHandle(fn)
		if err := check(C.cmdopgo_set_callback(p, which, C.uintptr_t(h), &msg), msg); err != nil {
			h.Delete()
			return err
		}
		return nil
	})
}

// cStrings keeps C copies of Go strings alive for one call.
type cStrings []unsafe.Pointer

func (s *cStrings) add(what, v string) (*C.char, error) {
	p, err := cString(what, v)
	if err != nil {
		return nil, err
	}
	*s = append(*s, unsafe.Pointer(p))
	return p, nil
}

func (s *cStrings) addBytes(b []byte) (*C.uint8_t, C.size_t) {
	if len(b) == 0 {
		return nil, 0
	}
	p := C.CBytes(b)
	*s = append(*s, p)
	return (*C.uint8_t)(p), C.size_t(len(b))
}

func (s *cStrings) free() {
	for _, p := range *s {
		C.free(p)
	}
	*s = nil
}

// fillOptions initialises o (the header's layout version) and copies opts
// into it; Server is for remote clients only.
func fillOptions(opts *Options, o *C.cmdop_options, pins *cStrings, local bool) error {
	if st := C.cmdop_options_init(o, C.CMDOP_OPTIONS_VERSION); st != C.CMDOP_STATUS_OK {
		return &Error{Status: Status(st), Message: "cmdop_options_init refused this header's options version"}
	}
	if opts == nil {
		return nil
	}
	if opts.Server != "" {
		if local {
			return &Error{Status: StatusInvalidArgument,
				Message: "Options.Server is for NewRemote; NewLocal takes host and port"}
		}
		s, err := pins.add("the server address", opts.Server)
		if err != nil {
			return err
		}
		o.server = s
	}
	if n := len(opts.Servers); n > 0 {
		// The array lives in C memory, like the strings it points to.
		arr := (**C.char)(C.malloc(C.size_t(n) * C.size_t(unsafe.Sizeof((*C.char)(nil)))))
		if arr == nil {
			return &Error{Status: StatusInternal, Message: "out of memory for the server list"}
		}
		*pins = append(*pins, unsafe.Pointer(arr))
		entries := unsafe.Slice(arr, n)
		for i, server := range opts.Servers {
			p, err := pins.add(fmt.Sprintf("Options.Servers[%d]", i), server)
			if err != nil {
				return err
			}
			entries[i] = p
		}
		o.servers = arr
		o.server_count = C.size_t(n)
	}
	o.servers_in_order = C.bool(opts.ServersInOrder)
	o.tls = C.int(opts.TLS)
	o.auto_refresh = C.bool(!opts.DisableAutoRefresh)
	return commonOptions(opts, pins, &o.ca_pem_path, &o.ca_pem, &o.ca_pem_len, &o.timeout_ms,
		&o.max_retries, &o.retry_delay_ms, &o.auto_reconnect, &o.reconnect_delay_ms,
		&o.max_reconnect_delay_ms, &o.max_reconnect_attempts, &o.debug)
}

// commonOptions writes the fields every client shares.
func commonOptions(opts *Options, pins *cStrings, caPath **C.char, caPEM **C.uint8_t, caLen *C.size_t,
	timeout, retries, retryDelay *C.uint32_t, autoReconnect *C.bool,
	reconnectDelay, maxReconnectDelay, maxAttempts *C.uint32_t, debug *C.bool) error {
	if opts.CAPEMPath != "" {
		p, err := pins.add("the CA file path", opts.CAPEMPath)
		if err != nil {
			return err
		}
		*caPath = p
	}
	*caPEM, *caLen = pins.addBytes(opts.CAPEM)
	for _, d := range []struct {
		name string
		v    time.Duration
		dst  *C.uint32_t
	}{
		{"Timeout", opts.Timeout, timeout},
		{"RetryDelay", opts.RetryDelay, retryDelay},
		{"ReconnectDelay", opts.ReconnectDelay, reconnectDelay},
		{"MaxReconnectDelay", opts.MaxReconnectDelay, maxReconnectDelay},
	} {
		if d.v < 0 || d.v/time.Millisecond > math.MaxUint32 {
			return &Error{Status: StatusInvalidArgument,
				Message: "Options." + d.name + " must be between 0 and 4294967295 ms"}
		}
		if d.v > 0 {
			*d.dst = C.uint32_t(max(d.v/time.Millisecond, 1))
		}
	}
	if opts.MaxRetries < 0 {
		*retries = 0
	} else if opts.MaxRetries > 0 {
		*retries = C.uint32_t(min(opts.MaxRetries, math.MaxUint32))
	}
	if opts.MaxReconnectAttempts < 0 {
		*maxAttempts = 0
	} else if opts.MaxReconnectAttempts > 0 {
		*maxAttempts = C.uint32_t(min(opts.MaxReconnectAttempts, math.MaxUint32))
	}
	*autoReconnect = C.bool(!opts.DisableAutoReconnect)
	*debug = C.bool(opts.Debug)
	return nil
}
