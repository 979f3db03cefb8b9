package cluster

import "syscall"

// sysProcAttr kills a child if the test binary dies without cleaning up (a
// panic, a timeout), so no broker or sentinel outlives its test.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
