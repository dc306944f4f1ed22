"""An offline tokenizer for models built from configs.

Nothing can be downloaded here, and tiny test models come without tokenizer
files. A character-level tokenizer needs no training and no files: one token
per printable ASCII character plus four specials, 100 tokens in all, which
fits the 128-token vocabulary of the test models. It is built with the
``tokenizers`` library and saved as a fast tokenizer, so
``AutoTokenizer.from_pretrained(model_dir)`` loads it like any other.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from peft_hub.errors import InvalidInputError

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3
#: Printable ASCII (letters, digits, punctuation, space) and newline.
DEFAULT_ALPHABET = string.printable[:95] + "\n"


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET) -> Any:
    """A ``PreTrainedTokenizerFast`` with one token per character of ``alphabet``.

    Characters outside the alphabet become ``<unk>``. Encoding adds ``<s>``
    in front; ``</s>`` is the end-of-sequence token and ``<pad>`` pads.

    Returns:
        The tokenizer (``len(tokenizer) == 4 + len(set(alphabet))``).
    """
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    chars = list(dict.fromkeys(alphabet))
    if not chars:
        raise InvalidInputError("the alphabet is empty")
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *chars])}
    # A BPE with no merges splits text into characters; unknown ones map to <unk>.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.add_special_tokens(list(SPECIAL_TOKENS))
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
    )


def save_char_tokenizer(model_dir: str | Path, alphabet: str = DEFAULT_ALPHABET) -> Any:
    """Build the character tokenizer and save it into ``model_dir``.

    Refuses a vocabulary larger than the model's ``vocab_size`` (read from
    ``config.json`` when there is one), since ids past it would crash.
    """
    import json

    tok = build_char_tokenizer(alphabet)
    model_dir = Path(model_dir)
    config = model_dir / "config.json"
    if config.is_file():
        vocab_size = json.loads(config.read_text()).get("vocab_size")
        if isinstance(vocab_size, int) and len(tok) > vocab_size:
            raise InvalidInputError(f"the tokenizer has {len(tok)} tokens but the model's vocab_size is {vocab_size}")
    tok.save_pretrained(model_dir)
    return tok


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved in a model directory, with a pad token guaranteed.

    Raises:
        InvalidInputError: there is none, with the command that makes one.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((path / n).is_file() for n in names):
        raise InvalidInputError(
            f"{path} has no tokenizer files. Save the base's tokenizer there, or for a model built from a "
            "config save a character tokenizer: "
            "`python -c \"from peft_hub.gpu_runtime.tokenizer import save_char_tokenizer; "
            f"save_char_tokenizer('{path}')\"`"
        )
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot load the tokenizer in {path}: {exc}") from exc
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise InvalidInputError(f"the tokenizer in {path} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok
