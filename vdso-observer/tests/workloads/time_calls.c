/* Workload for the integration tests: makes an exact number of time calls of
 * one kind, so the observer's counts can be compared with the truth.
 *
 *   time_calls MODE N [ARG]
 *
 * MODE  what it does N times
 *   direct      syscall(SYS_clock_gettime, CLOCK_MONOTONIC): a kernel entry outside the vDSO
 *   cputime     clock_gettime(CLOCK_PROCESS_CPUTIME_ID) via libc: the vDSO's own syscall
 *   monotonic   clock_gettime(CLOCK_MONOTONIC) via libc (then ONE direct call as a marker)
 *   vsyscall    gettimeofday through the legacy vsyscall page (0xffffffffff600000)
 *   threads     ARG threads, each N direct calls
 *   children    ARG children, each N direct calls, all exit before the parent
 *   exec        N direct calls, then exec ARG ("direct" N): a new image under the same pid
 *   int80       64-bit process, N `int $0x80` clock_gettime64 (i386 number 403): a compat syscall
 *   clocks      one direct clock_gettime for each of the clock ids 0..N-1 (distinct map keys)
 *   rename      prctl(PR_SET_NAME, ARG) then N direct calls
 *   hold        N direct calls, then sleep ARG seconds or until SIGTERM (a
 *               container's process that stays up to be named; as PID 1 of a
 *               pod's sandbox, its pause process)
 *   keys        N rounds of 70 distinct kernel entries (16 clock ids x clock_gettime
 *               and clock_getres, gettimeofday, time, getcpu; each through syscall(2)
 *               and through int $0x80), to pass the per-process key cap
 *   paced       N libc clock_gettime calls, each followed by ARG us of spinning
 *               (a known ratio of vDSO calls to CPU time)
 *   execpaced   paced, then exec itself into paced with the same arguments
 *   threadsgtod N threads alive at once; each sleeps 1.5 s, then makes ARG libc
 *               gettimeofday calls
 *   churn       ARG short-lived children one after another, N direct calls each
 *   threadchurn N rounds of 20 threads at once; each sleeps ARG ms, then makes 10
 *               libc gettimeofday calls and ends
 *   churnrate   short-lived children, N direct calls each, ARG a second for 60 s
 *               (or as many seconds as a fourth argument says); prints how many
 *               it started
 *   cpuclocks   N threads one after another, each reading its own CPU clock
 *               (pthread_getcpuclockid: a distinct dynamic clock id per thread)
 *   steady      N direct calls a second for ARG seconds (for screens that refresh)
 *   steadycpu   N CLOCK_PROCESS_CPUTIME_ID calls a second for ARG seconds
 *   steadyvdso  N libc clock_gettime(CLOCK_MONOTONIC) calls a second for ARG seconds
 *   hot         libc clock_gettime(CLOCK_MONOTONIC) for ARG seconds, N calls a
 *               second at most (0: as fast as it can); prints "calls SECONDS SLICE_NS"
 *               at the end, SLICE_NS the median ns per call of 31 time slices of the
 *               run (meaningful at full speed only)
 *   hotcoarse   clock_gettime(CLOCK_MONOTONIC_COARSE) for ARG seconds (one
 *               CLOCK_MONOTONIC a thousand); prints as hot does
 *   mixcoarse   N clock_gettime(CLOCK_MONOTONIC_COARSE) for each
 *               clock_gettime(CLOCK_MONOTONIC), for ARG seconds; prints
 *               "coarse fine"
 *   hotlog      like hot at full speed, printing "calls cpu_ns" every 0.25 s (its own
 *               CPU time, so a slowdown shows whatever else runs on the machine)
 *   gtod        N libc gettimeofday calls (straight into the vDSO: glibc's IFUNC)
 *   time        N libc time calls; prints "N CPU_NS", its own CPU time (from
 *               getrusage, no time call: a slower loop shows beside an estimate)
 *   getcpu      N getcpu calls through libc (glibc getcpu, musl sched_getcpu: both
 *               call the vDSO's)
 *   seed        N getrandom(2) calls and no time call, as glibc's malloc start-up makes
 *   signals     N SIGUSR1 raised and handled, no time call (on arm64 every handler
 *               returns through the vDSO's __kernel_rt_sigreturn)
 *   bench       N calls of ARG (getppid, direct, vdso) in 31 timed chunks, then prints
 *               the median chunk's ns per call
 *
 * With VT_WAIT_STDIN set it first reads one byte from stdin, so a test can
 * attach to its pid before any call is made.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long n;

/* Timed chunks of `bench`: odd, so the median is one of them. */
#define BENCH_CHUNKS 31

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void direct_calls(long count) {
    struct timespec ts;
    for (long i = 0; i < count; i++)
        syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
}

