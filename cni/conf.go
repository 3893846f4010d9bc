package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// netConf is the network configuration on stdin (the fields weave-net reads).
type netConf struct {
	CNIVersion       string          `json:"cniVersion"`
	Name             string          `json:"name"`
	Type             string          `json:"type"`
	IPAM             json.RawMessage `json:"ipam"`
	HairpinMode      bool            `json:"hairpinMode"`
	DNS              *dns            `json:"dns"`
	RouterAddr       string          `json:"routerAddr"` // ours: host:port or a unix socket path
	Timeout          float64         `json:"timeout"`    // ours: seconds ADD waits for IPAM
	ValidAttachments []attachment    `json:"cni.dev/valid-attachments"`
	IsGateway        bool            `json:"isGateway"` // Weave's plugin refuses these two
	IPMasq           bool            `json:"ipMasq"`
	PrevResult       *result         `json:"prevResult"` // CHECK (and DEL): ADD's result

	ipam ipamConf // IPAM decoded
	raw  []byte   // the config as given, for a delegated IPAM plugin
}

// ipamConf is the "ipam" section; weave-ipam reads subnet, gateway and routes.
type ipamConf struct {
	Type    string  `json:"type"`
	Subnet  string  `json:"subnet,omitempty"`
	Gateway string  `json:"gateway,omitempty"`
	Routes  []route `json:"routes,omitempty"`
}

type attachment struct {
	ContainerID string `json:"containerID"`
	Ifname      string `json:"ifname"`
}

const weaveIPAM = "weave-ipam"

// parseConf decodes and checks the config for command.
func parseConf(data []byte, command string) (*netConf, *cniError) {
	switch command {
	case "ADD", "DEL", "CHECK", "STATUS", "GC":
	case "":
		return nil, newError(codeInvalidEnv, "CNI_COMMAND is not set (want ADD, DEL, CHECK, STATUS, GC or VERSION)")
	default:
		return nil, newError(codeInvalidEnv, "CNI_COMMAND %q is not one of ADD, DEL, CHECK, STATUS, GC, VERSION", command)
	}
	conf := &netConf{raw: data}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, newError(codeDecodeFailure, "the network config on stdin is not valid JSON: %v", err)
	}
	if conf.CNIVersion == "" {
		return nil, newError(codeInvalidConfig, "the network config has no cniVersion")
	}
	if !isSupported(conf.CNIVersion) {
		return nil, &cniError{Code: codeIncompatibleVersion,
			Msg:     fmt.Sprintf("cniVersion %q is not supported by weave-net", conf.CNIVersion),
			Details: "supported: " + strings.Join(supportedVersions, ", ")}
	}
	if need := minVersion(command); versionLess(conf.CNIVersion, need) {
		return nil, newError(codeIncompatibleVersion, "%s needs cniVersion %s or later; the config says %s",
			command, need, conf.CNIVersion)
	}
	if conf.Name == "" {
		return nil, newError(codeInvalidConfig, "the network config has no name")
	}
	if conf.IsGateway || conf.IPMasq {
		return nil, newError(codeInvalidConfig, "isGateway and ipMasq are not supported by weave-net")
	}
	if len(conf.IPAM) > 0 && string(conf.IPAM) != "null" {
		if err := json.Unmarshal(conf.IPAM, &conf.ipam); err != nil {
			return nil, newError(codeInvalidConfig, "the network config's ipam section is invalid: %v", err)
		}
	}
	if conf.ipam.Type == "" {
		conf.ipam.Type = weaveIPAM
	}
	if conf.Timeout < 0 || conf.Timeout > 300 {
		return nil, newError(codeInvalidConfig, "timeout %g is not 0..300 seconds", conf.Timeout)
	}
	return conf, nil
}

func minVersion(command string) string {
	switch command {
	case "CHECK":
		return "0.4.0"
	case "STATUS", "GC":
		return "1.1.0"
	}
	return "0.3.0"
}

// versionLess compares dotted versions numerically.
func versionLess(a, b string) bool {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(pa) && i < len(pb); i++ {
		x, _ := strconv.Atoi(pa[i])
		y, _ := strconv.Atoi(pb[i])
		if x != y {
			return x < y
		}
	}
	return len(pa) < len(pb)
}

func (c *netConf) weaveIPAM() bool { return c.ipam.Type == weaveIPAM }
