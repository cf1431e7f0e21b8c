"""The tokenizer of imported models: a Hugging Face `tokenizers` tokenizer behind `TextTokenizer`.

Built from a GGUF file's metadata (`HFTokenizer.from_gguf`: vocabulary, merges, token types,
pre-tokenizer name, add_bos/add_eos flags, special ids, chat template) or from a Hugging Face
folder (`HFTokenizer.from_folder`: `tokenizer.json`, with `tokenizer_config.json`,
`special_tokens_map.json` and `chat_template.jinja` for the specials and the chat template).
`save` writes such a folder, which `from_folder` (and `transformers`) read back.

Special tokens typed in text (`<|im_start|>`) encode as their ids, as in `transformers`. Bytes
that a byte-level vocabulary lacks (SmolLM2 has no token for 21 of the 256 bytes, all control
characters or bytes invalid in UTF-8) are dropped by the BPE, as by the reference tokenizer.

Padding: imported vocabularies rarely have a pad token. `pad` is the file's own pad id when it
names one (SmolLM2's GGUF says padding_token_id = eos), else the tokenizer config's pad_token,
else eos, the usual choice for Llama-family models: it needs no new embedding row, the model
already predicts eos where text ends, and `decode` cuts at the first eos or pad anyway, so pads
after an eos never change the text.

The mask token (none of these vocabularies has one) is chosen by `with_mask_token(MaskToken)`;
see `workbench.data.special` for the two strategies and why `new_row` is the default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Optional

from tokenizers import AddedToken, Tokenizer as Backend, decoders, models, processors

from workbench.data.gguf_vocab import CONTROL, USER_DEFINED, GGUFVocab, pre_tokenizer_for, read_gguf_vocab
from workbench.data.special import MaskToken, SpecialIds
from workbench.data.text_tokenizer import TextTokenizer

TOKENIZER_FILE, CONFIG_FILE, SPECIAL_MAP_FILE, CHAT_TEMPLATE_FILE = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"
)
_ROLES = ("bos", "eos", "unk", "pad", "mask")


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map, in which byte-level vocabularies are spelled."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _post_processor(backend: Backend, bos: Optional[int], eos: Optional[int], add_bos: bool, add_eos: bool):
    """What `encode` adds around the text: [bos] $A [eos], as the flags say."""
    single, special = "$A:0", []
    if add_bos and bos is not None:
        piece = backend.id_to_token(bos)
        single, special = f"{piece}:0 {single}", [(piece, bos)]
    if add_eos and eos is not None:
        piece = backend.id_to_token(eos)
        single, special = f"{single} {piece}:0", [*special, (piece, eos)]
    return processors.TemplateProcessing(single=single, pair=f"{single} $B:1", special_tokens=list(dict.fromkeys(special)))


class HFTokenizer(TextTokenizer):
    """A `tokenizers.Tokenizer` with its special ids, bos/eos flags and chat template."""

    def __init__(
        self,
        backend: Backend,
        specials: SpecialIds,
        *,
        add_bos: bool = False,
        add_eos: bool = False,
        chat_template: Optional[str] = None,
        source: str = "",
    ):
        self._backend = backend
        self._specials = specials
        self.add_bos, self.add_eos = bool(add_bos), bool(add_eos)
        self.chat_template = chat_template
        self.source = source
        size = self.vocab_size
        for name, token_id in ((n, getattr(specials, n)) for n in _ROLES):
            if token_id is not None and not 0 <= token_id < size:
                raise ValueError(f"special id {name}={token_id} is outside the vocabulary [0, {size}) of {source or 'this tokenizer'}")
        self.info = {"source": source}

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, source) -> "HFTokenizer":
        """The tokenizer described by a GGUF file's metadata: its path, or a `gguf.GGUFReader` on it
        (the model importer shares its reader: opening one takes seconds)."""
        return cls.from_gguf_vocab(read_gguf_vocab(source))

    @classmethod
    def from_gguf_vocab(cls, vocab: GGUFVocab) -> "HFTokenizer":
        pre_tokenizer = pre_tokenizer_for(vocab)  # refuses unsupported models / pre-tokenizers by name
        alphabet = _byte_alphabet()
        spelled = set(alphabet.values())
        # A token spelled outside the byte alphabet (rare; llama.cpp keeps some added tokens raw) is
        # respelled byte by byte, as transformers does, so the BPE can still find it.
        pieces = [t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8")) for t in vocab.tokens]
        merges = [tuple(merge.split(" ", 1)) for merge in vocab.merges]
        bad = [m for m, pair in zip(vocab.merges, merges) if len(pair) != 2]
        if bad:
            raise ValueError(f"GGUF merge {bad[0]!r} in {vocab.source} is not two space-separated pieces")
        if len(set(pieces)) != len(pieces):
            raise ValueError(f"GGUF vocabulary in {vocab.source} repeats tokens; ids would be ambiguous")
        backend = Backend(models.BPE(vocab=dict(zip(pieces, range(len(pieces)))), merges=merges, unk_token=None,
                                     fuse_unk=False, byte_fallback=False))
        backend.pre_tokenizer = pre_tokenizer
        backend.decoder = decoders.ByteLevel()
        # Control tokens (chat markers, separators) match whole in text as special tokens;
        # user-defined ones match whole as plain added tokens (llama.cpp does both).
        backend.add_special_tokens([
            AddedToken(token, normalized=False, special=True)
            for token, kind in zip(vocab.tokens, vocab.token_types) if kind == CONTROL and set(token) <= spelled
        ])
        backend.add_tokens([
            AddedToken(token, normalized=False, special=False)
            for token, kind in zip(vocab.tokens, vocab.token_types) if kind == USER_DEFINED and set(token) <= spelled
        ])
        backend.post_processor = _post_processor(backend, vocab.bos, vocab.eos, vocab.add_bos, vocab.add_eos)
        control = tuple(i for i, kind in enumerate(vocab.token_types) if kind == CONTROL)
        specials = SpecialIds(
            pad=vocab.pad if vocab.pad is not None else vocab.eos,
            eos=vocab.eos, bos=vocab.bos, unk=vocab.unk, control=control,
        )
        return cls(backend, specials, add_bos=vocab.add_bos, add_eos=vocab.add_eos,
                   chat_template=vocab.chat_template, source=vocab.source)

    @classmethod
    def from_folder(cls, path: str | Path) -> "HFTokenizer":
        """From a Hugging Face model/tokenizer folder (`tokenizer.json` + `tokenizer_config.json`)."""
        path = Path(path)
        tokenizer_file = path / TOKENIZER_FILE if path.is_dir() else path
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"{tokenizer_file} not found; expected a Hugging Face tokenizer folder with tokenizer.json "
                "(and tokenizer_config.json), e.g. one written by HFTokenizer.save or save_pretrained"
            )
        folder = tokenizer_file.parent
        try:
            backend = Backend.from_file(str(tokenizer_file))
        except Exception as err:  # tokenizers raises a bare Exception on malformed files
            raise ValueError(f"{tokenizer_file} is not a tokenizer.json the `tokenizers` library can read ({err})") from err
        config = _read_json(folder / CONFIG_FILE)
        special_map = _read_json(folder / SPECIAL_MAP_FILE)
        template = _chat_template(folder, config)
        ids = {}
        for role in _ROLES:
            piece = _piece(config.get(f"{role}_token", special_map.get(f"{role}_token")))
            if piece is None:
                continue
            token_id = backend.token_to_id(piece)
            if token_id is None:
                raise ValueError(f"{folder}: {role}_token {piece!r} is not in the vocabulary of {tokenizer_file.name}")
            ids[role] = token_id
        if "eos" not in ids:
            raise ValueError(f"{folder}: tokenizer_config.json names no eos_token; generation needs one (add \"eos_token\")")
        add_bos, add_eos = bool(config.get("add_bos_token", False)), bool(config.get("add_eos_token", False))
        if "add_bos_token" in config or "add_eos_token" in config or backend.post_processor is None:
            # transformers rebuilds the post-processor from explicit flags; so do we.
            backend.post_processor = _post_processor(backend, ids.get("bos"), ids["eos"], add_bos, add_eos)
        else:
            add_bos = _adds(backend, ids.get("bos"))
        control = tuple(sorted(i for i, t in backend.get_added_tokens_decoder().items() if t.special))
        specials = SpecialIds(pad=ids.get("pad", ids["eos"]), eos=ids["eos"], bos=ids.get("bos"), unk=ids.get("unk"),
                              mask=ids.get("mask"), control=control)
        return cls(backend, specials, add_bos=add_bos, add_eos=add_eos, chat_template=template, source=str(folder))

    def with_mask_token(self, mask: MaskToken = MaskToken()) -> "HFTokenizer":
        """A copy with a mask token, by `mask.strategy` (see `workbench.data.special`)."""
        if self._specials.mask is not None:
            raise ValueError(
                f"this tokenizer already has a mask token (id {self._specials.mask}, "
                f"{self.id_to_piece(self._specials.mask)!r}); with_mask_token applies once"
            )
        backend = Backend.from_str(self._backend.to_str())
        control = self._specials.control
        if mask.strategy == "new_row":
            if backend.token_to_id(mask.piece) is not None:
                raise ValueError(
                    f"mask piece {mask.piece!r} is already token {backend.token_to_id(mask.piece)} of this vocabulary; "
                    f"use MaskToken(strategy='reserved', token={mask.piece!r}) or another piece"
                )
            size = self.vocab_size
            backend.add_special_tokens([AddedToken(mask.piece, normalized=False, special=True)])
            mask_id = backend.token_to_id(mask.piece)
            if mask_id != size:  # tokenizers appends after the largest id; anything else is a corrupt vocabulary
                raise ValueError(f"mask token got id {mask_id}, expected the new row {size}")
            control = (*control, mask_id)
        else:
            if mask.token is not None:
                mask_id = backend.token_to_id(mask.token)
                if mask_id is None:
                    raise ValueError(f"mask token {mask.token!r} (strategy 'reserved') is not in this vocabulary; "
                                     "name an existing piece, or use strategy 'new_row'")
            else:
                mask_id = mask.token_id
                if not 0 <= mask_id < self.vocab_size:
                    raise ValueError(f"mask token_id={mask_id} (strategy 'reserved') is outside the vocabulary "
                                     f"[0, {self.vocab_size}); use strategy 'new_row' to add a row")
            taken = {getattr(self._specials, role): role for role in ("pad", "eos", "bos")}
            if mask_id in taken:
                raise ValueError(f"mask token_id={mask_id} is this vocabulary's {taken[mask_id]} token; "
                                 "a mask must be an id that text never needs")
        specials = SpecialIds(**{**_fields(self._specials), "mask": mask_id, "control": control})
        tokenizer = HFTokenizer(backend, specials, add_bos=self.add_bos, add_eos=self.add_eos,
                                chat_template=self.chat_template, source=self.source)
        tokenizer.info = {**self.info, "mask": {"strategy": mask.strategy, "piece": tokenizer.id_to_piece(mask_id), "id": mask_id}}
        return tokenizer

    # --- the TextTokenizer interface ------------------------------------------------------------

    @property
    def specials(self) -> SpecialIds:
        return self._specials

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256(self._backend.to_str().encode("utf-8"))
        digest.update(json.dumps(self._config(), sort_keys=True).encode("utf-8"))
        return digest.hexdigest()

    def _piece(self, token_id: int) -> str:
        return self._backend.id_to_token(token_id)

    def _piece_id(self, piece: str) -> Optional[int]:
        return self._backend.token_to_id(piece)

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._backend.encode_batch(texts, add_special_tokens=True)]

    def _decode_ids(self, ids: list[int]) -> str:
        return self._backend.decode(ids, skip_special_tokens=False)

    def _encode_rendered(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    # --- saving ---------------------------------------------------------------------------------

    def _config(self) -> dict:
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                                  "add_bos_token": self.add_bos, "add_eos_token": self.add_eos}
        for role in _ROLES:
            token_id = getattr(self._specials, role)
            if token_id is not None:
                config[f"{role}_token"] = self.id_to_piece(token_id)
        if self.chat_template:
            config["chat_template"] = self.chat_template
        return config

    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self._config()
        _write(directory / TOKENIZER_FILE, self._backend.to_str(pretty=True))
        _write(directory / CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False))
        special_map = {key: value for key, value in config.items() if key.endswith("_token") and not key.startswith("add_")}
        _write(directory / SPECIAL_MAP_FILE, json.dumps(special_map, indent=2, ensure_ascii=False))
        return directory


def _fields(specials: SpecialIds) -> dict:
    return {name: getattr(specials, name) for name in specials.__dataclass_fields__}


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}; expected a JSON object")
    return data


def _piece(value) -> Optional[str]:
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...}."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _chat_template(folder: Path, config: Mapping) -> Optional[str]:
    """chat_template.jinja first (transformers >= 4.50 writes it), else the config's entry."""
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        return (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, Mapping)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _adds(backend: Backend, bos: Optional[int]) -> bool:
    """Whether the tokenizer.json's own post-processor puts bos in front of a text."""
    if bos is None:
        return False
    return backend.encode("", add_special_tokens=True).ids[:1] == [bos]


