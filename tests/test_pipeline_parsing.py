"""Label parsers (pipeline.parsing): dates, medium words, artist names and their catalogue capitals, never raising."""
import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omniart.pipeline.parsing import artist_display, catalogue_case, medium_words, normalise_artist, normalise_phrase, parse_date


@pytest.mark.parametrize("text, interval", [
    ("1630-1650", (1630, 1650)),
    ("ca. 1650", (1650, 1650)),
    ("c. 1650", (1650, 1650)),
    ("1650s", (1650, 1659)),
    ("17th century", (1600, 1699)),
    ("first half of the 14th century", (1300, 1349)),
    ("dated 1694-95", (1694, 1695)),
    ("ca. 1512\u201315", (1512, 1515)),
    ("300 B.C.", (-300, -300)),
    ("ca. 2000-1500 b.c.", (-2000, -1500)),
    ("100 B.C.-A.D. 100", (-100, 100)),
    ("5th century B.C.", (-500, -401)),
    ("-300", (-300, -300)),
    ("14th\u201315th century", (1300, 1499)),
    ("late 19th c.", (1867, 1899)),
    ("17e eeuw", (1600, 1699)),
    (1650.0, (1650, 1650)),
    ("", None),
    ("date unknown", None),
    (float("nan"), None),
    # machine-written dates and numbers: their year, or unparsed, never a wrong range
    ("1650-05-16", (1650, 1650)),
    ("2024-01-01T00:00:00", (2024, 2024)),
    ("1650-05-16 12:30:00+01:00", (1650, 1650)),
    ("1650-05", (1650, 1650)),
    ("1.65E+03", (1650, 1650)),
    ("1,650", (1650, 1650)),
    ("1e5", None),
    ("1,650-1,700", None),
])
def test_parse_date_examples(text, interval):
    assert parse_date(text) == interval


@pytest.mark.parametrize("medium, stems, words", [
    ("Oil on canvas", ["oil", "canva"], ["oil", "canvas"]),
    ("Tempera and gold on wood", ["tempera", "gold", "wood"], ["tempera", "gold", "wood"]),
    ("Handscroll; ink and color on silk", ["ink", "color", "silk"], ["ink", "color", "silk"]),
    ("Oil on oak panel", ["oil", "oak", "panel"], ["oil", "oak", "panel"]),
    ("", [], []),
])
def test_medium_words_english(medium, stems, words):
    pairs = medium_words(medium)
    assert [s for s, _ in pairs] == stems and [w for _, w in pairs] == words


def test_medium_words_dutch_and_type_phrases():
    assert medium_words("olieverf op doek", "dutch") == [("olieverf", "olieverf"), ("doek", "doek")]
    assert normalise_phrase("Paintings") == normalise_phrase("painting") == "paint"
    assert normalise_phrase("Hanging  scroll") == "hang scroll"


@pytest.mark.parametrize("name, expected", [
    ("  Rembrandt   van Rijn ", "rembrandt van rijn"), ("Jan Fr\x1aderik", "jan fr\ufffdderik"),
    ("anoniem", None), ("Unknown", None), ("onbekend", None), ("Unidentified artist", None),
    ("Anonymous", None), ("Anonymous artist", None), ("Anonymous, French, 18th century", None),
    ("", None), (None, None), (float("nan"), None),
])
def test_normalise_artist(name, expected):
    assert normalise_artist(name) == expected


@pytest.mark.parametrize("name, shown", [
    ("luyken, jan", "Luyken, Jan"),
    ("rembrandt harmensz. van rijn", "Rembrandt Harmensz. van Rijn"),
    ("hooghe, romeyn de", "Hooghe, Romeyn de"),
    ("gheyn, jacob de (ii)", "Gheyn, Jacob de (II)"),
    ("passe, crispijn van de (i)", "Passe, Crispijn van de (I)"),
    ("meissener porzellan manufaktur", "Meissener Porzellan Manufaktur"),
    ("de bray, salomon", "De Bray, Salomon"),
    ("d'hondecoeter, melchior", "D'Hondecoeter, Melchior"),
    ("aall & sons", "Aall & Sons"),
])
def test_catalogue_capitalisation_of_lower_cased_names(name, shown):
    assert catalogue_case(name) == shown and artist_display(name, lower_cased_source=True) == shown
    assert artist_display("  Paul  Cézanne ") == "Paul Cézanne"  # a catalogue's own spelling is kept


_DATE_WORDS = st.sampled_from(
    ["ca.", "c.", "b.c.", "a.d.", "century", "th", "s", "-", "\u2013", "first half of the", "late", "mid-",
     "dated", " ", "to", "or", "millennium", "eeuw", "v. chr.", "'s", "1st", "3rd quarter", "?"]
)
_DATE_TEXT = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(_DATE_WORDS, st.integers(-5000, 5000).map(str)), max_size=8).map("".join),
    st.lists(st.one_of(_DATE_WORDS, st.integers(0, 99).map(str)), max_size=8).map(" ".join),
)


@settings(max_examples=150, deadline=None)
@given(_DATE_TEXT)
def test_parse_date_never_raises_and_is_ordered(text):
    interval = parse_date(text)
    assert interval is None or (len(interval) == 2 and interval[0] <= interval[1])


@settings(max_examples=150, deadline=None)
@given(st.dates(min_value=datetime.date(1, 1, 1), max_value=datetime.date(2100, 12, 31)), st.booleans())
def test_iso_dates_and_timestamps_give_their_year(day, with_time):
    text = day.isoformat() if not with_time else f"{day.isoformat()}T{day.day % 24:02d}:07:00"
    assert parse_date(text) == (day.year, day.year)


@settings(max_examples=150, deadline=None)
@given(st.integers(1000, 2100), st.sampled_from(["{:,}", "{:.2E}", "{:.3e}", "{:.1f}", "{:e}"]))
def test_numbers_with_separators_or_exponents_give_the_year_or_nothing(year, style):
    text = style.format(float(year) if "e" in style.lower() or "f" in style else year)
    value = float(text.replace(",", ""))  # what the text says: 1657 written 1.66E+03 is 1660
    assert parse_date(text) == ((int(value), int(value)) if value.is_integer() and value <= 2100 else None)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=60), st.floats(), st.integers()), st.sampled_from(["english", "dutch"]))
def test_medium_words_never_raise(medium, language):
    pairs = medium_words(medium, language)
    assert all(isinstance(s, str) and s and isinstance(w, str) and w for s, w in pairs)
    assert len({s for s, _ in pairs}) == len(pairs)
