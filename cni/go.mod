module weave-router/cni

go 1.19
