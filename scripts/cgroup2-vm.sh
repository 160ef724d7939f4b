#!/usr/bin/env bash
# A throw-away cgroup v2 VM (QEMU, software emulation) for the local backend's real tests.
#
# Usage:
#   scripts/cgroup2-vm.sh build            build the VM once (cached; safe to re-run)
#   scripts/cgroup2-vm.sh run CMD [ARG..]  boot, run CMD as root in the checkout, power off
#   scripts/cgroup2-vm.sh test [STAGE..]   the contributors' target: the local backend's tests
#                                          and a one-variant run, as root and delegated
#                                          (stages: root-tests root-run delegated-tests
#                                          delegated-run; default all)
#   scripts/cgroup2-vm.sh clean            delete the cache
#
# The VM boots a Debian kernel with a busybox initramfs; its root is a debootstrap'ed bookworm
# (read-only over 9p, with a tmpfs overlay), cgroup2 is mounted at /sys/fs/cgroup with +cpu
# +memory, a fresh ext4 scratch disk holds /tmp and /var/tmp (swapfiles cannot live on 9p or
# tmpfs), and this checkout is mounted read-write at the same path as on the host. The VM has
# no network beyond its own loopback. CMD's output streams here and its exit status becomes
# ours; the VM is always powered off (QEMU killed if need be), also on Ctrl-C.
#
# Nothing of the host's cgroups, mounts or sysctls is touched. Building needs root (debootstrap
# and chroot) and apt; running needs only qemu-system-x86_64, as any user. Debian packages:
# qemu-system-x86, debootstrap, busybox-static, cpio, kmod, e2fsprogs.
#
# The cache is the invoking user's: `sudo cgroup2-vm.sh build` builds into SUDO_USER's
# ~/.cache (owned by that user, but for the rootfs, whose files stay root's as the guest needs
# them), so that the same user's `cgroup2-vm.sh test` without sudo finds it.
#
# Environment: SCALELAB_VM_CACHE (default ~/.cache/scalelab/cgroup2-vm), SCALELAB_VM_MEM_MIB
# (3072), SCALELAB_VM_CPUS (2), SCALELAB_VM_TIMEOUT_S (3600), SCALELAB_VM_MIRROR (the apt
# mirror of this host), SCALELAB_VM_PYTHON (host python used to download wheels; .venv's).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
checkout="$(cd "$here/.." && pwd)"
helpers="$here/cgroup2-vm"
# Under sudo, the user who typed it owns the cache (root's own ~/.cache would be a second cache
# that the user's runs without sudo never see).
owner=""
if [ "$(id -u)" -eq 0 ] && [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
  owner="$SUDO_USER"
  user_home="$(getent passwd "$owner" | cut -d: -f6)"
  cache="${SCALELAB_VM_CACHE:-$user_home/.cache/scalelab/cgroup2-vm}"
else
  cache="${SCALELAB_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scalelab/cgroup2-vm}"
fi
mem_mib="${SCALELAB_VM_MEM_MIB:-3072}"
cpus="${SCALELAB_VM_CPUS:-2}"
timeout_s="${SCALELAB_VM_TIMEOUT_S:-3600}"
suite=bookworm
# Debian packages inside the VM: python and the backend's tools (haproxy, util-linux's
# swapon/mkswap/setpriv come with minbase), mkfs.ext4 for the scratch disk.
guest_debs=python3,python3-venv,haproxy,procps,e2fsprogs
venv=/opt/scalelab-venv

say() { echo "cgroup2-vm: $*" >&2; }
die() { say "$*"; exit 2; }

need() {
  for tool; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing; install the Debian packages qemu-system-x86 debootstrap busybox-static cpio kmod e2fsprogs."
  done
}

# ---- build ------------------------------------------------------------------------------

kernel_version() {
  # The version the linux-image-amd64 meta package points at, e.g. 6.1.0-56-amd64.
  apt-cache depends linux-image-amd64 2>/dev/null \
    | sed -n 's/^ *Depends: linux-image-\(.*-amd64\)$/\1/p' | head -n1
}

build_kernel() {
  [ -f "$cache/kernel/.done" ] && return 0
  need apt-get dpkg
  local kver tmp
  kver="$(kernel_version)"
  [ -n "$kver" ] || die "apt knows no linux-image-amd64; run apt-get update (a Debian/Ubuntu host with Debian's mirror is needed)."
  say "kernel: apt-get download linux-image-$kver"
  tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get download -q "linux-image-$kver" >"$cache/apt-download.log" 2>&1) \
    || { rm -rf "$tmp"; die "apt-get download linux-image-$kver failed; see $cache/apt-download.log"; }
  rm -rf "$cache/kernel"
  dpkg -x "$tmp"/linux-image-*.deb "$cache/kernel"
  rm -rf "$tmp"
  echo "$kver" > "$cache/kernel/.done"
}

