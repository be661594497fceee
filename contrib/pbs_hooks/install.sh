#!/bin/sh
# Render vtorque's OpenPBS / PBS Professional hook with this site's paths and import it
# into the PBS server with qmgr (run as root on the PBS server host):
#
#   contrib/pbs_hooks/install.sh [--python PATH] [--config PATH] [--alarm SECONDS]
#       [--hook-name NAME] [--output FILE] [--qmgr PATH] [--no-abort-event] [--apply]
#   contrib/pbs_hooks/install.sh --uninstall [--hook-name NAME] [--qmgr PATH] [--apply]
#   contrib/pbs_hooks/install.sh --node [--python PATH] [--config PATH] [--job-shell PATH]
#
# Without --apply: renders FILE and prints the qmgr commands, changes nothing in PBS.
# With --apply: renders FILE and runs them (create is skipped when the hook exists, so
# running it twice is harmless; import replaces the hook's script).
#
# --config may name the node: /etc/vtorque/{node}.yaml is each MoM's own config (sites
# with several MoMs on one host); the hook fills in pbs.get_local_nodename().
# Defaults: PATH = the python of this checkout's .venv; config /etc/vtorque/vtorque.yaml;
# alarm 540 s; hook name vtorque; FILE /etc/vtorque/openpbs-hook.py; qmgr from PBS_EXEC
# in /etc/pbs.conf (else /opt/pbs/bin/qmgr). The python and config paths are baked into
# the hook the server sends to every MoM: they must be valid on every compute node.
#
# Alarm: execjob_begin brings up each MoM's guests (bounded by timeouts.provision,
# default 240 s) and the primary's prologue then waits for every other node (again
# bounded by timeouts.provision), so the default is 2 x 240 + 60 = 540 s; keep
# alarm >= 2 x timeouts.provision + 60. The hook ends vtorque itself before the alarm.
# --no-abort-event: leave out execjob_abort (PBS Pro 18.x has no such event).
# --node (on every compute node, as root): install the job shell the launch hook gives VM
# jobs (config batch.job_shell; default /usr/local/libexec/vtorque/job-shell) from
# contrib/torque_hooks/job-shell.in; nothing else, no qmgr.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=$(cd "$here/../.." && pwd)/.venv/bin/python
config=/etc/vtorque/vtorque.yaml
alarm=540
name=vtorque
output=/etc/vtorque/openpbs-hook.py
qmgr=
apply=no
uninstall=no
node=no
job_shell=/usr/local/libexec/vtorque/job-shell
events="execjob_begin,execjob_prologue,execjob_launch,execjob_end,execjob_abort"

die() { echo "install.sh: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] || die "option $1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --python) need "$@"; python=$2; shift 2 ;;
        --config) need "$@"; config=$2; shift 2 ;;
        --alarm) need "$@"; alarm=$2; shift 2 ;;
        --hook-name) need "$@"; name=$2; shift 2 ;;
        --output) need "$@"; output=$2; shift 2 ;;
        --qmgr) need "$@"; qmgr=$2; shift 2 ;;
        --no-abort-event) events="execjob_begin,execjob_prologue,execjob_launch,execjob_end"; shift ;;
        --apply) apply=yes; shift ;;
        --uninstall) uninstall=yes; shift ;;
        --node) node=yes; shift ;;
        --job-shell) need "$@"; job_shell=$2; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) die "unknown option $1" ;;
    esac
done

