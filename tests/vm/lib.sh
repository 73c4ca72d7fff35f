# baton VM scenario library (bash, which is /bin/sh in the VM; busybox sh works too
# but prefers its own applets, e.g. its `ip`). A scenario sources it:
#
#     . "$VM_LIB"
#     vm_cluster 3                # namespaces node1..node3, veth ic0 on a bridge, configs, secret
#     vm_start_all
#     vm_wait_up 60
#     vm_crash 3                  # SIGKILL of everything in node3's namespace; $VM_T = CLOCK_MONOTONIC ns just before
#     e=$(vm_wait_event 1 '.event == "peer_silent" and .node == 3' 20) || vm_die "no peer_silent"
#
# Every node N has a network namespace "nodeN" with interface ic0 (and ic1..
# with VM_LINKS > 1) at 10.(77+L).0.N/24, joined through bridge brL in the
# namespace "sw" (its ports are hNlL), a directory $VM_BASE/nodeN with
# baton.toml, agent.log, pid, state/ (events.jsonl, cluster.json) and run/,
# and a disk: /dev/baton/nodeN (its own iSCSI session, so its own I_T nexus on
# the one LU) and /dev/baton/nodeN.sg.
#
# Agents run in the node's network namespace only (nsenter --net), in the VM's
# mount namespace, so `baton status` and bpftool see their pinned maps. Every
# wait has a timeout in seconds; on a timeout the function returns 1 (vm_die
# ends the scenario with a message on stderr).
#
# Settings (environment, before vm_cluster): VM_INTERVAL_MS (100),
# VM_MISSES (5), VM_LINKS (1), VM_XDP_MODE (native), VM_RT_PRIO (10),
# VM_CLUSTER_NAME (vm), VM_CLUSTER_ID (4242), VM_START_TIMEOUT (60 s),
# VM_EXTRA_CONFIG (TOML appended to every node's baton.toml). A scenario may
# define vm_extra_config(), called with the node number, whose output is
# appended to that node's baton.toml (e.g. a [[disk]] with /dev/baton/nodeN).

VM_BASE=${VM_BASE:-/run/baton-vm}
VM_CLUSTER_NAME=${VM_CLUSTER_NAME:-vm}
VM_CLUSTER_ID=${VM_CLUSTER_ID:-4242}
VM_INTERVAL_MS=${VM_INTERVAL_MS:-100}
VM_MISSES=${VM_MISSES:-5}
VM_LINKS=${VM_LINKS:-1}
VM_XDP_MODE=${VM_XDP_MODE:-native}
VM_RT_PRIO=${VM_RT_PRIO:-10}
VM_START_TIMEOUT=${VM_START_TIMEOUT:-60}
VM_SECRET_HEX=${VM_SECRET_HEX:-7b1f0e9a3c5d2846a1b2c3d4e5f60718}

# ------------------------------------------------------------------ basics

# CLOCK_MONOTONIC in ns (the clock of events.jsonl's agent_ns and kernel_ns).
vm_now_ns() { awk '/^now at/ { print $3; exit }' /proc/timer_list; }
# Milliseconds since a vm_now_ns value.
vm_ms_since() { echo $(( ($(vm_now_ns) - $1) / 1000000 )); }
vm_uptime() { cut -d' ' -f1 /proc/uptime; }
# A line on stdout with the VM's uptime.
vm_say() { echo "[$(vm_uptime)] $*"; }
# Ends the scenario with exit status 1 and MESSAGE on stderr.
vm_die() { echo "FAIL: $*" >&2; exit 1; }
# The directory of node N.
vm_dir() { echo "$VM_BASE/node$1"; }
# The last lines of every node's agent log (for a failure message: a
# cluster that did not form or a node that did not join says why there).
vm_logs() {
    for d in "$VM_BASE"/node*; do
        [ -f "$d/agent.log" ] || continue
        echo "--- $(basename "$d") agent.log (last 25 lines)"
        tail -n 25 "$d/agent.log"
    done
}
# The disk of node N (a block device; $(vm_disk N).sg is its sg node).
vm_disk() { echo "/dev/baton/node$1"; }
# Runs a command in node N's network namespace (only: mounts are shared).
vm_ns() { _n=$1; shift; nsenter --net=/run/netns/node$_n "$@"; }
# The pid of node N's agent (empty when none was started).
vm_pid() { cat "$(vm_dir $1)/pid" 2>/dev/null; }
# True while node N's agent process exists (a stopped one counts).
vm_alive() { _p=$(vm_pid $1); [ -n "$_p" ] && kill -0 "$_p" 2>/dev/null; }
# Polls COMMAND every 0.1 s until it succeeds or TIMEOUT seconds passed.
vm_wait_for() {
    _t=$1; shift
    _end=$(( $(vm_now_ns) + _t * 1000000000 ))
    while ! "$@"; do
        [ "$(vm_now_ns)" -lt "$_end" ] || return 1
        sleep 0.1
    done
}

