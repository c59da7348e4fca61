package cmdop_test

// ExecFleet and ExecFleetSeq on the stack's one machine, chosen by its
// hostname (the host list) or a selector over its facts.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	cmdop "github.com/libcmdop/cmdop-go"
)

// brief describes results without their machines' labels and facts.
func brief(rs ...cmdop.FleetResult) string {
	var b strings.Builder
	for _, r := range rs {
		fmt.Fprintf(&b, "[%s: %v ran=%v exit=%d signal=%d %q stdout=%q stderr=%q in %v] ", r.Machine.Hostname,
			r.Status, r.Ran, r.ExitCode, r.Signal, r.Message, r.Stdout, r.Stderr, r.Duration)
	}
	if b.Len() == 0 {
		return "none"
	}
	return b.String()
}

func TestExecFleet(t *testing.T) {
	s := liveStack(t)
	c := connected(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out := map[string]string{} // by hostname and stream
	var ended []cmdop.FleetResult
	fleet := cmdop.FleetOptions{
		Hosts: s.machine,
		OnOutput: func(m cmdop.Machine, kind cmdop.StreamKind, data []byte) {
			out[fmt.Sprintf("%s/%d", m.Hostname, kind)] += string(data)
		},
		OnResult: func(r cmdop.FleetResult) { ended = append(ended, r) },
	}
	results, err := c.ExecFleet(ctx, `echo "$CMDOP_GO_FLEET" $((40+2)); tr a-z A-Z; echo on-err >&2`, fleet,
		&cmdop.ExecOptions{Env: []string{"CMDOP_GO_FLEET=fleet-x"}, Stdin: strings.NewReader("from stdin\n")})
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 1 {
		t.Fatalf("want one result, got %s", brief(results...))
	}
	r := results[0]
	if r.Machine.Hostname != s.machine || !strings.HasPrefix(r.Machine.ID, "mach_") || !r.Machine.Online {
		t.Errorf("machine %+v, want %s", r.Machine, s.machine)
	}
	if r.Status != cmdop.StatusOK || !r.Ran || r.ExitCode != 0 || r.Signal != 0 || r.Err() != nil || r.Message != "exit 0" {
		t.Errorf("want a clean exit 0, got %s", brief(r))
	}
	if string(r.Stdout) != "fleet-x 42\nFROM STDIN\n" || string(r.Stderr) != "on-err\n" {
		t.Errorf("stdout %q stderr %q", r.Stdout, r.Stderr)
	}
	if r.Duration <= 0 || r.Duration > 30*time.Second {
		t.Errorf("duration %v", r.Duration)
	}
	stdoutKey, stderrKey := fmt.Sprintf("%s/%d", s.machine, cmdop.Stdout), fmt.Sprintf("%s/%d", s.machine, cmdop.Stderr)
	if len(out) != 2 || out[stdoutKey] != "fleet-x 42\nFROM STDIN\n" || out[stderrKey] != "on-err\n" {
		t.Errorf("OnOutput saw %q", out)
	}
	if len(ended) != 1 || ended[0].Machine.Hostname != s.machine || string(ended[0].Stdout) != string(r.Stdout) {
		t.Errorf("OnResult must run once with the machine's result, got %s", brief(ended...))
	}

	// A non-zero exit is a result, not an error; a selector over facts
	// picks the same machine.
	results, err = c.ExecFleet(ctx, "echo partial; exit 7",
		cmdop.FleetOptions{Selector: "cmdop.io/hostname=" + s.machine}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 1 || results[0].Machine.Hostname != s.machine || results[0].Status != cmdop.StatusOK ||
		results[0].ExitCode != 7 || results[0].Err() != nil || string(results[0].Stdout) != "partial\n" {
		t.Fatalf("want exit 7 with its output, got %s", brief(results...))
	}

	// DiscardOutput keeps nothing; OnOutput still sees it.
	var seen strings.Builder
	results, err = c.ExecFleet(ctx, "echo only-in-callback", cmdop.FleetOptions{
		Hosts:    s.machine,
		OnOutput: func(_ cmdop.Machine, _ cmdop.StreamKind, d []byte) { seen.Write(d) },
	}, &cmdop.ExecOptions{DiscardOutput: true})
	if err != nil || len(results) != 1 || len(results[0].Stdout) != 0 || seen.String() != "only-in-callback\n" {
		t.Fatalf("discard: %v, %s, callback %q", err, brief(results...), seen.String())
	}
}

func TestExecFleetTimeoutIsAPerMachineStatus(t *testing.T) {
	s := liveStack(t)
	c := connected(t)
	start := time.Now()
	results, err := c.ExecFleet(context.Background(), "echo started; sleep 30",
		cmdop.FleetOptions{Hosts: s.machine, Timeout: 700 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if elapsed := time.Since(start); elapsed > 15*time.Second {
		t.Fatalf("the timeout was not honoured: %v", elapsed)
	}
	if len(results) != 1 {
		t.Fatalf("want one result, got %s", brief(results...))
	}
	r := results[0]
	if r.Status != cmdop.StatusTimeout || !errors.Is(r.Err(), cmdop.ErrTimeout) || !r.Ran || r.ExitCode != -1 {
		t.Errorf("want a confirmed timeout, got %s", brief(r))
	}
	if string(r.Stdout) != "started\n" || r.Duration < 500*time.Millisecond {
		t.Errorf("want the output before the kill and the time it ran, got %q after %v", r.Stdout, r.Duration)
	}
}

func TestExecFleetRefusals(t *testing.T) {
	s := liveStack(t)
	c := connected(t)
	ctx := context.Background()
	calls := 0
	fleet := cmdop.FleetOptions{
		Selector: "no-such-label=anywhere",
		OnOutput: func(cmdop.Machine, cmdop.StreamKind, []byte) { calls++ },
		OnResult: func(cmdop.FleetResult) { calls++ },
	}
	results, err := c.ExecFleet(ctx, "true", fleet, nil)
	var e *cmdop.Error
	if !errors.Is(err, cmdop.ErrNotFound) || !errors.As(err, &e) || !strings.Contains(e.Message, "no machine matches") || results != nil {
		t.Errorf("a selector matching nothing: want ErrNotFound, got %v, %s", err, brief(results...))
	}
	fleet.Selector = ""
	fleet.Hosts = "no-such-host-anywhere,no-such-*-either"
	if _, err := c.ExecFleet(ctx, "true", fleet, nil); !errors.Is(err, cmdop.ErrNotFound) {
		t.Errorf("a host list matching nothing: want ErrNotFound, got %v", err)
	}
	fleet.Hosts = ""
	fleet.Selector = "env="
	if _, err := c.ExecFleet(ctx, "true", fleet, nil); !errors.Is(err, cmdop.ErrInvalidArgument) {
		t.Errorf("a bad selector: want ErrInvalidArgument, got %v", err)
	}
	fleet.Selector = ""
	fleet.Hosts = s.machine
	for name, bad := range map[string]struct {
		fleet cmdop.FleetOptions
		opts  *cmdop.ExecOptions
	}{
		"both batch fields": {cmdop.FleetOptions{Hosts: s.machine, BatchSize: 1, BatchPercent: 50}, nil},
		"negative Parallel": {cmdop.FleetOptions{Hosts: s.machine, Parallel: -1}, nil},
		"negative Timeout":  {cmdop.FleetOptions{Hosts: s.machine, Timeout: -time.Second}, nil},
		"Stdout writer":     {fleet, &cmdop.ExecOptions{Stdout: os.Stdout}},
		"streamed Stdin":    {fleet, &cmdop.ExecOptions{Stdin: onlyReader{strings.NewReader("x")}}},
	} {
		if _, err := c.ExecFleet(ctx, "true", bad.fleet, bad.opts); !errors.Is(err, cmdop.ErrInvalidArgument) {
			t.Errorf("%s: want ErrInvalidArgument, got %v", name, err)
		}
	}
	if calls != 0 {
		t.Errorf("refused calls ran %d callbacks", calls)
	}
}

func TestExecFleetContextCancelKillsTheCommands(t *testing.T) {
	s := liveStack(t)
	c := connected(t)
	marker := fmt.Sprintf("sleep 4%d.25", os.Getpid()%10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	// Cancelled from the output callback, once the command has started.
	results, err := c.ExecFleet(ctx, "echo started; exec "+marker, cmdop.FleetOptions{
		Hosts: s.machine,
		OnOutput: func(_ cmdop.Machine, _ cmdop.StreamKind, d []byte) {
			deadline := time.Now().Add(10 * time.Second)
			for !processRunning(t, marker) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			cancel()
		},
	}, nil)
	if !errors.Is(err, cmdop.ErrCancelled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("want ErrCancelled wrapping context.Canceled, got %v", err)
	}
	if elapsed := time.Since(start); elapsed > 20*time.Second {
		t.Fatalf("cancellation took %v", elapsed)
	}
	if len(results) != 1 || results[0].Machine.Hostname != s.machine || results[0].Status != cmdop.StatusCancelled ||
		!results[0].Ran {
		t.Fatalf("want the machine's result, cancelled while it ran, got %s", brief(results...))
	}
	for i := 0; processRunning(t, marker); i++ {
		if i > 250 {
			t.Fatalf("%q still runs 5 s after the cancellation", marker)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// An ended context starts nothing.
	if results, err := c.ExecFleet(ctx, "true", cmdop.FleetOptions{Hosts: s.machine}, nil); !errors.Is(err, context.Canceled) || results != nil {
		t.Fatalf("want context.Canceled and no results, got %v, %s", err, brief(results...))
	}

	// A deadline stops the fleet too, as a timeout.
	dctx, dcancel := context.WithTimeout(context.Background(), time.Second)
	defer dcancel()
	results, err = c.ExecFleet(dctx, "sleep 30", cmdop.FleetOptions{Hosts: s.machine}, nil)
	if !errors.Is(err, cmdop.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want ErrTimeout wrapping DeadlineExceeded, got %v", err)
	}
	if len(results) != 1 || results[0].Status != cmdop.StatusCancelled {
		t.Fatalf("want the machine's result, stopped, got %s", brief(results...))
	}
}

func TestPanicInFleetCallbackResumesInCaller(t *testing.T) {
	s := liveStack(t)
	c := connected(t)
	start := time.Now()
	calls := 0
	func() {
		defer func() {
			if p := recover(); p != "stop" {
				t.Fatalf("want the callback's panic, got %v", p)
			}
		}()
		c.ExecFleet(context.Background(), "echo go; sleep 0.2; echo more; sleep 30", cmdop.FleetOptions{
			Hosts:    s.machine,
			OnOutput: func(cmdop.Machine, cmdop.StreamKind, []byte) { calls++; panic("stop") },
			OnResult: func(cmdop.FleetResult) { calls++ },
		}, nil)
	}()
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Fatalf("the fleet was not stopped: %v", elapsed)
	}
	if calls != 1 {
		t.Fatalf("callbacks ran %d times; none may run after one panicked", calls)
	}
	if res, err := c.Execute(context.Background(), "true"); err != nil || res.ExitCode != 0 {
		t.Fatalf("client unusable after a callback panic: %+v %v", res, err)
	}
}

func TestExecFleetSeq(t *testing.T) {
	s := liveStack(t)
	c := connected(t)
	ctx := context.Background()
	var got []cmdop.FleetResult
	onResult := 0
	for r, err := range c.ExecFleetSeq(ctx, "echo seq-$((6*7))", cmdop.FleetOptions{
		Hosts:    s.machine,
		OnResult: func(cmdop.FleetResult) { onResult++ },
	}, nil) {
		if err != nil {
			t.Fatal(err)
		}
		// The loop body is not a callback: it may call the client.
		if _, err := c.Execute(ctx, "true"); err != nil {
			t.Fatalf("a call from the loop body: %v", err)
		}
		got = append(got, r)
	}
	if len(got) != 1 || got[0].Machine.Hostname != s.machine || got[0].ExitCode != 0 || string(got[0].Stdout) != "seq-42\n" {
		t.Fatalf("want the machine's result, got %s", brief(got...))
	}
	if onResult != 1 {
		t.Fatalf("OnResult ran %d times, want 1", onResult)
	}

	// A failed call is the last (and here only) pair.
	pairs := 0
	var last error
	for _, err := range c.ExecFleetSeq(ctx, "true", cmdop.FleetOptions{Selector: "no-such-label=anywhere"}, nil) {
		pairs++
		last = err
	}
	if pairs != 1 || !errors.Is(last, cmdop.ErrNotFound) {
		t.Fatalf("want one pair with ErrNotFound, got %d pairs, %v", pairs, last)
	}

	// Ending the context: the stopped machine's result, then the error.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var seq []string
	for r, err := range c.ExecFleetSeq(cctx, "echo started; sleep 30", cmdop.FleetOptions{
		Hosts:    s.machine,
		OnOutput: func(cmdop.Machine, cmdop.StreamKind, []byte) { cancel() },
	}, nil) {
		if err != nil {
			if !errors.Is(err, cmdop.ErrCancelled) || !errors.Is(err, context.Canceled) {
				t.Fatalf("want ErrCancelled wrapping context.Canceled, got %v", err)
			}
			seq = append(seq, "error")
			continue
		}
		seq = append(seq, r.Machine.Hostname+":"+r.Status.String())
	}
	want := []string{s.machine + ":" + cmdop.StatusCancelled.String(), "error"}
	if fmt.Sprint(seq) != fmt.Sprint(want) {
		t.Fatalf("sequence %q, want %q", seq, want)
	}

	// A panic of a callback resumes in the loop's goroutine.
	func() {
		defer func() {
			if p := recover(); p != "seq-stop" {
				t.Fatalf("want the callback's panic, got %v", p)
			}
		}()
		for range c.ExecFleetSeq(ctx, "echo go; sleep 30", cmdop.FleetOptions{
			Hosts:    s.machine,
			OnOutput: func(cmdop.Machine, cmdop.StreamKind, []byte) { panic("seq-stop") },
		}, nil) {
			t.Error("no result comes after a panic")
		}
	}()
}

// Close from another goroutine ends a running fleet: the machine's
// command is stopped and its result still comes, to a loop that then ends.
func TestCloseEndsExecFleetSeq(t *testing.T) {
	s := liveStack(t)
	c := connected(t)
	marker := fmt.Sprintf("sleep 5%d.75", os.Getpid()%10)
	var got []cmdop.FleetResult
	done := make(chan error, 1)
	go func() {
		var last error
		for r, err := range c.ExecFleetSeq(context.Background(), "exec "+marker, cmdop.FleetOptions{
			Hosts: s.machine,
		}, nil) {
			if err != nil {
				last = err
				continue
			}
			got = append(got, r)
		}
		done <- last
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !processRunning(t, marker) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	closed := time.Now()
	c.Close()
	select {
	case err := <-done:
		if len(got) != 1 || got[0].Machine.Hostname != s.machine || got[0].Status == cmdop.StatusOK || !got[0].Ran {
			t.Fatalf("want the machine's result, stopped by Close, got %s (error %v)", brief(got...), err)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("Close did not end the fleet")
	}
	// Well before the command's timeout (the client's, 15 s), which would
	// also end it.
	if elapsed := time.Since(closed); elapsed > 8*time.Second {
		t.Fatalf("the fleet ended %v after Close", elapsed)
	}
}
