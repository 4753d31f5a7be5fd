"""The Gradio Blocks of `deploybench app`: Predict, Explore and Training tabs over one workspace, read-only. The
store is opened on every event, so variants and measurements added while the app runs appear without a restart."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the app never calls home
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from deploybench.app import explore, predict, training  # noqa: E402
from deploybench.app.inputs import MAX_FILE_BYTES, read_image  # noqa: E402
from deploybench.errors import DamagedStore, UserError  # noqa: E402
from deploybench.store import Workspace  # noqa: E402

log = logging.getLogger(__name__)
ALL = "all"


def _message(exc: Exception) -> str:
    """What the UI says about a failure: the user's mistake as is, anything else in one line, never a traceback."""
    if isinstance(exc, (UserError, DamagedStore)):
        return f"**Error:** {exc}"
    if isinstance(exc, (sqlite3.Error, OSError)):
        return f"**Error:** the workspace could not be read: {exc}"
    log.exception("app event failed")
    return f"**Error:** {type(exc).__name__}: {exc}"


def _magnified(pixels: np.ndarray, side: int = 224) -> np.ndarray:
    """Small inputs (28x28) blown up with whole-pixel blocks, so the user sees exactly the pixels the models see."""
    factor = max(1, side // max(pixels.shape[:2]))
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1)


class App:
    """The event handlers, each on a fresh read of the store."""

    def __init__(self, workspace: str | os.PathLike, data_dir: str | os.PathLike):
        self.root, self.data_dir = Path(workspace), str(data_dir)

    def ws(self) -> Workspace:
        return Workspace(self.root, create=False)

    # -- predict -------------------------------------------------------------------------------------------
    def _predict(self, image: Image.Image | None, index, ids):
        try:
            out = predict.predict(
                self.ws(), self.data_dir, ids, image=image, index=None if index in (None, "") else int(index)
            )
        except Exception as exc:  # noqa: BLE001 - every failure is a message in the UI
            return None, "", _message(exc), {}
        data = dict(truth=out["truth"], disagree=out["disagree"], results=out["results"])
        return _magnified(out["input"]), predict.results_html(out), "", data

    def predict_file(self, upload, index, ids):
        """Predict on an uploaded file (a path Gradio chose), or on test image `index` without one."""
        try:
            image = read_image(upload) if upload else None
        except UserError as exc:
            return None, "", _message(exc), {}
        return self._predict(image, index, ids)

    def predict_sketch(self, sketch, ids):
        """Predict on the drawing of the Sketchpad (its composite image)."""
        composite = sketch.get("composite") if isinstance(sketch, dict) else None
        if composite is None or not np.asarray(composite).any():
            return None, "", "**Error:** draw something first", {}
        return self._predict(Image.fromarray(np.asarray(composite).astype(np.uint8)), None, ids)

    def variant_choices(self):
        try:
            return gr.Dropdown(choices=predict.variant_choices(self.ws()))
        except Exception:  # noqa: BLE001 - the next event says what is wrong
            return gr.Dropdown()

    # -- explore ---------------------------------------------------------------------------------------------
    def explore_options(self, machine, backend, batch):
        """Filter choices from the store now, keeping the current choice where it still exists."""
        try:
            opts = explore.options(self.ws())
        except Exception:  # noqa: BLE001
            return gr.Dropdown(), gr.Dropdown(), gr.Dropdown()
        machines = opts["machines"]
        backends, batches = [ALL] + opts["backends"], [ALL] + [str(b) for b in opts["batch_sizes"]]
        return (
            gr.Dropdown(choices=machines, value=machine if machine in machines else (machines or [None])[0]),
            gr.Dropdown(choices=backends, value=backend if backend in backends else ALL),
            gr.Dropdown(choices=batches, value=batch if batch in batches else ALL),
        )

    def explore(self, machine, backend, batch, x, y):
        """(chart points, table, variant choices, message) of one machine, backend and batch size."""
        try:
            if x not in explore.AXES or y not in explore.AXES:
                raise UserError(f"axes are one of: {', '.join(explore.AXES)}")
            rows = explore.front_rows(
                self.ws(),
                machine or None,
                None if backend in (None, "", ALL) else backend,
                None if batch in (None, "", ALL) else int(batch),
            )
        except Exception as exc:  # noqa: BLE001
            return (
                gr.ScatterPlot(value=explore.chart_frame([], "x", "y")),
                explore.table_frame([]),
                gr.Dropdown(),
                _message(exc),
            )
        chart = gr.ScatterPlot(
            value=explore.chart_frame(rows, x, y), x_title=explore.axis_title(x), y_title=explore.axis_title(y)
        )
        ids = list(dict.fromkeys(r["variant"] for r in rows))
        labels = {v: lbl for lbl, v in predict.variant_choices(self.ws())}
        msg = "" if rows else "No measurements for this choice yet (`deploybench profile run`)."
        cards = gr.Dropdown(choices=[(labels.get(i, i), i) for i in ids], value=ids[0] if ids else None)
        return chart, explore.table_frame(rows), cards, msg

    def card(self, variant_id):
        try:
            return explore.variant_card(self.ws(), variant_id)
        except Exception as exc:  # noqa: BLE001
            return _message(exc)

    @staticmethod
    def selected_row(table, evt: gr.SelectData):
        """The id of the table row a user clicked (the last column holds it)."""
        try:
            return table.iloc[evt.index[0]]["id"]
        except (IndexError, KeyError, TypeError, AttributeError):
            return gr.Dropdown()

    # -- training ----------------------------------------------------------------------------------------------
    def trained_choices(self):
        try:
            return gr.Dropdown(choices=training.trained_choices(self.ws()))
        except Exception:  # noqa: BLE001
            return gr.Dropdown()

    def training(self, variant_id):
        """(learning curves, confusion matrix, message) of a trained variant."""
        try:
            curves, confusion = training.training_figures(self.ws(), variant_id)
        except Exception as exc:  # noqa: BLE001
            return None, None, _message(exc)
        return curves, confusion, ""


