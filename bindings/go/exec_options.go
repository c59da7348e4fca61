package cmdop

/*
#include "cmdopgo.h"
*/
import "C"

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"unsafe"
)

// ExecOptions says how to run a command beyond its text, for
// ExecuteWithOptions. The zero value runs it as Execute does.
type ExecOptions struct {
	// Stdin is the command's standard input (nil: none). A *bytes.Reader,
	// *bytes.Buffer or *strings.Reader is sent in one piece with the
	// command (native exec); any other reader is pumped into the command
	// while it runs, which needs streamed stdin on server and agent
	// (CapabilityExecStdin). The command sees EOF when the reader returns
	// io.EOF. Like os/exec, a reader that blocks keeps its pumping
	// goroutine until it returns, even after the command ended.
	Stdin io.Reader
	// Stdout and Stderr receive the command's output as it arrives, from
	// the library's delivery thread, one write at a time (nil: not copied). A write error kills the command
	// and is returned. The terminal path has no separate stderr: all
	// output goes to Stdout.
	Stdout io.Writer
	Stderr io.Writer
	// Env holds "NAME=value" entries added to the command's environment.
	Env []string
	// Dir is the working directory (relative and "~/" paths from the
	// agent's home); empty: the agent's default. A missing directory is
	// ErrOperationFailed.
	Dir string
	// DiscardOutput keeps no output in the Result, so memory does not grow
	// with what the command prints; use Stdout and Stderr to see it.
	DiscardOutput bool
}

// CapabilityExecStdin is listed by servers that stream stdin into a
// running command (ExecOptions.Stdin with a streaming reader).
const CapabilityExecStdin = C.CMDOP_CAPABILITY_EXEC_STDIN

// ExecuteWithOptions is Execute with stdin, environment, working
// directory and output writers. The context works as for Execute. On the
// terminal path (servers without native exec) environment and directory
// are applied in the command's subshell, and stdin is ErrNotSupported: no
// option is ever silently dropped.
func (c *Client) ExecuteWithOptions(ctx context.Context, command string, opts *ExecOptions) (*Result, error) {
	if opts == nil {
		opts = &ExecOptions{}
	}
	var pins cStrings
	defer pins.free()
	var o C.cmdop_exec_options
	streamed, err := fillExecOptions(opts, &o, &pins)
	if err != nil {
		return nil, err
	}

	// Output to the writers; the first write error kills the command.
	var writeErr error
	var onChunk func(StreamKind, []byte)
	var cancelCmd func()
	if opts.Stdout != nil || opts.Stderr != nil {
		onChunk = func(kind StreamKind, data []byte) {
			if writeErr != nil {
				return
			}
			w := opts.Stdout
			if kind == Stderr {
				w = opts.Stderr
			}
			if w == nil {
				return
			}
			if _, err := w.Write(data); err != nil {
				writeErr = err
				cancelCmd()
			}
		}
	}

	var in *C.cmdop_exec_stdin
	var pump *stdinPump
	if streamed != nil {
		if st := C.cmdop_exec_stdin_new(&in); st != C.CMDOP_STATUS_OK {
			return nil, &Error{Status: Status(st), Message: "cmdop_exec_stdin_new failed; out of memory?"}
		}
		pump = startPump(in, streamed)
		defer pump.callEnded()
	}
	result, err := c.executeCall(ctx, command, onChunk, func(p *C.cmdop_client, cmd *C.char, timeoutMs C.uint32_t,
		h C.uintptr_t, tok *C.cmdop_cancel_token, out **C.cmdop_exec_result, msg **C.char) C.cmdop_status {
		cancelCmd = func() { C.cmdop_cancel_token_cancel(tok) }
		return C.cmdopgo_exec(p, cmd, &o, timeoutMs, in, h, tok, out, msg)
	})
	if writeErr != nil {
		return result, &Error{Status: StatusOperationFailed,
			Message: "writing the command's output failed, so it was killed: " + writeErr.Error(), cause: writeErr}
	}
	if pump != nil && err == nil {
		if rerr := pump.readError(); rerr != nil {
			return result, &Error{Status: StatusOperationFailed,
				Message: "reading ExecOptions.Stdin failed (the command saw EOF there): " + rerr.Error(), cause: rerr}
		}
	}
	return result, err
}

