// The pod sandbox's process for the testbed's real node (registry.k8s.io/pause is out of
// reach). It keeps the pod's namespaces alive, reaps children orphaned into it (it is PID 1 of
// the pod) and exits on SIGTERM or SIGINT, when the kubelet tears the sandbox down.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	orphans := make(chan os.Signal, 1)
	signal.Notify(orphans, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			return
		case <-orphans:
			// One signal may stand for several exits: reap until none is left.
			for {
				pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}
