"""Translate the scoring plan's DuckDB SQL into Spark SQL.

:mod:`civiscore.engine.plan` is written once, in DuckDB's dialect. The Spark engine runs the same
text after :func:`to_spark`: sqlglot parses it as DuckDB and writes it as Spark SQL, and a few
rewrites below fix what sqlglot leaves unportable. Each rewrite replaces one construct by its
exact Spark equivalent; none of them knows anything about scoring, so the semantics stay in one
place.

What sqlglot already gets right, and is therefore not rewritten here: ``arg_min``/``arg_max``
(``MIN_BY``/``MAX_BY``), ``list_contains`` (``ARRAY_CONTAINS``), ``NULL::TIMESTAMP``
(``CAST(NULL AS TIMESTAMP_NTZ)``: DuckDB's ``TIMESTAMP`` has no time zone, like Spark's
``TIMESTAMP_NTZ``), ``TIMESTAMP '…'`` literals, ``DECIMAL(p, s)`` casts, and DuckDB's default
``NULLS LAST`` ordering in windows.

The rewrites, each with the reason:

* ``to_months(n)`` / ``to_days(n)`` → ``MAKE_YM_INTERVAL(0, n)`` / ``MAKE_DT_INTERVAL(n)``. Spark
  has neither function. Adding a year-month interval to a ``TIMESTAMP_NTZ`` clamps to the end of
  the month as DuckDB does (31 January + 1 month = 28 or 29 February), and ``a + m + d`` keeps
  DuckDB's left-to-right order: months first, then days.
* A multi-unit interval literal (``INTERVAL '12 months 0 days'``) → a single-unit one
  (``INTERVAL '12' MONTH``). Spark refuses to mix year-month and day-time units in one literal,
  and a window frame bound must be a literal, so ``MAKE_INTERVAL`` cannot stand in. A literal with
  both months and days non-zero has no Spark equivalent: :class:`UnportableSQL` is raised.
* ``sum(x)`` of a DECIMAL(p, s) → ``CAST(CAST(SUM(<x's unscaled value as a BIGINT>) AS
  DECIMAL(20, 0)) * 10^-s AS DECIMAL(p + 10, s))``. Not a difference of meaning but of cost:
  Spark sums a DECIMAL wider than 8 digits in a Java ``BigDecimal`` per group, and the plan's
  points sums are DECIMAL(18, 2) and wider. The unscaled value is ``rint(CAST(x AS DOUBLE) *
  10^s)``, exact while ``|x| * 10^s`` is below 10^15 (below 2^50 the double's two roundings
  err by far less than a half); a value beyond fails the query by ``raise_error`` instead.
* ``round(x, n)`` on a DOUBLE (the per-unit points, ``value * quantity``). DuckDB rounds the exact
  binary value half away from zero: 0.725 is stored as 0.72499999999999997…, so
  ``round(0.725, 2)`` is 0.72. Spark rounds the shortest decimal text (``"0.725"``) half up and
  gets 0.73. The rewrite is ``CASE WHEN x * 2^(n+1) % 1 = 0 THEN ROUND(x, n) ELSE
  CAST(REPLACE(FORMAT_NUMBER(x, n), ',', '') AS DOUBLE) END``: a double that is exactly
  halfway has at most n + 1 binary digits after the point, so its text is exact and Spark's
  half-up agrees with DuckDB; any other double is never a tie, and ``FORMAT_NUMBER`` (Java's
  ``DecimalFormat``) rounds its exact binary value to the nearest, keeping the sign of a
  negative number rounded to zero as DuckDB does. NaN, infinities and zeros are returned as
  they are. ``round`` on a DECIMAL or an integer, or to a negative number of digits, rounds half
  away from zero in both engines and is left alone. Whether ``x`` is a DOUBLE is read from the
  operands' types (``schema``; an operand of type DOUBLE makes the arithmetic DOUBLE, as in
  DuckDB); when that cannot be told, :class:`UnportableSQL` is raised.
* ``SELECT d.* FROM a d JOIN b s USING (k)`` → ``… JOIN b s ON d.k = s.k``. Spark moves the
  ``USING`` columns to the front of ``d.*`` (``k, x, y`` where DuckDB gives ``x, k, y``), which
  misaligns a ``UNION ALL`` by position. With ``ON``, ``d.*`` is ``d``'s columns in order. Only
  inner joins of two named relations are rewritten; an unqualified ``k`` elsewhere in the
  statement then becomes ambiguous and Spark refuses it, rather than silently changing meaning.
* ``isnan(x)`` → ``CASE WHEN x IS NULL THEN NULL ELSE ISNAN(x) END``: Spark's ``isnan(NULL)`` is
  false, DuckDB's is NULL.
* ``isinf(x)`` → ``ABS(x) = CAST('Infinity' AS DOUBLE)``; Spark has no ``isinf``.
* ``epoch_us(t)`` → ``TIMESTAMPDIFF(MICROSECOND, CAST('1970-01-01 00:00:00' AS TIMESTAMP_NTZ), t)``;
  Spark has no ``epoch_us``, and its ``unix_micros`` reads the time in the session time zone.

>>> to_spark("SELECT occurred_at + to_months(valid_m) + to_days(valid_d) FROM t")
'SELECT occurred_at + MAKE_YM_INTERVAL(0, valid_m) + MAKE_DT_INTERVAL(valid_d) FROM t'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import sqlglot
from sqlglot import exp

__all__ = ["Schema", "UnportableSQL", "to_spark"]

Schema = Mapping[str, Mapping[str, str]]
"""Column types of the tables a statement reads: table → column → Spark type (``double``)."""


class UnportableSQL(ValueError):
    """DuckDB SQL with no exact Spark equivalent; the message says what to write instead."""


def to_spark(sql: str, schema: Schema | None = None) -> str:
    """Spark SQL for one DuckDB statement of the scoring plan.

    Args:
        sql: One statement in DuckDB's dialect, as :func:`civiscore.engine.plan.stages` writes.
        schema: Types of the tables the statement reads, needed only to translate
            ``round(x, n)`` (see the module notes).

    Returns:
        The same statement in Spark SQL.

    Raises:
        UnportableSQL: The statement uses a construct Spark cannot express exactly.

    >>> to_spark("SELECT arg_max(record_id, since), NULL::TIMESTAMP FROM c")
    'SELECT MAX_BY(record_id, since), CAST(NULL AS TIMESTAMP_NTZ) FROM c'
    """
    tree = sqlglot.parse_one(sql, read="duckdb")
    for rewrite in REWRITES:
        tree = tree.transform(rewrite, schema or {})
    return tree.sql(dialect="spark")


def _months_and_days(node: exp.Expr, schema: Schema) -> exp.Expr:
    """``to_months(n)``, ``to_days(n)`` → ``MAKE_YM_INTERVAL(0, n)``, ``MAKE_DT_INTERVAL(n)``."""
    if isinstance(node, exp.ToDays):
        return exp.func("MAKE_DT_INTERVAL", node.this)
    if isinstance(node, exp.Anonymous) and node.name.lower() == "to_months":
        (months,) = node.expressions
        return exp.func("MAKE_YM_INTERVAL", exp.Literal.number(0), months)
    return node


_PART = re.compile(r"\s*([+-]?\d+)\s+([a-z]+)\s*", re.IGNORECASE)
_UNITS = {"year": ("MONTH", 12), "month": ("MONTH", 1), "week": ("DAY", 7), "day": ("DAY", 1)}


def _single_unit_interval(node: exp.Expr, schema: Schema) -> exp.Expr:
    """``INTERVAL '12 months 0 days'`` → ``INTERVAL '12' MONTH`` (Spark cannot mix the two)."""
    if not isinstance(node, exp.Interval) or node.args.get("unit") is not None:
        return node
    text = node.this.name if isinstance(node.this, exp.Literal) else None
    if text is None:
        return node
    totals = {"MONTH": 0, "DAY": 0}
    end = 0
    for match in _PART.finditer(text):
        word = match.group(2).lower().removesuffix("s")
        if match.start() != end or word not in _UNITS:
            return node  # not a years/months/weeks/days literal: leave it to sqlglot
        unit, factor = _UNITS[word]
        totals[unit] += int(match.group(1)) * factor
        end = match.end()
    if end != len(text) or end == 0:
        return node
    nonzero = [(unit, n) for unit, n in totals.items() if n]
    if len(nonzero) > 1:
        raise UnportableSQL(
            f"INTERVAL '{text}' mixes months and days; Spark SQL has no such literal and a "
            "window frame bound must be a literal. Write the window as months only or days "
            "only (P12M, P365D), or compare timestamps with to_months(…) + to_days(…) "
            "arithmetic instead of a RANGE frame"
        )
    unit, n = nonzero[0] if nonzero else ("DAY", 0)
    return exp.Interval(this=exp.Literal.string(str(n)), unit=exp.var(unit))


def _duckdb_round(node: exp.Expr, schema: Schema) -> exp.Expr:
    """``round(x, n)`` on a DOUBLE → DuckDB's rounding of its exact binary value."""
    if not isinstance(node, exp.Round):
        return node
    n = _integer(node.args.get("decimals"))
    if n is None:
        raise UnportableSQL(f"{node.sql(dialect='duckdb')}: write the digits as a number")
    if n < 0:
        return node  # to tens or more, both engines round the exact (whole) value half away from 0
    double = _is_double(node.this, schema)
    if double is None:
        raise UnportableSQL(
            f"{node.sql(dialect='duckdb')}: cannot tell whether the value rounded is DOUBLE "
            "or DECIMAL, which DuckDB and Spark round differently; CAST it to one of them"
        )
    if not double:
        return node

    def x() -> exp.Expr:
        return exp.paren(node.this.copy(), copy=False)

    def number(value: int) -> exp.Expr:
        return exp.Literal.number(value)

    infinity = exp.cast(exp.Literal.string("Infinity"), exp.DataType.Type.DOUBLE)
    # NaN, infinities and zeros stay as they are: -0.0 too (in Spark NaN is above infinity).
    kept = exp.or_(
        exp.Not(this=exp.paren(exp.LT(this=exp.Abs(this=x()), expression=infinity))),
        exp.EQ(this=x(), expression=number(0)),
    )
    exact_text = exp.EQ(
        this=exp.Mod(this=exp.Mul(this=x(), expression=number(2 ** (n + 1))), expression=number(1)),
        expression=number(0),
    )
    nearest = exp.cast(
        exp.func(
            "REPLACE",
            exp.func("FORMAT_NUMBER", x(), number(n)),
            exp.Literal.string(","),
            exp.Literal.string(""),
        ),
        exp.DataType.Type.DOUBLE,
    )
    return exp.Case(
        ifs=[
            exp.If(this=kept, true=x()),
            exp.If(this=exact_text, true=exp.Round(this=x(), decimals=number(n))),
        ],
        default=nearest,
    )


