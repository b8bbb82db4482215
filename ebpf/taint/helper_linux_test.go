//go:build linux && amd64

package taint

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The helper processes of the tests are this test binary re-executed as an
// "agent": it reads commands from stdin, one per line, and appends one
// answer line per command ("ok ..." or "err ...") to the file named by
// $SYMVIRT_TAINT_OUT. Answers go to a regular file on purpose: were they
// written into a pipe that the test reads, a tainted agent would taint the
// test process itself (and every agent it starts afterwards).
const (
	helperEnv    = "SYMVIRT_TAINT_HELPER"
	helperOutEnv = "SYMVIRT_TAINT_OUT"
)

func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "agent" {
		t.Skip("helper process for the taint tests")
	}
	out, err := os.OpenFile(os.Getenv(helperOutEnv), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		os.Exit(3)
	}
	a := &agentState{out: out}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		res, err := a.run(f[0], f[1:])
		if err != nil {
			fmt.Fprintf(out, "err %v\n", err)
		} else {
			fmt.Fprintf(out, "ok %s\n", res)
		}
	}
	os.Exit(0) // stdin closed: the test is done with us
}

type agentState struct {
	out      *os.File
	mu       sync.Mutex
	keep     []io.Closer // connections kept open
	ln       net.Listener
	udp      *net.UDPConn
	gram     *net.UnixConn
	children []*exec.Cmd
}

var payload = []byte("data from the agent\n")

func (a *agentState) hold(c io.Closer) {
	a.mu.Lock()
	a.keep = append(a.keep, c)
	a.mu.Unlock()
}

func (a *agentState) run(cmd string, args []string) (string, error) {
	arg := func(i int) string {
		if i < len(args) {
			return args[i]
		}
		return ""
	}
	switch cmd {
	case "pid":
		return fmt.Sprint(os.Getpid()), nil

	case "exit":
		os.Exit(0)

	case "thread-exit":
		// A goroutine that ends locked to its thread takes the thread down.
		done := make(chan int)
		go func() {
			runtime.LockOSThread()
			done <- 1
		}()
		<-done
		time.Sleep(50 * time.Millisecond)
		return "", nil

	case "fork":
		// exec.Cmd forks (clone without CLONE_THREAD), then execs.
		c := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		c.Env = append(os.Environ(), helperOutEnv+"="+os.Getenv(helperOutEnv)+".child")
		if _, err := c.StdinPipe(); err != nil {
			return "", err
		}
		if err := c.Start(); err != nil {
			return "", err
		}
		a.children = append(a.children, c)
		return fmt.Sprint(c.Process.Pid), nil

	case "tcp-serve": // ADDR: accept connections and echo, in the background
		ln, err := net.Listen("tcp", arg(0))
		if err != nil {
			return "", err
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(c, c); c.Close() }()
			}
		}()
		a.hold(ln)
		return ln.Addr().String(), nil

	case "connect": // ADDR: TCP connect, exchange a line, keep the connection
		c, err := net.DialTimeout("tcp", arg(0), 5*time.Second)
		if err != nil {
			return "", err
		}
		if _, err := c.Write(payload); err != nil {
			return "", err
		}
		buf := make([]byte, len(payload))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil {
			return "", err
		}
		a.hold(c)
		return "", nil

	case "listen": // NET ADDR: tcp or unix listener for "accept-read"
		ln, err := net.Listen(arg(0), arg(1))
		if err != nil {
			return "", err
		}
		a.ln = ln
		return ln.Addr().String(), nil

	case "accept-read": // accept one connection, read one payload
		c, err := a.ln.Accept()
		if err != nil {
			return "", err
		}
		defer c.Close()
		buf := make([]byte, len(payload))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.ReadFull(c, buf)
		return fmt.Sprint(n), err

	case "send": // NET ADDR: connect (tcp, unix), write one payload, close
		c, err := net.DialTimeout(arg(0), arg(1), 5*time.Second)
		if err != nil {
			return "", err
		}
		defer c.Close()
		_, err = c.Write(payload)
		return "", err

	case "udp-listen", "unixgram-listen": // ADDR
		var (
			c   *net.UDPConn
			err error
		)
		if cmd == "udp-listen" {
			var la *net.UDPAddr
			if la, err = net.ResolveUDPAddr("udp", arg(0)); err != nil {
				return "", err
			}
			c, err = net.ListenUDP("udp", la)
			if err != nil {
				return "", err
			}
			a.udp = c
			return c.LocalAddr().String(), nil
		}
		uc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: arg(0), Net: "unixgram"})
		if err != nil {
			return "", err
		}
		a.gram = uc
		return arg(0), nil

	case "udp-recv": // receive one datagram on the udp-listen socket (recvfrom)
		buf := make([]byte, 1500)
		a.udp.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, from, err := a.udp.ReadFromUDP(buf)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d %s", n, from), nil

	case "udp-read": // receive one datagram with read(2): no sender address
		buf := make([]byte, 1500)
		a.udp.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := a.udp.Read(buf)
		return fmt.Sprint(n), err

	case "unixgram-recv":
		buf := make([]byte, 1500)
		a.gram.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _, err := a.gram.ReadFrom(buf)
		return fmt.Sprint(n), err

	case "udp-send": // ADDR: unconnected sendto
		c, err := net.ListenUDP("udp", nil)
		if err != nil {
			return "", err
		}
		defer c.Close()
		to, err := net.ResolveUDPAddr("udp", arg(0))
		if err != nil {
			return "", err
		}
		_, err = c.WriteTo(payload, to)
		return "", err

	case "udp-try": // ADDR: unconnected sendto; its result does not matter
		c, err := net.ListenUDP("udp", nil)
		if err != nil {
			return "", err
		}
		defer c.Close()
		to, err := net.ResolveUDPAddr("udp", arg(0))
		if err != nil {
			return "", err
		}
		_, err = c.WriteTo(payload, to)
		return fmt.Sprint(err), nil

	case "udp-dial-send": // ADDR: connected socket, write(2)
		c, err := net.Dial("udp", arg(0))
		if err != nil {
			return "", err
		}
		defer c.Close()
		_, err = c.Write(payload)
		return "", err

	case "unixgram-send": // PATH: unconnected sendto(2) on a unix datagram socket
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return "", err
		}
		defer unix.Close(fd)
		return "", unix.Sendto(fd, payload, 0, &unix.SockaddrUnix{Name: arg(0)})

	case "unixgram-dial-send": // PATH: connected unix datagram socket, write(2)
		c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: arg(0), Net: "unixgram"})
		if err != nil {
			return "", err
		}
		defer c.Close()
		_, err = c.Write(payload)
		return "", err

	case "pipe-write": // write one payload into fd 3
		_, err := os.NewFile(3, "pipe").Write(payload)
		return "", err

	case "pipe-read": // read one payload from fd 3
		buf := make([]byte, len(payload))
		n, err := io.ReadFull(os.NewFile(3, "pipe"), buf)
		return fmt.Sprint(n), err
	}
	return "", fmt.Errorf("unknown command %q", cmd)
}
