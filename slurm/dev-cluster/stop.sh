#!/usr/bin/env bash
# Stop the dev cluster that start.sh started: cancel its jobs, then stop the slurmd nodes, slurmctld and
# munged named in its pid files (a pid is only signalled if its command line still names our config or
# socket). Logs stay in the scratch dir unless --purge is given.
#
#   bash slurm/dev-cluster/stop.sh [--purge]
set -euo pipefail
trap 'echo "dev-cluster: error: stop.sh failed at line $LINENO" >&2' ERR
DIR="${RESNEXT_SLURM_DIR:-/tmp/resnext-slurm}"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
CONF="$DIR/slurm.conf"
NODES="n1 n2"
PURGE=0
[ "${1:-}" = "--purge" ] && PURGE=1

say() { echo "dev-cluster: $*" >&2; }

[ -d "$DIR" ] || { say "nothing to stop ($DIR does not exist)"; exit 0; }
exec 9>"$DIR/lock"
flock -w 120 9 || { say "error: another start.sh/stop.sh holds $DIR/lock"; exit 1; }

pid_of() {  # pid_of PIDFILE NEEDLE -> prints the pid if it is alive and ours
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  grep -qF -- "$2" <(tr '\0' ' ' <"/proc/$pid/cmdline") || return 1
  echo "$pid"
}

running() { [ -d "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }  # not a zombie

stop_daemon() {  # stop_daemon NAME PIDFILE NEEDLE
  local pid
  pid="$(pid_of "$2" "$3")" || { rm -f "$2"; return 0; }
  say "stopping $1 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do running "$pid" || break; sleep 0.2; done
  if running "$pid"; then
    say "$1 ignored SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$2"
}

export SLURM_CONF="$CONF"
if pid_of "$DIR/run/slurmctld.pid" "$CONF" >/dev/null && [ -n "$(pid_of "$DIR/run/slurmd-n1.pid" "$CONF")" ]; then
  # Jobs first, while the nodes can still kill their processes: no job outlives the cluster.
  jobs="$(timeout 10 squeue -h -o %A 2>/dev/null | tr '\n' ' ' || true)"
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    timeout 10 scancel --full $jobs 2>/dev/null || true
    # squeue lists pending, running and completing jobs: empty once every job process is gone (KillWait at most).
    for _ in $(seq 60); do
      [ -z "$(timeout 10 squeue -h -o %A 2>/dev/null || true)" ] && break
      sleep 0.5
    done
  fi
fi

for n in $NODES; do stop_daemon "slurmd $n" "$DIR/run/slurmd-$n.pid" "$CONF"; done
stop_daemon slurmctld "$DIR/run/slurmctld.pid" "$CONF"
stop_daemon munged "$DIR/run/munged.pid" "$DIR/munge/munge.socket"

if [ -f "$DIR/run/hosts-added" ]; then
  # Rewrite in place (not rename): /etc/hosts is often a bind mount in containers.
  grep -vxF "127.0.0.1 $NODES # resnext_dist dev cluster $DIR" /etc/hosts >"$DIR/run/hosts.new" || true
  cat "$DIR/run/hosts.new" >/etc/hosts
  rm -f "$DIR/run/hosts.new" "$DIR/run/hosts-added"
  say "removed the n1/n2 line from /etc/hosts"
fi

if [ $PURGE = 1 ]; then
  rm -rf "$DIR"
  say "stopped; removed $DIR"
else
  say "stopped (logs in $DIR/log)"
fi
