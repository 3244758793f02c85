"""The Gradio app: ask about an image, choose method and budget, see the answer and which patches were kept."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from PIL import Image

import tokencomp
from tokencomp.demo.engine import Engine, Result
from tokencomp.demo.overlay import overlay
from tokencomp.serving import spec


def _describe(result: Result, label: str) -> str:
    return (f"**{label}:** {result.answer or '(empty answer)'}  \n"
            f"prompt tokens {result.prompt_tokens} · visual tokens {len(result.compressed.index)} · "
            f"latency {result.latency_s * 1000:.0f} ms")


def build_app(engine: Engine, examples: list[Path] | None = None) -> gr.Blocks:
    methods = [m for m in tokencomp.methods.available() if m != "none"] + ["none"]

    def ask(image, question, method, budget, compare):
        """Returns (status markdown, answer markdown, full-model markdown, overlay image)."""
        if image is None:
            return "Upload an image or pick an example first.", "", "", None
        try:
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError):
            return "⚠️ That file could not be read as an image.", "", "", None
        if not question or not question.strip():
            return "Type a question about the image.", "", "", None
        try:
            budget = int(budget) if budget is not None and float(budget).is_integer() else budget
            chosen = spec.parse({"method": method, "budget": budget}, max_budget=engine.n_tokens)
        except spec.SpecError as exc:
            return f"⚠️ {exc}", "", "", None
        result = engine.ask(image, question.strip(), chosen)
        full = _describe(engine.ask(image, question.strip(), spec.Spec()), "Full model (none)") if compare else ""
        picture = overlay(result.model_view, result.compressed, engine.grid)
        saved = engine.n_tokens - len(result.compressed.index)
        status = f"{chosen.method} kept {len(result.compressed.index)} of {engine.n_tokens} visual tokens ({saved} fewer)."
        return status, _describe(result, chosen.method), full, picture

    with gr.Blocks(title="TokenComp demo") as app:
        gr.Markdown("# TokenComp\nAsk the model about an image, compress its 576 visual tokens, see what survives.")
        with gr.Row():
            with gr.Column():
                # a file path, opened by us: an unreadable upload becomes a message, not a stack trace
                image = gr.File(label="Image", file_types=["image"], elem_id="image")
                question = gr.Textbox(label="Question", value="What colour is the circle?", elem_id="question")
                method = gr.Dropdown(methods, value="itg", label="Method", allow_custom_value=True)
                budget = gr.Slider(1, engine.n_tokens, value=64, step=1, label="Budget (visual tokens)", elem_id="budget")
                compare = gr.Checkbox(label="Compare with the full model", value=False, elem_id="compare")
                button = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                answer = gr.Markdown(elem_id="answer")
                full = gr.Markdown(elem_id="full")
                kept = gr.Image(type="pil", label="Kept patches (ITG / merges: colour = generated token)",
                                elem_id="overlay")
        if examples:
            gr.Examples([[str(p)] for p in examples], inputs=[image], label="Generated scenes")
        button.click(ask, [image, question, method, budget, compare], [status, answer, full, kept], api_name="ask")
    return app
