#!/usr/bin/env bash
# Fake adb for tests: logs its arguments to $FAKE_ADB_LOG and answers from recorded files
# in $FAKE_ADB_DATA (getprop, meminfo, benchmark_model output).
echo "$*" >> "$FAKE_ADB_LOG"
if [ "$1" = "-s" ]; then shift 2; fi
case "$1" in
    push) [ -f "$2" ] || { echo "adb: error: cannot stat '$2'" >&2; exit 1; }; echo "$2: 1 file pushed." ;;
    shell)
        shift
        case "$*" in
            getprop) cat "$FAKE_ADB_DATA/getprop.txt" ;;
            "cat /proc/meminfo") printf 'MemTotal:       11704832 kB\nMemFree:         1204832 kB\n' ;;
            "cat /sys/devices/system/cpu/possible") echo "0-8" ;;
            "cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") echo "sched_pixel" ;;
            "uname -r") echo "5.15.123-android14-11" ;;
            *benchmark_model*broken*) cat "$FAKE_ADB_DATA/benchmark_model_failure.txt"; exit 1 ;;
            *benchmark_model*) cat "$FAKE_ADB_DATA/benchmark_model_output.txt" ;;
            *) ;;
        esac ;;
    *) echo "fake adb: unsupported $1" >&2; exit 1 ;;
esac
