"""Successive halving, aimed and refined crops: properties on a model whose answer is known
(the redness classifier of test_proposals), and the schedule's cost as pure arithmetic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import test_proposals
from PIL import Image

from patchfinder.discover import adversary_features, propose
from patchfinder.evaluate import exhaustive_cost, halving_schedule, successive_halving
from patchfinder.paste import Corners
from patchfinder.proposals import aimed_crops, ranked_crops, refine_crops

# The model whose answer is known, its images and the synthetic atlas, shared with
# test_proposals.
redness, bluish_images, flat, atlas_and_samples, S = (
    test_proposals.redness, test_proposals.bluish_images, test_proposals.flat,
    test_proposals.atlas_and_samples, test_proposals.S,
)  # fmt: skip

SIZES = (0.2, 0.3, 0.4)


@pytest.mark.parametrize("candidates", [1, 10, 31, 300])
def test_the_schedule_stays_in_budget_and_narrows_to_keep(candidates):
    budget = exhaustive_cost(30, 32, 3, 4)  # the old screening of 30 candidates
    schedule = halving_schedule(candidates, keep=10, images=32, sizes=3, positions=4, budget=budget)
    counts = [count for count, _, _ in schedule]
    assert counts[0] == candidates and counts == sorted(counts, reverse=True)
    assert counts[-1] <= max(10, candidates)
    cost = sum(exhaustive_cost(n, i, z, 4) for n, i, z in schedule)
    assert cost <= budget
    shares = [i * z for _, i, z in schedule]
    assert shares == sorted(shares)  # a survivor is measured on more each round
    assert all(1 <= i <= 32 and 1 <= z <= 3 for _, i, z in schedule)


def test_halving_keeps_the_one_planted_flipper_among_many_duds(redness, bluish_images):
    screening, pair = bluish_images
    duds = [flat(f"grey-{i:02d}", (128 + i % 5, 128, 128 + i % 3)) for i in range(40)]
    planted = flat("red", (255, 0, 0), attribution=0.0)  # the lowest attribution of all
    candidates = [*duds[:23], planted, *duds[23:]]
    budget = exhaustive_cost(8, len(screening), len(SIZES), 4)
    result = successive_halving(
        redness, candidates, screening, pair, top_k=3, budget=budget, sizes=SIZES,
        placement=Corners(), seed=0,
    )  # fmt: skip
    assert result.kept[0].patch.name == "red" and result.kept[0].screening_rate > 0
    assert len(result.kept) == 3
    assert result.pasted <= budget < exhaustive_cost(41, len(screening), len(SIZES), 4)
    assert result.rounds[0].candidates == 41
    assert [r.kept for r in result.rounds][-1] == 3
    again = successive_halving(
        redness, candidates, screening, pair, top_k=3, budget=budget, sizes=SIZES,
        placement=Corners(), seed=0,
    )  # fmt: skip
    assert [p.patch.name for p in again.kept] == [p.patch.name for p in result.kept]


def test_refined_variants_compete_and_one_per_family_is_kept(redness, bluish_images, tmp_path):
    screening, pair = bluish_images
    photo = np.full((32, 32, 3), 128, np.uint8)
    photo[8:24, 8:24] = (255, 0, 0)  # a red square in a grey photo
    file = tmp_path / "photo.png"
    Image.fromarray(photo).save(file)
    start = flat("off-centre", (128, 128, 128))
    start = type(start)(**{**start.__dict__, "source_file": str(file), "box": (0, 0, 12, 12)})
    start = type(start)(**{**start.__dict__, "patch": type(start.patch)(
        "off-centre", "discovered", photo[0:12, 0:12].astype(np.float32))})  # fmt: skip
    variants = refine_crops([start], size=32, top=1)
    assert variants and all(v.parent == "off-centre" for v in variants)
    assert all(v.source == "attribution+refined" for v in variants)
    for v in variants:
        x0, y0, x1, y1 = v.box
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32 and x1 - x0 == y1 - y0
        assert v.patch.pixels.shape[:2] == (y1 - y0, x1 - x0)
    result = successive_halving(
        redness, [start], screening, pair, top_k=1, budget=10_000, sizes=SIZES,
        placement=Corners(), refine=lambda field: refine_crops(field, size=32, top=1),
        refine_count=len(variants),
    )  # fmt: skip
    (best,) = result.kept
    assert best.parent == "off-centre"  # a shifted or larger crop holds more of the red
    assert result.rounds[-1].candidates == 1 + len(variants)


def test_aimed_crops_are_the_pool_vectors_nearest_the_adversary(atlas_and_samples):
    atlas, samples = atlas_and_samples
    aim = 0  # vector 0: image 2, an other-class image
    targets = 3.0 * samples.vectors[[aim]]  # cosine: only the direction counts
    crops = aimed_crops(atlas, samples, targets, count=3, exclude_classes=[0, 1])
    assert crops[0].vector == aim and crops[0].similarity == pytest.approx(1.0)
    assert [c.patch.name for c in crops] == ["aim-000", "aim-001", "aim-002"]
    assert all(c.source == "aimed" and c.patch.kind == "discovered" for c in crops)
    images = [int(samples.image[c.vector]) for c in crops]
    assert len(set(images)) == len(images)  # one crop per image
    assert not {0, 1, 4} & set(images)  # src, dst and predicted-src images only when needed
    similarities = [c.similarity for c in crops]
    assert similarities == sorted(similarities, reverse=True)
    every = aimed_crops(atlas, samples, targets, count=100, exclude_classes=[0, 1])
    assert len(every) == len(set(samples.image.tolist()))  # all images, the excluded ones last
    assert {int(samples.image[c.vector]) for c in every[-3:]} == {0, 1, 4}


def test_sample_crops_rank_vectors_by_their_own_attribution_whatever_the_layout(
    atlas_and_samples,
):
    atlas, samples = atlas_and_samples
    scores = np.asarray(samples.pair_attribution, np.float64)
    crops = ranked_crops(atlas, samples, scores, count=100, exclude_classes=[0, 1])
    images = [int(samples.image[c.vector]) for c in crops]
    assert len(set(images)) == len(images) == len(set(samples.image.tolist()))
    others = [c for c in crops if int(samples.image[c.vector]) not in {0, 1, 4}]
    assert [c.attribution for c in others] == sorted((c.attribution for c in others), reverse=True)
    for crop in others:  # each image's crop is its best vector
        mine = samples.image == samples.image[crop.vector]
        assert crop.attribution == pytest.approx(scores[mine].max())
    assert all(c.source == "samples" and np.isnan(c.similarity) for c in crops)
    # Another layout (every vector in one corner) moves the cells, not the crops.
    moved = dataclasses.replace(atlas, xy=np.zeros_like(atlas.xy), cells=[])
    again = ranked_crops(moved, samples, scores, count=100, exclude_classes=[0, 1])
    assert [c.box for c in again] == [c.box for c in crops]
    assert [c.vector for c in again] == [c.vector for c in crops]
    with pytest.raises(ValueError, match="one value per pool vector"):
        ranked_crops(atlas, samples, scores[:2])


def test_the_adversary_s_features_are_its_own_pixels_inside_its_footprint(redness, bluish_images):
    screening, _ = bluish_images
    red = flat("red", (255, 0, 0)).patch
    sizes = (0.25, 0.5)
    found = adversary_features(
        redness, red, screening, layer="redness", sizes=sizes, placement=Corners(), max_images=5
    )
    sides = [round(s * S) for s in sizes]
    assert found.shape == (sum(side * side for side in sides) * 4 * 5, 1)
    assert np.allclose(found, 1.0, atol=1e-5)  # the redness of pure red, never the background


def test_propose_screens_within_the_old_screening_s_cost(redness, bluish_images, atlas_and_samples):
    screening, _ = bluish_images
    atlas, samples = atlas_and_samples
    pair = test_proposals.ClassPair(redness.classes[0], redness.classes[1])
    common = {"sources": ("attribution",), "top_k": 2, "sizes": SIZES, "seed": 0}
    old = propose(redness, atlas, samples, screening, pair, halving=False, **common)
    (round_,) = old.rounds  # every candidate alike, on every screening image
    assert round_.candidates == sum(old.candidates.values())
    assert round_.pasted == old.exhaustive == exhaustive_cost(round_.candidates, 12, 3, 4)
    new = propose(redness, atlas, samples, screening, pair, **common)
    assert new.budget == round_.pasted and new.pasted <= new.budget
    assert new.candidates == old.candidates and len(new.kept) == 2
    assert all(p.source in ("attribution", "attribution+refined") for p in new.kept)
    assert not new.table().empty and "candidates" in new.describe()
