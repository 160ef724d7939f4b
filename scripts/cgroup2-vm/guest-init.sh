#!/bin/bash
# Second stage of the cgroup2 VM (PID 1 in the Debian rootfs): cgroup2 with +cpu +memory, a
# fresh ext4 scratch disk for /tmp and /var/tmp (swapfiles need a block device), then the
# command from /vmrun/cmd.sh as root; its exit status goes to /vmrun/rc and the VM powers off.
set -u
# shellcheck disable=SC2317  # called by the EXIT trap
off() { sync; echo b > /proc/sysrq-trigger; sleep 10; }
# All in one function: bash reads it whole before running it, so editing this file in the
# checkout while a VM runs it cannot change what runs.
main() {
  export PATH=/opt/scalelab-venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  export HOME=/root LANG=C.UTF-8 TERM=dumb
  # Tests and the backend look at this to allow for emulation's ~20x slower CPU.
  export SCALELAB_VM=cgroup2
  trap off EXIT
  step() { "$@" || { echo "cgroup2-vm guest: '$*' failed"; exit 1; }; }

  # systemd's DefaultLimitNOFILE=1024:524288, which every process on a user's machine inherits
  # (HAProxy raises its soft limit to what its maxconn needs; the kernel's 4096 is too low).
  ulimit -Hn 524288 && ulimit -Sn 1024
  step mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
  step sh -c 'echo "+cpu +memory" > /sys/fs/cgroup/cgroup.subtree_control'
  step mount -t tmpfs -o mode=755 run /run
  mkdir -p /dev/pts /dev/shm
  step mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
  step mount -t tmpfs -o mode=1777 shm /dev/shm
  step mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 /dev/vda
  step mount -o noatime /dev/vda /var/tmp
  mkdir -m 1777 /var/tmp/tmp
  chmod 1777 /var/tmp
  step mount --bind /var/tmp/tmp /tmp
  # root's home is mode 700 in the rootfs: a QEMU run by a user cannot read it over 9p.
  step mount -t tmpfs -o mode=700 roothome /root
  hostname cgroup2-vm

  # shellcheck disable=SC1091  # written by cgroup2-vm.sh for each run
  . /vmrun/env
  cd "$SCALELAB_CHECKOUT" || exit 1
  # A checkout is written by whoever owns it on the host; keep Python's caches out of it.
  export PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$SCALELAB_CHECKOUT"
  bash /vmrun/cmd.sh
  echo $? > /vmrun/rc
}
main "$@"
exit