def load_tokenizer(source: str | Path) -> TextTokenizer:
    """A tokenizer from a .gguf file, a Hugging Face folder (tokenizer.json + tokenizer_config.json)
    or a SentencePiece folder written by `train_tokenizer` (tokenizer.model + an info tokenizer.json).

    Hugging Face folders of SentencePiece models (Llama 2, TinyLlama) hold a tokenizer.model too;
    tokenizer_config.json, which `train_tokenizer` never writes, tells them apart.
    """
    from workbench.data.tokenizer import MODEL_FILE, Tokenizer

    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        return HFTokenizer.from_gguf(path)
    if path.is_dir() and (path / TOKENIZER_FILE).is_file() and (path / CONFIG_FILE).is_file():
        return HFTokenizer.from_folder(path)
    if path.is_dir() and (path / MODEL_FILE).is_file():
        return Tokenizer.load(path)
    if path.is_dir() and (path / TOKENIZER_FILE).is_file():
        return HFTokenizer.from_folder(path)
    raise FileNotFoundError(
        f"no tokenizer at {path}: expected a .gguf file, a folder with {TOKENIZER_FILE} and {CONFIG_FILE} "
        f"(Hugging Face) or a folder with {MODEL_FILE} (SentencePiece, written by train_tokenizer)"
    )
