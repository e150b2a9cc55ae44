"""The closed catalogue of contexts, and the categories civiscore refuses to score.

Contexts are the domains in which conduct is recorded and restrictions apply. The list is closed
on purpose: a new context is a code change that can be reviewed, not a line in a YAML file.
"""

from __future__ import annotations

import itertools
import re

CONTEXTS: dict[str, str] = {
    "judicial": "Court judgments and their enforcement",
    "transport": "Road traffic, public transport and travel by rail and air",
    "tourism": "Conduct of tourists and tourism businesses, hotels",
    "market": "Market regulation: advertising, contracts, product safety",
    "tax": "Tax filing and payment",
    "civic": "Voluntary civic acts: volunteering, donations, heroic acts",
    "education": "Enrolment in schools",
    "employment": "Public employment and hiring",
    "procurement": "Government procurement and public tenders",
    "administration": "Administrative permits and licences",
    "finance": "Financial services such as rentals and deposits",
    "environment": "Environmental regulation",
}

# Each protected category, the words that reveal it in a context or kind name, and why it is
# refused. A name is split on '.', '_' and '-' and each part is compared with these words.
PROTECTED: dict[str, tuple[frozenset[str], str]] = {
    "political expression": (
        frozenset(
            {
                "political",
                "politics",
                "speech",
                "expression",
                "opinion",
                "petition",
                "petitioning",
                "protest",
                "dissent",
                "posting",
                "posts",
                "social_media",
                "online",
                "censorship",
                "vote",
                "voting",
            }
        ),
        "what people say or believe politically is protected, never scored",
    ),
    "religion": (
        frozenset({"religion", "religious", "faith", "worship", "church", "mosque", "temple"}),
        "religious belief and practice are protected, never scored",
    ),
    "ethnicity": (
        frozenset({"ethnic", "ethnicity", "race", "racial", "nationality_group", "minority"}),
        "ethnic origin is protected, never scored",
    ),
    "health status": (
        frozenset(
            {
                "health",
                "medical",
                "disease",
                "illness",
                "diagnosis",
                "hiv",
                "disability",
                "pregnancy",
                "mental",
                "psychiatric",
            }
        ),
        "health data is protected, never scored",
    ),
    "sexual orientation": (
        frozenset({"sexual", "sexuality", "orientation", "lgbt", "gay", "gender_identity"}),
        "sexual orientation and identity are protected, never scored",
    ),
    "union or association membership": (
        frozenset({"union", "association", "membership", "assembly", "ngo"}),
        "freedom of association is protected, never scored",
    ),
    "lawful consumption and leisure": (
        frozenset(
            {
                "gaming",
                "game",
                "games",
                "videogame",
                "leisure",
                "purchase",
                "purchases",
                "shopping",
                "consumption",
                "spending",
                "alcohol_purchase",
                "entertainment",
            }
        ),
        "lawful private conduct such as gaming time or lawful purchases is nobody's business",
    ),
    "biometric identification or location tracking": (
        frozenset(
            {
                "biometric",
                "biometrics",
                "face",
                "facial",
                "fingerprint",
                "gait",
                "iris",
                "voiceprint",
                "location",
                "gps",
                "geolocation",
                "tracking",
                "surveillance",
                "cctv",
                "camera",
            }
        ),
        "civiscore does no biometric identification and no location tracking",
    ),
}

_SPLIT = re.compile(r"[._\-\s]+")


def _singular(word: str) -> str:
    if word.endswith("ches") or word.endswith("shes") or word.endswith("sses"):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def protected_category(name: str) -> tuple[str, str] | None:
    """Return ``(category, why)`` when a context or kind name reveals a protected category.

    >>> protected_category("civic.religious_attendance")[0]
    'religion'
    >>> protected_category("transport.speeding") is None
    True
    """
    lowered = name.lower()
    parts = set(_SPLIT.split(lowered))
    # Also consider adjacent pairs so two-word markers such as "social_media" are caught.
    tokens = lowered.replace(".", "_").replace("-", "_").split("_")
    parts |= {f"{a}_{b}" for a, b in itertools.pairwise(tokens)}
    # Plurals ("protests", "churches", "unions") reveal the same category as the singular.
    parts |= {_singular(p) for p in parts}
    for category, (words, why) in PROTECTED.items():
        if parts & words:
            return category, why
    return None
