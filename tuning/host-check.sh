#!/usr/bin/env bash
# host-check.sh — read-only check of a Linux host for running ringkv.
#
# Prints one line per check:  STATUS  CHECK  current: VALUE  (recommended: VALUE)
#   OK    the setting matches the recommendation in tuning/README.md
#   WARN  it does not, and it affects ringkv's correctness or tail latency
#   INFO  a fact worth knowing, or the setting is not available on this host
#
# It never changes the system. The only thing it writes is one 4 KiB temporary file
# in --data-dir (the O_DIRECT probe), removed before the script exits. It needs no root.
#
# Usage: host-check.sh [--data-dir DIR] [--strict] [--help]
#   --strict   exit 1 if any WARN was printed (default: always exit 0)
set -u

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
}

data_dir=""
strict=0
while [ $# -gt 0 ]; do
    case "$1" in
        --data-dir) [ $# -ge 2 ] || { echo "host-check: --data-dir needs a directory" >&2; exit 2; }
                    data_dir="$2"; shift 2 ;;
        --data-dir=*) data_dir="${1#--data-dir=}"; shift ;;
        --strict) strict=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "host-check: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done

warnings=0
# report STATUS CHECK CURRENT RECOMMENDED
report() {
    local status="$1" check="$2" current="$3" recommended="$4"
    [ "$status" = WARN ] && warnings=$((warnings + 1))
    if [ -n "$recommended" ]; then
        printf '%-4s  %-20s current: %s  (recommended: %s)\n' "$status" "$check" "$current" "$recommended"
    else
        printf '%-4s  %-20s %s\n' "$status" "$check" "$current"
    fi
}

# read_first FILE: print the first line of FILE, or nothing (and status 1) if unreadable.
read_first() {
    local line
    [ -r "$1" ] || return 1
    IFS= read -r line < "$1" || [ -n "${line:-}" ] || return 1
    printf '%s' "$line"
}

# bracketed "always [madvise] never" -> madvise
bracketed() {
    local s="$1"
    s="${s#*[}"
    printf '%s' "${s%%]*}"
}

# count_cpulist "0-3,8,10-11" -> 7 ; empty -> 0
count_cpulist() {
    local list="$1" n=0 part lo hi
    [ -z "$list" ] && { echo 0; return; }
    local IFS=,
    for part in $list; do
        case "$part" in
            *-*) lo="${part%-*}"; hi="${part#*-}"; n=$((n + hi - lo + 1)) ;;
            '') ;;
            *) n=$((n + 1)) ;;
        esac
    done
    echo "$n"
}

# --- kernel --------------------------------------------------------------------------
kernel="$(uname -r 2>/dev/null || echo unknown)"
kmajor="${kernel%%.*}"
krest="${kernel#*.}"
kminor="${krest%%[!0-9]*}"
if [ -n "$kmajor" ] && [ -n "$kminor" ] && [ "$kmajor" -eq "$kmajor" ] 2>/dev/null; then
    if [ "$kmajor" -gt 5 ] || { [ "$kmajor" -eq 5 ] && [ "$kminor" -ge 8 ]; }; then
        report OK kernel "$kernel" ">= 5.8 (glommio's minimum)"
    else
        report WARN kernel "$kernel" ">= 5.8 (glommio's minimum)"
    fi
else
    report INFO kernel "cannot parse kernel version '$kernel'" ""
fi

# --- io_uring ------------------------------------------------------------------------
# Since Linux 6.6: 0 = allowed, 1 = only root/CAP_SYS_ADMIN or members of io_uring_group,
# 2 = disabled for everyone.
if disabled="$(read_first /proc/sys/kernel/io_uring_disabled)"; then
    case "$disabled" in
        0) report OK io_uring_disabled 0 0 ;;
        1) group="$(read_first /proc/sys/kernel/io_uring_group || echo -1)"
           report WARN io_uring_disabled "1 (io_uring_group=$group)" "0, or run ringkv in group $group" ;;
        *) report WARN io_uring_disabled "$disabled" "0 (ringkv cannot run with io_uring disabled)" ;;
    esac
else
    report INFO io_uring_disabled "not available (sysctl exists since Linux 6.6)" ""
fi

# A real probe: create a one-entry ring and close it. This catches seccomp filters
# (containers) and kernels built without io_uring, which the sysctl cannot show.
# io_uring_setup is syscall 425 on every architecture except alpha.
if command -v python3 >/dev/null 2>&1; then
    probe="$(python3 - <<'EOF' 2>&1
import ctypes, os, platform
if platform.machine().startswith("alpha"):
    print("skip alpha"); raise SystemExit
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
fd = libc.syscall(425, 1, params)
if fd >= 0:
    os.close(fd); print("ok")
else:
    e = ctypes.get_errno(); print("errno %d %s" % (e, os.strerror(e)))
