// Command weave-net is the CNI plugin of weave-router: a small static client of the
// router's HTTP API, which does the work (IPAM, veth, addresses, routes). Installed
// under a second name, weave-ipam, it is an IPAM plugin only. See docs/cni.md.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// The spec versions this plugin speaks (VERSION answers these).
var supportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// The spec's well-known error codes.
const (
	codeIncompatibleVersion = 1
	codeUnsupportedField    = 2
	codeUnknownContainer    = 3
	codeInvalidEnv          = 4
	codeIOFailure           = 5
	codeDecodeFailure       = 6
	codeInvalidConfig       = 7
	codeTryAgainLater       = 11
	codeNotAvailable        = 50
)

// cniError is the spec's error object.
type cniError struct {
	CNIVersion string `json:"cniVersion"`
	Code       int    `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

func (e *cniError) Error() string { return e.Msg }

func newError(code int, format string, args ...interface{}) *cniError {
	return &cniError{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// env is what the runtime passes in CNI_* variables.
type env struct {
	Command     string
	ContainerID string
	Netns       string
	Ifname      string
	Args        string
	Path        string
}

func readEnv() env {
	return env{
		Command:     os.Getenv("CNI_COMMAND"),
		ContainerID: os.Getenv("CNI_CONTAINERID"),
		Netns:       os.Getenv("CNI_NETNS"),
		Ifname:      os.Getenv("CNI_IFNAME"),
		Args:        os.Getenv("CNI_ARGS"),
		Path:        os.Getenv("CNI_PATH"),
	}
}

// require checks the variables a verb needs (the spec's table).
func (e env) require(netns bool) *cniError {
	missing := []string{}
	if e.ContainerID == "" {
		missing = append(missing, "CNI_CONTAINERID")
	}
	if e.Ifname == "" {
		missing = append(missing, "CNI_IFNAME")
	}
	if netns && e.Netns == "" {
		missing = append(missing, "CNI_NETNS")
	}
	if len(missing) > 0 {
		return newError(codeInvalidEnv, "required environment variable %s not set for %s",
			strings.Join(missing, ", "), e.Command)
	}
	return nil
}

func main() {
	os.Exit(run(filepath.Base(os.Args[0]), readEnv(), os.Stdin, os.Stdout))
}

// run carries out one invocation; its result is the exit status.
func run(name string, e env, stdin io.Reader, stdout io.Writer) int {
	data, err := io.ReadAll(stdin)
	if err != nil {
		return fail(stdout, "", newError(codeIOFailure, "cannot read the network config from stdin: %v", err))
	}
	if e.Command == "VERSION" {
		return version(stdout, data)
	}
	conf, cerr := parseConf(data, e.Command)
	if cerr != nil {
		return fail(stdout, confVersion(data), cerr)
	}
	var out interface{}
	if name == "weave-ipam" {
		out, cerr = ipamMode(e, conf)
	} else {
		out, cerr = netMode(e, conf)
	}
	if cerr != nil {
		return fail(stdout, conf.CNIVersion, cerr)
	}
	if out != nil {
		if err := json.NewEncoder(stdout).Encode(out); err != nil {
			return 1
		}
	}
	return 0
}

func version(stdout io.Writer, data []byte) int {
	answer := map[string]interface{}{
		"cniVersion":        supportedVersions[len(supportedVersions)-1],
		"supportedVersions": supportedVersions,
	}
	if err := json.NewEncoder(stdout).Encode(answer); err != nil {
		return 1
	}
	return 0
}

// fail prints the spec's error object and returns the exit status.
func fail(stdout io.Writer, cniVersion string, e *cniError) int {
	if cniVersion == "" || !isSupported(cniVersion) {
		cniVersion = supportedVersions[len(supportedVersions)-1]
	}
	e.CNIVersion = cniVersion
	_ = json.NewEncoder(stdout).Encode(e)
	fmt.Fprintf(os.Stderr, "weave-net: %s\n", e.Msg)
	return 1
}

func isSupported(v string) bool {
	for _, s := range supportedVersions {
		if s == v {
			return true
		}
	}
	return false
}

// confVersion is the cniVersion of a config that may not parse, for the error object.
func confVersion(data []byte) string {
	var c struct {
		CNIVersion string `json:"cniVersion"`
	}
	_ = json.Unmarshal(data, &c)
	return c.CNIVersion
}
