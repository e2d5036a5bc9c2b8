#!/usr/bin/env bash
# A single-node SLURM cluster with accounting, on this machine, for trying eas
# on SLURM and for the integration tests. Needs root and the packages from
# launchers/slurm/install.sh; installs nothing. Everything lives in STATE_DIR
# (configs, logs, MariaDB on a private socket, spool) and uses free ports,
# except munged: SLURM's clients only find it at /run/munge, so a running one
# is reused, else one is started there (and stopped by `stop`).
#
#   launchers/slurm/cluster.sh start  STATE_DIR   # ~15 s; prints the export line
#   eval "$(launchers/slurm/cluster.sh env STATE_DIR)"   # SLURM_CONF for sbatch, eas, ...
#   launchers/slurm/cluster.sh status STATE_DIR
#   launchers/slurm/cluster.sh stop   STATE_DIR   # cancels jobs, stops the PIDs it started
#
# Environment (start): EAS_SLURM_PORT (first of three ports, default 6817; the
# next free ones are taken if busy), EAS_SLURM_MAX_ARRAY_SIZE (default 1001),
# EAS_SLURM_CLUSTER (ClusterName, default eas).
set -euo pipefail

usage() { echo "usage: $0 start|stop|status|env STATE_DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
state=$(realpath -m "$2")
conf=$state/slurm.conf
pids=$state/pids

die() {
  echo "cluster.sh: $*" >&2
  [ "$cmd" != start ] || stop_daemons
  exit 1
}

# PID 1 here (and in many containers) reaps late: a dead daemon can linger as a
# zombie, so `kill -0` says alive. Read the state letter from /proc instead.
alive() {
  local pid=$1 name=$2 stat
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ "$stat" == *"($name"* ]] || return 1          # PID reused by something else
  stat=${stat##*) }
  [[ "${stat%% *}" != Z && "${stat%% *}" != X ]]
}

# Start a foreground daemon in its own session; record "name pid".
launch() {
  local name=$1; shift
  setsid "$@" >>"$state/log/$name.out" 2>&1 < /dev/null &
  local pid=$! i
  echo "$name $pid" >>"$pids"
  # until exec, /proc shows the forking shell's name
  for i in $(seq 50); do alive "$pid" "$name" && return 0; sleep 0.1; done
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "timed out after ${secs}s waiting for $what (logs: $state/log)"
    check_started
    sleep 0.2
  done
}

