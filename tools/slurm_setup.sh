#!/usr/bin/env bash
# A single-node SLURM on this machine, for tests and CI (runs as root): installs slurm-wlm and
# munge if missing, writes /etc/slurm/slurm.conf from this machine's cores and memory, starts
# munged, slurmctld and slurmd, and waits until `sinfo` shows the node idle. Safe to run again:
# a running, idle SLURM is left alone. No slurmdbd: `sacct -c` reads the job completion log
# (JobCompType=jobcomp/filetxt) instead of an accounting database.
# Env: SLURM_SETUP_TIMEOUT (s, default 60); SLURM_SETUP_FORCE=1 overwrites a slurm.conf that
# this script did not write.
set -euo pipefail
# The daemons and runuser live in /usr/sbin, which a plain user shell's PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

CONF=/etc/slurm/slurm.conf
MARK="# written by s4m tools/slurm_setup.sh"
LOGDIR=/var/log/slurm
TIMEOUT=${SLURM_SETUP_TIMEOUT:-60}

die() { echo "slurm_setup: error: $*" >&2; exit 1; }
say() { echo "slurm_setup: $*"; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

node_state() { sinfo -h -N -o '%t' 2>/dev/null | head -1; }

case "$(node_state)" in
  idle|mix|alloc) say "already running: $(sinfo -h -N -o '%N %t %c CPUs %m MB')"; exit 0 ;;
esac

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq slurm-wlm munge >/dev/null || die "apt-get install slurm-wlm munge failed"
fi

# munge: the key authenticates every SLURM message; munged runs as the munge user.
mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
  for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
  munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
fi

# slurm.conf from this machine: every core, 90% of the memory, cons_tres so that several jobs
# (array tasks) share the node by their CPU and memory requests.
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF" && [ "${SLURM_SETUP_FORCE:-0}" != 1 ]; then
  die "$CONF exists and was not written by this script; set SLURM_SETUP_FORCE=1 to replace it"
fi
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGDIR"
tmp=$(mktemp /etc/slurm/.slurm.conf.XXXXXX)
cat >"$tmp" <<EOF
$MARK ($cpus CPUs, $mem_mb MB)
ClusterName=s4m-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MaxArraySize=10001
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
if cmp -s "$tmp" "$CONF"; then rm -f "$tmp"; changed=0; else mv "$tmp" "$CONF"; changed=1; fi
chmod 0644 "$CONF"

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if running /run/slurmctld.pid && [ "$changed" = 1 ]; then
  say "slurm.conf changed; reconfiguring"
  scontrol reconfigure || true
fi
if ! running /run/slurmctld.pid; then
  say "starting slurmctld"
  slurmctld || die "slurmctld did not start (see $LOGDIR/slurmctld.log)"
fi
if ! running /run/slurmd.pid; then
  say "starting slurmd"
  slurmd || die "slurmd did not start (see $LOGDIR/slurmd.log)"
fi

for _ in $(seq "$TIMEOUT"); do
  state=$(node_state)
  case "$state" in
    idle|mix|alloc) say "ready: $(sinfo -h -N -o '%N %t %c CPUs %m MB')"; exit 0 ;;
    down*|drain*|drng*|fail*)
      # a node left down by an earlier run (e.g. killed daemons) comes back once resumed
      scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 1
done
die "node $host not idle after ${TIMEOUT}s (sinfo: $(sinfo -h -N -o '%N %t %E' 2>&1));" \
  "see $LOGDIR/slurmctld.log and $LOGDIR/slurmd.log"
