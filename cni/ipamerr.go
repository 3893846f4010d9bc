package main

import "encoding/json"

// pluginError is the error object a delegated plugin printed, if it printed one.
func pluginError(out []byte) *cniError {
	var e cniError
	if json.Unmarshal(out, &e) != nil || e.Code == 0 {
		return nil
	}
	return &e
}
