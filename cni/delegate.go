package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// findInPath finds an IPAM plugin executable in CNI_PATH, as libcni does.
func findInPath(plugin, cniPath string) (string, *cniError) {
	if plugin == "" || strings.ContainsRune(plugin, '/') {
		return "", newError(codeInvalidConfig, "ipam.type %q is not a plugin name", plugin)
	}
	if cniPath == "" {
		return "", newError(codeInvalidEnv, "CNI_PATH is not set, so the IPAM plugin %q cannot be found", plugin)
	}
	for _, dir := range filepath.SplitList(cniPath) {
		full := filepath.Join(dir, plugin)
		if info, err := os.Stat(full); err == nil && info.Mode().IsRegular() && info.Mode()&0o111 != 0 {
			return full, nil
		}
	}
	return "", newError(codeInvalidConfig, "IPAM plugin %q not found in CNI_PATH %s", plugin, cniPath)
}

// delegate runs the IPAM plugin for command with our environment and the same config.
func delegate(e env, c *netConf, command string) *cniError {
	_, err := execIPAM(e, c, command)
	return err
}

func delegateAdd(e env, c *netConf) (*result, *cniError) {
	out, err := execIPAM(e, c, "ADD")
	if err != nil {
		return nil, err
	}
	res, err := parseResult(out)
	if err != nil {
		_ = delegate(e, c, "DEL")
		return nil, err
	}
	return res, nil
}

func execIPAM(e env, c *netConf, command string) ([]byte, *cniError) {
	path, cerr := findInPath(c.ipam.Type, e.Path)
	if cerr != nil {
		return nil, cerr
	}
	cmd := exec.Command(path)
	cmd.Env = append(withoutCommand(os.Environ()), "CNI_COMMAND="+command)
	cmd.Stdin = bytes.NewReader(c.raw)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if _, ok := err.(*exec.ExitError); ok {
			if perr := pluginError(stdout.Bytes()); perr != nil {
				return nil, perr
			}
		}
		return nil, &cniError{Code: codeIOFailure,
			Msg:     "IPAM plugin " + c.ipam.Type + " " + command + " failed: " + err.Error(),
			Details: strings.TrimSpace(stderr.String())}
	}
	return stdout.Bytes(), nil
}

func withoutCommand(environ []string) []string {
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		if !strings.HasPrefix(kv, "CNI_COMMAND=") {
			out = append(out, kv)
		}
	}
	return out
}
