"""Value parsers shared by the config file and the -vm request (a leaf module)."""

from __future__ import annotations

import re

# The B/iB suffix only after a unit letter: "512B" means bytes, not 512 MiB, so it is refused.
# re.ASCII: without it IGNORECASE lets characters that fold onto ASCII letters through
# (the Kelvin sign U+212A matches "k", a dotless i matches "i") into the unit lookup.
_SIZE = re.compile(r"(?P<num>[0-9]{1,24})(?:(?P<unit>[KMGT])(?:I?B)?)?",
                   re.IGNORECASE | re.ASCII)
_BLANKS = " \t"
_SHIFT = {"K": 10, "M": 20, "G": 30, "T": 40}

TRUE_WORDS = frozenset({"yes", "true", "enabled", "on", "1"})
FALSE_WORDS = frozenset({"no", "false", "disabled", "off", "0"})


def parse_size_mib(text: str) -> int:
    """'512M', '2G', '1048576K', '1T' -> MiB (binary units, as vTorque and qsub use them).

    A bare number means MiB. Sizes that are not a whole number of MiB are refused rather
    than silently rounded. Raises ValueError with a short reason.
    """
    match = _SIZE.fullmatch(text.strip(_BLANKS)) if isinstance(text, str) else None
    if not match:
        raise ValueError("expected a size such as 512M, 4G or 1T")
    num = int(match["num"])
    unit = (match["unit"] or "M").upper()
    size_bytes = num << _SHIFT[unit]
    if size_bytes % (1 << 20):
        raise ValueError("size must be a whole number of MiB")
    return size_bytes >> 20


def parse_bool(text: str) -> bool:
    """yes/no, true/false, enabled/disabled (vTorque's words), on/off, 1/0."""
    word = text.strip(_BLANKS).lower() if isinstance(text, str) and text.isascii() else ""
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError("expected yes or no (also true/false, enabled/disabled)")


def format_mib(mib: int) -> str:
    """MiB -> the shortest exact text ('2G', '512M')."""
    for unit, shift in (("T", 20), ("G", 10)):
        if mib and mib % (1 << shift) == 0:
            return f"{mib >> shift}{unit}"
    return f"{mib}M"
