package cmdop

// Trampolines from C into Go. The C side holds only a cgo.Handle number as
// user_data; for client callbacks the library calls cmdopgoFreeHandle once
// it will not call the callback any more, which deletes the handle; an
// attachment's handle goes after its final call or its close (stream.go).

/*
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
*/
import "C"

import (
	"runtime/cgo"
	"sync"
	"unsafe"
)

// chunkSink is the user_data of one execute call with an output callback.
// The library calls it from its delivery thread; after a cancel, a call
// that already started may still run while the execute returns. So the
// sink is found through execSinks and forgotten by the library's finaliser
// (cmdopgoForgetExecSink), and its panic field is guarded.
type chunkSink struct {
	fn     func(StreamKind, []byte)
	cancel func()

	mu    sync.Mutex
	panic any // a panic of fn, re-raised by the execute on its goroutine
}

func (s *chunkSink) setPanic(p any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.panic == nil {
		s.panic = p
	}
}

func (s *chunkSink) takePanic() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.panic
}

// execSinks maps the user_data numbers of running executes to their sinks.
var execSinks struct {
	sync.Mutex
	next uintptr
	m    map[uintptr]*chunkSink
}

// registerExecSink returns the user_data number for sink; the library
// forgets it through cmdopgoForgetExecSink, its finaliser, once no callback
// can run any more (after a cancel, possibly after the execute returned).
func registerExecSink(sink *chunkSink) uintptr {
	execSinks.Lock()
	defer execSinks.Unlock()
	if execSinks.m == nil {
		execSinks.m = make(map[uintptr]*chunkSink)
	}
	execSinks.next++
	execSinks.m[execSinks.next] = sink
	return execSinks.next
}

//export cmdopgoForgetExecSink
func cmdopgoForgetExecSink(h C.uintptr_t) {
	execSinks.Lock()
	defer execSinks.Unlock()
	delete(execSinks.m, uintptr(h))
}

func lookupExecSink(id uintptr) *chunkSink {
	execSinks.Lock()
	defer execSinks.Unlock()
	return execSinks.m[id]
}

//export cmdopgoOnConnect
func cmdopgoOnConnect(h C.uintptr_t) {
	if fn, ok := cgo.Handle(h).Value().(func()); ok {
		fn()
	}
}

//export cmdopgoOnDisconnect
func cmdopgoOnDisconnect(h C.uintptr_t, reason *C.char, willReconnect C.bool) {
	if fn, ok := cgo.Handle(h).Value().(func(string, bool)); ok {
		fn(C.GoString(reason), bool(willReconnect))
	}
}

//export cmdopgoOnError
func cmdopgoOnError(h C.uintptr_t, status C.int, message *C.char) {
	if fn, ok := cgo.Handle(h).Value().(func(error)); ok {
		fn(&Error{Status: Status(status), Message: C.GoString(message)})
	}
}

//export cmdopgoOnTokens
func cmdopgoOnTokens(h C.uintptr_t, access, refresh *C.char) {
	if fn, ok := cgo.Handle(h).Value().(func(string, string)); ok {
		fn(C.GoString(access), C.GoString(refresh))
	}
}

//export cmdopgoOnChunk
func cmdopgoOnChunk(h C.uintptr_t, kind C.int, data *C.char, n C.size_t) {
	sink := lookupExecSink(uintptr(h))
	if sink == nil || sink.takePanic() != nil {
		return
	}
	// A panic must not unwind through the C frames below us: keep it, stop
	// the command, and let the execute re-raise it.
	defer func() {
		if p := recover(); p != nil {
			sink.setPanic(p)
			sink.cancel()
		}
	}()
	chunk := make([]byte, int(n))
	copy(chunk, unsafe.Slice((*byte)(unsafe.Pointer(data)), int(n)))
	sink.fn(StreamKind(kind), chunk)
}

//export cmdopgoFreeHandle
func cmdopgoFreeHandle(h C.uintptr_t) {
	cgo.Handle(h).Delete()
}

// cmdopgoOnOutput runs on an attachment's delivery thread: it queues a copy
// of the output for the Stream's goroutine, and on the final (NULL, 0) call
// ends the queue and deletes the handle, as the library calls no more.
//
//export cmdopgoOnOutput
func cmdopgoOnOutput(h C.uintptr_t, data *C.char, n C.size_t) {
	sink, ok := cgo.Handle(h).Value().(*outputSink)
	if !ok {
		return
	}
	if data == nil {
		close(sink.chunks)
		sink.release()
		return
	}
	chunk := make([]byte, int(n))
	copy(chunk, unsafe.Slice((*byte)(unsafe.Pointer(data)), int(n)))
	sink.push(chunk)
}

// callSink is the user_data of one transfer or streamed read: fn runs on
// the calling goroutine's thread; a panic or an error of fn stops the call
// through its cancel token, and the Go caller re-raises or returns it.
type callSink struct {
	progress func(done, total uint64)
	write    func([]byte) error
	cancel   func()
	err      error
	panic    any
}

func (s *callSink) run(fn func()) {
	defer func() {
		if p := recover(); p != nil {
			s.panic = p
			s.cancel()
		}
	}()
	fn()
}

//export cmdopgoOnProgress
func cmdopgoOnProgress(h C.uintptr_t, done, total C.uint64_t) {
	sink, ok := cgo.Handle(h).Value().(*callSink)
	if !ok || sink.panic != nil || sink.progress == nil {
		return
	}
	sink.run(func() { sink.progress(uint64(done), uint64(total)) })
}

//export cmdopgoOnReadChunk
func cmdopgoOnReadChunk(h C.uintptr_t, data *C.char, n C.size_t) {
	sink, ok := cgo.Handle(h).Value().(*callSink)
	if !ok || sink.panic != nil || sink.err != nil {
		return
	}
	sink.run(func() {
		// Borrowed for this call only: the writer must not keep it (io.Writer's contract).
		if err := sink.write(unsafe.Slice((*byte)(unsafe.Pointer(data)), int(n))); err != nil {
			sink.err = err
			sink.cancel()
		}
	})
}
