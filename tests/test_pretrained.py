"""Pretrained image models: Ultralytics and YOLOv5 exports convert with no flags, any ONNX image model with
flags (each flag's effect checked on the decoded input), manifests validated, fixed batches served at any
max_batch, OpenVINO as a second measured engine, threads chosen by measurement."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnx")

from helpers import needs_mqtt5  # noqa: E402
from yolo_models import NAMES, colour_classifier, colour_scene, ultralytics_metadata, yolo_model  # noqa: E402

from converters import ConversionError, TaskOptions, convert  # noqa: E402
from converters.gate import match_detections, pick_threads  # noqa: E402
from converters.task_options import parse_class_names, task_options_from_text  # noqa: E402
from devices.cameras import encode_frame  # noqa: E402
from edge_runtime.bundle import load_bundle  # noqa: E402
from edge_runtime.engines import (  # noqa: E402
    Engine,
    EngineKind,
    open_engine,
    resolve_threads,
    run_in_slices,
)
from edge_runtime.errors import BundleError  # noqa: E402
from edge_runtime.tasks.vision import ImageDecoder  # noqa: E402

try:
    import openvino  # noqa: F401

    HAVE_OPENVINO = True
except ImportError:
    HAVE_OPENVINO = False
needs_openvino = pytest.mark.skipif(
    not HAVE_OPENVINO, reason="OpenVINO is not installed (pip install 'edge-runtime[openvino]')"
)


def _write(tmp_path: Path, name: str, model: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(model)
    return path


def _quiet(_: str) -> None:
    pass


def _detect(bundle, img: np.ndarray) -> list[dict]:
    engine = open_engine(bundle)
    _, row, meta = engine.task.decoder(bundle.manifest, max_bytes=1 << 24).decode(encode_frame(img, "png"))
    return engine.task.results(bundle.manifest, engine.run(row[None]), [meta])[0]["detections"]


def _inside(det: dict, box, slack: float) -> bool:
    cx, cy = (det["box"][0] + det["box"][2]) / 2, (det["box"][1] + det["box"][3]) / 2
    return box[0] - slack <= cx <= box[2] + slack and box[1] - slack <= cy <= box[3] + slack


@pytest.fixture(scope="module")
def yolov8_export(tmp_path_factory) -> Path:
    model = yolo_model("yolov8", metadata=ultralytics_metadata())
    return _write(tmp_path_factory.mktemp("yolo"), "yolov8n.onnx", model)


@pytest.fixture(scope="module")
def yolov8_bundle(yolov8_export, tmp_path_factory):
    return convert(yolov8_export, tmp_path_factory.mktemp("b") / "yolo", progress=_quiet)


# -- Ultralytics and YOLOv5 exports, no flags ---------------------------------------------------------


def test_ultralytics_detect_export_converts_with_no_flags(yolov8_bundle):
    m = yolov8_bundle.manifest
    assert m.task == "detector" and m.labels == list(NAMES)
    assert m.preprocess.size == (64, 64) and m.preprocess.resize == "letterbox" and m.preprocess.color == "rgb"
    assert m.preprocess.scale == pytest.approx(1 / 255) and m.preprocess.pad_value == 114
    assert m.detector.format == "yolov8" and m.detector.iou_threshold == 0.7
    assert m.source["exporter"] == "ultralytics" and m.source["imgsz"] == [64, 64] and m.source["batch"] == 1
    report = json.loads((yolov8_bundle.path / "report.json").read_text())
    assert report["engine"]["kind"] == m.engine.kind and m.engine.threads >= 1  # measured, even with no flags
    assert "drawn scenes" in report["synthetic_inputs"]


def test_converted_export_finds_the_drawn_objects_in_original_pixels(yolov8_bundle):
    img, truth = colour_scene(320, 240)  # 4:3, so the letterbox pads top and bottom
    dets = _detect(yolov8_bundle, img)
    assert {d["label"] for d in dets} == {"red", "blue"}
    for label, box in truth:
        mine = [d for d in dets if d["label"] == label]
        assert mine and all(_inside(d, box, slack=20) for d in mine), (label, box, mine)  # one cell = 20 px here


def test_bgr_order_would_see_other_colours(yolov8_export, tmp_path):
    bundle = convert(yolov8_export, tmp_path / "bgr", task_options=TaskOptions(color="bgr"), progress=_quiet)
    img, _ = colour_scene(squares=((40, 60, 120, "red"),))  # a model fed the wrong order sees a red square as blue
    assert {d["label"] for d in _detect(bundle, img)} == {"blue"}


def test_classic_yolov5_export_with_objectness(tmp_path):
    meta = {"stride": "4", "names": str(dict(enumerate(NAMES)))}
    src = _write(tmp_path, "yolov5s.onnx", yolo_model("yolov5", metadata=meta))
    bundle = convert(src, tmp_path / "b", progress=_quiet)
    m = bundle.manifest
    assert (m.task, m.detector.format, m.labels, m.source["exporter"]) == ("detector", "yolov5", list(NAMES), "yolov5")
    img, truth = colour_scene(squares=((150, 50, 100, "green"),))
    dets = _detect(bundle, img)
    assert dets and {d["label"] for d in dets} == {"green"} and all(_inside(d, truth[0][1], 20) for d in dets)


def test_yolov5_layout_without_metadata_is_recognised_by_shape(tmp_path):
    src = _write(tmp_path, "v5.onnx", yolo_model("yolov5"))
    bundle = convert(src, tmp_path / "b", task_options=TaskOptions(task="detector", class_names=NAMES), progress=_quiet)
    assert bundle.manifest.detector.format == "yolov5"


def test_ultralytics_classify_export(tmp_path):
    meta = ultralytics_metadata("classify", size=32)
    src = _write(tmp_path, "cls.onnx", colour_classifier(size=32, batch=1, softmax=True))
    import onnx

    model = onnx.load(str(src))
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(model, str(src))
    m = convert(src, tmp_path / "b", progress=_quiet).manifest
    assert m.task == "image_classifier" and m.labels == list(NAMES) and not m.softmax
    assert (m.preprocess.resize, m.preprocess.resize_short, m.preprocess.size) == ("center_crop", 32, (32, 32))


@pytest.mark.parametrize(
    "task, words", [("pose", "pose models are not supported yet"), ("segment", "segment models are not supported yet")]
)
def test_pose_and_segment_say_not_supported_yet(tmp_path, task, words):
    src = _write(tmp_path, "m.onnx", yolo_model("yolov8", metadata=ultralytics_metadata(task)))
    with pytest.raises(ConversionError, match=words):
        convert(src, tmp_path / "b", progress=_quiet)
    # ... and --task generic still serves the raw outputs
    generic = convert(src, tmp_path / "g", task_options=TaskOptions(task="generic"), progress=_quiet)
    assert generic.manifest.task == "generic"


def test_nms_inside_the_model_is_not_supported_yet(tmp_path):
    src = _write(tmp_path, "m.onnx", yolo_model("yolov8", metadata=ultralytics_metadata(end2end=True)))
    with pytest.raises(ConversionError, match="NMS inside the model"):
        convert(src, tmp_path / "b", progress=_quiet)


def test_metadata_is_parsed_as_a_literal_never_evaluated(tmp_path):
    meta = {**ultralytics_metadata(), "names": "{0: __import__('os').getpid()}"}
    src = _write(tmp_path, "evil.onnx", yolo_model("yolov8", metadata=meta))
    with pytest.raises(ConversionError, match="not a Python literal"):
        convert(src, tmp_path / "b", progress=_quiet)


# -- flags, each checked on the decoded input ----------------------------------------------------------


def _decoded(bundle, img: np.ndarray) -> np.ndarray:
    return ImageDecoder(bundle.manifest, max_bytes=1 << 24).decode(encode_frame(img, "png"))[1]


@pytest.fixture(scope="module")
def classifier_src(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("cls"), "colours.onnx", colour_classifier(size=32))


def _flags(**flags) -> TaskOptions:
    return task_options_from_text(task="image_classifier", **flags)


def test_color_scale_mean_std_layout_reach_the_decoded_input(classifier_src, tmp_path):
    img = np.zeros((32, 32, 3), np.uint8)
    img[:] = (30, 60, 90)  # BGR
    rgb = convert(classifier_src, tmp_path / "rgb", task_options=_flags(), progress=_quiet)
    np.testing.assert_allclose(_decoded(rgb, img)[:, 0, 0], np.array([90, 60, 30]) / 255, rtol=1e-6)
    bgr = convert(classifier_src, tmp_path / "bgr", task_options=_flags(color="bgr"), progress=_quiet)
    np.testing.assert_allclose(_decoded(bgr, img)[:, 0, 0], np.array([30, 60, 90]) / 255, rtol=1e-6)
    norm = convert(
        classifier_src, tmp_path / "norm", progress=_quiet, task_options=_flags(scale="1", mean="10,20,30", std="2,4,8")
    )
    np.testing.assert_allclose(_decoded(norm, img)[:, 0, 0], [(90 - 10) / 2, (60 - 20) / 4, (30 - 30) / 8])
    imagenet = convert(
        classifier_src,
        tmp_path / "imagenet",
        progress=_quiet,
        task_options=_flags(mean="0.485,0.456,0.406", std="0.229,0.224,0.225"),
    )  # mean/std apply after the default /255
    np.testing.assert_allclose(
        _decoded(imagenet, img)[:, 0, 0],
        (np.array([90, 60, 30]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
        rtol=1e-5,
    )


def test_nhwc_layout_and_image_size_for_a_dynamic_input(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, 2], keepdims=0)],
        "nhwc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    src = _write(tmp_path, "nhwc.onnx", model.SerializeToString())
    with pytest.raises(ConversionError, match="no fixed height and width: give --image-size"):
        convert(src, tmp_path / "x", task_options=_flags(), progress=_quiet)
    bundle = convert(src, tmp_path / "b", task_options=_flags(image_size="48x24"), progress=_quiet)
    assert bundle.manifest.preprocess.layout == "NHWC"  # guessed from the 3 on the last axis
    assert _decoded(bundle, np.zeros((50, 50, 3), np.uint8)).shape == (24, 48, 3)


def _bands(width: int = 64, height: int = 48) -> np.ndarray:
    """Blue left and right thirds, a red band in the middle third (BGR)."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:] = (255, 0, 0)
    img[:, width // 3 : 2 * width // 3] = (0, 0, 255)
    return img


def _classify(bundle, img) -> str:
    engine = open_engine(bundle)
    _, row, meta = engine.task.decoder(bundle.manifest, max_bytes=1 << 24).decode(encode_frame(img, "png"))
    return engine.task.results(bundle.manifest, engine.run(row[None]), [meta])[0]["label"]


def test_center_crop_sees_the_middle_and_stretch_the_whole(classifier_src, tmp_path):
    names = ",".join(NAMES)
    crop = convert(
        classifier_src,
        tmp_path / "crop",
        progress=_quiet,
        task_options=_flags(resize="center_crop", resize_short="48", class_names=names),
    )
    stretch = convert(
        classifier_src, tmp_path / "stretch", progress=_quiet, task_options=_flags(resize="stretch", class_names=names)
    )
    assert crop.manifest.softmax  # the model ends in logits (no Softmax node): scores are made probabilities
    assert _classify(crop, _bands()) == "red" and _classify(stretch, _bands()) == "blue"
    # the crop is exactly the centre 32x32 of the frame with its short side resized to 48 (unchanged here)
    row = _decoded(crop, _bands())
    np.testing.assert_allclose(row.transpose(1, 2, 0) * 255, _bands()[8:40, 16:48, ::-1], atol=1e-4)
    # resize_short 96 doubles the frame first: the centre 32x32 is all red
    near = convert(
        classifier_src, tmp_path / "near", progress=_quiet, task_options=_flags(resize="center_crop", resize_short="96")
    )
    assert np.all(_decoded(near, _bands())[0] > 0.99)


def test_letterbox_pads_and_stretch_does_not(classifier_src, tmp_path):
    img = np.full((16, 32, 3), 255, np.uint8)  # wide white frame
    lb = convert(classifier_src, tmp_path / "lb", task_options=_flags(resize="letterbox"), progress=_quiet)
    box = _decoded(lb, img)
    assert np.allclose(box[:, 0, :], 114 / 255) and np.allclose(box[:, 16, :], 1.0)  # grey bars top, white middle
    st = _decoded(convert(classifier_src, tmp_path / "st", task_options=_flags(resize="stretch"), progress=_quiet), img)
    assert np.allclose(st, 1.0)


def test_class_names_from_a_file(tmp_path, classifier_src):
    (tmp_path / "names.txt").write_text("red, dark\ngreen\nblue\n\n")
    assert parse_class_names(str(tmp_path / "names.txt")) == ("red, dark", "green", "blue")
    bundle = convert(
        classifier_src, tmp_path / "b", progress=_quiet, task_options=_flags(class_names=str(tmp_path / "names.txt"))
    )
    assert bundle.manifest.labels == ["red, dark", "green", "blue"]


def test_flags_override_the_metadata(yolov8_export, tmp_path):
    bundle = convert(
        yolov8_export,
        tmp_path / "b",
        progress=_quiet,
        task_options=task_options_from_text(
            class_names="r,g,b", conf_threshold="0.5", iou_threshold="0.3", resize="stretch"
        ),
    )
    m = bundle.manifest
    assert m.labels == ["r", "g", "b"] and (m.detector.conf_threshold, m.detector.iou_threshold) == (0.5, 0.3)
    assert m.preprocess.resize == "stretch" and m.preprocess.size == (64, 64)


def _cli(capsys, *args) -> tuple[int, str]:
    from edge_runtime.cli import main

    code = main(["convert", *map(str, args)])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--resize-short", "256"], "--resize-short applies to --resize center_crop"),
        (["--mean", "1,2"], "expected three numbers"),
        (["--resize", "crop"], "unknown --resize 'crop'; choose from letterbox, stretch, center_crop"),
        (["--task", "classifier", "--resize", "letterbox"], "--resize applies to image models"),
        (["--task", "image_classifier", "--conf-threshold", "0.3"], "--conf-threshold applies to detectors"),
        (["--class-names", "a,b"], "2 labels for a model with 3 classes (check --class-names and --detector-format)"),
        (["--image-size", "320"], "--image-size 320x320 does not match the model's fixed input 64x64"),
        (["--task", "detector", "--detector-format", "yolov5"], "3 labels for a model with 251 classes"),
        (["--resize", "center_crop", "--resize-short", "16"], "smaller than the 64x64 crop"),
        (["--std", "1,0,1"], "--std: every value must be above 0"),
        (["--layout", "NHWC"], "channels"),
        (["--iou-threshold", "2"], "--iou-threshold 2: must be above 0 and at most 1"),
        (["--class-names", "no/such/names.txt"], "no such file"),
        (["--task", "regressor", "--class-names", "a"], "--class-names applies to classifiers and detectors"),
    ],
)
def test_bad_flag_combinations_are_one_line_errors(yolov8_export, tmp_path, capsys, args, words):
    code, err = _cli(capsys, yolov8_export, "-o", tmp_path / "b", *args)
    assert code == 2 and words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "b").exists()


