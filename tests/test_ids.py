"""Subject IDs: check characters, classification, pseudonyms, and the SQL twins of each.

Ingestion validates and pseudonymises IDs set-based in DuckDB; ``check`` and ``explain`` do it
in Python for one ID. The two paths must agree exactly, or a subject stored by one would be
lost (or found under the wrong pseudonym) by the other.
"""

from __future__ import annotations

import datetime as dt
import doctest
import re
from collections.abc import Callable, Iterator

import duckdb
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from civiscore.ids import (
    PSEUDONYM_HEX_CHARS,
    RESIDENT_CHECK,
    USCC_ALPHABET,
    InvalidSubjectId,
    id_from_key,
    id_from_key_sql,
    id_types,
    id_types_and_keys,
    is_resident_id,
    is_uscc,
    pseudonym,
    pseudonym_sql,
    resident_check_char,
    resident_valid_sql,
    subject_type,
    uscc_check_char,
    uscc_valid_sql,
    valid_ids,
)

RESIDENT = "11010519491231002X"  # the GB 11643-1999 worked example
USCC = "91350100M000100Y43"
DIGITS = "0123456789"
# Characters a mistyped ID plausibly contains: digits, the check letter in any case, letters the
# credit-code alphabet leaves out (I, O, S, V, Z), a space and a hyphen.
NEAR_RESIDENT = DIGITS + "Xx -"
NEAR_USCC = USCC_ALPHABET + "IOSVZaxy -"

PROFILE = settings(max_examples=50, deadline=None)


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def _sql_flags(
    con: duckdb.DuckDBPyConnection, expression: Callable[[str], str], values: list[str]
) -> dict[str, bool]:
    """Evaluate a SQL predicate over many values in one query."""
    rows = con.execute(f"SELECT v, {expression('v')} FROM unnest(?) AS t(v)", [values]).fetchall()
    return {v: bool(flag) for v, flag in rows}


# -- strategies -------------------------------------------------------------------------------


@st.composite
def resident_ids(draw: st.DrawFn) -> str:
    """A valid resident ID: any region and sequence digits, any real birth date."""
    region = draw(st.text(DIGITS, min_size=6, max_size=6))
    birth = draw(st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31)))
    sequence = draw(st.text(DIGITS, min_size=3, max_size=3))
    # Not strftime: %Y is not zero-padded below year 1000 on every platform.
    first17 = f"{region}{birth.year:04d}{birth.month:02d}{birth.day:02d}{sequence}"
    return first17 + resident_check_char(first17)


@st.composite
def usccs(draw: st.DrawFn) -> str:
    first17 = draw(st.text(USCC_ALPHABET, min_size=17, max_size=17))
    return first17 + uscc_check_char(first17)


def _mutations(
    valid: st.SearchStrategy[str], alphabet: str, check_char: Callable[[str], str], body: str
) -> st.SearchStrategy[str]:
    """One character of a valid ID changed, dropped or added.

    With ``recheck`` the check character is recomputed after a substitution, so a changed birth
    date (or any change) is judged on its own merits rather than by the check digit.
    """

    @st.composite
    def mutate(draw: st.DrawFn) -> str:
        raw = draw(valid)
        i = draw(st.integers(0, len(raw) - 1))
        how = draw(st.sampled_from(["substitute", "recheck", "drop", "add"]))
        if how == "drop":
            return raw[:i] + raw[i + 1 :]
        char = draw(st.sampled_from(alphabet).filter(lambda c: c != raw[i]))
        if how == "add":
            return raw[:i] + char + raw[i:]
        changed = raw[:i] + char + raw[i + 1 :]
        if how == "recheck" and i < 17 and all(c in body for c in changed[:17]):
            changed = changed[:17] + check_char(changed[:17])
        return changed

    return mutate()


