package main

import "encoding/json"

// The result shapes of the spec; the router answers in 1.0 form and toVersion converts.
type iface struct {
	Name    string `json:"name"`
	Mac     string `json:"mac,omitempty"`
	Sandbox string `json:"sandbox,omitempty"`
}

type ipConfig struct {
	Version   string `json:"version,omitempty"` // 0.3.x and 0.4.0 only
	Address   string `json:"address"`
	Gateway   string `json:"gateway,omitempty"`
	Interface *int   `json:"interface,omitempty"`
}

type route struct {
	Dst string `json:"dst"`
	GW  string `json:"gw,omitempty"`
}

type dns struct {
	Nameservers []string `json:"nameservers,omitempty"`
	Domain      string   `json:"domain,omitempty"`
	Search      []string `json:"search,omitempty"`
	Options     []string `json:"options,omitempty"`
}

type result struct {
	CNIVersion string     `json:"cniVersion"`
	Interfaces []iface    `json:"interfaces,omitempty"`
	IPs        []ipConfig `json:"ips,omitempty"`
	Routes     []route    `json:"routes,omitempty"`
	DNS        *dns       `json:"dns,omitempty"`
}

// toVersion sets the result's cniVersion and the per-version fields.
func (r *result) toVersion(v string) *result {
	out := *r
	out.CNIVersion = v
	out.IPs = make([]ipConfig, len(r.IPs))
	for i, ip := range r.IPs {
		ip.Version = ""
		if versionLess(v, "1.0.0") {
			ip.Version = "4"
		}
		out.IPs[i] = ip
	}
	if out.DNS == nil && !versionLess(v, "1.0.0") {
		out.DNS = &dns{}
	}
	return &out
}

// parseResult reads a (delegated IPAM plugin's) result of any supported version.
func parseResult(data []byte) (*result, *cniError) {
	var r result
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, newError(codeDecodeFailure, "cannot decode the IPAM plugin's result: %v", err)
	}
	return &r, nil
}
