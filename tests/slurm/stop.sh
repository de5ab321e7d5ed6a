#!/usr/bin/env bash
# Stops the one-node cluster started by tests/slurm/start.sh (munged is left running).
pkill -x slurmd 2>/dev/null || true
pkill -x slurmctld 2>/dev/null || true
