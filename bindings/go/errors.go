package cmdop

/*
#include <cmdop.h>
*/
import "C"

import "errors"

// Status is the outcome of a libcmdop call (the C cmdop_status values).
type Status int

// The statuses libcmdop reports; their values never change.
const (
	StatusOK               Status = C.CMDOP_STATUS_OK
	StatusInvalidArgument  Status = C.CMDOP_STATUS_INVALID_ARGUMENT
	StatusUnauthenticated  Status = C.CMDOP_STATUS_UNAUTHENTICATED
	StatusNotFound         Status = C.CMDOP_STATUS_NOT_FOUND
	StatusAmbiguous        Status = C.CMDOP_STATUS_AMBIGUOUS
	StatusTimeout          Status = C.CMDOP_STATUS_TIMEOUT
	StatusUnavailable      Status = C.CMDOP_STATUS_UNAVAILABLE
	StatusDisconnected     Status = C.CMDOP_STATUS_DISCONNECTED
	StatusCancelled        Status = C.CMDOP_STATUS_CANCELLED
	StatusProtocol         Status = C.CMDOP_STATUS_PROTOCOL
	StatusInternal         Status = C.CMDOP_STATUS_INTERNAL
	StatusNotSupported     Status = C.CMDOP_STATUS_NOT_SUPPORTED
	StatusInCallback       Status = C.CMDOP_STATUS_IN_CALLBACK
	StatusPanic            Status = C.CMDOP_STATUS_PANIC
	StatusPermissionDenied Status = C.CMDOP_STATUS_PERMISSION_DENIED
	StatusOperationFailed  Status = C.CMDOP_STATUS_OPERATION_FAILED
	// StatusOutcomeUnknown: an execute reached the agent but how it ended
	// is not known (no answer by its deadline, or the agent's link was
	// lost); it was not confirmed killed. The Result holds the output so far.
	StatusOutcomeUnknown Status = C.CMDOP_STATUS_OUTCOME_UNKNOWN
	// StatusNotAllowed: the server refused the call because the API key's
	// scope does not allow the operation (the message names it).
	StatusNotAllowed Status = C.CMDOP_STATUS_NOT_ALLOWED
)

// String is the library's short description of the status ("timed out", ...).
func (s Status) String() string { return C.GoString(C.cmdop_status_str(C.int(s))) }

// Error is a failed libcmdop call: its status and the library's message,
// which says what happened and what to do next.
//
// Compare with errors.Is against the Err* values, which match on the status
// alone: errors.Is(err, cmdop.ErrTimeout). When a context ended a call, the
// error also wraps ctx.Err(), so errors.Is(err, context.DeadlineExceeded)
// holds as well.
type Error struct {
	Status  Status
	Message string
	cause   error
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "cmdop: " + e.Status.String()
	}
	return "cmdop: " + e.Status.String() + ": " + e.Message
}

// Is reports whether target is the sentinel (an *Error without a message)
// of the same status.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.cause == nil && t.Status == e.Status
}

// Unwrap returns what caused the error besides the library: the context's
// error, or ErrClosed.
func (e *Error) Unwrap() error { return e.cause }

// Sentinels for errors.Is, one per status.
var (
	ErrInvalidArgument  = &Error{Status: StatusInvalidArgument}
	ErrUnauthenticated  = &Error{Status: StatusUnauthenticated}
	ErrNotFound         = &Error{Status: StatusNotFound}
	ErrAmbiguous        = &Error{Status: StatusAmbiguous}
	ErrTimeout          = &Error{Status: StatusTimeout}
	ErrUnavailable      = &Error{Status: StatusUnavailable}
	ErrDisconnected     = &Error{Status: StatusDisconnected}
	ErrCancelled        = &Error{Status: StatusCancelled}
	ErrProtocol         = &Error{Status: StatusProtocol}
	ErrInternal         = &Error{Status: StatusInternal}
	ErrNotSupported     = &Error{Status: StatusNotSupported}
	ErrInCallback       = &Error{Status: StatusInCallback}
	ErrPanic            = &Error{Status: StatusPanic}
	ErrPermissionDenied = &Error{Status: StatusPermissionDenied}
	ErrOperationFailed  = &Error{Status: StatusOperationFailed}
	ErrOutcomeUnknown   = &Error{Status: StatusOutcomeUnknown}
	ErrNotAllowed       = &Error{Status: StatusNotAllowed}
)

// ErrClosed is wrapped by the error of any call on a closed Client (which
// is also an ErrDisconnected).
var ErrClosed = errors.New("cmdop: client is closed")

var errClosed = &Error{
	Status:  StatusDisconnected,
	Message: "the client is closed; create a new one with NewRemote or NewLocal",
	cause:   ErrClosed,
}