def _candidates(
    valid: st.SearchStrategy[str], alphabet: str, check_char: Callable[[str], str], body: str
) -> st.SearchStrategy[list[str]]:
    one = st.one_of(
        valid,
        _mutations(valid, alphabet, check_char, body),
        st.text(alphabet, min_size=0, max_size=20),
    )
    return st.lists(one, min_size=1, max_size=40)


# -- known IDs --------------------------------------------------------------------------------


def test_known_good_resident_id() -> None:
    assert resident_check_char(RESIDENT[:17]) == "X"
    assert is_resident_id(RESIDENT)
    assert not is_uscc(RESIDENT)  # X is not in the credit-code alphabet
    assert subject_type(RESIDENT) == "person"


def test_known_good_uscc() -> None:
    assert uscc_check_char(USCC[:17]) == "3"
    assert is_uscc(USCC)
    assert not is_resident_id(USCC)
    assert subject_type(USCC) == "organisation"


def test_subject_type_tolerates_case_and_surrounding_spaces() -> None:
    assert subject_type("  11010519491231002x\t") == "person"
    assert subject_type(" 91350100m000100y43 ") == "organisation"


@pytest.mark.parametrize("position", range(18))
def test_any_changed_character_of_a_resident_id_fails(position: int) -> None:
    for char in DIGITS + "X":
        if char == RESIDENT[position]:
            continue
        changed = RESIDENT[:position] + char + RESIDENT[position + 1 :]
        assert not is_resident_id(changed), changed


@pytest.mark.parametrize("position", range(18))
def test_any_changed_character_of_a_uscc_fails(position: int) -> None:
    for char in USCC_ALPHABET:
        if char == USCC[position]:
            continue
        changed = USCC[:position] + char + USCC[position + 1 :]
        assert not is_uscc(changed), changed


@pytest.mark.parametrize(
    "birth",
    ["19000229", "20230231", "19491301", "19490001", "19491200", "19491232"],
    ids=["1900-not-leap", "feb-31", "month-13", "month-00", "day-00", "day-32"],
)
def test_resident_id_with_impossible_birth_date_fails_even_with_right_check_digit(
    birth: str,
) -> None:
    first17 = f"110105{birth}002"
    assert not is_resident_id(first17 + resident_check_char(first17))


def test_leap_day_birth_date_is_valid() -> None:
    first17 = "11010520000229002"
    assert is_resident_id(first17 + resident_check_char(first17))


@pytest.mark.parametrize(
    ("raw", "length"),
    [("", 0), ("1101051949123", 13), (RESIDENT[:17], 17), (RESIDENT + "1", 19)],
)
def test_subject_type_names_the_length_when_it_is_wrong(raw: str, length: int) -> None:
    with pytest.raises(InvalidSubjectId) as caught:
        subject_type(raw)
    message = str(caught.value)
    assert f"has {length} characters" in message
    assert "both have 18" in message
    assert "GB 11643" in message and "GB 32100" in message


@pytest.mark.parametrize("raw", ["110105194912310021", "91350100M000100Y44"])
def test_subject_type_blames_the_check_digit_and_says_what_to_do(raw: str) -> None:
    with pytest.raises(InvalidSubjectId) as caught:
        subject_type(raw)
    message = str(caught.value)
    assert repr(raw) in message
    assert "fails the check digit" in message
    assert "copied correctly" in message


def test_invalid_subject_id_is_a_value_error() -> None:
    # Callers that only know ValueError still catch it.
    assert issubclass(InvalidSubjectId, ValueError)


# -- properties: Python ------------------------------------------------------------------------


@PROFILE
@given(resident_ids())
def test_generated_resident_ids_are_valid_people(raw: str) -> None:
    assert is_resident_id(raw)
    assert raw[17] in RESIDENT_CHECK
    assert subject_type(raw.lower()) == "person"


@PROFILE
@given(usccs())
def test_generated_usccs_are_valid(raw: str) -> None:
    assert is_uscc(raw)
    # An all-digit code may also pass GB 11643; subject_type prefers the resident reading.
    assert subject_type(raw) == ("person" if is_resident_id(raw) else "organisation")


