"""Give an imported model the mask token masked (absorbing) diffusion needs, in one call.

Imported vocabularies have none; `MaskToken` (workbench.data.special) chooses how it is made:
`new_row` adds `<|mask|>` at id vocab_size and one embedding row (the mean row, see
`append_embedding_rows`); `reserved` reuses an existing id, leaving the model's shapes alone.
"""

from __future__ import annotations

import dataclasses

from workbench.data.special import MaskToken
from workbench.data.text_tokenizer import check_vocab_matches
from workbench.pretrained.api import Pretrained
from workbench.pretrained.embeddings import append_embedding_rows


def with_mask_token(pretrained: Pretrained, mask: MaskToken = MaskToken()) -> Pretrained:
    """A copy of `pretrained` whose tokenizer has a mask token and whose model has a row for it."""
    tokenizer = pretrained.tokenizer
    if tokenizer is None:
        raise ValueError(
            f"{pretrained.source.kind} {pretrained.source.location!r} was loaded without a tokenizer; "
            "load it with tokenizer=True (a GGUF file, or a folder with tokenizer.json)"
        )
    if not isinstance(mask, MaskToken):
        raise TypeError(f"mask={mask!r} must be a MaskToken (strategy 'new_row' or 'reserved')")
    masked = tokenizer.with_mask_token(mask)
    model = pretrained.model
    if mask.strategy == "new_row":
        # Rows past the tokenizer (a padded embedding) are reused before any is appended.
        missing = masked.vocab_size - model.config.vocab_size
        if missing > 0:
            model = append_embedding_rows(model, missing)
    check_vocab_matches(masked, model.config.vocab_size, allow_padding=True)
    return dataclasses.replace(pretrained, model=model, config=model.config, tokenizer=masked)
