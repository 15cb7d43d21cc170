# shellcheck shell=bash
# Source me: a throw-away rootful podman whose storage, config, networks and
# events all live under one temp dir ($PODMAN_ENV_DIR), so a run leaves no
# trace on the host once that dir and the network are removed.
#
#   source scripts/podman-env.sh [DIR]    # DIR defaults to a new mktemp dir
#
# Settings (what a Docker-less CI box or VM needs):
#   runtime runc, cgroup manager cgroupfs (no systemd), events logger file
#   (no journald), overlay storage (vfs when overlay cannot mount here).

PODMAN_ENV_DIR="${1:-${PODMAN_ENV_DIR:-$(mktemp -d /tmp/bazaar-podman.XXXXXX)}}"
mkdir -p "$PODMAN_ENV_DIR"/{storage,run,networks,tmp,conf}
export PODMAN_ENV_DIR

_podman_storage_driver() {
    # overlay needs a filesystem that is not itself overlay/tmpfs-on-overlay;
    # try one real mount and fall back to vfs (slower, always works).
    local t="$PODMAN_ENV_DIR/probe"
    mkdir -p "$t"/{l,u,w,m}
    if mount -t overlay overlay -o "lowerdir=$t/l,upperdir=$t/u,workdir=$t/w" "$t/m" 2>/dev/null; then
        umount "$t/m"; rm -rf "$t"; echo overlay
    else
        rm -rf "$t"; echo vfs
    fi
}

if [[ ! -f "$PODMAN_ENV_DIR/conf/storage.conf" ]]; then
    _nofile="$(ulimit -Hn)"; [[ "$_nofile" == unlimited || "$_nofile" -gt 65536 ]] && _nofile=65536
    cat >"$PODMAN_ENV_DIR/conf/storage.conf" <<CONF
[storage]
driver = "${PODMAN_STORAGE_DRIVER:-$(_podman_storage_driver)}"
graphroot = "$PODMAN_ENV_DIR/storage"
runroot = "$PODMAN_ENV_DIR/run"
CONF
    cat >"$PODMAN_ENV_DIR/conf/containers.conf" <<CONF
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$PODMAN_ENV_DIR/events.log"
tmp_dir = "$PODMAN_ENV_DIR/tmp"
static_dir = "$PODMAN_ENV_DIR/storage/libpod"
volume_path = "$PODMAN_ENV_DIR/storage/volumes"

[network]
network_config_dir = "$PODMAN_ENV_DIR/networks"

[containers]
log_driver = "k8s-file"
# podman's defaults (nofile 1048576, nproc 4194304) fail where the host may
# not raise its limits ("error setting rlimit type 7/6"); ask for less.
default_ulimits = ["nofile=$_nofile:$_nofile", "nproc=16384:16384"]
# aardvark-dns (podman 4.3) now and then drops one of the A/AAAA pair that
# glibc sends in parallel from one socket while containers join the network;
# with glibc's defaults (5 s x 2 attempts x 2 servers) the lookup then takes
# 20-40 s, and libzmq resolves peer names on the I/O thread it shares with the
# service's own socket, so the service stops answering. single-request-reopen
# sends them one at a time (no stall seen since), the timeouts bound the rest.
dns_options = ["timeout:1", "attempts:2", "single-request-reopen"]
CONF
    # Fully qualified names only; no search registries (nothing to guess).
    cat >"$PODMAN_ENV_DIR/conf/registries.conf" <<CONF
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
CONF
    cat >"$PODMAN_ENV_DIR/conf/policy.json" <<CONF
{"default": [{"type": "insecureAcceptAnything"}]}
CONF
fi

export CONTAINERS_STORAGE_CONF="$PODMAN_ENV_DIR/conf/storage.conf"
export CONTAINERS_CONF="$PODMAN_ENV_DIR/conf/containers.conf"
export CONTAINERS_REGISTRIES_CONF="$PODMAN_ENV_DIR/conf/registries.conf"
export TMPDIR="$PODMAN_ENV_DIR/tmp"
# podman reads policy.json only from a fixed path or --signature-policy.
export PODMAN_POLICY="$PODMAN_ENV_DIR/conf/policy.json"

