package cmdop_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cmdop "github.com/libcmdop/cmdop-go"
)

// pattern is n bytes with every byte value, not a short repeat.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + i/251)
	}
	return b
}

// onlyReader hides a reader's concrete type, so ExecuteWithOptions streams it.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func TestExecuteWithOptions(t *testing.T) {
	c := connected(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	r, err := c.ExecuteWithOptions(ctx, `od -An -c; echo "$CMDOP_GO_A/$CMDOP_GO_B"; pwd; echo err >&2`, &cmdop.ExecOptions{
		Stdin:  strings.NewReader("in\x00put\n"),
		Env:    []string{"CMDOP_GO_A=alpha", "CMDOP_GO_B=b c"},
		Dir:    dir,
		Stdout: &stdout,
		Stderr: &stderr,
	})
	if err != nil {
		t.Fatal(err)
	}
	out := string(r.Stdout)
	real, _ := filepath.EvalSymlinks(dir)
	for _, want := range []string{`i   n  \0   p   u   t  \n`, "alpha/b c\n", real + "\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if stdout.String() != out || stderr.String() != "err\n" || string(r.Stderr) != "err\n" {
		t.Errorf("writers saw stdout %q stderr %q; result stderr %q", stdout.String(), stderr.String(), r.Stderr)
	}

	// DiscardOutput keeps nothing in the Result; the writer still sees it.
	stdout.Reset()
	r, err = c.ExecuteWithOptions(ctx, "echo kept-out", &cmdop.ExecOptions{Stdout: &stdout, DiscardOutput: true})
	if err != nil || len(r.Output) != 0 || stdout.String() != "kept-out\n" {
		t.Errorf("discard: err %v, result %q, writer %q", err, r.Output, stdout.String())
	}

	_, err = c.ExecuteWithOptions(ctx, "true", &cmdop.ExecOptions{Dir: filepath.Join(dir, "missing")})
	if !errors.Is(err, cmdop.ErrOperationFailed) {
		t.Errorf("missing working directory: want ErrOperationFailed, got %v", err)
	}
	_, err = c.ExecuteWithOptions(ctx, "true", &cmdop.ExecOptions{Env: []string{"NOVALUE"}})
	if !errors.Is(err, cmdop.ErrInvalidArgument) {
		t.Errorf("env entry without '=': want ErrInvalidArgument, got %v", err)
	}
}

func TestExecuteWithStreamedStdin(t *testing.T) {
	c := connected(t)
	path := filepath.Join(t.TempDir(), "fed.bin")
	data := pattern(3<<20 + 7)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// A pipe: the command runs while the bytes are still being produced.
	pr, pw := io.Pipe()
	go func() {
		for off := 0; off < len(data); off += 100000 {
			if _, err := pw.Write(data[off:min(off+100000, len(data))]); err != nil {
				return
			}
		}
		pw.Close()
	}()
	r, err := c.ExecuteWithOptions(ctx, "cat > '"+path+"'", &cmdop.ExecOptions{Stdin: pr})
	if err != nil {
		t.Fatal(err)
	}
	if r.ExitCode != 0 {
		t.Fatalf("exit code %d: %s", r.ExitCode, r.Output)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("remote file: %d bytes, err %v; want the %d bytes streamed", len(got), err, len(data))
	}

	// Reading back through the command's stdout, with a non-pipe reader.
	var out bytes.Buffer
	r, err = c.ExecuteWithOptions(ctx, "wc -c", &cmdop.ExecOptions{Stdin: onlyReader{bytes.NewReader(data)},
		Stdout: &out, DiscardOutput: true})
	if err != nil || strings.TrimSpace(out.String()) != "3145735" {
		t.Fatalf("wc -c of streamed stdin: %q, err %v", out.String(), err)
	}
}

func TestExecuteWithStdinCancelledByContext(t *testing.T) {
	c := connected(t)
	// stdin never ends: only the context stops the command.
	pr, pw := io.Pipe()
	defer pw.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(500*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.ExecuteWithOptions(ctx, "cat > /dev/null", &cmdop.ExecOptions{Stdin: pr})
	if !errors.Is(err, cmdop.ErrCancelled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("want ErrCancelled wrapping context.Canceled, got %v", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("cancellation took %v", d)
	}
}

func TestUploadDownloadToDisk(t *testing.T) {
	c := connected(t)
	dir := t.TempDir()
	src, remote, back := filepath.Join(dir, "src.bin"), filepath.Join(dir, "deep", "er", "remote.bin"), filepath.Join(dir, "back.bin")
	data := pattern(2<<20 + 3)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(src, 0o751); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var calls int
	var last, total uint64
	opts := &cmdop.TransferOptions{KeepMode: true, CreateParents: true, Progress: func(done, tot uint64) {
		calls++
		if done < last {
			t.Errorf("progress went back from %d to %d", last, done)
		}
		last, total = done, tot
	}}
	if err := c.UploadFile(ctx, src, remote, opts); err != nil {
		t.Fatal(err)
	}
	if calls < 2 || last != uint64(len(data)) || total != uint64(len(data)) {
		t.Errorf("upload progress: %d calls, last %d of %d; want >= 2 calls ending at %d", calls, last, total, len(data))
	}
	checkFile(t, remote, data, 0o751)

	calls, last, total = 0, 0, 0
	if err := c.DownloadFile(ctx, remote, back, opts); err != nil {
		t.Fatal(err)
	}
	if calls < 1 || last != uint64(len(data)) {
		t.Errorf("download progress: %d calls, last %d", calls, last)
	}
	checkFile(t, back, data, 0o751)

	var buf bytes.Buffer
	n, err := c.ReadFileTo(ctx, remote, &buf)
	if err != nil || n != int64(len(data)) || !bytes.Equal(buf.Bytes(), data) {
		t.Errorf("ReadFileTo: %d bytes, err %v; want the %d bytes", n, err, len(data))
	}

	if err := c.DownloadFile(ctx, remote, back, &cmdop.TransferOptions{NoClobber: true}); !errors.Is(err, cmdop.ErrInvalidArgument) {
		t.Errorf("NoClobber on an existing target: want ErrInvalidArgument, got %v", err)
	}
	never := filepath.Join(dir, "never")
	if err := c.DownloadFile(ctx, filepath.Join(dir, "no-such-file"), never, nil); !errors.Is(err, cmdop.ErrNotFound) {
		t.Errorf("missing remote file: want ErrNotFound, got %v", err)
	}
	if _, err := os.Stat(never); !os.IsNotExist(err) {
		t.Errorf("a failed download created its target: %v", err)
	}
}

func checkFile(t *testing.T, path string, want []byte, mode os.FileMode) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("%s: %d bytes, err %v; want the %d bytes sent", path, len(got), err, len(want))
		return
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != mode {
		t.Errorf("%s: mode %v, err %v; want %v", path, st.Mode().Perm(), err, mode)
	}
}

// errWriter fails after n bytes.
type errWriter struct{ n int }

var errFull = errors.New("writer is full")

func (w *errWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		return 0, errFull
	}
	w.n -= len(p)
	return len(p), nil
}

