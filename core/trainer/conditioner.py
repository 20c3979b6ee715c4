"""The UNet's conditioning for a batch, as diffusers' pipelines compute it: SD1, the text
encoder's last hidden state; SDXL, both encoders' penultimate states side by side, the second's
pooled projection and the size/crop ``time_ids``. Cached embeddings are used unless a text encoder
trains, in which case the tokens go through it. Caption dropout (for classifier-free guidance)
replaces some examples' conditioning with the unconditional input."""

from __future__ import annotations

import torch


def encode_text(text_encoder, tokens: torch.Tensor, text_encoder_2=None, tokens_2: torch.Tensor | None = None):
    """SD1: the last hidden state; SDXL: both encoders' penultimate hidden states side by side, plus
    the second encoder's pooled projection (returned second; None for SD1)."""
    if text_encoder_2 is None:
        return text_encoder(tokens)[0], None
    first = text_encoder(tokens, output_hidden_states=True).hidden_states[-2]
    second = text_encoder_2(tokens_2, output_hidden_states=True)
    return torch.cat([first, second.hidden_states[-2]], dim=-1), second[0]


class _CaptionDropout:
    """Which examples of a batch train unconditionally, and their inputs. SD1 guides with the empty
    prompt's encoding (its tokens when the text encoder trains, else its cached embedding); SDXL's
    pipelines guide with zeros for both the hidden states and the pooled embedding. The draws come
    from the noise generator, and none are made at rate 0 (runs without dropout are unchanged)."""

    def __init__(self, pipe, rate: float, uncond: torch.Tensor | None, device: torch.device):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"caption_dropout {rate} must be in [0, 1)")
        self.rate, self.uncond = rate, uncond
        self.sdxl = getattr(pipe, "text_encoder_2", None) is not None
        self.empty = None
        if rate and not self.sdxl:
            self.empty = pipe.tokenizer([""], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                        truncation=True, return_tensors="pt").input_ids.to(device)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        return torch.rand(n, generator=generator) < self.rate if self.rate else None

    def tokens(self, tokens: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        if drop is None or self.sdxl:
            return tokens
        return torch.where(drop.to(tokens.device)[:, None], self.empty, tokens)

    def apply(self, cond: torch.Tensor, added: dict | None, drop: torch.Tensor | None,
              encoded: bool) -> torch.Tensor:
        """Cached SD1 embeddings get the empty prompt's (``encoded``: SD1 hidden states already come
        from the empty tokens); SDXL inputs are zeroed (in ``added`` too)."""
        if drop is None:
            return cond
        keep = (~drop).to(cond.device, cond.dtype)
        if self.sdxl:
            added["text_embeds"] = added["text_embeds"] * keep[:, None]
            return cond * keep[:, None, None]
        if encoded:
            return cond
        if self.uncond is None:
            raise ValueError("caption dropout with cached SD1 embeddings needs the empty prompt's embedding "
                             "(TrainingData.uncond)")
        return cond * keep[:, None, None] + self.uncond.to(cond.dtype) * (1 - keep)[:, None, None]


class Conditioner:
    """Conditioning for examples ``index`` of ``data`` (core.train.TrainingData), on ``device``."""

    def __init__(self, pipe, data, models: dict, caption_dropout: float, device: torch.device):
        self.text_encoder = models.get("text_encoder", (None,))[0]
        self.text_encoder_2 = models.get("text_encoder_2", (None,))[0]
        self.embeddings = data.embeddings.clone().to(device)
        self.added = data.added_cond
        self.tokens = data.tokens.clone().to(device) if self.text_encoder is not None else None
        self.tokens_2 = data.tokens_2.clone().to(device) if self.text_encoder_2 is not None else None
        self.uncond = data.uncond.to(device) if data.uncond is not None else None
        self.dropout = _CaptionDropout(pipe, caption_dropout, self.uncond, device)
        self.device = device

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        """Which of the global batch's ``n`` examples train unconditionally (drawn before the
        objective's draws)."""
        return self.dropout.draw(n, generator)

    def __call__(self, index: list[int], drop: torch.Tensor | None) -> tuple[torch.Tensor, dict | None]:
        added = {k: v[index].to(self.device) for k, v in self.added.items()} or None
        if self.text_encoder is not None:
            cond, pooled = encode_text(self.text_encoder, self.dropout.tokens(self.tokens[index], drop),
                                       self.text_encoder_2, self.tokens_2[index] if self.tokens_2 is not None else None)
            if pooled is not None:
                added["text_embeds"] = pooled
        else:
            cond = self.embeddings[index]
        return self.dropout.apply(cond, added, drop, encoded=self.text_encoder is not None), added