EOF
)"
    case "$probe" in
        ok) report OK io_uring_setup "ring created and closed" "works" ;;
        "skip alpha") report INFO io_uring_setup "probe skipped on alpha" "" ;;
        errno*) report WARN io_uring_setup "fails: ${probe#errno }" "works (check seccomp/container profile, io_uring_disabled)" ;;
        *) report INFO io_uring_setup "probe failed to run: $probe" "" ;;
    esac
else
    report INFO io_uring_setup "not available (python3 missing, probe skipped)" ""
fi

# --- resource limits (of this shell; a systemd unit sets its own) ---------------------
memlock="$(ulimit -l 2>/dev/null || echo unknown)"
case "$memlock" in
    unlimited) report OK memlock "unlimited" "unlimited" ;;
    unknown) report INFO memlock "not available" "" ;;
    *) if [ "$memlock" -lt 512 ] 2>/dev/null; then
           report WARN memlock "${memlock} KiB (glommio refuses to start below 512 KiB)" "unlimited (LimitMEMLOCK=infinity)"
       else
           report WARN memlock "${memlock} KiB" "unlimited (LimitMEMLOCK=infinity; io_uring buffers count against it)"
       fi ;;
esac

nofile="$(ulimit -n 2>/dev/null || echo unknown)"
nofile_hard="$(ulimit -Hn 2>/dev/null || echo unknown)"
case "$nofile" in
    unlimited) report OK nofile "unlimited" ">= 65536 (unit uses 1048576)" ;;
    unknown) report INFO nofile "not available" "" ;;
    *) if [ "$nofile" -ge 65536 ] 2>/dev/null; then
           report OK nofile "$nofile (hard $nofile_hard)" ">= 65536 (unit uses 1048576)"
       else
           report WARN nofile "$nofile (hard $nofile_hard)" ">= 65536 (unit uses 1048576)"
       fi ;;
esac

# --- CPU -----------------------------------------------------------------------------
governors=""
for g in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor; do
    [ -r "$g" ] || continue
    v="$(read_first "$g")" || continue
    case " $governors " in *" $v "*) ;; *) governors="${governors:+$governors }$v" ;; esac
done
if [ -z "$governors" ]; then
    report INFO cpu_governor "not available (no cpufreq; common in VMs)" ""
elif [ "$governors" = performance ]; then
    report OK cpu_governor "performance" "performance"
else
    report WARN cpu_governor "$governors" "performance"
fi

if idle_driver="$(read_first /sys/devices/system/cpu/cpuidle/current_driver)"; then
    states=""
    for s in /sys/devices/system/cpu/cpu0/cpuidle/state[0-9]*; do
        [ -d "$s" ] || continue
        name="$(read_first "$s/name" || echo '?')"
        lat="$(read_first "$s/latency" || echo '?')"
        off="$(read_first "$s/disable" || echo 0)"
        [ "$off" = 1 ] && name="$name(off)"
        states="${states:+$states }${name}:${lat}us"
    done
    report INFO cpu_idle "driver $idle_driver; cpu0 states (exit latency) ${states:-none}" ""
else
    report INFO cpu_idle "not available" ""
fi

online_list="$(read_first /sys/devices/system/cpu/online || echo '')"
isolated_list="$(read_first /sys/devices/system/cpu/isolated || echo '')"
nohz_list="$(read_first /sys/devices/system/cpu/nohz_full || echo '')"
[ "$nohz_list" = "(null)" ] && nohz_list=""
usable="$(nproc 2>/dev/null || echo '?')"
if [ -n "$online_list" ]; then
    report INFO cpus "online $(count_cpulist "$online_list") ($online_list), usable by this shell $usable, isolated $(count_cpulist "$isolated_list") (${isolated_list:-none}), nohz_full ${nohz_list:-none}" ""
else
    report INFO cpus "not available (usable by this shell: $usable)" ""
fi

cmdline="$(read_first /proc/cmdline || echo '')"
isol_args=""
for arg in $cmdline; do
    case "$arg" in isolcpus=*|nohz_full=*|rcu_nocbs=*|irqaffinity=*) isol_args="${isol_args:+$isol_args }$arg" ;; esac
done
report INFO cpu_isolation "kernel args: ${isol_args:-none}" ""

irqbalance=no
for c in /proc/[0-9]*/comm; do
    if [ "$(read_first "$c" 2>/dev/null || true)" = irqbalance ]; then irqbalance=yes; break; fi
done
report INFO irqbalance "running: $irqbalance (if yes, ban the shard CPUs; see README)" ""

if cs="$(read_first /sys/devices/system/clocksource/clocksource0/current_clocksource)"; then
    case "$cs" in
        hpet|acpi_pm) report WARN clocksource "$cs (clock reads are system calls)" "tsc (or kvm-clock in a VM)" ;;
        *) report OK clocksource "$cs" "tsc (or kvm-clock in a VM)" ;;
    esac
