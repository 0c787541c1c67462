"""The segmenters on real photos and on networks with known outputs: landmark-regions (both landmark
schemes), onnx-parsing (loading, pre- and post-processing, label mapping), and the robust region colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx_models import IMAGENET_MEAN, IMAGENET_STD, PROTOTYPES, export_nearest_colour, nearest_class

from facerecon.facelib.face_parsing import CELEBAMASK_HQ, LABEL_IDS, LABEL_ORDERS, region_colors, robust_color
from facerecon.kernel import Face, InputError, Landmarks, ModelFileError, RecordError, Segmentation
from facerecon.kernel.host.imageio import load_image
from facerecon.plugins import landmark_regions as lr
from facerecon.plugins.onnx_parsing import OnnxParser, OnnxParsingOptions, crop_window

REGIONS = ("skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "u_lip", "l_lip")

# -- landmark-regions ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faces(pipeline, dlib_detector, face_photo):
    """The photo's face as each detector sees it: scheme -> Face."""
    return {
        "mediapipe478": pipeline.detect(face_photo)[0],
        "ibug68": max(dlib_detector.detect(face_photo), key=lambda f: f.area),
    }


@pytest.fixture(scope="module")
def segmentations(faces, face_photo):
    segmenter = lr.LandmarkRegions()
    return {scheme: segmenter.segment(face_photo, face) for scheme, face in faces.items()}


def centroid(labels: np.ndarray, name: str) -> np.ndarray:
    ys, xs = np.nonzero(labels == LABEL_IDS[name])
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("scheme", ["mediapipe478", "ibug68"])
def test_regions_on_a_real_face(segmentations, faces, scheme):
    seg = segmentations[scheme]
    labels = seg.labels
    assert dict(seg.label_names) == dict(CELEBAMASK_HQ)
    counts = {name: int((labels == LABEL_IDS[name]).sum()) for name in REGIONS}
    assert all(n > 100 for n in counts.values()), counts
    assert counts["skin"] > 5 * max(v for k, v in counts.items() if k != "skin")  # skin = oval minus the rest
    # Anatomy in the image frame (a near-frontal face, y down): the person's left eye is on the image's right.
    eye_l, eye_r, nose = centroid(labels, "l_eye"), centroid(labels, "r_eye"), centroid(labels, "nose")
    assert eye_l[0] > nose[0] > eye_r[0]
    assert centroid(labels, "l_brow")[1] < eye_l[1] < nose[1] < centroid(labels, "u_lip")[1]
    assert centroid(labels, "u_lip")[1] < centroid(labels, "l_lip")[1]
    assert centroid(labels, "l_brow")[0] > centroid(labels, "r_brow")[0]
    # Every landmark of the eyes lies on (or within a pixel of) its eye region.
    marks = faces[scheme].landmarks.xy
    eye_ids = lr.MP_LEFT_EYE if scheme == "mediapipe478" else lr.IBUG_LEFT_EYE
    grown = np.zeros_like(labels, bool)
    ys, xs = np.nonzero(labels == LABEL_IDS["l_eye"])
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown[np.clip(ys + dy, 0, labels.shape[0] - 1), np.clip(xs + dx, 0, labels.shape[1] - 1)] = True
    points = np.round(marks[list(eye_ids)]).astype(int)
    assert grown[points[:, 1], points[:, 0]].all()
    assert set(seg.region_colors) >= set(REGIONS)


def test_the_two_schemes_agree(segmentations):
    """MediaPipe's and dlib's landmarks of one face give nearly the same regions and skin colour."""
    a, b = segmentations["mediapipe478"].labels, segmentations["ibug68"].labels

    def iou(name: str) -> float:
        x, y = a == LABEL_IDS[name], b == LABEL_IDS[name]
        return float((x & y).sum() / (x | y).sum())

    assert iou("skin") > 0.7
    assert min(iou("l_eye"), iou("r_eye"), iou("nose"), iou("u_lip"), iou("l_lip")) > 0.4
    colour_a, colour_b = (s.region_colors["skin"] for s in segmentations.values())
    assert np.abs(colour_a - colour_b).max() < 0.03