def _integer(node: exp.Expr | None) -> int | None:
    """The value of an integer literal (``2``, ``-1``), or None; no digits means 0."""
    if node is None:
        return 0
    if isinstance(node, exp.Neg):
        inner = _integer(node.this)
        return None if inner is None else -inner
    if isinstance(node, exp.Literal) and not node.is_string and node.name.isdigit():
        return int(node.name)
    return None


_EXACT_TYPES = ("tinyint", "smallint", "int", "integer", "bigint", "decimal")
_FLOAT_TYPES = ("double", "float", "real")


def _is_double(node: exp.Expr, schema: Schema) -> bool | None:
    """Whether DuckDB types this arithmetic as DOUBLE (None: cannot tell).

    >>> live = {"live": {"quantity": "double", "amount": "decimal(18,2)"}}
    >>> query = sqlglot.parse_one("SELECT l.quantity * 0.5, l.amount * 2, l.amount / 2 FROM live l")
    >>> [_is_double(e, live) for e in query.expressions]
    [True, False, None]
    """
    if isinstance(node, exp.Paren | exp.Neg):
        return _is_double(node.this, schema)
    if isinstance(node, exp.Literal):
        # DuckDB reads 0.5 as DECIMAL(2, 1) and 5e-1 as DOUBLE.
        return None if node.is_string else "e" in node.name.lower()
    if isinstance(node, exp.Cast):
        return _type_is_double(node.to.sql(dialect="spark").lower())
    if isinstance(node, exp.Column):
        kind = _column_type(node, schema)
        return None if kind is None else _type_is_double(kind)
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div):
        sides = [_is_double(node.left, schema), _is_double(node.right, schema)]
        if True in sides:
            return True  # anything with a DOUBLE is DOUBLE
        # DuckDB divides integers and decimals into a DOUBLE; other arithmetic stays exact.
        return None if None in sides or isinstance(node, exp.Div) else False
    return None


