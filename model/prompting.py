"""How a prompt (and a response) become model text: one place, shared by scoring and training."""
from __future__ import annotations


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer, prompt: str, chat_template: bool = True) -> str:
    """The text the model continues: the chat-formatted user turn plus the assistant header."""
    if chat_template and has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return prompt


def response_text(tokenizer, response: str) -> str:
    """What follows ``prompt_text`` in a training example: the response and its end-of-turn token."""
    return response + (tokenizer.eos_token or "")
