#!/bin/sh
# The kind node image's default CNI (kind's kindnetd is not published as a Go module): on each node, the CNI config
# for the node's pod range (ptp + host-local, as kindnetd writes it) and a route to every other node's pod range via
# that node's address. Nodes share one Docker network, so the routes are all the cross-node networking needed.
set -eu
SA=/var/run/secrets/kubernetes.io/serviceaccount
CONF=/etc/cni/net.d/10-kindnet.conflist
# kind sets CONTROL_PLANE_ENDPOINT so that this runs before kube-proxy serves the kubernetes Service.
SERVER=${CONTROL_PLANE_ENDPOINT:-$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT}

nodes() {
  kubectl --server "https://$SERVER" --certificate-authority "$SA/ca.crt" --token "$(cat "$SA/token")" get nodes \
    -o jsonpath='{range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}'
}

write_conf() {
  cat >"$CONF.tmp" <<JSON
{
  "cniVersion": "0.3.1",
  "name": "kindnet",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "ipam": {"type": "host-local", "dataDir": "/run/cni-ipam-state", "routes": [{"dst": "0.0.0.0/0"}],
               "ranges": [[{"subnet": "$1"}]]},
      "mtu": 1500
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  if cmp -s "$CONF.tmp" "$CONF"; then rm -f "$CONF.tmp"; else mv "$CONF.tmp" "$CONF"; echo "pod range $1: $CONF written"; fi
}

while :; do
  if list=$(nodes); then
    echo "$list" | while read -r name cidr ip; do
      [ -n "$cidr" ] && [ -n "$ip" ] || continue
      if [ "$name" = "$NODE_NAME" ]; then
        write_conf "$cidr"
      elif [ "$(ip route show "$cidr")" != "$cidr via $ip dev eth0 " ] && [ "$(ip route show "$cidr")" != "$cidr via $ip dev eth0" ]; then
        ip route replace "$cidr" via "$ip" && echo "route to $name's pod range $cidr via $ip"
      fi
    done
  fi
  sleep 10
done
