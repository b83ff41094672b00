#!/bin/bash
# The agent check, inside a booted guest: a host with a default route, a
# pod in a network namespace behind a veth answering TCP with a token, and
# bridge-agent (proxy.mode auto) started with no reachable API server but
# a saved snapshot naming a Service for that pod. The connection to the
# ClusterIP must fail before the agent runs and reach the pod after.
# Beside it: agent.env (CLUSTER_IP, PORT, POD_IP, POD_PORT, TOKEN), etc/
# (config.yaml, token) and state/snapshot.json.
# Prints, for the host test:
#   AGENT-BEFORE <ok|failed>     connection before the agent ran
#   AGENT-REPLY <text>           what the ClusterIP answered (empty: nothing)
#   === AGENT-STATUS / === AGENT-STATUS-END   bridge-agent status -o json
#   === AGENT-LOG / === AGENT-LOG-END         the agent's log
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck disable=SC1091
. "$here/agent.env"
export PATH="$here:$PATH"

# The agent's files: configuration, token, saved snapshot.
mkdir -p /etc/bridge-agent /var/lib/bridge-agent
cp "$here/etc/config.yaml" "$here/etc/token" /etc/bridge-agent/
cp "$here/state/snapshot.json" /var/lib/bridge-agent/
chmod 600 /var/lib/bridge-agent/snapshot.json

connect() { # prints what the ClusterIP answers, if anything
  socat -T 3 STDIO "TCP:$CLUSTER_IP:$PORT,connect-timeout=3" </dev/null 2>/dev/null
}

# The host: an uplink with a default route, as on any server (a dummy
# device: nothing leaves the guest).
ip link add uplink type dummy
ip addr add 192.0.2.10/24 dev uplink
ip link set uplink up
ip route add default via 192.0.2.1 dev uplink

# The pod.
ip netns add pod
ip link add vpod type veth peer name eth0 netns pod
ip addr add "${POD_IP%.*}.1/24" dev vpod
ip link set vpod up
ip -n pod link set lo up
ip -n pod addr add "$POD_IP/24" dev eth0
ip -n pod link set eth0 up
ip -n pod route add default via "${POD_IP%.*}.1"
ip netns exec pod socat "TCP-LISTEN:$POD_PORT,reuseaddr,fork" SYSTEM:"echo $TOKEN" &
pod_pid=$!
# The pod answers directly once socat listens (slow to start in a loaded
# guest).
direct=
start=$SECONDS
while [ $((SECONDS - start)) -lt 60 ]; do
  direct=$(socat -T 3 STDIO "TCP:$POD_IP:$POD_PORT,connect-timeout=3" </dev/null 2>&1)
  [ "$direct" = "$TOKEN" ] && break
  sleep 0.5
done
echo "AGENT-POD-DIRECT $direct"

if [ -n "$(connect)" ]; then echo "AGENT-BEFORE ok"; else echo "AGENT-BEFORE failed"; fi

bridge-agent run --config /etc/bridge-agent/config.yaml >/tmp/agent.log 2>&1 &
agent_pid=$!
reply=
start=$SECONDS
while [ $((SECONDS - start)) -lt "${WAIT:-180}" ]; do
  reply=$(connect)
  [ -n "$reply" ] && break
  kill -0 "$agent_pid" 2>/dev/null || break
  sleep 1
done
echo "AGENT-REPLY $reply"
echo "AGENT-WAITED $((SECONDS - start))"
echo "=== AGENT-STATUS"
bridge-agent status -o json 2>&1
echo "=== AGENT-STATUS-END"
echo "=== AGENT-RULES"
nft list ruleset 2>&1 | head -n 60
iptables-save -t nat 2>&1 | head -n 40
echo "=== AGENT-RULES-END"
kill "$agent_pid" 2>/dev/null
for _ in $(seq 100); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.1; done
kill -9 "$agent_pid" "$pod_pid" 2>/dev/null
echo "=== AGENT-LOG"
cat /tmp/agent.log
echo "=== AGENT-LOG-END"
