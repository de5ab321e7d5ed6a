"""bench report on fake but consistent inputs: a sweep, an exports manifest and result lines of
several devices whose per-image predictions are built to give a known verdict."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from device.metrics import mcnemar, wilson_interval

N = 300
LABELS = np.random.default_rng(0).integers(0, 3, N)
IMAGES = hashlib.sha256(b"val images").hexdigest()


def predictions(correct: np.ndarray) -> list[int]:
    """Predictions that are right exactly where ``correct`` is True."""
    return [int(y) if ok else int((y + 1) % 3) for y, ok in zip(LABELS, correct)]


def masks(n_right_a: int, b: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of models A and B: A right on ``n_right_a`` images, of which ``b`` B gets
    wrong, and B also right on ``c`` images A gets wrong."""
    a = np.zeros(N, bool)
    a[:n_right_a] = True
    bm = a.copy()
    bm[:b] = False
    bm[n_right_a:n_right_a + c] = True
    return a, bm


def line(device: str, backbone: str, variant: str, p50: float, correct: np.ndarray, size: int, **extra) -> dict:
    preds = predictions(correct)
    k = int(correct.sum())
    low, high = wilson_interval(k, N)
    aid = f"{backbone}-l5-s0-{variant}-tflite"
    return {"device_name": device, "cpu_model": "Cortex-A76", "arch": "aarch64", "cores": 4, "ram_bytes": 8 << 30,
            "os": "Debian 12", "python": "3.11.2", "governor": "performance", "runtime": "litert",
            "runtime_package": "ai-edge-litert", "runtime_version": "2.3.0", "threads": 4, "mode": "kernel",
            "artifact_id": aid, "backbone": backbone, "level": 5, "seed": 0, "variant": variant, "format": "tflite",
            "size_bytes": size, "latency_ms_p50": p50, "latency_ms_p90": p50 * 1.1, "latency_ms_p99": p50 * 1.3,
            "latency_ms_p50_ci_low": p50 * 0.98, "latency_ms_p50_ci_high": p50 * 1.02,
            "peak_rss_bytes": 120_000_000, "rss_increase_bytes": 30_000_000, "n_images": N,
            "accuracy": k / N, "accuracy_ci_low": low, "accuracy_ci_high": high, "macro_f1": k / N - 0.02,
            "agreement": 0.99, "images_sha256": IMAGES, "pred_indices": preds, "label_indices": LABELS.tolist(),
            "notes": [], **extra}


# pi5: mobile significantly worse (mobile first: b=0, c=45) and slower than the int8 ResNet50: supported
SUP_OTHER, SUP_MOBILE = masks(285, 45, 0)
# pi4: mobile 1 point behind (b=3, c=6), much faster: not significant, but a deficit of more than one
# point is not excluded either, so inconclusive (#21: "not significant" is not "no difference")
CON_OTHER, CON_MOBILE = masks(282, 6, 3)


EXPORT_WARNING = "int8 agrees with the Keras model on 88.0% of images, below the 95% threshold"


def device_lines() -> tuple[list[dict], list[dict]]:
    pi5 = [line("pi5", "resnet50", "fp32", 9.0, SUP_OTHER, 98_000_000),
           line("pi5", "resnet50", "int8", 5.0, SUP_OTHER, 25_000_000),
           line("pi5", "mobilenetv2", "fp32", 20.0, SUP_MOBILE, 9_000_000),
           line("pi5", "mobilenetv2", "int8", 12.0, SUP_MOBILE, 2_600_000),
           {**line("pi5", "densenet121", "fp32", 1.0, SUP_OTHER, 1), "error": "worker killed by SIGKILL",
            "accuracy": None}]
    pi4 = [line("pi4", "resnet50", "fp32", 400.0, CON_OTHER, 98_000_000),
           line("pi4", "mobilenetv2", "fp32", 30.0, CON_MOBILE, 9_000_000),
           line("pi4", "mobilenetv2", "fp32", 45.0, CON_MOBILE, 9_000_000, threads=1),
           line("pi4", "mobilenetv3small", "int8", 4.0, CON_MOBILE & (np.arange(N) > 20), 1_200_000),
           # only mobile models on this one
           line("phone", "mobilenetv2", "fp32", 8.0, CON_MOBILE, 9_000_000),
           line("phone", "efficientnetb0", "fp32", 15.0, CON_OTHER, 21_000_000),
           # the same models under qemu: accuracy fine, latency meaningless
           line("arm64-qemu", "resnet50", "fp32", 4000.0, CON_OTHER, 98_000_000,
                notes=["emulated: qemu-aarch64 cortex-a72; latency not meaningful"]),
           line("arm64-qemu", "mobilenetv2", "fp32", 900.0, CON_MOBILE, 9_000_000,
                notes=["emulated: qemu-aarch64 cortex-a72; latency not meaningful"])]
    return pi5, pi4