# Modules the initramfs loads, in dependency order (9p for the root and the checkout,
# overlay for a writable root, virtio-blk + ext4 for the scratch disk; ext4 checksums need
# crc32c, a soft dependency modinfo does not list).
initrd_modules=(virtio_pci virtio_blk 9pnet_virtio 9p overlay crc32c_generic ext4)

module_order() {
  # Depth-first over `modinfo -F depends`, dependencies first, each once.
  local kver="$1" base="$cache/kernel" m
  declare -gA _seen=()
  _visit() {
    local name="$1" dep path
    [ -n "${_seen[$name]:-}" ] && return 0
    _seen[$name]=1
    path="$(modinfo -b "$base" -k "$kver" -n "$name" 2>/dev/null)" || return 0  # built in
    for dep in $(modinfo -b "$base" -k "$kver" -F depends "$name" | tr ',' ' '); do
      _visit "$dep"
    done
    echo "$path"
  }
  for m in "${initrd_modules[@]}"; do _visit "$m"; done
}

build_initrd() {
  local stamp want kver tmp path
  want="$({ cat "$helpers/initramfs-init"; echo "${initrd_modules[*]}"; } | sha256sum | cut -d' ' -f1)"
  stamp="$cache/initrd.stamp"
  [ -f "$cache/initrd.img" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  need busybox cpio modinfo depmod
  kver="$(cat "$cache/kernel/.done")"
  [ -e "$cache/kernel/lib/modules/$kver/modules.dep" ] || depmod -b "$cache/kernel" "$kver"
  say "initramfs: busybox + $(module_order "$kver" | wc -l) modules"
  tmp="$(mktemp -d)"
  mkdir -p "$tmp"/{bin,dev,proc,sys,lower,upper,newroot,modules}
  cp "$(command -v busybox)" "$tmp/bin/busybox"
  file -L "$tmp/bin/busybox" 2>/dev/null | grep -q 'dynamically' \
    && die "$(command -v busybox) is not static; install busybox-static."
  : > "$tmp/modules/order"
  while read -r path; do
    case "$path" in
      *.ko) cp "$path" "$tmp/modules/" ;;
      *.ko.xz) xz -dc "$path" > "$tmp/modules/$(basename "$path" .xz)" ;;
      *.ko.zst) zstd -qdc "$path" > "$tmp/modules/$(basename "$path" .zst)" ;;
      *) die "unexpected module file $path" ;;
    esac
    basename "${path%.xz}" | sed 's/\.zst$//' >> "$tmp/modules/order"
  done < <(module_order "$kver")
  cp "$helpers/initramfs-init" "$tmp/init"
  chmod 755 "$tmp/init"
  (cd "$tmp" && find . | cpio -o -H newc --quiet | gzip -1) > "$cache/initrd.img.tmp"
  mv "$cache/initrd.img.tmp" "$cache/initrd.img"
  echo "$want" > "$stamp"
  rm -rf "$tmp"
}

# The project's Python dependencies (pyproject's list plus the test extra), as wheels for
# CPython 3.11 on x86_64: the rootfs's python3, whatever python the host has.
# A Python with tomllib (3.11+): the checkout's venv, else the host's python3.
host_python() {
  local py="${SCALELAB_VM_PYTHON:-$checkout/.venv/bin/python}"
  [ -x "$py" ] || py=python3
  echo "$py"
}

requirements() {
  "$(host_python)" - "$checkout/pyproject.toml" <<'EOF'
import sys, tomllib
meta = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(meta["dependencies"] + meta["optional-dependencies"]["test"]))
EOF
}

