"""Efficiency against the hardware (#12 item 4): MACs counted from the exported graph against a
hand count, the fp32 and int8 peaks from the core table (Pi 4, Pi 5, a phone) or measured with a dense
matmul in the runtime, GMAC/s and the fraction of peak on every kernel line of a real
``bench run``, and the column in ``bench report``."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from test_bench_run import QUICK, bench, exports_dir, read_lines  # noqa: F401 (exports_dir is a fixture)

# the tiny Keras model of test_bench_run.build_exports: 32x32x3 -> Conv2D(4, 3, strides=2, valid)
# -> global average -> Dense(3); the conv's output is 15x15x4 and each output sums 3x3x3 products
TINY_CONV_MACS = 15 * 15 * 4 * (3 * 3 * 3)
TINY_DENSE_MACS = 4 * 3
TINY_ONNX_MACS = 3 * 3  # mean colour [1, 3] @ [3, 3]

PI4_BLOCK = """processor\t: {i}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3
"""
PI4 = "\n".join(PI4_BLOCK.format(i=i) for i in range(4)) + \
    "\nHardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: 10000000a1b2c3d4\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
PI5 = "\n".join(PI4_BLOCK.format(i=i).replace("0xd08", "0xd0b").replace("0x0\n", "0x4\n") for i in range(4)) + \
    "\nRevision\t: d04170\nSerial\t\t: 0123456789abcdef\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n"
X86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n"


def test_tflite_macs_of_the_tiny_model_equal_the_hand_count(exports_dir):
    from device.macs import count_macs, onnx_op_macs, tflite_op_macs

    models = exports_dir / "models"
    for name in ("tiny-fp32.tflite", "tiny-int8.tflite"):  # quantization changes no MAC count
        per_op = tflite_op_macs((models / name).read_bytes())
        assert per_op == {"CONV_2D": TINY_CONV_MACS, "FULLY_CONNECTED": TINY_DENSE_MACS}, name
        assert count_macs(models / name) == TINY_CONV_MACS + TINY_DENSE_MACS
    assert onnx_op_macs(models / "tiny-fp32.onnx") == {"MatMul": TINY_ONNX_MACS}


def test_onnx_macs_of_a_grouped_conv_and_gemm_equal_the_hand_count(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from device.macs import count_macs, onnx_op_macs

    # depthwise 3x3 conv (group 4, same padding) on 4x10x10: 4*10*10 outputs x 9 products; then
    # Gemm [1, 400] @ [400, 2]: 2 outputs x 400 products
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], group=4, pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "g"], ["y"])]
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              initializer=[numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w"),
                                           numpy_helper.from_array(np.ones((400, 2), np.float32), "g")])
    path = tmp_path / "hand.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    assert onnx_op_macs(path) == {"Conv": 4 * 10 * 10 * 9, "Gemm": 2 * 400}
    assert count_macs(path) == 3600 + 800


def test_the_measured_matmul_model_computes_what_it_counts():
    from bench.peak import fully_connected_tflite
    from device.macs import tflite_op_macs
    from device.runtime import load

    rng = np.random.default_rng(3)
    weights = rng.standard_normal((5, 8)).astype(np.float32)
    data = fully_connected_tflite(4, 8, 5, weights)
    assert tflite_op_macs(data) == {"FULLY_CONNECTED": 4 * 8 * 5}
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fc.tflite"
        path.write_bytes(data)
        x = rng.standard_normal((4, 8)).astype(np.float32)
        np.testing.assert_allclose(load(path, "litert", 1).invoke(x), x @ weights.T, rtol=1e-5, atol=1e-5)


def test_peak_table_for_pi4_pi5_and_a_phone():
    from bench.peak import table_peak

    # Pi 4: Cortex-A72, 4 fp32 FMA lanes per cycle, at the board's default 1.5 GHz without cpufreq
    assert table_peak(PI4, 4).gmacs_per_s == pytest.approx(4 * 4 * 1.5)
    assert table_peak(PI4, 1).gmacs_per_s == pytest.approx(6.0)
    assert table_peak(PI4, 8).gmacs_per_s == pytest.approx(24.0)  # one thread per core
    peak = table_peak(PI4, 4, {i: 1.8 for i in range(4)})  # cpufreq says 1.8 GHz
    assert peak.gmacs_per_s == pytest.approx(28.8)
    assert peak.source.startswith("table: Raspberry Pi 4 Model B Rev 1.4") and "Cortex-A72" in peak.source
    assert "cpufreq max" in peak.source and "1.8 GHz" in peak.source
    assert "board default" in table_peak(PI4, 4).source
    # Pi 5: Cortex-A76, 8 lanes, 2.4 GHz
    pi5 = table_peak(PI5, 4)
    assert pi5.gmacs_per_s == pytest.approx(4 * 8 * 2.4) and "Cortex-A76" in pi5.source
    # a phone: 4 x A55 @ 1.8, 3 x A78 @ 2.4, 1 x X1 @ 2.84; threads take the fastest cores first
    parts = ["0xd05"] * 4 + ["0xd41"] * 3 + ["0xd44"]
    phone = "\n".join(PI4_BLOCK.format(i=i).replace("0xd08", p) for i, p in enumerate(parts))
    ghz = {i: g for i, g in enumerate([1.8] * 4 + [2.4] * 3 + [2.84])}
    assert table_peak(phone, 1, ghz).gmacs_per_s == pytest.approx(16 * 2.84)
    assert table_peak(phone, 4, ghz).gmacs_per_s == pytest.approx(16 * 2.84 + 3 * 8 * 2.4)
    assert table_peak(phone, 4) is None  # no clock known (not a Pi board): measured instead
    assert table_peak(X86, 1) is None
    assert table_peak(PI4.replace("0xd08", "0xd03"), 4) is None  # a core the table lacks


def test_int8_peak_table_per_core():
    # #20 item 4: int8 lines divide by an int8 peak. The A72 (Pi 4) has no dot-product
    # instructions: 8 int8 MACs/cycle, twice its fp32 lanes; the A76 (Pi 5) 32, four times
    from bench.peak import table_peak

    pi4 = table_peak(PI4, 4, kind="int8")
    assert pi4.gmacs_per_s == pytest.approx(4 * 8 * 1.5) and "int8 MACs/cycle" in pi4.source
    assert table_peak(PI5, 4, kind="int8").gmacs_per_s == pytest.approx(4 * 32 * 2.4)
    parts = ["0xd05"] * 4 + ["0xd41"] * 3 + ["0xd44"]
    phone = "\n".join(PI4_BLOCK.format(i=i).replace("0xd08", p) for i, p in enumerate(parts))
    ghz = {i: g for i, g in enumerate([1.8] * 4 + [2.4] * 3 + [2.84])}
    assert table_peak(phone, 4, ghz, kind="int8").gmacs_per_s == pytest.approx(64 * 2.84 + 3 * 32 * 2.4)
    # published Pi 5 figures with XNNPACK (4 threads): MobileNetV2 int8 4.0 ms at its 300M MACs
    # is 75 GMAC/s, 24% of the int8 peak; ResNet-50 int8 20.6 ms at 4.1G MACs is 199 GMAC/s, 65%
    # (against the fp32 peak they read 98% and 260%)
    peak = table_peak(PI5, 4, kind="int8").gmacs_per_s
    assert 0.3e9 / 4.0e-3 / 1e9 / peak == pytest.approx(0.244, abs=0.01)
    assert 4.1e9 / 20.6e-3 / 1e9 / peak == pytest.approx(0.648, abs=0.01)


def test_int8_matmuls_compute_what_they_claim():
    # the measured int8 peak is only as good as its matmul: check both against numpy
    import tempfile

    from bench.peak import fully_connected_int8_tflite, qlinear_matmul_onnx

    m, k, n = 4, 16, 8
    rng = np.random.default_rng(1)
    weights = np.random.default_rng(0).integers(-127, 128, (n, k), dtype=np.int8)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fc8.tflite"
        path.write_bytes(fully_connected_int8_tflite(m, k, n, seed=0))
        x = rng.integers(-128, 128, (m, k), dtype=np.int8)
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        exact = x.astype(np.int32) @ weights.T.astype(np.int32) * ((1 / 128) * (0.05 / 127) / 0.1)
        np.testing.assert_allclose(y, np.clip(np.round(exact), -128, 127), atol=1)
        onnx_path = Path(folder) / "mm8.onnx"
        onnx_path.write_bytes(qlinear_matmul_onnx(m, k, n, seed=0))
        import onnxruntime

        xu = rng.integers(0, 256, (m, k), dtype=np.uint8)
        (yu,) = onnxruntime.InferenceSession(str(onnx_path)).run(None, {"x": xu})
        w_kn = np.random.default_rng(0).integers(-127, 128, (k, n), dtype=np.int8)
        real = (xu.astype(np.int32) - 128) @ w_kn.astype(np.int32) * ((1 / 255) * (0.05 / 127) / 0.1) + 128
        np.testing.assert_allclose(yu, np.clip(np.round(real), 0, 255), atol=1)


@pytest.fixture(scope="module")
def bench_lines(exports_dir, tmp_path_factory) -> tuple[Path, list[dict]]:
    """One real ``bench run`` of the tiny exports (whose manifest has no ``macs``: bench counts them)."""
    out = tmp_path_factory.mktemp("efficiency") / "results.jsonl"
    result = bench("run", "--models", str(exports_dir), "--out", str(out), "--device-name", "ci",
                   "--threads", "1", *QUICK)
    assert result.returncode == 0, result.stderr
    return out, read_lines(out)


def test_every_kernel_line_carries_gmacs_and_its_peak(bench_lines):
    _, lines = bench_lines
    by_id = {line["artifact_id"]: line for line in lines}
    assert by_id["tiny-l0-s0-fp32-tflite"]["macs"] == TINY_CONV_MACS + TINY_DENSE_MACS
    assert by_id["tiny-l0-s0-int8-tflite"]["macs"] == TINY_CONV_MACS + TINY_DENSE_MACS
    assert by_id["tiny-l0-s0-fp32-onnx"]["macs"] == TINY_ONNX_MACS
    for line in lines:
        assert "error" not in line, line.get("error")
        assert line["gmacs_per_s"] == pytest.approx(line["macs"] / line["latency_ms_p50"] / 1e6, rel=1e-3)
        assert line["peak_gmacs_per_s"] > 0
        # #20 item 4: each line divides by the peak of its own arithmetic, and none is above it
        kind = "int8" if line["variant"] in ("int8", "qat", "dynamic") else "fp32"
        assert line["peak_source"].startswith(("table: ", f"measured: dense {kind} matmul")), line["peak_source"]
        assert line["peak_source"].startswith("measured") or ("int8 MACs" in line["peak_source"]) == (kind == "int8")
        assert line["fraction_of_peak"] == pytest.approx(line["gmacs_per_s"] / line["peak_gmacs_per_s"], rel=1e-3)
        assert line["fraction_of_peak"] <= 1.0
    tflite = [line for line in lines if line["runtime"] == "litert" and line["variant"] == "fp32"]
    # measured once per runtime x threads x arithmetic in a run: TFLite fp32 lines share one peak
    assert len({(line["peak_gmacs_per_s"], line["peak_source"]) for line in tflite}) == 1
    int8 = by_id["tiny-l0-s0-int8-tflite"]
    assert int8["peak_source"] != tflite[0]["peak_source"]
    if tflite[0]["peak_source"].startswith("measured"):
        assert "litert" in tflite[0]["peak_source"] and "1 thread(s)" in tflite[0]["peak_source"]
        assert "onnxruntime" in by_id["tiny-l0-s0-fp32-onnx"]["peak_source"]


def test_stored_macs_are_used_and_missing_ones_counted(exports_dir, tmp_path):
    from bench.peak import Efficiency, Peak
    from device.exports_manifest import artifact_macs, macs_fields

    record = {"artifact_id": "a", "file": "models/tiny-fp32.tflite"}
    assert artifact_macs(exports_dir, {**record, "macs": 7}) == (7, None)
    assert artifact_macs(exports_dir, record) == (TINY_CONV_MACS + TINY_DENSE_MACS, None)
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"\0" * 64)
    assert macs_fields(broken)["macs"] is None and "TFL3" in macs_fields(broken)["macs_error"]
    calls = []
    eff = Efficiency(exports_dir, peak_of=lambda *key: calls.append(key) or Peak(100.0, "table: test"))
    line = {"mode": "kernel", "latency_ms_p50": 2.0, "notes": []}
    fields = eff.fields({**record, "macs": 400_000_000}, "litert", 2, "xnnpack", line)
    assert fields["gmacs_per_s"] == pytest.approx(200.0) and fields["fraction_of_peak"] == pytest.approx(2.0)
    eff.fields({**record, "artifact_id": "b", "macs": 1}, "litert", 2, "xnnpack", line)
    assert calls == [("litert", 2, "xnnpack")]  # the peak is looked up once per runtime x threads x delegate
    e2e = eff.fields({**record, "macs": 5}, "litert", 2, "xnnpack", {**line, "mode": "e2e"})
    assert e2e["macs"] is not None and e2e["gmacs_per_s"] is None  # e2e p50 includes decoding


def test_report_shows_the_efficiency_column_and_the_peak(bench_lines, exports_dir, tmp_path):
    from bench.report import ReportConfig, write_report
    from bench.report_records import DEVICES_CSV_COLUMNS

    results, lines = bench_lines
    emulated = tmp_path / "qemu.jsonl"
    emulated.write_text(json.dumps({**lines[0], "device_name": "arm64-qemu",
                                    "notes": ["emulated: qemu-aarch64 cortex-a72; latency not meaningful"]}) + "\n")
    write_report(ReportConfig(results=(results, emulated), out=tmp_path / "rep", exports=exports_dir,
                              min_images=1), log=lambda _line: None)
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| GMAC/s (% of peak) |" in text
    section = text.split("### ci", 1)[1].split("### arm64-qemu", 1)[0]
    for line in lines:
        cell = f"{line['gmacs_per_s']:.3g} ({100 * line['fraction_of_peak']:.0f}%)"
        row = next(r for r in section.splitlines() if r.startswith(f"| {line['artifact_id']} |"))
        assert f"| {cell} |" in row, (cell, row)
        assert f"{line['peak_gmacs_per_s']:.4g} GMAC/s, {line['peak_source']}" in section
    qemu = text.split("### arm64-qemu", 1)[1].split("###", 1)[0]
    row = next(r for r in qemu.splitlines() if r.startswith(f"| {lines[0]['artifact_id']} |"))
    assert row.split(" | ")[8] == "n/a"  # emulated: no efficiency
    with open(tmp_path / "rep" / "devices.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {"macs", "gmacs_per_s", "peak_gmacs_per_s", "fraction_of_peak", "peak_source"} <= set(DEVICES_CSV_COLUMNS)
    assert {float(r["fraction_of_peak"]) for r in rows if r["device_name"] == "ci"} == \
        {line["fraction_of_peak"] for line in lines}
