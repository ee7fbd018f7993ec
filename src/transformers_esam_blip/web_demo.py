"""The interactive web demo: a Gradio app to segment an uploaded image by clicks, a box, texts or everything at once.

    python -m transformers_esam_blip.web_demo [--model esam-blip-shapes] [--port 7860]
    pip install 'transformers-esam-blip[demo]'             # Gradio is an optional extra

Serves on http://127.0.0.1:PORT (this machine only). Upload an image file; it is encoded once, and every click, box or
text after that reuses its embeddings ([`EsamBlipInteractiveSession`], one per browser tab). On the image:
- a click adds a foreground or a background point (the "click adds" switch), and segments at once;
- a box takes two clicks in "box corner" mode, one on each of two opposite corners (Gradio's image component has no
  drag gesture), or is typed as `x1,y1,x2,y2`;
- texts go one per line ("the red circle"); each text is a query, and the points and box join every text;
- "Segment everything" runs the automatic mask generator on the cached embeddings.

The results: the masks drawn over the image, a table of each query's predicted IoU and match probability, a notice
naming the words the model does not know, and each text's Grad-CAM heatmap next to its mask. Any converted folder
works with `--model`; a segmentation-only checkpoint (no BLIP half) takes points and boxes only.
"""

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from .builtin import DEFAULT_BUILTIN_MODEL
from .commands import CliError, CommandParser, load_checkpoint_config, resolve_model_argument, run_command
from .interactive import (
    DEFAULT_EVERYTHING_POINTS_PER_SIDE,
    EsamBlipEverythingResult,
    EsamBlipInteractiveSession,
    EsamBlipQueryResult,
)
from .modeling_esam_blip import EsamBlipForPromptableSegmentation
from .processing_esam_blip import EsamBlipProcessor
from .prompts import PromptLabel
from .text_prompt_strategies import text_prompt_mode_choices
from .visualization import draw_masks, draw_text_result

SUMMARY = __doc__.split("\n", 1)[0]
HOST = "127.0.0.1"
DEFAULT_PORT = 7860
FOREGROUND, BACKGROUND, BOX_CORNER = "foreground point", "background point", "box corner"
CLICK_MODES = (FOREGROUND, BACKGROUND, BOX_CORNER)
TABLE_HEADERS = ["query", "predicted IoU", "match probability", "note"]
# Everything mode's filters, as the mask generator's defaults; the sliders go down to 0 (filter off).
DEFAULT_PRED_IOU_THRESH = 0.88
DEFAULT_STABILITY_THRESH = 0.95
INSTALL_HINT = "the web demo needs Gradio: pip install 'transformers-esam-blip[demo]'"


@dataclass(frozen=True)
class ClickPrompts:
    """
    The clicks of one browser tab on the current image: points with their labels, and the first corner of a box
    being drawn (the box itself lives in the box text field, where a person can also type it).
    """

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    corner: tuple[float, float] | None = None

    def click(self, x: float, y: float, mode: str) -> tuple["ClickPrompts", list[float] | None]:
        """
        The prompts after a click at `(x, y)` in `mode` (one of `CLICK_MODES`), and the box it completes (the second
        corner of a box), else `None`.
        """
        if mode not in CLICK_MODES:
            raise ValueError(f"The click mode must be one of {list(CLICK_MODES)}, got {mode!r}.")
        if mode != BOX_CORNER:
            label = int(PromptLabel.FOREGROUND if mode == FOREGROUND else PromptLabel.BACKGROUND)
            return replace(self, points=(*self.points, (x, y)), labels=(*self.labels, label)), None
        if self.corner is None:
            return replace(self, corner=(x, y)), None
        x0, y0 = self.corner
        return replace(self, corner=None), [min(x0, x), min(y0, y), max(x0, x), max(y0, y)]

    def describe(self) -> str:
        """How many points of each kind, e.g. "2 foreground and 1 background point(s)"."""
        foreground = self.labels.count(int(PromptLabel.FOREGROUND))
        return f"{foreground} foreground and {len(self.labels) - foreground} background point(s)"


def parse_box(text: str | None) -> list[float] | None:
    """The box field `"x1,y1,x2,y2"` (image pixels; spaces allowed) as four floats; empty → `None`."""
    if text is None or not text.strip():
        return None
    parts = [part for part in text.replace(",", " ").split() if part]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(value) for value in values):
        raise ValueError(f"The box must be four numbers x1,y1,x2,y2 in image pixels, got {text!r}.")
    return values