static void *thread_main(void *arg) {
    (void)arg;
    direct_calls(n);
    return NULL;
}

/* A child that makes N direct calls and exits; its pid (-1: fork failed). */
static pid_t child_calls(void) {
    pid_t child = fork();
    if (child == 0) {
        direct_calls(n);
        _exit(0);
    }
    return child;
}

/* N libc clock_gettime calls, each followed by `us` microseconds of work. */
static void paced(long count, double us) {
    struct timespec ts, until;
    for (long i = 0; i < count; i++) {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        /* Spin on the thread's CPU clock: a syscall, never a vDSO call. */
        syscall(SYS_clock_gettime, CLOCK_THREAD_CPUTIME_ID, &until);
        double end = until.tv_sec * 1e6 + until.tv_nsec / 1e3 + us;
        do
            syscall(SYS_clock_gettime, CLOCK_THREAD_CPUTIME_ID, &until);
        while (until.tv_sec * 1e6 + until.tv_nsec / 1e3 < end);
    }
}

static long gtod_calls;
static pthread_barrier_t started;

static void *sleepy_gtod(void *arg) {
    (void)arg;
    struct timeval tv;
    pthread_barrier_wait(&started);
    usleep(1500000);
    for (long i = 0; i < gtod_calls; i++)
        gettimeofday(&tv, NULL);
    return NULL;
}

static long nap_ms;

static void *nap_then_gtod(void *arg) {
    (void)arg;
    struct timeval tv;
    usleep(nap_ms * 1000);
    for (int i = 0; i < 10; i++)
        gettimeofday(&tv, NULL);
    return NULL;
}

static void *own_cpu_clock(void *arg) {
    (void)arg;
    clockid_t clock;
    struct timespec ts;
    if (pthread_getcpuclockid(pthread_self(), &clock) == 0)
        clock_gettime(clock, &ts);
    return NULL;
}

static volatile sig_atomic_t handled;

static void count_signal(int signal_number) {
    (void)signal_number;
    handled++;
}

static void leave(int signal_number) {
    (void)signal_number;
    _exit(0);
}

/* clock_gettime(clock) for `seconds`, at most `rate` calls a second (0: as fast
 * as it can), in batches of 1000; for a coarse clock one CLOCK_MONOTONIC a
 * batch keeps time. Prints "calls SECONDS" (calls of `clock`). */
