package main

import (
	"time"
)

// The router's request bodies (router/control/cni_api.py).
type addRequest struct {
	ContainerID string        `json:"containerId"`
	Ifname      string        `json:"ifname"`
	Netns       string        `json:"netns"`
	IPAM        *ipamConf     `json:"ipam,omitempty"`
	Result      *result       `json:"result,omitempty"`
	Hairpin     bool          `json:"hairpin"`
	Timeout     float64       `json:"timeout,omitempty"`
	Args        string        `json:"args,omitempty"` // CNI_ARGS, recorded (K8S_POD_NAME...)
	Delegate    *delegateInfo `json:"delegate,omitempty"`
}

// delegateInfo lets the router run the delegated IPAM plugin's DEL itself for a pod that
// vanished while it was down (no runtime will send that DEL): the plugin's name, the
// CNI_PATH to find it in and the config it was given.
type delegateInfo struct {
	Type    string `json:"type"`
	CNIPath string `json:"cniPath"`
	Conf    string `json:"conf"`
}

type keyRequest struct {
	ContainerID string `json:"containerId"`
	Ifname      string `json:"ifname"`
	Netns       string `json:"netns"`
}

// checkRequest is CHECK's: with the addresses prevResult gave the container's interface
type checkRequest struct {
	keyRequest
	PrevIPs []string `json:"prevIps,omitempty"`
	Prev    bool     `json:"prevResult"`
}

// prevIPs are the addresses prevResult put on ifname: those of an interface of that name
// inside a sandbox, and those naming no interface.
func prevIPs(prev *result, ifname string) []string {
	var ips []string
	for _, ip := range prev.IPs {
		if ip.Interface != nil {
			i := *ip.Interface
			if i < 0 || i >= len(prev.Interfaces) || prev.Interfaces[i].Name != ifname ||
				prev.Interfaces[i].Sandbox == "" {
				continue
			}
		}
		ips = append(ips, ip.Address)
	}
	return ips
}

type validAttachment struct {
	ContainerID string `json:"containerId"`
	Ifname      string `json:"ifname"`
}

const defaultTimeout = 10.0 // seconds ADD waits for IPAM

// httpSlack is how long a request may take beyond that.
const httpSlack = 60 * time.Second

func (c *netConf) client() *routerClient {
	t := c.Timeout
	if t == 0 {
		t = defaultTimeout
	}
	// the router may be busy plumbing other containers: allow for that beyond IPAM's wait
	return newRouterClient(c.RouterAddr, time.Duration(t*float64(time.Second))+httpSlack)
}

// netMode is the weave-net plugin.
func netMode(e env, c *netConf) (interface{}, *cniError) {
	switch e.Command {
	case "ADD":
		return netAdd(e, c)
	case "DEL":
		return nil, netDel(e, c)
	case "CHECK":
		return nil, netCheck(e, c)
	case "STATUS":
		return nil, netStatus(e, c)
	case "GC":
		return nil, netGC(e, c)
	}
	return nil, newError(codeInvalidEnv, "unknown CNI_COMMAND %q", e.Command)
}

func netAdd(e env, c *netConf) (interface{}, *cniError) {
	if err := e.require(true); err != nil {
		return nil, err
	}
	req := addRequest{ContainerID: e.ContainerID, Ifname: e.Ifname, Netns: e.Netns,
		Hairpin: c.HairpinMode, Timeout: c.Timeout, Args: e.Args}
	var ipamDNS *dns
	if c.weaveIPAM() {
		req.IPAM = &c.ipam
	} else {
		delegated, err := delegateAdd(e, c)
		if err != nil {
			return nil, err
		}
		req.Result, ipamDNS = delegated, delegated.DNS
		req.Delegate = &delegateInfo{Type: c.ipam.Type, CNIPath: e.Path, Conf: string(c.raw)}
	}
	var res result
	if err := c.client().post("/cni/add", req, &res); err != nil {
		if !c.weaveIPAM() {
			_ = delegate(e, c, "DEL")
		}
		return nil, err
	}
	res.DNS = c.DNS
	if res.DNS == nil {
		res.DNS = ipamDNS
	}
	return res.toVersion(c.CNIVersion), nil
}

func netDel(e env, c *netConf) *cniError {
	if err := e.require(false); err != nil {
		return err
	}
	req := keyRequest{ContainerID: e.ContainerID, Ifname: e.Ifname, Netns: e.Netns}
	if err := c.client().post("/cni/del", req, nil); err != nil {
		return err
	}
	if !c.weaveIPAM() {
		return delegate(e, c, "DEL")
	}
	return nil
}

func netCheck(e env, c *netConf) *cniError {
	if err := e.require(true); err != nil {
		return err
	}
	req := checkRequest{keyRequest: keyRequest{ContainerID: e.ContainerID, Ifname: e.Ifname,
		Netns: e.Netns}}
	if c.PrevResult != nil {
		req.Prev, req.PrevIPs = true, prevIPs(c.PrevResult, e.Ifname)
	}
	if err := c.client().post("/cni/check", req, nil); err != nil {
		return err
	}
	if !c.weaveIPAM() {
		return delegate(e, c, "CHECK")
	}
	return nil
}

func netStatus(e env, c *netConf) *cniError {
	err := c.client().post("/cni/status", map[string]bool{"ipam": c.weaveIPAM()}, nil)
	if err != nil && err.Code == codeTryAgainLater {
		err.Code = codeNotAvailable // STATUS says "not available", never "try again"
	}
	if err == nil && !c.weaveIPAM() {
		return delegate(e, c, "STATUS")
	}
	return err
}

func netGC(e env, c *netConf) *cniError {
	valid := make([]validAttachment, 0, len(c.ValidAttachments))
	for _, a := range c.ValidAttachments {
		valid = append(valid, validAttachment{ContainerID: a.ContainerID, Ifname: a.Ifname})
	}
	var out struct {
		Released []string `json:"released"`
	}
	if err := c.client().post("/cni/gc", map[string]interface{}{"valid": valid}, &out); err != nil {
		return err
	}
	if !c.weaveIPAM() {
		return delegate(e, c, "GC")
	}
	return nil
}

// ipamMode is the weave-ipam plugin: addresses only, through the router's IPAM.
func ipamMode(e env, c *netConf) (interface{}, *cniError) {
	switch e.Command {
	case "ADD":
		if e.ContainerID == "" {
			return nil, newError(codeInvalidEnv, "required environment variable CNI_CONTAINERID not set for ADD")
		}
		req := addRequest{ContainerID: e.ContainerID, IPAM: &c.ipam, Timeout: c.Timeout}
		var res result
		if err := c.client().post("/cni/ipam/add", req, &res); err != nil {
			return nil, err
		}
		return res.toVersion(c.CNIVersion), nil
	case "DEL":
		if e.ContainerID == "" {
			return nil, newError(codeInvalidEnv, "required environment variable CNI_CONTAINERID not set for DEL")
		}
		return nil, c.client().post("/cni/ipam/del", keyRequest{ContainerID: e.ContainerID}, nil)
	case "CHECK":
		if e.ContainerID == "" {
			return nil, newError(codeInvalidEnv, "required environment variable CNI_CONTAINERID not set for CHECK")
		}
		return nil, c.client().post("/cni/ipam/check", keyRequest{ContainerID: e.ContainerID}, nil)
	case "STATUS":
		return nil, netStatus(e, c)
	case "GC":
		return nil, nil // weave IPAM frees with the weave-net plugin's GC or DEL
	}
	return nil, newError(codeInvalidEnv, "unknown CNI_COMMAND %q", e.Command)
}
