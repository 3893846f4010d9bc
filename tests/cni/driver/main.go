// Command cni-driver runs CNI verbs through libcni, as podman, containerd's go-cni and
// CRI runtimes do, so a plugin's results are validated by libcni's own parsing and
// caching (CHECK gets the cached ADD result as prevResult).
//
// Built offline by tests/integration/test_cni_libcni.py against Debian's
// golang-github-appc-cni-dev sources (GOPATH mode, GOPATH=/usr/share/gocode), in the
// test's build directory; nothing is vendored.
//
//	cni-driver -conflist F -bin DIR -cache DIR [-netns P] [-id ID] [-ifname eth0]
//	           [-args K=V;K=V] add|check|del|validate|version|cached
//
// add prints the result (in the conflist's cniVersion) as JSON; validate checks every plugin
// of the list exists and supports its version, and prints their capabilities; version prints the first plugin's
// version info; cached prints the cached result. A failure prints the error (for a
// plugin's error object: its code and message as JSON) on stdout and exits 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func main() {
	conflist := flag.String("conflist", "", "network config list file")
	bin := flag.String("bin", "", "plugin directories, colon separated")
	cache := flag.String("cache", "", "libcni cache directory")
	netns := flag.String("netns", "", "CNI_NETNS")
	id := flag.String("id", "", "CNI_CONTAINERID")
	ifname := flag.String("ifname", "eth0", "CNI_IFNAME")
	args := flag.String("args", "", "CNI_ARGS as K=V;K=V")
	flag.Parse()
	if flag.NArg() != 1 {
		fail(errors.New("usage: cni-driver [flags] add|check|del|validate|version|cached"))
	}
	list, err := libcni.ConfListFromFile(*conflist)
	if err != nil {
		fail(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(strings.Split(*bin, ":"), *cache, nil)
	rt := &libcni.RuntimeConf{ContainerID: *id, NetNS: *netns, IfName: *ifname,
		CacheDir: *cache}
	for _, kv := range strings.Split(*args, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			rt.Args = append(rt.Args, [2]string{k, v})
		}
	}
	ctx := context.Background()
	switch flag.Arg(0) {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		show(res)
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "cached":
		res, err := cni.GetNetworkListCachedResult(list, rt)
		if err != nil {
			fail(err)
		}
		if res == nil {
			fmt.Println("null")
			return
		}
		show(res)
	case "validate":
		caps, err := cni.ValidateNetworkList(ctx, list)
		if err != nil {
			fail(err)
		}
		if caps == nil {
			caps = []string{}
		}
		out(caps)
	case "version":
		info, err := cni.GetVersionInfo(ctx, list.Plugins[0].Network.Type)
		if err != nil {
			fail(err)
		}
		out(map[string]interface{}{"supportedVersions": info.SupportedVersions()})
	default:
		fail(fmt.Errorf("unknown verb %q", flag.Arg(0)))
	}
}

// show prints a result in its own version, as libcni parsed it.
func show(res types.Result) {
	if err := res.Print(); err != nil {
		fail(err)
	}
}

func out(v interface{}) {
	data, err := json.Marshal(v)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(data))
}

func fail(err error) {
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		out(map[string]interface{}{"code": cniErr.Code, "msg": cniErr.Msg,
			"details": cniErr.Details})
	} else {
		out(map[string]interface{}{"error": err.Error()})
	}
	os.Exit(1)
}
