"""Parsers for messy museum metadata: artist names, free-text dates and free-text media."""
import functools
import math
import re
import unicodedata

from omniart.core.errors import OmniError

__all__ = [
    "LabelError",
    "ANONYMOUS",
    "LANGUAGES",
    "normalise_artist",
    "artist_display",
    "catalogue_case",
    "normalise_phrase",
    "parse_date",
    "medium_words",
]



class LabelError(OmniError):
    """Bad collection metadata or label options (lives here, the lowest pipeline module, to avoid cycles)."""


# Values that mean "nobody known": such a sample gets no artist label but keeps its other labels.
ANONYMOUS = frozenset(
    {
        "", "nan", "none", "null", "n/a", "na", "?", "-",
        "anoniem", "onbekend", "unknown", "unknown artist", "unknown maker",
        "anonymous", "anonymous artist", "unidentified", "unidentified artist", "unidentified maker",
    }
)
# Met-style qualified anonymous names: "Anonymous, French, 18th century", "Unidentified Artist, Chinese".
_ANONYMOUS_PREFIX = re.compile(r"^(anonymous|unidentified|unknown|anoniem|onbekend)\b")

LANGUAGES = ("english", "dutch")

# Words of a medium that name no material: grammar, qualifiers, and object formats ("Handscroll; ink ...").
_STOP_WORDS = {
    "english": frozenset(
        """a an and or on of in with the to at by for from over under into onto upon its it is
        traces trace touches touched some possibly probably partly partially mounted laid down
        transferred later remains original other various areas details highlights heightened
        handscroll handscrolls scroll scrolls hanging album albums leaf leaves folio folios fan page pages
        sheet sheets set framed frame mount mounting backed lined verso recto cut sliding door doors
        based mixed opaque transparent light dark pale fine one two three four five six seven eight nine
        ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty""".split()
    ),
    "dutch": frozenset(
        """de het een en of op van in met aan uit voor over onder bij tot te is
        sporen enkele later gedeeltelijk deels opgelegd geplakt""".split()
    ),
}

_WORD = re.compile(r"[^\W\d_]+")
_SPACE = re.compile(r"\s+")
# Control characters other than whitespace, e.g. the SUB (\x1a) that Rijks'14's names hold where a letter was
# lost in an encoding: shown as U+FFFD, which fonts draw (matplotlib warns about \x1a and draws nothing).
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def _clean(text):
    """Lower-cased, NFC-normalised, single-spaced text, control characters as U+FFFD; None and NaN become ''."""
    return _tidy(text).lower()