download_wheels() {
  local py="$1" dest="$2"
  requirements > "$dest.reqs"
  # pip's --log appends verbosely (100 MB a build); its quiet output says what failed.
  "$py" -m pip download -q -d "$dest" --only-binary=:all: --python-version 3.11 \
    --implementation cp --abi cp311 --abi abi3 --abi none \
    --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any \
    -r "$dest.reqs" setuptools wheel pip >"$dest.log" 2>&1
}

build_rootfs() {
  local want stamp root mirror py
  # The dependency list, not the whole pyproject: a changed linter or pytest option needs no
  # rebuild.
  want="$(requirements | sha256sum | cut -d' ' -f1) $guest_debs"
  stamp="$cache/rootfs.stamp"
  [ -d "$cache/rootfs" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  [ "$(id -u)" -eq 0 ] || die "building the rootfs needs root (debootstrap and chroot); run 'sudo $0 build' once."
  need debootstrap chroot unshare
  root="$cache/rootfs.new"
  rm -rf "$root"
  if [ ! -f "$cache/base.tar" ]; then
    # shellcheck disable=SC2016  # $(REPO_URI) is apt's template, not a shell expansion
    mirror="${SCALELAB_VM_MIRROR:-$(apt-get indextargets --format '$(REPO_URI)' 'Codename: bookworm' 2>/dev/null \
      | grep -m1 '/debian/$' || true)}"
    mirror="${mirror:-http://deb.debian.org/debian/}"
    say "rootfs: debootstrap --variant=minbase $suite from $mirror (about a minute)"
    # In a private mount namespace: debootstrap's own /proc and /sys mounts in the target
    # never show up among (or linger in) the host's mounts.
    unshare --mount --propagation private \
      debootstrap --variant=minbase --include="$guest_debs" "$suite" "$root" "$mirror" \
      > "$cache/debootstrap.log" 2>&1 || die "debootstrap failed; see $cache/debootstrap.log"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$cache/base.tar.tmp" . && mv "$cache/base.tar.tmp" "$cache/base.tar"
  else
    mkdir -p "$root" && tar -C "$root" -xf "$cache/base.tar"
  fi
  py="$(host_python)"
  say "rootfs: Python packages for the project into $venv (from wheels downloaded on the host)"
  rm -rf "$cache/wheels" && mkdir -p "$cache/wheels"
  download_wheels "$py" "$cache/wheels" || die "pip download of the project's wheels failed; see $cache/wheels.log"
  mkdir -p "$root/tmp/wheels"
  cp "$cache/wheels"/*.whl "$cache/wheels.reqs" "$root/tmp/wheels/"
  # chroot without bind mounts: nothing is mounted on the host.
  chroot "$root" /usr/bin/python3 -m venv "$venv"
  chroot "$root" "$venv/bin/python" -m pip install -q --no-index --find-links /tmp/wheels \
    -r /tmp/wheels/wheels.reqs >"$cache/pip.log" 2>&1 || die "pip install in the rootfs failed; see $cache/pip.log"
  rm -rf "$root/tmp/wheels"
  # A non-root user for the delegated runs (uid 1000, like a first desktop user).
  chroot "$root" useradd -m -u 1000 -s /bin/bash scalelab
  printf '127.0.0.1 localhost\n::1 localhost\n127.0.1.1 cgroup2-vm\n' > "$root/etc/hosts"
  echo cgroup2-vm > "$root/etc/hostname"
  rm -rf "$cache/rootfs"
  mv "$root" "$cache/rootfs"
  echo "$want" > "$stamp"
}

# Make the cache directory; under sudo, each level it creates belongs to the invoking user.
make_cache_dir() {
  local missing=() d="$cache"
  while [ ! -d "$d" ]; do missing=("$d" "${missing[@]}"); d="$(dirname "$d")"; done
  mkdir -p "$cache"
  [ -n "$owner" ] && [ "${#missing[@]}" -gt 0 ] && chown "$owner:" "${missing[@]}"
  return 0
}

# Under sudo: hand what was built to the invoking user, but for the rootfs's contents (the
# guest must see them owned as debootstrap made them; the user's QEMU only reads them).
give_cache_to_owner() {
  [ -n "$owner" ] || return 0
  chown "$owner:" "$cache"
  find "$cache" -mindepth 1 -maxdepth 1 ! -name rootfs ! -name rootfs.new \
    -exec chown -R "$owner:" {} +
}

build() {
  make_cache_dir
  local t0=$SECONDS
  build_kernel
  build_rootfs
  build_initrd
  give_cache_to_owner
  [ $((SECONDS - t0)) -gt 1 ] && say "built in $((SECONDS - t0)) s ($cache)"
  return 0
}

# ---- run --------------------------------------------------------------------------------

qemu_pid=""
rundir=""

cleanup() {
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
    kill -TERM "$qemu_pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
  fi
  [ -n "$rundir" ] && rm -rf "$rundir"
  return 0
}

run() {
  [ $# -gt 0 ] || die "run needs a command, e.g.: $0 run python -m pytest tests/test_local_backend.py"
  case "$checkout/" in
    /tmp/*|/var/tmp/*)
      die "the checkout $checkout is under /tmp or /var/tmp, which the guest covers with its scratch disk; clone it elsewhere (e.g. under \$HOME) and run this script from there." ;;
  esac
  need qemu-system-x86_64
  build
  local kver rc=0 t0
  kver="$(cat "$cache/kernel/.done")"
  rundir="$(mktemp -d "${TMPDIR:-/tmp}/cgroup2-vm.XXXXXX")"
  trap cleanup EXIT
  trap 'say "interrupted; powering the VM off"; exit 130' INT TERM HUP
  # The command goes to the guest as a file of shell-quoted words (no kernel cmdline limits).
  {
    printf 'cd %q || exit 2\n' "$checkout"
    printf 'exec'; printf ' %q' "$@"; printf '\n'
  } > "$rundir/cmd.sh"
  printf 'SCALELAB_CHECKOUT=%q\n' "$checkout" > "$rundir/env"
  truncate -s 8G "$rundir/scratch.img"
  t0=$SECONDS
  # -no-reboot: the guest's final reboot (or a panic) ends QEMU. stdin is not passed on, so
  # Ctrl-C reaches this script (and QEMU's own SIGINT handler) instead of the guest.
  qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp "$cpus" -m "$mem_mib" \
    -nodefaults -no-reboot -display none -serial stdio \
    -kernel "$cache/kernel/boot/vmlinuz-$kver" -initrd "$cache/initrd.img" \
    -append "console=ttyS0 loglevel=1 panic=-1 8250.nr_uarts=1 mitigations=off" \
    -fsdev "local,id=root,path=$cache/rootfs,security_model=none,readonly=on" \
    -device virtio-9p-pci,fsdev=root,mount_tag=rootfs \
    -fsdev "local,id=src,path=$checkout,security_model=none" \
    -device virtio-9p-pci,fsdev=src,mount_tag=checkout \
    -fsdev "local,id=run,path=$rundir,security_model=none" \
    -device virtio-9p-pci,fsdev=run,mount_tag=vmrun \
    -drive "file=$rundir/scratch.img,format=raw,if=virtio,cache=unsafe" \
    -device virtio-rng-pci \
    < /dev/null &
  qemu_pid=$!
  local deadline=$((SECONDS + timeout_s))
  while kill -0 "$qemu_pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "timed out after $timeout_s s; powering the VM off"
      break
    fi
    sleep 0.5
  done
  cleanup_qemu_only
  if [ -f "$rundir/rc" ]; then
    rc="$(cat "$rundir/rc")"
  else
    say "the VM stopped before the command finished (see the console output above)"
    rc=125
  fi
  say "VM up $((SECONDS - t0)) s, exit status $rc"
  return "$rc"
}

cleanup_qemu_only() {
  local saved="$rundir"
  rundir=""
  cleanup
  rundir="$saved"
}

# In a function, so bash has read all of it before it runs: editing this file while a VM
# runs cannot change what the running copy does.
main() {
  case "${1:-}" in
    build) build ;;
    run) shift; run "$@" ;;
    test) shift; run bash scripts/cgroup2-vm/suite.sh "$@" ;;
    clean)
      rm -rf "$cache" 2>/dev/null \
        || die "cannot delete all of $cache (its rootfs belongs to root); run 'sudo $0 clean'." ;;
    *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}
main "$@"