# ---- the host as it was, and putting it back ---------------------------------
# Rootful podman touches a few host-wide things whatever its config says:
# firewall chains (netavark's NETAVARK_* stay after the last network goes),
# network namespaces, bridges, ip_forward, /run/containers (netavark's IPAM)
# and /var/lib/containers (the blob-info cache). The first `source` records
# how they were, in $PODMAN_ENV_DIR/host-before; podman_env_teardown removes
# only what appeared since, then the whole dir.

_podman_env_chains() { { iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } | awk '/^:/ {print $1}' | sort -u; }
_podman_env_links() { ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | sort -u; }

if [[ ! -d "$PODMAN_ENV_DIR/host-before" ]]; then
    mkdir -p "$PODMAN_ENV_DIR/host-before"
    _podman_env_chains >"$PODMAN_ENV_DIR/host-before/chains"
    _podman_env_links >"$PODMAN_ENV_DIR/host-before/links"
    { ls /run/netns 2>/dev/null || true; } | sort >"$PODMAN_ENV_DIR/host-before/netns"
    cat /proc/sys/net/ipv4/ip_forward >"$PODMAN_ENV_DIR/host-before/ip_forward" 2>/dev/null || true
    for _d in /run/containers /var/lib/containers; do
        [[ -e "$_d" ]] || echo "$_d" >>"$PODMAN_ENV_DIR/host-before/new-paths"
    done
    unset _d
fi

_podman_env_remove_new_chains() {
    local cmd save table chain new rule
    for cmd in iptables ip6tables; do
        command -v "$cmd-save" >/dev/null || continue
        for table in filter nat mangle; do
            save="$("$cmd-save" -t "$table" 2>/dev/null)" || continue
            new="$(comm -13 "$PODMAN_ENV_DIR/host-before/chains" <(awk '/^:/ {print $1}' <<<"$save" | sort -u) | sed 's/^://')"
            [[ -n "$new" ]] || continue
            for chain in $new; do  # rules that jump into a new chain, from any chain
                while read -r rule; do
                    [[ -n "$rule" ]] && eval "$cmd -t $table -D $rule" 2>/dev/null
                done < <(grep -E -- "-j $chain( |\$)" <<<"$save" | sed 's/^-A //')
            done
            for chain in $new; do "$cmd" -t "$table" -F "$chain" 2>/dev/null; done
            for chain in $new; do "$cmd" -t "$table" -X "$chain" 2>/dev/null; done
        done
    done
    return 0
}

# Remove every container, pod, volume, network and image of this podman, then
# what they left on the host, then $PODMAN_ENV_DIR itself. Never fails.
podman_env_teardown() {
    local before="$PODMAN_ENV_DIR/host-before" n
    [[ -d "$before" ]] || return 0
    {
        timeout 60 podman rm --all --force --time 0
        timeout 30 podman pod rm --all --force
        timeout 30 podman volume rm --all --force
        for n in $(podman network ls --format '{{.Name}}'); do
            [[ "$n" == podman ]] || podman network rm --force "$n"
        done
        timeout 60 podman rmi --all --force
        timeout 60 podman system reset --force
    } >/dev/null 2>&1
    # Whatever is still mounted under the dir (overlay layers, shm) goes first.
    grep -F " $PODMAN_ENV_DIR" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
    # Only podman's own (netns-<uuid>): a test suite running meanwhile has
    # namespaces of its own here (tests/system/netns.py), and deleting its hub
    # cut every link of that test's cluster ("Network is unreachable").
    for n in $(comm -13 "$before/netns" <({ ls /run/netns 2>/dev/null || true; } | sort) | grep -E '^netns-'); do
        ip netns delete "$n" 2>/dev/null
    done
    for n in $(comm -13 "$before/links" <(_podman_env_links) | grep -E '^(podman[0-9]+|veth)'); do
        ip link delete "$n" 2>/dev/null
    done
    _podman_env_remove_new_chains
    [[ -s "$before/ip_forward" ]] && cat "$before/ip_forward" >/proc/sys/net/ipv4/ip_forward 2>/dev/null
    [[ -f "$before/new-paths" ]] && xargs -r rm -rf <"$before/new-paths"
    rm -rf "$PODMAN_ENV_DIR"
    return 0
}