else
    report INFO clocksource "not available" ""
fi

# --- memory --------------------------------------------------------------------------
if thp="$(read_first /sys/kernel/mm/transparent_hugepage/enabled)"; then
    thp="$(bracketed "$thp")"
    case "$thp" in
        madvise|never) report OK thp_enabled "$thp" "madvise or never" ;;
        *) report WARN thp_enabled "$thp" "madvise or never" ;;
    esac
else
    report INFO thp_enabled "not available" ""
fi
if thpd="$(read_first /sys/kernel/mm/transparent_hugepage/defrag)"; then
    thpd="$(bracketed "$thpd")"
    case "$thpd" in
        always) report WARN thp_defrag "$thpd (synchronous compaction on page faults)" "madvise, defer+madvise or never" ;;
        *) report OK thp_defrag "$thpd" "madvise, defer+madvise or never" ;;
    esac
else
    report INFO thp_defrag "not available" ""
fi

swap_active=no
if [ -r /proc/swaps ]; then
    # the first line of /proc/swaps is a header
    [ "$(wc -l < /proc/swaps)" -gt 1 ] && swap_active=yes
fi
if sw="$(read_first /proc/sys/vm/swappiness)"; then
    if [ "$sw" -le 10 ] 2>/dev/null; then
        report OK swappiness "$sw (swap active: $swap_active)" "<= 10"
    elif [ "$swap_active" = no ]; then
        report OK swappiness "$sw (no swap active, so no anonymous memory is swapped)" "<= 10"
    else
        report WARN swappiness "$sw (swap active)" "<= 10 (or MemorySwapMax=0 for the unit)"
    fi
else
    report INFO swappiness "not available" ""
fi

# --- network -------------------------------------------------------------------------
# glommio 0.9's TcpListener::bind asks for a backlog of 1024; the kernel caps it here.
if v="$(read_first /proc/sys/net/core/somaxconn)"; then
    if [ "$v" -ge 1024 ] 2>/dev/null; then
        report OK somaxconn "$v" ">= 1024 (4096)"
    else
        report WARN somaxconn "$v" ">= 1024 (4096)"
    fi
else
    report INFO somaxconn "not available" ""
fi
if v="$(read_first /proc/sys/net/ipv4/tcp_max_syn_backlog)"; then
    if [ "$v" -ge 1024 ] 2>/dev/null; then
        report OK tcp_max_syn_backlog "$v" ">= 1024 (4096)"
    else
        report WARN tcp_max_syn_backlog "$v" ">= 1024 (4096)"
    fi
else
    report INFO tcp_max_syn_backlog "not available" ""
fi
bp="$(read_first /proc/sys/net/core/busy_poll || echo n/a)"
br="$(read_first /proc/sys/net/core/busy_read || echo n/a)"
report INFO busy_poll "net.core.busy_poll=$bp busy_read=$br (0 unless a sweep shows a win)" ""

# --- data directory ------------------------------------------------------------------
if [ -z "$data_dir" ]; then
    report INFO data_dir "no --data-dir given; disk checks skipped" ""
elif [ ! -d "$data_dir" ]; then
    report WARN data_dir "$data_dir is not a directory" "an existing directory on XFS or ext4"
