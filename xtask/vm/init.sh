#!/bin/busybox sh
# /init of the vm-test guest: runs one scenario (vt.scenario= on the kernel
# command line), prints results as VMTEST lines on the serial console, powers off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp && mount -t tmpfs tmp /tmp
export PATH=/bin RUST_LOG=warn

scenario=$(sed -n 's/.*vt\.scenario=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
# Where the observer counts time syscalls (--attach): each scenario runs in each mode.
attach=$(sed -n 's/.*vt\.attach=\([a-z-]*\).*/\1/p' /proc/cmdline)
[ -n "$attach" ] || attach=auto
clocksource=/sys/devices/system/clocksource/clocksource0/current_clocksource
echo "VMTEST-BEGIN $scenario"
echo "VMTEST-CLOCKSOURCE $(cat $clocksource)"

# Starts `vdso-observer ARGS` in the background, waits until it observes,
# and says after how many seconds (VMTEST-READY).
observe() {
    # Emptied first: the last observer's "observing" line must not count.
    : > /tmp/err.txt
    t0=$(date +%s)
    /vdso-observer "$@" > /tmp/out.json 2> /tmp/err.txt &
    observer=$!
    i=0
    while ! grep -q "observing every process" /tmp/err.txt; do
        sleep 0.5
        i=$((i + 1))
        if [ $i -gt 600 ] || ! kill -0 $observer 2>/dev/null; then
            echo "VMTEST-ERROR observer did not start: $(cat /tmp/err.txt)"
            break
        fi
    done
    echo "VMTEST-READY $(($(date +%s) - t0))"
}

# Whether the kernel's random pool is ready: until it is, glibc seeds malloc
# from CLOCK_MONOTONIC at a program's start (2 reads, 1 in a 32-bit process),
# and a static program makes those reads from its own text.
crng() {
    if dmesg | grep -q "crng init done"; then echo ready; else echo not-ready; fi
}

stop() {
    kill -INT $observer 2>/dev/null
    # A window ends at SIGINT: a guest waiting forever says so instead.
    i=0
    while kill -0 $observer 2>/dev/null && [ $i -lt 240 ]; do
        sleep 0.5
        i=$((i + 1))
    done
    if kill -0 $observer 2>/dev/null; then
        echo "VMTEST-ERROR the observer did not exit within 120 s of SIGINT: $(tail -5 /tmp/err.txt | tr '\n' ' ')"
        kill -KILL $observer
    fi
    wait $observer
    echo "VMTEST-OBSERVER-EXIT $?"
    sed 's/^/VMTEST-STDERR /' /tmp/err.txt
}

case "$scenario" in
bench)
    # cargo xtask bench guest: getppid and direct clock_gettime, bare and under
    # each mode, alternating in rounds so TCG's drift hits them alike.
    for round in 1 2 3 4 5; do
        for mode in bare raw-tracepoint fentry; do
            if [ $mode != bare ]; then
                observe top -b -n 0 -d 600 --json --attach $mode --sample-hz 0
            fi
            echo "VMTEST-BENCH $mode getppid $(/workload bench 200000 getppid)"
            echo "VMTEST-BENCH $mode direct $(/workload bench 100000 direct)"
            if [ $mode != bare ]; then
                kill -INT $observer 2>/dev/null
                wait $observer
            fi
        done
    done
    ;;
