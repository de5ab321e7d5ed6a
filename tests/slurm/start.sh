#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the job-array test (tests/test_slurm.py).
#
# Needs root and Debian's packages:  apt-get install slurmctld slurmd slurm-client munge
# Writes its own slurm.conf under SKYEDGE_SLURM_DIR (default /tmp/skyedge-slurm), never
# /etc/slurm; starts munged (if not running), slurmctld and slurmd; waits until the node
# takes jobs. Prints the SLURM_CONF line to export for sbatch/squeue. Safe to run again.
# Stop with:  tests/slurm/stop.sh
set -euo pipefail
DIR=${SKYEDGE_SLURM_DIR:-/tmp/skyedge-slurm}
for tool in munged slurmctld slurmd sbatch sinfo; do
    command -v "$tool" >/dev/null || { echo "start.sh: $tool not found; install slurmctld slurmd slurm-client munge" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "start.sh: needs root (slurmd runs jobs as their users)" >&2; exit 2; }
mkdir -p "$DIR/state" "$DIR/spool"
host=$(hostname -s)
cpus=$(nproc)
cat > "$DIR/slurm.conf.new" <<CONF
ClusterName=skyedge
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
mv "$DIR/slurm.conf.new" "$DIR/slurm.conf"
export SLURM_CONF=$DIR/slurm.conf

if ! pgrep -x munged >/dev/null; then
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    if id munge >/dev/null 2>&1; then runuser -u munge -- munged; else munged --force; fi
fi
# stop only daemons this script started earlier (their pid files are in $DIR), never another cluster's
"$(dirname "$0")/stop.sh"
if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
    echo "start.sh: slurmctld or slurmd is already running and was not started here; not touching it" >&2
    exit 2
fi
slurmctld -c -f "$SLURM_CONF"   # -c: a clean start, no jobs kept from an earlier cluster
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
    case "$state" in idle*|mix*|alloc*) echo "export SLURM_CONF=$SLURM_CONF"; exit 0 ;; esac
    sleep 1
done
echo "start.sh: the node did not come up within 60 s (state: ${state:-none}); see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
exit 1
