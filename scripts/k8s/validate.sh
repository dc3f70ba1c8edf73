#!/usr/bin/env bash
# Validates every manifest in scripts/k8s against the Kubernetes schema
# (strict: unknown fields are errors), with kubernetes-validate from PyPI.
set -euo pipefail
cd "$(dirname "$0")"
if ! python3 -m kubernetes_validate --version > /dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages kubernetes-validate
fi
manifests=()
for f in *.yaml; do
  [ "$f" = kustomization.yaml ] || manifests+=("$f")
done
python3 -m kubernetes_validate --strict --quiet "${manifests[@]}"
echo "k8s manifests valid: ${manifests[*]}"
