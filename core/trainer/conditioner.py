"""The UNet's conditioning for a batch, as diffusers' pipelines compute it: SD1, the text
encoder's last hidden state; SDXL, both encoders' penultimate states side by side, the second's
pooled projection and the size/crop ``time_ids``. Cached embeddings are used unless a text encoder
trains, in which case the tokens go through it. Caption dropout (for classifier-free guidance)
replaces some examples' conditioning with the unconditional input."""

from __future__ import annotations

from dataclasses import dataclass

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


def drop_tags(caption: str, rate: float, keep: int, generator: torch.Generator) -> str:
    """kohya's caption_tag_dropout_rate: each comma-separated tag after the first ``keep`` (its
    keep_tokens) is dropped with probability ``rate``; one draw per droppable tag."""
    tags = [t.strip() for t in caption.split(",")]
    droppable = tags[keep:]
    if not droppable:
        return caption
    kept = torch.rand(len(droppable), generator=generator) >= rate
    return ", ".join(tags[:keep] + [t for t, k in zip(droppable, kept.tolist(), strict=True) if k])


@dataclass
class Drop:
    """A global batch's caption-dropout draws: which examples train unconditionally, and (with tag
    dropout) each example's caption with its dropped tags removed."""

    whole: torch.Tensor | None = None
    captions: list[str] | None = None

    def take(self, rows: list[int]) -> Drop:
        return Drop(self.whole[rows] if self.whole is not None else None,
                    [self.captions[r] for r in rows] if self.captions is not None else None)


class Conditioner:
    """Conditioning for examples ``index`` of ``data`` (core.train.TrainingData), on ``device``.
    With tag dropout the captions are encoded afresh each step (the frozen text encoder runs
    without gradients), as kohya does: cached embeddings cannot drop tags."""

    def __init__(self, pipe, data, models: dict, caption_dropout: float, device: torch.device,
                 tag_dropout: float = 0.0, keep_tags: int = 0):
        if not 0.0 <= tag_dropout < 1.0 or keep_tags < 0:
            raise ValueError(f"tag_dropout {tag_dropout} must be in [0, 1) and keep_tags {keep_tags} at least 0")
        self.text_encoder = models.get("text_encoder", (None,))[0]
        self.text_encoder_2 = models.get("text_encoder_2", (None,))[0]
        self.embeddings = data.embeddings.clone().to(device)
        self.added = data.added_cond
        self.tokens = data.tokens.clone().to(device) if self.text_encoder is not None else None
        self.tokens_2 = data.tokens_2.clone().to(device) if self.text_encoder_2 is not None else None
        self.uncond = data.uncond.to(device) if data.uncond is not None else None
        self.dropout = _CaptionDropout(pipe, caption_dropout, self.uncond, device)
        self.tag_dropout, self.keep_tags, self.captions, self.pipe = tag_dropout, keep_tags, data.captions, pipe
        if tag_dropout and len(data.captions) != len(data.embeddings):
            raise ValueError("tag dropout needs the captions of the training examples")
        self.device = device

    def draw(self, index: list[int], generator: torch.Generator) -> Drop:
        """The global batch's dropout draws (before the objective's): whole captions, then tags."""
        whole = self.dropout.draw(len(index), generator)
        captions = None
        if self.tag_dropout:
            captions = [drop_tags(self.captions[i], self.tag_dropout, self.keep_tags, generator) for i in index]
        return Drop(whole, captions)

    def _tokens(self, tokenizer, captions: list[str]) -> torch.Tensor:
        return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    def __call__(self, index: list[int], drop: Drop) -> tuple[torch.Tensor, dict | None]:
        added = {k: v[index].to(self.device) for k, v in self.added.items()} or None
        sdxl = getattr(self.pipe, "text_encoder_2", None) is not None
        if drop.captions is not None:
            tokens = self._tokens(self.pipe.tokenizer, drop.captions)
            tokens_2 = self._tokens(self.pipe.tokenizer_2, drop.captions) if sdxl else None
        else:
            tokens = self.tokens[index] if self.tokens is not None else None
            tokens_2 = self.tokens_2[index] if self.tokens_2 is not None else None
        if self.text_encoder is not None or drop.captions is not None:
            first = self.text_encoder if self.text_encoder is not None else self.pipe.text_encoder
            second = None
            if sdxl:
                second = self.text_encoder_2 if self.text_encoder_2 is not None else self.pipe.text_encoder_2
            with torch.set_grad_enabled(self.text_encoder is not None and torch.is_grad_enabled()):
                cond, pooled = encode_text(first, self.dropout.tokens(tokens, drop.whole), second, tokens_2)
            cond = cond.float()
            if pooled is not None:
                added["text_embeds"] = pooled.float()
            encoded = True
        else:
            cond, encoded = self.embeddings[index], False
        return self.dropout.apply(cond, added, drop.whole, encoded=encoded), added
