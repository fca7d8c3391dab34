#!/usr/bin/env bash
# Start a real Slurm cluster on this machine: our own munged, slurmctld, and two slurmd "nodes" (n1, n2)
# that share this host. Everything (config, state, spool, logs, pid files) lives under one scratch dir.
#
#   eval "$(bash slurm/dev-cluster/start.sh)"     # start (or find running) and export SLURM_CONF
#   sinfo; python launch/submit.py --config configs/quickstart.yaml slurm.gpus_per_node=0 ...
#   bash slurm/dev-cluster/stop.sh                # stop exactly what start.sh started
#
# Starting twice is harmless: running daemons are kept, missing ones are started. The only line on
# stdout is `export SLURM_CONF=...`; progress goes to stderr. Needs root (slurmd launches the jobs) and
# the Debian packages munge slurmctld slurmd slurm-client (`bash launch/setup.sh --dev`).
#
# Settings (environment):
#   RESNEXT_SLURM_DIR      scratch dir                      (default /tmp/resnext-slurm)
#   RESNEXT_SLURM_PORT     slurmctld port; nodes use +1, +2 (default 16817, clear of a system Slurm's 6817)
#   RESNEXT_SLURM_CPUS     CPUs per node                    (default 4: two tasks with 2 CPUs each)
#   RESNEXT_SLURM_MEM_MB   memory per node in MB            (default 8192)
#   RESNEXT_SLURM_REQUEUE_DELAY_S  how long a requeued job waits before it may start (default 5)
set -euo pipefail
trap 'echo "dev-cluster: error: start.sh failed at line $LINENO" >&2' ERR
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${RESNEXT_SLURM_DIR:-/tmp/resnext-slurm}"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
PORT="${RESNEXT_SLURM_PORT:-16817}"
CPUS="${RESNEXT_SLURM_CPUS:-4}"
MEM_MB="${RESNEXT_SLURM_MEM_MB:-8192}"
CRED_EXPIRE="${RESNEXT_SLURM_REQUEUE_DELAY_S:-5}"
NODES="n1 n2"
CONF="$DIR/slurm.conf"
HOSTS_LINE="127.0.0.1 $NODES # resnext_dist dev cluster $DIR"

