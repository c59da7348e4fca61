// Package cmdop runs commands on, and moves files to and from, remote
// machines through a CMDOP control plane. It wraps libcmdop's C API with
// cgo; build it against an installed libcmdop (`make install` in the
// libcmdop repository provides the cmdop pkg-config file it uses).
//
//	c, err := cmdop.NewRemote(os.Getenv("CMDOP_API_KEY"), nil)
//	if err != nil { return err }
//	defer c.Close()
//	if err := c.Connect(); err != nil { return err }
//	if err := c.SetMachine("build-01"); err != nil { return err }
//	res, err := c.Execute(ctx, "uname -a")
//
// A Client is safe for use by many goroutines. Errors are *Error values
// carrying the library's status and message; test them with errors.Is
// against ErrTimeout, ErrNotFound and the other sentinels.
package cmdop
