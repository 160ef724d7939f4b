#!/bin/bash
# The cgroup2 VM's test target (run inside the VM as root by `cgroup2-vm.sh test`): the local
# backend's real tests and a one-variant run, first as root, then as an unprivileged user in a
# delegated subtree. Every stage runs even when an earlier one failed; the exit status is the
# number of failed stages. Usage: suite.sh [STAGE..] (root-tests root-run delegated-tests
# delegated-run; default all).
set -uo pipefail
# All in one function: bash reads it whole before running it, so editing this file in the
# checkout while a VM runs it cannot change what runs.
main() {
  cd "$(dirname "$0")/../.." || exit 99
  here=scripts/cgroup2-vm
  tests=(tests/test_local_backend.py tests/test_local_backend_units.py)
  pytest=(python -m pytest -p no:cacheprovider -q -rs "${tests[@]}")
  # One variant, the shortest profile; results stay inside the VM (the checkout is the host's).
  run=(python -m experiments run --variants micro --profile quick)
  failed=()

  local wanted=("$@")
  [ "${#wanted[@]}" -gt 0 ] || wanted=(root-tests root-run delegated-tests delegated-run)
  stage() {
    local name="$1" t0=$SECONDS rc
    shift
    [[ " ${wanted[*]} " == *" $name "* ]] || return 0
    echo "=== $name: $*"
    "$@"
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || failed+=("$name")
  }

  stage root-tests "${pytest[@]}"
  stage root-run "${run[@]}" --out /tmp/root-results
  # A user's machine usually has swap already; unprivileged runs cannot swapon their own.
  fallocate -l 1G /var/tmp/host.swap && chmod 600 /var/tmp/host.swap && mkswap -q /var/tmp/host.swap \
    && swapon /var/tmp/host.swap
  stage delegated-tests bash "$here/as-delegated-user.sh" "${pytest[@]}"
  stage delegated-run bash "$here/as-delegated-user.sh" "${run[@]}" --out /tmp/user-results
  swapoff /var/tmp/host.swap

  if [ "${#failed[@]}" -gt 0 ]; then
    echo "=== FAILED: ${failed[*]}"
  else
    echo "=== all stages passed"
  fi
  return "${#failed[@]}"
}
main "$@"
exit
