#!/bin/sh
# vm-test systemd: the daemon as its .deb installs it, under systemd as PID 1 in
# a Debian 12 guest. Run by vmtest.service once the guest is up; prints VMTEST
# lines (checked by xtask/src/vm/systemd.rs) and powers the guest off.
set -u
say() { echo "VMTEST-$*"; }
unit=vdso-observer
prom=/var/lib/prometheus/node-exporter/vdso_observer.prom
clocksource=/sys/devices/system/clocksource/clocksource0/current_clocksource
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# The sample of a family for the labels given (one grep per label), summed.
metric() {
    family=$1
    shift
    lines=$(grep "^$family{" "$prom" 2>/dev/null)
    for label in "$@"; do
        lines=$(printf '%s\n' "$lines" | grep -F "$label")
    done
    printf '%s\n' "$lines" | awk 'NF { sum += $NF } END { printf "%d\n", sum }'
}

# Prints "reached" once the count `$2...` prints is at least $1.
at_least() {
    want=$1
    shift
    [ "$("$@")" -ge "$want" ] && echo reached
}

# Waits up to $1 seconds for the textfile to hold what `$2...` prints non-empty.
wait_for() {
    seconds=$1
    shift
    i=0
    while [ $i -lt $((seconds * 2)) ]; do
        if [ -n "$("$@")" ]; then return 0; fi
        sleep 0.5
        i=$((i + 1))
    done
    return 1
}

say BEGIN systemd
say KERNEL "$(uname -r)"
say CLOCKSOURCE "$(cat $clocksource)"
say UNPRIVILEGED-BPF "$(cat /proc/sys/kernel/unprivileged_bpf_disabled)"
say PACKAGE "$(dpkg-query -W -f '${Package} ${Version} ${Status}' $unit)"
dpkg -L $unit | while read -r path; do [ -f "$path" ] && echo "$path"; done > /tmp/package-files
say PACKAGE-FILES "$(wc -l < /tmp/package-files)"

# A short interval, so the guest does not wait 15 s a window, and a short
# watchdog (pings every 5 s instead of every minute) in a drop-in: the
# shipped unit otherwise as it is.
mkdir -p /var/lib/prometheus/node-exporter /etc/systemd/system/$unit.service.d
sed -i 's/^interval = .*/interval = "2s"/' /etc/vdso-observer.toml
printf '[Service]\nWatchdogSec=10s\n' > /etc/systemd/system/$unit.service.d/vmtest.conf
systemctl daemon-reload
say PERF-PARANOID "$(cat /proc/sys/kernel/perf_event_paranoid)"
say VSYSCALL32 "$(cat /proc/sys/abi/vsyscall32 2>/dev/null)"
# Outside the unit, as plain root: what the 32-bit image gives.
vdso-observer doctor > /tmp/doctor.txt 2>&1
grep -i -e '32-bit' -e vdso32 /tmp/doctor.txt | sed 's/^/VMTEST-DOCTOR /'

# 1. start returns once READY=1 came: the first textfile is then written.
t0=$(now_ms)
systemctl start $unit
rc=$?
t1=$(now_ms)
if [ -f $prom ]; then ready=textfile-written; else ready=no-textfile; fi
say START "$rc $((t1 - t0)) $ready"
say STATE "$(systemctl show -p ActiveState,SubState,Type,NRestarts --value $unit | tr '\n' ' ')"
w1=$(systemctl show -p WatchdogTimestampMonotonic --value $unit)
sleep 7
w2=$(systemctl show -p WatchdogTimestampMonotonic --value $unit)
say WATCHDOG "$w1 $w2 $(systemctl show -p WatchdogUSec --value $unit)"
pid=$(systemctl show -p MainPID --value $unit)
say CAPS "$(grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs):' /proc/$pid/status | tr -s ' \t' ' ' | tr '\n' ' ')"

# 2. a direct workload, counted after the capability drop (and with
# kernel.unprivileged_bpf_disabled set, Debian's default).
/usr/local/bin/workload direct 3000 &
w=$!
wait $w
say PID-DIRECT $w
# A window's snapshot may fall while the workload runs (2005 of 3000 once):
# the count is read once it reached what was made, and again a window later,
# so one too many shows as well as one too few.
direct() { metric vdso_observer_process_kernel_time_calls_total "pid=\"$w\"" 'origin="direct"' 'call="clock_gettime"'; }
wait_for 30 at_least 3000 direct
sleep 2.5
say DIRECT "$(direct)"