def test_mediapipe_polygons_follow_mediapipes_own_contours():
    """The index lists are MediaPipe's FaceLandmarksConnections, written as closed polygons."""
    connections = pytest.importorskip("mediapipe.tasks.python.vision.face_landmarker").FaceLandmarksConnections

    def edges(name: str) -> set[frozenset[int]]:
        return {frozenset((c.start, c.end)) for c in getattr(connections, name)}

    def cycle(polygon: tuple[int, ...]) -> set[frozenset[int]]:
        return {frozenset((polygon[i], polygon[(i + 1) % len(polygon)])) for i in range(len(polygon))}

    def path(polygon: tuple[int, ...]) -> set[frozenset[int]]:
        return {frozenset(pair) for pair in zip(polygon, polygon[1:], strict=False)}

    assert cycle(lr.MP_FACE_OVAL) == edges("FACE_LANDMARKS_FACE_OVAL")
    assert cycle(lr.MP_LEFT_EYE) == edges("FACE_LANDMARKS_LEFT_EYE")
    assert cycle(lr.MP_RIGHT_EYE) == edges("FACE_LANDMARKS_RIGHT_EYE")
    assert edges("FACE_LANDMARKS_LEFT_EYEBROW") <= cycle(lr.MP_LEFT_BROW)
    assert edges("FACE_LANDMARKS_RIGHT_EYEBROW") <= cycle(lr.MP_RIGHT_BROW)
    lips = [lr.MP_LIPS_OUTER_UPPER, lr.MP_LIPS_OUTER_LOWER, lr.MP_LIPS_INNER_UPPER, lr.MP_LIPS_INNER_LOWER]
    assert set().union(*(path(p) for p in lips)) == edges("FACE_LANDMARKS_LIPS")
    nose_points = {i for edge in edges("FACE_LANDMARKS_NOSE") for i in edge}
    assert set(lr.MP_NOSE) == nose_points


def test_unknown_scheme_and_short_landmarks_are_refused(face_photo):
    segmenter = lr.LandmarkRegions()
    box = np.array([100, 100, 300, 300], np.float32)
    odd = Face(box, 0.9, Landmarks("aflw21", np.full((21, 2), 200.0)))
    with pytest.raises(InputError, match=r"'aflw21'.*ibug68"):
        segmenter.segment(face_photo, odd)
    with pytest.raises(RecordError, match="'ibug68' landmarks must be 68 points, got 5"):
        Landmarks("ibug68", np.full((5, 2), 200.0))  # the record refuses it before any stage sees it


def test_polygons_fill_pixel_centres():
    """A square with corners at pixel centres (2, 2) and (5, 5) covers exactly those 4 x 4 pixels."""
    square = np.array([[2.0, 2.0], [5.0, 2.0], [5.0, 5.0], [2.0, 5.0]])
    labels = lr.fill_regions({"nose": square}, 8, 8)
    assert np.array_equal(np.argwhere(labels == LABEL_IDS["nose"]).min(0), [2, 2])
    assert np.array_equal(np.argwhere(labels == LABEL_IDS["nose"]).max(0), [5, 5])


# -- the region colour -----------------------------------------------------------------------------------


