"""VILA1.5's conversation templates (the prompt for one user turn and the assistant's reply), by name.

Each template is the string the original ``Conversation.get_prompt()`` builds for ``[user, message]`` followed by
``[assistant, None]``. ``llama_3`` is the template of the release (assistant role written as "system",
``<|end_of_text|>`` separators); ``llama_3_fix`` is the corrected one used by Llama-3-VILA1.5-8b-Fix.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ChatTemplate", "TEMPLATES", "template_for_checkpoint", "get_template"]

_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions."
)
_LLAMA_3_SYSTEM = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision "
    "assistant. You are able to understand the visual content that the user provides, and assist the user with a "
    "variety of tasks using natural language."
)


@dataclass(frozen=True)
class ChatTemplate:
    """``prefix + message + suffix`` is the prompt; ``stop`` ends the assistant's reply."""

    name: str
    prefix: str
    suffix: str
    stop: str

    def format(self, message: str) -> str:
        """The prompt for one user ``message`` (which holds its own ``<image>`` / ``<video>`` markers)."""
        return self.prefix + message + self.suffix


TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate("vicuna_v1", _VICUNA_SYSTEM + " USER: ", " ASSISTANT:", "</s>"),
        ChatTemplate(
            "llama_3",
            _LLAMA_3_SYSTEM + "<|end_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
            "<|end_of_text|><|start_header_id|>system<|end_header_id|>\n\n",
            "<|end_of_text|>",
        ),
        ChatTemplate(
            "llama_3_fix",
            _LLAMA_3_SYSTEM + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n",
            "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            "<|eot_id|>",
        ),
        ChatTemplate(
            "hermes-2",
            "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n",
            "<|im_end|><|im_start|>assistant\n",
            "<|im_end|>",
        ),
    )
}

#: substrings of a checkpoint name -> template (first match wins)
_BY_NAME = (
    ("vila1.5-8b-fix", "llama_3_fix"),
    ("vila1.5-8b", "llama_3"),
    ("vila1.5-40b", "hermes-2"),
    ("vila1.5-3b", "vicuna_v1"),
    ("vila1.5-13b", "vicuna_v1"),
)


def get_template(name: str) -> ChatTemplate:
    """The template called ``name``; a ValueError lists the names otherwise."""
    if name not in TEMPLATES:
        raise ValueError(f"`template` must be one of {sorted(TEMPLATES)}, got {name!r}")
    return TEMPLATES[name]


def template_for_checkpoint(name_or_path: str) -> str | None:
    """The template a VILA1.5 checkpoint was trained with, from its name (e.g. "Efficient-Large-Model/VILA1.5-3b"
    -> "vicuna_v1"), or None when the name does not tell."""
    lowered = str(name_or_path).lower()
    for key, template in _BY_NAME:
        if key in lowered:
            return template
    return None
