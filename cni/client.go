package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"
)

const defaultRouterAddr = "127.0.0.1:6784"

// routerClient talks to weave-router's HTTP API over TCP or a unix socket.
type routerClient struct {
	addr    string // host:port, or a socket path
	network string // "tcp" or "unix"
	http    *http.Client
}

func newRouterClient(addr string, timeout time.Duration) *routerClient {
	if addr == "" {
		addr = defaultRouterAddr
	}
	addr = strings.TrimPrefix(addr, "unix://")
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	c := &routerClient{addr: addr, network: network}
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	c.http = &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: dial}}
	return c
}

// post sends body as JSON to path; a 200 answer is decoded into out.
func (c *routerClient) post(path string, body interface{}, out interface{}) *cniError {
	data, err := json.Marshal(body)
	if err != nil {
		return newError(codeIOFailure, "cannot encode the request: %v", err)
	}
	// The router checks the Host of a TCP request (it refuses DNS-rebound pages): name
	// the address dialled; a unix socket has no host, and no Host check.
	host := c.addr
	if c.network == "unix" {
		host = "localhost"
	}
	// A router busy with many other ADDs refuses a connection with 503 "too many API
	// ..." before reading it, or closes one it had not read yet to make room (EOF): nothing
	// was done, so it is safe to ask again (an ADD repeated is answered with the same
	// address anyway), within the client's timeout, with a growing pause (a kubelet
	// starting 50 pods at once).
	var resp *http.Response
	var reply []byte
	deadline := time.Now().Add(c.http.Timeout)
	for pause := 20 * time.Millisecond; ; pause *= 2 {
		if pause > time.Second {
			pause = time.Second
		}
		resp, reply, err = c.send("http://"+host+path, data)
		if (err != nil && !unanswered(err)) || (err == nil && !busy(resp, reply)) ||
			time.Now().Add(pause).After(deadline) {
			break
		}
		time.Sleep(pause)
	}
	if err != nil {
		return &cniError{Code: codeTryAgainLater,
			Msg:     fmt.Sprintf("weave-router is not running or not answering on %s: %v", c.addr, err),
			Details: "start it with `weave-router launch`, or set routerAddr in the network config"}
	}
	if resp.StatusCode == http.StatusOK {
		if out == nil {
			return nil
		}
		if err := json.Unmarshal(reply, out); err != nil {
			return newError(codeDecodeFailure, "weave-router's answer is not JSON: %v", err)
		}
		return nil
	}
	var e cniError
	if json.Unmarshal(reply, &e) == nil && e.Code != 0 && e.Msg != "" {
		return &e
	}
	code := codeIOFailure
	if resp.StatusCode == http.StatusServiceUnavailable {
		code = codeTryAgainLater
	}
	return newError(code, "weave-router answered %s: %s", resp.Status, strings.TrimSpace(string(reply)))
}

// send POSTs data and reads the whole answer (at most 1 MiB).
func (c *routerClient) send(url string, data []byte) (*http.Response, []byte, error) {
	resp, err := c.http.Post(url, "application/json", bytes.NewReader(data))
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("reading the answer: %w", err)
	}
	return resp, reply, nil
}

// busy: the router's admission refused the request before reading it (a full lane).
func busy(resp *http.Response, reply []byte) bool {
	return resp.StatusCode == http.StatusServiceUnavailable &&
		bytes.HasPrefix(reply, []byte("too many API"))
}

// unanswered: the connection closed before any answer (the router made room for others).
func unanswered(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET)
}