@PROFILE
@given(resident_ids(), st.integers(0, 17), st.sampled_from(DIGITS + "X"))
def test_a_single_substitution_in_a_resident_id_is_always_caught(
    raw: str, i: int, char: str
) -> None:
    changed = raw[:i] + char + raw[i + 1 :]
    assert is_resident_id(changed) == (changed == raw)


@PROFILE
@given(usccs(), st.integers(0, 17), st.sampled_from(USCC_ALPHABET))
def test_a_single_substitution_in_a_uscc_is_always_caught(raw: str, i: int, char: str) -> None:
    changed = raw[:i] + char + raw[i + 1 :]
    assert is_uscc(changed) == (changed == raw)


# -- properties: SQL agrees with Python ----------------------------------------------------------


@PROFILE
@given(_candidates(resident_ids(), NEAR_RESIDENT, resident_check_char, DIGITS))
@example([RESIDENT, RESIDENT.lower(), "110105200002290021", "110105190002290025", ""])
def test_resident_valid_sql_agrees_with_python(
    con: duckdb.DuckDBPyConnection, values: list[str]
) -> None:
    flags = _sql_flags(con, resident_valid_sql, values)
    assert flags == {v: is_resident_id(v) for v in values}


@PROFILE
@given(_candidates(usccs(), NEAR_USCC, uscc_check_char, USCC_ALPHABET))
@example([USCC, USCC.lower(), "91350100M000100Y44", RESIDENT, ""])
def test_uscc_valid_sql_agrees_with_python(
    con: duckdb.DuckDBPyConnection, values: list[str]
) -> None:
    flags = _sql_flags(con, uscc_valid_sql, values)
    assert flags == {v: is_uscc(v) for v in values}


@PROFILE
@given(
    key=st.binary(min_size=32, max_size=80),
    raws=st.lists(st.one_of(resident_ids(), usccs()), min_size=1, max_size=20),
)
@example(key=bytes(range(64)), raws=[RESIDENT, USCC])  # exactly one block: used as is
@example(key=bytes(range(65)), raws=[RESIDENT, USCC])  # longer than a block: hashed first
def test_pseudonym_sql_equals_python(
    con: duckdb.DuckDBPyConnection, key: bytes, raws: list[str]
) -> None:
    rows = con.execute(
        f"SELECT v, {pseudonym_sql(key, 'v')} FROM unnest(?) AS t(v)", [raws]
    ).fetchall()
    assert dict(rows) == {raw: pseudonym(key, raw) for raw in raws}


@PROFILE
@given(
    keys=st.integers(32, 80).flatmap(
        lambda n: st.lists(st.binary(min_size=n, max_size=n), min_size=2, max_size=2, unique=True)
    ),
    raw=st.one_of(resident_ids(), usccs()),
)
def test_pseudonyms_differ_for_different_keys(keys: list[bytes], raw: str) -> None:
    # Keys of one length, as the key file always holds: HMAC pads short keys with zero bytes,
    # so two keys that differ only by trailing zeros would give the same pseudonym.
    first, second = keys
    assert pseudonym(first, raw) != pseudonym(second, raw)


@PROFILE
@given(key=st.binary(min_size=32, max_size=80), raw=st.one_of(resident_ids(), usccs()))
def test_pseudonym_is_32_lowercase_hex_chars(key: bytes, raw: str) -> None:
    value = pseudonym(key, raw)
    assert PSEUDONYM_HEX_CHARS == 32
    assert re.fullmatch(r"[0-9a-f]{32}", value)


def test_pseudonym_normalises_case_and_spaces_like_ingestion() -> None:
    key = bytes(range(32))
    assert pseudonym(key, " 11010519491231002x ") == pseudonym(key, RESIDENT)
    assert pseudonym(key, RESIDENT) != pseudonym(key, USCC)


# -- known divergences (bugs in src; see the reasons) -------------------------------------------