# ------------------------------------------------------------------ cluster

# vm_cluster [N]: the namespaces, links, secret and configurations of N nodes
# (default $VM_NODES, the number of disks).
vm_cluster() {
    VM_N=${1:-$VM_NODES}
    mkdir -p "$VM_BASE"
    ip netns add sw || vm_die "ip netns add sw"
    ip -n sw link set lo up
    _l=0
    while [ $_l -lt "$VM_LINKS" ]; do
        ip -n sw link add br$_l type bridge || vm_die "bridge br$_l"
        ip -n sw link set br$_l up
        _l=$((_l + 1))
    done
    _i=1
    while [ $_i -le "$VM_N" ]; do
        ip netns add node$_i || vm_die "ip netns add node$_i"
        ip -n node$_i link set lo up
        _l=0
        while [ $_l -lt "$VM_LINKS" ]; do
            ip link add ic$_l netns node$_i type veth peer name h${_i}l$_l netns sw || vm_die "veth of node$_i"
            ip -n sw link set h${_i}l$_l master br$_l
            ip -n sw link set h${_i}l$_l up
            ip -n node$_i addr add 10.$((77 + _l)).0.$_i/24 dev ic$_l
            ip -n node$_i link set ic$_l up
            _l=$((_l + 1))
        done
        _i=$((_i + 1))
    done
    umask 077
    echo "$VM_SECRET_HEX" > "$VM_BASE/secret"
    umask 022
    _i=1
    while [ $_i -le "$VM_N" ]; do
        vm_write_config $_i
        _i=$((_i + 1))
    done
    # As the README advises for a small, busy machine: received heartbeats
    # must not wait behind normal-priority work in ksoftirqd.
    for _p in $(pidof ksoftirqd/0 ksoftirqd/1 ksoftirqd/2 ksoftirqd/3 2>/dev/null); do
        chrt -f -p 20 $_p > /dev/null 2>&1
    done
}

# vm_write_config N: (re)writes node N's baton.toml from the settings.
vm_write_config() {
    _d=$(vm_dir $1)
    mkdir -p "$_d/state" "$_d/run"
    _tick=$((VM_INTERVAL_MS * VM_MISSES * 1000 / 30))
    [ $_tick -ge 100 ] || _tick=100
    [ $_tick -le 1000 ] || _tick=1000
    {
        printf '[cluster]\nname = "%s"\nid = %s\nsecret_file = "%s"\n\n' "$VM_CLUSTER_NAME" "$VM_CLUSTER_ID" "$VM_BASE/secret"
        printf '[node]\nid = %s\nname = "node%s"\n\n' "$1" "$1"
        printf '[heartbeat]\ninterval_ms = %s\nmisses = %s\nwatchdog_tick_us = %s\nrealtime_priority = %s\n\n' \
            "$VM_INTERVAL_MS" "$VM_MISSES" "$_tick" "$VM_RT_PRIO"
        printf '[datapath]\nxdp_mode = "%s"\n\n' "$VM_XDP_MODE"
        printf '[paths]\nbpffs_dir = "/sys/fs/bpf/baton/%s-node%s"\nstate_dir = "%s"\nrun_dir = "%s"\n' \
            "$VM_CLUSTER_NAME" "$1" "$_d/state" "$_d/run"
        _l=0
        while [ $_l -lt "$VM_LINKS" ]; do
            printf '\n[[link]]\nname = "ring%s"\ninterface = "ic%s"\naddress = "10.%s.0.%s"\n' $_l $_l $((77 + _l)) "$1"
            _l=$((_l + 1))
        done
        _j=1
        while [ $_j -le "$VM_N" ]; do
            if [ $_j -ne "$1" ]; then
                _a=""
                _l=0
                while [ $_l -lt "$VM_LINKS" ]; do
                    _a="$_a${_a:+, }\"10.$((77 + _l)).0.$_j\""
                    _l=$((_l + 1))
                done
                printf '\n[[peer]]\nid = %s\nname = "node%s"\naddresses = [%s]\n' $_j $_j "$_a"
            fi
            _j=$((_j + 1))
        done
        if [ -n "$VM_EXTRA_CONFIG" ]; then printf '\n%s\n' "$VM_EXTRA_CONFIG"; fi
        if type vm_extra_config > /dev/null 2>&1; then echo; vm_extra_config "$1"; fi
    } > "$_d/baton.toml"
}

