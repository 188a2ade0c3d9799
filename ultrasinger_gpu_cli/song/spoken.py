"""Whisper's written forms as they are sung: Whisper writes "22", "1999", "3rd" and "Mr." where the
singer sings "twenty-two", "nineteen ninety-nine", "third" and "mister", and a chart needs the
sung words: each sung syllable is a note ("twen-ty-two" is three notes, "22" would be one), a
singer reads the words off the screen, and "Mr." is no sentence's end.

**Numbers.** A recognised word that is a whole number below ten million (thousands grouped by
commas in English: "1,000"), an English ordinal ("1st", "22nd") or, in English and German, a year
(four digits from 1100 to 2099, said as years are: "nineteen ninety-nine", "neunzehnhundert...")
is spelled out in the song's language by num2words, keeping the punctuation around it and its
time. Anything else with digits in it ("MP3", "4ever", "3.5", "80s", "$5", "100%") is left as
heard, as is every word of a language num2words does not know.

**Titles.** In English, "Mr.", "Mrs." and "Dr." are written as sung ("Mister", "Missus",
"Doctor"); other abbreviated titles (:data:`TITLES`, in the languages Whisper writes them) stay
as heard but end no sentence (:func:`is_title`).

Words the user gave (``--lyrics``, ``--timings``) are never changed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from ultrasinger_gpu_cli.song.words import Word, without_marks

_NUMBER = re.compile(r"^(?P<lead>[\"'(\[«“‘¿¡]*)(?P<digits>\d{1,3}(?:,\d{3}){1,2}|\d{1,7})(?P<ordinal>st|nd|rd|th)?"
                     r"(?P<trail>[\"')\].,!?;:…»”’]*)$", re.IGNORECASE)  # fmt: skip
YEARS = (1100, 2099)
#: Languages whose num2words "year" reading is the one people sing (elsewhere a year is read as
#: its number: num2words' Japanese years, for one, are era names).
YEAR_LANGUAGES = ("en", "de")


#: Abbreviated titles that end with a full stop but end no sentence ("Mr. Fancy Pants").
TITLES = frozenset({"mr", "mrs", "ms", "mx", "dr", "prof", "st", "jr", "sr", "sra", "srta", "hr", "fr", "mme", "mlle",
                    "sgt", "capt", "lt", "col", "gen", "rev"})  # fmt: skip
#: English titles as they are sung.
SUNG_TITLES = {"mr": "Mister", "mrs": "Missus", "dr": "Doctor"}
_TITLE = re.compile(r"^(?P<lead>[\"'(\[«“‘]*)(?P<title>[A-Za-z]+)\.(?P<trail>[\"')\]»”’]*)$")


def is_title(text: str) -> bool:
    """Whether a written word is an abbreviated title ("Mr.", "Dr.", "Sra."): no sentence ends there."""
    found = _TITLE.match(text.strip())
    return found is not None and found["title"].lower() in TITLES


def spell_titles(words: Sequence[Word], language: str | None) -> list[Word]:
    """The words with English titles written as they are sung (:data:`SUNG_TITLES`)."""
    if language != "en":
        return list(words)
    out = []
    for w in words:
        found = _TITLE.match(w.text.strip())
        said = SUNG_TITLES.get(found["title"].lower()) if found else None
        if said is None:
            out.append(w)
            continue
        out.append(_rewritten(w, found, said.lower() if found["title"].islower() else said))
    return out


def _rewritten(w: Word, found: re.Match[str], said: str) -> Word:
    """``w`` with the written form ``found`` matched replaced by ``said``, its spacing and the
    punctuation around it kept."""
    space = w.text[: len(w.text) - len(w.text.lstrip())]
    return replace(w, text=f"{space}{found['lead']}{said}{found['trail']}")


def as_sung(words: Sequence[Word], language: str | None) -> list[Word]:
    """Recognised words as they are sung: no word of marks alone (:func:`.words.without_marks`:
    Whisper's " . . ." over an instrumental stretch), titles (:func:`spell_titles`), then numbers
    (:func:`spell_numbers`)."""
    return spell_numbers(spell_titles(without_marks(words), language), language)


def spoken(number: str, language: str, *, ordinal: bool = False) -> str | None:
    """The words for one number as it is sung (None where num2words cannot say it in ``language``)."""
    try:
        from num2words import CONVERTER_CLASSES, num2words
    except ImportError:
        return None
    lang = language.replace("-", "_")
    if lang not in CONVERTER_CLASSES:
        lang = lang.split("_")[0]
        if lang not in CONVERTER_CLASSES:
            return None
    value = int(number.replace(",", ""))
    year = lang in YEAR_LANGUAGES and "," not in number and len(number) == 4 and YEARS[0] <= value <= YEARS[1]
    try:
        return str(num2words(value, lang=lang, to="ordinal" if ordinal else "year" if year else "cardinal"))
    except (NotImplementedError, OverflowError, ValueError, TypeError, KeyError, IndexError):
        return None


def spell_numbers(words: Sequence[Word], language: str | None) -> list[Word]:
    """The words with every number spelled out as it is sung (see the module)."""
    if not language:
        return list(words)
    out = []
    for w in words:
        text = w.text
        found = _NUMBER.match(text.strip()) if any(ch.isdigit() for ch in text) else None
        if found is None or ("," in found["digits"] and language != "en") or (found["ordinal"] and language != "en"):
            out.append(w)
            continue
        said = spoken(found["digits"], language, ordinal=bool(found["ordinal"]))
        if said is None:
            out.append(w)
            continue
        out.append(_rewritten(w, found, said))
    return out
