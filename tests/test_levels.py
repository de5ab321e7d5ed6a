import json

import pytest

from device.backbones import BACKBONES, GROUPS, get, resolve
from train.levels import LevelError, block_levels, main as levels_main, parse_schedule

STUDY = GROUPS["paper"]
KEYS = {"backbone", "level", "trainable_params", "total_params", "layers_total", "ltr", "ptr", "first_trainable_layer"}


def test_registry_groups_and_names():
    assert STUDY == ("resnet50", "vgg16", "densenet121", "xception", "efficientnetb2", "mobilenetv2", "nasnetmobile")
    assert len(GROUPS["all"]) == 11
    assert get("MobileNetV2") is get("mobilenetv2")
    assert [b.name for b in resolve("mobile,vgg16")][:2] == ["mobilenetv2", "nasnetmobile"]
    with pytest.raises(KeyError, match="unknown backbone 'resnet18'.*resnet50"):
        get("resnet18")


@pytest.mark.parametrize("name", STUDY)
def test_paper_levels_json_for_study_backbones(name, capsys):
    size = max(get(name).min_size, 75)
    assert levels_main(["--backbone", name, "--levels", "paper", "--img-size", str(size), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    backbone = get(name)
    assert [r["level"] for r in rows] == list(backbone.paper_levels)
    assert all(set(r) == KEYS for r in rows)
    head = rows[0]
    assert head["level"] == 0 and head["first_trainable_layer"] == "head"
    assert head["trainable_params"] == backbone.feature_dim * 3 + 3
    n = head["layers_total"]
    for r in rows:
        assert r["ltr"] == pytest.approx(r["level"] / n)
        assert r["ptr"] == pytest.approx(r["trainable_params"] / r["total_params"])
        assert r["total_params"] == head["total_params"]
    counts = [r["trainable_params"] for r in rows]
    assert counts == sorted(counts)


def test_level_definition_counts_last_k_layers():
    from train.levels import level_info
    from train.model import build

    built = build(get("vgg16"), 32, None)
    # VGG16: base.layers[-1] is the pooling layer (no weights), [-2] the pool, [-3] block5_conv3
    info = level_info(built.model, built.base, 3)
    assert info["first_trainable_layer"] == "block5_conv3"
    assert info["trainable_params"] == 3 * 3 * 512 * 512 + 512 + 512 * 3 + 3
    assert info["layers_total"] == 20 and info["ltr"] == pytest.approx(3 / 20)


def test_block_levels_cut_whole_blocks():
    from train.model import build

    names = [l.name for l in build(get("vgg16"), 32, None).base.layers]
    assert block_levels(get("vgg16"), names) == [0, 5, 9, 13, 16, 19]
    assert parse_schedule("blocks", get("vgg16"), names) == [0, 5, 9, 13, 16, 19]


@pytest.mark.parametrize("name", [b.name for b in BACKBONES])
def test_block_levels_exist_for_every_backbone(name):
    from train.model import build

    backbone = get(name)
    base = build(backbone, max(backbone.min_size, 75), None).base
    levels = block_levels(backbone, [l.name for l in base.layers])
    assert levels[0] == 0 and len(levels) >= 4 and levels[-1] < len(base.layers)


def test_schedule_forms_and_errors():
    names = [f"l{i}" for i in range(20)]
    vgg = get("vgg16")
    assert parse_schedule("0,5,10", vgg, names) == [0, 5, 10]
    assert parse_schedule("step:5", vgg, names) == [0, 5, 10, 15, 20]
    assert parse_schedule("step:4:10", vgg, names) == [0, 4, 8]
    with pytest.raises(LevelError, match=r"level\(s\) \[21\] outside 0..20"):
        parse_schedule("0,21", vgg, names)
    for bad in ("step:0", "step:x", "a,b", ""):
        with pytest.raises(LevelError):
            parse_schedule(bad, vgg, names)


def test_cli_errors_are_one_line(capsys):
    assert levels_main(["--backbone", "resnet18", "--levels", "paper"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown backbone" in err[0]
    assert levels_main(["--backbone", "vgg16", "--levels", "0,99", "--img-size", "32"]) == 2
    assert "outside 0..20" in capsys.readouterr().err