say() { echo "dev-cluster: $*" >&2; }
die() { echo "dev-cluster: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (slurmd starts the jobs and our munged serves them)"
for bin in munged munge slurmctld slurmd sinfo sbatch srun scontrol; do
  command -v "$bin" >/dev/null || die "$bin not found; install the packages with: bash launch/setup.sh --dev"
done

mkdir -p "$DIR"
chmod 755 "$DIR"  # munged and slurmd refuse paths that others cannot traverse or can write
# The lock fd is closed for every daemon below (9>&-), or they would hold the lock forever.
exec 9>"$DIR/lock"
flock -w 120 9 || die "another start.sh/stop.sh holds $DIR/lock"

# alive PIDFILE NEEDLE: the pid in PIDFILE runs and its command line contains NEEDLE (our conf or socket),
# so a recycled pid or someone else's daemon is never mistaken for ours.
alive() {
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  grep -qF -- "$2" <(tr '\0' ' ' <"/proc/$pid/cmdline") || return 1
  ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}

ctld_up() { SLURM_CONF="$CONF" timeout 10 scontrol ping 2>/dev/null | grep -q "is UP"; }

all_running() {
  alive "$DIR/run/munged.pid" "$DIR/munge/munge.socket" && alive "$DIR/run/slurmctld.pid" "$CONF" || return 1
  for n in $NODES; do alive "$DIR/run/slurmd-$n.pid" "$CONF" || return 1; done
  ctld_up
}

if all_running; then
  say "already running (SLURM_CONF=$CONF)"
  echo "export SLURM_CONF=$CONF"
  exit 0
fi

mkdir -p "$DIR/munge" "$DIR/state" "$DIR/run" "$DIR/log"
for n in $NODES; do mkdir -p "$DIR/spool/$n"; done
chmod 755 "$DIR/munge" "$DIR/spool" "$DIR/spool/"* "$DIR/run" "$DIR/log"
chmod 700 "$DIR/state"

# --- names: jobs (submitit, torch.distributed) use the first node's name as the master address ---------
# One /etc/hosts line per cluster dir (stop.sh removes exactly that line), so two dev clusters on one
# machine (e.g. two test sessions) do not pull the names from under each other.
if ! grep -qxF "$HOSTS_LINE" /etc/hosts; then
  for n in $NODES; do
    addr="$(getent hosts "$n" 2>/dev/null | awk '{print $1; exit}' || true)"  # getent: 2 = not found
    if [ -n "$addr" ] && [ "$addr" != 127.0.0.1 ]; then
      die "$n already names another host ($addr); the dev cluster needs it for 127.0.0.1"
    fi
  done
  echo "$HOSTS_LINE" >>/etc/hosts
  touch "$DIR/run/hosts-added"
fi

# --- munge: our own key and socket ----------------------------------------------------------------
if ! alive "$DIR/run/munged.pid" "$DIR/munge/munge.socket"; then
  if [ ! -s "$DIR/munge/munge.key" ]; then
    (umask 077; head -c 1024 /dev/urandom >"$DIR/munge/munge.key")
  fi
  chmod 600 "$DIR/munge/munge.key"
  rm -f "$DIR/munge/munge.socket" "$DIR/munge/munge.socket.lock"
  say "starting munged"
  munged --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --log-file="$DIR/log/munged.log" --pid-file="$DIR/run/munged.pid" --seed-file="$DIR/munge/munged.seed" 9>&- \
    || die "munged failed to start; see $DIR/log/munged.log"
fi
munge -S "$DIR/munge/munge.socket" -n | unmunge -S "$DIR/munge/munge.socket" >/dev/null \
  || die "munge credentials do not round-trip; see $DIR/log/munged.log"

# --- slurm.conf from the template --------------------------------------------------------------------
HOST="$(hostname -s)"
sed -e "s|@DIR@|$DIR|g" -e "s|@HOST@|$HOST|g" -e "s|@CTLD_PORT@|$PORT|g" \
    -e "s|@N1_PORT@|$((PORT + 1))|g" -e "s|@N2_PORT@|$((PORT + 2))|g" -e "s|@CPUS@|$CPUS|g" \
    -e "s|@MEM_MB@|$MEM_MB|g" -e "s|@CRED_EXPIRE@|$CRED_EXPIRE|g" \
    "$HERE/slurm.conf.in" >"$CONF.tmp"
mv "$CONF.tmp" "$CONF"
export SLURM_CONF="$CONF"

# --- daemons --------------------------------------------------------------------------------------
if ! alive "$DIR/run/slurmctld.pid" "$CONF"; then
  say "starting slurmctld on port $PORT"
  slurmctld -f "$CONF" 9>&- || die "slurmctld failed to start; see $DIR/log/slurmctld.log"
fi
for _ in $(seq 20); do ctld_up && break; sleep 0.5; done
ctld_up || die "slurmctld does not answer; see $DIR/log/slurmctld.log"
for n in $NODES; do
  if ! alive "$DIR/run/slurmd-$n.pid" "$CONF"; then
    say "starting slurmd $n"
    slurmd -N "$n" -f "$CONF" 9>&- || die "slurmd $n failed to start; see $DIR/log/slurmd-$n.log"
  fi
done

# --- wait until both nodes take jobs ------------------------------------------------------------------
deadline=$((SECONDS + 60))
while :; do
  states="$(sinfo -h -N -p debug -o '%N %t' 2>/dev/null | sort -u | tr '\n' ' ')"
  idle=0
  for n in $NODES; do
    case " $states" in *" $n idle "* | *" $n mix "* | *" $n alloc "*) idle=$((idle + 1)) ;; esac
  done
  [ "$idle" = 2 ] && break
  if [ $SECONDS -ge $deadline ]; then
    die "nodes not idle after 60 s (sinfo: $states); see $DIR/log/"
  fi
  # A node left down by an earlier run (state is kept in $DIR/state) comes back on request.
  case "$states" in *down* | *drain*) scontrol update NodeName=n1,n2 State=RESUME >/dev/null 2>&1 || true ;; esac
  sleep 1
done
say "up: nodes $NODES idle, partitions debug (default) and urgent (SLURM_CONF=$CONF)"
echo "export SLURM_CONF=$CONF"
