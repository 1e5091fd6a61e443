from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from episodes.data.labels import PHANTOM
from episodes.data.volumes import Volume
from episodes.protocol import Protocol
from fewshot.evaluation import EvaluationResult, aggregate, evaluate, save_overlays


class ThresholdModel(nn.Module):
    """Predicts foreground where the query exceeds the mean of the support's foreground pixels
    minus 0.5: an intensity-matching oracle whose output can be recomputed by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(backbone=SimpleNamespace(in_channels=2))
        self.dummy = nn.Parameter(torch.zeros(()))
        self.support_batches: list[tuple[int, ...]] = []

    def forward(self, s_img: torch.Tensor, s_msk: torch.Tensor, q: torch.Tensor) -> SimpleNamespace:
        self.support_batches.append(tuple(s_img.shape))
        level = (s_img[:, :, 0] * s_msk).sum() / s_msk.sum() - 0.5
        fg = (q[:, 0] > level).float()
        return SimpleNamespace(logits=torch.stack([1 - fg, fg], 1) + self.dummy, align_loss=None)


def _volume(subject: str, seed: int) -> Volume:
    """Organ 1 (liver) bright (value 2) on slices 2..7, a noisy false-positive blob and misses."""
    rng = np.random.default_rng(seed)
    label = np.zeros((10, 16, 16), dtype=np.int16)
    label[2:8, 4:10, 4:10] = 1
    label[3:6, 11:14, 11:14] = 4  # spleen
    image = label.astype(np.float32) * 0.0
    image[label == 1] = 2.0
    image[label == 4] = 2.0
    flip = rng.random(image.shape) < 0.1  # random misses / false alarms
    image[flip] = 2.0 - image[flip]
    return Volume(image, label, (1.0, 1.0, 1.0), subject, "MR", PHANTOM, normalized=True)


def _expected(vol: Volume, value: int) -> tuple[float, float, float]:
    zs = [z for z in range(vol.shape[0]) if (vol.label[z] == value).any()]
    tp = fp = fn = 0
    for z in range(zs[0], zs[-1] + 1):  # every slice of the organ's z range is scored
        for y in range(vol.shape[1]):
            for x in range(vol.shape[2]):
                p = vol.image[z, y, x] > 1.5
                t = vol.label[z, y, x] == value
                tp += p and t
                fp += p and not t
                fn += t and not p
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp), tp / (tp + fn)


@pytest.fixture()
def setup() -> tuple[Protocol, dict[str, Volume]]:
    vols = {s: _volume(s, i) for i, s in enumerate(["sup", "q1", "q2"])}
    vols["sup"] = Volume(
        np.where(vols["sup"].label > 0, 2.0, 0.0).astype(np.float32),
        vols["sup"].label,
        (1.0, 1.0, 1.0),
        "sup",
        "MR",
        PHANTOM,
        normalized=True,
    )  # clean support: mean foreground intensity 2 -> threshold 1.5
    protocol = Protocol("phantom", organs=("liver", "spleen"), support_subject="sup", chunks=2)
    return protocol, vols


def test_dice_matches_independent_computation(setup: tuple[Protocol, dict[str, Volume]]) -> None:
    protocol, vols = setup
    plan = protocol.build_plan(list(vols.values()))
    model = ThresholdModel()
    result = evaluate(model, plan, vols, batch_size=3, device="cpu")
    assert set(model.support_batches) == {(1, 1, 2, 16, 16)}  # one support set broadcast
    for organ, value in (("liver", 1), ("spleen", 4)):
        expected = [_expected(vols[q], value) for q in ("q1", "q2")]
        rows = [r for r in result.per_scan if r["organ"] == organ]
        assert [r["subject"] for r in rows] == ["q1", "q2"]
        for row, (d, p, r) in zip(rows, expected):
            assert row["dice"] == pytest.approx(d)
            assert row["precision"] == pytest.approx(p)
            assert row["recall"] == pytest.approx(r)
        assert result.dice[organ] == pytest.approx(np.mean([e[0] for e in expected]))
    assert result.dice["mean"] == pytest.approx((result.dice["liver"] + result.dice["spleen"]) / 2)
    assert 0 < result.dice["mean"] < 1
    assert result.extras["timing"]["scans"] == 4 and result.extras["timing"]["scans_per_s"] > 0


def test_json_schema_and_round_trip(setup: tuple[Protocol, dict[str, Volume]], tmp_path: Path) -> None:
    protocol, vols = setup
    result = evaluate(ThresholdModel(), protocol.build_plan(list(vols.values())), vols, config={"a": 1})
    path = result.to_json(tmp_path / "sub" / "results.json")
    data = json.loads(path.read_text())
    assert {"dice", "precision", "recall", "per_scan", "config", "library_version", "timing"} <= set(data)
    for name in ("dice", "precision", "recall"):
        assert set(data[name]) == {"liver", "spleen", "mean"}
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in data[name].values())
    assert data["config"] == {"a": 1} and isinstance(data["library_version"], str) and data["library_version"]
    for row in data["per_scan"]:
        assert set(row) == {"subject", "organ", "dice", "precision", "recall"}
        assert isinstance(row["subject"], str) and isinstance(row["organ"], str)
        assert all(0.0 <= row[k] <= 1.0 for k in ("dice", "precision", "recall"))
    assert EvaluationResult.from_json(path) == result
    assert not list(tmp_path.glob("sub/*.tmp"))
    md = result.to_markdown()
    assert "| metric | liver | spleen | mean |" in md
    assert f"{100 * result.dice['liver']:.2f}" in md and "Recall (%)" in md


def test_aggregate_means_over_folds(setup: tuple[Protocol, dict[str, Volume]]) -> None:
    protocol, vols = setup
    r = evaluate(ThresholdModel(), protocol.build_plan(list(vols.values())), vols)
    other = EvaluationResult(
        dice={"liver": 1.0, "spleen": 0.0, "mean": 0.5},
        precision={"liver": 1.0, "spleen": 0.0, "mean": 0.5},
        recall={"liver": 1.0, "spleen": 0.0, "mean": 0.5},
        per_scan=({"subject": "x", "organ": "liver", "dice": 1.0, "precision": 1.0, "recall": 1.0},),
    )
    agg = aggregate([r, other])
    assert agg.dice["liver"] == pytest.approx((r.dice["liver"] + 1.0) / 2)
    assert agg.dice["mean"] == pytest.approx((r.dice["mean"] + 0.5) / 2)
    assert agg.extras["n_folds"] == 2 and agg.per_scan[-1]["fold"] == 1
    with pytest.raises(ValueError, match="organs"):
        aggregate(
            [
                r,
                EvaluationResult(
                    dice={"mean": 0.5}, precision={"mean": 0.5}, recall={"mean": 0.5}, per_scan=()
                ),
            ]
        )


def test_result_validation() -> None:
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        EvaluationResult(
            dice={"liver": 1.5, "mean": 1.5}, precision={"mean": 1.0}, recall={"mean": 1.0}, per_scan=()
        )
    with pytest.raises(ValueError, match="'mean'"):
        EvaluationResult(dice={"liver": 0.5}, precision={"mean": 1.0}, recall={"mean": 1.0}, per_scan=())


def test_save_overlays(setup: tuple[Protocol, dict[str, Volume]], tmp_path: Path) -> None:
    from PIL import Image

    protocol, vols = setup
    plan = protocol.build_plan(list(vols.values()))
    plain = save_overlays(ThresholdModel(), plan, vols, tmp_path / "a", n=2)
    scores = {(o.organ, q.subject): 0.5 for o in plan.organs for q in o.queries}
    paths = save_overlays(ThresholdModel(), plan, vols, tmp_path / "b", n=2, scan_dice=scores)
    assert len(paths) == 4 and all(p.suffix == ".png" for p in paths)
    img = np.asarray(Image.open(paths[0]))
    # four 16-px panels upscaled x12, 4-px separators, a heading line and a title strip per panel
    assert img.shape == (22 + 18 + 16 * 12, 4 * 16 * 12 + 3 * 4, 3)
    assert (img[:22] < 128).any() and (img[22:40] < 128).any()  # the heading and the panel titles are drawn
    # the heading with the scan's Dice differs from the one without
    assert not np.array_equal(img[:22], np.asarray(Image.open(plain[0]))[:22])
    assert np.array_equal(img[22:], np.asarray(Image.open(plain[0]))[22:])


def test_lcc_and_native_reference(setup: tuple[Protocol, dict[str, Volume]]) -> None:
    from fewshot.evaluation.postprocess import largest_connected_component

    protocol, vols = setup
    plan = protocol.build_plan(list(vols.values()))
    result = evaluate(ThresholdModel(), plan, vols, postprocess=("none", "lcc"))
    none, lcc = result.extras["postprocess"]["none"], result.extras["postprocess"]["lcc"]
    assert none["dice"] == dict(result.dice)  # the first step gives the headline scores
    # LCC removes the isolated false alarms: precision up, never below the raw prediction's
    assert lcc["precision"]["mean"] > none["precision"]["mean"]
    assert "post-processed: lcc" in result.to_markdown()

    # the largest 26-connected component, by hand
    m = np.zeros((3, 6, 6), dtype=bool)
    m[0, 0, 5] = m[2, 5, 5] = True
    m[1, 2:4, 2:4] = True
    m[0, 1, 1] = True  # diagonal neighbour of the 2x2 block in 3D: same component
    kept = largest_connected_component(m)
    assert kept.sum() == 5 and not kept[0, 0, 5] and not kept[2, 5, 5]

    # native reference: labels at 2x the model resolution; an upsampled perfect prediction scores like the model
    big = {
        s: Volume(
            np.kron(v.image, np.ones((1, 2, 2), np.float32)),
            np.kron(v.label, np.ones((1, 2, 2), np.int16)),
            (1.0, 0.5, 0.5), s, "MR", PHANTOM, normalized=True,
        )
        for s, v in vols.items()
    }
    native = evaluate(ThresholdModel(), plan, vols, reference=big)
    assert native.extras["resolution"] == "reference labels"
    for organ in ("liver", "spleen"):
        assert native.dice[organ] == pytest.approx(result.dice[organ], abs=0.05)
    with pytest.raises(ValueError, match="unknown postprocess"):
        evaluate(ThresholdModel(), plan, vols, postprocess="erode")


class _LogitModel(nn.Module):
    """Returns fixed logits ``[0, d]``: the foreground probability is ``sigmoid(d)``."""

    def __init__(self, diff: torch.Tensor, threshold: float | None = None, tta: str | None = None) -> None:
        super().__init__()
        self.diff = diff
        self.config = SimpleNamespace(backbone=SimpleNamespace(in_channels=1), fg_threshold=threshold, tta=tta)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, s_img: torch.Tensor, s_msk: torch.Tensor, q: torch.Tensor) -> SimpleNamespace:
        d = self.diff.expand(q.shape[0], *self.diff.shape)
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(d), d], 1) + self.dummy, align_loss=None)


def test_predict_query_threshold() -> None:
    from fewshot.evaluation import predict_query

    diff = torch.linspace(-3, 3, 13).reshape(1, 13)  # probabilities sigmoid(-3) .. sigmoid(3); 0 at index 6
    args = (torch.zeros(1, 1, 1, 1, 13), torch.ones(1, 1, 1, 13), torch.zeros(2, 1, 1, 13))
    argmax = predict_query(_LogitModel(diff), *args)
    assert argmax.shape == (2, 1, 13)
    assert argmax[0, 0].tolist() == [False] * 7 + [True] * 6  # 0.5: the argmax (a tie is background)
    high = predict_query(_LogitModel(diff), *args, threshold=0.9)
    expected = (torch.sigmoid(diff) > 0.9)[0].tolist()
    assert high[0, 0].tolist() == expected and sum(expected) == 2  # sigmoid(2.5), sigmoid(3) > 0.9
    assert predict_query(_LogitModel(diff, threshold=0.9), *args).equal(high)  # model.config.fg_threshold
    assert predict_query(_LogitModel(diff, threshold=0.9), *args, threshold=0.5).equal(argmax)  # explicit wins
    for bad in (0.0, 1.0, 1.5, True):
        with pytest.raises(ValueError, match="probability in"):
            predict_query(_LogitModel(diff), *args, threshold=bad)


def test_predict_query_flip_tta_averages_the_mirrored_episode() -> None:
    from fewshot.evaluation import predict_query

    ramp = torch.linspace(-3, 3, 13).reshape(1, 13)  # mirrored: -ramp, so the mean logit is 0 everywhere
    args = (torch.zeros(1, 1, 1, 1, 13), torch.ones(1, 1, 1, 13), torch.zeros(2, 1, 1, 13))
    assert predict_query(_LogitModel(ramp), *args).any()
    assert not predict_query(_LogitModel(ramp), *args, tta="flip").any()
    assert not predict_query(_LogitModel(ramp, tta="flip"), *args).any()  # model.config.tta
    assert predict_query(_LogitModel(ramp, tta="flip"), *args, tta="none").equal(predict_query(_LogitModel(ramp), *args))
    bump = 3 - ramp.abs()  # mirror-symmetric: the same masks with and without TTA
    assert predict_query(_LogitModel(bump), *args, tta="flip").equal(predict_query(_LogitModel(bump), *args))
    with pytest.raises(ValueError, match=r"tta must be one of \['none', 'flip'\]"):
        predict_query(_LogitModel(ramp), *args, tta="rotate")


class _MirrorSeer(nn.Module):
    """Foreground logit +2 on the query's left half; records the support/query it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(backbone=SimpleNamespace(in_channels=1))
        self.dummy = nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, s_img: torch.Tensor, s_msk: torch.Tensor, q: torch.Tensor) -> SimpleNamespace:
        self.seen.append((s_msk.clone(), q.clone()))
        d = torch.full(q.shape[:1] + q.shape[2:], -2.0)
        d[..., : q.shape[-1] // 2] = 2.0
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(d), d], 1) + self.dummy, align_loss=None)