def _type_is_double(kind: str) -> bool | None:
    if kind.startswith(_FLOAT_TYPES):
        return True
    return False if kind.startswith(_EXACT_TYPES) else None


def _column_type(column: exp.Column, schema: Schema) -> str | None:
    """A column's type, when it comes straight from a table named in ``schema``."""
    select = column.find_ancestor(exp.Select)
    if select is None:
        return None
    from_ = select.args.get("from_") or select.args.get("from")
    sources = [from_.this] if from_ is not None else []
    sources += [join.this for join in select.args.get("joins") or []]
    tables = [s for s in sources if isinstance(s, exp.Table)]
    if column.table:
        tables = [t for t in tables if t.alias_or_name == column.table]
    elif len(tables) != len(sources):
        return None  # an unqualified column might come from a subquery
    found = [schema[t.name][column.name] for t in tables if column.name in schema.get(t.name, {})]
    return found[0].lower() if len(found) == 1 else None


def _star_using(node: exp.Expr, schema: Schema) -> exp.Expr:
    """``SELECT d.* … JOIN s USING (k)`` → ``… JOIN s ON d.k = s.k`` (keeps ``d.*``'s order)."""
    if not isinstance(node, exp.Select) or not any(
        isinstance(e, exp.Column) and isinstance(e.this, exp.Star) and e.table
        for e in node.expressions
    ):
        return node
    for i, join in enumerate(node.args.get("joins") or []):
        using = join.args.get("using")
        if not using:
            continue
        from_ = node.args.get("from_") or node.args.get("from")
        source = from_.this if from_ is not None else None
        if i > 0 or join.side or not isinstance(source, exp.Table):
            raise UnportableSQL(
                f"{node.sql(dialect='duckdb')}: a qualified star over an outer or chained "
                "JOIN … USING has a different column order in Spark; write JOIN … ON instead"
            )
        left, right = source.alias_or_name, join.this.alias_or_name
        keys = [k.name for k in using]
        join.set("using", None)
        join.set(
            "on",
            exp.and_(*(exp.column(k, table=left).eq(exp.column(k, table=right)) for k in keys)),
        )
    return node


def _isnan(node: exp.Expr, schema: Schema) -> exp.Expr:
    """``isnan(x)`` → NULL for NULL, as in DuckDB (Spark says false)."""
    if not isinstance(node, exp.IsNan) or node.meta.get("translated"):
        return node
    inner = exp.IsNan(this=node.this.copy())
    inner.meta["translated"] = True
    is_null = exp.Is(this=node.this.copy(), expression=exp.Null())
    return exp.Case(ifs=[exp.If(this=is_null, true=exp.Null())], default=inner)


def _isinf(node: exp.Expr, schema: Schema) -> exp.Expr:
    """``isinf(x)`` → ``ABS(x) = CAST('Infinity' AS DOUBLE)``."""
    if not isinstance(node, exp.IsInf):
        return node
    infinity = exp.cast(exp.Literal.string("Infinity"), exp.DataType.Type.DOUBLE)
    return exp.paren(exp.EQ(this=exp.Abs(this=node.this), expression=infinity), copy=False)


def _epoch_us(node: exp.Expr, schema: Schema) -> exp.Expr:
    """``epoch_us(t)`` → microseconds since 1970-01-01 00:00:00, with no time zone."""
    if not (isinstance(node, exp.Anonymous) and node.name.lower() == "epoch_us"):
        return node
    (moment,) = node.expressions
    epoch = exp.cast(exp.Literal.string("1970-01-01 00:00:00"), exp.DataType.Type.TIMESTAMPNTZ)
    return exp.Anonymous(this="TIMESTAMPDIFF", expressions=[exp.var("MICROSECOND"), epoch, moment])


_DECIMAL = re.compile(r"decimal\((\d+),\s*(\d+)\)")
# A decimal whose unscaled value is below 10^this is carried exactly through a DOUBLE and back:
# below 2^50 the two roundings (to a double, then times the scale) err by far less than a half.
_EXACT_DIGITS = 15


