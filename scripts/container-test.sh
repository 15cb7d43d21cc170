#!/usr/bin/env bash
# make container-test: build the image and run docker-compose.yml for real
# (podman + podman-compose), then prove the deployment keeps its promises:
#
#   1. the image builds from the Dockerfile (base: python:3.12-slim when a
#      registry answers, else a debootstrap bookworm image, cached under
#      $BAZAAR_BASE_CACHE) and runs as a non-root user without build tools;
#   2. one role in a container stops on SIGTERM in well under a second, and
#      refuses to start without the cluster's keys;
#   3. the one-shot `keys` service makes the keys (secrets 0600) and deals
#      each service its own secret key alone (docker-compose.yml), the five
#      services come up and /health says ok;
#   4. `bazaar load` with verification passes; an intruder container on the
#      compose network, without the keys, gets no answer from any internal
#      port and changes nothing;
#   5. killing the order leader's container: orders keep flowing (a load run
#      across the kill passes verification) and no acknowledged order is lost;
#   6. a crashed service (SIGKILL from the host) is restarted by its policy;
#   7. the old leader comes back and catches up: the three order logs in
#      the three replicas (bazaar export orders) are identical;
#   8. every container stops on SIGTERM quickly;
#   9. the `monitoring` profile's Prometheus (prom/prometheus where Docker Hub
#      answers, else deploy/prometheus-image: Debian's package on the same
#      base) scrapes the five through deploy/prometheus/prometheus.yml: its
#      HTTP API (published on loopback) shows every target up, one order
#      leader, orders counted and every alert rule loaded; after the leader
#      kill, the front end's election counter has risen;
#  10. the docs' compose commands run as written (blocks marked
#      `<!-- test: compose-... -->` in docs/deploy.md and docs/protocol.md,
#      extracted as tests/ do): ps, logs, /health, Prometheus's API,
#      `docker compose run --rm client ...` (bazaar call), the compose backup
#      while clients trade, the compose key rotation of one role (with the
#      restart it asks for); after the stack stops, the compose restore on a
#      "new host" (a new project: fresh volumes, new keys) brings back every
#      acknowledged order, a gapless log and a market that matches it.
#      Mapping: `docker compose` -> podman-compose (exec without a terminal
#      gets -T, as docker compose does; cp -> podman cp on the service's
#      container, podman-compose has none), `aws s3 cp` -> a local directory,
#      localhost:8080/9090 -> the ports published here, <placeholders> filled.
#
# Everything (containers, images, volumes, networks, netns, firewall chains,
# temp storage) is removed on exit, failed or not. Where podman cannot run
# (not Linux, not root, no podman and no way to install it, no base image) it
# prints SKIP with the reason and exits 0. BAZAAR_CONTAINER_TEST=skip skips.
#
# Knobs: BASE_IMAGE (use this base, no pull/debootstrap), BAZAAR_BASE_CACHE,
# BAZAAR_PROMETHEUS_IMAGE (use this Prometheus image, no pull/build),
# BAZAAR_CONTAINER_INSTALL=0 (never apt-get install), BAZAAR_KEEP=1 (keep the
# stack running on failure for a look; prints how to clean up).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
VENV="${VENV:-$ROOT/.venv}"
T0=$SECONDS

say() { printf '[container-test %4ds] %s\n' $((SECONDS - T0)) "$*" >&2; }
skip() { say "SKIP: $*"; exit 0; }
# The reason is said again as the last line: CI shows only the log's tail,
# and the stack's logs printed on failure would push it out of sight.
FAIL_REASON=
die() { FAIL_REASON="$*"; say "FAIL: $*"; exit 1; }

# ---------------------------------------------------------------- can we run?
[[ "${BAZAAR_CONTAINER_TEST:-}" == skip ]] && skip "BAZAAR_CONTAINER_TEST=skip"
[[ "$(uname -s)" == Linux ]] || skip "podman runs containers natively on Linux only (this is $(uname -s))"
[[ $EUID -eq 0 ]] || skip "needs root: the test runs rootful podman with all its state under a temp dir (CI runs as root)"
[[ -x "$VENV/bin/bazaar" ]] || die "no $VENV/bin/bazaar: run through 'make container-test'"

apt_updated=
apt_install() {
    [[ "${BAZAAR_CONTAINER_INSTALL:-1}" != 0 ]] && command -v apt-get >/dev/null || return 1
    if [[ -z "$apt_updated" ]]; then
        say "apt-get update"
        timeout 300 apt-get update -qq >/dev/null 2>&1 || return 1
        apt_updated=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "$@" >/dev/null 2>&1
}

if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
    apt_install podman runc netavark aardvark-dns iptables \
        || skip "podman/runc are not installed and could not be installed with apt-get"
fi
if [[ ! -x "$VENV/bin/podman-compose" ]]; then
    say "pip install podman-compose (into $VENV)"
    "$VENV/bin/pip" install --quiet podman-compose >/dev/null 2>&1 \
        || skip "podman-compose is not installed and pip could not install it"
fi
PODMAN_COMPOSE="$VENV/bin/podman-compose"

