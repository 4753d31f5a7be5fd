"""The app's input conversion and refusals, in process (no server)."""

import numpy as np
import pytest
from PIL import Image

from deploybench.app import explore, predict
from deploybench.app.inputs import MAX_FILE_BYTES, read_image, to_input, to_picture
from deploybench.errors import UserError
from deploybench.store import Workspace


def test_any_image_becomes_the_datasets_input(tmp_path, tiny_fashion_mnist):
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (300, 200, 3), dtype=np.uint8)).save(path)
    x = to_input(read_image(str(path)), "fashion-mnist", tiny_fashion_mnist)
    assert tuple(x.shape) == (1, 28, 28)
    assert to_picture(x, "fashion-mnist", tiny_fashion_mnist).shape == (28, 28)
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # transparent: drawn over white
    assert to_input(rgba, "cifar10", tiny_fashion_mnist).shape == (3, 32, 32)


@pytest.mark.parametrize("content, message", [(b"hello", "not an image"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image")])
def test_non_image_and_corrupt_files_are_refused(tmp_path, content, message):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_image(str(path))


def test_too_large_file_is_refused(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(b"\0" * (MAX_FILE_BYTES + 1))
    with pytest.raises(UserError, match="MB"):
        read_image(str(path))


def test_predict_and_card_in_process(app_workspace):
    root, trained, onnx, data_dir = app_workspace
    ws = Workspace(root)
    out = predict.predict(ws, data_dir, [trained, onnx], index=0)
    assert [r["variant"] for r in out["results"]] == [trained, onnx] and out["truth"]
    assert "db-top1" in predict.results_html(out)
    with pytest.raises(UserError, match="at most 4"):
        predict.chosen_variants(ws, [trained] * 5)
    rows = explore.front_rows(ws, None, "ort-cpu", 1)
    assert {r["variant"] for r in rows} == {trained, onnx}
    assert len(explore.chart_frame(rows, "latency_ms_p50", "accuracy_top1")) == 2
    assert "Files" in explore.variant_card(ws, onnx)
