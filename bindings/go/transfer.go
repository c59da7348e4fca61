package cmdop

/*
#include "cmdopgo.h"
*/
import "C"

import (
	"context"
	"io"
	"runtime/cgo"
	"unsafe"
)

// TransferOptions says how DownloadFile and UploadFile treat their target.
// The zero value replaces the target, keeps a replaced target's mode bits
// (a new one gets the default), and needs its directory to exist.
type TransferOptions struct {
	// KeepMode copies the source's permission bits to the target.
	KeepMode bool
	// NoClobber fails (ErrInvalidArgument) instead of replacing a target.
	NoClobber bool
	// CreateParents creates missing parent directories of the target.
	CreateParents bool
	// Progress (may be nil) is called with the bytes done of total as the
	// transfer advances, on the calling goroutine. If it panics, the
	// transfer is cancelled and the panic resumes in the caller.
	Progress func(done, total uint64)
}

// DownloadFile copies remotePath on the selected machine to the local
// file localPath, atomically: a failed or cancelled download leaves the
// target as it was. Any size; memory stays bounded. Cancelling ctx (or
// its deadline) stops it: the error then matches ErrCancelled (or
// ErrTimeout) and wraps ctx's error. opts may be nil.
func (c *Client) DownloadFile(ctx context.Context, remotePath, localPath string, opts *TransferOptions) error {
	return c.transfer(ctx, true, "the remote path", remotePath, "the local path", localPath, opts)
}

// UploadFile copies the local file localPath to remotePath on the selected
// machine, atomically (a failed or cancelled upload leaves no partial
// file). Arguments and errors as DownloadFile.
func (c *Client) UploadFile(ctx context.Context, localPath, remotePath string, opts *TransferOptions) error {
	return c.transfer(ctx, false, "the local path", localPath, "the remote path", remotePath, opts)
}

// ReadFileTo streams file path on the selected machine into w, in order,
// without holding it in memory, and returns the bytes written. A write
// error stops the read and is returned; ctx works as for DownloadFile.
func (c *Client) ReadFileTo(ctx context.Context, path string, w io.Writer) (int64, error) {
	if w == nil {
		return 0, &Error{Status: StatusInvalidArgument, Message: "ReadFileTo needs a writer"}
	}
	cpath, err := cString("the path", path)
	if err != nil {
		return 0, err
	}
	defer C.free(unsafe.Pointer(cpath))
	var written int64
	sink := &callSink{write: func(b []byte) error {
		n, err := w.Write(b)
		written += int64(n)
		if err == nil && n < len(b) {
			err = io.ErrShortWrite
		}
		return err
	}}
	err = c.withSink(ctx, sink, func(p *C.cmdop_client, h C.uintptr_t, tok *C.cmdop_cancel_token, msg **C.char) C.cmdop_status {
		var n C.uint64_t
		return C.cmdopgo_read_file_to(p, cpath, h, tok, &n, msg)
	})
	return written, err
}

func (c *Client) transfer(ctx context.Context, download bool, fromWhat, from, toWhat, to string, opts *TransferOptions) error {
	var pins cStrings
	defer pins.free()
	cfrom, err := pins.add(fromWhat, from)
	if err != nil {
		return err
	}
	cto, err := pins.add(toWhat, to)
	if err != nil {
		return err
	}
	var o C.cmdop_transfer_options
	if st := C.cmdop_transfer_options_init(&o, C.CMDOP_TRANSFER_OPTIONS_VERSION); st != C.CMDOP_STATUS_OK {
		return &Error{Status: Status(st), Message: "cmdop_transfer_options_init refused this header's options version"}
	}
	sink := &callSink{}
	if opts != nil {
		o.keep_mode = C.bool(opts.KeepMode)
		o.no_clobber = C.bool(opts.NoClobber)
		o.create_parents = C.bool(opts.CreateParents)
		sink.progress = opts.Progress
	}
	dl := C.int(0)
	if download {
		dl = 1
	}
	return c.withSink(ctx, sink, func(p *C.cmdop_client, h C.uintptr_t, tok *C.cmdop_cancel_token, msg **C.char) C.cmdop_status {
		if sink.progress == nil {
			h = 0
		}
		return C.cmdopgo_transfer(p, dl, cfrom, cto, &o, h, tok, msg)
	})
}

// withSink runs call with sink behind a cgo handle and a cancel token that
// ctx's end cancels, and turns the outcome into an error: a panic of the
// sink resumes here, a write error of the sink is returned as it is.
func (c *Client) withSink(ctx context.Context, sink *callSink,
	call func(p *C.cmdop_client, h C.uintptr_t, tok *C.cmdop_cancel_token, msg **C.char) C.cmdop_status) error {
	if ctx.Err() != nil {
		return contextError(ctx, StatusCancelled, "")
	}
	tok, release, err := contextToken(ctx)
	if err != nil {
		return err
	}
	defer release()
	sink.cancel = func() { C.cmdop_cancel_token_cancel(tok) }
	h := cgo.NewHandle(sink)
	defer h.Delete()

	var st C.cmdop_status
	var msg *C.char
	if err := c.use(func(p *C.cmdop_client) error {
		st = call(p, C.uintptr_t(h), tok, &msg)
		return nil
	}); err != nil {
		return err
	}
	text := takeMessage(msg)
	if sink.panic != nil {
		panic(sink.panic)
	}
	if sink.err != nil {
		return sink.err
	}
	return c.callError(ctx, Status(st), text)
}

// callError is nil for StatusOK, else the error of a call that ended with
// status: one its context ended wraps ctx's error, one Close ended wraps
// ErrClosed.
func (c *Client) callError(ctx context.Context, status Status, text string) error {
	if status == StatusOK {
		return nil
	}
	if (status == StatusCancelled || status == StatusTimeout) && ctx.Err() != nil {
		return contextError(ctx, status, text)
	}
	if status == StatusDisconnected && c.h.closing.Load() {
		return &Error{Status: status, Message: "Close was called while the call ran; it was stopped", cause: ErrClosed}
	}
	return &Error{Status: status, Message: text}
}

// contextToken returns a cancel token that the end of ctx cancels, and the
// function that detaches it from ctx and frees it: call that once the C call
// given the token has returned.
func contextToken(ctx context.Context) (*C.cmdop_cancel_token, func(), error) {
	tok := C.cmdop_cancel_token_new()
	if tok == nil {
		return nil, nil, &Error{Status: StatusInternal, Message: "out of memory creating a cancel token"}
	}
	cancelled := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(cancelled)
		C.cmdop_cancel_token_cancel(tok)
	})
	release := func() {
		if !stop() {
			<-cancelled // the AfterFunc ran: let it finish before freeing tok
		}
		C.cmdop_cancel_token_free(tok)
	}
	return tok, release, nil
}