def test_flip_tta_mirrors_support_and_query_together() -> None:
    from fewshot.evaluation import predict_query

    model = _MirrorSeer()
    s_msk = torch.zeros(1, 1, 4, 8)
    s_msk[..., :3] = 1
    q = torch.arange(64.0).reshape(1, 1, 8, 8)
    pred = predict_query(model, torch.zeros(1, 1, 1, 4, 8), s_msk, q, tta="flip")
    (s0, q0), (s1, q1) = model.seen
    assert s1.equal(s0.flip(-1)) and q1.equal(q0.flip(-1))
    assert not pred.any()  # left half (+2) averaged with the mirrored pass's -2 there: 0 -> background


def test_evaluate_records_threshold(setup: tuple[Protocol, dict[str, Volume]]) -> None:
    protocol, vols = setup
    plan = protocol.build_plan(list(vols.values()))
    base = evaluate(ThresholdModel(), plan, vols, device="cpu")
    strict = evaluate(ThresholdModel(), plan, vols, device="cpu", threshold=0.8)
    # ThresholdModel's foreground probability is sigmoid(1) = 0.73 < 0.8: nothing is foreground
    assert base.extras["threshold"] == 0.5 and strict.extras["threshold"] == 0.8
    assert strict.recall["mean"] == 0.0 < base.recall["mean"]
    assert "probability > 0.8" in strict.to_markdown()