# Without systemd, podman logs an error each time it would (un)schedule a
# healthcheck timer; those lines are noise here, everything else is kept.
podman() { command podman "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }

# ---------------------------------------------------------------- temp world
WORK="$(mktemp -d /tmp/bazaar-ct.XXXXXX)"
# shellcheck source=scripts/podman-env.sh
source "$ROOT/scripts/podman-env.sh" "$WORK/podman"
PROJECT="bazaarct$$"
IMAGE="localhost/stock-bazaar:ct$$"
read -r PORT PROM_PORT NEW_PORT < <("$VENV/bin/python" -c 'from bazaar.testing.ports import free_port as f; print(f(), f(), f())')
URL="http://127.0.0.1:$PORT"
PROM_URL="http://127.0.0.1:$PROM_PORT"
NEW_PROJECT="${PROJECT}new"  # the restore's "new host"
NEW_URL="http://127.0.0.1:$NEW_PORT"
CHECK=("$VENV/bin/python" "$ROOT/scripts/container_check.py")
COMPOSE=("$PODMAN_COMPOSE" --project-name "$PROJECT" --profile monitoring --file "$ROOT/docker-compose.yml")
export BAZAAR_IMAGE="$IMAGE" BAZAAR_HTTP_PUBLISH="127.0.0.1:$PORT" BAZAAR_PROMETHEUS_PUBLISH="127.0.0.1:$PROM_PORT"
compose_up=
prom_pid=
trade_pid=

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ $rc -ne 0 && -n "$compose_up" ]]; then
        say "logs of the stack (last 25 lines each):"
        for c in $(podman ps -a --format '{{.Names}}' 2>/dev/null); do
            echo "----- $c ($(podman inspect -f '{{.State.Status}} exit={{.State.ExitCode}}' "$c" 2>/dev/null))" >&2
            podman logs --tail 25 "$c" 2>&1 | sed 's/^/    /' >&2
        done
        say "containers: $(podman ps -a --format '{{.Names}}={{.State}}' 2>/dev/null | sed "s/^${PROJECT}_//" | tr '\n' ' ')"
        if [[ "${BAZAAR_KEEP:-}" == 1 ]]; then
            say "BAZAAR_KEEP=1: stack left running; clean up with: source scripts/podman-env.sh $PODMAN_ENV_DIR && podman_env_teardown; rm -rf $WORK"
            exit "$rc"
        fi
    fi
    touch "$WORK/stop-trading"
    for pid in $prom_pid $trade_pid; do  # background jobs still going: the image, the traders
        kill -0 "$pid" 2>/dev/null || continue
        pkill -TERM -P "$pid" 2>/dev/null
        kill -TERM "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    say "teardown: containers, volumes, networks, images, storage, host leftovers"
    [[ -n "$compose_up" ]] && timeout 60 "${COMPOSE[@]}" down --volumes --timeout 2 >/dev/null 2>&1
    podman_env_teardown
    rm -rf "$WORK"
    if [[ $rc -eq 0 ]]; then say "PASS ($((SECONDS - T0))s)"; else say "FAILED (exit $rc) after $((SECONDS - T0))s${FAIL_REASON:+: $FAIL_REASON}"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- base image
BASE="${BASE_IMAGE:-}"
if [[ -z "$BASE" ]]; then
    say "pull python:3.12-slim (the Dockerfile's default base)"
    if timeout 90 podman pull --quiet docker.io/library/python:3.12-slim >/dev/null 2>"$WORK/pull.err"; then
        BASE=docker.io/library/python:3.12-slim
    else
        say "no registry image ($(tail -1 "$WORK/pull.err" | cut -c1-120)); using a debootstrap base"
        command -v debootstrap >/dev/null || apt_install debootstrap \
            || skip "cannot pull python:3.12-slim and debootstrap is not installable"
        BASE=localhost/bazaar-base:bookworm
        timeout 900 "$ROOT/scripts/make-base-image.sh" "$BASE" >/dev/null 2>"$WORK/base.err" \
            || { cat "$WORK/base.err" >&2; skip "cannot pull python:3.12-slim and debootstrap failed (no Debian mirror?)"; }
    fi
else
    podman image exists "$BASE" || timeout 300 podman pull --quiet "$BASE" >/dev/null \
        || skip "BASE_IMAGE=$BASE cannot be pulled"
fi
if ! timeout 60 podman run --rm "$BASE" python3 -c 'pass' 2>"$WORK/probe.err"; then
    cat "$WORK/probe.err" >&2
    skip "podman cannot run a container here (see the error above)"
fi
say "base image: $BASE"

# build SECONDS ARGS...: `podman build`, tried up to three times within
# SECONDS in all. The builds download (pip, apt) and a DNS lookup that times
# out under load fails the whole build ("Temporary failure in name
# resolution", seen at load 14); the layers already built are cached, so a
# retry costs only the failed step. Host networking: the build's lookups use
# the host's resolver as it is, not the stack's tight dns_options
# (scripts/podman-env.sh).
build() {
    local deadline=$((SECONDS + $1)) attempt
    shift
    for attempt in 1 2 3; do
        ((SECONDS < deadline)) || break
        timeout $((deadline - SECONDS)) podman build --quiet --network host "$@" >/dev/null && return 0
        say "  podman build ${*: -1} failed (attempt $attempt of 3)"
        [[ $attempt == 3 ]] || sleep $((attempt * 5))
    done
    return 1
}