def paint_highlight(image: np.ndarray, skin: np.ndarray, fraction: float) -> np.ndarray:
    """A specular highlight: the photo blended towards near-white (up to 90%) in a Gaussian spot on the
    upper cheek / forehead, reaching about ``fraction`` of the skin."""
    ys, xs = np.nonzero(skin)
    cx, cy = np.percentile(xs, 35), np.percentile(ys, 30)
    radius = np.sqrt(skin.sum() * fraction / np.pi)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    weight = 0.9 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (radius / 2.4) ** 2)) * skin
    out = image * (1 - weight[..., None]) + np.array([255.0, 252.0, 246.0]) * weight[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def paint_shadow(image: np.ndarray, skin: np.ndarray, fraction: float) -> np.ndarray:
    """A cast shadow: the image's right-hand ``fraction`` of the skin darkened to 40%, soft-edged."""
    xs = np.nonzero(skin)[1]
    cut = np.percentile(xs, 100 * (1 - fraction))
    xx = np.mgrid[: image.shape[0], : image.shape[1]][1]
    weight = np.clip((xx - cut) / 6 + 0.5, 0, 1) * skin
    return np.clip(image * (1 - 0.6 * weight[..., None]), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def colour_changes(pipeline, lfpw):
    """Over 16 LFPW photos: how far the skin colour moves when a highlight / a shadow is painted on, for
    the robust colour and for the plain mean (max over RGB channels, colours in [0, 1])."""
    segmenter = lr.LandmarkRegions()
    rows = []
    for photo in lfpw[::7]:
        image = load_image(photo)
        faces = pipeline.detect(image)
        labels = segmenter.segment(image, faces[0]).labels
        skin = labels == LABEL_IDS["skin"]
        base, base_mean = region_colors(image, labels, CELEBAMASK_HQ)["skin"], image[skin].mean(0) / 255
        row = []
        for painted in (paint_highlight(image, skin, 0.15), paint_shadow(image, skin, 0.25)):
            robust = region_colors(painted, labels, CELEBAMASK_HQ)["skin"]
            row += [np.abs(robust - base).max(), np.abs(painted[skin].mean(0) / 255 - base_mean).max()]
        rows.append(row)
    changes = np.array(rows)  # columns: highlight robust, highlight mean, shadow robust, shadow mean
    medians = np.median(changes, axis=0)
    print(
        f"\nskin colour change over {len(rows)} LFPW photos (median of the max RGB change, [0, 1]): highlight "
        f"on 15%: robust {medians[0]:.3f}, mean {medians[1]:.3f}; shadow on 25%: robust {medians[2]:.3f}, "
        f"mean {medians[3]:.3f}"
    )
    return changes


def test_skin_colour_is_robust_to_a_painted_highlight(colour_changes):
    robust, mean = colour_changes[:, 0], colour_changes[:, 1]
    assert np.median(robust) < 0.012 and np.median(robust) < 0.75 * np.median(mean)
    assert (robust < 0.035).mean() >= 0.85


def test_skin_colour_is_robust_to_a_painted_shadow(colour_changes):
    robust, mean = colour_changes[:, 2], colour_changes[:, 3]
    assert np.median(robust) < 0.02 and np.median(robust) < 0.25 * np.median(mean)
    assert (robust < 0.04).mean() >= 0.85


def test_robust_colour_edge_cases():
    assert robust_color(np.zeros((0, 3), np.uint8)) is None
    flat = np.tile(np.array([[180, 120, 90]], np.uint8), (500, 1))
    assert np.allclose(robust_color(flat), [180 / 255, 120 / 255, 90 / 255], atol=1e-6)
    clipped = np.full((50, 3), 255, np.uint8)  # nothing usable: the median
    assert np.allclose(robust_color(clipped), 1.0)
    labels = np.zeros((10, 10), np.uint8)
    assert region_colors(np.zeros((10, 10, 3), np.uint8), labels, CELEBAMASK_HQ) == {}


# -- onnx-parsing ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, dict[str, tuple[int, int, int, int]]]:
    """A 240 x 320 synthetic photo: a blue-ish background with patches (x0, y0, x1, y1 inclusive) of skin,
    hair and cloth colours, a colour that is cloth or skin depending on the normalisation, and a face box
    around the skin patch."""
    image = np.empty((240, 320, 3), np.uint8)
    image[:] = (70, 95, 190)
    patches = {
        "skin": (110, 70, 209, 169),
        "hair": (110, 40, 209, 69),
        "cloth": (90, 170, 229, 239),
        "between": (60, 100, 89, 139),
        "far": (270, 10, 309, 49),  # outside the crop: must come out as background
    }
    colours = {"skin": (205, 155, 128), "hair": (55, 40, 35), "cloth": (195, 50, 70), "between": (175, 60, 150)}
    colours["far"] = colours["skin"]
    for name, (x0, y0, x1, y1) in patches.items():
        image[y0 : y1 + 1, x0 : x1 + 1] = colours[name]
    box = np.array([110, 70, 209, 169], np.float32)
    return image, box, patches


def interior(patch: tuple[int, int, int, int], margin: int) -> tuple[slice, slice]:
    x0, y0, x1, y1 = patch
    return slice(y0 + margin, y1 + 1 - margin), slice(x0 + margin, x1 + 1 - margin)


def expected_labels(image: np.ndarray, box: np.ndarray, options: OnnxParsingOptions, **norm) -> np.ndarray:
    """What a nearest-colour network must give: each pixel's nearest prototype inside the crop, 0 outside."""
    x0, y0, side = crop_window(box, options.crop_scale, options.crop_shift)
    expected = np.zeros(image.shape[:2], np.uint8)
    classes = nearest_class(image, **norm).astype(np.uint8)  # CelebAMask-HQ order: class index = label id
    ys, xs = slice(max(y0, 0), y0 + side), slice(max(x0, 0), x0 + side)
    expected[ys, xs] = classes[ys, xs]
    return expected


def agree_away_from_edges(labels: np.ndarray, expected: np.ndarray, margin: int = 3) -> float:
    """Agreement on pixels at least ``margin`` pixels from any change of the expected labels."""
    from scipy.ndimage import maximum_filter, minimum_filter

    size = 2 * margin + 1
    flat = maximum_filter(expected, size) == minimum_filter(expected, size)
    return float((labels[flat] == expected[flat]).mean())


def test_nearest_colour_network_end_to_end(tiny_parser, scene):
    image, box, patches = scene
    options = OnnxParsingOptions(model_path=tiny_parser, crop_scale=1.6)
    parser = OnnxParser(options)
    assert parser.input_size == 64  # read from the model
    seg = parser.segment(image, Face(box, 0.9, Landmarks("none", np.zeros((1, 2)))))
    assert isinstance(seg, Segmentation) and seg.labels.shape == image.shape[:2]
    expected = expected_labels(image, box, options)
    assert agree_away_from_edges(seg.labels, expected) == 1.0
    assert (seg.labels[interior(patches["far"], 0)] == 0).all()  # skin colour, but outside the crop
    assert (seg.labels[interior(patches["skin"], 3)] == LABEL_IDS["skin"]).all()
    assert (seg.labels[interior(patches["hair"], 3)] == LABEL_IDS["hair"]).all()
    assert np.allclose(seg.region_colors["skin"], np.array([205, 155, 128]) / 255, atol=1e-3)


def test_normalisation_is_applied(tmp_path, scene):
    """With a strongly non-ImageNet normalisation the nearest prototype of the 'between' colour changes;
    the segmenter must use the configured mean and std."""
    image, box, patches = scene
    norm = {"mean": (0.2, 0.6, 0.6), "std": (0.08, 0.6, 0.6)}
    between = image[interior(patches["between"], 0)][0, 0]
    assert nearest_class(between, **norm) != nearest_class(between)  # the test means something
    path = export_nearest_colour(tmp_path / "norm.onnx", mean=norm["mean"], std=norm["std"])
    options = OnnxParsingOptions(model_path=path, crop_scale=2.2, **norm)
    seg = OnnxParser(options).segment(image, Face(box, 0.9, Landmarks("none", np.zeros((1, 2)))))
    assert agree_away_from_edges(seg.labels, expected_labels(image, box, options, **norm)) == 1.0
    assert (seg.labels[interior(patches["between"], 3)] == nearest_class(between, **norm)).all()


@pytest.mark.parametrize(
    "variant",
    [
        {"pool": 4},  # output at 1/4 of the input size
        {"heads": 3},  # BiSeNet's export: three outputs, the first is used
        {"argmax": True},  # class indices instead of logits
        {"bgr": True, "mean": IMAGENET_MEAN[::-1], "std": IMAGENET_STD[::-1]},  # reads BGR (mean, std in BGR)
        {"order": "face-parsing.pytorch"},  # another class order, mapped back by name
        {"size": 48, "input_size": 48},
    ],
    ids=lambda v: next(iter(v)),
)
def test_network_layouts(tmp_path, scene, variant):
    image, box, patches = scene
    order = variant.get("order", "celebamask-hq")
    # A network whose class k is LABEL_ORDERS[order][k]: the same prototypes, permuted.
    permutation = [LABEL_IDS[name] for name in LABEL_ORDERS[order]]
    export_args = {k: v for k, v in variant.items() if k in ("pool", "heads", "argmax", "bgr", "size")}
    path = export_nearest_colour(tmp_path / "net.onnx", prototypes=PROTOTYPES[permutation], **export_args)
    options = OnnxParsingOptions(
        model_path=path,
        crop_scale=1.6,
        bgr=variant.get("bgr", False),
        label_order=order,
        input_size=variant.get("input_size"),
        mean=tuple(variant.get("mean", IMAGENET_MEAN)),
        std=tuple(variant.get("std", IMAGENET_STD)),
    )
    seg = OnnxParser(options).segment(image, Face(box, 0.9, Landmarks("none", np.zeros((1, 2)))))
    margin = 6 if "pool" in variant else 3
    assert agree_away_from_edges(seg.labels, expected_labels(image, box, options), margin) == 1.0
    assert (seg.labels[interior(patches["skin"], margin)] == LABEL_IDS["skin"]).all()
    assert (seg.labels[interior(patches["hair"], margin)] == LABEL_IDS["hair"]).all()


@pytest.mark.parametrize("transpose", [False, True], ids=["x", "y"])
def test_crop_and_paste_keep_pixel_centres(tmp_path, transpose):
    """A network whose 'skin' logit is the normalised red channel: on a red ramp R = x over a 256-pixel
    image parsed at 64 x 64 (shrunk 4x, then resampled back), the label must switch exactly where the
    ramp crosses ImageNet's red mean (x = 0.485 * 255 = 123.7). An off-by-half-pixel mapping on either
    side would move the switch by 1.5 pixels."""
    ramp = np.zeros((256, 256, 3), np.uint8)
    ramp[:, :, 0] = np.arange(256, dtype=np.uint8)[None, :]
    if transpose:
        ramp = np.ascontiguousarray(ramp.transpose(1, 0, 2))
    weights = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # background: 0; skin: normalised red
    path = export_nearest_colour(tmp_path / "ramp.onnx", linear=weights, size=64)
    options = OnnxParsingOptions(model_path=path, crop_scale=1.0, labels=("background", "skin"))
    parser = OnnxParser(options)
    box = np.array([0, 0, 255, 255], np.float32)
    assert crop_window(box, 1.0, 0.0) == (0, 0, 256)
    labels = parser.segment(ramp, Face(box, 0.9, Landmarks("none", np.zeros((1, 2))))).labels
    profile = labels[128, :] if not transpose else labels[:, 128]
    assert (profile[4:124] == 0).all() and (profile[124:252] == LABEL_IDS["skin"]).all()


def test_bad_models_are_clear_errors(tmp_path, tiny_parser):
    with pytest.raises(ModelFileError, match=r"model_path in \[options.segmenter.onnx-parsing\]"):
        OnnxParser(OnnxParsingOptions())
    with pytest.raises(ModelFileError, match="not found"):
        OnnxParser(OnnxParsingOptions(model_path=tmp_path / "nope.onnx"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a network")
    with pytest.raises(ModelFileError, match="not a readable ONNX model"):
        OnnxParser(OnnxParsingOptions(model_path=junk))
    with pytest.raises(ModelFileError, match="19 classes but 2 label names"):
        OnnxParser(OnnxParsingOptions(model_path=tiny_parser, labels=("background", "skin")))
    with pytest.raises(ModelFileError, match="takes 64 pixels square, not 512"):
        OnnxParser(OnnxParsingOptions(model_path=tiny_parser, input_size=512))


def export_odd(path: Path, forward, shape=(1, 3, 64, 64), dtype="float32") -> Path:  # type: ignore[no-untyped-def]
    """A 19-class 1x1 convolution exported to ONNX with ``forward(conv, x)`` as its graph."""
    import warnings

    import torch

    conv = torch.nn.Conv2d(shape[1] if shape[1] in (1, 3) else 3, 19, 1)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv

        def forward(self, x):  # type: ignore[no-untyped-def]
            return forward(self.conv, x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = torch.zeros(*shape, dtype=getattr(torch, dtype))
        torch.onnx.export(Net().eval(), (example,), str(path), input_names=["input"], dynamo=False)
    return path


def test_a_half_precision_network_parses_like_the_float_one(tmp_path, scene):
    """float16 input and logits (a GPU export): fed float16, read as float32; the same labels."""
    image, box, patches = scene
    options = OnnxParsingOptions(model_path=export_nearest_colour(tmp_path / "half.onnx", half=True), crop_scale=1.6)
    seg = OnnxParser(options).segment(image, Face(box, 0.9, Landmarks("none", np.zeros((1, 2)))))
    assert agree_away_from_edges(seg.labels, expected_labels(image, box, options)) == 1.0
    assert (seg.labels[interior(patches["hair"], 3)] == LABEL_IDS["hair"]).all()


WRONG_NETWORKS = {
    # name: (graph, input shape, input type, what the error must say)
    "uint8 input": (
        lambda conv, x: conv(x.float()),
        (1, 3, 64, 64),
        "uint8",
        r"input is tensor\(uint8\); expected float32",
    ),
    "batch of 2": (lambda conv, x: conv(x), (2, 3, 64, 64), "float32", r"takes batches of 2; expected 1"),
    "float class indices": (
        lambda conv, x: conv(x).argmax(1).float(),
        (1, 3, 64, 64),
        "float32",
        r"output 0 is tensor\(float\) \[1, 64, 64\]; expected .* \(N, h, w\) integer class indices",
    ),
    "(N, 1, h, w) indices": (
        lambda conv, x: conv(x).argmax(1, keepdim=True),
        (1, 3, 64, 64),
        "float32",
        r"output 0 is tensor\(int64\) \[1, 1, 64, 64\]",
    ),
    "flat logits": (lambda conv, x: conv(x).flatten(1), (1, 3, 64, 64), "float32", r"expected \(N, C, h, w\) float"),
    "channels last, 3 px": (
        lambda conv, x: conv(x.permute(0, 3, 1, 2)),
        (1, 3, 3, 3),
        "float32",
        r"3 pixels square \(channels last\?\)",
    ),
}


@pytest.mark.parametrize("name", WRONG_NETWORKS)
def test_wrong_networks_are_refused_when_loaded(tmp_path, name):
    """Refused with the file and what is wrong, before any photo (not a failure per photo, or labels)."""
    forward, shape, dtype, message = WRONG_NETWORKS[name]
    path = export_odd(tmp_path / "odd.onnx", forward, shape, dtype)
    with pytest.raises(ModelFileError, match=message) as caught:
        OnnxParser(OnnxParsingOptions(model_path=path))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_an_opset_onnxruntime_cannot_run_says_why(tmp_path, tiny_parser):
    """onnxruntime's reason, not the C++ source line and signature its message starts with."""
    import onnx

    model = onnx.load(str(tiny_parser))
    model.opset_import[0].version = 99
    path = tmp_path / "opset99.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelFileError, match=r"not a readable ONNX model \(.*Opset 99 .*till opset \d+") as caught:
        OnnxParser(OnnxParsingOptions(model_path=path))
    assert "onnxruntime_src" not in str(caught.value) and "\n" not in str(caught.value)


def test_the_cli_refuses_a_wrong_network_once_with_exit_code_2(tmp_path, lfpw, capsys):
    from facerecon.cli import main

    path = export_odd(tmp_path / "batch2.onnx", lambda conv, x: conv(x), (2, 3, 64, 64))
    config = tmp_path / "parser.toml"
    config.write_text(f'[options.segmenter.onnx-parsing]\nmodel_path = "{path}"\n')
    args = ["reconstruct", str(lfpw[0]), "-o", str(tmp_path / "out"), "-c", str(config), "--segmenter", "onnx-parsing"]
    assert main([*args, "--refiners", "", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if "batch2.onnx" in line] == [
        f"facerecon: error: {path}: the network's input [2, 3, 64, 64] takes batches of 2; expected 1 or any"
    ]


def test_unknown_label_names_get_new_ids(tmp_path, scene):
    image, box, _ = scene
    names = tuple(CELEBAMASK_HQ[i] for i in range(19))[:-1] + ("tattoo",)  # class 18 renamed
    options = OnnxParsingOptions(model_path=export_nearest_colour(tmp_path / "t.onnx"), labels=names, crop_scale=1.6)
    parser = OnnxParser(options)
    assert parser.label_names[19] == "tattoo" and parser.label_names[18] == "cloth"
    seg = parser.segment(image, Face(box, 0.9, Landmarks("none", np.zeros((1, 2)))))
    assert (seg.labels == 19).any() and not (seg.labels == 18).any()
    assert "tattoo" in seg.region_colors


def test_options_from_toml_types(tiny_parser):
    """The options table as a user writes it in TOML reaches the stage typed."""
    from facerecon.kernel import PluginHost
    from facerecon.plugins import onnx_parsing

    host = PluginHost(load_entrypoints=False)
    host.register_plugin(onnx_parsing, name="onnx-parsing", distribution="facerecon")
    stage = host.create(
        "segmenter",
        "onnx-parsing",
        {"model_path": str(tiny_parser), "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_scale": 2},
        "cpu",
    )
    assert stage.options.mean == (0.5, 0.5, 0.5) and stage.options.crop_scale == 2.0
    assert isinstance(stage.options.model_path, Path)


# -- outputs and docs --------------------------------------------------------------------------------------


def test_preview_and_result_show_the_segmentation(pipeline, face_photo):
    from facerecon.outputs.preview import LABEL_COLORS, render_preview, render_segmentation
    from facerecon.outputs.result import result_dict

    rec = pipeline(face_photo)
    face = rec.reconstructions[0]
    seg = lr.LandmarkRegions().segment(face_photo, face.face)
    tinted = render_segmentation(face_photo, [seg])
    skin = seg.labels == LABEL_IDS["skin"]
    expected = 0.4 * face_photo[skin].astype(np.float32) + 0.6 * np.array(LABEL_COLORS["skin"], np.float32)
    assert np.abs(tinted[skin].astype(np.float32) - expected).max() <= 1.0
    assert np.array_equal(tinted[seg.labels == 0], face_photo[seg.labels == 0])
    from dataclasses import replace

    with_seg = replace(rec, reconstructions=(replace(face, segmentation=seg),))
    without = replace(rec, reconstructions=(replace(face, segmentation=None),))
    plain, shown = render_preview(face_photo, without), render_preview(face_photo, with_seg)
    assert shown.shape[0] == plain.shape[0] and shown.shape[1] * 3 == plain.shape[1] * 4  # one more panel
    result = result_dict(with_seg, "x.png", {}, {"segmenter": ("landmark-regions", "9.9")})
    block = result["reconstructions"][0]["segmentation"]
    assert block["plugin"] == "landmark-regions" and block["version"] == "9.9"
    assert block["labels"]["1"] == "skin" and block["pixels"]["skin"] == int(skin.sum())
    assert np.allclose(block["region_colors"]["skin"], seg.region_colors["skin"], atol=1e-4)
    assert result["plugins"] == {"segmenter": {"plugin": "landmark-regions", "version": "9.9"}}
    assert result_dict(without, "x.png", {})["reconstructions"][0]["segmentation"] is None


def test_configuration_doc_options_are_valid():
    """docs/configuration.md's option tables for the new stages build their options dataclasses."""
    import re

    from facerecon.kernel.host.config import tomllib
    from facerecon.plugins import dlib_detector, onnx_parsing

    text = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    types = {
        ("detector", "dlib"): dlib_detector.DlibOptions,
        ("segmenter", "landmark-regions"): lr.LandmarkRegionsOptions,
        ("segmenter", "onnx-parsing"): onnx_parsing.OnnxParsingOptions,
    }
    from facerecon.kernel.host.options import parse_options

    seen = set()
    for block in re.findall(r"```toml\n(.*?)```", text, flags=re.S):
        for kind, tables in tomllib.loads(block).get("options", {}).items():
            for name, table in tables.items():
                if (kind, name) in types:
                    parse_options(types[(kind, name)], table, where=f"{kind} {name}")
                    seen.add((kind, name))
    assert seen == set(types)


def test_pasting_in_strips_changes_nothing(tiny_parser, scene, monkeypatch):
    from facerecon.plugins import onnx_parsing

    image, box, _ = scene
    parser = OnnxParser(OnnxParsingOptions(model_path=tiny_parser, crop_scale=1.6))
    face = Face(box, 0.9, Landmarks("none", np.zeros((1, 2))))
    whole = parser.segment(image, face).labels
    monkeypatch.setattr(onnx_parsing, "PASTE_BUDGET", 4 * 160 * 19 * 7)  # 7 rows of the 160-pixel crop at once
    assert np.array_equal(parser.segment(image, face).labels, whole)
