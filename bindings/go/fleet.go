package cmdop

/*
#include "cmdopgo.h"
*/
import "C"

import (
	"context"
	"iter"
	"math"
	"runtime/cgo"
	"sync"
	"time"
	"unsafe"
)

// FleetOptions choose the machines ExecFleet runs on, how fast it goes,
// and where their output and results go. The zero value runs on every
// online machine, up to 64 at once, without callbacks.
type FleetOptions struct {
	// Selector is a label selector as Machines takes it ("env=prod,role in
	// (web,api)"); empty: any machine.
	Selector string
	// Hosts lists hostnames or globs, comma-separated; empty: any.
	Hosts string
	// Parallel is the most machines running at once (0: 64).
	Parallel int
	// BatchSize runs rolling batches of this many machines: the next
	// batch starts when the previous one has finished (0: one batch).
	// BatchPercent does the same with a share (1-100) of the online
	// machines, rounded up. Set at most one of the two.
	BatchSize    int
	BatchPercent int
	// MaxFailures starts no further machine once this many have failed
	// (non-zero exit, signal, timeout, unknown outcome, error); 0: no limit.
	MaxFailures int
	// Timeout kills each machine's command after this long from its start
	// (its result then has StatusTimeout and the output so far); 0: the
	// client's timeout.
	Timeout time.Duration
	// OnOutput (may be nil) receives each chunk of a machine's output as it
	// arrives: in order per machine, machines interleaving. data is the
	// caller's to keep.
	OnOutput func(m Machine, kind StreamKind, data []byte)
	// OnResult (may be nil) receives each machine's end as it comes; the
	// same result is in what ExecFleet returns.
	OnResult func(r FleetResult)
}

// FleetResult is one machine's end in ExecFleet.
type FleetResult struct {
	Machine Machine
	// Status says how the machine ended: StatusOK when the command ran to
	// its end (read ExitCode and Signal), StatusTimeout (killed at
	// FleetOptions.Timeout, confirmed), StatusOutcomeUnknown (started, end
	// unknown; not sent again), another error status, or, when Ran is
	// false, StatusUnavailable (offline, or refused before it reached the
	// machine) or StatusCancelled (the context ended, or MaxFailures was
	// reached). A command stopped while it ran also has StatusCancelled.
	Status Status
	// Ran reports whether the command was (or, after StatusOutcomeUnknown,
	// may have been) started on the machine.
	Ran bool
	// ExitCode is the command's exit code when Status is StatusOK and no
	// signal ended it; -1 otherwise.
	ExitCode int
	// Signal is the signal that ended the command, 0 if none.
	Signal int
	// Message says what happened in words ("exit 0", "timed out (killed)",
	// "did not run: offline", an error's message).
	Message string
	// Duration runs from the machine's start to its end; 0 when it did
	// not run.
	Duration time.Duration
	// Stdout and Stderr hold the output as kept (also the part before a
	// timeout); nothing with ExecOptions.DiscardOutput.
	Stdout []byte
	Stderr []byte
}

// Err is nil when the command ran to its end (whatever its exit code),
// else an *Error of the result's status and message, to test with
// errors.Is (errors.Is(r.Err(), cmdop.ErrTimeout)).
func (r FleetResult) Err() error {
	if r.Status == StatusOK {
		return nil
	}
	return &Error{Status: r.Status, Message: r.Message}
}

func fleetResultFrom(r *C.cmdop_fleet_result) FleetResult {
	out := FleetResult{
		Machine:  machineFrom(C.cmdop_fleet_result_machine(r)),
		Status:   Status(C.cmdop_fleet_result_status(r)),
		Ran:      bool(C.cmdop_fleet_result_ran(r)),
		ExitCode: int(C.cmdop_fleet_result_exit_code(r)),
		Signal:   int(C.cmdop_fleet_result_signal(r)),
		Message:  C.GoString(C.cmdop_fleet_result_message(r)),
		Duration: time.Duration(C.cmdop_fleet_result_duration_ms(r)) * time.Millisecond,
	}
	var n C.size_t
	out.Stdout = goBytes(C.cmdop_fleet_result_stdout(r, &n), n)
	out.Stderr = goBytes(C.cmdop_fleet_result_stderr(r, &n), n)
	return out
}

// fleetSink is the user_data of one ExecFleet call. The library calls it
// on the calling goroutine's thread, one call at a time, while the call
// blocks, so it needs no lock. A panic of a callback stops the fleet
// through its cancel token and resumes in ExecFleet; no callback runs
// after it.
type fleetSink struct {
	onOutput func(Machine, StreamKind, []byte)
	onResult func(FleetResult)
	cancel   func()
	machines map[string]Machine // by id, converted once each for onOutput
	panic    any
}

func (s *fleetSink) run(fn func()) {
	if s.panic != nil {
		return
	}
	defer func() {
		if p := recover(); p != nil {
			s.panic = p
			s.cancel()
		}
	}()
	fn()
}

