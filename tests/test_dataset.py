import csv

import numpy as np
import pytest

from device.dataset import (LABELS, DatasetError, Record, class_weights, index_tree, open_dataset,
                            read_manifest, stratified_split, write_manifest)
from train.data import main as data_main


def test_labels_sorted_give_indices():
    assert LABELS == tuple(sorted(LABELS)) == ("GALAXY", "QSO", "STAR")
    assert Record("a.jpg", "QSO").label_index == 1


def test_index_class_tree_split_and_reread(class_tree):
    records, layout = index_tree(class_tree)
    assert layout == "class-folders" and len(records) == 24
    split = stratified_split(records, seed=3, val=0.3, test=0.2)
    again = stratified_split(list(reversed(records)), seed=3, val=0.3, test=0.2)
    assert split == again
    assert split != stratified_split(records, seed=4, val=0.3, test=0.2)
    by = {(r.label, r.split): 0 for r in split}
    for r in split:
        by[(r.label, r.split)] += 1
    assert by[("GALAXY", "val")] == 3 and by[("GALAXY", "test")] == 2 and by[("GALAXY", "train")] == 5
    assert by[("QSO", "val")] == 2 and by[("STAR", "val")] == 2
    write_manifest(class_tree, split)
    ds = read_manifest(class_tree)
    assert ds.records == split
    images, labels, kept, skipped = ds.load_arrays("val", 32)
    assert images.shape == (7, 32, 32, 3) and images.dtype == np.uint8
    assert sorted(set(labels.tolist())) == [0, 1, 2] and not skipped


def test_unreadable_images_are_skipped_with_paths(class_tree):
    records = stratified_split(index_tree(class_tree)[0], seed=0)
    write_manifest(class_tree, records)
    victim = next(r for r in records if r.split == "train")
    (class_tree / victim.path).write_bytes(b"\xff\xd8\xff garbage")
    seen = []
    images, labels, kept, skipped = read_manifest(class_tree).load_arrays("train", 16, on_skip=lambda p, why: seen.append(p))
    assert len(skipped) == 1 and victim.path in skipped[0][0] and seen == [skipped[0][0]]
    assert len(kept) == len(images) == len(labels) == sum(r.split == "train" for r in records) - 1


def test_labels_csv_layout_takes_dev_only(tmp_path, class_tree):
    rows = [("GALAXY/galaxy-000.jpg", "galaxy", "dev", "1"), ("QSO/qso-000.jpg", "QSO", "dev", "2"),
            ("STAR/star-000.jpg", "Star", "holdout", "3")]
    with open(class_tree / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "subset", "objid"])
        w.writerows(rows)
    records, layout = index_tree(class_tree, base=tmp_path / "elsewhere")
    assert layout == "labels.csv"
    assert [r.label for r in records] == ["GALAXY", "QSO"]
    assert records[0].path.startswith("../tree/") and records[0].objid == "1"


def test_open_dataset_on_shared_sdss_indexes_in_memory(shared_sdss):
    ds = open_dataset(shared_sdss)
    assert ds.origin == "labels.csv" and ds.notes
    counts = ds.counts()
    assert counts["val"] == counts["test"] == {"GALAXY": 150, "QSO": 150, "STAR": 150}
    assert all(r.source == "labels.csv:dev" for r in ds.records)
    assert open_dataset(shared_sdss).records == ds.records


def test_bad_inputs_have_one_clear_line(tmp_path, class_tree):
    (class_tree / "QSO").mkdir(exist_ok=True)
    (class_tree / "NEBULA").mkdir()
    with pytest.raises(DatasetError, match="unknown label 'NEBULA'.*GALAXY, QSO, STAR"):
        index_tree(class_tree)
    (class_tree / "NEBULA").rmdir()
    for p in (class_tree / "QSO").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="QSO: empty class folder"):
        index_tree(class_tree)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.csv").write_text("path,label\na.jpg,GALAXY\n")
    with pytest.raises(DatasetError, match="missing column.*split"):
        read_manifest(tmp_path / "m")
    (tmp_path / "m" / "manifest.csv").write_text("path,label,split\na.jpg,GALAXY,train\n")
    with pytest.raises(DatasetError, match=r"manifest.csv:2: names missing file a.jpg"):
        read_manifest(tmp_path / "m")
    (tmp_path / "m" / "manifest.csv").write_text("path,label,split\na.jpg,galaxy,holdout\n")
    with pytest.raises(DatasetError, match="unknown split 'holdout'"):
        read_manifest(tmp_path / "m")
    with pytest.raises(DatasetError, match="no manifest.csv"):
        read_manifest(tmp_path)


def test_class_weights_match_the_study():
    labels = np.array([0] * 440 + [1] * 62 + [2] * 498)
    w = class_weights(labels)
    assert w[1] == pytest.approx(1000 / (3 * 62))
    assert w[0] == pytest.approx(1000 / (3 * 440))


def test_cli_index_and_stats(class_tree, tmp_path, capsys):
    assert data_main(["index", str(class_tree), "--out", str(tmp_path / "idx"), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "indexed 24 images" in out and "val" in out
    assert data_main(["stats", str(tmp_path / "idx")]) == 0
    assert "image sizes: 48x48: 24" in capsys.readouterr().out
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert data_main(["index", str(class_tree), "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create output folder" in err[0] and "file.txt" in err[0]


def test_cli_index_makes_an_evaluation_only_set(class_tree, tmp_path, capsys):
    # docs/study.sh indexes the holdout as all-test (--val 0 --test 1); the option check once refused 1
    from device.dataset import read_manifest

    assert data_main(["index", str(class_tree), "--out", str(tmp_path / "all-test"), "--val", "0", "--test", "1"]) == 0
    dataset = read_manifest(tmp_path / "all-test")
    assert len(dataset.split("test")) == 24 and not dataset.split("train") and not dataset.split("val")
    capsys.readouterr()
    assert data_main(["index", str(class_tree), "--out", str(tmp_path / "x"), "--val", "0.5", "--test", "0.6"]) == 2
    assert "val + test <= 1" in capsys.readouterr().err