arm64)
    # The arm64 guest: exact counts of each kind of call, getcpu (no vDSO
    # function there), and the sampler's estimate of a hot vDSO loop.
    /vdso-observer doctor --json --attach $attach > /tmp/doctor.json 2> /tmp/doctor.err
    echo "VMTEST-DOCTOR-EXIT $?"
    echo "VMTEST-DOCTOR $(cat /tmp/doctor.json)"
    sed 's/^/VMTEST-STDERR /' /tmp/doctor.err
    if [ "$attach" = auto ]; then
        /vdso-observer doctor 2>/dev/null | sed 's/^/VMTEST-DOCTOR-TEXT /'
        echo "VMTEST-FENTRY $(/vdso-observer top --once -d 1 --json --attach fentry 2>&1 >/dev/null | tr '\n' ' ')"
    fi
    # The programs' first unattributed vDSO sample on a CPU is said with its
    # offset (a debug line of the eBPF module `stats`).
    export RUST_LOG=warn,vdso_observer::stats=debug
    observe top --once -d 600 --json --comm workload --attach $attach
    unset RUST_LOG
    # signals: every handler returns through the vDSO's sigreturn trampoline,
    # code that is no time call (its samples must be neither calls nor
    # unattributed).
    for mode in "direct 1000" "cputime 700" "getcpu 300" "monotonic 20000" "signals 50000"; do
        set -- $mode
        /workload $1 $2 &
        echo "VMTEST-PID-$(echo $1 | tr a-z A-Z) $!"
        wait $!
    done
    /workload hot 0 3 > /tmp/hot.txt &
    echo "VMTEST-PID-HOT $!"
    wait $!
    echo "VMTEST-HOT $(cat /tmp/hot.txt)"
    stop
    echo "VMTEST-TOP $(cat /tmp/out.json)"
    grep "lies in no exported function" /tmp/err.txt | sed 's/^/VMTEST-UNATTRIBUTED /'
    if [ "$attach" = raw-tracepoint ]; then
        # Exact counting: a uprobe at the static workload's own clock_gettime.
        # It waits for a byte on a FIFO opened read-write (no open blocks, so
        # the workload has exec'd before the observer looks at it).
        mkfifo /tmp/hold
        exec 3<>/tmp/hold
        VT_WAIT_STDIN=1 /workload monotonic 5000 <&3 &
        held=$!
        echo "VMTEST-PID-EXACT $held"
        observe top --once -d 600 --json --exact-pid $held --no-governor --attach $attach
        echo x >&3
        wait $held
        stop
        echo "VMTEST-EXACT $(cat /tmp/out.json)"
    fi
    ;;
switch)
    observe top -b -n 0 -d 2 --json --comm workload --attach $attach
    /workload steadyvdso 2000 16 &
    workload=$!
    echo "VMTEST-PID $workload"
    sleep 7
    echo hpet > $clocksource
    echo "VMTEST-SWITCHED $(cat $clocksource)"
    wait $workload
    sleep 2
    stop
    sed 's/^/VMTEST-FRAME /' /tmp/out.json
    ;;
*)
    echo "VMTEST-CRNG-DOCTOR $(crng)"
    /vdso-observer doctor --json --attach $attach > /tmp/doctor.json 2> /tmp/doctor.err
    echo "VMTEST-DOCTOR-EXIT $?"
    echo "VMTEST-DOCTOR $(cat /tmp/doctor.json)"
    sed 's/^/VMTEST-STDERR /' /tmp/doctor.err
    # getppid, no time call: what the observer costs every other syscall.
    echo "VMTEST-GETPPID-BARE $(/workload bench 100000 getppid)"
    if [ "$scenario" = hpet ] || [ "$scenario" = acpipm ]; then
        # The time() loop unobserved, its CPU time the yardstick for the
        # observed one below (TCG runs a loop at the host's whim).
        echo "VMTEST-TIME-REF $(/workload time 15000000)"
    fi
    export RUST_LOG=warn,vdso_observer::measure=debug
    observe top --once -d 600 --json --comm workload --attach $attach
    export RUST_LOG=warn
    echo "VMTEST-GETPPID-OBSERVED $(/workload bench 100000 getppid)"
    echo "VMTEST-CRNG-BEFORE $(crng)"
    /workload monotonic 20000 &
    workload=$!
    wait $workload
    echo "VMTEST-PID $workload"
    # The legacy vsyscall page (emulated: at fentry the kernel's own call to
    # __x64_sys_gettimeofday must not count twice) and a 32-bit process.
    /workload vsyscall 300 &
    echo "VMTEST-PID-VSYSCALL $!"
    wait $!
    /workload32 direct 400 &
    echo "VMTEST-PID-I386 $!"
    wait $!
    echo "VMTEST-CRNG-AFTER $(crng)"
    if [ "$scenario" = hpet ] || [ "$scenario" = acpipm ]; then
        # Coarse reads and time() stay in user space whatever the
        # clocksource: hot loops of each, estimated from samples (hotcoarse
        # also reads CLOCK_MONOTONIC once a thousand calls, to keep time).
        /workload hotcoarse 0 2 > /tmp/coarse.txt &
        echo "VMTEST-PID-COARSE $!"
        wait $!
        echo "VMTEST-COARSE $(cat /tmp/coarse.txt)"
        /workload time 15000000 > /tmp/time.txt &
        echo "VMTEST-PID-TIME $!"
        wait $!
        echo "VMTEST-TIME $(cat /tmp/time.txt)"
    fi
    stop
    echo "VMTEST-TOP $(cat /tmp/out.json)"
    echo "VMTEST-NS $(/workload hot 0 1)"
    ;;
esac
echo "VMTEST-END"
sync
poweroff -f
