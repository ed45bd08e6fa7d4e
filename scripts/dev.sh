#!/usr/bin/env bash
# `make dev` / `make dev-down`: a local control plane (etcd, kube-apiserver,
# kube-controller-manager) with the CRD installed and the webhook running and registered, all in
# the background, state in .dev/. No container runtime, no cluster needed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
state=$root/.dev
log() { printf 'dev: %s\n' "$*" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

down() {
  if [ -d "$state/pids" ]; then
    for f in "$state"/pids/*; do
      [ -f "$f" ] || continue
      pid=$(cat "$f")
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 1
    for f in "$state"/pids/*; do
      [ -f "$f" ] || continue
      pid=$(cat "$f")
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    done
  fi
  rm -rf "$state"
  log "stopped and removed $state"
}

# Starts "$@" detached in its own session; records its pid under NAME.
start() { # NAME CMD...
  local name=$1; shift
  setsid "$@" >"$state/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$state/pids/$name"
}

wait_for() { # WHAT CMD...
  local what=$1; shift
  for _ in $(seq 1 240); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "$what did not become ready; logs in $state/logs"; exit 1
}

cert() { # NAME CA SUBJ [SAN] [EKU]
  local name=$1 ca=$2 subj=$3 san=${4:-} eku=${5:-serverAuth}
  openssl ecparam -name prime256v1 -genkey -noout -out "$state/pki/$name.key" 2>/dev/null
  openssl req -new -key "$state/pki/$name.key" -subj "$subj" -out "$state/pki/$name.csr" 2>/dev/null
  { echo "extendedKeyUsage=$eku"; echo "keyUsage=digitalSignature,keyEncipherment"; [ -n "$san" ] && echo "subjectAltName=$san"; } > "$state/pki/$name.ext"
  openssl x509 -req -in "$state/pki/$name.csr" -CA "$state/pki/$ca.crt" -CAkey "$state/pki/$ca.key" -CAcreateserial \
    -days 30 -extfile "$state/pki/$name.ext" -out "$state/pki/$name.crt" 2>/dev/null
}

ca() { # NAME CN
  openssl ecparam -name prime256v1 -genkey -noout -out "$state/pki/$1.key" 2>/dev/null
  openssl req -x509 -new -key "$state/pki/$1.key" -subj "/CN=$2" -days 30 -out "$state/pki/$1.crt" 2>/dev/null
}

up() {
  if [ -f "$state/pids/kube-apiserver" ] && kill -0 "$(cat "$state/pids/kube-apiserver")" 2>/dev/null; then
    log "already running; \`make dev-down\` first to start over"
    echo "export KUBECONFIG=$state/kubeconfig"
    return 0
  fi
  rm -rf "$state"
  mkdir -p "$state"/{pki,logs,pids,etcd,webhook}
  chmod 700 "$state/pki"
  bin=$(bash tests/controlplane/build.sh | tail -n1)
  target=${CARGO_TARGET_DIR:-$root/target}/debug
  for b in imagemap-webhook kubectl-imagemap imagemap-certs; do
    [ -x "$target/$b" ] || { log "missing $target/$b: run \`cargo build --workspace --bins\`"; exit 1; }
  done

  log "minting certificates"
  ca server-ca imagemap-dev-server-ca
  ca client-ca imagemap-dev-client-ca
  cert apiserver server-ca "/CN=kube-apiserver" "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  cert admin client-ca "/O=system:masters/CN=admin" "" clientAuth
  openssl ecparam -name prime256v1 -genkey -noout -out "$state/pki/sa.key" 2>/dev/null
  openssl ec -in "$state/pki/sa.key" -pubout -out "$state/pki/sa.pub" 2>/dev/null

  api_port=$(free_port); etcd_port=$(free_port); peer_port=$(free_port)
  log "starting etcd on 127.0.0.1:$etcd_port"
  start etcd "$bin/etcd" --name=dev --data-dir="$state/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="dev=http://127.0.0.1:$peer_port" --unsafe-no-fsync=true --log-level=warn
  wait_for etcd curl -sf "http://127.0.0.1:$etcd_port/health"

  log "starting kube-apiserver on https://127.0.0.1:$api_port"
  start kube-apiserver "$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" \
    --secure-port="$api_port" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
    --tls-cert-file="$state/pki/apiserver.crt" --tls-private-key-file="$state/pki/apiserver.key" \
    --client-ca-file="$state/pki/client-ca.crt" --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$state/pki/sa.pub" --service-account-signing-key-file="$state/pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true --profiling=false

  kubeconfig=$state/kubeconfig
  KUBECONFIG=$kubeconfig kubectl config set-cluster dev --server="https://127.0.0.1:$api_port" \
    --certificate-authority="$state/pki/server-ca.crt" --embed-certs=true >/dev/null
  KUBECONFIG=$kubeconfig kubectl config set-credentials admin --client-certificate="$state/pki/admin.crt" \
    --client-key="$state/pki/admin.key" --embed-certs=true >/dev/null
  KUBECONFIG=$kubeconfig kubectl config set-context dev --cluster=dev --user=admin --namespace=default >/dev/null
  KUBECONFIG=$kubeconfig kubectl config use-context dev >/dev/null
  chmod 600 "$kubeconfig"
  export KUBECONFIG=$kubeconfig
  wait_for kube-apiserver kubectl get --raw /readyz

  log "starting kube-controller-manager"
  start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig="$kubeconfig" \
    --controllers=deployment-controller,replicaset-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,namespace-controller,garbage-collector-controller,job-controller \
    --service-account-private-key-file="$state/pki/sa.key" --root-ca-file="$state/pki/server-ca.crt" \
    --use-service-account-credentials=false --leader-elect=false --secure-port=0
  wait_for "default ServiceAccount" kubectl get serviceaccount default -n default

  log "installing the ImageMap CRD"
  kubectl apply --server-side -f charts/imagemap/crds/ >/dev/null
  kubectl wait --for condition=established --timeout=60s crd/imagemaps.tilt.dev >/dev/null

  log "starting the webhook"
  hook_port=$(free_port)
  "$target/imagemap-certs" --out "$state/webhook" --host 127.0.0.1 >/dev/null
  start imagemap-webhook "$target/imagemap-webhook" --listen "127.0.0.1:$hook_port" --kubeconfig "$kubeconfig" \
    --gate-unbuilt --restart-on-rebuild \
    --tls-cert-file "$state/webhook/tls.crt" --tls-private-key-file "$state/webhook/tls.key"
  wait_for imagemap-webhook curl -sf --cacert "$state/webhook/ca.crt" "https://127.0.0.1:$hook_port/readyz"

  log "registering the webhook"
  ca_bundle=$(base64 -w0 < "$state/webhook/ca.crt")
  kubectl apply -f - >/dev/null <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: imagemap-dev
webhooks:
- name: pods.imagemap.tilt.dev
  clientConfig:
    url: https://127.0.0.1:$hook_port/mutate
    caBundle: $ca_bundle
  rules:
  - operations: ["CREATE"]
    apiGroups: [""]
    apiVersions: ["v1"]
    resources: ["pods"]
  failurePolicy: Ignore
  sideEffects: None
  admissionReviewVersions: ["v1"]
  reinvocationPolicy: IfNeeded
  timeoutSeconds: 5
  namespaceSelector:
    matchExpressions:
    - {key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system, kube-public, kube-node-lease]}
    - {key: imagemap.tilt.dev/disabled, operator: DoesNotExist}
  objectSelector:
    matchExpressions:
    - {key: imagemap.tilt.dev/disabled, operator: DoesNotExist}
YAML
  # Wait until the API server really calls the webhook.
  probe=dev-probe-$$
  "$target/kubectl-imagemap" set-image "$probe" "example.invalid/probe:ok" --create --selector "$probe/probe" >/dev/null
  wait_for "webhook registration" bash -c "kubectl run probe --image=$probe/probe --dry-run=server -o jsonpath='{.spec.containers[0].image}' 2>/dev/null | grep -q example.invalid/probe:ok"
  "$target/kubectl-imagemap" delete "$probe" >/dev/null

  cat <<EOF2

imagemap dev cluster is running (state and logs in $state).
export KUBECONFIG=$kubeconfig
export PATH=$target:\$PATH

Try:
  kubectl imagemap create app --selector app
  kubectl imagemap set-image app localhost:5000/app:tilt-1
  kubectl run x --image=app && kubectl get pod x -o jsonpath='{.spec.containers[0].image}{"\n"}'

A Pod created before its build waits at a scheduling gate, then gets the built image:
  kubectl imagemap create web --selector web
  kubectl run y --image=web && kubectl get pod y -o jsonpath='{.spec.schedulingGates}{"\n"}'
  kubectl imagemap set-image web localhost:5000/web:tilt-1
  kubectl get pod y -o jsonpath='{.spec.containers[0].image} {.spec.schedulingGates}{"\n"}'

Stop it with: make dev-down
EOF2
}

# Stops only the dev webhook and its registration (e.g. to install the Helm chart instead).
webhook_down() {
  if [ -f "$state/pids/imagemap-webhook" ]; then
    kill -TERM "$(cat "$state/pids/imagemap-webhook")" 2>/dev/null || true
    rm -f "$state/pids/imagemap-webhook"
  fi
  KUBECONFIG=$state/kubeconfig kubectl delete mutatingwebhookconfiguration imagemap-dev --ignore-not-found >/dev/null
  log "dev webhook stopped and unregistered"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  webhook-down) webhook_down ;;
  *) echo "usage: $0 up|down|webhook-down" >&2; exit 2 ;;
esac
