"""Sampler keywords typed on the command line: ``--option KEY=VALUE`` (repeatable).

Values are read as YAML scalars (``snr=0.16``, ``corrector=true``, ``predict=data``,
``method=rk4``), plus the exponent forms YAML 1.1 leaves as strings (``rtol=1e-4``). Each key is
checked against the keyword arguments of the sampler's function, so a typo is one line naming the
``--option`` item and the closest accepted key, before anything runs.
"""
from __future__ import annotations

import difflib
import inspect
import re
from typing import Dict, Iterable, List, Optional

import yaml

#: keywords every sampler takes that have their own flags (or are fixed by the run)
RESERVED = {"score_fn": None, "sde": None, "x_T": None, "steps": "--steps", "eps": None,
            "generator": "--seed", "progress": "--quiet"}
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_value(text: str):
    """A YAML scalar; '1e-4' and '1e3' become numbers (an integral one an int), as a user means."""
    text = text.strip()
    if _NUMBER.match(text):
        value = float(text)
        mantissa = re.split(r"[eE]", text)[0]
        return int(value) if value.is_integer() and "." not in mantissa else value
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return text
    return value


def accepted_keywords(fn) -> List[str]:
    """The keyword arguments of a sampler function that ``--option`` may set."""
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.name not in RESERVED]


def closest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest of ``choices``, or ''."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def parse_options(items: Optional[List[str]], sampler: str, fn, flag: str = "--option") -> Dict:
    """``["snr=0.2", "corrector=ald"]`` -> ``{"snr": 0.2, "corrector": "ald"}`` for the function
    ``fn`` of the sampler named ``sampler``; ValueError naming the item otherwise."""
    accepted = accepted_keywords(fn)
    out: Dict = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} {accepted[0] if accepted else 'key'}=...")
        if key in RESERVED:
            own = RESERVED[key]
            raise ValueError(f"{flag} {item!r}: {key} is " + (f"set with {own}" if own else "fixed by the run"))
        if key not in accepted:
            raise ValueError(f"{flag} {item!r}: {sampler} has no option {key!r}{closest(key, accepted)}; "
                             f"its options: {', '.join(accepted) or 'none'}")
        if key in out:
            raise ValueError(f"{flag} {item!r}: {key} is given twice")
        out[key] = parse_value(text)
    return out
