"""train.fetch against a local fault-injecting SkyServer (tests/skyserver.py): real HTTP, real files."""
from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

# skyserver.py is a helper beside this file, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from skyserver import SkyServer, expected_color, fake_object  # noqa: E402

from device.dataset import DatasetError, read_manifest  # noqa: E402
from device.images import read_rgb  # noqa: E402
from train.fetch import FetchConfig, FetchError, fetch  # noqa: E402
from train.sky_objects import class_counts, read_catalog  # noqa: E402

FAST = dict(rate=1000.0, workers=4, timeout=0.3, retries=3, backoff=0.01, size=64)
GOOD = ("ok", "slow")


def config(out, server, **kwargs) -> FetchConfig:
    return FetchConfig(out=out, base_url=server.base_url, **{**FAST, **kwargs})


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def assert_image(path: Path, ra: float, dec: float) -> None:
    mean = read_rgb(path).reshape(-1, 3).mean(axis=0)
    assert np.abs(mean - np.array(expected_color(ra, dec))).max() < 4, f"{path} holds another object's image"


def assert_complete(out: Path, expected: int) -> None:
    dataset = read_manifest(out)
    assert len(dataset.records) == expected
    for record in dataset.records:
        assert_image(dataset.resolve(record), float(record.ra), float(record.dec))
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def sql_objects(counts: dict[str, int]) -> list[dict]:
    return [fake_object(label, i) for label, k in counts.items() for i in range(k)]


def test_faults_are_retried_until_every_object_is_valid(tmp_path):
    counts = class_counts(20, (0.44, 0.062, 0.498))
    objs = sql_objects(counts)
    plan = {objs[0]["objid"]: ["500", "503"], objs[1]["objid"]: ["hang"], objs[2]["objid"]: ["short"],
            objs[3]["objid"]: ["half"], objs[4]["objid"]: ["html", "html"], objs[5]["objid"]: ["slow"],
            objs[-1]["objid"]: ["503", "hang", "half"]}
    lines = []
    # A timeout generous enough that only "hang" trips it, even on a loaded test machine.
    with SkyServer(faults=plan, sql_faults=["503", "html"], hang_s=1.5) as server:
        summary = fetch(config(tmp_path, server, n=20, timeout=1.0), log=lines.append)
        for objid, faults in plan.items():
            # "slow" is answered in time, so it is the one fault that needs no retry.
            assert len(server.requests("cutout", objid)) == len([f for f in faults if f != "slow"]) + 1
    assert (summary.requested, summary.downloaded, summary.present, summary.failed) == (20, 20, 0, 0)
    assert summary.bytes > 0 and "20 downloaded now" in lines[-1]
    assert rows(tmp_path / "failures.csv") == []
    assert_complete(tmp_path, 20)
    manifest = read_manifest(tmp_path)
    assert {r.source for r in manifest.records} == {"skyserver-dr16"}
    assert {r.objid for r in manifest.records} == {o["objid"] for o in objs}
    assert {r.split for r in manifest.records} == {"train", "val", "test"}


def test_4xx_is_not_retried_and_a_later_success_clears_the_failure(tmp_path):
    objs = sql_objects({"GALAXY": 3, "QSO": 1, "STAR": 2})
    gone, once = objs[0]["objid"], objs[4]["objid"]
    with SkyServer(faults={once: ["404"]}, missing={gone}) as server:
        first = fetch(config(tmp_path, server, n=6, mix=(3, 1, 2)), log=lambda _: None)
        assert len(server.requests("cutout", gone)) == 1 and len(server.requests("cutout", once)) == 1
        failures = rows(tmp_path / "failures.csv")
        assert sorted(f["objid"] for f in failures) == sorted([gone, once])
        assert all("404" in f["reason"] and f["attempts"] == "1" and "getjpeg" in f["url"] for f in failures)
        assert (first.downloaded, first.failed) == (4, 2)

        second = fetch(config(tmp_path, server, n=6, mix=(3, 1, 2)), log=lambda _: None)
        assert (second.downloaded, second.present, second.failed) == (1, 4, 1)
        assert [f["objid"] for f in rows(tmp_path / "failures.csv")] == [gone]
        assert len(server.requests("sql")) == 3, "the saved objects.csv must be reused, not queried again"
    assert_complete(tmp_path, 5)