else
    fstype=""; fsopts=""; majmin=""
    if command -v findmnt >/dev/null 2>&1; then
        fstype="$(findmnt -n -o FSTYPE -T "$data_dir" 2>/dev/null | head -n1)"
        fsopts="$(findmnt -n -o OPTIONS -T "$data_dir" 2>/dev/null | head -n1)"
        majmin="$(findmnt -n -o MAJ:MIN -T "$data_dir" 2>/dev/null | head -n1 | tr -d ' ')"
    fi
    [ -z "$fstype" ] && fstype="$(stat -f -c %T "$data_dir" 2>/dev/null || echo '')"
    [ -z "$majmin" ] && majmin="$(stat -c '%Hd:%Ld' "$data_dir" 2>/dev/null || echo '')"

    case "$fstype" in
        xfs|ext4) report OK filesystem "$fstype" "xfs or ext4" ;;
        tmpfs|ramfs) report WARN filesystem "$fstype (data is lost on reboot; glommio falls back to buffered I/O)" "xfs or ext4 on a real disk" ;;
        '') report INFO filesystem "not available" "" ;;
        *) report INFO filesystem "$fstype (ringkv is tested on ext4)" "xfs or ext4" ;;
    esac
    if [ -n "$fsopts" ]; then
        case ",$fsopts," in
            *,noatime,*) atime=noatime ;;
            *,relatime,*) atime=relatime ;;
            *,strictatime,*) atime=strictatime ;;
            *) atime="atime default" ;;
        esac
        note=""
        case ",$fsopts," in *,discard,*) note="; online discard is on (fstrim.timer is gentler)" ;; esac
        case ",$fsopts," in *,data=journal,*) note="$note; data=journal: ext4 serves O_DIRECT as buffered I/O" ;; esac
        report INFO mount_options "$atime$note" "noatime, no online discard"
    else
        report INFO mount_options "not available" ""
    fi

    # Block device: /sys/dev/block/MAJ:MIN is the partition or the disk; a partition has
    # its queue/ one directory up.
    queue=""; devname=""
    if [ -n "$majmin" ] && [ -e "/sys/dev/block/$majmin" ]; then
        devpath="$(readlink -f "/sys/dev/block/$majmin")"
        if [ -d "$devpath/queue" ]; then
            queue="$devpath/queue"
        elif [ -d "$devpath/../queue" ]; then
            queue="$(readlink -f "$devpath/..")/queue"
        fi
        devname="$(basename "$(dirname "$queue")")"
    fi
    if [ -n "$queue" ] && sched_line="$(read_first "$queue/scheduler")"; then
        sched="$(bracketed "$sched_line")"
        case "$sched_line" in *'['*) ;; *) sched="$sched_line" ;; esac
        rot="$(read_first "$queue/rotational" || echo '?')"
        case "$devname" in
            nvme*)
                if [ "$sched" = none ]; then report OK io_scheduler "$devname: none" "none"
                else report WARN io_scheduler "$devname: $sched" "none"; fi ;;
            *)
                if [ "$rot" = 1 ]; then
                    report INFO io_scheduler "$devname: $sched (reports rotational; virtual disks often do)" "none on SSD/NVMe, mq-deadline on spinning disks"
                else
                    case "$sched" in
                        none|mq-deadline) report OK io_scheduler "$devname: $sched" "none (mq-deadline acceptable on SATA SSD)" ;;
                        *) report WARN io_scheduler "$devname: $sched" "none" ;;
                    esac
                fi ;;
        esac
        nr="$(read_first "$queue/nr_requests" || echo '?')"
        lbs="$(read_first "$queue/logical_block_size" || echo '?')"
        wc_mode="$(read_first "$queue/write_cache" || echo '?')"
        iopoll="$(read_first "$queue/io_poll" || echo '?')"
        fua="$(read_first "$queue/fua" || echo '?')"
        report INFO block_queue "$devname: nr_requests=$nr write_cache='$wc_mode' fua=$fua io_poll=$iopoll" ""
        if [ "$lbs" -le 4096 ] 2>/dev/null; then
            report OK logical_block "$devname: $lbs bytes" "<= 4096 (ringkv aligns direct I/O to 4096)"
        else
            report WARN logical_block "$devname: $lbs bytes" "<= 4096 (ringkv aligns direct I/O to 4096)"
        fi
    else
        report INFO io_scheduler "not available (no block device behind ${majmin:-?}: tmpfs, overlay, btrfs or network fs)" ""
    fi
    if pq="$(read_first /sys/module/nvme/parameters/poll_queues)"; then
        report INFO nvme_poll_queues "$pq (polled completions need > 0; see README)" ""
    fi

    # O_DIRECT probe: write one 4 KiB block with O_DIRECT into a temp file, then remove it.
    if [ ! -w "$data_dir" ]; then
        report INFO o_direct "not tested: $data_dir is not writable by $(id -un 2>/dev/null || echo this user)" ""
    elif ! command -v dd >/dev/null 2>&1 || ! command -v mktemp >/dev/null 2>&1; then
        report INFO o_direct "not available (dd or mktemp missing)" ""
    else
        probe_file="$(mktemp "$data_dir/.ringkv-odirect.XXXXXX" 2>/dev/null || echo '')"
        if [ -z "$probe_file" ]; then
            report INFO o_direct "not tested: cannot create a temp file in $data_dir" ""
        else
            trap 'rm -f "$probe_file"' EXIT
            if err="$(dd if=/dev/zero of="$probe_file" bs=4096 count=1 oflag=direct conv=notrunc 2>&1)"; then
                if [ "$fstype" = tmpfs ]; then
                    report INFO o_direct "accepted, but on tmpfs the data stays in RAM" ""
                else
                    report OK o_direct "4 KiB O_DIRECT write succeeded" "works"
                fi
            else
                err="$(printf '%s' "$err" | tail -n1)"
                report WARN o_direct "4 KiB O_DIRECT write failed: $err" "works (xfs or ext4)"
            fi
            rm -f "$probe_file"
            trap - EXIT
        fi
    fi
fi

if [ "$warnings" -gt 0 ]; then
    echo "host-check: $warnings warning(s); see tuning/README.md"
else
    echo "host-check: no warnings"
fi
if [ "$strict" -eq 1 ] && [ "$warnings" -gt 0 ]; then
    exit 1
fi
exit 0