// fillExecOptions initialises o (the header's layout version) and copies
// opts into it, the strings into pins; it returns the Stdin reader when it
// must be streamed (not an in-memory one, whose bytes go in o.stdin_data).
func fillExecOptions(opts *ExecOptions, o *C.cmdop_exec_options, pins *cStrings) (io.Reader, error) {
	if st := C.cmdop_exec_options_init(o, C.CMDOP_EXEC_OPTIONS_VERSION); st != C.CMDOP_STATUS_OK {
		return nil, &Error{Status: Status(st), Message: "cmdop_exec_options_init refused this header's options version"}
	}
	o.discard_output = C.bool(opts.DiscardOutput)
	if opts.Dir != "" {
		dir, err := pins.add("the working directory", opts.Dir)
		if err != nil {
			return nil, err
		}
		o.working_directory = dir
	}
	if len(opts.Env) > 0 {
		// The array of entries lives in C memory, freed with the strings.
		arr := (**C.char)(C.malloc(C.size_t(len(opts.Env)) * C.size_t(unsafe.Sizeof((*C.char)(nil)))))
		*pins = append(*pins, unsafe.Pointer(arr))
		slots := unsafe.Slice(arr, len(opts.Env))
		for i, e := range opts.Env {
			if !strings.Contains(e, "=") {
				return nil, &Error{Status: StatusInvalidArgument,
					Message: "ExecOptions.Env entry " + e + " is not NAME=value; add the value"}
			}
			p, err := pins.add("an environment entry", e)
			if err != nil {
				return nil, err
			}
			slots[i] = p
		}
		o.env = arr
		o.env_count = C.size_t(len(opts.Env))
	}
	switch r := opts.Stdin.(type) {
	case nil:
	case *bytes.Reader, *bytes.Buffer, *strings.Reader:
		data, err := io.ReadAll(r)
		if err != nil {
			return nil, err
		}
		o.stdin_data, o.stdin_len = pins.addBytes(data)
	default:
		return r, nil
	}
	return nil, nil
}

// stdinPump copies a reader into a cmdop_exec_stdin on its own goroutine,
// closes it at EOF, and frees it once both it and the execute call are done.
type stdinPump struct {
	in      *C.cmdop_exec_stdin
	ended   chan struct{} // closed when the execute call returned
	endOnce sync.Once
	mu      sync.Mutex
	err     error
}

func startPump(in *C.cmdop_exec_stdin, r io.Reader) *stdinPump {
	p := &stdinPump{in: in, ended: make(chan struct{})}
	go p.run(r)
	return p
}

func (p *stdinPump) run(r io.Reader) {
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			var msg *C.char
			// The command's call ended (or Close): stop pumping.
			if check(C.cmdopgo_exec_stdin_write(p.in, unsafe.Pointer(&buf[0]), C.size_t(n), &msg), msg) != nil {
				break
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				p.mu.Lock()
				p.err = err
				p.mu.Unlock()
			}
			break
		}
	}
	C.cmdop_exec_stdin_close(p.in)
	<-p.ended
	C.cmdop_exec_stdin_free(p.in)
}

// callEnded tells the pump the execute call returned, so it may free.
func (p *stdinPump) callEnded() {
	p.endOnce.Do(func() {
		// Unblocks a pump waiting in a write; a pump waiting in Read stops
		// at the reader's next return.
		C.cmdop_exec_stdin_close(p.in)
		close(p.ended)
	})
}

func (p *stdinPump) readError() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}
