package cmdop

/*
#include "cmdopgo.h"
*/
import "C"

import (
	"runtime"
	"runtime/cgo"
	"sync"
	"unsafe"
)

// outputQueueDepth bounds the chunks waiting for a Stream's onOutput: when
// it is full the library's delivery thread waits, which slows the stream
// down instead of growing memory.
const outputQueueDepth = 64

// outputSink is the user_data of one attachment. The library's delivery
// thread (cmdopgoOnOutput) only queues copies of the output; a goroutine
// of the Stream hands them to onOutput, so user code never runs on a C
// thread and may call any Stream or Client method, Close included.
type outputSink struct {
	chunks  chan []byte   // closed by the trampoline when the stream ends
	quit    chan struct{} // closed by Close: drop whatever is still queued
	done    chan struct{} // closed once the stream ended or was closed
	handle  cgo.Handle
	quitted sync.Once
	ended   sync.Once
	freed   sync.Once
}

// push queues one chunk, waiting while the queue is full, unless the
// stream is being closed.
func (s *outputSink) push(chunk []byte) {
	select {
	case s.chunks <- chunk:
	case <-s.quit:
	}
}

// finish marks the stream as over (for Done).
func (s *outputSink) finish() { s.ended.Do(func() { close(s.done) }) }

// stop makes pump and push give up, dropping queued output.
func (s *outputSink) stop() { s.quitted.Do(func() { close(s.quit) }) }

// release deletes the cgo handle. Call it only once the library will not
// call the trampoline any more: after the final call, or after
// cmdop_attachment_close returned.
func (s *outputSink) release() { s.freed.Do(s.handle.Delete) }

// pump delivers queued output to fn in order until the stream ends or is
// closed.
func (s *outputSink) pump(fn func([]byte)) {
	for {
		select {
		case <-s.quit:
			return
		case chunk, ok := <-s.chunks:
			if !ok {
				s.finish()
				return
			}
			select {
			case <-s.quit: // closed meanwhile: deliver nothing more
				return
			default:
				fn(chunk)
			}
		}
	}
}

// Stream is a live attachment to a session's terminal, made by
// Client.Attach. Its methods are safe for use by many goroutines.
type Stream struct {
	client  *Client // keeps the client (and so the attachment) alive
	h       *streamHandle
	cleanup runtime.Cleanup
}

// streamHandle owns the C stream. Write and Resize hold mu for reading;
// closing takes it for writing, so the stream is never freed under them.
type streamHandle struct {
	mu   sync.RWMutex
	ptr  *C.cmdop_attachment
	sink *outputSink
}

func (h *streamHandle) close() {
	h.sink.stop() // unblocks the delivery thread should the queue be full
	h.mu.Lock()
	if h.ptr != nil {
		C.cmdop_attachment_close(h.ptr) // no trampoline call after this returns
		h.ptr = nil
	}
	h.mu.Unlock()
	h.sink.release()
	h.sink.finish()
}

// Attach attaches to session sessionID (see ActiveSession and Sessions):
// onOutput receives the terminal's output as it is printed, in order, one
// call at a time on a goroutine of the Stream, until the stream ends or
// Close. Each chunk is the caller's to keep. onOutput may call any method,
// including Write and Close; while it runs, further output waits (in a
// bounded queue, then in the library), so keep it quick.
//
// The stream ends by itself when the session closes, the agent goes away,
// or the Client is closed; Done then reports it. Call Close in any case.
func (c *Client) Attach(sessionID string, onOutput func([]byte)) (*Stream, error) {
	if onOutput == nil {
		return nil, &Error{Status: StatusInvalidArgument, Message: "onOutput is nil; pass a function receiving the output"}
	}
	sid, err := cString("the session id", sessionID)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(sid))

	sink := &outputSink{
		chunks: make(chan []byte, outputQueueDepth),
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	sink.handle = cgo.NewHandle(sink)
	var out *C.cmdop_attachment
	if err := c.use(func(p *C.cmdop_client) error {
		var msg *C.char
		return check(C.cmdopgo_stream_attach(p, sid, C.uintptr_t(sink.handle), &out, &msg), msg)
	}); err != nil {
		sink.release() // the library keeps user_data only on success
		return nil, err
	}
	go sink.pump(onOutput)
	s := &Stream{client: c, h: &streamHandle{ptr: out, sink: sink}}
	s.cleanup = runtime.AddCleanup(s, func(h *streamHandle) { h.close() }, s.h)
	return s, nil
}

// use runs fn with the C stream while holding it alive.
func (s *Stream) use(fn func(p *C.cmdop_attachment) error) error {
	s.h.mu.RLock()
	defer s.h.mu.RUnlock()
	if s.h.ptr == nil {
		return errStreamClosed
	}
	return fn(s.h.ptr)
}

// Write types data into the session's terminal, as if typed on its
// keyboard (send "\n" to run a command line). ErrDisconnected once the
// stream has ended or was closed.
func (s *Stream) Write(data []byte) error {
	if len(data) == 0 {
		return nil
	}
	return s.use(func(p *C.cmdop_attachment) error {
		var msg *C.char
		// The C call only reads data, and does not keep it.
		return check(C.cmdopgo_stream_write(p, unsafe.Pointer(&data[0]), C.size_t(len(data)), &msg), msg)
	})
}

// Resize sets the terminal's size in character cells (both above 0).
func (s *Stream) Resize(cols, rows uint16) error {
	return s.use(func(p *C.cmdop_attachment) error {
		var msg *C.char
		return check(C.cmdopgo_stream_resize(p, C.uint16_t(cols), C.uint16_t(rows), &msg), msg)
	})
}

// Done is closed once the stream has ended by itself (after onOutput got
// the last output) or was closed.
func (s *Stream) Done() <-chan struct{} { return s.h.sink.done }

// Close detaches from the session (which keeps running) and frees the
// stream. Output still queued is dropped; after Close returns, onOutput is
// not called again, though a call already running may still be finishing
// (Close may be called from onOutput itself). Close is idempotent and
// always returns nil.
func (s *Stream) Close() error {
	s.cleanup.Stop()
	s.h.close()
	return nil
}

var errStreamClosed = &Error{
	Status:  StatusDisconnected,
	Message: "the stream has ended or was closed; attach again with Client.Attach",
}