def test_image_flags_on_a_scikit_learn_model_are_refused(tmp_path, capsys):
    import joblib
    from sklearn.linear_model import LogisticRegression

    joblib.dump(LogisticRegression().fit(np.eye(3), [0, 1, 2]), tmp_path / "m.joblib")
    code, err = _cli(capsys, tmp_path / "m.joblib", "-o", tmp_path / "b", "--task", "detector")
    assert code == 2 and "applies to ONNX and PyTorch models" in err


# -- manifests are validated when a bundle is loaded -------------------------------------------------


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda m: m["preprocess"].update(resize="crop"), "preprocess.resize"),
        (lambda m: m["preprocess"].update(colour="rgb"), "preprocess.colour"),
        (lambda m: m["detector"].update(format="yolov9"), "detector.format"),
        (lambda m: m.update(labels=["a", "b"]), "2 labels for a model with 3 classes"),
        (lambda m: m["preprocess"].update(size=[32, 32]), "does not match the model's input"),
        (lambda m: m["preprocess"].update(resize_short=100), "resize_short applies to resize = center_crop"),
        (lambda m: m.update(task="image_classifier"), "detector is for task detector"),
    ],
)
def test_hand_edited_manifests_are_refused_when_loaded(yolov8_bundle, tmp_path, edit, words):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(yolov8_bundle.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_bundle(copy)


# -- fixed batch dimensions ------------------------------------------------------------------------


def test_fixed_batch_model_runs_any_batch_in_slices(yolov8_bundle):
    engine = Engine(yolov8_bundle, threads=1)
    assert engine.fixed_batch == 1
    rows = np.random.default_rng(0).random((5, 3, 64, 64), dtype=np.float32)
    out = engine.run(rows)["output0"]
    assert out.shape == (5, 7, 256)
    for i in range(5):
        np.testing.assert_allclose(out[i], engine.run(rows[i : i + 1])["output0"][0], rtol=1e-5, atol=1e-5)
    engine.warm_up((1, 32))  # the warm-up of a max_batch 32 route runs the model's own batch size only


def test_run_in_slices_pads_the_last_slice():
    seen = []

    def run(batch):
        seen.append(len(batch))
        assert len(batch) == 4  # the model insists on exactly four rows
        return {"y": batch.sum(axis=1, keepdims=True), "n": np.full((4,), len(seen))}

    rows = np.arange(18, dtype=np.float32).reshape(6, 3)
    out = run_in_slices(run, rows, 4)
    assert seen == [4, 4] and out["y"].shape == (6, 1)
    np.testing.assert_array_equal(out["y"][:, 0], rows.sum(axis=1))


@needs_mqtt5
def test_fixed_batch_detector_is_served_with_the_default_max_batch(
    yolov8_bundle, broker, start_runtime, collector, publisher
):
    from test_vision import _publish_frame

    results = collector("detections/#")
    config = (
        f'[broker]\nurl = "{broker.url}"\nclient_id = "fixed-batch"\n[[models]]\nname = "m"\n'
        f'bundle = "{yolov8_bundle.path}"\n[[routes]]\nmodel = "m"\nsubscribe = "cameras/+/frames"\n'
        f'publish = "detections/{{1}}"\nmax_delay_ms = 20\nqos = 1\n'
    )  # max_batch: the default 32
    start_runtime(config)
    img, _truth = colour_scene()
    for i in range(6):
        _publish_frame(publisher, "gate", encode_frame(img), f"f{i}")
    got = results.json(6)
    assert sorted(b["id"] for _, b in got) == [f"f{i}" for i in range(6)]
    for _, body in got:
        assert {d["label"] for d in body["detections"]} == {"red", "blue"}


# -- engines and threads ---------------------------------------------------------------------------


def test_threads_come_from_the_config_else_the_measurement_else_the_profile(yolov8_bundle):
    m = yolov8_bundle.manifest
    assert resolve_threads(m, 3, 1) == (3, "config")
    assert resolve_threads(m, None, 1) == (m.engine.threads, "measured")
    bare = m.model_copy(update={"engine": None})
    assert resolve_threads(bare, None, 2) == (2, "device profile")
    huge = m.model_copy(update={"engine": m.engine.model_copy(update={"threads": 256})})
    assert resolve_threads(huge, None, 1)[0] <= __import__("os").cpu_count()


def test_pick_threads_keeps_one_unless_more_pay():
    assert pick_threads({1: {"1": 0.005}, 2: {"1": 0.0049}})[0] == 1  # a 5 us model keeps one thread
    t, why = pick_threads({1: {"1": 120.0}, 2: {"1": 65.0}})  # a 65 ms CNN takes both cores
    assert t == 2 and "1.85x faster than 1" in why
    assert pick_threads({1: {"1": 10.0, "4": 30.0}, 2: {"1": 9.5, "4": 28.0}})[0] == 1  # < 15% faster


def test_unknown_or_missing_engine_falls_back_to_onnx_runtime(yolov8_bundle, monkeypatch, caplog):
    from edge_runtime import engines

    m = yolov8_bundle.manifest
    future = yolov8_bundle.__class__(
        yolov8_bundle.path, m.model_copy(update={"engine": m.engine.model_copy(update={"kind": "ncnn"})})
    )
    with caplog.at_level(logging.WARNING, logger="edge_runtime.engines"):
        assert open_engine(future).name == "onnxruntime"
    assert "does not know" in caplog.text
    # OpenVINO recorded but not installed here: inject the fault by pointing its kind at a missing package
    missing = EngineKind("openvino", "x:y", "no_such_package_here", "pip install it")
    monkeypatch.setitem(engines.ENGINES._entries, "openvino", missing)
    ov = yolov8_bundle.__class__(
        yolov8_bundle.path, m.model_copy(update={"engine": m.engine.model_copy(update={"kind": "openvino"})})
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge_runtime.engines"):
        engine = open_engine(ov, threads=1)
    assert engine.name == "onnxruntime" and "not installed here" in caplog.text
    assert engine.run(np.zeros((2, 3, 64, 64), np.float32))["output0"].shape == (2, 7, 256)


@needs_openvino
def test_openvino_engine_runs_the_same_onnx_file(yolov8_bundle):
    ort_engine = open_engine(yolov8_bundle, engine="onnxruntime", threads=1)
    ov_engine = open_engine(yolov8_bundle, engine="openvino", threads=1)
    assert ov_engine.name == "openvino" and ov_engine.fixed_batch == 1
    img, _ = colour_scene()
    dets = [
        e.task.results(
            yolov8_bundle.manifest,
            e.run(np.stack([_decoded(yolov8_bundle, img)] * 3)),
            [ImageDecoder(yolov8_bundle.manifest, max_bytes=1 << 24).decode(encode_frame(img))[2]] * 3,
        )
        for e in (ort_engine, ov_engine)
    ]
    for a, b in zip(*dets):  # same objects, whatever precision OpenVINO computes in
        assert [d["label"] for d in a["detections"]] == [d["label"] for d in b["detections"]]
    ov_engine.warm_up((1, 8))


def _image_dir(tmp_path: Path, n: int = 6) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(n):
        colours = rng.choice(["red", "green", "blue"], 2, replace=False)
        img, _ = colour_scene(
            squares=(
                (int(rng.integers(0, 150)), int(rng.integers(0, 100)), 90, colours[0]),
                (int(rng.integers(180, 220)), int(rng.integers(0, 140)), 90, colours[1]),
            )
        )
        cv2.imwrite(str(folder / f"{i}.{'png' if i % 2 else 'jpg'}"), img)
    return folder


def test_auto_with_a_folder_of_images_compares_detections(yolov8_export, tmp_path):
    bundle = convert(
        yolov8_export,
        tmp_path / "auto",
        quantize="auto",
        validation=_image_dir(tmp_path),
        keep_candidates=True,
        progress=_quiet,
    )
    report = json.loads((bundle.path / "report.json").read_text())
    by = {(c["mode"], c["engine"]): c for c in report["candidates"]}
    assert {("none", "onnxruntime"), ("static", "onnxruntime"), ("dynamic", "onnxruntime")} <= set(by)
    if HAVE_OPENVINO:
        assert ("none", "openvino") in by and by[("none", "openvino")]["precision"] in ("f32", "bf16", "f16")
    base = by[("none", "onnxruntime")]
    assert base["detection"]["fp32_boxes"] > 0 and base["detection"]["recall"] == 100.0
    static = by[("static", "onnxruntime")]
    assert any("detection head kept in float" in n for n in static["notes"]), static["notes"]
    assert static["detection"]["recall"] >= 90 and static["detection"]["precision"] >= 90, static["detection"]
    chosen = next(c for c in report["candidates"] if c["chosen"])
    m = bundle.manifest
    assert (m.engine.kind, m.engine.threads) == (chosen["engine"], chosen["threads"])
    assert m.quantization["mode"] == chosen["mode"]
    assert set(chosen["latency_by_threads"]) >= {"1"} and list(chosen["latency_p50_ms"]) == ["1"]  # its fixed batch


def test_static_quantization_without_the_float_head_is_what_the_exclusion_prevents(yolov8_export, tmp_path):
    import onnx

    from converters.detector_head import float_tail

    names = float_tail(onnx.load(str(yolov8_export)), "output0")
    assert {"head/box/reshape", "head/box/decode", "head/cls/reshape", "head/cls/sigmoid", "head/concat"} == set(names)
    assert not {"head/cls/conv", "head/box/conv", "backbone/conv"} & set(names)  # the feature layers stay int8


def test_match_detections_counts_same_class_overlaps_once():
    ref = [([0, 0, 10, 10], 0, 0.9), ([20, 20, 30, 30], 1, 0.8)]
    found = [([1, 1, 10, 10], 0, 0.9), ([0, 0, 10, 10], 0, 0.5), ([20, 20, 30, 30], 0, 0.9)]
    # one match for the first box; the second is a duplicate, the third of the wrong class
    assert match_detections(found, ref) == 1


def test_bench_model_on_a_fixed_batch_image_bundle(yolov8_bundle):
    from edge_runtime.bench.model import bench_model, format_model_report

    report = bench_model(yolov8_bundle.path, batch_sizes=(1, 3), threads=(1,), engines=("onnxruntime",), duration=0.3)
    assert [b["batch"] for b in report["batches"]] == [1, 3] and report["engine"] == "onnxruntime"
    for b in report["batches"]:
        assert b["core"]["rows_per_s"] > 0 and b["decode_us_per_row"] > 0 and b["bare"]["p50_ms"] > 0
    assert "core/bare" in format_model_report(report)


@needs_mqtt5
def test_camera_bench_reports_served_beside_bare_and_stages(yolov8_bundle):
    from edge_runtime.bench.camera import CameraBenchOptions, bench_camera, format_camera_report

    report = bench_camera(
        CameraBenchOptions(
            bundle=yolov8_bundle.path,
            cameras=1,
            fps=30,
            width=320,
            height=240,
            duration=1.5,
            max_queue=20,
            policies=("latest_only",),
        )
    )
    r = report["policies"]["latest_only"]
    assert r["received"] == r["sent"] == r["served"] + r["errors"] + sum(r["skipped"].values())
    assert r["served_fps"] > 0 and report["threads"] == yolov8_bundle.manifest.engine.threads
    model, t = report["model"], report["throughput"]
    assert set(model["stages_p50_ms"]) == {"decode", "preprocess", "infer", "postprocess"}
    assert all(v > 0 for v in model["stages_p50_ms"].values())
    assert t["served_fps"] > 0 and t["onnxruntime_all_cores_fps"] > 0 and t["engine_fps"] > 0
    assert report["served_vs_engine"] == pytest.approx(t["served_fps"] / t["engine_fps"], rel=0.01, abs=1e-3)
    text = format_camera_report(report)
    assert "served vs bare, in" in text and "per frame p50: decode" in text


def test_max_detections_caps_the_output_not_the_candidates():
    from edge_runtime.tasks.vision import decode_detections

    # 10 high-scoring copies of one box, then 10 distinct boxes scoring lower (YOLOv8 layout: 4 + 1 class)
    dup = [[50, 50, 20, 20, 0.9 - i * 0.001] for i in range(10)]
    distinct = [[100 + 30 * i, 300, 20, 20, 0.5] for i in range(10)]
    dets = decode_detections(np.array(dup + distinct, np.float32).T, layout="yolov8", conf=0.25, iou=0.5, max_det=10)
    assert len(dets) == 10 and dets[0][2] == pytest.approx(0.9)  # NMS first, then the cap: 1 + 9 distinct


def test_a_candidate_within_noise_of_fp32_does_not_replace_it():
    from converters.gate import Candidate, choose

    base = Candidate("none", latency_p50_ms={"1": 100.0}, accuracy=100.0, model=b"x")
    same = Candidate("none", engine="openvino", precision="f32", latency_p50_ms={"1": 97.0}, accuracy=100.0, model=b"x")
    fast = Candidate("none", engine="openvino", precision="bf16", latency_p50_ms={"1": 55.0}, accuracy=99.5, model=b"x")
    assert choose([base, same], max_accuracy_drop=1.0) is base and "not measurably faster" in same.reason
    assert choose([base, same, fast], max_accuracy_drop=1.0) is fast and "1.82x fp32" in fast.reason


def test_conf_threshold_and_detector_format_change_what_is_found(yolov8_export, tmp_path):
    img, _ = colour_scene()
    strict = convert(
        yolov8_export, tmp_path / "strict", progress=_quiet, task_options=task_options_from_text(conf_threshold="0.999")
    )
    assert _detect(strict, img) == []  # the squares score 0.9975: below the bar
    # read as YOLOv5 rows (boxes x (5 + classes)) the same output makes no sense: refused, not misread
    with pytest.raises(ConversionError, match="labels for a model with"):
        convert(yolov8_export, tmp_path / "v5", progress=_quiet, task_options=TaskOptions(detector_format="yolov5"))


def test_imagenet_mean_and_std_change_the_answer(classifier_src, tmp_path):
    grey = np.full((40, 40, 3), 128, np.uint8)
    plain = convert(classifier_src, tmp_path / "plain", progress=_quiet, task_options=_flags(class_names="r,g,b"))
    imagenet = convert(
        classifier_src,
        tmp_path / "imagenet",
        progress=_quiet,
        task_options=_flags(class_names="r,g,b", mean="0.485,0.456,0.406", std="0.229,0.224,0.225"),
    )
    # a grey frame: equal channels without normalisation; blue is furthest above its ImageNet mean
    assert _classify(plain, grey) == "r" and _classify(imagenet, grey) == "b"


def test_both_engines_satisfy_the_protocol(yolov8_bundle):
    from edge_runtime.engines import InferenceEngine, available_engines

    for kind in available_engines():
        engine = open_engine(yolov8_bundle, engine=kind, threads=1)
        assert isinstance(engine, InferenceEngine) and engine.name == kind and engine.threads == 1


def test_detector_gate_compares_scores_when_fp32_finds_no_boxes():
    """Validation frames on which fp32 finds nothing make box agreement a vacuous 100 %: an int8 or bf16
    candidate would pass whatever it computed. The gate then compares the class scores themselves."""
    from converters.gate import Candidate, _score

    rng = np.random.default_rng(0)
    frames, classes, anchors = 3, 2, 50
    ref = np.concatenate(
        [rng.uniform(0, 64, (frames, 4, anchors)), np.full((frames, classes, anchors), 0.01)], axis=1
    ).astype(np.float32)
    off = ref.copy()
    off[0, 4, 7] = 0.2  # still under the 0.25 confidence threshold: no box either way
    manifest = {"task": "detector", "outputs": [{"name": "output0"}], "detector": {"format": "yolov8"}}

    same = Candidate("none", engine="openvino")
    assert _score({"output0": ref.copy()}, {"output0": ref}, None, manifest, same) == 100.0
    assert same.detection["fp32_boxes"] == 0 and same.detection["compared"] == "scores"
    assert any("finds no boxes" in n for n in same.notes)

    moved = Candidate("static")
    assert _score({"output0": off}, {"output0": ref}, None, manifest, moved) == pytest.approx(66.667)

    from converters._cli import format_report

    rows = [{"mode": c.mode, "accuracy": 100.0, "detection": c.detection, "reason": ""} for c in (same, moved)]
    assert "(scores: fp32 found no boxes)" in format_report({"candidates": rows})