/* Coarse and fine reads in turn: `per_fine` coarse ones before each fine one. */
static void mixed(long per_fine, double seconds)
{
    struct timespec start, now, ts;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long coarse = 0, fine = 1;
    double elapsed = 0;
    while (elapsed < seconds) {
        for (int i = 0; i < 100; i++) {
            for (long j = 0; j < per_fine; j++)
                clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
            clock_gettime(CLOCK_MONOTONIC, &now);
        }
        coarse += 100 * per_fine;
        fine += 100;
        elapsed = (now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9;
    }
    printf("%ld %ld\n", coarse, fine);
}

static void hot(clockid_t clock, long rate, double seconds)
{
    struct timespec start, now, ts;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long calls = 0;
    double elapsed = 0;
    /* Bounded by time, not calls (a uprobe on every call makes one cost
       microseconds), and timed in slices whose median a preempted slice
       does not move, as `bench` times its chunks. */
    double slice_ns[BENCH_CHUNKS], slice_start = 0;
    long slice_calls = 0;
    int slices = 0;
    while (elapsed < seconds) {
        for (int i = 0; i < 1000; i++)
            clock_gettime(clock, &ts);
        calls += 1000;
        slice_calls += 1000;
        if (clock == CLOCK_MONOTONIC)
            now = ts;
        else
            clock_gettime(CLOCK_MONOTONIC, &now);
        elapsed = (now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9;
        if (slices < BENCH_CHUNKS &&
            (elapsed >= seconds || elapsed >= (slices + 1) * seconds / BENCH_CHUNKS)) {
            slice_ns[slices++] = (elapsed - slice_start) * 1e9 / slice_calls;
            slice_start = elapsed;
            slice_calls = 0;
        }
        if (rate > 0) {
            double ahead = calls / (double)rate - elapsed;
            if (ahead > 0)
                usleep((useconds_t)(ahead * 1e6));
        }
    }
    qsort(slice_ns, slices, sizeof slice_ns[0], compare_doubles);
    printf("%ld %.6f %.3f\n", calls, elapsed, slices ? slice_ns[slices / 2] : 0.0);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODE N [ARG]\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    n = atol(argv[2]);
    const char *arg = argc > 3 ? argv[3] : "";
    struct timespec ts;
    if (getenv("VT_WAIT_STDIN")) {
        char byte;
        if (read(0, &byte, 1) != 1)
            return 7;
        unsetenv("VT_WAIT_STDIN"); /* an exec'd image starts at once */
    }

    if (!strcmp(mode, "direct")) {
        direct_calls(n);
    } else if (!strcmp(mode, "seed")) {
        char key[8];
        for (long i = 0; i < n; i++)
            if (getrandom(key, sizeof key, 0) != sizeof key)
                return 6;
    } else if (!strcmp(mode, "cputime")) {
        for (long i = 0; i < n; i++)
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    } else if (!strcmp(mode, "monotonic")) {
        for (long i = 0; i < n; i++)
            clock_gettime(CLOCK_MONOTONIC, &ts);
        direct_calls(1);
    } else if (!strcmp(mode, "vsyscall")) {
#if defined(__x86_64__)
        typedef int (*gettimeofday_fn)(struct timeval *, void *);
        gettimeofday_fn legacy = (gettimeofday_fn)0xffffffffff600000UL;
        struct timeval tv;
        for (long i = 0; i < n; i++)
            legacy(&tv, NULL);
#else
        return 3;
#endif
    } else if (!strcmp(mode, "threads")) {
        long count = atol(arg);
        pthread_t *threads = calloc(count, sizeof(*threads));
        for (long i = 0; i < count; i++)
            if (pthread_create(&threads[i], NULL, thread_main, NULL))
                return 4;
        for (long i = 0; i < count; i++)
            pthread_join(threads[i], NULL);
    } else if (!strcmp(mode, "churn")) {
        long count = atol(arg);
        for (long i = 0; i < count; i++) {
            pid_t child = child_calls();
            if (child < 0)
                return 5;
            waitpid(child, NULL, 0);
        }
    } else if (!strcmp(mode, "threadchurn")) {
        nap_ms = atol(arg);
        for (long round = 0; round < n; round++) {
            pthread_t threads[20];
            for (int i = 0; i < 20; i++)
                if (pthread_create(&threads[i], NULL, nap_then_gtod, NULL))
                    return 4;
            for (int i = 0; i < 20; i++)
                pthread_join(threads[i], NULL);
        }
    } else if (!strcmp(mode, "churnrate")) {
        double rate = atof(arg);
        double seconds = argc > 4 ? atof(argv[4]) : 60;
        struct timespec start, now;
        clock_gettime(CLOCK_MONOTONIC, &start);
        long started = 0;
        double elapsed = 0;
        while (elapsed < seconds) {
            pid_t child = child_calls();
            if (child < 0)
                return 5;
            waitpid(child, NULL, 0);
            started++;
            clock_gettime(CLOCK_MONOTONIC, &now);
            elapsed = (now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9;
            double ahead = started / rate - elapsed;
            if (ahead > 0)
                usleep((useconds_t)(ahead * 1e6));
        }
        printf("%ld\n", started);
    } else if (!strcmp(mode, "cpuclocks")) {
        for (long i = 0; i < n; i++) {
            pthread_t thread;
            if (pthread_create(&thread, NULL, own_cpu_clock, NULL))
                return 4;
            pthread_join(thread, NULL);
        }
    } else if (!strcmp(mode, "children")) {
        long count = atol(arg);
        for (long i = 0; i < count; i++)
            if (child_calls() < 0)
                return 5;
        while (wait(NULL) > 0)
            ;
    } else if (!strcmp(mode, "paced")) {
        paced(n, atof(arg));
    } else if (!strcmp(mode, "execpaced")) {
        paced(n, atof(arg));
        execl("/proc/self/exe", argv[0], "paced", argv[2], arg, (char *)NULL);
        perror("execl");
        return 6;
    } else if (!strcmp(mode, "threadsgtod")) {
        gtod_calls = atol(arg);
        pthread_t *threads = calloc(n, sizeof(*threads));
        pthread_barrier_init(&started, NULL, n + 1);
        for (long i = 0; i < n; i++)
            if (pthread_create(&threads[i], NULL, sleepy_gtod, NULL))
                return 4;
        pthread_barrier_wait(&started);
        for (long i = 0; i < n; i++)
            pthread_join(threads[i], NULL);
    } else if (!strcmp(mode, "exec")) {
        direct_calls(n);
        execl(arg, arg, "direct", argv[2], (char *)NULL);
        perror("execl");
        return 6;
    } else if (!strcmp(mode, "int80")) {
#if defined(__x86_64__)
        struct { long long sec; long long nsec; } ts64;
        for (long i = 0; i < n; i++) {
            long ret;
            __asm__ volatile("int $0x80"
                             : "=a"(ret)
                             : "a"(403L), "b"((long)CLOCK_MONOTONIC), "c"(&ts64)
                             : "memory");
        }
#else
        return 3;
#endif
    } else if (!strcmp(mode, "keys")) {
#if defined(__x86_64__)
        static const long i386_nr[] = {403, 406, 78, 13, 318};
        for (long round = 0; round < n; round++) {
            for (long id = 0; id < 16; id++) {
                syscall(SYS_clock_gettime, (clockid_t)id, &ts);
                syscall(SYS_clock_getres, (clockid_t)id, &ts);
            }
            struct timeval tv;
            unsigned cpu;
            syscall(SYS_gettimeofday, &tv, NULL);
            syscall(SYS_time, NULL);
            syscall(SYS_getcpu, &cpu, NULL, NULL);
            for (int k = 0; k < 5; k++) {
                for (long id = 0; id < (k < 2 ? 16 : 1); id++) {
                    long ret;
                    __asm__ volatile("int $0x80"
                                     : "=a"(ret)
                                     : "a"(i386_nr[k]), "b"(id), "c"(0L), "d"(0L)
                                     : "memory");
                }
            }
        }
#else
        return 3;
#endif
    } else if (!strcmp(mode, "clocks")) {
        for (long id = 0; id < n; id++)
            syscall(SYS_clock_gettime, (clockid_t)id, &ts);
    } else if (!strcmp(mode, "steady") || !strcmp(mode, "steadycpu") ||
               !strcmp(mode, "steadyvdso")) {
        int cpu = !strcmp(mode, "steadycpu");
        int vdso = !strcmp(mode, "steadyvdso");
        long seconds = atol(arg);
        for (long s = 0; s < seconds * 10; s++) {
            for (long i = 0; i < n / 10; i++) {
                if (cpu)
                    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
                else if (vdso)
                    clock_gettime(CLOCK_MONOTONIC, &ts);
                else
                    direct_calls(1);
            }
            usleep(100000);
        }
    } else if (!strcmp(mode, "hot")) {
        hot(CLOCK_MONOTONIC, n, atof(arg));
    } else if (!strcmp(mode, "mixcoarse")) {
        mixed(n, atof(arg));
    } else if (!strcmp(mode, "hotcoarse")) {
        hot(CLOCK_MONOTONIC_COARSE, n, atof(arg));
    } else if (!strcmp(mode, "hotlog")) {
        double seconds = atof(arg);
        struct timespec start, now, cpu;
        clock_gettime(CLOCK_MONOTONIC, &start);
        double next = 0.25, elapsed = 0;
        long calls = 0;
        setvbuf(stdout, NULL, _IOLBF, 0);
        while (elapsed < seconds) {
            for (int i = 0; i < 1000; i++)
                clock_gettime(CLOCK_MONOTONIC, &now);
            calls += 1000;
            elapsed = (now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9;
            if (elapsed >= next) {
                clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu);
                printf("%ld %lld\n", calls, cpu.tv_sec * 1000000000LL + cpu.tv_nsec);
                next += 0.25;
            }
        }
    } else if (!strcmp(mode, "bench")) {
        /* BENCH_CHUNKS timed chunks, the median printed: a chunk that an
           interrupt, a kworker or the host took a share of does not move it.
           Fewer calls than chunks: a chunk a call (none would time nothing). */
        double ns[BENCH_CHUNKS];
        int chunks = n < BENCH_CHUNKS ? (int)n : BENCH_CHUNKS;
        if (chunks < 1) {
            fprintf(stderr, "bench: N must be at least 1, not %ld\n", n);
            return 2;
        }
        for (int chunk = 0; chunk < chunks; chunk++) {
            long calls = n / chunks + (chunk < n % chunks);
            struct timespec start, end;
            clock_gettime(CLOCK_MONOTONIC, &start);
            if (!strcmp(arg, "getppid")) {
                for (long i = 0; i < calls; i++)
                    syscall(SYS_getppid);
            } else if (!strcmp(arg, "direct")) {
                direct_calls(calls);
            } else {
                for (long i = 0; i < calls; i++)
                    clock_gettime(CLOCK_MONOTONIC, &ts);
            }
            clock_gettime(CLOCK_MONOTONIC, &end);
            ns[chunk] = ((end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec)) / calls;
        }
        qsort(ns, chunks, sizeof ns[0], compare_doubles);
        printf("%.2f\n", ns[chunks / 2]);
    } else if (!strcmp(mode, "getcpu")) {
#ifdef __GLIBC__
        unsigned cpu, node;
        for (long i = 0; i < n; i++)
            getcpu(&cpu, &node);
#else
        /* musl: sched_getcpu calls the vDSO's getcpu. */
        for (long i = 0; i < n; i++)
            sched_getcpu();
#endif
    } else if (!strcmp(mode, "time")) {
        for (long i = 0; i < n; i++)
            time(NULL);
        struct rusage usage;
        getrusage(RUSAGE_SELF, &usage);
        long long cpu_us = (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1000000LL +
                           usage.ru_utime.tv_usec + usage.ru_stime.tv_usec;
        printf("%ld %lld\n", n, cpu_us * 1000);
    } else if (!strcmp(mode, "gtod")) {
        struct timeval tv;
        for (long i = 0; i < n; i++)
            gettimeofday(&tv, NULL);
    } else if (!strcmp(mode, "execloop")) {
        /* One direct call per image, then the next image of the same pid:
           N images, N calls, as a hostile tenant that re-execs itself. */
        direct_calls(1);
        if (n > 1) {
            char next[32];
            snprintf(next, sizeof next, "%ld", n - 1);
            execl("/proc/self/exe", argv[0], "execloop", next, (char *)NULL);
            perror("execl");
            return 6;
        }
    } else if (!strcmp(mode, "signals")) {
        signal(SIGUSR1, count_signal);
        for (long i = 0; i < n; i++)
            raise(SIGUSR1);
        if (handled != n)
            return 6;
    } else if (!strcmp(mode, "crash")) {
        /* The kernel logs "comm[pid]: segfault ... in FILE": both the user's. */
        direct_calls(n);
        *(volatile int *)0 = 0;
    } else if (!strcmp(mode, "hold")) {
        /* PID 1 of a container ignores signals it has no handler for. */
        signal(SIGTERM, leave);
        signal(SIGINT, leave);
        direct_calls(n);
        sleep((unsigned)atol(arg));
    } else if (!strcmp(mode, "rename")) {
        prctl(PR_SET_NAME, arg, 0, 0, 0);
        direct_calls(n);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    return 0;
}
