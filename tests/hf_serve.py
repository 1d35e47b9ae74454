"""Runs transformers' own OpenAI-compatible server (``transformers serve``) on an InternVL folder here.

``transformers serve`` loads ``AutoProcessor``, which for InternVL wants the torchvision video
processor; torchvision cannot be installed beside torch 2.13.0 on these machines. This launcher gives
the server an InternVL processor made of the image processor (PIL backend) and the tokenizer only,
then runs the unmodified CLI. Usage: ``python -m tests.hf_serve MODEL_DIR --host H --port P``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def _install_image_only_processor() -> None:
    from transformers import AutoImageProcessor, AutoTokenizer, InternVLProcessor
    from transformers.cli.serving import model_manager

    class ImageOnlyInternVLProcessor(InternVLProcessor):
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, image_seq_length: int = 256,
                     chat_template: str | None = None, **kwargs: Any) -> None:
            super().__init__(image_processor, tokenizer, None, image_seq_length=image_seq_length,
                             chat_template=chat_template, **kwargs)

    def load_processor(self: Any, model_id_and_revision: str, gguf_file: str | None = None) -> Any:
        path = model_id_and_revision.split("@")[0]
        tokenizer = AutoTokenizer.from_pretrained(path)
        template_file = Path(path) / "chat_template.jinja"
        template = template_file.read_text(encoding="utf-8") if template_file.exists() else tokenizer.chat_template
        return ImageOnlyInternVLProcessor(AutoImageProcessor.from_pretrained(path, backend="pil"), tokenizer,
                                          chat_template=template)

    model_manager.ModelManager._load_processor = load_processor


def main(argv: list[str]) -> None:
    _install_image_only_processor()
    from transformers.cli.transformers import main as cli

    sys.argv = ["transformers", "serve", *argv]
    cli()


if __name__ == "__main__":
    main(sys.argv[1:])
