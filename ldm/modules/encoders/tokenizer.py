"""Offline CLIP tokenizer: byte-level BPE over OpenAI CLIP's merge list.

Reproduces the tokenizer both Stable Diffusion text encoders were trained with (OpenAI CLIP's
`simple_tokenizer.py`, which transformers' `CLIPTokenizer` mirrors for SD1.x and open_clip's
`SimpleTokenizer` copies for SD2.x). The merge list `bpe_simple_vocab_16e6.txt.gz` ships beside this
file (MIT, see `LICENSE-bpe_simple_vocab_16e6.txt`); nothing is downloaded.
"""

import functools
import gzip
import html
import itertools
import math
import re
import sys
import unicodedata
from pathlib import Path

VOCAB_PATH = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")

# CLIP's vocabulary budget is 49152 = 256 byte symbols + 48,894 merges + 2 special tokens; the 256
# word-final byte symbols ("x</w>") come on top, giving 49,408 ids.
NUM_MERGES = 49152 - 256 - 2
BOS_ID = 49406  # <start_of_text>
EOS_ID = 49407  # <end_of_text>

# Spellings that, typed literally in a prompt, become BOS/EOS: OpenAI / transformers name them
# differently from open_clip, and each encoder honours its own upstream's spelling.
OPENAI_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
OPENCLIP_SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")

# ftfy.fix_text (run by both upstream tokenizers) straightens typographic quotes.
_STRAIGHT_QUOTES = {**dict.fromkeys(range(0x2018, 0x201C), "'"), **dict.fromkeys(range(0x201C, 0x2020), '"')}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes stand for themselves; the other 68 get U+0100 onwards. The dict order
    (printable first) is the order of the first 256 vocabulary ids.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def clean_text(text: str) -> str:
    """CLIP's prompt cleanup: HTML entities, straight quotes, NFC, collapsed whitespace, lower case.

    Upstream runs ftfy.fix_text (which also unescapes HTML, straightens quotes and applies NFC) and then
    `html.unescape` twice. ftfy is not a dependency here; its repair of mojibake (text decoded with the
    wrong codec) is the one step left out.
    """
    text = html.unescape(html.unescape(text)).translate(_STRAIGHT_QUOTES)
    text = unicodedata.normalize("NFC", text)
    return " ".join(text.split()).lower()


@functools.cache
def _letter_and_number_classes() -> tuple[str, str]:
    r"""Bodies of regex classes for Unicode letters and numbers (`\p{L}`, `\p{N}`), which stdlib `re` lacks.

    Built once per process from `unicodedata` (about 0.2 s) as ranges of code points.
    """
    spans = {"L": [], "N": []}
    for major, run in itertools.groupby(range(sys.maxunicode + 1), key=lambda cp: unicodedata.category(chr(cp))[0]):
        first = next(run)
        last = first + sum(1 for _ in run)
        if major in spans:
            spans[major].append(f"\\U{first:08x}-\\U{last:08x}")
    return "".join(spans["L"]), "".join(spans["N"])


@functools.cache
def _pretokenizer(special_tokens: tuple[str, ...]) -> re.Pattern:
    """CLIP's pre-tokenizer: special tokens, English contractions, letter runs, single digits, other runs."""
    letters, numbers = _letter_and_number_classes()
    alternatives = [*map(re.escape, special_tokens), "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
    alternatives += [f"[{letters}]+", f"[{numbers}]", rf"[^\s{letters}{numbers}]+"]
    return re.compile("|".join(alternatives), re.IGNORECASE)


@functools.cache
def _read_merges(path: Path) -> tuple[tuple[str, str], ...]:
    """The first NUM_MERGES merge rules of a CLIP BPE file (line 0 is a version header)."""
    lines = gzip.decompress(Path(path).read_bytes()).decode("utf-8").split("\n")
    return tuple(tuple(line.split()) for line in lines[1 : NUM_MERGES + 1])


class CLIPTokenizer:
    """Prompt -> CLIP token ids, as OpenAI CLIP's tokenizer computes them.

    Args:
        vocab_path: gzipped BPE merge list (CLIP's `bpe_simple_vocab_16e6.txt.gz`).
        special_tokens: how BOS and EOS are spelled when typed in a prompt (see OPENAI_SPECIAL_TOKENS).
    """

    def __init__(self, vocab_path: str | Path = VOCAB_PATH, special_tokens: tuple[str, str] = OPENAI_SPECIAL_TOKENS):
        merges = _read_merges(Path(vocab_path))
        byte_symbols = list(bytes_to_unicode().values())
        vocab = [*byte_symbols, *(s + "</w>" for s in byte_symbols), *("".join(m) for m in merges)]
        self.encoder = {symbol: i for i, symbol in enumerate(vocab)}
        self.encoder.update({special_tokens[0]: BOS_ID, special_tokens[1]: EOS_ID})
        if len(self.encoder) != EOS_ID + 1:
            raise ValueError(f"{vocab_path} gives {len(self.encoder)} vocabulary entries, CLIP has {EOS_ID + 1}")
        self.bos_id, self.eos_id = BOS_ID, EOS_ID
        self._special_ids = {special_tokens[0]: BOS_ID, special_tokens[1]: EOS_ID}
        self._ranks = {merge: rank for rank, merge in enumerate(merges)}
        # UTF-8 bytes (seen as Latin-1 characters) -> the BPE's printable byte symbols.
        self._byte_table = str.maketrans({chr(b): s for b, s in bytes_to_unicode().items()})
        self._pattern = _pretokenizer(tuple(special_tokens))
        # Prompts repeat words a lot; memoise per pre-token as the reference implementations do.
        self._word_ids = functools.lru_cache(maxsize=1 << 16)(self._bpe)

    def __len__(self) -> int:
        return len(self.encoder)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without BOS/EOS and without truncation."""
        ids = []
        for piece in self._pattern.findall(clean_text(text)):
            if piece in self._special_ids:
                ids.append(self._special_ids[piece])
            else:
                ids.extend(self._word_ids(piece.encode("utf-8").decode("latin-1").translate(self._byte_table)))
        return ids

    def wrap(self, ids: list[int], length: int, pad_id: int) -> list[int]:
        """`[BOS] + ids + [EOS]`, truncated to `length` with EOS kept last, then padded with `pad_id`."""
        wrapped = [self.bos_id, *ids[: length - 2], self.eos_id]
        return wrapped + [pad_id] * (length - len(wrapped))

    def _bpe(self, word: str) -> tuple[int, ...]:
        """Merge one pre-token's byte symbols, always taking the lowest-ranked adjacent pair first."""
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            best = min(zip(symbols, symbols[1:]), key=lambda pair: self._ranks.get(pair, math.inf))
            if best not in self._ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(self.encoder[s] for s in symbols)
