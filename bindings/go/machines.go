package cmdop

/*
#include "cmdopgo.h"
*/
import "C"

import (
	"time"
	"unsafe"
)

// Session is one machine's terminal session as the control plane reports it.
type Session struct {
	ID string
	// MachineID is the machine's stable id ("mach_…", for SetMachineID);
	// empty when the server cannot tell.
	MachineID   string
	Hostname    string
	Status      string // "connected", "disconnected", "pending", ...
	OS          string
	Shell       string
	ConnectedAt time.Time // zero when unknown
	// HeartbeatAge is the time since the agent's last heartbeat.
	HeartbeatAge time.Duration
}

func sessionFrom(s *C.cmdop_session) Session {
	out := Session{
		ID:           C.GoString(C.cmdop_session_id(s)),
		MachineID:    C.GoString(C.cmdop_session_machine_id(s)),
		Hostname:     C.GoString(C.cmdop_session_hostname(s)),
		Status:       C.GoString(C.cmdop_session_status(s)),
		OS:           C.GoString(C.cmdop_session_os(s)),
		Shell:        C.GoString(C.cmdop_session_shell(s)),
		HeartbeatAge: time.Duration(C.cmdop_session_heartbeat_age(s)) * time.Second,
	}
	if at := int64(C.cmdop_session_connected_at(s)); at > 0 {
		out.ConnectedAt = time.Unix(at, 0)
	}
	return out
}

// ActiveSession returns the most recently active connected session of a
// machine whose hostname matches (empty: any machine). ErrNotFound when
// there is none.
func (c *Client) ActiveSession(hostname string) (Session, error) {
	var host *C.char
	if hostname != "" {
		var err error
		if host, err = cString("the hostname", hostname); err != nil {
			return Session{}, err
		}
		defer C.free(unsafe.Pointer(host))
	}
	var out Session
	err := c.use(func(p *C.cmdop_client) error {
		var s *C.cmdop_session
		var msg *C.char
		if err := check(C.cmdopgo_active_session(p, host, &s, &msg), msg); err != nil {
			return err
		}
		defer C.cmdop_session_free(s)
		out = sessionFrom(s)
		return nil
	})
	return out, err
}

// Sessions lists every session of the workspace, connected ones first.
func (c *Client) Sessions() ([]Session, error) {
	var out []Session
	err := c.use(func(p *C.cmdop_client) error {
		var list *C.cmdop_session_list
		var msg *C.char
		if err := check(C.cmdopgo_list_sessions(p, &list, &msg), msg); err != nil {
			return err
		}
		defer C.cmdop_session_list_free(list)
		n := int(C.cmdop_session_list_count(list))
		out = make([]Session, 0, n)
		for i := 0; i < n; i++ {
			out = append(out, sessionFrom(C.cmdop_session_list_get(list, C.size_t(i))))
		}
		return nil
	})
	return out, err
}

// Machine is one machine of the workspace as ListMachines reports it.
type Machine struct {
	ID       string // stable id, mach_…; works with SetMachineID
	Hostname string
	Online   bool
	LastSeen time.Time // zero when never seen
	OS       string
	Arch     string
	CPUs     int
	Memory   uint64 // bytes
	// Labels are what selectors see: the agent's labels, admin labels
	// over them, and facts as cmdop.io/… labels.
	Labels       map[string]string
	AgentVersion string
}

func machineFrom(m *C.cmdop_machine) Machine {
	out := Machine{
		ID:           C.GoString(C.cmdop_machine_id(m)),
		Hostname:     C.GoString(C.cmdop_machine_hostname(m)),
		Online:       bool(C.cmdop_machine_online(m)),
		OS:           C.GoString(C.cmdop_machine_os(m)),
		Arch:         C.GoString(C.cmdop_machine_arch(m)),
		CPUs:         int(C.cmdop_machine_cpu_count(m)),
		Memory:       uint64(C.cmdop_machine_memory_bytes(m)),
		AgentVersion: C.GoString(C.cmdop_machine_agent_version(m)),
		Labels:       map[string]string{},
	}
	if ms := int64(C.cmdop_machine_last_seen_ms(m)); ms > 0 {
		out.LastSeen = time.UnixMilli(ms)
	}
	n := C.cmdop_machine_label_count(m)
	for i := C.size_t(0); i < n; i++ {
		out.Labels[C.GoString(C.cmdop_machine_label_key(m, i))] = C.GoString(C.cmdop_machine_label_value(m, i))
	}
	return out
}

// Machines lists the workspace's machines, online or not, sorted by
// hostname, that match selector (a label selector such as
// "env=prod,role in (web,api)"; "" for all) and hosts (hostnames or globs,
// comma-separated; "" for any). ErrInvalidArgument says what is wrong with
// either; ErrNotSupported when the server cannot list machines.
func (c *Client) Machines(selector, hosts string) ([]Machine, error) {
	sel, err := cString("the selector", selector)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(sel))
	h, err := cString("the host list", hosts)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(h))
	var out []Machine
	err = c.use(func(p *C.cmdop_client) error {
		var list *C.cmdop_machine_list
		var msg *C.char
		if err := check(C.cmdopgo_list_machines(p, sel, h, &list, &msg), msg); err != nil {
			return err
		}
		defer C.cmdop_machine_list_free(list)
		n := int(C.cmdop_machine_list_count(list))
		out = make([]Machine, 0, n)
		for i := 0; i < n; i++ {
			out = append(out, machineFrom(C.cmdop_machine_list_get(list, C.size_t(i))))
		}
		return nil
	})
	return out, err
}

// ConnectionInfo describes a client's connection.
type ConnectionInfo struct {
	Server        string
	ServerVersion string
	Workspace     string
	TLS           bool
	Connected     bool
	Latency       time.Duration // -1 when the round trip failed
	NativeExec    bool          // the server runs commands without a terminal
	// Capabilities the server offers (e.g. "files.v1"); empty for official servers.
	Capabilities []string
}

// HasCapability reports whether the server offers capability name.
func (i ConnectionInfo) HasCapability(name string) bool {
	for _, c := range i.Capabilities {
		if c == name {
			return true
		}
	}
	return false
}

// ConnectionInfo describes the connection, measuring the latency now.
func (c *Client) ConnectionInfo() (ConnectionInfo, error) {
	var out ConnectionInfo
	err := c.use(func(p *C.cmdop_client) error {
		var info *C.cmdop_connection_info
		var msg *C.char
		if err := check(C.cmdopgo_connection_info(p, &info, &msg), msg); err != nil {
			return err
		}
		defer C.cmdop_connection_info_free(info)
		latency := float64(C.cmdop_connection_info_latency_ms(info))
		out = ConnectionInfo{
			Server:        C.GoString(C.cmdop_connection_info_server(info)),
			ServerVersion: C.GoString(C.cmdop_connection_info_server_version(info)),
			Workspace:     C.GoString(C.cmdop_connection_info_workspace(info)),
			TLS:           bool(C.cmdop_connection_info_tls(info)),
			Connected:     bool(C.cmdop_connection_info_connected(info)),
			Latency:       -1,
			NativeExec:    bool(C.cmdop_connection_info_native_exec(info)),
		}
		n := C.cmdop_connection_info_capability_count(info)
		for i := C.size_t(0); i < n; i++ {
			out.Capabilities = append(out.Capabilities, C.GoString(C.cmdop_connection_info_capability_get(info, i)))
		}
		if latency >= 0 {
			out.Latency = time.Duration(latency * float64(time.Millisecond))
		}
		return nil
	})
	return out, err
}