KILLED_FETCH = textwrap.dedent("""
    import sys
    from train.fetch import FetchConfig, fetch
    fetch(FetchConfig(out=sys.argv[1], base_url=sys.argv[2], n=24, rate=1000, workers=2, size=64,
                      timeout=2, retries=1, backoff=0.01), log=lambda _: None)
""")


def test_killed_fetch_resumes_without_downloading_complete_files_again(tmp_path):
    with SkyServer(delay_s=0.08) as server:
        proc = subprocess.Popen([sys.executable, "-c", KILLED_FETCH, str(tmp_path), server.base_url],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("*/*.jpg"))) < 6 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        output = proc.communicate()[0].decode(errors="replace")
        assert proc.returncode == -signal.SIGKILL, f"fetch ended before it could be killed: {output}"
        complete = {p.stem for p in tmp_path.glob("*/*.jpg")}
        assert 6 <= len(complete) < 24
        sql_before = len(server.requests("sql"))

        summary = fetch(config(tmp_path, server, n=24), log=lambda _: None)
        assert summary.present == len(complete) and summary.downloaded == 24 - len(complete)
        for objid in complete:
            served = [s for s in server.requests("cutout", objid) if s.what in GOOD]
            assert len(served) == 1, f"{objid} was complete but downloaded again"
        assert len(server.requests("sql")) == sql_before
    assert rows(tmp_path / "failures.csv") == []
    assert_complete(tmp_path, 24)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def test_catalogue_with_ra_dec_class_and_objid(tmp_path):
    catalog = write(tmp_path / "mine.csv", """
        objid,ra,dec,class
        101,10.5,-5.25,galaxy
        102,200.125,45.0,Qso
        103,359.999,-90,STAR
    """)
    with SkyServer() as server:
        summary = fetch(config(tmp_path / "out", server, catalog=catalog), log=lambda _: None)
        assert server.requests("sql") == []
    assert (summary.requested, summary.downloaded) == (3, 3)
    for objid, label, ra, dec in (("101", "GALAXY", 10.5, -5.25), ("103", "STAR", 359.999, -90.0)):
        assert_image(tmp_path / "out" / label / f"{objid}.jpg", ra, dec)
    assert {r.source for r in read_manifest(tmp_path / "out").records} == {"catalog:mine.csv"}


def test_kaggle_alpha_delta_catalogue_falls_back_to_a_unique_id(tmp_path):
    # The Kaggle table writes ids as floats, so obj_ID repeats here; spec_obj_ID is unique.
    catalog = write(tmp_path / "star_classification.csv", """
        obj_ID,alpha,delta,u,class,redshift,spec_obj_ID
        1.237660961327743e+18,135.689107,32.494632,23.8,GALAXY,0.63,6.543777369295181e+18
        1.237660961327743e+18,144.826101,31.274185,24.7,QSO,1.42,1.176014203670733e+19
        1.237664879951151e+18,142.18879,35.582444,25.2,STAR,0.0,5.152200256025548e+18
    """)
    objects = read_catalog(catalog)
    assert [o.objid for o in objects] == ["6543777369295181000", "11760142036707330000", "5152200256025548000"]
    assert objects[1].label == "QSO" and objects[1].z == "1.42"
    with SkyServer() as server:
        fetch(config(tmp_path / "out", server, catalog=catalog), log=lambda _: None)
    assert_image(tmp_path / "out" / "QSO" / "11760142036707330000.jpg", 144.826101, 31.274185)


def test_catalogue_without_ids_and_stratified_sample_is_deterministic(tmp_path):
    lines = ["ra,dec,class"] + [f"{i * 3.1:.3f},{i - 40},{('GALAXY', 'QSO', 'STAR')[i % 3]}" for i in range(60)]
    catalog = write(tmp_path / "cat.csv", "\n".join(lines) + "\n")
    objects = read_catalog(catalog)
    assert objects[1].objid == "ra3.100000_dec-39.000000"
    with SkyServer() as server:
        a = fetch(config(tmp_path / "a", server, catalog=catalog, n=10, mix=(0.5, 0.2, 0.3), seed=3), log=lambda _: None)
        b = fetch(config(tmp_path / "b", server, catalog=catalog, n=10, mix=(0.5, 0.2, 0.3), seed=3), log=lambda _: None)
    assert a.requested == b.requested == 10
    assert (tmp_path / "a" / "objects.csv").read_text() == (tmp_path / "b" / "objects.csv").read_text()
    labels = [r["class"] for r in rows(tmp_path / "a" / "objects.csv")]
    assert {label: labels.count(label) for label in set(labels)} == {"GALAXY": 5, "QSO": 2, "STAR": 3}
    with pytest.raises(DatasetError, match="20 QSO rows but 30 needed"):
        fetch(FetchConfig(out=tmp_path / "c", catalog=catalog, n=50, mix=(0.2, 0.6, 0.2)), log=lambda _: None)


