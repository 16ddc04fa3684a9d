#!/usr/bin/env bash
# Installs the Debian 12 packages that building and testing Flotilla need.
#
#   deploy/install-deps.sh            build and test dependencies
#   deploy/install-deps.sh --bench    the same, plus etcd (the peer the benchmarks compare with)
#
# Idempotent: packages already installed are left alone, and apt is not touched at all when
# nothing is missing (so it also succeeds without root then). Installing needs root. Services
# that packages would start on install (libvirtd, virtlogd, ovsdb-server and ovs-vswitchd, etcd)
# are not started: tests and benchmarks run their own.
#
# QEMU and libvirt: Debian 12's qemu-system is 7.2, and some images ship qemu-utils 10.x from
# backports, which conflicts with it. qemu-utils, qemu-system-common and qemu-block-extra are
# therefore pinned to the version apt offers for qemu-system-common (downgrading if needed); a
# pinned package installed at another version counts as missing.
# The Rust toolchain itself is not a Debian package here (Debian 12's cargo is too old); this
# script only reports whether a recent enough one is on PATH.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf 'install-deps: %s\n' "$*"; }

usage() {
    sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}

bench=0
for arg in "$@"; do
    case $arg in
        --bench) bench=1 ;;
        -h | --help) usage; exit 0 ;;
        *) printf 'install-deps: unknown argument %q\n' "$arg" >&2; usage >&2; exit 2 ;;
    esac
done

packages=(build-essential pkg-config ca-certificates curl
    # The agent's drivers and their real-component tests: libvirt (the `virt` crate links
    # libvirt-dev), QEMU with software emulation, and what agent/tests/data/make-guest.sh needs
    # to build the test guest (cpio; xz and zstd for compressed kernel modules).
    qemu-system-x86 libvirt-daemon-system libvirt-clients libvirt-dev cpio xz-utils zstd
    # xmllint, which virt-xml-validate needs to check rendered domain XML against libvirt's
    # schema (agent/tests/render_libvirt.rs).
    libxml2-utils
    # Tenant networking: Open vSwitch (userspace datapath; the agent's OVS driver and its real
    # test, agent/tests/ovs_real.rs, start their own ovsdb-server and ovs-vswitchd) and nftables
    # (floating-IP NAT in router namespaces); arping announces a floating IP where it moved to;
    # ethtool turns checksum offload off on the routers' veths (the userspace datapath needs
    # complete checksums);
    # udhcpc is the DHCP client of the DHCP responder's real test (agent/tests/dhcp_real.rs).
    openvswitch-switch nftables iproute2 iputils-arping iputils-ping udhcpc ethtool
    # python3 serves TCP in the routers' real test (agent/tests/router_real.rs).
    python3)
# Installed at exactly the version apt offers for qemu-system-common (see above).
pinned=(qemu-utils qemu-system-common qemu-block-extra)
if ((bench)); then
    packages+=(etcd-server etcd-client)
fi

is_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]
}

installed_version() {
    dpkg-query -W -f='${Version}' "$1" 2>/dev/null
}

missing=()
for p in "${packages[@]}"; do
    if is_installed "$p"; then
        log "$p is already installed"
    else
        missing+=("$p")
    fi
done

qemu_version=$(apt-cache policy qemu-system-common 2>/dev/null | awk '/Candidate:/{print $2}')
if [[ -z $qemu_version || $qemu_version == "(none)" ]] && is_installed qemu-system-common; then
    # No package lists (never updated): the installed qemu-system-common is the reference.
    qemu_version=$(installed_version qemu-system-common)
fi
if [[ -z $qemu_version || $qemu_version == "(none)" ]]; then
    if ((EUID == 0)); then
        log "apt-get update (apt offers no qemu-system-common yet)"
        apt-get update
        qemu_version=$(apt-cache policy qemu-system-common | awk '/Candidate:/{print $2}')
    fi
    if [[ -z $qemu_version || $qemu_version == "(none)" ]]; then
        log "apt offers no qemu-system-common; run apt-get update as root and try again"
        exit 1
    fi
fi
for p in "${pinned[@]}"; do
    if is_installed "$p" && [[ $(installed_version "$p") == "$qemu_version" ]]; then
        log "$p $qemu_version is already installed"
    else
        if is_installed "$p"; then
            log "$p $(installed_version "$p") is installed; pinning it to $qemu_version"
        fi
        missing+=("$p=$qemu_version")
    fi
done

if ((${#missing[@]} == 0)); then
    log "all $((${#packages[@]} + ${#pinned[@]})) packages are present; apt not needed"
else
    if ((EUID != 0)); then
        log "missing: ${missing[*]}"
        log "run this script as root (sudo $0 $*) to install them"
        exit 1
    fi
    # Keep maintainer scripts from starting services (libvirtd, virtlogd, etcd) on install: a
    # policy-rc.d that denies every start, present only while we install, and only if none
    # exists already.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    log "apt-get update"
    apt-get update
    # The update can change what apt offers (a rebuilt 7.2 package, say): pin to the version
    # offered now, or apt refuses a version that no longer exists.
    fresh=$(apt-cache policy qemu-system-common | awk '/Candidate:/{print $2}')
    if [[ -n $fresh && $fresh != "(none)" && $fresh != "$qemu_version" ]]; then
        log "apt now offers qemu-system-common $fresh (not $qemu_version); pinning to $fresh"
        qemu_version=$fresh
        kept=()
        for m in "${missing[@]}"; do
            [[ $m == *=* ]] || kept+=("$m")
        done
        missing=("${kept[@]}")
        for p in "${pinned[@]}"; do
            if ! is_installed "$p" || [[ $(installed_version "$p") != "$qemu_version" ]]; then
                missing+=("$p=$qemu_version")
            fi
        done
    fi
    if ((${#missing[@]} == 0)); then
        log "after the update every package is present"
        exit 0
    fi
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends --allow-downgrades \
        "${missing[@]}"
    log "installed: ${missing[*]}"
fi

# The toolchain: report only.
want=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$repo/Cargo.toml" 2>/dev/null | head -n 1)
want=${want:-1.88}
if command -v cargo >/dev/null 2>&1; then
    have=$(rustc --version 2>/dev/null | awk '{print $2}')
    if [[ -n $have && $(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n 1) != "$want" ]]; then
        log "warning: rustc $have is older than the $want this workspace needs; update it with rustup"
    else
        log "Rust toolchain: rustc ${have:-unknown} (need >= $want)"
    fi
else
    log "note: cargo is not on PATH; install Rust >= $want with rustup (Debian 12's cargo is too old)"
fi
if ((bench)); then
    log "etcd: $(command -v etcd || echo 'not on PATH') (not started; benchmarks run their own)"
fi