# 3. the clocksource the vDSO cannot read: hpet, switched at run time.
echo hpet > $clocksource
say SWITCHED "$(cat $clocksource)"
sleep 3
/usr/local/bin/workload monotonic 2000 &
f=$!
wait $f
say PID-FALLBACK $f
fallback() { metric vdso_observer_process_kernel_time_calls_total "pid=\"$f\"" 'origin="vdso_fallback"' 'reason="clocksource"'; }
wait_for 30 at_least 2000 fallback
sleep 2.5
say FALLBACK "$(fallback)"
say KERNEL-LOG-READABLE "$(awk '/^vdso_observer_kernel_log_readable / { print $2 }' $prom)"
say CLOCK-EVENTS "$(grep '^vdso_observer_clock_events_total' $prom | tr '\n' ' ')"
say CLOCKSOURCE-VDSO-CAPABLE "$(awk '/^vdso_observer_clocksource_vdso_capable / { print $2 }' $prom)"
echo tsc > $clocksource

# 4. the journal's priorities: -p warning holds warnings, none of the info lines.
say JOURNAL-WARNING-LINES "$(journalctl -u $unit -p warning -o cat --no-pager | wc -l)"
journalctl -u $unit -p warning -o cat --no-pager | sed 's/^/VMTEST-JOURNAL-WARNING /'
say JOURNAL-INFO-IN-WARNING "$(journalctl -u $unit -p warning -o cat --no-pager | grep -c -e 'started:' -e 'capabilities dropped' -e 'attached')"
say JOURNAL-INFO "$(journalctl -u $unit -p info -o cat --no-pager | grep -c -e 'started:' -e 'capabilities dropped')"
journalctl -u $unit -o cat --no-pager | grep -e '32-bit' -e 'capabilities' -e 'clock event' -e 'CAP_BPF' | sed 's/^/VMTEST-JOURNAL /'

# 5. reload applies a changed file (here: the interval).
sed -i 's/^interval = .*/interval = "3s"/' /etc/vdso-observer.toml
systemctl reload $unit
say RELOAD "$? $(systemctl is-active $unit)"
wait_for 10 sh -c "journalctl -u $unit -o cat --no-pager | grep 'SIGHUP: configuration reloaded'"
say RELOADED "$(journalctl -u $unit -o cat --no-pager | grep -c 'SIGHUP: configuration reloaded')"

# 6. exposure as systemd rates it.
say SECURITY "$(systemd-analyze security $unit --no-pager 2>/dev/null | tail -1)"
systemd-analyze security $unit --no-pager 2>/dev/null | grep -E '^ *✗' | sed 's/^/VMTEST-SECURITY-OPEN /'

# 7. stop within TimeoutStopSec, nothing of it left in the kernel; restart.
t0=$(now_ms)
systemctl stop $unit
rc=$?
t1=$(now_ms)
say STOP "$rc $((t1 - t0)) $(systemctl is-active $unit)"
say BPF-LEFT "$(bpftool prog show 2>/dev/null | grep -c -e time_syscall -e vdso_sample -e cgroup_created -e process_e)"
systemctl restart $unit
say RESTART "$? $(systemctl is-active $unit)"
systemctl stop $unit

# 7b. the sampler under the unit, where the daemon's advice is followed.
sysctl -qw kernel.perf_event_paranoid=2
rm -f $prom
systemctl start $unit
say SAMPLER-PARANOID-2 "$(grep -F 'probe="perf_event:cpu-clock"' $prom | awk '{ print $NF }')"
journalctl -u $unit -o cat --no-pager | grep '32-bit vDSO clock_gettime' | tail -1 | sed 's/^/VMTEST-VDSO32-CALIBRATED /'
systemctl stop $unit

# 8. purge leaves no file of the package behind.
apt-get purge -y -qq $unit > /tmp/purge.log 2>&1
say PURGE "$? $(dpkg-query -W -f '${Status}' $unit 2>/dev/null)"
left=0
while read -r path; do
    if [ -e "$path" ]; then
        left=$((left + 1))
        say LEFT "$path"
    fi
done < /tmp/package-files
[ -e /etc/vdso-observer.toml ] && left=$((left + 1)) && say LEFT /etc/vdso-observer.toml
say PURGE-LEFT $left

say END
systemctl poweroff --force --force
