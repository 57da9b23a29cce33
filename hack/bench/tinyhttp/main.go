// Command tinyhttp is the HTTP server of the agent's datapath benchmark
// (hack/bench/agent-datapath.sh): the smallest server that wrk can measure
// new connections per second against, so that the kernel's connection
// handling (and the rules under test) rather than the server is what the
// rate measures.
//
//	tinyhttp [-addr 198.18.0.2:8080]
//
// For every connection it reads until the end of the request headers,
// writes one fixed response ("ok", Connection: close) and closes the
// connection, as an HTTP/1.0 server does; it parses nothing else. It runs
// until SIGTERM or SIGINT.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
)

var response = []byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok\n")

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	flag.Parse()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tinyhttp:", err)
		os.Exit(1)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		ln.Close()
	}()
	fmt.Fprintln(os.Stderr, "tinyhttp: listening on", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // EMFILE and the like: keep serving
		}
		go serve(c)
	}
}

func serve(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 2048)
	n := 0
	for {
		m, err := c.Read(buf[n:])
		if err != nil {
			return
		}
		n += m
		if bytes.Contains(buf[:n], []byte("\r\n\r\n")) {
			break
		}
		if n == len(buf) {
			return // headers too long for a benchmark request
		}
	}
	_, _ = c.Write(response)
}