def test_false_positive_regions(setup: tuple[Protocol, dict[str, Volume]]) -> None:
    from fewshot.evaluation import false_positive_regions

    labels = np.array([[[0, 1, 4, 4, 7]]])
    pred = np.array([[[True, True, True, False, True]]])
    # organ 1 (liver) predicted on a background voxel, one spleen voxel and an unnamed label 7
    assert false_positive_regions(pred, labels, PHANTOM, 1) == {"background": 1, "spleen": 1, "label 7": 1}
    assert false_positive_regions(pred & (labels == 1), labels, PHANTOM, 1) == {}
    # end to end: ThresholdModel segments both bright organs, so the liver's false positives include the spleen
    protocol, vols = setup
    result = evaluate(ThresholdModel(), protocol.build_plan(list(vols.values())), vols, device="cpu")
    fps = result.extras["false_positives"]
    assert set(fps) == {"liver", "spleen"} and fps["liver"]["spleen"] > 0 and fps["liver"]["background"] > 0
    fp_total = result.extras["counts"]["fp"]
    assert sum(sum(r.values()) for r in fps.values()) == fp_total  # every FP voxel is attributed once
    assert "False positives by true region" in result.to_markdown()


class _InputRecorder(ThresholdModel):
    """:class:`ThresholdModel` on the middle channel of a 3-channel input; records what it was fed."""

    def __init__(self, slice_input: str) -> None:
        super().__init__()
        self.config = SimpleNamespace(backbone=SimpleNamespace(in_channels=3), slice_input=slice_input)
        self.inputs: list[torch.Tensor] = []

    def forward(self, s_img: torch.Tensor, s_msk: torch.Tensor, q: torch.Tensor) -> SimpleNamespace:
        self.inputs += [s_img[0, 0], *q]
        return super().forward(s_img[:, :, 1:], s_msk, q[:, 1:])


