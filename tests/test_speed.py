"""Speed tooling: bfloat16 detection, the speed benchmark's input checks, and docs/gpu_check.sh end to
end on the CPU at tiny size (every step runs and writes its figures)."""
import json
import os
import subprocess
import sys

from conftest import REPO


def test_gpu_check_runs_at_tiny_size_on_the_cpu(tmp_path):
    env = {**os.environ, "SIZE": "32", "BACKBONES": "mobilenetv2", "MODES": "float32,mixed_float16", "BATCH": "8",
           "STEPS": "2", "CACHE_BACKBONES": "mobilenetv2", "LEVELS": "0", "N": "60", "EPOCHS": "1",
           "STUDY_SIZE": "64", "STUDY_TRAIN_IMAGES": "100", "PY": sys.executable}
    out = tmp_path / "check"
    result = subprocess.run(["bash", str(REPO / "docs" / "gpu_check.sh"), str(out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    speed = json.loads((out / "speed" / "speed_benchmark.json").read_text())
    assert [(r["backbone"], r["mode"]) for r in speed["rows"]] == [("mobilenetv2", "float32"), ("mobilenetv2", "mixed_float16")]
    assert all(r["bare_images_per_s"] > 0 for r in speed["rows"]) and speed["rows"][0]["ratio"] == 1.0
    cache = json.loads((out / "cache" / "cache_benchmark.json").read_text())
    assert cache["runs"] == 1 and not cache["failed_runs"] and cache["speedup"] > 0
    assert set(cache["seconds_by_part"]["cached"]) >= {"frozen features", "first epoch", "epochs", "checkpoints"}
    study = (out / "study.txt").read_text()
    # the study's 10 MobileNetV2 levels, 10 epochs of 100 images, 4x the pixels of the 32 px step
    assert "(64/32)^2 = 4.00" in study
    hours = 10 * 10 * 100 * 4 / speed["rows"][0]["bare_images_per_s"] / 3600
    assert f"mobilenetv2      float32               10 levels  {hours:8.2f} h" in study


def test_bfloat16_is_read_from_the_cpu_flags(tmp_path):
    from train.precision import cpu_bfloat16_flags

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_bf16\n")
    assert cpu_bfloat16_flags(info) == ["amx_bf16", "avx512_bf16"]
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert cpu_bfloat16_flags(info) == []
    assert cpu_bfloat16_flags(tmp_path / "absent") == []


def test_speed_benchmark_refuses_bad_settings_in_one_line(tmp_path, capsys):
    from train.speed_benchmark import main

    for args, message in ((["--modes", "float8"], "--modes 'float8': expected a precision"),
                          (["--modes", "float32+tpu"], "--modes 'float32+tpu'"),
                          (["--backbones", "resnet18"], "unknown backbone 'resnet18'"),
                          (["--steps", "0"], "--steps 0: expected a positive integer")):
        assert main([*args, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
