#!/usr/bin/env bash
# Checks of the deployment files, run by `make lint` (and so by CI); offline.
#
#   yamllint --strict        every YAML file of the repository (.yamllint.yaml)
#   kubernetes-validate      every manifest under deploy/kubernetes (tools/ too), strict
#     --strict               (unknown fields are errors), against the pinned
#                            Kubernetes version below and the newest one it
#                            ships; and the kustomize output when kubectl is
#                            installed
#   docker stack config      deploy/swarm/stack.yml against the compose
#                            schema, when a docker CLI is installed (it needs
#                            no daemon)
#
# The structure checks (which pod mounts which key, the network flows of SPEC
# section 2, security contexts) are tests: tests/unit/test_deploy_manifests.py.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
# The oldest Kubernetes we support (docs/deploy.md 3.1; the schemas ship
# inside kubernetes-validate, so no download).
K8S_VERSION=${K8S_VERSION:-1.33.0}

echo "check-deploy: yamllint"
"$BIN/yamllint" --strict .

manifests=()
for f in deploy/kubernetes/*.yaml deploy/kubernetes/*/*.yaml; do
    [[ $(basename "$f") == kustomization.yaml ]] || manifests+=("$f")
done
echo "check-deploy: kubernetes-validate --strict against Kubernetes $K8S_VERSION"
"$BIN/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${manifests[@]}"
# And the newest version it ships: an API removed since fails here first.
echo "check-deploy: kubernetes-validate --strict against the newest known ($("$BIN/kubernetes-validate" --version 2>&1 | tail -1))"
"$BIN/kubernetes-validate" --strict --quiet "${manifests[@]}"

if command -v kubectl >/dev/null 2>&1; then
    rendered=$(mktemp --suffix=.yaml)
    trap 'rm -f "$rendered"' EXIT
    kubectl kustomize deploy/kubernetes >"$rendered"
    "$BIN/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$rendered"
    echo "check-deploy: kubectl kustomize output valid ($(grep -c '^kind:' "$rendered") objects)"
else
    echo "check-deploy: kubectl not installed, kustomize output not rendered (manifests checked one by one)"
fi

if command -v docker >/dev/null 2>&1; then
    echo "check-deploy: docker stack config -c deploy/swarm/stack.yml"
    BAZAAR_IMAGE=registry.invalid/stock-bazaar:check \
        docker stack config -c deploy/swarm/stack.yml >/dev/null
else
    echo "check-deploy: SKIP docker stack config: no docker CLI here, deploy/swarm/stack.yml not checked against the compose schema"
fi
echo "check-deploy: OK"