@pytest.mark.parametrize("slice_input", ["tile", "adjacent"])
def test_evaluate_feeds_the_model_its_slice_input(
    setup: tuple[Protocol, dict[str, Volume]], slice_input: str
) -> None:
    protocol, vols = setup
    plan = protocol.build_plan(list(vols.values()))
    model = _InputRecorder(slice_input)
    result = evaluate(model, plan, vols, device="cpu")
    assert result.dice == evaluate(ThresholdModel(), plan, vols, device="cpu").dice  # same middle channel
    images = [v.image for v in vols.values()]

    def fed(image: np.ndarray, z: int) -> np.ndarray:
        depth = image.shape[0]
        return image[[z] * 3 if slice_input == "tile" else [max(z - 1, 0), z, min(z + 1, depth - 1)]]

    for x in model.inputs:  # every support and query input is some slice's expected stack
        assert any(np.array_equal(x.numpy(), fed(im, z)) for im in images for z in range(im.shape[0]))
    assert slice_input == "tile" or any(not torch.equal(x[0], x[1]) for x in model.inputs)


# ------------------------------------------------------------------ which support segments which chunk

#: The support's organ (slices 2..10) has its own intensity on every slice, so each chunk's support set
#: (1 or 2 slices) has its own mean organ intensity.
_SUPPORT_LEVELS = {2: 1.0, 3: 2.0, 4: 5.0, 5: 4.0, 6: 6.0, 7: 8.0, 8: 7.0, 9: 3.0, 10: 9.0}
#: Support slices per chunk by the protocol's rule (organ slices zs = 2..10, L = 9, chunk i of 3): one shot at
#: zs[floor(L (2i + 1) / 6)] = zs[1], zs[4], zs[7]; two shots at zs[floor(L (i + (2j + 1) / 4) / 3)], j = 0, 1
#: = zs[0], zs[2] | zs[3], zs[5] | zs[6], zs[8].
_SUPPORT_SLICES = {1: ((3,), (6,), (9,)), 2: ((2, 4), (5, 7), (8, 10))}
#: The mean support organ intensity of each chunk, from the two tables above.
_CHUNK_LEVELS = {1: (2.0, 6.0, 3.0), 2: ((1.0 + 5.0) / 2, (4.0 + 8.0) / 2, (7.0 + 9.0) / 2)}
#: Query scans: (organ slices z_min..z_max, the chunk of each slice by the protocol's rule
#: floor((z - z_min) / ((z_max - z_min) / 3)) clamped to 0..2, the chunk whose level each slice's organ shows).
_QUERIES = {
    "q1": (range(1, 10), (0, 0, 0, 1, 1, 1, 2, 2, 2), (0, 0, 1, 1, 1, 2, 2, 0, 2)),  # (z - 1) / (8 / 3)
    "q2": (range(0, 7), (0, 0, 1, 1, 2, 2, 2), (0, 2, 1, 1, 2, 0, 2)),  # z / 2; z = 6 gives 3, clamped to 2
}
_ORGAN = (slice(1, 5), slice(2, 7))  # 20 pixels, off the diagonal: not symmetric under an H/W swap
_DISTRACTOR = (8, 6, slice(7, 10))  # q1, slice 8 (chunk 2): 3 background pixels at chunk 2's level


