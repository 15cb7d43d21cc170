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