# Every value ends up in a Python string literal, a sed expression or a qmgr command:
# accept only plain absolute paths, a plain name and a number.
safe_path() {
    case "$2" in
        /*) ;;
        *) die "$1 must be an absolute path: $2" ;;
    esac
    # {node} (in --config only) stands for the MoM's node name, filled in by the hook.
    plain=$2
    [ "$1" = --config ] && plain=$(printf '%s' "$2" | sed 's/{node}/node/g')
    if printf '%s' "$plain" | grep -q '[^A-Za-z0-9._/+-]'; then
        die "$1 may only hold letters, digits and . _ / + - (and {node} in --config): $2"
    fi
    case "/$2/" in
        */../*) die "$1 must not contain '..': $2" ;;
    esac
}
if [ "$node" = yes ]; then
    safe_path --python "$python"
    safe_path --config "$config"
    safe_path --job-shell "$job_shell"
    "$python" -E -s -c 'import vtorque' >/dev/null 2>&1 \
        || { echo "install.sh: $python cannot import vtorque" >&2; exit 1; }
    mkdir -p "$(dirname "$job_shell")"
    tmp=$(mktemp "$(dirname "$job_shell")/.vtorque.XXXXXX")
    sed -e "s|@PYTHON@|$python|g" -e "s|@CONFIG@|$config|g" \
        "$here/../torque_hooks/job-shell.in" > "$tmp"
    [ "$(id -u)" -ne 0 ] || chown 0:0 "$tmp"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$job_shell"
    echo "install.sh: job shell installed: $job_shell"
    exit 0
fi
printf '%s' "$name" | grep -qx '[A-Za-z][A-Za-z0-9_]*' || die "bad hook name: $name"
if [ -z "$qmgr" ]; then
    exec_dir=$(sed -n 's/^PBS_EXEC=//p' /etc/pbs.conf 2>/dev/null | tail -n 1)
    qmgr=${exec_dir:-/opt/pbs}/bin/qmgr
fi
safe_path --qmgr "$qmgr"

run() {   # one qmgr command: printed, or run with --apply
    if [ "$apply" = yes ]; then
        "$qmgr" -c "$1"
    else
        printf "%s -c '%s'\n" "$qmgr" "$1"
    fi
}

if [ "$uninstall" = yes ]; then
    if [ "$apply" = yes ] && ! "$qmgr" -c "list hook $name" >/dev/null 2>&1; then
        echo "install.sh: no hook $name in PBS; nothing to remove"
        exit 0
    fi
    run "set hook $name enabled = false"
    run "delete hook $name"
    exit 0
fi

safe_path --python "$python"
safe_path --config "$config"
safe_path --output "$output"
printf '%s' "$alarm" | grep -qx '[0-9][0-9]*' || die "--alarm must be a number of seconds"
[ "$alarm" -ge 10 ] && [ "$alarm" -le 86400 ] || die "--alarm must be 10..86400 seconds"
if ! "$python" -E -s -c 'import vtorque' >/dev/null 2>&1; then
    echo "install.sh: warning: $python cannot import vtorque on this host; it must on" \
         "every MoM" >&2
fi

# Render: replace the three constant lines of the hook, then check they took.
dir=$(dirname "$output")
mkdir -p "$dir"
tmp=$(mktemp "$dir/.vtorque-hook.XXXXXX")
trap 'rm -f "$tmp"' EXIT
sed -e "s|^VTORQUE_PYTHON = .*|VTORQUE_PYTHON = \"$python\"|" \
    -e "s|^VTORQUE_CONFIG = .*|VTORQUE_CONFIG = \"$config\"|" \
    -e "s|^HOOK_ALARM = .*|HOOK_ALARM = $alarm|" "$here/vtorque_hook.py" > "$tmp"
grep -qx "VTORQUE_PYTHON = \"$python\"" "$tmp" && grep -qx "HOOK_ALARM = $alarm" "$tmp" \
    && grep -qx "VTORQUE_CONFIG = \"$config\"" "$tmp" || die "rendering $output failed"
chmod 0644 "$tmp"
mv -f "$tmp" "$output"
trap - EXIT
echo "install.sh: hook rendered to $output (python $python, config $config, alarm $alarm s)" >&2

if [ "$apply" = yes ] && "$qmgr" -c "list hook $name" >/dev/null 2>&1; then
    echo "install.sh: hook $name exists; updating it" >&2
else
    run "create hook $name"
fi
run "set hook $name event = \"$events\""
run "set hook $name user = pbsadmin"
run "set hook $name alarm = $alarm"
run "set hook $name fail_action = offline_vnodes"
run "import hook $name application/x-python default $output"
run "set hook $name enabled = true"