def _tidy(text):
    """NFC-normalised, single-spaced text, control characters as U+FFFD; None and NaN become ''."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    text = _CONTROL.sub("\ufffd", unicodedata.normalize("NFC", str(text)))
    return _SPACE.sub(" ", text).strip()


# Name particles a catalogue writes in lower case inside a name ("Rijn, Rembrandt van", "Hooghe, Romeyn de")
_PARTICLES = frozenset({"van", "de", "der", "den", "het", "ter", "ten", "te", "'t", "von", "vom", "zu", "du", "des",
                        "la", "le", "les", "di", "da", "del", "della", "dei", "degli", "y", "e", "en", "und", "and",
                        "of", "op", "in", "aan", "uit", "bij", "dit", "genaamd", "gen.", "&"})
_ROMAN = re.compile(r"^\(?[ivx]+\)?[.,]?$")
_WORD_START = re.compile(r"(^|[\s(\-/.'])([^\W\d_])")


def catalogue_case(name: str) -> str:
    """A lower-cased catalogue name in the capitalisation a catalogue prints: 'rijn, rembrandt van (i)' ->
    'Rijn, Rembrandt van (I)'; particles stay lower case except where a name part starts with one ('de bray,
    salomon' -> 'De Bray, Salomon')."""
    parts = []
    for part in name.split(", "):
        words = []
        for index, word in enumerate(part.split(" ")):
            if _ROMAN.match(word) and (word.startswith("(") or index > 0):
                words.append(word.upper())
            elif index > 0 and word in _PARTICLES:
                words.append(word)
            else:
                words.append(_WORD_START.sub(lambda m: m.group(1) + m.group(2).upper(), word))
        parts.append(" ".join(words))
    return ", ".join(parts)


def artist_display(spelling, lower_cased_source: bool = False) -> str:
    """The name shown for an artist from one of its original spellings: as the catalogue writes it ('Paul
    Cézanne'), or in catalogue capitalisation for a source that lower-cased its names (Rijks'14: 'luyken, jan' ->
    'Luyken, Jan')."""
    text = _tidy(spelling)
    return catalogue_case(text) if lower_cased_source else text


def normalise_artist(name):
    """Artist class name ('  Rembrandt  van Rijn' -> 'rembrandt van rijn'), or None when anonymous/unknown."""
    name = _clean(name)
    if name in ANONYMOUS or _ANONYMOUS_PREFIX.match(name):
        return None
    return name


@functools.lru_cache(maxsize=None)
def _stemmer(language):
    import snowballstemmer

    if language not in LANGUAGES:
        raise LabelError(f"unknown stemming language {language!r}; valid: {', '.join(LANGUAGES)}")
    return snowballstemmer.stemmer(language)


def normalise_phrase(text, language="english"):
    """Class id of a type phrase: its words stemmed ('Paintings' and 'Painting' -> 'paint'), or '' if none."""
    stem = _stemmer(language).stemWord
    return " ".join(stem(word) for word in _WORD.findall(_clean(text)))


def medium_words(text, language="english"):
    """Material words of a free-text medium as (stem, word) pairs, stop words dropped, first occurrence order.

    'Oil on canvas' -> [('oil', 'oil'), ('canva', 'canvas')];
    'Handscroll; ink and color on silk' -> ink, color, silk.
    """
    stem = _stemmer(language).stemWord
    stop = _STOP_WORDS[language]
    pairs, seen = [], set()
    for word in _WORD.findall(_clean(text)):
        if len(word) < 2 or word in stop:
            continue
        key = stem(word)
        if key not in seen:
            seen.add(key)
            pairs.append((key, word))
    return pairs


# ---- dates -------------------------------------------------------------------------------------------

_DASHES = str.maketrans({"\u2013": "-", "\u2014": "-", "\u2012": "-", "\u2212": "-", "\u2010": "-"})
_BC = r"(?:b\.?\s?c\.?(?:\s?e\.?)?|v\.?\s?chr\.?)(?![a-z])"
_AD = r"(?:a\.?\s?d\.?|c\.?\s?e\.?|n\.?\s?chr\.?)(?![a-z])"
_FRACTIONS = {
    "first half": (0, 50), "1st half": (0, 50), "second half": (50, 100), "2nd half": (50, 100),
    "first quarter": (0, 25), "1st quarter": (0, 25), "second quarter": (25, 50), "2nd quarter": (25, 50),
    "third quarter": (50, 75), "3rd quarter": (50, 75), "fourth quarter": (75, 100),
    "4th quarter": (75, 100), "last quarter": (75, 100), "first third": (0, 34), "last third": (67, 100),
    "early": (0, 34), "beginning": (0, 25), "mid": (34, 67), "middle": (34, 67), "late": (67, 100),
    "end": (75, 100),
}
_ORDINAL = re.compile(
    r"(?:(?P<frac>" + "|".join(sorted(map(re.escape, _FRACTIONS), key=len, reverse=True)) + r")"
    r"(?:\s+of)?[\s-]+(?:the\s+)?)?"
    r"(?<!\d)(?P<n>\d{1,2})(?P<suffix>st|nd|rd|th|de|e)?\s*(?:-\s*\d{1,2}(?:st|nd|rd|th|de|e)?\s*)?"
    r"(?P<unit>century|centuries|c\.|cent\b\.?|eeuw|millennium|millennia)"
)
_TWO_DIGITS = re.compile(r"(?<!\d)\d{1,2}(?!\d)")
_NUMBER = re.compile(
    r"(?P<sign>(?:^|(?<=-)|(?<=- )|(?<=to ))-)?(?<!\d)(?P<n>\d{1,4})(?!\d)(?P<decade>'?s(?![a-z]))?"
    r"(?:\s*(?P<bc>" + _BC + r")|\s*(?P<ad>" + _AD + r"))?"
)
_RANGE_SEP = re.compile(r"^\s*(?:-|to|until|tot|/|or|of)\s*$")
_YEARS = range(-10_000, 2101)  # plausible creation years; others are object numbers, sizes, typos


def _century_interval(n, unit, fraction, bc):
    """Years of the n-th century/millennium (BC when bc), optionally a fraction of it."""
    size = 1000 if unit.startswith("millenni") else 100
    start = -n * size if bc else (n - 1) * size
    lo, hi = _FRACTIONS.get(fraction, (0, 100)) if fraction else (0, 100)
    return start + lo * size // 100, start + hi * size // 100 - 1


def _centuries(text, bc):
    """Interval covered by all century/millennium mentions in text, or None."""
    spans = []
    for match in _ORDINAL.finditer(text):
        if match.group("unit").startswith("c") and not match.group("unit").startswith("centur") \
                and not match.group("suffix"):
            continue  # "5 c." is no century; "17th c." is
        numbers = [int(n) for n in _TWO_DIGITS.findall(text, match.start("n"), match.end()) if int(n) >= 1]
        for index, n in enumerate(numbers):
            fraction = match.group("frac") if index == 0 else None
            spans.append(_century_interval(n, match.group("unit"), fraction, bc))
    if not spans:
        return None
    return min(s[0] for s in spans), max(s[1] for s in spans)


def _year_interval(text):
    """Interval covered by the plain years, decades and year ranges in text, or None."""
    tokens = []  # (start, end, value_lo, value_hi, era) with era in {None, "bc", "ad"}
    for match in _NUMBER.finditer(text):
        n = int(match.group("n"))
        era = "bc" if match.group("bc") else "ad" if match.group("ad") else None
        if match.group("sign"):
            n, era = -n, "ad"  # an explicit minus sign is already the signed year
        lo, hi = (n, n + 9) if match.group("decade") and n % 10 == 0 else (n, n)
        tokens.append([match.start(), match.end(), lo, hi, era, len(match.group("n"))])
    if not tokens:
        return None
    # Short range ends take the leading digits of the start: "1694-95" -> 1695, "1512-5" -> 1515.
    for prev, cur in zip(tokens, tokens[1:]):
        if _RANGE_SEP.match(text[prev[1]:cur[0]]) and cur[5] < prev[5] and prev[2] >= 0 and cur[4] is None:
            scale = 10 ** cur[5]
            end = prev[2] // scale * scale + cur[2]
            if end >= prev[2]:  # "1650-05" ends before it starts: a year and month, not a range
                cur[2] = cur[3] = end
                cur[5] = prev[5]
    # An era written once applies to the numbers before it ("300-200 B.C.").
    era = None
    for token in reversed(tokens):
        era = token[4] or era
        if era == "bc":
            token[2], token[3] = -token[3], -token[2]
    # Lone 1-2 digit numbers without an era are day numbers or counts ("May 3, 1650"), not years,
    # unless they are all there is ("year 5"); numbers far in the future are no creation years.
    yearlike = [t for t in tokens if t[5] >= 3 or t[4] is not None] or tokens
    values = [v for t in yearlike for v in (t[2], t[3]) if v in _YEARS]
    if not values:
        return None
    return min(values), max(values)


_ISO_DATE = re.compile(r"^(?P<year>-?\d{4})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
                       r"(?:[t ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:z|[+-]\d{2}:?\d{2})?)?$")
# a thousands separator ("1,650") or an exponent ("1.65e+03"): machine-written numbers, not ranges
_WRITTEN_NUMBER = re.compile(r"\d,\d{3}(?!\d)|\d(?:\.\d+)?e[+-]?\d")
_WHOLE_NUMBER = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?(?:e[+-]?\d+)?)$")


