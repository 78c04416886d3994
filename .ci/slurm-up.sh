#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, for the tests marked `slurm`.
#
# Run as root on Debian (CI runs it from a clean clone). Idempotent: when the local cluster already
# answers with an idle node it does nothing; otherwise it installs what is missing, writes the config,
# starts munged, slurmctld and slurmd (no systemd needed: CI containers have none), and waits until
# `sinfo` shows the node ready. It refuses to overwrite a slurm.conf it did not write.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARKER="# written by vlmppo .ci/slurm-up.sh"
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_DIR=/var/lib/slurm/slurmd
LOG_DIR=/var/log/slurm
WAIT_S="${SLURM_UP_WAIT_S:-60}"

say() { echo "slurm-up: $*"; }
fail() {
  echo "slurm-up: error: $*" >&2
  for log in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
    [ -f "$log" ] && { echo "--- last lines of $log" >&2; tail -n 15 "$log" >&2; }
  done
  exit 1
}

node_ready() {
  # idle/mixed/allocated all mean the node takes jobs; down/drained/unknown do not.
  timeout 10 sinfo -h -N -o '%t' 2>/dev/null | grep -Eq '^(idle|mix|alloc|comp)'
}

render_conf() {
  local host hardware
  host="$(hostname -s)"
  # `slurmd -C` prints e.g. "NodeName=vm CPUs=2 Boards=1 ... RealMemory=23995"; keep the hardware part.
  hardware="$(slurmd -C | head -n1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ UpTime=.*//')"
  [ -n "$hardware" ] || fail "slurmd -C did not describe this machine."
  cat <<EOF
$MARKER
ClusterName=vlmppo-local
# The address is given so nothing depends on how this hostname resolves.
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120); short for fast tests.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups in CI containers: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# No slurmdbd here, so sacct has nothing; keep finished jobs in scontrol for an hour instead.
MinJobAge=3600
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

if command -v sinfo >/dev/null && node_ready; then
  # Up already: done, unless it runs an older config written by this script.
  if ! grep -qsF "$MARKER" "$CONF" || [ "$(render_conf)" = "$(cat "$CONF")" ]; then
    say "a local cluster is already up:"
    sinfo
    exit 0
  fi
  say "the local cluster runs an older config of this script; updating it"
fi

[ "$(id -u)" -eq 0 ] || fail "run as root (it installs packages and starts daemons)."

# 1. packages (procps for pgrep: minimal images lack it)
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
  || ! command -v munged >/dev/null || ! command -v pgrep >/dev/null; then
  command -v apt-get >/dev/null || fail "apt-get not found: this script supports Debian/Ubuntu only."
  say "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # A policy-rc.d that exits 101 stops the packages from starting services themselves (no systemd here);
  # an image that has its own keeps it.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq slurmctld slurmd slurm-client munge procps >/dev/null
  if [ "$own_policy" -eq 1 ]; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
fi

# 2. munge: a key readable only by the munge user, and munged running as that user.
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  say "creating the munge key"
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged --force
  munge -n | unmunge >/dev/null || fail "munged does not answer."
fi

# 3. slurm.conf: this node, with the CPUs and memory slurmd detects, in one partition.
HOST="$(hostname -s)"
if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
  fail "$CONF exists and was not written by this script; not touching a real cluster's config."
fi
install -d -m 0755 "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
NEW_CONF="$(render_conf)"
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
  say "writing $CONF"
  printf '%s\n' "$NEW_CONF" >"$CONF"
  CHANGED=1
else
  CHANGED=0
fi

# 4. daemons. A changed config needs fresh daemons (reconfigure does not reload everything, e.g. AuthInfo):
# `scontrol shutdown` stops both cleanly.
if [ "$CHANGED" -eq 1 ] && pgrep -x slurmctld >/dev/null; then
  say "restarting the daemons for the new config"
  scontrol shutdown >/dev/null 2>&1 || true
  for _ in $(seq 30); do
    pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break
    sleep 1
  done
fi
if ! pgrep -x slurmctld >/dev/null; then
  say "starting slurmctld"
  slurmctld || fail "slurmctld did not start."
fi
if ! pgrep -x slurmd >/dev/null; then
  say "starting slurmd"
  slurmd || fail "slurmd did not start."
fi

# 5. wait for the node; a node left down by an earlier run is resumed once.
resumed=0
for _ in $(seq "$WAIT_S"); do
  if node_ready; then
    say "the local cluster is up:"
    sinfo
    exit 0
  fi
  state="$(timeout 10 sinfo -h -N -o '%t' 2>/dev/null || true)"
  if [ "$resumed" -eq 0 ] && echo "$state" | grep -Eq '^(down|drain|drng|fail)'; then
    scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
    resumed=1
  fi
  sleep 1
done
fail "the node did not become idle within ${WAIT_S}s (sinfo: $(sinfo -h -N -o '%N %t %E' 2>&1 | tr '\n' ' '))."
