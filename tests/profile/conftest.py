"""Profile fixtures: an ONNX child of the trained lenet variant (exported here, not by the optimize stage)."""
import pytest
import torch

from deploybench.optimize import formats
from deploybench.profile.static import input_shape, root_config


def make_onnx_variant(ws, parent, *, dynamic_batch=True, stage="export"):
    """Export `parent` to ONNX (model.onnx) as a child variant of format "onnx"."""
    module = formats.load_module(parent)
    shape = input_shape(root_config(ws, parent))

    def write(d):
        kwargs = dict(dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}) if dynamic_batch else {}
        torch.onnx.export(module, (torch.zeros(2, *shape),), str(d / "model.onnx"), dynamo=False,
                          input_names=["input"], output_names=["logits"], opset_version=17, **kwargs)

    variant, _ = ws.create_variant(model=parent.model, dataset=parent.dataset, stage=stage,
                                   config=dict(opset=17, dynamic=dynamic_batch), parent=parent, fmt="onnx", write=write)
    return variant


@pytest.fixture
def onnx_workspace(trained_workspace):
    """(ws, trained lenet, its ONNX export, data_dir)."""
    ws, trained, data_dir = trained_workspace
    return ws, trained, make_onnx_variant(ws, trained), data_dir


@pytest.fixture
def make_onnx():
    return make_onnx_variant
