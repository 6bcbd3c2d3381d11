from __future__ import annotations

import numpy as np
import pytest

from patchfinder.labels import (
    ClassList,
    ImageClass,
    UnknownClassError,
    background_first_to_imagenet,
    imagenet,
    lucid_to_imagenet,
)


def test_imagenet_has_1000_classes_in_wnid_order():
    classes = imagenet()
    assert len(classes) == 1000
    assert classes.wnids == sorted(classes.wnids)
    assert len(set(classes.wnids)) == 1000


@pytest.mark.parametrize(
    "query", ["scuba_diver", "scuba diver", "Scuba Diver", "SCUBA-DIVER", "n10565667", 983, "983"]
)
def test_lookup_by_name_wnid_or_index(query):
    found = imagenet().get(query)
    assert (found.index, found.wnid, found.name) == (983, "n10565667", "scuba_diver")


def test_unknown_name_suggests_close_names():
    with pytest.raises(UnknownClassError, match="scuba_diver"):
        imagenet().get("scuba divr")


def test_ambiguous_name_lists_both_wnids():
    with pytest.raises(UnknownClassError) as caught:
        imagenet().get("crane")
    assert "n02012849" in str(caught.value) and "n03126707" in str(caught.value)


def test_out_of_range_index_is_unknown():
    with pytest.raises(UnknownClassError):
        imagenet().get(1000)
    assert 1000 not in imagenet() and "snorkel" in imagenet()


def test_background_first_mapping_drops_column_zero():
    logits1001 = np.arange(1001)[None, :]
    assert np.array_equal(logits1001[:, background_first_to_imagenet()][0], np.arange(1, 1001))


def test_lucid_mapping_is_a_bijection_onto_columns_1_to_1000():
    columns = lucid_to_imagenet()
    assert sorted(columns.tolist()) == list(range(1, 1001))


def test_lucid_mapping_matches_names():
    from importlib import resources

    names = (
        (resources.files("patchfinder") / "resources" / "lucid-inceptionv1-labels.txt")
        .read_text()
        .splitlines()
    )
    columns = lucid_to_imagenet()
    classes = imagenet()
    for wanted in ["scuba_diver", "snorkel", "grey_whale", "great_white_shark", "wok", "teddy"]:
        column = columns[classes.get(wanted).index]
        lucid = names[column].lower().replace(" ", "_")
        assert lucid.startswith(wanted.split("_")[0]), (wanted, names[column])


def test_from_file_plain_and_tsv(tmp_path):
    plain = tmp_path / "labels.txt"
    plain.write_text("cat\ndog\n\n")
    assert ClassList.from_file(plain).names == ["cat", "dog"]
    table = tmp_path / "labels.tsv"
    table.write_text("index\twnid\tname\n1\tn2\tdog\n0\tn1\tcat\n")
    loaded = ClassList.from_file(table)
    assert loaded.names == ["cat", "dog"] and loaded.get("n2").name == "dog"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        ClassList.from_file(tmp_path / "missing.txt")


def test_a_class_is_in_its_own_list_only():
    classes = imagenet()
    snorkel = classes.get("snorkel")
    assert snorkel in classes and classes.get(snorkel) is snorkel
    tiny = ClassList([ImageClass(0, "", "cat")])
    assert snorkel not in tiny
