"""Device reports to English: a phrase lexicon (lexicon.tsv), longest phrase first.

    from ecgssl.reports.translate import translate, coverage
    translate("sinusrhythmus linkstyp sonst normales ekg")
    # 'sinus rhythm. left axis. otherwise normal ecg.'

    ecgssl reports translate --coverage < reports.txt

English text (and text this module already translated) passes through unchanged. A token the
lexicon does not know stays as it is: nothing is invented. Coverage is the share of word tokens
that were translated or are English words (english_words.txt).
"""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources

_TOKEN = re.compile(r"[^\W\d_]+|\d+(?:[.,]\d+)?|[^\w\s]")
_FOLD = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "å": "a", "é": "e"})
# PTB-XL's validating cardiologist appended an "Edit: <SCP codes with likelihoods>, <remarks>"
# to some reports (84 of the 4,577 we have, e.g. "Edit: ASMI 100, CRBBB"): that is the
# `scp_codes` label itself, not what the device wrote, and must not reach the report text.
_ANNOTATION = re.compile(r"\s*\bedit:.*\Z", re.IGNORECASE | re.DOTALL)


def normalise(token: str) -> str:
    return token.lower().translate(_FOLD)


def _is_word(token: str) -> bool:
    return token.isalpha()


@functools.cache
def lexicon() -> tuple[dict[tuple[str, ...], str], int]:
    """{normalised token tuple: English}, and the longest key length."""
    table: dict[tuple[str, ...], str] = {}
    text = resources.files("ecgssl.reports").joinpath("lexicon.tsv").read_text("utf-8")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        src, _, dst = line.partition("\t")
        key = tuple(normalise(t) for t in _TOKEN.findall(src))
        if not key or key in table:
            raise ValueError(f"lexicon.tsv:{lineno}: empty or duplicate key {src!r}")
        table[key] = dst.strip()
    return table, max(len(k) for k in table)


@functools.cache
def english_words() -> frozenset[str]:
    text = resources.files("ecgssl.reports").joinpath("english_words.txt").read_text("utf-8")
    words = {w for line in text.splitlines() if not line.startswith("#") for w in line.split()}
    table, _ = lexicon()
    for english in table.values():  # everything the lexicon writes is English by definition
        words.update(normalise(t) for t in _TOKEN.findall(english) if _is_word(t))
    return frozenset(words)


@dataclass
class Translation:
    text: str
    words: int = 0            # word tokens in the input
    translated: int = 0       # ...consumed by a lexicon phrase
    english: int = 0          # ...left as they were because they are English
    untranslated: list[str] = field(default_factory=list)


def translate_report(text: str | None) -> Translation:
    """Translate one report and account for every word token."""
    text = _ANNOTATION.sub("", text or "")
    if not text.strip():
        return Translation(text="")
    matches = list(_TOKEN.finditer(text))
    norms = [normalise(m.group()) for m in matches]
    english = english_words()
    result = Translation(text="", words=sum(_is_word(t) for t in norms))
    if all(t in english for t in norms if _is_word(t)):      # English already: pass through
        result.english = result.words
        result.text = " ".join(text.split())
        return result
    table, longest = lexicon()
    out: list[str] = []
    i = 0
    while i < len(matches):
        sep = " " if i and matches[i].start() > matches[i - 1].end() else ""
        for n in range(min(longest, len(matches) - i), 0, -1):
            dst = table.get(tuple(norms[i:i + n]))
            if dst is not None:
                result.translated += sum(_is_word(t) for t in norms[i:i + n])
                if dst:
                    out.append(" " + dst)
                i += n
                break
        else:
            tok = matches[i].group().lower()
            if out and out[-1].endswith(".") and tok in ".,;":
                i += 1                                   # the phrase already closed it
                continue
            if _is_word(norms[i]):
                if norms[i] in english:
                    result.english += 1
                else:
                    result.untranslated.append(norms[i])
            out.append((" " if sep or _is_word(tok) else "") + tok)
            i += 1
    result.text = _tidy("".join(out))
    return result


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([.,;:)!?])", r"\1", text)
    text = re.sub(r"\(\s+", "(", text)
    text = re.sub(r"\.{2,}", ".", text)
    return text


def translate(text: str | None) -> str:
    """The English version of one device report."""
    return translate_report(text).text


class Coverage:
    """Counts over many translated reports: word tokens, how many were translated or already
    English, and which were not (the one counter the stage, the CLI and the tests share)."""

    def __init__(self):
        self.words = self.covered = 0
        self.untranslated: collections.Counter = collections.Counter()

    def add(self, text: str | None) -> Translation:
        r = translate_report(text)
        self.words += r.words
        self.covered += r.translated + r.english
        self.untranslated.update(r.untranslated)
        return r

    def ratio(self, empty: float | None = None) -> float | None:
        """Share (0..1) of word tokens translated or recognised as English; `empty` when
        there were no words."""
        return round(self.covered / self.words, 4) if self.words else empty


def coverage(texts: Iterable[str | None]) -> float:
    """Share (0..1) of report word tokens translated or recognised as English."""
    c = Coverage()
    for t in texts:
        c.add(t)
    return c.covered / c.words if c.words else 1.0


def untranslated(texts: Iterable[str | None]) -> collections.Counter:
    """How often each untranslated token occurs: what the lexicon should learn next."""
    c = Coverage()
    for t in texts:
        c.add(t)
    return c.untranslated
