"""skyedge classify: real tiny models (LiteRT, ONNX Runtime), real images, TensorFlow blocked.

The exports come from test_bench_run's session fixture (a tiny Keras model converted to TFLite
fp32 and full int8, and an ONNX model); a copy gets SkyEdge's description embedded with
``export.embed`` (in a subprocess, as the fixture's builder, so TensorFlow stays out of pytest).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, make_image
from test_bench_run import SIZE, exports_dir  # noqa: F401  (fixture)
from test_bench_bundle import SITECUSTOMIZE

TEMPERATURE = 1.7


def _embed_all(exports: Path) -> None:
    """Give every artifact a temperature and a training prior and embed the description."""
    code = ("import json, sys; from pathlib import Path\n"
            "from export.embed import embed\nfrom device.model_info import description\n"
            "from device.checksum import sha256_file\n"
            "root = Path(sys.argv[1]); m = json.loads((root / 'manifest.json').read_text())\n"
            "for r in m['artifacts']:\n"
            f"    r['temperature'] = {TEMPERATURE}; r['train_prior'] = [0.5, 0.25, 0.25]\n"
            "    embed(root / r['file'], description(r)); r['sha256'] = sha256_file(root / r['file'])\n"
            "(root / 'manifest.json').write_text(json.dumps(m))\n")
    result = subprocess.run([sys.executable, "-c", code, str(exports)], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.fixture(scope="module")
def described(exports_dir, tmp_path_factory) -> Path:  # noqa: F811
    """A copy of the tiny exports whose model files describe themselves."""
    exports = tmp_path_factory.mktemp("described") / "exports"
    shutil.copytree(exports_dir, exports)
    _embed_all(exports)
    return exports


@pytest.fixture
def images(tmp_path) -> Path:
    """Good class-coloured JPEGs, a 200x150 greyscale PNG, an unreadable file and a text file."""
    folder = tmp_path / "my images"
    for i, label_index in enumerate((0, 1, 2, 0, 1, 2)):
        make_image(folder / f"sub{i % 2}" / f"good-{i}.jpg", seed=500 + i, size=48, label_index=label_index)
    grey = np.random.default_rng(3).integers(0, 255, (150, 200), dtype=np.uint8)
    Image.fromarray(grey, "L").save(folder / "wide grey é.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _tf_blocked_env(tmp_path: Path) -> dict:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("entry", [["-m", "device.classify"], ["-m", "device.cli", "classify"]])
def test_classify_folder_with_tensorflow_blocked(described, images, tmp_path, entry):
    out = tmp_path / "labels.csv"
    model = described / "models" / "tiny-fp32.tflite"
    result = subprocess.run([sys.executable, *entry, "--model", str(model), str(images), "--out", str(out)],
                            cwd=tmp_path, env=_tf_blocked_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr  # one unreadable file: partial
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert set(rows) == {f"good-{i}.jpg" for i in range(6)} | {"wide grey é.png", "broken.jpg"}
    assert "broken.jpg" in rows["broken.jpg"]["error"] and rows["broken.jpg"]["class"] == ""
    assert "broken.jpg" in result.stderr
    assert "warning: 1 image(s) were not RGB (mode L)" in result.stderr
    assert "warning: 1 image(s) were not square and were stretched to 32x32" in result.stderr
    assert "note: 6 image(s) were square but not 32x32 and were resized to it" in result.stderr
    assert "images/s" in result.stderr and "p50" in result.stderr

    # every readable image gets the class the model's own output gives (temperature and the
    # training prior never change the argmax; the raw output is computed here independently)
    from device.calibration import adjust_prior, apply_temperature
    from device.images import load_image
    from device.runtime import load

    runtime = load(model)
    for name, row in rows.items():
        if name == "broken.jpg":
            continue
        probs = [float(row[f"p_{label}"]) for label in ("GALAXY", "QSO", "STAR")]
        assert abs(sum(probs) - 1) < 1e-5
        raw = runtime.predict(load_image(Path(row["path"]), SIZE))
        assert row["class"] == ("GALAXY", "QSO", "STAR")[int(raw.argmax())]
        expected = adjust_prior(apply_temperature(raw[None], TEMPERATURE), (0.5, 0.25, 0.25), None)[0]
        assert np.allclose(probs, expected, atol=2e-6)
        assert row["abstained"] == "false" and float(row["confidence"]) == pytest.approx(max(probs), abs=1e-6)


def test_exports_folder_int8_onnx_prior_and_jsonl(described, images, tmp_path):
    from device.classify import Classifier, main

    out = tmp_path / "labels.jsonl"
    code = main(["--model", str(described), "--artifact", "tiny-l0-s0-int8-tflite", str(images / "sub0"),
                 "--out", str(out), "--prior", "survey", "--min-confidence", "0.99"])
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3 and all(sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-5) for r in lines)
    assert all(r["abstained"] == (r["confidence"] < 0.99) and (r["class"] is None) == r["abstained"] for r in lines)

    # --prior moves probabilities by Bayes' rule from the training mix (0.5, 0.25, 0.25)
    plain = Classifier(described / "models" / "tiny-fp32.onnx").predict(str(images / "sub0" / "good-0.jpg"))[0]
    survey = Classifier(described / "models" / "tiny-fp32.onnx", prior="survey").predict(
        [str(images / "sub0" / "good-0.jpg")])[0]
    p = np.array([plain.probabilities[k] for k in ("GALAXY", "QSO", "STAR")])
    q = p * np.array([0.44, 0.062, 0.498]) / np.array([0.5, 0.25, 0.25])
    assert np.allclose([survey.probabilities[k] for k in ("GALAXY", "QSO", "STAR")], q / q.sum(), atol=1e-6)

    # the default artifact of a folder is the most accurate on validation
    assert Classifier(described).info.artifact_id in {"tiny-l0-s0-fp32-tflite", "tiny-l0-s0-int8-tflite",
                                                      "tiny-l0-s0-fp32-onnx"}
    (described / "recommendation.json").write_text(json.dumps({"artifact_id": "tiny-l0-s0-fp32-onnx"}))
    try:
        assert Classifier(described).info.artifact_id == "tiny-l0-s0-fp32-onnx"
    finally:
        (described / "recommendation.json").unlink()


def test_python_api_on_arrays_and_a_lone_file(described):
    from device.classify import Classifier

    model = described / "models" / "tiny-int8.tflite"
    lone = Classifier(model)
    assert lone.info.source == "embedded" and lone.info.temperature == TEMPERATURE
    assert lone.info.labels == ("GALAXY", "QSO", "STAR") and lone.info.img_size == SIZE
    arrays = np.zeros((2, 40, 40, 3), np.uint8)
    arrays[0, ..., 0] = 200
    results = lone.predict(list(arrays))
    assert len(results) == 2 and all(r.error is None and r.label in lone.labels for r in results)
    raw = Classifier(model, calibrated=False).predict(arrays[0])[0]
    assert raw.label == results[0].label and raw.confidence >= results[0].confidence  # T > 1 softens


def test_resume_skips_done_rows_and_redoes_a_torn_one(described, images, tmp_path):
    from device.classify import main

    out = tmp_path / "labels.csv"
    model = str(described / "models" / "tiny-fp32.onnx")
    assert main(["--model", model, str(images / "sub0"), "--out", str(out)]) == 0
    assert main(["--model", model, str(images / "sub0"), "--out", str(out)]) == 2  # exists, no --resume
    text = out.read_text()
    out.write_text(text[:-7])  # a killed run's torn last row
    assert main(["--model", model, str(images / "sub0"), str(images / "sub1"), "--out", str(out), "--resume"]) == 0
    rows = _rows(out)
    assert sorted(Path(r["path"]).name for r in rows) == [f"good-{i}.jpg" for i in range(6)]
    assert all(r["class"] for r in rows)


def test_csv_input_and_bad_options(described, images, tmp_path, capsys):
    from device.classify import main

    listing = tmp_path / "list.csv"
    listing.write_text("path,other\n" + "".join(f"{p.relative_to(tmp_path)},x\n"
                                                  for p in sorted(images.rglob("good-*.jpg"))))
    model = str(described / "models" / "tiny-fp32.tflite")
    assert main(["--model", model, str(listing)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("path,class,p_GALAXY") and len(printed) == 7

    for args, expected in ((["--min-confidence", "nan"], "--min-confidence"), (["--min-confidence", "1.5"], "--min-confidence"),
                           (["--threads", "0"], "--threads"), (["--prior", "1,2"], "--prior"),
                           (["--prior", "0,1,1"], "--prior"), (["--out", str(tmp_path)], "--out"),
                           (["--artifact", "x"], "--artifact")):
        assert main(["--model", model, str(images), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert main(["--model", str(tmp_path / "none.tflite"), str(images)]) == 2
    assert main(["--model", model, str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def test_sigterm_keeps_rows(described, tmp_path):
    """SIGTERM mid-run (a time limit) exits 143 with every finished row intact and resumable."""
    folder = tmp_path / "many"
    for i in range(1200):
        make_image(folder / f"img-{i:04d}.png", seed=i, size=32, label_index=i % 3)
    out = tmp_path / "labels.csv"
    proc = subprocess.Popen([sys.executable, "-m", "device.classify", "--model",
                             str(described / "models" / "tiny-fp32.tflite"), str(folder), "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):  # wait until rows are being written
        if out.is_file() and out.read_text().count("\n") > 5:
            break
        proc.poll() is None or pytest.fail(proc.stderr.read())
        subprocess.run(["sleep", "0.05"])
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode in (0, -signal.SIGTERM):  # finished (its handler already gone) before the signal landed
        assert len(_rows(out)) == 1200
        pytest.skip("the run finished before the signal landed")
    assert proc.returncode == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err
    done = _rows(out)
    assert all(r["class"] for r in done)
    from device.classify import main

    assert main(["--model", str(described / "models" / "tiny-fp32.tflite"), str(folder), "--out", str(out),
                 "--resume"]) == 0
    assert sorted(r["path"] for r in _rows(out)) == sorted(str(p) for p in folder.glob("*.png"))