//export cmdopgoOnFleetOutput
func cmdopgoOnFleetOutput(h C.uintptr_t, m *C.cmdop_machine, kind C.int, data *C.char, n C.size_t) {
	sink, ok := cgo.Handle(h).Value().(*fleetSink)
	if !ok || sink.onOutput == nil {
		return
	}
	sink.run(func() {
		id := C.GoString(C.cmdop_machine_id(m))
		machine, seen := sink.machines[id]
		if !seen {
			machine = machineFrom(m)
			sink.machines[id] = machine
		}
		chunk := make([]byte, int(n))
		copy(chunk, unsafe.Slice((*byte)(unsafe.Pointer(data)), int(n)))
		sink.onOutput(machine, StreamKind(kind), chunk)
	})
}

//export cmdopgoOnFleetResult
func cmdopgoOnFleetResult(h C.uintptr_t, r *C.cmdop_fleet_result) {
	sink, ok := cgo.Handle(h).Value().(*fleetSink)
	if !ok || sink.onResult == nil {
		return
	}
	sink.run(func() { sink.onResult(fleetResultFrom(r)) })
}

// fleetCount copies a non-negative count of FleetOptions into a C field.
func fleetCount(name string, v int, dst *C.uint32_t) error {
	if v < 0 || uint64(v) > math.MaxUint32 {
		return &Error{Status: StatusInvalidArgument,
			Message: "FleetOptions." + name + " must be between 0 and 4294967295"}
	}
	*dst = C.uint32_t(v)
	return nil
}

