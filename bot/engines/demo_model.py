"""Build a tiny, randomly initialised InternVL in the transformers ``-hf`` layout, fully offline.

The result is a real checkpoint folder (``InternVLConfig`` / ``InternVLForConditionalGeneration``,
a byte-level BPE tokenizer with InternVL's special tokens and chat template, the GOT-OCR2 image
processor) of well under 5 MB. It loads through exactly the code path a real checkpoint such as
``OpenGVLab/InternVL3-1B-hf`` takes. Its weights are random, so its answers are noise; everything
around them (tokenisation, tiling, image tokens, streaming, stopping) is real.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_MARKER = "internvl_bot_demo.json"

#: The chat template of InternVL's ``-hf`` checkpoints: ChatML, an image part becomes
#: ``<IMG_CONTEXT>\n`` (expanded later into ``<img>`` + 256 context tokens per tile + ``</img>``).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}{% endif %}"
)

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>",
    "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>",
]

#: Qwen2's pre-tokenizer pattern (InternVL3's language model is Qwen2.5).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _corpus() -> list[str]:
    """Multilingual training text for the tokenizer: the framework's own texts and personas."""
    from bot.l10n.i18n import all_texts
    from bot.l10n.personas import load_personas

    lines = all_texts()
    for persona in load_personas().values():
        lines.append(persona.system)
        lines.extend(persona.greeting.values())
    lines += [
        "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { } < > % $ € £ ¥",
        "Image-1: Image-2: Frame1: Frame2: What is in this picture? Describe the image in detail.",
    ]
    return lines * 3


def build_tokenizer(vocab_size: int = 1000):  # -> transformers.PreTrainedTokenizerBase
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return Qwen2Tokenizer(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        errors="replace",
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        model_max_length=8192,
        chat_template=CHAT_TEMPLATE,
    )


def make_demo_model(directory: str | Path, *, seed: int = 0, context_length: int = 8192) -> Path:
    """Write the tiny InternVL to ``directory`` (created if needed) and return its path."""
    import torch
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLVisionConfig,
        Qwen2Config,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    vision = InternVLVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=[448, 448], patch_size=[14, 14], use_mean_pooling=False,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=context_length,
        tie_word_embeddings=True, eos_token_id=im_end, pad_token_id=pad, bos_token_id=None,
    )
    config = InternVLConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=256, downsample_ratio=0.5, projector_hidden_act="gelu",
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        tie_word_embeddings=True,
    )
    config.eos_token_id = im_end
    config.pad_token_id = pad
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [im_end]
    model.generation_config.pad_token_id = pad
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor = GotOcr2ImageProcessorPil(
        crop_to_patches=True, min_patches=1, max_patches=12, size={"height": 448, "width": 448},
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, resample=3, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
    )
    image_processor.save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    (out / "processor_config.json").write_text(
        json.dumps({"processor_class": "InternVLProcessor", "image_seq_length": 256}, indent=2) + "\n",
        encoding="utf-8",
    )
    (out / DEMO_MARKER).write_text(
        json.dumps({"demo": True, "seed": seed, "note": "random weights: answers are noise"}) + "\n",
        encoding="utf-8",
    )
    log.info("demo model written to %s", out)
    return out


def is_demo_model(directory: str | Path) -> bool:
    return (Path(directory).expanduser() / DEMO_MARKER).exists()
