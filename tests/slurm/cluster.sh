#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the suite's Slurm tests and for anyone who wants to try
# `sweep.py --executor slurm` on a laptop. Everything lives in one folder; no systemd, nothing in /etc.
#
#   sudo apt-get install slurmctld slurmd slurm-client munge          # Debian / Ubuntu
#   tests/slurm/cluster.sh start /tmp/slurm        # prints the line to paste: export SLURM_CONF=/tmp/slurm/slurm.conf
#   export SLURM_CONF=/tmp/slurm/slurm.conf
#   sinfo; .venv/bin/python sweep.py configs/studies/demo.yaml --executor slurm
#   tests/slurm/cluster.sh stop /tmp/slurm
#
# The node has this machine's cores and memory, partitions `debug` (the default) and `short` (1 hour at most).
# Daemons: munged (its own key and socket in the folder), slurmctld and slurmd, listening on PORT and PORT+1
# (default 6817, 6818: Slurm's own; pick others to run two clusters side by side). No accounting database
# (slurmdbd): `sacct` has nothing to say; finished jobs are written to FOLDER/log/jobcomp.txt. Quick on purpose:
# the scheduler runs every second, a requeued job may start again after 5 s (cred_expire; Slurm's default 120), and
# scancel's SIGTERM is followed by SIGKILL after 1 s (KillWait; default 30 -- submitit's jobs ignore SIGTERM). Run as root
# (slurmd starts each job as its user); as another user, jobs run as that user where the system allows it.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status FOLDER [PORT]" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1
dir=$(realpath -m "$2")
port=${3:-6817}
conf=$dir/slurm.conf
export SLURM_CONF=$conf

need() {
    for tool in munged slurmctld slurmd sinfo sbatch; do
        command -v "$tool" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$tool" >/dev/null 2>&1 || {
            echo "$tool not found: install Slurm (Debian: apt-get install slurmctld slurmd slurm-client munge)" >&2
            exit 3
        }
    done
    export PATH=$PATH:/usr/sbin
}

write_config() {
    local cpus mem user
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)    # nproc alone follows OMP_NUM_THREADS
    mem=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 512 ))
    user=$(id -un)
    cat > "$conf" <<EOF
# written by tests/slurm/cluster.sh: a one-node cluster in $dir
ClusterName=sparse-transfer-test
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=$user
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=5
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MpiDefault=none
ReturnToService=2
KillWait=1
MinJobAge=600
InactiveLimit=0
MessageTimeout=20
NodeName=node1 NodeHostname=$(hostname) NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=node1 Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=node1 MaxTime=60 State=UP
EOF
}

start() {
    need
    if [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
        echo "a cluster already runs in $dir"; echo "export SLURM_CONF=$conf"; return 0
    fi
    mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/munge"
    chmod 700 "$dir/munge"
    [ -f "$dir/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$dir/munge/munge.key"; chmod 400 "$dir/munge/munge.key"; }
    write_config
    munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" --pid-file="$dir/munge/munged.pid" \
           --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" --force
    slurmctld -f "$conf" -i
    slurmd -f "$conf" -N node1
    for _ in $(seq 1 120); do
        state=$(sinfo -h -n node1 -o %T 2>/dev/null || true)
        if [ "$state" = idle ]; then
            echo "export SLURM_CONF=$conf"
            return 0
        fi
        sleep 0.25
    done
    echo "the node did not become idle in 30 s (state: ${state:-none}); logs in $dir/log and $dir/munge" >&2
    stop
    exit 1
}

stop() {
    local pids=() pid alive
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        [ -f "$pidfile" ] && { pids+=("$(cat "$pidfile")"); rm -f "$pidfile"; }
    done
    [ ${#pids[@]} -gt 0 ] || return 0
    kill "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 50); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && return 0
        sleep 0.1
    done
    kill -9 "${pids[@]}" 2>/dev/null || true
}

case $action in
    start) start ;;
    stop) stop ;;
    status) need; sinfo; squeue ;;
    *) usage ;;
esac
