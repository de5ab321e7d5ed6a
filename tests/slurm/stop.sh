#!/usr/bin/env bash
# Stops the one-node cluster started by tests/slurm/start.sh: only the daemons whose pid files
# are in SKYEDGE_SLURM_DIR (default /tmp/skyedge-slurm); munged is left running.
DIR=${SKYEDGE_SLURM_DIR:-/tmp/skyedge-slurm}
for daemon in slurmd slurmctld; do
    pidfile="$DIR/$daemon.pid"
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$daemon" ]; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
done