def build_app(workspace: str | os.PathLike, data_dir: str | os.PathLike = "data") -> gr.Blocks:
    """The Blocks of the app over `workspace` (read-only); `data_dir` holds the datasets of the test images."""
    app = App(workspace, data_dir)
    ws = app.ws()
    choices, trained = predict.variant_choices(ws), training.trained_choices(ws)
    # choices are refreshed on every page load; custom values are allowed so that a variant stored after the
    # start can be named (the handlers accept only ids found in the store)
    with gr.Blocks(title="deploybench") as demo:
        gr.Markdown(f"# deploybench · workspace `{Path(workspace).name}`")
        with gr.Tab("Predict"):
            with gr.Row():
                with gr.Column():
                    with gr.Tab("Upload"):
                        upload = gr.File(
                            label=f"image (up to {MAX_FILE_BYTES // 2**20} MB)",
                            type="filepath",
                            elem_id="predict-upload",
                        )
                        index = gr.Number(
                            label="or test image index (when nothing is uploaded)",
                            precision=0,
                            value=None,
                            elem_id="predict-index",
                        )
                    with gr.Tab("Draw"):
                        sketch = gr.Sketchpad(label="draw an image", type="numpy", image_mode="RGBA")
                        draw_btn = gr.Button("Predict drawing")
                    variants = gr.Dropdown(
                        choices=choices,
                        multiselect=True,
                        max_choices=predict.MAX_VARIANTS,
                        allow_custom_value=True,
                        label="variants (up to 4)",
                        elem_id="predict-variants",
                    )
                    btn = gr.Button("Predict", variant="primary", elem_id="predict-button")
                converted = gr.Image(
                    label="input as the models see it", interactive=False, format="png", elem_id="predict-input"
                )
            message = gr.Markdown(elem_id="predict-message")
            results = gr.HTML(elem_id="predict-results")
            data = gr.JSON(label="predictions", visible=False)
            outputs = [converted, results, message, data]
            btn.click(app.predict_file, [upload, index, variants], outputs, api_name="predict")
            draw_btn.click(app.predict_sketch, [sketch, variants], outputs, api_name="predict_sketch")
        with gr.Tab("Explore"):
            with gr.Row():
                machine = gr.Dropdown(label="machine", allow_custom_value=True)
                backend = gr.Dropdown(label="backend", value=ALL, allow_custom_value=True)
                batch = gr.Dropdown(label="batch size", value=ALL, allow_custom_value=True)
                axes = [(explore.axis_title(k), k) for k in explore.AXES]
                x = gr.Dropdown(axes, value="latency_ms_p50", label="x axis")
                y = gr.Dropdown(axes, value="accuracy_top1", label="y axis")
                refresh = gr.Button("Refresh")
            chart = gr.ScatterPlot(
                x="x",
                y="y",
                color="front",
                tooltip=["variant", "chain", "backend", "batch", "x", "y"],
                label="Pareto front (hover a point for its variant)",
                height=380,
            )
            explore_msg = gr.Markdown()
            table = gr.Dataframe(label="rows (click one for its card)", interactive=False, wrap=True)
            chosen = gr.Dropdown(label="variant card", allow_custom_value=True)
            card = gr.Markdown(elem_id="variant-card")
            filters = [machine, backend, batch, x, y]
            explore_out = [chart, table, chosen, explore_msg]
            for trigger in (backend.input, batch.input, machine.input, x.input, y.input):
                trigger(app.explore, filters, explore_out, api_name=False)
            refresh.click(
                app.explore_options, [machine, backend, batch], [machine, backend, batch], api_name=False
            ).then(app.explore, filters, explore_out, api_name="explore")
            table.select(app.selected_row, table, chosen, api_name=False)
            chosen.change(app.card, chosen, card, api_name="card")
        with gr.Tab("Training"):
            run = gr.Dropdown(
                choices=trained,
                value=trained[0][1] if trained else None,
                allow_custom_value=True,
                label="trained variant",
            )
            train_msg = gr.Markdown()
            with gr.Row():
                curves = gr.Plot(label="learning curves")
                confusion = gr.Plot(label="confusion matrix (test split)")
            run.change(app.training, run, [curves, confusion, train_msg], api_name="training")
        demo.load(app.variant_choices, None, variants, api_name=False)
        demo.load(app.trained_choices, None, run, api_name=False).then(
            app.training, run, [curves, confusion, train_msg], api_name=False
        )
        demo.load(app.explore_options, [machine, backend, batch], [machine, backend, batch], api_name=False).then(
            app.explore, filters, explore_out, api_name=False
        )
    return demo


def launch(
    workspace: str | os.PathLike, data_dir: str | os.PathLike = "data", host: str = "127.0.0.1", port: int = 7860
) -> None:
    """Serve the app until interrupted: on `host` (loopback unless asked), never through a public share link."""
    demo = build_app(workspace, data_dir)
    demo.queue(default_concurrency_limit=2)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=MAX_FILE_BYTES,
        show_error=False,
        ssr_mode=False,
        inbrowser=False,
        quiet=False,
    )