def _decimal_sum(node: exp.Expr, schema: Schema) -> exp.Expr:
    """``sum(x)`` of a DECIMAL(p, s) → the sum of its unscaled values as a BIGINT, scaled back.

    Spark keeps the sum of a DECIMAL(p, s) as a DECIMAL(p + 10, s), in a Java ``BigDecimal``
    per group once p + 10 is above 18: the plan's points sums (DECIMAL(18, 2) and wider) cost
    a third more than summing longs. The unscaled value is read through a DOUBLE
    (``rint(x * 10^s)``), which is exact while ``|x| * 10^s`` stays below 10^15; any value
    beyond fails the query with ``raise_error`` rather than summing inexactly. The sum, and
    its type, are DuckDB's and Spark's own; a BIGINT total beyond 2^63 fails too (ANSI
    arithmetic), where DuckDB's cast of the sum to DECIMAL(18, 2) would fail sooner. Sums in
    window functions, of DISTINCT values, and of values whose type cannot be told from
    ``schema`` are left as they are.
    """
    if not isinstance(node, exp.Sum) or isinstance(node.parent, exp.Window | exp.Filter):
        return node
    if isinstance(node.this, exp.Distinct):
        return node
    kind = _decimal_type(node.this, schema)
    if kind is None or kind[1] > _EXACT_DIGITS - 1:
        return node
    precision, scale = kind

    def x() -> exp.Expr:
        return exp.paren(node.this.copy(), copy=False)

    as_double = exp.cast(x(), exp.DataType.Type.DOUBLE)
    unscaled = exp.cast(
        exp.func("RINT", exp.Mul(this=as_double.copy(), expression=exp.Literal.number(10**scale))),
        exp.DataType.Type.BIGINT,
    )
    bound = exp.Literal.number(f"1e{_EXACT_DIGITS - scale}")
    refused = exp.func(
        "RAISE_ERROR",
        exp.Literal.string(
            f"civiscore on Spark sums a DECIMAL with {scale} decimals exactly only for values "
            f"below 1e{_EXACT_DIGITS - scale} in magnitude"
        ),
    )
    summed: exp.Expr = exp.cast(
        exp.Sum(
            this=exp.Case(
                ifs=[
                    exp.If(this=exp.Is(this=x(), expression=exp.Null()), true=exp.Null()),
                    exp.If(
                        this=exp.LT(this=exp.Abs(this=as_double), expression=bound),
                        true=unscaled,
                    ),
                ],
                default=refused,
            )
        ),
        exp.DataType.build("DECIMAL(20, 0)"),
    )
    if scale:
        summed = exp.Mul(this=summed, expression=exp.Literal.number(f"{10**-scale:.{scale}f}"))
    # The type Spark gives the sum of a DECIMAL(p, s).
    return exp.cast(summed, exp.DataType.build(f"DECIMAL({min(38, precision + 10)}, {scale})"))


def _decimal_type(node: exp.Expr, schema: Schema) -> tuple[int, int] | None:
    """(precision, scale) of a DECIMAL expression, when its type can be told; else None.

    >>> t = {"g": {"total": "decimal(18,2)", "n": "bigint"}}
    >>> q = sqlglot.parse_one(
    ...     "SELECT g.total, CAST(g.n AS DECIMAL(9, 1)), CASE WHEN g.n > 0 THEN g.total END, "
    ...     "CASE WHEN g.n > 0 THEN g.total ELSE 0 END, g.n FROM g"
    ... )
    >>> [_decimal_type(e, t) for e in q.expressions]
    [(18, 2), (9, 1), (18, 2), None, None]
    """
    if isinstance(node, exp.Paren):
        return _decimal_type(node.this, schema)
    if isinstance(node, exp.Cast):
        found = _DECIMAL.fullmatch(node.to.sql(dialect="spark").lower().replace(" ", ""))
    elif isinstance(node, exp.Column):
        kind = _column_type(node, schema)
        found = None if kind is None else _DECIMAL.fullmatch(kind.replace(" ", ""))
    elif isinstance(node, exp.Case) and not node.this:
        branches = [i.args["true"] for i in node.args["ifs"]]
        if node.args.get("default") is not None:
            branches.append(node.args["default"])
        kinds = {_decimal_type(b, schema) for b in branches if not isinstance(b, exp.Null)}
        return kinds.pop() if len(kinds) == 1 and None not in kinds else None
    else:
        return None
    return None if found is None else (int(found.group(1)), int(found.group(2)))


REWRITES: tuple[Callable[[exp.Expr, Schema], exp.Expr], ...] = (
    _months_and_days,
    _single_unit_interval,
    _decimal_sum,
    _duckdb_round,
    _star_using,
    _isnan,
    _isinf,
    _epoch_us,
)
"""Applied in this order to every node of the parsed DuckDB statement."""
