#!/bin/bash
# Run a command (inside the cgroup2 VM, as root) as the unprivileged user `scalelab` in a
# delegated cgroup v2 subtree prepared the way systemd prepares one for
# `systemd-run --user --scope -p Delegate=yes`: the user's manager cgroup
# (user.slice/user-1000.slice/user@1000.service) is handed to the user (directory plus
# cgroup.procs, cgroup.subtree_control and cgroup.threads chowned), cpu and memory are enabled
# down to it, and the user's own manager makes app.slice/<unit>.scope, into which the command
# is moved. Usage: as-delegated-user.sh CMD [ARG..]
set -euo pipefail
user=scalelab
uid="$(id -u "$user")"
gid="$(id -g "$user")"
cg=/sys/fs/cgroup
service="$cg/user.slice/user-$uid.slice/user@$uid.service"
scope="$service/app.slice/run-scalelab-$$.scope"

mkdir -p "$service"
for d in "$cg" "$cg/user.slice" "$cg/user.slice/user-$uid.slice"; do
  echo "+cpu +memory" > "$d/cgroup.subtree_control"
done
chown "$uid:$gid" "$service" "$service"/cgroup.{procs,subtree_control,threads}
# What the user's systemd does, as the user: its slice and the scope, controllers enabled.
# shellcheck disable=SC2016  # expanded by the inner bash
setpriv --reuid="$uid" --regid="$gid" --init-groups bash -c '
  set -e
  mkdir -p "$1/app.slice" "$2"
  echo "+cpu +memory" > "$1/cgroup.subtree_control"
  echo "+cpu +memory" > "$1/app.slice/cgroup.subtree_control"' _ "$service" "$scope"
# Moving a process between cgroups needs write access to their common ancestor: root (the
# system manager, for systemd) moves us into the scope, then we drop to the user.
echo $$ > "$scope/cgroup.procs"
home="$(getent passwd "$user" | cut -d: -f6)"
export HOME="$home" USER="$user" LOGNAME="$user"
exec setpriv --reuid="$uid" --regid="$gid" --init-groups "$@"