# The configuration file of node N.
vm_config() { echo "$(vm_dir $1)/baton.toml"; }

# ------------------------------------------------------------------ agents

# vm_start N: starts node N's agent (`baton run`, output appended to
# agent.log) and waits until its control socket exists.
vm_start() {
    _d=$(vm_dir $1)
    nsenter --net=/run/netns/node$1 baton run --config "$_d/baton.toml" >> "$_d/agent.log" 2>&1 &
    echo $! > "$_d/pid"
    _end=$(( $(vm_now_ns) + VM_START_TIMEOUT * 1000000000 ))
    while [ ! -S "$_d/run/$VM_CLUSTER_NAME.sock" ]; do
        if ! kill -0 "$(vm_pid $1)" 2>/dev/null; then
            tail -n 30 "$_d/agent.log" >&2
            vm_die "the agent of node$1 exited while starting"
        fi
        [ "$(vm_now_ns)" -lt "$_end" ] || { tail -n 30 "$_d/agent.log" >&2; vm_die "the agent of node$1 did not start in ${VM_START_TIMEOUT} s"; }
        sleep 0.1
    done
}

# vm_start_all: starts every node's agent, one after the other.
vm_start_all() {
    _k=1
    while [ $_k -le "$VM_N" ]; do
        vm_start $_k
        _k=$((_k + 1))
    done
}

# vm_kill N [SIGNAL]: sends SIGNAL (KILL) to node N's agent; $VM_T is
# CLOCK_MONOTONIC ns just before. After KILL it waits for the process to go.
vm_kill() {
    _p=$(vm_pid $1)
    [ -n "$_p" ] || vm_die "vm_kill: node$1 has no agent"
    VM_T=$(vm_now_ns)
    kill -"${2:-KILL}" "$_p"
    if [ "${2:-KILL}" = KILL ]; then
        wait "$_p" 2>/dev/null
        rm -f "$(vm_dir $1)/pid"
    fi
}

# vm_crash N: node N dies: SIGKILL to every process in its network namespace
# (the agent's guard and the applications first, the agent last, in one
# kill(1)), so nothing of the node sends a distress; $VM_T is CLOCK_MONOTONIC
# ns just before. (vm_kill N kills the agent alone: its guard then sends a
# distress for the dead life.)
vm_crash() {
    _p=$(vm_pid $1)
    _o=""
    for _q in $(ip netns pids node$1); do
        [ "$_q" = "$_p" ] || _o="$_o $_q"
    done
    VM_T=$(vm_now_ns)
    # shellcheck disable=SC2086
    kill -KILL $_o $_p 2>/dev/null
    if [ -n "$_p" ]; then
        wait "$_p" 2>/dev/null
        rm -f "$(vm_dir $1)/pid"
    fi
    # A crashed machine comes back with an empty /run.
    rm -f "$(vm_dir $1)/run/$VM_CLUSTER_NAME.sock"
}