def _written_number_year(text):
    """(year, year) of an ISO date/timestamp or of a number written with separators or an exponent; None when
    such a number is not a plausible year; False when `text` is neither (the free-text rules apply)."""
    iso = _ISO_DATE.match(text)
    if iso:
        year = int(iso.group("year"))
        return (year, year) if year in _YEARS else None
    if not _WRITTEN_NUMBER.search(text):
        return False
    if not _WHOLE_NUMBER.match(text):
        return None  # "1,650-1,700" or a number inside words: counted as unparsed rather than guessed
    value = float(text.replace(",", ""))
    return parse_date(value) if value.is_integer() else None


def parse_date(text):
    """Creation interval (begin, end), begin <= end, of a free-text date; None when nothing parses.

    Handles '1630-1650', 'ca. 1650', 'c. 1650', '1650s', '17th century', 'first half of the 14th century',
    'dated 1694-95', '14th-15th century', '300 B.C.', '-300', '100 B.C.-A.D. 100', Dutch 'eeuw' and 'v. Chr.'.
    Plain numbers (int/float) are single years, and so are ISO dates and timestamps ('1650-05-16',
    '2024-01-01T00:00:00') and numbers written '1,650' or '1.65E+03'.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not math.isfinite(text) or round(text) not in _YEARS:
            return None
        return int(round(text)), int(round(text))
    text = _clean(text).translate(_DASHES)
    if not text:
        return None
    written = _written_number_year(text)
    if written is not False:
        return written
    numbers_bc = re.search(_BC, text) is not None and re.search(_AD, text) is None
    interval = _centuries(text, numbers_bc) if re.search(r"centur|cent\b|c\.|eeuw|millenni", text) else None
    if interval is None:
        interval = _year_interval(text)
    if interval is None:
        return None
    begin, end = interval
    return (begin, end) if begin <= end else (end, begin)
