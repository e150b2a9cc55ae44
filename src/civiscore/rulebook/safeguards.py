"""The safeguards every rulebook must pass before it may load.

Each check returns problems as ``(dotted path, message)`` pairs whose message says what is
wrong and how to fix it. The four safeguards (see ``docs/rulebook.md``):

1. every rule, listing and restriction cites a legal basis (enforced by the model's
   ``LegalBasis`` type, reported here as well for missing keys);
2. contexts come from a closed catalogue and protected categories are refused;
3. negative rules expire, merit rules are capped, merits never end a listing, and a grave
   sanction caps the band;
4. a score or band never restricts: restrictions come from a decision by a court or regulator
   with a fixed maximum duration, or from conduct in the restricted service's own context.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import NamedTuple

from civiscore.rulebook.catalogue import CONTEXTS, protected_category
from civiscore.rulebook.model import DatedNumber, Listing, Rule, Rulebook

Problem = tuple[str, str]


class PolicyProblem(NamedTuple):
    """A breach of a policy safeguard that the engine can still compute.

    Such a rulebook never loads for real, but a rulebook marked ``simulation_only: true`` may be
    loaded for the policy lab with these problems reported as warnings, so that a naive scheme
    can be shown side by side with a lawful one. Every other problem (shape, consistency, and
    above all protected categories) refuses a rulebook for every purpose.
    """

    path: str
    message: str


SANCTIONING_AUTHORITIES = ("court", "regulator")


def check(rb: Rulebook) -> list[Problem]:
    """All safeguard and consistency problems of a rulebook, in document order."""
    problems: list[Problem] = []
    for check_fn in (
        _check_contexts,
        _check_catalogue,
        _check_bands,
        _check_rules,
        _check_listings,
    ):
        problems.extend(check_fn(rb))
    return problems


def _protected(path: str, name: str, what: str) -> Iterator[Problem]:
    hit = protected_category(name)
    if hit:
        category, why = hit
        yield (
            path,
            f"{what} {name!r} touches a protected category ({category}): {why}. "
            "Remove it; civiscore refuses to score it.",
        )


def _check_contexts(rb: Rulebook) -> Iterator[Problem]:
    allowed = ", ".join(sorted(CONTEXTS))
    for name in rb.contexts:
        path = f"contexts.{name}"
        protected = list(_protected(path, name, "context"))
        if protected:
            yield from protected
        elif name not in CONTEXTS:
            yield (
                path,
                f"context {name!r} is not in civiscore's closed catalogue; use one of: {allowed}",
            )


def _check_catalogue(rb: Rulebook) -> Iterator[Problem]:
    declared = ", ".join(sorted(rb.contexts))
    seen: dict[str, str] = {}
    for dep_name, dep in rb.departments.items():
        yield from _protected(f"departments.{dep_name}", dep_name, "department")
        for kind_name, kind in dep.kinds.items():
            path = f"departments.{dep_name}.kinds.{kind_name}"
            yield from _protected(path, kind_name, "record kind")
            if kind_name in seen:
                yield (
                    path,
                    f"record kind {kind_name!r} is already declared by department "
                    f"{seen[kind_name]!r}; each kind belongs to one department",
                )
            seen[kind_name] = dep_name
            if kind.context not in rb.contexts:
                yield (
                    f"{path}.context",
                    f"context {kind.context!r} is not declared under 'contexts' "
                    f"(declared: {declared})",
                )
            if kind.decision and dep.authority not in SANCTIONING_AUTHORITIES:
                yield (
                    f"{path}.decision",
                    f"only a court or a regulator issues sanctioning decisions; department "
                    f"{dep_name!r} is a {dep.authority}. Set decision: false or move the kind",
                )
    for svc_name, svc in rb.services.items():
        path = f"services.{svc_name}"
        yield from _protected(path, svc_name, "service")
        if svc.context not in rb.contexts:
            yield (
                f"{path}.context",
                f"context {svc.context!r} is not declared under 'contexts' (declared: {declared})",
            )


def _check_bands(rb: Rulebook) -> Iterator[Problem]:
    names = [b.band for b in rb.bands]
    if len(set(names)) != len(names):
        yield ("bands", "band names must be unique")
    if not rb.bands:
        yield ("bands", "declare at least one band")
        return
    mins = [b.min for b in rb.bands]
    if mins[-1] is not None:
        yield (f"bands[{len(mins) - 1}].min", "the last (lowest) band takes every score: omit min")
    for i, m in enumerate(mins[:-1]):
        if m is None:
            yield (f"bands[{i}].min", "only the last band may omit min")
    numeric = [m for m in mins[:-1] if m is not None]
    if numeric != sorted(numeric, reverse=True) or len(set(numeric)) != len(numeric):
        yield ("bands", "list bands from best to worst with strictly decreasing min")
    cap = rb.grave_sanction_band_cap
    if cap not in names:
        yield (
            "grave_sanction_band_cap",
            f"band {cap!r} is not declared under 'bands' (declared: {', '.join(names)})",
        )
        return
    cap_rank = names.index(cap)
    a_grades = [name for name in names[cap_rank:] if name.startswith("A")]
    if a_grades:
        yield PolicyProblem(
            "grave_sanction_band_cap",
            f"a grave sanction must cap the band below every A grade, but {cap!r} is not "
            f"below {a_grades[-1]!r}; choose a band such as B",
        )


def _values(v: DatedNumber | None) -> list[float]:
    if v is None:
        return []
    if isinstance(v, dict):
        return [x for x in v.values() if x is not None]
    return [v]


def rule_sign(rule: Rule) -> int:
    """+1 for a merit rule, -1 for a negative one, 0 when its values disagree or are missing."""
    vals = _values(rule.points) + _values(rule.points_per_unit)
    if vals and all(x > 0 for x in vals):
        return 1
    if vals and all(x < 0 for x in vals):
        return -1
    return 0


def _check_rules(rb: Rulebook) -> Iterator[Problem]:
    ids: set[str] = set()
    by_kind: dict[str, list[tuple[int, Rule]]] = {}
    for i, rule in enumerate(rb.rules):
        path = f"rules[{i}]"
        if rule.id in ids:
            yield (f"{path}.id", f"rule id {rule.id!r} is used twice; ids must be unique")
        ids.add(rule.id)
        yield from _protected(f"{path}.id", rule.id, "rule")
        found = rb.kind(rule.kind)
        if found is None:
            yield (
                f"{path}.kind",
                f"record kind {rule.kind!r} is not in any department's catalogue; declare it "
                "under departments.<name>.kinds first",
            )
            continue
        _, kind = found
        by_kind.setdefault(rule.kind, []).append((i, rule))
        if (rule.points is None) == (rule.points_per_unit is None):
            yield (path, "give exactly one of points (fixed) or points_per_unit (times quantity)")
            continue
        if rule.points_per_unit is not None and kind.quantity is None:
            yield (
                f"{path}.points_per_unit",
                f"record kind {rule.kind!r} carries no quantity; use fixed points, or declare "
                "a quantity with its unit on the kind",
            )
        if rule.when is not None and kind.quantity is None:
            yield (
                f"{path}.when",
                f"record kind {rule.kind!r} carries no quantity to compare; remove 'when'",
            )
        for field in ("points", "points_per_unit"):
            value = getattr(rule, field)
            if isinstance(value, dict) and list(value) != sorted(value):
                yield (f"{path}.{field}", "list dated values in date order")
            if isinstance(value, dict) and value and min(value) < rule.effective_from:
                yield (
                    f"{path}.{field}",
                    "a dated value starts before the rule's effective_from; move effective_from",
                )
        sign = rule_sign(rule)
        if sign == 0:
            yield (
                path,
                "points must be all positive (a merit) or all negative (a sanction), never zero",
            )
        elif sign > 0:
            if rule.severity != "merit":
                yield (f"{path}.severity", "positive points are a merit: set severity: merit")
            if rule.cap is None:
                yield PolicyProblem(
                    f"{path}.cap",
                    "merit rules must be capped so many small good deeds cannot buy a score; add "
                    "cap: {max_points: N, per: calendar_year}",
                )
        else:
            if rule.severity == "merit":
                yield (
                    f"{path}.severity",
                    "negative points cannot be a merit: use minor, serious or grave",
                )
            if rule.valid_for is None:
                yield PolicyProblem(
                    f"{path}.valid_for",
                    "every negative rule must stop counting after a fixed window; add valid_for, "
                    "for example P1Y or P3Y",
                )
            if rule.cap is not None:
                yield (f"{path}.cap", "caps apply to merits only; remove cap")
        if rule.effective_until is not None and rule.effective_until <= rule.effective_from:
            yield (f"{path}.effective_until", "effective_until must come after effective_from")
    for kind_name, rules in by_kind.items():
        for a in range(len(rules)):
            for b in range(a + 1, len(rules)):
                (ia, ra), (ib, rb_) = rules[a], rules[b]
                if _periods_overlap(ra, rb_) and _conditions_overlap(ra, rb_):
                    yield (
                        f"rules[{ib}].when",
                        f"rules {ra.id!r} (rules[{ia}]) and {rb_.id!r} both match some "
                        f"{kind_name!r} records; make their quantity conditions or effective "
                        "periods disjoint so each record meets at most one rule",
                    )


def _periods_overlap(a: Rule, b: Rule) -> bool:
    a_end = a.effective_until or dt.date.max
    b_end = b.effective_until or dt.date.max
    return a.effective_from < b_end and b.effective_from < a_end


def _conditions_overlap(a: Rule, b: Rule) -> bool:
    inf = float("inf")
    a_lo = a.when.quantity_at_least if a.when and a.when.quantity_at_least is not None else -inf
    a_hi = a.when.quantity_below if a.when and a.when.quantity_below is not None else inf
    b_lo = b.when.quantity_at_least if b.when and b.when.quantity_at_least is not None else -inf
    b_hi = b.when.quantity_below if b.when and b.when.quantity_below is not None else inf
    return a_lo < b_hi and b_lo < a_hi


def merit_kinds(rb: Rulebook) -> set[str]:
    """Record kinds that earn merit points under some rule."""
    return {r.kind for r in rb.rules if rule_sign(r) > 0}


def _check_listings(rb: Rulebook) -> Iterator[Problem]:
    ids: set[str] = set()
    bands = rb.band_order()
    merits = merit_kinds(rb)
    for i, listing in enumerate(rb.listings):
        path = f"listings[{i}]"
        if listing.id in ids:
            yield (f"{path}.id", f"listing id {listing.id!r} is used twice; ids must be unique")
        ids.add(listing.id)
        yield from _protected(f"{path}.id", listing.id, "listing")
        trig = listing.trigger
        given = [k for k in ("decision", "conduct", "band") if getattr(trig, k) is not None]
        if len(given) != 1:
            yield (
                f"{path}.trigger",
                "give exactly one trigger: decision (a court or regulator decision record), "
                "conduct (N records within a window) or band (benefits only)",
            )
            continue
        yield from _check_trigger(rb, listing, path, bands)
        if listing.ended_by is not None:
            end_path = f"{path}.ended_by.kind"
            if rb.kind(listing.ended_by.kind) is None:
                yield (end_path, f"record kind {listing.ended_by.kind!r} is not in any catalogue")
            elif listing.ended_by.kind in merits:
                yield PolicyProblem(
                    end_path,
                    f"{listing.ended_by.kind!r} earns merit points; merits never end a listing. "
                    "End it with a remedy record such as a settlement, or let it expire",
                )
            if trig.decision is None:
                yield (
                    f"{path}.ended_by",
                    "only a decision-triggered listing can be ended by a record matching its "
                    "reference; remove ended_by",
                )
            else:
                # The remedy is matched to the decision by reference, so both must carry one.
                for kind_name in (trig.decision, listing.ended_by.kind):
                    found = rb.kind(kind_name)
                    if found is not None and found[1].reference != "required":
                        yield (
                            f"{path}.ended_by",
                            f"{kind_name!r} must declare reference: required, because the "
                            "remedy record is matched to the decision by its reference",
                        )
        if listing.list == "blacklist":
            yield from _check_blacklist(rb, listing, path)
        else:
            if listing.restricts:
                yield (f"{path}.restricts", "a redlist grants benefits; it cannot restrict")
            if not listing.grants:
                yield (f"{path}.grants", "a redlist must grant at least one benefit service")
            for j, grant in enumerate(listing.grants):
                svc = rb.services.get(grant.service)
                if svc is None:
                    yield (f"{path}.grants[{j}].service", _unknown_service(rb, grant.service))
                elif svc.kind != "benefit":
                    yield (
                        f"{path}.grants[{j}].service",
                        f"{grant.service!r} is a restriction service; grants name benefits",
                    )


def _unknown_service(rb: Rulebook, name: str) -> str:
    return f"service {name!r} is not declared under 'services' (declared: {', '.join(rb.services)})"


def _check_trigger(
    rb: Rulebook, listing: Listing, path: str, bands: list[str]
) -> Iterator[Problem]:
    trig = listing.trigger
    if trig.band is not None:
        for band in trig.band:
            if band not in bands:
                yield (f"{path}.trigger.band", f"band {band!r} is not declared under 'bands'")
        if listing.list != "redlist":
            yield (
                f"{path}.trigger.band",
                "a score or band never restricts anyone: a band may only trigger a redlist "
                "that grants benefits. Trigger restrictions with a decision or with conduct in "
                "the restricted service's own context",
            )
    if trig.conduct is not None and listing.duration is None and listing.list == "redlist":
        # Blacklists get the same demand in _check_blacklist; the engine needs it for both.
        yield (
            f"{path}.duration",
            "a conduct trigger lists a subject for a fixed time after the conduct: give the "
            "listing a duration such as P1Y",
        )
    kind_name = trig.decision or (trig.conduct.kind if trig.conduct else None)
    if kind_name is not None and rb.kind(kind_name) is None:
        field = "decision" if trig.decision else "conduct.kind"
        yield (f"{path}.trigger.{field}", f"record kind {kind_name!r} is not in any catalogue")


def _check_blacklist(rb: Rulebook, listing: Listing, path: str) -> Iterator[Problem]:
    if listing.grants:
        yield (f"{path}.grants", "a blacklist restricts; grant benefits with a redlist")
    if listing.duration is None:
        yield (
            f"{path}.duration",
            "every sanction expires: give the listing a fixed maximum duration such as P2Y",
        )
    if not listing.restricts:
        yield (f"{path}.restricts", "a blacklist must name the services it restricts")
    trig = listing.trigger
    decision_kind = rb.kind(trig.decision) if trig.decision else None
    if trig.decision and decision_kind is not None:
        dep_name, kind = decision_kind
        dep = rb.departments[dep_name]
        if not kind.decision or dep.authority not in SANCTIONING_AUTHORITIES:
            yield PolicyProblem(
                f"{path}.trigger.decision",
                f"{trig.decision!r} is not a sanctioning decision of a court or regulator; a "
                "listing from it may only restrict services in its own context (use a conduct "
                "trigger)",
            )
    for j, restriction in enumerate(listing.restricts):
        rpath = f"{path}.restricts[{j}]"
        svc = rb.services.get(restriction.service)
        if svc is None:
            yield (f"{rpath}.service", _unknown_service(rb, restriction.service))
            continue
        if svc.kind != "restriction":
            yield (
                f"{rpath}.service",
                f"{restriction.service!r} is a benefit; restrict only restriction services",
            )
        if trig.conduct is not None:
            conduct_kind = rb.kind(trig.conduct.kind)
            if conduct_kind is not None and conduct_kind[1].context != svc.context:
                yield PolicyProblem(
                    f"{rpath}.service",
                    f"conduct in context {conduct_kind[1].context!r} cannot restrict "
                    f"{restriction.service!r}, a service in context {svc.context!r}: a "
                    "restriction must follow conduct in the service's own context or a court or "
                    "regulator decision",
                )