# ---------------------------------------------------------------- Prometheus
# The image of the compose file's `prometheus` service: the official one where
# Docker Hub answers, else deploy/prometheus-image (Debian's prometheus on the
# same base, laid out like the official image), built in the background while
# the bazaar image builds.
PROM_OFFICIAL="$(grep -o 'BAZAAR_PROMETHEUS_IMAGE:-[^}]*' docker-compose.yml | cut -d- -f2-)"
PROM_IMAGE="${BAZAAR_PROMETHEUS_IMAGE:-}"
prometheus_image() {
    if [[ -n "$PROM_IMAGE" ]]; then
        podman image exists "$PROM_IMAGE" || timeout 300 podman pull --quiet "$PROM_IMAGE" >/dev/null
    elif [[ "$BASE" == docker.io/* ]] && timeout 120 podman pull --quiet "docker.io/$PROM_OFFICIAL" >/dev/null; then
        echo "docker.io/$PROM_OFFICIAL" >"$WORK/prom.image"
    else
        build 600 --build-arg "BASE_IMAGE=$BASE" --tag "localhost/bazaar-prometheus:ct$$" \
            deploy/prometheus-image && echo "localhost/bazaar-prometheus:ct$$" >"$WORK/prom.image"
    fi
}
[[ -n "$PROM_IMAGE" ]] && echo "$PROM_IMAGE" >"$WORK/prom.image"
prometheus_image >"$WORK/prom.log" 2>&1 &
prom_pid=$!

# ---------------------------------------------------------------- the image
build_args=(--build-arg "BASE_IMAGE=$BASE" --tag "$IMAGE" --file Dockerfile)
# A TLS-intercepting proxy's CA must reach pip inside the build: lend the
# host's bundle (read-only, build time only; it is not in the image).
[[ -f /etc/ssl/certs/ca-certificates.crt ]] \
    && build_args+=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
say "podman build ($IMAGE)"
build 1200 "${build_args[@]}" . 2>"$WORK/build.err" \
    || { tail -40 "$WORK/build.err" >&2; die "image build failed"; }
grep -h 'failed (attempt' "$WORK/build.err" >&2 || true  # retried: say so
say "image size: $(podman image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

say "image smoke: --version, non-root user, no build tools in the venv"
podman run --rm "$IMAGE" --version >&2 || die "bazaar --version failed in the image"
uid="$(podman run --rm --entrypoint id "$IMAGE" -u)"
[[ "$uid" != 0 ]] || die "the image runs as root"
podman run --rm --entrypoint python3 "$IMAGE" -c '
import importlib.util as u, sys
left = [m for m in ("pip", "setuptools", "wheel") if u.find_spec(m)]
sys.exit(f"build tools left in the venv: {left}" if left else 0)' || die "build tools left in the image"

stop_time() {  # "EXIT TOTAL": seconds from `podman stop` on container $1 to the
    # process's exit (what SIGTERM handling costs), and to podman returning
    local t0 t1 fin
    t0=$(date +%s.%N)
    podman stop --time 10 "$1" >/dev/null
    t1=$(date +%s.%N)
    fin=$(podman inspect -f '{{.State.FinishedAt.Unix}}.{{printf "%09d" .State.FinishedAt.Nanosecond}}' "$1")
    awk -v a="$t0" -v b="$t1" -v f="$fin" 'BEGIN {printf "%.3f %.3f", f - a, b - a}'
}
# 1 s on a machine with a core per runnable process, stretched by the load
# average when it is oversubscribed (bazaar.testing.waiting.wall_budget, the
# formula the native tests use): the check
# is about the service's SIGTERM handling, not a busy CI neighbour. (A leader
# took 1.11 s at load 8-20 on 2 cores, podman's own signalling included.)
stop_budget() {
    "$VENV/bin/python" -c 'from bazaar.testing.waiting import wall_budget; print(f"{wall_budget(1.0):.2f}")'
}
quick_stop() {  # container $1 (called $2) exits within 1 s of `podman stop`, cleanly
    local times code budget
    budget="$(stop_budget)"
    times="$(stop_time "$1")"
    code="$(podman inspect -f '{{.State.ExitCode}}' "$1")"
    say "  $2: exited ${times% *}s after podman stop (podman took ${times#* }s; budget ${budget}s), exit code $code"
    awk -v t="${times% *}" -v b="$budget" 'BEGIN {exit !(t < b)}' \
        || die "$2 took ${times% *}s to stop on SIGTERM (budget ${budget}s at this load)"
    [[ "$code" == 0 ]] || die "$2 exited with $code on SIGTERM"
}

say "no keys, no service: the image's catalog refuses to start without them"
nokeys="$(podman run --rm "$IMAGE" catalog 2>&1)" && die "the catalog started without keys: $nokeys"
[[ "$(wc -l <<<"$nokeys")" == 1 && "$nokeys" == *"bazaar keys init"* ]] \
    || die "no keys should be a one-line error naming 'bazaar keys init', got: $nokeys"
say "  $nokeys"

say "PID 1 and SIGTERM: one catalog container (keys made in the container)"
podman run -d --name "${PROJECT}-sig" --entrypoint sh "$IMAGE" \
    -c 'bazaar keys init /keys && exec bazaar catalog' >/dev/null
for _ in $(seq 50); do
    podman exec "${PROJECT}-sig" bazaar call tcp://127.0.0.1:5555 ping >/dev/null 2>&1 && break
    [[ "$(podman inspect -f '{{.State.Running}}' "${PROJECT}-sig")" == true ]] || break
    sleep 0.2
done
podman exec "${PROJECT}-sig" bazaar call tcp://127.0.0.1:5555 ping >/dev/null \
    || { podman logs "${PROJECT}-sig" >&2; die "catalog in a container does not answer ping"; }
quick_stop "${PROJECT}-sig" catalog
podman rm -f -v "${PROJECT}-sig" >/dev/null

# ---------------------------------------------------------------- the stack
ctr() {  # container name of compose service $1 (of project $2, default this test's)
    podman ps -a --filter "label=io.podman.compose.project=${2:-$PROJECT}" \
        --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -1
}

# ---- the docs' compose commands, as written (header, 10)
# Defined here, run inside doc_run's script (declare -f): `docker compose`
# and `aws s3 cp` as the docs use them.
docker() {
    [[ "${1:-}" == compose ]] || { echo "doc_run: only 'docker compose' is mapped, not 'docker $*'" >&2; return 2; }
    shift
    local a=() x
    case "${1:-}" in
        cp)  # podman-compose has no cp: podman cp on the service's container
            shift
            for x in "$@"; do
                if [[ "$x" =~ ^([a-z0-9_-]+):(/.*)$ ]]; then
                    a+=("$(command podman ps -a --filter "label=io.podman.compose.project=$DOC_PROJECT" \
                        --filter "label=com.docker.compose.service=${BASH_REMATCH[1]}" --format '{{.Names}}' | head -1):${BASH_REMATCH[2]}")
                else
                    a+=("$x")
                fi
            done
            command podman cp "${a[@]}"
            ;;
        exec | run)  # docker compose allocates no TTY where there is none
            x="$1"
            shift
            [[ -t 0 && -t 1 ]] || a=(-T)
            "${DOC_COMPOSE[@]}" "$x" "${a[@]}" "$@"
            ;;
        *) "${DOC_COMPOSE[@]}" "$@" ;;
    esac
}
aws() {  # `aws s3 cp SRC DST`, s3://BUCKET/KEY being $DOC_S3/BUCKET/KEY
    [[ "${1:-} ${2:-}" == "s3 cp" && $# -eq 4 ]] || { echo "doc_run: only 'aws s3 cp SRC DST' is mapped, not 'aws $*'" >&2; return 2; }
    local src="$3" dst="$4"
    [[ "$src" != s3://* ]] || src="$DOC_S3/${src#s3://}"
    if [[ "$dst" == s3://* ]]; then
        dst="$DOC_S3/${dst#s3://}"
        if [[ "$dst" == */ ]]; then mkdir -p "$dst"; else mkdir -p "$(dirname "$dst")"; fi
    fi
    cp "$src" "$dst"
}
# doc_run FILE MARKER DIR PROJECT PORT OUT COMPOSE...: the ```sh block after
# `<!-- test: MARKER -->` in FILE, run by `bash -euo pipefail` in DIR, with
# `docker compose` being COMPOSE... (podman-compose for PROJECT) and the front
# end published on PORT; its output (stdout and stderr) goes to OUT. Shows
# the block, and the tail of OUT when it fails.
DOC_DATE=
doc_run() {
    local file="$1" marker="$2" dir="$3" project="$4" port="$5" out="$6" block script
    shift 6
    block="$("${CHECK[@]}" doc-block "$file" "$marker")" || die "no block <!-- test: $marker --> in $file"
    block="${block//localhost:8080/127.0.0.1:$port}"
    block="${block//localhost:9090/127.0.0.1:$PROM_PORT}"
    block="${block//"<bucket>"/ct-bucket}"
    block="${block//"<yyyy-mm-dd>"/$DOC_DATE}"
    if grep -qE '<[A-Za-z][^<>]*>' <<<"$block"; then
        die "$file ($marker) has a placeholder this test does not fill: $(grep -oE '<[A-Za-z][^<>]*>' <<<"$block" | head -1)"
    fi
    script="$WORK/doc-$marker.sh"
    {
        echo "DOC_COMPOSE=($(printf '%q ' "$@"))"
        echo "DOC_PROJECT=$(printf %q "$project") DOC_S3=$(printf %q "$WORK/s3")"
        declare -f docker aws
        printf '%s\n' "$block"
    } >"$script"
    mkdir -p "$dir" "$WORK/s3"
    say "  $file, block $marker:"
    sed 's/^/      | /' <<<"$block" >&2
    (cd "$dir" && BAZAAR_HTTP_PUBLISH="127.0.0.1:$port" timeout 300 bash -euo pipefail "$script") >"$out" 2>&1 \
        || { grep -v 'systemd connection' "$out" | tail -30 >&2; return 1; }
}
say "podman-compose up (project $PROJECT, front end on $URL)"
compose_up=1
# podman-compose turns depends_on into `podman --requires`, and podman then
# never restarts a service whose required container is not running: the
# one-shot `keys` service has exited by design. So, as docs/deploy.md says for
# podman: the keys first (it exits 0), then the services without --requires.
# (docker compose needs none of this: `docker compose up` is one step.)
timeout 300 "${COMPOSE[@]}" up -d --no-build keys >"$WORK/up.log" 2>&1 \
    || { tail -30 "$WORK/up.log" >&2; die "podman-compose up keys failed"; }