def parse_texts(text: str | None) -> list[str]:
    """The texts field: one text per non-blank line."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def format_box(box: Sequence[float]) -> str:
    return ",".join(f"{value:g}" for value in box)


def _verdict(result: EsamBlipQueryResult) -> str:
    if result.unknown_words:
        return f"unknown words: {', '.join(result.unknown_words)}"
    return "match" if result.is_match else "probably absent"


def unknown_words_notice(results: Sequence[EsamBlipQueryResult]) -> str:
    """One line per text holding words the tokenizer does not know (empty when there are none)."""
    return "\n".join(
        f"- **{result.text!r}**: the model does not know the word(s) {', '.join(result.unknown_words)}; it cannot "
        "read them, so this text is reported as no match."
        for result in results
        if result.unknown_words
    )


@dataclass
class View:
    """
    What a handler changes in the app: each of the first fields is one component's new value (`None` leaves it as it
    is), `cleared` names the components to empty, and `failed` marks a refused request (`status` says why).
    """

    session: EsamBlipInteractiveSession | None = None
    prompts: ClickPrompts | None = None
    canvas: Image.Image | None = None
    box: str | None = None
    status: str | None = None
    result: Image.Image | None = None
    table: list[list[Any]] | None = None
    heatmaps: list[tuple[Image.Image, str]] | None = None
    cleared: list[str] = field(default_factory=list)
    failed: bool = False


def _error(error: Exception | str) -> View:
    """The view of a refused request: the message in the status line, everything else kept."""
    return View(status=f"**Error:** {error}", failed=True)


# The components a handler may update, in the order of `View`'s fields.
VIEW_FIELDS = ("session", "prompts", "canvas", "box", "status", "result", "table", "heatmaps")


class EsamBlipWebDemo:
    """
    The app's behaviour, apart from Gradio (so it is testable without a browser): each handler takes the values of
    the components it reads and returns a [`View`] of the components it changes. The model is shared; each browser
    tab holds its own [`EsamBlipInteractiveSession`] (its image's encodings) and [`ClickPrompts`].

    Args:
        model, processor: the segmentation model (eval mode) and its processor.
        model_name: how the model is named on the page.
    """

    def __init__(self, model: EsamBlipForPromptableSegmentation, processor: EsamBlipProcessor, model_name: str) -> None:
        self.model = model
        self.processor = processor
        self.model_name = model_name
        # The model's own checks run once, here, rather than at the first upload.
        self.supports_text = EsamBlipInteractiveSession(model, processor).supports_text

    @classmethod
    def from_pretrained(cls, model: str) -> "EsamBlipWebDemo":
        """The demo of `model` (a built-in model's name, a folder or a Hub id)."""
        path = resolve_model_argument(model)
        return cls(
            EsamBlipForPromptableSegmentation.from_pretrained(path).eval(),
            EsamBlipProcessor.from_pretrained(path),
            model,
        )

    def upload(self, path: str | None, session: EsamBlipInteractiveSession | None) -> View:
        """A file was uploaded (or removed, `path=None`): encode it, or report why it is not an image."""
        if path is None:
            return View(
                prompts=ClickPrompts(),
                box="",
                status="Upload an image to start.",
                cleared=["session", "canvas", "result", "table", "heatmaps"],
            )
        session = session or EsamBlipInteractiveSession(self.model, self.processor)
        try:
            image = session.set_image(path)
        except ValueError as error:
            return View(
                status=f"**Error:** {error}",
                failed=True,
                prompts=ClickPrompts(),
                box="",
                cleared=["session", "canvas", "result", "table", "heatmaps"],
            )
        height, width = image.shape[:2]
        return View(
            session=session,
            prompts=ClickPrompts(),
            canvas=Image.fromarray(image),
            box="",
            status=f"Image {width}x{height} encoded once; every click, box and text reuses its embeddings.",
            cleared=["result", "table", "heatmaps"],
        )

    def click(
        self,
        session: EsamBlipInteractiveSession | None,
        prompts: ClickPrompts,
        index: Sequence[int] | None,
        mode: str,
        box: str,
        texts: str,
        text_prompt_mode: str | None,
    ) -> View:
        """A click at image pixel `index = (x, y)`: add the point (and segment) or a box corner."""
        if session is None or session.image is None:
            return _error("upload an image first.")
        if index is None:  # a click beside the picture (in the letterbox margin)
            return View(status="Click on the picture itself.")
        prompts, completed = (prompts or ClickPrompts()).click(float(index[0]), float(index[1]), mode)
        if completed is not None:
            box = format_box(completed)
        view = self.segment(session, prompts, box, texts, text_prompt_mode)
        if view.failed:  # the click is not kept: the prompts stay as they were
            return view
        view.prompts, view.box = prompts, box
        if prompts.corner is not None:
            view.canvas = self._canvas(session, prompts, parse_box(box))
            view.status = (
                f"First box corner at ({prompts.corner[0]:.0f}, {prompts.corner[1]:.0f}): click the opposite corner."
            )
        return view

    def segment(
        self,
        session: EsamBlipInteractiveSession | None,
        prompts: ClickPrompts,
        box: str,
        texts: str,
        text_prompt_mode: str | None,
    ) -> View:
        """Segment from the clicked points, the box field and the texts field, with the cached embeddings."""
        if session is None or session.image is None:
            return _error("upload an image first.")
        prompts = prompts or ClickPrompts()
        try:
            parsed_box = parse_box(box)
            canvas = self._canvas(session, prompts, parsed_box)
            text_list = parse_texts(texts)
            if not prompts.points and parsed_box is None and not text_list:
                return View(canvas=canvas, status="Click on the image, give a box or type a text.")
            start = time.perf_counter()
            results = session.segment(
                points=list(prompts.points) or None,
                point_labels=list(prompts.labels) or None,
                box=parsed_box,
                texts=text_list or None,
                text_prompt_mode=text_prompt_mode if text_list else None,
            )
        except ValueError as error:
            return _error(error)
        seconds = time.perf_counter() - start
        status = (
            f"{len(results)} quer{'y' if len(results) == 1 else 'ies'} segmented in {seconds:.2f} s from the cached "
            f"embeddings ({prompts.describe()}{', a box' if parsed_box else ''}, {len(text_list)} text(s))."
        )
        notice = unknown_words_notice(results)
        image = session.image
        heatmaps = [
            (
                draw_text_result(
                    image,
                    result.mask,
                    result.heatmap,
                    result.points,
                    result.point_labels,
                    title=f"{result.text}: match p={result.match_probability:.2f}, IoU {result.score:.2f}",
                    absent=not result.is_match,
                ),
                f"{result.text}: mask | Grad-CAM",
            )
            for result in results
            if result.heatmap is not None
        ]
        return View(
            canvas=canvas,
            status=status + ("\n\n**Unknown words**\n" + notice if notice else ""),
            result=draw_masks(
                image,
                np.stack([result.mask for result in results]),
                points=list(prompts.points) or None,
                labels=list(prompts.labels) or None,
                boxes=None if parsed_box is None else [parsed_box],
                absent=[result.is_match is False for result in results],
            ),
            table=[
                [
                    result.text if result.text is not None else "points / box",
                    round(result.score, 3),
                    "" if result.match_probability is None else round(result.match_probability, 3),
                    "" if result.text is None else _verdict(result),
                ]
                for result in results
            ],
            heatmaps=heatmaps,
        )

    def everything(
        self,
        session: EsamBlipInteractiveSession | None,
        points_per_side: int,
        pred_iou_thresh: float,
        stability_score_thresh: float,
    ) -> View:
        """Every mask of the image, largest first, from the cached embeddings."""
        if session is None or session.image is None:
            return _error("upload an image first.")
        start = time.perf_counter()
        try:
            found: EsamBlipEverythingResult = session.segment_everything(
                points_per_side=int(points_per_side),
                pred_iou_thresh=float(pred_iou_thresh),
                stability_score_thresh=float(stability_score_thresh),
            )
        except ValueError as error:
            return _error(error)
        seconds = time.perf_counter() - start
        status = (
            f"Everything: {len(found.masks)} mask(s) from {found.num_points_decoded} grid points in {seconds:.2f} s."
        )
        if not len(found.masks):
            status += " No mask passed the filters: lower the minimum predicted IoU or stability (0 turns one off)."
        return View(
            status=status,
            result=draw_masks(session.image, found.masks),
            table=[
                [f"mask {index + 1}", round(float(score), 3), "", f"area {int(mask.sum())} px, box {box.tolist()}"]
                for index, (mask, score, box) in enumerate(zip(found.masks, found.scores, found.boxes))
            ],
            heatmaps=[],
        )

    def clear(self, session: EsamBlipInteractiveSession | None) -> View:
        """Forget the clicks and the box; keep the image and its embeddings."""
        canvas = None if session is None or session.image is None else Image.fromarray(session.image)
        return View(
            prompts=ClickPrompts(),
            box="",
            canvas=canvas,
            status="Prompts cleared.",
            cleared=["result", "table", "heatmaps"],
        )

    @staticmethod
    def _canvas(session: EsamBlipInteractiveSession, prompts: ClickPrompts, box: list[float] | None) -> Image.Image:
        """The image with the clicked points, the box and a pending box corner drawn on it."""
        boxes = [] if box is None else [box]
        if prompts.corner is not None:
            boxes.append([*prompts.corner, *prompts.corner])
        height, width = session.image.shape[:2]
        return draw_masks(
            session.image,
            np.zeros((0, height, width), dtype=bool),
            points=list(prompts.points) or None,
            labels=list(prompts.labels) or None,
            boxes=boxes or None,
        )


def _import_gradio():
    try:
        import gradio
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return gradio


def build_app(demo: EsamBlipWebDemo) -> Any:
    """
    The Gradio `Blocks` app of `demo`; launch it with `app.launch(server_name="127.0.0.1", server_port=...)`.

    Components carry `elem_id`s (`upload`, `canvas`, `click-mode`, `box`, `texts`, `segment`, `everything`, `clear`,
    `status`, `result`, `scores`, `heatmaps`) for scripts and browser tests.
    """
    gr = _import_gradio()
    # Uploads and result pictures are files on the server: those older than an hour are deleted every hour.
    with gr.Blocks(title=f"EsamBlip: {demo.model_name}", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            f"## EsamBlip interactive segmentation: `{demo.model_name}`\n"
            "Upload an image, then click on it: each click adds a point (foreground or background, see *click adds*) "
            "and segments at once. A box takes two clicks in *box corner* mode (one per opposite corner), or type "
            "it as `x1,y1,x2,y2`."
            + (" Type texts one per line; the points and box join every text." if demo.supports_text else "")
        )
        session = gr.State(None)
        prompts = gr.State(ClickPrompts())
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="image file", file_count="single", type="filepath", elem_id="upload")
                canvas = gr.Image(
                    label="click to prompt", type="pil", format="png", interactive=False, elem_id="canvas"
                )
                mode = gr.Radio(list(CLICK_MODES), value=FOREGROUND, label="click adds", elem_id="click-mode")
                box = gr.Textbox(label="box x1,y1,x2,y2 (image pixels)", elem_id="box")
                texts = gr.Textbox(
                    label="texts, one per line",
                    lines=3,
                    placeholder="the red circle",
                    visible=demo.supports_text,
                    elem_id="texts",
                )
                text_mode = gr.Dropdown(
                    list(text_prompt_mode_choices()),
                    value=demo.model.config.text_prompt_mode,
                    label="text prompts (learned prompter or zero-shot Grad-CAM points)",
                    visible=demo.supports_text,
                    elem_id="text-mode",
                )
                with gr.Row():
                    segment_button = gr.Button("Segment", variant="primary", elem_id="segment")
                    everything_button = gr.Button("Segment everything", elem_id="everything")
                    clear_button = gr.Button("Clear prompts", elem_id="clear")
                with gr.Accordion("Segment everything: settings", open=False):
                    points_per_side = gr.Slider(
                        4, 64, value=DEFAULT_EVERYTHING_POINTS_PER_SIDE, step=1, label="grid points per side"
                    )
                    pred_iou = gr.Slider(0, 1, value=DEFAULT_PRED_IOU_THRESH, step=0.01, label="min predicted IoU")
                    stability = gr.Slider(0, 1, value=DEFAULT_STABILITY_THRESH, step=0.01, label="min stability")
            with gr.Column():
                status = gr.Markdown("Upload an image to start.", elem_id="status")
                result = gr.Image(label="result", type="pil", format="png", interactive=False, elem_id="result")
                table = gr.Dataframe(
                    headers=TABLE_HEADERS, interactive=False, label="scores", elem_id="scores", wrap=True
                )
                heatmaps = gr.Gallery(
                    label="texts: mask | Grad-CAM heatmap",
                    format="png",
                    columns=1,
                    height="auto",
                    object_fit="contain",
                    interactive=False,
                    elem_id="heatmaps",
                )

        components = {
            "session": session,
            "prompts": prompts,
            "canvas": canvas,
            "box": box,
            "status": status,
            "result": result,
            "table": table,
            "heatmaps": heatmaps,
        }
        outputs = [components[name] for name in VIEW_FIELDS]
        empty = {"table": [], "heatmaps": []}

        def show(view: View) -> list[Any]:
            values = []
            for name in VIEW_FIELDS:
                value = getattr(view, name)
                if name in view.cleared:
                    values.append(empty.get(name))
                else:
                    values.append(gr.skip() if value is None else value)
            return values

        def on_upload(path, current):
            return show(demo.upload(path, current))

        def on_click(current, clicks, chosen, box_text, text_value, text_prompt_mode, event: gr.SelectData):
            return show(demo.click(current, clicks, event.index, chosen, box_text, text_value, text_prompt_mode))

        def on_segment(current, clicks, box_text, text_value, text_prompt_mode):
            return show(demo.segment(current, clicks, box_text, text_value, text_prompt_mode))

        def on_everything(current, side, iou, stable):
            return show(demo.everything(current, side, iou, stable))

        def on_clear(current):
            return show(demo.clear(current))

        upload.upload(on_upload, [upload, session], outputs, api_name="upload")
        upload.clear(on_upload, [upload, session], outputs, api_name=False)
        canvas.select(on_click, [session, prompts, mode, box, texts, text_mode], outputs, api_name=False)
        segment_button.click(on_segment, [session, prompts, box, texts, text_mode], outputs, api_name="segment")
        everything_button.click(
            on_everything, [session, points_per_side, pred_iou, stability], outputs, api_name="everything"
        )
        clear_button.click(on_clear, [session], outputs, api_name="clear")
    return app


def launch(app: Any, port: int = DEFAULT_PORT, block: bool = True) -> str:
    """
    Serve `app` on `127.0.0.1:port`; returns the local URL. With `block=False` the server runs in a background thread
    (stop it with `app.close()`).
    """
    gr = _import_gradio()
    # System fonts: the default theme loads its fonts from Google, which a machine without internet cannot reach.
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    _, url, _ = app.launch(
        server_name=HOST, server_port=port, prevent_thread_lock=not block, theme=theme, quiet=not block, show_error=True
    )
    return url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `python -m transformers_esam_blip.web_demo`: `--model` and `--port`."""
    parser.add_argument(
        "--model", default=DEFAULT_BUILTIN_MODEL, help=f"name, folder or Hub id (default {DEFAULT_BUILTIN_MODEL})"
    )
    add_port_argument(parser)


def add_port_argument(parser: argparse.ArgumentParser) -> None:
    """`--port`, for a command that starts the web demo (`esam-blip demo --web`)."""
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"web demo port on {HOST} (default {DEFAULT_PORT})"
    )


def run(args: argparse.Namespace) -> None:
    """Load `args.model` and serve the app on `127.0.0.1:args.port` until interrupted."""
    port = getattr(args, "port", DEFAULT_PORT)
    if not 1 <= port <= 65535:
        raise CliError(f"--port must be in [1, 65535], got {port}")
    load_checkpoint_config(resolve_model_argument(args.model))
    try:
        _import_gradio()
    except ImportError as error:
        raise CliError(str(error)) from error
    try:
        demo = EsamBlipWebDemo.from_pretrained(args.model)
    except (OSError, ValueError) as error:
        raise CliError(f"cannot load --model {args.model}: {error}") from error
    print(f"Model: {args.model} ({demo.model.num_parameters():,} parameters)")
    app = build_app(demo)
    print(f"Serving the web demo on http://{HOST}:{port} (Ctrl+C stops it)", flush=True)
    launch(app, port, block=True)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m transformers_esam_blip.web_demo`."""
    parser = CommandParser(prog="python -m transformers_esam_blip.web_demo", description=SUMMARY)
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the web demo with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    return run_command(build_parser(), run, argv)


__all__ = [
    "CLICK_MODES",
    "DEFAULT_PORT",
    "HOST",
    "SUMMARY",
    "ClickPrompts",
    "EsamBlipWebDemo",
    "View",
    "add_arguments",
    "add_port_argument",
    "build_app",
    "build_parser",
    "launch",
    "main",
    "parse_box",
    "parse_texts",
    "run",
    "unknown_words_notice",
]

if __name__ == "__main__":
    sys.exit(main())
