"""`deploybench app`: a read-only Gradio app over the workspace store (predict, explore the front, training)."""

from deploybench.app.ui import MAX_FILE_BYTES, build_app, launch

__all__ = ["MAX_FILE_BYTES", "build_app", "launch"]