// ExecFleet runs command on every online machine fleet selects (by its
// Selector and Hosts; the machine of SetMachine plays no part) and
// returns every selected machine's end, offline ones included, sorted by
// hostname. Whatever the machines' outcomes the error is nil: check each
// result's Status (or Err) and ExitCode. opts (may be nil) applies to each
// machine: Env, Dir, DiscardOutput and an in-memory Stdin (*bytes.Reader,
// *bytes.Buffer, *strings.Reader, sent to every machine). A streamed
// Stdin and the Stdout and Stderr writers are refused
// (ErrInvalidArgument): output comes through fleet.OnOutput, which names
// its machine.
//
// fleet.OnOutput and fleet.OnResult run on the calling goroutine, one
// call at a time, while ExecFleet blocks; they must not call blocking
// Client methods (those fail with ErrInCallback) nor Close. A slow
// callback slows the machines' output down. If a callback panics, the
// fleet is stopped, no callback runs after it, and the panic resumes in
// ExecFleet.
//
// Ending ctx (cancelled, or its deadline passed) stops the fleet: running
// commands are killed and no more start, every machine's result still
// comes (those it stopped with StatusCancelled), and the results are
// returned with an ErrCancelled (or, for a deadline, ErrTimeout) error
// that wraps ctx's error. FleetOptions.Timeout bounds each machine's
// command instead.
//
// The call fails with ErrNotFound when nothing matches (Machines shows
// what there is), ErrInvalidArgument for a bad selector or host list or
// both batch fields set, ErrNotSupported when the server cannot list
// machines.
func (c *Client) ExecFleet(ctx context.Context, command string, fleet FleetOptions, opts *ExecOptions) ([]FleetResult, error) {
	if ctx.Err() != nil {
		return nil, contextError(ctx, StatusCancelled, "")
	}
	if opts == nil {
		opts = &ExecOptions{}
	}
	if opts.Stdout != nil || opts.Stderr != nil {
		return nil, &Error{Status: StatusInvalidArgument,
			Message: "ExecOptions.Stdout and Stderr are not used by ExecFleet: set FleetOptions.OnOutput, which also names the machine"}
	}
	var pins cStrings
	defer pins.free()
	var o C.cmdop_exec_options
	streamed, err := fillExecOptions(opts, &o, &pins)
	if err != nil {
		return nil, err
	}
	if streamed != nil {
		return nil, &Error{Status: StatusInvalidArgument,
			Message: "a streamed ExecOptions.Stdin cannot feed several machines: give an in-memory reader (*bytes.Reader, *bytes.Buffer, *strings.Reader)"}
	}
	if fleet.Timeout < 0 || fleet.Timeout/time.Millisecond > math.MaxUint32 {
		return nil, &Error{Status: StatusInvalidArgument, Message: "FleetOptions.Timeout must be between 0 and 4294967295 ms"}
	}
	if fleet.Timeout > 0 {
		o.timeout_ms = C.uint32_t(max(fleet.Timeout/time.Millisecond, 1))
	}

	var f C.cmdop_fleet_options
	if st := C.cmdop_fleet_options_init(&f, C.CMDOP_FLEET_OPTIONS_VERSION); st != C.CMDOP_STATUS_OK {
		return nil, &Error{Status: Status(st), Message: "cmdop_fleet_options_init refused this header's options version"}
	}
	if fleet.Selector != "" {
		if f.selector, err = pins.add("the selector", fleet.Selector); err != nil {
			return nil, err
		}
	}
	if fleet.Hosts != "" {
		if f.hosts, err = pins.add("the host list", fleet.Hosts); err != nil {
			return nil, err
		}
	}
	for _, n := range []struct {
		name string
		v    int
		dst  *C.uint32_t
	}{
		{"Parallel", fleet.Parallel, &f.parallel},
		{"BatchSize", fleet.BatchSize, &f.batch_size},
		{"BatchPercent", fleet.BatchPercent, &f.batch_percent},
		{"MaxFailures", fleet.MaxFailures, &f.max_failures},
	} {
		if err := fleetCount(n.name, n.v, n.dst); err != nil {
			return nil, err
		}
	}
	cmd, err := pins.add("the command", command)
	if err != nil {
		return nil, err
	}

	tok, release, err := contextToken(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	sink := &fleetSink{
		onOutput: fleet.OnOutput,
		onResult: fleet.OnResult,
		cancel:   func() { C.cmdop_cancel_token_cancel(tok) },
		machines: map[string]Machine{},
	}
	h := cgo.NewHandle(sink)
	defer h.Delete()
	wantOutput := C.int(0)
	if fleet.OnOutput != nil {
		wantOutput = 1
	}

	var list *C.cmdop_fleet_result_list
	var st C.cmdop_status
	var msg *C.char
	if err := c.use(func(p *C.cmdop_client) error {
		st = C.cmdopgo_exec_fleet(p, cmd, &f, &o, C.uintptr_t(h), wantOutput, tok, &list, &msg)
		return nil
	}); err != nil {
		return nil, err
	}
	text := takeMessage(msg)
	var results []FleetResult
	if list != nil {
		n := int(C.cmdop_fleet_result_list_count(list))
		results = make([]FleetResult, 0, n)
		for i := 0; i < n; i++ {
			results = append(results, fleetResultFrom(C.cmdop_fleet_result_list_get(list, C.size_t(i))))
		}
		C.cmdop_fleet_result_list_free(list)
	}
	if sink.panic != nil {
		panic(sink.panic)
	}
	if st != C.CMDOP_STATUS_OK {
		return nil, c.callError(ctx, Status(st), text)
	}
	if ctx.Err() != nil {
		return results, contextError(ctx, StatusCancelled,
			"the context ended the fleet (machines it stopped have StatusCancelled): "+context.Cause(ctx).Error())
	}
	return results, nil
}

// ExecFleetSeq is ExecFleet as an iterator over the machines' results, in
// the order they end:
//
//	for r, err := range c.ExecFleetSeq(ctx, "uptime", cmdop.FleetOptions{Selector: "env=prod"}, nil) {
//		if err != nil {
//			return err // the call failed, or ctx ended (after the results it stopped)
//		}
//		fmt.Printf("%s: %s (%s)\n", r.Machine.Hostname, r.Stdout, r.Message)
//	}
//
// Every pair but the last has a nil error; an error (with a zero
// FleetResult) comes last when ExecFleet would have returned one. The
// fleet runs on a goroutine of its own, so the loop body may call any
// Client method, and fleet.OnOutput and fleet.OnResult run on that
// goroutine (not the loop's). Results wait in memory for the loop: a
// slow loop does not slow the machines. Leaving the loop early stops the
// fleet (running commands are killed, no more start); the iterator
// returns once the call has ended, so no callback runs after it. A panic
// of a callback resumes in the loop's goroutine.
func (c *Client) ExecFleetSeq(ctx context.Context, command string, fleet FleetOptions, opts *ExecOptions) iter.Seq2[FleetResult, error] {
	return func(yield func(FleetResult, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var q fleetQueue
		q.ready = make(chan struct{}, 1)
		onResult := fleet.OnResult
		fleet.OnResult = func(r FleetResult) {
			if onResult != nil {
				onResult(r)
			}
			q.push(r)
		}
		type end struct {
			err   error
			panic any
		}
		done := make(chan end, 1)
		go func() {
			var e end
			defer func() {
				e.panic = recover()
				done <- e
			}()
			_, e.err = c.ExecFleet(ctx, command, fleet, opts)
		}()
		finished := false
		defer func() {
			if !finished {
				cancel()
				<-done
			}
		}()
		for {
			var last *end
			select {
			case <-q.ready:
			case e := <-done:
				finished = true
				last = &e
			}
			// Every result was queued before the call returned: drain them
			// all before the end.
			for _, r := range q.take() {
				if !yield(r, nil) {
					return
				}
			}
			if last != nil {
				if last.panic != nil {
					panic(last.panic)
				}
				if last.err != nil {
					yield(FleetResult{}, last.err)
				}
				return
			}
		}
	}
}

// fleetQueue hands results from the fleet's goroutine to the iterator's
// without ever blocking the fleet (at most one result per machine, which
// ExecFleet's returned list would hold anyway).
type fleetQueue struct {
	mu    sync.Mutex
	items []FleetResult
	ready chan struct{} // holds a token when items may be waiting
}

func (q *fleetQueue) push(r FleetResult) {
	q.mu.Lock()
	q.items = append(q.items, r)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

func (q *fleetQueue) take() []FleetResult {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items = nil
	return items
}