for _ in $(seq 60); do
    [[ "$(podman inspect -f '{{.State.Status}}' "$(ctr keys)" 2>/dev/null)" == exited ]] && break
    sleep 1
done
wait "$prom_pid" || { tail -30 "$WORK/prom.log" >&2; die "no Prometheus image (pull or build of deploy/prometheus-image failed)"; }
grep -h 'failed (attempt' "$WORK/prom.log" >&2 || true
prom_pid=
export BAZAAR_PROMETHEUS_IMAGE="$(cat "$WORK/prom.image")"
say "  Prometheus image: $BAZAAR_PROMETHEUS_IMAGE ($PROM_URL)"
timeout 300 "${COMPOSE[@]}" up -d --no-build --no-deps catalog order1 order2 order3 frontend prometheus >>"$WORK/up.log" 2>&1 \
    || { tail -30 "$WORK/up.log" >&2; die "podman-compose up failed"; }
for s in catalog order1 order2 order3 frontend prometheus; do [[ -n "$(ctr "$s")" ]] || die "no container for $s"; done

keys_ctr="$(ctr keys)"
[[ -n "$keys_ctr" ]] || die "no container for the keys service"
[[ "$(podman inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$keys_ctr")" == "exited 0" ]] \
    || { podman logs "$keys_ctr" >&2; die "the keys service did not complete successfully"; }
keys_vol="$(podman inspect -f '{{range .Mounts}}{{if eq .Destination "/keys"}}{{.Source}}{{end}}{{end}}' "$keys_ctr")"
for role in catalog order1 order2 order3 frontend client; do
    [[ "$(stat -c %a "$keys_vol/$role.key_secret" 2>/dev/null)" == 600 ]] \
        || die "$role.key_secret is missing from the keys volume or not 0600"
done
say "  keys made by the keys service: 6 pairs, secrets 0600"
# Each service sees the six public keys and its own secret key, nothing else.
for s in catalog order1 order2 order3 frontend; do
    want="$(for r in catalog order1 order2 order3 frontend client; do echo "$r.key 444 10001"; done
            echo "$s.key_secret 400 10001")"
    got="$(podman exec "$(ctr "$s")" sh -c 'cd /keys && stat -c "%n %a %u" *' | sort)"
    [[ "$got" == "$(sort <<<"$want")" ]] \
        || die "$s's /keys should hold the six public keys and its own secret (0400) alone; it holds: $(tr '\n' ' ' <<<"$got")"