func TestCancelledTransfersLeaveNoTarget(t *testing.T) {
	c := connected(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "big.bin")
	if err := os.WriteFile(src, pattern(8<<20), 0o644); err != nil {
		t.Fatal(err)
	}

	// Cancelled through the context from the progress callback, halfway.
	ctx, cancel := context.WithCancel(context.Background())
	down := filepath.Join(dir, "down.bin")
	err := c.DownloadFile(ctx, src, down, &cmdop.TransferOptions{Progress: func(done, total uint64) {
		if done >= total/2 && done < total {
			cancel()
		}
	}})
	cancel()
	if !errors.Is(err, cmdop.ErrCancelled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("want ErrCancelled wrapping context.Canceled, got %v", err)
	}
	if _, err := os.Stat(down); !os.IsNotExist(err) {
		t.Errorf("a cancelled download left its target: %v", err)
	}

	// A passed deadline is a timeout.
	ctx, cancel = context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	if err := c.UploadFile(ctx, src, filepath.Join(dir, "late.bin"), nil); !errors.Is(err, cmdop.ErrTimeout) ||
		!errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("expired context: want ErrTimeout wrapping DeadlineExceeded, got %v", err)
	}

	// A panic in the progress callback cancels the upload and resumes here.
	up := filepath.Join(dir, "up.bin")
	func() {
		defer func() {
			if p := recover(); p != "stop" {
				t.Errorf("want the callback's panic, got %v", p)
			}
		}()
		_ = c.UploadFile(context.Background(), src, up, &cmdop.TransferOptions{Progress: func(done, _ uint64) {
			if done > 0 {
				panic("stop")
			}
		}})
		t.Error("UploadFile returned instead of re-raising the panic")
	}()
	// Neither the target nor a temporary file is left (the agent removes
	// its temporary file as the cancellation reaches it: allow it a while).
	var names []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		entries, _ := os.ReadDir(dir)
		names = names[:0]
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if len(names) == 1 || time.Now().After(deadline) {
			break
		}
	}
	if len(names) != 1 || names[0] != "big.bin" {
		t.Errorf("after cancelled transfers the directory holds %v; want only big.bin", names)
	}

	// A writer's error stops a streamed read and is returned as it is.
	n, err := c.ReadFileTo(context.Background(), src, &errWriter{n: 1 << 20})
	if !errors.Is(err, errFull) || n > 1<<20 {
		t.Errorf("ReadFileTo into a failing writer: %d bytes, err %v", n, err)
	}

	// The client still works afterwards.
	if err := c.DownloadFile(context.Background(), src, down, nil); err != nil {
		t.Fatal(err)
	}
}

// failingReader yields some bytes, then an error.
type failingReader struct{ sent bool }

var errBroken = errors.New("source is broken")

func (f *failingReader) Read(p []byte) (int, error) {
	if f.sent {
		return 0, errBroken
	}
	f.sent = true
	return copy(p, "partial\n"), nil
}

func TestExecuteWithFailingStdinReportsTheReadError(t *testing.T) {
	c := connected(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := c.ExecuteWithOptions(ctx, "cat", &cmdop.ExecOptions{Stdin: &failingReader{}})
	if !errors.Is(err, errBroken) || !errors.Is(err, cmdop.ErrOperationFailed) {
		t.Fatalf("want ErrOperationFailed wrapping the reader's error, got %v", err)
	}
	if r == nil || string(r.Stdout) != "partial\n" {
		t.Fatalf("the command should have seen what was read before the error, got %+v", r)
	}
}

func TestCloseEndsExecuteWithStreamedStdin(t *testing.T) {
	s := liveStack(t)
	c, err := cmdop.NewLocal(s.host, s.port, &cmdop.Options{Timeout: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(); err != nil {
		t.Fatal(err)
	}
	if err := c.SetMachine(s.machine); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	defer pw.Close()
	done := make(chan error, 1)
	go func() {
		_, err := c.ExecuteWithOptions(context.Background(), "cat > /dev/null", &cmdop.ExecOptions{Stdin: pr})
		done <- err
	}()
	if _, err := pw.Write([]byte("some input\n")); err != nil { // the command is running
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, cmdop.ErrDisconnected) || !errors.Is(err, cmdop.ErrClosed) {
			t.Fatalf("want ErrDisconnected wrapping ErrClosed, got %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not end the running command")
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("Close took %v", d)
	}
}