def write_inputs(root: Path) -> dict:
    runs = root / "runs"
    runs.mkdir()
    sweep = []
    for backbone, accs in (("resnet50", (0.48, 0.95)), ("mobilenetv2", (0.78, 0.90))):
        for level, acc in zip((0, 5), accs):
            low, high = wilson_interval(round(acc * N), N)
            sweep.append({"run_id": f"{backbone}-l{level}-s0", "backbone": backbone, "level": level, "seed": 0,
                          "val_n": N, "val_accuracy": acc, "val_accuracy_ci_low": low, "val_accuracy_ci_high": high,
                          "val_macro_f1": acc - 0.03, "trainable_params": 3843 + 1000 * level,
                          "total_params": 2_261_827, "ltr": level / 155, "ptr": 0.002 * (level + 1)})
    sweep.append({"run_id": "vgg16-l3-s0", "backbone": "vgg16", "level": 3, "seed": 0, "error": "OOM"})
    (runs / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sweep))

    exports = root / "exports"
    exports.mkdir()
    artifacts = []
    for backbone, fp32_size in (("resnet50", 98_000_000), ("mobilenetv2", 9_000_000)):
        for variant, size in (("fp32", fp32_size), ("int8", fp32_size // 4)):
            artifacts.append({"artifact_id": f"{backbone}-l5-s0-{variant}-tflite", "backbone": backbone, "level": 5,
                              "seed": 0, "variant": variant, "format": "tflite", "file": f"models/{backbone}.tflite",
                              "sha256": "0" * 64, "size_bytes": size, "input_dtype": "float32", "img_size": 224,
                              "keras_val_accuracy": 0.95, "val_accuracy": 0.94, "accuracy_delta": -0.01,
                              "agreement": 0.98, "max_abs_diff": 0.012})
    artifacts[-1].update(agreement=0.88, warning=EXPORT_WARNING)  # mobilenetv2 int8
    artifacts.append({"artifact_id": "vgg16-l3-s0-int8-onnx", "backbone": "vgg16", "level": 3, "seed": 0,
                      "variant": "int8", "format": "onnx", "error": "quantizer failed"})
    (exports / "manifest.json").write_text(json.dumps({"format_version": 1, "artifacts": artifacts}))

    pi5, pi4 = device_lines()
    a, b = root / "pi5.jsonl", root / "others.jsonl"
    a.write_text("".join(json.dumps(x) + "\n" for x in pi5))
    b.write_text("".join(json.dumps(x) + "\n" for x in pi4))
    return {"runs": runs, "exports": exports, "results": (a, b), "out": root / "report"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from bench.report import ReportConfig, write_report

    inputs = write_inputs(tmp_path_factory.mktemp("report"))
    result = write_report(ReportConfig(**inputs, budgets_ms=(10.0, 50.0, 200.0, 1000.0)), log=lambda _line: None)
    return result, result["report"].read_text()


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    rest = text[start + len(heading):]
    end = re.search(r"^#{2,3} ", rest, re.MULTILINE)
    return rest[:end.start()] if end else rest


def test_sections_and_tables(report):
    result, text = report
    for heading in ("## 1. The study's tables", "### Level 0 (head only)", "### Best level per backbone",
                    "## 2. Exported models", "## 3. Devices", "### Lines with an error (left out)",
                    "## 4. Accuracy against latency and size", "## 5. Verdict", "### Decision rule"):
        assert heading in text, heading
    # sweep table from train.summary, with the failed run counted
    assert "4 successful runs of 2 backbones, 1 failed" in text and "| resnet50 | 5 |" in text
    # export table: int8/fp32 size ratio and the failed export
    exports = section(text, "## 2. Exported models")
    assert "| mobilenetv2-l5-s0-int8-tflite | mobilenetv2 | mobile | int8 | tflite | 2.25 | 0.25 |" in exports
    assert "quantizer failed" in exports
    # device table: CI on p50, Wilson CI on accuracy, both thread counts of pi4's mobilenetv2
    pi4 = section(text, "### pi4\n")
    assert "| 30 [29.4, 30.6] |" in pi4 and "| 45 [" in pi4
    low, high = wilson_interval(int(CON_MOBILE.sum()), N)
    assert f"{100 * CON_MOBILE.mean():.1f}% [{100 * low:.1f}%, {100 * high:.1f}%]" in pi4
    errors = section(text, "### Lines with an error (left out)")
    assert "densenet121" in errors and "SIGKILL" in errors
    assert "densenet121" not in section(text, "### pi5: the claim")
    emulated = section(text, "### arm64-qemu\n")
    assert "EMULATED: latency not meaningful" in emulated
    # a note every line of a device carries is said once, above its table
    assert emulated.count("emulated: qemu-aarch64 cortex-a72") == 1
    assert "Notes on every line: emulated: qemu-aarch64 cortex-a72" in emulated


def test_verdicts_follow_the_data(report):
    result, text = report
    assert result["verdicts"] == {"pi5": "supported", "pi4": "inconclusive", "phone": "inconclusive",
                                  "arm64-qemu": "inconclusive"}
    pi5 = section(text, "### pi5: the claim is **supported**")
    assert "no mobile model on it" in pi5 and "No latency budget has a mobile model" in pi5
    assert "p = " in pi5 and ": significant at alpha = 0.05" in pi5
    pi4 = section(text, "### pi4: the claim is **inconclusive**")
    assert "Inconclusive: the gap lies between -" in pi4 and "margin 1 point(s)" in pi4
    assert "mobile models on it: mobilenetv3small int8 tflite, mobilenetv2 fp32 tflite" in pi4
    assert "not significant" in pi4 and "10 ms (mobilenetv3small int8 tflite)" in pi4
    # the fastest thread count stands for the model
    assert "| mobilenetv2 fp32 tflite | mobile |" in pi4 and "| 30 |" in pi4
    phone = section(text, "### phone: the claim is **inconclusive**")
    assert "Only mobile backbones were measured here" in phone
    emulated = section(text, "### arm64-qemu: the claim is **inconclusive**")
    assert "ran under emulation" in emulated and "No latency measured outside emulation" in emulated
    assert "McNemar exact p" in emulated  # accuracy from emulation is still compared


def test_mcnemar_matches_device_metrics(report):
    # #12 item 7: one convention everywhere, stated once at the top: the model under test (the
    # mobile model of the verdict, the row's model of a table) is A, so b counts its wins
    _, text = report
    assert text.count("McNemar's b = images only the model under test") == 2  # the top, and the sweep's own table
    for device, other, mobile in (("pi5", SUP_OTHER, SUP_MOBILE), ("pi4", CON_OTHER, CON_MOBILE)):
        expected = mcnemar(mobile, other)
        block = section(text, f"### {device}: the claim")
        got = re.search(r"McNemar exact p = ([0-9.e+-]+) on (\d+) images \(b = (\d+).*?c = (\d+)", block)
        assert got, block
        assert float(got.group(1)) == pytest.approx(expected["p_value"], rel=1e-3)
        assert (int(got.group(2)), int(got.group(3)), int(got.group(4))) == (N, expected["b"], expected["c"])
    assert mcnemar(SUP_OTHER, SUP_MOBILE)["p_value"] < 0.05 < mcnemar(CON_OTHER, CON_MOBILE)["p_value"]


def test_figures_are_valid_pngs(report):
    result, text = report
    names = {p.name for p in result["figures"]}
    assert {"accuracy_vs_latency_pi5.png", "accuracy_vs_size_pi5.png", "accuracy_vs_size_arm64-qemu.png"} <= names
    assert "accuracy_vs_latency_arm64-qemu.png" not in names  # emulated latency is never plotted
    for path in result["figures"]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            assert image.size[0] > 600 and image.size[1] > 400
        assert f"({path.name})" in text


def test_pareto_front_and_images_mismatch():
    from bench.verdict import Point, decide, pareto_front

    def point(name, acc, p50):
        return Point(name, name, "fp32", "tflite", None, acc, acc, acc, p50, 1.0, {})

    pts = [point("a", 0.80, 5.0), point("b", 0.90, 10.0), point("c", 0.85, 20.0), point("d", 0.90, 12.0),
           point("e", 0.95, 50.0), point("f", 0.80, 5.0)]
    assert [p.artifact_id for p in pareto_front(pts, lambda p: p.p50_ms)] == ["a", "b", "e"]

    pi5, _ = device_lines()
    shifted = [dict(ln, images_sha256="other") if ln["backbone"] == "mobilenetv2" else ln for ln in pi5[:4]]
    verdict = decide("pi5", shifted)
    assert verdict.verdict == "inconclusive" and verdict.test is None
    assert any("not run on the same images" in r for r in verdict.reasons)
    few = decide("pi5", pi5[:4], min_images=N + 1)
    assert few.verdict == "inconclusive" and any("fewer than the minimum" in r for r in few.reasons)


def test_cli_through_bench_main(tmp_path, capsys):
    from bench.cli import main

    inputs = write_inputs(tmp_path)
    status = main(["report", "--runs", str(inputs["runs"]), "--exports", str(inputs["exports"]),
                   "--results", *map(str, inputs["results"]), "--out", str(inputs["out"]),
                   "--budgets", "10,50", "--alpha", "0.01"])
    out = capsys.readouterr().out
    assert status == 0 and "pi5: claim supported" in out and (inputs["out"] / "report.md").is_file()
    text = (inputs["out"] / "report.md").read_text()
    assert "Latency budgets: 10, 50 ms" in text and "p < alpha (0.01)" in text
    assert main(["report", "--results", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r")]) == 2
    assert "missing.jsonl: no such results file" in capsys.readouterr().err


def test_a_model_at_chance_is_flagged(tmp_path):
    # #12 item 7: a model scoring the majority-class rate was not flagged
    at_chance = np.zeros(N, bool)
    at_chance[: int(N * 0.36)] = True  # about what always answering one class scores on balanced labels
    good = np.ones(N, bool)
    good[: N // 10] = False
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(l) + "\n" for l in (
        line("pi5", "mobilenetv2", "fp32", 4.0, at_chance, 9_000_000),
        line("pi5", "resnet50", "fp32", 20.0, good, 90_000_000))))
    from bench.report import ReportConfig, write_report

    write_report(ReportConfig(results=(results,), out=tmp_path / "rep"), log=lambda _: None)
    md = (tmp_path / "rep" / "report.md").read_text()
    rows = [r for r in md.splitlines() if r.startswith("| mobilenetv2-l5-s0-fp32") or r.startswith("| resnet50-l5-s0-fp32")]
    flagged = [r for r in rows if "NOT ABOVE CHANCE" in r]
    assert len(flagged) == 1 and flagged[0].startswith("| mobilenetv2")


def test_default_budgets_span_each_devices_measured_range(tmp_path):
    # #12 item 7: fixed 10-1,000 ms budgets all exceeded every p50 of a fast machine (four identical rows)
    import json

    from bench.report import ReportConfig, write_report

    inputs = write_inputs(tmp_path)
    write_report(ReportConfig(**inputs), log=lambda _line: None)
    verdict = json.loads((inputs["out"] / "verdict.json").read_text())
    assert verdict["budgets_ms"] == "derived per device from its p50 range"
    text = (inputs["out"] / "report.md").read_text()
    assert "Latency budgets: per device, four spaced evenly on a log scale" in text
    for device, record in verdict["devices"].items():
        p50 = [p["latency_ms_p50"] for p in record["points"] if p.get("latency_ms_p50") and not record["emulated_lines"]]
        budgets = [b["budget_ms"] for b in record["budgets"]]
        if not p50:
            continue
        assert min(p50) <= budgets[0] < budgets[-1] and budgets[-1] >= max(p50), device
        # the smallest budget fits the fastest model, the largest every model
        assert all(b["artifact_id"] for b in record["budgets"]), device



def test_export_warnings_reach_the_notes_and_the_verdict(report):
    # #12 item 7: an int8 agreement below the threshold was said on the export's console only
    result, text = report
    pi5 = section(text, "### pi5: the claim")
    assert "mobilenetv2 int8 tflite was flagged at export: " + EXPORT_WARNING in pi5
    exported, *measured = [r for r in text.splitlines() if r.startswith("| mobilenetv2-l5-s0-int8-tflite |")]
    assert exported.endswith("| WARNING: " + EXPORT_WARNING + " |")  # section 2, the export table
    assert measured and all("EXPORT WARNING: " + EXPORT_WARNING in r for r in measured)
    assert not any("EXPORT WARNING" in r for r in text.splitlines() if r.startswith("| mobilenetv2-l5-s0-fp32"))


def test_paths_below_the_working_folder_are_shown_relative(tmp_path, monkeypatch):
    # a report copied elsewhere (docs/report-example) must not name a folder of this machine
    from bench.report_records import devices_csv, shown_path

    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "demo" / "data") == "demo/data"
    assert shown_path("/elsewhere/data") == "/elsewhere/data" and shown_path("rel/data") == "rel/data"
    csv_text = devices_csv({"pi": [{"device_name": "pi", "backbone": "mobilenetv2", "data": str(tmp_path / "d")}]}, [])
    assert str(tmp_path) not in csv_text and ",d," in csv_text


def test_verdict_is_an_estimate_with_an_equivalence_margin(tmp_path):
    # #21 item 2: the words follow the gap's interval and the two one-sided tests against the margin
    from bench.verdict import decide, gap_estimate

    ahead_other, ahead_mobile = masks(282, 3, 6)  # mobile one point ahead
    lines = [line("pi", "resnet50", "fp32", 40.0, ahead_other, 98_000_000),
             line("pi", "mobilenetv2", "fp32", 5.0, ahead_mobile, 9_000_000)]
    v = decide("pi", lines)
    assert v.verdict == "contradicted" and v.gap["gap"] == pytest.approx(0.01)
    assert v.gap["ci_low"] < v.gap["gap"] < v.gap["ci_high"] and v.gap["p_noninferiority"] < 0.05 and v.gap["n_seeds"] == 1
    assert any("non-inferior within the margin" in r for r in v.reasons)
    # a margin of a tenth of a point is too tight for 300 images: the same data are inconclusive
    assert decide("pi", lines, margin=0.001).verdict == "inconclusive"

    # seeds: a model measured with two seeds is their mean, and the bootstrap resamples them
    second = np.roll(ahead_mobile, 7)
    seeded = lines + [dict(line("pi", "mobilenetv2", "fp32", 5.0, second, 9_000_000), seed=1,
                           artifact_id="mobilenetv2-l5-s1-fp32-tflite")]
    v2 = decide("pi", seeded)
    assert v2.gap["n_seeds_mobile"] == 2 and v2.gap["n_seeds"] == 1
    assert v2.gap["gap"] == pytest.approx((ahead_mobile.mean() + second.mean()) / 2 - ahead_other.mean())
    same, _ = gap_estimate([p for p in v2.points if p.backbone == "mobilenetv2"],
                           [p for p in v2.points if p.backbone == "resnet50"], draws=4000)
    assert same["ci_low"] == pytest.approx(v2.gap["ci_low"])  # seeded: the same interval every time

    # the report and verdict.json carry the estimate
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(x) + "\n" for x in seeded))
    from bench.report import ReportConfig, write_report

    write_report(ReportConfig(results=(results,), out=tmp_path / "rep", margin=0.02), log=lambda _: None)
    record = json.loads((tmp_path / "rep" / "verdict.json").read_text())
    device = record["devices"]["pi"]
    assert record["margin"] == 0.02 and device["gap"]["margin"] == 0.02 and device["n_seeds"] == 1
    assert device["gap"]["ci_low"] < device["gap"]["gap"] < device["gap"]["ci_high"]
    assert 0 < device["p_equivalence"] <= 1 and device["verdict"] == "contradicted"
    assert "Equivalence margin of the verdict: **2 accuracy point(s)**" in (tmp_path / "rep" / "report.md").read_text()
