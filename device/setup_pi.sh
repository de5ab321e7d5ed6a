#!/usr/bin/env bash
# Set up a Raspberry Pi (Raspberry Pi OS 64-bit, Bookworm or later) to run `bench run`.
#
#   bash setup_pi.sh [VENV]        (default VENV: ~/skyedge-venv)
#
# Installs python3-venv, creates the venv and installs skyedge[device] (LiteRT + ONNX
# Runtime, no TensorFlow): the SkyEdge wheel next to this script (every bundle has one), else
# a source tree above it. Its dependencies come from the package index, or, when the bundle
# was made with `bench bundle --offline`, from the wheels in wheels/ with no index at all.
# Then it checks the CPU governor, the temperature and `vcgencmd get_throttled`, and prints
# advice; it changes the governor only when SKYEDGE_SET_GOVERNOR=1.
set -euo pipefail

VENV="${1:-$HOME/skyedge-venv}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

arch="$(uname -m)"
userland="$(getconf LONG_BIT 2>/dev/null || echo unknown)"   # a 64-bit kernel can run a 32-bit OS
case "$arch/$userland" in
    aarch64/64|x86_64/64) runtimes="ai_edge_litert onnxruntime" ;;
    armv7l/*|aarch64/32|armv6l/*)
        echo "note: 32-bit OS ($arch, ${userland}-bit userland). Neither ai-edge-litert nor ONNX Runtime" >&2
        echo "  publishes 32-bit ARM wheels: TFLite models run on tflite-runtime 2.14 (with numpy<2)," >&2
        echo "  ONNX models cannot run here. For both runtimes use 64-bit Raspberry Pi OS." >&2
        if ! python3 -c 'import sys; sys.exit(0 if (3, 8) <= sys.version_info[:2] <= (3, 11) else 1)'; then
            echo "error: tflite-runtime 2.14 has wheels for Python 3.8-3.11 only; this is $(python3 -V)" >&2
            exit 2
        fi
        runtimes="tflite_runtime" ;;
    *) echo "warning: $arch is not a Raspberry Pi architecture this script knows; installing the defaults" >&2
       runtimes="ai_edge_litert onnxruntime" ;;
esac

if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
    echo "== installing python3-venv (sudo)"
    sudo apt-get update
    sudo apt-get install -y python3-venv python3-pip
fi

shopt -s nullglob
wheels=("$HERE"/skyedge-*.whl)
sdists=("$HERE"/skyedge-*.tar.gz)
offline=("$HERE"/wheels/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
    target="${wheels[-1]}[device]"
elif [ ${#sdists[@]} -gt 0 ]; then
    target="${sdists[-1]}[device]"
elif [ -f "$HERE/../pyproject.toml" ]; then
    target="$(cd "$HERE/.." && pwd)[device]"
else
    echo "error: no skyedge wheel next to $0 and no source tree above it; make the bundle with" >&2
    echo "  bench bundle (it builds and ships the wheel), or pip install a skyedge wheel by hand" >&2
    exit 2
fi

echo "== virtual environment: $VENV"
python3 -m venv "$VENV"
if [ ${#offline[@]} -gt 0 ]; then
    echo "== pip install '$target' from the bundle's ${#offline[@]} wheels (no package index)"
    "$VENV/bin/python" -m pip install --no-index --find-links "$HERE/wheels" "$target"
else
    "$VENV/bin/python" -m pip install --upgrade pip
    echo "== pip install '$target' (dependencies from the package index)"
    "$VENV/bin/python" -m pip install "$target"
fi
for module in $runtimes; do
    "$VENV/bin/python" -c "import $module" || { echo "error: $module does not import after the install" >&2; exit 1; }
    echo "$module imports fine"
done

echo "== CPU governor"
gov_file=/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor
if [ -r "$gov_file" ]; then
    gov="$(cat "$gov_file")"
    echo "governor: $gov"
    if [ "$gov" != "performance" ]; then
        if [ "${SKYEDGE_SET_GOVERNOR:-0}" = "1" ]; then
            echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor >/dev/null
            echo "governor set to performance (until reboot)"
        else
            echo "advice: benchmark with a fixed clock:"
            echo "  echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"
            echo "  (or rerun with SKYEDGE_SET_GOVERNOR=1)"
        fi
    fi
else
    echo "governor: not readable"
fi

echo "== temperature and throttling"
if command -v vcgencmd >/dev/null 2>&1; then
    vcgencmd measure_temp || true
    throttled="$(vcgencmd get_throttled | cut -d= -f2)"
    echo "get_throttled: $throttled"
    if [ "$throttled" != "0x0" ]; then
        echo "warning: throttling or under-voltage flags are set (see docs/raspberry-pi.md);"
        echo "  use the official power supply and a fan or heatsink before benchmarking."
    fi
else
    echo "vcgencmd not found: throttling flags will be recorded as null"
fi
echo "advice: a Raspberry Pi 4/5 throttles at 80-85 C; use an active cooler and"
echo "  bench run --cooldown-temp 55 so every job starts at the same temperature."

echo "== done: source $VENV/bin/activate && bench run --models $HERE --out results.jsonl"