@pytest.mark.parametrize("text, line, expected", [
    ("ra,class\n1,STAR\n", 1, "missing column(s) dec (or delta)"),
    ("ra,dec,class\n1,2,STAR\nabc,2,STAR\n", 3, "ra 'abc' is not a number"),
    ("alpha,delta,class\n1,2,STAR\n1,95,STAR\n", 3, "delta '95' is out of range; expected degrees in [-90, 90]"),
    ("ra,dec,class\n360,2,STAR\n", 2, "ra '360' is out of range; expected degrees in [0, 360)"),
    ("ra,dec,class\n1,2,STAR\n3,4,PLANET\n", 3, "unknown label 'PLANET'; expected one of GALAXY, QSO, STAR"),
    ("ra,dec,class\n1,2,STAR\n1,2,QSO\n", 3, "same position as line 2"),
])
def test_malformed_catalogue_names_file_and_line(tmp_path, text, line, expected):
    catalog = write(tmp_path / "bad.csv", text)
    with SkyServer() as server:
        with pytest.raises(DatasetError) as info:
            fetch(config(tmp_path / "out", server, catalog=catalog), log=lambda _: None)
        assert server.log == []
    message = str(info.value)
    assert f"{catalog}:{line}: " in message and expected in message and "\n" not in message


def test_unwritable_output_folder_fails_before_any_request(tmp_path):
    blocker = write(tmp_path / "file.txt", "a file, not a folder\n")
    with SkyServer() as server:
        with pytest.raises(FetchError, match=f"output folder {blocker / 'sub'} is not writable"):
            fetch(config(blocker / "sub", server, n=5), log=lambda _: None)
        assert server.log == []


def test_unreachable_service_says_so_at_once(tmp_path):
    # A bound socket that never listens refuses connections, and holding it keeps another
    # process (a parallel test run) from starting a server on that port meanwhile.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        base_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(FetchError, match=f"cannot reach {base_url} .*python -m train.data synth"):
            fetch(FetchConfig(out=tmp_path, n=3, base_url=base_url, backoff=5, retries=5), log=lambda _: None)
    assert time.monotonic() - start < 5


def test_rate_limit_is_shared_by_all_workers(tmp_path):
    lines = ["ra,dec,class"] + [f"{i + 0.5},{i},GALAXY" for i in range(10)]
    catalog = write(tmp_path / "cat.csv", "\n".join(lines) + "\n")
    with SkyServer() as server:
        start = time.monotonic()
        fetch(config(tmp_path / "out", server, catalog=catalog, rate=20, workers=8), log=lambda _: None)
        elapsed = time.monotonic() - start
        times = sorted(s.time for s in server.requests("cutout"))
    assert len(times) == 10
    # 10 request starts 1/20 s apart span 0.45 s. Arrival times at the server jitter on a busy
    # machine, so that bound is loose; unlimited, 8 workers would land within milliseconds.
    assert elapsed >= 0.45 and times[-1] - times[0] >= 0.15


def test_progress_lines_and_config_validation(tmp_path):
    lines = []
    with SkyServer() as server:
        fetch(config(tmp_path, server, n=40), log=lines.append)
    progress = [line for line in lines if line.startswith("fetch: ") and "/40 (" in line]
    assert 10 <= len(progress) <= 21 and progress[-1].startswith("fetch: 40/40 (100%)")
    with pytest.raises(ValueError, match="n is required without a catalog"):
        FetchConfig(out=tmp_path)
    with pytest.raises(ValueError, match="size=10: expected 64..2048"):
        FetchConfig(out=tmp_path, n=1, size=10)
    assert os.listdir(tmp_path)
