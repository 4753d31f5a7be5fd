"""`deploybench app` served in a subprocess, driven through `gradio_client`: predict, explore, card, training."""

import pytest

from conftest import suite_top1

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def client(app_url):
    return gradio_client.Client(app_url, verbose=False)


def test_predict_png_two_variants_matches_suite(client, app_workspace, test_png):
    root, trained, onnx, _ = app_workspace
    picture, html, message, data = client.predict(
        gradio_client.handle_file(str(test_png)), None, [trained, onnx], api_name="/predict"
    )
    assert message == ""
    assert [r["variant"] for r in data["results"]] == [trained, onnx]
    for r in data["results"]:
        assert r["top"][0]["name"] == suite_top1(root, r["variant"], test_png)
        assert len(r["top"]) == 5 and r["latency_ms"] > 0
    assert picture  # the converted input is shown
    assert "db-top1" in html


def test_predict_test_image_by_index(client, app_workspace):
    _, trained, _, _ = app_workspace
    _, _, message, data = client.predict(None, 2, [trained], api_name="/predict")
    assert message == "" and data["truth"]


def test_predict_text_file_is_a_message(client, app_workspace, text_file):
    _, trained, _, _ = app_workspace
    picture, html, message, data = client.predict(
        gradio_client.handle_file(str(text_file)), None, [trained], api_name="/predict"
    )
    assert "not an image" in message and picture is None and html == ""


def test_predict_refuses_unknown_variant(client):
    _, _, message, _ = client.predict(None, 0, ["../../etc/passwd"], api_name="/predict")
    assert "no such variant" in message


def test_explore_returns_rows(client, app_workspace):
    _, trained, onnx, _ = app_workspace
    chart, table, _, message = client.predict(
        None, "ort-cpu", "1", "latency_ms_p50", "accuracy_top1", api_name="/explore"
    )
    assert message == ""
    ids = {row[-1] for row in table["data"]}
    assert ids == {trained, onnx}
    card = client.predict(onnx, api_name="/card")
    assert "Lineage" in card and trained[:12] in card and "model.onnx" in card


def test_training_returns_figures(client, app_workspace):
    _, trained, _, _ = app_workspace
    curves, confusion, message = client.predict(trained, api_name="/training")
    assert message == ""
    assert curves and confusion
