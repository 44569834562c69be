# shellcheck shell=bash
# Shared helpers for infra/dev/stack.sh. Sourced, not executed.

# ---------------------------------------------------------------- output ----

log()  { printf '[stack] %s\n' "$*"; }
warn() { printf '[stack] WARNING: %s\n' "$*" >&2; }
die()  { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

# show_log FILE [LINES]: print the last lines of a log file, indented.
show_log() {
  local file=$1 lines=${2:-30}
  if [[ -s $file ]]; then
    printf '[stack] ---- last %s lines of %s ----\n' "$lines" "$file" >&2
    tail -n "$lines" "$file" | sed 's/^/    /' >&2
    printf '[stack] ---- end of %s ----\n' "$file" >&2
  else
    printf '[stack] (log %s is empty or missing)\n' "$file" >&2
  fi
}

# ---------------------------------------------------------------- probes ----

# port_open HOST PORT: true if something accepts TCP connections there.
port_open() {
  timeout 1 bash -c "</dev/tcp/$1/$2" 2>/dev/null
}

# read_pid PIDFILE: print the pid stored in PIDFILE (empty if none/garbage).
read_pid() {
  local pid=""
  if [[ -r $1 ]]; then read -r pid <"$1" || true; fi
  [[ $pid =~ ^[0-9]+$ ]] && printf '%s' "$pid"
  return 0
}

# pid_alive PIDFILE PATTERN: true if the pid in PIDFILE is a live process
# whose command line contains PATTERN (guards against recycled pids).
pid_alive() {
  local pidfile=$1 pattern=$2 pid
  local cmdline
  pid=$(read_pid "$pidfile")
  [[ -n $pid ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$pattern"* ]]
}

# ------------------------------------------------------------- lifecycle ----

# start_daemon PIDFILE LOGFILE WORKDIR CMD [ARGS...]
# Runs CMD in the background in its own session (immune to the caller's
# Ctrl-C / hangup), stdout+stderr appended to LOGFILE, and records its pid.
start_daemon() {
  local pidfile=$1 logfile=$2 workdir=$3
  shift 3
  mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
  printf '\n==== %s starting: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$logfile"
  # A background job of a non-interactive shell is not a process-group
  # leader, so setsid(1) calls setsid() and execs without forking: $! is the
  # pid of the service itself.
  (cd "$workdir" && exec setsid "$@" >>"$logfile" 2>&1 </dev/null) &
  echo "$!" >"$pidfile"
}

# stop_pid NAME PIDFILE PATTERN [TIMEOUT]: SIGTERM, wait up to TIMEOUT
# seconds (default 15), then SIGKILL. Removes the pid file.
stop_pid() {
  local name=$1 pidfile=$2 pattern=$3 timeout=${4:-15} pid i
  if ! pid_alive "$pidfile" "$pattern"; then
    rm -f "$pidfile"
    log "$name: not running"
    return 0
  fi
  pid=$(read_pid "$pidfile")
  log "$name: stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "$name: still alive after ${timeout}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$pidfile"
  log "$name: stopped"
}

# wait_for NAME TIMEOUT LOGFILE PIDFILE PATTERN CHECK [ARGS...]
# Polls CHECK ARGS... until it succeeds. Fails (printing the log tail) when
# TIMEOUT seconds pass or the process dies first.
wait_for() {
  local name=$1 timeout=$2 logfile=$3 pidfile=$4 pattern=$5
  shift 5
  local deadline=$((SECONDS + timeout))
  while true; do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    # Right after start_daemon the pid may still be the subshell about to exec the service
    # (its cmdline does not match yet): only a pid that is gone means the service died.
    if ! pid_alive "$pidfile" "$pattern" && ! kill -0 "$(read_pid "$pidfile")" 2>/dev/null; then
      printf '[stack] ERROR: %s exited during startup. Log: %s\n' "$name" "$logfile" >&2
      show_log "$logfile" 30
      return 1
    fi
    if ((SECONDS >= deadline)); then
      printf '[stack] ERROR: %s not healthy after %ss. Log: %s\n' "$name" "$timeout" "$logfile" >&2
      show_log "$logfile" 30
      return 1
    fi
    sleep 0.5
  done
}
