#!/usr/bin/env bash
# A stand-in Vast instance for eas's tests: a real sshd on 127.0.0.1:PORT, logging in as root,
# inside its own mount and pid namespaces, so nothing it writes reaches this machine's
# /etc, /root, /tmp, /run or the project dir (the test pushes code there over rsync, as to
# a real instance). Kill the namespace's init (the printed pid's child) to "destroy" it.
#   loopback_instance.sh STATE_DIR PORT AUTHORIZED_KEYS_FILE PROJECT_DIR [PYTHON_PREFIX ...]
# PYTHON_PREFIX: the Python the jobs run with (the test passes its sys.prefix and sys.base_prefix),
# kept visible at the same path though the namespace hides the project dir, /root, /tmp and /run.
# Needs root, unshare (util-linux) and openssh-server (launchers/vast/install.sh).
set -euo pipefail
state=$1 port=$2 keys=$3 project=$4
shift 4
mkdir -p "$state"/{root/.ssh,tmp,run/sshd,project}
cp -a /etc "$state/etc"
ssh-keygen -q -t ed25519 -N '' -f "$state/hostkey" <<<y >/dev/null 2>&1 || true
cp "$keys" "$state/root/.ssh/authorized_keys"
chmod 700 "$state/root" "$state/root/.ssh"; chmod 600 "$state/root/.ssh/authorized_keys"
exec unshare --mount --pid --fork --mount-proc bash -c '
  set -e
  state=$1 port=$2 project=$3
  shift 3
  mount --make-rprivate /
  for prefix in "$@"; do  # bound into the views that replace the dirs it lives under (below)
    case "$prefix" in
      "$project"/*) dst=$state/project${prefix#"$project"};;
      /root/*|/tmp/*|/run/*) dst=$state$prefix;;
      *) continue;;  # not hidden
    esac
    mkdir -p "$dst"; mount --bind "$prefix" "$dst"
  done
  # a second view of the project inside the future /tmp, for a project that lives under /tmp
  mkdir -p "$state/tmp/.eas_project"
  mount --rbind "$state/project" "$state/tmp/.eas_project"
  mount --rbind "$state/project" "$project"              # an empty project dir: code arrives by rsync
  mount --bind "$state/etc" /etc
  mount --rbind "$state/root" /root
  mount --bind "$state/run" /run
  cp "$state/hostkey" /run/hostkey
  mount --rbind "$state/tmp" /tmp                        # last: $state may live under /tmp
  case "$project" in
    /tmp/*) mkdir -p "$project"; mount --rbind /tmp/.eas_project "$project";;
  esac
  exec /usr/sbin/sshd -D -e -p "$port" -h /run/hostkey -o ListenAddress=127.0.0.1 \
    -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no -o UsePAM=no -o StrictModes=no \
    -o PidFile=none -o AuthorizedKeysFile=/root/.ssh/authorized_keys
' bash "$state" "$port" "$project" "$@"