# vm_stop N [TIMEOUT]: SIGTERM to node N's agent and waits (20 s, then
# SIGKILL); returns the agent's exit status.
vm_stop() {
    _p=$(vm_pid $1)
    [ -n "$_p" ] || return 0
    kill -TERM "$_p" 2>/dev/null
    _end=$(( $(vm_now_ns) + ${2:-20} * 1000000000 ))
    while kill -0 "$_p" 2>/dev/null; do
        if [ "$(vm_now_ns)" -ge "$_end" ]; then
            echo "node$1's agent ignored SIGTERM; SIGKILL" >&2
            kill -KILL "$_p"
            break
        fi
        sleep 0.1
    done
    wait "$_p" 2>/dev/null
    _rc=$?
    rm -f "$(vm_dir $1)/pid"
    return $_rc
}

# vm_stop_all: stops every agent still running.
vm_stop_all() {
    _k=1
    while [ $_k -le "${VM_N:-0}" ]; do
        vm_stop $_k
        _k=$((_k + 1))
    done
}

# The agent log of node N.
vm_log() { cat "$(vm_dir $1)/agent.log"; }

# ------------------------------------------------------------------ state

# `baton status --json` of node N.
vm_status() { baton status --json --config "$(vm_config $1)"; }
# The state of peer ID as node N's agent sees it ("up", "silent", ...).
vm_peer_state() { vm_status $1 2>/dev/null | jq -r --argjson id "$2" '.peers[] | select(.id == $id) | .state'; }
# The membership snapshot (state/cluster.json) of node N.
vm_membership() { cat "$(vm_dir $1)/state/cluster.json" 2>/dev/null; }

# vm_events N: node N's events.jsonl.
vm_events() { cat "$(vm_dir $1)/state/events.jsonl" 2>/dev/null; }

# vm_wait_event N FILTER [TIMEOUT]: waits for an event of node N for which
# the jq expression FILTER is true, e.g. '.event == "peer_silent" and
# .node == 3'; prints it (one JSON line). Returns 1 after TIMEOUT (10) s.
vm_wait_event() {
    _f="$(vm_dir $1)/state/events.jsonl"
    _end=$(( $(vm_now_ns) + ${3:-10} * 1000000000 ))
    while :; do
        if [ -f "$_f" ]; then
            _e=$(jq -c "select($2)" "$_f" 2>/dev/null | head -n 1)
            if [ -n "$_e" ]; then echo "$_e"; return 0; fi
        fi
        [ "$(vm_now_ns)" -lt "$_end" ] || return 1
        sleep 0.1
    done
}

# The running nodes (those whose agent process exists), one per line.
vm_running() {
    _k=1
    while [ $_k -le "${VM_N:-0}" ]; do
        vm_alive $_k && echo $_k
        _k=$((_k + 1))
    done
}

_vm_all_up() {
    for _a in $(vm_running); do
        _st=$(vm_status $_a 2>/dev/null) || return 1
        for _b in $(vm_running); do
            [ "$_a" = "$_b" ] && continue
            [ "$(echo "$_st" | jq -r --argjson id "$_b" '.peers[] | select(.id == $id) | .state')" = up ] || return 1
        done
    done
}
# vm_wait_up [TIMEOUT]: waits until every running agent sees every other up.
vm_wait_up() { vm_wait_for "${1:-30}" _vm_all_up; }

_vm_all_joined() {
    _v=""
    for _a in $(vm_running); do
        _m=$(vm_membership $_a)
        [ "$(echo "$_m" | jq -r '.my_state')" = joined ] || return 1
        [ "$(echo "$_m" | jq -r '.transitions | length')" = 0 ] || return 1
        _w=$(echo "$_m" | jq -c '.view')
        [ -z "$_v" ] || [ "$_v" = "$_w" ] || return 1
        _v=$_w
    done
}
# vm_wait_joined [TIMEOUT]: waits until every running agent is Joined, with
# no transition in flight, and all follow the same view.
vm_wait_joined() { vm_wait_for "${1:-60}" _vm_all_joined; }

# ------------------------------------------------------------------ links

# vm_cut N [LINK]: cuts node N's link LINK (0) at the switch; $VM_T is the
# CLOCK_MONOTONIC ns just before.
vm_cut() { VM_T=$(vm_now_ns); ip -n sw link set h${1}l${2:-0} down; }
# vm_heal N [LINK]: restores it.
vm_heal() { ip -n sw link set h${1}l${2:-0} up; }
