"""Sampling parameters that damp repetition, in the names each LLM server understands.

Small models loop: left alone, SmolLM2 135M and Gemma 3 270M write one sentence over and over
until the token limit. Penalising tokens and sequences the answer already holds is the servers'
own remedy, but each server names (and supports) it differently:

- llama-server: repeat_penalty over the last repeat_last_n tokens, frequency_penalty,
  presence_penalty, and DRY ("don't repeat yourself": dry_multiplier, which penalises extending
  a sequence that already occurred, whatever its length);
- vLLM: repetition_penalty (the same idea, over the whole sequence), frequency_penalty,
  presence_penalty; no DRY;
- llama-cpp-python: repeat_penalty, frequency_penalty, presence_penalty; no DRY, and its
  request models ignore unknown fields.

A penalty at its neutral value is left out, so a server is never sent what it need not parse.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from kcdev.settings import Settings

# What one "stronger" step adds when an answer looped anyway: enough to break the loops seen with
# the default models, small enough that the answer still uses the document's own words.
STRONGER_REPEAT = 0.15
STRONGER_FREQUENCY = 0.3
STRONGER_DRY = 0.6
MAX_REPEAT_PENALTY = 2.0


@dataclass(frozen=True)
class Sampling:
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    dry_multiplier: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Sampling:
        return cls(
            repeat_penalty=settings.llm_repeat_penalty,
            repeat_last_n=settings.llm_repeat_last_n,
            frequency_penalty=settings.llm_frequency_penalty,
            presence_penalty=settings.llm_presence_penalty,
            dry_multiplier=settings.llm_dry_multiplier,
        )

    @property
    def neutral(self) -> bool:
        """Nothing to send: every penalty is off."""
        return not self.payload("llama-server")

    def stronger(self) -> Sampling:
        """The same, one step more damped: for asking again after an answer looped."""
        return replace(
            self,
            repeat_penalty=min(MAX_REPEAT_PENALTY, self.repeat_penalty + STRONGER_REPEAT),
            frequency_penalty=min(2.0, self.frequency_penalty + STRONGER_FREQUENCY),
            dry_multiplier=self.dry_multiplier + STRONGER_DRY,
        )

    def payload(self, server: str) -> dict[str, Any]:
        """The request fields for `server` (llama-server, vllm, or other = llama-cpp-python)."""
        fields: dict[str, Any] = {}
        if self.repeat_penalty != 1.0:
            if server == "vllm":
                fields["repetition_penalty"] = self.repeat_penalty
            else:
                fields["repeat_penalty"] = self.repeat_penalty
                if server == "llama-server":
                    fields["repeat_last_n"] = self.repeat_last_n
        if self.frequency_penalty:
            fields["frequency_penalty"] = self.frequency_penalty
        if self.presence_penalty:
            fields["presence_penalty"] = self.presence_penalty
        if self.dry_multiplier and server == "llama-server":
            fields["dry_multiplier"] = self.dry_multiplier
        return fields
