"""Learned text prompts: an MLP from BLIP text features to sparse prompt embeddings for the EfficientSAM decoder."""

from torch import Tensor, nn
from transformers.activations import ACT2FN

from .configuration_esam_blip import EsamBlipConfig


class EsamBlipTextPrompter(nn.Module):
    r"""
    Turns one text feature vector into `num_prompt_tokens` sparse prompt embeddings of the mask-decoder width:
    `tokens = fc2(act(fc1(LN(feature)))).reshape(N, C) + token_embeddings`. The learned per-token embedding plays the
    part the label embeddings play for points: it tells the tokens apart and marks them as text prompts.

    Where the feature comes from is `config.prompter_source` (read by [`EsamBlipForPromptableSegmentation`]): `"text"`
    is the BLIP text encoder's [CLS] hidden state in text-only mode (what the text says), `"itm"` the [ENC] hidden
    state of the ITM pass, which cross-attends to the image (what the text says about this image).

    Args:
        text_hidden_size (`int`): width `D_text` of the text features.
        hidden_size (`int`): mask-decoder width `C`.
        num_prompt_tokens (`int`): tokens `N` per text.
        hidden_act (`str`): activation of the MLP.
    """

    def __init__(self, text_hidden_size: int, hidden_size: int, num_prompt_tokens: int, hidden_act: str = "gelu"):
        super().__init__()
        self.num_prompt_tokens = num_prompt_tokens
        self.hidden_size = hidden_size
        self.layer_norm = nn.LayerNorm(text_hidden_size)
        self.fc1 = nn.Linear(text_hidden_size, hidden_size)
        self.act = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(hidden_size, num_prompt_tokens * hidden_size)
        self.token_embeddings = nn.Embedding(num_prompt_tokens, hidden_size)

    @classmethod
    def from_config(cls, config: EsamBlipConfig) -> "EsamBlipTextPrompter":
        """The prompter of a joint config (`text_config.hidden_size` → `mask_decoder_config.hidden_size`)."""
        return cls(config.text_config.hidden_size, config.mask_decoder_config.hidden_size, config.num_prompt_tokens)

    def forward(self, text_features: Tensor) -> Tensor:
        """`text_features [T, D_text]` → sparse prompt embeddings `[T, num_prompt_tokens, C]`."""
        if text_features.ndim != 2 or text_features.shape[-1] != self.layer_norm.normalized_shape[0]:
            raise ValueError(
                f"`text_features` must have shape [texts, {self.layer_norm.normalized_shape[0]}], got "
                f"{tuple(text_features.shape)}."
            )
        tokens = self.fc2(self.act(self.fc1(self.layer_norm(text_features))))
        tokens = tokens.reshape(-1, self.num_prompt_tokens, self.hidden_size)
        return tokens + self.token_embeddings.weight


__all__ = ["EsamBlipTextPrompter"]
