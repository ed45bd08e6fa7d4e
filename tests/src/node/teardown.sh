#!/bin/sh
# The teardown of one imagemap-e2e node (tests/src/node/): removes everything the node leaves on
# the machine outside its processes, deepest first. Idempotent; exits non-zero, saying what is
# left, if something stays. With --check it removes nothing and only lists what is left of the
# node, one line per item: the one list of what a node leaves behind (`Footprint::leftovers`).
#
# Parameters, in the environment (the copy in the node's folder, which the watchdog runs when the
# test process is gone, sets them in its first lines):
#   IMAGEMAP_NODE_DIR          the node's folder (containerd's and the kubelet's roots, sockets)
#   IMAGEMAP_NODE_BRIDGE       its bridge
#   IMAGEMAP_NODE_CGROUP       its cgroup, under every hierarchy's root (the kubelet's cgroupRoot)
#   IMAGEMAP_NODE_CNI_NETWORK  its CNI network (libcni caches results as NAME-* outside the folder)
#   IMAGEMAP_NODE_KEEP         1 to keep the folder's files (IMAGEMAP_E2E_KEEP); default 0
dir=${IMAGEMAP_NODE_DIR:?}
bridge=${IMAGEMAP_NODE_BRIDGE:?}
cgroup=${IMAGEMAP_NODE_CGROUP:?}
cni_network=${IMAGEMAP_NODE_CNI_NETWORK:?}
keep=${IMAGEMAP_NODE_KEEP:-0}
cni_cache=/var/lib/cni/results
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Processes whose command line names the folder (kubelet, containerd, its shims, runc): "PID
# COMMAND LINE". Not this script (its subshells share its command line).
folder_processes() {
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in *teardown.sh*) continue ;; *"$dir/"*) echo "${p#/proc/} ${cmd% }" ;; esac
  done
}
cgroup_mounts() {
  awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) == "cgroup" || $(i+1) == "cgroup2") print $5; break } }' /proc/self/mountinfo
}
# The pids in cgroup folder $1 and its descendants.
cgroup_pids() {
  find "$1" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -un
}
# Processes of the node: those naming the folder, and those in the node's cgroups (containers).
node_pids() {
  folder_processes | cut -d ' ' -f 1
  for m in $(cgroup_mounts); do
    if [ -d "$m/$cgroup" ]; then cgroup_pids "$m/$cgroup"; fi
  done
}
mounts() {
  awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# What is left of the node, one line per item: processes, cgroups (every hierarchy) and the
# processes in them, mounts under the folder, the folder (unless kept), the bridge and any
# interface still on it, the kubelet's log links into the folder, libcni's cached results.
leftovers() {
  folder_processes | while read -r pid cmd; do echo "process $pid: $cmd"; done
  for m in $(cgroup_mounts); do
    [ -d "$m/$cgroup" ] || continue
    echo "cgroup $m/$cgroup"
    for pid in $(cgroup_pids "$m/$cgroup"); do echo "process $pid in $m/$cgroup"; done
  done
  for m in $(mounts); do echo "mount $m"; done
  if [ "$keep" = 0 ] && [ -e "$dir" ]; then echo "folder $dir"; fi
  if [ -e "/sys/class/net/$bridge" ]; then echo "bridge $bridge"; fi
  for l in /sys/class/net/"$bridge"/brif/*; do
    if [ -e "$l" ]; then echo "interface ${l##*/} (on $bridge)"; fi
  done
  for l in /var/log/containers/*; do
    target=$(readlink "$l" 2>/dev/null) || continue
    case "$target" in "$dir"/*) echo "log link $l -> $target" ;; esac
  done
  for f in "$cni_cache/$cni_network"-*; do
    if [ -e "$f" ]; then echo "CNI cache $f"; fi
  done
}

# Prints what is left; fails when something is.
check() {
  left=$(leftovers)
  [ -z "$left" ] && return 0
  echo "$left"
  return 1
}

if [ "${1:-}" = --check ]; then
  check
  exit
fi

# 1. Kill (the kubelet and containerd were stopped already, unless this runs after a crash).
i=0
while [ $i -lt 100 ]; do
  pids=$(node_pids | sort -u)
  [ -z "$pids" ] && break
  # shellcheck disable=SC2086 # one argument per pid
  kill -KILL $pids 2>/dev/null
  sleep 0.1
  i=$((i + 1))
done

# 2. Unmount everything under the folder (rootfs overlays, shm, secrets' tmpfs, network
#    namespace bind mounts, the kubelet's rshared bind of its root), deepest first.
i=0
while [ $i -lt 20 ]; do
  ms=$(mounts)
  [ -z "$ms" ] && break
  for m in $ms; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  i=$((i + 1))
done

# 3. The bridge, and any veth still on it (they go with their network namespaces otherwise).
for l in /sys/class/net/"$bridge"/brif/*; do
  if [ -e "$l" ]; then ip link del "${l##*/}" 2>/dev/null; fi
done
if [ -e "/sys/class/net/$bridge" ]; then ip link del "$bridge" 2>/dev/null; fi

# 4. cgroups, in every hierarchy, leaves first (a v1 memory cgroup may need a moment after its
#    last process).
i=0
while [ $i -lt 100 ]; do
  left=0
  for m in $(cgroup_mounts); do
    if [ -d "$m/$cgroup" ]; then
      find "$m/$cgroup" -depth -type d -exec rmdir {} \; 2>/dev/null
      [ -d "$m/$cgroup" ] && left=1
    fi
  done
  [ $left -eq 0 ] && break
  pids=$(node_pids | sort -u)
  # shellcheck disable=SC2086 # one argument per pid
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  sleep 0.1
  i=$((i + 1))
done

# 5. What the kubelet changed: its sysctls; what libcni cached outside the folder.
if [ -f "$dir/sysctl.saved" ]; then
  while read -r key value; do echo "$value" > "/proc/sys/$key" 2>/dev/null; done < "$dir/sysctl.saved"
  rm -f "$dir/sysctl.saved"
fi
rm -f "$cni_cache/$cni_network"-* 2>/dev/null

# The kubelet writes two things at fixed paths: symlinks to its Pods' logs in
# /var/log/containers, and the device-plugin socket /var/lib/kubelet/device-plugins/kubelet.sock
# (shared by every kubelet on the machine: removed, with the folders if empty, once no kubelet
# runs).
for l in /var/log/containers/*; do
  case "$(readlink "$l" 2>/dev/null)" in "$dir/"*) rm -f "$l" ;; esac
done
kubelets=0
for c in /proc/[0-9]*/comm; do [ "$(cat "$c" 2>/dev/null)" = kubelet ] && kubelets=1; done
if [ $kubelets = 0 ]; then
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet /var/log/containers 2>/dev/null
fi

# 6. The folder, never crossing into a mount that is still there.
if [ -z "$(mounts)" ] && [ "$keep" = 0 ]; then rm -rf --one-file-system "$dir"; fi

# What is left.
check
