#!/bin/sh
# The image's base: a Debian rootfs made with debootstrap (no registry is needed), as a
# tarball for `podman import`.
#
#   image/base.sh OUT.tar [SUITE [MIRROR]]     (root; SUITE bookworm, MIRROR deb.debian.org)
#
# minbase variant (essential packages and apt only), no recommends, no documentation,
# man pages or locales in later installs, apt lists and caches emptied. The Containerfile's
# stages start from it and apt-get install what each needs.
set -eu

out=${1:?usage: image/base.sh OUT.tar [SUITE [MIRROR]]}
suite=${2:-bookworm}
mirror=${3:-http://deb.debian.org/debian}

work=$(mktemp -d "${out}.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
root=$work/rootfs

debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2
    echo "image/base.sh: debootstrap $suite from $mirror failed (log above)" >&2
    exit 1
}

cat >"$root/etc/apt/sources.list" <<LIST
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${mirror%/debian}/debian-security $suite-security main
LIST
cat >"$root/etc/apt/apt.conf.d/90weave-router" <<'CONF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
CONF
cat >"$root/etc/dpkg/dpkg.cfg.d/90weave-router" <<'CONF'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
CONF
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/log/apt/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +

tar --numeric-owner --xattrs -C "$root" -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$out"