check_started() {  # a daemon that died during start-up: show its log and stop
  local name pid
  [ -f "$pids" ] || return 0
  while read -r name pid; do
    if ! alive "$pid" "$name"; then
      echo "cluster.sh: $name (pid $pid) exited during start-up; last log lines:" >&2
      tail -n 20 "$state/log/$name".* >&2 2>/dev/null || true
      stop_daemons
      exit 1
    fi
  done <"$pids"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_ports() {
  local p=${EAS_SLURM_PORT:-6817} found=()
  while [ ${#found[@]} -lt 3 ]; do
    [ $p -lt 65000 ] || die "no free ports"
    port_free $p && found+=($p)
    p=$((p + 1))
  done
  ctld_port=${found[0]} slurmd_port=${found[1]} dbd_port=${found[2]}
}

stop_daemons() {
  [ -f "$pids" ] || return 0
  local name pid i
  # last started first: slurmd, slurmctld, slurmdbd, mariadbd, munged
  tac "$pids" | while read -r name pid; do
    alive "$pid" "$name" || continue
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do alive "$pid" "$name" || break; sleep 0.2; done
    if alive "$pid" "$name"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  rm -f "$pids"
}

running() {
  [ -f "$pids" ] || return 1
  local name pid
  while read -r name pid; do alive "$pid" "$name" || return 1; done <"$pids"
}

start() {
  for b in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct sacctmgr; do
    command -v $b >/dev/null || die "$b not found; install the packages with: bash launchers/slurm/install.sh"
  done
  [ "$(id -u)" -eq 0 ] || die "must run as root (the daemons run as root: SlurmUser=root)"
  if running; then echo "export SLURM_CONF=$conf"; return 0; fi
  stop_daemons
  if [ -d "$state" ] && [ -n "$(ls -A "$state")" ] && [ ! -f "$conf" ]; then
    die "$state is not empty and holds no cluster state (slurm.conf): give a new or empty STATE_DIR"
  fi
  # a fresh start: job ids restart at 1, so give each sweep a fresh submitit folder
  rm -rf "$state"
  mkdir -p "$state"/{munge,mysql,mysqld,log,run,ctld,spool}
  chmod 700 "$state/munge"
  local host; host=$(hostname -s)
  pick_ports

  # munge: SLURM's clients (sacct, sacctmgr) only reach munge on its default
  # socket, so use a munged that already serves it, or start one there
  if munge -n </dev/null >/dev/null 2>&1; then
    echo "cluster.sh: using the munged already running on /run/munge" >&2
  else
    mkdir -p /run/munge
    dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$state/munge/munge.key"
    launch munged munged --foreground --force --key-file="$state/munge/munge.key" \
      --pid-file="$state/run/munged.pid" --log-file="$state/log/munged.log" \
      --seed-file="$state/munge/munged.seed" --num-threads=4
    wait_for 20 munged munge -n
  fi

  # MariaDB on a private socket, no TCP; slurmdbd finds it through MYSQL_UNIX_PORT
  mariadb-install-db --no-defaults --user=root --datadir="$state/mysql" --skip-test-db \
    --auth-root-authentication-method=socket >"$state/log/mariadb-install.log" 2>&1 \
    || { tail "$state/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
  local dsock=$state/mysqld/mysqld.sock
  launch mariadbd mariadbd --no-defaults --user=root --datadir="$state/mysql" --socket="$dsock" \
    --pid-file="$state/mysqld/mysqld.pid" --log-error="$state/log/mariadbd.log" --skip-networking \
    --innodb-buffer-pool-size=16M --key-buffer-size=1M --performance-schema=OFF
  wait_for 60 mariadbd mariadb-admin --no-defaults --socket="$dsock" ping

  cat >"$state/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$dbd_port
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$state/run/slurmdbd.pid
LogFile=$state/log/slurmdbd.log
EOF
  chmod 600 "$state/slurmdbd.conf"

  # the node line as slurmd sees this machine (CPUs, sockets, memory)
  local node; node=$(slurmd -C | head -n 1)
  cat >"$conf" <<EOF
ClusterName=${EAS_SLURM_CLUSTER:-eas}
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MailProg=/bin/true
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MaxArraySize=${EAS_SLURM_MAX_ARRAY_SIZE:-1001}
KillWait=5
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
JobAcctGatherType=jobacct_gather/none
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

  export SLURM_CONF=$conf MYSQL_UNIX_PORT=$dsock
  launch slurmdbd slurmdbd -D
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster "${EAS_SLURM_CLUSTER:-eas}" >/dev/null 2>&1 || true
  launch slurmctld slurmctld -D -i -f "$conf"
  wait_for 30 slurmctld scontrol ping
  launch slurmd slurmd -D -f "$conf"
  wait_for 30 "node $host to be idle" bash -c "sinfo -h -n '$host' -o %T | grep -qx idle"
  echo "export SLURM_CONF=$conf"
}

stop() {
  if [ -f "$conf" ] && running; then
    # running jobs' slurmstepd outlive slurmd: cancel them first
    SLURM_CONF=$conf scancel --user="$(id -un)" --full >/dev/null 2>&1 || true
    SLURM_CONF=$conf timeout 20 bash -c 'while [ -n "$(squeue -h -o %i)" ]; do sleep 0.5; done' || true
  fi
  stop_daemons
  echo "stopped (state kept in $state)"
}

status() {
  [ -f "$pids" ] || { echo "not started ($state)"; return 1; }
  local name pid ok=0
  while read -r name pid; do
    if alive "$pid" "$name"; then echo "$name $pid running"; else echo "$name $pid DEAD"; ok=1; fi
  done <"$pids"
  if [ $ok -eq 0 ]; then SLURM_CONF=$conf sinfo; fi
  return $ok
}

case $cmd in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$conf" ;;
  *) usage ;;
esac
