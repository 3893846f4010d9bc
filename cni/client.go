package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
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
	resp, err := c.http.Post("http://weave-router"+path, "application/json", bytes.NewReader(data))
	if err != nil {
		return &cniError{Code: codeTryAgainLater,
			Msg:     fmt.Sprintf("weave-router is not running or not answering on %s: %v", c.addr, err),
			Details: "start it with `weave-router launch`, or set routerAddr in the network config"}
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return newError(codeIOFailure, "reading weave-router's answer: %v", err)
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