class SupportMatcher(nn.Module):
    """Foreground where the query is within 0.25 of the mean intensity of the support's foreground pixels
    (all ``K`` support slices together): an oracle whose output depends on which slices form the support."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(backbone=SimpleNamespace(in_channels=1))
        self.dummy = nn.Parameter(torch.zeros(()))
        self.support_shapes: list[tuple[int, ...]] = []

    def forward(self, s_img: torch.Tensor, s_msk: torch.Tensor, q: torch.Tensor) -> SimpleNamespace:
        self.support_shapes.append(tuple(s_img.shape))
        level = (s_img[:, :, 0] * s_msk).sum() / s_msk.sum()
        fg = ((q[:, 0] - level).abs() < 0.25).float()
        return SimpleNamespace(logits=torch.stack([1 - fg, fg], 1) + self.dummy, align_loss=None)


def _chunk_volumes(shots: int, size: tuple[int, int] = (8, 10)) -> dict[str, Volume]:
    """The support (organ level per slice, :data:`_SUPPORT_LEVELS`) and the queries of :data:`_QUERIES`, whose
    organ on each slice shows the level of the chunk named there (for ``shots`` support slices per chunk)."""
    shape = (12, *size)
    label = np.zeros(shape, np.int16)
    label[2:11, _ORGAN[0], _ORGAN[1]] = 1
    image = np.zeros(shape, np.float32)
    for z, level in _SUPPORT_LEVELS.items():
        image[z][label[z] == 1] = level
    vols = {"sup": Volume(image, label, (1.0, 1.0, 1.0), "sup", "MR", PHANTOM, normalized=True)}
    for subject, (zs, _, shows) in _QUERIES.items():
        label = np.zeros(shape, np.int16)
        image = np.zeros(shape, np.float32)
        for z, c in zip(zs, shows):
            label[z, _ORGAN[0], _ORGAN[1]] = 1
            image[z, _ORGAN[0], _ORGAN[1]] = _CHUNK_LEVELS[shots][c]
        if subject == "q1":
            image[_DISTRACTOR] = _CHUNK_LEVELS[shots][2]
        vols[subject] = Volume(image, label, (1.0, 1.0, 1.0), subject, "MR", PHANTOM, normalized=True)
    return vols


@pytest.mark.parametrize("shots", [1, 2])
def test_each_chunk_is_segmented_with_its_own_support_slices(shots: int) -> None:
    """1-shot and 2-shot through :func:`evaluate`: the query's organ is found exactly on the slices whose level
    is their own chunk's support level, and the Dice, precision and recall by hand count those slices.

    Fails if a chunk is segmented with another chunk's support (``supports[::-1]`` in ``_evaluate_organ``: q1
    Dice 0.79 -> 0.50 for 1 shot) or with only some of its ``k`` slices."""
    vols = _chunk_volumes(shots)
    protocol = Protocol("phantom", organs=("liver",), support_subject="sup", shots=shots, chunks=3)
    plan = protocol.build_plan(list(vols.values()))
    assert plan.organ("liver").support_slices == _SUPPORT_SLICES[shots]
    model = SupportMatcher()
    result = evaluate(model, plan, vols, batch_size=4, device="cpu")
    assert set(model.support_shapes) == {(1, shots, 1, 8, 10)}
    expected = {}
    for subject, (zs, chunks, shows) in _QUERIES.items():
        found = sum(c == s for c, s in zip(chunks, shows))  # slices showing their own chunk's level
        tp, fn = 20 * found, 20 * (len(zs) - found)
        fp = 3 if subject == "q1" else 0  # the distractor, at the level of its slice's chunk
        expected[subject] = (2 * tp / (2 * tp + fp + fn), tp / (tp + fp), tp / (tp + fn))
    assert expected["q1"][0] == pytest.approx(240 / 303) and expected["q2"][0] == pytest.approx(200 / 240)
    rows = {r["subject"]: r for r in result.per_scan}
    for subject, (dice, precision, recall) in expected.items():
        assert (rows[subject]["dice"], rows[subject]["precision"], rows[subject]["recall"]) == pytest.approx(
            (dice, precision, recall)
        ), subject
    assert result.dice["liver"] == pytest.approx((expected["q1"][0] + expected["q2"][0]) / 2)
    assert result.extras["protocol"]["shots"] == shots


def _drawn_masks(picture: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The masks a :func:`save_overlays` picture draws on its prediction and ground-truth panels: the pixels
    whose colour differs from the plain query panel (panels ``H x W`` upscaled to >= 192 rows, 4-px separators,
    under a 22-px heading and an 18-px title strip)."""
    h, w = size
    scale = -(-192 // h)
    top, width = 22 + 18, w * scale + 4
    panels = [
        picture[top : top + h * scale : scale, k * width : k * width + w * scale : scale] for k in range(4)
    ]
    return (panels[2] != panels[1]).any(-1), (panels[3] != panels[1]).any(-1)


@pytest.mark.parametrize("size", [(8, 10), (10, 10)])
def test_save_overlays_draws_the_prediction_on_the_querys_organ(
    size: tuple[int, int], tmp_path: Path
) -> None:
    """Every picture of q1 (non-square and square slices, the organ off the diagonal) draws the ground truth on
    the query's organ pixels, and the prediction there only on the slices that show their chunk's level, plus
    the distractor on slice 8: pixel for pixel, by hand.

    Fails if the prediction or the query is drawn with H and W swapped (``pred.T`` in ``save_overlays``: the square
    case draws the mirror image, the non-square one raises), or with another chunk's support."""
    from PIL import Image

    vols = _chunk_volumes(1, size)
    protocol = Protocol("phantom", organs=("liver",), support_subject="sup", chunks=3)
    plan = protocol.build_plan(list(vols.values()))
    paths = save_overlays(SupportMatcher(), plan, vols, tmp_path, n=9, device="cpu")
    zs, chunks, shows = _QUERIES["q1"]
    assert [p.name for p in paths] == [f"liver_q1_z{z:03d}.png" for z in zs]
    organ = np.zeros(size, bool)
    organ[_ORGAN] = True
    assert not np.array_equal(organ[: min(size), : min(size)], organ[: min(size), : min(size)].T)
    for path, z, c, s in zip(paths, zs, chunks, shows):
        pred, truth = _drawn_masks(np.asarray(Image.open(path).convert("RGB")), size)
        expected = organ & (c == s)
        if z == _DISTRACTOR[0]:
            expected[_DISTRACTOR[1:]] = True
        np.testing.assert_array_equal(truth, organ, err_msg=f"ground truth, z={z}")
        np.testing.assert_array_equal(pred, expected, err_msg=f"prediction, z={z}")
