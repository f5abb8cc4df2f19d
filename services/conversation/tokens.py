"""Token counting behind a small interface.

The default, `ApproximateTokenCounter`, is an APPROXIMATION: ceil(characters / 4) plus a fixed
per-message overhead (role and separators in chat formats). It is fast, deterministic and needs no
tokenizer download; it is close for English prose and can be off by a factor for code, CJK text or
unusual scripts. A real tokenizer can be plugged in by implementing `TokenCounter`.
"""

from __future__ import annotations

from typing import Protocol


class TokenCounter(Protocol):
    def count(self, content: str) -> int:
        """Tokens a message with this content costs in a context window (overhead included)."""
        ...

    def truncate(self, content: str, tokens: int) -> str:
        """The longest prefix of `content` whose `count` is at most `tokens` ("" if none fits)."""
        ...


class ApproximateTokenCounter:
    def __init__(self, *, chars_per_token: int = 4, message_overhead: int = 4):
        self.chars_per_token = chars_per_token
        self.message_overhead = message_overhead

    def count(self, content: str) -> int:
        return -(-len(content) // self.chars_per_token) + self.message_overhead

    def truncate(self, content: str, tokens: int) -> str:
        room = tokens - self.message_overhead
        if room <= 0:
            return ""
        return content[: room * self.chars_per_token]