done
say "  each service's /keys: the six public keys and its own secret key alone"

say "wait for /health ok"
t_up=$SECONDS
"${CHECK[@]}" wait-health "$URL" --want ok --timeout 120 >/dev/null || die "/health never said ok"
say "  /health ok"
if ((SECONDS - t_up > 15)); then  # slow start: show why (it passed, but should not take this long)
    for s in catalog order1 order2 order3 frontend; do
        echo "----- $s (slow start: last 12 lines)" >&2
        podman logs --tail 12 "$(ctr "$s")" 2>&1 | sed 's/^/    /' >&2
    done
fi

# Without systemd podman does not schedule healthchecks; run each service's
# compose healthcheck once by hand to prove the commands are right.
say "compose healthchecks of the five services"
for s in catalog order1 order2 order3 frontend; do
    # Docker calls a container unhealthy after `retries: 3` failures 30 s
    # apart; allow the same kind of window here (6 tries, 5 s apart).
    ok=
    for _ in 1 2 3 4 5 6; do
        podman healthcheck run "$(ctr "$s")" >/dev/null 2>&1 && { ok=1; break; }
        say "  healthcheck of $s failed; again in 5 s"
        sleep 5
    done
    [[ -n "$ok" ]] || die "the healthcheck of $s fails 6 times in 30 s on a stack whose /health is ok"
done

say "bazaar load (verified)"
"$VENV/bin/bazaar" load --url "$URL" --sessions 8 --requests 100 -p 0.5 --seed 1 >"$WORK/load1.log" 2>&1 \
    || { cat "$WORK/load1.log" >&2; die "load run failed verification"; }
grep -E '^(lookup|order|get_order)|verif' "$WORK/load1.log" | sed 's/^/    /' >&2 || true

say "Prometheus (monitoring profile): five targets up, one leader, orders counted, alert rules loaded"
"${CHECK[@]}" prometheus "$PROM_URL" --alerts deploy/prometheus/alerts.yml --timeout 90 >"$WORK/prom1.json" \
    || { podman logs --tail 20 "$(ctr prometheus)" >&2; die "Prometheus does not see the stack as deploy/prometheus/prometheus.yml says"; }
elections0="$("$VENV/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["elections"])' "$WORK/prom1.json")"
say "  $(cut -c1-300 "$WORK/prom1.json")"

say "an intruder on the compose network without the keys: no answer, nothing changed"
net="$(podman inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$(ctr catalog)" | awk '{print $1}')"
[[ -n "$net" ]] || die "cannot find the stack's network"
"${CHECK[@]}" snapshot "$URL" >"$WORK/snap-before.json" || die "snapshot failed"
podman run --rm --network "$net" --volume "$ROOT/scripts/container_attack.py:/attack.py:ro" \
    --entrypoint python3 "$IMAGE" /attack.py --pub catalog:5556 \
    catalog:5555 order1:5561 order2:5562 order3:5563 >"$WORK/attack.json" 2>&1 \
    || { cat "$WORK/attack.json" >&2; die "an internal port answered a container without the keys"; }