def test_year_0000_is_refused_by_sql_too(con: duckdb.DuckDBPyConnection) -> None:
    first17 = "11010500000101002"
    raw = first17 + resident_check_char(first17)
    assert not is_resident_id(raw)
    assert _sql_flags(con, resident_valid_sql, [raw]) == {raw: False}


def test_full_width_digits_are_not_a_valid_resident_id(con: duckdb.DuckDBPyConnection) -> None:
    full_width = RESIDENT[:17].translate(str.maketrans(DIGITS, "０１２３４５６７８９")) + "X"
    assert _sql_flags(con, resident_valid_sql, [full_width]) == {full_width: False}
    assert not is_resident_id(full_width)


def test_superscript_digit_is_simply_not_a_resident_id() -> None:
    assert not is_resident_id("²" + RESIDENT[1:])


@PROFILE
@given(
    st.tuples(
        _candidates(resident_ids(), NEAR_RESIDENT, resident_check_char, DIGITS),
        _candidates(usccs(), NEAR_USCC, uscc_check_char, USCC_ALPHABET),
        st.lists(st.text(max_size=20), max_size=5),
    ).map(lambda t: t[0] + t[1] + t[2])
)
@example(
    [
        RESIDENT,
        USCC,
        "110105200002290021",
        "11010500000101002" + resident_check_char("11010500000101002"),  # year 0000
        "11010519000229002" + resident_check_char("11010519000229002"),  # not a leap year
        "11010520000229002" + resident_check_char("11010520000229002"),  # a leap year
        "",
        "０" * 18,
    ]
)
def test_valid_ids_agrees_with_python(values: list[str]) -> None:
    # The batch check's vectorised validation is the per-ID functions, many at a time.
    arr = pa.array(values, pa.string())
    assert valid_ids(arr).tolist() == [is_resident_id(v) or is_uscc(v) for v in values]
    assert id_types(arr).tolist() == [
        1 if is_resident_id(v) else 2 if is_uscc(v) else 0 for v in values
    ]


@PROFILE
@given(
    st.tuples(
        _candidates(resident_ids(), NEAR_RESIDENT, resident_check_char, DIGITS),
        _candidates(usccs(), NEAR_USCC, uscc_check_char, USCC_ALPHABET),
        st.lists(st.one_of(st.none(), st.text(max_size=20)), max_size=5),
    ).map(lambda t: [*t[0], *t[1], *t[2]])
)
@example([RESIDENT, USCC, RESIDENT, None, "", "0" * 18, "Y" * 17 + uscc_check_char("Y" * 17)])
def test_an_ids_number_spells_it_and_no_other(
    con: duckdb.DuckDBPyConnection, values: list[str | None]
) -> None:
    # Ingestion groups and joins a file's rows by this number instead of the ID: two IDs with
    # one number would be stored as one subject, and the pseudonym is hashed from its spelling.
    arr = pa.array(values, pa.string())
    types, keys = id_types_and_keys(arr)
    assert types.tolist() == id_types(arr).tolist()
    numbers = keys.to_pylist()
    for value, kind, number in zip(values, types.tolist(), numbers, strict=True):
        assert (number is None) == (kind == 0)
        if number is not None:
            assert id_from_key(int(number)) == value
    valid = {v for v, n in zip(values, numbers, strict=True) if n is not None}
    assert len({n for n in numbers if n is not None}) == len(valid)
    keyed = pa.table({"k": keys})  # noqa: F841 (read by DuckDB by name)
    sql = f"SELECT {id_from_key_sql('k')} FROM (SELECT CAST(k AS HUGEINT) AS k FROM keyed)"
    spelled = [r[0] for r in con.execute(sql).fetchall()]
    assert spelled == [v if n is not None else None for v, n in zip(values, numbers, strict=True)]


def test_doctests() -> None:
    from civiscore import ids

    result = doctest.testmod(ids)
    assert result.attempted >= 6 and result.failed == 0