sed 's/^/    /' "$WORK/attack.json" >&2
"${CHECK[@]}" snapshot "$URL" >"$WORK/snap-after.json" || die "snapshot failed"
# The market must be exactly as it was. Leader and epoch are only reported: on
# a loaded host the front end may re-elect for reasons of its own meanwhile.
stocks() { "$VENV/bin/python" -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["stocks"], sort_keys=True))' "$1"; }
[[ "$(stocks "$WORK/snap-before.json")" == "$(stocks "$WORK/snap-after.json")" ]] \
    || { diff "$WORK/snap-before.json" "$WORK/snap-after.json" >&2; die "the intruder changed the market"; }
cmp -s "$WORK/snap-before.json" "$WORK/snap-after.json" \
    || say "  note: leader/epoch moved meanwhile: $(tr -d '\n' <"$WORK/snap-before.json" | grep -o '"epoch": [0-9]*') -> $(grep -o '"epoch": [0-9]*' "$WORK/snap-after.json")"
"${CHECK[@]}" place "$URL" 3 "$WORK/after-intruder.json" >&2 || die "orders do not flow after the intruder"

say "footprint after the mixed load (RSS and PSS of each container's processes)"
for s in catalog order1 order2 order3 frontend; do
    pid="$(podman inspect -f '{{.State.Pid}}' "$(ctr "$s")")"
    rss=0 pss=0
    for p in $pid $(pgrep -P "$pid" 2>/dev/null); do
        rss=$((rss + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
        pss=$((pss + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)))
    done
    echo "$s $rss $pss" >>"$WORK/footprint.txt"
done
awk '{printf "    %-9s RSS %6.1f MB  PSS %6.1f MB\n", $1, $2/1024, $3/1024; r += $2; p += $3}
     END {printf "    %-9s RSS %6.1f MB  PSS %6.1f MB\n", "total", r/1024, p/1024}' "$WORK/footprint.txt" >&2
[[ -n "${BAZAAR_FOOTPRINT_OUT:-}" ]] && cp "$WORK/footprint.txt" "$BAZAAR_FOOTPRINT_OUT"

say "orders acknowledged before the failover"
"${CHECK[@]}" place "$URL" 20 "$WORK/before.json" >&2 || die "could not place orders"

leader="$("${CHECK[@]}" leader "$URL")"
leader_ctr="$(ctr "order$leader")"
say "kill the leader (order$leader) while a load run is going"
"$VENV/bin/bazaar" load --url "$URL" --sessions 4 --requests 300 -p 0.8 --seed 2 --error-tolerance 0.05 \
    >"$WORK/load2.log" 2>&1 &
load_pid=$!
sleep 1.5
kill -0 "$load_pid" 2>/dev/null || { cat "$WORK/load2.log" >&2; die "the load run ended before the kill: make it longer"; }
kill_at="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
podman kill --signal KILL "$leader_ctr" >/dev/null
kill -0 "$load_pid" 2>/dev/null || die "the load run ended right at the kill: make it longer"
wait "$load_pid" || { cat "$WORK/load2.log" >&2; die "load across the leader kill failed (errors or a verification mismatch)"; }
grep -E '^(lookup|order|get_order)|verif|error' "$WORK/load2.log" | sed 's/^/    /' >&2 || true
# The slowest order across the kill is the client-visible failover stall
# (goal: <= 1 s, as natively; 8.4 s were measured here before the order core's rework).
stall="$(awk '$1 == "order" {print $6}' "$WORK/load2.log")"
say "  failover stall (slowest order across the leader kill): ${stall:-?} ms"
if awk -v s="${stall:-0}" 'BEGIN {exit !(s > 1000)}'; then
    # Over the 1 s goal: what the front end and the replicas said from the kill
    # on (the election, errors), so a slow failover can be read from the log.
    for s in frontend order1 order2 order3; do
        [[ "$(ctr "$s")" == "$leader_ctr" ]] && continue
        echo "----- $s since the kill (slow failover)" >&2
        podman logs --since "$kill_at" "$(ctr "$s")" 2>&1 | grep -v ' INFO .*GET /' | head -40 | sed 's/^/    /' >&2 || true
    done
fi
"${CHECK[@]}" wait-health "$URL" --want orders --timeout 60 >/dev/null || die "no orders taken after the leader died"
new_leader="$("${CHECK[@]}" leader "$URL")"
say "  new leader: order$new_leader (was order$leader)"
[[ "$new_leader" != "$leader" ]] || [[ "$(podman inspect -f '{{.State.Running}}' "$leader_ctr")" == true ]] \
    || die "the dead replica is still named leader"
"${CHECK[@]}" verify "$URL" "$WORK/before.json" >&2 || die "acknowledged orders lost after the leader died"
"${CHECK[@]}" place "$URL" 20 "$WORK/after.json" >&2 || die "orders do not flow after the leader died"

say "a crash (SIGKILL from the host) of the catalog: restart policy brings it back"
cat_ctr="$(ctr catalog)"
restarts0="$(podman inspect -f '{{.RestartCount}}' "$cat_ctr")"
kill -KILL "$(podman inspect -f '{{.State.Pid}}' "$cat_ctr")"
for _ in $(seq 60); do
    [[ "$(podman inspect -f '{{.RestartCount}} {{.State.Running}}' "$cat_ctr")" == "$((restarts0 + 1)) true" ]] && break
    sleep 0.5
done
[[ "$(podman inspect -f '{{.State.Running}}' "$cat_ctr")" == true ]] || die "restart: unless-stopped did not restart the catalog"
"${CHECK[@]}" place "$URL" 5 "$WORK/after-catalog.json" >&2 || die "orders do not flow after the catalog restarted"

say "bring order$leader back; wait until the three replicas agree"
[[ "$(podman inspect -f '{{.State.Running}}' "$leader_ctr")" == true ]] || podman start "$leader_ctr" >/dev/null
"${CHECK[@]}" wait-synced "$URL" --timeout 90 >&2 || die "replicas did not catch up"
for f in before after after-catalog; do
    "${CHECK[@]}" verify "$URL" "$WORK/$f.json" >/dev/null || die "acknowledged orders ($f) lost after recovery"
done

say "Prometheus after the failover: five targets up again, one leader, more elections than $elections0"
"${CHECK[@]}" prometheus "$PROM_URL" --alerts deploy/prometheus/alerts.yml --elections-above "$elections0" \
    --timeout 90 >"$WORK/prom2.json" || die "Prometheus does not see the stack recovered"
say "  leaders $("$VENV/bin/python" -c 'import json,sys; v=json.load(open(sys.argv[1])); print(v["leaders"], "elections", v["elections"], "orders", v["orders"])' "$WORK/prom2.json")"

say "order logs identical across the three replicas (bazaar export orders in each container)"
logs=()
for i in 1 2 3; do
    podman exec "$(ctr "order$i")" bazaar export orders >"$WORK/orders-$i.csv" \
        || die "bazaar export orders failed in order$i"
    [[ -s "$WORK/orders-$i.csv" ]] || die "order$i exported an empty log"
    logs+=("$WORK/orders-$i.csv")
done
"${CHECK[@]}" same-files "${logs[@]}" >&2 || die "order logs differ between replicas"

say "the docs' compose commands on the running stack: ps, logs, /health, Prometheus, bazaar call"
HOST_A="$WORK/host-a"
doc_run docs/deploy.md compose-ops "$HOST_A" "$PROJECT" "$PORT" "$WORK/doc-ops.out" "${COMPOSE[@]}" \
    || die "docs/deploy.md's compose-ops commands fail"
for s in catalog order1 order2 order3 frontend; do
    grep -q "${PROJECT}_${s}_1" "$WORK/doc-ops.out" || { cat "$WORK/doc-ops.out" >&2; die "docker compose ps does not list $s"; }
done
grep -qx ok "$WORK/doc-ops.out" || { cat "$WORK/doc-ops.out" >&2; die "the documented /health line did not print ok"; }
doc_run docs/deploy.md compose-monitoring "$HOST_A" "$PROJECT" "$PORT" "$WORK/doc-prom.out" "${COMPOSE[@]}" \
    || die "docs/deploy.md's Prometheus commands fail"
[[ "$(grep -c '"health": "up"' "$WORK/doc-prom.out")" == 5 ]] && grep -q '"value":\[[0-9.]*,"1"\]' "$WORK/doc-prom.out" \
    && grep -q '"name": "BazaarNoOrderLeader"' "$WORK/doc-prom.out" \
    || { cat "$WORK/doc-prom.out" >&2; die "the documented Prometheus checks do not show five targets up, one leader, the alerts"; }
doc_run docs/protocol.md compose-call "$HOST_A" "$PROJECT" "$PORT" "$WORK/doc-call.out" "${COMPOSE[@]}" \
    || die "docs/protocol.md's bazaar call through compose fails"
grep -q '"name": "GameStart"' "$WORK/doc-call.out" && grep -q '"epoch"' "$WORK/doc-call.out" \
    || { cat "$WORK/doc-call.out" >&2; die "bazaar call through the client service: no lookup or status in the output"; }
grep -E '"(name|role|epoch)"' "$WORK/doc-call.out" | sed 's/^/    /' >&2

say "the documented compose backup (docs/deploy.md) while clients trade"
"${CHECK[@]}" place "$URL" 20 "$WORK/pre-backup.json" >&2 || die "could not place orders before the backup"
(   # traders: verified load runs back to back until told to stop
    runs=0
    while [[ ! -e "$WORK/stop-trading" ]]; do
        "$VENV/bin/bazaar" load --url "$URL" --sessions 2 --requests 50 -p 0.8 >>"$WORK/load3.log" 2>&1 || exit 1
        runs=$((runs + 1))
        echo "$runs" >"$WORK/trading-runs"
    done
) &
trade_pid=$!
doc_run docs/deploy.md compose-backup "$HOST_A" "$PROJECT" "$PORT" "$WORK/doc-backup.out" "${COMPOSE[@]}" \
    || die "docs/deploy.md's compose backup fails"
touch "$WORK/stop-trading"
wait "$trade_pid" || { tail -20 "$WORK/load3.log" >&2; die "trading during the backup failed (errors or a verification mismatch)"; }
trade_pid=
grep -E '\.db: ' "$WORK/doc-backup.out" | sed 's/^/    /' >&2
say "  $(cat "$WORK/trading-runs" 2>/dev/null || echo 0) verified load runs during the backup"
grep -qE 'orders-1\.db: [0-9]+ records' "$WORK/doc-backup.out" && grep -qE 'catalog\.db: [0-9]+ trades' "$WORK/doc-backup.out" \
    || die "the backup did not report the order logs and the catalog"
archives=("$WORK"/s3/ct-bucket/bazaar/bazaar-*.tgz)
[[ ${#archives[@]} == 1 && -s "${archives[0]}" ]] || die "the backup put no single archive in the bucket: ${archives[*]}"
DOC_DATE="$(basename "${archives[0]}" .tgz)" && DOC_DATE="${DOC_DATE#bazaar-}"
say "  s3://ct-bucket/bazaar/$(basename "${archives[0]}"): $(tar -tzf "${archives[0]}" | grep -c '\.db$') databases"

say "the documented compose key rotation (docs/security.md): order2's pair, then restart every service"
keys_before="$WORK/keys-before"
mkdir -p "$keys_before"
for s in catalog order1 order2 order3 frontend; do
    podman exec "$(ctr "$s")" sh -c "cat /keys/$s.key_secret" >"$keys_before/$s.key_secret"
done
cp "$keys_vol"/*.key "$keys_before/"
doc_run docs/security.md compose-rotate "$HOST_A" "$PROJECT" "$PORT" "$WORK/doc-rotate.out" "${COMPOSE[@]}" \
    || die "docs/security.md's compose rotation fails"
timeout 120 "${COMPOSE[@]}" restart catalog order1 order2 order3 frontend >"$WORK/restart.log" 2>&1 \
    || { tail -20 "$WORK/restart.log" >&2; die "docker compose restart (the rotation's step 3) failed"; }
"${CHECK[@]}" wait-health "$URL" --want ok --timeout 120 >/dev/null || die "/health not ok after the rotation"
cmp -s "$keys_before/order2.key" "$keys_vol/order2.key" && die "order2's public key did not change"
for s in catalog order1 order3 frontend; do
    cmp -s "$keys_before/$s.key" "$keys_vol/$s.key" || die "$s's public key changed in a rotation of order2"
    podman exec "$(ctr "$s")" sh -c "cat /keys/$s.key_secret" | cmp -s - "$keys_before/$s.key_secret" \
        || die "$s's secret key changed in a rotation of order2"
    podman exec "$(ctr "$s")" cat /keys/order2.key | cmp -s - "$keys_vol/order2.key" \
        || die "$s was not dealt order2's new public key"
done
podman exec "$(ctr order2)" sh -c 'cat /keys/order2.key_secret' | cmp -s - "$keys_before/order2.key_secret" \
    && die "order2 still holds its old secret key"
for f in before after after-catalog pre-backup; do
    "${CHECK[@]}" verify "$URL" "$WORK/$f.json" >/dev/null || die "acknowledged orders ($f) lost in the rotation"
done
"${CHECK[@]}" place "$URL" 5 "$WORK/after-rotation.json" >&2 || die "orders do not flow after the rotation"

say "SIGTERM stops every service quickly"
for s in frontend order1 order2 order3 catalog; do
    quick_stop "$(ctr "$s")" "$s"
done

say "the documented compose restore (docs/deploy.md) on a new host: project $NEW_PROJECT, fresh volumes"
NEW_COMPOSE=("$PODMAN_COMPOSE" --project-name "$NEW_PROJECT" --file "$ROOT/docker-compose.yml")
podman volume ls --format '{{.Name}}' | grep -q "^${NEW_PROJECT}_" && die "the new project's volumes exist before the restore"
doc_run docs/deploy.md compose-restore "$WORK/host-b" "$NEW_PROJECT" "$NEW_PORT" "$WORK/doc-restore.out" "${NEW_COMPOSE[@]}" \
    || die "docs/deploy.md's compose restore fails"
"${CHECK[@]}" wait-health "$NEW_URL" --want ok --timeout 120 >/dev/null || die "the restored stack's /health never said ok"
new_keys="$(podman volume inspect -f '{{.Mountpoint}}' "${NEW_PROJECT}_keys")"
cmp -s "$keys_vol/catalog.key" "$new_keys/catalog.key" && die "the new host reused the old keys (the keys are not in the backup)"
say "  restored stack up with new keys; waiting for the three logs to agree and the market to match them"
acked=("$WORK"/before.json "$WORK"/after.json "$WORK"/after-catalog.json "$WORK"/after-intruder.json "$WORK"/pre-backup.json)
# (after-rotation.json: placed after the backup, so not in it)
restored=
for _ in $(seq 60); do
    ok=1
    for i in 1 2 3; do
        podman exec "$(ctr "order$i" "$NEW_PROJECT")" bazaar export orders >"$WORK/restored-$i.csv" 2>/dev/null || ok=
    done
    if [[ -n "$ok" ]] && "${CHECK[@]}" same-files "$WORK"/restored-{1,2,3}.csv >/dev/null \
        && "${CHECK[@]}" restored "$NEW_URL" "$WORK/restored-1.csv" --acked "${acked[@]}" >"$WORK/restored.json" 2>"$WORK/restored.err"; then
        restored=1
        break
    fi
    sleep 1
done
[[ -n "$restored" ]] || { cat "$WORK/restored.err" >&2; die "the restore lost acknowledged orders or the market does not match the log"; }
say "  $(cat "$WORK/restored.json")"
"${CHECK[@]}" place "$NEW_URL" 5 "$WORK/after-restore.json" >"$WORK/after-restore.out" || die "the restored stack takes no orders"
"$VENV/bin/python" -c '
import json, sys
restored = json.load(open(sys.argv[1]))["restored_orders"]
first = json.load(open(sys.argv[2]))["first"]
sys.exit(0 if first >= restored else f"new order number {first} reuses a restored one (0..{restored - 1})")
' "$WORK/restored.json" "$WORK/after-restore.out" || die "the restored stack hands out numbers it already has"
say "  trading on from there: $(cat "$WORK/after-restore.out")"
